//! The client's error types: [`Error`] for every operation and [`ProtocolViolation`] for broker
//! input that breaks `PROTOCOL.md`.
//!
//! Scope of each variant, at a glance:
//! - connection-wide (the client is closed, every later call fails too): [`Error::Io`],
//!   [`Error::Closed`], [`Error::Protocol`], [`Error::Tls`], [`Error::TooLarge`],
//!   [`Error::Unauthorized`], [`Error::Replaced`], [`Error::NotABroker`],
//!   [`Error::ConnectTimeout`] (at connect), and [`Error::Broker`] with a code below `0x0100`;
//! - the link, not the client (reconnection is on and under way: retry later):
//!   [`Error::ConnectionLost`] (the operation was in flight when the link dropped) and
//!   [`Error::Reconnecting`] (the operation was never sent);
//! - one operation only (the client stays usable): everything else.
//!
//! [`Error::is_connection_fatal`] tells the two apart.

use std::fmt;
use std::io;

use switchyard_proto::{ChannelId, ClientId, RequestId};
use switchyard_proto::{DecodeError, ErrorBody, ErrorCode, Flags, FrameType, PayloadError};

/// Why a client operation failed. Each variant says what the caller should do.
#[non_exhaustive]
#[derive(Debug)]
pub enum Error {
    /// The TCP connection to the broker could not be established (every resolved address
    /// failed; the last address's error is kept). Retry later or check the address.
    ConnectionRefused(io::Error),
    /// The connection failed or was closed by the broker while in use. The client is closed;
    /// connect again.
    Io(io::Error),
    /// The client was closed with [`Client::close`](super::Client::close) (or dropped). Connect
    /// again if needed.
    Closed,
    /// The connection to the broker dropped while this operation was in flight. The client is
    /// reconnecting on its own ([`ClientOptions::reconnect`](super::ClientOptions::reconnect));
    /// the operation is *not* retried (at-most-once): the broker may or may not have processed
    /// it. Retry it yourself if it is idempotent, once
    /// [`Client::wait_connected`](super::Client::wait_connected) returns.
    ConnectionLost,
    /// The client is between two connections (reconnecting); the operation was not sent. Wait
    /// with [`Client::wait_connected`](super::Client::wait_connected) and retry.
    Reconnecting,
    /// No receiver took the request within its timeout (or at once, with `no_wait`). Retry later
    /// or give up: nobody is serving the channel.
    NoReceiver,
    /// The operation's own timeout elapsed: the broker reported `TIMEOUT` (the receiver got the
    /// request but its response did not complete in time; the receiver was sent CANCEL), or, for
    /// a request, broadcast, ping or peer query, no answer came within the local deadline (the
    /// timeout plus [`ClientOptions::deadline_grace`](super::ClientOptions::deadline_grace): the
    /// broker itself is not answering). The request may or may not have been processed. Retry
    /// with a longer timeout, or check the receivers.
    Timeout,
    /// A local wait ended with nothing to return: `next_request`, `next_broadcast`,
    /// `next_presence`, `next_state_change` or `wait_connected` reached the timeout the caller
    /// gave. Nothing failed and nothing was lost: call again, or do something else.
    WaitElapsed,
    /// Connecting and joining the channel did not complete within
    /// [`ClientOptions::connect_timeout`](super::ClientOptions::connect_timeout) (the TCP
    /// connection, the TLS handshake, or the WELCOME). The broker is unreachable, overloaded, or
    /// a firewall drops the packets. Retry later or check the address. (Reconnection retries it.)
    ConnectTimeout,
    /// The server at the address is not a switchyard broker: its first bytes cannot begin an
    /// answer to HELLO (an HTTP server, the broker's metrics port, another service). Check the
    /// address and port; `received` shows what it sent (at most 64 bytes). Not retried.
    NotABroker {
        /// The first bytes the server sent.
        received: Vec<u8>,
    },
    /// The broker refused the access token (`UNAUTHORIZED`): it is missing or wrong for this
    /// channel. Set [`ClientOptions::token`](super::ClientOptions::token) to the channel's
    /// token. Not retried: a new connection would carry the same token.
    Unauthorized,
    /// Another connection joined with this client id and took the channel membership over
    /// (`REPLACED`): two processes share one client id. The client is closed and does not
    /// reconnect (the two would take turns forever); give each process its own id.
    Replaced,
    /// The receiver holding the request disconnected before its response completed. The request
    /// may or may not have been processed.
    PeerGone,
    /// The other side cancelled the request (for a sender: the receiver gave up; for a receiver:
    /// the sender gave up, or the request timed out). Stop working on it.
    Cancelled,
    /// A broadcast found no other peer on the channel; nobody received it.
    NoPeers,
    /// The broker is shutting down (it sent GOING_AWAY): this connection takes no new request or
    /// broadcast; those in flight finish until the broker's drain deadline (or end with this
    /// error at it). Connect again later, or to another broker.
    GoingAway,
    /// Some peers did not acknowledge a broadcast (they left, were too slow, or the timeout
    /// fired). The others received it.
    BroadcastIncomplete {
        /// The peers that did not acknowledge.
        missing: Vec<ClientId>,
    },
    /// The broker rejected a frame as larger than its max payload (`PAYLOAD_TOO_LARGE`,
    /// connection-fatal), or a body would need more frames than a stream's 31-bit sequence can
    /// count. A client bug or a broker whose limits changed under it.
    TooLarge {
        /// The frame payload limit the client was using.
        max_payload: u32,
    },
    /// The broker broke the protocol; the client closed the connection. Report it.
    Protocol(ProtocolViolation),
    /// TLS failed ([`ClientOptions::tls`](super::ClientOptions::tls)): the broker's certificate
    /// is not trusted or not valid for the server name (`InvalidCertificate`), the two ends
    /// share no protocol version or cipher suite, the broker sent an alert, or the other end
    /// does not speak TLS at all (a plain-TCP port: `InvalidMessage`). The client is closed and
    /// does not reconnect: a new connection would meet the same certificate. Check the trusted
    /// CA, the server name and the port. (With the `tls` feature.)
    #[cfg(feature = "tls")]
    Tls(rustls::Error),
    /// Any other error code the broker sent: `UNKNOWN_REQUEST`, `DUPLICATE_REQUEST`,
    /// `STREAM_ORDER`, `LIMIT_EXCEEDED` (on one request: the channel's queue or this
    /// connection's in-flight limit is full, back off and retry; with no request, at connect:
    /// the broker is at a connection, channel or peer limit), or another connection-fatal code
    /// (below `0x0100`, for example `CHANNEL_MISMATCH`), or a code newer than this client. See
    /// [`Error::code`].
    Broker {
        /// The raw error code.
        code: u16,
        /// The broker's explanation.
        message: String,
    },
}

impl Error {
    /// The broker's error code behind this error, as an [`ErrorCode`]: for [`Error::Broker`]
    /// with a code this version knows, and for the typed variants that only a broker's code
    /// produces ([`Error::Unauthorized`], [`Error::Replaced`]).
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Broker { code, .. } => ErrorCode::try_from(*code).ok(),
            Error::Unauthorized => Some(ErrorCode::Unauthorized),
            Error::Replaced => Some(ErrorCode::Replaced),
            _ => None,
        }
    }

    /// True when the error closed (or found closed) the whole client rather than failing one
    /// operation.
    pub fn is_connection_fatal(&self) -> bool {
        match self {
            Error::ConnectionRefused(_)
            | Error::Io(_)
            | Error::Closed
            | Error::Protocol(_)
            | Error::ConnectTimeout
            | Error::NotABroker { .. }
            | Error::Unauthorized
            | Error::Replaced
            | Error::TooLarge { .. } => true,
            #[cfg(feature = "tls")]
            Error::Tls(_) => true,
            Error::Broker { code, .. } => *code < 0x0100,
            _ => false,
        }
    }

    /// Maps an ERROR frame's body to the client error. `max_payload` is the limit in force once
    /// the handshake completed (`None` before it).
    pub(crate) fn from_error_body(body: ErrorBody, max_payload: Option<u32>) -> Error {
        match (body.known_code(), max_payload) {
            (Some(ErrorCode::NoReceiver), _) => Error::NoReceiver,
            (Some(ErrorCode::Timeout), _) => Error::Timeout,
            (Some(ErrorCode::PeerGone), _) => Error::PeerGone,
            (Some(ErrorCode::Cancelled), _) => Error::Cancelled,
            (Some(ErrorCode::NoPeers), _) => Error::NoPeers,
            (Some(ErrorCode::Unauthorized), _) => Error::Unauthorized,
            (Some(ErrorCode::Replaced), _) => Error::Replaced,
            (Some(ErrorCode::GoingAway | ErrorCode::ShuttingDown), _) => Error::GoingAway,
            (Some(ErrorCode::BroadcastIncomplete), _) => Error::BroadcastIncomplete {
                missing: body.peers,
            },
            (Some(ErrorCode::PayloadTooLarge), Some(max_payload)) => {
                Error::TooLarge { max_payload }
            }
            _ => Error::Broker {
                code: body.code,
                message: body.message,
            },
        }
    }

    /// A copy of the error. `io::Error` is not `Clone`, so an I/O error is rebuilt from its kind
    /// and message; used to hand one connection-closing cause to every pending operation.
    pub(crate) fn duplicate(&self) -> Error {
        match self {
            Error::ConnectionRefused(e) => Error::ConnectionRefused(copy_io(e)),
            Error::Io(e) => Error::Io(copy_io(e)),
            Error::Closed => Error::Closed,
            Error::ConnectionLost => Error::ConnectionLost,
            Error::Reconnecting => Error::Reconnecting,
            Error::NoReceiver => Error::NoReceiver,
            Error::Timeout => Error::Timeout,
            Error::WaitElapsed => Error::WaitElapsed,
            Error::ConnectTimeout => Error::ConnectTimeout,
            Error::NotABroker { received } => Error::NotABroker {
                received: received.clone(),
            },
            Error::Unauthorized => Error::Unauthorized,
            Error::Replaced => Error::Replaced,
            Error::PeerGone => Error::PeerGone,
            Error::Cancelled => Error::Cancelled,
            Error::NoPeers => Error::NoPeers,
            Error::GoingAway => Error::GoingAway,
            Error::BroadcastIncomplete { missing } => Error::BroadcastIncomplete {
                missing: missing.clone(),
            },
            Error::TooLarge { max_payload } => Error::TooLarge {
                max_payload: *max_payload,
            },
            Error::Protocol(v) => Error::Protocol(v.clone()),
            #[cfg(feature = "tls")]
            Error::Tls(e) => Error::Tls(e.clone()),
            Error::Broker { code, message } => Error::Broker {
                code: *code,
                message: message.clone(),
            },
        }
    }
}

fn copy_io(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::ConnectionRefused(e) => write!(f, "could not connect to the broker: {e}"),
            Error::Io(e) => write!(f, "connection to the broker failed: {e}"),
            Error::Closed => f.write_str("the client is closed"),
            Error::ConnectionLost => f.write_str(
                "the connection to the broker was lost while the operation was in flight \
                 (not retried; the client is reconnecting)",
            ),
            Error::Reconnecting => {
                f.write_str("the client is reconnecting to the broker; nothing was sent")
            }
            Error::NoReceiver => f.write_str("no receiver took the request in time"),
            Error::Timeout => f.write_str("the operation timed out"),
            Error::WaitElapsed => f.write_str("nothing arrived within the wait"),
            Error::ConnectTimeout => {
                f.write_str("connecting to the broker did not complete in time")
            }
            Error::NotABroker { received } => write!(
                f,
                "the server is not a switchyard broker (it sent {:?})",
                String::from_utf8_lossy(received)
            ),
            Error::Unauthorized => {
                f.write_str("the broker refused the access token for this channel")
            }
            Error::Replaced => {
                f.write_str("another connection joined with this client id and replaced this one")
            }
            Error::PeerGone => f.write_str("the receiver disconnected before responding"),
            Error::Cancelled => f.write_str("cancelled by the other side"),
            Error::NoPeers => f.write_str("the broadcast found no other peer on the channel"),
            Error::GoingAway => f.write_str("the broker is shutting down and takes nothing new"),
            Error::BroadcastIncomplete { missing } => {
                write!(
                    f,
                    "{} peer(s) did not acknowledge the broadcast",
                    missing.len()
                )
            }
            Error::TooLarge { max_payload } => {
                write!(
                    f,
                    "frame or body too large (max payload {max_payload} bytes)"
                )
            }
            Error::Protocol(v) => write!(f, "broker protocol violation: {v}"),
            #[cfg(feature = "tls")]
            Error::Tls(e) => write!(f, "TLS with the broker failed: {e}"),
            Error::Broker { code, message } => write!(f, "broker error 0x{code:04x}: {message}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::ConnectionRefused(e) | Error::Io(e) => Some(e),
            Error::Protocol(v) => Some(v),
            #[cfg(feature = "tls")]
            Error::Tls(e) => Some(e),
            _ => None,
        }
    }
}

/// Converts for the `io::Read` impls of bodies. [`Error::Io`] unwraps to its `io::Error`; every
/// other variant is wrapped (recover it with `get_ref()` + `downcast_ref::<Error>()`) under the
/// closest [`io::ErrorKind`].
impl From<Error> for io::Error {
    fn from(error: Error) -> io::Error {
        match error {
            Error::Io(e) | Error::ConnectionRefused(e) => e,
            other => {
                let kind = match &other {
                    Error::Timeout | Error::WaitElapsed | Error::ConnectTimeout => {
                        io::ErrorKind::TimedOut
                    }
                    Error::NotABroker { .. } => io::ErrorKind::InvalidData,
                    Error::Unauthorized => io::ErrorKind::PermissionDenied,
                    Error::Closed | Error::Reconnecting => io::ErrorKind::NotConnected,
                    Error::ConnectionLost => io::ErrorKind::ConnectionAborted,
                    Error::PeerGone => io::ErrorKind::ConnectionAborted,
                    Error::Cancelled => io::ErrorKind::ConnectionReset,
                    Error::Protocol(_) => io::ErrorKind::InvalidData,
                    #[cfg(feature = "tls")]
                    Error::Tls(_) => io::ErrorKind::InvalidData,
                    _ => io::ErrorKind::Other,
                };
                io::Error::new(kind, other)
            }
        }
    }
}

/// A way the broker broke `PROTOCOL.md`. Each one closes the connection, except a stream-level
/// violation ([`ProtocolViolation::StreamOrder`], [`ProtocolViolation::BadFinal`]) which fails and
/// cancels only that stream.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProtocolViolation {
    /// A frame header did not decode (bad version, unknown type, undefined flags, payload over
    /// the client's ceiling).
    Decode(DecodeError),
    /// A control frame's payload did not match its layout.
    BadPayload {
        /// The frame that carried it.
        frame_type: FrameType,
        /// What was wrong.
        error: PayloadError,
    },
    /// A frame type the broker may not send at this point (HELLO, RECEIVE, a second WELCOME,
    /// anything but WELCOME/ERROR/PING during the handshake).
    UnexpectedFrame {
        /// The offending type.
        frame_type: FrameType,
    },
    /// A frame named another channel than the one joined.
    ChannelMismatch {
        /// The joined channel.
        expected: ChannelId,
        /// The channel in the frame.
        got: ChannelId,
    },
    /// The WELCOME assigned a nil client id, or not the id the HELLO asked for.
    BadClientId {
        /// The id asked for (nil when the broker was to assign one).
        requested: ClientId,
        /// The id the WELCOME carried.
        assigned: ClientId,
    },
    /// The WELCOME announced a max payload of zero, which makes every body unsendable.
    ZeroMaxPayload,
    /// A stream frame or CANCEL without exactly one of REQUEST / RESPONSE, or an invalid mix
    /// (RESPONSE with BROADCAST).
    BadDirection {
        /// The frame type.
        frame_type: FrameType,
        /// Its flags.
        flags: Flags,
    },
    /// A stream frame with the nil request id.
    NilRequestId {
        /// The frame type.
        frame_type: FrameType,
    },
    /// A stream frame out of order: wrong sequence number, or a START on a stream already
    /// started, or a CHUNK/END for a stream whose START never came.
    StreamOrder {
        /// The stream.
        request_id: RequestId,
        /// The frame type.
        frame_type: FrameType,
        /// The sequence number the client expected.
        expected: u32,
        /// The sequence number received.
        got: u32,
    },
    /// A CHUNK with FINAL set or an END without it.
    BadFinal {
        /// The stream.
        request_id: RequestId,
        /// The frame type.
        frame_type: FrameType,
    },
}

impl fmt::Display for ProtocolViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolViolation::Decode(e) => write!(f, "undecodable frame: {e}"),
            ProtocolViolation::BadPayload { frame_type, error } => {
                write!(f, "malformed {frame_type:?} payload: {error}")
            }
            ProtocolViolation::UnexpectedFrame { frame_type } => {
                write!(f, "unexpected {frame_type:?} frame")
            }
            ProtocolViolation::ChannelMismatch { expected, got } => {
                write!(f, "frame for channel {got}, joined {expected}")
            }
            ProtocolViolation::BadClientId { requested, assigned } => {
                write!(f, "welcome assigned client id {assigned}, requested {requested}")
            }
            ProtocolViolation::ZeroMaxPayload => f.write_str("welcome announced max payload 0"),
            ProtocolViolation::BadDirection { frame_type, flags } => {
                write!(f, "{frame_type:?} with invalid direction flags {flags:?}")
            }
            ProtocolViolation::NilRequestId { frame_type } => {
                write!(f, "{frame_type:?} with the nil request id")
            }
            ProtocolViolation::StreamOrder { request_id, frame_type, expected, got } => write!(
                f,
                "{frame_type:?} out of order on stream {request_id}: sequence {got}, expected {expected}"
            ),
            ProtocolViolation::BadFinal { request_id, frame_type } => {
                write!(f, "{frame_type:?} with a wrong FINAL bit on stream {request_id}")
            }
        }
    }
}

impl std::error::Error for ProtocolViolation {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ProtocolViolation::Decode(e) => Some(e),
            ProtocolViolation::BadPayload { error, .. } => Some(error),
            _ => None,
        }
    }
}
