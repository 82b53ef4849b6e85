//! Automatic reconnection against real brokers: a broker restarted on the same address under
//! connected clients, GOING_AWAY followed by a new broker, close() during the backoff, attempts
//! running out, and reconnection turned off. No sleeps: ordering comes from blocking calls with
//! deadlines (state changes, `wait_connected`, requests) and from the broker's own stats.

use std::io;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;
use switchyard_testkit::{
    assert_err,
    broker::{self, start},
    client::{echo, fast_reconnect, set_window, Responder},
    gauges::wait_idle,
    now, DEADLINE,
};

use switchyard::client::{
    Client, ClientOptions, ConnectionState, Error, ReconnectPolicy, RequestOptions,
};
use switchyard::ids::ChannelId;
use switchyard::server::{Server, ServerConfig, ServerHandle};

/// A request timeout no test reaches.
const LONG: Duration = Duration::from_secs(30);

/// A broker on `listen`, with the default test configuration (presence grace period off).
fn broker_on(listen: SocketAddr) -> io::Result<ServerHandle> {
    Server::spawn(ServerConfig {
        listen,
        ..broker::config()
    })
}

/// A new broker on the address a stopped one had. The listener sets SO_REUSEADDR (mio does on
/// Unix), so the old broker's TIME_WAIT sockets do not block the bind; should the port still be
/// busy, the bind is retried a bounded number of times with a short pause (a retry, not a
/// synchronisation: nothing else is waited for).
fn restart_on(addr: SocketAddr) -> ServerHandle {
    let pause: mpsc::Receiver<()> = mpsc::channel().1;
    let mut last = None;
    for _ in 0..50 {
        match broker_on(addr) {
            Ok(handle) => return handle,
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                last = Some(e);
                let _ = pause.recv_timeout(Duration::from_millis(20));
            }
            Err(e) => panic!("rebinding {addr}: {e}"),
        }
    }
    panic!("{addr} stayed in use: {last:?}");
}

/// Takes state changes until one is `state`; returns its cause. Panics on `Closed` (unless
/// that is what is expected) or after [`DEADLINE`].
#[track_caller]
fn expect_state(client: &Client, state: ConnectionState) -> Option<Error> {
    loop {
        let change = client
            .next_state_change(Some(DEADLINE))
            .unwrap_or_else(|e| panic!("no state change to {state:?}: {e}"));
        if change.state == state {
            return change.cause;
        }
        assert_ne!(change.state, ConnectionState::Closed, "{change:?}");
    }
}

#[test]
fn restarting_the_broker_under_connected_clients() {
    let mut first = start();
    let addr = first.local_addr();
    let channel = ChannelId::random();
    let sender = Client::connect_with(addr, channel, fast_reconnect(None)).expect("sender");
    let receiver = Client::connect_with(addr, channel, fast_reconnect(None)).expect("receiver");
    let (sender_id, receiver_id) = (sender.client_id(), receiver.client_id());
    set_window(&receiver, 1);
    assert_eq!(receiver.state(), ConnectionState::Connected);

    let second = thread::scope(|s| {
        let asking = s.spawn(|| sender.request(b"in flight", LONG));
        let held = receiver.next_request(Some(DEADLINE)).expect("assigned");
        // A caller waiting for requests is not an operation in flight: it waits through the
        // restart and is served by the next broker (the window, one slot, is re-issued).
        let serving = s.spawn(|| {
            let mut incoming = receiver.next_request(Some(LONG)).expect("served after");
            let sender = incoming.sender();
            let body = incoming.read_body().expect("body");
            incoming.respond(&body).expect("respond");
            sender
        });

        first.shutdown();
        assert_err!(asking.join().expect("sender thread"), Error::ConnectionLost);
        for client in [&sender, &receiver] {
            let cause = expect_state(client, ConnectionState::Reconnecting { attempt: 1 });
            assert!(matches!(cause, Some(Error::Io(_))), "{cause:?}");
            assert!(!client.is_closed());
        }
        // The held request died with its connection: answering it fails clearly, and is not
        // sent anywhere else.
        assert_err!(held.respond(b"too late"), Error::ConnectionLost);
        // Nothing new starts while there is no broker.
        assert_err!(sender.request(b"now?", LONG), Error::Reconnecting);

        let second = restart_on(addr);
        for client in [&sender, &receiver] {
            client.wait_connected(Some(DEADLINE)).expect("reconnected");
            assert!(expect_state(client, ConnectionState::Connected).is_none());
        }
        assert_eq!(
            (sender.client_id(), receiver.client_id()),
            (sender_id, receiver_id)
        );
        // Served without the application setting the window again; the broker knows both
        // clients under their old ids.
        let options = RequestOptions {
            timeout: Some(LONG),
            no_wait: false,
        };
        let response = sender
            .request_with(&mut &b"after the restart"[..], options)
            .expect("request after the restart");
        assert_eq!(response.responder(), receiver_id);
        assert_eq!(response.read_to_vec().expect("body"), b"after the restart");
        assert_eq!(serving.join().expect("serving thread"), sender_id);
        assert_eq!(
            receiver.fetch_peers(DEADLINE).expect("peers"),
            vec![sender_id]
        );
        second
    });
    let stats = second.stats().expect("stats");
    assert_eq!(stats.accepted, 2, "one connection per client: {stats:?}");
    sender.close();
    receiver.close();
    assert_eq!(sender.state(), ConnectionState::Closed);
    wait_idle(&second);
}

#[test]
fn going_away_is_followed_by_a_reconnect_to_the_next_broker() {
    let mut first = start();
    let addr = first.local_addr();
    let channel = ChannelId::random();
    let a = Client::connect_with(addr, channel, fast_reconnect(None)).expect("a");
    let b = Client::connect_with(addr, channel, fast_reconnect(None)).expect("b");
    set_window(&b, 1);
    // A graceful shutdown: GOING_AWAY, then the broker closes the idle connections.
    first.begin_shutdown().expect("drain");
    for client in [&a, &b] {
        let cause = expect_state(client, ConnectionState::Reconnecting { attempt: 1 });
        assert!(matches!(cause, Some(Error::GoingAway)), "{cause:?}");
    }
    first.join();
    let second = restart_on(addr);
    for client in [&a, &b] {
        client.wait_connected(Some(DEADLINE)).expect("reconnected");
    }
    assert_eq!(a.fetch_peers(DEADLINE).expect("peers"), vec![b.client_id()]);
    let responder = Responder::spawn(b, 1, echo);
    assert_eq!(a.request(b"hi", DEADLINE).expect("served"), b"hi");
    assert_eq!(responder.stop().answered, 1);
    a.close();
    wait_idle(&second);
}

#[test]
fn close_during_the_backoff_returns_at_once_and_ends_closed() {
    let mut broker = start();
    let options = ClientOptions {
        reconnect: Some(ReconnectPolicy {
            initial_delay: Duration::from_secs(60),
            max_delay: Duration::from_secs(60),
            ..ReconnectPolicy::default()
        }),
        ..ClientOptions::default()
    };
    let client =
        Client::connect_with(broker.local_addr(), ChannelId::random(), options).expect("client");
    thread::scope(|s| {
        let waiting = s.spawn(|| client.next_request(None).map(drop));
        broker.shutdown();
        expect_state(&client, ConnectionState::Reconnecting { attempt: 1 });
        // Started while reconnecting: refused at once, nothing sent.
        assert_err!(client.ping(DEADLINE), Error::Reconnecting);
        // The window is a setting: recorded now, re-issued on the next connection.
        client.set_receive_window(3).expect("recorded");
        let started = now();
        client.close();
        let took = started.elapsed();
        assert!(took < Duration::from_secs(1), "close took {took:?}");
        assert_err!(waiting.join().expect("waiter"), Error::Closed);
    });
    assert_eq!(client.state(), ConnectionState::Closed);
    let last = client
        .next_state_change(Some(DEADLINE))
        .expect("the Closed change");
    assert_eq!(last.state, ConnectionState::Closed);
    assert!(matches!(last.cause, Some(Error::Closed)), "{last:?}");
    assert_err!(client.next_state_change(Some(DEADLINE)), Error::Closed);
    assert_err!(client.wait_connected(Some(DEADLINE)), Error::Closed);
    client.close(); // idempotent
}

#[test]
fn when_the_attempts_run_out_the_client_closes_with_the_last_error() {
    let mut broker = start();
    let client = Client::connect_with(
        broker.local_addr(),
        ChannelId::random(),
        fast_reconnect(Some(3)),
    )
    .expect("client");
    broker.shutdown();
    let mut states = Vec::new();
    let cause = loop {
        let change = client
            .next_state_change(Some(DEADLINE))
            .expect("state change");
        states.push(change.state);
        if change.state == ConnectionState::Closed {
            break change.cause;
        }
    };
    assert_eq!(
        states,
        [1, 2, 3]
            .map(|attempt| ConnectionState::Reconnecting { attempt })
            .into_iter()
            .chain([ConnectionState::Closed])
            .collect::<Vec<_>>()
    );
    assert!(
        matches!(cause, Some(Error::ConnectionRefused(_))),
        "{cause:?}"
    );
    assert!(client.is_closed());
    assert_err!(
        client.wait_connected(Some(DEADLINE)),
        Error::ConnectionRefused(_)
    );
    assert_err!(client.next_request(None), Error::ConnectionRefused(_));
}

#[test]
fn without_reconnect_a_lost_connection_closes_the_client() {
    let mut broker = start();
    let options = ClientOptions {
        reconnect: None,
        ..ClientOptions::default()
    };
    let client =
        Client::connect_with(broker.local_addr(), ChannelId::random(), options).expect("client");
    thread::scope(|s| {
        let asking = s.spawn(|| client.request(b"x", LONG));
        let waiting = s.spawn(|| client.next_request(None).map(drop));
        // The request is queued at the broker (nobody serves the channel) before it stops.
        wait_for_pending(&broker);
        broker.shutdown();
        assert_err!(asking.join().expect("sender"), Error::Io(_));
        assert_err!(waiting.join().expect("waiter"), Error::Io(_));
    });
    assert!(client.is_closed());
    assert_eq!(client.state(), ConnectionState::Closed);
    let change = client
        .next_state_change(Some(DEADLINE))
        .expect("the Closed change");
    assert_eq!(change.state, ConnectionState::Closed);
    assert_err!(client.request(b"x", LONG), Error::Io(_));
}

#[track_caller]
fn wait_for_pending(handle: &ServerHandle) {
    handle
        .wait_until(|s| s.router.pending_requests == 1, DEADLINE)
        .expect("the request reached the broker");
}
