//! Control frames' payloads and flags (PROTOCOL.md §3, §11, §13): what a client may put in
//! PING, PONG, PEERS, CANCEL and a peer's ACK, and the broker's own control frames.

use super::harness::{channel, client, req, Harness};
use crate::ids::RequestId;
use crate::protocol::{ErrorBody, ErrorCode, Flags, FrameType, Header};

/// PING, PONG, a client's PEERS, CANCEL and a peer's ACK have an empty payload: one byte there is
/// MALFORMED_FRAME and the connection is closed, before the handshake (PING) and after it.
#[test]
fn junk_in_an_empty_payload_is_malformed() {
    let mut h = Harness::new();
    let ch = channel(1);
    let cases = [
        (FrameType::Ping, Flags::NONE),
        (FrameType::Pong, Flags::NONE),
        (FrameType::Peers, Flags::NONE),
        (FrameType::Cancel, Flags::REQUEST),
        (FrameType::Ack, Flags::BROADCAST),
    ];
    for (n, (kind, flags)) in cases.into_iter().enumerate() {
        let (conn, _) = h.join(ch, client(n as u8 + 1));
        let header = Header {
            flags,
            channel_id: ch,
            // Connection-level frames name no request; CANCEL and ACK name one.
            request_id: if flags == Flags::NONE {
                RequestId::NIL
            } else {
                req(n as u8)
            },
            is_final: kind == FrameType::Cancel,
            ..Header::new(kind)
        };
        h.send(conn, header, b"junk");
        h.expect_closed_with(conn, ErrorCode::MalformedFrame);
        h.disconnect(conn);
    }
    // Before the handshake: a PING with a payload is no more acceptable.
    let early = h.connect();
    h.send(early, Header::new(FrameType::Ping), b"x");
    h.expect_closed_with(early, ErrorCode::MalformedFrame);
    h.disconnect(early);
    h.assert_empty();
}

/// A peer's ACK with a payload is refused and not counted: the broadcast still waits for it.
#[test]
fn an_ack_with_a_payload_is_not_counted() {
    let mut h = Harness::new();
    let ch = channel(1);
    let (sender, _) = h.join(ch, client(1));
    let peer = h.join_quietly(ch, client(2), &[sender]);
    h.stream(
        sender,
        FrameType::Start,
        Flags::REQUEST | Flags::BROADCAST,
        req(1),
        0,
        true,
        b"hi",
    );
    assert_eq!(h.take(peer).len(), 1);
    h.send(
        peer,
        Header {
            flags: Flags::BROADCAST,
            channel_id: ch,
            request_id: req(1),
            ..Header::new(FrameType::Ack)
        },
        b"\x00\x00\x00\x01",
    );
    h.expect_closed_with(peer, ErrorCode::MalformedFrame);
    // The sender is told the peer did not ack (it left), never that it did.
    let frames = h.take(sender);
    let error = ErrorBody::decode(&frames[0].payload).expect("error body");
    assert_eq!(error.known_code(), Some(ErrorCode::BroadcastIncomplete));
    assert_eq!(error.peers, vec![client(2)]);
    assert_eq!(frames[1].header.frame_type, FrameType::PeerLeft);
    h.disconnect(peer);
    h.disconnect(sender);
    h.assert_empty();
}
