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
//! After every frame fed to the router its outputs are polled at once, so a close or a pause
//! caused by this frame is in force before the next one is decoded. An EOF or read error closes
//! the connection at once, not at the end of the turn: anything routed later in the same turn
//! (a reconnect with the same client id, presence) must see the departure first.
//!
//! Half-close (PROTOCOL.md §1): an EOF after whole frames, from a client with requests or
//! broadcasts in flight, does not close the connection. The router is told
//! ([`Router::handle_read_closed`](crate::router::Router::handle_read_closed)); the connection is
//! never read again but stays open for writing, and `flush.rs` closes it once the router says
//! its answers are all written. An EOF in the middle of a frame closes it as before.

use std::time::Instant;

use super::connection::{CloseReason, Encryption, Fill};
use super::Server;
use crate::ids::ConnId;
use crate::router::ReadClosed;

impl Server {
    /// Decodes buffered frames and reads more, within the budget, until paused or the socket has nothing more.
    pub(super) fn drive_input(&mut self, id: ConnId, now: Instant) {
        let mut budget = self.config.read_budget;
        loop {
            // Frames already buffered first: they may be all that is left after a pause.
            loop {
                if self.router.is_read_paused(id) {
                    return;
                }
                let Some(c) = self.conn_mut(id) else {
                    return;
                };
                match c.decoder.decode(&mut c.read_buf) {
                    Ok(Some(frame)) => {
                        self.stats.frames_in += 1;
                        self.router.handle_frame(id, frame, now);
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
            let filled = c.fill(&mut self.scratch, &mut self.read_pool);
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
                Ok(Fill::WouldBlock) => {
                    c.trim(&mut self.read_pool);
                    return;
                }
                // Close at once, not at the end of the turn: anything routed later in this
                // turn (a reconnect with the same client id, presence) must already see the
                // departure, in the order the peer's actions happened.
                Ok(Fill::Eof) => return self.read_closed(id, now),
                Err(e) => return self.close(id, CloseReason::IoError(e.kind()), now),
            }
        }
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
