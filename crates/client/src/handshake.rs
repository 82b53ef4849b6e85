//! Joining a channel: connect, TLS handshake (with [`ClientOptions::tls`]), HELLO, WELCOME
//! ([`handshake`]), for the first connection and every reconnect alike.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use switchyard_proto::{
    Decoder, ErrorBody, Flags, Frame, FrameType, WelcomeBody, MAX_PAYLOAD_CEILING,
};

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
    /// take its client id back (PROTOCOL.md §5.2). Nil from a broker that gives none.
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
    let (hello_ids, hello) = hello(channel, requested, resume, options);
    transport::write_frame_on(&mut stream, tls.as_ref(), &hello).map_err(Error::Io)?;

    // The client trusts the broker's frames up to the protocol's hard ceiling; the WELCOME's
    // own max payload only governs what the client sends.
    let mut decoder = Decoder::new(MAX_PAYLOAD_CEILING);
    let welcomed = loop {
        let frame = transport::read_frame_until(
            &mut stream,
            tls.as_ref(),
            &mut decoder,
            &mut buf,
            deadline,
        )?;
        match answer(frame, &hello_ids)? {
            Answer::Welcome(welcomed) => break welcomed,
            Answer::Pong(pong) => {
                transport::write_frame_on(&mut stream, tls.as_ref(), &pong).map_err(Error::Io)?;
            }
        }
    };
    stream.set_read_timeout(None).map_err(Error::Io)?;
    let peer_addr = stream.peer_addr().map_err(Error::Io)?;
    Ok(Joined {
        stream,
        tls,
        decoder,
        buf,
        client: welcomed.client,
        max_payload: welcomed.limits.max_payload,
        limits: welcomed.limits,
        peers: welcomed.peers,
        peer_addr,
        resume: welcomed.resume,
    })
}

// ----- the sans-IO part, shared with the async client -------------------------------------

/// The HELLO for `channel` asking for `requested` (nil: assign one), presenting `resume` (nil:
/// none), with the options' token, and the ids it carries (the handshake answers PINGs with them).
pub(crate) fn hello(
    channel: ChannelId,
    requested: ClientId,
    resume: RequestId,
    options: &ClientOptions,
) -> (Ids, Frame) {
    let ids = Ids {
        client: requested,
        channel,
    };
    let token = options
        .token
        .as_ref()
        .map_or_else(Bytes::new, |token| Bytes::copy_from_slice(token));
    let frame = ids.frame(FrameType::Hello, Flags::NONE, resume, 0, false, token);
    (ids, frame)
}

/// What the broker granted in its WELCOME, checked.
#[derive(Debug)]
pub(crate) struct Welcomed {
    pub(crate) client: ClientId,
    pub(crate) limits: Limits,
    pub(crate) peers: Vec<ClientId>,
    /// The resume secret (the WELCOME's request id field).
    pub(crate) resume: RequestId,
}

/// What a frame received during the handshake asks of the client.
#[derive(Debug)]
pub(crate) enum Answer {
    /// The handshake completed.
    Welcome(Welcomed),
    /// The broker pinged: write this PONG and keep reading.
    Pong(Frame),
}

/// Interprets one frame received before the WELCOME, for the HELLO that carried `hello`'s ids.
///
/// # Errors
/// The broker's refusal (its ERROR, mapped as everywhere), or a [`ProtocolViolation`] for a
/// WELCOME that does not match the HELLO or a frame that has no place in a handshake.
pub(crate) fn answer(frame: Frame, hello: &Ids) -> Result<Answer, Error> {
    let bad_payload =
        |frame_type, error| Error::Protocol(ProtocolViolation::BadPayload { frame_type, error });
    let header = frame.header;
    let welcome = match header.frame_type {
        FrameType::Welcome => {
            WelcomeBody::decode(&frame.payload).map_err(|e| bad_payload(FrameType::Welcome, e))?
        }
        FrameType::Error => {
            let body =
                ErrorBody::decode(&frame.payload).map_err(|e| bad_payload(FrameType::Error, e))?;
            return Err(Error::from_error_body(body, None));
        }
        FrameType::Ping => {
            let pong = hello.frame(
                FrameType::Pong,
                Flags::NONE,
                RequestId::NIL,
                header.sequence,
                header.is_final,
                Bytes::new(),
            );
            return Ok(Answer::Pong(pong));
        }
        frame_type => {
            return Err(Error::Protocol(ProtocolViolation::UnexpectedFrame {
                frame_type,
            }))
        }
    };
    let channel = hello.channel;
    if header.channel_id != channel {
        let got = header.channel_id;
        return Err(Error::Protocol(ProtocolViolation::ChannelMismatch {
            expected: channel,
            got,
        }));
    }
    let requested = hello.client;
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
    Ok(Answer::Welcome(Welcomed {
        client: assigned,
        limits: Limits {
            max_payload: welcome.max_payload,
            default_timeout: Duration::from_millis(welcome.default_timeout_ms.into()),
            max_timeout: Duration::from_millis(welcome.max_timeout_ms.into()),
            heartbeat: Duration::from_millis(welcome.heartbeat_ms.into()),
        },
        peers: welcome.peers,
        resume: header.request_id,
    }))
}

/// Received bytes shown in [`Error::NotABroker`]: a status line or a banner fits.
const NOT_A_BROKER_SHOWN: usize = 64;

/// `Some(NotABroker)` when the first bytes received cannot begin a broker's answer to HELLO
/// (version 1, then WELCOME, ERROR or PING): the address is some other server (an HTTP server,
/// the broker's metrics port, a database). Checked before a whole header is in, so a server
/// that sends a short banner and waits is recognised too.
pub(crate) fn not_a_broker(buf: &[u8]) -> Option<Error> {
    let version_ok = buf
        .first()
        .is_none_or(|version| *version == switchyard_proto::VERSION);
    let type_ok = buf.get(1).is_none_or(|frame_type| {
        matches!(
            FrameType::try_from(*frame_type),
            Ok(FrameType::Welcome | FrameType::Error | FrameType::Ping)
        )
    });
    (!(version_ok && type_ok)).then(|| Error::NotABroker {
        received: buf[..buf.len().min(NOT_A_BROKER_SHOWN)].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_and_banners_are_not_a_broker() {
        assert!(not_a_broker(b"").is_none());
        assert!(not_a_broker(&[1]).is_none());
        assert!(not_a_broker(&[1, FrameType::Welcome as u8, 0]).is_none());
        assert!(not_a_broker(&[1, FrameType::Error as u8]).is_none());
        let Some(Error::NotABroker { received }) = not_a_broker(b"HTTP/1.1 400 Bad Request") else {
            panic!("HTTP must be recognised");
        };
        assert_eq!(received, b"HTTP/1.1 400 Bad Request");
        assert!(not_a_broker(&[1, FrameType::Start as u8]).is_some());
        assert!(not_a_broker(&[2]).is_some());
    }
}
