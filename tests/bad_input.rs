//! PROTOCOL.md §10 over real sockets: every kind of bad input gets the error frame the protocol
//! prescribes, the offending connection is closed exactly when it must be, and a bystander pair
//! (a sender and a receiver on one channel, connected before the bad client) still completes a
//! request/reply round trip afterwards with nothing unexpected in their inboxes. After everyone
//! has gone, every count of the broker is back to zero.
//!
//! Bad clients that complete a handshake do so on the bystanders' channel where that is
//! possible, so the bystanders' presence frames (PEER_JOINED then PEER_LEFT, even when the broker
//! closes the connection itself) are checked as well.

use bytes::BytesMut;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use switchyard::ids::{ChannelId, ClientId, RequestId};
use switchyard::protocol::{
    encode_u32, field, Decoder, ErrorBody, ErrorCode, Flags, FrameType, Header, WelcomeBody,
    DEFAULT_MAX_PAYLOAD, HEADER_LEN,
};
use switchyard::server::{ServerConfig, ServerHandle};
use switchyard_testkit::broker;
use switchyard_testkit::broker::{start, start_with};
use switchyard_testkit::gauges::wait_idle;
use switchyard_testkit::raw::RawPeer;

/// Presence frames the bystanders must see, in order, before their round trip.
type Presence = Vec<(FrameType, ClientId)>;

/// A sender and a receiver (window 1) on one channel, connected before any bad client.
struct Bystanders {
    sender: RawPeer,
    receiver: RawPeer,
    channel: ChannelId,
    round_trips: u32,
}

impl Bystanders {
    #[track_caller]
    fn join(handle: &ServerHandle) -> Bystanders {
        let addr = handle.local_addr();
        let channel = ChannelId::random();
        let mut receiver = RawPeer::named(addr, "bystander-receiver");
        let welcome = receiver.hello(channel, ClientId::random());
        assert!(welcome.peers.is_empty());
        let mut sender = RawPeer::named(addr, "bystander-sender");
        let welcome = sender.hello(channel, ClientId::random());
        assert_eq!(welcome.peers, vec![receiver.client]);
        receiver.expect_presence(FrameType::PeerJoined, sender.client);
        receiver.receive(1);
        // The RECEIVE is handled before the PONG is queued: the receiver is ready from here on.
        receiver.barrier();
        sender.barrier();
        Bystanders {
            sender,
            receiver,
            channel,
            round_trips: 0,
        }
    }

    /// One request/reply with `body` going both ways; checks every forwarded field.
    #[track_caller]
    fn round_trip(&mut self, body: &[u8]) {
        self.round_trips += 1;
        let id = RequestId::random();
        self.sender.request(id, 5_000, body);
        let start = self.receiver.expect(FrameType::Start, Flags::REQUEST, id);
        assert!(start.header.is_final);
        assert_eq!(start.header.sequence, 0);
        assert_eq!(start.header.client_id, self.sender.client);
        assert_eq!(start.header.channel_id, self.channel);
        assert!((1..=5_000).contains(&start.header.timeout_ms));
        assert_eq!(&start.payload[..], body);
        self.receiver.respond(id, body);
        let reply = self.sender.expect(FrameType::Start, Flags::RESPONSE, id);
        assert!(reply.header.is_final);
        assert_eq!(reply.header.client_id, self.receiver.client);
        assert_eq!(reply.header.channel_id, self.channel);
        assert_eq!(&reply.payload[..], body);
    }

    /// Both bystanders get one presence frame now (consumed before a case's own traffic).
    #[track_caller]
    fn saw(&mut self, kind: FrameType, client: ClientId) {
        self.sender.expect_presence(kind, client);
        self.receiver.expect_presence(kind, client);
    }

    /// Both bystanders get exactly `presence`, then a round trip works, then both inboxes are
    /// empty.
    #[track_caller]
    fn check(&mut self, presence: &[(FrameType, ClientId)]) {
        for peer in [&mut self.sender, &mut self.receiver] {
            for &(kind, who) in presence {
                peer.expect_presence(kind, who);
            }
        }
        self.round_trip(b"still fine?");
        self.sender.barrier();
        self.receiver.barrier();
    }
}

/// Runs one §10 case: bystanders first, then `bad` (given the broker and the bystanders, it
/// drives the bad clients to their end and returns the presence frames the bystanders must
/// have seen), then the bystanders' check, then everyone leaves and the broker must be idle.
#[track_caller]
fn case(
    config: Option<ServerConfig>,
    bad: impl FnOnce(&ServerHandle, &mut Bystanders) -> Presence,
) {
    let handle = match config {
        Some(config) => start_with(config),
        None => start(),
    };
    let mut bystanders = Bystanders::join(&handle);
    let presence = bad(&handle, &mut bystanders);
    bystanders.check(&presence);
    drop(bystanders);
    let stats = wait_idle(&handle);
    assert_eq!(stats.accepted, stats.closed);
}

/// A bad client that joined the bystanders' channel and was (or will be) closed: the presence
/// the bystanders see for it.
fn came_and_went(client: ClientId) -> Presence {
    vec![
        (FrameType::PeerJoined, client),
        (FrameType::PeerLeft, client),
    ]
}

/// A fresh connection that completed its handshake on the bystanders' channel.
#[track_caller]
fn joined(handle: &ServerHandle, by: &Bystanders, name: &str) -> RawPeer {
    let mut peer = RawPeer::named(handle.local_addr(), name);
    let welcome = peer.hello(by.channel, ClientId::random());
    let mut expected = vec![by.receiver.client, by.sender.client];
    let mut got = welcome.peers.clone();
    expected.sort();
    got.sort();
    assert_eq!(got, expected, "{name}: welcome peers");
    peer
}

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

#[test]
fn chunk_or_end_before_start_is_unknown_request_and_the_connection_stays() {
    case(None, |handle, by| {
        let mut bad = joined(handle, by, "no-start");
        for (kind, flags, seq, fin) in [
            (FrameType::Chunk, Flags::REQUEST, 1, false),
            (FrameType::End, Flags::REQUEST, 1, true),
            (FrameType::End, Flags::REQUEST, 5, true),
            (FrameType::Chunk, Flags::RESPONSE, 1, false),
            (FrameType::End, Flags::RESPONSE, 1, true),
        ] {
            let id = RequestId::random();
            bad.send_stream(kind, flags, id, seq, fin, b"orphan");
            bad.expect_error(ErrorCode::UnknownRequest, id);
        }
        // Still open and usable.
        bad.barrier();
        let stats = handle.stats().unwrap();
        assert!(stats.router.late_frames_dropped >= 5, "{stats:?}");
        let client = bad.client;
        drop(bad);
        came_and_went(client)
    });
}

#[test]
fn frames_for_unknown_request_ids_are_dropped_with_unknown_request() {
    case(None, |handle, by| {
        let mut bad = joined(handle, by, "unknown-ids");
        let frames: [(FrameType, Flags, u32, bool); 7] = [
            (FrameType::Chunk, Flags::REQUEST, 1, false),
            (FrameType::End, Flags::REQUEST, 1, true),
            (FrameType::Cancel, Flags::REQUEST, 0, true),
            (FrameType::Cancel, Flags::RESPONSE, 0, true),
            (FrameType::Start, Flags::RESPONSE, 0, true),
            (
                FrameType::Chunk,
                Flags::REQUEST.union(Flags::BROADCAST),
                1,
                false,
            ),
            (
                FrameType::Cancel,
                Flags::REQUEST.union(Flags::BROADCAST),
                0,
                true,
            ),
        ];
        for (kind, flags, seq, fin) in frames {
            let id = RequestId::random();
            bad.send_stream(kind, flags, id, seq, fin, &[]);
            bad.expect_error(ErrorCode::UnknownRequest, id);
        }
        let id = RequestId::random();
        let ack = Header {
            flags: Flags::BROADCAST,
            request_id: id,
            ..bad.header(FrameType::Ack)
        };
        bad.send(ack, &[]);
        bad.expect_error(ErrorCode::UnknownRequest, id);
        bad.barrier();
        let client = bad.client;
        drop(bad);
        came_and_went(client)
    });
}

#[test]
fn frames_for_another_connections_request_are_unknown_request() {
    case(None, |handle, by| {
        let mut intruder = joined(handle, by, "intruder");
        by.saw(FrameType::PeerJoined, intruder.client);

        // The bystanders' request is in flight: its START reached the receiver, more is to come.
        let id = RequestId::random();
        by.sender
            .send_stream(FrameType::Start, Flags::REQUEST, id, 0, false, b"part0");
        let start = by.receiver.expect(FrameType::Start, Flags::REQUEST, id);
        assert_eq!(&start.payload[..], b"part0");

        // Someone else's request: every frame naming it is dropped with UNKNOWN_REQUEST.
        for (kind, flags, seq, fin) in [
            (FrameType::Chunk, Flags::REQUEST, 1, false),
            (FrameType::End, Flags::REQUEST, 1, true),
            (FrameType::Cancel, Flags::REQUEST, 0, true),
            // A response to a request that was not assigned to it.
            (FrameType::Start, Flags::RESPONSE, 0, true),
            (FrameType::Start, Flags::RESPONSE, 0, false),
            (FrameType::Cancel, Flags::RESPONSE, 0, true),
        ] {
            intruder.send_stream(kind, flags, id, seq, fin, b"intrusion");
            intruder.expect_error(ErrorCode::UnknownRequest, id);
        }
        // Reusing the id for a START of its own while it is in flight.
        intruder.request(id, 1_000, b"mine now");
        intruder.expect_error(ErrorCode::DuplicateRequest, id);
        intruder.barrier();

        // Each side may only play its own part: the sender cannot respond, the receiver cannot
        // add to the request body.
        by.sender.respond(id, b"self-answer");
        by.sender.expect_error(ErrorCode::UnknownRequest, id);
        by.receiver
            .send_stream(FrameType::Chunk, Flags::REQUEST, id, 1, false, b"forged");
        by.receiver.expect_error(ErrorCode::UnknownRequest, id);

        // None of that touched the request: it continues at sequence 1 and completes.
        by.sender
            .send_stream(FrameType::Chunk, Flags::REQUEST, id, 1, false, b"part1");
        by.sender
            .send_stream(FrameType::End, Flags::REQUEST, id, 2, true, b"part2");
        let chunk = by.receiver.expect(FrameType::Chunk, Flags::REQUEST, id);
        assert_eq!(
            (chunk.header.sequence, &chunk.payload[..]),
            (1, &b"part1"[..])
        );
        let end = by.receiver.expect(FrameType::End, Flags::REQUEST, id);
        assert!(end.header.is_final);
        assert_eq!((end.header.sequence, &end.payload[..]), (2, &b"part2"[..]));
        by.receiver.respond(id, b"answer");
        let reply = by.sender.expect(FrameType::Start, Flags::RESPONSE, id);
        assert_eq!(&reply.payload[..], b"answer");
        by.sender.barrier();
        by.receiver.barrier();

        // Finished: now it is unknown to everyone.
        intruder.send_stream(FrameType::Chunk, Flags::REQUEST, id, 3, false, b"late");
        intruder.expect_error(ErrorCode::UnknownRequest, id);
        by.sender
            .send_stream(FrameType::Chunk, Flags::REQUEST, id, 3, false, b"late");
        by.sender.expect_error(ErrorCode::UnknownRequest, id);
        by.receiver
            .send_stream(FrameType::Chunk, Flags::RESPONSE, id, 1, false, b"late");
        by.receiver.expect_error(ErrorCode::UnknownRequest, id);
        intruder.barrier();

        let client = intruder.client;
        drop(intruder);
        vec![(FrameType::PeerLeft, client)]
    });
}

#[test]
fn response_from_a_receiver_not_assigned_the_request_is_unknown_request() {
    case(None, |handle, by| {
        // A second receiver with credit, behind the bystander receiver in the ready FIFO.
        let mut rival = joined(handle, by, "rival-receiver");
        by.saw(FrameType::PeerJoined, rival.client);
        rival.receive(1);
        rival.barrier();

        let id = RequestId::random();
        by.sender.request(id, 5_000, b"for the first receiver");
        by.receiver.expect(FrameType::Start, Flags::REQUEST, id);

        for (kind, seq, fin) in [
            (FrameType::Start, 0, true),
            (FrameType::Start, 0, false),
            (FrameType::Chunk, 1, false),
            (FrameType::End, 1, true),
            (FrameType::Cancel, 0, true),
        ] {
            rival.send_stream(kind, Flags::RESPONSE, id, seq, fin, b"not yours");
            rival.expect_error(ErrorCode::UnknownRequest, id);
        }
        rival.barrier();

        // The assigned receiver's answer is the one the sender gets.
        by.receiver.respond(id, b"the real answer");
        let reply = by.sender.expect(FrameType::Start, Flags::RESPONSE, id);
        assert_eq!(reply.header.client_id, by.receiver.client);
        assert_eq!(&reply.payload[..], b"the real answer");

        let client = rival.client;
        drop(rival);
        vec![(FrameType::PeerLeft, client)]
    });
}

#[test]
fn second_hello_is_duplicate_hello() {
    case(None, |handle, by| {
        let mut presence = Vec::new();
        for client in [None, Some(ClientId::NIL), Some(ClientId::random())] {
            let mut bad = joined(handle, by, "hello-twice");
            presence.extend(came_and_went(bad.client));
            let again = client.unwrap_or(bad.client);
            bad.send_hello(by.channel, again);
            bad.expect_fatal(ErrorCode::DuplicateHello);
        }
        presence
    });
}

#[test]
fn frames_before_hello_are_handshake_required() {
    case(None, |handle, by| {
        let addr = handle.local_addr();
        let frames: [(FrameType, Flags, Vec<u8>); 8] = [
            (FrameType::Start, Flags::REQUEST, b"body".to_vec()),
            (FrameType::Chunk, Flags::REQUEST, Vec::new()),
            (FrameType::End, Flags::REQUEST, Vec::new()),
            (FrameType::Cancel, Flags::REQUEST, Vec::new()),
            (FrameType::Receive, Flags::NONE, encode_u32(1).to_vec()),
            (FrameType::Ack, Flags::BROADCAST, Vec::new()),
            (FrameType::Pong, Flags::NONE, Vec::new()),
            (FrameType::Welcome, Flags::NONE, Vec::new()),
        ];
        for (kind, flags, payload) in frames {
            let mut bad = RawPeer::named(addr, "no-hello");
            let header = Header {
                flags,
                channel_id: by.channel,
                client_id: ClientId::random(),
                request_id: RequestId::random(),
                ..Header::new(kind)
            };
            bad.send(header, &payload);
            bad.expect_fatal(ErrorCode::HandshakeRequired);
        }

        // PING is the one frame allowed before the handshake; the handshake still works after.
        let mut early = RawPeer::named(addr, "early-ping");
        early.channel = by.channel;
        early.ping(77);
        let pong = early.recv_kind(FrameType::Pong, false);
        assert_eq!(pong.header.sequence, 77);
        early.hello(by.channel, ClientId::random());
        early.barrier();
        let client = early.client;
        drop(early);
        came_and_went(client)
    });
}

#[test]
fn channel_id_other_than_the_joined_one_is_channel_mismatch() {
    case(None, |handle, by| {
        let mut presence = Vec::new();
        for (kind, channel) in [
            (FrameType::Ping, ChannelId::random()),
            (FrameType::Start, ChannelId::random()),
            (FrameType::Receive, ChannelId::NIL),
        ] {
            let mut bad = joined(handle, by, "wrong-channel");
            presence.extend(came_and_went(bad.client));
            let header = Header {
                channel_id: channel,
                flags: if kind == FrameType::Start {
                    Flags::REQUEST
                } else {
                    Flags::NONE
                },
                request_id: if kind == FrameType::Start {
                    RequestId::random()
                } else {
                    RequestId::NIL
                },
                is_final: kind == FrameType::Start,
                ..bad.header(kind)
            };
            let payload = if kind == FrameType::Receive {
                encode_u32(1).to_vec()
            } else {
                Vec::new()
            };
            bad.send(header, &payload);
            bad.expect_fatal(ErrorCode::ChannelMismatch);
        }
        // A HELLO with the nil channel is refused the same way (no presence: it joined nothing).
        let mut nil = RawPeer::named(handle.local_addr(), "nil-channel");
        nil.send_hello(ChannelId::NIL, ClientId::random());
        nil.expect_fatal(ErrorCode::ChannelMismatch);
        presence
    });
}

#[test]
fn broker_only_frame_types_from_a_client_are_unexpected_frame() {
    case(None, |handle, by| {
        let welcome = WelcomeBody {
            max_payload: 1,
            default_timeout_ms: 1,
            max_timeout_ms: 1,
            heartbeat_ms: 0,
            peers: vec![ClientId::random()],
        }
        .encode();
        let error = ErrorBody::new(ErrorCode::GoingAway, "bye").encode();
        let mut presence = Vec::new();
        for (kind, payload) in [
            (FrameType::Welcome, welcome.to_vec()),
            (FrameType::Error, error.to_vec()),
            (FrameType::PeerJoined, Vec::new()),
            (FrameType::PeerLeft, Vec::new()),
        ] {
            let mut bad = joined(handle, by, "broker-impersonator");
            presence.extend(came_and_went(bad.client));
            let header = Header {
                // Presence frames name a peer: name a bystander, which must not be affected.
                client_id: by.receiver.client,
                ..bad.header(kind)
            };
            bad.send(header, &payload);
            bad.expect_fatal(ErrorCode::UnexpectedFrame);
        }
        presence
    });
}

#[test]
fn receive_with_a_payload_other_than_4_bytes_is_malformed() {
    case(None, |handle, by| {
        let mut presence = Vec::new();
        for payload in [&[0u8, 0, 1][..], &[], &[0, 0, 0, 1, 0]] {
            let mut bad = joined(handle, by, "bad-receive");
            presence.extend(came_and_went(bad.client));
            let header = bad.header(FrameType::Receive);
            bad.send(header, payload);
            bad.expect_fatal(ErrorCode::MalformedFrame);
        }
        presence
    });
}

#[test]
fn out_of_order_sequence_is_stream_order_to_the_offender_and_cancel_to_the_counterpart() {
    case(None, |_handle, by| {
        let sender_client = by.sender.client;
        let receiver_client = by.receiver.client;

        // Request direction, offended by the sender: a skipped sequence number, a frame after
        // the FINAL, a CHUNK carrying FINAL.
        let bad_request_frames: [(FrameType, u32, bool); 3] = [
            (FrameType::Chunk, 2, false),
            (FrameType::Chunk, 1, false),
            (FrameType::Chunk, 1, true),
        ];
        for (i, (kind, seq, fin)) in bad_request_frames.into_iter().enumerate() {
            let id = RequestId::random();
            let one_frame = i == 1;
            by.sender
                .send_stream(FrameType::Start, Flags::REQUEST, id, 0, one_frame, b"start");
            by.receiver.expect(FrameType::Start, Flags::REQUEST, id);
            by.sender
                .send_stream(kind, Flags::REQUEST, id, seq, fin, b"out of order");
            by.sender.expect_error(ErrorCode::StreamOrder, id);
            let cancel = by.receiver.expect(FrameType::Cancel, Flags::REQUEST, id);
            assert_eq!(cancel.header.client_id, sender_client);
            // The request is gone: its next frame is unknown, and nothing reaches the receiver.
            by.sender
                .send_stream(FrameType::Chunk, Flags::REQUEST, id, 1, false, b"late");
            by.sender.expect_error(ErrorCode::UnknownRequest, id);
            by.sender.barrier();
            by.receiver.barrier();
        }

        // A START whose sequence is not 0: refused, nothing reaches the receiver.
        let id = RequestId::random();
        by.sender
            .send_stream(FrameType::Start, Flags::REQUEST, id, 3, true, b"start");
        by.sender.expect_error(ErrorCode::StreamOrder, id);
        by.receiver.barrier();

        // Response direction, offended by the receiver: a skipped sequence number, and a
        // second START.
        for (kind, seq) in [(FrameType::End, 3), (FrameType::Start, 0)] {
            let id = RequestId::random();
            by.sender.request(id, 5_000, b"question");
            by.receiver.expect(FrameType::Start, Flags::REQUEST, id);
            by.receiver
                .send_stream(FrameType::Start, Flags::RESPONSE, id, 0, false, b"answer 0");
            let first = by.sender.expect(FrameType::Start, Flags::RESPONSE, id);
            assert!(!first.header.is_final);
            by.receiver
                .send_stream(kind, Flags::RESPONSE, id, seq, true, b"out of order");
            by.receiver.expect_error(ErrorCode::StreamOrder, id);
            let cancel = by.sender.expect(FrameType::Cancel, Flags::RESPONSE, id);
            assert_eq!(cancel.header.client_id, receiver_client);
            by.receiver
                .send_stream(FrameType::Chunk, Flags::RESPONSE, id, 1, false, b"late");
            by.receiver.expect_error(ErrorCode::UnknownRequest, id);
            by.sender.barrier();
            by.receiver.barrier();
        }
        // Both connections stayed open; the receiver's slot was freed every time (window 1), as
        // the round trip of the check shows.
        Vec::new()
    });
}
