//! The broker-wide memory budget (`max_buffered_bytes`): over it, a connection whose input adds
//! bytes is paused, new requests get LIMIT_EXCEEDED, and everyone resumes at seven eighths.

use super::harness::*;
use crate::protocol::{ErrorCode, Flags, FrameType};
use crate::router::RouterConfig;

const BUDGET: usize = 20_000;

fn budget() -> RouterConfig {
    RouterConfig {
        max_buffered_bytes: BUDGET,
        high_watermark: 1 << 20,
        low_watermark: 1 << 18,
        max_held_bytes: 1 << 20,
        ..quiet()
    }
}

#[test]
fn over_the_budget_producers_pause_and_new_requests_are_refused_until_it_drains() {
    let mut h = Harness::with_config(budget());
    let s = h.join_quietly(channel(1), client(0), &[]);
    let r = h.join_quietly(channel(1), client(1), &[s]);
    let other = h.join_quietly(channel(2), client(2), &[]);
    h.receive(r, 1);
    h.stall(r);
    // One request streams into a receiver that does not read: past the budget, its sender is
    // paused (without the budget it would go on to the 4 MiB watermark... here 1 MiB).
    h.stream(
        s,
        FrameType::Start,
        Flags::REQUEST,
        req(1),
        0,
        false,
        &[1; 8_000],
    );
    let mut seq = 1;
    while !h.router.is_read_paused(s) {
        h.stream(
            s,
            FrameType::Chunk,
            Flags::REQUEST,
            req(1),
            seq,
            false,
            &[1; 8_000],
        );
        seq += 1;
        assert!(seq < 10, "never paused by the budget");
    }
    let used = h.router.budget_used();
    assert!(used > BUDGET && used <= BUDGET + 8_000 + 64, "{used}");
    assert_eq!(h.stats().budget_paused, 1);
    // Another client's new request: refused, its connection stays open (and, its answer
    // adding to the budget, it is paused too).
    h.request(other, req(2), 1_000, b"x");
    let body = h.expect_error(other, ErrorCode::LimitExceeded, req(2));
    assert!(body.message.contains("budget"), "{}", body.message);
    assert!(h.router.is_read_paused(other));
    // The receiver reads: under seven eighths of the budget both resume.
    h.resumed.clear();
    h.unstall(r);
    assert!(!h.router.is_read_paused(s));
    h.resumed.sort_by_key(|c| c.slot);
    assert_eq!(h.resumed, vec![s, other]);
    assert_eq!(h.stats().budget_paused, 0);
    h.request(other, req(3), 1_000, b"x");
    h.advance(1_000);
    h.expect_error(other, ErrorCode::NoReceiver, req(3));
    h.stream(s, FrameType::End, Flags::REQUEST, req(1), seq, true, b"");
    h.respond(r, req(1), b"done");
    for conn in [s, r, other] {
        h.disconnect(conn);
    }
    h.assert_empty();
}

#[test]
fn over_the_budget_a_broadcast_is_copied_to_nobody_more() {
    let mut h = Harness::with_config(budget());
    let s = h.join_quietly(channel(1), client(0), &[]);
    let a = h.join_quietly(channel(1), client(1), &[s]);
    let b = h.join_quietly(channel(1), client(2), &[s, a]);
    h.stall(a);
    h.stall(b);
    h.stream(
        s,
        FrameType::Start,
        Flags::REQUEST | Flags::BROADCAST,
        req(1),
        0,
        false,
        &[1; 12_000],
    );
    // The second copy took the broker over its budget: the next frame reaches no one.
    h.stream(
        s,
        FrameType::Chunk,
        Flags::REQUEST | Flags::BROADCAST,
        req(1),
        1,
        false,
        &[1; 12_000],
    );
    assert!(h.router.budget_used() <= 2 * (12_000 + 64) + 2 * 64 + 64);
    h.unstall(a);
    h.unstall(b);
    for conn in [a, b] {
        let kinds: Vec<_> = h.take(conn).iter().map(|f| f.header.frame_type).collect();
        assert_eq!(kinds, [FrameType::Start, FrameType::Cancel], "{conn}");
    }
    for conn in [s, a, b] {
        h.disconnect(conn);
    }
    h.assert_empty();
}
