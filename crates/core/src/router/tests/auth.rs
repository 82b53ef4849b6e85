//! Access tokens: the HELLO's payload must be the channel's token (or the broker-wide one).

use hashbrown::HashMap;

use super::harness::*;
use crate::auth::{AccessToken, Tokens};
use crate::ids::{ChannelId, ClientId, ConnId};
use crate::protocol::{ErrorCode, FrameType, Header};
use crate::router::RouterConfig;

fn with_tokens(broker: Option<&str>, channels: &[(ChannelId, &str)]) -> Harness {
    Harness::with_config(RouterConfig {
        tokens: Tokens {
            broker: broker.map(|t| AccessToken::new(t.as_bytes())),
            channels: channels
                .iter()
                .map(|(ch, t)| (*ch, AccessToken::new(t.as_bytes())))
                .collect::<HashMap<_, _>>(),
        },
        ..quiet()
    })
}

fn hello(h: &mut Harness, ch: ChannelId, id: ClientId, token: &[u8]) -> ConnId {
    let conn = h.connect();
    h.send(
        conn,
        Header {
            channel_id: ch,
            client_id: id,
            ..Header::new(FrameType::Hello)
        },
        token,
    );
    conn
}

/// The HELLO is refused with UNAUTHORIZED and the connection closed; the error says nothing
/// about the channel.
#[track_caller]
fn expect_refused(h: &mut Harness, conn: ConnId, ch: ChannelId) {
    let frames = h.take(conn);
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].header.frame_type, FrameType::Error);
    assert!(frames[0].header.channel_id.is_nil() || frames[0].header.channel_id == ch);
    let body = crate::protocol::ErrorBody::decode(&frames[0].payload).unwrap();
    assert_eq!(body.known_code(), Some(ErrorCode::Unauthorized));
    assert_eq!(body.message, "access token missing or wrong");
    assert!(body.peers.is_empty());
    assert!(h.closed.contains(&conn));
    h.disconnect(conn);
}

#[test]
fn the_right_token_joins_and_a_wrong_or_missing_one_is_refused_unseen() {
    let ch = channel(1);
    let mut h = with_tokens(Some("open sesame"), &[]);
    let observer = hello(&mut h, ch, client(1), b"open sesame");
    assert_eq!(h.expect_one(observer).header.frame_type, FrameType::Welcome);
    h.set_channel(observer, ch);

    for token in [
        &b""[..],
        b"open sesamE",
        b"open sesame!",
        b"open",
        b"\xff\x00",
    ] {
        let conn = hello(&mut h, ch, client(2), token);
        expect_refused(&mut h, conn, ch);
        // The observer sees no presence event.
        h.expect_nothing(observer);
    }
    assert_eq!(h.stats().handshake_failures, 5);

    // The same refusal, word for word, on a channel that does not exist.
    let conn = hello(&mut h, channel(9), client(3), b"nope");
    expect_refused(&mut h, conn, channel(9));

    let peer = hello(&mut h, ch, client(2), b"open sesame");
    assert_eq!(h.expect_one(peer).header.frame_type, FrameType::Welcome);
    assert_eq!(
        h.expect_one(observer).header.frame_type,
        FrameType::PeerJoined
    );
    h.disconnect(peer);
    h.disconnect(observer);
    h.assert_empty();
}

#[test]
fn a_channel_token_overrides_the_broker_token() {
    let private = channel(1);
    let public = channel(2);
    let mut h = with_tokens(Some("everyone"), &[(private, "insiders")]);

    let conn = hello(&mut h, private, client(1), b"everyone");
    expect_refused(&mut h, conn, private);
    let insider = hello(&mut h, private, client(1), b"insiders");
    assert_eq!(h.expect_one(insider).header.frame_type, FrameType::Welcome);

    let conn = hello(&mut h, public, client(2), b"insiders");
    expect_refused(&mut h, conn, public);
    let other = hello(&mut h, public, client(2), b"everyone");
    assert_eq!(h.expect_one(other).header.frame_type, FrameType::Welcome);

    h.disconnect(insider);
    h.disconnect(other);
    h.assert_empty();
}

#[test]
fn only_tokened_channels_need_a_token_without_a_broker_token() {
    let private = channel(1);
    let mut h = with_tokens(None, &[(private, "insiders")]);
    let open = hello(&mut h, channel(2), client(1), b"");
    assert_eq!(h.expect_one(open).header.frame_type, FrameType::Welcome);
    let conn = hello(&mut h, private, client(2), b"");
    expect_refused(&mut h, conn, private);
    h.disconnect(open);
    h.assert_empty();
}

#[test]
fn a_refused_hello_cannot_take_over_a_connected_client() {
    let ch = channel(1);
    let mut h = with_tokens(Some("secret"), &[]);
    let owner = hello(&mut h, ch, client(1), b"secret");
    assert_eq!(h.expect_one(owner).header.frame_type, FrameType::Welcome);
    // Same client id, wrong token: no takeover, the owner is untouched.
    let thief = hello(&mut h, ch, client(1), b"guess");
    expect_refused(&mut h, thief, ch);
    h.expect_nothing(owner);
    assert!(!h.closed.contains(&owner));
    assert_eq!(h.stats().takeovers, 0);
    h.disconnect(owner);
    h.assert_empty();
}

#[test]
fn without_tokens_any_payload_joins() {
    let mut h = Harness::new();
    let conn = hello(&mut h, channel(1), client(1), b"whatever");
    assert_eq!(h.expect_one(conn).header.frame_type, FrameType::Welcome);
    h.disconnect(conn);
    h.assert_empty();
}
