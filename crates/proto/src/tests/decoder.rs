//! The decoder: partial input, errors, payloads.

use bytes::{BufMut, Bytes, BytesMut};

use super::*;

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
