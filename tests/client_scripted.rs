//! The client against a scripted broker: each test plays the broker on a real socket, reading and
//! writing frames with the protocol module, with explicit read deadlines (never sleeps). The
//! scripted broker's side is `switchyard_testkit::scripted`.

use std::io::{self, Read};
use std::net::TcpListener;
use std::thread;
use std::time::Duration;

use switchyard_testkit::{
    now,
    scripted::{connect, connect_once, connect_with, recv_stream, welcome, Peer},
    DEADLINE,
};

use switchyard::client::{Client, ClientOptions, Error, PresenceEvent, RequestOptions};
use switchyard::ids::{ChannelId, ClientId, RequestId};
use switchyard::protocol::{encode_u32, ErrorCode, Flags, FrameType};

#[test]
fn handshake_assigns_id_and_keeps_welcome_peers() {
    let (a, b) = (ClientId::random(), ClientId::random());
    let (client, _peer, hello) = connect_with(ClientOptions::default(), welcome(4096, vec![a, b]));
    assert!(hello.client_id.is_nil(), "no id asked for");
    assert_eq!(hello.payload_len, 0);
    assert!(!client.client_id().is_nil());
    assert_eq!(client.peers(), vec![a, b]);
    let limits = client.limits();
    assert_eq!(limits.max_payload, 4096);
    assert_eq!(limits.default_timeout, Duration::from_secs(1));
    assert_eq!(limits.max_timeout, Duration::from_secs(10));
}

#[test]
fn handshake_with_chosen_id_and_refusal() {
    let id = ClientId::random();
    let options = ClientOptions {
        client_id: Some(id),
        ..ClientOptions::default()
    };
    let (client, _peer, hello) = connect_with(options, welcome(4096, Vec::new()));
    assert_eq!(hello.client_id, id);
    assert_eq!(client.client_id(), id);

    // CLIENT_ID_IN_USE during the handshake is the connect error.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let channel = ChannelId::random();
    let connecting = thread::spawn(move || Client::connect(addr, channel));
    let mut peer = Peer::accept(&listener, channel);
    assert_eq!(peer.recv().header.frame_type, FrameType::Hello);
    peer.send_error(RequestId::NIL, ErrorCode::ClientIdInUse, &[]);
    match connecting.join().unwrap() {
        Err(Error::Broker { code: 0x0009, .. }) => {}
        other => panic!("expected CLIENT_ID_IN_USE, got {other:?}"),
    }
}

#[test]
fn request_and_response_in_one_frame_each() {
    let (client, mut peer) = connect(1024);
    thread::scope(|s| {
        let caller = s.spawn(|| client.request(b"hello", Duration::from_millis(1500)));
        let start = peer.recv();
        let h = start.header;
        assert_eq!(h.frame_type, FrameType::Start);
        assert_eq!(h.flags, Flags::REQUEST);
        assert_eq!((h.sequence, h.is_final), (0, true));
        assert_eq!(h.timeout_ms, 1500);
        assert!(!h.request_id.is_nil());
        assert_eq!(&start.payload[..], b"hello");
        let responder = ClientId::random();
        let reply = peer.frame(
            FrameType::Start,
            Flags::RESPONSE,
            h.request_id,
            0,
            true,
            b"world",
        );
        peer.send_from(responder, reply);
        assert_eq!(caller.join().unwrap().unwrap(), b"world");
    });
}

#[test]
fn request_streamed_over_max_payload_and_response_streamed_back() {
    const MAX: usize = 16;
    let (client, mut peer) = connect(MAX as u32);
    let body: Vec<u8> = (0..(2 * MAX + 1) as u8).collect();
    thread::scope(|s| {
        let caller = s.spawn(|| {
            let options = RequestOptions {
                timeout: None,
                no_wait: true,
            };
            let mut response = client.request_with(&mut &body[..], options)?;
            let responder = response.responder();
            let mut got = Vec::new();
            response.read_to_end(&mut got).map_err(Error::Io)?;
            Ok::<_, Error>((responder, got))
        });
        let frames = recv_stream(&mut peer);
        let shape: Vec<_> = frames
            .iter()
            .map(|f| {
                (
                    f.header.frame_type,
                    f.header.sequence,
                    f.header.is_final,
                    f.payload.len(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                (FrameType::Start, 0, false, MAX),
                (FrameType::Chunk, 1, false, MAX),
                (FrameType::End, 2, true, 1),
            ]
        );
        assert_eq!(frames[0].header.flags, Flags::REQUEST | Flags::NO_WAIT);
        assert_eq!(
            frames[0].header.timeout_ms, 0,
            "ZERO asks for the broker default"
        );
        for frame in &frames[1..] {
            assert_eq!(frame.header.flags, Flags::REQUEST);
            assert_eq!(frame.header.timeout_ms, 0);
        }
        let id = frames[0].header.request_id;
        assert!(frames.iter().all(|f| f.header.request_id == id));
        let joined: Vec<u8> = frames.iter().flat_map(|f| f.payload.to_vec()).collect();
        assert_eq!(joined, body);

        let responder = ClientId::random();
        for (ty, seq, fin, data) in [
            (FrameType::Start, 0, false, &b"abcde"[..]),
            (FrameType::Chunk, 1, false, b"fghij"),
            (FrameType::End, 2, true, b"klm"),
        ] {
            let frame = peer.frame(ty, Flags::RESPONSE, id, seq, fin, data);
            peer.send_from(responder, frame);
        }
        let (got_responder, got) = caller.join().unwrap().unwrap();
        assert_eq!(got_responder, responder);
        assert_eq!(got, b"abcdefghijklm");
    });

    // Exactly max_payload bytes still fit one START|FINAL; an empty body is START|FINAL too.
    for len in [MAX, 0] {
        thread::scope(|s| {
            let body = vec![7u8; len];
            let client = &client;
            let caller = s.spawn(move || client.request(&body, Duration::from_secs(1)));
            let start = peer.recv();
            assert_eq!(start.header.frame_type, FrameType::Start);
            assert!(start.header.is_final);
            assert_eq!(start.payload.len(), len);
            let reply = peer.frame(
                FrameType::Start,
                Flags::RESPONSE,
                start.header.request_id,
                0,
                true,
                b"",
            );
            peer.send(reply);
            assert_eq!(caller.join().unwrap().unwrap(), b"");
        });
    }
}

#[test]
fn request_errors_map_to_typed_errors() {
    let (client, mut peer) = connect(1024);
    for (code, check) in [
        (
            ErrorCode::NoReceiver,
            (|e: &Error| matches!(e, Error::NoReceiver)) as fn(&Error) -> bool,
        ),
        (ErrorCode::Timeout, |e| matches!(e, Error::Timeout)),
        (ErrorCode::PeerGone, |e| matches!(e, Error::PeerGone)),
        (ErrorCode::LimitExceeded, |e| {
            matches!(e, Error::Broker { code: 0x0109, .. })
        }),
    ] {
        thread::scope(|s| {
            let caller = s.spawn(|| client.request(b"x", Duration::from_secs(1)));
            let start = peer.recv();
            peer.send_error(start.header.request_id, code, &[]);
            let error = caller.join().unwrap().unwrap_err();
            assert!(check(&error), "{code:?} mapped to {error:?}");
            assert!(!error.is_connection_fatal());
        });
    }
    // A late error for a request the client no longer tracks is ignored.
    peer.send_error(RequestId::random(), ErrorCode::UnknownRequest, &[]);
    peer.expect_quiet();
    assert!(!client.is_closed());
}

#[test]
fn receiver_cancel_fails_the_sender() {
    let (client, mut peer) = connect(1024);
    thread::scope(|s| {
        let caller = s.spawn(|| client.request(b"x", Duration::from_secs(1)));
        let start = peer.recv();
        let cancel = peer.frame(
            FrameType::Cancel,
            Flags::RESPONSE,
            start.header.request_id,
            0,
            false,
            b"",
        );
        peer.send(cancel);
        assert!(matches!(caller.join().unwrap(), Err(Error::Cancelled)));
    });
}

#[test]
fn failing_body_reader_cancels_the_request() {
    /// Yields `good` bytes, then fails.
    struct Failing {
        good: usize,
    }
    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.good == 0 {
                return Err(io::Error::other("disk on fire"));
            }
            let n = buf.len().min(self.good);
            buf[..n].fill(1);
            self.good -= n;
            Ok(n)
        }
    }
    let (client, mut peer) = connect(16);
    thread::scope(|s| {
        // Two full chunks, then the error: the first chunk goes out once the second is read.
        let caller = s.spawn(|| {
            client
                .request_with(&mut Failing { good: 32 }, RequestOptions::default())
                .map(drop)
        });
        let start = peer.recv();
        assert_eq!(
            (start.header.frame_type, start.header.is_final),
            (FrameType::Start, false)
        );
        let cancel = peer.recv();
        assert_eq!(cancel.header.frame_type, FrameType::Cancel);
        assert_eq!(cancel.header.flags, Flags::REQUEST);
        assert_eq!(cancel.header.request_id, start.header.request_id);
        match caller.join().unwrap() {
            Err(Error::Io(e)) => assert_eq!(e.to_string(), "disk on fire"),
            other => panic!("expected the reader's error, got {other:?}"),
        }
    });
    assert!(!client.is_closed());
}

#[test]
fn local_deadline_cancels_when_the_broker_is_silent() {
    let options = ClientOptions {
        deadline_grace: Duration::from_millis(100),
        ..ClientOptions::default()
    };
    let (client, mut peer, _) = connect_with(options, welcome(1024, Vec::new()));
    thread::scope(|s| {
        let caller = s.spawn(|| client.request(b"x", Duration::from_millis(100)));
        let start = peer.recv();
        // The broker never answers: after timeout + grace the client gives up and cancels.
        let cancel = peer.recv();
        assert_eq!(cancel.header.frame_type, FrameType::Cancel);
        assert_eq!(cancel.header.flags, Flags::REQUEST);
        assert_eq!(cancel.header.request_id, start.header.request_id);
        assert!(matches!(caller.join().unwrap(), Err(Error::Timeout)));
    });
}

#[test]
fn cancel_fails_the_incoming_body_reader() {
    let (client, mut peer) = connect(1024);
    client.set_receive_window(3).unwrap();
    let receive = peer.recv();
    assert_eq!(receive.header.frame_type, FrameType::Receive);
    assert_eq!(&receive.payload[..], &encode_u32(3)[..]);

    let sender = ClientId::random();
    let id = RequestId::random();
    let mut start = peer.frame(FrameType::Start, Flags::REQUEST, id, 0, false, b"part one");
    start.header.timeout_ms = 900;
    peer.send_from(sender, start);
    let mut request = client.next_request(Some(DEADLINE)).unwrap();
    assert_eq!(request.id(), id);
    assert_eq!(request.sender(), sender);
    assert_eq!(request.timeout(), Duration::from_millis(900));
    let mut buf = [0u8; 8];
    request.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"part one");

    let cancel = peer.frame(FrameType::Cancel, Flags::REQUEST, id, 0, false, b"");
    peer.send(cancel);
    let error = request.read(&mut buf).unwrap_err();
    let typed = error.get_ref().and_then(|e| e.downcast_ref::<Error>());
    assert!(matches!(typed, Some(Error::Cancelled)), "got {error:?}");
    assert!(matches!(request.read_body(), Err(Error::Cancelled)));
    assert!(matches!(request.respond(b"late"), Err(Error::Cancelled)));
    // Cancelled by the sender: the client owes nothing, so it sends nothing.
    peer.expect_quiet();
}

#[test]
fn dropping_an_incoming_request_sends_cancel_response() {
    let (client, mut peer) = connect(1024);
    let id = RequestId::random();
    let start = peer.frame(FrameType::Start, Flags::REQUEST, id, 0, true, b"do it");
    peer.send_from(ClientId::random(), start);
    let mut request = client.next_request(Some(DEADLINE)).unwrap();
    assert_eq!(request.read_body().unwrap(), b"do it");
    drop(request);
    let cancel = peer.recv();
    assert_eq!(cancel.header.frame_type, FrameType::Cancel);
    assert_eq!(cancel.header.flags, Flags::RESPONSE);
    assert_eq!(cancel.header.request_id, id);
}

#[test]
fn incoming_request_is_answered_in_one_frame() {
    let (client, mut peer) = connect(1024);
    let id = RequestId::random();
    let start = peer.frame(FrameType::Start, Flags::REQUEST, id, 0, true, b"question");
    peer.send_from(ClientId::random(), start);
    let request = client.next_request(Some(DEADLINE)).unwrap();
    request.respond(b"answer").unwrap();
    let reply = peer.recv();
    let h = reply.header;
    assert_eq!(
        (h.frame_type, h.flags, h.request_id),
        (FrameType::Start, Flags::RESPONSE, id)
    );
    assert_eq!((h.sequence, h.is_final), (0, true));
    assert_eq!(&reply.payload[..], b"answer");
    peer.expect_quiet();
    assert!(matches!(
        client.next_request(Some(Duration::from_millis(10))),
        Err(Error::WaitElapsed)
    ));
}

#[test]
fn broadcast_ack_count_and_incomplete() {
    let (client, mut peer) = connect(1024);
    let missing = vec![ClientId::random(), ClientId::random()];
    for outcome in 0..3 {
        thread::scope(|s| {
            let caller = s.spawn(|| client.broadcast(b"news", Duration::from_secs(1)));
            let start = peer.recv();
            let h = start.header;
            assert_eq!(
                (h.frame_type, h.flags),
                (FrameType::Start, Flags::REQUEST | Flags::BROADCAST)
            );
            assert!(h.is_final);
            match outcome {
                0 => {
                    let ack = peer.frame(
                        FrameType::Ack,
                        Flags::NONE,
                        h.request_id,
                        0,
                        false,
                        &encode_u32(3),
                    );
                    peer.send(ack);
                    assert_eq!(caller.join().unwrap().unwrap(), 3);
                }
                1 => {
                    peer.send_error(h.request_id, ErrorCode::BroadcastIncomplete, &missing);
                    match caller.join().unwrap() {
                        Err(Error::BroadcastIncomplete { missing: got }) => {
                            assert_eq!(got, missing)
                        }
                        other => panic!("expected BroadcastIncomplete, got {other:?}"),
                    }
                }
                _ => {
                    peer.send_error(h.request_id, ErrorCode::NoPeers, &[]);
                    assert!(matches!(caller.join().unwrap(), Err(Error::NoPeers)));
                }
            }
        });
    }
}

#[test]
fn incoming_broadcast_is_acked_when_handed_out() {
    let (client, mut peer) = connect(1024);
    let sender = ClientId::random();
    let id = RequestId::random();
    let flags = Flags::REQUEST | Flags::BROADCAST;
    let first = peer.frame(FrameType::Start, flags, id, 0, false, b"hello ");
    peer.send_from(sender, first);
    let last = peer.frame(FrameType::End, flags, id, 1, true, b"all");
    peer.send_from(sender, last);
    let broadcast = client.next_broadcast(Some(DEADLINE)).unwrap();
    assert_eq!((broadcast.id, broadcast.sender), (id, sender));
    assert_eq!(broadcast.body, b"hello all");
    let ack = peer.recv();
    assert_eq!(
        (ack.header.frame_type, ack.header.flags),
        (FrameType::Ack, Flags::BROADCAST)
    );
    assert_eq!(ack.header.request_id, id);
    assert!(ack.payload.is_empty());
}

#[test]
fn presence_events_update_peers() {
    let a = ClientId::random();
    let (client, mut peer, _) = connect_with(ClientOptions::default(), welcome(1024, vec![a]));
    let c = ClientId::random();
    let joined = peer.frame(
        FrameType::PeerJoined,
        Flags::NONE,
        RequestId::NIL,
        0,
        false,
        b"",
    );
    peer.send_from(c, joined);
    let left = peer.frame(
        FrameType::PeerLeft,
        Flags::NONE,
        RequestId::NIL,
        0,
        false,
        b"",
    );
    peer.send_from(a, left);
    assert_eq!(
        client.next_presence(Some(DEADLINE)).unwrap(),
        PresenceEvent::Joined(c)
    );
    assert_eq!(
        client.next_presence(Some(DEADLINE)).unwrap(),
        PresenceEvent::Left(a)
    );
    assert_eq!(client.peers(), vec![c]);
}

#[test]
fn pings_both_ways() {
    let (client, mut peer) = connect(1024);
    let ping = peer.frame(FrameType::Ping, Flags::NONE, RequestId::NIL, 77, false, b"");
    peer.send(ping);
    let pong = peer.recv();
    assert_eq!(
        (pong.header.frame_type, pong.header.sequence),
        (FrameType::Pong, 77)
    );
    assert_eq!(pong.header.channel_id, client.channel_id());

    thread::scope(|s| {
        let caller = s.spawn(|| client.ping(DEADLINE));
        let ping = peer.recv();
        assert_eq!(ping.header.frame_type, FrameType::Ping);
        let pong = peer.frame(
            FrameType::Pong,
            Flags::NONE,
            RequestId::NIL,
            ping.header.sequence,
            false,
            b"",
        );
        peer.send(pong);
        assert!(caller.join().unwrap().unwrap() < DEADLINE);
    });
}

#[test]
fn connection_fatal_error_closes_the_client() {
    let (client, mut peer) = connect_once(1024);
    thread::scope(|s| {
        let caller = s.spawn(|| client.request(b"x", Duration::from_secs(1)));
        let waiter = s.spawn(|| client.next_request(None).map(drop));
        peer.recv();
        peer.send_error(RequestId::NIL, ErrorCode::HeartbeatTimeout, &[]);
        for result in [caller.join().unwrap().map(drop), waiter.join().unwrap()] {
            match result {
                Err(e @ Error::Broker { code: 0x000B, .. }) => assert!(e.is_connection_fatal()),
                other => panic!("expected HEARTBEAT_TIMEOUT, got {other:?}"),
            }
        }
    });
    assert!(client.is_closed());
    assert!(matches!(
        client.ping(DEADLINE),
        Err(Error::Broker { code: 0x000B, .. })
    ));
    peer.expect_closed();
}

#[test]
fn close_is_idempotent_and_wakes_everyone() {
    let (client, mut peer) = connect(1024);
    thread::scope(|s| {
        let waiter = s.spawn(|| client.next_broadcast(None).map(drop));
        let caller = s.spawn(|| client.request(b"x", Duration::from_secs(30)));
        peer.recv(); // the request is in flight
        client.close();
        client.close();
        assert!(matches!(waiter.join().unwrap(), Err(Error::Closed)));
        assert!(matches!(caller.join().unwrap(), Err(Error::Closed)));
    });
    assert!(matches!(
        client.request(b"x", Duration::from_secs(1)),
        Err(Error::Closed)
    ));
    assert!(matches!(client.set_receive_window(1), Err(Error::Closed)));
    assert!(matches!(
        client.next_presence(Some(DEADLINE)),
        Err(Error::Closed)
    ));
    peer.expect_closed();
}

#[test]
fn broker_disconnect_fails_pending_requests() {
    let (client, mut peer) = connect_once(1024);
    thread::scope(|s| {
        let caller = s.spawn(|| client.request(b"x", Duration::from_secs(30)));
        peer.recv();
        let started = now();
        drop(peer);
        assert!(matches!(caller.join().unwrap(), Err(Error::Io(_))));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "failed promptly"
        );
    });
    assert!(client.is_closed());
    assert!(matches!(
        client.request(b"x", Duration::from_secs(1)),
        Err(Error::Io(_))
    ));
}

#[test]
fn concurrent_requests_are_demultiplexed() {
    const THREADS: usize = 8;
    let (client, mut peer) = connect(8);
    thread::scope(|s| {
        let callers: Vec<_> = (0..THREADS)
            .map(|i| {
                let client = &client;
                s.spawn(move || {
                    // 20 bytes with max_payload 8: three frames per request, interleaved on the wire.
                    let body = format!("request number {i:04}");
                    let reply = client
                        .request(body.as_bytes(), Duration::from_secs(2))
                        .unwrap();
                    assert_eq!(reply, format!("reply to {body}").into_bytes());
                })
            })
            .collect();
        // Collect every request's frames, whatever the interleaving, then answer in reverse.
        let mut bodies: Vec<(RequestId, Vec<u8>)> = Vec::new();
        let mut complete = 0;
        while complete < THREADS {
            let frame = peer.recv();
            let id = frame.header.request_id;
            match bodies.iter_mut().find(|(known, _)| *known == id) {
                Some((_, body)) => body.extend_from_slice(&frame.payload),
                None => {
                    assert_eq!(frame.header.frame_type, FrameType::Start);
                    bodies.push((id, frame.payload.to_vec()));
                }
            }
            complete += usize::from(frame.header.is_final);
        }
        for (id, body) in bodies.iter().rev() {
            let reply = format!("reply to {}", String::from_utf8_lossy(body));
            let frame = peer.frame(
                FrameType::Start,
                Flags::RESPONSE,
                *id,
                0,
                true,
                reply.as_bytes(),
            );
            peer.send(frame);
        }
        for caller in callers {
            caller.join().unwrap();
        }
    });
}
