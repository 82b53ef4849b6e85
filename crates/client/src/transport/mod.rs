//! The socket side of the client: connecting, the handshake read, whole-frame writes, and the
//! reader thread.
//!
//! # Threading model
//! One TCP stream per connection, three handles to it (`TcpStream::try_clone`):
//! - the **read half** is read by the client's link thread ([`read_frames`]), the only code that
//!   reads after the handshake. It decodes frames and hands each to a callback; it never blocks on
//!   anything but the socket read (delivery is into unbounded queues) and never waits for the
//!   writer lock (see below). It ends when the socket reports EOF or an error — which
//!   [`Transport::shutdown`] provokes — or when the callback says stop. The link thread then
//!   reconnects (a new stream, a new [`Transport`]) or ends.
//! - the **write half** sits in a `Mutex`; [`Transport::send`] holds it for exactly one frame
//!   (header and payload, then any queued control frames) so frames from different threads never
//!   interleave. No other lock is ever taken while it is held except the control queue's.
//! - a **shutdown handle**, outside any lock, so [`Transport::shutdown`] can unblock a thread stuck
//!   in a write or the reader stuck in a read.
//!
//! # Control frames from the reader thread
//! The reader thread must answer PINGs, but blocking on the writer lock could deadlock it behind a
//! writer that waits for the broker, which may wait for us to read. So [`Transport::send_control`]
//! queues the frame and only *tries* the lock; whoever holds the lock drains the queue before
//! releasing it and re-checks the queue after releasing it, so a queued frame is never stranded.
//!
//! # TLS
//! With TLS ([`ClientTls`](super::ClientTls)) the same three socket handles carry TLS records,
//! and the rustls session sits in a `Mutex` of its own ([`SharedTls`]), held only for in-memory
//! work, never across blocking I/O:
//! - the **reader** reads raw bytes from its socket handle outside any lock, then locks the
//!   session to feed them in (`read_tls`, `process_new_packets`) and take the plaintext, and
//!   unlocks. Its decoder then works on plaintext exactly as for a plain connection.
//! - a **writer**, holding the writer lock, locks the session to encrypt (a part of) its frame
//!   and extract the resulting records into its own buffer, unlocks it, and writes the records
//!   to the socket; large frames go in pieces of at most the buffer limit, so rustls never holds
//!   more than that.
//! - records reach the socket in the order rustls produced them because **only the writer-lock
//!   holder extracts records**. When reading makes rustls want to write (an alert, a TLS 1.3 key
//!   update), the reader never extracts them itself: it triggers the control-flush path
//!   ([`Transport::flush_pending`]: try the lock; the holder drains after its frame and
//!   re-checks after unlocking), which extracts them.
//! - the TLS handshake runs on the connecting thread before the HELLO, bounded by the connect
//!   deadline (socket read and write timeouts set to the time left).
//!
//! A plain connection has no session and takes none of these steps: its reads and writes are
//! the same system calls on the same buffers as before TLS existed.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use log::debug;

use super::error::{Error, ProtocolViolation};
use switchyard_proto::{Decoder, Frame, HEADER_LEN};

#[cfg(feature = "tls")]
pub(crate) mod tls;
// Without the `tls` feature, the same functions over a `SharedTls` that has no values: every
// `Option<SharedTls>` is `None`, and the TLS arms below are provably unreachable.
#[cfg(not(feature = "tls"))]
#[path = "no_tls.rs"]
mod tls;

pub(crate) use tls::SharedTls;
#[cfg(feature = "tls")]
pub(crate) use tls::{share, tls_handshake};

/// Bytes asked of the socket per read: big enough to take several small frames or a good part
/// of a large one per system call.
const READ_CHUNK: usize = 64 * 1024;

/// The clock, read only by the blocking client's calling threads (for their deadlines), the
/// handshake, and the link thread's reconnect backoff; the sans-IO session never sees it.
#[allow(clippy::disallowed_methods)] // The client's blocking API is the one place allowed a clock.
pub(crate) fn now() -> Instant {
    Instant::now()
}

/// Connects to the first address that accepts within `timeout`, with `TCP_NODELAY` set (every
/// frame is written whole, the moment it is made; Nagle would only delay it).
///
/// # Errors
/// [`Error::ConnectTimeout`] when the last address did not answer within `timeout`, else
/// [`Error::ConnectionRefused`] with the last address's error (or a resolution error).
pub(crate) fn connect(addr: impl ToSocketAddrs, timeout: Duration) -> Result<TcpStream, Error> {
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(Error::ConnectionRefused)?
        .collect();
    let mut last = io::Error::new(
        io::ErrorKind::InvalidInput,
        "the address resolved to nothing",
    );
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(stream) => {
                stream.set_nodelay(true).map_err(Error::Io)?;
                return Ok(stream);
            }
            Err(e) => {
                debug!("connect to {addr} failed: {e}");
                last = e;
            }
        }
    }
    if last.kind() == io::ErrorKind::TimedOut {
        // The one way `connect_timeout` reports that the connect timeout ran out.
        return Err(Error::ConnectTimeout);
    }
    Err(Error::ConnectionRefused(last))
}

/// Writes one whole frame: header and payload in one vectored write when the kernel takes it,
/// the rest with `write_all`.
pub(crate) fn write_frame(stream: &mut TcpStream, frame: &Frame) -> io::Result<()> {
    let header = frame.header.encode();
    let payload: &[u8] = &frame.payload;
    let written = loop {
        match stream.write_vectored(&[io::IoSlice::new(&header), io::IoSlice::new(payload)]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    };
    if written < HEADER_LEN {
        stream.write_all(&header[written..])?;
        stream.write_all(payload)
    } else {
        stream.write_all(&payload[written - HEADER_LEN..])
    }
}

/// What one [`read_some`] brought.
pub(crate) enum Received {
    /// Bytes arrived (for TLS, whatever plaintext they held is in the buffer). `tls_output`:
    /// rustls now holds records to send (see the module docs).
    Data { tls_output: bool },
    /// The broker closed the connection (TCP EOF, or TLS `close_notify`).
    Eof,
    /// rustls refused the input; its alert is queued (`tls_output`, in effect).
    #[cfg(feature = "tls")]
    TlsFailed(rustls::Error),
}

/// Reads once from `stream` into `chunk` and appends what it carries to `buf`: the bytes
/// themselves on a plain connection, their plaintext through `tls` on a TLS one.
///
/// # Errors
/// The socket's errors, `Interrupted`, `WouldBlock` and `TimedOut` included, as they came.
pub(crate) fn read_some(
    stream: &mut TcpStream,
    tls: Option<&SharedTls>,
    chunk: &mut [u8],
    buf: &mut BytesMut,
) -> io::Result<Received> {
    if let Some(tls) = tls {
        return tls::read_some(stream, tls, chunk, buf);
    }
    let n = stream.read(chunk)?;
    if n == 0 {
        return Ok(Received::Eof);
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(Received::Data { tls_output: false })
}

/// Writes one frame during the handshake (HELLO, PONG), before the link's transport exists.
pub(crate) fn write_frame_on(
    stream: &mut TcpStream,
    tls: Option<&SharedTls>,
    frame: &Frame,
) -> io::Result<()> {
    match tls {
        None => write_frame(stream, frame),
        Some(tls) => tls::write_frame(stream, tls, &mut Vec::new(), frame),
    }
}

/// Reads the next frame during the handshake, before the reader thread exists. `buf` keeps any
/// bytes read past the frame (they belong to the reader thread afterwards).
///
/// # Errors
/// [`Error::ConnectTimeout`] past `deadline`, [`Error::NotABroker`] for bytes no broker sends
/// first, [`Error::Io`] on EOF or socket errors, [`Error::Protocol`] for an undecodable frame, [`Error::Tls`] when rustls refuses the input.
pub(crate) fn read_frame_until(
    stream: &mut TcpStream,
    tls: Option<&SharedTls>,
    decoder: &mut Decoder,
    buf: &mut BytesMut,
    deadline: Instant,
) -> Result<Frame, Error> {
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        if let Some(error) = crate::handshake::not_a_broker(buf) {
            return Err(error);
        }
        if let Some(frame) = decoder
            .decode(buf)
            .map_err(|e| Error::Protocol(ProtocolViolation::Decode(e)))?
        {
            return Ok(frame);
        }
        let remaining = deadline.saturating_duration_since(now());
        if remaining.is_zero() {
            return Err(Error::ConnectTimeout);
        }
        stream
            .set_read_timeout(Some(remaining))
            .map_err(Error::Io)?;
        match read_some(stream, tls, &mut chunk, buf) {
            Ok(Received::Eof) => {
                return Err(Error::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the broker closed the connection during the handshake",
                )))
            }
            Ok(Received::Data { tls_output }) => {
                if let (true, Some(tls)) = (tls_output, tls) {
                    tls::write_pending_records(stream, tls, &mut Vec::new()).map_err(Error::Io)?;
                }
            }
            #[cfg(feature = "tls")]
            Ok(Received::TlsFailed(e)) => {
                if let Some(tls) = tls {
                    let _ = tls::write_pending_records(stream, tls, &mut Vec::new());
                }
                return Err(Error::Tls(e));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(Error::ConnectTimeout)
            }
            Err(e) => return Err(Error::Io(e)),
        }
    }
}

/// What the frame callback of [`read_frames`] wants next.
pub(crate) enum Flow {
    /// Keep reading.
    Continue,
    /// Stop reading this connection, for this reason.
    Stop(Error),
}

/// The read side of a connection, as the link thread reads it.
pub(crate) struct Inbound<'a> {
    pub(crate) stream: &'a mut TcpStream,
    /// The TLS session, for a TLS connection.
    pub(crate) tls: Option<&'a SharedTls>,
    pub(crate) decoder: &'a mut Decoder,
    /// Plaintext read but not yet decoded (at first: what came past the WELCOME).
    pub(crate) buf: &'a mut BytesMut,
}

/// Reads the connection on the calling thread (the link thread) until it ends, and returns why.
/// `on_frame` gets every frame in order;
/// `on_silence` gets the count of each silent heartbeat interval (it should PING);
/// `on_tls_output` is called when reading made the TLS session want to write (it should run the
/// control-flush path, see the module docs).
pub(crate) fn read_frames(
    inbound: Inbound<'_>,
    liveness: Liveness,
    mut on_frame: impl FnMut(Frame) -> Flow,
    mut on_silence: impl FnMut(u32),
    mut on_tls_output: impl FnMut(),
) -> Error {
    let Inbound {
        stream,
        tls,
        decoder,
        buf,
    } = inbound;
    if let Err(e) = stream.set_read_timeout(liveness.interval) {
        return Error::Io(e);
    }
    let mut chunk = vec![0u8; READ_CHUNK];
    // Consecutive read timeouts: whole intervals in which the broker said nothing.
    let mut silent_intervals = 0u32;
    let reason = loop {
        match decoder.decode(buf) {
            Ok(Some(frame)) => match on_frame(frame) {
                Flow::Continue => continue,
                Flow::Stop(reason) => break reason,
            },
            Ok(None) => {}
            Err(e) => break Error::Protocol(ProtocolViolation::Decode(e)),
        }
        match read_some(stream, tls, &mut chunk, buf) {
            Ok(Received::Eof) => {
                break Error::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the broker closed the connection",
                ))
            }
            Ok(Received::Data { tls_output }) => {
                silent_intervals = 0;
                if tls_output {
                    on_tls_output();
                }
            }
            #[cfg(feature = "tls")]
            Ok(Received::TlsFailed(e)) => {
                // The alert rustls queued goes out through the writer, best effort.
                on_tls_output();
                break Error::Tls(e);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                silent_intervals += 1;
                if silent_intervals > liveness.misses {
                    break Error::Io(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the broker stopped answering (heartbeat)",
                    ));
                }
                on_silence(silent_intervals);
            }
            Err(e) => break Error::Io(e),
        }
    };
    debug!("client stops reading the connection: {reason}");
    reason
}

/// How the reader thread decides the broker is dead: after `misses + 1` consecutive `interval`s
/// of silence, each answered by a PING of its own (`on_silence`). No interval: never.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Liveness {
    pub(crate) interval: Option<Duration>,
    pub(crate) misses: u32,
}

/// The write side of the connection; see the module docs.
#[derive(Debug)]
pub(crate) struct Transport {
    writer: Mutex<WriteHalf>,
    control: Mutex<VecDeque<Frame>>,
    socket: TcpStream,
    /// The TLS session, also held by the writer (for checking without the writer lock whether
    /// records wait to be written).
    tls: Option<SharedTls>,
    closed: AtomicBool,
}

/// What the writer lock guards: the write half and, for TLS, the session and the buffer its
/// records are extracted into (reused frame after frame).
#[derive(Debug)]
struct WriteHalf {
    stream: TcpStream,
    tls: Option<(SharedTls, Vec<u8>)>,
}

impl WriteHalf {
    fn write_frame(&mut self, frame: &Frame) -> io::Result<()> {
        match &mut self.tls {
            None => write_frame(&mut self.stream, frame),
            Some((tls, records)) => tls::write_frame(&mut self.stream, tls, records, frame),
        }
    }

    /// Writes the records reading left in the session (none on a plain connection).
    fn write_pending_records(&mut self) -> io::Result<()> {
        match &mut self.tls {
            None => Ok(()),
            Some((tls, records)) => tls::write_pending_records(&mut self.stream, tls, records),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves no broken invariant worth refusing service
    // for (the writer may have written half a frame, which the broker will reject and close).
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Transport {
    /// Wraps the write half, the shutdown handle and, for TLS, the session.
    pub(crate) fn new(writer: TcpStream, socket: TcpStream, tls: Option<SharedTls>) -> Transport {
        Transport {
            writer: Mutex::new(WriteHalf {
                stream: writer,
                tls: tls.clone().map(|tls| (tls, Vec::new())),
            }),
            control: Mutex::new(VecDeque::new()),
            socket,
            tls,
            closed: AtomicBool::new(false),
        }
    }

    /// True once [`Transport::shutdown`] ran.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Writes one frame, blocking until the kernel took it all.
    ///
    /// # Errors
    /// `NotConnected` after shutdown, else the socket's error. The caller MUST treat an error as
    /// fatal for the connection (a frame may be half written).
    pub(crate) fn send(&self, frame: &Frame) -> io::Result<()> {
        {
            let mut writer = lock(&self.writer);
            if self.is_closed() {
                return Err(io::ErrorKind::NotConnected.into());
            }
            writer.write_frame(frame)?;
            self.drain_control(&mut writer)?;
        }
        self.flush_pending();
        Ok(())
    }

    /// Queues a control frame (from the reader thread) and writes it if the writer is free. Never
    /// waits for the writer lock. Write errors shut the socket down, which ends the reader thread
    /// with the socket's error.
    pub(crate) fn send_control(&self, frame: Frame) {
        if self.is_closed() {
            return;
        }
        lock(&self.control).push_back(frame);
        self.flush_pending();
    }

    /// True when control frames, or TLS records left by reading, wait to be written.
    fn has_pending(&self) -> bool {
        !lock(&self.control).is_empty() || self.tls.as_ref().is_some_and(tls::wants_write)
    }

    /// Writes queued control frames and, for TLS, records reading left in the session, if the
    /// writer lock is free; else its holder does after its frame. Never waits for the writer
    /// lock (the reader thread calls it).
    pub(crate) fn flush_pending(&self) {
        loop {
            if !self.has_pending() {
                return;
            }
            let mut writer = match self.writer.try_lock() {
                Ok(writer) => writer,
                Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
                // The holder drains the queue after its frame and re-checks after unlocking.
                Err(TryLockError::WouldBlock) => return,
            };
            if self.is_closed() {
                return;
            }
            if let Err(e) = self.drain_control(&mut writer) {
                debug!("writing a control frame failed: {e}");
                drop(writer);
                self.shutdown();
                return;
            }
        }
    }

    fn drain_control(&self, writer: &mut WriteHalf) -> io::Result<()> {
        loop {
            let Some(frame) = lock(&self.control).pop_front() else {
                // Frames extract every record the session holds; this writes the ones reading
                // produced after the last frame (or with no frame at all).
                return writer.write_pending_records();
            };
            writer.write_frame(&frame)?;
        }
    }

    /// Shuts the socket down both ways: blocked reads and writes return, the reader thread ends.
    /// Idempotent.
    pub(crate) fn shutdown(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            if let Err(e) = self.socket.shutdown(Shutdown::Both) {
                // NotConnected: the peer already reset it; nothing left to shut.
                debug!("socket shutdown: {e}");
            }
            lock(&self.control).clear();
        }
    }
}
