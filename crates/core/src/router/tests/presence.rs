//! Presence grace period, takeover interleavings, and the on-demand peer list.

use super::harness::*;
use crate::ids::ConnId;
use crate::protocol::{decode_peers, ErrorCode, FrameType, Header};
use crate::router::RouterConfig;
use std::time::Duration;

fn graceful() -> RouterConfig {
    RouterConfig {
        presence_grace: Duration::from_millis(500),
        ..quiet()
    }
}

fn presence(h: &mut Harness, conn: ConnId) -> Vec<(FrameType, crate::ids::ClientId)> {
    h.take(conn)
        .into_iter()
        .filter(|f| {
            matches!(
                f.header.frame_type,
                FrameType::PeerJoined | FrameType::PeerLeft
            )
        })
        .map(|f| (f.header.frame_type, f.header.client_id))
        .collect()
}

#[test]
fn peer_left_waits_out_the_grace_period() {
    let mut h = Harness::with_config(graceful());
    let (observer, _) = h.join(channel(1), client(1));
    let (leaver, _) = h.join(channel(1), client(2));
    assert_eq!(
        presence(&mut h, observer),
        vec![(FrameType::PeerJoined, client(2))]
    );
    h.disconnect(leaver);
    h.advance(499);
    assert_eq!(presence(&mut h, observer), vec![]);
    assert_eq!(h.stats().ghosts, 1);
    h.advance(1);
    assert_eq!(
        presence(&mut h, observer),
        vec![(FrameType::PeerLeft, client(2))]
    );
    assert_eq!(h.stats().ghosts, 0);
    h.disconnect(observer);
    h.advance(500);
    h.assert_empty();
}

#[test]
fn a_reconnect_within_the_grace_period_is_invisible() {
    let mut h = Harness::with_config(graceful());
    let (observer, _) = h.join(channel(1), client(1));
    let (first, _) = h.join(channel(1), client(2));
    presence(&mut h, observer);
    // Hundreds of rapid cycles, a few ms apart, with both orders of close and hello.
    let mut current = first;
    for cycle in 0..300u32 {
        if cycle % 2 == 0 {
            h.disconnect(current);
            h.advance(3);
            current = h.join(channel(1), client(2)).0;
        } else {
            let (next, welcome) = h.join(channel(1), client(2));
            assert!(welcome.peers.contains(&client(1)));
            h.expect_closed_with(current, ErrorCode::Replaced);
            current = next;
            h.advance(2);
        }
        assert_eq!(presence(&mut h, observer), vec![], "cycle {cycle}");
    }
    h.disconnect(current);
    h.advance(500);
    assert_eq!(
        presence(&mut h, observer),
        vec![(FrameType::PeerLeft, client(2))]
    );
    h.disconnect(observer);
    h.advance(500);
    h.assert_empty();
}

#[test]
fn ghosts_are_listed_but_take_no_part() {
    let mut h = Harness::with_config(graceful());
    let (a, _) = h.join(channel(1), client(1));
    let (b, _) = h.join(channel(1), client(2));
    h.receive(b, 1);
    h.take(a);
    h.disconnect(b);
    // Still present for others: in a newcomer's welcome and in PEERS answers.
    let (c, welcome) = h.join(channel(1), client(3));
    let mut peers = welcome.peers.clone();
    peers.sort();
    assert_eq!(peers, vec![client(1), client(2)]);
    h.send(
        a,
        Header {
            channel_id: channel(1),
            ..Header::new(FrameType::Peers)
        },
        b"",
    );
    let frames = h.take(a);
    let answer = frames
        .iter()
        .find(|f| f.header.frame_type == FrameType::Peers)
        .unwrap();
    let mut listed = decode_peers(&answer.payload).unwrap();
    listed.sort();
    assert_eq!(listed, vec![client(2), client(3)]);
    // But a ghost holds no credit and gets no broadcast.
    h.request(a, req(1), 100, b"x");
    h.advance(100);
    h.expect_error(a, ErrorCode::NoReceiver, req(1));
    h.disconnect(a);
    h.disconnect(c);
    h.advance(500);
    h.assert_empty();
}

#[test]
fn a_channel_with_only_ghosts_lives_until_they_expire() {
    let mut h = Harness::with_config(graceful());
    let (a, _) = h.join(channel(1), client(1));
    h.disconnect(a);
    assert_eq!((h.stats().channels, h.stats().armed_timers), (1, 1));
    // Coming back to the otherwise empty channel: welcomed, silently.
    let (again, welcome) = h.join(channel(1), client(1));
    assert!(welcome.peers.is_empty());
    h.disconnect(again);
    h.advance(500);
    h.assert_empty();
}
