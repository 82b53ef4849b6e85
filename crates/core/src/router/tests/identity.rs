//! Identity (issue 10 item 11): taking over or resuming a present client id needs the resume
//! secret of its WELCOME; without it the HELLO gets CLIENT_ID_IN_USE and the member is
//! undisturbed.

use super::harness::*;
use crate::ids::{ChannelId, ClientId, ConnId, RequestId};
use crate::protocol::{ErrorCode, FrameType, Header};
use crate::router::RouterConfig;
use std::time::Duration;

/// HELLO for `id` on `ch` presenting `secret` (nil: none).
fn hello_with(h: &mut Harness, conn: ConnId, ch: ChannelId, id: ClientId, secret: RequestId) {
    h.send_as_is(
        conn,
        Header {
            channel_id: ch,
            client_id: id,
            request_id: secret,
            ..Header::new(FrameType::Hello)
        },
        b"",
    );
}

#[test]
fn a_hello_for_a_present_id_without_its_secret_is_refused_and_the_member_undisturbed() {
    let mut h = Harness::with_config(RouterConfig {
        presence_grace: Duration::from_millis(500),
        ..quiet()
    });
    let ch = channel(1);
    let (victim, _) = h.join(ch, client(1));
    let secret = h.secrets[&(ch, client(1))];
    assert!(!secret.is_nil(), "the welcome carries a resume secret");
    // Another member learns the victim's id from its WELCOME.
    let (attacker, welcome) = h.join(ch, client(2));
    assert_eq!(welcome.peers, vec![client(1)]);
    h.take(victim);
    // No secret, a wrong one, and the attacker's own one: all refused.
    let wrong = h.secrets[&(ch, client(2))];
    for presented in [RequestId::NIL, req(9), wrong] {
        let impostor = h.connect();
        hello_with(&mut h, impostor, ch, client(1), presented);
        h.expect_closed_with(impostor, ErrorCode::ClientIdInUse);
        h.expect_nothing(victim);
        h.expect_nothing(attacker);
    }
    assert_eq!(h.stats().takeovers, 0);
    // The victim is still the member: it still gets requests.
    h.receive(victim, 1);
    h.request(attacker, req(1), 1_000, b"still there?");
    assert_eq!(&h.expect_one(victim).payload[..], b"still there?");
    h.respond(victim, req(1), b"yes");
    assert_eq!(&h.expect_one(attacker).payload[..], b"yes");
    // Its ghost is protected the same way.
    h.disconnect(victim);
    let impostor = h.connect();
    hello_with(&mut h, impostor, ch, client(1), RequestId::NIL);
    h.expect_closed_with(impostor, ErrorCode::ClientIdInUse);
    h.expect_nothing(attacker);
    // With the secret: the takeover (here: the ghost's return) works, silently, and keeps it.
    let back = h.connect();
    hello_with(&mut h, back, ch, client(1), secret);
    let welcome = h.expect_one(back);
    assert_eq!(welcome.header.frame_type, FrameType::Welcome);
    assert_eq!(welcome.header.request_id, secret);
    h.expect_nothing(attacker);
    // And a live takeover with it: REPLACED to the old connection, no presence change.
    let again = h.connect();
    hello_with(&mut h, again, ch, client(1), secret);
    assert_eq!(h.expect_one(again).header.frame_type, FrameType::Welcome);
    h.expect_closed_with(back, ErrorCode::Replaced);
    h.expect_nothing(attacker);
    for conn in [attacker, again] {
        h.disconnect(conn);
    }
    h.advance(500);
    h.assert_empty();
}

#[test]
fn a_free_id_adopts_the_secret_its_hello_presents() {
    let mut h = Harness::new();
    let ch = channel(1);
    let conn = h.connect();
    hello_with(&mut h, conn, ch, client(1), req(5));
    let welcome = h.expect_one(conn);
    assert_eq!(welcome.header.request_id, req(5));
    // Without one, the broker picks a fresh secret per id.
    let (other, _) = h.join(ch, client(2));
    let fresh = h.secrets[&(ch, client(2))];
    assert!(!fresh.is_nil() && fresh != req(5));
    h.take(conn);
    for c in [conn, other] {
        h.disconnect(c);
    }
    h.assert_empty();
}
