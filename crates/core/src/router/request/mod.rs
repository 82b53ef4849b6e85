//! Request/reply: one request, one receiver, one response.
//!
//! ```text
//!            START ──no free receiver──▶ Queued ──receiver frees up──▶ Assigned
//!              │                           │                           │  response START
//!              └──free receiver───────────────────────────────────────▶│
//!                                          │                           ▼
//!                                          │                       Responding
//!                                          │                           │ response FINAL
//!        timeout: NO_RECEIVER to sender ◀──┤                           ▼
//!                                          │                         Done (freed)
//!   Assigned/Responding + timeout: TIMEOUT to sender, CANCEL to receiver  → Done
//!   receiver gone: PEER_GONE to sender → Done      sender gone: CANCEL to receiver → Done
//!   CANCEL from sender: CANCEL to receiver → Done  CANCEL from receiver: CANCEL to sender → Done
//! ```
//! The request direction (the sender's START … FINAL) progresses independently of these states:
//! frames that arrive while Queued are held (bounded per sender connection by flow control) and
//! forwarded in order on assignment; afterwards each frame goes straight to the receiver.
//! Sequence numbers are checked in both directions; a frame out of order aborts the request.
//! "Done" is not a state: the request is removed and every trace of it (timer, id, the
//! connections' stream lists, the receiver's slot, held bytes) goes with it in
//! [`Router::finish_request`].

use bytes::Bytes;
use std::time::{Duration, Instant};

mod state;

use state::in_order;
pub(super) use state::Request;

use super::channel::{CANCEL_TO_RECEIVER, CANCEL_TO_SENDER};
use super::outbound::{FrameRole, FrameTag, OutboundQueue, COPY_THRESHOLD};
use super::store::Key;
use super::{PauseCause, Peer, Router, StreamKey, TimerTarget};
use crate::ids::{ClientId, ConnId, RequestId};
use crate::protocol::{ErrorCode, Flags, Frame, FrameType, Header};

impl Router {
    /// A START/CHUNK/END with REQUEST (not BROADCAST) from `from`.
    pub(super) fn recv_request_frame(&mut self, from: Peer, frame: Frame, now: Instant) {
        let id = frame.header.request_id;
        if frame.header.frame_type == FrameType::Start {
            return self.recv_request_start(from, frame, now);
        }
        let Some(StreamKey::Request(key)) = self.sender_stream(from.conn, id) else {
            return self.reject_unknown_request(from.conn, id, "request frame");
        };
        let Some(request) = self.requests.get_mut(key) else {
            return self.reject_unknown_request(from.conn, id, "request frame");
        };
        if request.sender != from.conn {
            return self.reject_unknown_request(from.conn, id, "request frame");
        }
        if !request.recv_request_frame(&frame.header) {
            return self.abort_out_of_order(key, from.conn, now);
        }
        self.route_request_frame(key, frame, now);
    }

    fn recv_request_start(&mut self, from: Peer, frame: Frame, now: Instant) {
        let id = frame.header.request_id;
        if self.shutting_down {
            return self.send_error(
                from.conn,
                ErrorCode::ShuttingDown,
                id,
                "the broker is shutting down and takes no new requests",
            );
        }
        let Ok(route) = self.claim_route(from.conn, id) else {
            return self.send_error(
                from.conn,
                ErrorCode::DuplicateRequest,
                id,
                "a request or broadcast of yours with this id is already in flight",
            );
        };
        if !in_order(&frame.header, 0) {
            return self.send_error(
                from.conn,
                ErrorCode::StreamOrder,
                id,
                "a start carries sequence 0",
            );
        }
        if let Some(text) = self.sent_limit_reached(from.conn) {
            return self.send_error(from.conn, ErrorCode::LimitExceeded, id, &text);
        }
        let receiver = self.pop_ready_receiver(from.channel);
        if receiver.is_none() {
            if frame.header.flags.contains(Flags::NO_WAIT) {
                return self.send_error(
                    from.conn,
                    ErrorCode::NoReceiver,
                    id,
                    "no receiver has credit (NO_WAIT)",
                );
            }
            if self.waiting_len(from.channel) >= self.config.max_waiting_per_channel {
                return self.send_error(
                    from.conn,
                    ErrorCode::LimitExceeded,
                    id,
                    &format!(
                        "channel {} already has {} requests waiting for a receiver",
                        from.channel, self.config.max_waiting_per_channel
                    ),
                );
            }
        }
        let timeout = self.effective_timeout(frame.header.timeout_ms);
        let deadline_tick = self.deadline_tick(now, timeout);
        let wheel = &mut self.wheel;
        let key = self.requests.insert_with(|key| {
            Request::new(
                (id, route),
                from,
                super::insert_timer(wheel, deadline_tick, TimerTarget::Request(key)),
                now + timeout,
                frame.header.is_final,
            )
        });
        self.register_stream(from.conn, id, route, StreamKey::Request(key));
        if let Some(c) = self.conns.get_mut(from.conn) {
            c.add_stream(StreamKey::Request(key));
            c.start_sending();
        }
        match receiver {
            Some(receiver) => {
                self.take_request(key, receiver);
                self.route_request_frame(key, frame, now);
            }
            None => {
                self.push_waiting(from.channel, key);
                self.hold_frame(key, frame);
            }
        }
    }

    /// When `conn` already has `max_in_flight_per_connection` requests and broadcasts of its own
    /// in flight, or the broker `max_requests_in_flight`, the text of the `LimitExceeded`
    /// refusing one more.
    pub(super) fn sent_limit_reached(&self, conn: ConnId) -> Option<String> {
        if self.is_over_budget() {
            return Some(format!(
                "the broker holds more than its budget of {} bytes; try again later",
                self.config.max_buffered_bytes
            ));
        }
        let total = self.config.max_requests_in_flight;
        if self.streams.len() >= total {
            return Some(format!(
                "the broker already has {total} requests and broadcasts in flight"
            ));
        }
        let max = self.config.max_in_flight_per_connection;
        let sent = self.conns.get(conn)?.sent_in_flight();
        (sent >= max).then(|| format!("{max} requests and broadcasts of yours are in flight"))
    }

    /// Sends a request-direction frame onward: to the receiver, or into the held queue.
    fn route_request_frame(&mut self, key: Key, frame: Frame, now: Instant) {
        let Some(request) = self.requests.get(key) else {
            return;
        };
        match request.receiver() {
            Some(receiver) => forward_request(self, key, receiver, frame, now),
            None => self.hold_frame(key, frame),
        }
    }

    /// Keeps a frame of a waiting request. Small payloads are copied so a held frame never pins a
    /// read buffer; the sender's connection is paused when it holds too much.
    fn hold_frame(&mut self, key: Key, mut frame: Frame) {
        let Some(request) = self.requests.get_mut(key) else {
            return;
        };
        if frame.payload.len() <= COPY_THRESHOLD {
            frame.payload = Bytes::copy_from_slice(&frame.payload);
        }
        let size = match request.hold(frame) {
            Ok(size) => size,
            Err(e) => {
                // Only a request without a receiver holds frames: cannot happen.
                log::debug!("request {}: {e}", request.id);
                debug_assert!(false, "request {}: {e}", request.id);
                return;
            }
        };
        let sender = request.sender;
        self.held_bytes += size;
        let over = match self.conns.get_mut(sender) {
            Some(c) => c.hold(size) > self.config.max_held_bytes,
            None => false,
        };
        if over {
            self.pause(sender, PauseCause::Held);
        }
        self.charge_budget(Some(sender));
    }

    /// Gives `bytes` of held frames back to the sender's allowance.
    fn release_held(&mut self, sender: ConnId, bytes: usize) {
        self.held_bytes -= bytes;
        self.relieve_budget();
        let Some(c) = self.conns.get_mut(sender) else {
            return;
        };
        if c.release_held(bytes) <= self.config.max_held_bytes / 2 {
            self.unpause(sender, PauseCause::Held);
        }
    }

    /// Records that `receiver` holds the request (its slot, its stream list, the FIFO).
    fn take_request(&mut self, key: Key, receiver: ConnId) {
        let Some(c) = self.conns.get_mut(receiver) else {
            return;
        };
        let Some((channel, receiver_client)) = c.open_identity() else {
            return;
        };
        c.take_request();
        c.add_stream(StreamKey::Request(key));
        if let Some(Err(e)) = self
            .requests
            .get_mut(key)
            .map(|r| r.assign(receiver, receiver_client))
        {
            log::debug!("{receiver}: {e}");
            debug_assert!(false, "{receiver}: {e}");
        }
        log::debug!("request assigned to {receiver}");
        // Round-robin: back of the FIFO if it can take more.
        self.mark_ready(receiver, channel);
    }

    /// Assigns a waiting request to `receiver` and forwards what was held.
    pub(super) fn assign(&mut self, key: Key, receiver: ConnId, now: Instant) {
        let Some(request) = self.requests.get_mut(key) else {
            return;
        };
        let (held, held_bytes) = match request.take_held() {
            Ok(held) => held,
            Err(e) => {
                log::debug!("{receiver}: {e}");
                debug_assert!(false, "{receiver}: {e}");
                return;
            }
        };
        let sender = request.sender;
        self.take_request(key, receiver);
        for frame in held {
            forward_request(self, key, receiver, frame, now);
        }
        self.release_held(sender, held_bytes);
    }

    /// A START/CHUNK/END with RESPONSE from `from`.
    pub(super) fn recv_response_frame(&mut self, from: Peer, frame: Frame, now: Instant) {
        let id = frame.header.request_id;
        let Some(&StreamKey::Request(key)) = self.streams.get(&id) else {
            return self.reject_unknown_request(from.conn, id, "response frame");
        };
        let Some(request) = self.requests.get_mut(key) else {
            return self.reject_unknown_request(from.conn, id, "response frame");
        };
        if request.receiver() != Some(from.conn) {
            return self.reject_unknown_request(from.conn, id, "response frame");
        }
        let expected = match request.expected_response_seq() {
            Ok(expected) => expected,
            Err(e) => {
                // `receiver()` is `Some`: not `Queued`, so this cannot happen; out of order.
                debug_assert!(false, "{}: {e}", from.conn);
                u32::MAX
            }
        };
        if !in_order(&frame.header, expected) {
            return self.abort_out_of_order(key, from.conn, now);
        }
        let receiver_client = request.receiver_client();
        if let Err(e) = request.recv_response(frame.header.sequence.wrapping_add(1)) {
            log::debug!("{}: {e}", from.conn);
            debug_assert!(false, "{}: {e}", from.conn);
            return;
        }
        let (sender, sender_id) = (request.sender, request.id);
        let is_final = frame.header.is_final;
        let header = Header {
            client_id: receiver_client,
            request_id: sender_id,
            timeout_ms: 0,
            ..frame.header
        };
        self.send(sender, &header, &frame.payload, Some(from.conn));
        if is_final {
            self.finish_request(key, now);
        }
    }

    /// CANCEL with REQUEST from the request's sender.
    pub(super) fn recv_request_cancel(&mut self, from: Peer, id: RequestId, now: Instant) {
        let Some(StreamKey::Request(key)) = self.sender_stream(from.conn, id) else {
            return self.reject_unknown_request(from.conn, id, "cancel");
        };
        let request = self.requests.get(key);
        if let Some((receiver, route)) = request.and_then(|r| Some((r.receiver()?, r.route))) {
            self.cancel_receiver(key, receiver, from.client, route);
        }
        self.finish_request(key, now);
    }

    /// CANCEL with RESPONSE from the request's receiver.
    pub(super) fn recv_response_cancel(&mut self, from: Peer, id: RequestId, now: Instant) {
        let key = match self.streams.get(&id) {
            Some(&StreamKey::Request(key))
                if self.requests.get(key).and_then(Request::receiver) == Some(from.conn) =>
            {
                key
            }
            _ => return self.reject_unknown_request(from.conn, id, "cancel"),
        };
        if let Some((sender, sender_id)) = self.requests.get(key).map(|r| (r.sender, r.id)) {
            self.send_control(
                sender,
                FrameType::Cancel,
                CANCEL_TO_SENDER,
                from.client,
                sender_id,
            );
        }
        self.finish_request(key, now);
    }

    /// A frame out of order from `offender`: STREAM_ORDER to it, CANCEL to the other side.
    fn abort_out_of_order(&mut self, key: Key, offender: ConnId, now: Instant) {
        let Some(request) = self.requests.get(key) else {
            return;
        };
        let (id, sender, sender_client) = (request.id, request.sender, request.sender_client);
        let route = request.route;
        let (receiver, receiver_client) = (request.receiver(), request.receiver_client());
        // The offender's own name for the request.
        let offender_id = if offender == sender { id } else { route };
        self.send_error(
            offender,
            ErrorCode::StreamOrder,
            offender_id,
            "frame out of order; request aborted",
        );
        if offender == sender {
            if let Some(receiver) = receiver.filter(|r| *r != offender) {
                self.cancel_receiver(key, receiver, sender_client, route);
            }
        } else {
            self.cancel_sender(sender, receiver_client, id);
        }
        self.finish_request(key, now);
    }

    /// The request's timer fired.
    pub(super) fn expire_request(&mut self, key: Key, now: Instant) {
        let Some(request) = self.requests.get(key) else {
            return;
        };
        self.counters.timeouts += 1;
        let (id, sender, sender_client) = (request.id, request.sender, request.sender_client);
        let route = request.route;
        match request.receiver() {
            None => self.send_error(
                sender,
                ErrorCode::NoReceiver,
                id,
                "no receiver took the request in time",
            ),
            Some(receiver) => {
                self.send_error(
                    sender,
                    ErrorCode::Timeout,
                    id,
                    "the response did not complete in time",
                );
                self.cancel_receiver(key, receiver, sender_client, route);
            }
        }
        self.finish_request(key, now);
    }

    /// The shutdown deadline passed with the request in flight: SHUTTING_DOWN to the sender,
    /// CANCEL to the receiver.
    pub(super) fn end_request_for_shutdown(&mut self, key: Key, now: Instant) {
        let Some(request) = self.requests.get(key) else {
            return;
        };
        let (id, sender, sender_client) = (request.id, request.sender, request.sender_client);
        if let Some(receiver) = request.receiver() {
            self.cancel_receiver(key, receiver, sender_client, request.route);
        }
        self.send_error(
            sender,
            ErrorCode::ShuttingDown,
            id,
            "the broker shut down first",
        );
        self.finish_request(key, now);
    }

    /// `departed` (sender or receiver of the request) is gone.
    pub(super) fn end_request_for_departed(&mut self, key: Key, departed: ConnId, now: Instant) {
        let Some(request) = self.requests.get(key) else {
            return;
        };
        let (id, sender, sender_client) = (request.id, request.sender, request.sender_client);
        let (receiver, route) = (request.receiver(), request.route);
        if departed == sender {
            if let Some(receiver) = receiver.filter(|r| *r != departed) {
                self.cancel_receiver(key, receiver, sender_client, route);
            }
        } else {
            self.send_error(sender, ErrorCode::PeerGone, id, "the receiver disconnected");
        }
        self.finish_request(key, now);
    }

    /// CANCEL to a request's receiver, naming the request's sender; tagged with the request,
    /// so that it goes with the START if that is dropped unsent (see `outbound.rs`).
    fn cancel_receiver(
        &mut self,
        key: Key,
        receiver: ConnId,
        sender_client: ClientId,
        id: RequestId,
    ) {
        let Some(channel) = self.conns.get(receiver).map(|c| c.channel()) else {
            return;
        };
        let header = Header {
            flags: CANCEL_TO_RECEIVER,
            client_id: sender_client,
            channel_id: channel,
            request_id: id,
            is_final: true,
            ..Header::new(FrameType::Cancel)
        };
        let tag = FrameTag {
            stream: key,
            role: FrameRole::Closing,
        };
        self.send_tagged(receiver, &header, &Bytes::new(), None, Some(tag));
    }

    /// CANCEL to a request's sender, naming the request's receiver.
    fn cancel_sender(&mut self, sender: ConnId, receiver_client: ClientId, id: RequestId) {
        self.send_control(
            sender,
            FrameType::Cancel,
            CANCEL_TO_SENDER,
            receiver_client,
            id,
        );
    }

    /// Removes a request and every trace of it; frees the receiver's slot and hands it the next
    /// waiting request.
    pub(super) fn finish_request(&mut self, key: Key, now: Instant) {
        let Some(request) = self.requests.remove(key) else {
            return;
        };
        self.wheel.remove(request.timer);
        self.unregister_stream(request.sender, request.id, request.route);
        self.forget_sent(request.sender);
        self.forget_stream(request.sender, StreamKey::Request(key));
        match request.receiver() {
            None => {
                self.release_held(request.sender, request.held_bytes());
                self.forget_waiting(request.channel);
            }
            Some(receiver) => {
                self.forget_stream(receiver, StreamKey::Request(key));
                if let Some(c) = self.conns.get_mut(receiver) {
                    c.end_request();
                }
                if let Some(last_piece) = request.last_piece {
                    self.note_dead_frames(receiver, last_piece, request.forwarded_pieces);
                }
                // Whichever side flow control paused for this request's sake may go on: it has
                // no more frames for the other (if it has others, they pause it again).
                self.release_waiter(request.sender, receiver);
                self.release_waiter(receiver, request.sender);
                self.mark_ready(receiver, request.channel);
                self.assign_waiting(request.channel, now);
            }
        }
    }
}

/// The frame with its request id replaced by the request's route (what the receiver sees).
fn routed(mut frame: Frame, route: RequestId) -> Frame {
    frame.header.request_id = route;
    frame
}

/// Forwards one request-direction frame of request `key` to its receiver, rewriting the client
/// id to the sender's and, on the START, the timeout to what remains of it. Tagged with the
/// request (see `outbound.rs`).
fn forward_request(router: &mut Router, key: Key, receiver: ConnId, frame: Frame, now: Instant) {
    let Some(request) = router.requests.get_mut(key) else {
        return;
    };
    request.forwarded_pieces += OutboundQueue::pieces_of(frame.payload.len());
    let (sender, sender_client, deadline, route) = (
        request.sender,
        request.sender_client,
        request.deadline,
        request.route,
    );
    // The receiver sees the request's route, not necessarily the sender's id (`scope.rs`).
    let frame = routed(frame, route);
    let mut header = Header {
        client_id: sender_client,
        flags: Flags::REQUEST,
        timeout_ms: 0,
        ..frame.header
    };
    let role = if header.frame_type == FrameType::Start {
        let remaining = deadline.saturating_duration_since(now);
        header.timeout_ms = ceil_ms(remaining).max(1);
        FrameRole::Opening
    } else {
        FrameRole::Body
    };
    let tag = FrameTag { stream: key, role };
    router.send_tagged(receiver, &header, &frame.payload, Some(sender), Some(tag));
    let last_piece = router.conns.get(receiver).map(|c| c.outbound().last_seq());
    if let Some(request) = router.requests.get_mut(key) {
        request.last_piece = last_piece;
    }
}

fn ceil_ms(duration: Duration) -> u32 {
    let ms = duration.as_millis() + u128::from(!duration.subsec_nanos().is_multiple_of(1_000_000));
    u32::try_from(ms).unwrap_or(u32::MAX)
}
