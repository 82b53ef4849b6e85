//! Handshake, presence and connection-fatal protocol errors.

use super::harness::*;
use crate::ids::{ClientId, RequestId};
use crate::protocol::{ErrorCode, Flags, FrameType, Header};

#[test]
fn welcome_lists_peers_and_presence_follows_joins_and_leaves() {
    let mut h = Harness::new();
    let ch = channel(1);
    let (a, welcome_a) = h.join(ch, client(1));
    assert!(welcome_a.peers.is_empty());
    assert_eq!(welcome_a.max_payload, h.router.config().max_payload);
    assert_eq!(welcome_a.default_timeout_ms, 30_000);

    let (b, welcome_b) = h.join(ch, client(2));
    assert_eq!(welcome_b.peers, vec![client(1)]);
    let joined = h.expect_one(a);
    assert_eq!(joined.header.frame_type, FrameType::PeerJoined);
    assert_eq!(joined.header.client_id, client(2));
    assert_eq!(joined.header.channel_id, ch);

    // A peer on another channel is invisible.
    let (c, welcome_c) = h.join(channel(2), client(3));
    assert!(welcome_c.peers.is_empty());
    h.expect_nothing(a);
    h.expect_nothing(b);

    h.disconnect(b);
    let left = h.expect_one(a);
    assert_eq!(left.header.frame_type, FrameType::PeerLeft);
    assert_eq!(left.header.client_id, client(2));
    h.expect_nothing(c);

    h.disconnect(a);
    h.disconnect(c);
    h.assert_empty();
}

#[test]
fn nil_client_id_gets_a_fresh_one() {
    let mut h = Harness::new();
    let conn = h.connect();
    h.send(
        conn,
        Header {
            channel_id: channel(1),
            ..Header::new(FrameType::Hello)
        },
        b"",
    );
    let welcome = h.expect_one(conn);
    assert_eq!(welcome.header.frame_type, FrameType::Welcome);
    assert!(!welcome.header.client_id.is_nil());
    h.disconnect(conn);
    h.assert_empty();
}

#[test]
fn a_second_connection_with_the_same_client_id_takes_over() {
    let mut h = Harness::new();
    let ch = channel(1);
    let (s, _) = h.join(ch, client(9));
    let (old, _) = h.join(ch, client(1));
    h.take(s);
    h.receive(old, 1);
    h.request(s, req(1), 1_000, b"x");
    h.take(old);
    // The same client id again: the old connection is replaced, its request ends as for any
    // departure, and the others see neither PEER_LEFT nor a second PEER_JOINED.
    let (new, welcome) = h.join(ch, client(1));
    assert_eq!(welcome.peers, vec![client(9)]);
    h.expect_closed_with(old, ErrorCode::Replaced);
    h.expect_error(s, ErrorCode::PeerGone, req(1));
    assert_eq!(h.stats().takeovers, 1);
    // The new connection is a full member: it gets requests once it gives credit.
    h.receive(new, 1);
    h.request(s, req(2), 1_000, b"y");
    assert_eq!(h.expect_one(new).header.request_id, req(2));
    // The same id on another channel is independent.
    let (other, _) = h.join(channel(2), client(1));
    h.expect_nothing(new);
    for conn in [s, new, other] {
        h.disconnect(conn);
    }
    h.assert_empty();
}

#[test]
fn frames_before_hello_close_the_connection_but_ping_is_answered() {
    let mut h = Harness::new();
    let conn = h.connect();
    h.send(
        conn,
        Header {
            sequence: 7,
            ..Header::new(FrameType::Ping)
        },
        b"",
    );
    let pong = h.expect_one(conn);
    assert_eq!(
        (pong.header.frame_type, pong.header.sequence),
        (FrameType::Pong, 7)
    );
    h.send(
        conn,
        Header {
            channel_id: channel(1),
            ..Header::new(FrameType::Start)
        },
        b"x",
    );
    h.expect_closed_with(conn, ErrorCode::HandshakeRequired);
    h.assert_empty();
}

#[test]
fn second_hello_closes_and_tells_the_peers() {
    let mut h = Harness::new();
    let (a, _) = h.join(channel(1), client(1));
    let b = h.join_quietly(channel(1), client(2), &[a]);
    h.send(
        b,
        Header {
            channel_id: channel(1),
            client_id: client(2),
            ..Header::new(FrameType::Hello)
        },
        b"",
    );
    h.expect_closed_with(b, ErrorCode::DuplicateHello);
    assert_eq!(h.expect_one(a).header.frame_type, FrameType::PeerLeft);
    h.disconnect(a);
    h.assert_empty();
}

#[test]
fn hello_without_channel_is_refused() {
    let mut h = Harness::new();
    let conn = h.connect();
    h.send(conn, Header::new(FrameType::Hello), b"");
    h.expect_closed_with(conn, ErrorCode::ChannelMismatch);
    h.assert_empty();
}

#[test]
fn frame_for_another_channel_closes_the_connection() {
    let mut h = Harness::new();
    let (a, _) = h.join(channel(1), client(1));
    h.send(
        a,
        Header {
            channel_id: channel(9),
            ..Header::new(FrameType::Ping)
        },
        b"",
    );
    h.expect_closed_with(a, ErrorCode::ChannelMismatch);
    h.assert_empty();
}

#[test]
fn broker_only_frame_types_from_a_client_close_it() {
    for kind in [
        FrameType::Welcome,
        FrameType::Error,
        FrameType::PeerJoined,
        FrameType::PeerLeft,
    ] {
        let mut h = Harness::new();
        let (a, _) = h.join(channel(1), client(1));
        h.send(
            a,
            Header {
                channel_id: channel(1),
                ..Header::new(kind)
            },
            b"",
        );
        h.expect_closed_with(a, ErrorCode::UnexpectedFrame);
        h.assert_empty();
    }
}

#[test]
fn malformed_control_frames_close_the_connection() {
    let mut h = Harness::new();
    let ch = channel(1);
    let (a, _) = h.join(ch, client(1));
    h.send(
        a,
        Header {
            channel_id: ch,
            ..Header::new(FrameType::Receive)
        },
        b"\x00\x01",
    );
    h.expect_closed_with(a, ErrorCode::MalformedFrame);

    let (b, _) = h.join(ch, client(2));
    h.send(
        b,
        Header {
            channel_id: ch,
            flags: Flags::REQUEST,
            ..Header::new(FrameType::Ack)
        },
        b"",
    );
    h.expect_closed_with(b, ErrorCode::MalformedFrame);

    let (c, _) = h.join(ch, client(3));
    // A stream frame needs exactly one direction flag…
    h.stream(
        c,
        FrameType::Start,
        Flags::REQUEST | Flags::RESPONSE,
        super::harness::req(1),
        0,
        true,
        b"",
    );
    h.expect_closed_with(c, ErrorCode::MalformedFrame);

    let (d, _) = h.join(ch, client(4));
    // …and a request id.
    h.stream(
        d,
        FrameType::Start,
        Flags::REQUEST,
        RequestId::NIL,
        0,
        true,
        b"",
    );
    h.expect_closed_with(d, ErrorCode::MalformedFrame);

    let (e, _) = h.join(ch, client(5));
    h.stream(
        e,
        FrameType::Start,
        Flags::RESPONSE | Flags::BROADCAST,
        super::harness::req(1),
        0,
        true,
        b"",
    );
    h.expect_closed_with(e, ErrorCode::MalformedFrame);
    h.assert_empty();
}

#[test]
fn decode_errors_become_their_error_frame_and_close() {
    use crate::protocol::DecodeError;
    let mut h = Harness::new();
    let (a, _) = h.join(channel(1), client(1));
    h.router
        .handle_decode_error(a, DecodeError::UnsupportedVersion { got: 9 }, h.now);
    let frame = {
        // poll the outputs through a no-op step
        h.advance(0);
        h.take(a)
    };
    assert_eq!(frame.len(), 1);
    let body = crate::protocol::ErrorBody::decode(&frame[0].payload).unwrap();
    assert_eq!(body.known_code(), Some(ErrorCode::UnsupportedVersion));
    assert!(body.message.contains("version 1"), "{}", body.message);
    h.disconnect(a);
    h.assert_empty();
}

#[test]
fn closing_twice_and_input_after_close_are_harmless() {
    let mut h = Harness::new();
    let (a, _) = h.join(channel(1), ClientId::NIL);
    h.disconnect(a);
    h.router.handle_disconnect(a, h.now);
    h.router.handle_frame(
        a,
        crate::protocol::Frame::new(Header::new(FrameType::Ping), bytes::Bytes::new()),
        h.now,
    );
    assert!(h.router.poll_output().is_none());
    h.assert_empty();
}
