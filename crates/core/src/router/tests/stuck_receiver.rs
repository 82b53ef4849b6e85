//! A stuck receiver (a huge window, never reads): it takes no new request while its queue is
//! over the high watermark, and the frames of its requests that ended leave its queue unsent.

use super::harness::*;
use crate::protocol::{FrameType, HEADER_LEN};
use crate::router::RouterConfig;

const HIGH: usize = 10_000;
const LOW: usize = 2_000;
const BODY: usize = 6_000;

fn marks() -> RouterConfig {
    RouterConfig {
        high_watermark: HIGH,
        low_watermark: LOW,
        max_held_bytes: 1 << 20,
        ..quiet()
    }
}

#[test]
fn a_receiver_over_the_high_watermark_takes_no_request_until_written_down() {
    let mut h = Harness::with_config(marks());
    let s = h.join_quietly(channel(1), client(0), &[]);
    let stuck = h.join_quietly(channel(1), client(1), &[s]);
    let ok = h.join_quietly(channel(1), client(2), &[s, stuck]);
    h.receive(stuck, 1_000_000);
    h.stall(stuck);
    h.receive(ok, 1_000_000);
    let mut served = 0;
    for n in 0..40u8 {
        h.request(s, req(n), 100, &[n; BODY]);
        // The healthy receiver answers at once.
        for frame in h.take(ok) {
            if frame.header.frame_type == FrameType::Start {
                h.respond(ok, frame.header.request_id, b"ok");
                served += 1;
            }
        }
        assert!(
            h.router.queued_bytes(stuck) <= HIGH + HEADER_LEN + BODY,
            "the stuck receiver's queue outgrew the watermark plus one frame: {}",
            h.router.queued_bytes(stuck)
        );
    }
    assert!(served >= 38, "the healthy receiver took the rest: {served}");
    h.take(s);
    // Its requests time out: their frames, never started on the wire, leave its queue.
    h.advance(200);
    assert_eq!(h.router.queued_bytes(stuck), 0, "dead frames dropped");
    assert!(h.stats().dead_bytes_dropped > 0);
    // Emptied by a purge, not by writes: still not ready.
    h.take(s);
    h.request(s, req(100), 100, b"x");
    let frames = h.take(ok);
    assert_eq!(frames.len(), 1, "{frames:?}");
    h.respond(ok, req(100), b"ok");
    // A frame written to it (here: a PONG) shows it reads again: ready again.
    h.send(
        stuck,
        crate::protocol::Header {
            channel_id: channel(1),
            sequence: 7,
            ..crate::protocol::Header::new(FrameType::Ping)
        },
        b"",
    );
    h.unstall(stuck);
    h.take(stuck);
    h.take(s);
    h.request(s, req(101), 100, b"y");
    h.request(s, req(102), 100, b"z");
    let to_stuck = h.take(stuck);
    let to_ok = h.take(ok);
    assert_eq!((to_stuck.len(), to_ok.len()), (1, 1), "round robin again");
}

#[test]
fn frames_of_an_ended_request_leave_the_queue_unless_started_on_the_wire() {
    let mut h = Harness::with_config(marks());
    let s = h.join_quietly(channel(1), client(0), &[]);
    let r = h.join_quietly(channel(1), client(1), &[s]);
    h.receive(r, 10);
    h.stall(r);
    h.request(s, req(1), 100, &[1; 500]);
    // The socket took 10 bytes of request 1's START: it must go out whole.
    assert_eq!(write_at_most(&mut h.router, r, 10), 10);
    // Backed up (over the low watermark): what ends is dropped where unsent.
    h.request(s, req(2), 100, &[2; LOW]);
    h.request(s, req(3), 100, &[3; LOW]);
    h.advance(200);
    let errors = h.take(s);
    assert_eq!(errors.len(), 3, "{errors:?}");
    // Request 1: the rest of its START, then its CANCEL. Requests 2 and 3: nothing at all.
    let queued = h.router.queued_bytes(r);
    assert_eq!(queued, HEADER_LEN + 500 - 10 + HEADER_LEN, "{queued}");
    let mut wire = Vec::new();
    write_all_queued(&mut h.router, r, &mut wire);
    assert_eq!(wire.len(), queued);
    h.router.check_invariants();
}
