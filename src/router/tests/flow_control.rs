//! Flow control: watermarks between producers and consumers, held bytes of waiting requests.

use super::harness::*;
use crate::protocol::{Flags, FrameType};
use crate::router::RouterConfig;

fn small_marks() -> RouterConfig {
    RouterConfig {
        high_watermark: 10_000,
        low_watermark: 2_000,
        max_held_bytes: 5_000,
        ..quiet()
    }
}

#[test]
fn a_consumer_over_the_high_mark_pauses_its_producer_until_below_the_low_mark() {
    let mut h = Harness::with_config(small_marks());
    let s = h.join_quietly(channel(1), client(0), &[]);
    let r = h.join_quietly(channel(1), client(1), &[s]);
    h.receive(r, 1);
    h.stall(r);
    h.stream(
        s,
        FrameType::Start,
        Flags::REQUEST,
        req(1),
        0,
        false,
        &[0; 4_000],
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
            &[1; 4_000],
        );
        seq += 1;
        assert!(seq < 10, "never paused");
    }
    let st = h.stats();
    assert_eq!(st.paused_connections, 1);
    assert!(st.backpressure_pauses >= 1);
    assert!(h.router.queued_bytes(r) <= 10_000 + 4_100);
    h.resumed.clear();
    h.unstall(r);
    assert_eq!(h.resumed, vec![s]);
    assert!(!h.router.is_read_paused(s));
}

#[test]
fn held_bytes_of_waiting_requests_pause_the_sender_until_assigned() {
    let mut h = Harness::with_config(small_marks());
    let s = h.join_quietly(channel(1), client(0), &[]);
    h.stream(
        s,
        FrameType::Start,
        Flags::REQUEST,
        req(1),
        0,
        false,
        &[0; 3_000],
    );
    assert!(!h.router.is_read_paused(s));
    h.stream(
        s,
        FrameType::Chunk,
        Flags::REQUEST,
        req(1),
        1,
        false,
        &[0; 3_000],
    );
    assert!(h.router.is_read_paused(s));
    assert!(h.stats().buffered_bytes >= 6_000);
    let r = h.join_quietly(channel(1), client(1), &[s]);
    h.resumed.clear();
    h.receive(r, 1);
    assert_eq!(h.resumed, vec![s]);
    assert_eq!(h.take(r).len(), 2);
}

#[test]
fn a_departing_consumer_releases_its_waiting_producers() {
    let mut h = Harness::with_config(small_marks());
    let s = h.join_quietly(channel(1), client(0), &[]);
    let r = h.join_quietly(channel(1), client(1), &[s]);
    h.receive(r, 1);
    h.stall(r);
    h.stream(
        s,
        FrameType::Start,
        Flags::REQUEST,
        req(1),
        0,
        false,
        &[0; 12_000],
    );
    assert!(h.router.is_read_paused(s));
    h.disconnect(r);
    assert!(!h.router.is_read_paused(s));
    h.disconnect(s);
    h.assert_empty();
}
