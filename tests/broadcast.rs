//! Broadcast through a real broker with the blocking client (issue behaviour 6): every other
//! peer gets its own copy and the sender the ack count; no peers; a peer that never takes the
//! broadcast is named after the timeout; a stuck peer (a raw socket that never reads) does not
//! delay the others; peers joining after the START are not included.
//!
//! Every test ends by closing its clients and asserting the broker is idle (behaviour 9).

use std::io::Write;
use std::net::TcpStream;
use std::thread;
use std::time::Duration;
use switchyard_testkit::{
    assert_err,
    body::body,
    broker::{start, start_router},
    client::{connect, set_window},
    gauges::wait_idle,
    now, DEADLINE, QUIET,
};

use switchyard::client::{Client, Error, PresenceEvent};
use switchyard::ids::{ChannelId, ClientId};
use switchyard::protocol::{FrameType, Header};
use switchyard::router::RouterConfig;
use switchyard::server::ServerHandle;

/// A timeout long enough never to fire in a passing test.
const LONG: Duration = Duration::from_secs(10);

#[test]
fn every_other_peer_gets_its_own_copy() {
    const PEERS: usize = 4;
    // Small frames: the body is a multi-frame stream, copied frame by frame to every peer.
    let handle = start_router(RouterConfig {
        max_payload: 4096,
        ..RouterConfig::default()
    });
    let channel = ChannelId::random();
    let sender = connect(&handle, channel);
    let peers: Vec<Client> = (0..PEERS).map(|_| connect(&handle, channel)).collect();
    let elsewhere = connect(&handle, ChannelId::random());
    let message = body(11, 50_000);

    thread::scope(|s| {
        let taking: Vec<_> = peers
            .iter()
            .map(|peer| s.spawn(move || peer.next_broadcast(Some(DEADLINE))))
            .collect();
        let acked = sender.broadcast(&message, LONG).expect("every peer acked");
        assert_eq!(acked, PEERS as u32);
        let mut ids = Vec::new();
        for taking in taking {
            let got = taking.join().unwrap().expect("a copy");
            assert_eq!(got.sender, sender.client_id());
            assert!(got.body == message, "a peer's copy differs");
            ids.push(got.id);
        }
        ids.dedup();
        assert_eq!(ids.len(), 1, "one broadcast, one id");
    });
    // Not to the sender itself, nor to another channel.
    assert_err!(sender.next_broadcast(Some(QUIET)), Error::WaitElapsed);
    assert_err!(
        elsewhere.next_broadcast(Some(Duration::ZERO)),
        Error::WaitElapsed
    );

    // An empty body and a one-frame body too, back to back.
    for message in [&b""[..], &b"tiny"[..]] {
        thread::scope(|s| {
            let taking: Vec<_> = peers
                .iter()
                .map(|peer| s.spawn(move || peer.next_broadcast(Some(DEADLINE))))
                .collect();
            assert_eq!(sender.broadcast(message, LONG).unwrap(), PEERS as u32);
            for taking in taking {
                assert_eq!(taking.join().unwrap().unwrap().body, message);
            }
        });
    }

    drop((sender, peers, elsewhere));
    wait_idle(&handle);
}

#[test]
fn a_broadcast_without_peers_fails_at_once() {
    let handle = start();
    let channel = ChannelId::random();
    let alone = connect(&handle, channel);
    let _elsewhere = connect(&handle, ChannelId::random());
    let started = now();
    assert_err!(alone.broadcast(b"hello?", LONG), Error::NoPeers);
    assert!(started.elapsed() < Duration::from_secs(1));
    // A receive window does not make a client its own peer.
    set_window(&alone, 4);
    assert_err!(alone.broadcast(b"hello?", LONG), Error::NoPeers);

    drop((alone, _elsewhere));
    wait_idle(&handle);
}

#[test]
fn a_peer_that_never_takes_the_broadcast_is_named() {
    let handle = start();
    let channel = ChannelId::random();
    let sender = connect(&handle, channel);
    let taker = connect(&handle, channel);
    let ignorer = connect(&handle, channel); // never calls next_broadcast: never acks
    let timeout = Duration::from_millis(400);

    thread::scope(|s| {
        let taking = s.spawn(|| taker.next_broadcast(Some(DEADLINE)));
        let started = now();
        let result = sender.broadcast(b"news", timeout);
        let took = started.elapsed();
        match result {
            Err(Error::BroadcastIncomplete { missing }) => {
                assert_eq!(missing, vec![ignorer.client_id()]);
            }
            other => panic!("expected BroadcastIncomplete, got {other:?}"),
        }
        assert!(
            took >= timeout,
            "reported after {took:?}, before the timeout"
        );
        assert!(took < timeout + Duration::from_secs(2), "took {took:?}");
        assert_eq!(taking.join().unwrap().unwrap().body, b"news");
    });
    handle
        .wait_until(|st| st.router.broadcasts == 0, DEADLINE)
        .expect("the broadcast is over");

    drop((sender, taker, ignorer));
    wait_idle(&handle);
}

/// A peer that did the handshake by hand on a raw socket and never reads a byte.
fn stuck_peer(handle: &ServerHandle, channel: ChannelId) -> (TcpStream, ClientId) {
    let id = ClientId::random();
    let mut hello = Header::new(FrameType::Hello);
    hello.client_id = id;
    hello.channel_id = channel;
    let mut stream = TcpStream::connect(handle.local_addr()).expect("connect");
    stream.write_all(&hello.encode()).expect("HELLO");
    (stream, id)
}

#[test]
fn a_stuck_peer_does_not_delay_the_others() {
    const PEERS: usize = 3;
    const HIGH_WATERMARK: usize = 1 << 20;
    // A few hundred KiB: less than the high watermark, so a healthy peer can never be over it,
    // however slowly its reader thread runs on a loaded machine.
    const BODY: usize = 512 << 10;
    let handle = start_router(RouterConfig {
        max_payload: 16 * 1024,
        high_watermark: HIGH_WATERMARK,
        low_watermark: 256 << 10,
        ..RouterConfig::default()
    });
    let channel = ChannelId::random();
    let sender = connect(&handle, channel);
    let (stuck, stuck_id) = stuck_peer(&handle, channel);
    assert_eq!(
        sender.next_presence(Some(DEADLINE)).expect("presence"),
        PresenceEvent::Joined(stuck_id)
    );

    // First fill the stuck peer's socket and outbound queue, with a broadcast to it alone far
    // larger than what the loopback socket buffers of a peer that never reads absorb (a few
    // MiB: the send buffer grows to net.ipv4.tcp_wmem's max) plus the watermark. A broadcast of
    // a few hundred KiB alone never overflowed it, and a peer not over the watermark is rightly
    // waited for. This one drops the stuck peer as soon as its queue is over the watermark.
    let started = now();
    match sender.broadcast(&body(14, 16 << 20), LONG) {
        Err(Error::BroadcastIncomplete { missing }) => assert_eq!(missing, vec![stuck_id]),
        other => panic!("expected the stuck peer to be dropped, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    let stats = handle.stats().unwrap();
    assert!(
        stats.router.buffered_bytes > HIGH_WATERMARK,
        "the stuck peer's queue is not full: {stats:?}"
    );

    // Now the healthy peers join, and a broadcast finds the stuck peer's socket full.
    let peers: Vec<Client> = (0..PEERS).map(|_| connect(&handle, channel)).collect();
    let message = body(12, BODY);
    thread::scope(|s| {
        let taking: Vec<_> = peers
            .iter()
            .map(|peer| {
                s.spawn(move || {
                    let started = now();
                    let got = peer.next_broadcast(Some(LONG));
                    (got, started.elapsed())
                })
            })
            .collect();
        let started = now();
        let result = sender.broadcast(&message, LONG);
        let took = started.elapsed();
        match result {
            Err(Error::BroadcastIncomplete { missing }) => assert_eq!(missing, vec![stuck_id]),
            other => panic!("expected BroadcastIncomplete naming the stuck peer, got {other:?}"),
        }
        // Reported as soon as the others acked, not at the 10 s timeout.
        assert!(
            took < Duration::from_secs(5),
            "the stuck peer delayed the sender: {took:?}"
        );
        for taking in taking {
            let (got, waited) = taking.join().unwrap();
            let got = got.expect("a healthy peer got the broadcast");
            assert!(got.body == message, "a healthy peer's copy differs");
            assert!(
                waited < Duration::from_secs(5),
                "a healthy peer waited {waited:?}"
            );
        }
    });
    let stats = handle.stats().unwrap();
    assert_eq!(stats.router.broadcasts, 0);

    drop(stuck);
    drop((sender, peers));
    wait_idle(&handle);
}

#[test]
fn peers_joining_after_the_start_are_not_included() {
    let handle = start();
    let channel = ChannelId::random();
    let sender = connect(&handle, channel);
    let early = connect(&handle, channel);

    let late = thread::scope(|s| {
        let broadcasting = s.spawn(|| sender.broadcast(b"before you came", LONG));
        handle
            .wait_until(|st| st.router.broadcasts == 1, DEADLINE)
            .expect("the broadcast started");
        // Joins while the broadcast waits for the early peer's ack.
        let late = connect(&handle, channel);
        assert_eq!(
            early.next_broadcast(Some(DEADLINE)).unwrap().body,
            b"before you came"
        );
        assert_eq!(broadcasting.join().unwrap().expect("acked"), 1);
        late
    });
    assert_err!(late.next_broadcast(Some(QUIET)), Error::WaitElapsed);
    // The next broadcast includes it.
    thread::scope(|s| {
        let taking: Vec<_> = [&early, &late]
            .into_iter()
            .map(|peer| s.spawn(move || peer.next_broadcast(Some(DEADLINE))))
            .collect();
        assert_eq!(sender.broadcast(b"now with you", LONG).unwrap(), 2);
        for taking in taking {
            assert_eq!(taking.join().unwrap().unwrap().body, b"now with you");
        }
    });

    drop((sender, early, late));
    wait_idle(&handle);
}
