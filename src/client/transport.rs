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

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use log::debug;

use super::error::{Error, ProtocolViolation};
use crate::protocol::{Decoder, Frame, HEADER_LEN};

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

/// Reads the next frame during the handshake, before the reader thread exists. `buf` keeps any
/// bytes read past the frame (they belong to the reader thread afterwards).
///
/// # Errors
/// [`Error::Timeout`] past `deadline`, [`Error::Io`] on EOF or socket errors,
/// [`Error::Protocol`] for an undecodable frame.
pub(crate) fn read_frame_until(
    stream: &mut TcpStream,
    decoder: &mut Decoder,
    buf: &mut BytesMut,
    deadline: Instant,
) -> Result<Frame, Error> {
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        if let Some(frame) = decoder
            .decode(buf)
            .map_err(|e| Error::Protocol(ProtocolViolation::Decode(e)))?
        {
            return Ok(frame);
        }
        let remaining = deadline.saturating_duration_since(now());
        if remaining.is_zero() {
            return Err(Error::Timeout);
        }
        stream
            .set_read_timeout(Some(remaining))
            .map_err(Error::Io)?;
        match stream.read(&mut chunk) {
            Ok(0) => {
                return Err(Error::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the broker closed the connection during the handshake",
                )))
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(Error::Timeout)
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

/// Reads `stream` on the calling thread (the link thread) until it ends, and returns why.
/// `buf` holds bytes already read (past the WELCOME). `on_frame` gets every frame in order;
/// `on_silence` gets the count of each silent heartbeat interval (it should PING).
pub(crate) fn read_frames(
    stream: &mut TcpStream,
    decoder: &mut Decoder,
    buf: &mut BytesMut,
    liveness: Liveness,
    mut on_frame: impl FnMut(Frame) -> Flow,
    mut on_silence: impl FnMut(u32),
) -> Error {
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
        match stream.read(&mut chunk) {
            Ok(0) => {
                break Error::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the broker closed the connection",
                ))
            }
            Ok(n) => {
                silent_intervals = 0;
                buf.extend_from_slice(&chunk[..n]);
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
    writer: Mutex<TcpStream>,
    control: Mutex<VecDeque<Frame>>,
    socket: TcpStream,
    closed: AtomicBool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves no broken invariant worth refusing service
    // for (the writer may have written half a frame, which the broker will reject and close).
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Transport {
    /// Wraps the write half and the shutdown handle.
    pub(crate) fn new(writer: TcpStream, socket: TcpStream) -> Transport {
        Transport {
            writer: Mutex::new(writer),
            control: Mutex::new(VecDeque::new()),
            socket,
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
            write_frame(&mut writer, frame)?;
            self.drain_control(&mut writer)?;
        }
        self.flush_control();
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
        self.flush_control();
    }

    fn flush_control(&self) {
        loop {
            if lock(&self.control).is_empty() {
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

    fn drain_control(&self, writer: &mut TcpStream) -> io::Result<()> {
        loop {
            let Some(frame) = lock(&self.control).pop_front() else {
                return Ok(());
            };
            write_frame(writer, &frame)?;
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
