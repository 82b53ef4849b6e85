//! Flow control: watermarks between producers and consumers, held bytes of waiting requests.

use super::harness::*;
use crate::protocol::{Flags, FrameType, Header};
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
    let (s, r) = h.stalled_pair();
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
    let (s, r) = h.stalled_pair();
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

#[test]
fn a_client_that_never_reads_its_answers_is_paused_at_the_high_mark() {
    // PINGs and NO_WAIT requests nobody can take: every frame is answered to its own sender
    // (PONG, ERROR NO_RECEIVER), which reads nothing. Its queue must stop at the high mark
    // plus one answer, with its reading paused, and resume below the low mark.
    let mut h = Harness::with_config(small_marks());
    let c = h.join_quietly(channel(1), client(0), &[]);
    h.stall(c);
    let mut sent = 0u8;
    while !h.router.is_read_paused(c) {
        if sent.is_multiple_of(2) {
            let header = Header {
                channel_id: h.channel_of(c),
                sequence: u32::from(sent),
                ..Header::new(FrameType::Ping)
            };
            h.send(c, header, &[]);
        } else {
            h.stream(
                c,
                FrameType::Start,
                Flags::REQUEST | Flags::NO_WAIT,
                req(sent),
                0,
                true,
                b"x",
            );
        }
        sent += 1;
        assert!(sent < 250, "never paused");
    }
    let st = h.stats();
    assert_eq!(st.paused_connections, 1);
    assert!(h.router.queued_bytes(c) <= 10_000 + 200, "{st:?}");
    h.resumed.clear();
    h.unstall(c);
    assert_eq!(h.resumed, vec![c]);
    assert!(!h.router.is_read_paused(c));
    let answers = h.take(c);
    assert_eq!(answers.len(), usize::from(sent));
    h.disconnect(c);
    h.assert_empty();
}

/// Regression (found by the soak run with `--tls`): a write that failed after earlier writes of
/// the same flush had taken bytes lost their count, so `buffered_bytes` kept them forever after
/// the connection closed (a TLS session takes at most 64 KiB per call, so a peer reset in the
/// middle of a large response did it: the gauge stuck at 2 x 64 KiB). With the byte seam each
/// write is reported by `handle_written` as it happens; the I/O layer reports two writes of
/// 1 000 bytes, then its third write fails and it closes the connection.
#[test]
fn bytes_written_before_a_write_error_leave_the_buffered_count() {
    let mut h = Harness::new();
    let (s, r) = h.stalled_pair();
    h.request(s, req(1), 10_000, &[7; 4_000]);
    let queued = h.router.queued_bytes(r);
    assert!(queued > 2_000, "the request is queued to the receiver");
    for _ in 0..2 {
        let lent = h.router.poll_transmit(r).map(|t| t.len());
        assert!(lent.is_some_and(|n| n > 1_000), "more to write");
        h.router.handle_written(r, 1_000);
    }
    // The third write fails (peer reset): nothing more is reported.
    assert_eq!(h.router.queued_bytes(r), queued - 2_000);
    // Checks that the buffered count equals what the queues hold (it was 2 000 more).
    h.router.check_invariants();
    assert_eq!(h.stats().buffered_bytes, queued - 2_000);
    h.disconnect(r);
    h.disconnect(s);
    h.assert_empty();
}
