//! Joining a channel: connect, TLS handshake (with [`ClientOptions::tls`]), HELLO, WELCOME
//! ([`handshake`]), for the first connection and every reconnect alike.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use switchyard_proto::{Decoder, ErrorBody, Flags, FrameType, WelcomeBody, MAX_PAYLOAD_CEILING};

use crate::link::Link;
use crate::session::Ids;
use crate::transport::{self, SharedTls, Transport};
#[cfg(doc)]
use crate::Client;
use crate::{ChannelId, ClientId, ClientOptions, Error, Limits, ProtocolViolation, RequestId};

/// A connection whose handshake completed, before the link thread reads it.
#[derive(Debug)]
pub(crate) struct Joined {
    pub(crate) stream: TcpStream,
    /// The TLS session, for a TLS connection.
    pub(crate) tls: Option<SharedTls>,
    pub(crate) decoder: Decoder,
    /// Bytes read past the WELCOME.
    pub(crate) buf: BytesMut,
    pub(crate) client: ClientId,
    pub(crate) max_payload: u32,
    pub(crate) limits: Limits,
    pub(crate) peers: Vec<ClientId>,
    pub(crate) peer_addr: SocketAddr,
    /// The resume secret of the WELCOME (its request id field): what a reconnect presents to
    /// take its client id back (PROTOCOL.md §5). Nil from a broker that gives none.
    pub(crate) resume: RequestId,
}

impl Joined {
    /// The write side of the connection.
    pub(crate) fn link(&self) -> Result<Link, Error> {
        Ok(Link {
            transport: Transport::new(
                self.stream.try_clone().map_err(Error::Io)?,
                self.stream.try_clone().map_err(Error::Io)?,
                self.tls.clone(),
            ),
            limits: self.limits,
        })
    }
}

/// Connects to `addrs`, runs the TLS handshake (with [`ClientOptions::tls`]), sends HELLO with
/// `requested` (nil: assign one) for `channel` presenting `resume` (the resume secret of an
/// earlier WELCOME; nil for none) in its request id field, and waits for the WELCOME, all within
/// `options.connect_timeout`. `on_connected` sees the stream once the TCP connection is up (its
/// error aborts the attempt).
///
/// # Errors
/// As [`Client::connect_with`].
pub(crate) fn handshake(
    addrs: &[SocketAddr],
    channel: ChannelId,
    requested: ClientId,
    resume: RequestId,
    options: &ClientOptions,
    on_connected: &dyn Fn(&TcpStream) -> Result<(), Error>,
) -> Result<Joined, Error> {
    // A timeout too large for an Instant means "no practical bound": a year will do.
    let deadline = transport::now()
        .checked_add(options.connect_timeout)
        .unwrap_or_else(|| transport::now() + Duration::from_secs(365 * 24 * 3600));
    let mut stream = transport::connect(addrs, options.connect_timeout)?;
    on_connected(&stream)?;
    let mut buf = BytesMut::new();
    #[cfg(feature = "tls")]
    let tls = match &options.tls {
        None => None,
        Some(client_tls) => {
            let peer = stream.peer_addr().map_err(Error::Io)?;
            let tls = transport::share(client_tls.session(peer).map_err(Error::Tls)?);
            transport::tls_handshake(&mut stream, &tls, &mut buf, deadline)?;
            Some(tls)
        }
    };
    #[cfg(not(feature = "tls"))]
    let tls: Option<SharedTls> = None;
    let hello_ids = Ids {
        client: requested,
        channel,
    };
    let hello = hello_ids.frame(
        FrameType::Hello,
        Flags::NONE,
        resume,
        0,
        false,
        options
            .token
            .as_ref()
            .map_or_else(Bytes::new, |token| Bytes::copy_from_slice(token)),
    );
    transport::write_frame_on(&mut stream, tls.as_ref(), &hello).map_err(Error::Io)?;

    // The client trusts the broker's frames up to the protocol's hard ceiling; the WELCOME's
    // own max payload only governs what the client sends.
    let mut decoder = Decoder::new(MAX_PAYLOAD_CEILING);
    let (header, welcome) = loop {
        let frame = transport::read_frame_until(
            &mut stream,
            tls.as_ref(),
            &mut decoder,
            &mut buf,
            deadline,
        )?;
        let bad_payload = |frame_type, error| {
            Error::Protocol(ProtocolViolation::BadPayload { frame_type, error })
        };
        match frame.header.frame_type {
            FrameType::Welcome => {
                let body = WelcomeBody::decode(&frame.payload)
                    .map_err(|e| bad_payload(FrameType::Welcome, e))?;
                break (frame.header, body);
            }
            FrameType::Error => {
                let body = ErrorBody::decode(&frame.payload)
                    .map_err(|e| bad_payload(FrameType::Error, e))?;
                return Err(Error::from_error_body(body, None));
            }
            FrameType::Ping => {
                let h = frame.header;
                let pong = hello_ids.frame(
                    FrameType::Pong,
                    Flags::NONE,
                    RequestId::NIL,
                    h.sequence,
                    h.is_final,
                    Bytes::new(),
                );
                transport::write_frame_on(&mut stream, tls.as_ref(), &pong).map_err(Error::Io)?;
            }
            frame_type => {
                return Err(Error::Protocol(ProtocolViolation::UnexpectedFrame {
                    frame_type,
                }))
            }
        }
    };
    if header.channel_id != channel {
        let got = header.channel_id;
        return Err(Error::Protocol(ProtocolViolation::ChannelMismatch {
            expected: channel,
            got,
        }));
    }
    let assigned = header.client_id;
    if assigned.is_nil() || (!requested.is_nil() && assigned != requested) {
        return Err(Error::Protocol(ProtocolViolation::BadClientId {
            requested,
            assigned,
        }));
    }
    if welcome.max_payload == 0 {
        return Err(Error::Protocol(ProtocolViolation::ZeroMaxPayload));
    }
    stream.set_read_timeout(None).map_err(Error::Io)?;
    let peer_addr = stream.peer_addr().map_err(Error::Io)?;
    Ok(Joined {
        stream,
        tls,
        decoder,
        buf,
        client: assigned,
        max_payload: welcome.max_payload,
        limits: Limits {
            max_payload: welcome.max_payload,
            default_timeout: Duration::from_millis(welcome.default_timeout_ms.into()),
            max_timeout: Duration::from_millis(welcome.max_timeout_ms.into()),
            heartbeat: Duration::from_millis(welcome.heartbeat_ms.into()),
        },
        peers: welcome.peers,
        peer_addr,
        resume: header.request_id,
    })
}
