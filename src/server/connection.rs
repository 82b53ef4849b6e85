//! The I/O side of one connection: socket, read buffer, decoder.
//!
//! The router owns the outbound queue (it needs its length for flow control); this side owns
//! what arrives. Reading is edge-triggered: after a readiness event the server reads until
//! `WouldBlock`, the per-wakeup budget, or a pause from the router — in the last two cases the
//! connection is re-queued by the server, since no new event will come for bytes already there.

use bytes::BytesMut;
use mio::net::TcpStream;
use std::io::{self, Read};
use std::net::SocketAddr;

use crate::ids::ConnId;
use crate::protocol::{Decoder, HEADER_LEN};

/// Bytes asked of the socket per read call: many small frames per syscall, and a large payload
/// in few calls.
const READ_CHUNK: usize = 64 * 1024;

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
}

/// Result of one [`IoConnection::fill`] call.
pub(crate) enum Fill {
    /// Read this many bytes (more may be waiting).
    Read(usize),
    /// Nothing more to read for now.
    WouldBlock,
    /// The peer closed its side.
    Eof,
}

pub(crate) struct IoConnection {
    pub(crate) id: ConnId,
    pub(crate) stream: TcpStream,
    pub(crate) peer_addr: Option<SocketAddr>,
    pub(crate) read_buf: BytesMut,
    pub(crate) decoder: Decoder,
    /// Queued in the server's to-read list (avoids duplicates).
    pub(crate) queued_for_read: bool,
    /// Queued in the server's to-flush list.
    pub(crate) queued_for_flush: bool,
}

impl IoConnection {
    pub(crate) fn new(id: ConnId, stream: TcpStream, max_payload: u32) -> IoConnection {
        let peer_addr = stream.peer_addr().ok();
        IoConnection {
            id,
            stream,
            peer_addr,
            read_buf: BytesMut::with_capacity(READ_CHUNK),
            decoder: Decoder::new(max_payload),
            queued_for_read: false,
            queued_for_flush: false,
        }
    }

    /// Reads once from the socket into the read buffer.
    pub(crate) fn fill(&mut self) -> io::Result<Fill> {
        let start = self.read_buf.len();
        // Room for a read chunk and at least a header, reusing the buffer's capacity when the
        // bytes before `start` were already handed out.
        let want = READ_CHUNK.max(HEADER_LEN);
        self.read_buf.resize(start + want, 0);
        loop {
            match self.stream.read(&mut self.read_buf[start..]) {
                Ok(0) => {
                    self.read_buf.truncate(start);
                    return Ok(Fill::Eof);
                }
                Ok(n) => {
                    self.read_buf.truncate(start + n);
                    return Ok(Fill::Read(n));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.read_buf.truncate(start);
                    return Ok(Fill::WouldBlock);
                }
                Err(e) => {
                    self.read_buf.truncate(start);
                    return Err(e);
                }
            }
        }
    }
}
