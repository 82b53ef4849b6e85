//! Presence obeys the watermark: a peer that does not read its presence frames gets no more of
//! them, and one marker once it has caught up.
//!
//! ```text
//!   announce(PEER_JOINED/PEER_LEFT) to peer P:
//!     P owes a marker, or P's queue > high watermark, or the broker over its budget
//!        ──▶ not queued; P owes a marker (listed in `presence_overflowed`)
//!     otherwise ──▶ queued as usual
//!   P's queue written down to the low watermark (handle_written), or once per turn for every
//!   P that owes one (handle_timeout), with the broker under its budget
//!        ──▶ ERROR PRESENCE_OVERFLOW (request id nil, not fatal) to P; P owes nothing
//! ```
//! So one churner joining and leaving 2 500 times a second costs each peer that does not read
//! at most its high watermark (plus one frame), not a frame per event; and a peer that only
//! fell behind for a while learns that it missed events and re-syncs with PEERS (whose answer,
//! an answer to its own frame, is bounded by its own watermark like any other).
//!
//! # Invariants
//! - A connection that owes a marker is listed in `presence_overflowed`. The list may also hold
//!   connections that no longer owe one (served by a write, or departed): they are dropped from
//!   it when it is next worked through, once per turn.

use super::Router;
use crate::ids::{ConnId, RequestId};
use crate::protocol::ErrorCode;

impl Router {
    /// True when a presence frame must not be queued to `conn` (it is marked as owing a
    /// marker instead).
    pub(super) fn presence_overflows(&mut self, conn: ConnId) -> bool {
        let over_budget = self.is_over_budget();
        let high = self.config.high_watermark;
        let Some(c) = self.conns.get_mut(conn) else {
            return true;
        };
        if c.owes_presence_marker() {
            self.counters.presence_dropped += 1;
            return true;
        }
        if c.outbound().len() <= high && !over_budget {
            return false;
        }
        c.set_owes_presence_marker(true);
        self.presence_overflowed.push(conn);
        self.counters.presence_dropped += 1;
        log::debug!("{conn}: presence events dropped until it catches up");
        true
    }

    /// Sends the marker to `conn` if it owes one and has caught up (its queue at or below the
    /// low watermark, the broker under its budget). True when it no longer owes one.
    pub(super) fn send_presence_marker_if_drained(&mut self, conn: ConnId) -> bool {
        let over_budget = self.is_over_budget();
        let low = self.config.low_watermark;
        let Some(c) = self.conns.get_mut(conn) else {
            return true;
        };
        if !c.owes_presence_marker() {
            return true;
        }
        if over_budget || c.outbound().len() > low || !c.is_open() {
            return false;
        }
        c.set_owes_presence_marker(false);
        self.send_error(
            conn,
            ErrorCode::PresenceOverflow,
            RequestId::NIL,
            "presence events were dropped while you were behind: re-sync with PEERS",
        );
        true
    }

    /// Once per turn: markers to every connection that owes one and has caught up.
    pub(super) fn send_presence_markers(&mut self) {
        if self.presence_overflowed.is_empty() {
            return;
        }
        let mut owing = std::mem::take(&mut self.presence_overflowed);
        owing.retain(|conn| !self.send_presence_marker_if_drained(*conn));
        // Nothing was pushed meanwhile: a marker is an error frame, not presence.
        self.presence_overflowed = owing;
    }
}
