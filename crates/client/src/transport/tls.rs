//! The TLS side of the transport (the `tls` feature): the shared rustls session, reading
//! plaintext out of records, writing frames as records, and the TLS handshake. The locking
//! discipline is in the parent module's docs ("TLS").

use std::io::{self, BufRead, Read as _, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::BytesMut;
use rustls::ClientConnection;
use switchyard_proto::Frame;

use super::{lock, now, Received, READ_CHUNK};
use crate::error::Error;

/// One connection's rustls session and what the reader learnt from it; see the module docs.
pub(crate) type SharedTls = Arc<Mutex<TlsState>>;

/// What [`SharedTls`] guards.
#[derive(Debug)]
pub(crate) struct TlsState {
    conn: ClientConnection,
    /// The broker sent `close_notify`: after the plaintext before it, the stream is at its end.
    peer_closed: bool,
}

/// Wraps a new session for sharing.
pub(crate) fn share(conn: ClientConnection) -> SharedTls {
    Arc::new(Mutex::new(TlsState {
        conn,
        peer_closed: false,
    }))
}

/// [`read_some`](super::read_some) on a TLS connection: the socket read outside the session's
/// lock, then the records fed in and the plaintext taken out under it.
///
/// # Errors
/// The socket's errors, as they came.
pub(crate) fn read_some(
    stream: &mut TcpStream,
    tls: &SharedTls,
    chunk: &mut [u8],
    buf: &mut BytesMut,
) -> io::Result<Received> {
    if lock(tls).peer_closed {
        return Ok(Received::Eof);
    }
    // Outside the session's lock: this may block for as long as the broker is silent.
    let n = stream.read(chunk)?;
    if n == 0 {
        return Ok(Received::Eof);
    }
    Ok(feed(tls, &chunk[..n], buf))
}

/// Feeds bytes read from the socket to the session and appends the plaintext they carry to
/// `buf` (the in-memory half of [`read_some`], shared with the async client, which reads its
/// socket its own way).
pub(crate) fn feed(tls: &SharedTls, mut input: &[u8], buf: &mut BytesMut) -> Received {
    let mut state = lock(tls);
    while !input.is_empty() {
        if let Err(e) = state.conn.read_tls(&mut input) {
            // Only when rustls' own buffers are full, which processing after each piece rules out.
            return Received::TlsFailed(rustls::Error::General(format!("read_tls: {e}")));
        }
        let io_state = match state.conn.process_new_packets() {
            Ok(io_state) => io_state,
            Err(e) => return Received::TlsFailed(e),
        };
        if io_state.plaintext_bytes_to_read() > 0 {
            let mut reader = state.conn.reader();
            while let Ok(plaintext) = reader.fill_buf() {
                if plaintext.is_empty() {
                    break;
                }
                let taken = plaintext.len();
                buf.extend_from_slice(plaintext);
                reader.consume(taken);
            }
        }
        if io_state.peer_has_closed() {
            // The plaintext before it is in `buf`; the next read reports the end.
            state.peer_closed = true;
            break;
        }
    }
    Received::Data {
        tls_output: state.conn.wants_write(),
    }
}

#[cfg(feature = "tokio")]
/// True once the broker sent `close_notify` (every later read is the end of the stream).
pub(crate) fn peer_closed(tls: &SharedTls) -> bool {
    lock(tls).peer_closed
}

#[cfg(feature = "tokio")]
/// Encrypts one whole frame and appends all its records to `records` (the async client's
/// writer then writes them outside the session's lock).
///
/// # Errors
/// `WriteZero` when rustls takes no plaintext (only before its handshake completes).
pub(crate) fn encrypt_frame(
    tls: &SharedTls,
    frame: &Frame,
    records: &mut Vec<u8>,
) -> io::Result<()> {
    let header = frame.header.encode();
    let mut header_left: &[u8] = &header;
    let mut payload_left: &[u8] = &frame.payload;
    let mut state = lock(tls);
    while !(header_left.is_empty() && payload_left.is_empty()) {
        let accepted = state.conn.writer().write_vectored(&[
            io::IoSlice::new(header_left),
            io::IoSlice::new(payload_left),
        ])?;
        let from_header = accepted.min(header_left.len());
        header_left = &header_left[from_header..];
        payload_left = &payload_left[accepted - from_header..];
        let before = records.len();
        while state.conn.wants_write() {
            state.conn.write_tls(records)?;
        }
        if accepted == 0 && records.len() == before {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "the TLS session took no plaintext",
            ));
        }
    }
    Ok(())
}

#[cfg(feature = "tokio")]
/// Appends the records the session holds (handshake flights, alerts, key updates) to `records`.
pub(crate) fn append_records(tls: &SharedTls, records: &mut Vec<u8>) -> io::Result<()> {
    let mut state = lock(tls);
    while state.conn.wants_write() {
        // Writing into a Vec cannot fail.
        state.conn.write_tls(records)?;
    }
    Ok(())
}

#[cfg(feature = "tokio")]
/// True while the TLS handshake is under way.
pub(crate) fn is_handshaking(tls: &SharedTls) -> bool {
    lock(tls).conn.is_handshaking()
}

/// Whether the session holds records to send (the writer lock's holder extracts them).
pub(crate) fn wants_write(tls: &SharedTls) -> bool {
    lock(tls).conn.wants_write()
}

/// Extracts every record the session holds into `records` (cleared first).
fn take_records(state: &mut TlsState, records: &mut Vec<u8>) -> io::Result<()> {
    records.clear();
    while state.conn.wants_write() {
        // Writing into a Vec cannot fail.
        state.conn.write_tls(records)?;
    }
    Ok(())
}

/// Encrypts one whole frame and writes its records, at most [`BUFFER_LIMIT`] bytes of plaintext
/// per lock of the session (see the module docs). `records` is the writer's reusable buffer.
///
/// [`BUFFER_LIMIT`]: crate::tls::BUFFER_LIMIT
pub(crate) fn write_frame(
    stream: &mut TcpStream,
    tls: &SharedTls,
    records: &mut Vec<u8>,
    frame: &Frame,
) -> io::Result<()> {
    let header = frame.header.encode();
    let mut header_left: &[u8] = &header;
    let mut payload_left: &[u8] = &frame.payload;
    loop {
        {
            let mut state = lock(tls);
            // Header and payload together: a small frame is one record.
            let accepted = state.conn.writer().write_vectored(&[
                io::IoSlice::new(header_left),
                io::IoSlice::new(payload_left),
            ])?;
            let from_header = accepted.min(header_left.len());
            header_left = &header_left[from_header..];
            payload_left = &payload_left[accepted - from_header..];
            take_records(&mut state, records)?;
        }
        // Outside the session's lock: the reader may process input meanwhile.
        stream.write_all(records)?;
        if header_left.is_empty() && payload_left.is_empty() {
            return Ok(());
        }
        if records.is_empty() {
            // Nothing accepted and nothing to send: rustls refuses plaintext (only before its
            // handshake, which completes before any frame is written).
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "the TLS session took no plaintext",
            ));
        }
    }
}

/// Writes whatever records the session holds (alerts, key updates from reading).
pub(crate) fn write_pending_records(
    stream: &mut TcpStream,
    tls: &SharedTls,
    records: &mut Vec<u8>,
) -> io::Result<()> {
    take_records(&mut lock(tls), records)?;
    if records.is_empty() {
        return Ok(());
    }
    stream.write_all(records)
}

/// Runs the TLS handshake on a fresh connection, before the HELLO, until `deadline`. Plaintext
/// that arrives with its last flight is appended to `buf`.
///
/// # Errors
/// [`Error::Tls`] when rustls refuses the broker (its certificate, its protocol; the alert is
/// sent best effort), [`Error::ConnectTimeout`] past `deadline`, [`Error::Io`] on EOF or socket errors.
pub(crate) fn tls_handshake(
    stream: &mut TcpStream,
    tls: &SharedTls,
    buf: &mut BytesMut,
    deadline: Instant,
) -> Result<(), Error> {
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut records = Vec::new();
    let time_left = || {
        let left = deadline.saturating_duration_since(now());
        if left.is_zero() {
            Err(Error::ConnectTimeout)
        } else {
            Ok(left)
        }
    };
    let io_error = |e: io::Error| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::ConnectTimeout,
        _ => Error::Io(e),
    };
    loop {
        let handshaking = {
            let mut state = lock(tls);
            take_records(&mut state, &mut records).map_err(Error::Io)?;
            state.conn.is_handshaking()
        };
        if !records.is_empty() {
            stream
                .set_write_timeout(Some(time_left()?))
                .map_err(Error::Io)?;
            stream.write_all(&records).map_err(io_error)?;
        }
        if !handshaking {
            stream.set_write_timeout(None).map_err(Error::Io)?;
            return Ok(());
        }
        stream
            .set_read_timeout(Some(time_left()?))
            .map_err(Error::Io)?;
        match read_some(stream, tls, &mut chunk, buf) {
            Ok(Received::Data { .. }) => {}
            Ok(Received::Eof) => {
                return Err(Error::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the broker closed the connection during the TLS handshake",
                )))
            }
            Ok(Received::TlsFailed(e)) => {
                // Tell the broker why (the alert rustls queued), best effort.
                let _ = write_pending_records(stream, tls, &mut records);
                return Err(Error::Tls(e));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_error(e)),
        }
    }
}
