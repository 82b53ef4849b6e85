//! PROTOCOL.md §10 over real sockets, input that does not decode: random bytes, a truncated
//! header, a wrong version byte, an unknown frame type, a payload over the limit, undefined flag
//! bits. Each gets the error frame the protocol prescribes (by the decoding order of §1), and the
//! connection is closed exactly when it must be.
//!
//! Each case (`switchyard_testkit::bystanders::case`) connects a bystander pair (a sender and a
//! receiver on one channel) before the bad client; they still complete a request/reply round trip
//! afterwards with nothing unexpected in their inboxes, and after everyone has gone every count of
//! the broker is back to zero. Bad clients that complete a handshake do so on the bystanders'
//! channel where that is possible, so the bystanders' presence frames (PEER_JOINED then
//! PEER_LEFT, even when the broker closes the connection itself) are checked as well.

use bytes::BytesMut;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use switchyard::ids::{ChannelId, ClientId, RequestId};
use switchyard::protocol::{
    field, Decoder, ErrorCode, Flags, FrameType, Header, DEFAULT_MAX_PAYLOAD, HEADER_LEN,
};
use switchyard_testkit::{
    broker,
    bystanders::{came_and_went, case, joined},
    raw::RawPeer,
};

/// The wire bytes of `header` with no payload, `payload_len` as given.
fn raw_header(header: Header, payload_len: u32) -> [u8; HEADER_LEN] {
    let mut wire = Header {
        payload_len,
        ..header
    }
    .encode();
    wire[field::PAYLOAD_LEN].copy_from_slice(&payload_len.to_be_bytes());
    wire
}

/// What the broker must answer to `bytes` as the start of a connection's input, by the decoding
/// order of PROTOCOL.md §1 (version, type, flags, payload length), using the crate's own decoder
/// as the model. `None` when the bytes start with a valid header.
fn decode_verdict(bytes: &[u8], max_payload: u32) -> Option<ErrorCode> {
    let mut buf = BytesMut::from(bytes);
    Decoder::new(max_payload)
        .decode(&mut buf)
        .err()
        .map(|err| err.code())
}

#[test]
fn random_bytes_get_a_fatal_error_and_close() {
    case(None, |handle, by| {
        let mut presence = Vec::new();
        let mut verdicts = Vec::new();
        for seed in 1..=12u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut bytes = vec![0u8; rng.gen_range(HEADER_LEN..4096)];
            rng.fill_bytes(&mut bytes);
            // Pure noise almost always fails the version check; from seed 5 on, the version is
            // right, and from seed 9 on the frame type too, so the later checks see noise as well.
            if seed >= 5 {
                bytes[field::VERSION] = 1;
            }
            if seed >= 9 {
                bytes[field::FRAME_TYPE] = rng.gen_range(1..=0x0D);
            }
            let expected = decode_verdict(&bytes, DEFAULT_MAX_PAYLOAD)
                .unwrap_or_else(|| panic!("seed {seed} starts with a valid header: pick another"));
            // Half the seeds before the handshake, half after one on the bystanders' channel.
            let mut bad = if seed % 2 == 0 {
                let bad = joined(handle, by, &format!("random-{seed}"));
                presence.extend(came_and_went(bad.client));
                bad
            } else {
                RawPeer::named(handle.local_addr(), &format!("random-{seed}"))
            };
            bad.send_bytes(&bytes);
            let body = bad.expect_fatal(expected);
            if expected == ErrorCode::UnsupportedVersion {
                assert!(body.message.contains("version 1"), "{:?}", body.message);
            }
            verdicts.push(expected);
        }
        // The seeds reach all three header checks.
        for code in [
            ErrorCode::UnsupportedVersion,
            ErrorCode::UnknownFrameType,
            ErrorCode::MalformedFrame,
        ] {
            assert!(
                verdicts.contains(&code),
                "no seed gives {code:?}: {verdicts:?}"
            );
        }
        presence
    });
}

#[test]
fn truncated_header_then_eof_is_closed_without_an_answer() {
    case(None, |handle, by| {
        // Before the handshake: part of a HELLO header, then EOF.
        let mut bad = RawPeer::named(handle.local_addr(), "truncated-before-hello");
        let hello = Header {
            channel_id: by.channel,
            client_id: ClientId::random(),
            ..Header::new(FrameType::Hello)
        }
        .encode();
        bad.send_bytes(&hello[..30]);
        bad.shutdown_write();
        bad.expect_closed();

        // After it: 63 of the 64 header bytes of a PING, then EOF.
        let mut bad = joined(handle, by, "truncated-after-hello");
        let ping = bad.header(FrameType::Ping).encode();
        bad.send_bytes(&ping[..HEADER_LEN - 1]);
        bad.shutdown_write();
        bad.expect_closed();

        // And a complete header whose payload never comes.
        let mut cut = joined(handle, by, "truncated-payload");
        let start = Header {
            flags: Flags::REQUEST,
            request_id: RequestId::random(),
            ..cut.header(FrameType::Start)
        };
        cut.send_bytes(&raw_header(start, 100));
        cut.send_bytes(&[7; 40]);
        cut.shutdown_write();
        cut.expect_closed();

        let mut presence = came_and_went(bad.client);
        presence.extend(came_and_went(cut.client));
        presence
    });
}

#[test]
fn wrong_version_byte_is_unsupported_version_naming_version_1() {
    case(None, |handle, by| {
        let mut presence = Vec::new();
        for (i, version) in [0u8, 2, 0xFF].into_iter().enumerate() {
            let after_hello = i % 2 == 1;
            let mut bad = if after_hello {
                let bad = joined(handle, by, "bad-version");
                presence.extend(came_and_went(bad.client));
                bad
            } else {
                RawPeer::named(handle.local_addr(), "bad-version")
            };
            let mut wire = bad.header(FrameType::Ping).encode();
            wire[field::VERSION] = version;
            bad.send_bytes(&wire);
            let body = bad.expect_fatal(ErrorCode::UnsupportedVersion);
            assert!(
                body.message.contains("version 1"),
                "the text must name the supported version: {:?}",
                body.message
            );
        }
        presence
    });
}

#[test]
fn unknown_frame_type_is_fatal() {
    case(None, |handle, by| {
        let mut presence = Vec::new();
        for (i, kind) in [0x00u8, 0x0F, 0x7F, 0xFF].into_iter().enumerate() {
            let mut bad = if i % 2 == 1 {
                let bad = joined(handle, by, "bad-type");
                presence.extend(came_and_went(bad.client));
                bad
            } else {
                RawPeer::named(handle.local_addr(), "bad-type")
            };
            let mut wire = bad.header(FrameType::Ping).encode();
            wire[field::FRAME_TYPE] = kind;
            bad.send_bytes(&wire);
            bad.expect_fatal(ErrorCode::UnknownFrameType);
        }
        presence
    });
}

#[test]
fn payload_over_the_limit_is_refused_before_the_payload_is_sent() {
    const MAX: u32 = 1024;
    let mut config = broker::config();
    config.router.max_payload = MAX;
    case(Some(config), |handle, by| {
        // The limit is announced, and a payload of exactly the limit is fine.
        let mut probe = RawPeer::named(handle.local_addr(), "probe");
        assert_eq!(
            probe.hello(ChannelId::random(), ClientId::NIL).max_payload,
            MAX
        );
        drop(probe);
        by.round_trip(&[0x5A; MAX as usize]);

        let mut presence = Vec::new();
        for (i, len) in [MAX + 1, 16 << 20, u32::MAX].into_iter().enumerate() {
            let mut bad = if i % 2 == 0 {
                let bad = joined(handle, by, "too-large");
                presence.extend(came_and_went(bad.client));
                bad
            } else {
                RawPeer::named(handle.local_addr(), "too-large")
            };
            let start = Header {
                flags: Flags::REQUEST,
                request_id: RequestId::random(),
                is_final: true,
                ..bad.header(FrameType::Start)
            };
            // Only the header: the broker must answer without waiting for the payload.
            bad.send_bytes(&raw_header(start, len));
            let body = bad.expect_fatal(ErrorCode::PayloadTooLarge);
            assert!(
                body.message.contains(&MAX.to_string()),
                "{:?}",
                body.message
            );
        }
        presence
    });
}

#[test]
fn undefined_flag_bits_are_malformed() {
    case(None, |handle, by| {
        let mut presence = Vec::new();
        let cases: [(FrameType, u16); 4] = [
            (FrameType::Ping, 0x0010),
            (FrameType::Start, 0x8001),
            (FrameType::Hello, 0x0100),
            (FrameType::Receive, 0xFFFF),
        ];
        for (i, (kind, bits)) in cases.into_iter().enumerate() {
            let mut bad = if i % 2 == 0 {
                let bad = joined(handle, by, "bad-flags");
                presence.extend(came_and_went(bad.client));
                bad
            } else {
                RawPeer::named(handle.local_addr(), "bad-flags")
            };
            let mut wire = Header {
                request_id: RequestId::random(),
                ..bad.header(kind)
            }
            .encode();
            wire[field::FLAGS].copy_from_slice(&bits.to_be_bytes());
            bad.send_bytes(&wire);
            bad.expect_fatal(ErrorCode::MalformedFrame);
        }
        presence
    });
}
