//! The broker's log: one info line per connection lifecycle, at its close, naming the peer
//! address, client id, channel, the reason and how long it lived; nothing above debug level per
//! frame; and under churn the close lines are rate-limited, saying how many were suppressed. Its
//! own test binary: it installs a capturing logger.

use std::sync::Mutex;

use switchyard_testkit::{broker, tls, DEADLINE};

use switchyard::client::{Client, ClientOptions};
use switchyard::ids::ChannelId;

static LINES: Mutex<Vec<(log::Level, String)>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        // The broker's lines (the server and the routing core), not the client library's.
        metadata.level() <= log::Level::Info
            && metadata.target().starts_with("switchyard")
            && !metadata.target().starts_with("switchyard_client")
    }
    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let line = record.args().to_string();
            LINES
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((record.level(), line));
        }
    }
    fn flush(&self) {}
}

static LOGGER: Capture = Capture;

fn info_lines() -> Vec<String> {
    LINES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|(level, _)| *level == log::Level::Info)
        .map(|(_, line)| line.clone())
        .collect()
}

#[test]
fn connection_events_are_one_info_line_each_and_frames_are_not_logged_at_info() {
    log::set_logger(&LOGGER).expect("the only logger of this test binary");
    log::set_max_level(log::LevelFilter::Info);
    let handle = broker::start();
    let channel = ChannelId::random();
    let no_reconnect = ClientOptions {
        reconnect: None,
        ..ClientOptions::default()
    };
    let receiver =
        Client::connect_with(handle.local_addr(), channel, no_reconnect.clone()).expect("receiver");
    let sender = Client::connect_with(handle.local_addr(), channel, no_reconnect).expect("sender");
    let sender_addr = "127.0.0.1:"; // the client's ephemeral port is not known; the host is
    receiver.set_receive_window(8).expect("window");
    let before = info_lines().len();
    std::thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..100 {
                let mut request = receiver.next_request(Some(DEADLINE)).expect("request");
                let body = request.read_body().expect("body");
                request.respond(&body).expect("respond");
            }
        });
        for _ in 0..100 {
            sender.request(b"hello", DEADLINE).expect("reply");
        }
    });
    assert_eq!(
        info_lines().len(),
        before,
        "no info line per frame: {:?}",
        &info_lines()[before..]
    );

    // A refused handshake: a frame before HELLO.
    let mut raw = std::net::TcpStream::connect(handle.local_addr()).expect("raw");
    let ping = switchyard::protocol::Header::new(switchyard::protocol::FrameType::Start).encode();
    std::io::Write::write_all(&mut raw, &ping).expect("write");
    let mut sink = Vec::new();
    let _ = std::io::Read::read_to_end(&mut raw, &mut sink);

    let sender_id = sender.client_id();
    drop(sender);
    drop(receiver);
    handle.wait_idle(DEADLINE).expect("idle");
    let lines = info_lines();
    let about = |needle: &str| {
        lines
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect::<Vec<_>>()
    };
    let sender_lines = about(&sender_id.to_string());
    assert_eq!(
        sender_lines.len(),
        1,
        "one line per connection: {sender_lines:?}"
    );
    let line = &sender_lines[0];
    assert!(
        line.contains("closed (PeerClosed) after ")
            && line.contains(&channel.to_string())
            && line.contains(sender_addr),
        "{line}"
    );
    assert!(about("accepted from").is_empty(), "{lines:?}");
    assert!(about("handshake done").is_empty(), "{lines:?}");
    let refused = about("HandshakeRequired");
    assert_eq!(refused.len(), 1, "{lines:?}");
    assert!(
        refused[0].contains("closed (HandshakeRequired)")
            && refused[0].contains("127.0.0.1:")
            && refused[0].contains("(no handshake)"),
        "{refused:?}"
    );
    assert_eq!(
        about("closed (").len(),
        3,
        "one close line per connection: {lines:?}"
    );
    assert_eq!(lines.len(), 3, "and nothing else: {lines:?}");
    tls_connections_say_so_and_a_failed_tls_handshake_gives_its_reason();
}

/// On a broker with a TLS listener: the accept line of a TLS connection says `(tls)`, and a peer
/// that does not speak TLS gets one info line with rustls' reason and one close line.
fn tls_connections_say_so_and_a_failed_tls_handshake_gives_its_reason() {
    let certs = tls::Certs::new("logs");
    let handle = tls::start(&certs);
    let before = info_lines().len();

    let mut raw = std::net::TcpStream::connect(handle.tls_addr().unwrap()).expect("raw");
    let hello = switchyard::protocol::Header::new(switchyard::protocol::FrameType::Hello).encode();
    std::io::Write::write_all(&mut raw, &hello).expect("write");
    let mut sink = Vec::new();
    let _ = std::io::Read::read_to_end(&mut raw, &mut sink);
    handle.wait_idle(DEADLINE).expect("idle");

    let lines = info_lines()[before..].to_vec();
    assert_eq!(lines.len(), 1, "one line, at the close: {lines:?}");
    assert!(
        lines[0].contains("127.0.0.1:")
            && lines[0].contains(" tls: closed (TlsError: ")
            && lines[0].contains("before completing its TLS handshake"),
        "{lines:?}"
    );
    churn_is_rate_limited();
}

/// 400 connections that come and go at once: the close lines stop after the burst and the next
/// one written says how many were suppressed. The bound is computed from the time the churn took
/// (the bucket refills 10 lines a second after a burst of 100), so a slow machine changes the
/// figures, never the verdict.
fn churn_is_rate_limited() {
    let handle = broker::start();
    let before = info_lines().len();
    let started = switchyard_testkit::now();
    for _ in 0..400 {
        drop(std::net::TcpStream::connect(handle.local_addr()).expect("connect"));
    }
    handle.wait_idle(DEADLINE).expect("idle");
    // The last line must be written for its note to be seen: one more close after a refill.
    let took = started.elapsed();
    let lines = info_lines()[before..].to_vec();
    let allowed = 100 + 10 * took.as_secs_f64().ceil() as usize + 1;
    assert!(
        lines.len() <= allowed,
        "{} close lines for 400 connections in {took:?} (at most {allowed})",
        lines.len()
    );
    assert!(lines.len() >= 100, "the burst is written: {}", lines.len());
    // One more connection once a token is back: its line reports the suppressed ones.
    let mut raw = std::net::TcpStream::connect(handle.local_addr()).expect("connect");
    let ping = switchyard::protocol::Header::new(switchyard::protocol::FrameType::Ping).encode();
    std::io::Write::write_all(&mut raw, &ping).expect("write");
    let mut pong = [0u8; 64];
    std::io::Read::read_exact(&mut raw, &mut pong).expect("pong");
    let deadline = switchyard_testkit::now() + DEADLINE;
    loop {
        drop(raw);
        handle.wait_idle(DEADLINE).expect("idle");
        let last = info_lines();
        if last.len() > before + lines.len() {
            let note = last.last().unwrap();
            assert!(note.contains("similar lines suppressed)"), "{note}");
            break;
        }
        // Suppressed too: the bucket is still empty. Wait for the broker's answer to a PING on
        // a new connection (an event, not a sleep) and try again; 10 a second refill it.
        assert!(
            switchyard_testkit::now() < deadline,
            "no line after the churn"
        );
        raw = std::net::TcpStream::connect(handle.local_addr()).expect("connect");
        std::io::Write::write_all(&mut raw, &ping).expect("write");
        std::io::Read::read_exact(&mut raw, &mut pong).expect("pong");
    }
}
