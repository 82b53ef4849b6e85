//! The presence grace period and client-id takeover over real sockets: rapid reconnect cycles
//! produce no presence flapping, in either interleaving of the old connection's close and the new
//! one's hello, and leave nothing behind.

use std::time::Duration;
use switchyard_testkit::{
    broker::{config, start, start_with},
    gauges::wait_idle,
    raw::RawPeer,
};

use switchyard::client::{Client, ClientOptions, ConnectionState, PresenceEvent};
use switchyard::ids::{ChannelId, ClientId};
use switchyard::protocol::{ErrorCode, FrameType};

fn graceful(grace_ms: u64) -> switchyard::server::ServerConfig {
    let mut config = config();
    config.router.presence_grace = Duration::from_millis(grace_ms);
    config
}

#[test]
fn hundreds_of_rapid_reconnects_are_invisible_to_the_other_peers() {
    let handle = start_with(graceful(300));
    let addr = handle.local_addr();
    let channel = ChannelId::random();
    let observer = Client::connect(addr, channel).expect("observer");
    let flapper = ClientId::random();
    let mut current = RawPeer::named(addr, "flapper-0");
    current.hello(channel, flapper);
    let secret = current.resume;
    for cycle in 1..=300 {
        let mut next = RawPeer::named(addr, "flapper-n");
        if cycle % 2 == 0 {
            // Close first, then come back.
            drop(current);
            next.hello_resuming(channel, flapper, secret);
        } else {
            // Come back first: the old connection is taken over.
            next.hello_resuming(channel, flapper, secret);
            current.expect_fatal(ErrorCode::Replaced);
        }
        current = next;
    }
    current.barrier();
    drop(current);
    // Exactly one join and, after the grace period, exactly one leave: nothing in between.
    let mut events = Vec::new();
    while events.len() < 2 {
        events.push(
            observer
                .next_presence(Some(Duration::from_secs(5)))
                .expect("presence event"),
        );
    }
    assert_eq!(
        events,
        vec![PresenceEvent::Joined(flapper), PresenceEvent::Left(flapper)]
    );
    // Every come-back-first cycle is a takeover. A close-first cycle may be one too: the old
    // connection's FIN and the new connection's HELLO arrive on different sockets, and the
    // broker can read the HELLO first. Either way the observer saw no flapping (above).
    let stats = handle.stats().expect("stats");
    assert!(
        (150..=300).contains(&stats.router.takeovers),
        "takeovers: {}",
        stats.router.takeovers
    );
    drop(observer);
    wait_idle(&handle);
}

#[test]
fn a_taken_over_client_fails_its_in_flight_work_and_the_successor_serves() {
    let handle = start_with(graceful(300));
    let addr = handle.local_addr();
    let channel = ChannelId::random();
    let sender = Client::connect(addr, channel).expect("sender");
    let receiver_id = ClientId::random();
    // The successor is another Client (a restarted process): it proves it is the same client
    // with the resume secret both are configured with.
    let options = ClientOptions {
        client_id: Some(receiver_id),
        resume_secret: Some(*ClientId::random().as_bytes()),
        ..ClientOptions::default()
    };
    let old = Client::connect_with(addr, channel, options.clone()).expect("old receiver");
    old.set_receive_window(1).expect("window");
    std::thread::scope(|s| {
        let asking = s.spawn(|| sender.request(b"first", Duration::from_secs(5)));
        let held = old
            .next_request(Some(Duration::from_secs(5)))
            .expect("assigned");
        // The same client id connects again while the old connection holds the request.
        let new = std::sync::Arc::new(
            Client::connect_with(addr, channel, options.clone()).expect("successor"),
        );
        match asking.join().expect("sender thread") {
            Err(switchyard::client::Error::PeerGone) => {}
            other => panic!("expected PeerGone, got {other:?}"),
        }
        // The sender's PEER_GONE and the old connection's REPLACED travel on different sockets:
        // wait until the old client has read its REPLACED before checking what it refuses.
        // (A respond written before that goes to a closed connection and is simply lost: the
        // broker already ended the request.)
        loop {
            let change = old
                .next_state_change(Some(Duration::from_secs(5)))
                .expect("the old client is told it was replaced");
            if change.state == ConnectionState::Closed {
                let code = change.cause.as_ref().and_then(|e| e.code());
                assert_eq!(
                    code,
                    Some(ErrorCode::Replaced),
                    "closed by {:?}",
                    change.cause
                );
                break;
            }
        }
        assert!(old.is_closed());
        assert!(held.respond(b"too late").is_err());
        new.set_receive_window(1).expect("window");
        let serving_client = std::sync::Arc::clone(&new);
        let serving = s.spawn(move || {
            let new = serving_client;
            let mut request = new
                .next_request(Some(Duration::from_secs(5)))
                .expect("request");
            let body = request.read_body().expect("body");
            request.respond(&body).expect("respond");
        });
        let reply = sender
            .request(b"second", Duration::from_secs(5))
            .expect("served");
        assert_eq!(reply, b"second");
        serving.join().expect("successor thread");
        assert_eq!(
            sender.fetch_peers(Duration::from_secs(5)).expect("peers"),
            vec![receiver_id]
        );
        drop(new);
    });
    drop(old);
    drop(sender);
    wait_idle(&handle);
}

#[test]
fn the_peer_list_can_be_fetched_at_any_time() {
    let handle = start();
    let addr = handle.local_addr();
    let channel = ChannelId::random();
    let a = Client::connect(addr, channel).expect("a");
    assert_eq!(
        a.fetch_peers(Duration::from_secs(5)).expect("peers"),
        vec![]
    );
    let b = Client::connect(addr, channel).expect("b");
    let mut raw = RawPeer::named(addr, "raw");
    raw.hello(channel, ClientId::random());
    let mut listed = a.fetch_peers(Duration::from_secs(5)).expect("peers");
    listed.sort();
    let mut expected = vec![b.client_id(), raw.client];
    expected.sort();
    assert_eq!(listed, expected);
    raw.send(raw.header(FrameType::Peers), b"");
    let answer = raw.recv_kind(FrameType::Peers, true);
    let mut raw_listed = switchyard::protocol::decode_peers(&answer.payload).expect("list");
    raw_listed.sort();
    let mut expected = vec![a.client_id(), b.client_id()];
    expected.sort();
    assert_eq!(raw_listed, expected);
    drop((a, b, raw));
    wait_idle(&handle);
}
