//! `Router::busiest_channels`: the bounded per-channel view the metrics endpoint may show.

use super::harness::{channel, client, Harness};

#[test]
fn the_busiest_channels_are_the_n_with_most_members_most_first() {
    let mut h = Harness::new();
    let mut conns = Vec::new();
    // Channel n has n members, for n in 1..=6.
    for n in 1..=6u8 {
        for m in 0..n {
            let (conn, _) = h.join(channel(n), client(n * 16 + m));
            conns.push(conn);
        }
    }
    assert!(h.router.busiest_channels(0).is_empty());
    assert_eq!(
        h.router.busiest_channels(3),
        vec![(channel(6), 6), (channel(5), 5), (channel(4), 4)]
    );
    assert_eq!(h.router.busiest_channels(100).len(), 6);
    for conn in conns {
        h.disconnect(conn);
    }
    h.assert_empty();
}
