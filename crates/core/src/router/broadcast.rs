//! Broadcast: one stream to every other peer of the channel, one ack back.
//!
//! ```text
//! sender START ──no other peer──▶ NO_PEERS to sender
//!      │ snapshot of the other members, each peer Receiving
//!      ▼
//!  frames copied to every peer still Receiving (a peer over the high watermark is dropped:
//!  Failed, and gets CANCEL — a stuck peer never delays the others)
//!      │ sender's FINAL: every Receiving peer ─▶ AwaitingAck
//!      ▼
//!  peer ACK: AwaitingAck ─▶ Acked          peer gone: ─▶ Failed
//!      │ every peer Acked or Failed
//!      ▼
//!  all Acked: ACK(count) to sender; else BROADCAST_INCOMPLETE listing the others  → Done
//!  timeout first: BROADCAST_INCOMPLETE listing every peer not Acked; CANCEL to those owing
//!  sender gone or sender CANCEL: CANCEL to every peer still Receiving/AwaitingAck   → Done
//! ```
//! Done removes the broadcast with its timer, its id and every peer's reference to it.

use std::time::Instant;

use super::store::Key;
use super::{Peer, Router, StreamKey, TimerTarget};
use crate::ids::{ChannelId, ClientId, ConnId, RequestId};
use crate::protocol::{encode_u32, ErrorCode, Flags, Frame, FrameType, Header};
use crate::wheel::TimerKey;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum PeerState {
    /// Getting the stream's frames.
    Receiving,
    /// Got the FINAL frame; its ack is due.
    AwaitingAck,
    /// Acknowledged.
    Acked,
    /// Disconnected, or dropped for being too slow.
    Failed,
}

pub(super) struct BroadcastPeer {
    pub(super) conn: ConnId,
    pub(super) client: ClientId,
    pub(super) state: PeerState,
}

pub(super) struct Broadcast {
    /// The sender's id for it: frames to and from the sender carry it.
    pub(super) id: RequestId,
    /// The id its peers see and acknowledge with (see `scope.rs`).
    pub(super) route: RequestId,
    pub(super) sender: ConnId,
    pub(super) sender_client: ClientId,
    pub(super) channel: ChannelId,
    pub(super) peers: Vec<BroadcastPeer>,
    pub(super) timer: TimerKey,
    next_seq: u32,
    finished: bool,
}

impl Broadcast {
    fn owes_ack(&self, peer: &BroadcastPeer) -> bool {
        let _ = self;
        matches!(peer.state, PeerState::Receiving | PeerState::AwaitingAck)
    }
}

impl Router {
    /// A START/CHUNK/END with REQUEST|BROADCAST.
    pub(super) fn recv_broadcast_frame(&mut self, from: Peer, frame: Frame, now: Instant) {
        let id = frame.header.request_id;
        let key = if frame.header.frame_type == FrameType::Start {
            match self.open_broadcast(from, &frame, now) {
                Some(key) => key,
                None => return,
            }
        } else {
            let Some(StreamKey::Broadcast(key)) = self.sender_stream(from.conn, id) else {
                return self.reject_unknown_request(from.conn, id, "broadcast frame");
            };
            let Some(broadcast) = self.broadcasts.get_mut(key) else {
                return;
            };
            let in_order = frame.header.sequence == broadcast.next_seq
                && !broadcast.finished
                && match frame.header.frame_type {
                    FrameType::Chunk => !frame.header.is_final,
                    _ => frame.header.is_final,
                };
            if !in_order {
                self.send_error(
                    from.conn,
                    ErrorCode::StreamOrder,
                    id,
                    "frame out of order; broadcast aborted",
                );
                return self.cancel_broadcast(key);
            }
            key
        };
        self.deliver_broadcast_frame(key, frame);
        self.complete_broadcast_if_resolved(key);
    }

    /// Creates the broadcast for a START; `None` when it was refused (an error was sent).
    fn open_broadcast(&mut self, from: Peer, frame: &Frame, now: Instant) -> Option<Key> {
        let id = frame.header.request_id;
        if self.shutting_down {
            self.send_error(
                from.conn,
                ErrorCode::ShuttingDown,
                id,
                "the broker is shutting down and takes no new broadcasts",
            );
            return None;
        }
        let Ok(route) = self.claim_route(from.conn, id) else {
            self.send_error(
                from.conn,
                ErrorCode::DuplicateRequest,
                id,
                "a request or broadcast of yours with this id is already in flight",
            );
            return None;
        };
        if frame.header.sequence != 0 {
            self.send_error(
                from.conn,
                ErrorCode::StreamOrder,
                id,
                "a start carries sequence 0",
            );
            return None;
        }
        if let Some(text) = self.sent_limit_reached(from.conn) {
            self.send_error(from.conn, ErrorCode::LimitExceeded, id, &text);
            return None;
        }
        let peers: Vec<BroadcastPeer> = match self.channels.get(&from.channel) {
            // A member that shut its write side could never ack (`half_close.rs`).
            Some(channel) => channel
                .peers_except(from.conn)
                .filter(|m| !self.conns.get(m.conn).is_some_and(|c| c.is_read_closed()))
                .map(|m| BroadcastPeer {
                    conn: m.conn,
                    client: m.client,
                    state: PeerState::Receiving,
                })
                .collect(),
            None => Vec::new(),
        };
        if peers.is_empty() {
            self.send_error(
                from.conn,
                ErrorCode::NoPeers,
                id,
                "no other peer is on the channel",
            );
            return None;
        }
        let timeout = self.effective_timeout(frame.header.timeout_ms);
        let deadline_tick = self.deadline_tick(now, timeout);
        let wheel = &mut self.wheel;
        let key = self.broadcasts.insert_with(|key| Broadcast {
            id,
            route,
            sender: from.conn,
            sender_client: from.client,
            channel: from.channel,
            peers,
            timer: super::insert_timer(wheel, deadline_tick, TimerTarget::Broadcast(key)),
            next_seq: 0,
            finished: false,
        });
        self.register_stream(from.conn, id, route, StreamKey::Broadcast(key));
        if let Some(c) = self.conns.get_mut(from.conn) {
            c.start_sending();
        }
        let mut members = Vec::new();
        if let Some(b) = self.broadcasts.get(key) {
            members.push(b.sender);
            members.extend(b.peers.iter().map(|p| p.conn));
        }
        for conn in members {
            if let Some(c) = self.conns.get_mut(conn) {
                c.add_stream(StreamKey::Broadcast(key));
            }
        }
        log::debug!(
            "{}: broadcast {id} to {} peers",
            from.conn,
            self.broadcasts.get(key).map_or(0, |b| b.peers.len())
        );
        Some(key)
    }

    /// Copies one frame to every peer still receiving; drops peers that are over the high
    /// watermark instead of letting them hold up the sender.
    fn deliver_broadcast_frame(&mut self, key: Key, frame: Frame) {
        let effective_ms =
            super::channel::duration_ms(self.effective_timeout(frame.header.timeout_ms));
        let Some(broadcast) = self.broadcasts.get_mut(key) else {
            return;
        };
        broadcast.next_seq = frame.header.sequence.wrapping_add(1);
        broadcast.finished = frame.header.is_final;
        let mut header = Header {
            client_id: broadcast.sender_client,
            flags: Flags::REQUEST | Flags::BROADCAST,
            request_id: broadcast.route,
            ..frame.header
        };
        if header.frame_type == FrameType::Start {
            // The peers see the deadline the broker applies (PROTOCOL §13.5): the default for
            // 0, the max for more; a START is copied as it arrives, so it is all still ahead.
            header.timeout_ms = effective_ms;
        }
        // Peers know the broadcast by its route.
        let (id, sender_client) = (broadcast.route, broadcast.sender_client);
        let high = self.config.high_watermark;
        let mut index = 0;
        loop {
            let over_budget = self.is_over_budget();
            let Some(broadcast) = self.broadcasts.get_mut(key) else {
                return;
            };
            let Some(peer) = broadcast.peers.get_mut(index) else {
                break;
            };
            index += 1;
            if peer.state != PeerState::Receiving {
                continue;
            }
            let conn = peer.conn;
            let queued = self.conns.get(conn).map_or(0, |c| c.outbound().len());
            // Over the broker's budget a frame is copied to nobody more (see `send.rs`).
            if queued > high || over_budget {
                peer.state = PeerState::Failed;
                log::debug!("{conn}: dropped from broadcast {id}: {queued} bytes queued");
                self.send_control(
                    conn,
                    FrameType::Cancel,
                    Flags::REQUEST | Flags::BROADCAST,
                    sender_client,
                    id,
                );
                self.forget_stream(conn, StreamKey::Broadcast(key));
                continue;
            }
            if header.is_final {
                peer.state = PeerState::AwaitingAck;
            }
            self.send(conn, &header, &frame.payload, None);
        }
    }

    /// ACK from a peer.
    pub(super) fn recv_broadcast_ack(&mut self, from: Peer, id: RequestId) {
        let key = match self.streams.get(&id) {
            Some(&StreamKey::Broadcast(key)) => key,
            _ => return self.reject_unknown_request(from.conn, id, "ack"),
        };
        let Some(broadcast) = self.broadcasts.get_mut(key) else {
            return;
        };
        let Some(peer) = broadcast.peers.iter_mut().find(|p| p.conn == from.conn) else {
            return self.reject_unknown_request(from.conn, id, "ack");
        };
        match peer.state {
            PeerState::AwaitingAck => {
                peer.state = PeerState::Acked;
                self.forget_stream(from.conn, StreamKey::Broadcast(key));
                self.complete_broadcast_if_resolved(key);
            }
            PeerState::Receiving => self.send_error(
                from.conn,
                ErrorCode::StreamOrder,
                id,
                "ack before the broadcast's final frame",
            ),
            PeerState::Acked | PeerState::Failed => {
                self.reject_unknown_request(from.conn, id, "ack")
            }
        }
    }

    /// CANCEL with BROADCAST from the sender.
    pub(super) fn recv_broadcast_cancel(&mut self, from: Peer, id: RequestId) {
        match self.sender_stream(from.conn, id) {
            Some(StreamKey::Broadcast(key)) => self.cancel_broadcast(key),
            _ => self.reject_unknown_request(from.conn, id, "cancel"),
        }
    }

    /// Ends the broadcast with CANCEL to every peer still owing an ack; nothing to the sender.
    fn cancel_broadcast(&mut self, key: Key) {
        self.cancel_owing_peers(key);
        self.end_broadcast(key);
    }

    fn cancel_owing_peers(&mut self, key: Key) {
        let Some(broadcast) = self.broadcasts.get(key) else {
            return;
        };
        // Peers know the broadcast by its route.
        let (id, sender_client) = (broadcast.route, broadcast.sender_client);
        let owing: Vec<ConnId> = broadcast
            .peers
            .iter()
            .filter(|p| broadcast.owes_ack(p))
            .map(|p| p.conn)
            .collect();
        for conn in owing {
            self.send_control(
                conn,
                FrameType::Cancel,
                Flags::REQUEST | Flags::BROADCAST,
                sender_client,
                id,
            );
        }
    }

    /// Answers the sender once no peer owes an ack any more.
    fn complete_broadcast_if_resolved(&mut self, key: Key) {
        let Some(broadcast) = self.broadcasts.get(key) else {
            return;
        };
        if broadcast.peers.iter().any(|p| broadcast.owes_ack(p)) {
            return;
        }
        let missing: Vec<ClientId> = broadcast
            .peers
            .iter()
            .filter(|p| p.state != PeerState::Acked)
            .map(|p| p.client)
            .collect();
        let acked = (broadcast.peers.len() - missing.len()) as u32;
        let (id, sender, channel) = (broadcast.id, broadcast.sender, broadcast.channel);
        if missing.is_empty() {
            let header = Header {
                flags: Flags::BROADCAST,
                channel_id: channel,
                request_id: id,
                is_final: true,
                ..Header::new(FrameType::Ack)
            };
            self.send(sender, &header, &encode_u32(acked), None);
        } else {
            self.send_error_with_peers(
                sender,
                ErrorCode::BroadcastIncomplete,
                id,
                &format!(
                    "{} of {} peers did not acknowledge",
                    missing.len(),
                    acked as usize + missing.len()
                ),
                &missing,
            );
        }
        self.end_broadcast(key);
    }

    /// The broadcast's timer fired.
    pub(super) fn expire_broadcast(&mut self, key: Key) {
        let Some(broadcast) = self.broadcasts.get(key) else {
            return;
        };
        self.counters.timeouts += 1;
        let missing: Vec<ClientId> = broadcast
            .peers
            .iter()
            .filter(|p| p.state != PeerState::Acked)
            .map(|p| p.client)
            .collect();
        let total = broadcast.peers.len();
        let (id, sender) = (broadcast.id, broadcast.sender);
        self.cancel_owing_peers(key);
        self.send_error_with_peers(
            sender,
            ErrorCode::BroadcastIncomplete,
            id,
            &format!(
                "timed out: {} of {total} peers did not acknowledge",
                missing.len()
            ),
            &missing,
        );
        self.end_broadcast(key);
    }

    /// The shutdown deadline passed with the broadcast in flight.
    pub(super) fn end_broadcast_for_shutdown(&mut self, key: Key) {
        let Some(broadcast) = self.broadcasts.get(key) else {
            return;
        };
        let (id, sender) = (broadcast.id, broadcast.sender);
        self.cancel_owing_peers(key);
        self.send_error(
            sender,
            ErrorCode::ShuttingDown,
            id,
            "the broker shut down first",
        );
        self.end_broadcast(key);
    }

    /// `departed` (the sender or a peer) is gone.
    pub(super) fn end_broadcast_for_departed(&mut self, key: Key, departed: ConnId) {
        let Some(broadcast) = self.broadcasts.get_mut(key) else {
            return;
        };
        if broadcast.sender == departed {
            return self.cancel_broadcast(key);
        }
        for peer in broadcast.peers.iter_mut().filter(|p| p.conn == departed) {
            if matches!(peer.state, PeerState::Receiving | PeerState::AwaitingAck) {
                peer.state = PeerState::Failed;
            }
        }
        self.complete_broadcast_if_resolved(key);
    }

    /// Removes the broadcast and every trace of it.
    fn end_broadcast(&mut self, key: Key) {
        let Some(broadcast) = self.broadcasts.remove(key) else {
            return;
        };
        self.wheel.remove(broadcast.timer);
        self.unregister_stream(broadcast.sender, broadcast.id, broadcast.route);
        self.forget_sent(broadcast.sender);
        self.forget_stream(broadcast.sender, StreamKey::Broadcast(key));
        for peer in &broadcast.peers {
            self.forget_stream(peer.conn, StreamKey::Broadcast(key));
        }
    }
}
