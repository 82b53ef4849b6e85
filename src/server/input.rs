//! Input: read a connection's socket, decode its frames and feed them to the router.
//!
//! Reading is edge-triggered and bounded: after a readiness event the server reads until
//! `WouldBlock`, the per-turn read budget ([`ServerConfig::read_budget`](super::ServerConfig)),
//! or a pause from the router's flow control. Frames already decoded go first, so a resumed
//! connection finishes its buffered input before the socket is read again. A connection stopped
//! by the budget, or resumed by the router ([`Output::Resume`](crate::router::Output)), is
//! queued to be read again at the end of the turn: no new event would come for bytes already
//! in its socket.
//!
//! # The memory budget
//! Read buffers count in the broker-wide `max_buffered_bytes` by their capacity, reported to
//! the router after every read and decode ([`Router::set_read_buffered`]). While the broker is
//! over the budget, a connection is read only into memory it already holds: a read takes at
//! most the spare capacity of its buffer (a connection with no buffer takes a small sip,
//! [`BUDGET_SIP`], enough for control frames such as RECEIVE, ACK, PING), and a header whose
//! frame would need a larger buffer is not decoded. Such a connection waits in `budget_blocked`
//! and is read again once the broker is back to seven eighths of the budget (checked once per
//! turn). So big frames announced and stalled cannot make the broker allocate past the budget,
//! and receivers' small frames (which free memory) still get through.
//!
//! [`Router::set_read_buffered`]: crate::router::Router::set_read_buffered
//!
//! # Departures while not read
//! Readiness is edge-triggered: the event that says the peer closed (FIN) or reset (RST) comes
//! once, possibly together with the data before it. So the server remembers it on the
//! connection (`departure`), and whenever it stops reading a connection — a router pause, the
//! memory budget — with a departure remembered, it closes the connection at once: its unread
//! input will never be read, and what the broker holds for it (held request frames, its queue)
//! is freed now rather than at its requests' timeouts. An RST or socket error is always a
//! departure; a FIN on a connection the broker is not reading is treated as one too (the broker
//! cannot read what comes before it, so the requests in it can never complete).
//!
//! After every frame fed to the router its outputs are polled at once, so a close or a pause
//! caused by this frame is in force before the next one is decoded. An EOF or read error closes
//! the connection at once, not at the end of the turn: anything routed later in the same turn
//! (a reconnect with the same client id, presence) must see the departure first.
//!
//! Before its handshake a connection's decoder refuses payloads beyond
//! [`MAX_HELLO_PAYLOAD`](crate::protocol::MAX_HELLO_PAYLOAD) at the header (set at accept): an
//! unauthenticated connection buffers at most one header and that much payload. After the frame
//! that completed the handshake (a HELLO) the limit is raised to the configured max payload.
//!
//! Half-close (PROTOCOL.md §1): an EOF after whole frames, from a client with requests or
//! broadcasts in flight, does not close the connection. The router is told
//! ([`Router::handle_read_closed`](crate::router::Router::handle_read_closed)); the connection is
//! never read again but stays open for writing, and `flush.rs` closes it once the router says
//! its answers are all written. An EOF in the middle of a frame closes it as before.

use std::time::Instant;

use super::connection::{CloseReason, Encryption, Fill, IoConnection};
use super::Server;
use crate::ids::ConnId;
use crate::protocol::{FrameType, Header, HEADER_LEN};

/// Bytes a connection without a read buffer may read while the broker is over its memory
/// budget: a few control frames (64-byte headers, 4-byte RECEIVE windows), the size of a fresh
/// pooled buffer, so the sip allocates at most what the pool would.
pub(crate) const BUDGET_SIP: usize = 4 * 1024;
use crate::router::ReadClosed;

impl Server {
    /// Decodes buffered frames and reads more, within the budget, until paused or the socket has nothing more.
    pub(super) fn drive_input(&mut self, id: ConnId, now: Instant) {
        let mut budget = self.config.read_budget;
        loop {
            // Frames already buffered first: they may be all that is left after a pause.
            loop {
                if self.router.is_read_paused(id) {
                    self.close_if_departed_unread(id, now);
                    return;
                }
                let over_budget = self.router.is_over_budget();
                let Some(c) = self.conn_mut(id) else {
                    return;
                };
                if over_budget && decoding_would_grow(c) {
                    return self.block_for_budget(id, now);
                }
                let decoded = c.decoder.decode(&mut c.read_buf);
                self.recount_read(id);
                match decoded {
                    Ok(Some(frame)) => {
                        self.stats.frames_in += 1;
                        let hello = frame.header.frame_type == FrameType::Hello;
                        self.router.handle_frame(id, frame, now);
                        if hello {
                            self.raise_payload_limit(id);
                        }
                        self.poll_router_outputs();
                    }
                    Ok(None) => break,
                    Err(error) => {
                        self.router.handle_decode_error(id, error, now);
                        self.poll_router_outputs();
                        return;
                    }
                }
            }
            if budget == 0 {
                self.queue_read(id);
                return;
            }
            let over_budget = self.router.is_over_budget();
            let slot = self
                .conns
                .get_mut(id.slot as usize)
                .and_then(|c| c.as_mut());
            let Some(c) = slot.filter(|c| c.id == id) else {
                return;
            };
            if c.read_closed {
                return;
            }
            // Over the budget: read only into memory already held (see the module docs).
            let room = if !over_budget {
                self.scratch.len()
            } else if c.read_buf.capacity() == 0 {
                BUDGET_SIP
            } else {
                c.read_buf.capacity() - c.read_buf.len()
            };
            if room == 0 {
                return self.block_for_budget(id, now);
            }
            let room = room.min(self.scratch.len());
            let filled = c.fill(&mut self.scratch[..room], &mut self.read_pool);
            let trim = matches!(filled, Ok(Fill::WouldBlock));
            if trim {
                c.trim(&mut self.read_pool);
            }
            self.recount_read(id);
            let Some(c) = self.conn_mut(id) else {
                return;
            };
            // TLS: input may call for output with nothing queued in the router (the handshake's
            // next flight, an alert, a key update): the flush at the end of the turn writes it.
            let tls_output = c.tls_wants_write();
            match filled {
                Ok(Fill::Read(n)) => {
                    self.stats.bytes_in += n as u64;
                    budget = budget.saturating_sub(n);
                    if tls_output {
                        self.queue_flush(id);
                    }
                }
                Ok(Fill::TlsHandshakeDone(n)) => {
                    self.stats.bytes_in += n as u64;
                    budget = budget.saturating_sub(n);
                    if let Some(Encryption::Tls(tls)) = self.conn_mut(id).map(|c| &c.encryption) {
                        log::debug!(
                            "{id}: TLS handshake done ({:?}, {:?})",
                            tls.conn.protocol_version(),
                            tls.conn.negotiated_cipher_suite().map(|s| s.suite())
                        );
                    }
                    if tls_output {
                        self.queue_flush(id);
                    }
                }
                Ok(Fill::TlsFailed(error)) => {
                    let who = self.router.describe(id);
                    let handshaking = self.conn_mut(id).is_some_and(
                        |c| matches!(&c.encryption, Encryption::Tls(t) if t.is_handshaking()),
                    );
                    if handshaking {
                        log::debug!("{who}: TLS handshake failed: {error}");
                    } else {
                        log::debug!("{who}: TLS error: {error}");
                    }
                    // Said again in the connection's one info line, at its close.
                    if let Some(c) = self.conn_mut(id) {
                        c.failure = Some(error.to_string());
                    }
                    return self.close(id, CloseReason::TlsError, now);
                }
                Ok(Fill::WouldBlock) => return,
                // Close at once, not at the end of the turn: anything routed later in this
                // turn (a reconnect with the same client id, presence) must already see the
                // departure, in the order the peer's actions happened.
                Ok(Fill::Eof) => return self.read_closed(id, now),
                Err(e) => return self.close(id, CloseReason::IoError(e.kind()), now),
            }
        }
    }

    /// After a HELLO: once the handshake is done, the decoder takes the configured max payload.
    fn raise_payload_limit(&mut self, id: ConnId) {
        if self.router.is_awaiting_hello(id) {
            return;
        }
        let max_payload = self.config.router.max_payload;
        if let Some(c) = self.conn_mut(id) {
            c.decoder.set_max_payload(max_payload);
        }
    }

    /// Counts `id`'s read buffer in the memory budget again (its capacity may have changed).
    pub(super) fn recount_read(&mut self, id: ConnId) {
        let Some(c) = self
            .conns
            .get_mut(id.slot as usize)
            .and_then(|c| c.as_mut())
            .filter(|c| c.id == id)
        else {
            return;
        };
        let capacity = c.read_buf.capacity();
        let before = std::mem::replace(&mut c.counted_capacity, capacity);
        self.read_capacity = self.read_capacity - before + capacity;
        self.router.set_read_buffered(self.read_capacity);
    }

    /// `id` needs memory the budget does not allow: read it again once the broker is back
    /// under (see [`Server::unblock_budget`]).
    fn block_for_budget(&mut self, id: ConnId, now: Instant) {
        if let Some(c) = self.conn_mut(id) {
            if !std::mem::replace(&mut c.budget_blocked, true) {
                self.budget_blocked.push(id);
            }
        }
        self.close_if_departed_unread(id, now);
    }

    /// Closes `id` if its peer departed (FIN, RST) while the broker does not read it (a router
    /// pause, the memory budget); true when it did. See "Departures while not read".
    pub(super) fn close_if_departed_unread(&mut self, id: ConnId, now: Instant) -> bool {
        let paused = self.router.is_read_paused(id);
        let Some(c) = self.conn_mut(id) else {
            return false;
        };
        let Some(reason) = c.departure.filter(|_| paused || c.budget_blocked) else {
            return false;
        };
        self.close(id, reason, now);
        true
    }

    /// Once per turn: when the broker is back to seven eighths of its budget, every connection
    /// blocked by it is read again.
    pub(super) fn unblock_budget(&mut self) {
        if self.budget_blocked.is_empty() {
            return;
        }
        let max = self.config.router.max_buffered_bytes;
        if self.router.budget_used() > max - max / 8 {
            return;
        }
        let mut blocked = std::mem::take(&mut self.budget_blocked);
        for id in blocked.drain(..) {
            if let Some(c) = self.conn_mut(id) {
                c.budget_blocked = false;
                self.queue_read(id);
            }
        }
        self.budget_blocked = blocked;
    }

    /// EOF: close, unless the peer half-closed after whole frames and waits for answers.
    fn read_closed(&mut self, id: ConnId, now: Instant) {
        let whole_frames = self.conn_mut(id).is_some_and(|c| c.read_buf.is_empty());
        if !whole_frames {
            return self.close(id, CloseReason::PeerClosed, now);
        }
        match self.router.handle_read_closed(id, now) {
            ReadClosed::Close => self.close(id, CloseReason::PeerClosed, now),
            ReadClosed::KeepForOutput => {
                if let Some(c) = self.conn_mut(id) {
                    c.read_closed = true;
                }
                self.poll_router_outputs();
                // The flush closes it if everything was answered meanwhile.
                self.queue_flush(id);
            }
        }
    }

    pub(super) fn queue_read(&mut self, id: ConnId) {
        if let Some(c) = self.conn_mut(id) {
            if !std::mem::replace(&mut c.queued_for_read, true) {
                self.to_read.push_back(id);
            }
        }
    }
}

/// True when decoding `c`'s next frame would grow its read buffer: a complete header whose frame
/// is neither all there nor fits the buffer's capacity (the decoder reserves room for it). In the
/// middle of a payload the room was reserved already; a malformed header is the decoder's to
/// refuse.
fn decoding_would_grow(c: &IoConnection) -> bool {
    if !c.decoder.is_between_frames() {
        return false;
    }
    let Some(head) = c.read_buf.get(..HEADER_LEN) else {
        return false;
    };
    let mut raw = [0u8; HEADER_LEN];
    raw.copy_from_slice(head);
    let Ok(header) = Header::parse(&raw) else {
        return false;
    };
    if header.payload_len > c.decoder.max_payload() {
        return false;
    }
    let frame = HEADER_LEN + header.payload_len as usize;
    frame > c.read_buf.len() && frame + HEADER_LEN > c.read_buf.capacity()
}
