//! The async client's socket side: connecting and joining a channel ([`join`]: TCP, TLS,
//! HELLO, WELCOME), then reading plaintext ([`WireRead`]) and writing frames ([`WireWrite`]).
//!
//! TLS is the same rustls session the blocking client uses (`transport::tls`: one
//! `SharedTls`, a `std::sync::Mutex` held for in-memory work only), driven over tokio's socket
//! halves: the reader feeds what it reads and takes the plaintext; the writer encrypts whole
//! frames and writes the records. Only the writer writes records, so they reach the socket in
//! the order rustls produced them; when reading makes rustls want to write, the reader asks the
//! writer ([`Outbound::TlsRecords`](super::Outbound::TlsRecords)).
//!
//! The handshake frames are interpreted by the sans-IO `handshake::answer`, the one the
//! blocking client uses.

use std::io;
use std::net::SocketAddr;

use bytes::BytesMut;
use switchyard_proto::{Decoder, Frame, MAX_PAYLOAD_CEILING};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::handshake::{self, Answer, Welcomed};
use crate::transport::SharedTls;
use crate::{ChannelId, ClientId, ClientOptions, Error, ProtocolViolation, RequestId};

/// Bytes asked of the socket per read (as the blocking transport).
const READ_CHUNK: usize = 64 * 1024;

/// A connection whose handshake completed.
#[derive(Debug)]
pub(crate) struct Joined {
    pub(crate) read: WireRead,
    pub(crate) write: WireWrite,
    pub(crate) welcomed: Welcomed,
    pub(crate) peer_addr: SocketAddr,
}

/// Connects to `addrs`, runs the TLS handshake (with [`ClientOptions::tls`]), sends HELLO with
/// `requested` (nil: assign one) for `channel` presenting `resume` (nil: none; PROTOCOL.md
/// §5.2) and waits for the WELCOME, all within
/// `options.connect_timeout`.
///
/// # Errors
/// As `AsyncClient::connect_with`.
pub(crate) async fn join(
    addrs: &[SocketAddr],
    channel: ChannelId,
    requested: ClientId,
    resume: RequestId,
    options: &ClientOptions,
) -> Result<Joined, Error> {
    let attempt = join_unbounded(addrs, channel, requested, resume, options);
    match tokio::time::timeout(options.connect_timeout, attempt).await {
        Ok(joined) => joined,
        Err(_) => Err(Error::ConnectTimeout),
    }
}

async fn join_unbounded(
    addrs: &[SocketAddr],
    channel: ChannelId,
    requested: ClientId,
    resume: RequestId,
    options: &ClientOptions,
) -> Result<Joined, Error> {
    let stream = connect(addrs).await?;
    let peer_addr = stream.peer_addr().map_err(Error::Io)?;
    let (read_half, write_half) = stream.into_split();
    let mut read = WireRead {
        half: read_half,
        tls: None,
        chunk: vec![0; READ_CHUNK],
        decoder: Decoder::new(MAX_PAYLOAD_CEILING),
        buf: BytesMut::new(),
    };
    let mut write = WireWrite {
        half: write_half,
        tls: None,
        buf: Vec::new(),
    };
    #[cfg(feature = "tls")]
    if let Some(client_tls) = &options.tls {
        let tls = crate::transport::tls::share(client_tls.session(peer_addr).map_err(Error::Tls)?);
        read.tls = Some(tls.clone());
        write.tls = Some(tls.clone());
        tls_handshake(&mut read, &mut write, &tls).await?;
    }
    let (hello_ids, hello) = handshake::hello(channel, requested, resume, options);
    write.push(&hello).map_err(Error::Io)?;
    write.flush().await.map_err(Error::Io)?;
    let welcomed = loop {
        let frame = read.handshake_frame().await?;
        match handshake::answer(frame, &hello_ids)? {
            Answer::Welcome(welcomed) => break welcomed,
            Answer::Pong(pong) => {
                write.push(&pong).map_err(Error::Io)?;
                write.flush().await.map_err(Error::Io)?;
            }
        }
    };
    Ok(Joined {
        read,
        write,
        welcomed,
        peer_addr,
    })
}

/// The first address that accepts, with `TCP_NODELAY` (frames are written whole, at once).
async fn connect(addrs: &[SocketAddr]) -> Result<TcpStream, Error> {
    let mut last = io::Error::new(
        io::ErrorKind::InvalidInput,
        "the address resolved to nothing",
    );
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                stream.set_nodelay(true).map_err(Error::Io)?;
                return Ok(stream);
            }
            Err(e) => {
                log::debug!("connect to {addr} failed: {e}");
                last = e;
            }
        }
    }
    Err(Error::ConnectionRefused(last))
}

#[cfg(feature = "tls")]
async fn tls_handshake(
    read: &mut WireRead,
    write: &mut WireWrite,
    tls: &SharedTls,
) -> Result<(), Error> {
    use crate::transport::tls;
    loop {
        write.push_tls_records().map_err(Error::Io)?;
        write.flush().await.map_err(Error::Io)?;
        if !tls::is_handshaking(tls) {
            return Ok(());
        }
        match read.read_some().await {
            Ok(Read::Data) => {}
            Ok(Read::Eof) => {
                return Err(Error::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the broker closed the connection during the TLS handshake",
                )))
            }
            Ok(Read::TlsFailed(e)) => {
                // Tell the broker why (the alert rustls queued), best effort.
                if write.push_tls_records().is_ok() {
                    let _ = write.flush().await;
                }
                return Err(Error::Tls(e));
            }
            Err(e) => return Err(Error::Io(e)),
        }
    }
}

/// What one [`WireRead::read_some`] brought.
#[derive(Debug)]
pub(crate) enum Read {
    /// Plaintext may have arrived (in the buffer). With TLS, the session may want to write.
    Data,
    /// The broker closed the connection (TCP EOF, or TLS `close_notify`).
    Eof,
    /// rustls refused the input; its alert is queued in the session.
    #[cfg(feature = "tls")]
    TlsFailed(rustls::Error),
}

/// The read side of a connection: the socket half, the TLS session, the frame decoder.
#[derive(Debug)]
pub(crate) struct WireRead {
    half: OwnedReadHalf,
    tls: Option<SharedTls>,
    chunk: Vec<u8>,
    decoder: Decoder,
    /// Plaintext read but not yet decoded.
    buf: BytesMut,
}

impl WireRead {
    /// Reads once from the socket (cancel-safe: a dropped read loses no byte).
    pub(crate) async fn read_some(&mut self) -> io::Result<Read> {
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            if crate::transport::tls::peer_closed(tls) {
                return Ok(Read::Eof);
            }
        }
        let n = self.half.read(&mut self.chunk).await?;
        if n == 0 {
            return Ok(Read::Eof);
        }
        match &self.tls {
            None => self.buf.extend_from_slice(&self.chunk[..n]),
            #[cfg(feature = "tls")]
            Some(tls) => {
                use crate::transport::{tls::feed, Received};
                match feed(tls, &self.chunk[..n], &mut self.buf) {
                    Received::Data { .. } => {}
                    Received::Eof => return Ok(Read::Eof),
                    Received::TlsFailed(e) => return Ok(Read::TlsFailed(e)),
                }
            }
            #[cfg(not(feature = "tls"))]
            Some(tls) => match *tls {},
        }
        Ok(Read::Data)
    }

    /// True when the TLS session holds records to write (after a read).
    #[cfg(feature = "tls")]
    pub(crate) fn tls_wants_write(&self) -> bool {
        self.tls
            .as_ref()
            .is_some_and(crate::transport::tls::wants_write)
    }

    /// The next complete frame in the buffer, if any.
    ///
    /// # Errors
    /// A frame that does not decode.
    pub(crate) fn decode(&mut self) -> Result<Option<Frame>, Error> {
        self.decoder
            .decode(&mut self.buf)
            .map_err(|e| Error::Protocol(ProtocolViolation::Decode(e)))
    }

    /// The next frame during the handshake; bytes that cannot start a broker's answer fail at
    /// once with [`Error::NotABroker`].
    async fn handshake_frame(&mut self) -> Result<Frame, Error> {
        loop {
            if let Some(error) = handshake::not_a_broker(&self.buf) {
                return Err(error);
            }
            if let Some(frame) = self.decode()? {
                return Ok(frame);
            }
            match self.read_some().await.map_err(Error::Io)? {
                Read::Data => {}
                Read::Eof => {
                    return Err(Error::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the broker closed the connection during the handshake",
                    )))
                }
                #[cfg(feature = "tls")]
                Read::TlsFailed(e) => return Err(Error::Tls(e)),
            }
        }
    }
}

/// The write side of a connection: the socket half, the TLS session, and the buffer frames are
/// gathered into (reused write after write).
#[derive(Debug)]
pub(crate) struct WireWrite {
    half: OwnedWriteHalf,
    tls: Option<SharedTls>,
    buf: Vec<u8>,
}

impl WireWrite {
    /// Appends one frame (encrypted, with TLS) to the pending bytes.
    ///
    /// # Errors
    /// A TLS session that refuses plaintext.
    pub(crate) fn push(&mut self, frame: &Frame) -> io::Result<()> {
        match &self.tls {
            None => {
                self.buf.extend_from_slice(&frame.header.encode());
                self.buf.extend_from_slice(&frame.payload);
                Ok(())
            }
            #[cfg(feature = "tls")]
            Some(tls) => crate::transport::tls::encrypt_frame(tls, frame, &mut self.buf),
            #[cfg(not(feature = "tls"))]
            Some(tls) => match *tls {},
        }
    }

    /// Appends the records the TLS session holds (none on a plain connection).
    pub(crate) fn push_tls_records(&mut self) -> io::Result<()> {
        match &self.tls {
            None => Ok(()),
            #[cfg(feature = "tls")]
            Some(tls) => crate::transport::tls::append_records(tls, &mut self.buf),
            #[cfg(not(feature = "tls"))]
            Some(tls) => match *tls {},
        }
    }

    /// Bytes pushed and not yet written.
    pub(crate) fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Writes every pending byte.
    pub(crate) async fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.half.write_all(&self.buf).await?;
            self.buf.clear();
        }
        Ok(())
    }
}
