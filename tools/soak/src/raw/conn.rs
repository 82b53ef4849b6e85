//! The raw clients' connections: connecting, reading and writing on readiness, dropping a
//! connection (FIN or RST), and the ways a churned client leaves.

use super::*;

impl Driver {
    pub(super) fn connect(&mut self, channel: usize, role: Role) -> Option<usize> {
        let std_stream = match std::net::TcpStream::connect(self.load.addr) {
            Ok(s) => s,
            Err(e) => {
                self.ledger
                    .violation("connect_failed", format!("raw connect: {e}"));
                return None;
            }
        };
        let _ = std_stream.set_nodelay(true);
        if std_stream.set_nonblocking(true).is_err() {
            return None;
        }
        let mut stream = TcpStream::from_std(std_stream);
        let token = self.next_token;
        self.next_token += 1;
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Token(token),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            self.ledger.violation("harness", format!("register: {e}"));
            return None;
        }
        let mut conn = Conn {
            stream,
            channel,
            channel_id: self.load.channels[channel],
            client: ClientId::NIL,
            departed: false,
            joined: false,
            decoder: Decoder::new(MAX_PAYLOAD_CEILING),
            inbuf: BytesMut::new(),
            out: VecDeque::new(),
            out_pos: 0,
            fin_sent: false,
            fin_when_flushed: false,
            bcast_in: HashMap::new(),
            bcast_seen: HashSet::new(),
            role,
        };
        let hello = Header {
            channel_id: self.load.channels[channel],
            ..Header::new(FrameType::Hello)
        };
        conn.queue(hello, Bytes::new());
        self.conns.insert(token, conn);
        self.ledger.count("clients.connects", 1);
        self.ledger.count("clients.connects_raw", 1);
        self.flush(token);
        Some(token)
    }

    pub(super) fn spawn_sender(&mut self, channel: usize) {
        if self
            .connect(channel, Role::Sender(SenderState::default()))
            .is_some()
        {
            self.senders_live[channel] += 1;
        } else {
            let at = now() + self.jitter(200, 500);
            self.timer(at, TimerKind::SpawnSender(channel));
        }
    }

    pub(super) fn spawn_receiver(&mut self, channel: usize, stable: bool) {
        let role = Role::Receiver(ReceiverState {
            window: self.load.window,
            stable,
            held: HashMap::new(),
            ended: HashMap::new(),
            answers: HashMap::new(),
            scheduled: 0,
            leaving: false,
            barrier: false,
            reset_at_broadcast: false,
        });
        if self.connect(channel, role).is_none() && !stable {
            let at = now() + self.jitter(200, 500);
            self.timer(at, TimerKind::SpawnReceiver(channel));
        }
    }

    /// Drops a connection (its socket closes: FIN, or RST when `reset`) and schedules its
    /// replacement while the round runs.
    pub(super) fn drop_conn(&mut self, token: usize, reset: bool, abrupt: bool) {
        let Some(mut conn) = self.conns.remove(&token) else {
            return;
        };
        if reset {
            sockets::reset_on_close(&conn.stream);
        }
        let _ = self.poll.registry().deregister(&mut conn.stream);
        let receiver = matches!(conn.role, Role::Receiver(_));
        if conn.joined && !conn.departed {
            self.ledger.depart(Departure {
                channel: conn.channel,
                client: *conn.client.as_bytes(),
                at: now(),
                abrupt,
                receiver,
            });
        }
        self.ledger.count("clients.disconnects", 1);
        let channel = conn.channel;
        match conn.role {
            Role::Sender(s) => {
                if !s.in_flight.is_empty() {
                    self.ledger.count(
                        "requests.abandoned_by_sender",
                        s.in_flight.values().filter(|o| !o.broadcast).count() as u64,
                    );
                    self.ledger.count(
                        "broadcasts.abandoned_by_sender",
                        s.in_flight.values().filter(|o| o.broadcast).count() as u64,
                    );
                }
                self.senders_live[channel] -= 1;
                if self.ledger.phase() == RUNNING {
                    let at = now() + self.jitter(50, 500);
                    self.timer(at, TimerKind::SpawnSender(channel));
                }
            }
            Role::Receiver(r) => {
                if reset {
                    self.ledger.abandon(r.held.keys().copied());
                }
                if !r.stable && self.ledger.phase() == RUNNING {
                    let at = now() + self.jitter(50, 500);
                    self.timer(at, TimerKind::SpawnReceiver(channel));
                }
            }
        }
        // Dropping `conn.stream` closes the socket here.
    }

    pub(super) fn read_ready(&mut self, token: usize) {
        let Some(mut conn) = self.conns.remove(&token) else {
            return;
        };
        let mut closed: Option<String> = None;
        loop {
            match conn.stream.read(&mut self.scratch) {
                Ok(0) => {
                    closed = Some("EOF".into());
                    break;
                }
                Ok(n) => conn.inbuf.extend_from_slice(&self.scratch[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    closed = Some(e.to_string());
                    break;
                }
            }
        }
        let mut frames = Vec::new();
        loop {
            match conn.decoder.decode(&mut conn.inbuf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(e) => {
                    self.ledger.violation(
                        "undecodable",
                        format!("broker sent an undecodable frame: {e}"),
                    );
                    closed = Some("decode error".into());
                    break;
                }
            }
        }
        self.conns.insert(token, conn);
        for frame in frames {
            if !self.conns.contains_key(&token) {
                return;
            }
            self.handle_frame(token, frame);
        }
        if let Some(why) = closed {
            let Some(conn) = self.conns.get(&token) else {
                return;
            };
            if !conn.fin_sent {
                self.ledger.violation(
                    "connection_lost",
                    format!("the broker closed a raw connection ({why})"),
                );
            }
            self.drop_conn(token, false, false);
            return;
        }
        self.flush(token);
    }

    pub(super) fn flush(&mut self, token: usize) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        while let Some(front) = conn.out.front() {
            match conn.stream.write(&front[conn.out_pos..]) {
                Ok(n) => {
                    conn.out_pos += n;
                    if conn.out_pos == front.len() {
                        conn.out.pop_front();
                        conn.out_pos = 0;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let lost = !conn.fin_sent;
                    if lost {
                        self.ledger.violation(
                            "connection_lost",
                            format!("write to the broker failed: {e}"),
                        );
                    }
                    self.drop_conn(token, false, false);
                    return;
                }
            }
        }
        if conn.fin_when_flushed && !conn.fin_sent {
            conn.fin_sent = true;
            let _ = conn.stream.shutdown(Shutdown::Write);
        }
    }

    pub(super) fn leave(&mut self, token: usize) {
        let Some(conn) = self.conns.get(&token) else {
            return;
        };
        if self.ledger.phase() != RUNNING {
            return; // The round's own drain takes over.
        }
        match &conn.role {
            Role::Receiver(r) => {
                let holding = !r.held.is_empty();
                let fate = if r.reset_at_broadcast {
                    0 // No broadcast came within a second: reset now.
                } else {
                    self.rng.gen_range(0..4)
                };
                match fate {
                    0 => {
                        self.ledger.count("faults.rst_receiver", 1);
                        if holding {
                            self.ledger.count("faults.rst_receiver_holding", 1);
                        }
                        self.drop_conn(token, true, true);
                    }
                    1 => {
                        // Die in the middle of a broadcast: the sender must get
                        // BROADCAST_INCOMPLETE naming this peer.
                        if let Some(Role::Receiver(r)) =
                            self.conns.get_mut(&token).map(|c| &mut c.role)
                        {
                            r.reset_at_broadcast = true;
                        }
                        self.timer(now() + Duration::from_secs(1), TimerKind::Leave(token));
                    }
                    _ => {
                        self.ledger.count("clients.graceful_leave_raw_receiver", 1);
                        self.start_receiver_leave(token);
                    }
                }
            }
            Role::Sender(_) => {
                let fate = match self.rng.gen_range(0..8) {
                    0..=3 => Fate::Graceful,
                    4 => Fate::Reset,
                    5 | 6 => Fate::ResetMidBody,
                    _ => Fate::FinMidBody,
                };
                self.sender_fate(token, fate);
            }
        }
    }

    pub(super) fn sender_fate(&mut self, token: usize, fate: Fate) {
        match fate {
            Fate::Graceful => {
                self.ledger.count("clients.graceful_leave_raw_sender", 1);
                if let Some(Role::Sender(s)) = self.conns.get_mut(&token).map(|c| &mut c.role) {
                    s.leaving = true;
                }
                self.maybe_finish_sender(token);
            }
            Fate::Reset => {
                let awaiting = matches!(
                    self.conns.get(&token).map(|c| &c.role),
                    Some(Role::Sender(s)) if !s.in_flight.is_empty()
                );
                if !awaiting {
                    self.start_request(token, None);
                }
                self.ledger.count("faults.rst_sender_awaiting", 1);
                self.drop_conn(token, true, true);
            }
            Fate::ResetMidBody | Fate::FinMidBody => {
                let frames = self.rng.gen_range(1..=4);
                self.start_request(token, Some(frames));
                // Let the socket take what it will of the partial body, then go.
                self.flush(token);
                if matches!(fate, Fate::ResetMidBody) {
                    self.ledger.count("faults.rst_sender_mid_body", 1);
                    self.drop_conn(token, true, true);
                } else {
                    self.ledger.count("faults.fin_sender_mid_body", 1);
                    let Some(conn) = self.conns.get_mut(&token) else {
                        return;
                    };
                    if let Role::Sender(s) = &mut conn.role {
                        s.leaving = true;
                        // The sender is gone as far as its requests go: what is in flight is
                        // abandoned, and answers already on their way are not judged.
                        let gone: Vec<([u8; 16], Out)> = s.in_flight.drain().collect();
                        for (id, out) in gone {
                            let key = if out.broadcast {
                                "broadcasts"
                            } else {
                                "requests"
                            };
                            self.ledger.count(&format!("{key}.abandoned_by_sender"), 1);
                            s.vanished.insert(id);
                        }
                    }
                    self.leave_with_fin(token, true);
                }
            }
        }
    }

    /// A leaving sender with nothing in flight: FIN, then wait for the broker's EOF.
    pub(super) fn maybe_finish_sender(&mut self, token: usize) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let Role::Sender(s) = &conn.role else {
            return;
        };
        if !s.leaving || !s.in_flight.is_empty() || conn.fin_when_flushed {
            return;
        }
        if !conn.joined {
            self.drop_conn(token, false, false);
            return;
        }
        self.leave_with_fin(token, false);
    }

    /// A joined connection leaves: FIN once its queue is flushed, then the broker's EOF ends it.
    /// The departure counts from now (the ledger judges outcomes against it).
    pub(super) fn leave_with_fin(&mut self, token: usize, abrupt: bool) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        conn.fin_when_flushed = true;
        conn.departed = true;
        self.ledger.depart(Departure {
            channel: conn.channel,
            client: *conn.client.as_bytes(),
            at: now(),
            abrupt,
            receiver: matches!(conn.role, Role::Receiver(_)),
        });
        self.flush(token);
    }

    /// RECEIVE(0), then finish what is held (see [`Driver::maybe_finish_receiver`]).
    pub(super) fn start_receiver_leave(&mut self, token: usize) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let Role::Receiver(r) = &mut conn.role else {
            return;
        };
        if r.leaving {
            return;
        }
        r.leaving = true;
        if conn.joined {
            // A PING after the RECEIVE(0): its PONG proves the broker processed the window, and
            // any request assigned before that arrives ahead of it. Until then we keep serving.
            r.barrier = true;
            let receive = conn.header(FrameType::Receive);
            conn.queue(receive, encode_u32(0));
            let ping = Header {
                sequence: BARRIER_PING,
                ..conn.header(FrameType::Ping)
            };
            conn.queue(ping, Bytes::new());
        }
        self.flush(token);
        self.maybe_finish_receiver(token);
    }

    /// A leaving receiver that holds nothing and has no response scheduled: FIN, wait for EOF.
    pub(super) fn maybe_finish_receiver(&mut self, token: usize) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let Role::Receiver(r) = &conn.role else {
            return;
        };
        if !r.leaving || r.barrier || !r.held.is_empty() || r.scheduled > 0 || conn.fin_when_flushed
        {
            return;
        }
        if !conn.joined {
            self.drop_conn(token, false, false);
            return;
        }
        self.leave_with_fin(token, false);
    }
}
