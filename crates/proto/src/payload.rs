//! Payload layouts of the control frames (all integers big-endian):
//!
//! ```text
//! WELCOME  u32 max_payload | u32 default_timeout_ms | u32 max_timeout_ms | u32 heartbeat_ms
//!          | u32 peer_count | peer_count × 16-byte client id
//! ERROR    u16 code | u16 text_len | text_len bytes UTF-8 text | n × 16-byte client id
//!          (the ids are the peers the error concerns: the broadcast peers that did not ack)
//! RECEIVE  u32 credit window (requests the receiver is ready to hold at once)
//! ACK      broker → sender: u32 number of peers that acknowledged; peer → broker: empty
//! PEERS    client → broker: empty; broker → client: u32 count | count × 16-byte client id
//! ```
//!
//! Decoding never panics: short, long or non-UTF-8 input gives a [`PayloadError`].

use bytes::{BufMut, Bytes, BytesMut};
use std::fmt;

use super::ErrorCode;
use crate::ids::ClientId;

/// Why a control frame's payload is malformed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PayloadError {
    /// Fewer bytes than the layout needs.
    Truncated,
    /// More bytes than the layout allows (or a peer list not a multiple of 16 bytes).
    TrailingBytes,
    /// The error text is not UTF-8.
    InvalidUtf8,
}

impl fmt::Display for PayloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PayloadError::Truncated => "payload shorter than its layout",
            PayloadError::TrailingBytes => "payload longer than its layout",
            PayloadError::InvalidUtf8 => "error text is not UTF-8",
        })
    }
}

impl std::error::Error for PayloadError {}

/// Reads a big-endian `u32` payload (RECEIVE window, ACK count).
///
/// # Errors
/// [`PayloadError::Truncated`] or [`PayloadError::TrailingBytes`] unless exactly 4 bytes.
pub fn decode_u32(payload: &[u8]) -> Result<u32, PayloadError> {
    match <[u8; 4]>::try_from(payload) {
        Ok(bytes) => Ok(u32::from_be_bytes(bytes)),
        Err(_) if payload.len() < 4 => Err(PayloadError::Truncated),
        Err(_) => Err(PayloadError::TrailingBytes),
    }
}

/// The 4-byte big-endian payload of a RECEIVE or broker ACK frame.
pub fn encode_u32(value: u32) -> Bytes {
    Bytes::copy_from_slice(&value.to_be_bytes())
}

/// The payload of the broker's PEERS answer.
pub fn encode_peers(peers: &[ClientId]) -> Bytes {
    let mut out = BytesMut::with_capacity(4 + 16 * peers.len());
    out.put_u32(u32::try_from(peers.len()).unwrap_or(u32::MAX));
    for peer in peers {
        out.put_slice(peer.as_bytes());
    }
    out.freeze()
}

/// Decodes the payload of the broker's PEERS answer.
///
/// # Errors
/// A [`PayloadError`] when the count and the ids disagree.
pub fn decode_peers(mut payload: &[u8]) -> Result<Vec<ClientId>, PayloadError> {
    let count = take_u32(&mut payload)? as usize;
    if payload.len() / 16 < count {
        return Err(PayloadError::Truncated);
    }
    let peers = read_peers(payload)?;
    if peers.len() != count {
        return Err(PayloadError::TrailingBytes);
    }
    Ok(peers)
}

fn read_peers(mut rest: &[u8]) -> Result<Vec<ClientId>, PayloadError> {
    if !rest.len().is_multiple_of(16) {
        return Err(PayloadError::TrailingBytes);
    }
    let mut peers = Vec::with_capacity(rest.len() / 16);
    while let Some((id, tail)) = rest.split_first_chunk::<16>() {
        peers.push(ClientId::from_bytes(*id));
        rest = tail;
    }
    Ok(peers)
}

fn take_u32(input: &mut &[u8]) -> Result<u32, PayloadError> {
    let (bytes, rest) = input
        .split_first_chunk::<4>()
        .ok_or(PayloadError::Truncated)?;
    *input = rest;
    Ok(u32::from_be_bytes(*bytes))
}

/// Body of a WELCOME frame: the broker's limits and the peers already on the channel.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct WelcomeBody {
    /// Largest payload of one frame the broker accepts.
    pub max_payload: u32,
    /// Timeout applied to a request whose start carries `timeout_ms = 0`.
    pub default_timeout_ms: u32,
    /// Larger request timeouts are clamped to this.
    pub max_timeout_ms: u32,
    /// Interval of the broker's heartbeat pings (0 = none).
    pub heartbeat_ms: u32,
    /// The other peers on the channel at the time of the handshake.
    pub peers: Vec<ClientId>,
}

impl WelcomeBody {
    /// Encodes the body.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(20 + 16 * self.peers.len());
        out.put_u32(self.max_payload);
        out.put_u32(self.default_timeout_ms);
        out.put_u32(self.max_timeout_ms);
        out.put_u32(self.heartbeat_ms);
        out.put_u32(u32::try_from(self.peers.len()).unwrap_or(u32::MAX));
        for peer in &self.peers {
            out.put_slice(peer.as_bytes());
        }
        out.freeze()
    }

    /// Decodes the body.
    ///
    /// # Errors
    /// A [`PayloadError`] when the layout does not match.
    pub fn decode(mut payload: &[u8]) -> Result<WelcomeBody, PayloadError> {
        let max_payload = take_u32(&mut payload)?;
        let default_timeout_ms = take_u32(&mut payload)?;
        let max_timeout_ms = take_u32(&mut payload)?;
        let heartbeat_ms = take_u32(&mut payload)?;
        let count = take_u32(&mut payload)? as usize;
        if payload.len() / 16 < count {
            return Err(PayloadError::Truncated);
        }
        let peers = read_peers(payload)?;
        if peers.len() != count {
            return Err(PayloadError::TrailingBytes);
        }
        Ok(WelcomeBody {
            max_payload,
            default_timeout_ms,
            max_timeout_ms,
            heartbeat_ms,
            peers,
        })
    }
}

/// Body of an ERROR frame.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ErrorBody {
    /// The raw code; see [`ErrorBody::known_code`]. Kept raw so a client can report codes newer
    /// than itself.
    pub code: u16,
    /// Human-readable explanation.
    pub message: String,
    /// The peers the error concerns (for `BroadcastIncomplete`: those that did not ack).
    pub peers: Vec<ClientId>,
}

impl ErrorBody {
    /// An error body with no peer list.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorBody {
        ErrorBody {
            code: code as u16,
            message: message.into(),
            peers: Vec::new(),
        }
    }

    /// The code as an [`ErrorCode`], when this version knows it.
    pub fn known_code(&self) -> Option<ErrorCode> {
        ErrorCode::try_from(self.code).ok()
    }

    /// Encodes the body. Text longer than 65 535 bytes is cut at a character boundary.
    pub fn encode(&self) -> Bytes {
        encode_error(self.code, &self.message, &self.peers)
    }

    /// Decodes the body.
    ///
    /// # Errors
    /// A [`PayloadError`] when the layout does not match or the text is not UTF-8.
    pub fn decode(payload: &[u8]) -> Result<ErrorBody, PayloadError> {
        let (code, rest) = payload
            .split_first_chunk::<2>()
            .ok_or(PayloadError::Truncated)?;
        let (text_len, rest) = rest
            .split_first_chunk::<2>()
            .ok_or(PayloadError::Truncated)?;
        let text_len = u16::from_be_bytes(*text_len) as usize;
        let (text, rest) = rest
            .split_at_checked(text_len)
            .ok_or(PayloadError::Truncated)?;
        let message = std::str::from_utf8(text).map_err(|_| PayloadError::InvalidUtf8)?;
        Ok(ErrorBody {
            code: u16::from_be_bytes(*code),
            message: message.to_owned(),
            peers: read_peers(rest)?,
        })
    }
}

/// Bytes of a frame that lists peers besides the ids, at most: WELCOME's five `u32` (20 bytes)
/// and 64 bytes kept for fields a later version may add to it; also room for a PEERS answer's
/// count (4) and for an ERROR's code, text length and an 80-byte text (84). A broker whose max
/// payload is `max_payload` can list [`peers_that_fit`] ids in one frame, so it never lets a
/// channel have more peers than that plus one (the client itself is not in its own lists).
pub const PEER_LIST_OVERHEAD: usize = 84;

/// Peer ids one frame of `max_payload` bytes can list besides [`PEER_LIST_OVERHEAD`].
pub const fn peers_that_fit(max_payload: u32) -> usize {
    (max_payload as usize).saturating_sub(PEER_LIST_OVERHEAD) / 16
}

/// As [`encode_error`], with the text cut (at a character boundary) so that the payload is at
/// most `max_len` bytes; the ids are never cut (the caller's limits make them fit).
pub fn encode_error_within(code: u16, message: &str, peers: &[ClientId], max_len: usize) -> Bytes {
    let room = max_len.saturating_sub(4 + 16 * peers.len());
    let mut cut = message.len().min(room);
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    encode_error(code, &message[..cut], peers)
}

/// Encodes an error body from parts, without building an [`ErrorBody`] first.
pub fn encode_error(code: u16, message: &str, peers: &[ClientId]) -> Bytes {
    let mut cut = message.len().min(u16::MAX as usize);
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    let text = &message.as_bytes()[..cut];
    let mut out = BytesMut::with_capacity(4 + text.len() + 16 * peers.len());
    out.put_u16(code);
    out.put_u16(text.len() as u16); // INVARIANT: cut <= u16::MAX above.
    out.put_slice(text);
    for peer in peers {
        out.put_slice(peer.as_bytes());
    }
    out.freeze()
}
