//! The fixed 64-byte frame header: byte ranges, parsing and encoding.
//!
//! ```text
//!  offset  size  field
//!       0     1  version        (= VERSION)
//!       1     1  frame type     (FrameType)
//!       2     2  flags          (Flags, big-endian)
//!       4    16  client id      (UUID bytes)
//!      20    16  channel id     (UUID bytes)
//!      36    16  request id     (UUID bytes)
//!      52     4  timeout_ms     (u32, big-endian)
//!      56     4  sequence       (u32, big-endian; bit 31 = final frame of the stream)
//!      60     4  payload length (u32, big-endian)
//! ```
//!
//! [`Header::parse`] takes a fixed-size array, so after the caller's one length check no accessor
//! can index out of bounds.

use super::{DecodeError, Flags, FrameType, FINAL_BIT, VERSION};
use crate::ids::{ChannelId, ClientId, RequestId};

/// Length of the fixed header in bytes.
pub const HEADER_LEN: usize = 64;

/// Byte ranges of the header fields.
pub mod field {
    use std::ops::Range;
    /// Protocol version byte.
    pub const VERSION: usize = 0;
    /// Frame type byte.
    pub const FRAME_TYPE: usize = 1;
    /// Flags, u16 big-endian.
    pub const FLAGS: Range<usize> = 2..4;
    /// Client id, 16 bytes.
    pub const CLIENT_ID: Range<usize> = 4..20;
    /// Channel id, 16 bytes.
    pub const CHANNEL_ID: Range<usize> = 20..36;
    /// Request id, 16 bytes.
    pub const REQUEST_ID: Range<usize> = 36..52;
    /// Timeout in milliseconds, u32 big-endian.
    pub const TIMEOUT_MS: Range<usize> = 52..56;
    /// Sequence number and final bit, u32 big-endian.
    pub const SEQUENCE: Range<usize> = 56..60;
    /// Payload length, u32 big-endian.
    pub const PAYLOAD_LEN: Range<usize> = 60..64;
}

/// A parsed frame header.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Header {
    /// What the frame is.
    pub frame_type: FrameType,
    /// Direction and mode flags.
    pub flags: Flags,
    /// The client the frame is from (client → broker: the sender itself; broker → client: the
    /// peer the frame concerns).
    pub client_id: ClientId,
    /// The channel the frame belongs to.
    pub channel_id: ChannelId,
    /// The request or broadcast stream the frame belongs to (nil for connection-level frames).
    pub request_id: RequestId,
    /// On a request start: how long the broker waits for a receiver and for the full response, in
    /// milliseconds (0 = the broker's default). Zero elsewhere.
    pub timeout_ms: u32,
    /// Position of the frame in its stream (0 for the start), low 31 bits only.
    pub sequence: u32,
    /// True on the last frame of a stream (bit 31 of the sequence field).
    pub is_final: bool,
    /// Number of payload bytes that follow the header.
    pub payload_len: u32,
}

impl Header {
    /// A header of the given type with every other field zero / nil.
    pub const fn new(frame_type: FrameType) -> Header {
        Header {
            frame_type,
            flags: Flags::NONE,
            client_id: ClientId::NIL,
            channel_id: ChannelId::NIL,
            request_id: RequestId::NIL,
            timeout_ms: 0,
            sequence: 0,
            is_final: false,
            payload_len: 0,
        }
    }

    /// Parses a header. Checks, in this order: version, frame type, flags. Does not check the
    /// payload length against a limit (that is the decoder's job).
    ///
    /// # Errors
    /// [`DecodeError::UnsupportedVersion`], [`DecodeError::UnknownFrameType`] or
    /// [`DecodeError::UndefinedFlags`].
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Result<Header, DecodeError> {
        let version = bytes[field::VERSION];
        if version != VERSION {
            return Err(DecodeError::UnsupportedVersion { got: version });
        }
        let frame_type = FrameType::try_from(bytes[field::FRAME_TYPE])
            .map_err(|got| DecodeError::UnknownFrameType { got })?;
        let flag_bits = u16::from_be_bytes(array(bytes, field::FLAGS));
        let flags =
            Flags::from_bits(flag_bits).ok_or(DecodeError::UndefinedFlags { got: flag_bits })?;
        let sequence_field = u32::from_be_bytes(array(bytes, field::SEQUENCE));
        Ok(Header {
            frame_type,
            flags,
            client_id: ClientId::from_bytes(array(bytes, field::CLIENT_ID)),
            channel_id: ChannelId::from_bytes(array(bytes, field::CHANNEL_ID)),
            request_id: RequestId::from_bytes(array(bytes, field::REQUEST_ID)),
            timeout_ms: u32::from_be_bytes(array(bytes, field::TIMEOUT_MS)),
            sequence: sequence_field & !FINAL_BIT,
            is_final: sequence_field & FINAL_BIT != 0,
            payload_len: u32::from_be_bytes(array(bytes, field::PAYLOAD_LEN)),
        })
    }

    /// Encodes the header into its 64 wire bytes. `sequence` is masked to 31 bits.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[field::VERSION] = VERSION;
        out[field::FRAME_TYPE] = self.frame_type as u8;
        out[field::FLAGS].copy_from_slice(&self.flags.bits().to_be_bytes());
        out[field::CLIENT_ID].copy_from_slice(self.client_id.as_bytes());
        out[field::CHANNEL_ID].copy_from_slice(self.channel_id.as_bytes());
        out[field::REQUEST_ID].copy_from_slice(self.request_id.as_bytes());
        out[field::TIMEOUT_MS].copy_from_slice(&self.timeout_ms.to_be_bytes());
        let sequence = (self.sequence & !FINAL_BIT) | if self.is_final { FINAL_BIT } else { 0 };
        out[field::SEQUENCE].copy_from_slice(&sequence.to_be_bytes());
        out[field::PAYLOAD_LEN].copy_from_slice(&self.payload_len.to_be_bytes());
        out
    }
}

/// Copies a fixed range of the header into an array. The ranges are constants inside
/// `HEADER_LEN`, so the conversion cannot fail.
fn array<const N: usize>(bytes: &[u8; HEADER_LEN], range: std::ops::Range<usize>) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[range]);
    out
}
