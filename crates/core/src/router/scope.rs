//! Request ids are scoped per sender connection.
//!
//! A client picks its request ids; the broker cannot make another client avoid them. So an id is
//! only ever compared with the ids of the *same sender's* streams in flight: DUPLICATE_REQUEST
//! is for a connection reusing one of its own ids, and a client (of this channel or another)
//! that reuses an id in flight elsewhere neither learns that it is in flight nor blocks it.
//!
//! Two names per stream:
//! - its **id**, the sender's: every frame to and from the sender carries it;
//! - its **route**, the id every other party (the receiver, broadcast peers) sees and answers
//!   with, unique broker-wide. It is the sender's id itself, unless another sender's stream
//!   already routes under that id: then the broker picks a random fresh one (an *alias*).
//!
//! ```text
//!   streams: route -> stream          (every stream; receiver and peer frames look up here)
//!   aliases: (sender, id) -> stream   (only the streams whose route is not their id)
//! ```
//! A sender's frame names its stream by `(sender, id)`: the stream routed under `id` if its
//! sender is this connection, else the alias entry. In the common case (no reuse) a stream costs
//! one map entry, as before; an alias costs a second.
//!
//! # Invariants
//! - `streams` holds every request and broadcast under its route, and nothing else;
//! - `aliases` holds exactly the streams whose route differs from their id, under
//!   `(sender, id)`; so no two streams of one sender share an id, and no two streams share a
//!   route.

use super::{Router, StreamKey};
use crate::ids::{ConnId, RequestId};

/// A START reused an id the same connection has in flight.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct DuplicateId;

impl Router {
    /// The stream that `sender` names `id`, if `sender` is its sender.
    pub(super) fn sender_stream(&self, sender: ConnId, id: RequestId) -> Option<StreamKey> {
        match self.streams.get(&id) {
            Some(&stream) if self.stream_sender(stream) == Some(sender) => Some(stream),
            _ if self.aliases.is_empty() => None,
            _ => self.aliases.get(&(sender, id)).copied(),
        }
    }

    /// The route of a new stream `sender` starts with `id`.
    ///
    /// # Errors
    /// [`DuplicateId`] when `sender` already has a stream `id` in flight.
    pub(super) fn claim_route(
        &self,
        sender: ConnId,
        id: RequestId,
    ) -> Result<RequestId, DuplicateId> {
        if self.sender_stream(sender, id).is_some() {
            return Err(DuplicateId);
        }
        if !self.streams.contains_key(&id) {
            return Ok(id);
        }
        // Another sender's stream routes under `id`: a fresh random route (122 random bits; a
        // collision is retried, never expected).
        loop {
            let route = RequestId::random();
            if !route.is_nil() && !self.streams.contains_key(&route) {
                log::debug!(
                    "{sender}: request id {id} in use by another sender: routed as {route}"
                );
                return Ok(route);
            }
        }
    }

    /// Registers a new stream under its route (and its alias, when the route is not its id).
    pub(super) fn register_stream(
        &mut self,
        sender: ConnId,
        id: RequestId,
        route: RequestId,
        stream: StreamKey,
    ) {
        self.streams.insert(route, stream);
        if route != id {
            self.aliases.insert((sender, id), stream);
        }
    }

    /// Forgets an ended stream's names.
    pub(super) fn unregister_stream(&mut self, sender: ConnId, id: RequestId, route: RequestId) {
        self.streams.remove(&route);
        if route != id {
            self.aliases.remove(&(sender, id));
        }
    }

    /// The sender of a stream in flight.
    fn stream_sender(&self, stream: StreamKey) -> Option<ConnId> {
        match stream {
            StreamKey::Request(key) => self.requests.get(key).map(|r| r.sender),
            StreamKey::Broadcast(key) => self.broadcasts.get(key).map(|b| b.sender),
        }
    }

    /// The scoping invariants (tests only).
    pub(super) fn check_scope_invariants(&self) {
        let mut aliased = 0;
        for (key, request) in self.requests.iter() {
            assert_eq!(
                self.streams.get(&request.route),
                Some(&StreamKey::Request(key))
            );
            if request.route != request.id {
                aliased += 1;
                assert_eq!(
                    self.aliases.get(&(request.sender, request.id)),
                    Some(&StreamKey::Request(key))
                );
            }
        }
        for (key, broadcast) in self.broadcasts.iter() {
            assert_eq!(
                self.streams.get(&broadcast.route),
                Some(&StreamKey::Broadcast(key))
            );
            if broadcast.route != broadcast.id {
                aliased += 1;
                assert_eq!(
                    self.aliases.get(&(broadcast.sender, broadcast.id)),
                    Some(&StreamKey::Broadcast(key))
                );
            }
        }
        assert_eq!(self.aliases.len(), aliased, "aliases");
    }
}
