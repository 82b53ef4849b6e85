//! TLS end to end: a broker with a plain and a TLS listener (certificate generated at test time
//! with rcgen), the client library's TLS option, and raw peers that misbehave on the TLS port.
//!
//! What each test proves:
//! - request/reply and broadcast/presence work over TLS, bodies byte-exact (1 MiB included),
//!   concurrently, and across transports (a plain receiver serving a TLS sender);
//! - a certificate the client does not trust (or a wrong name) is a typed `Error::Tls`, the
//!   client does not reconnect into it, and the broker stays fine;
//! - a plain-protocol peer, garbage, or a silent or half-done handshake on the TLS port is
//!   closed (by rustls or by the handshake timeout) and counted; a TLS client on the plain port
//!   gets a clean error at once;
//! - backpressure holds over TLS: a TLS receiver that stops reading pauses the sender, the
//!   broker's buffers stay within the bound its watermarks give, and everything arrives in order;
//! - the binary refuses bad TLS settings with exit code 2 naming the key or file.
//!
//! Every test ends with the broker idle. No sleeps: blocking calls with deadlines and the
//! broker's event-driven `wait_until`.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;
use switchyard_testkit::body::body;
use switchyard_testkit::client::Responder;
use switchyard_testkit::gauges::{wait_for, wait_idle, with_peak_buffered};
use switchyard_testkit::pattern::Pattern;
use switchyard_testkit::raw::RawPeer;
use switchyard_testkit::{assert_err, broker};
use switchyard_testkit::{now, DEADLINE, QUIET};

use bytes::Bytes;
use switchyard::client::{
    Client, ClientOptions, ClientTls, ConnectionState, Error, ReconnectPolicy, RequestOptions,
};
use switchyard::ids::{ChannelId, ClientId, RequestId};
use switchyard::protocol::{encode_u32, Flags, Frame, FrameType, Header, HEADER_LEN};
use switchyard::rustls;
use switchyard::rustls::pki_types::pem::PemObject;
use switchyard::server::{Server, ServerConfig, ServerHandle, ServerStats, TlsListenerConfig};
use switchyard::tls::TlsConfigError;

/// A request timeout no passing test reaches.
const LONG: Duration = Duration::from_secs(30);

// ----- fixtures ----------------------------------------------------------------------------------

/// A self-signed certificate for `localhost` and 127.0.0.1 with its key, as PEM files in a
/// unique temporary directory that is removed on drop.
struct Certs {
    dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Certs {
    fn new(name: &str) -> Certs {
        let dir = std::env::temp_dir().join(format!(
            "switchyard-tls-{name}-{}-{}",
            std::process::id(),
            RequestId::random()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        // "127.0.0.1" becomes an IP address entry; the subject names the fixture, so two
        // fixtures' certificates are unrelated issuers.
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("certificate parameters");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("switchyard test {name}"));
        let key_pair = rcgen::KeyPair::generate().expect("a key pair");
        let made = params
            .self_signed(&key_pair)
            .expect("a self-signed certificate");
        let cert = dir.join("broker.crt");
        let key = dir.join("broker.key");
        std::fs::write(&cert, made.pem()).expect("write the certificate");
        std::fs::write(&key, key_pair.serialize_pem()).expect("write the key");
        Certs { dir, cert, key }
    }

    /// The client side: trusts this certificate, verifies the name `localhost`.
    fn trust(&self) -> ClientTls {
        ClientTls::from_ca_file(&self.cert)
            .expect("the CA file")
            .server_name("localhost")
            .expect("a DNS name")
    }

    /// The broker side, on an ephemeral port (or `listen`).
    fn listener(&self, listen: SocketAddr) -> TlsListenerConfig {
        TlsListenerConfig {
            listen,
            cert_path: self.cert.clone(),
            key_path: self.key.clone(),
        }
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// The tests' broker configuration: plain and TLS listeners on ephemeral ports, presence grace
/// off (PEER_LEFT at once).
fn config(certs: &Certs) -> ServerConfig {
    let mut config = broker::config();
    config.tls = Some(certs.listener(any_port()));
    config
}

fn start(certs: &Certs) -> ServerHandle {
    Server::spawn(config(certs)).expect("spawning the broker")
}

fn tls_addr(handle: &ServerHandle) -> SocketAddr {
    handle.tls_addr().expect("the broker has a TLS listener")
}

/// Client options for TLS (`tls`) or plain TCP (`None`), no reconnection.
fn options(tls: Option<ClientTls>) -> ClientOptions {
    ClientOptions {
        tls,
        reconnect: None,
        ..ClientOptions::default()
    }
}

#[track_caller]
fn connect_tls(handle: &ServerHandle, channel: ChannelId, certs: &Certs) -> Client {
    Client::connect_with(tls_addr(handle), channel, options(Some(certs.trust())))
        .expect("a TLS client joins")
}

#[track_caller]
fn connect_plain(handle: &ServerHandle, channel: ChannelId) -> Client {
    Client::connect_with(handle.local_addr(), channel, options(None)).expect("a plain client joins")
}

/// The response body of the responders here: the request reversed, so a reply is never the
/// request echoed by mistake.
fn reversed(_: &switchyard::client::IncomingRequest, mut body: Vec<u8>) -> Vec<u8> {
    body.reverse();
    body
}

#[track_caller]
fn expect_reversed(client: &Client, request: &[u8]) {
    let reply = client.request(request, LONG).expect("a reply");
    let mut expected = request.to_vec();
    expected.reverse();
    assert!(
        reply == expected,
        "reply of {} bytes differs from the reversed request of {} bytes",
        reply.len(),
        request.len()
    );
}

// ----- a raw TLS peer ----------------------------------------------------------------------------

/// A frame-level peer over a blocking rustls stream: for what the client library never does
/// (stop reading).
struct TlsRawPeer {
    stream: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    channel: ChannelId,
    client: ClientId,
}

impl TlsRawPeer {
    fn connect(addr: SocketAddr, certs: &Certs) -> TlsRawPeer {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_file_iter(&certs.cert).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let socket = TcpStream::connect(addr).expect("connect");
        socket.set_read_timeout(Some(DEADLINE)).unwrap();
        socket.set_nodelay(true).unwrap();
        TlsRawPeer {
            stream: rustls::StreamOwned::new(conn, socket),
            channel: ChannelId::NIL,
            client: ClientId::NIL,
        }
    }

    fn send(&mut self, mut header: Header, payload: &[u8]) {
        header.payload_len = payload.len() as u32;
        self.stream.write_all(&header.encode()).expect("write");
        self.stream.write_all(payload).expect("write");
        self.stream.flush().expect("flush");
    }

    fn header(&self, kind: FrameType) -> Header {
        Header {
            client_id: self.client,
            channel_id: self.channel,
            ..Header::new(kind)
        }
    }

    /// Reads one frame's header and its payload into `payload` (reused).
    fn recv_into(&mut self, payload: &mut Vec<u8>) -> Header {
        let mut head = [0u8; HEADER_LEN];
        self.stream.read_exact(&mut head).expect("a frame header");
        let header = Header::parse(&head).expect("a valid header");
        payload.resize(header.payload_len as usize, 0);
        self.stream.read_exact(payload).expect("a frame payload");
        header
    }

    fn recv(&mut self) -> Frame {
        let mut payload = Vec::new();
        let header = self.recv_into(&mut payload);
        Frame {
            header,
            payload: Bytes::from(payload),
        }
    }

    fn hello(&mut self, channel: ChannelId) {
        self.channel = channel;
        self.send(self.header(FrameType::Hello), &[]);
        let welcome = self.recv();
        assert_eq!(welcome.header.frame_type, FrameType::Welcome);
        self.client = welcome.header.client_id;
    }

    /// PING, then frames up to its PONG (presence frames are skipped): every earlier frame of
    /// this peer was processed by the broker.
    fn barrier(&mut self) {
        let ping = Header {
            sequence: 77,
            ..self.header(FrameType::Ping)
        };
        self.send(ping, &[]);
        loop {
            let frame = self.recv();
            match frame.header.frame_type {
                FrameType::Pong if frame.header.sequence == 77 => return,
                FrameType::PeerJoined | FrameType::PeerLeft => {}
                other => panic!("expected PONG, got {other:?}"),
            }
        }
    }
}

// ----- request/reply, broadcast, presence ----------------------------------------------------

#[test]
fn request_reply_over_tls_is_byte_exact_concurrent_and_carries_a_large_body() {
    let certs = Certs::new("request-reply");
    let handle = start(&certs);
    let channel = ChannelId::random();
    let responder = Responder::spawn(connect_tls(&handle, channel, &certs), 8, reversed);
    let sender = connect_tls(&handle, channel, &certs);
    let stats = handle.stats().unwrap();
    assert_eq!((stats.tls_sockets, stats.tls_accepted), (2, 2), "{stats:?}");

    // Several requests at once from several threads over one TLS connection, of sizes around
    // the record size (16 KiB) and the buffer limit (64 KiB).
    let sizes = [
        0usize,
        1,
        100,
        16 * 1024 - 1,
        16 * 1024 + 1,
        64 * 1024 + 7,
        200_000,
    ];
    thread::scope(|s| {
        for (i, size) in sizes.into_iter().enumerate() {
            let sender = &sender;
            s.spawn(move || {
                for round in 0..3u64 {
                    expect_reversed(sender, &body(i as u64 * 10 + round, size));
                }
            });
        }
    });
    // 1 MiB and a bit: the broker's max payload, so two frames, many records, and several
    // rounds of the writer's buffer limit on both sides.
    expect_reversed(&sender, &body(99, (1 << 20) + 17));

    let served = responder.stop();
    assert_eq!(served.answered, sizes.len() * 3 + 1);
    sender.close();
    let idle = wait_idle(&handle);
    assert_eq!(idle.tls_handshake_failures, 0, "{idle:?}");
}

#[test]
fn a_plain_receiver_serves_a_tls_sender_on_the_same_channel() {
    let certs = Certs::new("mixed");
    let handle = start(&certs);
    let channel = ChannelId::random();
    let plain = Responder::spawn(connect_plain(&handle, channel), 4, reversed);
    let tls_sender = connect_tls(&handle, channel, &certs);
    let plain_sender = connect_plain(&handle, channel);
    for (seed, size) in [(1u64, 10usize), (2, 70_000), (3, 1 << 20)] {
        expect_reversed(&tls_sender, &body(seed, size));
        expect_reversed(&plain_sender, &body(seed + 100, size));
    }
    let stats = handle.stats().unwrap();
    assert_eq!((stats.sockets, stats.tls_sockets), (3, 1), "{stats:?}");
    assert_eq!(plain.stop().answered, 6);
    tls_sender.close();
    plain_sender.close();
    wait_idle(&handle);
}

#[test]
fn broadcast_and_presence_over_tls() {
    let certs = Certs::new("broadcast");
    let handle = start(&certs);
    let channel = ChannelId::random();
    let a = connect_tls(&handle, channel, &certs);
    let b = connect_tls(&handle, channel, &certs);
    assert_eq!(
        a.next_presence(Some(DEADLINE)).expect("b joined"),
        switchyard::client::PresenceEvent::Joined(b.client_id())
    );
    let c = connect_plain(&handle, channel);
    assert_eq!(
        a.next_presence(Some(DEADLINE)).expect("c joined"),
        switchyard::client::PresenceEvent::Joined(c.client_id())
    );
    let mut peers = b.fetch_peers(DEADLINE).expect("PEERS over TLS");
    peers.sort();
    let mut expected = vec![a.client_id(), c.client_id()];
    expected.sort();
    assert_eq!(peers, expected);

    // From a TLS peer to a TLS and a plain one, and back from the plain one. A broadcast
    // completes when every peer acknowledged, which it does when it takes it.
    let news = body(7, 100_000);
    thread::scope(|s| {
        let sent = s.spawn(|| a.broadcast(&news, LONG));
        for receiver in [&b, &c] {
            let got = receiver
                .next_broadcast(Some(DEADLINE))
                .expect("a broadcast");
            assert_eq!(got.sender, a.client_id());
            assert!(got.body == news, "broadcast body differs");
        }
        assert_eq!(sent.join().unwrap().expect("acknowledged"), 2);
        let sent = s.spawn(|| c.broadcast(b"from plain", LONG));
        for receiver in [&a, &b] {
            let got = receiver
                .next_broadcast(Some(DEADLINE))
                .expect("a broadcast");
            assert_eq!(
                (got.sender, &got.body[..]),
                (c.client_id(), &b"from plain"[..])
            );
        }
        assert_eq!(sent.join().unwrap().expect("acknowledged"), 2);
    });

    b.close();
    assert_eq!(
        a.next_presence(Some(DEADLINE)).expect("b left"),
        switchyard::client::PresenceEvent::Left(b.client_id())
    );
    a.close();
    c.close();
    wait_idle(&handle);
}

// ----- certificates the client refuses -------------------------------------------------------

/// The broker is unharmed: no connection left, a failed handshake counted (`failures` in all),
/// and a good client still served.
#[track_caller]
fn broker_still_serves(handle: &ServerHandle, certs: &Certs, failures: u64) {
    wait_for(handle, "the refused connections are gone", move |s| {
        s.sockets == 0 && s.tls_handshake_failures == failures
    });
    let channel = ChannelId::random();
    let responder = Responder::spawn(connect_tls(handle, channel, certs), 1, reversed);
    let sender = connect_tls(handle, channel, certs);
    expect_reversed(&sender, b"still served");
    responder.stop();
    sender.close();
    wait_idle(handle);
}

#[test]
fn an_untrusted_certificate_or_a_wrong_name_is_a_typed_tls_error() {
    let certs = Certs::new("trusted");
    let other = Certs::new("other-ca");
    let handle = Server::spawn(ServerConfig {
        metrics_listen: Some(any_port()),
        ..config(&certs)
    })
    .expect("broker");
    let channel = ChannelId::random();

    let started = now();
    let refused = Client::connect_with(tls_addr(&handle), channel, options(Some(other.trust())));
    assert_err!(
        refused,
        Error::Tls(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer
        ))
    );
    assert!(started.elapsed() < Duration::from_secs(2), "failed at once");
    broker_still_serves(&handle, &certs, 1);

    let wrong_name = certs.trust().server_name("broker.example.com").unwrap();
    let refused = Client::connect_with(tls_addr(&handle), channel, options(Some(wrong_name)));
    assert_err!(refused, Error::Tls(rustls::Error::InvalidCertificate(_)));
    broker_still_serves(&handle, &certs, 2);

    // The metrics say so too.
    let metrics = scrape(handle.metrics_addr().expect("metrics on"));
    for line in [
        "switchyard_tls_handshake_failures_total 2\n",
        "switchyard_tls_connections_opened_total 6\n",
        "switchyard_tls_connections 0\n",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }

    // Without a server name the client verifies the IP address it connects to (the
    // certificate carries 127.0.0.1).
    let by_ip = ClientTls::from_ca_file(&certs.cert).unwrap();
    let client = Client::connect_with(tls_addr(&handle), channel, options(Some(by_ip)))
        .expect("the IP address is verified");
    client.ping(DEADLINE).expect("PONG");
    client.close();
    assert!(ClientTls::from_ca_file(certs.dir.join("none.pem")).is_err());
    assert!(matches!(
        certs.trust().server_name("not a name"),
        Err(TlsConfigError::BadServerName { .. })
    ));
    wait_idle(&handle);
}

/// The metrics endpoint's answer to `GET /metrics`.
fn scrape(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: switchyard\r\n\r\n")
        .unwrap();
    String::from_utf8(read_until_closed(&mut stream)).expect("text")
}

/// A new broker with `certs` whose TLS listener is on `tls_listen` (the address a stopped one
/// had). The listener sets SO_REUSEADDR (mio does on Unix); should the port still be busy, the
/// bind is retried a bounded number of times with a short pause (a retry, not a
/// synchronisation).
fn restart_tls_on(tls_listen: SocketAddr, certs: &Certs) -> ServerHandle {
    let pause: mpsc::Receiver<()> = mpsc::channel().1;
    let mut config = config(certs);
    config.tls = Some(certs.listener(tls_listen));
    for _ in 0..50 {
        match Server::spawn(config.clone()) {
            Ok(handle) => return handle,
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                let _ = pause.recv_timeout(Duration::from_millis(20));
            }
            Err(e) => panic!("rebinding {tls_listen}: {e}"),
        }
    }
    panic!("{tls_listen} stayed in use");
}

#[test]
fn a_reconnect_that_meets_an_untrusted_certificate_closes_instead_of_spinning() {
    let certs = Certs::new("first");
    let impostor = Certs::new("impostor");
    let mut first = start(&certs);
    let tls_listen = tls_addr(&first);
    let fast = ClientOptions {
        tls: Some(certs.trust()),
        connect_timeout: Duration::from_secs(2),
        reconnect: Some(ReconnectPolicy {
            initial_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(20),
            multiplier: 2.0,
            jitter: 0.5,
            max_attempts: None,
        }),
        ..ClientOptions::default()
    };
    let client = Client::connect_with(tls_listen, ChannelId::random(), fast).expect("joined");
    client.ping(DEADLINE).expect("PONG");

    // The broker goes; another comes up on the same address with a certificate the client
    // does not trust.
    first.shutdown();
    let second = restart_tls_on(tls_listen, &impostor);
    let mut changes = Vec::new();
    loop {
        let change = client
            .next_state_change(Some(DEADLINE))
            .expect("the client reports its state");
        let closed = change.state == ConnectionState::Closed;
        changes.push(change);
        if closed {
            break;
        }
    }
    let last = changes.last().unwrap();
    assert!(
        matches!(
            last.cause,
            Some(Error::Tls(rustls::Error::InvalidCertificate(_)))
        ),
        "{changes:?}"
    );
    // Attempts before the impostor was up failed to connect (recoverable); the first attempt
    // that reached it was the last.
    assert!(client.is_closed());
    assert_err!(client.ping(DEADLINE), Error::Tls(_));
    let stats = wait_for(&second, "the refused attempt is gone", |s| {
        s.sockets == 0 && s.tls_handshake_failures == 1
    });
    assert_eq!(stats.tls_accepted, 1, "{stats:?}");
    // And no attempt follows: the broker sees no new connection while we watch.
    match second.wait_until(|s: &ServerStats| s.tls_accepted > 1, QUIET) {
        Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
        other => panic!("the client tried again: {other:?}"),
    }
    broker_still_serves(&second, &impostor, 1);
}

// ----- what is not TLS, on the TLS port (and TLS on the plain port) --------------------------

/// Reads what the broker sends until it closes; panics if it does not close within `DEADLINE`.
fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("the broker did not close the connection: {e} (got {got:?})"),
        }
    }
}

/// True when `bytes` are nothing or TLS alert records (content type 21), never a frame.
fn at_most_an_alert(bytes: &[u8]) -> bool {
    bytes.is_empty() || bytes[0] == 21
}

#[test]
fn a_plain_protocol_peer_or_garbage_on_the_tls_port_is_closed() {
    let certs = Certs::new("not-tls");
    let handle = start(&certs);

    // A plain-protocol client: its HELLO is not a TLS record.
    let mut plain = RawPeer::named(tls_addr(&handle), "plain-on-tls");
    plain.send_hello(ChannelId::random(), ClientId::random());
    let mut socket = plain.try_clone_stream();
    let answer = read_until_closed(&mut socket);
    assert!(at_most_an_alert(&answer), "{answer:?}");
    wait_for(&handle, "the plain-protocol peer is closed", |s| {
        s.sockets == 0 && s.tls_handshake_failures == 1
    });

    // Garbage.
    let mut garbage = TcpStream::connect(tls_addr(&handle)).unwrap();
    garbage.write_all(&body(5, 3000)).unwrap();
    let answer = read_until_closed(&mut garbage);
    assert!(at_most_an_alert(&answer), "{answer:?}");
    broker_still_serves(&handle, &certs, 2);
}

#[test]
fn a_tls_client_on_the_plain_port_fails_at_once_with_a_clean_error() {
    let certs = Certs::new("tls-on-plain");
    let handle = start(&certs);
    let started = now();
    let refused = Client::connect_with(
        handle.local_addr(),
        ChannelId::random(),
        options(Some(certs.trust())),
    );
    // The broker answers the ClientHello's bytes with a plain ERROR frame and closes; rustls
    // finds no TLS record in it.
    assert_err!(refused, Error::Tls(rustls::Error::InvalidMessage(_)));
    assert!(started.elapsed() < Duration::from_secs(2), "failed at once");
    let stats = wait_idle(&handle);
    assert_eq!(stats.tls_accepted, 0, "{stats:?}");
}

#[test]
fn a_tls_handshake_that_never_completes_is_closed_by_the_handshake_timeout() {
    let certs = Certs::new("stalled");
    let mut config = config(&certs);
    config.router.handshake_timeout = Duration::from_millis(200);
    let handle = Server::spawn(config).expect("broker");

    // A TCP connection that never says anything.
    let started = now();
    let mut silent = TcpStream::connect(tls_addr(&handle)).unwrap();
    let answer = read_until_closed(&mut silent);
    // At most the close_notify the broker sends when it closes.
    assert!(at_most_an_alert(&answer), "{answer:?}");
    assert!(started.elapsed() >= Duration::from_millis(200));

    // A client that sends its ClientHello, reads the broker's flight, and stops there.
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let mut hello = rustls::ClientConnection::new(
        Arc::new(config),
        rustls::pki_types::ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let mut half = TcpStream::connect(tls_addr(&handle)).unwrap();
    let mut client_hello = Vec::new();
    hello.write_tls(&mut client_hello).unwrap();
    half.write_all(&client_hello).unwrap();
    let answer = read_until_closed(&mut half);
    assert_eq!(
        answer.first(),
        Some(&22),
        "a ServerHello (handshake record) came first"
    );

    let stats = wait_for(&handle, "both are closed", |s| {
        s.sockets == 0 && s.tls_handshake_failures == 2
    });
    // Closed by the router's handshake timeout (which counts them), not by a TLS error.
    assert_eq!(stats.router.handshake_failures, 2, "{stats:?}");
    wait_idle(&handle);
}

// ----- backpressure ------------------------------------------------------------------------------

/// Frame payload of the big request, and the broker's max payload.
const FRAME: usize = 256 << 10;
/// The big request: 16 MiB, sixteen times the high watermark.
const TOTAL: usize = 16 << 20;

/// The most bytes the broker may hold for its clients (as in `backpressure.rs`): the receiver's
/// queue up to the high watermark plus the frame that crossed it, held frames up to their
/// allowance plus one frame, per connection a partial frame plus one read budget, and a few KiB
/// of control frames. The read budget counts ciphertext over TLS, so the plaintext it yields is
/// within it. (rustls' own buffer — at most `TLS_BUFFER_LIMIT` of records per connection — is
/// not part of these counts.)
fn bound(config: &ServerConfig, connections: usize) -> usize {
    let router = &config.router;
    let frame = HEADER_LEN + router.max_payload as usize;
    (router.high_watermark + frame)
        + (router.max_held_bytes + frame)
        + connections * (frame + config.read_budget)
        + 4096
}

/// The first `TOTAL` bytes of the pattern, as an `io::Read`.
struct PatternRead<'a> {
    pattern: &'a Pattern,
    offset: u64,
}

impl Read for PatternRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = TOTAL - self.offset as usize;
        let n = buf.len().min(left).min(Pattern::PERIOD);
        buf[..n].copy_from_slice(self.pattern.slice(self.offset, n));
        self.offset += n as u64;
        Ok(n)
    }
}

#[test]
fn a_stalled_tls_receiver_pauses_the_sender_within_the_bound_and_everything_arrives_in_order() {
    let certs = Certs::new("backpressure");
    let mut config = config(&certs);
    config.router.max_payload = FRAME as u32;
    config.router.high_watermark = 1 << 20;
    config.router.low_watermark = 256 << 10;
    config.router.max_held_bytes = 1 << 20;
    let limit = bound(&config, 2);
    let handle = Server::spawn(config).expect("broker");
    let channel = ChannelId::random();

    let mut receiver = TlsRawPeer::connect(tls_addr(&handle), &certs);
    receiver.hello(channel);
    receiver.send(receiver.header(FrameType::Receive), &encode_u32(1));
    receiver.barrier();
    let sender = connect_tls(&handle, channel, &certs);

    let pattern = Pattern::new();
    let ((), max) = with_peak_buffered(&handle, || {
        thread::scope(|s| {
            // The sender streams the request through the client library's TLS writer; its writes
            // block once the broker stops reading it.
            let asking = s.spawn(|| {
                let mut body = PatternRead {
                    pattern: &pattern,
                    offset: 0,
                };
                sender
                    .request_with(
                        &mut body,
                        RequestOptions {
                            timeout: LONG,
                            no_wait: false,
                        },
                    )
                    .and_then(|response| response.read_to_vec())
            });

            let paused = wait_for(&handle, "the sender is paused", |s: &ServerStats| {
                s.router.paused_connections >= 1
            });
            assert!(
                paused.buffered_bytes() <= limit,
                "{paused:?}, bound {limit}"
            );
            // While the receiver stays silent the sender stays paused and the buffers bounded (the
            // watch ends at its deadline: nothing must trigger it).
            let breach = handle.wait_until(
                move |s: &ServerStats| {
                    s.buffered_bytes() > limit || s.router.paused_connections == 0
                },
                QUIET,
            );
            match breach {
                Err(err) if err.kind() == io::ErrorKind::TimedOut => {}
                other => panic!("bound {limit} broken or the sender resumed early: {other:?}"),
            }
            assert!(!asking.is_finished(), "the sender was never blocked");

            // The receiver reads again: every frame in order, every byte the pattern's.
            let mut payload = Vec::with_capacity(FRAME);
            let mut offset = 0u64;
            let mut sequence = 0u32;
            let id = loop {
                let h = receiver.recv_into(&mut payload);
                if h.frame_type == FrameType::PeerJoined {
                    continue; // The sender joined after the receiver's barrier.
                }
                assert_eq!(h.flags, Flags::REQUEST, "frame {sequence}");
                assert_eq!(h.sequence, sequence, "frame {sequence} at offset {offset}");
                pattern.check(offset, &payload);
                offset += payload.len() as u64;
                sequence += 1;
                if h.is_final {
                    break h.request_id;
                }
            };
            assert_eq!(offset, TOTAL as u64, "bytes received");
            let respond = Header {
                flags: Flags::RESPONSE,
                request_id: id,
                is_final: true,
                ..receiver.header(FrameType::Start)
            };
            receiver.send(respond, b"all of it");
            let reply = asking.join().unwrap().expect("the request completes");
            assert_eq!(reply, b"all of it");
        })
    });
    println!("max buffered {max} bytes, bound {limit}");
    assert!(
        max <= limit,
        "the broker buffered {max} bytes, over the bound of {limit}"
    );
    assert!(
        max >= 1 << 20,
        "the queue never reached the high watermark ({max})"
    );
    sender.close();
    drop(receiver);
    wait_idle(&handle);
}

// ----- configuration -----------------------------------------------------------------------------

#[test]
fn binding_with_a_bad_certificate_file_is_a_typed_error_naming_it() {
    let certs = Certs::new("bind");
    let mut config = config(&certs);
    let missing = certs.dir.join("missing.crt");
    config.tls = Some(TlsListenerConfig {
        cert_path: missing.clone(),
        ..certs.listener(any_port())
    });
    let err = Server::bind(config.clone()).err().expect("refused");
    let typed = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<TlsConfigError>())
        .expect("a TlsConfigError inside");
    assert!(
        matches!(typed, TlsConfigError::Read { path, .. } if *path == missing),
        "{typed:?}"
    );
    assert!(err.to_string().contains("missing.crt"), "{err}");

    config.tls = Some(TlsListenerConfig {
        key_path: certs.cert.clone(),
        ..certs.listener(any_port())
    });
    let err = Server::bind(config).err().expect("refused");
    assert!(err.to_string().contains("broker.crt"), "{err}");
    assert!(
        matches!(
            err.get_ref()
                .and_then(|e| e.downcast_ref::<TlsConfigError>()),
            Some(TlsConfigError::NoKey { .. })
        ),
        "{err:?}"
    );
}

/// Runs the binary with `args` (and `--print-config`), returning its exit code and output.
fn run_binary(args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .arg("--print-config")
        .output()
        .expect("run the broker binary");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_binary_refuses_bad_tls_settings_with_exit_code_2() {
    let certs = Certs::new("binary");
    let cert = certs.cert.to_str().unwrap();
    let key = certs.key.to_str().unwrap();
    let missing = certs.dir.join("missing.crt");
    let missing = missing.to_str().unwrap();

    let (code, _, stderr) = run_binary(&[
        "--tls-listen",
        "127.0.0.1:0",
        "--tls-cert",
        missing,
        "--tls-key",
        key,
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("missing.crt"), "{stderr}");

    let (code, _, stderr) = run_binary(&["--tls-key", key]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("`tls_key` (--tls-key)"), "{stderr}");

    let (code, _, stderr) = run_binary(&["--tls-listen", "127.0.0.1:0", "--tls-cert", cert]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("`tls_key` (--tls-key) is required"),
        "{stderr}"
    );

    let (code, stdout, stderr) = run_binary(&[
        "--tls-listen",
        "127.0.0.1:7443",
        "--tls-cert",
        cert,
        "--tls-key",
        key,
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("tls_listen = \"127.0.0.1:7443\""),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("tls_cert = {cert:?}")), "{stdout}");
    assert!(stdout.contains(&format!("tls_key = {key:?}")), "{stdout}");
}
