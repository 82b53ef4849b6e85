//! Signals to a real broker process (issue 10 item 10, PROTOCOL.md §8.1):
//! - SIGTERM: a connection that has not said HELLO gets GOING_AWAY and is closed; a connection
//!   made during the drain gets GOING_AWAY and is closed (not left unanswered in the backlog and
//!   reset at exit); what is in flight finishes; the process exits 0.
//! - SIGHUP never stops the broker: with `--config` it reloads the access tokens (and the
//!   admission limits) from the file; without, it is logged and ignored.

use std::time::Duration;
use switchyard_testkit::{process::BrokerProcess, raw::RawPeer, DEADLINE};

use switchyard::ids::{ChannelId, ClientId, RequestId};
use switchyard::protocol::{ErrorCode, FrameType};

/// The broker's log line once its signal handlers are installed (before it, a signal would
/// take its default action).
const SIGNALS_READY: &str = "signals: SIGINT/SIGTERM drain";

#[test]
fn sigterm_tells_handshake_less_and_late_connections_going_away() {
    let mut broker = BrokerProcess::start(&["--drain-deadline-ms", "10000"], None);
    broker.wait_line(SIGNALS_READY, DEADLINE);
    let addr = broker.addr;
    // A connection without a handshake (its PING answered: it is accepted and registered).
    let mut silent = RawPeer::named(addr, "no-hello");
    silent.ping(1);
    assert_eq!(silent.recv().header.frame_type, FrameType::Pong);
    // A request in flight keeps the broker draining.
    let channel = ChannelId::random();
    let mut receiver = RawPeer::named(addr, "receiver");
    receiver.hello(channel, ClientId::random());
    let mut sender = RawPeer::named(addr, "sender");
    sender.hello(channel, ClientId::random());
    receiver.expect_presence(FrameType::PeerJoined, sender.client);
    receiver.receive(1);
    receiver.barrier();
    let id = RequestId::random();
    sender.request(id, 30_000, b"in flight");
    receiver.expect(FrameType::Start, switchyard::protocol::Flags::REQUEST, id);

    broker.signal(libc::SIGTERM);
    silent.expect_fatal(ErrorCode::GoingAway);
    sender.expect_error(ErrorCode::GoingAway, RequestId::NIL);
    receiver.expect_error(ErrorCode::GoingAway, RequestId::NIL);
    // A connection made during the drain: told, and closed.
    broker.wait_line("shutting down", DEADLINE);
    let mut late = RawPeer::named(addr, "late");
    let body = late.expect_fatal(ErrorCode::GoingAway);
    assert!(body.message.contains("shutting down"), "{:?}", body.message);
    // What was in flight finishes; then the broker exits cleanly.
    receiver.respond(id, b"done");
    let answer = sender.recv();
    assert_eq!(
        (answer.header.request_id, &answer.payload[..]),
        (id, &b"done"[..])
    );
    closed_after_presence(&mut sender);
    closed_after_presence(&mut receiver);
    let status = broker.wait_exit(DEADLINE);
    assert!(status.success(), "{status:?}");
}

#[test]
fn sighup_reloads_the_tokens_from_the_config_file_and_never_stops_the_broker() {
    let dir = std::env::temp_dir().join(format!("switchyard-sighup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("broker.toml");
    std::fs::write(&file, "auth_token = \"old-token\"\n").unwrap();
    let mut broker = BrokerProcess::start(&["--config", file.to_str().unwrap()], None);
    broker.wait_line(SIGNALS_READY, DEADLINE);
    let addr = broker.addr;
    let channel = ChannelId::random();
    let hello = |token: &str, name: &str| {
        let mut peer = RawPeer::named(addr, name);
        let header = switchyard::protocol::Header {
            channel_id: channel,
            client_id: ClientId::random(),
            ..switchyard::protocol::Header::new(FrameType::Hello)
        };
        peer.send(header, token.as_bytes());
        // For the frames it sends after its WELCOME.
        peer.channel = channel;
        peer
    };
    let mut member = hello("old-token", "member");
    assert_eq!(member.recv().header.frame_type, FrameType::Welcome);

    std::fs::write(&file, "auth_token = \"new-token\"\n").unwrap();
    broker.signal(libc::SIGHUP);
    broker.wait_line("SIGHUP: reloaded", DEADLINE);
    assert!(broker.is_running());
    // New HELLOs need the new token; the connected member stays.
    hello("old-token", "old").expect_fatal(ErrorCode::Unauthorized);
    let mut fresh = hello("new-token", "new");
    assert_eq!(fresh.recv().header.frame_type, FrameType::Welcome);
    member.ping(5);
    loop {
        let frame = member.recv();
        if frame.header.frame_type == FrameType::Pong {
            break;
        }
    }
    // A file that no longer validates keeps the tokens in force.
    std::fs::write(&file, "max_connections = 0\n").unwrap();
    broker.signal(libc::SIGHUP);
    broker.wait_line("SIGHUP: configuration not reloaded", DEADLINE);
    let mut again = hello("new-token", "again");
    assert_eq!(again.recv().header.frame_type, FrameType::Welcome);
    assert!(broker.is_running());
    drop((member, fresh, again));
    broker.signal(libc::SIGTERM);
    assert!(broker.wait_exit(DEADLINE).success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sighup_without_a_config_file_is_logged_and_ignored() {
    let mut broker = BrokerProcess::start(&[], None);
    broker.wait_line(SIGNALS_READY, DEADLINE);
    broker.signal(libc::SIGHUP);
    broker.wait_line("SIGHUP: nothing to reload", DEADLINE);
    let mut peer = RawPeer::named(broker.addr, "after-sighup");
    peer.hello(ChannelId::random(), ClientId::random());
    assert!(broker.is_running());
    drop(peer);
    broker.signal(libc::SIGTERM);
    assert!(broker.wait_exit(Duration::from_secs(10)).success());
}

/// The broker closes `peer`'s connection; presence frames may come first.
#[track_caller]
fn closed_after_presence(peer: &mut RawPeer) {
    loop {
        match peer.try_recv() {
            Ok(frame) if frame.header.frame_type == FrameType::PeerLeft => continue,
            Ok(frame) => panic!("{}: expected the close, got {:?}", peer.name, frame.header),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("{}: the broker did not close the connection", peer.name)
            }
            Err(_) => return,
        }
    }
}
