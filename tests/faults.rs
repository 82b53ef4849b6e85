//! Fault injection over real processes (issue 5, item 6). The faulty peer is a separate process
//! wherever the fault is a process-level one (SIGKILL, a process that stops reading): this test
//! binary re-executes itself (`current_exe() --exact faulty_peer --ignored`) with the role in the
//! environment, and the child reports each step on its stdout ("FAULTS: <step>") for the parent
//! to wait on. The broker runs in-process (its state counts are awaited directly); the broker's
//! own death (SIGKILL of the real binary) is `tests/broker_restart.rs`. Every test ends with
//! explicit assertions of the codes received and every broker count back to zero.
//!
//! | fault | expected behaviour (PROTOCOL.md) | test |
//! |---|---|---|
//! | receiver SIGKILLed mid-response | the sender gets the chunks sent before, byte-exact, then ERROR PEER_GONE (§6); then PEER_LEFT | `a_receiver_killed_mid_stream_leaves_its_sender_the_chunks_then_peer_gone` |
//! | receiver SIGKILLed holding a request it has not answered | the client's `request` fails with `Error::PeerGone` | `a_receiver_killed_while_holding_a_request_fails_it_with_peer_gone` |
//! | sender resets its connection (SO_LINGER 0, RST) mid-request | its receiver gets CANCEL (REQUEST) (§6.3 sender disconnects); its late response frames get UNKNOWN_REQUEST; a bystander pair is served | `a_sender_that_resets_mid_request_cancels_its_receiver` |
//! | sender SIGKILLed mid-request (the kernel closes its socket) | as above | `a_sender_killed_mid_request_cancels_its_receiver` |
//! | sender process that stops reading while its receiver streams a big response | its queue stops at the high watermark, the receiver is paused (§9), a bystander pair on the channel is served; killed: the receiver gets CANCEL, its late frames UNKNOWN_REQUEST, everything is freed | `a_sender_process_that_stops_reading_pauses_its_receiver_until_it_is_killed` |
//! | broadcast peer process that stops reading | dropped from the broadcast once over the high watermark, named in BROADCAST_INCOMPLETE (§7); the others get their copy; memory bounded; killed: freed | `a_broadcast_peer_process_that_stops_reading_is_dropped_and_named` |
//!
//! The in-process variants of some of these are elsewhere: a stalled *receiver* pausing its
//! sender (`tests/backpressure.rs`), a never-reading broadcast peer on a raw socket
//! (`tests/broadcast.rs`, `a_stuck_peer_does_not_delay_the_others`), a graceful broker restart
//! (`tests/reconnect.rs`), a client that never reads its answers (`tests/resource_exhaustion.rs`).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;
use switchyard_testkit::{
    broker::{config, start, start_with},
    gauges::{wait_for, wait_idle},
    raw::{self, RawPeer},
    sockets, SetOnDrop, DEADLINE,
};

use switchyard::client::{Client, Error};
use switchyard::ids::{ChannelId, ClientId, RequestId};
use switchyard::protocol::{ErrorCode, Flags, Frame, FrameType, Header, HEADER_LEN};
use switchyard::server::ServerConfig;

// ----- the faulty peer, in its own process -------------------------------------------------

const ROLE: &str = "SWITCHYARD_FAULTS_ROLE";
const ADDR: &str = "SWITCHYARD_FAULTS_ADDR";
const CHANNEL: &str = "SWITCHYARD_FAULTS_CHANNEL";
const CLIENT: &str = "SWITCHYARD_FAULTS_CLIENT";
const REQUEST: &str = "SWITCHYARD_FAULTS_REQUEST";

/// The marker of the child's progress lines.
const MARK: &str = "FAULTS: ";

/// Body of part `n` of a stream (a response or request body), distinct per part and position.
fn part(n: usize) -> Vec<u8> {
    (0..4096 + 7 * n).map(|i| (i * 31 + n * 7) as u8).collect()
}

/// A barrier that skips presence frames: PING, and frames until its PONG.
fn barrier(peer: &mut RawPeer, sequence: u32) {
    peer.ping(sequence);
    loop {
        let frame = peer.recv();
        match frame.header.frame_type {
            FrameType::Pong if frame.header.sequence == sequence => return,
            FrameType::PeerJoined | FrameType::PeerLeft => continue,
            _ => panic!(
                "{}: expected PONG, got {}",
                peer.name,
                raw::describe(&frame)
            ),
        }
    }
}

/// The next frame that is not PEER_JOINED / PEER_LEFT.
fn next_non_presence(peer: &mut RawPeer) -> Frame {
    loop {
        let frame = peer.recv();
        if !matches!(
            frame.header.frame_type,
            FrameType::PeerJoined | FrameType::PeerLeft
        ) {
            return frame;
        }
    }
}

/// The child's side: runs the role named in the environment; does nothing when run as an
/// ordinary (ignored) test.
#[test]
#[ignore = "the faulty peer of the other tests, run in a child process"]
fn faulty_peer() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
    let addr: SocketAddr = var(ADDR).parse().unwrap();
    let channel = ChannelId(var(CHANNEL).parse().unwrap());
    let client = ClientId(var(CLIENT).parse().unwrap());
    let report = |step: &str| {
        println!("{MARK}{step}");
        io::stdout().flush().unwrap();
    };
    let mut peer = RawPeer::named(addr, &role);
    // Blocked reads (never reached in a passing test) must not end the role early.
    peer.set_deadline(Duration::from_secs(60));
    peer.hello(channel, client);
    match role.as_str() {
        "receiver-streaming" | "receiver-holding" => {
            peer.receive(1);
            barrier(&mut peer, 1);
            report("ready");
            let start = peer.recv_kind(FrameType::Start, true);
            let id = start.header.request_id;
            if role == "receiver-streaming" {
                peer.send_stream(FrameType::Start, Flags::RESPONSE, id, 0, false, &part(0));
                peer.send_stream(FrameType::Chunk, Flags::RESPONSE, id, 1, false, &part(1));
                peer.send_stream(FrameType::Chunk, Flags::RESPONSE, id, 2, false, &part(2));
                // The broker handles a connection's frames in order: once the PONG is here,
                // the chunks are queued to the sender.
                barrier(&mut peer, 2);
                report("streaming");
            } else {
                report("holding");
            }
        }
        "sender-midrequest" => {
            let id = RequestId(var(REQUEST).parse().unwrap());
            peer.send_stream(FrameType::Start, Flags::REQUEST, id, 0, false, &part(0));
            peer.send_stream(FrameType::Chunk, Flags::REQUEST, id, 1, false, &part(1));
            barrier(&mut peer, 1);
            report("sent");
        }
        "sender-nonreader" => {
            let id = RequestId(var(REQUEST).parse().unwrap());
            peer.request(id, 60_000, b"send me everything");
            barrier(&mut peer, 1);
            report("asked");
        }
        "broadcast-nonreader" => {
            barrier(&mut peer, 1);
            report("joined");
        }
        other => panic!("unknown role {other}"),
    }
    // Never read the socket again; wait for the parent's SIGKILL. Should the parent die first,
    // stdin reaches EOF and the child exits instead of lingering.
    let _ = io::stdin().read_to_end(&mut Vec::new());
}

/// A faulty peer process. Dropping it kills (SIGKILL) and reaps it.
struct FaultyPeer {
    child: Option<Child>,
    /// Held open so the child blocks on it (see `faulty_peer`).
    _stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    role: String,
}

impl FaultyPeer {
    fn spawn(
        role: &str,
        addr: SocketAddr,
        channel: ChannelId,
        client: ClientId,
        request: Option<RequestId>,
    ) -> FaultyPeer {
        let mut command = Command::new(std::env::current_exe().expect("the test binary"));
        command
            .args(["--exact", "faulty_peer", "--ignored", "--nocapture"])
            .args(["--test-threads", "1"])
            .env(ROLE, role)
            .env(ADDR, addr.to_string())
            .env(CHANNEL, channel.to_string())
            .env(CLIENT, client.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(id) = request {
            command.env(REQUEST, id.to_string());
        }
        let mut child = command.spawn().expect("starting the faulty peer");
        let stdin = child.stdin.take().expect("its stdin");
        let stdout = child.stdout.take().expect("its stdout");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // libtest may print "test faulty_peer ... " on the same line first.
                if let Some((_, step)) = line.split_once(MARK) {
                    let _ = tx.send(step.to_string());
                }
            }
        });
        FaultyPeer {
            child: Some(child),
            _stdin: stdin,
            lines,
            role: role.to_string(),
        }
    }

    /// Waits for the child to report `step`.
    #[track_caller]
    fn wait_for(&self, step: &str) {
        match self.lines.recv_timeout(DEADLINE * 2) {
            Ok(line) if line == step => {}
            other => panic!("{}: expected step {step:?}, got {other:?}", self.role),
        }
    }

    /// SIGKILL, then reap; checks that it was the signal that ended it.
    fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // std's Child::kill is SIGKILL on Unix; the child is our own and not yet reaped.
        child.kill().expect("SIGKILL to the faulty peer");
        let status = child.wait().expect("reaping the faulty peer");
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "{}: {status:?}",
            self.role
        );
    }
}

impl Drop for FaultyPeer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ----- receivers that die ------------------------------------------------------------------

#[test]
fn a_receiver_killed_mid_stream_leaves_its_sender_the_chunks_then_peer_gone() {
    let handle = start();
    let addr = handle.local_addr();
    let channel = ChannelId::random();
    let receiver_id = ClientId::random();
    let mut receiver = FaultyPeer::spawn("receiver-streaming", addr, channel, receiver_id, None);
    receiver.wait_for("ready");
    let mut sender = RawPeer::named(addr, "sender");
    sender.hello(channel, ClientId::random());
    let id = RequestId::random();
    sender.request(id, 10_000, b"tell me a long story");
    receiver.wait_for("streaming");
    receiver.kill();

    // What the receiver sent before it died arrives whole, in order, byte for byte...
    for (seq, kind) in [FrameType::Start, FrameType::Chunk, FrameType::Chunk]
        .into_iter()
        .enumerate()
    {
        let frame = sender.expect(kind, Flags::RESPONSE, id);
        assert_eq!(frame.header.sequence, seq as u32);
        assert!(!frame.header.is_final);
        assert_eq!(frame.header.client_id, receiver_id);
        assert!(frame.payload[..] == part(seq)[..], "part {seq} differs");
    }
    // ...then the documented end of the request, then the departure.
    sender.expect_error(ErrorCode::PeerGone, id);
    sender.expect_presence(FrameType::PeerLeft, receiver_id);
    sender.barrier();
    drop(sender);
    wait_idle(&handle);
}

#[test]
fn a_receiver_killed_while_holding_a_request_fails_it_with_peer_gone() {
    let handle = start();
    let addr = handle.local_addr();
    let channel = ChannelId::random();
    let mut receiver =
        FaultyPeer::spawn("receiver-holding", addr, channel, ClientId::random(), None);
    receiver.wait_for("ready");
    let sender = Client::connect(addr, channel).expect("the sender");
    thread::scope(|s| {
        let asking = s.spawn(|| sender.request(b"are you there?", Duration::from_secs(10)));
        receiver.wait_for("holding");
        receiver.kill();
        match asking.join().unwrap() {
            Err(Error::PeerGone) => {}
            other => panic!("expected PeerGone, got {other:?}"),
        }
    });
    // The client stays usable.
    assert!(!sender.is_closed());
    sender
        .ping(DEADLINE)
        .expect("the sender is still connected");
    sender.close();
    wait_idle(&handle);
}

// ----- senders that die --------------------------------------------------------------------

/// A receiver with a window of one on `channel`, handshaken and known to the broker.
fn receiver(addr: SocketAddr, channel: ChannelId, name: &str) -> RawPeer {
    let mut peer = RawPeer::named(addr, name);
    peer.hello(channel, ClientId::random());
    peer.receive(1);
    barrier(&mut peer, 1);
    peer
}

/// The receiver has the START and first CHUNK of `id` (parts 0 and 1) from `sender`.
#[track_caller]
fn expect_request_head(receiver: &mut RawPeer, id: RequestId, sender: ClientId) {
    for (seq, kind) in [FrameType::Start, FrameType::Chunk].into_iter().enumerate() {
        let frame = next_non_presence(receiver);
        let h = &frame.header;
        assert_eq!(
            (h.frame_type, h.flags, h.request_id, h.sequence, h.client_id),
            (kind, Flags::REQUEST, id, seq as u32, sender),
            "{}",
            raw::describe(&frame)
        );
        assert!(
            frame.payload[..] == part(seq)[..],
            "request part {seq} differs"
        );
    }
}

/// The receiver gets CANCEL (REQUEST, FINAL, naming the sender) for `id`; a response frame it
/// sends afterwards is answered with UNKNOWN_REQUEST (PROTOCOL.md §6: frames for a finished
/// request).
#[track_caller]
fn expect_cancelled(receiver: &mut RawPeer, id: RequestId, sender: ClientId) {
    let cancel = next_non_presence(receiver);
    let h = &cancel.header;
    assert_eq!(
        (h.frame_type, h.flags, h.request_id, h.client_id, h.is_final),
        (FrameType::Cancel, Flags::REQUEST, id, sender, true),
        "{}",
        raw::describe(&cancel)
    );
    receiver.send_stream(FrameType::Chunk, Flags::RESPONSE, id, 1, false, b"late");
    let late = next_non_presence(receiver);
    assert_eq!(
        late.header.frame_type,
        FrameType::Error,
        "{}",
        raw::describe(&late)
    );
    let body = switchyard::protocol::ErrorBody::decode(&late.payload).unwrap();
    assert_eq!(body.known_code(), Some(ErrorCode::UnknownRequest));
    assert_eq!(late.header.request_id, id);
}

/// A request/reply between two bystanders of the channel: they are served as usual.
#[track_caller]
fn bystander_round_trip(asker: &mut RawPeer, answerer: &mut RawPeer) {
    let id = RequestId::random();
    asker.request(id, 5_000, b"still there?");
    let start = next_non_presence(answerer);
    assert_eq!(
        (start.header.frame_type, start.header.request_id),
        (FrameType::Start, id),
        "{}",
        raw::describe(&start)
    );
    answerer.respond(id, b"yes");
    let reply = next_non_presence(asker);
    assert_eq!(
        (
            reply.header.frame_type,
            reply.header.flags,
            reply.header.request_id
        ),
        (FrameType::Start, Flags::RESPONSE, id),
        "{}",
        raw::describe(&reply)
    );
    assert_eq!(&reply.payload[..], b"yes");
}

#[test]
fn a_sender_that_resets_mid_request_cancels_its_receiver() {
    let handle = start();
    let addr = handle.local_addr();
    let channel = ChannelId::random();
    let mut streaming = receiver(addr, channel, "receiver");
    let mut sender = RawPeer::named(addr, "resetting-sender");
    sender.hello(channel, ClientId::random());
    let sender_id = sender.client;
    let id = RequestId::random();
    sender.send_stream(FrameType::Start, Flags::REQUEST, id, 0, false, &part(0));
    sender.send_stream(FrameType::Chunk, Flags::REQUEST, id, 1, false, &part(1));
    expect_request_head(&mut streaming, id, sender_id);
    // The receiver has begun its response too.
    streaming.send_stream(FrameType::Start, Flags::RESPONSE, id, 0, false, b"working");
    sender.expect(FrameType::Start, Flags::RESPONSE, id);
    // Bystanders on the same channel (the busy receiver has no free slot: they pair up).
    let mut answerer = receiver(addr, channel, "bystander-receiver");
    let mut asker = RawPeer::named(addr, "bystander-sender");
    asker.hello(channel, ClientId::random());

    let closed_before = handle.stats().unwrap().closed;
    sockets::reset_on_close(sender.stream());
    drop(sender);
    expect_cancelled(&mut streaming, id, sender_id);
    let stats = wait_for(&handle, "the reset connection is closed", move |st| {
        st.closed == closed_before + 1 && st.router.assignments == 0
    });
    assert_eq!(stats.sockets, 3);
    bystander_round_trip(&mut asker, &mut answerer);
    barrier(&mut streaming, 2);
    drop((streaming, answerer, asker));
    wait_idle(&handle);
}

#[test]
fn a_sender_killed_mid_request_cancels_its_receiver() {
    let handle = start();
    let addr = handle.local_addr();
    let channel = ChannelId::random();
    let mut streaming = receiver(addr, channel, "receiver");
    let sender_id = ClientId::random();
    let id = RequestId::random();
    let mut sender = FaultyPeer::spawn("sender-midrequest", addr, channel, sender_id, Some(id));
    sender.wait_for("sent");
    expect_request_head(&mut streaming, id, sender_id);
    sender.kill();
    expect_cancelled(&mut streaming, id, sender_id);
    barrier(&mut streaming, 2);
    drop(streaming);
    wait_idle(&handle);
}

// ----- peers that stop reading -------------------------------------------------------------

#[test]
fn a_sender_process_that_stops_reading_pauses_its_receiver_until_it_is_killed() {
    const FRAME: usize = 64 << 10;
    let mut config: ServerConfig = config();
    config.router.max_payload = FRAME as u32;
    config.router.high_watermark = 1 << 20;
    config.router.low_watermark = 256 << 10;
    // The silent sender's queue: the high watermark plus the frame that crossed it; the paused
    // receiver's read buffer: a partial frame plus one read budget; a little for control frames.
    let frame = HEADER_LEN + FRAME;
    let bound = (config.router.high_watermark + frame) + (frame + config.read_budget) + 16_384;
    let handle = start_with(config);
    let addr = handle.local_addr();
    let channel = ChannelId::random();
    let mut streaming = receiver(addr, channel, "streaming-receiver");
    let sender_id = ClientId::random();
    let id = RequestId::random();
    let mut silent = FaultyPeer::spawn("sender-nonreader", addr, channel, sender_id, Some(id));
    silent.wait_for("asked");
    let start = next_non_presence(&mut streaming);
    assert_eq!(
        (start.header.frame_type, start.header.request_id),
        (FrameType::Start, id)
    );
    let mut answerer = receiver(addr, channel, "bystander-receiver");
    let mut asker = RawPeer::named(addr, "bystander-sender");
    asker.hello(channel, ClientId::random());

    let stop = AtomicBool::new(false);
    let mut socket = streaming.try_clone_stream();
    let template = Header {
        flags: Flags::RESPONSE,
        request_id: id,
        channel_id: channel,
        payload_len: FRAME as u32,
        ..Header::new(FrameType::Start)
    };
    thread::scope(|s| {
        // The receiver streams a response far larger than anything the broker may hold.
        let stop = &stop;
        // The thread owns its handle of the socket: it is closed when the thread ends.
        let writer = s.spawn(move || {
            let body = vec![0x5a; FRAME];
            let mut seq = 0u32;
            while !stop.load(Ordering::Relaxed) && seq < 4096 {
                let header = Header {
                    frame_type: if seq == 0 {
                        FrameType::Start
                    } else {
                        FrameType::Chunk
                    },
                    sequence: seq,
                    ..template
                };
                if socket.write_all(&header.encode()).is_err() || socket.write_all(&body).is_err() {
                    break;
                }
                seq += 1;
            }
            seq
        });
        let _stop_writer = SetOnDrop(stop);
        let paused = wait_for(&handle, "the streaming receiver is paused", |st| {
            st.router.paused_connections == 1
        });
        assert!(
            paused.buffered_bytes() <= bound,
            "{paused:?}, bound {bound}"
        );
        // A pair of bystanders on the same channel is served while it is.
        bystander_round_trip(&mut asker, &mut answerer);
        let still = handle.stats().unwrap();
        assert_eq!(still.router.paused_connections, 1, "{still:?}");
        assert!(still.buffered_bytes() <= bound, "{still:?}, bound {bound}");
        assert!(!writer.is_finished(), "the receiver was never blocked");

        // The silent sender dies: its request ends with CANCEL to the receiver, which is read
        // again; the rest of its response is answered UNKNOWN_REQUEST, frame by frame.
        silent.kill();
        let cancel = next_non_presence(&mut streaming);
        assert_eq!(
            (
                cancel.header.frame_type,
                cancel.header.flags,
                cancel.header.request_id
            ),
            (FrameType::Cancel, Flags::REQUEST, id),
            "{}",
            raw::describe(&cancel)
        );
        stop.store(true, Ordering::Relaxed);
        let frames = writer.join().unwrap();
        println!("the receiver wrote {frames} frames of {FRAME} bytes before it was stopped");
        streaming.ping(99);
        loop {
            let frame = streaming.recv();
            match frame.header.frame_type {
                FrameType::Pong if frame.header.sequence == 99 => break,
                FrameType::PeerLeft => assert_eq!(frame.header.client_id, sender_id),
                FrameType::Error => {
                    let body = switchyard::protocol::ErrorBody::decode(&frame.payload).unwrap();
                    assert_eq!(body.known_code(), Some(ErrorCode::UnknownRequest));
                    assert_eq!(frame.header.request_id, id);
                }
                _ => panic!("unexpected {}", raw::describe(&frame)),
            }
        }
    });
    let after = handle.stats().unwrap();
    assert_eq!(
        (after.router.paused_connections, after.router.assignments),
        (0, 0),
        "{after:?}"
    );
    drop((streaming, answerer, asker));
    wait_idle(&handle);
}

#[test]
fn a_broadcast_peer_process_that_stops_reading_is_dropped_and_named() {
    const HIGH_WATERMARK: usize = 1 << 20;
    let mut config: ServerConfig = config();
    config.router.max_payload = 16 << 10;
    config.router.high_watermark = HIGH_WATERMARK;
    config.router.low_watermark = 256 << 10;
    let frame = HEADER_LEN + (16 << 10);
    let handle = start_with(config);
    let addr = handle.local_addr();
    let channel = ChannelId::random();
    let stuck_id = ClientId::random();
    let mut stuck = FaultyPeer::spawn("broadcast-nonreader", addr, channel, stuck_id, None);
    stuck.wait_for("joined");
    let sender = Client::connect(addr, channel).expect("the sender");
    // First a broadcast to the stuck peer alone, far larger than what the kernel's socket
    // buffers of a peer that never reads absorb (a few MiB) plus the watermark: its queue passes
    // the watermark and it is dropped from the broadcast. (With a healthy peer in the same
    // broadcast, a body this large would also outrun a healthy reader in a debug build; see
    // `tests/broadcast.rs`.)
    let flood: Vec<u8> = (0..16usize << 20).map(|i| (i % 251) as u8).collect();
    match sender.broadcast(&flood, Duration::from_secs(10)) {
        Err(Error::BroadcastIncomplete { missing }) => assert_eq!(missing, vec![stuck_id]),
        other => panic!("expected BROADCAST_INCOMPLETE naming the stuck peer, got {other:?}"),
    }
    // Then healthy peers join: the stuck peer, still over the watermark, is dropped at once
    // and named; the others get their copy without waiting for it.
    let healthy: Vec<Client> = (0..2)
        .map(|_| Client::connect(addr, channel).expect("a healthy peer"))
        .collect();
    let body: Vec<u8> = (0..256usize << 10).map(|i| (i % 239) as u8).collect();
    thread::scope(|s| {
        let taking: Vec<_> = healthy
            .iter()
            .map(|peer| s.spawn(move || peer.next_broadcast(Some(Duration::from_secs(10)))))
            .collect();
        match sender.broadcast(&body, Duration::from_secs(10)) {
            Err(Error::BroadcastIncomplete { missing }) => assert_eq!(missing, vec![stuck_id]),
            other => panic!("expected BROADCAST_INCOMPLETE naming the stuck peer, got {other:?}"),
        }
        for taking in taking {
            let copy = taking.join().unwrap().expect("a healthy peer's copy");
            assert!(copy.body == body, "a healthy peer's copy differs");
        }
    });
    // What the broker holds for the stuck peer: its queue up to the watermark, plus the frame
    // that crossed it and the CANCEL that ended its part.
    let stats = handle.stats().unwrap();
    assert_eq!(stats.router.broadcasts, 0);
    assert!(
        stats.router.buffered_bytes <= HIGH_WATERMARK + frame + 1024,
        "{stats:?}"
    );
    stuck.kill();
    sender.close();
    for peer in healthy {
        peer.close();
    }
    wait_idle(&handle);
}
