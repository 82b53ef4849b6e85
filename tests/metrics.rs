//! The Prometheus endpoint over real HTTP: a blocking `std::net::TcpStream` writes the request
//! and reads the answer to EOF (every read has the test kit's `DEADLINE`). Broker state is
//! awaited with `ServerHandle::wait_until`, never with sleeps.
//!
//! Covered: the values move with connections, request/reply traffic and a provoked NO_RECEIVER;
//! 404 / 405 / 400 / 431 answers; a silent or half-sending scraper blocks neither scrapes nor
//! broker traffic; the scrape deadline closes a silent scraper; a connection beyond the limit
//! evicts the oldest unanswered one. `/healthz`, `/readyz`, HEAD and the per-channel series
//! setting: `metrics_endpoint.rs`.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use switchyard_testkit::{
    broker::{self, start_with},
    gauges::{wait_for, wait_idle},
    raw::RawPeer,
    DEADLINE,
};

use switchyard::ids::{ChannelId, ClientId, RequestId};
use switchyard::protocol::{ErrorCode, Flags, FrameType, HEADER_LEN};
use switchyard::server::{ServerConfig, ServerHandle};

/// The limit of simultaneous metrics connections (`MAX_SCRAPES` in `src/server/metrics.rs`).
const MAX_SCRAPES: usize = 16;

/// A broker on an ephemeral port with its metrics endpoint on another, listing the members of
/// its 8 busiest channels (per-channel series are off by default: `metrics_endpoint.rs`).
fn config() -> ServerConfig {
    ServerConfig {
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        metrics_channel_series: 8,
        ..broker::config()
    }
}

fn metrics_addr(handle: &ServerHandle) -> SocketAddr {
    handle.metrics_addr().expect("the metrics endpoint is on")
}

/// One HTTP answer.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `request` as is and reads the answer until the endpoint closes the connection.
#[track_caller]
fn http(addr: SocketAddr, request: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(addr).expect("connecting to the metrics endpoint");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.write_all(request).expect("writing the request");
    let mut raw = Vec::new();
    if let Err(err) = stream.read_to_end(&mut raw) {
        panic!(
            "reading the answer to EOF failed after {} bytes: {err}",
            raw.len()
        );
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(&raw) {
        Ok(httparse::Status::Complete(len)) => len,
        other => panic!(
            "not a complete HTTP answer ({other:?}): {:?}",
            String::from_utf8_lossy(&raw)
        ),
    };
    let answer = Answer {
        status: response.code.unwrap(),
        headers: response
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
        body: String::from_utf8(raw[head_len..].to_vec()).expect("a UTF-8 body"),
    };
    assert_eq!(answer.header("Connection"), Some("close"));
    let length: usize = answer
        .header("Content-Length")
        .expect("a Content-Length")
        .parse()
        .unwrap();
    assert_eq!(length, answer.body.len(), "Content-Length");
    answer
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: text/plain\r\n\r\n").into_bytes()
}

/// A parsed exposition: series (`name{labels}`) to value.
struct Scrape {
    series: BTreeMap<String, u64>,
    text: String,
}

impl Scrape {
    /// The value of `series` (`"switchyard_x"` or `"switchyard_x{label=\"v\"}"`).
    #[track_caller]
    fn get(&self, series: &str) -> u64 {
        match self.series.get(series) {
            Some(v) => *v,
            None => panic!("no series {series} in the scrape:\n{}", self.text),
        }
    }

    fn has(&self, series: &str) -> bool {
        self.series.contains_key(series)
    }
}

/// `GET /metrics`: checks the status, the content type and the format (every sample's family
/// has HELP and TYPE lines before it), and parses the samples.
#[track_caller]
fn scrape(handle: &ServerHandle) -> Scrape {
    let answer = http(metrics_addr(handle), &get("/metrics"));
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        answer.header("Content-Type"),
        Some("text/plain; version=0.0.4")
    );
    let mut series = BTreeMap::new();
    let mut described = Vec::new();
    for line in answer.body.lines() {
        if let Some(help) = line.strip_prefix("# HELP ") {
            described.push(help.split(' ').next().unwrap().to_string());
            continue;
        }
        if let Some(kind) = line.strip_prefix("# TYPE ") {
            let (name, kind) = kind.split_once(' ').unwrap();
            assert!(matches!(kind, "gauge" | "counter"), "{line}");
            assert_eq!(described.last().map(String::as_str), Some(name), "{line}");
            continue;
        }
        let (name_labels, value) = line.rsplit_once(' ').expect("`series value`");
        let name = name_labels.split('{').next().unwrap();
        assert!(name.starts_with("switchyard_"), "{line}");
        assert_eq!(
            described.last().map(String::as_str),
            Some(name),
            "sample outside its family: {line}"
        );
        let value = value.parse().unwrap_or_else(|_| panic!("value: {line}"));
        assert!(
            series.insert(name_labels.to_string(), value).is_none(),
            "{line}"
        );
    }
    Scrape {
        series,
        text: answer.body,
    }
}

fn peers(channel: ChannelId) -> String {
    format!("switchyard_channel_peers{{channel=\"{channel}\"}}")
}

#[test]
fn metrics_follow_connections_traffic_and_errors() {
    let handle = start_with(config());
    let before = scrape(&handle);
    for gauge in [
        "switchyard_connections",
        "switchyard_channels",
        "switchyard_requests_pending",
        "switchyard_requests_in_flight",
        "switchyard_broadcasts_in_flight",
        "switchyard_buffered_bytes",
        "switchyard_paused_connections",
        "switchyard_presence_ghosts",
    ] {
        assert_eq!(before.get(gauge), 0, "{gauge}");
    }
    for counter in [
        "switchyard_connections_opened_total",
        "switchyard_connections_closed_total",
        "switchyard_frames_in_total",
        "switchyard_frames_out_total",
        "switchyard_bytes_in_total",
        "switchyard_bytes_out_total",
        "switchyard_takeovers_total",
        "switchyard_handshake_failures_total",
        "switchyard_request_timeouts_total",
        "switchyard_late_frames_dropped_total",
        "switchyard_backpressure_pauses_total",
    ] {
        assert_eq!(before.get(counter), 0, "{counter}");
    }
    assert_eq!(
        before.get("switchyard_metrics_scrapes_total{outcome=\"ok\"}"),
        0
    );
    assert!(!before.text.contains("switchyard_errors_sent_total{"));

    // Traffic: a NO_WAIT request before anyone receives (NO_RECEIVER), then a round trip.
    let addr = handle.local_addr();
    let channel = ChannelId::random();
    let mut receiver = RawPeer::named(addr, "receiver");
    receiver.hello(channel, ClientId::random());
    let mut sender = RawPeer::named(addr, "sender");
    sender.hello(channel, ClientId::random());
    receiver.expect_presence(FrameType::PeerJoined, sender.client);
    let refused = RequestId::random();
    sender.send_stream(
        FrameType::Start,
        Flags::REQUEST.union(Flags::NO_WAIT),
        refused,
        0,
        true,
        b"anyone?",
    );
    sender.expect_error(ErrorCode::NoReceiver, refused);
    receiver.receive(1);
    receiver.barrier();
    let id = RequestId::random();
    let body = [7u8; 100];
    sender.request(id, 5_000, &body);
    receiver.expect(FrameType::Start, Flags::REQUEST, id);
    receiver.respond(id, &body);
    sender.expect(FrameType::Start, Flags::RESPONSE, id);
    // Frames in: hello ×2, NO_WAIT start, RECEIVE, PING, request start, response start.
    let frames_in = 7;
    let bytes_in = frames_in * HEADER_LEN + b"anyone?".len() + 4 + 2 * body.len();
    let stats = wait_for(&handle, "every frame read", move |s| {
        s.frames_in == frames_in as u64 && s.router.assignments == 0
    });

    let during = scrape(&handle);
    assert_eq!(during.get("switchyard_connections"), 2);
    assert_eq!(during.get("switchyard_connections_opened_total"), 2);
    assert_eq!(during.get("switchyard_connections_closed_total"), 0);
    assert_eq!(during.get("switchyard_channels"), 1);
    assert_eq!(during.get(&peers(channel)), 2);
    assert_eq!(during.get("switchyard_frames_in_total"), frames_in as u64);
    assert_eq!(during.get("switchyard_bytes_in_total"), bytes_in as u64);
    // Out: welcome ×2, PEER_JOINED, NO_RECEIVER, PONG, request start, response start.
    assert_eq!(during.get("switchyard_frames_out_total"), 7);
    assert_eq!(
        during.get("switchyard_frames_out_total"),
        stats.router.frames_out
    );
    assert_eq!(
        during.get("switchyard_bytes_out_total"),
        stats.router.bytes_out
    );
    assert!(stats.router.bytes_out >= 7 * HEADER_LEN as u64 + 2 * body.len() as u64);
    assert_eq!(
        during.get("switchyard_errors_sent_total{code=\"NO_RECEIVER\"}"),
        1
    );
    assert_eq!(during.get("switchyard_requests_pending"), 0);
    assert_eq!(during.get("switchyard_requests_in_flight"), 0);
    // Two heartbeat timers, one per connection.
    assert_eq!(during.get("switchyard_timers_armed"), 2);
    assert_eq!(
        during.get("switchyard_metrics_scrapes_total{outcome=\"ok\"}"),
        1
    );

    drop(sender);
    drop(receiver);
    wait_idle(&handle);
    let after = scrape(&handle);
    assert_eq!(after.get("switchyard_connections"), 0);
    assert_eq!(after.get("switchyard_connections_closed_total"), 2);
    assert_eq!(after.get("switchyard_channels"), 0);
    assert!(!after.has(&peers(channel)), "{}", after.text);
    assert_eq!(
        after.get("switchyard_errors_sent_total{code=\"NO_RECEIVER\"}"),
        1
    );
    assert_eq!(
        after.get("switchyard_metrics_scrapes_total{outcome=\"ok\"}"),
        2
    );
}

#[test]
fn other_paths_methods_garbage_and_huge_heads_get_their_4xx() {
    let handle = start_with(config());
    let addr = metrics_addr(&handle);

    let answer = http(addr, &get("/"));
    assert_eq!(answer.status, 404);
    let answer = http(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(answer.status, 405);
    assert_eq!(answer.header("Allow"), Some("GET, HEAD"));
    let answer = http(addr, b"\x00\x01 definitely not http\r\n\r\n");
    assert_eq!(answer.status, 400);
    let huge = format!(
        "GET /metrics HTTP/1.1\r\nX-Padding: {}\r\n\r\n",
        "x".repeat(9 * 1024)
    );
    let answer = http(addr, huge.as_bytes());
    assert_eq!(answer.status, 431);
    // A query string is ignored; HTTP/1.0 is fine.
    let answer = http(addr, b"GET /metrics?debug=1 HTTP/1.0\r\n\r\n");
    assert_eq!(answer.status, 200);

    let scrape = scrape(&handle);
    for (outcome, n) in [
        ("ok", 1),
        ("not_found", 1),
        ("method_not_allowed", 1),
        ("bad_request", 1),
        ("too_large", 1),
        ("timed_out", 0),
        ("refused", 0),
    ] {
        let series = format!("switchyard_metrics_scrapes_total{{outcome=\"{outcome}\"}}");
        assert_eq!(scrape.get(&series), n, "{outcome}");
    }
    wait_for(&handle, "every metrics connection closed", |s| {
        s.metrics_connections == 0
    });
}

#[test]
fn silent_and_half_sent_scrapes_block_neither_scrapes_nor_traffic() {
    let handle = start_with(config());
    let addr = metrics_addr(&handle);
    let _silent = TcpStream::connect(addr).unwrap();
    let mut half = TcpStream::connect(addr).unwrap();
    half.write_all(b"GET /metr").unwrap();
    wait_for(&handle, "both slow scrapers accepted", |s| {
        s.metrics_connections == 2
    });

    // Broker traffic goes on.
    let channel = ChannelId::random();
    let mut receiver = RawPeer::named(handle.local_addr(), "receiver");
    receiver.hello(channel, ClientId::random());
    let mut sender = RawPeer::named(handle.local_addr(), "sender");
    sender.hello(channel, ClientId::random());
    receiver.expect_presence(FrameType::PeerJoined, sender.client);
    receiver.receive(1);
    receiver.barrier();
    let id = RequestId::random();
    sender.request(id, 5_000, b"ping");
    receiver.expect(FrameType::Start, Flags::REQUEST, id);
    receiver.respond(id, b"pong");
    sender.expect(FrameType::Start, Flags::RESPONSE, id);

    // Other scrapes are answered, while the slow ones are still open.
    let scrape = scrape(&handle);
    assert_eq!(scrape.get("switchyard_connections"), 2);
    assert_eq!(scrape.get(&peers(channel)), 2);
    assert_eq!(handle.stats().unwrap().metrics_connections, 2);
}

#[test]
fn a_silent_scraper_is_closed_at_its_deadline() {
    let handle = start_with(ServerConfig {
        metrics_timeout: Duration::from_millis(200),
        ..config()
    });
    let mut silent = TcpStream::connect(metrics_addr(&handle)).unwrap();
    silent.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut buf = [0u8; 64];
    match silent.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("expected EOF without an answer, got {n} bytes"),
        Err(err) => panic!("expected EOF at the scrape deadline: {err}"),
    }
    wait_for(&handle, "the silent scraper closed", |s| {
        s.metrics_connections == 0
    });
    let scrape = scrape(&handle);
    assert_eq!(
        scrape.get("switchyard_metrics_scrapes_total{outcome=\"timed_out\"}"),
        1
    );
}

/// 16 silent connections do not blind monitoring: the 17th evicts the oldest (which sees EOF
/// without an answer) and is answered.
#[test]
fn a_connection_beyond_the_limit_evicts_the_oldest_silent_one() {
    let handle = start_with(config());
    let addr = metrics_addr(&handle);
    let mut open: Vec<TcpStream> = Vec::new();
    for n in 1..=MAX_SCRAPES {
        open.push(TcpStream::connect(addr).unwrap());
        // One at a time, so that the first is the oldest.
        wait_for(&handle, "accepted", move |s| s.metrics_connections == n);
    }
    // Answered: it evicted the oldest (counted before the rendering of the same turn).
    let scrape = scrape(&handle);
    assert_eq!(
        scrape.get("switchyard_metrics_scrapes_total{outcome=\"evicted\"}"),
        1
    );
    let oldest = &mut open[0];
    oldest.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut buf = [0u8; 64];
    match oldest.read(&mut buf) {
        Ok(0) => {}
        Err(err) if err.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("expected the oldest silent scraper closed: {other:?}"),
    }
    // The answered scrape's slot is free again: the next one takes it and evicts nobody.
    let scrape = self::scrape(&handle);
    assert_eq!(
        scrape.get("switchyard_metrics_scrapes_total{outcome=\"evicted\"}"),
        1
    );
    assert_eq!(
        scrape.get("switchyard_metrics_scrapes_total{outcome=\"refused\"}"),
        0
    );
}
