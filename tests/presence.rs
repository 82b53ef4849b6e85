//! Handshake and presence over real sockets (PROTOCOL.md §5, §8): the welcome, PEER_JOINED /
//! PEER_LEFT however a peer goes away, broker-assigned ids, and rapid connect/drop churn that
//! must leave the broker idle with presence events exactly paired and in order (the
//! predecessor's "online/offline flapping on rapid reconnects" and "stale connections").

use std::time::Duration;
use switchyard_testkit::{
    broker::{self, start, start_with},
    gauges::{wait_for, wait_idle},
    raw::{self, RawPeer},
};

use switchyard::ids::{ChannelId, ClientId};
use switchyard::protocol::{FrameType, DEFAULT_MAX_PAYLOAD};
use switchyard::server::ServerStats;

fn sorted(mut ids: Vec<ClientId>) -> Vec<ClientId> {
    ids.sort();
    ids
}

#[test]
fn welcome_carries_the_client_id_and_the_default_limits() {
    let handle = start();
    let channel = ChannelId::random();
    let client = ClientId::random();
    let mut peer = RawPeer::connect(handle.local_addr());
    let welcome = peer.hello(channel, client);
    assert_eq!(peer.client, client);
    assert_eq!(welcome.max_payload, DEFAULT_MAX_PAYLOAD);
    assert_eq!(welcome.max_payload, 1_048_576);
    assert_eq!(welcome.default_timeout_ms, 30_000);
    assert_eq!(welcome.max_timeout_ms, 3_600_000);
    assert_eq!(welcome.heartbeat_ms, 10_000, "heartbeats are on by default");
    assert!(welcome.peers.is_empty());
    peer.barrier();
    let stats = handle.stats().unwrap();
    assert_eq!((stats.sockets, stats.router.channels), (1, 1));
    drop(peer);
    wait_idle(&handle);
}

#[test]
fn welcome_announces_the_configured_limits() {
    let mut config = broker::config();
    config.router.max_payload = 4096;
    config.router.default_timeout = Duration::from_millis(1500);
    config.router.max_timeout = Duration::from_secs(60);
    let handle = start_with(config);
    let mut peer = RawPeer::connect(handle.local_addr());
    let welcome = peer.hello(ChannelId::random(), ClientId::NIL);
    assert_eq!(
        (
            welcome.max_payload,
            welcome.default_timeout_ms,
            welcome.max_timeout_ms
        ),
        (4096, 1500, 60_000)
    );
    drop(peer);
    wait_idle(&handle);
}

#[test]
fn ping_is_answered_with_pong_echoing_the_sequence() {
    let handle = start();
    let mut peer = RawPeer::connect(handle.local_addr());
    peer.hello(ChannelId::random(), ClientId::random());
    for sequence in [0, 1, 0x7FFF_FFFF] {
        peer.ping(sequence);
        let pong = peer.recv_kind(FrameType::Pong, false);
        assert_eq!(pong.header.sequence, sequence);
        assert!(pong.payload.is_empty());
        assert_eq!(pong.header.channel_id, peer.channel);
    }
    drop(peer);
    wait_idle(&handle);
}

#[test]
fn welcome_lists_current_peers_and_peers_see_joins_and_leaves() {
    let handle = start();
    let addr = handle.local_addr();
    let channel = ChannelId::random();

    let mut a = RawPeer::named(addr, "a");
    assert!(a.hello(channel, ClientId::random()).peers.is_empty());

    let mut b = RawPeer::named(addr, "b");
    assert_eq!(b.hello(channel, ClientId::random()).peers, vec![a.client]);
    a.expect_presence(FrameType::PeerJoined, b.client);

    let mut c = RawPeer::named(addr, "c");
    let welcome = c.hello(channel, ClientId::random());
    assert_eq!(sorted(welcome.peers), sorted(vec![a.client, b.client]));
    a.expect_presence(FrameType::PeerJoined, c.client);
    b.expect_presence(FrameType::PeerJoined, c.client);

    // Someone on another channel is nobody's peer here.
    let mut stranger = RawPeer::named(addr, "stranger");
    assert!(stranger
        .hello(ChannelId::random(), ClientId::random())
        .peers
        .is_empty());

    // A leaves in an orderly way.
    let a_client = a.client;
    a.shutdown_write();
    a.expect_closed();
    b.expect_presence(FrameType::PeerLeft, a_client);
    c.expect_presence(FrameType::PeerLeft, a_client);

    // The next joiner sees exactly those left.
    let mut d = RawPeer::named(addr, "d");
    let welcome = d.hello(channel, ClientId::random());
    assert_eq!(sorted(welcome.peers), sorted(vec![b.client, c.client]));
    b.expect_presence(FrameType::PeerJoined, d.client);
    c.expect_presence(FrameType::PeerJoined, d.client);

    for peer in [&mut b, &mut c, &mut d, &mut stranger] {
        peer.barrier();
    }
    drop((b, c, d, stranger));
    wait_idle(&handle);
}

#[test]
fn peer_left_however_the_leaver_goes() {
    let handle = start();
    let addr = handle.local_addr();
    let channel = ChannelId::random();
    let mut observer = RawPeer::named(addr, "observer");
    observer.hello(channel, ClientId::random());

    // 1. Its socket is just dropped, every frame read.
    let mut leaver = RawPeer::named(addr, "dropped");
    leaver.hello(channel, ClientId::random());
    observer.expect_presence(FrameType::PeerJoined, leaver.client);
    leaver.barrier();
    let gone = leaver.client;
    drop(leaver);
    observer.expect_presence(FrameType::PeerLeft, gone);

    // 2. Dropped with frames still unread (the kernel resets the connection instead of a FIN).
    let mut leaver = RawPeer::named(addr, "dropped-unread");
    leaver.hello(channel, ClientId::random());
    observer.expect_presence(FrameType::PeerJoined, leaver.client);
    let mut late = RawPeer::named(addr, "late");
    late.hello(channel, ClientId::random());
    observer.expect_presence(FrameType::PeerJoined, late.client);
    // The leaver's PEER_JOINED(late) is queued behind a PONG: make sure both reached it.
    leaver.ping(9);
    let state = wait_for(&handle, "leaver's output flushed", |s: &ServerStats| {
        s.router.buffered_bytes == 0
    });
    assert_eq!(state.sockets, 3);
    let gone = leaver.client;
    drop(leaver);
    observer.expect_presence(FrameType::PeerLeft, gone);
    late.expect_presence(FrameType::PeerLeft, gone);

    // 3. Only its writing half closed: EOF is a departure too.
    let mut leaver = RawPeer::named(addr, "half-closed");
    leaver.hello(channel, ClientId::random());
    observer.expect_presence(FrameType::PeerJoined, leaver.client);
    late.expect_presence(FrameType::PeerJoined, leaver.client);
    leaver.shutdown_write();
    leaver.expect_closed();
    observer.expect_presence(FrameType::PeerLeft, leaver.client);
    late.expect_presence(FrameType::PeerLeft, leaver.client);

    // 4. A connection that never completed its handshake leaves no trace in presence.
    let unknown = RawPeer::named(addr, "no-hello");
    drop(unknown);

    observer.barrier();
    late.barrier();
    drop((observer, late));
    let stats = wait_idle(&handle);
    assert_eq!(stats.accepted, 6);
    assert_eq!(stats.closed, 6);
}

#[test]
fn nil_hello_gets_a_broker_assigned_client_id() {
    let handle = start();
    let addr = handle.local_addr();
    let channel = ChannelId::random();
    let mut first = RawPeer::named(addr, "first");
    first.hello(channel, ClientId::NIL);
    assert!(!first.client.is_nil());

    let mut second = RawPeer::named(addr, "second");
    let welcome = second.hello(channel, ClientId::NIL);
    assert!(!second.client.is_nil());
    assert_ne!(first.client, second.client, "assigned ids must be unique");
    assert_eq!(welcome.peers, vec![first.client]);
    first.expect_presence(FrameType::PeerJoined, second.client);

    // The assigned id is really the client's: a HELLO naming it (with its resume secret) takes
    // the connection over.
    let mut successor = RawPeer::named(addr, "successor");
    successor.hello_resuming(channel, first.client, first.resume);
    first.expect_fatal(switchyard::protocol::ErrorCode::Replaced);
    let mut first = successor;

    let gone = second.client;
    drop(second);
    first.expect_presence(FrameType::PeerLeft, gone);
    first.barrier();
    drop(first);
    wait_idle(&handle);
}

/// 50 connect / hello / drop cycles on `channel`, as fast as the test can go: even cycles send
/// their HELLO and drop at once (the broker may read HELLO and EOF together), odd cycles send a
/// nil HELLO and wait for the welcome (to learn the assigned id). Returns the ids in order.
fn churn(addr: std::net::SocketAddr, channel: ChannelId, cycles: usize) -> Vec<ClientId> {
    let mut ids = Vec::with_capacity(cycles);
    for i in 0..cycles {
        let mut peer = RawPeer::named(addr, &format!("cycle-{i}"));
        if i % 2 == 0 {
            let id = ClientId::random();
            peer.send_hello(channel, id);
            ids.push(id);
        } else {
            peer.hello(channel, ClientId::NIL);
            ids.push(peer.client);
        }
        drop(peer);
    }
    ids
}

/// After the churn only the observer is left; once it goes, the broker is idle.
#[track_caller]
fn finish_churn(handle: &switchyard::server::ServerHandle, mut observer: RawPeer, cycles: usize) {
    observer.barrier();
    let stats = handle.stats().unwrap();
    assert_eq!(stats.sockets, 1, "only the observer is left: {stats:?}");
    assert_eq!(stats.router.connections, 1, "{stats:?}");
    assert_eq!(stats.router.channels, 1, "{stats:?}");
    drop(observer);
    let stats = wait_idle(handle);
    assert_eq!(stats.accepted, cycles as u64 + 1);
    assert_eq!(stats.closed, cycles as u64 + 1);
}

#[test]
fn rapid_connect_hello_drop_cycles_pair_presence_and_leave_the_broker_idle() {
    const CYCLES: usize = 50;
    let handle = start();
    let addr = handle.local_addr();
    let channel = ChannelId::random();
    let mut observer = RawPeer::named(addr, "observer");
    observer.hello(channel, ClientId::random());

    let ids = churn(addr, channel, CYCLES);

    // Every cycle is seen exactly once joining and once leaving, the leave after the join; no
    // id is ever left "online" (the predecessor's flapping on rapid reconnects).
    let mut online: Vec<ClientId> = Vec::new();
    let mut seen: Vec<ClientId> = Vec::new();
    for _ in 0..2 * CYCLES {
        let frame = observer.recv();
        let who = frame.header.client_id;
        assert!(
            ids.contains(&who),
            "presence about an unknown id: {}",
            raw::describe(&frame)
        );
        match frame.header.frame_type {
            FrameType::PeerJoined => {
                assert!(!seen.contains(&who), "{who} joined twice");
                seen.push(who);
                online.push(who);
            }
            FrameType::PeerLeft => {
                let at = online.iter().position(|id| *id == who);
                let at = at.unwrap_or_else(|| panic!("{who} left without being online"));
                online.swap_remove(at);
            }
            _ => panic!("expected presence, got {}", raw::describe(&frame)),
        }
    }
    assert!(online.is_empty(), "still online: {online:?}");
    assert_eq!(seen.len(), CYCLES);
    finish_churn(&handle, observer, CYCLES);
}

#[test]
fn rapid_connect_hello_drop_cycles_see_exactly_alternating_presence_in_order() {
    const CYCLES: usize = 50;
    let handle = start();
    let addr = handle.local_addr();
    let channel = ChannelId::random();
    let mut observer = RawPeer::named(addr, "observer");
    observer.hello(channel, ClientId::random());

    let ids = churn(addr, channel, CYCLES);

    // Cycle i dropped its socket (the FIN was in the broker's socket) before cycle i + 1 even
    // connected, and the broker reads connections in order of readiness: each cycle's LEFT must
    // precede the next one's JOINED.
    for (i, id) in ids.iter().enumerate() {
        let joined = observer.recv();
        let left = observer.recv();
        for (frame, kind) in [
            (&joined, FrameType::PeerJoined),
            (&left, FrameType::PeerLeft),
        ] {
            assert!(
                frame.header.frame_type == kind && frame.header.client_id == *id,
                "cycle {i}: expected {kind:?} about {id}, got {}",
                raw::describe(frame)
            );
        }
    }
    finish_churn(&handle, observer, CYCLES);
}

#[test]
fn reconnecting_with_the_same_client_id_right_after_dropping_is_welcomed() {
    // The old connection's HELLO and FIN are in the broker's socket before the new connection
    // exists; when the broker reads both connections in one turn (about a third of the attempts
    // on a loopback test machine), it must still process the old one's EOF first.
    const ATTEMPTS: usize = 100;
    let handle = start();
    let addr = handle.local_addr();
    let channel = ChannelId::random();
    for attempt in 0..ATTEMPTS {
        let id = ClientId::random();
        let mut old = RawPeer::named(addr, "old");
        old.send_hello(channel, id);
        drop(old);
        let mut new = RawPeer::named(addr, "new");
        new.send_hello(channel, id);
        let frame = new.recv();
        assert_eq!(
            frame.header.frame_type,
            FrameType::Welcome,
            "attempt {attempt}: reconnect with the id of a connection already closed got {}",
            raw::describe(&frame)
        );
        drop(new);
    }
    wait_idle(&handle);
}
