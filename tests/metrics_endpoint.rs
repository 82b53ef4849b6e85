//! The metrics endpoint's probes and bounds over real HTTP: `/healthz`, `/readyz` (503 while the
//! broker drains), `HEAD`, a silent connection closed at the request-head timeout, and no
//! per-channel series unless asked for (then only the busiest channels). Waits are on the broker's
//! stats or on frames, never sleeps.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use switchyard_testkit::{broker, gauges::wait_for, raw::RawPeer, DEADLINE};

use switchyard::ids::{ChannelId, ClientId, RequestId};
use switchyard::protocol::ErrorCode;
use switchyard::server::{ServerConfig, ServerHandle};

fn config() -> ServerConfig {
    ServerConfig {
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..broker::config()
    }
}

fn metrics_addr(handle: &ServerHandle) -> SocketAddr {
    handle.metrics_addr().expect("the metrics endpoint is on")
}

/// One HTTP exchange: the status line's code, the head, and the body (read to EOF).
#[track_caller]
fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).expect("connecting");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("the answer, to EOF");
    let text = String::from_utf8(raw).expect("UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete head");
    let status = head[9..12].parse().expect("a status code");
    assert!(head.contains("Connection: close"), "{head}");
    (status, head.to_owned(), body.to_owned())
}

#[test]
fn healthz_readyz_and_head() {
    let handle = broker::start_with(ServerConfig {
        drain_deadline: Duration::from_secs(30),
        ..config()
    });
    let addr = metrics_addr(&handle);
    let (status, _, body) = http(addr, "GET", "/healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, _, body) = http(addr, "GET", "/readyz");
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    // HEAD: the head GET would get, no body.
    let (status, head, body) = http(addr, "HEAD", "/metrics");
    assert_eq!(status, 200);
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    assert_eq!(body, "");
    let (status, head, body) = http(addr, "HEAD", "/healthz");
    assert_eq!(status, 200);
    assert!(head.contains("Content-Length: 3"), "{head}");
    assert_eq!(body, "");

    // Draining: a request waits for a receiver, so the drain lasts (up to 30 s).
    let mut sender = RawPeer::named(handle.local_addr(), "sender");
    sender.hello(ChannelId::random(), ClientId::random());
    sender.request(RequestId::random(), 60_000, b"waits");
    sender.barrier();
    handle.begin_shutdown().expect("shutdown");
    // The broker is draining once it said GOING_AWAY.
    sender.expect_error(ErrorCode::GoingAway, RequestId::NIL);
    let (status, _, body) = http(addr, "GET", "/readyz");
    assert_eq!((status, body.as_str()), (503, "shutting down\n"));
    let (status, _, _) = http(addr, "GET", "/healthz");
    assert_eq!(status, 200, "the loop still runs");
    let (status, _, body) = http(addr, "GET", "/metrics");
    assert_eq!(status, 200);
    assert!(body.contains("switchyard_metrics_scrapes_total{outcome=\"not_ready\"} 1"));
}

/// A connection that sends nothing is closed at the request-head timeout (2 s), long before
/// the scrape deadline (60 s here).
#[test]
fn a_silent_connection_is_closed_at_the_request_timeout() {
    let handle = broker::start_with(ServerConfig {
        metrics_timeout: Duration::from_secs(60),
        ..config()
    });
    let mut silent = TcpStream::connect(metrics_addr(&handle)).unwrap();
    silent.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut buf = [0u8; 16];
    match silent.read(&mut buf) {
        Ok(0) => {}
        other => panic!("expected EOF at the request timeout: {other:?}"),
    }
    wait_for(&handle, "closed", |s| s.metrics_connections == 0);
}

/// By default no channel is listed, so a scrape's size does not grow with the channels and no
/// channel id is exposed; `metrics_channel_series = 1` lists only the busiest channel.
#[test]
fn per_channel_series_are_off_by_default_and_bounded_when_on() {
    for series in [0, 1] {
        let handle = broker::start_with(ServerConfig {
            metrics_channel_series: series,
            ..config()
        });
        let (big, small) = (ChannelId::random(), ChannelId::random());
        let mut peers = Vec::new();
        for channel in [big, big, small] {
            let mut peer = RawPeer::connect(handle.local_addr());
            peer.hello(channel, ClientId::random());
            peers.push(peer);
        }
        wait_for(&handle, "three members", |s| s.router.connections == 3);
        let (_, _, body) = http(metrics_addr(&handle), "GET", "/metrics");
        assert!(body.contains("switchyard_channels 2\n"), "{body}");
        let lines: Vec<&str> = body
            .lines()
            .filter(|l| l.starts_with("switchyard_channel_peers{"))
            .collect();
        match series {
            0 => assert!(lines.is_empty(), "{lines:?}"),
            _ => assert_eq!(
                lines,
                [format!("switchyard_channel_peers{{channel=\"{big}\"}} 2")]
            ),
        }
        assert!(!body.contains(&small.to_string()));
    }
}
