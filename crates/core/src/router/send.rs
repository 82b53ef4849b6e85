//! Everything the router queues to a connection, and flow control on both ends of the queue.
//!
//! Every frame goes out through [`Router::send`], which is where the high watermark pauses a
//! producer; every byte leaves through [`Router::handle_written`] (the I/O layer's report on a
//! [`Transmit`]), which is where the low watermark resumes it. Both keep `outbound_bytes` equal
//! to the sum of the queues' lengths.
//!
//! ```text
//!   send(to, frame, producer) ── queue(to) > high ──▶ pause(producer, Consumer); to.waiters += producer
//!   handle_written(to, n) ───── queue(to) <= low ──▶ unpause(every waiter, Consumer) ─▶ Output::Resume
//!   hold_frame (request.rs) ─── held(c) > max ─────▶ pause(c, Held) … released <= max/2 ─▶ unpause
//! ```
//! A connection is read again only when no cause of pause is left.
//!
//! # A stuck receiver
//! The watermarks bound a queue only if nothing keeps feeding it, so a receiver is fed new
//! requests only while it keeps up:
//! ```text
//!   send(to) ── queue(to) > high ──▶ to.congested: no free slot, not "ready" (channel.rs)
//!   handle_written(to) ── queue(to) <= low ──▶ !to.congested ─▶ ready again, waiting requests assigned
//!   finish_request ── dead pieces >= half of receiver's queue ──▶ purge_dead_frames(receiver)
//! ```
//! Only a write clears congestion (a purge that empties the queue does not: the socket may be
//! as full as before); a congested receiver with nothing queued is unstuck by the next frame the
//! broker writes to it (a PONG, a heartbeat PING). So a receiver's queue holds at most the high
//! watermark, plus one frame per producer feeding it when it crossed, plus the held frames of
//! the last request assigned to it (at most `max_held_bytes`).
//!
//! # The broker-wide budget
//! `max_buffered_bytes` bounds the sum of every queue, every held frame and the I/O layer's
//! read buffers ([`Router::set_read_buffered`]):
//! ```text
//!   send / hold_frame ── total > max ──▶ pause(the connection whose input it is, Budget)
//!   START (request, broadcast) ── total > max ──▶ LIMIT_EXCEEDED for its id
//!   broadcast frame ── total > max ──▶ the peer is dropped from it (CANCEL), as over its watermark
//!   bytes leave (written, released, purged, dropped) ── total <= 7/8 max ──▶ unpause every Budget waiter
//! ```
//! So past the budget the broker holds at most one more frame per connection whose input was
//! under way (each is paused after it), and the I/O layer reads only into memory it already
//! holds (see the server's `input.rs`).
//!
//! The frames of a request that ended are dropped from its receiver's queue where they have not
//! started on the wire (`outbound.rs`, `purge`), when that queue is backed up (over the low
//! watermark: a receiver that keeps up gets them written, followed by the CANCEL, as before). The purge is one pass over the queue, run when
//! the pieces of ended requests may make up half of it: amortised O(1) per queued piece.

use bytes::Bytes;

use super::outbound::FrameTag;
use super::{Output, PauseCause, Router, Transmit};
use crate::ids::{ClientId, ConnId, RequestId};
use crate::protocol::{encode_error_within, ErrorCode, Flags, FrameType, Header};

impl Router {
    /// Bytes queued for `conn`.
    pub fn queued_bytes(&self, conn: ConnId) -> usize {
        self.conns.get(conn).map_or(0, |c| c.outbound().len())
    }

    /// Lends the front of `conn`'s outbound queue for writing; `None` when nothing is queued
    /// (or the connection is unknown). Zero-copy and allocation-free: the slices borrow the
    /// queue. Write any prefix of them, then report its length with [`Router::handle_written`]
    /// — also when the write then failed, or wrote nothing (report 0, or nothing at all).
    pub fn poll_transmit(&self, conn: ConnId) -> Option<Transmit<'_>> {
        self.conns.get(conn)?.outbound().transmit()
    }

    /// `written` bytes of `conn`'s last [`Transmit`] were written: they leave its queue and the
    /// buffered-bytes count, count as a sign of life (see `heartbeat.rs`), and once the queue is
    /// at or below the low watermark the producers paused on it resume ([`Output::Resume`]).
    ///
    /// Report every byte that left, as soon as it left: bytes written before a write error
    /// still count, or the buffered count would keep them after the connection is gone. More
    /// than was lent is a caller bug (clamped; a debug assertion says so).
    pub fn handle_written(&mut self, conn: ConnId, written: usize) {
        let tick = self.tick(self.now);
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        debug_assert!(
            written <= c.outbound().len(),
            "{conn}: wrote more than was lent"
        );
        let written = written.min(c.outbound().len());
        c.outbound_mut().consume(&mut self.outbound_pool, written);
        if written > 0 {
            c.liveness_mut().wrote(tick);
        }
        self.outbound_bytes -= written;
        self.counters.bytes_out += written as u64;
        self.relieve_budget();
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        let at_or_below_low = c.outbound().len() <= self.config.low_watermark;
        // Written down to the low watermark: a congested receiver is ready again.
        let uncongested = if at_or_below_low && written > 0 && c.set_congested(false) {
            c.open_identity()
        } else {
            None
        };
        self.resume_waiters_if_low(conn);
        if at_or_below_low && written > 0 && !self.presence_overflowed.is_empty() {
            self.send_presence_marker_if_drained(conn);
        }
        if let Some((channel, _)) = uncongested {
            log::debug!("{conn}: drained below the low watermark: ready again");
            self.mark_ready(conn, channel);
            self.assign_waiting(channel, self.now);
        }
    }

    /// Resumes the producers paused on `conn`'s queue once it is at or below the low watermark.
    fn resume_waiters_if_low(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        if c.outbound().len() <= self.config.low_watermark && c.has_waiters() {
            let waiters = c.take_waiters();
            for waiter in &waiters {
                self.unpause(*waiter, PauseCause::Consumer);
            }
            // Give the (emptied) vector back to keep its capacity.
            if let Some(c) = self.conns.get_mut(conn) {
                c.restore_waiters(waiters);
            }
        }
    }

    /// A request `conn` received ended; `pieces` of its data were queued to `conn`, the last
    /// one as number `last_piece`. If that one may still be queued, all of them count as dead
    /// (an upper bound); once dead pieces may make up half of the queue's data pieces, those
    /// not started on the wire are dropped. A pass costs O(queue), at most twice the dead pieces
    /// counted since the last pass (the queue's other pieces are untagged runs and CANCELs,
    /// each following a data piece or request), and each forwarded piece is counted at most
    /// once: amortised O(1) per piece.
    pub(super) fn note_dead_frames(&mut self, conn: ConnId, last_piece: u64, pieces: usize) {
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        if !c.outbound().still_holds(last_piece) {
            return;
        }
        // Below the low watermark the queue is about to be written anyway: dropping would save
        // little and make a cancel racing its START invisible to a receiver that keeps up.
        let backed_up = c.outbound().len() > self.config.low_watermark;
        if c.add_dead_pieces(pieces) * 2 < c.outbound().data_pieces() || !backed_up {
            return;
        }
        c.reset_dead_pieces();
        let requests = &self.requests;
        let dropped = c.outbound_mut().purge(
            &mut self.outbound_pool,
            |key| !requests.contains(key),
            &mut self.purge_scratch,
        );
        if dropped > 0 {
            log::debug!("{conn}: dropped {dropped} queued bytes of ended requests");
            self.outbound_bytes -= dropped;
            self.counters.dead_bytes_dropped += dropped as u64;
            self.resume_waiters_if_low(conn);
            self.relieve_budget();
        }
    }

    /// Bytes held for clients, broker-wide: what `max_buffered_bytes` bounds.
    pub fn budget_used(&self) -> usize {
        self.outbound_bytes + self.held_bytes + self.read_buffered
    }

    /// True while the broker holds more than `max_buffered_bytes` (see the module docs).
    pub fn is_over_budget(&self) -> bool {
        self.budget_used() > self.config.max_buffered_bytes
    }

    /// The I/O layer's report of the bytes its read buffers hold (their capacity): part of the
    /// budget. Call it whenever that figure changes; cheap.
    pub fn set_read_buffered(&mut self, bytes: usize) {
        let fell = bytes < self.read_buffered;
        self.read_buffered = bytes;
        if fell {
            self.relieve_budget();
        }
    }

    /// Over the budget, pauses the connection whose input added to it.
    pub(super) fn charge_budget(&mut self, adder: Option<ConnId>) {
        if !self.is_over_budget() {
            return;
        }
        if let Some(conn) = adder {
            if self.pause(conn, PauseCause::Budget) {
                self.budget_waiters.push(conn);
            }
        }
    }

    /// Resumes every connection paused by the budget once the broker is back to seven eighths
    /// of it (hysteresis: not one resume per byte written).
    pub(super) fn relieve_budget(&mut self) {
        if self.budget_waiters.is_empty() {
            return;
        }
        let max = self.config.max_buffered_bytes;
        if self.budget_used() > max - max / 8 {
            return;
        }
        let mut waiters = std::mem::take(&mut self.budget_waiters);
        for conn in waiters.drain(..) {
            self.unpause(conn, PauseCause::Budget);
        }
        // Keep the capacity (none was pushed meanwhile: unpausing pauses nobody).
        self.budget_waiters = waiters;
    }

    /// Queues one frame to `to`. `producer` is the connection whose input caused it, paused when
    /// `to` is over the high watermark (flow control); `None` for broker-originated frames.
    /// A frame queued to the very connection whose frame is being handled (an answer to it) over
    /// the high watermark pauses that connection: its own unread answers bound it too.
    pub(super) fn send(
        &mut self,
        to: ConnId,
        header: &Header,
        payload: &Bytes,
        producer: Option<ConnId>,
    ) {
        self.send_tagged(to, header, payload, producer, None);
    }

    /// [`Router::send`] for a frame of a request going to its receiver: tagged, so that it can be
    /// dropped from the queue if the request ends before it starts on the wire.
    pub(super) fn send_tagged(
        &mut self,
        to: ConnId,
        header: &Header,
        payload: &Bytes,
        producer: Option<ConnId>,
        tag: Option<FrameTag>,
    ) {
        let Some(c) = self.conns.get_mut(to) else {
            return;
        };
        if c.is_closing() && header.frame_type != FrameType::Error {
            return;
        }
        let was_empty = c.outbound().is_empty();
        let mut wire = *header;
        wire.payload_len = payload.len() as u32;
        c.outbound_mut()
            .push(&mut self.outbound_pool, &wire.encode(), payload, tag);
        self.outbound_bytes += crate::protocol::HEADER_LEN + payload.len();
        self.counters.frames_out += 1;
        let over_high = c.outbound().len() > self.config.high_watermark;
        if over_high && !c.set_congested(true) {
            log::debug!("{to}: over the high watermark: takes no new request");
        }
        let adder = producer.or(self.input);
        self.charge_budget(adder);
        if was_empty {
            self.outputs.push_back(Output::Transmit(to));
        }
        if over_high {
            // Whose reading to pause: the producer feeding `to`; or `to` itself when the frame
            // answers `to`'s own input (ERROR, PONG, PEERS, its request to itself) — a client
            // that sends and never reads its answers is stopped, not buffered for without bound.
            let paused = match producer {
                Some(producer) if producer != to => Some(producer),
                _ if self.input == Some(to) => Some(to),
                _ => None,
            };
            if let Some(paused) = paused {
                if self.pause(paused, PauseCause::Consumer) {
                    if let Some(c) = self.conns.get_mut(to) {
                        c.add_waiter(paused);
                    }
                }
            }
        }
    }

    /// Queues an error frame about `request_id` (nil for connection-level errors).
    pub(super) fn send_error(
        &mut self,
        to: ConnId,
        code: ErrorCode,
        request_id: RequestId,
        text: &str,
    ) {
        self.send_error_with_peers(to, code, request_id, text, &[]);
    }

    pub(super) fn send_error_with_peers(
        &mut self,
        to: ConnId,
        code: ErrorCode,
        request_id: RequestId,
        text: &str,
        peers: &[ClientId],
    ) {
        let Some(channel) = self.conns.get(to).map(|c| c.channel()) else {
            return;
        };
        let header = Header {
            channel_id: channel,
            request_id,
            is_final: true,
            ..Header::new(FrameType::Error)
        };
        log::debug!("{to}: error {code:?} for {request_id}: {text}");
        self.counters.errors_sent += 1;
        *self.errors_by_code.entry(code as u16).or_default() += 1;
        // Never above the max payload announced in WELCOME: the text gives way (PROTOCOL §9.1).
        let max = self.config.max_payload as usize;
        let payload = encode_error_within(code as u16, text, peers, max);
        self.send(to, &header, &payload, None);
    }

    /// Queues a payload-less control frame (CANCEL, PEER_JOINED, ...).
    pub(super) fn send_control(
        &mut self,
        to: ConnId,
        frame_type: FrameType,
        flags: Flags,
        about: ClientId,
        request_id: RequestId,
    ) {
        let Some(channel) = self.conns.get(to).map(|c| c.channel()) else {
            return;
        };
        let header = Header {
            flags,
            client_id: about,
            channel_id: channel,
            request_id,
            is_final: frame_type == FrameType::Cancel,
            ..Header::new(frame_type)
        };
        self.send(to, &header, &Bytes::new(), None);
    }

    pub(super) fn send_pong(&mut self, conn: ConnId, ping: &Header) {
        let header = Header {
            channel_id: ping.channel_id,
            sequence: ping.sequence,
            is_final: true,
            ..Header::new(FrameType::Pong)
        };
        self.send(conn, &header, &Bytes::new(), None);
    }

    /// A frame named a request this connection has no part in: drop it, count it, say so.
    pub(super) fn reject_unknown_request(
        &mut self,
        conn: ConnId,
        request_id: RequestId,
        what: &str,
    ) {
        self.counters.late_frames_dropped += 1;
        self.send_error(
            conn,
            ErrorCode::UnknownRequest,
            request_id,
            &format!("{what}: no request {request_id} of yours is in flight"),
        );
    }

    /// Pauses reading from `conn`. Returns true when this cause was not already in force.
    pub(super) fn pause(&mut self, conn: ConnId, cause: PauseCause) -> bool {
        let Some(c) = self.conns.get_mut(conn) else {
            return false;
        };
        let newly = c.pause(cause);
        if newly {
            self.counters.backpressure_pauses += 1;
            log::debug!("{conn}: reading paused ({cause:?})");
        }
        newly
    }

    /// Lifts one cause of pause; emits `Resume` when no cause remains.
    pub(super) fn unpause(&mut self, conn: ConnId, cause: PauseCause) {
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        if c.unpause(cause) {
            log::debug!("{conn}: reading resumed");
            self.outputs.push_back(Output::Resume(conn));
        }
    }

    /// Lifts the pause of `producer` if it is waiting on `consumer`'s queue.
    pub(super) fn release_waiter(&mut self, producer: ConnId, consumer: ConnId) {
        let Some(c) = self.conns.get_mut(consumer) else {
            return;
        };
        if c.remove_waiter(producer) {
            self.unpause(producer, PauseCause::Consumer);
        }
    }
}
