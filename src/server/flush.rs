//! Flushing: the server's side of the router's byte seam.
//!
//! The router owns each connection's outbound queue and lends its front as a
//! [`Transmit`](crate::router::Transmit); this module writes it and reports what was written
//! (see the router's module docs, "Writing: the byte seam"). Everything about sockets lives
//! here, not in the core: the vectored write, `Interrupted` (retried), `WouldBlock` (wait for a
//! writable event), `Ok(0)` and other errors (close), and the per-wakeup byte budget.
//!
//! # Contract
//! - Every byte a write took is reported to [`Router::handle_written`] right after that write,
//!   before anything else can fail: bytes written before an error leave the buffered count.
//! - A connection is flushed once per turn, up to `ServerConfig::write_budget` bytes; one
//!   stopped by the budget is re-queued for the next turn (no writable event would come for a
//!   socket that still has room).
//! - A TLS connection's plaintext goes into rustls, which takes at most its buffer limit
//!   ([`BUFFER_LIMIT`](super::tls::BUFFER_LIMIT)) of records not yet on the socket; what rustls
//!   does not take stays in the router's queue, where the watermarks see it. See `tls.rs`.
//! - A connection whose peer half-closed (`input.rs`) is closed after the flush that empties its
//!   queue once the router has nothing more in flight for it.
//! - After every connection's flush the router's outputs are polled: a queue that went below
//!   the low watermark resumes the producers paused on it.

use std::io::{self, IoSlice, Write};

use mio::net::TcpStream;

use super::connection::{CloseReason, Encryption, IoConnection};
use super::Server;
use crate::ids::ConnId;
use crate::router::Router;

/// Why one connection's flush stopped.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Flushed {
    /// The router's queue is empty.
    Empty,
    /// The socket (or rustls' buffer behind it) takes no more now: a writable event resumes.
    Blocked,
    /// The per-turn byte budget ran out with bytes still queued: flush again next turn.
    BudgetSpent,
}

/// Writes `id`'s queued bytes through `write` until the queue is empty, `write` takes nothing
/// more (`Ok(None)`), or `budget` bytes were written. `write` gets the front of the queue and
/// returns how many bytes of it it took.
///
/// # Errors
/// The error of `write`: the caller closes the connection. Every byte taken before it has been
/// reported to the router.
fn write_queue(
    router: &mut Router,
    id: ConnId,
    budget: usize,
    mut write: impl FnMut(&[IoSlice<'_>]) -> io::Result<Option<usize>>,
) -> io::Result<Flushed> {
    let mut written_total = 0;
    loop {
        let Some(transmit) = router.poll_transmit(id) else {
            return Ok(Flushed::Empty);
        };
        if written_total >= budget {
            return Ok(Flushed::BudgetSpent);
        }
        let Some(written) = write(transmit.slices())? else {
            return Ok(Flushed::Blocked);
        };
        router.handle_written(id, written);
        written_total += written;
    }
}

/// One vectored write to a plain socket: `Ok(None)` when it would block.
fn write_plain(stream: &mut TcpStream, slices: &[IoSlice<'_>]) -> io::Result<Option<usize>> {
    loop {
        match stream.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => return Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}

/// Flushes one connection, up to `budget` bytes of the router's queue.
///
/// # Errors
/// A socket (or rustls) error: the caller closes the connection.
fn flush_connection(
    router: &mut Router,
    c: &mut IoConnection,
    budget: usize,
) -> io::Result<Flushed> {
    let id = c.id;
    match &mut c.encryption {
        Encryption::Plain => {
            let stream = &mut c.stream;
            write_queue(router, id, budget, |slices| write_plain(stream, slices))
        }
        Encryption::Tls(tls) => {
            let stream = &mut c.stream;
            // Records rustls already holds go first, even with nothing queued in the router
            // (the handshake, an alert, what the socket did not take last time).
            tls.push_records(stream)?;
            let flushed = write_queue(router, id, budget, |slices| {
                tls.write_plaintext(stream, slices)
            })?;
            // The records of the last plaintext taken; what the socket does not take now goes
            // at the next flush or writable event.
            tls.push_records(stream)?;
            Ok(flushed)
        }
    }
}

impl Server {
    /// Queues `id` for the flush at the end of the turn (once, however often it is asked).
    pub(super) fn queue_flush(&mut self, id: ConnId) {
        if let Some(c) = self.conn_mut(id) {
            if !std::mem::replace(&mut c.queued_for_flush, true) {
                self.to_flush.push(id);
            }
        }
    }

    /// Writes every queued connection once, up to the write budget each.
    pub(super) fn flush_all(&mut self) {
        let mut pending = std::mem::take(&mut self.to_flush);
        for id in pending.drain(..) {
            let budget = self.config.write_budget;
            let Some(slot) = self.conns.get_mut(id.slot as usize) else {
                continue;
            };
            let Some(c) = slot.as_mut().filter(|c| c.id == id) else {
                continue;
            };
            c.queued_for_flush = false;
            match flush_connection(&mut self.router, c, budget) {
                // A half-closed connection (`input.rs`) whose answers are all written.
                Ok(Flushed::Empty) if c.read_closed && self.router.is_read_closed_done(id) => {
                    self.to_close.push((id, CloseReason::PeerClosed));
                }
                Ok(Flushed::Empty) | Ok(Flushed::Blocked) => {}
                Ok(Flushed::BudgetSpent) => {
                    c.queued_for_flush = true;
                    self.to_flush.push(id);
                }
                Err(e) => self.to_close.push((id, CloseReason::IoError(e.kind()))),
            }
            // Writing may have taken a queue below the low watermark: resumes are outputs.
            self.poll_router_outputs();
        }
        // Keep the vector's capacity for the next turn.
        if self.to_flush.is_empty() {
            self.to_flush = pending;
        } else {
            self.to_flush.append(&mut pending);
        }
    }
}
