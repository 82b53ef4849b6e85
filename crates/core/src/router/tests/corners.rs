//! The corners PROTOCOL.md §13 settles, one test each: flags on control frames, FINAL and the
//! client id on the broker's own frames, PING numbering, DUPLICATE_REQUEST, one connection as
//! sender and receiver, round-robin for windows above 1, a broadcast's deadline as its peers see
//! it, NO_WAIT on forwarding, a takeover during a broadcast, the ACK's sequence, the PONG's
//! channel id, and frames of different requests interleaved on one connection.

use std::time::Duration;

use super::harness::*;
use crate::ids::{ChannelId, ConnId, RequestId};
use crate::protocol::{ErrorCode, Flags, Frame, FrameType, Header};
use crate::router::RouterConfig;

fn header(ch: ChannelId, kind: FrameType, flags: Flags) -> Header {
    Header {
        flags,
        channel_id: ch,
        ..Header::new(kind)
    }
}

fn broadcast_start(h: &mut Harness, conn: ConnId, id: RequestId, timeout_ms: u32) {
    let header = Header {
        flags: Flags::REQUEST | Flags::BROADCAST,
        channel_id: h.channel_of(conn),
        request_id: id,
        timeout_ms,
        is_final: true,
        ..Header::new(FrameType::Start)
    };
    h.send(conn, header, b"all");
}

fn ack(ch: ChannelId, id: RequestId, sequence: u32, is_final: bool) -> Header {
    Header {
        request_id: id,
        sequence,
        is_final,
        ..header(ch, FrameType::Ack, Flags::BROADCAST)
    }
}

/// §3: flags are strict and uniform. HELLO, PING, PONG, PEERS and RECEIVE carry none; NO_WAIT
/// only on a request's START; anything else is MALFORMED_FRAME.
#[test]
fn stray_flags_are_malformed() {
    let mut h = Harness::new();
    let ch = channel(1);
    let cases: [(FrameType, Flags, &[u8]); 5] = [
        (FrameType::Ping, Flags::REQUEST, b""),
        (FrameType::Pong, Flags::NO_WAIT, b""),
        (FrameType::Peers, Flags::BROADCAST, b""),
        (FrameType::Receive, Flags::RESPONSE, b"\0\0\0\x01"),
        (FrameType::Ack, Flags::REQUEST | Flags::BROADCAST, b""),
    ];
    for (n, (kind, flags, payload)) in cases.into_iter().enumerate() {
        let (conn, _) = h.join(ch, client(n as u8));
        h.send(conn, header(ch, kind, flags), payload);
        h.expect_closed_with(conn, ErrorCode::MalformedFrame);
        h.disconnect(conn);
    }
    // NO_WAIT on a CHUNK, on a broadcast START, on a CANCEL.
    for (n, (kind, flags)) in [
        (FrameType::Chunk, Flags::REQUEST | Flags::NO_WAIT),
        (
            FrameType::Start,
            Flags::REQUEST | Flags::BROADCAST | Flags::NO_WAIT,
        ),
        (FrameType::Cancel, Flags::REQUEST | Flags::NO_WAIT),
    ]
    .into_iter()
    .enumerate()
    {
        let (conn, _) = h.join(ch, client(10 + n as u8));
        h.stream(conn, kind, flags, req(1), 0, kind != FrameType::Chunk, b"");
        h.expect_closed_with(conn, ErrorCode::MalformedFrame);
        h.disconnect(conn);
    }
    // A HELLO with a flag, before the handshake.
    let early = h.connect();
    h.send(
        early,
        Header {
            client_id: client(30),
            ..header(ch, FrameType::Hello, Flags::REQUEST)
        },
        b"",
    );
    h.expect_closed_with(early, ErrorCode::MalformedFrame);
    h.disconnect(early);
    h.assert_empty();
}

/// §13.3: every frame the broker originates has FINAL set; WELCOME names the client itself,
/// PEER_* the peer, a PEERS answer, PING and PONG nil; a PONG echoes the PING's sequence and
/// channel id.
#[test]
fn broker_frames_are_final_with_their_client_id() {
    let mut h = Harness::with_config(RouterConfig {
        heartbeat_interval: Duration::from_millis(100),
        ..quiet()
    });
    let ch = channel(1);
    let a = h.connect();
    h.send(
        a,
        Header {
            client_id: client(1),
            ..header(ch, FrameType::Hello, Flags::NONE)
        },
        b"",
    );
    let welcome = h.expect_one(a);
    assert!(welcome.header.is_final && welcome.header.client_id == client(1));
    let (b, _) = h.join(ch, client(2));
    let joined = h.expect_one(a);
    assert_eq!(joined.header.frame_type, FrameType::PeerJoined);
    assert!(joined.header.is_final && joined.header.client_id == client(2));
    h.send(b, header(ch, FrameType::Peers, Flags::NONE), b"");
    let peers = h.expect_one(b);
    assert!(peers.header.is_final && peers.header.client_id.is_nil());
    h.send(
        b,
        Header {
            sequence: 77,
            ..header(ch, FrameType::Ping, Flags::NONE)
        },
        b"",
    );
    let pong = h.expect_one(b);
    assert_eq!(pong.header.frame_type, FrameType::Pong);
    assert!(pong.header.is_final && pong.header.client_id.is_nil());
    assert_eq!((pong.header.sequence, pong.header.channel_id), (77, ch));
    h.advance(100);
    let ping = h.expect_one(a);
    assert_eq!(ping.header.frame_type, FrameType::Ping);
    assert!(ping.header.is_final && ping.header.client_id.is_nil());
    assert_eq!(ping.header.channel_id, ch);
    h.disconnect(b);
    let left = h.expect_one(a);
    assert!(left.header.is_final && left.header.client_id == client(2));
    h.disconnect(a);
    h.assert_empty();
}

/// §8: the broker's PINGs count the unanswered ones of one silence: 1, 2, …; any frame from the
/// client answers them, and the next silence starts at 1 again.
#[test]
fn ping_sequences_restart_at_one_after_an_answer() {
    let mut h = Harness::with_config(RouterConfig {
        heartbeat_interval: Duration::from_millis(100),
        heartbeat_misses: 5,
        ..quiet()
    });
    let ch = channel(1);
    let (a, _) = h.join(ch, client(1));
    let mut sequences = Vec::new();
    for _ in 0..2 {
        h.advance(100);
        sequences.push(h.expect_one(a).header.sequence);
    }
    h.send(a, header(ch, FrameType::Pong, Flags::NONE), b"");
    for _ in 0..2 {
        h.advance(100);
        sequences.extend(h.take(a).iter().map(|f| f.header.sequence));
    }
    assert_eq!(sequences, [1, 2, 1, 2]);
    h.disconnect(a);
    h.assert_empty();
}

/// §13.1: DUPLICATE_REQUEST refuses the new START only; the stream in flight under that id
/// goes on and completes.
#[test]
fn duplicate_request_leaves_the_existing_request_alone() {
    let mut h = Harness::new();
    let ch = channel(1);
    let (receiver, _) = h.join(ch, client(1));
    let sender = h.join_quietly(ch, client(2), &[receiver]);
    h.receive(receiver, 1);
    h.request(sender, req(1), 5_000, b"first");
    assert_eq!(h.take(receiver).len(), 1);
    h.request(sender, req(1), 5_000, b"again");
    h.expect_error(sender, ErrorCode::DuplicateRequest, req(1));
    h.expect_nothing(receiver);
    h.respond(receiver, req(1), b"answer");
    assert_eq!(&h.expect_one(sender).payload[..], b"answer");
    h.disconnect(sender);
    h.disconnect(receiver);
    h.assert_empty();
}

/// §13.12: for a connection that is sender and receiver of one request, an ERROR about it ends
/// it in both roles; at a timeout the receiver role's CANCEL follows the ERROR (redundant: the
/// request is already Done), after a STREAM_ORDER nothing follows.
#[test]
fn a_request_to_oneself_ends_in_both_roles() {
    let mut h = Harness::new();
    let ch = channel(1);
    let (me, _) = h.join(ch, client(1));
    h.receive(me, 1);
    h.request(me, req(1), 100, b"to myself");
    let start = h.expect_one(me);
    assert_eq!(start.header.client_id, client(1));
    h.advance(100);
    let frames = h.take(me);
    let kinds: Vec<FrameType> = frames.iter().map(|f| f.header.frame_type).collect();
    assert_eq!(kinds, [FrameType::Error, FrameType::Cancel]);
    assert_eq!(frames[1].header.flags, Flags::REQUEST);
    // Its slot is free again: the request is gone in both roles.
    h.request(me, req(2), 100, b"again");
    assert_eq!(h.expect_one(me).header.request_id, req(2));
    // An out-of-order response (its receiver role): STREAM_ORDER alone — the counterpart that
    // would get CANCEL is itself, the offender — and the request is gone in both roles.
    h.stream(me, FrameType::Chunk, Flags::RESPONSE, req(2), 5, false, b"");
    h.expect_error(me, ErrorCode::StreamOrder, req(2));
    h.respond(me, req(2), b"late");
    h.expect_error(me, ErrorCode::UnknownRequest, req(2));
    h.disconnect(me);
    h.assert_empty();
}

/// §6: "waiting longest" with windows above 1: a receiver that takes a request goes to the back
/// of the ready FIFO, so requests are dealt round-robin, one at a time.
#[test]
fn windows_above_one_are_served_round_robin() {
    let mut h = Harness::new();
    let ch = channel(1);
    let (a, _) = h.join(ch, client(1));
    let b = h.join_quietly(ch, client(2), &[a]);
    let sender = h.join_quietly(ch, client(3), &[a, b]);
    h.receive(a, 2);
    h.receive(b, 2);
    let mut order = Vec::new();
    for n in 1..=4 {
        h.request(sender, req(n), 5_000, b"");
        for (who, conn) in [("a", a), ("b", b)] {
            if !h.take(conn).is_empty() {
                order.push(who);
            }
        }
    }
    assert_eq!(order, ["a", "b", "a", "b"]);
    for conn in [a, b, sender] {
        h.disconnect(conn);
    }
    h.assert_empty();
}

/// §13.5: a forwarded broadcast START carries the deadline the broker applies — the default for
/// `timeout_ms` 0, the maximum for more — and NO_WAIT is never forwarded (a request's START
/// reaches its receiver with REQUEST alone).
#[test]
fn forwarded_starts_show_the_broker_deadline_and_no_no_wait() {
    let mut h = Harness::new();
    let ch = channel(1);
    let (a, _) = h.join(ch, client(1));
    let b = h.join_quietly(ch, client(2), &[a]);
    broadcast_start(&mut h, a, req(1), 0);
    assert_eq!(h.expect_one(b).header.timeout_ms, 30_000);
    broadcast_start(&mut h, a, req(2), u32::MAX);
    assert_eq!(h.expect_one(b).header.timeout_ms, 3_600_000);
    h.receive(b, 1);
    h.stream(
        a,
        FrameType::Start,
        Flags::REQUEST | Flags::NO_WAIT,
        req(3),
        0,
        true,
        b"q",
    );
    let forwarded = h.expect_one(b);
    assert_eq!(forwarded.header.flags, Flags::REQUEST);
    for conn in [a, b] {
        h.disconnect(conn);
    }
    h.assert_empty();
}

/// §7: a takeover during a broadcast: the broadcast went to the replaced connection, so that
/// peer counts as failed (named in BROADCAST_INCOMPLETE although its client is connected
/// again), and its successor, which never received the broadcast, gets UNKNOWN_REQUEST for an
/// ACK of it.
#[test]
fn a_takeover_during_a_broadcast_fails_that_peer() {
    let mut h = Harness::new();
    let ch = channel(1);
    let (sender, _) = h.join(ch, client(1));
    let old = h.join_quietly(ch, client(2), &[sender]);
    broadcast_start(&mut h, sender, req(1), 5_000);
    assert_eq!(h.take(old).len(), 1);
    let (successor, _) = h.join(ch, client(2));
    h.expect_closed_with(old, ErrorCode::Replaced);
    h.disconnect(old);
    let incomplete = h.expect_error(sender, ErrorCode::BroadcastIncomplete, req(1));
    assert_eq!(incomplete.peers, vec![client(2)]);
    h.send(successor, ack(ch, req(1), 0, true), b"");
    h.expect_error(successor, ErrorCode::UnknownRequest, req(1));
    for conn in [sender, successor] {
        h.disconnect(conn);
    }
    h.assert_empty();
}

/// §7: a peer's ACK should say sequence 0 with FINAL; the broker ignores both.
#[test]
fn an_acks_sequence_and_final_are_ignored() {
    let mut h = Harness::new();
    let ch = channel(1);
    let (sender, _) = h.join(ch, client(1));
    let peer = h.join_quietly(ch, client(2), &[sender]);
    broadcast_start(&mut h, sender, req(1), 5_000);
    assert_eq!(h.take(peer).len(), 1);
    h.send(peer, ack(ch, req(1), 12345, false), b"");
    let acked = h.expect_one(sender);
    assert_eq!(acked.header.frame_type, FrameType::Ack);
    assert!(acked.header.is_final && acked.header.sequence == 0);
    for conn in [sender, peer] {
        h.disconnect(conn);
    }
    h.assert_empty();
}

/// §6: frames of different requests may interleave on one connection, between frames: each
/// stream is followed by its own id and sequence.
#[test]
fn streams_interleave_between_frames() {
    let mut h = Harness::new();
    let ch = channel(1);
    let (receiver, _) = h.join(ch, client(1));
    let sender = h.join_quietly(ch, client(2), &[receiver]);
    h.receive(receiver, 2);
    let part = |h: &mut Harness, kind, id, seq, fin, body: &[u8]| {
        h.stream(sender, kind, Flags::REQUEST, id, seq, fin, body)
    };
    part(&mut h, FrameType::Start, req(1), 0, false, b"1a");
    part(&mut h, FrameType::Start, req(2), 0, false, b"2a");
    part(&mut h, FrameType::Chunk, req(1), 1, false, b"1b");
    part(&mut h, FrameType::End, req(2), 1, true, b"2b");
    part(&mut h, FrameType::End, req(1), 2, true, b"1c");
    let got: Vec<(RequestId, Vec<u8>)> = h
        .take(receiver)
        .into_iter()
        .map(|f: Frame| (f.header.request_id, f.payload.to_vec()))
        .collect();
    let bodies = |id| -> Vec<u8> {
        got.iter()
            .filter(|(r, _)| *r == id)
            .flat_map(|(_, b)| b.clone())
            .collect()
    };
    assert_eq!(got.len(), 5);
    assert_eq!(bodies(req(1)), b"1a1b1c");
    assert_eq!(bodies(req(2)), b"2a2b");
    for conn in [receiver, sender] {
        h.disconnect(conn);
    }
    h.assert_empty();
}
