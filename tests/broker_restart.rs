//! Fault injection over real processes (issue 5, item 6), the broker's own death: the real
//! broker binary SIGKILLed and restarted on the same port under connected clients. In-flight
//! operations fail with `Error::ConnectionLost` (requests sent, requests held); the clients
//! reconnect by themselves; presence is consistent; new requests succeed; the new broker ends
//! idle. (The faulty peers are `tests/faults.rs`; a graceful restart is `tests/reconnect.rs`.)

use std::thread;
use std::time::Duration;
use switchyard_testkit::{client::fast_reconnect, process::BrokerProcess, DEADLINE};

use switchyard::client::{Client, ConnectionState, Error};
use switchyard::ids::{ChannelId, ClientId};

/// The broker's answer to PEERS and the client's own view agree, and name exactly `expected`.
#[track_caller]
fn assert_presence(client: &Client, expected: &[ClientId]) {
    let mut asked = client.fetch_peers(DEADLINE).expect("PEERS");
    asked.sort();
    let mut seen = client.peers();
    seen.sort();
    let mut expected = expected.to_vec();
    expected.sort();
    assert_eq!(
        asked,
        expected,
        "the broker's view for {}",
        client.client_id()
    );
    assert_eq!(
        seen,
        expected,
        "the client's own view for {}",
        client.client_id()
    );
}

#[test]
fn a_broker_killed_and_restarted_under_its_clients_is_rejoined() {
    let args = [
        "--presence-grace-ms",
        "0",
        "--metrics-listen",
        "127.0.0.1:0",
    ];
    // Trace lines of the routing core: "recv Start ..." says a request reached the broker.
    let any_port = "127.0.0.1:0".parse().unwrap();
    let mut broker = BrokerProcess::start_logging(
        any_port,
        &args,
        None,
        Some("info,switchyard_core::router=trace"),
    );
    let addr = broker.addr;
    let channel = ChannelId::random();
    let connect = || Client::connect_with(addr, channel, fast_reconnect(None)).expect("a client");
    let asker = connect();
    let queued = connect();
    let holder = connect();
    holder.set_receive_window(1).expect("RECEIVE");
    holder.ping(DEADLINE).expect("PONG after RECEIVE");
    let ids = [asker.client_id(), queued.client_id(), holder.client_id()];
    let others = |me: ClientId| {
        ids.iter()
            .copied()
            .filter(|id| *id != me)
            .collect::<Vec<_>>()
    };

    thread::scope(|s| {
        // In flight at the kill: a request held by the receiver, and one waiting for a receiver.
        let held = s.spawn(|| asker.request(b"held", Duration::from_secs(30)));
        let request = holder
            .next_request(Some(DEADLINE))
            .expect("the first request reaches the holder");
        let waiting = s.spawn(|| queued.request(b"waiting", Duration::from_secs(30)));
        // Both STARTs reached the broker (so both requests are in flight for their clients).
        broker.wait_lines("recv Start", 2, DEADLINE);
        broker.kill();

        for (what, result) in [("held", held.join()), ("waiting", waiting.join())] {
            match result.unwrap() {
                Err(Error::ConnectionLost) => {}
                other => panic!("the {what} request: expected ConnectionLost, got {other:?}"),
            }
        }
        // The holder's request died with the link too, once its client has seen the loss (a
        // response written before that goes into a socket nobody reads: the client cannot
        // tell it apart from a sent one).
        loop {
            let change = holder
                .next_state_change(Some(DEADLINE))
                .expect("the holder sees the link drop");
            if matches!(change.state, ConnectionState::Reconnecting { .. }) {
                break;
            }
        }
        match request.respond(b"too late") {
            Err(Error::ConnectionLost) => {}
            other => panic!("responding after the kill: expected ConnectionLost, got {other:?}"),
        }
    });

    // A new broker on the same port: the clients come back by themselves.
    let broker = BrokerProcess::start_on(addr, &args, None);
    for client in [&asker, &queued, &holder] {
        client
            .wait_connected(Some(DEADLINE))
            .expect("the client reconnects");
    }
    for client in [&asker, &queued, &holder] {
        assert_presence(client, &others(client.client_id()));
    }
    // The receive window was re-issued on the new connection: new requests are served.
    thread::scope(|s| {
        let answering = s.spawn(|| {
            for _ in 0..2 {
                let mut request = holder.next_request(Some(DEADLINE)).expect("a request");
                let body = request.read_body().expect("its body");
                request.respond(&body).expect("the response");
            }
        });
        assert_eq!(asker.request(b"again", DEADLINE).expect("served"), b"again");
        assert_eq!(queued.request(b"also", DEADLINE).expect("served"), b"also");
        answering.join().unwrap();
    });
    let metrics = broker.scrape();
    assert_eq!(metrics.get("switchyard_connections"), 3);
    asker.close();
    queued.close();
    holder.close();
    broker.wait_all_closed(DEADLINE);
    broker.scrape().assert_idle();
}
