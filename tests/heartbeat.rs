//! Heartbeats over real sockets: the broker finds a half-open peer, the client finds a dead
//! broker, and a client that answers keeps its connection.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;
use switchyard_testkit::{
    broker::{config, start_with},
    gauges::wait_idle,
    raw::RawPeer,
};

use bytes::BytesMut;
use switchyard::client::{Client, ClientOptions, Error};
use switchyard::ids::{ChannelId, ClientId};
use switchyard::protocol::{Decoder, ErrorCode, FrameType, Header, WelcomeBody};
use switchyard::server::ServerConfig;

fn beating(interval_ms: u64, misses: u32) -> ServerConfig {
    let mut config = config();
    config.router.heartbeat_interval = Duration::from_millis(interval_ms);
    config.router.heartbeat_misses = misses;
    config
}

#[test]
fn a_half_open_peer_is_pinged_then_closed_and_its_peers_told() {
    let handle = start_with(beating(100, 2));
    let channel = ChannelId::random();
    let observer = Client::connect(handle.local_addr(), channel).expect("observer");
    // A peer whose TCP connection is alive but which never answers anything.
    let mut silent = RawPeer::connect(handle.local_addr());
    let silent_id = ClientId::random();
    let welcome = silent.hello(channel, silent_id);
    assert_eq!(welcome.heartbeat_ms, 100);
    silent.set_deadline(Duration::from_secs(5));
    let first = silent.recv();
    assert_eq!(
        (first.header.frame_type, first.header.sequence),
        (FrameType::Ping, 1)
    );
    let second = silent.recv();
    assert_eq!(
        (second.header.frame_type, second.header.sequence),
        (FrameType::Ping, 2)
    );
    silent.expect_fatal(ErrorCode::HeartbeatTimeout);
    // The observer, which answered every ping through its client library, is still connected
    // and learns that the silent peer left.
    loop {
        match observer
            .next_presence(Some(Duration::from_secs(5)))
            .expect("presence")
        {
            switchyard::client::PresenceEvent::Left(id) if id == silent_id => break,
            _ => continue,
        }
    }
    assert!(!observer.is_closed());
    observer
        .ping(Duration::from_secs(5))
        .expect("the observer's connection is alive");
    drop(observer);
    wait_idle(&handle);
}

#[test]
fn a_client_that_answers_pings_stays_connected_through_many_intervals() {
    // 25 ms with 5 misses allowed: a connection that answers is never closed, while a thread
    // starved for up to ~150 ms on a loaded 2-core machine is not mistaken for a dead peer.
    let handle = start_with(beating(25, 5));
    let channel = ChannelId::random();
    // The client watches the broker with the same tolerance.
    let options = ClientOptions {
        heartbeat_misses: 5,
        reconnect: None,
        ..ClientOptions::default()
    };
    let client = Client::connect_with(handle.local_addr(), channel, options).expect("client");
    // Wait, event-driven, until many intervals have passed with nothing closed: dozens of
    // heartbeat timer firings (each ping is a frame out and a pong in).
    let stats = handle
        .wait_until(|s| s.frames_in >= 30, Duration::from_secs(10))
        .expect("pongs keep arriving");
    assert_eq!(stats.closed, 0);
    assert!(!client.is_closed());
    drop(client);
    wait_idle(&handle);
}

#[test]
fn the_client_gives_up_on_a_broker_that_went_silent() {
    // A fake broker: accepts, welcomes with a 50 ms heartbeat, then never says anything again.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let fake = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        let mut buf = BytesMut::new();
        let mut decoder = Decoder::new(1 << 20);
        let mut chunk = [0u8; 4096];
        let hello = loop {
            if let Some(frame) = decoder.decode(&mut buf).expect("valid hello") {
                break frame;
            }
            let n = stream.read(&mut chunk).expect("read hello");
            buf.extend_from_slice(&chunk[..n]);
        };
        let body = WelcomeBody {
            max_payload: 1 << 20,
            default_timeout_ms: 1_000,
            max_timeout_ms: 1_000,
            heartbeat_ms: 50,
            peers: Vec::new(),
        }
        .encode();
        let welcome = Header {
            client_id: ClientId::random(),
            channel_id: hello.header.channel_id,
            payload_len: body.len() as u32,
            ..Header::new(FrameType::Welcome)
        };
        stream.write_all(&welcome.encode()).expect("welcome");
        stream.write_all(&body).expect("welcome body");
        // Read (and ignore) whatever the client sends until it hangs up: its pings go unanswered.
        let mut pings = 0;
        loop {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    while let Ok(Some(frame)) = decoder.decode(&mut buf) {
                        if frame.header.frame_type == FrameType::Ping {
                            pings += 1;
                        }
                    }
                }
            }
        }
        pings
    });
    let options = ClientOptions {
        heartbeat_misses: 2,
        // Giving up on the broker closes the client only without reconnection.
        reconnect: None,
        ..ClientOptions::default()
    };
    let client = Client::connect_with(addr, ChannelId::random(), options).expect("connect");
    let started = support_now();
    let result = client.next_request(Some(Duration::from_secs(10)));
    let waited = started.elapsed();
    match result {
        Err(Error::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}"),
        other => panic!("expected the heartbeat to fail the client, got {other:?}"),
    }
    assert!(waited < Duration::from_secs(5), "gave up after {waited:?}");
    assert!(client.is_closed());
    drop(client);
    assert_eq!(
        fake.join().expect("fake broker"),
        2,
        "one ping per silent interval, then gone"
    );
}

#[allow(clippy::disallowed_methods)] // measuring how long the client took to give up
fn support_now() -> std::time::Instant {
    std::time::Instant::now()
}
