//! Sans-IO demultiplexing state of one client connection.
//!
//! [`Session`] is fed every frame the broker sends ([`Session::handle_frame`]) and routes it by
//! request id and direction flag to the operation waiting for it. It never touches a socket and
//! never reads a clock; the blocking [`Client`](super::Client) wraps it in a mutex, and the link
//! thread (`link.rs`) feeds it.
//!
//! # Call order
//! After each `handle_frame`, the caller MUST drain [`Session::poll_output`] (frames to write:
//! PONG answers, CANCELs for streams the broker broke) and then [`Session::take_wakeups`] (which
//! application queues gained an item), and act on both after releasing the session lock.
//!
//! This file holds the session's state, the operations' registration and the link's
//! transitions; `recv.rs` routes the broker's frames (the table below); `tests.rs` scripts them.
//!
//! # Routing
//! A request id alone is not enough: when a client gives credit, the broker may assign the
//! client's own request to itself, so one id can be both an outgoing request (we are the sender)
//! and an incoming one (we are the receiver). The direction flag decides:
//!
//! ```text
//! broker frame                         route
//! START/CHUNK/END  REQUEST             incoming request (a new one on START)
//! START/CHUNK/END  REQUEST|BROADCAST   incoming broadcast (assembled here, queued at FINAL)
//! START/CHUNK/END  RESPONSE            outgoing request's response
//! CANCEL           RESPONSE            outgoing request (the receiver cancelled)
//! CANCEL           REQUEST / none      incoming request, else incoming broadcast
//! ACK                                  outgoing broadcast (acked count)
//! ERROR  code <  0x0100                connection-fatal: Err from handle_frame
//! ERROR  code >= 0x0100                outgoing op, else incoming request, else broadcast
//! PING / PONG                          PONG out / ping waiter
//! PEER_JOINED / PEER_LEFT              peer list + presence queue
//! ```
//! Frames for ids nobody tracks (late frames after a cancel, `UNKNOWN_REQUEST` for a finished
//! request) are dropped with a debug log.
//!
//! # Memory
//! - Per-operation streams are unbounded channels (`chan.rs`): the reader never blocks on a slow
//!   consumer (so one slow reader cannot stall every other operation), and a response or request
//!   body the application reads slowly is buffered in full, once, as the received `Bytes`.
//! - Incoming requests queue until `next_request`; the broker bounds them by the receive window.
//! - Incoming broadcasts are assembled in memory (up to the sender's body size) and queued, at
//!   most `broadcast_capacity` of them: beyond that a completed broadcast is dropped without an
//!   ACK, so its sender sees this client in `BroadcastIncomplete`.
//! - Presence events queue up to `presence_capacity`; beyond that the oldest is dropped
//!   ([`Session::peers`] stays exact regardless).
//!
//! # The link
//! The session also tracks the link to the broker (`LinkState`, diagram in `reconnect.rs`):
//! `Connected`, `Reconnecting { attempt }`, `Closed(reason)`. Its transitions are methods fed by
//! the link thread ([`Session::handle_disconnect`], [`Session::handle_attempt_failed`],
//! [`Session::handle_reconnected`], [`Session::close`]); each queues a
//! [`StateChange`](super::StateChange) for the application. Operations register only while
//! `Connected`.
//!
//! # Invariants
//! - A route is removed when its stream ends (FINAL delivered, error delivered, cancel delivered)
//!   or when its owner forgets it, so nothing is delivered after an operation ended.
//! - After [`Session::handle_disconnect`], every route is gone: stream and broadcast routes got
//!   `ConnectionLost`, ping and peer-list waiters see their channel disconnect; the queues of
//!   things the old connection owed an answer for (incoming requests not handed out, broadcasts
//!   not acked) are emptied, since the broker already ended them. Presence events stay.
//! - After [`Session::close`], every route and queue is empty and every `Sender` dropped, so every
//!   blocked `recv` returns at once; registration then fails with the close reason.

use crate::chan::{Receiver, Sender};
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet, VecDeque};

use bytes::{Bytes, BytesMut};
use log::debug;

use super::error::{Error, ProtocolViolation};
use super::reconnect::{ConnectionState, StateChange};
use super::PresenceEvent;
use switchyard_proto::{
    decode_peers, decode_u32, ErrorBody, ErrorCode, Flags, Frame, FrameType, Header,
};
use switchyard_proto::{ChannelId, ClientId, RequestId};

/// One event of a request or response stream, in wire order.
#[derive(Debug)]
pub(crate) enum StreamEvent {
    /// The stream's START: the peer (sender of a request, responder of a response) and the first
    /// bytes.
    Start {
        peer: ClientId,
        data: Bytes,
        is_final: bool,
    },
    /// A later frame's bytes.
    Data { data: Bytes, is_final: bool },
    /// The stream ended abnormally; nothing follows.
    Failed(Error),
}

/// An incoming request waiting for `next_request`: its first events are already in `events`.
#[derive(Debug)]
pub(crate) struct NewRequest {
    pub(crate) id: RequestId,
    pub(crate) sender: ClientId,
    pub(crate) timeout_ms: u32,
    pub(crate) events: Receiver<StreamEvent>,
}

/// A fully received broadcast waiting for `next_broadcast` (which sends its ACK).
#[derive(Debug)]
pub(crate) struct CompletedBroadcast {
    pub(crate) id: RequestId,
    pub(crate) sender: ClientId,
    pub(crate) body: Vec<u8>,
}

/// Which application queues gained items since the last [`Session::take_wakeups`].
#[derive(Clone, Copy, Default, Debug)]
pub(crate) struct Wakeups {
    pub(crate) requests: bool,
    pub(crate) broadcasts: bool,
    pub(crate) presence: bool,
    pub(crate) states: bool,
}

/// Capacities of the application queues (see the module docs, "Memory").
#[derive(Clone, Copy, Debug)]
pub(crate) struct Capacities {
    pub(crate) broadcasts: usize,
    pub(crate) presence: usize,
    /// State changes held for `next_state_change`; beyond this the oldest is dropped.
    pub(crate) states: usize,
}

/// The link to the broker, as the session sees it (diagram in `reconnect.rs`).
#[derive(Debug)]
enum LinkState {
    /// Joined; operations may register.
    Connected,
    /// Lost; the link thread waits for or makes attempt `attempt`.
    Reconnecting { attempt: u32 },
    /// Terminal, with the first close reason.
    Closed(Error),
}

/// An operation we started and the broker answers.
#[derive(Debug)]
enum Outgoing {
    /// A request: waiting for the response START (`next_sequence == None`), then for its frames.
    Request {
        events: Sender<StreamEvent>,
        next_sequence: Option<u32>,
    },
    /// A broadcast: waiting for ACK(count) or an ERROR.
    Broadcast { outcome: Sender<Result<u32, Error>> },
}

/// A request the broker assigned to us.
#[derive(Debug)]
struct Incoming {
    events: Sender<StreamEvent>,
    /// Sequence of the next request frame; `None` once the request's FINAL arrived (the route
    /// stays until we respond, to carry a CANCEL or ERROR).
    next_sequence: Option<u32>,
}

/// A broadcast being received.
#[derive(Debug)]
struct PartialBroadcast {
    sender: ClientId,
    body: BytesMut,
    next_sequence: u32,
}

/// The client id and channel every frame we send carries.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ids {
    pub(crate) client: ClientId,
    pub(crate) channel: ChannelId,
}

impl Ids {
    /// A frame from this client: header fields as given, ids filled in, payload length set.
    pub(crate) fn frame(
        &self,
        frame_type: FrameType,
        flags: Flags,
        request_id: RequestId,
        sequence: u32,
        is_final: bool,
        payload: Bytes,
    ) -> Frame {
        let header = Header {
            flags,
            client_id: self.client,
            channel_id: self.channel,
            request_id,
            sequence,
            is_final,
            ..Header::new(frame_type)
        };
        Frame::new(header, payload)
    }

    /// A CANCEL for `request_id` in the given direction.
    pub(crate) fn cancel(&self, request_id: RequestId, flags: Flags) -> Frame {
        self.frame(FrameType::Cancel, flags, request_id, 0, false, Bytes::new())
    }
}

/// The demultiplexing state; see the module docs.
#[derive(Debug)]
pub(crate) struct Session {
    ids: Ids,
    max_payload: u32,
    capacities: Capacities,
    outgoing: HashMap<RequestId, Outgoing>,
    incoming: HashMap<RequestId, Incoming>,
    partial_broadcasts: HashMap<RequestId, PartialBroadcast>,
    /// Broadcasts received in full and not yet acked; a CANCEL removes the id, and
    /// `pop_broadcast` then skips the queued body.
    unacked_broadcasts: HashSet<RequestId>,
    pings: HashMap<u32, Sender<()>>,
    /// Callers of `fetch_peers`, in the order their PEERS frames were sent (the broker answers
    /// a connection's PEERS in order).
    peer_lists: VecDeque<Sender<Vec<ClientId>>>,
    next_ping: u32,
    peers: Vec<ClientId>,
    requests: VecDeque<NewRequest>,
    broadcasts: VecDeque<CompletedBroadcast>,
    presence: VecDeque<PresenceEvent>,
    output: VecDeque<Frame>,
    wakeups: Wakeups,
    link: LinkState,
    /// Transitions of `link` not yet taken by `next_state_change`.
    state_changes: VecDeque<StateChange>,
    /// The receive window last set by the application (re-issued after a reconnect).
    window: u32,
    /// The broker sent GOING_AWAY: no new request or broadcast (those in flight go on).
    going_away: bool,
}

impl Session {
    /// The state right after WELCOME.
    pub(crate) fn new(
        ids: Ids,
        max_payload: u32,
        peers: Vec<ClientId>,
        capacities: Capacities,
    ) -> Session {
        Session {
            ids,
            max_payload,
            capacities,
            outgoing: HashMap::new(),
            incoming: HashMap::new(),
            partial_broadcasts: HashMap::new(),
            unacked_broadcasts: HashSet::new(),
            pings: HashMap::new(),
            peer_lists: VecDeque::new(),
            next_ping: 0,
            peers,
            requests: VecDeque::new(),
            broadcasts: VecDeque::new(),
            presence: VecDeque::new(),
            output: VecDeque::new(),
            wakeups: Wakeups::default(),
            link: LinkState::Connected,
            state_changes: VecDeque::new(),
            window: 0,
            going_away: false,
        }
    }

    // ----- registration (application side) -------------------------------------------------

    /// Open, and the broker has not said it is going away: a new operation may start.
    fn check_accepting(&self) -> Result<(), Error> {
        self.check_open()?;
        if self.going_away {
            return Err(Error::GoingAway);
        }
        Ok(())
    }

    /// Connected: an operation may register. Reconnecting: [`Error::Reconnecting`]. Closed: the
    /// close reason.
    fn check_open(&self) -> Result<(), Error> {
        match &self.link {
            LinkState::Connected => Ok(()),
            LinkState::Reconnecting { .. } => Err(Error::Reconnecting),
            LinkState::Closed(reason) => Err(reason.duplicate()),
        }
    }

    fn fresh_id(&self) -> RequestId {
        loop {
            let id = RequestId::random();
            // A v4 collision is astronomically unlikely; checking costs one lookup.
            if !id.is_nil() && !self.outgoing.contains_key(&id) {
                return id;
            }
        }
    }

    /// Registers a new outgoing request (before its START is written, so no answer can race
    /// past the registration) and returns its fresh id.
    ///
    /// # Errors
    /// The close reason when the session is closed.
    pub(crate) fn register_request(
        &mut self,
        events: Sender<StreamEvent>,
    ) -> Result<RequestId, Error> {
        self.check_accepting()?;
        let id = self.fresh_id();
        self.outgoing.insert(
            id,
            Outgoing::Request {
                events,
                next_sequence: None,
            },
        );
        Ok(id)
    }

    /// Registers a new outgoing broadcast and returns its fresh id.
    ///
    /// # Errors
    /// The close reason when the session is closed.
    pub(crate) fn register_broadcast(
        &mut self,
        outcome: Sender<Result<u32, Error>>,
    ) -> Result<RequestId, Error> {
        self.check_accepting()?;
        let id = self.fresh_id();
        self.outgoing.insert(id, Outgoing::Broadcast { outcome });
        Ok(id)
    }

    /// Registers a ping waiter and returns the sequence number to send.
    ///
    /// # Errors
    /// The close reason when the session is closed.
    pub(crate) fn register_ping(&mut self, waiter: Sender<()>) -> Result<u32, Error> {
        self.check_open()?;
        loop {
            let sequence = self.next_ping;
            self.next_ping = (self.next_ping + 1) & switchyard_proto::MAX_SEQUENCE;
            if let Entry::Vacant(slot) = self.pings.entry(sequence) {
                slot.insert(waiter);
                return Ok(sequence);
            }
        }
    }

    /// Stops tracking an outgoing operation; true if it was still tracked (the broker had not
    /// ended it).
    pub(crate) fn forget_outgoing(&mut self, id: RequestId) -> bool {
        self.outgoing.remove(&id).is_some()
    }

    /// Stops tracking an incoming request; true if it was still tracked.
    pub(crate) fn forget_incoming(&mut self, id: RequestId) -> bool {
        self.incoming.remove(&id).is_some()
    }

    /// Stops waiting for a ping's PONG.
    /// Registers a caller waiting for the broker's answer to a PEERS frame it is about to send.
    pub(crate) fn register_peer_list(
        &mut self,
        waiter: Sender<Vec<ClientId>>,
    ) -> Result<(), Error> {
        self.check_open()?;
        self.peer_lists.push_back(waiter);
        Ok(())
    }

    pub(crate) fn forget_ping(&mut self, sequence: u32) {
        self.pings.remove(&sequence);
    }

    /// The next queued incoming request.
    pub(crate) fn pop_request(&mut self) -> Option<NewRequest> {
        self.requests.pop_front()
    }

    /// The next queued broadcast whose ACK is still owed (cancelled ones are skipped). The
    /// caller MUST send its ACK.
    pub(crate) fn pop_broadcast(&mut self) -> Option<CompletedBroadcast> {
        while let Some(broadcast) = self.broadcasts.pop_front() {
            if self.unacked_broadcasts.remove(&broadcast.id) {
                return Some(broadcast);
            }
            debug!(
                "broadcast {} was cancelled before it was handed out; skipped",
                broadcast.id
            );
        }
        None
    }

    /// The next queued presence event.
    pub(crate) fn pop_presence(&mut self) -> Option<PresenceEvent> {
        self.presence.pop_front()
    }

    /// The other peers on the channel now.
    pub(crate) fn peers(&self) -> Vec<ClientId> {
        self.peers.clone()
    }

    /// The close reason, once closed.
    pub(crate) fn close_reason(&self) -> Option<Error> {
        match &self.link {
            LinkState::Closed(reason) => Some(reason.duplicate()),
            LinkState::Connected | LinkState::Reconnecting { .. } => None,
        }
    }

    /// The link's state, for the application.
    pub(crate) fn connection_state(&self) -> ConnectionState {
        match self.link {
            LinkState::Connected if self.going_away => ConnectionState::Draining,
            LinkState::Connected => ConnectionState::Connected,
            LinkState::Reconnecting { attempt } => ConnectionState::Reconnecting { attempt },
            LinkState::Closed(_) => ConnectionState::Closed,
        }
    }

    /// The next state change not yet taken (delivered even after the close: the last one is
    /// the `Closed` change).
    pub(crate) fn pop_state_change(&mut self) -> Option<StateChange> {
        self.state_changes.pop_front()
    }

    /// Records the receive window the application set (sent by the caller while connected;
    /// re-issued by the link thread after every reconnect).
    ///
    /// # Errors
    /// The close reason when closed (while reconnecting the window is recorded: `Ok`).
    pub(crate) fn set_window(&mut self, window: u32) -> Result<(), Error> {
        if let Some(reason) = self.close_reason() {
            return Err(reason);
        }
        self.window = window;
        Ok(())
    }

    /// The receive window last set.
    pub(crate) fn window(&self) -> u32 {
        self.window
    }

    /// The one place the link state changes: logs `old => new` at trace and queues the change
    /// for the application.
    fn set_link(&mut self, link: LinkState, cause: Option<Error>) {
        log::trace!(
            "client {} link: {:?} => {:?}",
            self.ids.client,
            self.link,
            link
        );
        self.link = link;
        if self.state_changes.len() >= self.capacities.states.max(1) {
            debug!("state change queue full; dropping the oldest change");
            self.state_changes.pop_front();
        }
        self.state_changes.push_back(StateChange {
            state: self.connection_state(),
            cause,
        });
        self.wakeups.states = true;
    }

    /// The link to the broker is lost (`Connected => Reconnecting { attempt: 1 }`): every
    /// operation in flight fails with [`Error::ConnectionLost`] and what the old connection owed
    /// is dropped (see the module invariants). Returns false, changing nothing, unless connected.
    pub(crate) fn handle_disconnect(&mut self, cause: Error) -> bool {
        match self.link {
            LinkState::Connected => {}
            // Already down (a second report of the same loss) or closed for good.
            LinkState::Reconnecting { .. } | LinkState::Closed(_) => return false,
        }
        // After GOING_AWAY the broker closing the connection is the announced end, not a fault.
        let cause = match cause {
            Error::Io(_) if self.going_away => Error::GoingAway,
            other => other,
        };
        for (_, route) in self.outgoing.drain() {
            match route {
                Outgoing::Request { events, .. } => {
                    drop(events.send(StreamEvent::Failed(Error::ConnectionLost)))
                }
                Outgoing::Broadcast { outcome } => drop(outcome.send(Err(Error::ConnectionLost))),
            }
        }
        for (_, route) in self.incoming.drain() {
            let _ = route
                .events
                .send(StreamEvent::Failed(Error::ConnectionLost));
        }
        // The waiters see their channel disconnect: the client maps that to ConnectionLost.
        self.pings.clear();
        self.peer_lists.clear();
        self.partial_broadcasts.clear();
        self.unacked_broadcasts.clear();
        self.requests.clear();
        self.broadcasts.clear();
        self.output.clear();
        self.set_link(LinkState::Reconnecting { attempt: 1 }, Some(cause));
        true
    }

    /// A connection attempt failed with `cause` (`Reconnecting { n } => Reconnecting { n + 1 }`).
    /// Returns false, changing nothing, unless reconnecting.
    pub(crate) fn handle_attempt_failed(&mut self, cause: Error) -> bool {
        match self.link {
            LinkState::Reconnecting { attempt } => {
                let next = attempt.saturating_add(1);
                self.set_link(LinkState::Reconnecting { attempt: next }, Some(cause));
                true
            }
            // Closed meanwhile (close() won the race); never while connected.
            LinkState::Connected | LinkState::Closed(_) => false,
        }
    }

    /// A new connection completed its handshake (`Reconnecting => Connected`): the broker's new
    /// limit and peer list replace the old ones, and presence events are queued for the
    /// difference, so that `peers()` stays the sum of the events. Returns false, changing
    /// nothing, unless reconnecting (the caller MUST then drop the new connection).
    pub(crate) fn handle_reconnected(&mut self, max_payload: u32, peers: Vec<ClientId>) -> bool {
        match self.link {
            LinkState::Reconnecting { .. } => {}
            LinkState::Connected | LinkState::Closed(_) => return false,
        }
        let old = std::mem::take(&mut self.peers);
        for gone in old.iter().filter(|peer| !peers.contains(peer)) {
            self.push_presence(PresenceEvent::Left(*gone));
        }
        for new in peers.iter().filter(|peer| !old.contains(peer)) {
            self.push_presence(PresenceEvent::Joined(*new));
        }
        self.peers = peers;
        self.max_payload = max_payload;
        self.going_away = false;
        self.set_link(LinkState::Connected, None);
        true
    }

    /// Number of tracked operations (outgoing, incoming, partial broadcasts, pings); for tests.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.outgoing.len() + self.incoming.len() + self.partial_broadcasts.len() + self.pings.len()
    }

    /// Closes the session: drops every route (waking every waiter with a disconnect) and every
    /// queued item. Returns false if it was already closed (the first reason is kept).
    pub(crate) fn close(&mut self, reason: Error) -> bool {
        match self.link {
            LinkState::Connected | LinkState::Reconnecting { .. } => {}
            LinkState::Closed(_) => return false,
        }
        // After GOING_AWAY the broker closing the connection is the announced end, not a fault.
        let reason = match reason {
            Error::Io(_) if self.going_away => Error::GoingAway,
            other => other,
        };
        let cause = reason.duplicate();
        self.set_link(LinkState::Closed(reason), Some(cause));
        self.outgoing.clear();
        self.incoming.clear();
        self.partial_broadcasts.clear();
        self.unacked_broadcasts.clear();
        self.pings.clear();
        self.peer_lists.clear();
        self.requests.clear();
        self.broadcasts.clear();
        self.presence.clear();
        self.output.clear();
        self.wakeups = Wakeups {
            requests: true,
            broadcasts: true,
            presence: true,
            states: true,
        };
        true
    }

    // ----- output ------------------------------------------------------------------------------

    /// The next frame the client must write (PONGs, CANCELs). Drain after every `handle_frame`.
    #[must_use]
    pub(crate) fn poll_output(&mut self) -> Option<Frame> {
        self.output.pop_front()
    }

    /// Which queues gained items since the last call; resets the flags.
    #[must_use]
    pub(crate) fn take_wakeups(&mut self) -> Wakeups {
        std::mem::take(&mut self.wakeups)
    }

    /// Queues a presence event; beyond the capacity the oldest goes (see the module docs).
    fn push_presence(&mut self, event: PresenceEvent) {
        if self.presence.len() >= self.capacities.presence {
            debug!("presence queue full; dropping the oldest event");
            self.presence.pop_front();
        }
        self.presence.push_back(event);
        self.wakeups.presence = true;
    }
}

mod recv;
#[cfg(test)]
mod tests;
