//! The checks of the `router` fuzz target, shared with `crates/core/tests/router_fuzz.rs`
//! (both include this file with `#[path]`), so the committed corpus and a proptest run in CI.
//!
//! Input: a sequence of operations on one [`Router`] with a fake clock, each an opcode byte and
//! its argument bytes (missing bytes read as zero). Up to [`MAX_CONNS`] fake connections on two
//! channels connect, say hello (nil or chosen client ids, duplicates making takeovers), open
//! receive windows, send request, response and broadcast streams with arbitrary sequence numbers,
//! final bits and flags, cancel, ack, ask for peers, ping, name unknown request ids, send raw
//! frames of any type, hit decode errors, stall their socket, disconnect, and let time pass
//! (0..2000 ms per step). Issue 10's cases: receivers open huge windows (1 000 000) and stall
//! while requests with short timeouts pile up (congestion, purges of dead frames), a churner
//! leaves and rejoins with a fresh client id (presence under the watermark, the overflow
//! marker), everyone disconnects at one instant (the amortised cleanup), and a small memory
//! budget and broker-wide in-flight cap are reached. After every step:
//! - every output is drained; transmitted bytes are written into a per-connection sink and
//!   decoded back with the crate's [`Decoder`]: the router only ever emits valid frames;
//! - [`Router::check_invariants`] holds;
//! - no frame reaches a connection of another channel than the one its welcome named.
//!
//! At the end everyone disconnects, time passes beyond every timer (timeouts, presence grace,
//! heartbeats, handshakes), and every live count of [`Router::stats`] is zero.

use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::time::{Duration, Instant};

use switchyard_core::ids::{ChannelId, ClientId, ConnId, RequestId};
use switchyard_core::protocol::{
    encode_u32, DecodeError, Decoder, Flags, Frame, FrameType, Header, MAX_PAYLOAD_CEILING,
};
use switchyard_core::router::{Output, Router, RouterConfig};

/// Connections alive at once (more connects are ignored).
const MAX_CONNS: usize = 8;

/// Short timeouts and small limits (defaults for the rest, e.g. the payload limit), so that every timer fires and every limit is reached
/// within a short input.
fn config() -> RouterConfig {
    RouterConfig {
        default_timeout: Duration::from_millis(700),
        max_timeout: Duration::from_millis(3_000),
        high_watermark: 2_048,
        low_watermark: 512,
        max_held_bytes: 1_024,
        max_waiting_per_channel: 6,
        heartbeat_interval: Duration::from_millis(400),
        heartbeat_misses: 2,
        presence_grace: Duration::from_millis(500),
        max_channels: 2,
        max_peers_per_channel: 5,
        max_in_flight_per_connection: 5,
        max_requests_in_flight: 12,
        max_buffered_bytes: 6_000,
        handshake_timeout: Duration::from_millis(1_000),
        // Fewer than MAX_CONNS: evicting the oldest connection awaiting its hello is reached.
        max_unauthenticated: 3,
        ..RouterConfig::default()
    }
}

/// Longer than every timer of [`config`]: what the end of a run advances the clock by.
const SETTLE: Duration = Duration::from_secs(30);

fn channel(n: u8) -> ChannelId {
    ChannelId::from_bytes([0xA0 + n; 16])
}

fn client(n: u8) -> ClientId {
    ClientId::from_bytes([0xC0 ^ n; 16])
}

/// One of a small pool of request ids, so that senders collide and responders find them.
fn pooled_id(n: u8) -> RequestId {
    let mut bytes = [0xEE; 16];
    bytes[15] = n % 8;
    RequestId::from_bytes(bytes)
}

/// The input, read one byte at a time; zero once exhausted.
struct Input<'a> {
    data: &'a [u8],
}

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }
}

/// One fake connection: the I/O layer's view of it.
struct Conn {
    id: ConnId,
    /// The channel its welcome named.
    channel: Option<ChannelId>,
    /// The channel its hello asked for (frames before the welcome use it).
    asked: Option<ChannelId>,
    /// The client id its hello named (none for nil: the router picks a fresh one).
    client: Option<ClientId>,
    /// Bytes written by the router, not yet decoded into whole frames.
    sink: BytesMut,
    decoder: Decoder,
    /// The socket "stopped reading": transmits are not written.
    stalled: bool,
    /// The router asked for it to be closed.
    closed: bool,
    /// Request ids whose START reached it as a receiver.
    incoming: Vec<RequestId>,
    /// Broadcast ids whose frames reached it.
    broadcasts: Vec<RequestId>,
    /// Request and broadcast ids it started.
    outgoing: Vec<RequestId>,
}

struct World {
    router: Router,
    now: Instant,
    conns: Vec<Conn>,
    /// Next sequence number of each stream a connection sends: (conn, id, is response).
    next_seq: HashMap<(ConnId, RequestId, bool), u32>,
    /// Client ids handed to churners so far (each rejoins as a new peer).
    churned: u32,
}

impl World {
    fn find(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.conns.iter_mut().find(|c| c.id == id)
    }

    /// Writes `conn`'s queued bytes (at most `budget`) through the byte seam and decodes them.
    /// Each transmit is written in part when the budget ends inside it, as a socket with that
    /// much room left would.
    fn write(&mut self, id: ConnId, budget: usize) {
        let mut wire = Vec::new();
        while wire.len() < budget {
            let Some(transmit) = self.router.poll_transmit(id) else {
                break;
            };
            let room = budget - wire.len();
            let mut n = 0;
            for slice in transmit.slices() {
                let take = slice.len().min(room - n);
                wire.extend_from_slice(&slice[..take]);
                n += take;
                if n == room {
                    break;
                }
            }
            self.router.handle_written(id, n);
        }
        let Some(conn) = self.conns.iter_mut().find(|c| c.id == id) else {
            assert!(wire.is_empty(), "bytes for a connection that is gone");
            return;
        };
        conn.sink.extend_from_slice(&wire);
        while let Some(frame) = conn
            .decoder
            .decode(&mut conn.sink)
            .expect("the router emits valid frames")
        {
            deliver(conn, &frame);
        }
        if budget == usize::MAX {
            assert!(self.router.poll_transmit(id).is_none(), "drained");
            assert!(conn.sink.is_empty(), "the router emitted a partial frame");
            assert_eq!(self.router.queued_bytes(id), 0);
        }
    }

    fn drain(&mut self) {
        while let Some(output) = self.router.poll_output() {
            match output {
                Output::Transmit(id) => {
                    if self.find(id).is_some_and(|c| !c.stalled) {
                        self.write(id, usize::MAX);
                    }
                }
                Output::Close(id) => {
                    self.write(id, usize::MAX);
                    let conn = self.find(id).expect("close of an unknown connection");
                    conn.closed = true;
                    conn.stalled = false;
                }
                // The next step feeds it again if it is not paused by then.
                Output::Resume(_) => {}
            }
        }
        self.router.check_invariants();
    }

    fn feed(&mut self, index: usize, header: Header, payload: Bytes) {
        let id = self.conns[index].id;
        // The I/O layer does not feed a paused connection (its frames wait in its buffer).
        if self.router.is_read_paused(id) {
            return;
        }
        if header.frame_type.is_stream() {
            let key = (
                id,
                header.request_id,
                header.flags.contains(Flags::RESPONSE),
            );
            self.next_seq.insert(key, header.sequence.wrapping_add(1));
        }
        if header.frame_type == FrameType::Hello && self.conns[index].asked.is_none() {
            let conn = &mut self.conns[index];
            conn.asked = Some(header.channel_id);
            conn.client = Some(header.client_id).filter(|c| !c.is_nil());
        }
        let conn = &mut self.conns[index];
        if header.frame_type == FrameType::Start
            && header.flags.contains(Flags::REQUEST)
            && !conn.outgoing.contains(&header.request_id)
        {
            conn.outgoing.push(header.request_id);
            if conn.outgoing.len() > 16 {
                conn.outgoing.remove(0);
            }
        }
        self.router
            .handle_frame(id, Frame::new(header, payload), self.now);
    }

    /// The sequence number of the next frame of a stream: the right one, or (when `b` says so)
    /// any.
    fn sequence(&self, index: usize, kind: FrameType, id: RequestId, response: bool, b: u8) -> u32 {
        if b & 0x38 == 0x38 {
            return u32::from(b & 0x07);
        }
        if kind == FrameType::Start {
            return 0;
        }
        let key = (self.conns[index].id, id, response);
        self.next_seq.get(&key).copied().unwrap_or(1)
    }

    /// A new connection, awaiting its hello.
    fn connect(&mut self) {
        let id = self.router.handle_connect(self.now);
        self.conns.push(Conn {
            id,
            channel: None,
            asked: None,
            client: None,
            sink: BytesMut::new(),
            decoder: Decoder::new(MAX_PAYLOAD_CEILING),
            stalled: false,
            closed: false,
            incoming: Vec::new(),
            broadcasts: Vec::new(),
            outgoing: Vec::new(),
        });
    }

    fn disconnect(&mut self, index: usize) {
        let conn = self.conns.swap_remove(index);
        self.router.handle_disconnect(conn.id, self.now);
    }
}

/// Checks one frame delivered to `conn` and records what it may answer.
fn deliver(conn: &mut Conn, frame: &Frame) {
    let header = &frame.header;
    assert_eq!(header.payload_len as usize, frame.payload.len());
    if header.frame_type == FrameType::Welcome {
        assert!(conn.channel.is_none(), "{}: a second welcome", conn.id);
        assert!(!header.channel_id.is_nil());
        assert_eq!(
            Some(header.channel_id),
            conn.asked,
            "welcome to another channel"
        );
        conn.channel = Some(header.channel_id);
        return;
    }
    if let Some(channel) = conn.channel {
        if header.frame_type != FrameType::Pong {
            assert_eq!(
                header.channel_id, channel,
                "{}: {:?} frame crossed channels",
                conn.id, header.frame_type
            );
        }
    } else {
        assert!(
            matches!(
                header.frame_type,
                FrameType::Ping | FrameType::Pong | FrameType::Error
            ),
            "{}: {:?} before the welcome",
            conn.id,
            header.frame_type
        );
    }
    let id = header.request_id;
    if header.flags.contains(Flags::BROADCAST) && header.frame_type.is_stream() {
        if !conn.broadcasts.contains(&id) {
            conn.broadcasts.push(id);
        }
    } else if header.flags == Flags::REQUEST
        && header.frame_type == FrameType::Start
        && !conn.incoming.contains(&id)
    {
        conn.incoming.push(id);
    }
    if conn.incoming.len() > 16 {
        conn.incoming.remove(0);
    }
    if conn.broadcasts.len() > 16 {
        conn.broadcasts.remove(0);
    }
}

/// Flags of a stream frame: usually `base`, sometimes any 4-bit value (malformed mixes).
fn flags(base: Flags, b: u8) -> Flags {
    if b & 0xF0 == 0xF0 {
        Flags::from_bits(u16::from(b & 0x0F)).expect("4 bits are defined")
    } else if b & 0x0C == 0x0C {
        base.union(Flags::NO_WAIT)
    } else {
        base
    }
}

/// A request id: nil (rarely), one of `list` (ids this connection started or received), or one
/// of the pool (foreign or unknown ids, and every START).
fn request_id(list: &[RequestId], b: u8) -> RequestId {
    match b {
        0 => RequestId::NIL,
        _ if b & 0x70 != 0x70 && !list.is_empty() => list[usize::from(b) % list.len()],
        _ => pooled_id(b),
    }
}

fn payload(len: u8, fill: u8) -> Bytes {
    // Mostly small; now and then big enough to reach the watermarks and the held-bytes limit.
    let len = if len > 0xF0 {
        usize::from(len - 0xF0) * 200
    } else {
        usize::from(len % 64)
    };
    Bytes::from(vec![fill; len])
}

/// Runs one fuzz input; panics on a violation.
pub fn run(data: &[u8]) {
    // The fake clock's origin; only the input moves it from here.
    #[allow(clippy::disallowed_methods)]
    let now = Instant::now();
    let mut world = World {
        router: Router::new(config(), now),
        now,
        conns: Vec::new(),
        next_seq: HashMap::new(),
        churned: 0,
    };
    let mut input = Input { data };
    while !input.data.is_empty() {
        step(&mut world, &mut input);
        world.drain();
        // The I/O layer closes what the router asked it to close (its error frame was written).
        while let Some(index) = world.conns.iter().position(|c| c.closed) {
            world.disconnect(index);
            world.drain();
        }
    }

    // Everyone leaves; then every timer fires.
    while !world.conns.is_empty() {
        world.disconnect(world.conns.len() - 1);
        world.drain();
    }
    world.now += SETTLE;
    world.router.handle_timeout(world.now);
    world.drain();
    let s = world.router.stats();
    assert_eq!(
        (
            s.connections,
            s.channels,
            s.pending_requests,
            s.assignments,
            s.broadcasts,
            s.armed_timers,
            s.buffered_bytes,
            s.ghosts,
            s.paused_connections,
            s.pending_cleanup,
            s.budget_paused,
        ),
        (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
        "state left behind: {s:?}"
    );
    assert_eq!(world.router.poll_timeout(), None);
}

fn step(world: &mut World, input: &mut Input<'_>) {
    let op = input.byte();
    if op.is_multiple_of(16) || world.conns.is_empty() {
        // Connect.
        if world.conns.len() < MAX_CONNS {
            world.connect();
        }
        return;
    }
    let index = usize::from(input.byte()) % world.conns.len();
    let conn = &world.conns[index];
    // Frames name the connection's channel; a few name the other one (a protocol error).
    let arg = input.byte();
    let own = conn.channel.or(conn.asked).unwrap_or(channel(1));
    let channel_id = if arg == 0xFF {
        if own == channel(1) {
            channel(2)
        } else {
            channel(1)
        }
    } else {
        own
    };
    let stream = |kind: FrameType, flags: Flags, id: RequestId, b: u8, timeout_ms: u32| Header {
        flags,
        channel_id,
        request_id: id,
        timeout_ms,
        sequence: world.sequence(index, kind, id, flags.contains(Flags::RESPONSE), b),
        is_final: b & 0x40 != 0,
        ..Header::new(kind)
    };
    // Most first frames are hellos: random input would otherwise rarely get past handshakes.
    let incoming = conn.incoming.clone();
    let broadcasts = conn.broadcasts.clone();
    let outgoing = conn.outgoing.clone();
    // Fatal operations (a second hello, decode errors, raw frames) are rarer than the rest:
    // random input would otherwise close connections before they do much.
    let op = match op % 16 {
        2..=11 if conn.asked.is_none() && !arg.is_multiple_of(8) => 1,
        1 if conn.asked.is_some() && !arg.is_multiple_of(8) => 2,
        11 if !arg.is_multiple_of(4) => 10,
        // Answers (chunks, responses, cancels, acks) mostly name streams that exist: without
        // one, start a request instead.
        4 if outgoing.is_empty() && !arg.is_multiple_of(4) => 3,
        5 | 6 if incoming.is_empty() && !arg.is_multiple_of(4) => 3,
        7 if incoming.is_empty() && outgoing.is_empty() && !arg.is_multiple_of(4) => 3,
        9 if broadcasts.is_empty() && !arg.is_multiple_of(4) => 8,
        12 if !arg.is_multiple_of(4) => 14,
        op => op,
    };
    match op {
        1 => {
            // Hello: channel 1 or 2; nil or one of three client ids (a duplicate is a takeover).
            let ch = channel(1 + (arg & 1));
            let who = match (arg >> 1) & 3 {
                0 => ClientId::NIL,
                n => client(n),
            };
            let ch = if arg & 0x80 != 0 { channel_id } else { ch };
            let header = Header {
                channel_id: ch,
                client_id: who,
                ..Header::new(FrameType::Hello)
            };
            world.feed(index, header, Bytes::new());
        }
        2 => {
            let header = Header {
                channel_id,
                ..Header::new(FrameType::Receive)
            };
            // Mostly small windows; now and then a huge one (a receiver that takes everything).
            let window = match input.byte() {
                0xF0.. => 1_000_000,
                b => u32::from(b % 6),
            };
            let body = if arg & 0xF0 == 0xF0 {
                Bytes::from(vec![arg; usize::from(arg & 7)])
            } else {
                encode_u32(window)
            };
            world.feed(index, header, body);
        }
        3 | 4 => {
            // A request frame: START (with a timeout) or CHUNK/END of one, any sequence.
            let b = input.byte();
            let kind = match (op % 16, b & 0x40 != 0) {
                (3, _) => FrameType::Start,
                (_, false) => FrameType::Chunk,
                (_, true) => FrameType::End,
            };
            let list = if kind == FrameType::Start {
                &[][..]
            } else {
                &outgoing[..]
            };
            let id = request_id(list, input.byte());
            let timeout_ms = u32::from(input.byte()) * 12;
            let header = stream(kind, flags(Flags::REQUEST, arg), id, b, timeout_ms);
            let body = payload(input.byte(), arg);
            world.feed(index, header, body);
        }
        5 | 6 => {
            // A response frame to a request this connection received (or any other id).
            let b = input.byte();
            let kind = match b & 0x03 {
                0 | 1 => FrameType::Start,
                2 => FrameType::Chunk,
                _ => FrameType::End,
            };
            let id = request_id(&incoming, input.byte());
            let header = stream(kind, flags(Flags::RESPONSE, arg), id, b, 0);
            let body = payload(input.byte(), arg);
            world.feed(index, header, body);
        }
        7 => {
            // Cancel of an outgoing request, of an incoming one, or of a broadcast.
            let b = input.byte();
            let (base, list) = match b % 3 {
                0 => (Flags::REQUEST, &outgoing[..]),
                1 => (Flags::RESPONSE, &incoming[..]),
                _ => (Flags::REQUEST.union(Flags::BROADCAST), &outgoing[..]),
            };
            let id = request_id(list, input.byte());
            let header = stream(FrameType::Cancel, flags(base, arg), id, b | 0x40, 0);
            world.feed(index, header, Bytes::new());
        }
        8 => {
            // A broadcast frame: START or END.
            let b = input.byte();
            let kind = if b & 0x01 == 0 || outgoing.is_empty() {
                FrameType::Start
            } else {
                FrameType::End
            };
            let list = if kind == FrameType::Start {
                &[][..]
            } else {
                &outgoing[..]
            };
            let id = request_id(list, input.byte());
            let timeout_ms = u32::from(input.byte()) * 12;
            let base = Flags::REQUEST.union(Flags::BROADCAST);
            let header = stream(kind, flags(base, arg), id, b, timeout_ms);
            let body = payload(input.byte(), arg);
            world.feed(index, header, body);
        }
        9 => {
            // An ack of a broadcast this connection received (or of anything).
            let id = request_id(&broadcasts, input.byte());
            let flags = if arg & 0xF0 == 0xF0 {
                Flags::from_bits(u16::from(arg & 0x0F)).expect("4 bits are defined")
            } else {
                Flags::BROADCAST
            };
            let header = Header {
                flags,
                channel_id,
                request_id: id,
                ..Header::new(FrameType::Ack)
            };
            world.feed(index, header, Bytes::new());
        }
        10 => {
            let kind = match arg % 3 {
                0 => FrameType::Peers,
                1 => FrameType::Ping,
                _ => FrameType::Pong,
            };
            let header = Header {
                channel_id,
                sequence: u32::from(input.byte()),
                ..Header::new(kind)
            };
            world.feed(index, header, Bytes::new());
        }
        11 => {
            // Any frame type with any flags (clients sending welcomes, errors, peer events...).
            let kind = FrameType::try_from(arg % 15).unwrap_or(FrameType::Error);
            let b = input.byte();
            let mut header = stream(kind, flags(Flags::NONE, b | 0xF0), pooled_id(b), b, 0);
            header.client_id = client(b % 3);
            let body = payload(input.byte(), b);
            world.feed(index, header, body);
        }
        12 => {
            let id = world.conns[index].id;
            let error = match arg % 4 {
                0 => DecodeError::UnsupportedVersion { got: arg },
                1 => DecodeError::UnknownFrameType { got: arg },
                2 => DecodeError::UndefinedFlags { got: 0x10 },
                _ => DecodeError::PayloadTooLarge {
                    len: u32::MAX,
                    max: 4096,
                },
            };
            world.router.handle_decode_error(id, error, world.now);
        }
        13 => match arg % 8 {
            // Everyone leaves at one instant: the cleanup is spread over turns.
            5 => {
                while !world.conns.is_empty() {
                    world.disconnect(world.conns.len() - 1);
                }
            }
            // A churner: leaves, and a new connection joins channel 1 as a new peer.
            6 => {
                world.disconnect(index);
                world.drain();
                world.churned += 1;
                let mut id = [0x5C; 16];
                id[..4].copy_from_slice(&world.churned.to_be_bytes());
                world.connect();
                let header = Header {
                    channel_id: channel(1),
                    client_id: ClientId::from_bytes(id),
                    ..Header::new(FrameType::Hello)
                };
                world.feed(world.conns.len() - 1, header, Bytes::new());
            }
            _ => world.disconnect(index),
        },
        14 => {
            // Time passes (0..2000 ms, mostly under 100); now and then a timeout call with no time passing.
            let ms = match arg & 0x06 {
                0 => u64::from(input.u16() % 2_000),
                _ => u64::from(input.byte() % 100),
            };
            if arg & 1 == 0 {
                world.now += Duration::from_millis(ms);
            }
            world.router.handle_timeout(world.now);
            if let Some(deadline) = world.router.poll_timeout() {
                // Due now only while the amortised cleanup has work left (one budget per turn).
                let cleanup = world.router.stats().pending_cleanup > 0;
                assert!(deadline > world.now || cleanup, "a due timer did not fire");
            }
        }
        _ => {
            // The socket stops reading, reads a little, or reads everything again.
            let id = world.conns[index].id;
            let closed = world.conns[index].closed;
            match arg % 3 {
                0 if !closed => world.conns[index].stalled = true,
                1 => world.write(id, usize::from(input.byte()) + 1),
                _ => {
                    world.conns[index].stalled = false;
                    world.write(id, usize::MAX);
                }
            }
        }
    }
}
