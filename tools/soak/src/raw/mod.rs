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

mod conn;
mod dispatch;
mod receiver;
mod sender;

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
