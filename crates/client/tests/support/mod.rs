//! What the async client's tests share: an in-process broker on an ephemeral port, connecting,
//! and barriers built on the protocol's ordering (a PONG answers after every frame sent before
//! its PING), never on sleeps.

#![allow(dead_code)] // Each test binary uses its own subset.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use switchyard::router::RouterConfig;
use switchyard::server::{Server, ServerConfig, ServerHandle};
use switchyard_client::{AsyncClient, ChannelId, ClientOptions, ReconnectPolicy};

/// Bound on every wait for something that must happen (a generous CI margin).
pub const WAIT: Duration = Duration::from_secs(20);

/// A broker on 127.0.0.1, an ephemeral port, presence grace off (presence is seen at once).
pub fn broker() -> ServerHandle {
    broker_on("127.0.0.1:0".parse().expect("address")).expect("spawn the broker")
}

/// A broker on `listen`, presence grace off.
pub fn broker_on(listen: SocketAddr) -> io::Result<ServerHandle> {
    Server::spawn(ServerConfig {
        listen,
        router: RouterConfig {
            presence_grace: Duration::ZERO,
            ..RouterConfig::default()
        },
        ..ServerConfig::default()
    })
}

/// Reconnection with test-sized delays: attempts every 5–20 ms, never giving up.
pub fn fast_reconnect() -> ClientOptions {
    ClientOptions {
        connect_timeout: Duration::from_secs(2),
        reconnect: Some(ReconnectPolicy {
            initial_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(20),
            multiplier: 2.0,
            jitter: 0.5,
            max_attempts: None,
        }),
        ..ClientOptions::default()
    }
}

/// An async client joined to `channel`.
pub async fn connect(broker: &ServerHandle, channel: ChannelId) -> AsyncClient {
    AsyncClient::connect(broker.local_addr(), channel)
        .await
        .expect("connect to the broker")
}

/// Sets the receive window and returns once the broker has processed it: the RECEIVE goes out
/// before the PING, and the broker answers frames in order.
pub async fn set_window(client: &AsyncClient, window: u32) {
    client.set_receive_window(window).expect("set the window");
    client.ping(WAIT).await.expect("ping barrier");
}

/// A body of `len` bytes in which every position is distinguishable (no repeating short
/// period), so a reordered or shifted chunk is caught.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_left(7) as u8 ^ seed)
        .collect()
}
