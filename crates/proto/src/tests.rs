//! Tests of the wire format: golden bytes, enum roundtrips, the decoder's partial-input and error
//! contract, control payloads, and property tests of streaming decoding.

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;

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

// ---------------------------------------------------------------------------------------------
// Decoder: partial input
// ---------------------------------------------------------------------------------------------

#[test]
fn every_strict_prefix_of_a_frame_needs_more() {
    for payload in [&b""[..], b"x", b"ping", &[0xAB; 100]] {
        let frame = Frame::new(
            sample_header(FrameType::Start),
            Bytes::copy_from_slice(payload),
        );
        let wire = encode_all(std::slice::from_ref(&frame));
        for cut in 0..wire.len() {
            let mut decoder = Decoder::new(SMALL_MAX);
            let mut buf = BytesMut::from(&wire[..cut]);
            assert_eq!(decoder.decode(&mut buf), Ok(None), "prefix of {cut} bytes");
            // Asking again without new bytes changes nothing.
            assert_eq!(
                decoder.decode(&mut buf),
                Ok(None),
                "prefix of {cut} bytes, twice"
            );
            // Completing the prefix yields the frame.
            buf.extend_from_slice(&wire[cut..]);
            assert_eq!(
                decoder.decode(&mut buf),
                Ok(Some(frame.clone())),
                "prefix of {cut}"
            );
            assert!(buf.is_empty());
            assert!(decoder.is_between_frames());
        }
    }
}

#[test]
fn every_strict_prefix_of_two_frames_gives_the_complete_ones_then_needs_more() {
    let first = sample_frame(b"first payload");
    let mut second_header = sample_header(FrameType::End);
    second_header.flags = Flags::RESPONSE;
    second_header.sequence = 7;
    let second = Frame::new(second_header, Bytes::from_static(b"2nd"));
    let wire = encode_all(&[first.clone(), second.clone()]);
    for cut in 0..wire.len() {
        let mut decoder = Decoder::new(SMALL_MAX);
        let mut buf = BytesMut::from(&wire[..cut]);
        let (frames, error) = drain(&mut decoder, &mut buf);
        assert_eq!(error, None, "prefix of {cut} bytes");
        if cut < first.wire_len() {
            assert!(frames.is_empty(), "prefix of {cut} bytes");
        } else {
            assert_eq!(frames, vec![first.clone()], "prefix of {cut} bytes");
        }
        buf.extend_from_slice(&wire[cut..]);
        let (rest, error) = drain(&mut decoder, &mut buf);
        assert_eq!(error, None);
        let all: Vec<Frame> = frames.into_iter().chain(rest).collect();
        assert_eq!(
            all,
            vec![first.clone(), second.clone()],
            "prefix of {cut} bytes"
        );
    }
}

#[test]
fn decoder_state_between_and_inside_frames() {
    let frame = sample_frame(b"abcd");
    let wire = encode_all(std::slice::from_ref(&frame));
    let mut decoder = Decoder::new(SMALL_MAX);
    assert_eq!(decoder.max_payload(), SMALL_MAX);
    assert!(decoder.is_between_frames());
    let mut buf = BytesMut::from(&wire[..HEADER_LEN + 1]);
    assert_eq!(decoder.decode(&mut buf), Ok(None));
    assert!(!decoder.is_between_frames());
    buf.extend_from_slice(&wire[HEADER_LEN + 1..]);
    assert_eq!(decoder.decode(&mut buf), Ok(Some(frame)));
    assert!(decoder.is_between_frames());
}

// ---------------------------------------------------------------------------------------------
// Decoder: errors
// ---------------------------------------------------------------------------------------------

fn decode_raw(raw: &[u8], max_payload: u32) -> Result<Option<Frame>, DecodeError> {
    Decoder::new(max_payload).decode(&mut BytesMut::from(raw))
}

#[test]
fn wrong_version_is_rejected() {
    let header = sample_header(FrameType::Start);
    for version in [0u8, 2, 0x7F, 0xFF] {
        let raw = raw_header(&header, |raw| raw[field::VERSION] = version);
        let err = decode_raw(&raw, SMALL_MAX).unwrap_err();
        assert_eq!(err, DecodeError::UnsupportedVersion { got: version });
        assert_eq!(err.code(), ErrorCode::UnsupportedVersion);
        assert!(err.code().is_connection_fatal());
        assert!(
            err.to_string().contains(&format!("version {VERSION}")),
            "{err}"
        );
    }
}

#[test]
fn unknown_frame_type_is_rejected() {
    let header = sample_header(FrameType::Start);
    for byte in [0x00u8, 0x0F, 0x10, 0x80, 0xFF] {
        let raw = raw_header(&header, |raw| raw[field::FRAME_TYPE] = byte);
        let err = decode_raw(&raw, SMALL_MAX).unwrap_err();
        assert_eq!(err, DecodeError::UnknownFrameType { got: byte });
        assert_eq!(err.code(), ErrorCode::UnknownFrameType);
        assert!(err.to_string().contains(&format!("0x{byte:02x}")), "{err}");
    }
}

#[test]
fn undefined_flags_are_rejected() {
    let header = sample_header(FrameType::Start);
    for bits in [0x0010u16, 0x0011, 0x0100, 0x8000, 0xFFFF] {
        let raw = raw_header(&header, |raw| {
            raw[field::FLAGS].copy_from_slice(&bits.to_be_bytes())
        });
        let err = decode_raw(&raw, SMALL_MAX).unwrap_err();
        assert_eq!(err, DecodeError::UndefinedFlags { got: bits });
        assert_eq!(err.code(), ErrorCode::MalformedFrame);
        assert!(err.to_string().contains(&format!("0x{bits:04x}")), "{err}");
    }
}

#[test]
fn header_checks_run_in_documented_order() {
    let header = sample_header(FrameType::Start);
    let all_bad = raw_header(&header, |raw| {
        raw[field::VERSION] = 9;
        raw[field::FRAME_TYPE] = 0xEE;
        raw[field::FLAGS].copy_from_slice(&[0xFF, 0xFF]);
        raw[field::PAYLOAD_LEN].copy_from_slice(&[0xFF; 4]);
    });
    assert_eq!(
        decode_raw(&all_bad, 0),
        Err(DecodeError::UnsupportedVersion { got: 9 })
    );
    let mut raw = all_bad;
    raw[field::VERSION] = VERSION;
    assert_eq!(
        decode_raw(&raw, 0),
        Err(DecodeError::UnknownFrameType { got: 0xEE })
    );
    raw[field::FRAME_TYPE] = FrameType::Start as u8;
    assert_eq!(
        decode_raw(&raw, 0),
        Err(DecodeError::UndefinedFlags { got: 0xFFFF })
    );
    raw[field::FLAGS].copy_from_slice(&[0, 1]);
    assert_eq!(
        decode_raw(&raw, 0),
        Err(DecodeError::PayloadTooLarge {
            len: u32::MAX,
            max: 0
        })
    );
}

#[test]
fn payload_over_the_limit_is_rejected() {
    let mut header = sample_header(FrameType::Start);
    header.payload_len = SMALL_MAX + 1;
    let err = decode_raw(&header.encode(), SMALL_MAX).unwrap_err();
    assert_eq!(
        err,
        DecodeError::PayloadTooLarge {
            len: SMALL_MAX + 1,
            max: SMALL_MAX
        }
    );
    assert_eq!(err.code(), ErrorCode::PayloadTooLarge);
    assert!(
        err.to_string().contains("1025") && err.to_string().contains("1024"),
        "{err}"
    );
}

#[test]
fn payload_over_the_limit_is_rejected_before_any_reservation() {
    for max in [0, SMALL_MAX, DEFAULT_MAX_PAYLOAD, MAX_PAYLOAD_CEILING] {
        let mut header = sample_header(FrameType::Start);
        header.payload_len = u32::MAX; // 4 GiB - 1
        let mut buf = BytesMut::with_capacity(HEADER_LEN);
        buf.put_slice(&header.encode());
        let before = buf.capacity();
        let mut decoder = Decoder::new(max);
        assert_eq!(
            decoder.decode(&mut buf),
            Err(DecodeError::PayloadTooLarge { len: u32::MAX, max })
        );
        assert_eq!(buf.capacity(), before, "max {max}");
        assert!(
            buf.capacity() < 4096,
            "max {max}: capacity {}",
            buf.capacity()
        );
    }
}

#[test]
fn reservation_for_a_pending_payload_is_bounded_by_the_limit() {
    let mut header = sample_header(FrameType::Start);
    header.payload_len = SMALL_MAX;
    let mut buf = BytesMut::with_capacity(HEADER_LEN);
    buf.put_slice(&header.encode());
    let mut decoder = Decoder::new(SMALL_MAX);
    assert_eq!(decoder.decode(&mut buf), Ok(None));
    // Room for the whole payload and the next header, and not wildly more.
    let wanted = SMALL_MAX as usize + HEADER_LEN;
    assert!(buf.capacity() >= wanted, "capacity {}", buf.capacity());
    assert!(buf.capacity() <= 2 * wanted, "capacity {}", buf.capacity());
}

// ---------------------------------------------------------------------------------------------
// Decoder: payloads
// ---------------------------------------------------------------------------------------------

#[test]
fn zero_length_payload() {
    let mut header = sample_header(FrameType::Ping);
    header.flags = Flags::NONE;
    header.sequence = 42;
    let frame = Frame::new(header, Bytes::new());
    assert_eq!(frame.header.payload_len, 0);
    assert_eq!(frame.wire_len(), HEADER_LEN);
    let mut buf = BytesMut::from(&encode_all(std::slice::from_ref(&frame))[..]);
    let mut decoder = Decoder::new(0);
    let got = decoder.decode(&mut buf).unwrap().unwrap();
    assert_eq!(got, frame);
    assert!(got.payload.is_empty());
    assert!(buf.is_empty());
    assert!(decoder.is_between_frames());
    assert_eq!(decoder.decode(&mut buf), Ok(None));
}

#[test]
fn payload_exactly_max() {
    for max in [SMALL_MAX, DEFAULT_MAX_PAYLOAD] {
        let payload: Bytes = (0..max).map(|i| i as u8).collect::<Vec<u8>>().into();
        let frame = Frame::new(sample_header(FrameType::Chunk), payload);
        let mut buf = BytesMut::from(&encode_all(std::slice::from_ref(&frame))[..]);
        let mut decoder = Decoder::new(max);
        assert_eq!(decoder.decode(&mut buf), Ok(Some(frame)));
        assert!(buf.is_empty());
    }
}

#[test]
fn payload_is_decoded_zero_copy() {
    let first = sample_frame(b"first payload, zero-copy");
    let second = sample_frame(b"second");
    let mut buf = BytesMut::from(&encode_all(&[first.clone(), second.clone()])[..]);
    let base = buf.as_ptr() as usize;
    let memory = base..base + buf.len();
    let mut decoder = Decoder::new(SMALL_MAX);

    let got_first = decoder.decode(&mut buf).unwrap().unwrap();
    let got_second = decoder.decode(&mut buf).unwrap().unwrap();
    assert_eq!((&got_first, &got_second), (&first, &second));
    for (got, offset) in [
        (&got_first, HEADER_LEN),
        (&got_second, first.wire_len() + HEADER_LEN),
    ] {
        let start = got.payload.as_ptr() as usize;
        let end = start + got.payload.len();
        assert!(
            memory.contains(&start) && end <= memory.end,
            "payload copied out of the buffer"
        );
        assert_eq!(start, base + offset);
    }
}

// ---------------------------------------------------------------------------------------------
// Control payloads
// ---------------------------------------------------------------------------------------------

fn sample_welcome(peer_count: u8) -> WelcomeBody {
    WelcomeBody {
        max_payload: DEFAULT_MAX_PAYLOAD,
        default_timeout_ms: 30_000,
        max_timeout_ms: 3_600_000,
        heartbeat_ms: 0x0102_0304,
        peers: (0..peer_count)
            .map(|i| ClientId::from_bytes([0xB0u8.wrapping_add(i); 16]))
            .collect(),
    }
}

#[test]
fn welcome_golden_layout() {
    let body = sample_welcome(1);
    let mut want = Vec::new();
    want.extend_from_slice(&[0x00, 0x10, 0x00, 0x00]); // max_payload 1 MiB
    want.extend_from_slice(&[0x00, 0x00, 0x75, 0x30]); // default timeout 30 000 ms
    want.extend_from_slice(&[0x00, 0x36, 0xEE, 0x80]); // max timeout 3 600 000 ms
    want.extend_from_slice(&[0x01, 0x02, 0x03, 0x04]); // heartbeat
    want.extend_from_slice(&[0x00, 0x00, 0x00, 0x01]); // peer count
    want.extend_from_slice(&[0xB0; 16]);
    assert_eq!(&body.encode()[..], &want[..]);
}

#[test]
fn welcome_roundtrip() {
    for peer_count in [0, 1, 3, 200] {
        let body = sample_welcome(peer_count);
        let encoded = body.encode();
        assert_eq!(encoded.len(), 20 + 16 * usize::from(peer_count));
        assert_eq!(WelcomeBody::decode(&encoded), Ok(body));
    }
}

#[test]
fn welcome_truncated_and_trailing() {
    let encoded = sample_welcome(3).encode();
    for cut in 0..encoded.len() {
        assert_eq!(
            WelcomeBody::decode(&encoded[..cut]),
            Err(PayloadError::Truncated),
            "prefix of {cut} bytes"
        );
    }
    for extra in [1usize, 15, 16, 17, 32] {
        let mut long = encoded.to_vec();
        long.extend(std::iter::repeat_n(0xEE, extra));
        assert_eq!(
            WelcomeBody::decode(&long),
            Err(PayloadError::TrailingBytes),
            "{extra} extra bytes"
        );
    }
    // A count the payload cannot hold is truncation, and allocates nothing huge.
    let mut lying = sample_welcome(0).encode().to_vec();
    lying[16..20].copy_from_slice(&u32::MAX.to_be_bytes());
    assert_eq!(WelcomeBody::decode(&lying), Err(PayloadError::Truncated));
    lying.extend_from_slice(&[0xB0; 16]);
    assert_eq!(WelcomeBody::decode(&lying), Err(PayloadError::Truncated));
}

#[test]
fn error_body_golden_layout() {
    let body = ErrorBody {
        code: ErrorCode::BroadcastIncomplete as u16,
        message: "no ack".to_owned(),
        peers: vec![ClientId::from_bytes([0xBB; 16])],
    };
    let mut want = vec![0x01, 0x05, 0x00, 0x06];
    want.extend_from_slice(b"no ack");
    want.extend_from_slice(&[0xBB; 16]);
    assert_eq!(&body.encode()[..], &want[..]);
    assert_eq!(
        &encode_error(body.code, &body.message, &body.peers)[..],
        &want[..]
    );
}

#[test]
fn error_body_roundtrip() {
    let bodies = [
        ErrorBody::new(ErrorCode::Timeout, ""),
        ErrorBody::new(
            ErrorCode::UnsupportedVersion,
            "this broker speaks version 1",
        ),
        ErrorBody {
            code: ErrorCode::BroadcastIncomplete as u16,
            message: "pas d'accusé — 未確認".to_owned(),
            peers: vec![
                ClientId::from_bytes([0xBB; 16]),
                ClientId::from_bytes([0xDD; 16]),
            ],
        },
        // A code newer than this version survives the roundtrip.
        ErrorBody {
            code: 0xBEEF,
            message: "future".to_owned(),
            peers: vec![],
        },
    ];
    for body in bodies {
        assert_eq!(ErrorBody::decode(&body.encode()), Ok(body.clone()));
    }
    assert_eq!(
        ErrorBody::new(ErrorCode::Timeout, "").known_code(),
        Some(ErrorCode::Timeout)
    );
    let future = ErrorBody {
        code: 0xBEEF,
        message: String::new(),
        peers: vec![],
    };
    assert_eq!(future.known_code(), None);
}

#[test]
fn error_body_truncated_trailing_and_invalid_utf8() {
    let body = ErrorBody {
        code: 0x0105,
        message: "text".to_owned(),
        peers: vec![
            ClientId::from_bytes([0xBB; 16]),
            ClientId::from_bytes([0xDD; 16]),
        ],
    };
    let encoded = body.encode();
    // Cut inside the code, the length or the text: truncated.
    for cut in 0..4 + body.message.len() {
        assert_eq!(
            ErrorBody::decode(&encoded[..cut]),
            Err(PayloadError::Truncated),
            "prefix of {cut} bytes"
        );
    }
    // The peer list has no count: a cut inside an id leaves a partial id (trailing bytes); a cut
    // on an id boundary is a valid, shorter list.
    let peers_at = 4 + body.message.len();
    for cut in peers_at..encoded.len() {
        let got = ErrorBody::decode(&encoded[..cut]);
        if (cut - peers_at).is_multiple_of(16) {
            let peers = body.peers[..(cut - peers_at) / 16].to_vec();
            assert_eq!(
                got,
                Ok(ErrorBody {
                    peers,
                    ..body.clone()
                }),
                "prefix of {cut} bytes"
            );
        } else {
            assert_eq!(
                got,
                Err(PayloadError::TrailingBytes),
                "prefix of {cut} bytes"
            );
        }
    }
    let mut long = encoded.to_vec();
    long.push(0);
    assert_eq!(ErrorBody::decode(&long), Err(PayloadError::TrailingBytes));

    // Invalid UTF-8: a stray byte, a surrogate, and a multi-byte character cut by text_len.
    let invalid: [&[u8]; 3] = [&[0xFF], &[0xED, 0xA0, 0x80], "é".as_bytes().split_at(1).0];
    for text in invalid {
        let mut raw = vec![0x01, 0x01];
        raw.extend_from_slice(&(text.len() as u16).to_be_bytes());
        raw.extend_from_slice(text);
        assert_eq!(
            ErrorBody::decode(&raw),
            Err(PayloadError::InvalidUtf8),
            "{text:x?}"
        );
    }
    // A text_len beyond the payload is truncation, whatever the bytes.
    assert_eq!(
        ErrorBody::decode(&[0x01, 0x01, 0x00, 0x02, 0xFF]),
        Err(PayloadError::Truncated)
    );
}

#[test]
fn error_text_is_cut_on_a_char_boundary() {
    let max = usize::from(u16::MAX);
    let cases = [
        ("a".repeat(max), max),
        ("a".repeat(max + 1), max),
        ("é".repeat(40_000), max - 1),  // 2-byte chars: 65 535 is odd
        ("€".repeat(30_000), max),      // 3-byte chars: 65 535 = 3 × 21 845
        ("😀".repeat(20_000), max - 3), // 4-byte chars: 65 532 = 4 × 16 383
        (format!("{}é", "a".repeat(max - 1)), max - 1), // the char straddling the limit goes
    ];
    let peer = ClientId::from_bytes([0xBB; 16]);
    for (message, kept) in cases {
        let body = ErrorBody {
            code: 0x0101,
            message: message.clone(),
            peers: vec![peer],
        };
        let encoded = body.encode();
        assert_eq!(u16::from_be_bytes([encoded[2], encoded[3]]) as usize, kept);
        assert_eq!(encoded.len(), 4 + kept + 16);
        let decoded = ErrorBody::decode(&encoded).unwrap();
        assert_eq!(decoded.message, message[..kept]);
        assert_eq!(decoded.peers, vec![peer]);
        assert_eq!(decoded.code, 0x0101);
    }
}

#[test]
fn decode_u32_lengths() {
    let bytes = [0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08];
    for len in 0..=8 {
        let want = match len {
            0..=3 => Err(PayloadError::Truncated),
            4 => Ok(0x0102_0304),
            _ => Err(PayloadError::TrailingBytes),
        };
        assert_eq!(decode_u32(&bytes[..len]), want, "{len} bytes");
    }
    for value in [0, 1, 0x0102_0304, u32::MAX] {
        assert_eq!(decode_u32(&encode_u32(value)), Ok(value));
    }
    assert_eq!(&encode_u32(1)[..], &[0, 0, 0, 1]);
}

#[test]
fn payload_error_messages() {
    for err in [
        PayloadError::Truncated,
        PayloadError::TrailingBytes,
        PayloadError::InvalidUtf8,
    ] {
        assert!(!err.to_string().is_empty());
    }
}

// ---------------------------------------------------------------------------------------------
// Property tests
// ---------------------------------------------------------------------------------------------

/// The payload limit of the property tests: small, so generated headers often exceed it.
const PROP_MAX: u32 = 64;

const FRAME_TYPES: [FrameType; 13] = [
    FrameType::Hello,
    FrameType::Welcome,
    FrameType::Start,
    FrameType::Chunk,
    FrameType::End,
    FrameType::Error,
    FrameType::Ack,
    FrameType::Receive,
    FrameType::Cancel,
    FrameType::PeerJoined,
    FrameType::PeerLeft,
    FrameType::Ping,
    FrameType::Pong,
];

fn arb_header() -> impl Strategy<Value = Header> {
    (
        prop::sample::select(&FRAME_TYPES[..]),
        0..=Flags::ALL.bits(),
        any::<[u8; 16]>(),
        any::<[u8; 16]>(),
        any::<[u8; 16]>(),
        any::<u32>(),
        0..=MAX_SEQUENCE,
        any::<bool>(),
        any::<u32>(),
    )
        .prop_map(
            |(frame_type, flags, client, channel, request, timeout_ms, sequence, is_final, len)| {
                Header {
                    frame_type,
                    flags: Flags::from_bits(flags).unwrap(),
                    client_id: ClientId::from_bytes(client),
                    channel_id: ChannelId::from_bytes(channel),
                    request_id: RequestId::from_bytes(request),
                    timeout_ms,
                    sequence,
                    is_final,
                    payload_len: len,
                }
            },
        )
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    (
        arb_header(),
        prop::collection::vec(any::<u8>(), 0..=PROP_MAX as usize),
    )
        .prop_map(|(header, payload)| Frame::new(header, payload.into()))
}

/// Sorted cut positions inside a stream of `len` bytes.
fn cuts(len: usize, picks: &[prop::sample::Index]) -> Vec<usize> {
    let mut cuts: Vec<usize> = picks.iter().map(|pick| pick.index(len + 1)).collect();
    cuts.sort_unstable();
    cuts
}

/// One piece of a test stream: valid frames, damaged frames and junk.
#[derive(Clone, Debug)]
enum Segment {
    Frame(Frame),
    /// A frame with the byte at `at` (modulo its length) replaced by `value`.
    Damaged(Frame, prop::sample::Index, u8),
    Junk(Vec<u8>),
}

fn arb_segment() -> impl Strategy<Value = Segment> {
    prop_oneof![
        6 => arb_frame().prop_map(Segment::Frame),
        3 => (arb_frame(), any::<prop::sample::Index>(), any::<u8>())
            .prop_map(|(frame, at, value)| Segment::Damaged(frame, at, value)),
        1 => prop::collection::vec(any::<u8>(), 0..80).prop_map(Segment::Junk),
    ]
}

fn segment_bytes(segment: &Segment) -> Vec<u8> {
    match segment {
        Segment::Frame(frame) => encode_all(std::slice::from_ref(frame)),
        Segment::Damaged(frame, at, value) => {
            let mut bytes = encode_all(std::slice::from_ref(frame));
            // Damage the header most of the time: that is where the decoder looks.
            let index = at.index(bytes.len().min(2 * HEADER_LEN));
            bytes[index] = *value;
            bytes
        }
        Segment::Junk(bytes) => bytes.clone(),
    }
}

proptest! {
    #[test]
    fn valid_frames_split_anywhere_decode_as_in_one_shot(
        frames in prop::collection::vec(arb_frame(), 0..8),
        picks in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let stream = encode_all(&frames);
        let cuts = cuts(stream.len(), &picks);
        let one_shot = decode_one_shot(&stream, PROP_MAX);
        prop_assert_eq!(&one_shot, &Outcome { frames: frames.clone(), error: None });
        prop_assert_eq!(decode_in_pieces(&stream, &cuts, PROP_MAX), one_shot);
    }

    #[test]
    fn any_stream_split_anywhere_decodes_as_in_one_shot(
        segments in prop::collection::vec(arb_segment(), 0..6),
        picks in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let stream: Vec<u8> = segments.iter().flat_map(segment_bytes).collect();
        let cuts = cuts(stream.len(), &picks);
        let one_shot = decode_one_shot(&stream, PROP_MAX);
        let pieces = decode_in_pieces(&stream, &cuts, PROP_MAX);
        prop_assert_eq!(&pieces, &one_shot);
        // Every decoded frame re-encodes to exactly the bytes it was decoded from.
        let consumed = encode_all(&one_shot.frames);
        prop_assert_eq!(&consumed[..], &stream[..consumed.len()]);
        if let Some((_, offset)) = one_shot.error {
            prop_assert_eq!(offset, consumed.len());
        }
    }

    #[test]
    fn header_encode_parse_roundtrip(header in arb_header()) {
        let raw = header.encode();
        prop_assert_eq!(Header::parse(&raw), Ok(header));
    }

    #[test]
    fn header_parse_of_any_bytes_never_panics_and_reencodes_exactly(
        bytes in prop::collection::vec(any::<u8>(), HEADER_LEN),
    ) {
        let mut raw = [0u8; HEADER_LEN];
        raw.copy_from_slice(&bytes);
        if let Ok(header) = Header::parse(&raw) {
            prop_assert_eq!(header.encode(), raw);
        }
    }

    #[test]
    fn control_payload_decoders_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..100)) {
        if let Ok(body) = WelcomeBody::decode(&bytes) {
            prop_assert_eq!(&body.encode()[..], &bytes[..]);
        }
        if let Ok(body) = ErrorBody::decode(&bytes) {
            prop_assert_eq!(&body.encode()[..], &bytes[..]);
        }
        let _ = decode_u32(&bytes);
    }
}
