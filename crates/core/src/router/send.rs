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

use bytes::Bytes;

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
        let at_or_below_low = c.outbound().len() <= self.config.low_watermark;
        if at_or_below_low && c.has_waiters() {
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
            .push(&mut self.outbound_pool, &wire.encode(), payload);
        self.outbound_bytes += crate::protocol::HEADER_LEN + payload.len();
        self.counters.frames_out += 1;
        let over_high = c.outbound().len() > self.config.high_watermark;
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
