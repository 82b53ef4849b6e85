//! The senders: issuing requests and broadcasts on the seeded schedule, their deadlines, and
//! checking every answer (response frames, broadcast acks and the broadcasts that arrive).

use super::*;

impl Driver {
    pub(super) fn response_frame(&mut self, token: usize, frame: &Frame) {
        let h = frame.header;
        let id = *h.request_id.as_bytes();
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let Role::Sender(s) = &mut conn.role else {
            self.ledger
                .violation("unexpected_frame", "a RESPONSE frame to a receiver".into());
            return;
        };
        let Some(out) = s.in_flight.get_mut(&id) else {
            if s.vanished.contains(&id) {
                self.ledger.count("requests.answers_after_vanish", 1);
            } else if s.ended.contains_key(&id) {
                self.ledger.violation(
                    "duplicate_answer",
                    format!(
                        "{:?} (RESPONSE) for {} which had already ended",
                        h.frame_type,
                        hex(&id)
                    ),
                );
            } else {
                self.ledger.violation(
                    "foreign_answer",
                    format!(
                        "{:?} (RESPONSE) for {}, never sent here",
                        h.frame_type,
                        hex(&id)
                    ),
                );
            }
            return;
        };
        match (&mut out.response, h.frame_type) {
            (None, FrameType::Start) if h.sequence == 0 => {
                out.response = Some(ResponseIn {
                    responder: h.client_id,
                    next_seq: 1,
                    verifier: Verifier::new(),
                });
            }
            (Some(_), FrameType::Start) => {
                self.ledger.violation(
                    "duplicate_answer",
                    format!("a second response START for {}", hex(&id)),
                );
                return;
            }
            (Some(r), FrameType::Chunk | FrameType::End)
                if h.sequence == r.next_seq && h.client_id == r.responder =>
            {
                r.next_seq += 1;
            }
            _ => {
                self.ledger.violation(
                    "response_stream",
                    format!(
                        "response {:?} seq {} for {} out of order or from another responder",
                        h.frame_type,
                        h.sequence,
                        hex(&id)
                    ),
                );
                return;
            }
        }
        let Some(response) = out.response.as_mut() else {
            return;
        };
        response.verifier.feed(&frame.payload);
        self.ledger
            .count("bytes.responses", frame.payload.len() as u64);
        if !h.is_final {
            if h.frame_type == FrameType::End {
                self.ledger
                    .violation("response_stream", "END without FINAL".into());
            }
            return;
        }
        let Some(out) = s.in_flight.remove(&id) else {
            return;
        };
        s.ended.insert(id, false);
        self.check_response(&out);
        self.after_outcome(token);
    }

    pub(super) fn check_response(&mut self, out: &Out) {
        let Some(response) = &out.response else {
            return;
        };
        let behavior = out.head.behavior.unwrap_or(Behavior::Never);
        match response.verifier.finish() {
            Err(e) => {
                let foreign = response
                    .verifier
                    .head()
                    .is_some_and(|h| h.id != out.head.id);
                let kind = if foreign {
                    "foreign_answer"
                } else {
                    "corrupt_answer"
                };
                self.ledger
                    .violation(kind, format!("response to {}: {e}", hex(&out.head.id)));
            }
            Ok((head, _)) => {
                let expected =
                    Head::response_to(&out.head, *response.responder.as_bytes(), out.hash);
                if head.id != out.head.id {
                    self.ledger.violation(
                        "foreign_answer",
                        format!(
                            "request {} answered with the response to {}",
                            hex(&out.head.id),
                            hex(&head.id)
                        ),
                    );
                } else if head != expected {
                    self.ledger.violation(
                        "corrupt_answer",
                        format!(
                            "response to {} is not derived from it: {head:?} vs {expected:?}",
                            hex(&out.head.id)
                        ),
                    );
                } else {
                    match behavior {
                        Behavior::Answer { .. } => self.ledger.count("requests.ok", 1),
                        // The broker was slower than the late answer: a legitimate race.
                        Behavior::Late { .. } => self.ledger.count("requests.late_answer_ok", 1),
                        Behavior::Never | Behavior::Cancel => self.ledger.violation(
                            "impossible_answer",
                            format!(
                                "request {} ({}) got an answer",
                                hex(&head.id),
                                behavior.name()
                            ),
                        ),
                    }
                }
            }
        }
    }

    pub(super) fn broadcast_acked(&mut self, token: usize, frame: &Frame) {
        let id = *frame.header.request_id.as_bytes();
        let Some(Role::Sender(s)) = self.conns.get_mut(&token).map(|c| &mut c.role) else {
            self.ledger
                .violation("unexpected_frame", "broadcast ACK to a receiver".into());
            return;
        };
        if s.vanished.contains(&id) {
            self.ledger.count("broadcasts.answers_after_vanish", 1);
            return;
        }
        match s.in_flight.remove(&id) {
            Some(out) if out.broadcast => {
                s.ended.insert(id, false);
                s.broadcasting = false;
                match decode_u32(&frame.payload) {
                    Ok(count) => {
                        self.ledger.count("broadcasts.ok", 1);
                        self.ledger.broadcast_ok(id, count, out.sent, now());
                    }
                    Err(_) => self
                        .ledger
                        .violation("malformed_ack", "broker ACK without a count".into()),
                }
                self.after_outcome(token);
            }
            Some(out) => {
                s.in_flight.insert(id, out);
                self.ledger
                    .violation("foreign_answer", "broadcast ACK for a request".into());
            }
            None => self.ledger.violation(
                "duplicate_answer",
                format!("broadcast ACK for {} which is not in flight", hex(&id)),
            ),
        }
    }

    /// A broadcast copy arriving at a peer (any raw client).
    pub(super) fn broadcast_frame(&mut self, token: usize, frame: &Frame) {
        let h = frame.header;
        let id = *h.request_id.as_bytes();
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        if h.client_id == conn.client {
            self.ledger.violation(
                "broadcast_to_self",
                format!("broadcast {} came back to its sender", hex(&id)),
            );
        }
        if h.frame_type == FrameType::Start
            && matches!(&conn.role, Role::Receiver(r) if r.reset_at_broadcast)
        {
            self.ledger.count("faults.rst_peer_mid_broadcast", 1);
            self.drop_conn(token, true, true);
            return;
        }
        if h.frame_type == FrameType::Start {
            if h.sequence != 0 || !conn.bcast_seen.insert(id) || conn.bcast_in.contains_key(&id) {
                self.ledger.violation(
                    "broadcast_twice",
                    format!("broadcast {} started twice at one peer", hex(&id)),
                );
                return;
            }
            conn.bcast_in.insert(id, (0, Verifier::new()));
        }
        let Some((seq, verifier)) = conn.bcast_in.get_mut(&id) else {
            self.ledger.violation(
                "broadcast_stream",
                format!(
                    "broadcast {:?} for {} not being received",
                    h.frame_type,
                    hex(&id)
                ),
            );
            return;
        };
        if h.sequence != *seq {
            self.ledger.violation(
                "broadcast_stream",
                format!("broadcast seq {} != {seq}", h.sequence),
            );
        }
        *seq += 1;
        verifier.feed(&frame.payload);
        if !h.is_final {
            return;
        }
        let Some((_, verifier)) = conn.bcast_in.remove(&id) else {
            return;
        };
        match verifier.finish() {
            Ok((head, _))
                if head.kind == body::Kind::Broadcast
                    && (!head.wire_id_known || head.id == id)
                    && head.author == *h.client_id.as_bytes() =>
            {
                self.ledger.count("broadcasts.delivered", 1);
                // Recorded before the ACK leaves: a peer that acked has always said so.
                self.ledger.acked(head.id);
                let ack = Header {
                    flags: Flags::BROADCAST,
                    request_id: h.request_id,
                    ..conn.header(FrameType::Ack)
                };
                conn.queue(ack, Bytes::new());
            }
            Ok((head, _)) => self.ledger.violation(
                "foreign_broadcast",
                format!(
                    "broadcast {} carried the body of {}",
                    hex(&id),
                    hex(&head.id)
                ),
            ),
            Err(e) => self
                .ledger
                .violation("corrupt_broadcast", format!("broadcast {}: {e}", hex(&id))),
        }
    }

    pub(super) fn next_op(&mut self, token: usize) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let Role::Sender(s) = &mut conn.role else {
            return;
        };
        s.op_scheduled = false;
        if s.leaving || self.ledger.phase() != RUNNING {
            return;
        }
        if s.in_flight.len() >= self.load.in_flight {
            return; // Rescheduled when one ends.
        }
        let broadcast = !s.broadcasting && self.rng.gen_bool(self.load.p_broadcast);
        if broadcast {
            self.start_broadcast(token);
        } else {
            self.start_request(token, None);
        }
        self.schedule_next_op(token);
    }

    pub(super) fn schedule_next_op(&mut self, token: usize) {
        let think = self.jitter(0, self.load.think_ms);
        let Some(Role::Sender(s)) = self.conns.get_mut(&token).map(|c| &mut c.role) else {
            return;
        };
        if s.op_scheduled || s.leaving || s.in_flight.len() >= self.load.in_flight {
            return;
        }
        s.op_scheduled = true;
        self.timer(now() + think, TimerKind::NextOp(token));
    }

    /// After a request or broadcast ended: maybe a new one, maybe the sender is done leaving.
    pub(super) fn after_outcome(&mut self, token: usize) {
        if let Some(Role::Sender(s)) = self.conns.get(&token).map(|c| &c.role) {
            if s.leaving {
                self.maybe_finish_sender(token);
                return;
            }
        }
        self.schedule_next_op(token);
    }

    /// Picks a request: size, behaviour, timeout, framing. `partial`: send only this many body
    /// frames of a body of more frames (a sender about to vanish mid-body).
    pub(super) fn start_request(&mut self, token: usize, partial: Option<usize>) -> Option<usize> {
        let load = Arc::clone(&self.load);
        let len = if partial.is_some() {
            self.rng.gen_range(load.max_body / 2..=load.max_body)
        } else {
            log_uniform(&mut self.rng, load.min_body, load.max_body)
        };
        let roll: f64 = self.rng.gen();
        let (behavior, timeout_ms) = if roll < load.p_late {
            let timeout = self.rng.gen_range(200..=1000);
            (
                Behavior::Late {
                    extra_ms: self.rng.gen_range(300..=600),
                },
                timeout,
            )
        } else if roll < load.p_late + load.p_never {
            (Behavior::Never, self.rng.gen_range(200..=1000))
        } else if roll < load.p_late + load.p_never + load.p_cancel {
            (Behavior::Cancel, load.timeout_ms)
        } else {
            (
                Behavior::Answer {
                    delay_ms: self.rng.gen_range(0..=load.service_ms),
                },
                load.timeout_ms,
            )
        };
        let response_len = log_uniform(&mut self.rng, load.min_body, load.max_body) as u32;
        let max_payload = load.max_payload as usize;
        // Half the bodies go as few frames as the payload limit allows; the others are streamed
        // in chunks of 1 KiB .. 256 KiB. Responses alike.
        let chunk_of = |rng: &mut StdRng| {
            if rng.gen_bool(0.5) {
                max_payload
            } else {
                log_uniform(rng, 1024, 256 * 1024).min(max_payload)
            }
        };
        let chunk = if partial.is_some() {
            (len / 8).max(16)
        } else {
            chunk_of(&mut self.rng)
        };
        let response_chunk = chunk_of(&mut self.rng) as u32;
        let conn = self.conns.get_mut(&token)?;
        let id = RequestId::random();
        let head = Head::request(
            *id.as_bytes(),
            *conn.client.as_bytes(),
            len as u32,
            behavior,
            true,
        )
        .with_response(response_len, response_chunk);
        let body = Bytes::from(head.build());
        let hash = body::hash(&body);
        let frames = body.len().div_ceil(chunk).max(1);
        let send_frames = partial.map_or(frames, |p| p.min(frames - 1));
        for (seq, start) in (0..body.len()).step_by(chunk).enumerate().take(send_frames) {
            let end = (start + chunk).min(body.len());
            let frame_type = match seq {
                0 => FrameType::Start,
                _ if seq + 1 == frames => FrameType::End,
                _ => FrameType::Chunk,
            };
            let header = Header {
                flags: Flags::REQUEST,
                request_id: id,
                timeout_ms: if seq == 0 { timeout_ms } else { 0 },
                sequence: seq as u32,
                is_final: seq + 1 == frames,
                ..conn.header(frame_type)
            };
            conn.queue(header, body.slice(start..end));
        }
        let Role::Sender(s) = &mut conn.role else {
            return None;
        };
        let sent = now();
        s.in_flight.insert(
            *id.as_bytes(),
            Out {
                head,
                hash,
                frames: frames as u32,
                timeout_ms,
                sent,
                broadcast: false,
                response: None,
            },
        );
        self.ledger.count("requests.sent", 1);
        self.ledger
            .count(&format!("requests.behavior_{}", behavior.name()), 1);
        if frames > 1 {
            self.ledger.count("requests.streamed", 1);
        }
        let deadline = sent + Duration::from_millis(timeout_ms.into()) + load.grace;
        self.timer(deadline, TimerKind::Deadline(token, *id.as_bytes()));
        self.flush(token);
        Some(send_frames)
    }

    pub(super) fn start_broadcast(&mut self, token: usize) {
        let load = Arc::clone(&self.load);
        let len = log_uniform(&mut self.rng, load.min_body, load.max_broadcast);
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let id = RequestId::random();
        let head = Head::broadcast(*id.as_bytes(), *conn.client.as_bytes(), len as u32, true);
        let body = Bytes::from(head.build());
        let chunk = (load.max_payload as usize).min(16 * 1024);
        let frames = body.len().div_ceil(chunk).max(1);
        let timeout_ms = load.timeout_ms;
        for (seq, start) in (0..body.len()).step_by(chunk).enumerate() {
            let end = (start + chunk).min(body.len());
            let frame_type = match seq {
                0 => FrameType::Start,
                _ if seq + 1 == frames => FrameType::End,
                _ => FrameType::Chunk,
            };
            let header = Header {
                flags: Flags::REQUEST | Flags::BROADCAST,
                request_id: id,
                timeout_ms: if seq == 0 { timeout_ms } else { 0 },
                sequence: seq as u32,
                is_final: seq + 1 == frames,
                ..conn.header(frame_type)
            };
            conn.queue(header, body.slice(start..end));
        }
        let Role::Sender(s) = &mut conn.role else {
            return;
        };
        s.broadcasting = true;
        let sent = now();
        s.in_flight.insert(
            *id.as_bytes(),
            Out {
                head,
                hash: 0,
                frames: frames as u32,
                timeout_ms,
                sent,
                broadcast: true,
                response: None,
            },
        );
        self.ledger.count("broadcasts.sent", 1);
        let deadline = sent + Duration::from_millis(timeout_ms.into()) + load.grace;
        self.timer(deadline, TimerKind::Deadline(token, *id.as_bytes()));
        self.flush(token);
    }

    pub(super) fn deadline(&mut self, token: usize, id: [u8; 16]) {
        let Some(Role::Sender(s)) = self.conns.get_mut(&token).map(|c| &mut c.role) else {
            return;
        };
        if let Some(out) = s.in_flight.remove(&id) {
            s.ended.insert(id, true);
            if out.broadcast {
                s.broadcasting = false;
            }
            self.ledger.violation(
                "unanswered",
                format!(
                    "{} {} got no outcome within its timeout ({} ms) + grace",
                    if out.broadcast {
                        "broadcast"
                    } else {
                        "request"
                    },
                    hex(&id),
                    out.timeout_ms
                ),
            );
            self.after_outcome(token);
        }
    }
}
