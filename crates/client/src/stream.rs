//! [`BodyStream`]: the reading end of one stream (a response, or an incoming request's body),
//! with the operation's cancel-on-drop duty. [`Response`](crate::Response) and
//! [`IncomingRequest`](crate::IncomingRequest) are thin handles around it.
//!
//! # Invariants
//! - Every path that ends the operation from the client's side without the broker knowing (a
//!   local deadline, a drop before the end, a failing reader) sends the CANCEL of the stream's
//!   direction, once (`settled`).
//! - Reads after a failure repeat the failure.

use std::collections::VecDeque;
use std::sync::mpsc::{RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, Bytes};
use log::debug;
use switchyard_proto::Flags;

use crate::chan::Receiver;
use crate::link::Link;
use crate::session::StreamEvent;
use crate::shared::Shared;
use crate::transport;
use crate::{ClientId, Error, RequestId};

/// Which session map a stream's route lives in, and so which direction its CANCEL goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    /// We sent the request; the stream is the response. We cancel with REQUEST.
    Outgoing,
    /// The request was assigned to us; the stream is its body. We cancel with RESPONSE.
    Incoming,
}

/// Where an inbound stream stands.
#[derive(Debug)]
pub(crate) enum StreamState {
    /// More frames to come.
    Open,
    /// The FINAL frame arrived.
    Finished,
    /// Ended abnormally; the error is repeated to every later read.
    Failed(Error),
}

/// The reading end of one stream (a response, or an incoming request's body), with the
/// operation's cancel-on-drop duty.
#[derive(Debug)]
pub(crate) struct BodyStream {
    pub(crate) shared: Arc<Shared>,
    /// The connection the operation was registered on: its only way out.
    pub(crate) link: Arc<Link>,
    pub(crate) id: RequestId,
    pub(crate) direction: Direction,
    pub(crate) events: Receiver<StreamEvent>,
    /// Events taken off `events` early (while sending), to be read in order.
    pub(crate) early: VecDeque<StreamEvent>,
    /// True when `early` holds the stream's FINAL.
    pub(crate) final_queued: bool,
    pub(crate) current: Bytes,
    pub(crate) state: StreamState,
    /// True once nothing more is owed on the wire (no CANCEL on drop).
    pub(crate) settled: bool,
    /// Whether the inbound FINAL settles the operation (true for a response; false for an
    /// incoming request, which still owes its response).
    pub(crate) settle_on_finish: bool,
    pub(crate) deadline: Option<Instant>,
}

impl BodyStream {
    pub(crate) fn new(
        shared: Arc<Shared>,
        link: Arc<Link>,
        id: RequestId,
        direction: Direction,
        events: Receiver<StreamEvent>,
        deadline: Option<Instant>,
    ) -> BodyStream {
        BodyStream {
            shared,
            link,
            id,
            direction,
            events,
            early: VecDeque::new(),
            final_queued: false,
            current: Bytes::new(),
            state: StreamState::Open,
            settled: false,
            settle_on_finish: true,
            deadline,
        }
    }

    pub(crate) fn forget(&self) -> bool {
        let session = &mut self.shared.lock().session;
        match self.direction {
            Direction::Outgoing => session.forget_outgoing(self.id),
            Direction::Incoming => session.forget_incoming(self.id),
        }
    }

    /// Ends the operation from our side: stops routing and, unless settled, sends CANCEL in our
    /// direction.
    pub(crate) fn cancel(&mut self) {
        let was_routed = self.forget();
        if !self.settled {
            self.settled = true;
            let flags = match self.direction {
                Direction::Outgoing => Flags::REQUEST,
                Direction::Incoming => Flags::RESPONSE,
            };
            // Even an unrouted incoming request is worth cancelling: the broker only drops it.
            if was_routed || self.direction == Direction::Incoming {
                self.shared
                    .send_quietly(&self.link, &self.shared.ids.cancel(self.id, flags));
            }
        }
    }

    pub(crate) fn fail(&mut self, error: &Error) {
        self.set_state(StreamState::Failed(error.duplicate()));
        self.settled = true;
    }

    pub(crate) fn next_event(&mut self) -> Result<StreamEvent, Error> {
        if let Some(event) = self.early.pop_front() {
            return Ok(event);
        }
        let received = match self.deadline {
            Some(deadline) => self
                .events
                .recv_timeout(deadline.saturating_duration_since(transport::now())),
            None => self
                .events
                .recv()
                .map_err(|_| RecvTimeoutError::Disconnected),
        };
        match received {
            Ok(event) => Ok(event),
            Err(RecvTimeoutError::Timeout) => {
                debug!("stream {} passed its local deadline; cancelling", self.id);
                self.cancel();
                Err(Error::Timeout)
            }
            Err(RecvTimeoutError::Disconnected) => Err(self.shared.lost_error()),
        }
    }

    /// The next event; failing to get one (a deadline, a lost connection) fails the stream too.
    pub(crate) fn next_event_or_fail(&mut self) -> Result<StreamEvent, Error> {
        self.next_event().inspect_err(|e| self.fail(e))
    }

    /// Waits for the response START; returns the responder.
    pub(crate) fn await_start(&mut self) -> Result<ClientId, Error> {
        let event = self.next_event_or_fail()?;
        match event {
            StreamEvent::Start {
                peer,
                data,
                is_final,
                ..
            } => {
                self.take_data(data, is_final);
                Ok(peer)
            }
            // The session only routes a START first; keep the data anyway.
            StreamEvent::Data { data, is_final } => {
                self.take_data(data, is_final);
                Ok(ClientId::NIL)
            }
            StreamEvent::Failed(e) => {
                self.fail(&e);
                Err(e)
            }
        }
    }

    /// Keeps the START's bytes as the first to read (nothing was read before it).
    pub(crate) fn take_data(&mut self, data: Bytes, is_final: bool) {
        debug_assert!(self.current.is_empty(), "the START is the first event");
        if is_final {
            self.finish();
        }
        self.current = data;
    }

    /// The one place the state changes (logged at trace).
    pub(crate) fn set_state(&mut self, state: StreamState) {
        log::trace!(
            "stream {} ({:?}): {:?} => {:?}",
            self.id,
            self.direction,
            self.state,
            state
        );
        self.state = state;
    }

    pub(crate) fn finish(&mut self) {
        self.set_state(StreamState::Finished);
        if self.settle_on_finish {
            self.settled = true;
        }
    }

    /// The next non-empty run of bytes, or `None` at the end of the stream.
    pub(crate) fn next_chunk(&mut self) -> Result<Option<Bytes>, Error> {
        loop {
            match &self.state {
                StreamState::Finished => return Ok(None),
                StreamState::Failed(e) => return Err(e.duplicate()),
                StreamState::Open => {}
            }
            let event = self.next_event_or_fail()?;
            match event {
                StreamEvent::Start { data, is_final, .. }
                | StreamEvent::Data { data, is_final } => {
                    if is_final {
                        self.finish();
                    }
                    if !data.is_empty() {
                        return Ok(Some(data));
                    }
                }
                StreamEvent::Failed(e) => {
                    self.fail(&e);
                    return Err(e);
                }
            }
        }
    }

    pub(crate) fn read(&mut self, out: &mut [u8]) -> Result<usize, Error> {
        if out.is_empty() {
            return Ok(0);
        }
        while self.current.is_empty() {
            match self.next_chunk()? {
                Some(chunk) => self.current = chunk,
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.current.len());
        out[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }

    pub(crate) fn read_to_vec(&mut self) -> Result<Vec<u8>, Error> {
        let mut body = Vec::from(std::mem::take(&mut self.current));
        while let Some(chunk) = self.next_chunk()? {
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// Takes every event already delivered, without blocking (between two frames we send).
    /// Returns whether the stream's FINAL is among them; `Err` when the stream failed.
    pub(crate) fn pump(&mut self) -> Result<bool, Error> {
        if let StreamState::Failed(e) = &self.state {
            return Err(e.duplicate());
        }
        loop {
            match self.events.try_recv() {
                Ok(StreamEvent::Failed(e)) => {
                    self.fail(&e);
                    return Err(e);
                }
                Ok(event) => {
                    if matches!(
                        event,
                        StreamEvent::Start { is_final: true, .. }
                            | StreamEvent::Data { is_final: true, .. }
                    ) {
                        self.final_queued = true;
                    }
                    self.early.push_back(event);
                }
                Err(TryRecvError::Empty) => return Ok(self.final_queued),
                Err(TryRecvError::Disconnected) => {
                    let e = self.shared.lost_error();
                    self.fail(&e);
                    return Err(e);
                }
            }
        }
    }
}

impl Drop for BodyStream {
    fn drop(&mut self) {
        // Unsettled: the operation was abandoned mid-way; tell the broker. Settled: just make
        // sure the route is gone.
        if self.settled {
            self.forget();
        } else {
            self.cancel();
        }
    }
}
