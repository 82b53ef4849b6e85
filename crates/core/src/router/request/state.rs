//! One request's state, private to this module: every change is a transition method that
//! matches on the current state and returns a [`StateError`] when it does not apply, through one
//! setter that logs `old => new` at trace (see the diagram in `request/mod.rs`).
//!
//! Two things progress independently: the request direction (the sender's START … FINAL,
//! checked by [`Request::recv_request_frame`]) and the state below, which follows the receiver.

use std::collections::VecDeque;
use std::time::Instant;

use super::super::{Peer, StateError};
use crate::ids::{ChannelId, ClientId, ConnId, RequestId};
use crate::protocol::{Frame, FrameType, Header};
use crate::wheel::TimerKey;

enum RequestState {
    /// In the channel's waiting FIFO; the frames received so far are held here.
    Queued {
        held: VecDeque<Frame>,
        held_bytes: usize,
    },
    /// Held by `receiver`; its response has not started.
    Assigned {
        receiver: ConnId,
        receiver_client: ClientId,
    },
    /// The receiver's response is streaming; `next_seq` is the sequence number expected next.
    Responding {
        receiver: ConnId,
        receiver_client: ClientId,
        next_seq: u32,
    },
}

pub(in crate::router) struct Request {
    /// The sender's id for it: frames to and from the sender carry it.
    pub(in crate::router) id: RequestId,
    /// The id its receiver sees and answers with (see `scope.rs`).
    pub(in crate::router) route: RequestId,
    pub(in crate::router) channel: ChannelId,
    pub(in crate::router) sender: ConnId,
    pub(in crate::router) sender_client: ClientId,
    state: RequestState,
    pub(in crate::router) timer: TimerKey,
    pub(in crate::router) deadline: Instant,
    /// Sequence number the sender's next frame must carry.
    request_next_seq: u32,
    /// The sender's FINAL frame arrived.
    request_finished: bool,
    /// Queue pieces of its data forwarded to its receiver so far (an upper bound on what of it
    /// its receiver's queue may still hold; see `send.rs`).
    pub(in crate::router) forwarded_pieces: usize,
    /// Sequence number, in its receiver's queue, of the last piece of its data forwarded.
    pub(in crate::router) last_piece: Option<u64>,
}

impl Request {
    /// A request whose START `from` sent: `Queued`, holding nothing yet. `finished`: the START
    /// was FINAL.
    pub(super) fn new(
        (id, route): (RequestId, RequestId),
        from: Peer,
        timer: TimerKey,
        deadline: Instant,
        finished: bool,
    ) -> Request {
        Request {
            id,
            route,
            channel: from.channel,
            sender: from.conn,
            sender_client: from.client,
            state: RequestState::Queued {
                held: VecDeque::new(),
                held_bytes: 0,
            },
            timer,
            deadline,
            request_next_seq: 1,
            request_finished: finished,
            forwarded_pieces: 0,
            last_piece: None,
        }
    }

    /// A request-direction frame (CHUNK/END) from the sender: false when it is out of order or
    /// follows the FINAL one (the request is aborted).
    pub(super) fn recv_request_frame(&mut self, header: &Header) -> bool {
        if self.request_finished || !in_order(header, self.request_next_seq) {
            return false;
        }
        self.request_next_seq = header.sequence.wrapping_add(1);
        self.request_finished = header.is_final;
        true
    }

    /// Keeps a frame of a request still waiting for a receiver. Returns its size on the wire.
    pub(super) fn hold(&mut self, frame: Frame) -> Result<usize, StateError> {
        match &mut self.state {
            RequestState::Queued { held, held_bytes } => {
                let size = frame.wire_len();
                held.push_back(frame);
                *held_bytes += size;
                Ok(size)
            }
            RequestState::Assigned { .. } | RequestState::Responding { .. } => {
                Err(self.refuse("hold"))
            }
        }
    }

    pub(in crate::router) fn is_queued(&self) -> bool {
        matches!(self.state, RequestState::Queued { .. })
    }

    pub(in crate::router) fn receiver(&self) -> Option<ConnId> {
        match self.state {
            RequestState::Queued { .. } => None,
            RequestState::Assigned { receiver, .. } | RequestState::Responding { receiver, .. } => {
                Some(receiver)
            }
        }
    }

    pub(super) fn receiver_client(&self) -> ClientId {
        match self.state {
            RequestState::Queued { .. } => ClientId::NIL,
            RequestState::Assigned {
                receiver_client, ..
            }
            | RequestState::Responding {
                receiver_client, ..
            } => receiver_client,
        }
    }

    pub(in crate::router) fn held_bytes(&self) -> usize {
        match self.state {
            RequestState::Queued { held_bytes, .. } => held_bytes,
            _ => 0,
        }
    }

    fn refuse(&self, event: &'static str) -> StateError {
        StateError {
            state: self.state.name(),
            event,
        }
    }

    /// Takes the frames held while it waited (it stays `Queued`, holding none, until
    /// [`Request::assign`]).
    pub(super) fn take_held(&mut self) -> Result<(VecDeque<Frame>, usize), StateError> {
        match &mut self.state {
            RequestState::Queued { held, held_bytes } => {
                Ok((std::mem::take(held), std::mem::take(held_bytes)))
            }
            RequestState::Assigned { .. } | RequestState::Responding { .. } => {
                Err(self.refuse("take_held"))
            }
        }
    }

    /// `Queued → Assigned`: `receiver` holds it now.
    pub(super) fn assign(
        &mut self,
        receiver: ConnId,
        receiver_client: ClientId,
    ) -> Result<(), StateError> {
        match self.state {
            RequestState::Queued { held_bytes: 0, .. } => {
                self.set_state(RequestState::Assigned {
                    receiver,
                    receiver_client,
                });
                Ok(())
            }
            _ => Err(self.refuse("assign")),
        }
    }

    /// The sequence number the receiver's next response frame must carry.
    pub(super) fn expected_response_seq(&self) -> Result<u32, StateError> {
        match self.state {
            RequestState::Assigned { .. } => Ok(0),
            RequestState::Responding { next_seq, .. } => Ok(next_seq),
            RequestState::Queued { .. } => Err(self.refuse("expected_response_seq")),
        }
    }

    /// `Assigned | Responding → Responding`: a response frame went out; `next_seq` is due next.
    pub(super) fn recv_response(&mut self, next_seq: u32) -> Result<(), StateError> {
        match self.state {
            RequestState::Assigned {
                receiver,
                receiver_client,
            }
            | RequestState::Responding {
                receiver,
                receiver_client,
                ..
            } => {
                self.set_state(RequestState::Responding {
                    receiver,
                    receiver_client,
                    next_seq,
                });
                Ok(())
            }
            RequestState::Queued { .. } => Err(self.refuse("recv_response")),
        }
    }

    /// The one place the state changes.
    fn set_state(&mut self, state: RequestState) {
        log::trace!(
            "request {}: {} => {}",
            self.id,
            self.state.name(),
            state.name()
        );
        self.state = state;
    }
}

impl RequestState {
    fn name(&self) -> &'static str {
        match self {
            RequestState::Queued { .. } => "Queued",
            RequestState::Assigned { .. } => "Assigned",
            RequestState::Responding { .. } => "Responding",
        }
    }
}

/// Checks a stream frame's type against its sequence number and FINAL bit.
/// `expected` is the sequence number due next. START must be 0; CHUNK never final; END final.
pub(super) fn in_order(header: &Header, expected: u32) -> bool {
    header.sequence == expected
        && match header.frame_type {
            FrameType::Start => expected == 0,
            FrameType::Chunk => !header.is_final && expected > 0,
            FrameType::End => header.is_final && expected > 0,
            _ => false,
        }
}
