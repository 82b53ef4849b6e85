//! The broker's log: one info line per connection event (accepted, handshake done or failed with
//! the reason, closed with the reason) naming the peer address, client id and channel, and
//! nothing above debug level per frame. Its own test binary: it installs a capturing logger.

use std::sync::Mutex;

use switchyard_testkit::{broker, tls, DEADLINE};

use switchyard::client::{Client, ClientOptions};
use switchyard::ids::ChannelId;

static LINES: Mutex<Vec<(log::Level, String)>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Info && metadata.target().starts_with("switchyard")
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
    assert!(
        sender_lines.iter().any(|l| l.contains("handshake done")
            && l.contains(&channel.to_string())
            && l.contains(sender_addr)),
        "{sender_lines:?}"
    );
    assert!(
        sender_lines
            .iter()
            .any(|l| l.contains("closed (PeerClosed)") && l.contains(&channel.to_string())),
        "{sender_lines:?}"
    );
    assert_eq!(about("accepted from").len(), 3, "{lines:?}");
    let refused = about("handshake failed");
    assert_eq!(refused.len(), 1, "{lines:?}");
    assert!(
        refused[0].contains("HandshakeRequired") && refused[0].contains("127.0.0.1:"),
        "{refused:?}"
    );
    assert_eq!(
        about("closed (").len(),
        3,
        "one close line per connection: {lines:?}"
    );
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
    assert_eq!(lines.len(), 3, "accepted, failed, closed: {lines:?}");
    assert!(
        lines[0].contains("accepted from 127.0.0.1:") && lines[0].ends_with("(tls)"),
        "{lines:?}"
    );
    assert!(
        lines[1].contains("TLS handshake failed: ") && lines[1].contains("127.0.0.1:"),
        "{lines:?}"
    );
    assert!(
        lines[2].contains("closed (TlsError) before completing its TLS handshake"),
        "{lines:?}"
    );
}
