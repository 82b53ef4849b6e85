//! The TLS encryption of broker connections accepted on the TLS listener.
//!
//! A TLS connection is an ordinary broker connection (`connection.rs`) whose encryption is a
//! rustls [`ServerConnection`]: the router sees the same frames as from a plain connection and
//! never knows the difference. rustls is used sans-IO; every byte still moves through the
//! server's non-blocking, edge-triggered socket and the same loop turn.
//!
//! # Read path
//! Socket → the server's shared scratch buffer (one `read` of up to 64 KiB) → `read_tls` from
//! that slice in the pieces rustls asks for → `process_new_packets` after each piece → the
//! plaintext, taken with `fill_buf`/`consume` (no extra copy), appended to the connection's
//! pooled read buffer → the decoder, exactly as for a plain connection. The per-turn read budget
//! counts *ciphertext* bytes taken from the socket (what `bytes_in` counts too): it bounds the
//! work of one turn, and the plaintext is never larger.
//!
//! A rustls error (bad record, a plain-protocol peer, an alert from a client that refused the
//! certificate) is logged at info with the peer's address, counted, its alert pushed out best
//! effort, and the connection closed. A `close_notify` from the peer is an EOF, seen after the
//! plaintext before it has been decoded.
//!
//! # Write path
//! The router lends a connection's queue as borrowed slices (`Router::poll_transmit`) and is
//! told how many bytes left it (`Router::handle_written`); `flush.rs` drives that loop. For a
//! TLS connection the bytes "written" are the plaintext rustls took:
//! [`TlsSession::write_plaintext`] first pushes the records rustls already holds to the socket
//! until `WouldBlock`; if any are still pending (the socket is full) rustls takes nothing, so
//! the router keeps its queue and its watermarks keep pausing producers; else rustls takes at
//! most [`BUFFER_LIMIT`] bytes (its own buffer limit), and the flush reports exactly that to the
//! router. So rustls never holds more than one buffer limit of records behind the router's
//! queue: the router's flow control sees every other byte.
//!
//! # When records are flushed
//! Records are written at every flush of the connection (the end of the turn, as for plain
//! connections), even when the router's queue is empty: the TLS handshake (ServerHello and the
//! rest) and alerts have nothing queued in the router. After input is processed, a connection
//! whose rustls wants to write is queued for flushing; a writable event queues it too.
//!
//! # Allocation
//! The broker's own part of the TLS path allocates nothing per frame: the shared scratch buffer,
//! the pooled read buffers and the router's queue serve TLS connections as they serve plain ones,
//! and plaintext is copied once, from rustls' buffer into the read buffer. rustls (0.23's
//! buffered API) allocates one buffer per TLS record it decrypts or encrypts (a record carries up
//! to 16 KiB), so the TLS path is not allocation-free the way the plain path is
//! (`tests/alloc_free.rs` covers the plain one).
//!
//! # No blocking
//! Every socket operation is non-blocking; `WouldBlock` ends the attempt and a writable event
//! resumes it. rustls itself does no I/O. Closing writes `close_notify` (or the fatal alert)
//! once, best effort, after the router's last queued frame.

use std::io::{self, IoSlice, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::BytesMut;
use mio::net::TcpStream;
use rustls::ServerConnection;

use crate::tls::{load_certificates, load_private_key, provider, TlsConfigError};
use switchyard_core::pool::BufferPool;

/// rustls' per-connection buffer limit: plaintext accepted before the handshake completes, and
/// encrypted records not yet written to the socket. 64 KiB: a few records per write system call,
/// and a small, fixed addition to what the router's watermarks bound.
pub const BUFFER_LIMIT: usize = 64 * 1024;

/// The TLS listener of a broker ([`ServerConfig::tls`](super::ServerConfig::tls)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsListenerConfig {
    /// Address of the TLS listener.
    pub listen: SocketAddr,
    /// PEM file with the certificate chain, the broker's own certificate first.
    pub cert_path: PathBuf,
    /// PEM file with the private key of that certificate (PKCS#8, PKCS#1 or SEC1).
    pub key_path: PathBuf,
}

impl TlsListenerConfig {
    /// Reads the certificate chain and key and builds the rustls configuration (TLS 1.2 and 1.3,
    /// no client certificates, the `ring` provider).
    ///
    /// # Errors
    /// A [`TlsConfigError`] naming the file: missing or unreadable, not PEM, no certificate, no
    /// key, or a key that does not fit the certificate.
    pub fn load(&self) -> Result<Arc<rustls::ServerConfig>, TlsConfigError> {
        let certs = load_certificates(&self.cert_path)?;
        if let Some(leaf) = certs.first() {
            // Certificate validity is wall-clock time, which `Instant` cannot give; read once,
            // at start-up, for a warning only.
            #[allow(clippy::disallowed_methods)]
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            match super::cert_validity::check(leaf.as_ref(), now) {
                super::cert_validity::Validity::Valid => {}
                problem => log::warn!(
                    "TLS certificate {} is {problem}: clients that verify it will refuse the                      TLS handshake",
                    self.cert_path.display()
                ),
            }
        }
        let key = load_private_key(&self.key_path)?;
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsConfigError::Rustls)?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|error| TlsConfigError::KeyMismatch {
                cert_path: self.cert_path.clone(),
                key_path: self.key_path.clone(),
                error,
            })?;
        Ok(Arc::new(config))
    }
}

/// A new server-side TLS session with the broker's buffer limit.
pub(crate) fn new_session(config: &Arc<rustls::ServerConfig>) -> Result<TlsSession, rustls::Error> {
    let mut conn = ServerConnection::new(Arc::clone(config))?;
    conn.set_buffer_limit(Some(BUFFER_LIMIT));
    Ok(TlsSession {
        conn,
        peer_closed: false,
    })
}

/// What [`TlsSession::absorb`] made of a chunk of ciphertext.
pub(crate) enum Absorbed {
    /// Processed; the plaintext (if any) is in the read buffer.
    Ok,
    /// The TLS handshake completed in this chunk.
    HandshakeDone,
    /// rustls refused the input; its alert is queued. The connection must close.
    Failed(rustls::Error),
}

/// One connection's rustls state.
pub(crate) struct TlsSession {
    pub(crate) conn: ServerConnection,
    /// The peer sent `close_notify`: the next read is an EOF.
    pub(crate) peer_closed: bool,
}

impl TlsSession {
    /// True while the TLS handshake has not completed.
    pub(crate) fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Feeds `ciphertext` (just read from the socket) to rustls and appends the plaintext to
    /// `read_buf` (taken from `pool` when it has no buffer).
    pub(crate) fn absorb(
        &mut self,
        mut ciphertext: &[u8],
        read_buf: &mut BytesMut,
        pool: &mut BufferPool,
    ) -> Absorbed {
        let was_handshaking = self.conn.is_handshaking();
        while !ciphertext.is_empty() {
            // Reading from a slice cannot fail; rustls takes at most what it has room for.
            match self.conn.read_tls(&mut ciphertext) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    return Absorbed::Failed(rustls::Error::General(format!("read_tls: {e}")));
                }
            }
            let state = match self.conn.process_new_packets() {
                Ok(state) => state,
                Err(e) => return Absorbed::Failed(e),
            };
            if state.plaintext_bytes_to_read() > 0 {
                if read_buf.capacity() == 0 {
                    *read_buf = pool.take();
                }
                let mut reader = self.conn.reader();
                loop {
                    match io::BufRead::fill_buf(&mut reader) {
                        Ok([]) | Err(_) => break,
                        Ok(chunk) => {
                            let n = chunk.len();
                            read_buf.extend_from_slice(chunk);
                            io::BufRead::consume(&mut reader, n);
                        }
                    }
                }
            }
            if state.peer_has_closed() {
                self.peer_closed = true;
                break;
            }
        }
        if was_handshaking && !self.conn.is_handshaking() {
            return Absorbed::HandshakeDone;
        }
        Absorbed::Ok
    }

    /// Writes pending records to `stream` until none is left (true) or it would block (false).
    ///
    /// # Errors
    /// The socket's error other than `WouldBlock` / `Interrupted`.
    pub(crate) fn push_records(&mut self, stream: &mut TcpStream) -> io::Result<bool> {
        while self.conn.wants_write() {
            match self.conn.write_tls(stream) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Queues `close_notify` (unless a fatal alert already ended the session) and writes what is
    /// pending, best effort: the socket is closed right after.
    pub(crate) fn close(&mut self, stream: &mut TcpStream) {
        self.conn.send_close_notify();
        let _ = self.push_records(stream);
    }

    /// Hands a prefix of `plaintext` (the front of the router's queue) to rustls, after
    /// pushing the records it already holds. Returns how many bytes rustls took — `Ok(None)`
    /// when it takes nothing now: records are still pending (the socket is full), or before the
    /// handshake completes its plaintext buffer is full. rustls takes at most its buffer limit
    /// ([`BUFFER_LIMIT`]), so the rest stays in the router's queue; see the module docs.
    ///
    /// # Errors
    /// The socket's error while pushing records (the connection must close).
    pub(crate) fn write_plaintext(
        &mut self,
        stream: &mut TcpStream,
        plaintext: &[IoSlice<'_>],
    ) -> io::Result<Option<usize>> {
        if !self.push_records(stream)? {
            return Ok(None);
        }
        // rustls coalesces the slices into records of up to 16 KiB, up to its buffer limit.
        let accepted = self.conn.writer().write_vectored(plaintext)?;
        if accepted == 0 {
            // Only before the handshake completes: its completion (input) queues a flush that
            // resumes the router's queue.
            return Ok(None);
        }
        Ok(Some(accepted))
    }
}
