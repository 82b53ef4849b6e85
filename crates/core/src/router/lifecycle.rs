//! A connection's end: closing it on the router's initiative (a protocol error, the handshake
//! or heartbeat timeout, a takeover, shutdown) and forgetting it when the I/O layer reports it
//! gone.
//!
//! ```text
//!   close_connection ── error frame queued, everything it holds released, Closing,
//!                       Output::Close ──▶ (I/O layer writes, closes) ──▶ handle_disconnect
//!   handle_disconnect ─ released (if not yet), timers removed, queue dropped, waiters resumed,
//!                       removed from the table: its ConnId is never valid again
//! ```
//! Both are idempotent. Releasing ends the connection's waiting requests first, so the slots its
//! assigned requests free are not handed one of its own doomed requests.
//!
//! # Amortised cleanup
//! A departing connection may take part in tens of thousands of requests (a receiver with a
//! large window, a sender at its in-flight limit), and ending each sends a frame and may assign
//! a waiting request. So releasing a connection does only what is bounded at once — its
//! waiting requests (at most the channel's waiting limit), its presence and its pauses — and
//! queues its assigned requests and broadcasts on `cleanup`. The queue is worked off
//! [`CLEANUP_PER_TURN`] streams per instant: the I/O layer passes one `now` per loop turn, so
//! that is per turn, shared by every departure of the turn; [`Router::poll_timeout`] returns
//! the present while work is left, so the next turn comes at once. Each stream's end is O(1)
//! (stream sets, not lists: see `connection.rs`), so a turn's cleanup costs O(budget).
//!
//! Meanwhile a queued stream may name a connection that is gone: frames to it are dropped
//! (`send` finds no connection), its counterpart waits for the cleanup's answer (PEER_GONE,
//! CANCEL), and a stream that ends on its own first (a response's FINAL, its timer) is simply
//! gone when the cleanup reaches its key (generation-checked).

use std::time::Instant;

use super::{Output, PauseCause, Router, StreamKey};

/// Streams of departed connections ended per loop turn (per distinct `now`). At a few
/// microseconds each (a frame to the counterpart, a waiting request assigned), about a
/// millisecond of loop time.
pub(super) const CLEANUP_PER_TURN: usize = 512;
use crate::ids::{ConnId, RequestId};
use crate::protocol::{DecodeError, ErrorCode};

impl Router {
    /// A malformed byte stream on `conn`: queue the matching error frame and close it.
    pub fn handle_decode_error(&mut self, conn: ConnId, error: DecodeError, now: Instant) {
        self.now = self.now.max(now);
        log::debug!("{conn}: malformed input: {error}");
        let text = self.decode_error_text(conn, error);
        self.fail_connection(conn, error.code(), &text);
    }

    /// `conn` closed. Frees everything it owned and tells whoever waited on it. Idempotent:
    /// unknown (already closed) connections are ignored.
    pub fn handle_disconnect(&mut self, conn: ConnId, now: Instant) {
        self.forget_connection(conn, now);
        if self.shutting_down {
            self.close_idle_for_shutdown();
        }
    }

    fn forget_connection(&mut self, conn: ConnId, now: Instant) {
        self.now = self.now.max(now);
        if !self.conns.contains(conn) {
            return;
        }
        self.release_connection(conn);
        if let Some(mut c) = self.conns.remove(conn) {
            if c.is_awaiting_hello() {
                self.left_awaiting_hello();
            }
            if let Some(timer) = c.liveness_mut().take_timer() {
                self.wheel.remove(timer);
            }
            if let Some(timer) = c.take_handshake_deadline() {
                self.wheel.remove(timer);
            }
            self.outbound_bytes -= c.outbound().len();
            c.outbound_mut().clear(&mut self.outbound_pool);
            for waiter in c.take_waiters() {
                self.unpause(waiter, PauseCause::Consumer);
            }
            self.budget_waiters.retain(|w| *w != conn);
            self.relieve_budget();
        }
    }

    /// Sends a connection-fatal error, frees the connection's state and asks the I/O layer to
    /// close it. Idempotent.
    pub(super) fn fail_connection(&mut self, conn: ConnId, code: ErrorCode, text: &str) {
        self.close_connection(conn, Some((code, text)));
    }

    /// Frees the connection's state and asks the I/O layer to close it, after an error frame
    /// when one is given. Idempotent.
    pub(super) fn close_connection(&mut self, conn: ConnId, error: Option<(ErrorCode, &str)>) {
        let Some(c) = self.conns.get(conn) else {
            return;
        };
        if c.is_closing() {
            return;
        }
        let awaiting_hello = c.is_awaiting_hello();
        if let Some((code, text)) = error {
            // Debug: the connection's one info line is the I/O layer's at its close, which names
            // this code (`Router::close_cause`).
            log::debug!("{}: closing on {code:?}: {text}", c.describe());
            if let Some(c) = self.conns.get_mut(conn) {
                c.note_close_code(code);
            }
            self.send_error(conn, code, RequestId::NIL, text);
        }
        if awaiting_hello {
            self.left_awaiting_hello();
        }
        self.release_connection(conn);
        match self.conns.get_mut(conn).map(|c| c.close()) {
            Some(Ok(Some(handshake_deadline))) => {
                self.wheel.remove(handshake_deadline);
            }
            Some(Ok(None)) | None => {}
            Some(Err(e)) => {
                // Checked above: releasing never closes it.
                log::debug!("{conn}: {e}");
                debug_assert!(false, "{conn}: {e}");
                return;
            }
        }
        self.outputs.push_back(Output::Close(conn));
    }

    /// Frees every request, broadcast, credit and presence the connection holds, as if it had
    /// gone away. Leaves its outbound queue (an error frame may still be in it).
    pub(super) fn release_connection(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        let streams = c.release();
        let membership = c.membership();
        // Its waiting requests end at once (bounded by the channel's waiting limit, and none may
        // be assigned meanwhile); the rest goes to the amortised cleanup, after them, so that
        // slots freed by ending its assigned ones are not handed one of its own doomed requests.
        let now = self.now;
        for stream in streams {
            match stream {
                StreamKey::Request(key)
                    if self.requests.get(key).is_some_and(|r| r.is_queued()) =>
                {
                    self.end_request_for_departed(key, conn, now)
                }
                stream => self.cleanup.push_back((stream, conn)),
            }
        }
        // Before the departure is announced: within the budget, whoever waited on it hears the
        // end of its requests (PEER_GONE, CANCEL) before its PEER_LEFT.
        self.run_cleanup();
        if let Some((channel, client)) = membership {
            self.leave_channel(conn, channel, client);
        }
        self.unpause(conn, PauseCause::Consumer);
        self.unpause(conn, PauseCause::Held);
    }

    /// Ends queued streams of departed connections, within the budget of the current instant
    /// (see "Amortised cleanup").
    pub(super) fn run_cleanup(&mut self) {
        if self.now > self.cleanup_instant {
            self.cleanup_instant = self.now;
            self.cleanup_budget = CLEANUP_PER_TURN;
        }
        let now = self.now;
        while self.cleanup_budget > 0 {
            let Some((stream, departed)) = self.cleanup.pop_front() else {
                break;
            };
            self.cleanup_budget -= 1;
            match stream {
                StreamKey::Request(key) => self.end_request_for_departed(key, departed, now),
                StreamKey::Broadcast(key) => self.end_broadcast_for_departed(key, departed),
            }
        }
    }

    /// Streams of departed connections not ended yet (see "Amortised cleanup").
    pub fn pending_cleanup(&self) -> usize {
        self.cleanup.len()
    }

    /// A request or broadcast `sender` started has ended: one less of its own in flight.
    pub(super) fn forget_sent(&mut self, sender: ConnId) {
        if let Some(c) = self.conns.get_mut(sender) {
            c.end_sending();
        }
    }

    /// Removes `stream` from the stream list of `conn`.
    pub(super) fn forget_stream(&mut self, conn: ConnId, stream: StreamKey) {
        if let Some(c) = self.conns.get_mut(conn) {
            c.forget_stream(stream);
        }
    }
}
