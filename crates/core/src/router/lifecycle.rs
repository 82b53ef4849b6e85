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

use std::time::Instant;

use super::{Output, PauseCause, Router, StreamKey};
use crate::ids::{ConnId, RequestId};
use crate::protocol::{DecodeError, ErrorCode};

impl Router {
    /// A malformed byte stream on `conn`: queue the matching error frame and close it.
    pub fn handle_decode_error(&mut self, conn: ConnId, error: DecodeError, now: Instant) {
        self.now = self.now.max(now);
        log::debug!("{conn}: malformed input: {error}");
        self.fail_connection(conn, error.code(), &error.to_string());
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
        if let Some((code, text)) = error {
            // Debug: the connection's one info line is the I/O layer's at its close, which names
            // this code (`Router::close_cause`).
            log::debug!("{}: closing on {code:?}: {text}", c.describe());
            if let Some(c) = self.conns.get_mut(conn) {
                c.note_close_code(code);
            }
            self.send_error(conn, code, RequestId::NIL, text);
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
        let mut streams = c.release();
        let membership = c.membership();
        // Its waiting requests go first, so that slots freed by ending its assigned ones are not
        // handed one of its own doomed requests.
        let requests = &self.requests;
        streams.sort_by_key(|s| match s {
            StreamKey::Request(k) => !requests.get(*k).is_some_and(|r| r.is_queued()),
            StreamKey::Broadcast(_) => true,
        });
        let now = self.now;
        for stream in streams {
            match stream {
                StreamKey::Request(key) => self.end_request_for_departed(key, conn, now),
                StreamKey::Broadcast(key) => self.end_broadcast_for_departed(key, conn),
            }
        }
        if let Some((channel, client)) = membership {
            self.leave_channel(conn, channel, client);
        }
        self.unpause(conn, PauseCause::Consumer);
        self.unpause(conn, PauseCause::Held);
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
