//! Half-close (PROTOCOL.md §1): a client that shuts its write side after its request still gets
//! the answer; one with nothing in flight is closed as before.

use super::harness::{channel, client, req, Harness};
use crate::ids::ConnId;
use crate::protocol::{ErrorCode, FrameType};
use crate::router::ReadClosed;

/// The PING (sequence 0) that tells a half-closed socket from a closed one.
#[track_caller]
fn expect_probe(h: &mut Harness, conn: ConnId) {
    let ping = h.expect_one(conn);
    assert_eq!(ping.header.frame_type, FrameType::Ping);
    assert_eq!(ping.header.sequence, 0);
    assert!(ping.payload.is_empty());
}

#[test]
fn a_sender_that_half_closes_after_its_request_still_gets_the_response() {
    let mut h = Harness::new();
    let ch = channel(1);
    let (receiver, _) = h.join(ch, client(1));
    let sender = h.join_quietly(ch, client(2), &[receiver]);
    h.receive(receiver, 1);
    h.request(sender, req(1), 5_000, b"question");
    assert_eq!(h.take(receiver).len(), 1);
    assert_eq!(h.read_closed(sender), ReadClosed::KeepForOutput);
    expect_probe(&mut h, sender);
    assert!(!h.router.is_read_closed_done(sender));
    h.respond(receiver, req(1), b"answer");
    let response = h.expect_one(sender);
    assert_eq!(response.header.frame_type, FrameType::Start);
    assert_eq!(&response.payload[..], b"answer");
    // The answer is written (the harness writes everything): the I/O layer may close it now.
    assert!(h.router.is_read_closed_done(sender));
    h.disconnect(sender);
    h.disconnect(receiver);
    h.assert_empty();
}

#[test]
fn a_half_closed_connection_with_nothing_in_flight_is_closed_and_one_holding_requests_gives_them_up(
) {
    let mut h = Harness::new();
    let ch = channel(1);
    let (idle, _) = h.join(ch, client(1));
    assert_eq!(h.read_closed(idle), ReadClosed::Close);
    assert!(!h.router.is_read_closed_done(idle));
    h.disconnect(idle);

    // A client that is receiver of one request and sender of another half-closes: it can no
    // longer answer the first (its sender gets PEER_GONE) but still gets the answer to the second.
    let (both, _) = h.join(ch, client(2));
    let other = h.join_quietly(ch, client(3), &[both]);
    h.take(both);
    h.receive(both, 1);
    h.request(other, req(1), 5_000, b"for both");
    assert_eq!(h.take(both).len(), 1);
    h.receive(other, 1);
    h.request(both, req(2), 5_000, b"for other");
    assert_eq!(h.take(other).len(), 1);
    assert_eq!(h.read_closed(both), ReadClosed::KeepForOutput);
    expect_probe(&mut h, both);
    h.expect_error(other, ErrorCode::PeerGone, req(1));
    // No new assignment: its window is 0 (and `other` takes no more either).
    h.receive(other, 0);
    h.request(other, req(3), 50, b"queued");
    h.expect_nothing(both);
    h.respond(other, req(2), b"done");
    assert_eq!(&h.expect_one(both).payload[..], b"done");
    assert!(h.router.is_read_closed_done(both));
    h.advance(60);
    h.expect_error(other, ErrorCode::NoReceiver, req(3));
    h.disconnect(both);
    h.disconnect(other);
    h.assert_empty();
}

/// A broadcast started after a peer half-closed does not wait for that peer's ack.
#[test]
fn a_half_closed_member_is_left_out_of_new_broadcasts() {
    let mut h = Harness::new();
    let ch = channel(1);
    let (a, _) = h.join(ch, client(1));
    let b = h.join_quietly(ch, client(2), &[a]);
    let c = h.join_quietly(ch, client(3), &[a, b]);
    h.receive(a, 1);
    h.request(b, req(1), 5_000, b"q");
    assert_eq!(h.take(a).len(), 1);
    assert_eq!(h.read_closed(b), ReadClosed::KeepForOutput);
    expect_probe(&mut h, b);
    h.stream(
        c,
        FrameType::Start,
        crate::protocol::Flags::REQUEST | crate::protocol::Flags::BROADCAST,
        req(2),
        0,
        true,
        b"all",
    );
    assert_eq!(h.take(a).len(), 1);
    h.expect_nothing(b);
    h.send(
        a,
        crate::protocol::Header {
            flags: crate::protocol::Flags::BROADCAST,
            channel_id: ch,
            request_id: req(2),
            ..crate::protocol::Header::new(FrameType::Ack)
        },
        b"",
    );
    assert_eq!(h.expect_one(c).header.frame_type, FrameType::Ack);
    h.respond(a, req(1), b"r");
    assert_eq!(h.expect_one(b).header.frame_type, FrameType::Start);
    for conn in [a, b, c] {
        h.disconnect(conn);
    }
    h.assert_empty();
}
