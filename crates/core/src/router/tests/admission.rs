//! Admission (issue 10 item 7): the unauthenticated connections' own budget, evicted
//! oldest-first, and ghost-only channels making room for new channels.

use super::harness::*;
use crate::ids::{ChannelId, ClientId, ConnId};
use crate::protocol::{ErrorCode, FrameType, Header};
use crate::router::RouterConfig;
use std::time::Duration;

fn hello(h: &mut Harness, conn: ConnId, ch: ChannelId, id: ClientId) {
    h.send(
        conn,
        Header {
            channel_id: ch,
            client_id: id,
            ..Header::new(FrameType::Hello)
        },
        b"",
    );
}

#[test]
fn the_oldest_unauthenticated_connection_makes_room_for_a_new_one() {
    let mut h = Harness::with_config(RouterConfig {
        max_unauthenticated: 3,
        ..quiet()
    });
    // A member is never counted, whatever the number of connections.
    let (member, _) = h.join(channel(1), client(1));
    let [a, b, c] = [h.connect(), h.connect(), h.connect()];
    assert_eq!(h.stats().unauthenticated, 3);
    for conn in [member, a, b, c] {
        h.expect_nothing(conn);
    }
    // One more: the oldest awaiting its hello goes, the newest stay.
    let d = h.connect();
    let body = h.expect_error(a, ErrorCode::HandshakeRequired, crate::ids::RequestId::NIL);
    assert!(body.message.contains("oldest"), "{body:?}");
    assert!(h.closed.contains(&a));
    h.disconnect(a);
    assert_eq!(h.stats().unauthenticated, 3);
    assert_eq!(h.stats().unauthenticated_evicted, 1);
    // A connection that completed its handshake is out of the budget (and is never evicted).
    hello(&mut h, b, channel(1), client(2));
    assert_eq!(h.expect_one(b).header.frame_type, FrameType::Welcome);
    assert_eq!(
        h.expect_one(member).header.frame_type,
        FrameType::PeerJoined
    );
    assert_eq!(h.stats().unauthenticated, 2);
    let e = h.connect();
    for conn in [member, b, c, d, e] {
        h.expect_nothing(conn);
    }
    // Full again: c (older than d and e; b is a member now) goes.
    let f = h.connect();
    h.expect_closed_with(c, ErrorCode::HandshakeRequired);
    for conn in [member, b, d, e, f] {
        h.expect_nothing(conn);
    }
    for conn in [member, b, d, e, f] {
        h.disconnect(conn);
    }
    assert_eq!(h.stats().unauthenticated, 0);
    h.assert_empty();
}

#[test]
fn ghost_only_channels_make_room_for_new_channels() {
    let mut h = Harness::with_config(RouterConfig {
        max_channels: 2,
        presence_grace: Duration::from_millis(1_000),
        ..quiet()
    });
    // Two channels whose only peers departed: kept by their ghosts.
    let (a, _) = h.join(channel(1), client(1));
    let (b, _) = h.join(channel(2), client(2));
    h.disconnect(a);
    h.disconnect(b);
    assert_eq!((h.stats().channels, h.stats().ghosts), (2, 2));
    // New channels get in: the oldest ghost-only channel makes room each time.
    let (c, _) = h.join(channel(3), client(3));
    let (d, _) = h.join(channel(4), client(4));
    assert_eq!((h.stats().channels, h.stats().ghosts), (2, 0));
    assert_eq!(h.stats().ghost_channels_evicted, 2);
    // Channels with a member are never dropped: the limit holds for live channels.
    let e = h.connect();
    hello(&mut h, e, channel(5), client(5));
    h.expect_closed_with(e, ErrorCode::LimitExceeded);
    // A channel with a member and a ghost is not ghost-only: it is not dropped either.
    let f = h.join_quietly(channel(3), client(6), &[c]);
    h.disconnect(f);
    let g = h.connect();
    hello(&mut h, g, channel(6), client(7));
    h.expect_closed_with(g, ErrorCode::LimitExceeded);
    // The evicted ghosts' timers are gone: their grace period ends with nothing to tell.
    h.advance(1_000);
    assert_eq!(h.expect_one(c).header.frame_type, FrameType::PeerLeft);
    h.expect_nothing(d);
    for conn in [c, d] {
        h.disconnect(conn);
    }
    h.advance(1_000);
    h.assert_empty();
}

#[test]
fn a_graceful_shutdown_tells_connections_awaiting_their_hello_going_away() {
    let mut h = Harness::new();
    let (member, _) = h.join(channel(1), client(1));
    let waiting = h.connect();
    h.router.begin_shutdown(h.now, Duration::from_secs(5));
    h.advance(0); // polls the outputs
                  // PROTOCOL.md §8.1: every connection is told, the one without a handshake included (and
                  // closed: it has nothing in flight).
    h.expect_closed_with(waiting, ErrorCode::GoingAway);
    h.expect_closed_with(member, ErrorCode::GoingAway);
    assert!(h.router.is_shut_down());
}
