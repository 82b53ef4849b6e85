//! Request ids are scoped per sender connection (issue 10 item 11, `scope.rs`): another
//! client's reuse of an id in flight is its own request — it learns nothing and blocks nothing —
//! and DUPLICATE_REQUEST is only for a sender's own id.

use super::harness::*;
use crate::ids::ConnId;
use crate::protocol::{ErrorCode, Flags, FrameType};

/// A sender and a receiver (window 2) on channel `n`.
fn pair(h: &mut Harness, n: u8) -> (ConnId, ConnId) {
    let s = h.join_quietly(channel(n), client(2 * n), &[]);
    let r = h.join_quietly(channel(n), client(2 * n + 1), &[s]);
    h.receive(r, 2);
    (s, r)
}

#[test]
fn another_channels_client_reusing_an_id_in_flight_neither_learns_it_nor_blocks_it() {
    let mut h = Harness::new();
    let (victim, victim_r) = pair(&mut h, 1);
    let (other, other_r) = pair(&mut h, 2);
    h.request(victim, req(1), 1_000, b"mine");
    assert_eq!(&h.expect_one(victim_r).payload[..], b"mine");
    // The same id on another channel: a request like any other, not DUPLICATE_REQUEST (its
    // receiver knows it by a route of its own: ids in flight are routed apart broker-wide).
    h.request(other, req(1), 1_000, b"theirs");
    let got = h.expect_one(other_r);
    let route = got.header.request_id;
    assert_eq!(&got.payload[..], b"theirs");
    h.expect_nothing(other);
    // Frames and cancels of the other sender reach only its own request.
    h.control(other, FrameType::Cancel, Flags::REQUEST, req(1));
    h.expect_cancel(other_r, route);
    h.expect_nothing(victim_r);
    // The victim's request is untouched and completes.
    h.respond(victim_r, req(1), b"ok");
    assert_eq!(&h.expect_one(victim).payload[..], b"ok");
    h.expect_nothing(other);
    assert_eq!(h.stats().assignments, 0);
}

#[test]
fn a_receiver_sees_distinct_routes_for_two_senders_same_id_and_answers_each() {
    let mut h = Harness::new();
    let ch = channel(1);
    let a = h.join_quietly(ch, client(1), &[]);
    let b = h.join_quietly(ch, client(2), &[a]);
    let r = h.join_quietly(ch, client(3), &[a, b]);
    h.receive(r, 2);
    h.request(a, req(7), 1_000, b"from a");
    let first = h.expect_one(r);
    assert_eq!(first.header.request_id, req(7));
    // b reuses a's id: b's request reaches the same receiver under a fresh route.
    h.request(b, req(7), 1_000, b"from b");
    let second = h.expect_one(r);
    let route = second.header.request_id;
    assert_ne!(route, req(7));
    assert!(!route.is_nil());
    assert_eq!(second.header.client_id, client(2));
    h.expect_nothing(a);
    h.expect_nothing(b);
    // Each answer goes to its own sender, under the sender's own id.
    h.respond(r, route, b"to b");
    let answer = h.expect_one(b);
    assert_eq!(
        (answer.header.request_id, &answer.payload[..]),
        (req(7), &b"to b"[..])
    );
    h.expect_nothing(a);
    h.respond(r, req(7), b"to a");
    let answer = h.expect_one(a);
    assert_eq!(
        (answer.header.request_id, &answer.payload[..]),
        (req(7), &b"to a"[..])
    );
    // A sender still cannot reuse its own id in flight.
    h.request(b, req(8), 1_000, b"x");
    let route8 = h.expect_one(r).header.request_id;
    h.request(b, req(8), 1_000, b"again");
    h.expect_error(b, ErrorCode::DuplicateRequest, req(8));
    // An aliased request's timeout and cancel use each side's own name.
    h.request(a, req(8), 1_000, b"a8");
    let a8 = h.expect_one(r).header.request_id;
    assert_ne!(a8, route8);
    h.control(r, FrameType::Cancel, Flags::RESPONSE, a8);
    h.expect_cancel(a, req(8));
    h.advance(1_000);
    h.expect_error(b, ErrorCode::Timeout, req(8));
    h.expect_cancel(r, route8);
    for conn in [a, b, r] {
        h.disconnect(conn);
    }
    h.assert_empty();
}

#[test]
fn a_broadcast_id_reused_by_another_sender_is_routed_apart() {
    let mut h = Harness::new();
    let ch = channel(1);
    let a = h.join_quietly(ch, client(1), &[]);
    let b = h.join_quietly(ch, client(2), &[a]);
    let p = h.join_quietly(ch, client(3), &[a, b]);
    let bc = Flags::REQUEST.union(Flags::BROADCAST);
    h.stream(a, FrameType::Start, bc, req(1), 0, true, b"a");
    h.stream(b, FrameType::Start, bc, req(1), 0, true, b"b");
    // Every peer acknowledges what it got, by the id it got it under.
    let mut routes = Vec::new();
    for peer in [a, b, p] {
        for frame in h.take(peer) {
            assert_eq!(frame.header.frame_type, FrameType::Start);
            routes.push(frame.header.request_id);
            h.control(
                peer,
                FrameType::Ack,
                Flags::BROADCAST,
                frame.header.request_id,
            );
        }
    }
    routes.sort_by_key(|r| *r.as_bytes());
    routes.dedup();
    assert_eq!(routes.len(), 2, "two broadcasts, two routes: {routes:?}");
    for sender in [a, b] {
        let ack = h.expect_one(sender);
        assert_eq!(
            (ack.header.frame_type, ack.header.request_id),
            (FrameType::Ack, req(1))
        );
    }
    for conn in [a, b, p] {
        h.disconnect(conn);
    }
    h.assert_empty();
}
