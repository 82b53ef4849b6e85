//! Frames from the broker: the dispatch by type, WELCOME, and ERROR frames (for a sender, for a
//! receiver, a CANCEL a receiver sent).

use super::*;

impl Driver {
    pub(super) fn handle_frame(&mut self, token: usize, frame: Frame) {
        let h = frame.header;
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        if conn.joined && h.channel_id != self.load.channels[conn.channel] {
            self.ledger.violation(
                "wrong_channel",
                format!("frame {:?} with channel {}", h.frame_type, h.channel_id),
            );
        }
        match h.frame_type {
            FrameType::Ping => {
                let pong = Header {
                    sequence: h.sequence,
                    is_final: h.is_final,
                    ..conn.header(FrameType::Pong)
                };
                conn.queue(pong, Bytes::new());
            }
            FrameType::Pong => {
                if let Role::Receiver(r) = &mut conn.role {
                    if r.barrier && h.sequence == BARRIER_PING {
                        r.barrier = false;
                        self.maybe_finish_receiver(token);
                    }
                }
            }
            FrameType::Welcome => self.welcome(token, &frame),
            FrameType::PeerJoined | FrameType::PeerLeft | FrameType::Peers => {}
            FrameType::Error => self.error(token, &frame),
            FrameType::Ack if h.flags.contains(Flags::BROADCAST) => {
                self.broadcast_acked(token, &frame)
            }
            FrameType::Start | FrameType::Chunk | FrameType::End
                if h.flags.contains(Flags::BROADCAST) =>
            {
                self.broadcast_frame(token, &frame)
            }
            FrameType::Cancel if h.flags.contains(Flags::BROADCAST) => {
                let id = *h.request_id.as_bytes();
                conn.bcast_in.remove(&id);
                conn.bcast_seen.insert(id);
                self.ledger.count("broadcasts.cancel_received_by_peer", 1);
            }
            FrameType::Start | FrameType::Chunk | FrameType::End
                if h.flags.contains(Flags::REQUEST) =>
            {
                self.request_frame(token, &frame)
            }
            FrameType::Start | FrameType::Chunk | FrameType::End
                if h.flags.contains(Flags::RESPONSE) =>
            {
                self.response_frame(token, &frame)
            }
            FrameType::Cancel if h.flags.contains(Flags::REQUEST) => {
                self.cancelled_by_broker(token, &frame)
            }
            FrameType::Cancel if h.flags.contains(Flags::RESPONSE) => {
                self.cancelled_by_receiver(token, &frame)
            }
            other => self.ledger.violation(
                "unexpected_frame",
                format!("{other:?} with flags {:?}", h.flags),
            ),
        }
    }

    pub(super) fn welcome(&mut self, token: usize, frame: &Frame) {
        let lifetime = self.load.lifetime_ms;
        let leave_at = now() + self.jitter(lifetime / 4, lifetime);
        let first_op = now() + self.jitter(0, self.load.think_ms);
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        if conn.joined || WelcomeBody::decode(&frame.payload).is_err() {
            self.ledger
                .violation("unexpected_frame", "a second or malformed WELCOME".into());
            return;
        }
        conn.joined = true;
        conn.client = frame.header.client_id;
        let receive = conn.header(FrameType::Receive);
        match &mut conn.role {
            Role::Receiver(r) => {
                let (window, stable) = (r.window, r.stable);
                conn.queue(receive, encode_u32(window));
                if !stable {
                    self.timer(leave_at, TimerKind::Leave(token));
                }
            }
            Role::Sender(s) => {
                s.op_scheduled = true;
                self.timer(first_op, TimerKind::NextOp(token));
                self.timer(leave_at, TimerKind::Leave(token));
            }
        }
    }

    pub(super) fn error(&mut self, token: usize, frame: &Frame) {
        let h = frame.header;
        let body = match ErrorBody::decode(&frame.payload) {
            Ok(body) => body,
            Err(e) => {
                self.ledger
                    .violation("malformed_error", format!("undecodable ERROR payload: {e}"));
                return;
            }
        };
        let code = body.known_code();
        let name = code.map_or("UNKNOWN_CODE", code_name);
        if h.request_id.is_nil() {
            self.ledger.violation(
                "connection_error",
                format!("connection-level ERROR {name}: {}", body.message),
            );
            return;
        }
        let id = *h.request_id.as_bytes();
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        match &mut conn.role {
            Role::Receiver(r) => {
                // A receiver only hears of requests it sent frames for after they ended: a late
                // response, or one that crossed the broker's CANCEL.
                match (code, r.ended.get(&id)) {
                    (Some(ErrorCode::UnknownRequest), Some(true)) => {
                        self.ledger.count("receivers.late_response_refused", 1)
                    }
                    _ => self.ledger.violation(
                        "receiver_error",
                        format!("receiver got {name} for {}: {}", hex(&id), body.message),
                    ),
                }
            }
            Role::Sender(s) => {
                if let Some(out) = s.in_flight.remove(&id) {
                    let multi = out.frames > 1;
                    s.ended.insert(id, multi);
                    let channel = conn.channel;
                    self.sender_error(channel, out, code, name, &body);
                    self.after_outcome(token);
                } else if s.vanished.contains(&id) {
                    self.ledger.count("requests.answers_after_vanish", 1);
                } else if let Some(&expect_unknown) = s.ended.get(&id) {
                    if code == Some(ErrorCode::UnknownRequest) && expect_unknown {
                        self.ledger.count("requests.late_frames_refused", 1);
                    } else {
                        self.ledger.violation(
                            "duplicate_answer",
                            format!("{name} for {} which had already ended", hex(&id)),
                        );
                    }
                } else {
                    self.ledger.violation(
                        "foreign_answer",
                        format!("{name} for {}, never sent on this connection", hex(&id)),
                    );
                }
            }
        }
    }

    pub(super) fn sender_error(
        &mut self,
        channel: usize,
        out: Out,
        code: Option<ErrorCode>,
        name: &str,
        body: &ErrorBody,
    ) {
        let at = now();
        if out.broadcast {
            match code {
                Some(ErrorCode::BroadcastIncomplete) => {
                    self.ledger.count("broadcasts.incomplete", 1);
                    let elapsed = at.saturating_duration_since(out.sent);
                    if elapsed >= Duration::from_millis(out.timeout_ms.into()) {
                        self.ledger.violation(
                            "broadcast_timeout",
                            format!("broadcast {} timed out", hex(&out.head.id)),
                        );
                    }
                    let missing = body.peers.iter().map(|p| *p.as_bytes()).collect();
                    self.ledger.incomplete(missing, out.sent, at);
                }
                _ => self.ledger.violation(
                    "broadcast_error",
                    format!(
                        "broadcast {} failed with {name}: {}",
                        hex(&out.head.id),
                        body.message
                    ),
                ),
            }
            return;
        }
        let behavior = out.head.behavior.unwrap_or(Behavior::Never);
        let expects_timeout = matches!(behavior, Behavior::Late { .. } | Behavior::Never);
        match code {
            Some(ErrorCode::Timeout) if expects_timeout => {
                self.ledger.count("requests.timeout_expected", 1)
            }
            Some(ErrorCode::NoReceiver) if expects_timeout => {
                self.ledger.count("requests.no_receiver_expected", 1)
            }
            Some(ErrorCode::PeerGone) => {
                self.ledger.count("requests.peer_gone", 1);
                self.ledger
                    .peer_gone(channel, Some(out.head.id), out.sent, at);
            }
            Some(ErrorCode::Timeout) => self.ledger.violation(
                "timeout_unexpected",
                format!(
                    "request {} ({} bytes, {}) timed out after {:?}",
                    hex(&out.head.id),
                    out.head.len,
                    behavior.name(),
                    at.saturating_duration_since(out.sent)
                ),
            ),
            _ => self.ledger.violation(
                "error_unexpected",
                format!(
                    "request {} ({}) failed with {name}: {}",
                    hex(&out.head.id),
                    behavior.name(),
                    body.message
                ),
            ),
        }
    }

    pub(super) fn cancelled_by_receiver(&mut self, token: usize, frame: &Frame) {
        let id = *frame.header.request_id.as_bytes();
        let Some(Role::Sender(s)) = self.conns.get_mut(&token).map(|c| &mut c.role) else {
            self.ledger
                .violation("unexpected_frame", "CANCEL(RESPONSE) to a receiver".into());
            return;
        };
        if s.vanished.contains(&id) {
            self.ledger.count("requests.answers_after_vanish", 1);
        } else if let Some(out) = s.in_flight.remove(&id) {
            s.ended.insert(id, out.frames > 1);
            if out.head.behavior == Some(Behavior::Cancel) {
                self.ledger.count("requests.cancelled_expected", 1);
            } else {
                self.ledger.violation(
                    "cancel_unexpected",
                    format!("request {} cancelled by its receiver", hex(&id)),
                );
            }
            self.after_outcome(token);
        } else if s.ended.contains_key(&id) {
            self.ledger.violation(
                "duplicate_answer",
                format!("CANCEL for {} which had already ended", hex(&id)),
            );
        } else {
            self.ledger
                .violation("foreign_answer", format!("CANCEL for unknown {}", hex(&id)));
        }
    }
}
