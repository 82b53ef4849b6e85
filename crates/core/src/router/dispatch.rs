//! Input: one decoded frame, checked against the connection's state and routed to the concern
//! that handles it (handshake and presence, receive windows, requests, broadcasts).
//!
//! Before its hello a connection may send only HELLO and PING; after it every frame must name
//! the connection's channel, and frames only the broker sends are refused. A protocol error
//! closes the connection (`lifecycle.rs`); a frame about a request the connection has no part in
//! gets an error frame and the connection stays open.
//!
//! Flags (PROTOCOL.md §3), strict and uniform: HELLO, PING, PONG, PEERS and RECEIVE carry none,
//! a peer's ACK exactly BROADCAST, stream frames and CANCEL exactly one direction (BROADCAST
//! only with REQUEST), and NO_WAIT only a request's START; anything else is MALFORMED_FRAME.
//! Frame types a client may not send at all are refused for their type, whatever their flags.
//!
//! Payloads that PROTOCOL.md §11 says are empty — PING, PONG, CANCEL, a client's PEERS and a
//! peer's ACK — are checked before the frame is routed, before and after the handshake alike:
//! one byte there is MALFORMED_FRAME, connection-fatal, like any other malformed control
//! payload.

use std::time::Instant;

use super::{Peer, Router};
use crate::ids::ConnId;
use crate::protocol::{ErrorCode, Flags, Frame, FrameType};

impl Router {
    /// Feeds one decoded frame from `conn`.
    pub fn handle_frame(&mut self, conn: ConnId, frame: Frame, now: Instant) {
        self.input = Some(conn);
        self.dispatch_frame(conn, frame, now);
        self.input = None;
        if self.shutting_down {
            self.close_idle_for_shutdown();
        }
    }

    fn dispatch_frame(&mut self, conn: ConnId, frame: Frame, now: Instant) {
        self.now = self.now.max(now);
        let tick = self.tick(now);
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        // The heartbeat's whole per-frame cost: one store (see `heartbeat.rs`).
        c.liveness_mut().heard(tick);
        let header = &frame.header;
        // A HELLO's request id field is a resume secret: never logged.
        let shown = match header.frame_type {
            FrameType::Hello => crate::ids::RequestId::NIL,
            _ => header.request_id,
        };
        log::trace!(
            "{conn}: recv {:?} {:?} {shown}",
            header.frame_type,
            header.flags
        );
        if c.is_closing() {
            return;
        }
        if let Some(kind) = must_be_empty(header.frame_type).filter(|_| !frame.payload.is_empty()) {
            return self.fail_connection(
                conn,
                ErrorCode::MalformedFrame,
                &format!(
                    "{kind} carries an empty payload, not {} bytes",
                    frame.payload.len()
                ),
            );
        }
        if let Some(rule) = flags_refused(header.frame_type, header.flags) {
            return self.fail_connection(
                conn,
                ErrorCode::MalformedFrame,
                &format!(
                    "{:?} with flags {:?}: {rule}",
                    header.frame_type, header.flags
                ),
            );
        }
        if c.is_awaiting_hello() {
            match header.frame_type {
                FrameType::Hello => self.recv_hello(conn, &frame),
                FrameType::Ping => self.send_pong(conn, header),
                _ => {
                    self.counters.handshake_failures += 1;
                    self.fail_connection(
                        conn,
                        ErrorCode::HandshakeRequired,
                        "the first frame must be a hello",
                    )
                }
            }
            return;
        }
        // `Replaced` is transient (closed within the input that replaced it): never fed.
        let Some((channel, client)) = c.open_identity() else {
            return;
        };
        if header.channel_id != channel {
            return self.fail_connection(
                conn,
                ErrorCode::ChannelMismatch,
                &format!(
                    "frame for channel {} on a connection joined to {}",
                    header.channel_id, channel
                ),
            );
        }
        let from = Peer {
            conn,
            client,
            channel,
        };
        match header.frame_type {
            FrameType::Hello => self.fail_connection(
                conn,
                ErrorCode::DuplicateHello,
                "second hello on this connection",
            ),
            FrameType::Welcome | FrameType::Error | FrameType::PeerJoined | FrameType::PeerLeft => {
                self.fail_connection(
                    conn,
                    ErrorCode::UnexpectedFrame,
                    &format!("clients may not send {:?} frames", header.frame_type),
                )
            }
            FrameType::Ping => self.send_pong(conn, header),
            FrameType::Pong => {}
            FrameType::Peers => self.recv_peers(conn, channel),
            FrameType::Receive => self.recv_receive(from, &frame.payload, now),
            // Its flags were checked above (`flags_refused`).
            FrameType::Ack => self.recv_broadcast_ack(from, header.request_id),
            FrameType::Start | FrameType::Chunk | FrameType::End | FrameType::Cancel => {
                self.recv_stream_frame(from, frame, now)
            }
        }
    }

    /// Routes a START, CHUNK, END or CANCEL by its direction flags.
    fn recv_stream_frame(&mut self, from: Peer, frame: Frame, now: Instant) {
        let flags = frame.header.flags;
        let request = flags.contains(Flags::REQUEST);
        let response = flags.contains(Flags::RESPONSE);
        if request == response {
            return self.fail_connection(
                from.conn,
                ErrorCode::MalformedFrame,
                "a stream frame carries exactly one of REQUEST and RESPONSE",
            );
        }
        if frame.header.request_id.is_nil() {
            return self.fail_connection(
                from.conn,
                ErrorCode::MalformedFrame,
                "a stream frame needs a non-nil request id",
            );
        }
        let broadcast = flags.contains(Flags::BROADCAST);
        if response && broadcast {
            return self.fail_connection(
                from.conn,
                ErrorCode::MalformedFrame,
                "a broadcast has no response stream",
            );
        }
        let request_start = frame.header.frame_type == FrameType::Start && request && !broadcast;
        if flags.contains(Flags::NO_WAIT) && !request_start {
            return self.fail_connection(
                from.conn,
                ErrorCode::MalformedFrame,
                "NO_WAIT belongs on a request's START only",
            );
        }
        match (frame.header.frame_type, broadcast, request) {
            (FrameType::Cancel, true, _) => {
                self.recv_broadcast_cancel(from, frame.header.request_id)
            }
            (FrameType::Cancel, false, true) => {
                self.recv_request_cancel(from, frame.header.request_id, now)
            }
            (FrameType::Cancel, false, false) => {
                self.recv_response_cancel(from, frame.header.request_id, now)
            }
            (_, true, _) => self.recv_broadcast_frame(from, frame, now),
            (_, false, true) => self.recv_request_frame(from, frame, now),
            (_, false, false) => self.recv_response_frame(from, frame, now),
        }
    }
}

/// The name of a frame type whose payload must be empty when a client sends it (PROTOCOL.md
/// §11), or `None` when its payload has a layout of its own (or the frame is refused anyway).
fn must_be_empty(kind: FrameType) -> Option<&'static str> {
    match kind {
        FrameType::Ping => Some("a PING"),
        FrameType::Pong => Some("a PONG"),
        FrameType::Peers => Some("a client's PEERS"),
        FrameType::Cancel => Some("a CANCEL"),
        FrameType::Ack => Some("a peer's ACK"),
        FrameType::Hello
        | FrameType::Welcome
        | FrameType::Start
        | FrameType::Chunk
        | FrameType::End
        | FrameType::Error
        | FrameType::Receive
        | FrameType::PeerJoined
        | FrameType::PeerLeft => None,
    }
}

/// Why `flags` are refused on a client frame of type `kind`, if they are (stream frames and
/// CANCEL are checked with their routing, `recv_stream_frame`; types clients may not send are
/// refused for their type).
fn flags_refused(kind: FrameType, flags: Flags) -> Option<&'static str> {
    match kind {
        FrameType::Hello
        | FrameType::Ping
        | FrameType::Pong
        | FrameType::Peers
        | FrameType::Receive => (flags != Flags::NONE).then_some("this frame carries no flags"),
        FrameType::Ack => {
            (flags != Flags::BROADCAST).then_some("an ack carries exactly the BROADCAST flag")
        }
        FrameType::Start
        | FrameType::Chunk
        | FrameType::End
        | FrameType::Cancel
        | FrameType::Welcome
        | FrameType::Error
        | FrameType::PeerJoined
        | FrameType::PeerLeft => None,
    }
}
