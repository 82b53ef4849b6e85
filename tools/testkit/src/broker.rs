//! A broker in a thread of the test process ([`switchyard::server::Server::spawn`]) on an
//! ephemeral port of 127.0.0.1, with the default test configuration: the library's defaults,
//! with the presence grace period off (PEER_LEFT at once, so a test's broker is idle as soon as
//! its clients are gone; the grace period has its own tests in `presence_grace.rs`).

use std::net::SocketAddr;
use std::time::Duration;

use switchyard::router::RouterConfig;
use switchyard::server::{Server, ServerConfig, ServerHandle};

/// `127.0.0.1:0`: an ephemeral port of the loopback interface.
pub fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// The default test configuration: listening on `127.0.0.1:0`, presence grace period off.
pub fn config() -> ServerConfig {
    let mut config = ServerConfig {
        listen: any_port(),
        ..ServerConfig::default()
    };
    config.router.presence_grace = Duration::ZERO;
    config
}

/// A broker with the default test configuration.
pub fn start() -> ServerHandle {
    start_with(config())
}

/// A broker with the router limits `router` (its presence grace period turned off) and the rest
/// of the default test configuration.
pub fn start_router(router: RouterConfig) -> ServerHandle {
    start_with(ServerConfig {
        router: RouterConfig {
            presence_grace: Duration::ZERO,
            ..router
        },
        ..config()
    })
}

/// A broker with a full configuration (whose `listen` should be `127.0.0.1:0`).
pub fn start_with(config: ServerConfig) -> ServerHandle {
    Server::spawn(config).expect("spawning the broker")
}

/// Router limits with frames of at most 1 KiB, so that small bodies already take many frames
/// (and at most the 59 peers per channel whose lists such a frame carries).
pub fn small_frames() -> RouterConfig {
    RouterConfig {
        max_payload: 1024,
        max_peers_per_channel: RouterConfig::max_peers_for_payload(1024),
        ..RouterConfig::default()
    }
}
