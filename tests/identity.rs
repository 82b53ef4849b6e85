//! Identity over real sockets (issue 10 item 11, PROTOCOL.md §5):
//! - a HELLO naming a present client id without its resume secret is refused with
//!   CLIENT_ID_IN_USE, and the member (and everyone else) is undisturbed;
//! - the client library's reconnect presents the secret of its WELCOME: a link cut under a
//!   connected client is resumed within the grace period, unseen by the other peers;
//! - request ids are scoped per sender: another channel's client reusing an id in flight gets
//!   its own request, not DUPLICATE_REQUEST, and both complete.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;
use switchyard_testkit::{
    broker::{config, start, start_with},
    client::{echo, fast_reconnect, Responder},
    gauges::wait_idle,
    raw::RawPeer,
    DEADLINE, QUIET,
};

use switchyard::client::{Client, ConnectionState, Error};
use switchyard::ids::{ChannelId, ClientId, RequestId};
use switchyard::protocol::{ErrorCode, FrameType};

#[test]
fn a_hello_naming_a_present_id_without_its_secret_is_refused_and_harms_no_one() {
    let handle = start();
    let addr = handle.local_addr();
    let channel = ChannelId::random();
    let mut victim = RawPeer::named(addr, "victim");
    victim.hello(channel, ClientId::random());
    // Another member learns the victim's id (and has its own secret).
    let mut member = RawPeer::named(addr, "member");
    let welcome = member.hello(channel, ClientId::random());
    assert_eq!(welcome.peers, vec![victim.client]);
    victim.expect_presence(FrameType::PeerJoined, member.client);
    for secret in [RequestId::NIL, member.resume, RequestId::random()] {
        let mut impostor = RawPeer::named(addr, "impostor");
        impostor.send_hello_resuming(channel, victim.client, secret);
        let body = impostor.expect_fatal(ErrorCode::ClientIdInUse);
        assert!(body.message.contains("resume secret"), "{:?}", body.message);
    }
    // Nobody saw anything: the victim is still the member, with its connection.
    victim.barrier();
    member.barrier();
    assert_eq!(handle.stats().unwrap().router.takeovers, 0);
    // Its own successor, with the secret, takes over as before.
    let mut successor = RawPeer::named(addr, "successor");
    successor.hello_resuming(channel, victim.client, victim.resume);
    assert_eq!(successor.resume, victim.resume);
    victim.expect_fatal(ErrorCode::Replaced);
    member.barrier();
    drop((member, successor));
    wait_idle(&handle);
}

/// A TCP relay in front of the broker whose connections the test can cut.
struct Relay {
    addr: SocketAddr,
    sockets: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn to(broker: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("relay listener");
        let addr = listener.local_addr().unwrap();
        let sockets = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&sockets);
        // Lives as long as the test process (blocked in accept): a test-only helper.
        thread::spawn(move || {
            for downstream in listener.incoming() {
                let Ok(downstream) = downstream else { return };
                let Ok(upstream) = TcpStream::connect(broker) else {
                    return;
                };
                let pairs = [
                    (
                        downstream.try_clone().unwrap(),
                        upstream.try_clone().unwrap(),
                    ),
                    (
                        upstream.try_clone().unwrap(),
                        downstream.try_clone().unwrap(),
                    ),
                ];
                for (mut from, mut to) in pairs {
                    thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        while let Ok(n @ 1..) = from.read(&mut buf) {
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
                kept.lock().unwrap().extend([downstream, upstream]);
            }
        });
        Relay { addr, sockets }
    }

    /// Cuts every relayed connection (both sides see it closed).
    fn cut(&self) {
        for socket in self.sockets.lock().unwrap().drain(..) {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}

#[test]
fn the_clients_reconnect_resumes_its_id_with_its_secret_unseen_by_its_peers() {
    let mut config = config();
    config.router.presence_grace = Duration::from_secs(2);
    let handle = start_with(config);
    let relay = Relay::to(handle.local_addr());
    let channel = ChannelId::random();
    let observer = Client::connect(handle.local_addr(), channel).expect("observer");
    let resumed = Client::connect_with(relay.addr, channel, fast_reconnect(None)).expect("client");
    let id = resumed.client_id();
    let responder = Responder::spawn(resumed, 1, echo);
    assert_eq!(
        observer.next_presence(Some(DEADLINE)).expect("join"),
        switchyard::client::PresenceEvent::Joined(id)
    );
    assert_eq!(observer.request(b"one", DEADLINE).expect("before"), b"one");
    // An impostor naming the id is refused; the client is undisturbed.
    let mut impostor = RawPeer::named(handle.local_addr(), "impostor");
    impostor.send_hello_resuming(channel, id, RequestId::NIL);
    impostor.expect_fatal(ErrorCode::ClientIdInUse);
    // The link is cut: the client reconnects, presenting its secret, within the grace period.
    relay.cut();
    loop {
        let change = responder
            .client()
            .next_state_change(Some(DEADLINE))
            .expect("a state change");
        assert_ne!(change.state, ConnectionState::Closed, "{change:?}");
        if change.state == ConnectionState::Connected {
            break;
        }
    }
    assert_eq!(responder.client().client_id(), id);
    // Its RECEIVE went out before the PONG: it serves again.
    responder
        .client()
        .ping(DEADLINE)
        .expect("ping on the new link");
    assert_eq!(observer.request(b"two", DEADLINE).expect("after"), b"two");
    // The other peers saw nothing: it never left.
    assert!(matches!(
        observer.next_presence(Some(QUIET)),
        Err(Error::WaitElapsed)
    ));
    responder.stop();
    observer.close();
    wait_idle(&handle);
}

#[test]
fn another_channels_client_reusing_a_request_id_in_flight_gets_its_own_request() {
    let handle = start();
    let addr = handle.local_addr();
    let pair = |name: &str| {
        let channel = ChannelId::random();
        let mut sender = RawPeer::named(addr, &format!("{name}-sender"));
        sender.hello(channel, ClientId::random());
        let mut receiver = RawPeer::named(addr, &format!("{name}-receiver"));
        receiver.hello(channel, ClientId::random());
        sender.expect_presence(FrameType::PeerJoined, receiver.client);
        receiver.receive(1);
        receiver.barrier();
        (sender, receiver)
    };
    let (mut a, mut ra) = pair("a");
    let (mut b, mut rb) = pair("b");
    let id = RequestId::random();
    a.request(id, 5_000, b"from a");
    let got_a = ra.recv();
    assert_eq!(
        (got_a.header.request_id, &got_a.payload[..]),
        (id, &b"from a"[..])
    );
    // The same id from another channel's client while a's is in flight: its own request.
    b.request(id, 5_000, b"from b");
    let got_b = rb.recv();
    assert_eq!(got_b.header.frame_type, FrameType::Start);
    assert_eq!(&got_b.payload[..], b"from b");
    b.barrier();
    // Both complete, each under its sender's id.
    rb.respond(got_b.header.request_id, b"to b");
    let answer = b.recv();
    assert_eq!(
        (answer.header.request_id, &answer.payload[..]),
        (id, &b"to b"[..])
    );
    ra.respond(id, b"to a");
    let answer = a.recv();
    assert_eq!(
        (answer.header.request_id, &answer.payload[..]),
        (id, &b"to a"[..])
    );
    // Reusing one's own id in flight is still DUPLICATE_REQUEST.
    a.request(id, 5_000, b"first");
    ra.recv();
    a.request(id, 5_000, b"again");
    a.expect_error(ErrorCode::DuplicateRequest, id);
    drop((a, ra, b, rb));
    wait_idle(&handle);
}
