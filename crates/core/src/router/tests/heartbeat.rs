//! Heartbeats: silent connections are pinged and closed; busy and answering ones never are.

use super::harness::*;
use crate::protocol::{ErrorCode, FrameType, Header};
use crate::router::RouterConfig;
use std::time::Duration;

fn beating() -> RouterConfig {
    RouterConfig {
        heartbeat_interval: Duration::from_millis(1_000),
        heartbeat_misses: 2,
        ..quiet()
    }
}

#[test]
fn welcome_announces_the_interval() {
    let mut h = Harness::with_config(beating());
    let (a, welcome) = h.join(channel(1), client(1));
    assert_eq!(welcome.heartbeat_ms, 1_000);
    h.disconnect(a);
    h.assert_empty();
}

#[test]
fn a_silent_connection_is_pinged_then_closed_and_its_peers_told() {
    let mut h = Harness::with_config(beating());
    let (a, _) = h.join(channel(1), client(1));
    let b = h.join_quietly(channel(1), client(2), &[a]);
    let pong = Header {
        channel_id: channel(1),
        ..Header::new(FrameType::Pong)
    };
    // `a` speaks every 500 ms; `b` never does. Its pings go out at 1 s and 2 s; at 3 s it is
    // closed: interval × (misses + 1).
    let mut b_frames = Vec::new();
    for half_seconds in 1..=5 {
        h.advance(500);
        h.send(a, pong, b"");
        b_frames.extend(
            h.take(b)
                .into_iter()
                .map(|f| (half_seconds, f.header.frame_type, f.header.sequence)),
        );
    }
    assert_eq!(
        b_frames,
        vec![(2, FrameType::Ping, 1), (4, FrameType::Ping, 2)]
    );
    h.advance(499);
    h.expect_nothing(b);
    h.advance(1);
    h.expect_closed_with(b, ErrorCode::HeartbeatTimeout);
    let frames = h.take(a);
    assert!(
        frames
            .iter()
            .any(|f| f.header.frame_type == FrameType::PeerLeft),
        "{frames:?}"
    );
    assert!(
        frames
            .iter()
            .all(|f| f.header.frame_type != FrameType::Ping),
        "a was never silent"
    );
    h.disconnect(a);
    h.assert_empty();
}

#[test]
fn answering_every_ping_keeps_a_connection_alive() {
    let mut h = Harness::with_config(beating());
    let (a, _) = h.join(channel(1), client(1));
    let pong = Header {
        channel_id: channel(1),
        ..Header::new(FrameType::Pong)
    };
    for _ in 0..20 {
        h.advance(1_000);
        let ping = h.expect_one(a);
        assert_eq!(ping.header.frame_type, FrameType::Ping);
        h.send(
            a,
            Header {
                sequence: ping.header.sequence,
                ..pong
            },
            b"",
        );
    }
    assert!(!h.closed.contains(&a));
}

#[test]
fn a_busy_connection_is_never_pinged() {
    let mut h = Harness::with_config(beating());
    let (a, _) = h.join(channel(1), client(1));
    for _ in 0..100 {
        h.advance(400);
        h.receive(a, 0);
    }
    h.expect_nothing(a);
    assert!(!h.closed.contains(&a));
    assert_eq!(
        h.stats().armed_timers,
        1,
        "one heartbeat timer, re-armed, never more"
    );
}

#[test]
fn a_connection_that_never_says_hello_is_closed_too() {
    let mut h = Harness::with_config(beating());
    let conn = h.connect();
    h.advance(1_000);
    h.advance(1_000);
    let pings = h.take(conn);
    assert_eq!(pings.len(), 2);
    h.advance(1_000);
    h.expect_closed_with(conn, ErrorCode::HeartbeatTimeout);
    h.assert_empty();
}

#[test]
fn heartbeats_can_be_turned_off() {
    let mut h = Harness::with_config(RouterConfig {
        heartbeat_interval: Duration::ZERO,
        ..beating()
    });
    let (a, welcome) = h.join(channel(1), client(1));
    assert_eq!(welcome.heartbeat_ms, 0);
    h.advance(100_000);
    h.expect_nothing(a);
    assert_eq!(h.stats().armed_timers, 0);
}

/// `beating()` with small watermarks and held-bytes limit, so pauses come quickly.
fn beating_small_marks() -> RouterConfig {
    RouterConfig {
        high_watermark: 10_000,
        low_watermark: 2_000,
        max_held_bytes: 5_000,
        ..beating()
    }
}

/// PINGs from `conn`, which reads nothing, until its unread PONGs pause its reading.
fn ping_until_paused(h: &mut Harness, conn: crate::ids::ConnId) {
    h.stall(conn);
    let mut sequence = 0;
    while !h.router.is_read_paused(conn) {
        sequence += 1;
        let ping = Header {
            channel_id: h.channel_of(conn),
            sequence,
            ..Header::new(FrameType::Ping)
        };
        h.send(conn, ping, b"");
        assert!(sequence < 1_000, "never paused");
    }
}

#[test]
fn a_paused_connection_that_takes_nothing_is_closed_one_that_takes_bytes_is_not() {
    let mut h = Harness::with_config(beating_small_marks());
    let stuck = h.join_quietly(channel(1), client(1), &[]);
    let slow = h.join_quietly(channel(2), client(2), &[]);
    ping_until_paused(&mut h, stuck);
    ping_until_paused(&mut h, slow);
    // `slow` takes 128 bytes of its queue every 900 ms — too little to get below the low
    // mark, enough to show it is alive. `stuck` takes nothing: closed after interval ×
    // (misses + 1) = 3 s, like a silent connection.
    for step in 1..=120 {
        h.advance(100);
        if step % 9 == 0 {
            // Two whole PONGs (64 bytes each), so what is left still decodes at the close.
            let took = write_at_most(&mut h.router, slow, 128);
            assert_eq!(took, 128, "took its 128 bytes");
        }
        assert_eq!(h.closed.contains(&stuck), step * 100 >= 3_000, "at {step}");
    }
    assert!(!h.closed.contains(&slow));
    assert!(h.router.is_read_paused(slow), "still over the low mark");
    // Once `slow` stops taking bytes too, it goes the same way.
    // Its last bytes went at 11.7 s: closed 3 s later.
    for step in 121..=150 {
        h.advance(100);
        assert_eq!(h.closed.contains(&slow), step * 100 >= 14_700, "at {step}");
    }
    h.disconnect(stuck);
    h.disconnect(slow);
    h.assert_empty();
}

#[test]
fn a_producer_paused_with_nothing_owed_to_it_is_only_probed_never_closed() {
    let mut h = Harness::with_config(beating_small_marks());
    let sender = h.join_quietly(channel(1), client(1), &[]);
    // No receiver: its waiting requests' bytes go over the held limit and pause its reading.
    for id in 1..=6 {
        h.request(sender, req(id), 60_000, &[0; 1_000]);
    }
    assert!(h.router.is_read_paused(sender));
    for _ in 0..10 {
        h.advance(1_000);
        // A probe each interval (its write would draw an RST from a departed client), never a
        // counted ping.
        let probe = h.expect_one(sender);
        assert_eq!(probe.header.frame_type, FrameType::Ping);
        assert_eq!(probe.header.sequence, 0);
    }
    assert!(!h.closed.contains(&sender));
    h.disconnect(sender);
    h.assert_empty();
}
