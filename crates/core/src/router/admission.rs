//! Admission: what a connection may cost before its handshake.
//!
//! An unauthenticated connection (one awaiting its HELLO) is the one kind a client can open
//! without proving anything, so it is the one kind that must be cheap and bounded:
//! - its frames are limited to [`MAX_HELLO_PAYLOAD`] bytes of payload (the I/O layer's decoder
//!   enforces it at the header, before any payload byte is buffered; see
//!   [`Router::is_awaiting_hello`]);
//! - it holds one handshake timer (`presence.rs`).
//!
//! # Invariants
//! - A connection awaiting its hello never has a frame of more than [`MAX_HELLO_PAYLOAD`] payload
//!   bytes decoded (the I/O layer's contract, stated on [`Router::is_awaiting_hello`]).

use super::Router;
use crate::ids::ConnId;
use crate::protocol::{DecodeError, MAX_HELLO_PAYLOAD};

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
}
