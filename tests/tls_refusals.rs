//! TLS end to end, what is refused:
//! - a certificate the client does not trust (or a wrong name) is a typed `Error::Tls`, the
//!   client does not reconnect into it, and the broker stays fine;
//! - a plain-protocol peer, garbage, or a silent or half-done handshake on the TLS port is
//!   closed (by rustls or by the handshake timeout) and counted; a TLS client on the plain port
//!   gets a clean error at once.
//!
//! Every test ends with the broker idle. No sleeps: blocking calls with deadlines and the
//! broker's event-driven `wait_until`. Fixtures (certificates made at test time with rcgen, a
//! broker with a plain and a TLS listener): `switchyard_testkit::tls`.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{mpsc, Arc};
use std::time::Duration;
use switchyard_testkit::{
    assert_err,
    body::body,
    broker,
    client::{expect_reversed, fast_reconnect, reversed, Responder},
    gauges::{wait_for, wait_idle},
    now,
    raw::RawPeer,
    tls::{config, connect_tls, options, start, tls_addr, Certs},
    DEADLINE, QUIET,
};

use switchyard::client::{Client, ClientOptions, ClientTls, ConnectionState, Error};
use switchyard::ids::{ChannelId, ClientId};
use switchyard::rustls;
use switchyard::server::{Server, ServerConfig, ServerHandle, ServerStats};
use switchyard::tls::TlsConfigError;

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
        metrics_listen: Some(broker::any_port()),
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
    assert!(ClientTls::from_ca_file(certs.dir().join("none.pem")).is_err());
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
        ..fast_reconnect(None)
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
