//! The I/O side of one connection: socket, encryption (plain or TLS), read buffer, decoder.
//!
//! The router owns the outbound queue (it needs its length for flow control); this side owns
//! what arrives. One connection type serves both listeners: its [`Encryption`] is `Plain` or
//! `Tls` (see `tls.rs`), and everything past the read buffer (decoder, router) is the same.
//!
//! Reads land in one scratch buffer shared by every connection and only the bytes received are
//! appended to the connection's own buffer, taken from the server's [`BufferPool`] when bytes
//! arrive and given back once every frame in it is decoded. So an idle connection holds no read
//! buffer at all, a read never re-zeroes 64 KiB, and busy connections cycle warm buffers. Reading is edge-triggered: after a readiness event the server reads until
//! `WouldBlock`, the per-wakeup budget, or a pause from the router — in the last two cases the
//! connection is re-queued by the server, since no new event will come for bytes already there.
//!
//! A plain connection appends the bytes read straight to its read buffer (one copy, no other
//! work: the hot path). A TLS connection hands them to rustls and appends the plaintext.

use bytes::BytesMut;
use mio::net::TcpStream;
use std::io::{self, Read};
use std::net::IpAddr;

use super::tls::{Absorbed, TlsSession};
use crate::ids::ConnId;
use crate::protocol::Decoder;
use switchyard_core::pool::BufferPool;

/// Bytes asked of the socket per read call (the scratch buffer's size): many small frames per
/// syscall, and a large payload in few calls.
pub(crate) const READ_CHUNK: usize = 64 * 1024;

/// Why a connection is being closed (for the log line and counters).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CloseReason {
    /// The peer closed its side (EOF).
    PeerClosed,
    /// A read or write failed.
    IoError(io::ErrorKind),
    /// The router asked for it after a protocol error.
    ProtocolError,
    /// The server is shutting down.
    Shutdown,
    /// TLS failed: a bad record, a failed handshake, an alert from the peer.
    TlsError,
}

/// Result of one [`IoConnection::fill`] call.
pub(crate) enum Fill {
    /// Read this many bytes (more may be waiting).
    Read(usize),
    /// Nothing more to read for now.
    WouldBlock,
    /// The peer closed its side (for TLS: TCP EOF, or `close_notify` once the plaintext
    /// before it was returned).
    Eof,
    /// TLS: the handshake completed with this read (`n` bytes read).
    TlsHandshakeDone(usize),
    /// TLS: rustls refused the input; the connection must close (its alert is queued).
    TlsFailed(rustls::Error),
}

/// How a connection's bytes are carried: in the clear or inside TLS records. (Not "transport":
/// that names the client's socket threads.)
pub(crate) enum Encryption {
    /// Frames straight on the socket.
    Plain,
    /// Frames inside TLS records (boxed: a plain connection stays small).
    Tls(Box<TlsSession>),
}

pub(crate) struct IoConnection {
    pub(crate) id: ConnId,
    pub(crate) stream: TcpStream,
    /// The peer's IP address (for the per-address connection limit).
    pub(crate) ip: IpAddr,
    pub(crate) encryption: Encryption,
    pub(crate) read_buf: BytesMut,
    pub(crate) decoder: Decoder,
    /// Queued in the server's to-read list (avoids duplicates).
    pub(crate) queued_for_read: bool,
    /// Queued in the server's to-flush list.
    pub(crate) queued_for_flush: bool,
    /// The read buffer's capacity as last counted in the broker's memory budget (`input.rs`).
    pub(crate) counted_capacity: usize,
    /// Waiting in the server's list of connections not read for the memory budget's sake.
    pub(crate) budget_blocked: bool,
    /// A readiness event said the peer closed its side (FIN) or the socket failed (RST, error):
    /// remembered, since an edge-triggered event is not repeated (see `input.rs`).
    pub(crate) departure: Option<CloseReason>,
    /// The peer shut its write side and the router keeps the connection for its answers
    /// (`input.rs`): it is never read again, and is closed once the router says it is done.
    pub(crate) read_closed: bool,
    /// When it was accepted, for the duration in its close log line.
    pub(crate) accepted_at: Option<std::time::Instant>,
    /// Why it failed, when the I/O layer knows better than its close reason (a TLS error's
    /// text), for its close log line.
    pub(crate) failure: Option<String>,
}

impl IoConnection {
    pub(crate) fn new(
        id: ConnId,
        stream: TcpStream,
        ip: IpAddr,
        encryption: Encryption,
        max_payload: u32,
    ) -> IoConnection {
        IoConnection {
            id,
            stream,
            ip,
            encryption,
            read_buf: BytesMut::new(),
            decoder: Decoder::new(max_payload),
            queued_for_read: false,
            queued_for_flush: false,
            counted_capacity: 0,
            budget_blocked: false,
            departure: None,
            read_closed: false,
            accepted_at: None,
            failure: None,
        }
    }

    /// Reads once from the socket through `scratch` into the read buffer (for TLS: through
    /// rustls, which appends the plaintext).
    pub(crate) fn fill(&mut self, scratch: &mut [u8], pool: &mut BufferPool) -> io::Result<Fill> {
        if let Encryption::Tls(tls) = &self.encryption {
            if tls.peer_closed {
                return Ok(Fill::Eof);
            }
        }
        loop {
            match self.stream.read(scratch) {
                Ok(0) => return Ok(Fill::Eof),
                Ok(n) => {
                    let tls = match &mut self.encryption {
                        Encryption::Plain => {
                            if self.read_buf.capacity() == 0 {
                                self.read_buf = pool.take();
                            }
                            self.read_buf.extend_from_slice(&scratch[..n]);
                            return Ok(Fill::Read(n));
                        }
                        Encryption::Tls(tls) => tls,
                    };
                    return Ok(match tls.absorb(&scratch[..n], &mut self.read_buf, pool) {
                        Absorbed::Ok => Fill::Read(n),
                        Absorbed::HandshakeDone => Fill::TlsHandshakeDone(n),
                        Absorbed::Failed(e) => Fill::TlsFailed(e),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Fill::WouldBlock),
                Err(e) => return Err(e),
            }
        }
    }

    /// True when rustls holds records to write with nothing queued in the router for them
    /// (handshake messages, alerts, the records of an earlier flush the socket did not take).
    pub(crate) fn tls_wants_write(&self) -> bool {
        match &self.encryption {
            Encryption::Plain => false,
            Encryption::Tls(tls) => tls.conn.wants_write(),
        }
    }

    /// True for a connection of the TLS listener.
    pub(crate) fn is_tls(&self) -> bool {
        matches!(self.encryption, Encryption::Tls(_))
    }

    /// Gives an emptied read buffer back to the pool, so an idle connection holds none.
    pub(crate) fn trim(&mut self, pool: &mut BufferPool) {
        if self.read_buf.is_empty() && self.read_buf.capacity() > 0 {
            pool.give(std::mem::take(&mut self.read_buf));
        }
    }
}
