//! Presence amplification: peers that never read, a churner joining and leaving with fresh ids.
//! Each peer's queue stays within its high watermark; once it catches up it gets one
//! PRESENCE_OVERFLOW marker (and no event it missed).

use super::harness::*;
use crate::ids::{ClientId, RequestId};
use crate::protocol::{ErrorBody, ErrorCode, FrameType, HEADER_LEN};
use crate::router::RouterConfig;

const HIGH: usize = 4_096;

#[test]
fn peers_that_do_not_read_get_no_more_presence_then_one_marker() {
    let mut h = Harness::with_config(RouterConfig {
        high_watermark: HIGH,
        low_watermark: 1_024,
        ..quiet()
    });
    let mut peers = Vec::new();
    for n in 0..20 {
        let others = peers.clone();
        let p = h.join_quietly(channel(1), client(n), &others);
        peers.push(p);
    }
    let (stuck, reader) = (peers[..19].to_vec(), peers[19]);
    for p in &stuck {
        h.stall(*p);
    }
    for n in 0..2_000u32 {
        let mut id = [0xAB; 16];
        id[..4].copy_from_slice(&n.to_be_bytes());
        let churner = h.join_quietly(channel(1), ClientId::from_bytes(id), &[reader]);
        h.disconnect(churner);
        h.take(reader);
        for p in &stuck {
            assert!(
                h.router.queued_bytes(*p) <= HIGH + HEADER_LEN,
                "a peer that does not read outgrew its watermark: {}",
                h.router.queued_bytes(*p)
            );
        }
    }
    assert!(h.stats().presence_dropped > 0);
    // It reads again: what was queued, then one marker (it missed the rest).
    let p = stuck[0];
    h.unstall(p);
    let frames = h.take(p);
    let last = frames.last().expect("frames");
    assert_eq!(last.header.frame_type, FrameType::Error, "{last:?}");
    assert_eq!(last.header.request_id, RequestId::NIL);
    let body = ErrorBody::decode(&last.payload).expect("error body");
    assert_eq!(body.known_code(), Some(ErrorCode::PresenceOverflow));
    assert!(!h.closed.contains(&p), "a notice, not fatal");
    // Caught up: presence flows again.
    let churner = h.join_quietly(channel(1), client(99), &[reader]);
    let joined = h.take(p);
    assert_eq!(joined.len(), 1);
    assert_eq!(joined[0].header.frame_type, FrameType::PeerJoined);
    h.disconnect(churner);
    for conn in peers {
        h.disconnect(conn);
    }
    h.assert_empty();
}
