//! The routing core, sans-IO.
//!
//! [`Router`] holds every piece of broker state that is not a socket: connections' protocol
//! state, channels (members, the FIFO of waiting requests, the FIFO of ready receivers), requests
//! and their receiver assignments, broadcasts and their acks, flow control, and every timer (one
//! [`TimerWheel`]). It is driven only by the calls below and never reads a clock.
//!
//! # Driving it
//! ```text
//!   handle_connect(now) -> ConnId        a connection was accepted
//!   handle_frame(conn, frame, now)       a frame was decoded from it (only while !is_read_paused)
//!   handle_decode_error(conn, err, now)  its bytes were malformed (the connection will be closed)
//!   handle_read_closed(conn, now)        EOF with no partial frame: close, or keep for output
//!   handle_disconnect(conn, now)         it closed (EOF, I/O error, or after Output::Close)
//!   handle_timeout(now)                  the deadline from poll_timeout() passed (early is harmless)
//! ```
//! After each input the caller MUST poll [`Router::poll_output`] until `None`, then read
//! [`Router::poll_timeout`] and wake up no later than the instant it returns:
//! ```text
//!   handle_*(.., now)
//!   while let Some(output) = poll_output() {
//!       Transmit(conn) => remember conn for writing (now, or at the end of the batch)
//!       Close(conn)    => write what is queued (best effort), close, handle_disconnect
//!       Resume(conn)   => feed its buffered frames again, read its socket again
//!   }
//!   poll_timeout()
//! ```
//! # Writing: the byte seam
//! The router never writes: it has no socket, is handed no writer, and does not know what "would
//! block" means. For a connection with bytes queued ([`Output::Transmit`]), the I/O layer asks
//! [`Router::poll_transmit`] for a [`Transmit`] — the front of the queue as borrowed slices,
//! zero-copy — writes any prefix of it (a vectored socket write, a TLS session's plaintext
//! buffer) and reports the prefix's length with [`Router::handle_written`]. It repeats until
//! `poll_transmit` returns `None` (the queue is empty), its socket takes no more, or its own
//! per-wakeup budget is spent; each of those is its own decision. `handle_written` is where flow control
//! sees the queue shrink: the buffered-bytes count, the low watermark's resumes (poll
//! [`Router::poll_output`] after it) and the heartbeat's sign of life all follow from it.
//! Bytes a write took before it failed MUST still be reported.
//!
//! # Who holds what
//! The router's connection table holds protocol state and the outbound queue (flow control
//! needs the queue's length on every send); the I/O layer's table holds sockets, read buffers
//! and decoders. Both are indexed by the same [`ConnId`]: the I/O layer never keeps protocol
//! state, and the router never keeps bytes that have not been decoded yet.
//!
//! # Module map
//! ```text
//!   mod.rs         Router, its configuration, outputs and stats; the timers' dispatch
//!   admission.rs   what a connection may cost before its handshake
//!   dispatch.rs    input: a decoded frame checked against its connection's state and routed
//!   connection.rs  one connection's lifecycle (AwaitingHello → Open → Closing), credit, pauses
//!   lifecycle.rs   closing a connection and forgetting it (close_connection, handle_disconnect)
//!   half_close.rs  a client that shut its write side, kept open for its answers
//!   send.rs        everything queued to a connection; flow control; the byte seam's core side
//!   outbound.rs    one connection's outbound queue and the Transmit it lends
//!   presence.rs    handshake, channel membership, takeovers, ghosts
//!   overflow.rs    presence under the watermark: dropped events, the PRESENCE_OVERFLOW marker
//!   channel.rs     receive windows, the ready and waiting FIFOs
//!   request/       request/reply: routing (mod.rs) and one request's state machine (state.rs)
//!   broadcast.rs   broadcasts and their acks
//!   heartbeat.rs   liveness: pings and the silent-connection close
//!   scope.rs       request ids scoped per sender: routes and aliases
//!   shutdown.rs    graceful shutdown
//!   store.rs       generation-checked slabs (connections keyed by ConnId itself)
//!   invariants.rs  the cross-structure checks the tests run after every step
//! ```
//!
//! # Invariants (checked by [`Router::check_invariants`] in tests)
//! - A request is in exactly one state — Queued (in its channel's waiting FIFO), Assigned or
//!   Responding (held by exactly one receiver) — and its frames reach that receiver only.
//! - Every live request and broadcast has exactly one armed timer; when it ends, the timer is
//!   removed, its id is forgotten and every connection's list of streams forgets it.
//! - A receiver never holds more requests than its window, and takes none while congested (its
//!   queue went over the high watermark and has not been written down to the low one).
//! - Every queued frame of a request to its receiver is tagged with the request; a backed-up
//!   queue holds those of ended requests only until the next purge (`send.rs`, `outbound.rs`).
//! - A request or broadcast naming a departed connection is in the cleanup queue, ended a
//!   budget per turn (`lifecycle.rs`); [`Router::poll_timeout`] is "now" while it is not empty.
//! - Queues, held frames and the I/O layer's read buffers add up to at most
//!   `max_buffered_bytes`, plus one frame per connection whose input was under way when it was
//!   crossed; connections paused by the budget are exactly `budget_waiters` (`send.rs`).
//! - A peer owing a PRESENCE_OVERFLOW marker gets no presence frame (`overflow.rs`).
//! - When every connection has been disconnected and the cleanup has run, every count in
//!   [`RouterStats`] is zero.

mod admission;
mod broadcast;
mod channel;
mod connection;
mod dispatch;
mod half_close;
mod heartbeat;
mod invariants;
mod lifecycle;
mod outbound;
mod overflow;
mod presence;
mod request;
mod scope;
mod send;
mod shutdown;
mod store;

#[cfg(test)]
mod tests;

pub use half_close::{ReadClosed, HALF_CLOSE_PROBE_SEQUENCE};
pub use outbound::{Transmit, MAX_TRANSMIT_SLICES};

use hashbrown::HashMap;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::auth::Tokens;
use crate::ids::{ChannelId, ClientId, ConnId, RequestId};
use crate::pool::BufferPool;
use crate::protocol::{ErrorCode, DEFAULT_MAX_PAYLOAD};
use crate::wheel::{Elapsed, TimerKey, TimerWheel};
use broadcast::Broadcast;
use channel::Channel;
use connection::Connection;
use request::Request;
use store::{Key, Store};

/// Limits and timeouts of the routing core. `Default` gives the documented defaults.
#[derive(Clone, Debug)]
pub struct RouterConfig {
    /// Largest payload of one frame (advertised in the welcome; enforced by the decoder).
    pub max_payload: u32,
    /// Timeout of a request or broadcast whose start says `timeout_ms = 0`.
    pub default_timeout: Duration,
    /// Longer requested timeouts are clamped to this.
    pub max_timeout: Duration,
    /// When a connection's outbound queue holds more than this, producers feeding it are paused
    /// and broadcast copies to it are dropped.
    pub high_watermark: usize,
    /// Paused producers resume when the queue is written down to this.
    pub low_watermark: usize,
    /// Bytes of request frames one connection may have held by the broker while its requests
    /// wait for a receiver; beyond it the connection is not read until they are assigned.
    pub max_held_bytes: usize,
    /// Requests that may wait for a receiver on one channel; more get `LimitExceeded`.
    pub max_waiting_per_channel: usize,
    /// A connection silent this long is pinged; zero disables heartbeats.
    pub heartbeat_interval: Duration,
    /// Pings a silent connection may leave unanswered; at the next silent interval it is closed.
    pub heartbeat_misses: u32,
    /// How long a departed peer stays present for the others before PEER_LEFT goes out; a
    /// reconnect with the same client id within it is invisible. Zero: PEER_LEFT at once.
    pub presence_grace: Duration,
    /// Channels that may exist at once (a channel lives while it has members or ghosts); a HELLO
    /// that would create one more gets `LimitExceeded` (nil request id) and is closed.
    pub max_channels: usize,
    /// Peers of one channel (members and ghosts); a HELLO that would add one more gets
    /// `LimitExceeded` (nil request id) and is closed. A takeover or a ghost's return adds none.
    pub max_peers_per_channel: usize,
    /// Requests and broadcasts one connection may have in flight as their sender; one more START
    /// gets `LimitExceeded` for that request id, and the connection stays open.
    pub max_in_flight_per_connection: usize,
    /// Requests and broadcasts in flight in the whole broker; one more START gets
    /// `LimitExceeded` for that request id, and the connection stays open.
    pub max_requests_in_flight: usize,
    /// Bytes the broker may hold for its clients, broker-wide: outbound queues, frames of
    /// waiting requests, and read buffers (reported by the I/O layer with
    /// [`Router::set_read_buffered`]). Over it, a connection whose input adds bytes is paused,
    /// new requests and broadcasts get `LimitExceeded`, and a broadcast drops the peers it
    /// would copy a frame to; paused connections resume at seven eighths of it (see `send.rs`).
    pub max_buffered_bytes: usize,
    /// A connection that has not completed its handshake this long after its accept is closed
    /// with `HandshakeRequired` (slowloris); zero disables the limit.
    pub handshake_timeout: Duration,
    /// Connections awaiting their hello (unauthenticated) at once; when one more is accepted,
    /// the oldest of them gets `HandshakeRequired` and is closed (see `admission.rs`). At least 1.
    pub max_unauthenticated: usize,
    /// Access tokens a HELLO must carry (its payload) to join a channel; empty: none needed.
    /// A missing or wrong token gets `Unauthorized` and is closed before anything is learnt
    /// about the channel.
    pub tokens: Tokens,
}

impl RouterConfig {
    /// The most peers a channel may have when frames carry at most `max_payload` bytes: every
    /// peer list the broker sends (WELCOME, a PEERS answer, BROADCAST_INCOMPLETE) names the
    /// other peers — at most this minus one — in one frame, with room for its fixed fields
    /// ([`PEER_LIST_OVERHEAD`](crate::protocol::PEER_LIST_OVERHEAD)). 0 when `max_payload` cannot
    /// carry even an empty list.
    pub fn max_peers_for_payload(max_payload: u32) -> usize {
        if (max_payload as usize) < crate::protocol::PEER_LIST_OVERHEAD {
            return 0;
        }
        crate::protocol::peers_that_fit(max_payload) + 1
    }
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            max_payload: DEFAULT_MAX_PAYLOAD,
            default_timeout: Duration::from_secs(30),
            max_timeout: Duration::from_secs(3600),
            high_watermark: 4 << 20,
            low_watermark: 1 << 20,
            max_held_bytes: 4 << 20,
            max_waiting_per_channel: 4096,
            heartbeat_interval: Duration::from_secs(10),
            heartbeat_misses: 3,
            presence_grace: Duration::from_millis(1_000),
            // Each limit is far above what a legitimate deployment of one single-threaded
            // broker uses, and low enough that one client cannot make the broker's state (and
            // every HELLO's WELCOME: 16 bytes per peer, 160 KB at 10 000) grow without bound.
            max_channels: 100_000,
            max_peers_per_channel: 10_000,
            max_in_flight_per_connection: 10_000,
            // About 300 bytes of state each (the request, its id in the stream map, its timer,
            // two stream-set entries): 100 000 cost ~30 MB whatever the clients do, where the
            // product of the per-connection limits (10 000 connections × 10 000) allowed ~28 GB.
            // Ten clients at their own limit, or 100 000 one-at-a-time clients, still fit.
            max_requests_in_flight: 100_000,
            // 512 MiB: what a broker may hold before it says no, whatever 10 000 connections do
            // (each could otherwise hold its watermark, its held allowance and a read buffer:
            // ~9 MiB each, ~90 GB). 128 receivers at their high watermark at once still fit;
            // a box with less memory to spare sets it lower (RELIABILITY.md, worst-case memory).
            max_buffered_bytes: 512 << 20,
            // The heartbeat's default interval: an honest client sends HELLO right after connect.
            handshake_timeout: Duration::from_secs(10),
            // An honest client is unauthenticated for one round trip: 256 handshakes in flight
            // at once is far above any real connect storm of one broker, and 256 stalled
            // connections cost ~1 MiB at most (4 KiB each, see `MAX_HELLO_PAYLOAD`).
            max_unauthenticated: 256,
            tokens: Tokens::default(),
        }
    }
}

/// What the router asks of the I/O layer. Drain with [`Router::poll_output`] after every input.
#[must_use]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Output {
    /// The connection has bytes queued: write them with [`Router::poll_transmit`] and
    /// [`Router::handle_written`] (until `poll_transmit` says `None`, or the socket is full).
    Transmit(ConnId),
    /// The connection must be closed once its queued bytes (an error frame) are written; then
    /// call [`Router::handle_disconnect`]. The router ignores its input from now on.
    Close(ConnId),
    /// Reading from the connection was paused and may resume: process its buffered input and
    /// read its socket again (readiness will not be re-signalled for data already there).
    Resume(ConnId),
}

/// Live state counts and cumulative counters. After every client has disconnected, every live
/// count is zero.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct RouterStats {
    /// Connections known to the router (any state).
    pub connections: usize,
    /// Channels with at least one member.
    pub channels: usize,
    /// Requests waiting for a receiver.
    pub pending_requests: usize,
    /// Requests held by a receiver.
    pub assignments: usize,
    /// Broadcasts in flight.
    pub broadcasts: usize,
    /// Armed timers.
    pub armed_timers: usize,
    /// Bytes held: outbound queues plus frames of waiting requests.
    pub buffered_bytes: usize,
    /// Connections whose reading is paused by flow control.
    pub paused_connections: usize,
    /// Cumulative: frames dropped because their request had ended or never existed.
    pub late_frames_dropped: u64,
    /// Cumulative: requests that timed out (no receiver, or no complete response).
    pub timeouts: u64,
    /// Cumulative: times a producer was paused by flow control.
    pub backpressure_pauses: u64,
    /// Departed peers inside their presence grace period.
    pub ghosts: usize,
    /// Cumulative: connections replaced by a newer one with the same client id.
    pub takeovers: u64,
    /// Cumulative: handshakes refused.
    pub handshake_failures: u64,
    /// Connections awaiting their hello (unauthenticated).
    pub unauthenticated: usize,
    /// Cumulative: unauthenticated connections closed to make room for a newer one.
    pub unauthenticated_evicted: u64,
    /// Cumulative: channels with only departed peers (ghosts) dropped before their grace
    /// period ended, to make room for a new channel at `max_channels`.
    pub ghost_channels_evicted: u64,
    /// Cumulative: frames queued to connections.
    pub frames_out: u64,
    /// Cumulative: bytes written to connections.
    pub bytes_out: u64,
    /// Cumulative: error frames sent.
    pub errors_sent: u64,
    /// Connections paused because the broker is over its memory budget (`max_buffered_bytes`).
    pub budget_paused: usize,
    /// Cumulative: presence frames not queued to a peer over its watermark (it gets one
    /// PRESENCE_OVERFLOW marker instead once it catches up).
    pub presence_dropped: u64,
    /// Requests and broadcasts of departed connections not yet ended (the amortised cleanup,
    /// a few hundred per loop turn).
    pub pending_cleanup: usize,
    /// Cumulative: bytes of ended requests dropped from their receivers' queues before they
    /// started on the wire.
    pub dead_bytes_dropped: u64,
}

/// A request or a broadcast, as named by a request id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum StreamKey {
    Request(Key),
    Broadcast(Key),
}

/// What a timer in the wheel is for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum TimerTarget {
    Request(Key),
    Broadcast(Key),
    /// A connection's liveness check (see `heartbeat.rs`).
    Heartbeat(ConnId),
    /// The deadline of a connection's handshake (see `presence.rs`).
    Handshake(ConnId),
    /// A departed peer's grace period (see `presence.rs`).
    Ghost(ChannelId, ClientId),
    /// The deadline of a graceful shutdown (see [`Router::begin_shutdown`]).
    ShutdownDeadline,
}

/// The routing core. See the module docs for the calling contract.
pub struct Router {
    config: RouterConfig,
    /// Instant of tick 0 of the wheel: ticks are milliseconds since it.
    epoch: Instant,
    conns: Store<Connection, ConnId>,
    channels: HashMap<ChannelId, Channel>,
    requests: Store<Request>,
    broadcasts: Store<Broadcast>,
    /// Every request and broadcast in flight, by its route: the id its receiver and peers see
    /// (see `scope.rs`).
    streams: HashMap<RequestId, StreamKey>,
    /// Streams whose route is not their sender's id, by (sender, id) (see `scope.rs`).
    aliases: HashMap<(ConnId, RequestId), StreamKey>,
    wheel: TimerWheel<TimerTarget>,
    outputs: VecDeque<Output>,
    /// Sum of every outbound queue's length, kept incrementally.
    outbound_bytes: usize,
    /// Sum of every waiting request's held bytes.
    held_bytes: usize,
    counters: RouterStats,
    /// The time given with the latest input: what internal cleanups that have no `now` of their
    /// own (a protocol error's release) take as the present.
    now: Instant,
    /// A graceful shutdown is under way (see [`Router::begin_shutdown`]).
    shutting_down: bool,
    /// The connection whose frame is being handled, while [`Router::handle_frame`] runs: what
    /// the broker queues to it then answers its own input (see [`Router::send`]).
    input: Option<ConnId>,
    /// The shutdown deadline's timer, while shutting down.
    shutdown_timer: Option<TimerKey>,
    /// Error frames sent, by code.
    errors_by_code: HashMap<u16, u64>,
    /// Outbound buffers of connections with nothing queued (see `pool.rs`).
    outbound_pool: BufferPool,
    /// Admission (see `admission.rs`).
    admission: admission::Admission,
    /// Scratch set of one queue purge (see `outbound.rs`); kept for its capacity.
    purge_scratch: hashbrown::HashSet<Key>,
    /// Streams of departed connections still to end, with the departed connection (see
    /// `lifecycle.rs`, "Amortised cleanup").
    cleanup: VecDeque<(StreamKey, ConnId)>,
    /// Cleanup steps left at `cleanup_instant`.
    cleanup_budget: usize,
    cleanup_instant: Instant,
    /// Bytes held in the I/O layer's read buffers (its last report).
    read_buffered: usize,
    /// Connections paused because the broker was over `max_buffered_bytes`.
    budget_waiters: Vec<ConnId>,
    /// Connections that owe a PRESENCE_OVERFLOW marker (see `overflow.rs`).
    presence_overflowed: Vec<ConnId>,
}

impl Router {
    /// A router with the given configuration; `now` becomes its epoch. A `max_peers_per_channel`
    /// above what one frame of `max_payload` can list
    /// ([`RouterConfig::max_peers_for_payload`]) is lowered to it, with a warning: the broker
    /// never sends a frame above the max payload it announces (PROTOCOL.md §9.1).
    pub fn new(mut config: RouterConfig, now: Instant) -> Router {
        let fit = RouterConfig::max_peers_for_payload(config.max_payload);
        if config.max_peers_per_channel > fit {
            log::warn!(
                "max_peers_per_channel {} lowered to {fit}: a WELCOME, PEERS or \
                 BROADCAST_INCOMPLETE frame of max_payload {} bytes lists at most {} peers",
                config.max_peers_per_channel,
                config.max_payload,
                fit.saturating_sub(1)
            );
            config.max_peers_per_channel = fit;
        }
        Router {
            config,
            epoch: now,
            conns: Store::with_capacity(1024),
            channels: HashMap::with_capacity(64),
            requests: Store::with_capacity(1024),
            broadcasts: Store::with_capacity(64),
            streams: HashMap::with_capacity(1024),
            aliases: HashMap::new(),
            wheel: TimerWheel::with_capacity(1024),
            outputs: VecDeque::with_capacity(256),
            outbound_bytes: 0,
            held_bytes: 0,
            counters: RouterStats::default(),
            now,
            shutting_down: false,
            input: None,
            shutdown_timer: None,
            errors_by_code: HashMap::new(),
            // 256 warm buffers of up to 64 KiB: at most 16 MiB retained, whatever the number of
            // connections; new ones start at 4 KiB (dozens of small frames per turn).
            outbound_pool: BufferPool::new(256, 4 * 1024, 64 * 1024),
            admission: admission::Admission::default(),
            purge_scratch: hashbrown::HashSet::new(),
            cleanup: VecDeque::new(),
            cleanup_budget: lifecycle::CLEANUP_PER_TURN,
            cleanup_instant: now,
            read_buffered: 0,
            budget_waiters: Vec::new(),
            presence_overflowed: Vec::new(),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &RouterConfig {
        &self.config
    }

    /// Registers a new connection (awaiting its hello).
    pub fn handle_connect(&mut self, now: Instant) -> ConnId {
        self.now = self.now.max(now);
        let conn = self.conns.insert_with(Connection::new);
        self.arm_heartbeat(conn, now);
        self.arm_handshake_timeout(conn, now);
        self.admit_unauthenticated(conn);
        conn
    }

    /// The next thing the I/O layer must do, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`Router::handle_timeout`] must next be called, if any timer is armed; the latest
    /// input's time (at once) while the cleanup of departed connections has work left.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.cleanup.is_empty() {
            return Some(self.now);
        }
        self.wheel
            .next_deadline()
            .map(|tick| self.epoch + Duration::from_millis(tick))
    }

    /// Fires every timer due at `now` and continues the cleanup of departed connections.
    /// Calling it early, or twice, does nothing harmful.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = self.now.max(now);
        self.run_cleanup();
        self.send_presence_markers();
        let tick = self.tick(now);
        while let Some(target) = self.wheel.poll_expired(tick) {
            match target {
                TimerTarget::Request(key) => self.expire_request(key, now),
                TimerTarget::Broadcast(key) => self.expire_broadcast(key),
                TimerTarget::Heartbeat(key) => self.expire_heartbeat(key, now),
                TimerTarget::Handshake(key) => self.expire_handshake(key),
                TimerTarget::Ghost(channel, client) => self.expire_ghost(channel, client),
                TimerTarget::ShutdownDeadline => self.expire_shutdown(now),
            }
        }
        self.close_idle_for_shutdown();
    }

    /// True when the I/O layer must not feed frames from `conn` now (flow control, or the
    /// connection is closing). Frames already decoded stay buffered in the I/O layer; an
    /// [`Output::Resume`] says when to continue.
    pub fn is_read_paused(&self, conn: ConnId) -> bool {
        match self.conns.get(conn) {
            Some(c) => c.is_read_paused(),
            None => true,
        }
    }

    /// "channel C client X" for a connection that completed its handshake, for log lines.
    pub fn describe(&self, conn: ConnId) -> String {
        match self.conns.get(conn) {
            Some(c) => c.describe(),
            None => format!("{conn} (closed)"),
        }
    }

    /// The connection-fatal error the broker closed `conn` with, if it did (for the close log
    /// line); `None` for a connection closed by its peer, or unknown.
    pub fn close_cause(&self, conn: ConnId) -> Option<ErrorCode> {
        self.conns.get(conn).and_then(|c| c.close_code())
    }

    /// Records the peer's address of a connection, for its log lines.
    pub fn set_peer_addr(&mut self, conn: ConnId, addr: std::net::SocketAddr) {
        if let Some(c) = self.conns.get_mut(conn) {
            c.set_peer_addr(addr);
        }
    }

    /// Error frames sent so far, by code (for metrics).
    pub fn errors_sent(&self) -> Vec<(ErrorCode, u64)> {
        let mut counts: Vec<(ErrorCode, u64)> = self
            .errors_by_code
            .iter()
            .filter_map(|(code, n)| ErrorCode::try_from(*code).ok().map(|c| (c, *n)))
            .collect();
        counts.sort_by_key(|(code, _)| *code as u16);
        counts
    }

    /// Capacity held by the pool of idle outbound buffers (bounded; see `pool.rs`).
    pub fn pooled_bytes(&self) -> usize {
        self.outbound_pool.retained_bytes()
    }

    /// Members of each channel (for metrics): `(channel, members)`.
    pub fn channel_sizes(&self) -> Vec<(ChannelId, usize)> {
        self.channels
            .iter()
            .map(|(id, c)| (*id, c.members.len()))
            .collect()
    }

    /// The `n` channels with the most members, most first (ties: by id), for metrics: one pass
    /// over the channels with a heap of `n`, so O(channels × log n) time and O(n) memory.
    pub fn busiest_channels(&self, n: usize) -> Vec<(ChannelId, usize)> {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        if n == 0 {
            return Vec::new();
        }
        // A min-heap of the best so far: its top is the first to give way.
        let mut best: BinaryHeap<Reverse<(usize, Reverse<ChannelId>)>> =
            BinaryHeap::with_capacity(n + 1);
        for (id, channel) in &self.channels {
            best.push(Reverse((channel.members.len(), Reverse(*id))));
            if best.len() > n {
                best.pop();
            }
        }
        // Ascending order of `Reverse` is descending order of (members, then lower id first).
        best.into_sorted_vec()
            .into_iter()
            .map(|Reverse((members, Reverse(id)))| (id, members))
            .collect()
    }

    /// Live counts and cumulative counters.
    pub fn stats(&self) -> RouterStats {
        let mut stats = self.counters;
        stats.connections = self.conns.len();
        stats.channels = self.channels.len();
        stats.pending_requests = self.requests.iter().filter(|(_, r)| r.is_queued()).count();
        stats.assignments = self.requests.len() - stats.pending_requests;
        stats.broadcasts = self.broadcasts.len();
        stats.armed_timers = self.wheel.len();
        stats.buffered_bytes = self.outbound_bytes + self.held_bytes;
        stats.budget_paused = self.budget_waiters.len();
        stats.paused_connections = self
            .conns
            .iter()
            .filter(|(_, c)| c.is_read_paused())
            .count();
        stats.ghosts = self.ghost_timers();
        stats.unauthenticated = self.admission.unauthenticated;
        stats.pending_cleanup = self.cleanup.len();
        stats
    }

    // ----- helpers shared by the concern modules -----

    /// Milliseconds since the epoch, rounded down (the wheel's notion of "now").
    fn tick(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// The wheel tick of `now + timeout`, rounded up so a timer never fires early.
    fn deadline_tick(&self, now: Instant, timeout: Duration) -> u64 {
        let at = now.saturating_duration_since(self.epoch) + timeout;
        let ms = at.as_millis() as u64;
        if Duration::from_millis(ms) < at {
            ms + 1
        } else {
            ms
        }
    }

    /// The effective timeout of a stream whose start carried `timeout_ms`.
    fn effective_timeout(&self, timeout_ms: u32) -> Duration {
        if timeout_ms == 0 {
            self.config.default_timeout
        } else {
            Duration::from_millis(u64::from(timeout_ms)).min(self.config.max_timeout)
        }
    }
}

/// A transition that does not apply to a connection's or a request's current state: a router
/// bug, reported by the caller (debug line, debug assertion), never acted upon.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct StateError {
    /// The state the connection was in.
    pub(super) state: &'static str,
    /// The transition that was asked for.
    pub(super) event: &'static str,
}

impl std::fmt::Display for StateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} does not apply in state {}", self.event, self.state)
    }
}

/// Who sent a frame: the connection and what its handshake established.
#[derive(Clone, Copy, Debug)]
struct Peer {
    conn: ConnId,
    client: ClientId,
    channel: ChannelId,
}

/// Why reading from a connection is paused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum PauseCause {
    /// A connection it feeds has more than the high watermark queued.
    Consumer,
    /// Its requests waiting for a receiver hold more than `max_held_bytes`.
    Held,
    /// The broker holds more than `max_buffered_bytes` and its input added to it.
    Budget,
}

/// Arms a timer at `tick`, or at the next tick when `tick` is not in the wheel's future (a
/// request is never created with an already elapsed deadline, so that is only a safety net).
fn insert_timer(wheel: &mut TimerWheel<TimerTarget>, tick: u64, target: TimerTarget) -> TimerKey {
    let mut tick = tick.max(wheel.elapsed() + 1);
    let mut target = target;
    loop {
        match wheel.insert(tick, target) {
            Ok(key) => return key,
            Err(Elapsed(back)) => {
                target = back;
                tick = wheel.elapsed() + 1;
            }
        }
    }
}
