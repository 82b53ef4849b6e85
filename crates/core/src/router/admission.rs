//! Admission: what a connection may cost before its handshake, and who makes room for whom.
//!
//! An unauthenticated connection (one awaiting its HELLO) is the one kind a client can open
//! without proving anything, so it is the one kind that must be cheap and bounded:
//! - its frames are limited to [`MAX_HELLO_PAYLOAD`] bytes of payload (the I/O layer's decoder
//!   enforces it at the header, before any payload byte is buffered; see
//!   [`Router::is_awaiting_hello`]);
//! - at most `max_unauthenticated` of them exist at once: when one more is accepted, the
//!   *oldest* one still awaiting its hello gets ERROR HANDSHAKE_REQUIRED and is closed. An honest
//!   client is unauthenticated for one round trip, so it is always among the newest; a flood of
//!   handshake-less connections only ever evicts itself, and never locks anyone out.
//!
//! ```text
//!   handle_connect ─▶ pushed at the back of the FIFO; unauthenticated += 1
//!        │             over max_unauthenticated? pop the front (skipping stale entries),
//!        │             HANDSHAKE_REQUIRED + close it (which counts it out)
//!        ├─ HELLO ok (Open) ─────────┐
//!        └─ closed or removed ───────┴─▶ unauthenticated -= 1 (its FIFO entry becomes stale)
//! ```
//! Channels kept only by departed peers (ghosts in their grace period) do not block new
//! channels: when a HELLO would create a channel beyond `max_channels`, the channel that became
//! ghost-only longest ago is dropped early (its ghosts leave without PEER_LEFT: there is no
//! member left to tell), and the new channel takes its place.
//!
//! Both FIFOs hold stale entries (a connection that completed its handshake, a channel that got
//! a member back or expired); they are skipped when popped and compacted away when they outnumber
//! the live ones, so every operation here is amortised O(1).
//!
//! # Invariants
//! - `unauthenticated` is the number of connections in `AwaitingHello`, and each of them is in
//!   the `awaiting_hello` FIFO, in accept order (checked by [`Router::check_invariants`]).
//! - A connection awaiting its hello never has a frame of more than [`MAX_HELLO_PAYLOAD`] payload
//!   bytes decoded (the I/O layer's contract, stated on [`Router::is_awaiting_hello`]).

use std::collections::VecDeque;

use super::Router;
use crate::ids::{ChannelId, ConnId};
use crate::protocol::{DecodeError, ErrorCode, MAX_HELLO_PAYLOAD};

/// The admission FIFOs; see the module docs.
#[derive(Default)]
pub(super) struct Admission {
    /// Connections in accept order; the live entries are those still awaiting their hello.
    awaiting_hello: VecDeque<ConnId>,
    /// Connections awaiting their hello.
    pub(super) unauthenticated: usize,
    /// Channels in the order they became ghost-only; the live entries are those still so.
    ghost_only: VecDeque<ChannelId>,
}

impl Router {
    /// True while `conn` has not completed its handshake (it awaits its HELLO).
    ///
    /// The I/O layer MUST decode such a connection's frames with a payload limit of at most
    /// [`MAX_HELLO_PAYLOAD`] bytes, and raise it to the configured max payload once this turns
    /// false after a HELLO (only a HELLO completes a handshake).
    pub fn is_awaiting_hello(&self, conn: ConnId) -> bool {
        self.conns.get(conn).is_some_and(|c| c.is_awaiting_hello())
    }

    /// The text of the error frame for a decode error on `conn`: says when the limit broken was
    /// the one before the handshake.
    pub(super) fn decode_error_text(&self, conn: ConnId, error: DecodeError) -> String {
        match error {
            DecodeError::PayloadTooLarge { len, max }
                if max <= MAX_HELLO_PAYLOAD && self.is_awaiting_hello(conn) =>
            {
                format!(
                    "payload length {len} exceeds the limit of {max} bytes before the handshake \
                     (a hello carries at most a token of {MAX_HELLO_PAYLOAD} bytes)"
                )
            }
            _ => error.to_string(),
        }
    }

    /// A new connection awaits its hello: count it, and evict the oldest unauthenticated
    /// connection while there are more than `max_unauthenticated`.
    pub(super) fn admit_unauthenticated(&mut self, conn: ConnId) {
        self.admission.awaiting_hello.push_back(conn);
        self.admission.unauthenticated += 1;
        let max = self.config.max_unauthenticated.max(1);
        while self.admission.unauthenticated > max {
            let Some(oldest) = self.admission.awaiting_hello.pop_front() else {
                // INVARIANT: every unauthenticated connection is in the FIFO.
                debug_assert!(false, "unauthenticated count without FIFO entries");
                return;
            };
            if !self.is_awaiting_hello(oldest) {
                continue; // stale
            }
            self.counters.unauthenticated_evicted += 1;
            // Closing counts it out (`left_awaiting_hello`).
            self.fail_connection(
                oldest,
                ErrorCode::HandshakeRequired,
                &format!(
                    "{max} connections are awaiting their hello: the oldest is closed to make \
                     room (send HELLO right after connecting)"
                ),
            );
        }
    }

    /// A connection left `AwaitingHello` (its handshake completed, or it is closing or gone).
    /// Call once per connection, when it leaves that state.
    pub(super) fn left_awaiting_hello(&mut self) {
        let admission = &mut self.admission;
        // INVARIANT: counted in once at connect, out once when it leaves AwaitingHello.
        debug_assert!(admission.unauthenticated > 0, "unauthenticated underflow");
        admission.unauthenticated = admission.unauthenticated.saturating_sub(1);
        if admission.awaiting_hello.len() > 2 * admission.unauthenticated + 32 {
            let conns = &self.conns;
            admission
                .awaiting_hello
                .retain(|c| conns.get(*c).is_some_and(|c| c.is_awaiting_hello()));
        }
    }

    /// `channel` has just lost its last member and keeps ghosts only.
    pub(super) fn note_ghost_only(&mut self, channel: ChannelId) {
        self.admission.ghost_only.push_back(channel);
        let admission = &mut self.admission;
        if admission.ghost_only.len() > 2 * self.channels.len() + 32 {
            let channels = &self.channels;
            admission.ghost_only.retain(|id| {
                channels
                    .get(id)
                    .is_some_and(|c| c.members.is_empty() && !c.ghosts.is_empty())
            });
        }
    }

    /// Drops the channel that has been ghost-only longest, if any: its ghosts leave early,
    /// without PEER_LEFT (no member is left to tell). True when one was dropped.
    pub(super) fn evict_ghost_channel(&mut self) -> bool {
        while let Some(id) = self.admission.ghost_only.pop_front() {
            let ghost_only = self
                .channels
                .get(&id)
                .is_some_and(|c| c.members.is_empty() && !c.ghosts.is_empty());
            if !ghost_only {
                continue; // stale: a member came back, or the channel expired
            }
            if let Some(channel) = self.channels.remove(&id) {
                // INVARIANT: waiting requests belong to members; it has none.
                debug_assert_eq!(channel.live_waiting, 0);
                for ghost in channel.ghosts {
                    self.wheel.remove(ghost.timer);
                }
            }
            self.counters.ghost_channels_evicted += 1;
            log::debug!("channel {id}: kept by departed peers only, dropped for a new channel");
            return true;
        }
        false
    }

    /// Applies the settings of `new` that are safe to change while running: `tokens` (each new
    /// HELLO is checked against them; connected clients stay), `max_unauthenticated`,
    /// `max_channels`, `max_peers_per_channel`, `max_in_flight_per_connection`,
    /// `max_waiting_per_channel` and `handshake_timeout` (each checked when a connection,
    /// HELLO or START arrives: a lowered limit undoes nothing already admitted). The rest of
    /// `new` is ignored: sizes, timeouts and intervals are announced in WELCOMEs or shape state
    /// in place, and change only with a restart.
    pub fn reload(&mut self, new: &super::RouterConfig) {
        let config = &mut self.config;
        config.tokens = new.tokens.clone();
        config.max_unauthenticated = new.max_unauthenticated;
        config.max_channels = new.max_channels;
        config.max_peers_per_channel = new.max_peers_per_channel;
        config.max_in_flight_per_connection = new.max_in_flight_per_connection;
        config.max_waiting_per_channel = new.max_waiting_per_channel;
        config.handshake_timeout = new.handshake_timeout;
    }

    /// The admission invariants (tests only; linear).
    pub(super) fn check_admission_invariants(&self) {
        let awaiting: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.is_awaiting_hello())
            .map(|(id, _)| id)
            .collect();
        assert_eq!(self.admission.unauthenticated, awaiting.len());
        for conn in awaiting {
            assert!(
                self.admission.awaiting_hello.contains(&conn),
                "{conn} awaits its hello but is not in the admission FIFO"
            );
        }
    }
}
