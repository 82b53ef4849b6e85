//! Broadcast: snapshot, per-peer streams, acks, failures, timeouts.

use super::harness::*;
use crate::ids::ConnId;
use crate::protocol::{decode_u32, ErrorCode, Flags, FrameType};
use crate::router::RouterConfig;

const B: Flags = Flags::REQUEST.union(Flags::BROADCAST);

fn channel_of(h: &mut Harness, n: usize) -> Vec<ConnId> {
    let mut all = Vec::new();
    for i in 0..n {
        let c = h.join_quietly(channel(1), client(i as u8), &all);
        all.push(c);
    }
    all
}

fn ack(h: &mut Harness, conn: ConnId, n: u8) {
    h.control(conn, FrameType::Ack, Flags::BROADCAST, req(n));
}

#[test]
fn every_other_peer_gets_its_copy_and_the_sender_one_ack() {
    let mut h = Harness::new();
    let all = channel_of(&mut h, 4);
    let (s, peers) = (all[0], &all[1..]);
    h.stream(s, FrameType::Start, B, req(1), 0, false, b"he");
    h.stream(s, FrameType::End, B, req(1), 1, true, b"llo");
    h.expect_nothing(s);
    for p in peers {
        let frames = h.take(*p);
        assert_eq!(frames.len(), 2);
        assert!(frames
            .iter()
            .all(|f| f.header.client_id == client(0) && f.header.flags == B));
        assert!(frames[1].header.is_final);
    }
    ack(&mut h, peers[0], 1);
    ack(&mut h, peers[1], 1);
    h.expect_nothing(s);
    ack(&mut h, peers[2], 1);
    let done = h.expect_one(s);
    assert_eq!(done.header.frame_type, FrameType::Ack);
    assert_eq!(decode_u32(&done.payload), Ok(3));
    let st = h.stats();
    assert_eq!((st.broadcasts, st.armed_timers), (0, 0));
}

#[test]
fn no_peers_is_an_error_at_once() {
    let mut h = Harness::new();
    let all = channel_of(&mut h, 1);
    h.stream(all[0], FrameType::Start, B, req(1), 0, true, b"x");
    h.expect_error(all[0], ErrorCode::NoPeers, req(1));
    assert_eq!(h.stats().broadcasts, 0);
}

#[test]
fn snapshot_is_taken_at_the_start() {
    let mut h = Harness::new();
    let all = channel_of(&mut h, 2);
    h.stream(all[0], FrameType::Start, B, req(1), 0, false, b"x");
    assert_eq!(h.take(all[1]).len(), 1);
    let late = h.join_quietly(channel(1), client(9), &all);
    h.stream(all[0], FrameType::End, B, req(1), 1, true, b"");
    h.expect_nothing(late);
    assert_eq!(h.take(all[1]).len(), 1);
    ack(&mut h, all[1], 1);
    assert_eq!(decode_u32(&h.expect_one(all[0]).payload), Ok(1));
    // A stranger's ack is refused.
    ack(&mut h, late, 1);
    h.expect_error(late, ErrorCode::UnknownRequest, req(1));
}

#[test]
fn timeout_names_the_peers_that_did_not_ack_and_cancels_them() {
    let mut h = Harness::new();
    let all = channel_of(&mut h, 3);
    let s = all[0];
    let header = crate::protocol::Header {
        flags: B,
        channel_id: channel(1),
        request_id: req(1),
        timeout_ms: 200,
        is_final: true,
        ..crate::protocol::Header::new(FrameType::Start)
    };
    h.send(s, header, b"x");
    h.take(all[1]);
    h.take(all[2]);
    ack(&mut h, all[1], 1);
    h.advance(200);
    let body = h.expect_error(s, ErrorCode::BroadcastIncomplete, req(1));
    assert_eq!(body.peers, vec![client(2)]);
    h.expect_cancel(all[2], req(1));
    h.expect_nothing(all[1]);
    assert_eq!(h.stats().broadcasts, 0);
}

#[test]
fn a_peer_leaving_fails_it_without_waiting_for_the_timeout() {
    let mut h = Harness::new();
    let all = channel_of(&mut h, 3);
    h.stream(all[0], FrameType::Start, B, req(1), 0, true, b"x");
    h.take(all[1]);
    ack(&mut h, all[1], 1);
    h.disconnect(all[2]);
    let frames = h.take(all[0]);
    let err = frames
        .iter()
        .find(|f| f.header.frame_type == FrameType::Error)
        .expect("error");
    let body = crate::protocol::ErrorBody::decode(&err.payload).unwrap();
    assert_eq!(body.known_code(), Some(ErrorCode::BroadcastIncomplete));
    assert_eq!(body.peers, vec![client(2)]);
    assert_eq!(h.stats().broadcasts, 0);
}

#[test]
fn sender_leaving_or_cancelling_cancels_the_peers() {
    let mut h = Harness::new();
    let all = channel_of(&mut h, 3);
    h.stream(all[0], FrameType::Start, B, req(1), 0, false, b"x");
    h.control(all[0], FrameType::Cancel, B, req(1));
    for p in &all[1..] {
        let frames = h.take(*p);
        assert_eq!(frames.last().unwrap().header.frame_type, FrameType::Cancel);
    }
    h.stream(all[0], FrameType::Start, B, req(2), 0, false, b"x");
    h.disconnect(all[0]);
    for p in &all[1..] {
        let frames = h.take(*p);
        assert!(frames
            .iter()
            .any(|f| f.header.frame_type == FrameType::Cancel && f.header.request_id == req(2)));
    }
    assert_eq!(h.stats().broadcasts, 0);
}

#[test]
fn early_ack_and_out_of_order_frames_are_refused() {
    let mut h = Harness::new();
    let all = channel_of(&mut h, 2);
    h.stream(all[0], FrameType::Start, B, req(1), 0, false, b"x");
    h.take(all[1]);
    ack(&mut h, all[1], 1);
    h.expect_error(all[1], ErrorCode::StreamOrder, req(1));
    h.stream(all[0], FrameType::Chunk, B, req(1), 7, false, b"x");
    h.expect_error(all[0], ErrorCode::StreamOrder, req(1));
    h.expect_cancel(all[1], req(1));
    assert_eq!(h.stats().broadcasts, 0);
}

#[test]
fn a_stuck_peer_is_dropped_and_never_delays_the_others() {
    let config = RouterConfig {
        high_watermark: 1_000,
        low_watermark: 100,
        ..quiet()
    };
    let mut h = Harness::with_config(config);
    let all = channel_of(&mut h, 3);
    let (s, fast, stuck) = (all[0], all[1], all[2]);
    h.stall(stuck);
    h.stream(s, FrameType::Start, B, req(1), 0, false, &[0; 600]);
    h.stream(s, FrameType::Chunk, B, req(1), 1, false, &[1; 600]);
    // The stuck peer is now over the mark: the next frame drops it instead of piling up.
    h.stream(s, FrameType::Chunk, B, req(1), 2, false, &[2; 600]);
    h.stream(s, FrameType::End, B, req(1), 3, true, b"");
    assert!(
        !h.router.is_read_paused(s),
        "a broadcast never pauses its sender"
    );
    assert_eq!(h.take(fast).len(), 4);
    ack(&mut h, fast, 1);
    let body = h.expect_error(s, ErrorCode::BroadcastIncomplete, req(1));
    assert_eq!(body.peers, vec![client(2)]);
    let queued = h.router.queued_bytes(stuck);
    assert!(queued < 2 * 1_000, "bounded: {queued}");
    h.unstall(stuck);
    let frames = h.take(stuck);
    assert_eq!(frames.last().unwrap().header.frame_type, FrameType::Cancel);
}
