//! Channels: membership and presence, receive credit, and the matching of waiting requests to
//! ready receivers.
//!
//! A channel exists while it has members. It keeps:
//! - `members`: the connections that completed a handshake on it, in join order;
//! - `waiting`: the FIFO of requests no receiver has taken yet;
//! - `ready`: the FIFO of receivers with a free slot in their window. A receiver that takes a
//!   request and still has a free slot goes to the back, which spreads requests over receivers
//!   round-robin (competing consumers).
//!
//! Both FIFOs may hold stale keys (a request that timed out or was cancelled while waiting, a
//! receiver whose window closed): they are skipped when popped and compacted away when they
//! outnumber the live entries, so neither grows without bound under churn.
//!
//! # Invariants
//! - `Connection::in_ready_queue` is true iff the connection's id is in `ready` (possibly stale).
//! - `live_waiting` counts the entries of `waiting` that name a queued request.

use bytes::Bytes;
use std::collections::VecDeque;
use std::time::Instant;

use super::connection::ConnState;
use super::store::Key;
use super::{conn_key, Peer, Router};
use crate::ids::{ChannelId, ClientId, ConnId};
use crate::protocol::{decode_u32, ErrorCode, Flags, FrameType, Header, WelcomeBody};

pub(super) struct Member {
    pub(super) conn: ConnId,
    pub(super) client: ClientId,
}

#[derive(Default)]
pub(super) struct Channel {
    pub(super) members: Vec<Member>,
    pub(super) waiting: VecDeque<Key>,
    pub(super) live_waiting: usize,
    pub(super) ready: VecDeque<ConnId>,
}

impl Channel {
    /// Other members' client ids.
    pub(super) fn peers_except(&self, conn: ConnId) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(move |m| m.conn != conn)
    }
}

impl Router {
    /// HELLO on a connection awaiting it: join the channel, welcome, announce.
    pub(super) fn recv_hello(&mut self, conn: ConnId, frame: &crate::protocol::Frame) {
        let channel_id = frame.header.channel_id;
        if channel_id.is_nil() {
            return self.fail_connection(
                conn,
                ErrorCode::ChannelMismatch,
                "hello needs a non-nil channel id",
            );
        }
        let client = if frame.header.client_id.is_nil() {
            ClientId::random()
        } else {
            frame.header.client_id
        };
        let channel = self.channels.entry(channel_id).or_default();
        if channel.members.iter().any(|m| m.client == client) {
            if channel.members.is_empty() {
                self.channels.remove(&channel_id);
            }
            return self.fail_connection(
                conn,
                ErrorCode::ClientIdInUse,
                &format!("client id {client} is already connected on channel {channel_id}"),
            );
        }
        let peers: Vec<ClientId> = channel.members.iter().map(|m| m.client).collect();
        channel.members.push(Member { conn, client });
        if let Some(c) = self.conns.get_mut(conn_key(conn)) {
            c.set_state(ConnState::Open {
                channel: channel_id,
                client,
            });
        }
        log::info!(
            "{conn}: joined channel {channel_id} as client {client} ({} peers)",
            peers.len()
        );
        let welcome = WelcomeBody {
            max_payload: self.config.max_payload,
            default_timeout_ms: duration_ms(self.config.default_timeout),
            max_timeout_ms: duration_ms(self.config.max_timeout),
            heartbeat_ms: duration_ms(self.config.heartbeat_interval),
            peers,
        };
        let header = Header {
            client_id: client,
            channel_id,
            ..Header::new(FrameType::Welcome)
        };
        self.send(conn, &header, &welcome.encode(), None);
        self.announce(conn, channel_id, FrameType::PeerJoined, client);
    }

    /// Sends PEER_JOINED / PEER_LEFT about `client` to every other member.
    fn announce(&mut self, conn: ConnId, channel_id: ChannelId, kind: FrameType, client: ClientId) {
        let Some(channel) = self.channels.get(&channel_id) else {
            return;
        };
        let others: Vec<ConnId> = channel.peers_except(conn).map(|m| m.conn).collect();
        let header = Header {
            client_id: client,
            channel_id,
            ..Header::new(kind)
        };
        for other in others {
            self.send(other, &header, &Bytes::new(), None);
        }
    }

    /// Removes a member: presence to the others, the channel itself when it was the last.
    pub(super) fn leave_channel(&mut self, conn: ConnId, channel_id: ChannelId, client: ClientId) {
        let Some(channel) = self.channels.get_mut(&channel_id) else {
            return;
        };
        channel.members.retain(|m| m.conn != conn);
        channel.ready.retain(|c| *c != conn);
        if let Some(c) = self.conns.get_mut(conn_key(conn)) {
            c.in_ready_queue = false;
        }
        if channel.members.is_empty() {
            // INVARIANT: waiting requests belong to members, and a leaving member's requests
            // were ended before it left.
            debug_assert_eq!(channel.live_waiting, 0);
            self.channels.remove(&channel_id);
            return;
        }
        self.announce(conn, channel_id, FrameType::PeerLeft, client);
    }

    /// RECEIVE: set the window, then hand out waiting requests.
    pub(super) fn recv_receive(&mut self, from: Peer, payload: &[u8], now: Instant) {
        let Ok(window) = decode_u32(payload) else {
            return self.fail_connection(
                from.conn,
                ErrorCode::MalformedFrame,
                "a receive frame carries a 4-byte window",
            );
        };
        if let Some(c) = self.conns.get_mut(conn_key(from.conn)) {
            log::debug!("{}: receive window {} => {window}", from.conn, c.window);
            c.window = window;
        }
        self.mark_ready(from.conn, from.channel);
        self.assign_waiting(from.channel, now);
    }

    /// Puts `conn` at the back of the ready FIFO if it has a free slot and is not there yet.
    pub(super) fn mark_ready(&mut self, conn: ConnId, channel_id: ChannelId) {
        let Some(c) = self.conns.get_mut(conn_key(conn)) else {
            return;
        };
        if c.in_ready_queue || !c.has_free_slot() {
            return;
        }
        let Some(channel) = self.channels.get_mut(&channel_id) else {
            return;
        };
        c.in_ready_queue = true;
        channel.ready.push_back(conn);
    }

    /// The receiver that has waited longest among those with a free slot, taken off the FIFO.
    pub(super) fn pop_ready_receiver(&mut self, channel_id: ChannelId) -> Option<ConnId> {
        let channel = self.channels.get_mut(&channel_id)?;
        while let Some(conn) = channel.ready.pop_front() {
            let Some(c) = self.conns.get_mut(conn_key(conn)) else {
                continue;
            };
            c.in_ready_queue = false;
            if c.has_free_slot() {
                return Some(conn);
            }
        }
        None
    }

    /// Appends a request to the channel's waiting FIFO.
    pub(super) fn push_waiting(&mut self, channel_id: ChannelId, key: Key) {
        if let Some(channel) = self.channels.get_mut(&channel_id) {
            channel.waiting.push_back(key);
            channel.live_waiting += 1;
        }
    }

    /// A waiting request left the FIFO other than by assignment (timeout, cancel, departure).
    /// Its key stays as a stale entry; compact when stale entries dominate.
    pub(super) fn forget_waiting(&mut self, channel_id: ChannelId) {
        let Some(channel) = self.channels.get_mut(&channel_id) else {
            return;
        };
        channel.live_waiting -= 1;
        if channel.waiting.len() > 2 * channel.live_waiting + 32 {
            let requests = &self.requests;
            channel
                .waiting
                .retain(|k| requests.get(*k).is_some_and(|r| r.is_queued()));
        }
    }

    /// Number of requests waiting on the channel.
    pub(super) fn waiting_len(&self, channel_id: ChannelId) -> usize {
        self.channels.get(&channel_id).map_or(0, |c| c.live_waiting)
    }

    /// Hands waiting requests to ready receivers, FIFO on both sides, while both exist.
    pub(super) fn assign_waiting(&mut self, channel_id: ChannelId, now: Instant) {
        loop {
            let Some(channel) = self.channels.get_mut(&channel_id) else {
                return;
            };
            // Skip stale entries at the front.
            while let Some(front) = channel.waiting.front() {
                if self.requests.get(*front).is_some_and(|r| r.is_queued()) {
                    break;
                }
                channel.waiting.pop_front();
            }
            if channel.waiting.is_empty() {
                return;
            }
            let Some(receiver) = self.pop_ready_receiver(channel_id) else {
                return;
            };
            let Some(channel) = self.channels.get_mut(&channel_id) else {
                return;
            };
            let Some(key) = channel.waiting.pop_front() else {
                return;
            };
            channel.live_waiting -= 1;
            self.assign(key, receiver, now);
        }
    }
}

/// A duration in whole milliseconds, saturating at `u32::MAX`.
pub(super) fn duration_ms(duration: std::time::Duration) -> u32 {
    u32::try_from(duration.as_millis()).unwrap_or(u32::MAX)
}

/// Flags a broker-originated CANCEL carries toward the receiver of a request.
pub(super) const CANCEL_TO_RECEIVER: Flags = Flags::REQUEST;
/// Flags a broker-originated CANCEL carries toward the sender of a request.
pub(super) const CANCEL_TO_SENDER: Flags = Flags::RESPONSE;
