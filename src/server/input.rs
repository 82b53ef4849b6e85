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
//! Before its handshake a connection's decoder refuses payloads beyond
//! [`MAX_HELLO_PAYLOAD`](crate::protocol::MAX_HELLO_PAYLOAD) at the header (set at accept): an
//! unauthenticated connection buffers at most one header and that much payload. After the frame
//! that completed the handshake (a HELLO) the limit is raised to the configured max payload.

use std::time::Instant;

use super::connection::{CloseReason, Encryption, Fill};
use super::Server;
use crate::ids::ConnId;
use crate::protocol::FrameType;

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
            let slot = self
                .conns
                .get_mut(id.slot as usize)
                .and_then(|c| c.as_mut());
            let Some(c) = slot.filter(|c| c.id == id) else {
                return;
            };
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
                        log::info!("{who}: TLS handshake failed: {error}");
                    } else {
                        log::info!("{who}: TLS error: {error}");
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
                Ok(Fill::Eof) => return self.close(id, CloseReason::PeerClosed, now),
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

    pub(super) fn queue_read(&mut self, id: ConnId) {
        if let Some(c) = self.conn_mut(id) {
            if !std::mem::replace(&mut c.queued_for_read, true) {
                self.to_read.push_back(id);
            }
        }
    }
}
