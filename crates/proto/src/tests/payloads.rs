//! Control payloads: WELCOME, ERROR, u32 bodies.

use super::*;

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
