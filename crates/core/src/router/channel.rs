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
//! - A connection's ready mark (`Connection::enter_ready_queue`) is set iff the connection's id is in `ready` (possibly stale).
//! - `live_waiting` counts the entries of `waiting` that name a queued request.

use std::collections::VecDeque;
use std::time::Instant;

use super::store::Key;
use super::{Peer, Router};
use crate::auth::ResumeSecret;
use crate::ids::{ChannelId, ClientId, ConnId};
use crate::protocol::{decode_u32, ErrorCode, Flags};

pub(super) struct Member {
    pub(super) conn: ConnId,
    pub(super) client: ClientId,
    /// What a HELLO taking over this client id must present (see `presence.rs`).
    pub(super) secret: ResumeSecret,
}

/// A member that left less than the grace period ago (see `presence.rs`).
pub(super) struct Ghost {
    pub(super) client: ClientId,
    pub(super) timer: crate::wheel::TimerKey,
    /// What a HELLO resuming this client id must present (see `presence.rs`).
    pub(super) secret: ResumeSecret,
}

#[derive(Default)]
pub(super) struct Channel {
    pub(super) members: Vec<Member>,
    /// Departed members whose PEER_LEFT waits out the grace period.
    pub(super) ghosts: Vec<Ghost>,
    pub(super) waiting: VecDeque<Key>,
    pub(super) live_waiting: usize,
    pub(super) ready: VecDeque<ConnId>,
}

impl Channel {
    /// Other members.
    pub(super) fn peers_except(&self, conn: ConnId) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(move |m| m.conn != conn)
    }

    /// The peers others see: every member but `conn`, and the ghosts (still present for them).
    pub(super) fn visible_peers_except(&self, conn: ConnId) -> Vec<ClientId> {
        let members = self.peers_except(conn).map(|m| m.client);
        members
            .chain(self.ghosts.iter().map(|g| g.client))
            .collect()
    }

    /// True when nothing keeps the channel: no member, no ghost.
    pub(super) fn is_unused(&self) -> bool {
        self.members.is_empty() && self.ghosts.is_empty()
    }
}

impl Router {
    /// RECEIVE: set the window, then hand out waiting requests.
    pub(super) fn recv_receive(&mut self, from: Peer, payload: &[u8], now: Instant) {
        let Ok(window) = decode_u32(payload) else {
            return self.fail_connection(
                from.conn,
                ErrorCode::MalformedFrame,
                "a receive frame carries a 4-byte window",
            );
        };
        if let Some(c) = self.conns.get_mut(from.conn) {
            log::debug!("{}: receive window {} => {window}", from.conn, c.window());
            c.set_window(window);
        }
        self.mark_ready(from.conn, from.channel);
        self.assign_waiting(from.channel, now);
    }

    /// Puts `conn` at the back of the ready FIFO if it has a free slot and is not there yet.
    pub(super) fn mark_ready(&mut self, conn: ConnId, channel_id: ChannelId) {
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        let Some(channel) = self.channels.get_mut(&channel_id) else {
            return;
        };
        if c.enter_ready_queue() {
            channel.ready.push_back(conn);
        }
    }

    /// The receiver that has waited longest among those with a free slot, taken off the FIFO.
    pub(super) fn pop_ready_receiver(&mut self, channel_id: ChannelId) -> Option<ConnId> {
        let channel = self.channels.get_mut(&channel_id)?;
        while let Some(conn) = channel.ready.pop_front() {
            let Some(c) = self.conns.get_mut(conn) else {
                continue;
            };
            c.leave_ready_queue();
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
