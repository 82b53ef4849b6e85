//! PROTOCOL.md §10 over real sockets, well-formed frames out of place: stream frames for unknown
//! or foreign requests, responses from a receiver not assigned the request, a second HELLO,
//! frames before HELLO, the wrong channel, broker-only frame types, a malformed RECEIVE, and
//! out-of-order sequence numbers. Each gets the error frame the protocol prescribes, and the
//! offending connection is closed exactly when it must be (and only then).
//!
//! Each case (`switchyard_testkit::bystanders::case`) connects a bystander pair (a sender and a
//! receiver on one channel) before the bad client; they still complete a request/reply round trip
//! afterwards with nothing unexpected in their inboxes, and after everyone has gone every count of
//! the broker is back to zero. Bad clients that complete a handshake do so on the bystanders'
//! channel where that is possible, so the bystanders' presence frames (PEER_JOINED then
//! PEER_LEFT, even when the broker closes the connection itself) are checked as well.

use switchyard::ids::{ChannelId, ClientId, RequestId};
use switchyard::protocol::{
    encode_u32, ErrorBody, ErrorCode, Flags, FrameType, Header, WelcomeBody,
};
use switchyard_testkit::{
    bystanders::{came_and_went, case, joined},
    raw::RawPeer,
};

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
            // A CANCEL's payload is empty (PROTOCOL.md §11): a byte there would be malformed.
            let body: &[u8] = if kind == FrameType::Cancel {
                b""
            } else {
                b"intrusion"
            };
            intruder.send_stream(kind, flags, id, seq, fin, body);
            intruder.expect_error(ErrorCode::UnknownRequest, id);
        }
        // Reusing the id for a START of its own while it is in flight: its own request (ids are
        // scoped per sender), not DUPLICATE_REQUEST — it learns nothing of the other. The only
        // receiver is busy, so NO_WAIT answers at once.
        intruder.send_stream(
            FrameType::Start,
            Flags::REQUEST | Flags::NO_WAIT,
            id,
            0,
            true,
            b"mine",
        );
        intruder.expect_error(ErrorCode::NoReceiver, id);
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
            let body: &[u8] = if kind == FrameType::Cancel {
                b""
            } else {
                b"not yours"
            };
            rival.send_stream(kind, Flags::RESPONSE, id, seq, fin, body);
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
