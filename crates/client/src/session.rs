//! Sans-IO demultiplexing state of one client connection.
//!
//! [`Session`] is fed every frame the broker sends ([`Session::handle_frame`]) and routes it by
//! request id and direction flag to the operation waiting for it. It never touches a socket and
//! never reads a clock; the blocking [`Client`](super::Client) wraps it in a mutex, and the reader
//! thread of [`transport`](super::transport) feeds it.
//!
//! # Call order
//! After each `handle_frame`, the caller MUST drain [`Session::poll_output`] (frames to write:
//! PONG answers, CANCELs for streams the broker broke) and then [`Session::take_wakeups`] (which
//! application queues gained an item), and act on both after releasing the session lock.
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
//! - Per-operation streams are unbounded `mpsc` channels: the reader thread never blocks on a slow
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

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::mpsc::{Receiver, Sender};

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

    // ----- input -------------------------------------------------------------------------------

    /// Routes one frame from the broker (see the module docs).
    ///
    /// # Errors
    /// A connection-fatal error (a fatal ERROR code, or a connection-level protocol violation):
    /// the caller MUST close the connection with it. Stream-level trouble never returns `Err`.
    pub(crate) fn handle_frame(&mut self, frame: Frame) -> Result<(), Error> {
        match self.link {
            LinkState::Connected => {}
            // A frame still decoded after the close: nobody is interested any more. (The link
            // thread reads a connection only while connected, so never while reconnecting.)
            LinkState::Reconnecting { .. } | LinkState::Closed(_) => return Ok(()),
        }
        let header = frame.header;
        // ERROR frames are exempt: a broker may send a connection-fatal error with no channel.
        if header.frame_type != FrameType::Error
            && !header.channel_id.is_nil()
            && header.channel_id != self.ids.channel
        {
            return Err(Error::Protocol(ProtocolViolation::ChannelMismatch {
                expected: self.ids.channel,
                got: header.channel_id,
            }));
        }
        match header.frame_type {
            FrameType::Start | FrameType::Chunk | FrameType::End => {
                self.handle_stream(&header, frame.payload)
            }
            FrameType::Error => self.handle_error(&header, &frame.payload),
            FrameType::Ack => self.handle_ack(&header, &frame.payload),
            FrameType::Cancel => self.handle_cancel(&header),
            FrameType::PeerJoined => {
                if !self.peers.contains(&header.client_id) {
                    self.peers.push(header.client_id);
                }
                self.push_presence(PresenceEvent::Joined(header.client_id));
                Ok(())
            }
            FrameType::PeerLeft => {
                self.peers.retain(|peer| *peer != header.client_id);
                self.push_presence(PresenceEvent::Left(header.client_id));
                Ok(())
            }
            FrameType::Ping => {
                let pong = self.ids.frame(
                    FrameType::Pong,
                    Flags::NONE,
                    RequestId::NIL,
                    header.sequence,
                    header.is_final,
                    Bytes::new(),
                );
                self.output.push_back(pong);
                Ok(())
            }
            FrameType::Pong => {
                match self.pings.remove(&header.sequence) {
                    // The waiter may have timed out and gone; nothing to do then.
                    Some(waiter) => drop(waiter.send(())),
                    None => debug!(
                        "PONG {} matches no ping in flight; ignored",
                        header.sequence
                    ),
                }
                Ok(())
            }
            FrameType::Peers => {
                let peers = decode_peers(&frame.payload).map_err(|error| {
                    Error::Protocol(ProtocolViolation::BadPayload {
                        frame_type: FrameType::Peers,
                        error,
                    })
                })?;
                self.peers.clone_from(&peers);
                match self.peer_lists.pop_front() {
                    // The caller may have given up; the list still refreshed `peers`.
                    Some(waiter) => drop(waiter.send(peers)),
                    None => debug!("PEERS answer with no caller waiting; peers refreshed"),
                }
                Ok(())
            }
            FrameType::Hello | FrameType::Welcome | FrameType::Receive => {
                Err(Error::Protocol(ProtocolViolation::UnexpectedFrame {
                    frame_type: header.frame_type,
                }))
            }
        }
    }

    fn push_presence(&mut self, event: PresenceEvent) {
        if self.presence.len() >= self.capacities.presence {
            debug!("presence queue full; dropping the oldest event");
            self.presence.pop_front();
        }
        self.presence.push_back(event);
        self.wakeups.presence = true;
    }

    fn handle_stream(&mut self, header: &Header, data: Bytes) -> Result<(), Error> {
        let frame_type = header.frame_type;
        if header.request_id.is_nil() {
            return Err(Error::Protocol(ProtocolViolation::NilRequestId {
                frame_type,
            }));
        }
        let request = header.flags.contains(Flags::REQUEST);
        let response = header.flags.contains(Flags::RESPONSE);
        let broadcast = header.flags.contains(Flags::BROADCAST);
        let bad_final = match frame_type {
            FrameType::Chunk => header.is_final,
            FrameType::End => !header.is_final,
            _ => false,
        };
        match (request, response, broadcast) {
            (true, false, false) => self.recv_request_frame(header, data, bad_final),
            (true, false, true) => self.recv_broadcast_frame(header, data, bad_final),
            (false, true, false) => self.recv_response_frame(header, data, bad_final),
            _ => Err(Error::Protocol(ProtocolViolation::BadDirection {
                frame_type,
                flags: header.flags,
            })),
        }
    }

    /// Checks a stream frame's position: START must be sequence 0 on a new stream, later frames
    /// must carry `expected`. Returns the violation, if any.
    fn check_order(
        header: &Header,
        expected: Option<u32>,
        bad_final: bool,
    ) -> Option<ProtocolViolation> {
        let request_id = header.request_id;
        let frame_type = header.frame_type;
        let expected_sequence = expected.unwrap_or(0);
        let in_order = match (frame_type, expected) {
            (FrameType::Start, None) => header.sequence == 0,
            (FrameType::Start, Some(_)) => false,
            (_, None) => false,
            (_, Some(next)) => header.sequence == next,
        };
        if !in_order {
            return Some(ProtocolViolation::StreamOrder {
                request_id,
                frame_type,
                expected: expected_sequence,
                got: header.sequence,
            });
        }
        if bad_final {
            return Some(ProtocolViolation::BadFinal {
                request_id,
                frame_type,
            });
        }
        None
    }

    fn recv_request_frame(
        &mut self,
        header: &Header,
        data: Bytes,
        bad_final: bool,
    ) -> Result<(), Error> {
        let id = header.request_id;
        let Some(route) = self.incoming.get_mut(&id) else {
            if header.frame_type != FrameType::Start {
                debug!(
                    "{:?} for untracked incoming request {id}; ignored",
                    header.frame_type
                );
                return Ok(());
            }
            if let Some(violation) = Self::check_order(header, None, bad_final) {
                debug!("broker broke incoming request {id}: {violation}");
                self.output.push_back(self.ids.cancel(id, Flags::RESPONSE));
                return Ok(());
            }
            let (events, receiver) = std::sync::mpsc::channel();
            // The receiver is alive: it is in our hands.
            let _ = events.send(StreamEvent::Start {
                peer: header.client_id,
                data,
                is_final: header.is_final,
            });
            let next_sequence = (!header.is_final).then_some(1);
            self.incoming.insert(
                id,
                Incoming {
                    events,
                    next_sequence,
                },
            );
            self.requests.push_back(NewRequest {
                id,
                sender: header.client_id,
                timeout_ms: header.timeout_ms,
                events: receiver,
            });
            self.wakeups.requests = true;
            return Ok(());
        };
        let Some(next) = route.next_sequence else {
            // Request already complete: any stream frame is a duplicate START or a frame after
            // FINAL.
            let violation = ProtocolViolation::StreamOrder {
                request_id: id,
                frame_type: header.frame_type,
                expected: 0,
                got: header.sequence,
            };
            return self.fail_incoming(id, violation);
        };
        if let Some(violation) = Self::check_order(header, Some(next), bad_final) {
            return self.fail_incoming(id, violation);
        }
        route.next_sequence = if header.is_final {
            None
        } else {
            Some(next + 1)
        };
        if route
            .events
            .send(StreamEvent::Data {
                data,
                is_final: header.is_final,
            })
            .is_err()
        {
            debug!("incoming request {id} was dropped by the application; frame discarded");
        }
        Ok(())
    }

    fn fail_incoming(&mut self, id: RequestId, violation: ProtocolViolation) -> Result<(), Error> {
        debug!("broker broke incoming request {id}: {violation}");
        if let Some(route) = self.incoming.remove(&id) {
            let _ = route
                .events
                .send(StreamEvent::Failed(Error::Protocol(violation)));
        }
        self.output.push_back(self.ids.cancel(id, Flags::RESPONSE));
        Ok(())
    }

    fn recv_response_frame(
        &mut self,
        header: &Header,
        data: Bytes,
        bad_final: bool,
    ) -> Result<(), Error> {
        let id = header.request_id;
        let Some(Outgoing::Request {
            events,
            next_sequence,
        }) = self.outgoing.get_mut(&id)
        else {
            debug!(
                "{:?} RESPONSE for untracked request {id}; ignored",
                header.frame_type
            );
            return Ok(());
        };
        if let Some(violation) = Self::check_order(header, *next_sequence, bad_final) {
            debug!("broker broke the response to {id}: {violation}");
            if let Some(Outgoing::Request { events, .. }) = self.outgoing.remove(&id) {
                let _ = events.send(StreamEvent::Failed(Error::Protocol(violation)));
            }
            self.output.push_back(self.ids.cancel(id, Flags::REQUEST));
            return Ok(());
        }
        let event = if header.frame_type == FrameType::Start {
            StreamEvent::Start {
                peer: header.client_id,
                data,
                is_final: header.is_final,
            }
        } else {
            StreamEvent::Data {
                data,
                is_final: header.is_final,
            }
        };
        *next_sequence = Some(header.sequence + 1);
        let delivered = events.send(event).is_ok();
        if header.is_final || !delivered {
            // The request is complete on the broker (or its owner is gone).
            self.outgoing.remove(&id);
        }
        Ok(())
    }

    fn recv_broadcast_frame(
        &mut self,
        header: &Header,
        data: Bytes,
        bad_final: bool,
    ) -> Result<(), Error> {
        let id = header.request_id;
        let expected = self
            .partial_broadcasts
            .get(&id)
            .map(|partial| partial.next_sequence);
        if expected.is_none() && header.frame_type != FrameType::Start {
            debug!(
                "{:?} for untracked broadcast {id}; ignored",
                header.frame_type
            );
            return Ok(());
        }
        if let Some(violation) = Self::check_order(header, expected, bad_final) {
            // Dropping it means no ACK: the sender sees us as missing.
            debug!("broker broke broadcast {id}: {violation}; dropped");
            self.partial_broadcasts.remove(&id);
            return Ok(());
        }
        let partial = self
            .partial_broadcasts
            .entry(id)
            .or_insert_with(|| PartialBroadcast {
                sender: header.client_id,
                body: BytesMut::new(),
                next_sequence: 0,
            });
        partial.body.extend_from_slice(&data);
        partial.next_sequence = header.sequence + 1;
        if !header.is_final {
            return Ok(());
        }
        let Some(done) = self.partial_broadcasts.remove(&id) else {
            return Ok(());
        };
        if self.broadcasts.len() >= self.capacities.broadcasts {
            debug!("broadcast queue full; broadcast {id} dropped without ACK");
            return Ok(());
        }
        self.unacked_broadcasts.insert(id);
        self.broadcasts.push_back(CompletedBroadcast {
            id,
            sender: done.sender,
            body: Vec::from(done.body),
        });
        self.wakeups.broadcasts = true;
        Ok(())
    }

    fn handle_error(&mut self, header: &Header, payload: &[u8]) -> Result<(), Error> {
        let body = ErrorBody::decode(payload).map_err(|error| {
            Error::Protocol(ProtocolViolation::BadPayload {
                frame_type: FrameType::Error,
                error,
            })
        })?;
        if body.known_code() == Some(ErrorCode::GoingAway) && header.request_id.is_nil() {
            // Not fatal yet: the broker drains. Nothing new starts; what is in flight goes on
            // until the broker closes the connection.
            debug!("the broker is going away: {}", body.message);
            self.going_away = true;
            return Ok(());
        }
        // LIMIT_EXCEEDED with a nil request id is a connection limit (PROTOCOL.md §4): the
        // broker closes the connection after it, like a code below 0x0100.
        let connection_limit =
            body.known_code() == Some(ErrorCode::LimitExceeded) && header.request_id.is_nil();
        if body.code < 0x0100 || connection_limit {
            return Err(Error::from_error_body(body, Some(self.max_payload)));
        }
        let id = header.request_id;
        let error = Error::from_error_body(body, Some(self.max_payload));
        if let Some(route) = self.outgoing.remove(&id) {
            match route {
                Outgoing::Request { events, .. } => drop(events.send(StreamEvent::Failed(error))),
                Outgoing::Broadcast { outcome } => drop(outcome.send(Err(error))),
            }
        } else if let Some(route) = self.incoming.remove(&id) {
            let _ = route.events.send(StreamEvent::Failed(error));
        } else if self.partial_broadcasts.remove(&id).is_some()
            || self.unacked_broadcasts.remove(&id)
        {
            debug!("broadcast {id} ended by broker error: {error}");
        } else {
            debug!("error for untracked request {id} ignored: {error}");
        }
        Ok(())
    }

    fn handle_ack(&mut self, header: &Header, payload: &[u8]) -> Result<(), Error> {
        let id = header.request_id;
        match self.outgoing.get(&id) {
            Some(Outgoing::Broadcast { .. }) => {}
            _ => {
                debug!("ACK for untracked broadcast {id}; ignored");
                return Ok(());
            }
        }
        let result = decode_u32(payload).map_err(|error| {
            Error::Protocol(ProtocolViolation::BadPayload {
                frame_type: FrameType::Ack,
                error,
            })
        });
        if let Some(Outgoing::Broadcast { outcome }) = self.outgoing.remove(&id) {
            let _ = outcome.send(result);
        }
        Ok(())
    }

    fn handle_cancel(&mut self, header: &Header) -> Result<(), Error> {
        let id = header.request_id;
        let flags = header.flags;
        if flags.contains(Flags::REQUEST) && flags.contains(Flags::RESPONSE) {
            return Err(Error::Protocol(ProtocolViolation::BadDirection {
                frame_type: FrameType::Cancel,
                flags,
            }));
        }
        if flags.contains(Flags::RESPONSE) {
            // The receiver of our request gave up.
            match self.outgoing.remove(&id) {
                Some(Outgoing::Request { events, .. }) => {
                    drop(events.send(StreamEvent::Failed(Error::Cancelled)))
                }
                Some(other) => {
                    debug!("CANCEL(RESPONSE) for broadcast {id}; ignored");
                    self.outgoing.insert(id, other);
                }
                None => debug!("CANCEL(RESPONSE) for untracked request {id}; ignored"),
            }
            return Ok(());
        }
        // REQUEST direction, or no flag (PROTOCOL.md leaves the flags of broker-originated
        // cancels open): the sender gave up or the broker ended a request/broadcast we hold.
        if !flags.contains(Flags::BROADCAST) {
            if let Some(route) = self.incoming.remove(&id) {
                let _ = route.events.send(StreamEvent::Failed(Error::Cancelled));
                return Ok(());
            }
        }
        let partial = self.partial_broadcasts.remove(&id).is_some();
        let unacked = self.unacked_broadcasts.remove(&id);
        if partial || unacked {
            debug!("broadcast {id} cancelled by the broker");
        } else {
            debug!("CANCEL for untracked request {id}; ignored");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_proto::encode_error;

    fn session() -> Session {
        let ids = Ids {
            client: ClientId::random(),
            channel: ChannelId::random(),
        };
        Session::new(
            ids,
            1024,
            Vec::new(),
            Capacities {
                broadcasts: 2,
                presence: 2,
                states: 2,
            },
        )
    }

    fn frame(
        s: &Session,
        frame_type: FrameType,
        flags: Flags,
        id: RequestId,
        seq: u32,
        fin: bool,
    ) -> Frame {
        let mut f = s
            .ids
            .frame(frame_type, flags, id, seq, fin, Bytes::from_static(b"x"));
        f.header.client_id = ClientId::from_bytes([7; 16]);
        f
    }

    #[test]
    fn self_assigned_request_is_routed_by_direction() {
        let mut s = session();
        let (tx, rx) = std::sync::mpsc::channel();
        let id = s.register_request(tx).unwrap();
        // The broker assigns our own request to us.
        s.handle_frame(frame(&s, FrameType::Start, Flags::REQUEST, id, 0, true))
            .unwrap();
        let incoming = s.pop_request().expect("queued");
        assert_eq!(incoming.id, id);
        assert!(rx.try_recv().is_err(), "nothing for the sender yet");
        s.handle_frame(frame(&s, FrameType::Start, Flags::RESPONSE, id, 0, true))
            .unwrap();
        assert!(matches!(
            rx.try_recv(),
            Ok(StreamEvent::Start { is_final: true, .. })
        ));
        assert!(s.forget_incoming(id));
        assert_eq!(s.tracked(), 0);
    }

    #[test]
    fn out_of_order_response_fails_and_cancels() {
        let mut s = session();
        let (tx, rx) = std::sync::mpsc::channel();
        let id = s.register_request(tx).unwrap();
        s.handle_frame(frame(&s, FrameType::Chunk, Flags::RESPONSE, id, 1, false))
            .unwrap();
        assert!(matches!(
            rx.try_recv(),
            Ok(StreamEvent::Failed(Error::Protocol(_)))
        ));
        let cancel = s.poll_output().expect("cancel");
        assert_eq!(cancel.header.frame_type, FrameType::Cancel);
        assert_eq!(cancel.header.flags, Flags::REQUEST);
        assert_eq!(s.tracked(), 0);
    }

    #[test]
    fn fatal_error_and_garbage_never_panic() {
        let mut s = session();
        let mut f = frame(&s, FrameType::Error, Flags::NONE, RequestId::NIL, 0, false);
        f.payload = Bytes::from_static(&[0, 1, 0xff]);
        assert!(matches!(s.handle_frame(f), Err(Error::Protocol(_))));
        // GOING_AWAY is not fatal by itself: the broker drains, nothing new may start.
        let mut f = frame(&s, FrameType::Error, Flags::NONE, RequestId::NIL, 0, false);
        f.payload = encode_error(0x000A, "bye", &[]);
        assert!(s.handle_frame(f).is_ok());
        let (events, _rx) = std::sync::mpsc::channel();
        assert!(matches!(s.register_request(events), Err(Error::GoingAway)));
        let mut f = frame(&s, FrameType::Error, Flags::NONE, RequestId::NIL, 0, false);
        f.payload = encode_error(0x000B, "silent", &[]);
        assert!(matches!(
            s.handle_frame(f),
            Err(Error::Broker { code: 0x000B, .. })
        ));
        let f = frame(
            &s,
            FrameType::Start,
            Flags::REQUEST | Flags::RESPONSE,
            RequestId::random(),
            0,
            true,
        );
        assert!(s.handle_frame(f).is_err());
    }

    #[test]
    fn limit_exceeded_is_fatal_with_a_nil_request_id_only() {
        let mut s = session();
        // For an untracked request: ignored, the connection goes on.
        let mut f = frame(
            &s,
            FrameType::Error,
            Flags::NONE,
            RequestId::random(),
            0,
            true,
        );
        f.payload = encode_error(0x0109, "queue full", &[]);
        assert!(s.handle_frame(f).is_ok());
        // For a tracked one: that request fails.
        let (tx, rx) = std::sync::mpsc::channel();
        let id = s.register_request(tx).unwrap();
        let mut f = frame(&s, FrameType::Error, Flags::NONE, id, 0, true);
        f.payload = encode_error(0x0109, "too many in flight", &[]);
        assert!(s.handle_frame(f).is_ok());
        assert!(matches!(
            rx.try_recv(),
            Ok(StreamEvent::Failed(Error::Broker { code: 0x0109, .. }))
        ));
        // With a nil request id: a connection limit, fatal for the connection.
        let mut f = frame(&s, FrameType::Error, Flags::NONE, RequestId::NIL, 0, true);
        f.payload = encode_error(0x0109, "too many peers", &[]);
        assert!(matches!(
            s.handle_frame(f),
            Err(Error::Broker { code: 0x0109, .. })
        ));
    }

    #[test]
    fn a_lost_link_fails_what_is_in_flight_and_keeps_the_window() {
        let mut s = session();
        assert!(s.set_window(4).is_ok());
        let (tx, rx) = std::sync::mpsc::channel();
        let id = s.register_request(tx).unwrap();
        s.handle_frame(frame(&s, FrameType::Start, Flags::REQUEST, id, 0, false))
            .unwrap();
        assert!(s.pop_request().is_some());
        let queued = RequestId::random();
        s.handle_frame(frame(&s, FrameType::Start, Flags::REQUEST, queued, 0, true))
            .unwrap();
        assert!(s.handle_disconnect(Error::Io(std::io::ErrorKind::UnexpectedEof.into())));
        assert!(!s.handle_disconnect(Error::Closed), "already down");
        assert!(matches!(
            rx.try_recv(),
            Ok(StreamEvent::Failed(Error::ConnectionLost))
        ));
        assert_eq!(s.tracked(), 0);
        assert!(
            s.pop_request().is_none(),
            "the old connection's requests are gone"
        );
        let (tx, _rx) = std::sync::mpsc::channel();
        assert!(matches!(s.register_request(tx), Err(Error::Reconnecting)));
        assert!(s.handle_attempt_failed(Error::Timeout));
        assert_eq!(
            s.connection_state(),
            ConnectionState::Reconnecting { attempt: 2 }
        );
        let peer = ClientId::random();
        assert!(s.handle_reconnected(2048, vec![peer]));
        assert_eq!(s.connection_state(), ConnectionState::Connected);
        assert_eq!(s.window(), 4);
        assert_eq!(s.pop_presence(), Some(PresenceEvent::Joined(peer)));
        let states: Vec<_> = std::iter::from_fn(|| s.pop_state_change())
            .map(|change| change.state)
            .collect();
        // The queue holds 2: the oldest (attempt 1) was dropped.
        assert_eq!(
            states,
            [
                ConnectionState::Reconnecting { attempt: 2 },
                ConnectionState::Connected
            ]
        );
        assert!(s.close(Error::Closed));
        assert!(
            !s.handle_reconnected(1024, Vec::new()),
            "closed is terminal"
        );
    }

    #[test]
    fn bounded_queues() {
        let mut s = session();
        for _ in 0..5 {
            let f = frame(
                &s,
                FrameType::PeerJoined,
                Flags::NONE,
                RequestId::NIL,
                0,
                false,
            );
            s.handle_frame(f).unwrap();
        }
        assert_eq!(std::iter::from_fn(|| s.pop_presence()).count(), 2);
        for _ in 0..3 {
            let id = RequestId::random();
            s.handle_frame(frame(
                &s,
                FrameType::Start,
                Flags::REQUEST | Flags::BROADCAST,
                id,
                0,
                true,
            ))
            .unwrap();
        }
        assert_eq!(std::iter::from_fn(|| s.pop_broadcast()).count(), 2);
    }
}
