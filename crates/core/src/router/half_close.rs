//! Half-close: a client that shut its write side (EOF on the broker's read side) still gets the
//! answers to what it sent, like an HTTP client that half-closes after its request.
//!
//! ```text
//!   EOF read ─┬─ no handshake yet, or nothing it sent is in flight ─▶ Close (as before)
//!             └─ requests or broadcasts it sent in flight ─▶ KeepForOutput, a PING (seq 0):
//!                  - its receive window is 0 (it can no longer answer: no new assignment),
//!                  - requests it holds as receiver end as if it had left (sender: PEER_GONE),
//!                  - broadcasts it owes an ack count it as failed,
//!                  - it stays a member of its channel (presence frames still reach it) but
//!                    no new broadcast snapshot includes it,
//!                  - what it sent goes on; when the last of it has ended and its outbound queue
//!                    is written, the I/O layer closes it ([`Router::is_read_closed_done`]).
//! ```
//! The PING tells a half-closed socket from one closed altogether, which TCP does not: both
//! send a FIN, but a closed one answers the PING with a reset, and the I/O layer closes it.
//! Its heartbeat treats it as a connection the broker cannot hear (like one paused by flow
//! control): taking the bytes queued to it is its sign of life, so a half-closed client that
//! stops reading too is still closed after `heartbeat_ms × (misses + 1)`.
//!
//! Invariant: a read-closed connection has window 0 and is no stream's receiver or owing
//! broadcast peer (checked by `invariants.rs` through [`Router::check_invariants`]).

use std::time::Instant;

use bytes::Bytes;

use super::{Router, StreamKey};
use crate::ids::ConnId;
use crate::protocol::{ErrorCode, FrameType, Header};

/// The sequence number of the PING sent to a connection that shut its write side: 0, which no
/// heartbeat PING uses (they count 1, 2, … — `heartbeat.rs`).
pub const HALF_CLOSE_PROBE_SEQUENCE: u32 = 0;

/// What the I/O layer must do after [`Router::handle_read_closed`].
#[must_use]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ReadClosed {
    /// Nothing it sent waits for an answer: close it now (and call
    /// [`Router::handle_disconnect`]), as for any EOF.
    Close,
    /// It waits for answers: keep the connection open for writing, stop reading it, and close
    /// it once [`Router::is_read_closed_done`] says so (check after each flush).
    KeepForOutput,
}

impl Router {
    /// `conn` shut its write side: every frame it sent has been fed, and no more will come.
    /// Poll [`Router::poll_output`] after it (requests it held as receiver end now).
    pub fn handle_read_closed(&mut self, conn: ConnId, now: Instant) -> ReadClosed {
        self.now = self.now.max(now);
        let Some(c) = self.conns.get_mut(conn) else {
            return ReadClosed::Close;
        };
        if !c.is_open() || c.sent_in_flight() == 0 {
            return ReadClosed::Close;
        }
        c.set_read_closed();
        c.set_window(0);
        let streams: Vec<StreamKey> = c.streams().iter().copied().collect();
        for stream in streams {
            match stream {
                StreamKey::Request(key) => {
                    let Some(request) = self.requests.get(key) else {
                        continue;
                    };
                    if request.receiver() != Some(conn) {
                        continue;
                    }
                    let (id, sender) = (request.id, request.sender);
                    self.send_error(
                        sender,
                        ErrorCode::PeerGone,
                        id,
                        "the receiver shut its write side",
                    );
                    self.finish_request(key, now);
                }
                StreamKey::Broadcast(key) => {
                    if self.broadcasts.get(key).is_some_and(|b| b.sender != conn) {
                        self.end_broadcast_for_departed(key, conn);
                    }
                }
            }
        }
        let Some(c) = self.conns.get(conn).filter(|c| c.sent_in_flight() > 0) else {
            return ReadClosed::Close;
        };
        log::debug!(
            "{conn}: write side shut; kept open for the answers to {} streams",
            c.sent_in_flight()
        );
        // The probe: TCP says "FIN" alike for SHUT_WR and for a socket closed altogether. A
        // closed socket answers these bytes with a reset, which ends the connection at once
        // instead of at its requests' timeouts; a half-closed client just reads (and ignores) it.
        let probe = Header {
            channel_id: c.channel(),
            sequence: HALF_CLOSE_PROBE_SEQUENCE,
            is_final: true,
            ..Header::new(FrameType::Ping)
        };
        self.send(conn, &probe, &Bytes::new(), None);
        ReadClosed::KeepForOutput
    }

    /// True when a connection kept open by [`ReadClosed::KeepForOutput`] has nothing left in
    /// flight and nothing queued: the I/O layer closes it now. False for any other connection.
    pub fn is_read_closed_done(&self, conn: ConnId) -> bool {
        self.conns.get(conn).is_some_and(|c| {
            c.is_read_closed() && c.sent_in_flight() == 0 && c.outbound().is_empty()
        })
    }

    /// True when `conn` shut its write side and is kept open for its answers.
    pub fn is_read_closed(&self, conn: ConnId) -> bool {
        self.conns.get(conn).is_some_and(|c| c.is_read_closed())
    }
}
