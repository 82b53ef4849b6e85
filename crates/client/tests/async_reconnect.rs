//! The async client across broker restarts and refusals: reconnection under the same id with
//! the receive window re-issued, in-flight operations failing with `ConnectionLost`, draining
//! after GOING_AWAY, no reconnection after REPLACED, and a server that is not a broker.
#![cfg(feature = "tokio")]

mod support;

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use switchyard::server::{ServerConfig, ServerHandle};
use switchyard_client::{AsyncClient, ChannelId, ClientOptions, ConnectionState, Error};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use support::*;

/// A new broker on the address a stopped one had. Should the port still be busy, the bind is
/// retried a bounded number of times after a short pause (a retry, not a synchronisation).
async fn restart_on(addr: SocketAddr) -> ServerHandle {
    let mut last = None;
    for _ in 0..50 {
        match broker_on(addr) {
            Ok(handle) => return handle,
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("rebinding {addr}: {e}"),
        }
    }
    panic!("{addr} stayed in use: {last:?}");
}

/// Takes state changes until one is `state`.
async fn expect_state(client: &AsyncClient, state: ConnectionState) -> Option<Error> {
    loop {
        let change = client
            .next_state_change(WAIT)
            .await
            .unwrap_or_else(|e| panic!("no state change to {state:?}: {e}"));
        if change.state == state {
            return change.cause;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_across_a_broker_restart() {
    let mut broker = broker();
    let addr = broker.local_addr();
    let channel = ChannelId::random();
    let options = fast_reconnect();
    let worker = AsyncClient::connect_with(addr, channel, options.clone())
        .await
        .expect("worker");
    let sender = AsyncClient::connect_with(addr, channel, options)
        .await
        .expect("sender");
    let worker_id = worker.client_id();
    set_window(&worker, 4).await;
    // A request in flight when the broker goes: held by the worker, never answered.
    let in_flight = {
        let sender = sender.clone();
        tokio::spawn(async move { sender.request("in flight", WAIT).await })
    };
    let held = worker.next_request(WAIT).await.expect("held");
    broker.shutdown();
    let result = in_flight.await.expect("task");
    assert!(matches!(result, Err(Error::ConnectionLost)), "{result:?}");
    expect_state(&sender, ConnectionState::Reconnecting { attempt: 1 }).await;
    drop(held);
    let result = sender.request("between", WAIT).await;
    assert!(
        matches!(result, Err(Error::Reconnecting | Error::ConnectionLost)),
        "{result:?}"
    );

    let _broker = restart_on(addr).await;
    worker.wait_connected(WAIT).await.expect("worker back");
    sender.wait_connected(WAIT).await.expect("sender back");
    assert_eq!(worker.client_id(), worker_id, "the same client id");
    assert_eq!(worker.state(), ConnectionState::Connected);
    // The window was re-issued: the worker is assigned requests again.
    worker.ping(WAIT).await.expect("worker barrier");
    let serving = tokio::spawn(async move {
        let mut request = worker.next_request(WAIT).await.expect("a request");
        let body = request.body().await.expect("body");
        request.respond(body).await.expect("respond");
    });
    let reply = sender.request("after", WAIT).await.expect("reply");
    assert_eq!(&reply[..], b"after");
    serving.await.expect("worker task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn going_away_drains_then_waits_for_the_next_broker() {
    let broker = broker();
    let addr = broker.local_addr();
    let channel = ChannelId::random();
    let client = AsyncClient::connect_with(addr, channel, fast_reconnect())
        .await
        .expect("client");
    broker.begin_shutdown().expect("drain");
    let cause = expect_state(&client, ConnectionState::Draining).await;
    assert!(matches!(cause, Some(Error::GoingAway)), "{cause:?}");
    // Not connected any more: the wait is for a new connection, which no broker offers yet.
    let waited = client.wait_connected(Duration::from_millis(50)).await;
    assert!(matches!(waited, Err(Error::WaitElapsed)), "{waited:?}");
    let result = client.request("new", WAIT).await;
    assert!(
        matches!(result, Err(Error::GoingAway | Error::Reconnecting)),
        "{result:?}"
    );
    let mut broker = broker;
    broker.join();
    let _next = restart_on(addr).await;
    client.wait_connected(WAIT).await.expect("the next broker");
    assert_eq!(client.state(), ConnectionState::Connected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_client_closes_for_good() {
    let broker = broker();
    let channel = ChannelId::random();
    // Taking over a present id needs its resume secret (PROTOCOL.md §5.2): a restarted
    // process is configured with the same one.
    let secret = Some(*switchyard_client::RequestId::random().as_bytes());
    let first_options = ClientOptions {
        resume_secret: secret,
        ..fast_reconnect()
    };
    let first = AsyncClient::connect_with(broker.local_addr(), channel, first_options)
        .await
        .expect("first");
    let options = ClientOptions {
        client_id: Some(first.client_id()),
        resume_secret: secret,
        ..fast_reconnect()
    };
    let _second = AsyncClient::connect_with(broker.local_addr(), channel, options)
        .await
        .expect("second takes over");
    let cause = expect_state(&first, ConnectionState::Closed).await;
    assert!(matches!(cause, Some(Error::Replaced)), "{cause:?}");
    let result = first.ping(WAIT).await;
    assert!(matches!(result, Err(Error::Replaced)), "{result:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_server_is_not_a_broker() {
    // The broker's own metrics port answers HTTP.
    let broker = switchyard::server::Server::spawn(ServerConfig {
        listen: "127.0.0.1:0".parse().expect("address"),
        metrics_listen: Some("127.0.0.1:0".parse().expect("address")),
        ..ServerConfig::default()
    })
    .expect("broker");
    let metrics = broker.metrics_addr().expect("metrics on");
    let result = AsyncClient::connect(metrics, ChannelId::random()).await;
    assert!(
        matches!(result, Err(Error::NotABroker { .. })),
        "{result:?}"
    );
    let blocking = tokio::task::spawn_blocking(move || {
        switchyard_client::Client::connect(metrics, ChannelId::random()).map(drop)
    })
    .await
    .expect("task");
    assert!(
        matches!(blocking, Err(Error::NotABroker { .. })),
        "{blocking:?}"
    );

    // A server that greets with a banner and waits.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let greeter = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("accept");
        socket
            .write_all(b"220 mail ready\r\n")
            .await
            .expect("banner");
        let mut hello = [0u8; 64];
        let _ = socket.read_exact(&mut hello).await;
    });
    let result = AsyncClient::connect(addr, ChannelId::random()).await;
    match result {
        Err(Error::NotABroker { received }) => assert!(received.starts_with(b"220")),
        other => panic!("{other:?}"),
    }
    greeter.await.expect("greeter");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_is_a_connect_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let options = ClientOptions {
        connect_timeout: Duration::from_millis(100),
        ..ClientOptions::default()
    };
    let result = AsyncClient::connect_with(addr, ChannelId::random(), options).await;
    assert!(matches!(result, Err(Error::ConnectTimeout)), "{result:?}");
    drop(listener);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_unauthorized_and_a_right_one_joins() {
    use switchyard::auth::{AccessToken, Tokens};
    use switchyard::router::RouterConfig;
    let broker = switchyard::server::Server::spawn(ServerConfig {
        listen: "127.0.0.1:0".parse().expect("address"),
        router: RouterConfig {
            tokens: Tokens {
                broker: Some(AccessToken::new("open sesame")),
                ..Tokens::default()
            },
            ..RouterConfig::default()
        },
        ..ServerConfig::default()
    })
    .expect("broker");
    let with_token = |token: &str| ClientOptions {
        token: Some(token.as_bytes().to_vec()),
        ..ClientOptions::default()
    };
    let channel = ChannelId::random();
    let result = AsyncClient::connect_with(broker.local_addr(), channel, with_token("guess")).await;
    assert!(matches!(result, Err(Error::Unauthorized)), "{result:?}");
    let client = AsyncClient::connect_with(broker.local_addr(), channel, with_token("open sesame"))
        .await
        .expect("the right token joins");
    client.ping(WAIT).await.expect("ping");
}
