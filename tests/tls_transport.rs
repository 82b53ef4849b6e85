//! TLS end to end, the traffic: request/reply and broadcast/presence over TLS, bodies
//! byte-exact (1 MiB included), concurrently, and across transports (a plain receiver serving a
//! TLS sender); and backpressure over TLS: a TLS receiver that stops reading (a raw rustls peer)
//! pauses the sender, the broker's buffers stay within the bound its watermarks give, and
//! everything arrives in order.
//!
//! Every test ends with the broker idle. No sleeps: blocking calls with deadlines and the
//! broker's event-driven `wait_until`. Fixtures (certificates made at test time with rcgen, a
//! broker with a plain and a TLS listener): `switchyard_testkit::tls`.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::Duration;
use switchyard_testkit::{
    body::body,
    client::{expect_reversed, reversed, Responder},
    gauges::{buffered_bound, wait_for, wait_idle, with_peak_buffered},
    pattern::Pattern,
    tls::{config, connect_plain, connect_tls, start, tls_addr, Certs},
    DEADLINE, QUIET,
};

use bytes::Bytes;
use switchyard::client::RequestOptions;
use switchyard::ids::{ChannelId, ClientId};
use switchyard::protocol::{encode_u32, Flags, Frame, FrameType, Header, HEADER_LEN};
use switchyard::rustls;
use switchyard::rustls::pki_types::pem::PemObject;
use switchyard::server::{Server, ServerStats};

/// A request timeout no passing test reaches.
const LONG: Duration = Duration::from_secs(30);

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

// ----- backpressure ------------------------------------------------------------------------------

/// Frame payload of the big request, and the broker's max payload.
const FRAME: usize = 256 << 10;
/// The big request: 16 MiB, sixteen times the high watermark.
const TOTAL: usize = 16 << 20;

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
    let limit = buffered_bound(&config, 2);
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
                            timeout: Some(LONG),
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
