//! Request/reply through a real broker with the blocking client, when a party goes away:
//! receiver and sender disconnects, at-most-once delivery across a receiver's loss, a paused
//! sender that disconnects; plus the predecessor's client-lifecycle edge cases (connection
//! refused, close twice, use after close).
//!
//! Every test ends by closing its clients and asserting the broker is idle (behaviour 9).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;
use switchyard_testkit::{
    assert_err,
    body::{GatedReader, PatternReader},
    broker::{small_frames, start, start_router},
    client::{self, connect, echo, receiver, request_options as options, set_window, Responder},
    gauges::wait_idle,
    DEADLINE, QUIET,
};

use switchyard::client::{Client, Error};
use switchyard::ids::{ChannelId, RequestId};
use switchyard::protocol::{FrameType, Header};
use switchyard::router::RouterConfig;

#[test]
fn a_receiver_disconnecting_mid_request_is_peer_gone() {
    let handle = start_router(small_frames());
    let channel = ChannelId::random();
    let sender = connect(&handle, channel);

    // (a) Holding the request, before responding.
    let receiver = receiver(&handle, channel, 1);
    thread::scope(|s| {
        let asking = s.spawn(|| sender.request(b"hello?", DEADLINE));
        let incoming = receiver.next_request(Some(DEADLINE)).expect("assigned");
        receiver.close(); // while still holding it: no CANCEL, a disconnect
        drop(incoming);
        assert_err!(asking.join().unwrap(), Error::PeerGone);
    });
    drop(receiver);

    // (b) In the middle of a streamed response.
    let receiver = client::receiver(&handle, channel, 1);
    thread::scope(|s| {
        let (mut stalled, gate) = GatedReader::new(9, 3 * 1024);
        let responder = &receiver;
        let responding = s.spawn(move || {
            let incoming = responder.next_request(Some(DEADLINE)).expect("assigned");
            incoming.respond_with(&mut stalled)
        });
        let mut response = sender
            .request_with(&mut &b"stream me"[..], options(DEADLINE))
            .expect("the response started");
        let mut first = [0u8; 1024];
        std::io::Read::read_exact(&mut response, &mut first).expect("the first frame");
        receiver.close();
        assert_err!(response.read_to_vec(), Error::PeerGone);
        drop(gate);
        let sent = responding.join().unwrap();
        assert!(
            sent.as_ref().is_err_and(Error::is_connection_fatal),
            "{sent:?}"
        );
    });
    drop(receiver);

    drop(sender);
    wait_idle(&handle);
}

#[test]
fn a_sender_disconnecting_cancels_its_requests() {
    let handle = start_router(small_frames());
    let channel = ChannelId::random();
    let holder = receiver(&handle, channel, 1);
    let late = connect(&handle, channel); // no credit until the sender is gone
    let sender = connect(&handle, channel);

    thread::scope(|s| {
        // One request assigned with its body half sent, two more waiting for a receiver.
        let (mut half, gate) = GatedReader::new(3, 2 * 1024);
        let sender = &sender;
        let streaming = s.spawn(move || {
            sender
                .request_with(&mut half, options(DEADLINE))
                .map(|_| ())
        });
        let mut incoming = holder.next_request(Some(DEADLINE)).expect("assigned");
        let queued: Vec<_> = (0..2)
            .map(|i| s.spawn(move || sender.request(format!("queued {i}").as_bytes(), DEADLINE)))
            .collect();
        handle
            .wait_until(
                |st| st.router.assignments == 1 && st.router.pending_requests == 2,
                DEADLINE,
            )
            .expect("one assigned, two waiting");

        sender.close();
        for asking in queued {
            assert_err!(asking.join().unwrap(), Error::Closed);
        }
        // The held request's body never completes: the receiver reads Cancelled.
        assert_err!(incoming.read_body(), Error::Cancelled);
        drop(incoming);
        drop(gate);
        let streamed = streaming.join().unwrap();
        assert!(
            streamed.as_ref().is_err_and(Error::is_connection_fatal),
            "{streamed:?}"
        );
    });
    handle
        .wait_until(
            |st| st.router.assignments == 0 && st.router.pending_requests == 0,
            DEADLINE,
        )
        .expect("the sender's requests are gone");

    // The waiting requests were dropped, not handed to the next receiver with credit.
    set_window(&late, 5);
    assert_err!(late.next_request(Some(QUIET)), Error::WaitElapsed);
    assert_err!(
        holder.next_request(Some(Duration::ZERO)),
        Error::WaitElapsed
    );

    drop((holder, late, sender));
    wait_idle(&handle);
}

/// Every request a receiver got: its id and body.
type Deliveries = Vec<(RequestId, Vec<u8>)>;

#[test]
fn a_request_is_never_delivered_twice() {
    const SENDERS: usize = 2;
    const THREADS_PER_SENDER: usize = 2;
    const PER_THREAD: usize = 50;
    let handle = start();
    let channel = ChannelId::random();
    let sender_clients: Vec<Client> = (0..SENDERS).map(|_| connect(&handle, channel)).collect();

    // A receiver that disappears while holding a request: PEER_GONE, and the request is not
    // handed to anyone else afterwards.
    let flaky = receiver(&handle, channel, 1);
    let lost_id: RequestId = thread::scope(|s| {
        let asking = s.spawn(|| sender_clients[0].request(b"lost", DEADLINE));
        let incoming = flaky.next_request(Some(DEADLINE)).expect("assigned");
        let id = incoming.id();
        flaky.close();
        drop(incoming);
        assert_err!(asking.join().unwrap(), Error::PeerGone);
        id
    });
    drop(flaky);

    let deliveries: Arc<Mutex<Deliveries>> = Arc::default();
    let responders: Vec<Responder> = (0..3)
        .map(|_| {
            let deliveries = Arc::clone(&deliveries);
            Responder::spawn(connect(&handle, channel), 2, move |incoming, body| {
                deliveries
                    .lock()
                    .unwrap()
                    .push((incoming.id(), body.clone()));
                body
            })
        })
        .collect();
    thread::scope(|s| {
        for (c, client) in sender_clients.iter().enumerate() {
            for t in 0..THREADS_PER_SENDER {
                s.spawn(move || {
                    for i in 0..PER_THREAD {
                        let body = format!("{c}/{t}/{i}");
                        let reply = client.request(body.as_bytes(), DEADLINE).expect("answered");
                        assert_eq!(reply, body.as_bytes());
                    }
                });
            }
        }
    });
    let answered: usize = responders.into_iter().map(|r| r.stop().answered).sum();
    let total = SENDERS * THREADS_PER_SENDER * PER_THREAD;
    assert_eq!(answered, total);

    let deliveries = deliveries.lock().unwrap();
    assert_eq!(deliveries.len(), total, "deliveries across receivers");
    let ids: HashSet<RequestId> = deliveries.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids.len(), total, "a request id was delivered twice");
    let bodies: HashSet<&[u8]> = deliveries.iter().map(|(_, b)| b.as_slice()).collect();
    assert_eq!(bodies.len(), total, "a body was delivered twice");
    assert!(!ids.contains(&lost_id), "the lost request was re-delivered");
    assert!(
        !bodies.contains(&b"lost"[..]),
        "the lost request was re-delivered"
    );
    drop(deliveries);

    drop(sender_clients);
    wait_idle(&handle);
}

#[test]
fn client_lifecycle_edge_cases() {
    // Connection refused: a port nobody listens on any more.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    assert_err!(
        Client::connect(addr, ChannelId::random()),
        Error::ConnectionRefused(_)
    );

    let handle = start();
    let channel = ChannelId::random();
    let client = connect(&handle, channel);
    let other = receiver(&handle, channel, 1);
    client.close();
    client.close(); // idempotent
    assert!(client.is_closed());
    assert_err!(client.request(b"x", DEADLINE), Error::Closed);
    assert_err!(client.set_receive_window(1), Error::Closed);
    assert_err!(client.next_request(Some(DEADLINE)), Error::Closed);
    assert_err!(client.broadcast(b"x", DEADLINE), Error::Closed);
    assert_err!(client.next_broadcast(None), Error::Closed);
    assert_err!(client.ping(DEADLINE), Error::Closed);
    // The other client saw it leave and is unaffected.
    handle
        .wait_until(|st| st.router.connections == 1, DEADLINE)
        .expect("the closed client is gone");
    other.ping(DEADLINE).unwrap();

    // Sequential requests on one connection.
    let responder = Responder::spawn(other, 1, echo);
    let sender = connect(&handle, channel);
    for i in 0..20u32 {
        assert_eq!(
            sender.request(&i.to_le_bytes(), DEADLINE).unwrap(),
            i.to_le_bytes()
        );
    }
    assert_eq!(responder.stop().answered, 20);

    drop((client, sender));
    wait_idle(&handle);
}

#[test]
fn a_paused_sender_that_disconnects_is_noticed() {
    // A producer paused by a consumer that never drains is not read. When it goes away, the
    // broker learns it one of two ways: a reset (the client had unread input) arrives as an
    // error event and closes it at once; a FIN, though, waits in the client's kernel behind the
    // data the broker is not reading (zero window), so no event comes. Either way the state is
    // bounded by the request's own timeout: it ends the request, which lifts the pause, and the
    // broker then reads the rest and the EOF. So: a short request timeout, and everything must
    // be freed within it plus a margin, never "whenever the stuck receiver drains or leaves".
    let request_timeout = Duration::from_secs(2);
    let handle = start_router(RouterConfig {
        max_payload: 64 * 1024,
        high_watermark: 256 << 10,
        low_watermark: 64 << 10,
        ..RouterConfig::default()
    });
    let channel = ChannelId::random();
    // A receiver that gave credit by hand on a raw socket and never reads a byte.
    let mut stuck = std::net::TcpStream::connect(handle.local_addr()).expect("connect");
    let mut hello = Header::new(FrameType::Hello);
    hello.channel_id = channel;
    hello.client_id = switchyard::ids::ClientId::random();
    let mut receive = hello;
    receive.frame_type = FrameType::Receive;
    receive.payload_len = 4;
    let mut handshake = hello.encode().to_vec();
    handshake.extend_from_slice(&receive.encode());
    handshake.extend_from_slice(&1u32.to_be_bytes());
    std::io::Write::write_all(&mut stuck, &handshake).expect("HELLO, RECEIVE");

    let sender = connect(&handle, channel);
    thread::scope(|s| {
        let filling = s.spawn(|| {
            sender
                .request_with(
                    &mut PatternReader::new(1, 64 << 20),
                    options(request_timeout),
                )
                .map(|_| ())
        });
        handle
            .wait_until(|st| st.router.paused_connections == 1, DEADLINE)
            .expect("the sender is paused by the stuck receiver");
        sender.close();
        let filled = filling.join().unwrap();
        assert!(filled.is_err_and(|e| e.is_connection_fatal()));
    });
    // The sender is gone: its connection and its request must be freed now, not whenever the
    // stuck receiver drains or leaves.
    let freed = handle.wait_until(
        |st| st.router.connections == 1 && st.router.assignments == 0,
        request_timeout + DEADLINE,
    );
    let stats = handle.stats().unwrap();
    drop(stuck);
    assert!(
        freed.is_ok(),
        "the departed sender is still held: {stats:?}"
    );

    drop(sender);
    wait_idle(&handle);
}
