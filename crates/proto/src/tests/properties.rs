//! Property tests: any stream, split anywhere, decodes as in one shot.

use proptest::prelude::*;

use super::*;

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
