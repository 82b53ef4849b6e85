//! The router's view of one connection.
//!
//! ```text
//!   AwaitingHello ──hello ok──▶ Open { channel, client } ──protocol error──▶ Closing
//!        │                            │                                       │
//!        └──protocol error──▶ Closing  └──────────── disconnect ──────────────┴──▶ (removed)
//! ```
//! `Closing` means a fatal error frame is queued and the I/O layer was asked to close; all the
//! connection's requests, credit and presence were already released, only its outbound queue is
//! kept until the I/O layer reports the disconnect. Removal is the terminal state: the
//! connection's key is never valid again (generation check), so closing twice is a no-op.

use super::outbound::OutboundQueue;
use super::StreamKey;
use crate::ids::{ChannelId, ClientId, ConnId};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum ConnState {
    /// Connected; waiting for its hello.
    AwaitingHello,
    /// Handshake done: a member of `channel` as `client`.
    Open {
        channel: ChannelId,
        client: ClientId,
    },
    /// A fatal error is queued; waiting for the I/O layer to close it.
    Closing,
}

pub(super) struct Connection {
    pub(super) id: ConnId,
    pub(super) state: ConnState,
    pub(super) outbound: OutboundQueue,
    /// The receive window: how many requests it is ready to hold at once.
    pub(super) window: u32,
    /// Requests it holds as receiver.
    pub(super) in_flight: u32,
    /// True while it is in its channel's FIFO of ready receivers.
    pub(super) in_ready_queue: bool,
    /// Every request and broadcast it takes part in (as sender, receiver or broadcast peer).
    /// Small in practice (bounded by the window and the requests it has outstanding); linear
    /// removal is cheaper than a map at these sizes.
    pub(super) streams: Vec<StreamKey>,
    /// Connections paused because this one's outbound queue went over the high watermark.
    pub(super) waiters: Vec<ConnId>,
    /// Bytes of its requests' frames held while they wait for a receiver.
    pub(super) held_bytes: usize,
    pub(super) paused_by_consumer: bool,
    pub(super) paused_by_held: bool,
    /// Wheel tick of the last frame received from it.
    pub(super) last_activity: u64,
    /// Wheel tick of the last write that took bytes of its outbound queue: while its reading is
    /// paused, the only sign of life the broker can see (see `heartbeat.rs`).
    pub(super) last_written: u64,
    /// Its armed heartbeat timer (none when heartbeats are off, or while closing).
    pub(super) heartbeat: Option<crate::wheel::TimerKey>,
    /// Its handshake deadline's timer: armed at accept, removed at the handshake or the close
    /// (none when the handshake timeout is off).
    pub(super) handshake_timer: Option<crate::wheel::TimerKey>,
    /// Requests and broadcasts it started that are still in flight (bounded by
    /// `max_in_flight_per_connection`).
    pub(super) sent_in_flight: usize,
    /// Pings sent since it was last heard from.
    pub(super) unanswered_pings: u32,
    /// Tick at which the last ping was sent (a frame at or after it answers it).
    pub(super) pinged_at: u64,
    /// A newer connection took over its client id: it leaves its channel silently.
    pub(super) replaced: bool,
    /// The peer's address, for log lines only (given by the I/O layer).
    pub(super) peer_addr: Option<std::net::SocketAddr>,
    /// Channel and client of its handshake, kept after it closes, for log lines.
    pub(super) identity: Option<(ChannelId, ClientId)>,
}

impl Connection {
    pub(super) fn new(id: ConnId) -> Connection {
        Connection {
            id,
            state: ConnState::AwaitingHello,
            outbound: OutboundQueue::default(),
            window: 0,
            in_flight: 0,
            in_ready_queue: false,
            streams: Vec::new(),
            waiters: Vec::new(),
            held_bytes: 0,
            paused_by_consumer: false,
            paused_by_held: false,
            last_activity: 0,
            last_written: 0,
            heartbeat: None,
            handshake_timer: None,
            sent_in_flight: 0,
            unanswered_pings: 0,
            pinged_at: 0,
            replaced: false,
            peer_addr: None,
            identity: None,
        }
    }

    pub(super) fn set_state(&mut self, state: ConnState) {
        log::trace!("{}: {:?} => {:?}", self.id, self.state, state);
        if let ConnState::Open { channel, client } = state {
            self.identity = Some((channel, client));
        }
        self.state = state;
    }

    /// "conn#3.7 127.0.0.1:5000 channel C client X": who this is, for log lines.
    pub(super) fn describe(&self) -> String {
        let addr = self
            .peer_addr
            .map_or_else(|| String::from("-"), |a| a.to_string());
        match self.identity {
            Some((channel, client)) => {
                format!("{} {addr} channel {channel} client {client}", self.id)
            }
            None => format!("{} {addr} (no handshake)", self.id),
        }
    }

    pub(super) fn is_read_paused(&self) -> bool {
        self.paused_by_consumer || self.paused_by_held || matches!(self.state, ConnState::Closing)
    }

    /// True when it can take one more request.
    pub(super) fn has_free_slot(&self) -> bool {
        matches!(self.state, ConnState::Open { .. }) && self.in_flight < self.window
    }

    /// The channel it joined (nil before the handshake).
    pub(super) fn channel(&self) -> ChannelId {
        match self.state {
            ConnState::Open { channel, .. } => channel,
            _ => ChannelId::NIL,
        }
    }
}
