//! The receivers: requests assigned to them (checked against the receive window and against
//! a second assignment), a CANCEL from the broker, and responding on the seeded schedule
//! (including the sabotaged responses).

use super::*;

impl Driver {
    /// A request frame arriving at a receiver.
    pub(super) fn request_frame(&mut self, token: usize, frame: &Frame) {
        let h = frame.header;
        let id = *h.request_id.as_bytes();
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let client = conn.client;
        let Role::Receiver(r) = &mut conn.role else {
            self.ledger.violation(
                "unexpected_frame",
                "a request assigned to a sender (window 0)".into(),
            );
            return;
        };
        if h.frame_type == FrameType::Start {
            if r.ended.contains_key(&id) || r.held.contains_key(&id) {
                self.ledger.violation(
                    "assigned_twice",
                    format!("request {} started twice at one receiver", hex(&id)),
                );
                return;
            }
            if r.held.len() as u32 >= r.window {
                self.ledger.violation(
                    "window_exceeded",
                    format!(
                        "a receiver with window {} was given {} requests",
                        r.window,
                        r.held.len() + 1
                    ),
                );
            }
            if h.timeout_ms == 0 {
                self.ledger
                    .violation("request_stream", "forwarded START with timeout 0".into());
            }
            self.ledger.assign(id, *client.as_bytes());
            r.held.insert(
                id,
                Held {
                    sender: h.client_id,
                    next_seq: 0,
                    verifier: Verifier::new(),
                    timeout_ms: h.timeout_ms,
                    arrived: now(),
                },
            );
        }
        let Some(held) = r.held.get_mut(&id) else {
            let why = if r.ended.contains_key(&id) {
                "after it ended"
            } else {
                "never started here"
            };
            self.ledger.violation(
                "frame_after_end",
                format!("request {:?} for {} {why}", h.frame_type, hex(&id)),
            );
            return;
        };
        if h.sequence != held.next_seq || h.client_id != held.sender {
            self.ledger.violation(
                "request_stream",
                format!(
                    "request frame seq {} (expected {}) or sender changed",
                    h.sequence, held.next_seq
                ),
            );
        }
        held.next_seq = h.sequence + 1;
        held.verifier.feed(&frame.payload);
        self.ledger
            .count("bytes.requests", frame.payload.len() as u64);
        if !h.is_final {
            return;
        }
        // The whole request is here: check it, then do what it asks.
        let (head, hash) = match held.verifier.finish() {
            Ok(ok) => ok,
            Err(e) => {
                self.ledger
                    .violation("corrupt_request", format!("request {}: {e}", hex(&id)));
                return;
            }
        };
        if head.kind != body::Kind::Request
            || (head.wire_id_known && head.id != id)
            || head.author != *held.sender.as_bytes()
        {
            self.ledger.violation(
                "foreign_request",
                format!(
                    "request {} carried the body of {} from {}",
                    hex(&id),
                    hex(&head.id),
                    hex(&head.author)
                ),
            );
            return;
        }
        let arrived = held.arrived;
        let timeout_ms = held.timeout_ms;
        if matches!(
            head.behavior,
            Some(Behavior::Answer { .. } | Behavior::Late { .. })
        ) {
            r.answers.insert(id, (head, hash));
        }
        match head.behavior {
            Some(Behavior::Answer { delay_ms }) => {
                r.scheduled += 1;
                let at = now() + Duration::from_millis(delay_ms.into());
                self.timer(at, TimerKind::Respond(token, id));
            }
            Some(Behavior::Late { extra_ms }) => {
                r.scheduled += 1;
                let at =
                    arrived + Duration::from_millis(u64::from(timeout_ms) + u64::from(extra_ms));
                self.timer(at, TimerKind::Respond(token, id));
            }
            Some(Behavior::Never) => {}
            Some(Behavior::Cancel) | None => {
                r.held.remove(&id);
                r.ended.insert(id, false);
                let cancel = Header {
                    flags: Flags::RESPONSE,
                    request_id: h.request_id,
                    is_final: true,
                    ..conn.header(FrameType::Cancel)
                };
                conn.queue(cancel, Bytes::new());
                self.ledger.count("receivers.cancelled", 1);
                self.maybe_finish_receiver(token);
            }
        }
    }

    pub(super) fn cancelled_by_broker(&mut self, token: usize, frame: &Frame) {
        let id = *frame.header.request_id.as_bytes();
        let Some(Role::Receiver(r)) = self.conns.get_mut(&token).map(|c| &mut c.role) else {
            self.ledger
                .violation("unexpected_frame", "CANCEL(REQUEST) to a sender".into());
            return;
        };
        if r.held.remove(&id).is_some() {
            r.ended.insert(id, true);
            self.ledger.count("receivers.cancel_received", 1);
            self.maybe_finish_receiver(token);
        } else if let Some(by_broker) = r.ended.get_mut(&id) {
            // Our response (or CANCEL) crossed the broker's CANCEL: legitimate once.
            if *by_broker {
                self.ledger.violation(
                    "duplicate_cancel",
                    format!("a second CANCEL for {}", hex(&id)),
                );
            }
            *by_broker = true;
            self.ledger.count("receivers.cancel_crossed_response", 1);
        } else {
            self.ledger
                .violation("foreign_cancel", format!("CANCEL for unknown {}", hex(&id)));
        }
    }

    /// A scheduled response is due (answer, or a deliberately late one). A response whose
    /// request the broker already ended (timed out, or its sender left) is sent all the same:
    /// the broker must drop it and answer UNKNOWN_REQUEST, never forward it.
    pub(super) fn respond(&mut self, token: usize, id: [u8; 16]) {
        let max_payload = self.load.max_payload as usize;
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let client = conn.client;
        let Role::Receiver(r) = &mut conn.role else {
            return;
        };
        r.scheduled -= 1;
        let Some((request, hash)) = r.answers.remove(&id) else {
            self.maybe_finish_receiver(token);
            return;
        };
        let mut derived_from = (request, hash);
        let mut corrupt = false;
        if r.held.contains_key(&id) {
            self.responses += 1;
            if self.responses >= SABOTAGED_RESPONSE
                && !self.sabotaged
                && r.stable
                && !request.wire_id_known
            {
                self.sabotaged = true;
                match self.load.sabotage {
                    Some(Sabotage::Silence) => {
                        // Still held: the broker will time it out and CANCEL it here.
                        self.ledger.count("sabotage.silenced", 1);
                        self.maybe_finish_receiver(token);
                        return;
                    }
                    Some(Sabotage::Swap) => {
                        if let Some(previous) = self.last_answer {
                            derived_from = previous;
                            self.ledger.count("sabotage.swapped", 1);
                        }
                    }
                    Some(Sabotage::Corrupt) => {
                        corrupt = true;
                        self.ledger.count("sabotage.corrupted", 1);
                    }
                    Some(Sabotage::TlsHandshake) | None => {}
                }
            }
            self.last_answer = Some((request, hash));
            r.held.remove(&id);
            r.ended.insert(id, false);
            self.ledger.count("receivers.responses_sent", 1);
        } else {
            self.ledger.count("receivers.late_responses_sent", 1);
        }
        let mut response =
            Head::response_to(&derived_from.0, *client.as_bytes(), derived_from.1).build();
        if corrupt {
            let at = (response.len() / 2)
                .max(body::HEAD_LEN)
                .min(response.len() - 1);
            response[at] ^= 0x01;
        }
        let response = Bytes::from(response);
        let chunk = (request.chunk as usize).clamp(1, max_payload);
        let frames = response.len().div_ceil(chunk);
        for (seq, start) in (0..response.len()).step_by(chunk).enumerate() {
            let end = (start + chunk).min(response.len());
            let frame_type = match seq {
                0 => FrameType::Start,
                _ if seq + 1 == frames => FrameType::End,
                _ => FrameType::Chunk,
            };
            let header = Header {
                flags: Flags::RESPONSE,
                request_id: RequestId::from_bytes(id),
                sequence: seq as u32,
                is_final: seq + 1 == frames,
                ..conn.header(frame_type)
            };
            conn.queue(header, response.slice(start..end));
        }
        self.flush(token);
        self.maybe_finish_receiver(token);
    }
}
