//! Scenarios the `router` fuzz target (`fuzz/logic/router.rs`) found, reduced to their core.

use super::harness::*;
use crate::protocol::{ErrorCode, FrameType, Header};

/// Found by the fuzz target: a takeover of the only member of a channel. The replaced
/// connection's departure dropped the channel (no member, no ghost left), and `recv_hello` then
/// found no channel and returned without a WELCOME or an error, leaving the new connection in
/// `AwaitingHello`. Fixed; the fuzz target (`fuzz/logic/router.rs`, run in CI by
/// `crates/core/tests/router_fuzz.rs`) makes such takeovers freely again.
#[test]
fn a_takeover_of_the_only_member_gets_a_welcome() {
    let mut h = Harness::new();
    let ch = channel(1);
    let (old, _) = h.join(ch, client(1));
    let new = h.connect();
    h.send(
        new,
        Header {
            channel_id: ch,
            client_id: client(1),
            ..Header::new(FrameType::Hello)
        },
        b"",
    );
    h.expect_closed_with(old, ErrorCode::Replaced);
    let welcome = h.expect_one(new);
    assert_eq!(welcome.header.frame_type, FrameType::Welcome);
    assert_eq!(h.stats().channels, 1);
    h.disconnect(new);
    h.assert_empty();
}
