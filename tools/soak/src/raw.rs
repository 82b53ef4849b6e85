//! Raw-protocol clients, all driven by one mio loop: senders and receivers that speak
//! PROTOCOL.md frame by frame, so that what the client library would hide is visible — a second
//! answer to a request, a frame after a request ended, a request assigned twice or beyond the
//! receive window.
//!
//! Per channel: one stable receiver (there from start to end, so a normal request always finds
//! one), `raw_receivers` churned receivers and `raw_senders` churned senders. A churned client
//! lives a random lifetime and then leaves one of several ways, chosen by the seeded schedule:
//! - receiver: gracefully (RECEIVE(0), finish what it holds, FIN, read to EOF), or reset
//!   (SO_LINGER 0 then close: an RST, with whatever it held abandoned);
//! - sender: gracefully (finish, FIN, EOF), or vanish: RST in the middle of streaming a request
//!   body, FIN in the middle of a body, or RST while its requests await their answers.
//!
//! A leaving client is replaced after a short pause, so clients connect and disconnect all the
//! time. Every frame is checked as it arrives (see the checks in each handler); every request a
//! sender issues ends with exactly one outcome, or is reported unanswered at its deadline
//! (timeout + grace).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use switchyard::ids::{ChannelId, ClientId, RequestId};
use switchyard::protocol::{
    decode_u32, encode_u32, Decoder, ErrorBody, ErrorCode, Flags, Frame, FrameType, Header,
    WelcomeBody, MAX_PAYLOAD_CEILING,
};

use switchyard_testkit::sockets;

use crate::body::{self, Behavior, Head, Verifier};
use crate::ledger::{hex, Departure, Ledger, CLOSING, DRAINING, RUNNING};
use crate::{code_name, now, Load};

const WAKER: Token = Token(0);

/// How long the driver waits at most between two looks at the phase.
const TICK: Duration = Duration::from_millis(50);

/// Runs the raw clients of one round until the round closes and every connection is gone.
/// Reports `"raw"` on `senders_done` once, in the draining phase, when its last sender left.
pub fn run(
    load: Arc<Load>,
    ledger: Arc<Ledger>,
    seed: u64,
    poll: Poll,
    senders_done: std::sync::mpsc::Sender<&'static str>,
) {
    let mut driver = Driver {
        rng: StdRng::seed_from_u64(seed),
        poll,
        conns: HashMap::new(),
        next_token: 1,
        timers: BinaryHeap::new(),
        timer_seq: 0,
        scratch: vec![0; 64 * 1024],
        senders_live: vec![0; load.channels.len()],
        senders_done: Some(senders_done),
        responses: 0,
        sabotaged: false,
        last_answer: None,
        load,
        ledger,
    };
    driver.start();
    driver.run();
}

/// A waker for [`run`]'s poll, so the round can interrupt its wait when the phase changes.
pub fn waker(poll: &Poll) -> io::Result<Waker> {
    Waker::new(poll.registry(), WAKER)
}

struct Driver {
    load: Arc<Load>,
    ledger: Arc<Ledger>,
    rng: StdRng,
    poll: Poll,
    conns: HashMap<usize, Conn>,
    next_token: usize,
    timers: BinaryHeap<Reverse<Timer>>,
    timer_seq: u64,
    scratch: Vec<u8>,
    senders_live: Vec<usize>,
    senders_done: Option<std::sync::mpsc::Sender<&'static str>>,
    /// Responses written: `--sabotage` strikes after the 50th.
    responses: u64,
    sabotaged: bool,
    /// The last request answered (what a swapped answer is built from).
    last_answer: Option<(Head, u64)>,
}

/// `--sabotage`: the harness itself misbehaves once per round, to show the checks catch it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Sabotage {
    /// A receiver answers a request with the response to the previous one.
    Swap,
    /// A receiver flips one byte of a response.
    Corrupt,
    /// A receiver silently drops a request it should answer.
    Silence,
    /// (`--tls`) A plain-TCP peer on the TLS listener: the broker counts a TLS connection the
    /// soak's clients did not make, and a handshake failure (done in main.rs, not here).
    TlsHandshake,
}

/// `--sabotage` strikes the first response after this many that a stable receiver owes a
/// library sender: neither ever leaves early, so no injected fault can explain the outcome away.
const SABOTAGED_RESPONSE: u64 = 50;

#[derive(PartialEq, Eq, PartialOrd, Ord, Debug)]
struct Timer {
    at: Instant,
    seq: u64,
    what: TimerKind,
}

#[derive(PartialEq, Eq, PartialOrd, Ord, Debug, Clone, Copy)]
enum TimerKind {
    SpawnSender(usize),
    SpawnReceiver(usize),
    NextOp(usize),
    Leave(usize),
    Respond(usize, [u8; 16]),
    Deadline(usize, [u8; 16]),
}

struct Conn {
    stream: TcpStream,
    channel: usize,
    channel_id: ChannelId,
    client: ClientId,
    /// Its departure is recorded already.
    departed: bool,
    joined: bool,
    decoder: Decoder,
    inbuf: BytesMut,
    out: VecDeque<Bytes>,
    out_pos: usize,
    /// We sent FIN and wait for the broker's EOF.
    fin_sent: bool,
    /// FIN once the outbound queue is empty.
    fin_when_flushed: bool,
    /// Broadcasts being received: id → checker.
    bcast_in: HashMap<[u8; 16], (u32, Verifier)>,
    /// Broadcasts received in full or cancelled (a second START for one is a violation).
    bcast_seen: HashSet<[u8; 16]>,
    role: Role,
}

enum Role {
    Sender(SenderState),
    Receiver(ReceiverState),
}

#[derive(Default)]
struct SenderState {
    in_flight: HashMap<[u8; 16], Out>,
    /// Requests that ended: whether an UNKNOWN_REQUEST for it is expected (the broker ended it
    /// while some of its frames may still have been on their way).
    ended: HashMap<[u8; 16], bool>,
    /// Requests in flight when the sender half-closed mid-body: answers for them may still
    /// arrive until the broker sees the FIN, and are not judged.
    vanished: HashSet<[u8; 16]>,
    /// The sender is leaving: no new operation.
    leaving: bool,
    op_scheduled: bool,
    broadcasting: bool,
}

struct Out {
    head: Head,
    /// Hash of the request body (what the response must carry).
    hash: u64,
    frames: u32,
    timeout_ms: u32,
    sent: Instant,
    broadcast: bool,
    response: Option<ResponseIn>,
}

struct ResponseIn {
    responder: ClientId,
    next_seq: u32,
    verifier: Verifier,
}

struct ReceiverState {
    window: u32,
    stable: bool,
    held: HashMap<[u8; 16], Held>,
    /// Requests this receiver saw end: `true` when the broker cancelled it (so a late response
    /// of ours may draw UNKNOWN_REQUEST).
    ended: HashMap<[u8; 16], bool>,
    /// Requests received whole whose response is scheduled, by id: the head and hash the
    /// response derives from (kept when the broker cancels one, to send the late answer).
    answers: HashMap<[u8; 16], (Head, u64)>,
    /// Responses scheduled and not yet written.
    scheduled: usize,
    leaving: bool,
    /// Leaving: the PONG that proves the broker processed RECEIVE(0) has not arrived yet.
    barrier: bool,
    /// Reset at the next broadcast START, before acking it (or at the next Leave timer).
    reset_at_broadcast: bool,
}

/// The sequence number of the PING that follows a leaving receiver's RECEIVE(0).
const BARRIER_PING: u32 = 0x7fff_fff0;

struct Held {
    sender: ClientId,
    next_seq: u32,
    verifier: Verifier,
    timeout_ms: u32,
    arrived: Instant,
}

/// How a churned client ends.
#[derive(Clone, Copy, Debug)]
enum Fate {
    Graceful,
    Reset,
    /// Sender: RST in the middle of a request body.
    ResetMidBody,
    /// Sender: FIN in the middle of a request body.
    FinMidBody,
}

impl Driver {
    fn start(&mut self) {
        for channel in 0..self.load.channels.len() {
            self.spawn_receiver(channel, true);
            for _ in 0..self.load.raw_receivers {
                let at = now() + self.jitter(0, 500);
                self.timer(at, TimerKind::SpawnReceiver(channel));
            }
            for _ in 0..self.load.raw_senders {
                let at = now() + self.jitter(100, 600);
                self.timer(at, TimerKind::SpawnSender(channel));
            }
        }
    }

    fn run(&mut self) {
        let mut events = Events::with_capacity(256);
        let mut last_phase = RUNNING;
        loop {
            let phase = self.ledger.phase();
            if phase != last_phase {
                self.phase_changed(phase);
                last_phase = phase;
            }
            if phase >= DRAINING && self.senders_live.iter().all(|n| *n == 0) {
                if let Some(done) = self.senders_done.take() {
                    let _ = done.send("raw");
                }
            }
            if phase == CLOSING && self.conns.is_empty() {
                return;
            }
            let wait = self
                .timers
                .peek()
                .map(|t| t.0.at.saturating_duration_since(now()))
                .unwrap_or(TICK)
                .min(TICK);
            if let Err(e) = self.poll.poll(&mut events, Some(wait)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.ledger
                        .violation("harness", format!("raw poll failed: {e}"));
                    return;
                }
            }
            for event in events.iter() {
                let token = event.token().0;
                if token == WAKER.0 {
                    continue;
                }
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    self.read_ready(token);
                }
                if event.is_writable() {
                    self.flush(token);
                }
            }
            self.fire_timers();
        }
    }

    fn phase_changed(&mut self, phase: u8) {
        let tokens: Vec<usize> = self.conns.keys().copied().collect();
        for token in tokens {
            let Some(conn) = self.conns.get_mut(&token) else {
                continue;
            };
            match &mut conn.role {
                Role::Sender(s) if phase >= DRAINING => {
                    s.leaving = true;
                    self.maybe_finish_sender(token);
                }
                Role::Receiver(_) if phase >= CLOSING => self.start_receiver_leave(token),
                _ => {}
            }
        }
    }

    fn jitter(&mut self, min_ms: u64, max_ms: u64) -> Duration {
        Duration::from_millis(self.rng.gen_range(min_ms..=max_ms.max(min_ms)))
    }

    fn timer(&mut self, at: Instant, what: TimerKind) {
        self.timer_seq += 1;
        self.timers.push(Reverse(Timer {
            at,
            seq: self.timer_seq,
            what,
        }));
    }

    fn fire_timers(&mut self) {
        let now = now();
        while self.timers.peek().is_some_and(|t| t.0.at <= now) {
            let Some(Reverse(timer)) = self.timers.pop() else {
                break;
            };
            match timer.what {
                TimerKind::SpawnSender(channel) => {
                    if self.ledger.phase() == RUNNING {
                        self.spawn_sender(channel);
                    }
                }
                TimerKind::SpawnReceiver(channel) => {
                    if self.ledger.phase() == RUNNING {
                        self.spawn_receiver(channel, false);
                    }
                }
                TimerKind::NextOp(token) => self.next_op(token),
                TimerKind::Leave(token) => self.leave(token),
                TimerKind::Respond(token, id) => self.respond(token, id),
                TimerKind::Deadline(token, id) => self.deadline(token, id),
            }
        }
    }

    // ----- connections -----------------------------------------------------------------------

    fn connect(&mut self, channel: usize, role: Role) -> Option<usize> {
        let std_stream = match std::net::TcpStream::connect(self.load.addr) {
            Ok(s) => s,
            Err(e) => {
                self.ledger
                    .violation("connect_failed", format!("raw connect: {e}"));
                return None;
            }
        };
        let _ = std_stream.set_nodelay(true);
        if std_stream.set_nonblocking(true).is_err() {
            return None;
        }
        let mut stream = TcpStream::from_std(std_stream);
        let token = self.next_token;
        self.next_token += 1;
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Token(token),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            self.ledger.violation("harness", format!("register: {e}"));
            return None;
        }
        let mut conn = Conn {
            stream,
            channel,
            channel_id: self.load.channels[channel],
            client: ClientId::NIL,
            departed: false,
            joined: false,
            decoder: Decoder::new(MAX_PAYLOAD_CEILING),
            inbuf: BytesMut::new(),
            out: VecDeque::new(),
            out_pos: 0,
            fin_sent: false,
            fin_when_flushed: false,
            bcast_in: HashMap::new(),
            bcast_seen: HashSet::new(),
            role,
        };
        let hello = Header {
            channel_id: self.load.channels[channel],
            ..Header::new(FrameType::Hello)
        };
        conn.queue(hello, Bytes::new());
        self.conns.insert(token, conn);
        self.ledger.count("clients.connects", 1);
        self.ledger.count("clients.connects_raw", 1);
        self.flush(token);
        Some(token)
    }

    fn spawn_sender(&mut self, channel: usize) {
        if self
            .connect(channel, Role::Sender(SenderState::default()))
            .is_some()
        {
            self.senders_live[channel] += 1;
        } else {
            let at = now() + self.jitter(200, 500);
            self.timer(at, TimerKind::SpawnSender(channel));
        }
    }

    fn spawn_receiver(&mut self, channel: usize, stable: bool) {
        let role = Role::Receiver(ReceiverState {
            window: self.load.window,
            stable,
            held: HashMap::new(),
            ended: HashMap::new(),
            answers: HashMap::new(),
            scheduled: 0,
            leaving: false,
            barrier: false,
            reset_at_broadcast: false,
        });
        if self.connect(channel, role).is_none() && !stable {
            let at = now() + self.jitter(200, 500);
            self.timer(at, TimerKind::SpawnReceiver(channel));
        }
    }

    /// Drops a connection (its socket closes: FIN, or RST when `reset`) and schedules its
    /// replacement while the round runs.
    fn drop_conn(&mut self, token: usize, reset: bool, abrupt: bool) {
        let Some(mut conn) = self.conns.remove(&token) else {
            return;
        };
        if reset {
            sockets::reset_on_close(&conn.stream);
        }
        let _ = self.poll.registry().deregister(&mut conn.stream);
        let receiver = matches!(conn.role, Role::Receiver(_));
        if conn.joined && !conn.departed {
            self.ledger.depart(Departure {
                channel: conn.channel,
                client: *conn.client.as_bytes(),
                at: now(),
                abrupt,
                receiver,
            });
        }
        self.ledger.count("clients.disconnects", 1);
        let channel = conn.channel;
        match conn.role {
            Role::Sender(s) => {
                if !s.in_flight.is_empty() {
                    self.ledger.count(
                        "requests.abandoned_by_sender",
                        s.in_flight.values().filter(|o| !o.broadcast).count() as u64,
                    );
                    self.ledger.count(
                        "broadcasts.abandoned_by_sender",
                        s.in_flight.values().filter(|o| o.broadcast).count() as u64,
                    );
                }
                self.senders_live[channel] -= 1;
                if self.ledger.phase() == RUNNING {
                    let at = now() + self.jitter(50, 500);
                    self.timer(at, TimerKind::SpawnSender(channel));
                }
            }
            Role::Receiver(r) => {
                if reset {
                    self.ledger.abandon(r.held.keys().copied());
                }
                if !r.stable && self.ledger.phase() == RUNNING {
                    let at = now() + self.jitter(50, 500);
                    self.timer(at, TimerKind::SpawnReceiver(channel));
                }
            }
        }
        // Dropping `conn.stream` closes the socket here.
    }

    fn read_ready(&mut self, token: usize) {
        let Some(mut conn) = self.conns.remove(&token) else {
            return;
        };
        let mut closed: Option<String> = None;
        loop {
            match conn.stream.read(&mut self.scratch) {
                Ok(0) => {
                    closed = Some("EOF".into());
                    break;
                }
                Ok(n) => conn.inbuf.extend_from_slice(&self.scratch[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    closed = Some(e.to_string());
                    break;
                }
            }
        }
        let mut frames = Vec::new();
        loop {
            match conn.decoder.decode(&mut conn.inbuf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(e) => {
                    self.ledger.violation(
                        "undecodable",
                        format!("broker sent an undecodable frame: {e}"),
                    );
                    closed = Some("decode error".into());
                    break;
                }
            }
        }
        self.conns.insert(token, conn);
        for frame in frames {
            if !self.conns.contains_key(&token) {
                return;
            }
            self.handle_frame(token, frame);
        }
        if let Some(why) = closed {
            let Some(conn) = self.conns.get(&token) else {
                return;
            };
            if !conn.fin_sent {
                self.ledger.violation(
                    "connection_lost",
                    format!("the broker closed a raw connection ({why})"),
                );
            }
            self.drop_conn(token, false, false);
            return;
        }
        self.flush(token);
    }

    fn flush(&mut self, token: usize) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        while let Some(front) = conn.out.front() {
            match conn.stream.write(&front[conn.out_pos..]) {
                Ok(n) => {
                    conn.out_pos += n;
                    if conn.out_pos == front.len() {
                        conn.out.pop_front();
                        conn.out_pos = 0;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let lost = !conn.fin_sent;
                    if lost {
                        self.ledger.violation(
                            "connection_lost",
                            format!("write to the broker failed: {e}"),
                        );
                    }
                    self.drop_conn(token, false, false);
                    return;
                }
            }
        }
        if conn.fin_when_flushed && !conn.fin_sent {
            conn.fin_sent = true;
            let _ = conn.stream.shutdown(Shutdown::Write);
        }
    }

    // ----- frames ----------------------------------------------------------------------------

    fn handle_frame(&mut self, token: usize, frame: Frame) {
        let h = frame.header;
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        if conn.joined && h.channel_id != self.load.channels[conn.channel] {
            self.ledger.violation(
                "wrong_channel",
                format!("frame {:?} with channel {}", h.frame_type, h.channel_id),
            );
        }
        match h.frame_type {
            FrameType::Ping => {
                let pong = Header {
                    sequence: h.sequence,
                    is_final: h.is_final,
                    ..conn.header(FrameType::Pong)
                };
                conn.queue(pong, Bytes::new());
            }
            FrameType::Pong => {
                if let Role::Receiver(r) = &mut conn.role {
                    if r.barrier && h.sequence == BARRIER_PING {
                        r.barrier = false;
                        self.maybe_finish_receiver(token);
                    }
                }
            }
            FrameType::Welcome => self.welcome(token, &frame),
            FrameType::PeerJoined | FrameType::PeerLeft | FrameType::Peers => {}
            FrameType::Error => self.error(token, &frame),
            FrameType::Ack if h.flags.contains(Flags::BROADCAST) => {
                self.broadcast_acked(token, &frame)
            }
            FrameType::Start | FrameType::Chunk | FrameType::End
                if h.flags.contains(Flags::BROADCAST) =>
            {
                self.broadcast_frame(token, &frame)
            }
            FrameType::Cancel if h.flags.contains(Flags::BROADCAST) => {
                let id = *h.request_id.as_bytes();
                conn.bcast_in.remove(&id);
                conn.bcast_seen.insert(id);
                self.ledger.count("broadcasts.cancel_received_by_peer", 1);
            }
            FrameType::Start | FrameType::Chunk | FrameType::End
                if h.flags.contains(Flags::REQUEST) =>
            {
                self.request_frame(token, &frame)
            }
            FrameType::Start | FrameType::Chunk | FrameType::End
                if h.flags.contains(Flags::RESPONSE) =>
            {
                self.response_frame(token, &frame)
            }
            FrameType::Cancel if h.flags.contains(Flags::REQUEST) => {
                self.cancelled_by_broker(token, &frame)
            }
            FrameType::Cancel if h.flags.contains(Flags::RESPONSE) => {
                self.cancelled_by_receiver(token, &frame)
            }
            other => self.ledger.violation(
                "unexpected_frame",
                format!("{other:?} with flags {:?}", h.flags),
            ),
        }
    }

    fn welcome(&mut self, token: usize, frame: &Frame) {
        let lifetime = self.load.lifetime_ms;
        let leave_at = now() + self.jitter(lifetime / 4, lifetime);
        let first_op = now() + self.jitter(0, self.load.think_ms);
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        if conn.joined || WelcomeBody::decode(&frame.payload).is_err() {
            self.ledger
                .violation("unexpected_frame", "a second or malformed WELCOME".into());
            return;
        }
        conn.joined = true;
        conn.client = frame.header.client_id;
        let receive = conn.header(FrameType::Receive);
        match &mut conn.role {
            Role::Receiver(r) => {
                let (window, stable) = (r.window, r.stable);
                conn.queue(receive, encode_u32(window));
                if !stable {
                    self.timer(leave_at, TimerKind::Leave(token));
                }
            }
            Role::Sender(s) => {
                s.op_scheduled = true;
                self.timer(first_op, TimerKind::NextOp(token));
                self.timer(leave_at, TimerKind::Leave(token));
            }
        }
    }

    fn error(&mut self, token: usize, frame: &Frame) {
        let h = frame.header;
        let body = match ErrorBody::decode(&frame.payload) {
            Ok(body) => body,
            Err(e) => {
                self.ledger
                    .violation("malformed_error", format!("undecodable ERROR payload: {e}"));
                return;
            }
        };
        let code = body.known_code();
        let name = code.map_or("UNKNOWN_CODE", code_name);
        if h.request_id.is_nil() {
            self.ledger.violation(
                "connection_error",
                format!("connection-level ERROR {name}: {}", body.message),
            );
            return;
        }
        let id = *h.request_id.as_bytes();
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        match &mut conn.role {
            Role::Receiver(r) => {
                // A receiver only hears of requests it sent frames for after they ended: a late
                // response, or one that crossed the broker's CANCEL.
                match (code, r.ended.get(&id)) {
                    (Some(ErrorCode::UnknownRequest), Some(true)) => {
                        self.ledger.count("receivers.late_response_refused", 1)
                    }
                    _ => self.ledger.violation(
                        "receiver_error",
                        format!("receiver got {name} for {}: {}", hex(&id), body.message),
                    ),
                }
            }
            Role::Sender(s) => {
                if let Some(out) = s.in_flight.remove(&id) {
                    let multi = out.frames > 1;
                    s.ended.insert(id, multi);
                    let channel = conn.channel;
                    self.sender_error(channel, out, code, name, &body);
                    self.after_outcome(token);
                } else if s.vanished.contains(&id) {
                    self.ledger.count("requests.answers_after_vanish", 1);
                } else if let Some(&expect_unknown) = s.ended.get(&id) {
                    if code == Some(ErrorCode::UnknownRequest) && expect_unknown {
                        self.ledger.count("requests.late_frames_refused", 1);
                    } else {
                        self.ledger.violation(
                            "duplicate_answer",
                            format!("{name} for {} which had already ended", hex(&id)),
                        );
                    }
                } else {
                    self.ledger.violation(
                        "foreign_answer",
                        format!("{name} for {}, never sent on this connection", hex(&id)),
                    );
                }
            }
        }
    }

    fn sender_error(
        &mut self,
        channel: usize,
        out: Out,
        code: Option<ErrorCode>,
        name: &str,
        body: &ErrorBody,
    ) {
        let at = now();
        if out.broadcast {
            match code {
                Some(ErrorCode::BroadcastIncomplete) => {
                    self.ledger.count("broadcasts.incomplete", 1);
                    let elapsed = at.saturating_duration_since(out.sent);
                    if elapsed >= Duration::from_millis(out.timeout_ms.into()) {
                        self.ledger.violation(
                            "broadcast_timeout",
                            format!("broadcast {} timed out", hex(&out.head.id)),
                        );
                    }
                    let missing = body.peers.iter().map(|p| *p.as_bytes()).collect();
                    self.ledger.incomplete(missing, out.sent, at);
                }
                _ => self.ledger.violation(
                    "broadcast_error",
                    format!(
                        "broadcast {} failed with {name}: {}",
                        hex(&out.head.id),
                        body.message
                    ),
                ),
            }
            return;
        }
        let behavior = out.head.behavior.unwrap_or(Behavior::Never);
        let expects_timeout = matches!(behavior, Behavior::Late { .. } | Behavior::Never);
        match code {
            Some(ErrorCode::Timeout) if expects_timeout => {
                self.ledger.count("requests.timeout_expected", 1)
            }
            Some(ErrorCode::NoReceiver) if expects_timeout => {
                self.ledger.count("requests.no_receiver_expected", 1)
            }
            Some(ErrorCode::PeerGone) => {
                self.ledger.count("requests.peer_gone", 1);
                self.ledger
                    .peer_gone(channel, Some(out.head.id), out.sent, at);
            }
            Some(ErrorCode::Timeout) => self.ledger.violation(
                "timeout_unexpected",
                format!(
                    "request {} ({} bytes, {}) timed out after {:?}",
                    hex(&out.head.id),
                    out.head.len,
                    behavior.name(),
                    at.saturating_duration_since(out.sent)
                ),
            ),
            _ => self.ledger.violation(
                "error_unexpected",
                format!(
                    "request {} ({}) failed with {name}: {}",
                    hex(&out.head.id),
                    behavior.name(),
                    body.message
                ),
            ),
        }
    }

    fn cancelled_by_receiver(&mut self, token: usize, frame: &Frame) {
        let id = *frame.header.request_id.as_bytes();
        let Some(Role::Sender(s)) = self.conns.get_mut(&token).map(|c| &mut c.role) else {
            self.ledger
                .violation("unexpected_frame", "CANCEL(RESPONSE) to a receiver".into());
            return;
        };
        if s.vanished.contains(&id) {
            self.ledger.count("requests.answers_after_vanish", 1);
        } else if let Some(out) = s.in_flight.remove(&id) {
            s.ended.insert(id, out.frames > 1);
            if out.head.behavior == Some(Behavior::Cancel) {
                self.ledger.count("requests.cancelled_expected", 1);
            } else {
                self.ledger.violation(
                    "cancel_unexpected",
                    format!("request {} cancelled by its receiver", hex(&id)),
                );
            }
            self.after_outcome(token);
        } else if s.ended.contains_key(&id) {
            self.ledger.violation(
                "duplicate_answer",
                format!("CANCEL for {} which had already ended", hex(&id)),
            );
        } else {
            self.ledger
                .violation("foreign_answer", format!("CANCEL for unknown {}", hex(&id)));
        }
    }

    fn response_frame(&mut self, token: usize, frame: &Frame) {
        let h = frame.header;
        let id = *h.request_id.as_bytes();
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let Role::Sender(s) = &mut conn.role else {
            self.ledger
                .violation("unexpected_frame", "a RESPONSE frame to a receiver".into());
            return;
        };
        let Some(out) = s.in_flight.get_mut(&id) else {
            if s.vanished.contains(&id) {
                self.ledger.count("requests.answers_after_vanish", 1);
            } else if s.ended.contains_key(&id) {
                self.ledger.violation(
                    "duplicate_answer",
                    format!(
                        "{:?} (RESPONSE) for {} which had already ended",
                        h.frame_type,
                        hex(&id)
                    ),
                );
            } else {
                self.ledger.violation(
                    "foreign_answer",
                    format!(
                        "{:?} (RESPONSE) for {}, never sent here",
                        h.frame_type,
                        hex(&id)
                    ),
                );
            }
            return;
        };
        match (&mut out.response, h.frame_type) {
            (None, FrameType::Start) if h.sequence == 0 => {
                out.response = Some(ResponseIn {
                    responder: h.client_id,
                    next_seq: 1,
                    verifier: Verifier::new(),
                });
            }
            (Some(_), FrameType::Start) => {
                self.ledger.violation(
                    "duplicate_answer",
                    format!("a second response START for {}", hex(&id)),
                );
                return;
            }
            (Some(r), FrameType::Chunk | FrameType::End)
                if h.sequence == r.next_seq && h.client_id == r.responder =>
            {
                r.next_seq += 1;
            }
            _ => {
                self.ledger.violation(
                    "response_stream",
                    format!(
                        "response {:?} seq {} for {} out of order or from another responder",
                        h.frame_type,
                        h.sequence,
                        hex(&id)
                    ),
                );
                return;
            }
        }
        let Some(response) = out.response.as_mut() else {
            return;
        };
        response.verifier.feed(&frame.payload);
        self.ledger
            .count("bytes.responses", frame.payload.len() as u64);
        if !h.is_final {
            if h.frame_type == FrameType::End {
                self.ledger
                    .violation("response_stream", "END without FINAL".into());
            }
            return;
        }
        let Some(out) = s.in_flight.remove(&id) else {
            return;
        };
        s.ended.insert(id, false);
        self.check_response(&out);
        self.after_outcome(token);
    }

    fn check_response(&mut self, out: &Out) {
        let Some(response) = &out.response else {
            return;
        };
        let behavior = out.head.behavior.unwrap_or(Behavior::Never);
        match response.verifier.finish() {
            Err(e) => {
                let foreign = response
                    .verifier
                    .head()
                    .is_some_and(|h| h.id != out.head.id);
                let kind = if foreign {
                    "foreign_answer"
                } else {
                    "corrupt_answer"
                };
                self.ledger
                    .violation(kind, format!("response to {}: {e}", hex(&out.head.id)));
            }
            Ok((head, _)) => {
                let expected =
                    Head::response_to(&out.head, *response.responder.as_bytes(), out.hash);
                if head.id != out.head.id {
                    self.ledger.violation(
                        "foreign_answer",
                        format!(
                            "request {} answered with the response to {}",
                            hex(&out.head.id),
                            hex(&head.id)
                        ),
                    );
                } else if head != expected {
                    self.ledger.violation(
                        "corrupt_answer",
                        format!(
                            "response to {} is not derived from it: {head:?} vs {expected:?}",
                            hex(&out.head.id)
                        ),
                    );
                } else {
                    match behavior {
                        Behavior::Answer { .. } => self.ledger.count("requests.ok", 1),
                        // The broker was slower than the late answer: a legitimate race.
                        Behavior::Late { .. } => self.ledger.count("requests.late_answer_ok", 1),
                        Behavior::Never | Behavior::Cancel => self.ledger.violation(
                            "impossible_answer",
                            format!(
                                "request {} ({}) got an answer",
                                hex(&head.id),
                                behavior.name()
                            ),
                        ),
                    }
                }
            }
        }
    }

    fn broadcast_acked(&mut self, token: usize, frame: &Frame) {
        let id = *frame.header.request_id.as_bytes();
        let Some(Role::Sender(s)) = self.conns.get_mut(&token).map(|c| &mut c.role) else {
            self.ledger
                .violation("unexpected_frame", "broadcast ACK to a receiver".into());
            return;
        };
        if s.vanished.contains(&id) {
            self.ledger.count("broadcasts.answers_after_vanish", 1);
            return;
        }
        match s.in_flight.remove(&id) {
            Some(out) if out.broadcast => {
                s.ended.insert(id, false);
                s.broadcasting = false;
                match decode_u32(&frame.payload) {
                    Ok(count) => {
                        self.ledger.count("broadcasts.ok", 1);
                        self.ledger.broadcast_ok(id, count, out.sent, now());
                    }
                    Err(_) => self
                        .ledger
                        .violation("malformed_ack", "broker ACK without a count".into()),
                }
                self.after_outcome(token);
            }
            Some(out) => {
                s.in_flight.insert(id, out);
                self.ledger
                    .violation("foreign_answer", "broadcast ACK for a request".into());
            }
            None => self.ledger.violation(
                "duplicate_answer",
                format!("broadcast ACK for {} which is not in flight", hex(&id)),
            ),
        }
    }

    /// A broadcast copy arriving at a peer (any raw client).
    fn broadcast_frame(&mut self, token: usize, frame: &Frame) {
        let h = frame.header;
        let id = *h.request_id.as_bytes();
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        if h.client_id == conn.client {
            self.ledger.violation(
                "broadcast_to_self",
                format!("broadcast {} came back to its sender", hex(&id)),
            );
        }
        if h.frame_type == FrameType::Start
            && matches!(&conn.role, Role::Receiver(r) if r.reset_at_broadcast)
        {
            self.ledger.count("faults.rst_peer_mid_broadcast", 1);
            self.drop_conn(token, true, true);
            return;
        }
        if h.frame_type == FrameType::Start {
            if h.sequence != 0 || !conn.bcast_seen.insert(id) || conn.bcast_in.contains_key(&id) {
                self.ledger.violation(
                    "broadcast_twice",
                    format!("broadcast {} started twice at one peer", hex(&id)),
                );
                return;
            }
            conn.bcast_in.insert(id, (0, Verifier::new()));
        }
        let Some((seq, verifier)) = conn.bcast_in.get_mut(&id) else {
            self.ledger.violation(
                "broadcast_stream",
                format!(
                    "broadcast {:?} for {} not being received",
                    h.frame_type,
                    hex(&id)
                ),
            );
            return;
        };
        if h.sequence != *seq {
            self.ledger.violation(
                "broadcast_stream",
                format!("broadcast seq {} != {seq}", h.sequence),
            );
        }
        *seq += 1;
        verifier.feed(&frame.payload);
        if !h.is_final {
            return;
        }
        let Some((_, verifier)) = conn.bcast_in.remove(&id) else {
            return;
        };
        match verifier.finish() {
            Ok((head, _))
                if head.kind == body::Kind::Broadcast
                    && (!head.wire_id_known || head.id == id)
                    && head.author == *h.client_id.as_bytes() =>
            {
                self.ledger.count("broadcasts.delivered", 1);
                // Recorded before the ACK leaves: a peer that acked has always said so.
                self.ledger.acked(head.id);
                let ack = Header {
                    flags: Flags::BROADCAST,
                    request_id: h.request_id,
                    ..conn.header(FrameType::Ack)
                };
                conn.queue(ack, Bytes::new());
            }
            Ok((head, _)) => self.ledger.violation(
                "foreign_broadcast",
                format!(
                    "broadcast {} carried the body of {}",
                    hex(&id),
                    hex(&head.id)
                ),
            ),
            Err(e) => self
                .ledger
                .violation("corrupt_broadcast", format!("broadcast {}: {e}", hex(&id))),
        }
    }

    /// A request frame arriving at a receiver.
    fn request_frame(&mut self, token: usize, frame: &Frame) {
        let h = frame.header;
        let id = *h.request_id.as_bytes();
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let client = conn.client;
        let Role::Receiver(r) = &mut conn.role else {
            self.ledger.violation(
                "unexpected_frame",
                "a request assigned to a sender (window 0)".into(),
            );
            return;
        };
        if h.frame_type == FrameType::Start {
            if r.ended.contains_key(&id) || r.held.contains_key(&id) {
                self.ledger.violation(
                    "assigned_twice",
                    format!("request {} started twice at one receiver", hex(&id)),
                );
                return;
            }
            if r.held.len() as u32 >= r.window {
                self.ledger.violation(
                    "window_exceeded",
                    format!(
                        "a receiver with window {} was given {} requests",
                        r.window,
                        r.held.len() + 1
                    ),
                );
            }
            if h.timeout_ms == 0 {
                self.ledger
                    .violation("request_stream", "forwarded START with timeout 0".into());
            }
            self.ledger.assign(id, *client.as_bytes());
            r.held.insert(
                id,
                Held {
                    sender: h.client_id,
                    next_seq: 0,
                    verifier: Verifier::new(),
                    timeout_ms: h.timeout_ms,
                    arrived: now(),
                },
            );
        }
        let Some(held) = r.held.get_mut(&id) else {
            let why = if r.ended.contains_key(&id) {
                "after it ended"
            } else {
                "never started here"
            };
            self.ledger.violation(
                "frame_after_end",
                format!("request {:?} for {} {why}", h.frame_type, hex(&id)),
            );
            return;
        };
        if h.sequence != held.next_seq || h.client_id != held.sender {
            self.ledger.violation(
                "request_stream",
                format!(
                    "request frame seq {} (expected {}) or sender changed",
                    h.sequence, held.next_seq
                ),
            );
        }
        held.next_seq = h.sequence + 1;
        held.verifier.feed(&frame.payload);
        self.ledger
            .count("bytes.requests", frame.payload.len() as u64);
        if !h.is_final {
            return;
        }
        // The whole request is here: check it, then do what it asks.
        let (head, hash) = match held.verifier.finish() {
            Ok(ok) => ok,
            Err(e) => {
                self.ledger
                    .violation("corrupt_request", format!("request {}: {e}", hex(&id)));
                return;
            }
        };
        if head.kind != body::Kind::Request
            || (head.wire_id_known && head.id != id)
            || head.author != *held.sender.as_bytes()
        {
            self.ledger.violation(
                "foreign_request",
                format!(
                    "request {} carried the body of {} from {}",
                    hex(&id),
                    hex(&head.id),
                    hex(&head.author)
                ),
            );
            return;
        }
        let arrived = held.arrived;
        let timeout_ms = held.timeout_ms;
        if matches!(
            head.behavior,
            Some(Behavior::Answer { .. } | Behavior::Late { .. })
        ) {
            r.answers.insert(id, (head, hash));
        }
        match head.behavior {
            Some(Behavior::Answer { delay_ms }) => {
                r.scheduled += 1;
                let at = now() + Duration::from_millis(delay_ms.into());
                self.timer(at, TimerKind::Respond(token, id));
            }
            Some(Behavior::Late { extra_ms }) => {
                r.scheduled += 1;
                let at =
                    arrived + Duration::from_millis(u64::from(timeout_ms) + u64::from(extra_ms));
                self.timer(at, TimerKind::Respond(token, id));
            }
            Some(Behavior::Never) => {}
            Some(Behavior::Cancel) | None => {
                r.held.remove(&id);
                r.ended.insert(id, false);
                let cancel = Header {
                    flags: Flags::RESPONSE,
                    request_id: h.request_id,
                    is_final: true,
                    ..conn.header(FrameType::Cancel)
                };
                conn.queue(cancel, Bytes::new());
                self.ledger.count("receivers.cancelled", 1);
                self.maybe_finish_receiver(token);
            }
        }
    }

    fn cancelled_by_broker(&mut self, token: usize, frame: &Frame) {
        let id = *frame.header.request_id.as_bytes();
        let Some(Role::Receiver(r)) = self.conns.get_mut(&token).map(|c| &mut c.role) else {
            self.ledger
                .violation("unexpected_frame", "CANCEL(REQUEST) to a sender".into());
            return;
        };
        if r.held.remove(&id).is_some() {
            r.ended.insert(id, true);
            self.ledger.count("receivers.cancel_received", 1);
            self.maybe_finish_receiver(token);
        } else if let Some(by_broker) = r.ended.get_mut(&id) {
            // Our response (or CANCEL) crossed the broker's CANCEL: legitimate once.
            if *by_broker {
                self.ledger.violation(
                    "duplicate_cancel",
                    format!("a second CANCEL for {}", hex(&id)),
                );
            }
            *by_broker = true;
            self.ledger.count("receivers.cancel_crossed_response", 1);
        } else {
            self.ledger
                .violation("foreign_cancel", format!("CANCEL for unknown {}", hex(&id)));
        }
    }

    /// A scheduled response is due (answer, or a deliberately late one). A response whose
    /// request the broker already ended (timed out, or its sender left) is sent all the same:
    /// the broker must drop it and answer UNKNOWN_REQUEST, never forward it.
    fn respond(&mut self, token: usize, id: [u8; 16]) {
        let max_payload = self.load.max_payload as usize;
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let client = conn.client;
        let Role::Receiver(r) = &mut conn.role else {
            return;
        };
        r.scheduled -= 1;
        let Some((request, hash)) = r.answers.remove(&id) else {
            self.maybe_finish_receiver(token);
            return;
        };
        let mut derived_from = (request, hash);
        let mut corrupt = false;
        if r.held.contains_key(&id) {
            self.responses += 1;
            if self.responses >= SABOTAGED_RESPONSE
                && !self.sabotaged
                && r.stable
                && !request.wire_id_known
            {
                self.sabotaged = true;
                match self.load.sabotage {
                    Some(Sabotage::Silence) => {
                        // Still held: the broker will time it out and CANCEL it here.
                        self.ledger.count("sabotage.silenced", 1);
                        self.maybe_finish_receiver(token);
                        return;
                    }
                    Some(Sabotage::Swap) => {
                        if let Some(previous) = self.last_answer {
                            derived_from = previous;
                            self.ledger.count("sabotage.swapped", 1);
                        }
                    }
                    Some(Sabotage::Corrupt) => {
                        corrupt = true;
                        self.ledger.count("sabotage.corrupted", 1);
                    }
                    Some(Sabotage::TlsHandshake) | None => {}
                }
            }
            self.last_answer = Some((request, hash));
            r.held.remove(&id);
            r.ended.insert(id, false);
            self.ledger.count("receivers.responses_sent", 1);
        } else {
            self.ledger.count("receivers.late_responses_sent", 1);
        }
        let mut response =
            Head::response_to(&derived_from.0, *client.as_bytes(), derived_from.1).build();
        if corrupt {
            let at = (response.len() / 2)
                .max(body::HEAD_LEN)
                .min(response.len() - 1);
            response[at] ^= 0x01;
        }
        let response = Bytes::from(response);
        let chunk = (request.chunk as usize).clamp(1, max_payload);
        let frames = response.len().div_ceil(chunk);
        for (seq, start) in (0..response.len()).step_by(chunk).enumerate() {
            let end = (start + chunk).min(response.len());
            let frame_type = match seq {
                0 => FrameType::Start,
                _ if seq + 1 == frames => FrameType::End,
                _ => FrameType::Chunk,
            };
            let header = Header {
                flags: Flags::RESPONSE,
                request_id: RequestId::from_bytes(id),
                sequence: seq as u32,
                is_final: seq + 1 == frames,
                ..conn.header(frame_type)
            };
            conn.queue(header, response.slice(start..end));
        }
        self.flush(token);
        self.maybe_finish_receiver(token);
    }

    // ----- senders ---------------------------------------------------------------------------

    fn next_op(&mut self, token: usize) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let Role::Sender(s) = &mut conn.role else {
            return;
        };
        s.op_scheduled = false;
        if s.leaving || self.ledger.phase() != RUNNING {
            return;
        }
        if s.in_flight.len() >= self.load.in_flight {
            return; // Rescheduled when one ends.
        }
        let broadcast = !s.broadcasting && self.rng.gen_bool(self.load.p_broadcast);
        if broadcast {
            self.start_broadcast(token);
        } else {
            self.start_request(token, None);
        }
        self.schedule_next_op(token);
    }

    fn schedule_next_op(&mut self, token: usize) {
        let think = self.jitter(0, self.load.think_ms);
        let Some(Role::Sender(s)) = self.conns.get_mut(&token).map(|c| &mut c.role) else {
            return;
        };
        if s.op_scheduled || s.leaving || s.in_flight.len() >= self.load.in_flight {
            return;
        }
        s.op_scheduled = true;
        self.timer(now() + think, TimerKind::NextOp(token));
    }

    /// After a request or broadcast ended: maybe a new one, maybe the sender is done leaving.
    fn after_outcome(&mut self, token: usize) {
        if let Some(Role::Sender(s)) = self.conns.get(&token).map(|c| &c.role) {
            if s.leaving {
                self.maybe_finish_sender(token);
                return;
            }
        }
        self.schedule_next_op(token);
    }

    /// Picks a request: size, behaviour, timeout, framing. `partial`: send only this many body
    /// frames of a body of more frames (a sender about to vanish mid-body).
    fn start_request(&mut self, token: usize, partial: Option<usize>) -> Option<usize> {
        let load = Arc::clone(&self.load);
        let len = if partial.is_some() {
            self.rng.gen_range(load.max_body / 2..=load.max_body)
        } else {
            log_uniform(&mut self.rng, load.min_body, load.max_body)
        };
        let roll: f64 = self.rng.gen();
        let (behavior, timeout_ms) = if roll < load.p_late {
            let timeout = self.rng.gen_range(200..=1000);
            (
                Behavior::Late {
                    extra_ms: self.rng.gen_range(300..=600),
                },
                timeout,
            )
        } else if roll < load.p_late + load.p_never {
            (Behavior::Never, self.rng.gen_range(200..=1000))
        } else if roll < load.p_late + load.p_never + load.p_cancel {
            (Behavior::Cancel, load.timeout_ms)
        } else {
            (
                Behavior::Answer {
                    delay_ms: self.rng.gen_range(0..=load.service_ms),
                },
                load.timeout_ms,
            )
        };
        let response_len = log_uniform(&mut self.rng, load.min_body, load.max_body) as u32;
        let max_payload = load.max_payload as usize;
        // Half the bodies go as few frames as the payload limit allows; the others are streamed
        // in chunks of 1 KiB .. 256 KiB. Responses alike.
        let chunk_of = |rng: &mut StdRng| {
            if rng.gen_bool(0.5) {
                max_payload
            } else {
                log_uniform(rng, 1024, 256 * 1024).min(max_payload)
            }
        };
        let chunk = if partial.is_some() {
            (len / 8).max(16)
        } else {
            chunk_of(&mut self.rng)
        };
        let response_chunk = chunk_of(&mut self.rng) as u32;
        let conn = self.conns.get_mut(&token)?;
        let id = RequestId::random();
        let head = Head::request(
            *id.as_bytes(),
            *conn.client.as_bytes(),
            len as u32,
            behavior,
            true,
        )
        .with_response(response_len, response_chunk);
        let body = Bytes::from(head.build());
        let hash = body::hash(&body);
        let frames = body.len().div_ceil(chunk).max(1);
        let send_frames = partial.map_or(frames, |p| p.min(frames - 1));
        for (seq, start) in (0..body.len()).step_by(chunk).enumerate().take(send_frames) {
            let end = (start + chunk).min(body.len());
            let frame_type = match seq {
                0 => FrameType::Start,
                _ if seq + 1 == frames => FrameType::End,
                _ => FrameType::Chunk,
            };
            let header = Header {
                flags: Flags::REQUEST,
                request_id: id,
                timeout_ms: if seq == 0 { timeout_ms } else { 0 },
                sequence: seq as u32,
                is_final: seq + 1 == frames,
                ..conn.header(frame_type)
            };
            conn.queue(header, body.slice(start..end));
        }
        let Role::Sender(s) = &mut conn.role else {
            return None;
        };
        let sent = now();
        s.in_flight.insert(
            *id.as_bytes(),
            Out {
                head,
                hash,
                frames: frames as u32,
                timeout_ms,
                sent,
                broadcast: false,
                response: None,
            },
        );
        self.ledger.count("requests.sent", 1);
        self.ledger
            .count(&format!("requests.behavior_{}", behavior.name()), 1);
        if frames > 1 {
            self.ledger.count("requests.streamed", 1);
        }
        let deadline = sent + Duration::from_millis(timeout_ms.into()) + load.grace;
        self.timer(deadline, TimerKind::Deadline(token, *id.as_bytes()));
        self.flush(token);
        Some(send_frames)
    }

    fn start_broadcast(&mut self, token: usize) {
        let load = Arc::clone(&self.load);
        let len = log_uniform(&mut self.rng, load.min_body, load.max_broadcast);
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let id = RequestId::random();
        let head = Head::broadcast(*id.as_bytes(), *conn.client.as_bytes(), len as u32, true);
        let body = Bytes::from(head.build());
        let chunk = (load.max_payload as usize).min(16 * 1024);
        let frames = body.len().div_ceil(chunk).max(1);
        let timeout_ms = load.timeout_ms;
        for (seq, start) in (0..body.len()).step_by(chunk).enumerate() {
            let end = (start + chunk).min(body.len());
            let frame_type = match seq {
                0 => FrameType::Start,
                _ if seq + 1 == frames => FrameType::End,
                _ => FrameType::Chunk,
            };
            let header = Header {
                flags: Flags::REQUEST | Flags::BROADCAST,
                request_id: id,
                timeout_ms: if seq == 0 { timeout_ms } else { 0 },
                sequence: seq as u32,
                is_final: seq + 1 == frames,
                ..conn.header(frame_type)
            };
            conn.queue(header, body.slice(start..end));
        }
        let Role::Sender(s) = &mut conn.role else {
            return;
        };
        s.broadcasting = true;
        let sent = now();
        s.in_flight.insert(
            *id.as_bytes(),
            Out {
                head,
                hash: 0,
                frames: frames as u32,
                timeout_ms,
                sent,
                broadcast: true,
                response: None,
            },
        );
        self.ledger.count("broadcasts.sent", 1);
        let deadline = sent + Duration::from_millis(timeout_ms.into()) + load.grace;
        self.timer(deadline, TimerKind::Deadline(token, *id.as_bytes()));
        self.flush(token);
    }

    fn deadline(&mut self, token: usize, id: [u8; 16]) {
        let Some(Role::Sender(s)) = self.conns.get_mut(&token).map(|c| &mut c.role) else {
            return;
        };
        if let Some(out) = s.in_flight.remove(&id) {
            s.ended.insert(id, true);
            if out.broadcast {
                s.broadcasting = false;
            }
            self.ledger.violation(
                "unanswered",
                format!(
                    "{} {} got no outcome within its timeout ({} ms) + grace",
                    if out.broadcast {
                        "broadcast"
                    } else {
                        "request"
                    },
                    hex(&id),
                    out.timeout_ms
                ),
            );
            self.after_outcome(token);
        }
    }

    // ----- leaving ---------------------------------------------------------------------------

    fn leave(&mut self, token: usize) {
        let Some(conn) = self.conns.get(&token) else {
            return;
        };
        if self.ledger.phase() != RUNNING {
            return; // The round's own drain takes over.
        }
        match &conn.role {
            Role::Receiver(r) => {
                let holding = !r.held.is_empty();
                let fate = if r.reset_at_broadcast {
                    0 // No broadcast came within a second: reset now.
                } else {
                    self.rng.gen_range(0..4)
                };
                match fate {
                    0 => {
                        self.ledger.count("faults.rst_receiver", 1);
                        if holding {
                            self.ledger.count("faults.rst_receiver_holding", 1);
                        }
                        self.drop_conn(token, true, true);
                    }
                    1 => {
                        // Die in the middle of a broadcast: the sender must get
                        // BROADCAST_INCOMPLETE naming this peer.
                        if let Some(Role::Receiver(r)) =
                            self.conns.get_mut(&token).map(|c| &mut c.role)
                        {
                            r.reset_at_broadcast = true;
                        }
                        self.timer(now() + Duration::from_secs(1), TimerKind::Leave(token));
                    }
                    _ => {
                        self.ledger.count("clients.graceful_leave_raw_receiver", 1);
                        self.start_receiver_leave(token);
                    }
                }
            }
            Role::Sender(_) => {
                let fate = match self.rng.gen_range(0..8) {
                    0..=3 => Fate::Graceful,
                    4 => Fate::Reset,
                    5 | 6 => Fate::ResetMidBody,
                    _ => Fate::FinMidBody,
                };
                self.sender_fate(token, fate);
            }
        }
    }

    fn sender_fate(&mut self, token: usize, fate: Fate) {
        match fate {
            Fate::Graceful => {
                self.ledger.count("clients.graceful_leave_raw_sender", 1);
                if let Some(Role::Sender(s)) = self.conns.get_mut(&token).map(|c| &mut c.role) {
                    s.leaving = true;
                }
                self.maybe_finish_sender(token);
            }
            Fate::Reset => {
                let awaiting = matches!(
                    self.conns.get(&token).map(|c| &c.role),
                    Some(Role::Sender(s)) if !s.in_flight.is_empty()
                );
                if !awaiting {
                    self.start_request(token, None);
                }
                self.ledger.count("faults.rst_sender_awaiting", 1);
                self.drop_conn(token, true, true);
            }
            Fate::ResetMidBody | Fate::FinMidBody => {
                let frames = self.rng.gen_range(1..=4);
                self.start_request(token, Some(frames));
                // Let the socket take what it will of the partial body, then go.
                self.flush(token);
                if matches!(fate, Fate::ResetMidBody) {
                    self.ledger.count("faults.rst_sender_mid_body", 1);
                    self.drop_conn(token, true, true);
                } else {
                    self.ledger.count("faults.fin_sender_mid_body", 1);
                    let Some(conn) = self.conns.get_mut(&token) else {
                        return;
                    };
                    if let Role::Sender(s) = &mut conn.role {
                        s.leaving = true;
                        // The sender is gone as far as its requests go: what is in flight is
                        // abandoned, and answers already on their way are not judged.
                        let gone: Vec<([u8; 16], Out)> = s.in_flight.drain().collect();
                        for (id, out) in gone {
                            let key = if out.broadcast {
                                "broadcasts"
                            } else {
                                "requests"
                            };
                            self.ledger.count(&format!("{key}.abandoned_by_sender"), 1);
                            s.vanished.insert(id);
                        }
                    }
                    self.leave_with_fin(token, true);
                }
            }
        }
    }

    /// A leaving sender with nothing in flight: FIN, then wait for the broker's EOF.
    fn maybe_finish_sender(&mut self, token: usize) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let Role::Sender(s) = &conn.role else {
            return;
        };
        if !s.leaving || !s.in_flight.is_empty() || conn.fin_when_flushed {
            return;
        }
        if !conn.joined {
            self.drop_conn(token, false, false);
            return;
        }
        self.leave_with_fin(token, false);
    }

    /// A joined connection leaves: FIN once its queue is flushed, then the broker's EOF ends it.
    /// The departure counts from now (the ledger judges outcomes against it).
    fn leave_with_fin(&mut self, token: usize, abrupt: bool) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        conn.fin_when_flushed = true;
        conn.departed = true;
        self.ledger.depart(Departure {
            channel: conn.channel,
            client: *conn.client.as_bytes(),
            at: now(),
            abrupt,
            receiver: matches!(conn.role, Role::Receiver(_)),
        });
        self.flush(token);
    }

    /// RECEIVE(0), then finish what is held (see [`Driver::maybe_finish_receiver`]).
    fn start_receiver_leave(&mut self, token: usize) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let Role::Receiver(r) = &mut conn.role else {
            return;
        };
        if r.leaving {
            return;
        }
        r.leaving = true;
        if conn.joined {
            // A PING after the RECEIVE(0): its PONG proves the broker processed the window, and
            // any request assigned before that arrives ahead of it. Until then we keep serving.
            r.barrier = true;
            let receive = conn.header(FrameType::Receive);
            conn.queue(receive, encode_u32(0));
            let ping = Header {
                sequence: BARRIER_PING,
                ..conn.header(FrameType::Ping)
            };
            conn.queue(ping, Bytes::new());
        }
        self.flush(token);
        self.maybe_finish_receiver(token);
    }

    /// A leaving receiver that holds nothing and has no response scheduled: FIN, wait for EOF.
    fn maybe_finish_receiver(&mut self, token: usize) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let Role::Receiver(r) = &conn.role else {
            return;
        };
        if !r.leaving || r.barrier || !r.held.is_empty() || r.scheduled > 0 || conn.fin_when_flushed
        {
            return;
        }
        if !conn.joined {
            self.drop_conn(token, false, false);
            return;
        }
        self.leave_with_fin(token, false);
    }
}

impl Conn {
    /// A header of `kind` with this connection's channel and client id.
    fn header(&self, kind: FrameType) -> Header {
        Header {
            client_id: self.client,
            channel_id: self.channel_id,
            ..Header::new(kind)
        }
    }

    fn queue(&mut self, mut header: Header, payload: Bytes) {
        header.payload_len = payload.len() as u32;
        self.out.push_back(Bytes::copy_from_slice(&header.encode()));
        if !payload.is_empty() {
            self.out.push_back(payload);
        }
    }
}

/// A log-uniform integer in `min ..= max`: as many bodies of 100 bytes to 1 KB as of 100 KB to
/// 1 MB.
pub fn log_uniform(rng: &mut impl Rng, min: usize, max: usize) -> usize {
    let (lo, hi) = ((min.max(1) as f64).ln(), (max.max(min).max(1) as f64).ln());
    let x = rng.gen_range(lo..=hi).exp() as usize;
    x.clamp(min, max.max(min))
}
