//! Mass cleanup: many senders with many requests in flight to one receiver leave together.
//! Ending their requests is O(what is freed) and spread over loop turns (one budget per
//! instant), so no single input blocks the loop; a broker-wide cap bounds requests in flight.

use super::harness::*;
use crate::protocol::{ErrorCode, FrameType};
use crate::router::lifecycle::CLEANUP_PER_TURN;
use crate::router::RouterConfig;

const SENDERS: u8 = 20;
const PER_SENDER: u16 = 100;

fn rid(sender: u8, n: u16) -> crate::ids::RequestId {
    let mut bytes = [0x5A; 16];
    bytes[0] = sender;
    bytes[1..3].copy_from_slice(&n.to_be_bytes());
    crate::ids::RequestId::from_bytes(bytes)
}

#[test]
fn senders_leaving_together_are_cleaned_up_a_budget_per_turn() {
    let mut h = Harness::new();
    let r = h.join_quietly(channel(1), client(200), &[]);
    h.receive(r, u32::from(SENDERS) * u32::from(PER_SENDER));
    let mut senders = Vec::new();
    for s in 0..SENDERS {
        let others: Vec<_> = std::iter::once(r).chain(senders.iter().copied()).collect();
        senders.push(h.join_quietly(channel(1), client(s), &others));
    }
    for (s, conn) in senders.iter().enumerate() {
        for n in 0..PER_SENDER {
            h.request(*conn, rid(s as u8, n), 3_600_000, b"x");
        }
    }
    let total = usize::from(SENDERS) * usize::from(PER_SENDER);
    assert_eq!(h.stats().assignments, total);
    h.take(r);
    // All leave at the same instant: one loop turn.
    for s in &senders {
        h.disconnect(*s);
    }
    let st = h.stats();
    assert_eq!(
        total - st.assignments,
        CLEANUP_PER_TURN,
        "one turn ends one budget of streams, whatever the number of departures"
    );
    assert_eq!(st.pending_cleanup, st.assignments);
    assert_eq!(
        h.router.poll_timeout(),
        Some(h.now),
        "more work: come back at once"
    );
    let mut turns = 1;
    while h.stats().pending_cleanup > 0 {
        let before = h.stats().assignments;
        h.advance(1);
        assert!(before - h.stats().assignments <= CLEANUP_PER_TURN);
        turns += 1;
    }
    assert_eq!(turns, total.div_ceil(CLEANUP_PER_TURN));
    assert_eq!(h.stats().assignments, 0);
    let cancels = h
        .take(r)
        .iter()
        .filter(|f| f.header.frame_type == FrameType::Cancel)
        .count();
    assert_eq!(cancels, total, "every request's receiver is told");
    h.disconnect(r);
    h.assert_empty();
}

#[test]
fn a_receiver_leaving_is_cleaned_up_over_turns_and_its_senders_get_peer_gone() {
    let mut h = Harness::new();
    let s = h.join_quietly(channel(1), client(0), &[]);
    let r = h.join_quietly(channel(1), client(1), &[s]);
    let n = (CLEANUP_PER_TURN * 2 + 10) as u16;
    h.receive(r, u32::from(n));
    for i in 0..n {
        h.request(s, rid(0, i), 3_600_000, b"x");
    }
    h.disconnect(r);
    h.take(s);
    assert!(h.stats().pending_cleanup > 0);
    while h.stats().pending_cleanup > 0 {
        h.advance(1);
    }
    h.take(s);
    assert_eq!(h.stats().assignments, 0);
    // The sender may start again at once: its in-flight count is back to zero.
    h.request(s, rid(1, 0), 100, b"y");
    h.advance(100);
    h.expect_error(s, ErrorCode::NoReceiver, rid(1, 0));
    h.disconnect(s);
    h.assert_empty();
}

#[test]
fn the_broker_wide_in_flight_cap_refuses_one_more_start() {
    let mut h = Harness::with_config(RouterConfig {
        max_requests_in_flight: 3,
        ..quiet()
    });
    let a = h.join_quietly(channel(1), client(0), &[]);
    let b = h.join_quietly(channel(2), client(1), &[]);
    h.request(a, rid(0, 0), 1_000, b"x");
    h.request(a, rid(0, 1), 1_000, b"x");
    h.request(b, rid(1, 0), 1_000, b"x");
    h.request(b, rid(1, 1), 1_000, b"x");
    let body = h.expect_error(b, ErrorCode::LimitExceeded, rid(1, 1));
    assert!(body.message.contains("broker"), "{}", body.message);
    assert_eq!(h.stats().pending_requests, 3);
    h.advance(1_000);
    h.take(a);
    h.take(b);
    h.disconnect(a);
    h.disconnect(b);
    h.assert_empty();
}
