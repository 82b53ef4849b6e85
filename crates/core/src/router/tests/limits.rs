//! Resource limits of the routing core: channels, peers per channel, a connection's own streams
//! in flight, and the handshake deadline.

use super::harness::*;
use crate::protocol::{decode_u32, ErrorCode, Flags, FrameType, Header};
use crate::router::RouterConfig;
use std::time::Duration;

const B: Flags = Flags::REQUEST.union(Flags::BROADCAST);

fn hello(h: &mut Harness, conn: crate::ids::ConnId, ch: crate::ids::ChannelId, id: u8) {
    h.send(
        conn,
        Header {
            channel_id: ch,
            client_id: client(id),
            ..Header::new(FrameType::Hello)
        },
        b"",
    );
}

#[test]
fn a_hello_that_would_create_a_channel_beyond_max_channels_is_refused_and_closed() {
    let mut h = Harness::with_config(RouterConfig {
        max_channels: 2,
        ..quiet()
    });
    let (a, _) = h.join(channel(1), client(1));
    let (b, _) = h.join(channel(2), client(2));
    let c = h.connect();
    hello(&mut h, c, channel(3), 3);
    h.expect_closed_with(c, ErrorCode::LimitExceeded);
    assert_eq!(h.stats().channels, 2);
    assert_eq!(h.stats().handshake_failures, 1);
    h.expect_nothing(a);
    h.expect_nothing(b);
    // An existing channel still takes new peers.
    let d = h.join_quietly(channel(1), client(4), &[a]);
    // A channel that goes away frees its place.
    h.disconnect(b);
    let (e, _) = h.join(channel(3), client(5));
    for conn in [a, d, e] {
        h.disconnect(conn);
    }
    h.assert_empty();
}

#[test]
fn a_hello_beyond_max_peers_is_refused_but_a_takeover_or_a_ghost_return_is_not() {
    let mut h = Harness::with_config(RouterConfig {
        max_peers_per_channel: 2,
        presence_grace: Duration::from_millis(500),
        ..quiet()
    });
    let ch = channel(1);
    let (a, _) = h.join(ch, client(1));
    let b = h.join_quietly(ch, client(2), &[a]);
    let c = h.connect();
    hello(&mut h, c, ch, 3);
    h.expect_closed_with(c, ErrorCode::LimitExceeded);
    h.expect_nothing(a);
    h.expect_nothing(b);
    // A takeover takes the old connection's place.
    let (b2, _) = h.join(ch, client(2));
    h.expect_closed_with(b, ErrorCode::Replaced);
    h.expect_nothing(a);
    // A departed peer in its grace period still counts...
    h.disconnect(b2);
    let c = h.connect();
    hello(&mut h, c, ch, 3);
    h.expect_closed_with(c, ErrorCode::LimitExceeded);
    // ...and may come back.
    let (b3, _) = h.join(ch, client(2));
    h.expect_nothing(a);
    // Once it is really gone, its place is free.
    h.disconnect(b3);
    h.advance(500);
    assert_eq!(h.expect_one(a).header.frame_type, FrameType::PeerLeft);
    let c = h.join_quietly(ch, client(3), &[a]);
    h.disconnect(a);
    h.disconnect(c);
    h.advance(500);
    h.assert_empty();
}

#[test]
fn a_start_beyond_max_in_flight_gets_limit_exceeded_and_the_connection_stays_open() {
    let mut h = Harness::with_config(RouterConfig {
        max_in_flight_per_connection: 2,
        ..quiet()
    });
    let ch = channel(1);
    let (s, _) = h.join(ch, client(1));
    let r = h.join_quietly(ch, client(2), &[s]);
    h.request(s, req(1), 1_000, b"one");
    h.request(s, req(2), 1_000, b"two");
    h.request(s, req(3), 1_000, b"three");
    h.expect_error(s, ErrorCode::LimitExceeded, req(3));
    h.stream(s, FrameType::Start, B, req(4), 0, true, b"all");
    h.expect_error(s, ErrorCode::LimitExceeded, req(4));
    assert_eq!(h.stats().pending_requests, 2);
    // Requests sent to it count for their sender only: the receiver may still send its own.
    h.receive(r, 2);
    assert_eq!(h.take(r).len(), 2);
    h.request(r, req(5), 1_000, b"");
    assert_eq!(h.stats().pending_requests, 1);
    // When one of its requests ends, it may start another.
    h.respond(r, req(1), b"done");
    assert_eq!(h.expect_one(s).header.request_id, req(1));
    // (The freed slot of `r` takes its own waiting request.)
    assert_eq!(h.expect_one(r).header.request_id, req(5));
    h.stream(s, FrameType::Start, B, req(6), 0, true, b"all");
    assert_eq!(h.expect_one(r).header.request_id, req(6));
    h.request(s, req(7), 1_000, b"");
    h.expect_error(s, ErrorCode::LimitExceeded, req(7));
    h.control(r, FrameType::Ack, Flags::BROADCAST, req(6));
    let ack = h.expect_one(s);
    assert_eq!(decode_u32(&ack.payload), Ok(1));
    h.request(s, req(8), 1_000, b"");
    h.expect_nothing(s);
    assert!(!h.closed.contains(&s));
    h.disconnect(s);
    h.disconnect(r);
    h.assert_empty();
}

#[test]
fn a_connection_without_hello_is_closed_at_the_handshake_deadline() {
    let mut h = Harness::with_config(RouterConfig {
        handshake_timeout: Duration::from_millis(1_000),
        ..quiet()
    });
    let silent = h.connect();
    let pinging = h.connect();
    h.advance(500);
    let (joined, _) = h.join(channel(1), client(1));
    // The joined connection's deadline is gone; the others' remain.
    assert_eq!(h.stats().armed_timers, 2);
    h.send(
        pinging,
        Header {
            sequence: 7,
            ..Header::new(FrameType::Ping)
        },
        b"",
    );
    assert_eq!(h.expect_one(pinging).header.frame_type, FrameType::Pong);
    h.advance(499);
    h.expect_nothing(silent);
    assert!(h.closed.is_empty());
    h.advance(1);
    h.expect_closed_with(silent, ErrorCode::HandshakeRequired);
    h.expect_closed_with(pinging, ErrorCode::HandshakeRequired);
    assert_eq!(h.stats().handshake_failures, 2);
    h.advance(10_000);
    h.expect_nothing(joined);
    // A connection closed for another reason takes its deadline with it.
    let early = h.connect();
    h.send(early, Header::new(FrameType::Peers), b"");
    h.expect_closed_with(early, ErrorCode::HandshakeRequired);
    h.disconnect(joined);
    h.assert_empty();
}

/// With frames of at most 84 + 3 × 16 bytes, a channel has at most 4 peers: every list the
/// broker sends (WELCOME, PEERS, BROADCAST_INCOMPLETE with its text cut) fits the max payload
/// (the harness decodes every frame with that limit), and a fifth HELLO is LIMIT_EXCEEDED.
#[test]
fn peer_lists_never_exceed_the_max_payload() {
    use crate::protocol::{ErrorBody, PEER_LIST_OVERHEAD};
    let max_payload = (PEER_LIST_OVERHEAD + 3 * 16) as u32;
    let mut h = Harness::with_config(RouterConfig {
        max_payload,
        ..quiet()
    });
    assert_eq!(h.router.config().max_peers_per_channel, 4);
    let ch = channel(1);
    let mut conns = Vec::new();
    for n in 0..4 {
        let (conn, welcome) = h.join(ch, client(n));
        assert_eq!(welcome.peers.len(), n as usize);
        conns.push(conn);
    }
    let fifth = h.connect();
    h.send(
        fifth,
        Header {
            channel_id: ch,
            client_id: client(9),
            ..Header::new(FrameType::Hello)
        },
        b"",
    );
    h.expect_closed_with(fifth, ErrorCode::LimitExceeded);
    h.disconnect(fifth);
    for conn in &conns {
        h.take(*conn);
    }
    h.send(
        conns[0],
        Header {
            channel_id: ch,
            ..Header::new(FrameType::Peers)
        },
        b"",
    );
    let peers = h.expect_one(conns[0]);
    assert_eq!(peers.payload.len(), 4 + 3 * 16);
    // A broadcast nobody acks: BROADCAST_INCOMPLETE names all three, its text cut to fit.
    h.stream(
        conns[0],
        FrameType::Start,
        Flags::REQUEST | Flags::BROADCAST,
        req(1),
        0,
        true,
        b"x",
    );
    h.advance(31_000);
    let frames = h.take(conns[0]);
    let error = frames.last().expect("the broadcast's end");
    assert!(error.payload.len() <= max_payload as usize);
    let body = ErrorBody::decode(&error.payload).expect("error body");
    assert_eq!(body.known_code(), Some(ErrorCode::BroadcastIncomplete));
    assert_eq!(body.peers.len(), 3);
    for conn in conns {
        h.disconnect(conn);
    }
    h.assert_empty();
}
