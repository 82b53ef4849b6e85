//! # switchyard-proto
//!
//! The wire format, sans-IO: the identifiers, frame types, flags, error codes, limits, the 64-byte
//! header, a streaming decoder and an encoder. `PROTOCOL.md` is the normative description; this
//! crate is its executable form, shared by the broker and every Rust client.
//!
//! Its dependency list (`bytes`, `uuid`) is its promise: no socket, no clock, no thread.
//!
//! # Contract
//! - Nothing here touches a socket or a clock, and nothing here panics on any input: every byte
//!   sequence either decodes, asks for more bytes (`Ok(None)`), or yields a typed [`DecodeError`].
//! - A frame is a fixed [`HEADER_LEN`]-byte big-endian header followed by `payload_len` bytes.
//! - Payloads are [`Bytes`]: decoding splits them off the read buffer without copying, and the
//!   encoder writes only the header, leaving the payload to be sent as its own buffer.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod decoder;
mod encoder;
mod header;
mod ids;
mod payload;
#[cfg(test)]
mod tests;

pub use decoder::{DecodeError, Decoder};
pub use encoder::{encode_frame, encode_header};
pub use header::{field, Header, HEADER_LEN};
pub use ids::{
    ChannelId, ChannelNameError, ClientId, RequestId, Uuid, CHANNEL_NAMESPACE, MAX_CHANNEL_NAME,
};
pub use payload::{
    decode_peers, decode_u32, encode_error, encode_error_within, encode_peers, encode_u32,
    peers_that_fit, ErrorBody, PayloadError, WelcomeBody, PEER_LIST_OVERHEAD,
};

use bytes::Bytes;

/// The one protocol version this broker speaks.
pub const VERSION: u8 = 1;

/// Bit 31 of the sequence field: set on the last frame of a stream.
pub const FINAL_BIT: u32 = 1 << 31;

/// Largest sequence number (the field's low 31 bits).
pub const MAX_SEQUENCE: u32 = FINAL_BIT - 1;

/// Default largest payload of one frame: 1 MiB. Big enough that large bodies move in few frames,
/// small enough that one frame never pins much memory. Configurable on the broker.
pub const DEFAULT_MAX_PAYLOAD: u32 = 1 << 20;

/// The hard ceiling on a configured max payload (16 MiB): keeps the decoder's reservation bounded
/// whatever the configuration says.
pub const MAX_PAYLOAD_CEILING: u32 = 16 << 20;

/// Largest payload of any frame a connection may send before its handshake completed (its HELLO,
/// a PING): 4 KiB. The HELLO payload is the access token, and no configured token may be longer
/// (the broker refuses such a configuration), so a longer HELLO can only be an attack: it is
/// refused at its header with PAYLOAD_TOO_LARGE, before one payload byte is buffered. So an
/// unauthenticated connection never costs the broker more than a header and this much payload
/// (PROTOCOL.md §9.1). A page: room for any real token (random secrets, signed tokens of a few
/// hundred bytes), small enough that 1 000 stalled half-HELLOs hold 4 MiB, not 1 GiB.
pub const MAX_HELLO_PAYLOAD: u32 = 4 * 1024;

/// What every frame's 8-bit type field may hold.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[repr(u8)]
pub enum FrameType {
    /// Client → broker, first frame of a connection: join a channel.
    Hello = 0x01,
    /// Broker → client: handshake accepted; carries the client id, limits and current peers.
    Welcome = 0x02,
    /// First frame of a request, response or broadcast stream.
    Start = 0x03,
    /// A middle frame of a stream.
    Chunk = 0x04,
    /// Last frame of a stream (always carries the final bit).
    End = 0x05,
    /// An error: a `u16` code and UTF-8 text (see [`ErrorBody`]).
    Error = 0x06,
    /// Broadcast acknowledgement (peer → broker), or the collected ack (broker → sender).
    Ack = 0x07,
    /// Receiver → broker: the number of requests it is ready to hold at once (its credit window).
    Receive = 0x08,
    /// Abort of a request: sender → broker → receiver, or receiver → broker → sender.
    Cancel = 0x09,
    /// Broker → client: a peer joined the channel (its id in the client id field).
    PeerJoined = 0x0A,
    /// Broker → client: a peer left the channel.
    PeerLeft = 0x0B,
    /// Liveness probe, either direction.
    Ping = 0x0C,
    /// Answer to a ping, echoing its sequence number.
    Pong = 0x0D,
    /// Client → broker: "who is on my channel?" (empty); broker → client: the peer list
    /// (see [`encode_peers`]).
    Peers = 0x0E,
}

impl FrameType {
    /// True for the three frame types that carry a stream (start, chunk, end).
    pub fn is_stream(self) -> bool {
        matches!(self, FrameType::Start | FrameType::Chunk | FrameType::End)
    }
}

impl TryFrom<u8> for FrameType {
    type Error = u8;

    fn try_from(byte: u8) -> Result<Self, u8> {
        Ok(match byte {
            0x01 => FrameType::Hello,
            0x02 => FrameType::Welcome,
            0x03 => FrameType::Start,
            0x04 => FrameType::Chunk,
            0x05 => FrameType::End,
            0x06 => FrameType::Error,
            0x07 => FrameType::Ack,
            0x08 => FrameType::Receive,
            0x09 => FrameType::Cancel,
            0x0A => FrameType::PeerJoined,
            0x0B => FrameType::PeerLeft,
            0x0C => FrameType::Ping,
            0x0D => FrameType::Pong,
            0x0E => FrameType::Peers,
            other => return Err(other),
        })
    }
}

/// The 16-bit flags field.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Flags(u16);

impl Flags {
    /// No flag set.
    pub const NONE: Flags = Flags(0);
    /// The frame travels in the request direction (sender → receiver).
    pub const REQUEST: Flags = Flags(0x0001);
    /// The frame travels in the response direction (receiver → sender).
    pub const RESPONSE: Flags = Flags(0x0002);
    /// The stream is a broadcast to every other peer of the channel.
    pub const BROADCAST: Flags = Flags(0x0004);
    /// On a request start: fail at once with `NoReceiver` instead of queueing when no receiver
    /// has credit.
    pub const NO_WAIT: Flags = Flags(0x0008);
    /// Every defined bit; a frame with any other bit set is malformed.
    pub const ALL: Flags = Flags(0x000F);

    /// The raw bits.
    pub const fn bits(self) -> u16 {
        self.0
    }

    /// Flags from raw bits, or `None` when an undefined bit is set.
    pub const fn from_bits(bits: u16) -> Option<Flags> {
        if bits & !Self::ALL.0 == 0 {
            Some(Flags(bits))
        } else {
            None
        }
    }

    /// True when every bit of `other` is set in `self`.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// The union of two flag sets.
    pub const fn union(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }
}

impl std::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        self.union(rhs)
    }
}

impl std::fmt::Debug for Flags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = [
            (Flags::REQUEST, "REQUEST"),
            (Flags::RESPONSE, "RESPONSE"),
            (Flags::BROADCAST, "BROADCAST"),
            (Flags::NO_WAIT, "NO_WAIT"),
        ];
        let mut first = true;
        write!(f, "Flags(")?;
        for (flag, name) in names {
            if self.contains(flag) {
                if !first {
                    write!(f, "|")?;
                }
                write!(f, "{name}")?;
                first = false;
            }
        }
        write!(f, ")")
    }
}

/// Error codes carried in the first two bytes of an error frame's payload.
///
/// Codes below 0x0100 are connection-level protocol violations: the broker sends the error and
/// closes the connection. Codes from 0x0100 concern one request or broadcast (named by the
/// frame's request id) and leave the connection open.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[repr(u16)]
pub enum ErrorCode {
    /// The frame's version byte is not [`VERSION`]; the text names the supported version.
    UnsupportedVersion = 0x0001,
    /// The header is inconsistent (undefined flag bits, a control frame with a bad payload…).
    MalformedFrame = 0x0002,
    /// The frame type byte is not one this version defines.
    UnknownFrameType = 0x0003,
    /// The payload length exceeds the broker's max payload.
    PayloadTooLarge = 0x0004,
    /// A frame other than hello arrived before the handshake.
    HandshakeRequired = 0x0005,
    /// A second hello on an established connection.
    DuplicateHello = 0x0006,
    /// The frame's channel id differs from the one joined in the handshake.
    ChannelMismatch = 0x0007,
    /// A frame type that may not be sent in this direction (a client sending a welcome…).
    UnexpectedFrame = 0x0008,
    /// Reserved (not sent since takeover: a hello with a connected client id replaces the old
    /// connection, which gets [`ErrorCode::Replaced`]).
    ClientIdInUse = 0x0009,
    /// The broker is shutting down (or the connection is being closed for a broker-side reason).
    GoingAway = 0x000A,
    /// The connection stayed silent through the heartbeat: pings went unanswered.
    HeartbeatTimeout = 0x000B,
    /// A newer connection joined with the same client id on the same channel (takeover).
    Replaced = 0x000C,
    /// The HELLO's access token (its payload) is missing or wrong for the channel. Sent before
    /// the connection learns anything about the channel; the broker closes it.
    Unauthorized = 0x000D,

    /// No receiver with credit took the request within its timeout (or at once, with NO_WAIT).
    NoReceiver = 0x0100,
    /// The response did not complete within the request's timeout.
    Timeout = 0x0101,
    /// The other side of the request disconnected before it completed.
    PeerGone = 0x0102,
    /// Reserved: a counterpart's cancel arrives as a CANCEL frame, not as this code.
    Cancelled = 0x0103,
    /// A broadcast found no other peer on the channel.
    NoPeers = 0x0104,
    /// Some peers did not acknowledge a broadcast; the body lists them.
    BroadcastIncomplete = 0x0105,
    /// A frame named a request id this connection has no part in (unknown, finished, or someone
    /// else's). The frame was dropped.
    UnknownRequest = 0x0106,
    /// A start frame reused the id of a request still in flight.
    DuplicateRequest = 0x0107,
    /// A stream frame arrived out of order (wrong sequence number, a CHUNK with FINAL, an END
    /// without it, an ACK before the broadcast's FINAL). The request is aborted.
    StreamOrder = 0x0108,
    /// The channel's queue of requests waiting for a receiver is full.
    LimitExceeded = 0x0109,
    /// The broker is draining before it shuts down: it takes no new request, or it ended this
    /// one at the drain deadline.
    ShuttingDown = 0x010A,

    /// A notice, not an error (request id nil, the connection stays open): presence events
    /// (PEER_JOINED, PEER_LEFT) were dropped while this connection's queue was over the high
    /// watermark (or the broker over its memory budget). Re-sync the peer list with PEERS.
    PresenceOverflow = 0x0200,
}

impl ErrorCode {
    /// True when the broker always closes the connection after sending this code. (It also
    /// closes it after `LimitExceeded` with a nil request id: a connection-level limit.)
    pub fn is_connection_fatal(self) -> bool {
        (self as u16) < 0x0100
    }
}

impl TryFrom<u16> for ErrorCode {
    type Error = u16;

    fn try_from(code: u16) -> Result<Self, u16> {
        use ErrorCode::*;
        Ok(match code {
            0x0001 => UnsupportedVersion,
            0x0002 => MalformedFrame,
            0x0003 => UnknownFrameType,
            0x0004 => PayloadTooLarge,
            0x0005 => HandshakeRequired,
            0x0006 => DuplicateHello,
            0x0007 => ChannelMismatch,
            0x0008 => UnexpectedFrame,
            0x0009 => ClientIdInUse,
            0x000A => GoingAway,
            0x000B => HeartbeatTimeout,
            0x000C => Replaced,
            0x000D => Unauthorized,
            0x0100 => NoReceiver,
            0x0101 => Timeout,
            0x0102 => PeerGone,
            0x0103 => Cancelled,
            0x0104 => NoPeers,
            0x0105 => BroadcastIncomplete,
            0x0106 => UnknownRequest,
            0x0107 => DuplicateRequest,
            0x0108 => StreamOrder,
            0x0109 => LimitExceeded,
            0x010A => ShuttingDown,
            0x0200 => PresenceOverflow,
            other => return Err(other),
        })
    }
}

/// One decoded frame: the header and its payload (shared, never copied by the decoder).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Frame {
    /// The fixed header. `header.payload_len == payload.len()` for every decoded frame.
    pub header: Header,
    /// The payload bytes.
    pub payload: Bytes,
}

impl Frame {
    /// A frame from a header and a payload; sets `header.payload_len` from the payload.
    ///
    /// # Panics
    /// If the payload is longer than `u32::MAX` bytes (never for frames the decoder produced).
    pub fn new(mut header: Header, payload: Bytes) -> Frame {
        header.payload_len = u32::try_from(payload.len()).expect("payload length fits in u32");
        Frame { header, payload }
    }

    /// Total bytes the frame takes on the wire.
    pub fn wire_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }
}
