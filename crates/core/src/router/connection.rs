//! The router's view of one connection: its lifecycle, its credit as a receiver, what it takes
//! part in, why its reading is paused, and its outbound queue.
//!
//! ```text
//!   AwaitingHello ──hello ok──▶ Open { channel, client } ──takeover──▶ Replaced { channel, client }
//!    { deadline }                     │                                      │
//!        │                            └──protocol error, shutdown──┐         │ (its close follows)
//!        └──protocol error, handshake timeout, shutdown──────────▶ Closing { identity } ◀─┘
//!                                                                     │
//!                        disconnect (from any state) ───────────────▶ (removed)
//! ```
//! - `AwaitingHello { deadline }`: waits for its HELLO until the handshake timer `deadline`
//!   fires (none when the handshake timeout is off).
//! - `Open`: a member of `channel` as `client`; the only state that receives requests.
//! - `Replaced`: a newer connection took over its client id; it is leaving its channel silently
//!   (no PEER_LEFT, no ghost: its successor is the same peer). Transient: the router closes it in
//!   the same call.
//! - `Closing { identity }`: a fatal error frame may be queued and the I/O layer was asked to
//!   close it; all its requests, credit and presence were already released, only its outbound
//!   queue is kept until the I/O layer reports the disconnect. `identity` keeps the channel and
//!   client of its handshake for log lines.
//!
//! Removal is the terminal state: the connection's [`ConnId`] is never valid again (generation
//! check), so closing twice is a no-op. Every transition is a method that matches on the current
//! state; one that does not apply returns a [`StateError`] (never a silent `_ => {}`), and every
//! change goes through [`Connection::set_state`], which logs `old => new` at trace.
//!
//! # Invariants
//! - Only `AwaitingHello` holds a handshake timer; leaving it hands the timer back to the caller,
//!   which removes it from the wheel.
//! - `in_flight <= window` whenever the window was not lowered under it (a lowered window only
//!   stops new assignments), and both are zero once it leaves `Open`.
//! - `in_ready_queue` is true iff its id is in its channel's ready FIFO (possibly stale there).
//! - `congested` is set when its outbound queue goes over the high watermark and cleared only
//!   when a write takes it to the low watermark or below: a congested receiver has no free slot
//!   (it is not "ready"), whatever its window says.

use hashbrown::HashSet;

use super::heartbeat::Liveness;
use super::outbound::OutboundQueue;
use super::{PauseCause, StateError, StreamKey};
use crate::ids::{ChannelId, ClientId, ConnId};
use crate::wheel::TimerKey;

/// Where a connection is in its lifecycle; see the module docs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ConnState {
    /// Connected; waiting for its hello until `deadline` (none: no handshake timeout).
    AwaitingHello { deadline: Option<TimerKey> },
    /// Handshake done: a member of `channel` as `client`.
    Open {
        channel: ChannelId,
        client: ClientId,
    },
    /// A newer connection took over its client id: it leaves its channel silently.
    Replaced {
        channel: ChannelId,
        client: ClientId,
    },
    /// Waiting for the I/O layer to close it; `identity` is its handshake's, if it had one.
    Closing {
        identity: Option<(ChannelId, ClientId)>,
    },
}

impl ConnState {
    fn name(&self) -> &'static str {
        match self {
            ConnState::AwaitingHello { .. } => "AwaitingHello",
            ConnState::Open { .. } => "Open",
            ConnState::Replaced { .. } => "Replaced",
            ConnState::Closing { .. } => "Closing",
        }
    }
}

/// Why reading is paused: any cause pauses it, it resumes when none is left.
#[derive(Clone, Copy, Default, Debug)]
struct ReadPause {
    /// A connection it feeds has more than the high watermark queued.
    by_consumer: bool,
    /// Its requests waiting for a receiver hold more than `max_held_bytes`.
    by_held: bool,
    /// The broker is over its memory budget and this connection's input added to it.
    by_budget: bool,
}

pub(super) struct Connection {
    id: ConnId,
    state: ConnState,
    outbound: OutboundQueue,
    /// The receive window: how many requests it is ready to hold at once.
    window: u32,
    /// Requests it holds as receiver.
    in_flight: u32,
    /// True while it is in its channel's FIFO of ready receivers.
    in_ready_queue: bool,
    /// Every request and broadcast it takes part in (as sender, receiver or broadcast peer).
    /// A set, not a list: a receiver may hold many thousands (its window), and each ending
    /// request removes itself — with a linear search that made mass cleanup quadratic.
    streams: HashSet<StreamKey>,
    /// Connections paused because this one's outbound queue went over the high watermark.
    waiters: Vec<ConnId>,
    /// Bytes of its requests' frames held while they wait for a receiver.
    held_bytes: usize,
    pause: ReadPause,
    /// What the heartbeat knows of it (see `heartbeat.rs`).
    liveness: Liveness,
    /// Requests and broadcasts it started that are still in flight (bounded by
    /// `max_in_flight_per_connection`).
    sent_in_flight: usize,
    /// Its outbound queue went over the high watermark and has not been written down to the
    /// low one since: it takes no new request (see `send.rs`).
    congested: bool,
    /// Presence frames were dropped for it: it gets a PRESENCE_OVERFLOW marker once it has
    /// caught up, and no presence frame until then (see `overflow.rs`).
    owes_presence_marker: bool,
    /// Upper bound on the queue pieces that belong to requests that ended since the last purge
    /// of its queue (see `send.rs`, `purge_dead_frames`).
    dead_pieces: usize,
    /// The peer's address, for log lines only (given by the I/O layer).
    peer_addr: Option<std::net::SocketAddr>,
    /// It shut its write side and is kept open for the answers to what it sent
    /// (`half_close.rs`).
    read_closed: bool,
    /// The error the broker closed it with, for its close log line.
    close_code: Option<crate::protocol::ErrorCode>,
}

impl Connection {
    pub(super) fn new(id: ConnId) -> Connection {
        Connection {
            id,
            state: ConnState::AwaitingHello { deadline: None },
            outbound: OutboundQueue::default(),
            window: 0,
            in_flight: 0,
            in_ready_queue: false,
            streams: HashSet::new(),
            waiters: Vec::new(),
            held_bytes: 0,
            pause: ReadPause::default(),
            liveness: Liveness::default(),
            sent_in_flight: 0,
            congested: false,
            owes_presence_marker: false,
            dead_pieces: 0,
            peer_addr: None,
            read_closed: false,
            close_code: None,
        }
    }

    pub(super) fn id(&self) -> ConnId {
        self.id
    }

    // ----- lifecycle -----

    /// The one place the state changes.
    fn set_state(&mut self, state: ConnState) {
        log::trace!("{}: {} => {}", self.id, self.state.name(), state.name());
        self.state = state;
    }

    fn refuse(&self, event: &'static str) -> StateError {
        StateError {
            state: self.state.name(),
            event,
        }
    }

    /// Records the timer of its handshake deadline.
    pub(super) fn arm_handshake_deadline(&mut self, timer: TimerKey) -> Result<(), StateError> {
        match self.state {
            ConnState::AwaitingHello { deadline: None } => {
                self.state = ConnState::AwaitingHello {
                    deadline: Some(timer),
                };
                Ok(())
            }
            _ => Err(self.refuse("arm_handshake_deadline")),
        }
    }

    /// Its handshake deadline's timer fired: true when it still awaits its hello (close it).
    pub(super) fn handshake_deadline_passed(&mut self) -> bool {
        match self.state {
            ConnState::AwaitingHello { .. } => {
                self.state = ConnState::AwaitingHello { deadline: None };
                true
            }
            // The timer is removed on every way out of AwaitingHello: a late firing is harmless.
            ConnState::Open { .. } | ConnState::Replaced { .. } | ConnState::Closing { .. } => {
                false
            }
        }
    }

    /// The handshake succeeded: `AwaitingHello → Open`. Returns the handshake timer, which the
    /// caller removes from the wheel.
    pub(super) fn open(
        &mut self,
        channel: ChannelId,
        client: ClientId,
    ) -> Result<Option<TimerKey>, StateError> {
        match self.state {
            ConnState::AwaitingHello { deadline } => {
                self.set_state(ConnState::Open { channel, client });
                Ok(deadline)
            }
            _ => Err(self.refuse("open")),
        }
    }

    /// A newer connection took over its client id: `Open → Replaced`.
    pub(super) fn replace(&mut self) -> Result<(), StateError> {
        match self.state {
            ConnState::Open { channel, client } => {
                self.set_state(ConnState::Replaced { channel, client });
                Ok(())
            }
            _ => Err(self.refuse("replace")),
        }
    }

    /// Any state but `Closing` → `Closing`. Returns the handshake timer (if it was still awaiting
    /// its hello), which the caller removes from the wheel.
    ///
    /// # Errors
    /// Already `Closing`: closing is idempotent, the caller does nothing more.
    pub(super) fn close(&mut self) -> Result<Option<TimerKey>, StateError> {
        match self.state {
            ConnState::AwaitingHello { deadline } => {
                self.set_state(ConnState::Closing { identity: None });
                Ok(deadline)
            }
            ConnState::Open { channel, client } | ConnState::Replaced { channel, client } => {
                self.set_state(ConnState::Closing {
                    identity: Some((channel, client)),
                });
                Ok(None)
            }
            ConnState::Closing { .. } => Err(self.refuse("close")),
        }
    }

    /// Removes the handshake timer (the connection is going away); the caller removes it from
    /// the wheel.
    pub(super) fn take_handshake_deadline(&mut self) -> Option<TimerKey> {
        match &mut self.state {
            ConnState::AwaitingHello { deadline } => deadline.take(),
            _ => None,
        }
    }

    /// True while its handshake deadline is armed (for the invariant checks).
    pub(super) fn has_handshake_deadline(&self) -> bool {
        matches!(self.state, ConnState::AwaitingHello { deadline: Some(_) })
    }

    pub(super) fn is_awaiting_hello(&self) -> bool {
        matches!(self.state, ConnState::AwaitingHello { .. })
    }

    pub(super) fn is_closing(&self) -> bool {
        matches!(self.state, ConnState::Closing { .. })
    }

    pub(super) fn is_open(&self) -> bool {
        matches!(self.state, ConnState::Open { .. })
    }

    /// True when a newer connection took over its client id (it leaves its channel silently).
    pub(super) fn is_replaced(&self) -> bool {
        matches!(self.state, ConnState::Replaced { .. })
    }

    /// Channel and client while it is a member of its channel (`Open` or `Replaced`).
    pub(super) fn membership(&self) -> Option<(ChannelId, ClientId)> {
        match self.state {
            ConnState::Open { channel, client } | ConnState::Replaced { channel, client } => {
                Some((channel, client))
            }
            ConnState::AwaitingHello { .. } | ConnState::Closing { .. } => None,
        }
    }

    /// Channel and client of its handshake while `Open`: who may send and receive.
    pub(super) fn open_identity(&self) -> Option<(ChannelId, ClientId)> {
        match self.state {
            ConnState::Open { channel, client } => Some((channel, client)),
            _ => None,
        }
    }

    /// The channel it joined (nil before the handshake and once closing).
    pub(super) fn channel(&self) -> ChannelId {
        self.membership()
            .map_or(ChannelId::NIL, |(channel, _)| channel)
    }

    /// Records the peer's address, for log lines.
    pub(super) fn set_peer_addr(&mut self, addr: std::net::SocketAddr) {
        self.peer_addr = Some(addr);
    }

    /// "conn#3.7 127.0.0.1:5000 channel C client X": who this is, for log lines.
    pub(super) fn describe(&self) -> String {
        let addr = self
            .peer_addr
            .map_or_else(|| String::from("-"), |a| a.to_string());
        let identity = match self.state {
            ConnState::Closing { identity } => identity,
            _ => self.membership(),
        };
        match identity {
            Some((channel, client)) => {
                format!("{} {addr} channel {channel} client {client}", self.id)
            }
            None => format!("{} {addr} (no handshake)", self.id),
        }
    }

    /// The broker closes it with `code` (the first one counts).
    pub(super) fn note_close_code(&mut self, code: crate::protocol::ErrorCode) {
        self.close_code.get_or_insert(code);
    }

    pub(super) fn close_code(&self) -> Option<crate::protocol::ErrorCode> {
        self.close_code
    }

    /// It shut its write side (`half_close.rs`); never undone.
    pub(super) fn set_read_closed(&mut self) {
        self.read_closed = true;
    }

    pub(super) fn is_read_closed(&self) -> bool {
        self.read_closed
    }

    // ----- flow control -----

    pub(super) fn is_read_paused(&self) -> bool {
        self.pause.by_consumer || self.pause.by_held || self.pause.by_budget || self.is_closing()
    }

    /// True while the broker's memory budget pauses it.
    pub(super) fn is_paused_by_budget(&self) -> bool {
        self.pause.by_budget
    }

    /// Adds a cause of pause. Returns true when this cause was not already in force.
    pub(super) fn pause(&mut self, cause: PauseCause) -> bool {
        let flag = match cause {
            PauseCause::Consumer => &mut self.pause.by_consumer,
            PauseCause::Held => &mut self.pause.by_held,
            PauseCause::Budget => &mut self.pause.by_budget,
        };
        !std::mem::replace(flag, true)
    }

    /// Lifts a cause of pause. Returns true when that made reading resume.
    pub(super) fn unpause(&mut self, cause: PauseCause) -> bool {
        let was_paused = self.is_read_paused();
        match cause {
            PauseCause::Consumer => self.pause.by_consumer = false,
            PauseCause::Held => self.pause.by_held = false,
            PauseCause::Budget => self.pause.by_budget = false,
        }
        was_paused && !self.is_read_paused()
    }

    pub(super) fn outbound(&self) -> &OutboundQueue {
        &self.outbound
    }

    pub(super) fn outbound_mut(&mut self) -> &mut OutboundQueue {
        &mut self.outbound
    }

    /// `producer` was paused because this connection's queue is over the high watermark.
    pub(super) fn add_waiter(&mut self, producer: ConnId) {
        self.waiters.push(producer);
    }

    /// Forgets `producer` as a waiter; true when it was one.
    pub(super) fn remove_waiter(&mut self, producer: ConnId) -> bool {
        match self.waiters.iter().position(|w| *w == producer) {
            Some(pos) => {
                self.waiters.swap_remove(pos);
                true
            }
            None => false,
        }
    }

    pub(super) fn has_waiters(&self) -> bool {
        !self.waiters.is_empty()
    }

    /// Takes every waiter out (to resume them); give the vector back with
    /// [`Connection::restore_waiters`] to keep its capacity.
    pub(super) fn take_waiters(&mut self) -> Vec<ConnId> {
        std::mem::take(&mut self.waiters)
    }

    /// Gives back the (emptied) vector taken by [`Connection::take_waiters`].
    pub(super) fn restore_waiters(&mut self, mut waiters: Vec<ConnId>) {
        waiters.clear();
        self.waiters = waiters;
    }

    /// Adds `size` bytes held for its waiting requests; returns the new total.
    pub(super) fn hold(&mut self, size: usize) -> usize {
        self.held_bytes += size;
        self.held_bytes
    }

    /// Gives back `size` held bytes; returns the new total.
    pub(super) fn release_held(&mut self, size: usize) -> usize {
        // INVARIANT: held once per frame, released once per frame.
        debug_assert!(size <= self.held_bytes, "{}: held bytes underflow", self.id);
        self.held_bytes = self.held_bytes.saturating_sub(size);
        self.held_bytes
    }

    // ----- credit as a receiver -----

    pub(super) fn window(&self) -> u32 {
        self.window
    }

    pub(super) fn set_window(&mut self, window: u32) {
        self.window = window;
    }

    pub(super) fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// True when it can take one more request: open, below its window, and not congested.
    pub(super) fn has_free_slot(&self) -> bool {
        self.is_open() && self.in_flight < self.window && !self.congested
    }

    pub(super) fn is_congested(&self) -> bool {
        self.congested
    }

    /// Sets or clears the congestion mark; returns the previous value.
    pub(super) fn set_congested(&mut self, congested: bool) -> bool {
        std::mem::replace(&mut self.congested, congested)
    }

    pub(super) fn owes_presence_marker(&self) -> bool {
        self.owes_presence_marker
    }

    pub(super) fn set_owes_presence_marker(&mut self, owes: bool) {
        self.owes_presence_marker = owes;
    }

    /// Notes `pieces` more queue pieces of requests that ended; returns the new total.
    pub(super) fn add_dead_pieces(&mut self, pieces: usize) -> usize {
        self.dead_pieces += pieces;
        self.dead_pieces
    }

    /// Its queue was purged: no known dead piece is left.
    pub(super) fn reset_dead_pieces(&mut self) {
        self.dead_pieces = 0;
    }

    /// It holds one more request.
    pub(super) fn take_request(&mut self) {
        self.in_flight += 1;
    }

    /// A request it held has ended.
    pub(super) fn end_request(&mut self) {
        // INVARIANT: counted up once per assignment, down once when that request ends.
        debug_assert!(self.in_flight > 0, "{}: in-flight count underflow", self.id);
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// Puts it in its channel's ready FIFO if it has a free slot and is not there yet: true when
    /// the caller must push its id.
    pub(super) fn enter_ready_queue(&mut self) -> bool {
        if self.in_ready_queue || !self.has_free_slot() {
            return false;
        }
        self.in_ready_queue = true;
        true
    }

    /// Its id was taken off (or dropped from) its channel's ready FIFO.
    pub(super) fn leave_ready_queue(&mut self) {
        self.in_ready_queue = false;
    }

    // ----- streams -----

    pub(super) fn streams(&self) -> &HashSet<StreamKey> {
        &self.streams
    }

    pub(super) fn add_stream(&mut self, stream: StreamKey) {
        self.streams.insert(stream);
    }

    /// O(1): see `streams`.
    pub(super) fn forget_stream(&mut self, stream: StreamKey) {
        self.streams.remove(&stream);
    }

    /// Everything it took part in, taken out, and its credit withdrawn: what a departure ends.
    pub(super) fn release(&mut self) -> HashSet<StreamKey> {
        self.window = 0;
        std::mem::take(&mut self.streams)
    }

    pub(super) fn sent_in_flight(&self) -> usize {
        self.sent_in_flight
    }

    /// It started one more request or broadcast.
    pub(super) fn start_sending(&mut self) {
        self.sent_in_flight += 1;
    }

    /// A request or broadcast it started has ended.
    pub(super) fn end_sending(&mut self) {
        // INVARIANT: counted up once per stream it started, down once when that stream ends.
        debug_assert!(
            self.sent_in_flight > 0,
            "{}: sent in-flight count underflow",
            self.id
        );
        self.sent_in_flight = self.sent_in_flight.saturating_sub(1);
    }

    // ----- liveness -----

    pub(super) fn liveness(&self) -> &Liveness {
        &self.liveness
    }

    pub(super) fn liveness_mut(&mut self) -> &mut Liveness {
        &mut self.liveness
    }
}
