//! Tests of the wire format: golden bytes, enum roundtrips, the decoder's partial-input and error
//! contract, control payloads, and property tests of streaming decoding. Shared helpers and the
//! header/enum tests are here; the rest is one file per subject.

mod decoder;
mod payloads;
mod properties;

use bytes::{Bytes, BytesMut};

use super::*;
use crate::ids::{ChannelId, ClientId, RequestId};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A small payload limit for tests that want to hit it cheaply.
const SMALL_MAX: u32 = 1024;

fn id_bytes(first: u8) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = first + i as u8;
    }
    out
}

fn sample_header(frame_type: FrameType) -> Header {
    Header {
        frame_type,
        flags: Flags::REQUEST,
        client_id: ClientId::from_bytes([0xAA; 16]),
        channel_id: ChannelId::from_bytes([0x11; 16]),
        request_id: RequestId::from_bytes([0xCC; 16]),
        timeout_ms: 30_000,
        sequence: 0,
        is_final: true,
        payload_len: 0,
    }
}

fn sample_frame(payload: &'static [u8]) -> Frame {
    Frame::new(sample_header(FrameType::Start), Bytes::from_static(payload))
}

fn encode_all(frames: &[Frame]) -> Vec<u8> {
    let mut out = Vec::new();
    for frame in frames {
        encode_frame(frame, &mut out);
    }
    out
}

/// A raw header whose bytes are those of `header`, with `edit` applied afterwards.
fn raw_header(header: &Header, edit: impl FnOnce(&mut [u8; HEADER_LEN])) -> [u8; HEADER_LEN] {
    let mut raw = header.encode();
    edit(&mut raw);
    raw
}

/// Decodes everything `buf` holds: the frames, then `Some(error)` if decoding stopped on one.
fn drain(decoder: &mut Decoder, buf: &mut BytesMut) -> (Vec<Frame>, Option<DecodeError>) {
    let mut frames = Vec::new();
    loop {
        match decoder.decode(buf) {
            Ok(Some(frame)) => frames.push(frame),
            Ok(None) => return (frames, None),
            Err(err) => return (frames, Some(err)),
        }
    }
}

/// What decoding a byte stream produced: the frames, and the error (with the stream offset of
/// the bytes it rejected) if one stopped it.
#[derive(PartialEq, Eq, Debug)]
struct Outcome {
    frames: Vec<Frame>,
    error: Option<(DecodeError, usize)>,
}

fn decode_one_shot(stream: &[u8], max_payload: u32) -> Outcome {
    let mut decoder = Decoder::new(max_payload);
    let mut buf = BytesMut::from(stream);
    let (frames, error) = drain(&mut decoder, &mut buf);
    Outcome {
        frames,
        error: error.map(|err| (err, stream.len() - buf.len())),
    }
}

/// Feeds `stream` into one `BytesMut`, one piece at a time (pieces end at `cuts`, which must be
/// sorted), decoding as far as possible after each piece, as a connection's read loop does.
fn decode_in_pieces(stream: &[u8], cuts: &[usize], max_payload: u32) -> Outcome {
    let mut decoder = Decoder::new(max_payload);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut fed = 0;
    for &end in cuts.iter().chain(std::iter::once(&stream.len())) {
        buf.extend_from_slice(&stream[fed..end]);
        fed = end;
        let (mut more, error) = drain(&mut decoder, &mut buf);
        frames.append(&mut more);
        if let Some(err) = error {
            return Outcome {
                frames,
                error: Some((err, fed - buf.len())),
            };
        }
    }
    Outcome {
        frames,
        error: None,
    }
}

// ---------------------------------------------------------------------------------------------
// Header layout
// ---------------------------------------------------------------------------------------------

#[test]
fn field_ranges_match_the_layout_table() {
    assert_eq!(field::VERSION, 0);
    assert_eq!(field::FRAME_TYPE, 1);
    assert_eq!(field::FLAGS, 2..4);
    assert_eq!(field::CLIENT_ID, 4..20);
    assert_eq!(field::CHANNEL_ID, 20..36);
    assert_eq!(field::REQUEST_ID, 36..52);
    assert_eq!(field::TIMEOUT_MS, 52..56);
    assert_eq!(field::SEQUENCE, 56..60);
    assert_eq!(field::PAYLOAD_LEN, 60..64);
    assert_eq!(HEADER_LEN, 64);
    // The ranges tile the header with no gap and no overlap.
    let ranges = [
        field::VERSION..field::VERSION + 1,
        field::FRAME_TYPE..field::FRAME_TYPE + 1,
        field::FLAGS,
        field::CLIENT_ID,
        field::CHANNEL_ID,
        field::REQUEST_ID,
        field::TIMEOUT_MS,
        field::SEQUENCE,
        field::PAYLOAD_LEN,
    ];
    let mut next = 0;
    for range in ranges {
        assert_eq!(range.start, next);
        next = range.end;
    }
    assert_eq!(next, HEADER_LEN);
}

#[test]
fn header_golden_bytes() {
    let header = Header {
        frame_type: FrameType::Start,
        flags: Flags::REQUEST | Flags::NO_WAIT,
        client_id: ClientId::from_bytes(id_bytes(0x10)),
        channel_id: ChannelId::from_bytes(id_bytes(0x20)),
        request_id: RequestId::from_bytes(id_bytes(0x30)),
        timeout_ms: 0x0A0B_0C0D,
        sequence: 0x1234_5678,
        is_final: true,
        payload_len: 0xDEAD_BEEF,
    };
    #[rustfmt::skip]
    let golden: [u8; HEADER_LEN] = [
        // 0: version
        0x01,
        // 1: frame type (START)
        0x03,
        // 2..4: flags REQUEST|NO_WAIT, big-endian
        0x00, 0x09,
        // 4..20: client id
        0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17,
        0x18, 0x19, 0x1A, 0x1B, 0x1C, 0x1D, 0x1E, 0x1F,
        // 20..36: channel id
        0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27,
        0x28, 0x29, 0x2A, 0x2B, 0x2C, 0x2D, 0x2E, 0x2F,
        // 36..52: request id
        0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37,
        0x38, 0x39, 0x3A, 0x3B, 0x3C, 0x3D, 0x3E, 0x3F,
        // 52..56: timeout_ms
        0x0A, 0x0B, 0x0C, 0x0D,
        // 56..60: sequence 0x12345678 with the FINAL bit (bit 31)
        0x92, 0x34, 0x56, 0x78,
        // 60..64: payload length
        0xDE, 0xAD, 0xBE, 0xEF,
    ];
    let encoded = header.encode();
    for (offset, (got, want)) in encoded.iter().zip(golden.iter()).enumerate() {
        assert_eq!(
            got, want,
            "byte {offset}: got 0x{got:02x}, want 0x{want:02x}"
        );
    }
    assert_eq!(encode_header(&header), golden);
    assert_eq!(Header::parse(&golden), Ok(header));
}

#[test]
fn header_new_is_all_zero_but_version_and_type() {
    let raw = Header::new(FrameType::Ping).encode();
    assert_eq!(raw[0], VERSION);
    assert_eq!(raw[1], 0x0C);
    assert!(raw[2..].iter().all(|&b| b == 0));
}

#[test]
fn encode_masks_sequence_to_31_bits() {
    let mut header = Header::new(FrameType::Chunk);
    header.sequence = u32::MAX;
    header.is_final = false;
    let raw = header.encode();
    assert_eq!(raw[field::SEQUENCE], [0x7F, 0xFF, 0xFF, 0xFF]);
    let parsed = Header::parse(&raw).unwrap();
    assert_eq!(parsed.sequence, MAX_SEQUENCE);
    assert!(!parsed.is_final);

    header.sequence = 0;
    header.is_final = true;
    let raw = header.encode();
    assert_eq!(raw[field::SEQUENCE], [0x80, 0x00, 0x00, 0x00]);
    let parsed = Header::parse(&raw).unwrap();
    assert_eq!((parsed.sequence, parsed.is_final), (0, true));
}

// ---------------------------------------------------------------------------------------------
// Enum roundtrips
// ---------------------------------------------------------------------------------------------

#[test]
fn frame_type_roundtrip() {
    let all = [
        (0x01, FrameType::Hello),
        (0x02, FrameType::Welcome),
        (0x03, FrameType::Start),
        (0x04, FrameType::Chunk),
        (0x05, FrameType::End),
        (0x06, FrameType::Error),
        (0x07, FrameType::Ack),
        (0x08, FrameType::Receive),
        (0x09, FrameType::Cancel),
        (0x0A, FrameType::PeerJoined),
        (0x0B, FrameType::PeerLeft),
        (0x0C, FrameType::Ping),
        (0x0D, FrameType::Pong),
        (0x0E, FrameType::Peers),
    ];
    for (byte, frame_type) in all {
        assert_eq!(frame_type as u8, byte);
        assert_eq!(FrameType::try_from(byte), Ok(frame_type));
        assert_eq!(
            frame_type.is_stream(),
            matches!(
                frame_type,
                FrameType::Start | FrameType::Chunk | FrameType::End
            )
        );
    }
    for byte in 0..=u8::MAX {
        match FrameType::try_from(byte) {
            Ok(frame_type) => {
                assert_eq!(frame_type as u8, byte);
                assert!(all.iter().any(|&(b, _)| b == byte));
            }
            Err(got) => {
                assert_eq!(got, byte);
                assert!(all.iter().all(|&(b, _)| b != byte));
            }
        }
    }
}

#[test]
fn flags_roundtrip() {
    assert_eq!(Flags::REQUEST.bits(), 0x0001);
    assert_eq!(Flags::RESPONSE.bits(), 0x0002);
    assert_eq!(Flags::BROADCAST.bits(), 0x0004);
    assert_eq!(Flags::NO_WAIT.bits(), 0x0008);
    assert_eq!(Flags::NONE.bits(), 0);
    assert_eq!(
        Flags::ALL,
        Flags::REQUEST | Flags::RESPONSE | Flags::BROADCAST | Flags::NO_WAIT
    );
    for bits in 0..=u16::MAX {
        match Flags::from_bits(bits) {
            Some(flags) => {
                assert_eq!(flags.bits(), bits);
                assert!(bits <= 0x000F);
                assert!(Flags::ALL.contains(flags));
            }
            None => assert!(bits > 0x000F),
        }
    }
    assert!((Flags::REQUEST | Flags::BROADCAST).contains(Flags::BROADCAST));
    assert!(!Flags::REQUEST.contains(Flags::RESPONSE));
    assert_eq!(
        format!("{:?}", Flags::REQUEST | Flags::BROADCAST),
        "Flags(REQUEST|BROADCAST)"
    );
    assert_eq!(format!("{:?}", Flags::NONE), "Flags()");
}

#[test]
fn error_code_roundtrip() {
    let all = [
        (0x0001, ErrorCode::UnsupportedVersion),
        (0x0002, ErrorCode::MalformedFrame),
        (0x0003, ErrorCode::UnknownFrameType),
        (0x0004, ErrorCode::PayloadTooLarge),
        (0x0005, ErrorCode::HandshakeRequired),
        (0x0006, ErrorCode::DuplicateHello),
        (0x0007, ErrorCode::ChannelMismatch),
        (0x0008, ErrorCode::UnexpectedFrame),
        (0x0009, ErrorCode::ClientIdInUse),
        (0x000A, ErrorCode::GoingAway),
        (0x000B, ErrorCode::HeartbeatTimeout),
        (0x000C, ErrorCode::Replaced),
        (0x000D, ErrorCode::Unauthorized),
        (0x0100, ErrorCode::NoReceiver),
        (0x0101, ErrorCode::Timeout),
        (0x0102, ErrorCode::PeerGone),
        (0x0103, ErrorCode::Cancelled),
        (0x0104, ErrorCode::NoPeers),
        (0x0105, ErrorCode::BroadcastIncomplete),
        (0x0106, ErrorCode::UnknownRequest),
        (0x0107, ErrorCode::DuplicateRequest),
        (0x0108, ErrorCode::StreamOrder),
        (0x0109, ErrorCode::LimitExceeded),
        (0x010A, ErrorCode::ShuttingDown),
        (0x0200, ErrorCode::PresenceOverflow),
    ];
    for (value, code) in all {
        assert_eq!(code as u16, value);
        assert_eq!(ErrorCode::try_from(value), Ok(code));
        assert_eq!(code.is_connection_fatal(), value < 0x0100);
    }
    for value in 0..=u16::MAX {
        match ErrorCode::try_from(value) {
            Ok(code) => {
                assert_eq!(code as u16, value);
                assert!(all.iter().any(|&(v, _)| v == value));
            }
            Err(got) => {
                assert_eq!(got, value);
                assert!(all.iter().all(|&(v, _)| v != value));
            }
        }
    }
}
