//! Request/reply: assignment, streaming, timeouts, cancels, departures, bad stream input.

use super::harness::*;
use crate::protocol::{ErrorCode, Flags, FrameType};
use crate::router::RouterConfig;
use std::time::Duration;

/// A channel with a sender and `n` receivers, each with `window`.
fn setup(
    h: &mut Harness,
    receivers: usize,
    window: u32,
) -> (crate::ids::ConnId, Vec<crate::ids::ConnId>) {
    let ch = channel(1);
    let sender = h.join_quietly(ch, client(0), &[]);
    let mut all = vec![sender];
    let mut rs = Vec::new();
    for i in 0..receivers {
        let r = h.join_quietly(ch, client(i as u8 + 1), &all);
        all.push(r);
        h.receive(r, window);
        rs.push(r);
    }
    (sender, rs)
}

#[test]
fn one_frame_each_way() {
    let mut h = Harness::new();
    let (s, rs) = setup(&mut h, 1, 1);
    h.request(s, req(1), 5_000, b"ping");
    let got = h.expect_one(rs[0]);
    assert_eq!(got.header.frame_type, FrameType::Start);
    assert!(got.header.is_final);
    assert_eq!(got.header.flags, Flags::REQUEST);
    assert_eq!(
        got.header.client_id,
        client(0),
        "the receiver learns who asked"
    );
    assert_eq!(got.header.timeout_ms, 5_000);
    assert_eq!(&got.payload[..], b"ping");
    assert_eq!(h.stats().assignments, 1);

    h.respond(rs[0], req(1), b"pong");
    let reply = h.expect_one(s);
    assert_eq!(
        (reply.header.frame_type, reply.header.is_final),
        (FrameType::Start, true)
    );
    assert_eq!(reply.header.flags, Flags::RESPONSE);
    assert_eq!(
        reply.header.client_id,
        client(1),
        "the sender learns who answered"
    );
    assert_eq!(&reply.payload[..], b"pong");
    let stats = h.stats();
    assert_eq!((stats.assignments, stats.armed_timers), (0, 0));
}

#[test]
fn forwarded_start_carries_the_remaining_timeout() {
    let mut h = Harness::new();
    let (s, rs) = setup(&mut h, 1, 0);
    h.request(s, req(1), 1_000, b"x");
    h.advance(300);
    h.receive(rs[0], 1);
    assert_eq!(h.expect_one(rs[0]).header.timeout_ms, 700);
}

#[test]
fn requests_go_round_robin_to_ready_receivers_fifo() {
    let mut h = Harness::new();
    let (s, rs) = setup(&mut h, 3, 2);
    for n in 0..6 {
        h.request(s, req(n), 0, &[n]);
    }
    for (i, r) in rs.iter().enumerate() {
        let frames = h.take(*r);
        let ids: Vec<_> = frames.iter().map(|f| f.header.request_id).collect();
        assert_eq!(ids, vec![req(i as u8), req(i as u8 + 3)], "receiver {i}");
    }
    // Windows are full: the next one waits, FIFO, for the first slot to free.
    h.request(s, req(10), 0, b"");
    h.request(s, req(11), 0, b"");
    assert_eq!(h.stats().pending_requests, 2);
    h.respond(rs[1], req(1), b"");
    assert_eq!(h.expect_one(s).header.request_id, req(1));
    assert_eq!(h.expect_one(rs[1]).header.request_id, req(10));
    h.respond(rs[0], req(0), b"");
    assert_eq!(h.expect_one(rs[0]).header.request_id, req(11));
    assert_eq!(h.stats().pending_requests, 0);
}

#[test]
fn streamed_request_waits_then_flows_in_order_and_response_streams_back() {
    let mut h = Harness::new();
    let (s, rs) = setup(&mut h, 1, 0);
    let r = rs[0];
    h.stream(s, FrameType::Start, Flags::REQUEST, req(1), 0, false, b"a");
    h.stream(s, FrameType::Chunk, Flags::REQUEST, req(1), 1, false, b"b");
    assert!(h.stats().buffered_bytes > 0, "held frames are counted");
    h.expect_nothing(r);
    h.receive(r, 1);
    h.stream(s, FrameType::End, Flags::REQUEST, req(1), 2, true, b"c");
    let frames = h.take(r);
    let bodies: Vec<_> = frames
        .iter()
        .map(|f| (f.header.frame_type, f.header.sequence, &f.payload[..]))
        .collect();
    assert_eq!(
        bodies,
        vec![
            (FrameType::Start, 0, &b"a"[..]),
            (FrameType::Chunk, 1, b"b"),
            (FrameType::End, 2, b"c")
        ]
    );
    assert!(frames[2].header.is_final);
    // Response may stream in several frames.
    h.stream(r, FrameType::Start, Flags::RESPONSE, req(1), 0, false, b"x");
    h.stream(r, FrameType::Chunk, Flags::RESPONSE, req(1), 1, false, b"y");
    h.stream(r, FrameType::End, Flags::RESPONSE, req(1), 2, true, b"");
    let back: Vec<_> = h.take(s).iter().map(|f| f.header.frame_type).collect();
    assert_eq!(
        back,
        vec![FrameType::Start, FrameType::Chunk, FrameType::End]
    );
    assert_eq!(h.stats().buffered_bytes, 0);
    assert_eq!(h.stats().assignments, 0);
}

#[test]
fn no_receiver_in_time_is_no_receiver_and_no_wait_fails_at_once() {
    let mut h = Harness::new();
    let (s, _) = setup(&mut h, 0, 0);
    h.request(s, req(1), 250, b"x");
    h.advance(249);
    h.expect_nothing(s);
    h.advance(1);
    h.expect_error(s, ErrorCode::NoReceiver, req(1));
    assert_eq!(h.stats().timeouts, 1);

    let header = crate::protocol::Header {
        flags: Flags::REQUEST | Flags::NO_WAIT,
        channel_id: channel(1),
        request_id: req(2),
        is_final: true,
        ..crate::protocol::Header::new(FrameType::Start)
    };
    h.send(s, header, b"x");
    h.expect_error(s, ErrorCode::NoReceiver, req(2));
    let st = h.stats();
    assert_eq!(
        (st.pending_requests, st.armed_timers, st.buffered_bytes),
        (0, 0, 0)
    );
}

#[test]
fn zero_timeout_means_the_default_and_huge_ones_are_clamped() {
    let config = RouterConfig {
        default_timeout: Duration::from_millis(100),
        max_timeout: Duration::from_millis(1_000),
        ..quiet()
    };
    let mut h = Harness::with_config(config);
    let (s, _) = setup(&mut h, 0, 0);
    h.request(s, req(1), 0, b"");
    h.request(s, req(2), u32::MAX, b"");
    h.advance(100);
    h.expect_error(s, ErrorCode::NoReceiver, req(1));
    h.advance(899);
    h.expect_nothing(s);
    h.advance(1);
    h.expect_error(s, ErrorCode::NoReceiver, req(2));
}

#[test]
fn slow_response_times_out_cancels_the_receiver_and_late_frames_are_dropped() {
    let mut h = Harness::new();
    let (s, rs) = setup(&mut h, 1, 1);
    let r = rs[0];
    h.request(s, req(1), 100, b"x");
    h.take(r);
    h.stream(
        r,
        FrameType::Start,
        Flags::RESPONSE,
        req(1),
        0,
        false,
        b"partial",
    );
    h.take(s);
    h.advance(100);
    h.expect_error(s, ErrorCode::Timeout, req(1));
    let cancel = h.expect_cancel(r, req(1));
    assert_eq!(cancel.header.client_id, client(0));
    // The late end is dropped, counted and answered; the sender sees nothing of it.
    h.stream(r, FrameType::End, Flags::RESPONSE, req(1), 1, true, b"late");
    h.expect_error(r, ErrorCode::UnknownRequest, req(1));
    h.expect_nothing(s);
    assert_eq!(h.stats().late_frames_dropped, 1);
    // The receiver's slot is free again.
    h.request(s, req(2), 100, b"y");
    assert_eq!(h.expect_one(r).header.request_id, req(2));
}

#[test]
fn receiver_gone_mid_request_is_peer_gone_and_never_redelivered() {
    let mut h = Harness::new();
    let (s, rs) = setup(&mut h, 2, 1);
    h.request(s, req(1), 1_000, b"x");
    h.take(rs[0]);
    h.disconnect(rs[0]);
    let frames = h.take(s);
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert!(frames
        .iter()
        .any(|f| f.header.frame_type == FrameType::PeerLeft));
    let err = frames
        .iter()
        .find(|f| f.header.frame_type == FrameType::Error)
        .unwrap();
    let body = crate::protocol::ErrorBody::decode(&err.payload).unwrap();
    assert_eq!(body.known_code(), Some(ErrorCode::PeerGone));
    // At most once: the other receiver never gets it.
    let other = h.take(rs[1]);
    assert!(
        other
            .iter()
            .all(|f| f.header.frame_type == FrameType::PeerLeft),
        "{other:?}"
    );
    assert_eq!(h.stats().assignments, 0);
}

#[test]
fn sender_gone_cancels_assigned_and_drops_waiting() {
    let mut h = Harness::new();
    let (s, rs) = setup(&mut h, 1, 1);
    let r = rs[0];
    h.request(s, req(1), 1_000, b"x");
    h.request(s, req(2), 1_000, b"y");
    h.take(r);
    assert_eq!(h.stats().pending_requests, 1);
    h.disconnect(s);
    let frames = h.take(r);
    let kinds: Vec<_> = frames
        .iter()
        .map(|f| (f.header.frame_type, f.header.request_id))
        .collect();
    assert!(kinds.contains(&(FrameType::Cancel, req(1))), "{kinds:?}");
    assert!(
        !kinds.iter().any(|(_, id)| *id == req(2)),
        "the waiting one is never delivered: {kinds:?}"
    );
    let st = h.stats();
    assert_eq!(
        (st.pending_requests, st.assignments, st.armed_timers),
        (0, 0, 0)
    );
}

#[test]
fn cancels_from_either_side() {
    let mut h = Harness::new();
    let (s, rs) = setup(&mut h, 1, 1);
    let r = rs[0];
    h.request(s, req(1), 1_000, b"x");
    h.take(r);
    h.control(s, FrameType::Cancel, Flags::REQUEST, req(1));
    h.expect_cancel(r, req(1));
    h.expect_nothing(s);

    h.request(s, req(2), 1_000, b"x");
    h.take(r);
    h.control(r, FrameType::Cancel, Flags::RESPONSE, req(2));
    let cancel = h.expect_cancel(s, req(2));
    assert_eq!(cancel.header.client_id, client(1));

    // A waiting request can be cancelled too.
    h.receive(r, 0);
    h.request(s, req(3), 1_000, b"x");
    h.control(s, FrameType::Cancel, Flags::REQUEST, req(3));
    let st = h.stats();
    assert_eq!(
        (st.pending_requests, st.assignments, st.armed_timers),
        (0, 0, 0)
    );
    h.receive(r, 1);
    h.expect_nothing(r);
}

#[test]
fn foreign_unknown_and_unassigned_request_ids_are_refused_without_harm() {
    let mut h = Harness::new();
    let (s, rs) = setup(&mut h, 2, 1);
    h.request(s, req(1), 1_000, b"x");
    h.take(rs[0]);
    // Chunk before start / for an unknown id.
    h.stream(s, FrameType::Chunk, Flags::REQUEST, req(9), 1, false, b"");
    h.expect_error(s, ErrorCode::UnknownRequest, req(9));
    // Another connection pushing frames into someone else's request.
    h.stream(rs[1], FrameType::End, Flags::REQUEST, req(1), 1, true, b"");
    h.expect_error(rs[1], ErrorCode::UnknownRequest, req(1));
    // A response from a receiver the request was not assigned to.
    h.respond(rs[1], req(1), b"forged");
    h.expect_error(rs[1], ErrorCode::UnknownRequest, req(1));
    h.expect_nothing(s);
    h.expect_nothing(rs[0]);
    // A duplicate start: the same sender reusing its own id in flight (another connection's
    // reuse is its own request: `scope.rs`).
    h.request(s, req(1), 1_000, b"dup");
    h.expect_error(s, ErrorCode::DuplicateRequest, req(1));
    h.expect_nothing(rs[0]);
    // The real request still completes.
    h.respond(rs[0], req(1), b"ok");
    assert_eq!(&h.expect_one(s).payload[..], b"ok");
}

#[test]
fn out_of_order_frames_abort_the_request() {
    let mut h = Harness::new();
    let (s, rs) = setup(&mut h, 1, 1);
    let r = rs[0];
    h.stream(s, FrameType::Start, Flags::REQUEST, req(1), 0, false, b"a");
    h.take(r);
    h.stream(s, FrameType::Chunk, Flags::REQUEST, req(1), 5, false, b"b");
    h.expect_error(s, ErrorCode::StreamOrder, req(1));
    h.expect_cancel(r, req(1));

    h.request(s, req(2), 1_000, b"x");
    h.take(r);
    h.stream(
        r,
        FrameType::Chunk,
        Flags::RESPONSE,
        req(2),
        0,
        false,
        b"no start",
    );
    h.expect_error(r, ErrorCode::StreamOrder, req(2));
    h.expect_cancel(s, req(2));

    // A chunk claiming to be final, and a start with a sequence number, are out of order too.
    h.request(s, req(3), 1_000, b"x");
    h.take(r);
    h.stream(r, FrameType::Start, Flags::RESPONSE, req(3), 0, false, b"");
    h.stream(r, FrameType::Chunk, Flags::RESPONSE, req(3), 1, true, b"");
    h.take(s);
    h.expect_error(r, ErrorCode::StreamOrder, req(3));
    h.stream(s, FrameType::Start, Flags::REQUEST, req(4), 3, true, b"");
    h.expect_error(s, ErrorCode::StreamOrder, req(4));
    let st = h.stats();
    assert_eq!((st.assignments, st.armed_timers), (0, 0));
}

#[test]
fn a_client_can_serve_its_own_requests() {
    let mut h = Harness::new();
    let ch = channel(1);
    let a = h.join_quietly(ch, client(1), &[]);
    h.receive(a, 1);
    h.request(a, req(1), 1_000, b"self");
    assert_eq!(h.expect_one(a).header.client_id, client(1));
    h.respond(a, req(1), b"served");
    assert_eq!(&h.expect_one(a).payload[..], b"served");
    h.request(a, req(2), 1_000, b"again");
    h.take(a);
    h.disconnect(a);
    h.assert_empty();
}

#[test]
fn channels_never_see_each_other() {
    let mut h = Harness::new();
    let s1 = h.join_quietly(channel(1), client(1), &[]);
    let r2 = h.join_quietly(channel(2), client(2), &[]);
    h.receive(r2, 10);
    h.request(s1, req(1), 50, b"x");
    h.expect_nothing(r2);
    h.advance(50);
    h.expect_error(s1, ErrorCode::NoReceiver, req(1));
}

#[test]
fn waiting_queue_is_bounded_per_channel() {
    let config = RouterConfig {
        max_waiting_per_channel: 3,
        ..quiet()
    };
    let mut h = Harness::with_config(config);
    let (s, _) = setup(&mut h, 0, 0);
    for n in 0..3 {
        h.request(s, req(n), 1_000, b"");
    }
    h.request(s, req(3), 1_000, b"");
    h.expect_error(s, ErrorCode::LimitExceeded, req(3));
    assert_eq!(h.stats().pending_requests, 3);
}

#[test]
fn lowering_the_window_stops_new_assignments_only() {
    let mut h = Harness::new();
    let (s, rs) = setup(&mut h, 1, 2);
    let r = rs[0];
    h.request(s, req(1), 1_000, b"");
    h.take(r);
    h.receive(r, 0);
    h.request(s, req(2), 1_000, b"");
    h.expect_nothing(r);
    h.respond(r, req(1), b"done");
    assert_eq!(h.expect_one(s).header.request_id, req(1));
    h.expect_nothing(r);
    h.receive(r, 1);
    assert_eq!(h.expect_one(r).header.request_id, req(2));
}

#[test]
fn everything_is_freed_when_everyone_leaves() {
    let mut h = Harness::new();
    let (s, rs) = setup(&mut h, 2, 1);
    h.request(s, req(1), 1_000, b"x");
    h.request(s, req(2), 1_000, b"y");
    h.request(s, req(3), 1_000, b"z");
    h.disconnect(rs[0]);
    h.disconnect(s);
    h.disconnect(rs[1]);
    h.assert_empty();
}
