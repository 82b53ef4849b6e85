//! Streaming frame decoder over a [`BytesMut`] read buffer.
//!
//! Two states: `Head` (waiting for a full header) and `Payload` (header parsed, waiting for its
//! payload). [`Decoder::decode`] returns `Ok(Some(frame))` when a frame is complete, `Ok(None)`
//! when it needs more bytes (it has consumed nothing it cannot resume from), and `Err` only for
//! malformed input. After an error the byte stream has no recoverable frame boundary: the caller
//! must stop decoding and close the connection.
//!
//! The payload length is checked against the limit *before* anything is reserved, so a hostile
//! length can never make the decoder allocate more than `max_payload + HEADER_LEN` bytes.

use bytes::{Buf, BytesMut};
use std::fmt;

use super::{ErrorCode, Frame, Header, HEADER_LEN, VERSION};

/// Why a byte stream is not a valid frame stream.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DecodeError {
    /// The version byte is not the one this broker speaks.
    UnsupportedVersion {
        /// The version byte received.
        got: u8,
    },
    /// The frame type byte is undefined.
    UnknownFrameType {
        /// The type byte received.
        got: u8,
    },
    /// The flags field has undefined bits set.
    UndefinedFlags {
        /// The flags received.
        got: u16,
    },
    /// The payload length exceeds the limit.
    PayloadTooLarge {
        /// The announced payload length.
        len: u32,
        /// The limit in force.
        max: u32,
    },
}

impl DecodeError {
    /// The error code the broker reports for this decode error.
    pub fn code(self) -> ErrorCode {
        match self {
            DecodeError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            DecodeError::UnknownFrameType { .. } => ErrorCode::UnknownFrameType,
            DecodeError::UndefinedFlags { .. } => ErrorCode::MalformedFrame,
            DecodeError::PayloadTooLarge { .. } => ErrorCode::PayloadTooLarge,
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DecodeError::UnsupportedVersion { got } => {
                write!(
                    f,
                    "unsupported protocol version {got}; this broker speaks version {VERSION}"
                )
            }
            DecodeError::UnknownFrameType { got } => write!(f, "unknown frame type 0x{got:02x}"),
            DecodeError::UndefinedFlags { got } => write!(f, "undefined flag bits in 0x{got:04x}"),
            DecodeError::PayloadTooLarge { len, max } => {
                write!(f, "payload length {len} exceeds the limit of {max} bytes")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

#[derive(Clone, Copy, Debug)]
enum State {
    /// Waiting for a complete header.
    Head,
    /// Header parsed; waiting for `header.payload_len` payload bytes.
    Payload(Header),
}

/// Streaming decoder; one per connection. See the module docs for the contract.
#[derive(Debug)]
pub struct Decoder {
    state: State,
    max_payload: u32,
}

impl Decoder {
    /// A decoder that rejects payloads longer than `max_payload` bytes.
    pub fn new(max_payload: u32) -> Decoder {
        Decoder {
            state: State::Head,
            max_payload,
        }
    }

    /// The payload limit in force.
    pub fn max_payload(&self) -> u32 {
        self.max_payload
    }

    /// Changes the payload limit for the frames whose header is not decoded yet (a frame whose
    /// header was already accepted keeps the limit it was checked against). The broker lowers
    /// it before a connection's handshake and raises it after (PROTOCOL.md §9.1).
    pub fn set_max_payload(&mut self, max_payload: u32) {
        self.max_payload = max_payload;
    }

    /// True when no partial frame is pending (the last decoded frame ended exactly at the end of
    /// the consumed input).
    pub fn is_between_frames(&self) -> bool {
        matches!(self.state, State::Head)
    }

    /// Decodes the next frame from `buf`, consuming its bytes.
    ///
    /// # Errors
    /// A [`DecodeError`] when the input is malformed; see the module docs.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        let header = match self.state {
            State::Payload(header) => header,
            State::Head => {
                let Some(head) = buf.get(..HEADER_LEN) else {
                    return Ok(None);
                };
                let mut raw = [0u8; HEADER_LEN];
                raw.copy_from_slice(head);
                let header = Header::parse(&raw)?;
                if header.payload_len > self.max_payload {
                    return Err(DecodeError::PayloadTooLarge {
                        len: header.payload_len,
                        max: self.max_payload,
                    });
                }
                buf.advance(HEADER_LEN);
                self.state = State::Payload(header);
                header
            }
        };
        let len = header.payload_len as usize;
        if buf.len() < len {
            // Room for the rest of this payload and the next header, so the next reads land in
            // place instead of growing the buffer piecemeal.
            buf.reserve(len - buf.len() + HEADER_LEN);
            return Ok(None);
        }
        let payload = buf.split_to(len).freeze();
        self.state = State::Head;
        Ok(Some(Frame { header, payload }))
    }
}
