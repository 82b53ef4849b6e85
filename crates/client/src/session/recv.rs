//! The session's input side: [`Session::handle_frame`] routes one broker frame to the
//! operation it belongs to, per the table in the parent module's docs. Stream frames are checked
//! for order (START first, sequence + 1, nothing after FINAL); a stream that breaks order fails
//! its operation and is cancelled, and only connection-level trouble is returned as `Err`.

use bytes::Bytes;
use log::debug;

use super::*;

impl Session {
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
                // Events for the difference: after a PRESENCE_OVERFLOW they are what was missed.
                let (old, new): (std::collections::HashSet<_>, std::collections::HashSet<_>) =
                    (self.peers.iter().collect(), peers.iter().collect());
                let mut events = Vec::new();
                for gone in self.peers.iter().filter(|peer| !new.contains(peer)) {
                    events.push(PresenceEvent::Left(*gone));
                }
                for joined in peers.iter().filter(|peer| !old.contains(peer)) {
                    events.push(PresenceEvent::Joined(*joined));
                }
                for event in events {
                    self.push_presence(event);
                }
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
            let (events, receiver) = crate::chan::channel();
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
            self.handle_going_away();
            return Ok(());
        }
        if body.known_code() == Some(ErrorCode::PresenceOverflow) && header.request_id.is_nil() {
            // A notice: presence events were dropped while we were behind. Re-sync the list.
            debug!("presence events were dropped: asking for the peer list again");
            self.push_presence(PresenceEvent::Resync);
            let peers = self.ids.frame(
                FrameType::Peers,
                Flags::NONE,
                RequestId::NIL,
                0,
                false,
                Bytes::new(),
            );
            self.output.push_back(peers);
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

    /// The broker sent GOING_AWAY (`Connected => Draining`, reported like a link transition,
    /// with [`Error::GoingAway`] as the cause): nothing new starts; what is in flight goes on
    /// until the broker closes the connection.
    fn handle_going_away(&mut self) {
        if self.going_away {
            return;
        }
        self.going_away = true;
        if self.state_changes.len() >= self.capacities.states.max(1) {
            self.state_changes.pop_front();
        }
        self.state_changes.push_back(StateChange {
            state: ConnectionState::Draining,
            cause: Some(Error::GoingAway),
        });
        self.wakeups.states = true;
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
