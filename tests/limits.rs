//! Connection-level resource limits over real sockets (PROTOCOL.md §9.1): the broker refuses
//! connections beyond `max_connections` and `max_connections_per_ip` with one ERROR
//! LIMIT_EXCEEDED (nil request id) and a close, closes connections that never complete their
//! handshake, and the client library reports both as a failed connect. Bystanders connected
//! before are never disturbed, and every count returns to zero at the end.
//! (The channel, peer and in-flight limits are router logic: `src/router/tests/limits.rs`.)

use std::time::Duration;
use switchyard::client::{Client, Error};
use switchyard::ids::{ChannelId, ClientId, RequestId};
use switchyard::protocol::{ErrorCode, FrameType};
use switchyard::server::ServerConfig;
use switchyard_testkit::{
    broker::{config, start_with},
    gauges::{wait_for, wait_idle},
    raw::RawPeer,
};

/// Two handshaken peers on one channel that check, with a barrier, that nothing reached them.
fn bystanders(addr: std::net::SocketAddr) -> (RawPeer, RawPeer) {
    let channel = ChannelId::random();
    let mut a = RawPeer::named(addr, "bystander-a");
    a.hello(channel, ClientId::random());
    let mut b = RawPeer::named(addr, "bystander-b");
    b.hello(channel, ClientId::random());
    a.expect_presence(FrameType::PeerJoined, b.client);
    (a, b)
}

/// The broker's refusal: ERROR LIMIT_EXCEEDED with a nil request id, then the close.
#[track_caller]
fn expect_refused(peer: &mut RawPeer) -> String {
    let body = peer.expect_error(ErrorCode::LimitExceeded, RequestId::NIL);
    peer.expect_closed();
    body.message
}

#[test]
fn connections_beyond_max_connections_are_refused_with_limit_exceeded() {
    let handle = start_with(ServerConfig {
        max_connections: 3,
        ..config()
    });
    let addr = handle.local_addr();
    let (mut a, mut b) = bystanders(addr);
    let mut c = RawPeer::named(addr, "third");
    wait_for(&handle, "three connections", |s| s.sockets == 3);
    // Over the limit: refused whether or not the client already sent its HELLO.
    let mut silent = RawPeer::named(addr, "fourth-silent");
    let text = expect_refused(&mut silent);
    assert!(text.contains("3 connections"), "{text}");
    let mut eager = RawPeer::named(addr, "fourth-eager");
    eager.send_hello(ChannelId::random(), ClientId::random());
    expect_refused(&mut eager);
    // The client library reports it as the connect's error.
    match Client::connect(addr, ChannelId::random()) {
        Err(Error::Broker { code: 0x0109, .. }) => {}
        other => panic!("expected LIMIT_EXCEEDED from connect, got {other:?}"),
    }
    let stats = wait_for(&handle, "three refusals", |s| s.refused == 3);
    assert_eq!((stats.sockets, stats.accepted), (3, 3));
    // Nobody else noticed anything, and the third may still join.
    a.barrier();
    b.barrier();
    c.hello(ChannelId::random(), ClientId::random());
    // A freed place is taken again.
    drop(c);
    wait_for(&handle, "two connections", |s| s.sockets == 2);
    let client = Client::connect(addr, ChannelId::random()).expect("a place is free");
    client.close();
    drop((a, b));
    let stats = wait_idle(&handle);
    assert_eq!(stats.refused, 3);
}

/// A non-loopback address of this machine (the one it would route to a documentation address
/// from; no packet is sent), if it has one.
fn non_loopback_address() -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[test]
fn connections_beyond_max_connections_per_ip_are_refused() {
    // Loopback is exempt from the per-address limit (`loopback_is_exempt_from_the_per_ip_limit`):
    // the limit needs a non-loopback address of this machine.
    let Some(ip) = non_loopback_address() else {
        eprintln!("no non-loopback address on this machine: the per-IP refusal is not exercised");
        return;
    };
    let handle = start_with(ServerConfig {
        listen: std::net::SocketAddr::new(ip, 0),
        max_connections_per_ip: 2,
        ..config()
    });
    let addr = handle.local_addr();
    let (mut a, mut b) = bystanders(addr);
    let mut third = RawPeer::named(addr, "third-from-the-same-address");
    let text = expect_refused(&mut third);
    assert!(text.contains(&ip.to_string()), "{text}");
    a.barrier();
    b.barrier();
    let gone = b.client;
    drop(b);
    wait_for(&handle, "one connection", |s| s.sockets == 1);
    a.expect_presence(FrameType::PeerLeft, gone);
    let mut again = RawPeer::named(addr, "after-a-close");
    again.hello(a.channel, ClientId::random());
    a.expect_presence(FrameType::PeerJoined, again.client);
    assert_eq!(handle.stats().unwrap().refused, 1);
    drop((a, again));
    wait_idle(&handle);
}

#[test]
fn loopback_is_exempt_from_the_per_ip_limit() {
    // Every local client shares 127.0.0.1: a per-address limit there would cap a one-box
    // deployment and let one local process lock the others out (issue 10 item 7).
    let handle = start_with(ServerConfig {
        max_connections_per_ip: 2,
        ..config()
    });
    let addr = handle.local_addr();
    let (mut a, mut b) = bystanders(addr);
    let mut third = RawPeer::named(addr, "third-from-loopback");
    third.hello(a.channel, ClientId::random());
    a.expect_presence(FrameType::PeerJoined, third.client);
    b.expect_presence(FrameType::PeerJoined, third.client);
    assert_eq!(handle.stats().unwrap().refused, 0);
    drop((a, b, third));
    wait_idle(&handle);
}

#[test]
fn a_connection_that_never_completes_its_handshake_is_closed() {
    let mut config = config();
    config.router.handshake_timeout = Duration::from_millis(200);
    let handle = start_with(config);
    let addr = handle.local_addr();
    let (mut a, mut b) = bystanders(addr);
    // Slowloris: nothing at all, or half a header.
    let mut silent = RawPeer::named(addr, "silent");
    let mut trickle = RawPeer::named(addr, "trickle");
    trickle.send_bytes(&[1, 0x01, 0, 0]);
    for peer in [&mut silent, &mut trickle] {
        let body = peer.expect_error(ErrorCode::HandshakeRequired, RequestId::NIL);
        assert!(body.message.contains("200 ms"), "{}", body.message);
        peer.expect_closed();
    }
    let stats = wait_for(&handle, "two handshake failures", |s| {
        s.router.handshake_failures == 2 && s.sockets == 2
    });
    assert_eq!(stats.router.connections, 2);
    // The handshaken ones are untouched, long after the deadline.
    a.barrier();
    b.barrier();
    drop((a, b));
    wait_idle(&handle);
}

#[test]
fn a_hello_beyond_the_peer_limit_fails_the_clients_connect() {
    let mut config = config();
    config.router.max_peers_per_channel = 1;
    let handle = start_with(config);
    let addr = handle.local_addr();
    let channel = ChannelId::random();
    let first = Client::connect(addr, channel).expect("the first peer joins");
    match Client::connect(addr, channel) {
        Err(Error::Broker {
            code: 0x0109,
            message,
        }) => {
            assert!(message.contains("1 peers"), "{message}")
        }
        other => panic!("expected LIMIT_EXCEEDED from connect, got {other:?}"),
    }
    // Another channel is not affected.
    let other = Client::connect(addr, ChannelId::random()).expect("another channel");
    assert!(!first.is_closed());
    first.close();
    other.close();
    wait_idle(&handle);
}
