//! The cross-structure invariants of the router (see the module docs of `router`), checked
//! after every step of the randomized and fuzz tests. The cost is linear in the state: tests only.

use hashbrown::HashSet;

use super::{Router, StreamKey};

impl Router {
    /// Verifies the cross-structure invariants; panics with a description when one is broken.
    /// For tests (cost is linear in the state).
    #[doc(hidden)]
    pub fn check_invariants(&self) {
        self.check_admission_invariants();
        self.check_scope_invariants();
        let mut held = 0;
        // Streams of departed connections waiting for the amortised cleanup (`lifecycle.rs`):
        // the only ones that may name a connection that is gone.
        let pending: HashSet<StreamKey> = self.cleanup.iter().map(|(s, _)| *s).collect();
        let alive = |conn| self.conns.get(conn).is_some_and(|c| !c.is_closing());
        for (key, request) in self.requests.iter() {
            let stream = StreamKey::Request(key);
            if !alive(request.sender) || request.receiver().is_some_and(|r| !alive(r)) {
                assert!(
                    pending.contains(&stream),
                    "a departed party's request not in cleanup"
                );
                assert!(!request.is_queued(), "a departed sender's waiting request");
            }
            assert!(
                self.wheel.deadline(request.timer).is_some(),
                "request without a timer"
            );
            held += request.held_bytes();
            if let Some(c) = request.receiver().and_then(|r| self.conns.get(r)) {
                assert!(pending.contains(&stream) || c.streams().contains(&stream));
                assert!(
                    pending.contains(&stream) || !c.is_read_closed(),
                    "a read-closed receiver holds a request"
                );
            }
            if let Some(s) = self.conns.get(request.sender) {
                assert!(pending.contains(&stream) || s.streams().contains(&stream));
            }
        }
        for (_, broadcast) in self.broadcasts.iter() {
            assert!(
                self.wheel.deadline(broadcast.timer).is_some(),
                "broadcast without a timer"
            );
        }
        assert_eq!(held, self.held_bytes, "held bytes");
        assert_eq!(
            self.streams.len(),
            self.requests.len() + self.broadcasts.len()
        );
        let heartbeats = self
            .conns
            .iter()
            .filter(|(_, c)| c.liveness().has_timer())
            .count();
        let handshakes = self
            .conns
            .iter()
            .filter(|(_, c)| c.has_handshake_deadline())
            .inspect(|(_, c)| {
                assert!(
                    c.is_awaiting_hello(),
                    "{}: handshake timer after the handshake",
                    c.id()
                )
            })
            .count();
        let shutdown = usize::from(self.shutdown_timer.is_some());
        assert_eq!(
            self.wheel.len(),
            self.requests.len()
                + self.broadcasts.len()
                + heartbeats
                + handshakes
                + self.ghost_timers()
                + shutdown,
            "timers"
        );
        let mut outbound = 0;
        for (_, c) in self.conns.iter() {
            outbound += c.outbound().len();
            c.outbound().check_invariants();
            // Set on every push over the high watermark, cleared only at or below the low one.
            assert!(
                c.outbound().len() <= self.config.high_watermark || c.is_congested(),
                "{}: over the high watermark but not congested",
                c.id()
            );
            // A request a client sends to itself is listed twice (sender and receiver).
            let held: hashbrown::HashSet<&StreamKey> = c
                .streams()
                .iter()
                .filter(|s| match s {
                    StreamKey::Request(k) => self
                        .requests
                        .get(*k)
                        .is_some_and(|r| r.receiver() == Some(c.id())),
                    StreamKey::Broadcast(_) => false,
                })
                .collect();
            let in_flight = held.len() as u32;
            assert_eq!(in_flight, c.in_flight(), "{}: in-flight count", c.id());
            let sent = self
                .requests
                .iter()
                .filter(|(_, r)| r.sender == c.id())
                .count()
                + self
                    .broadcasts
                    .iter()
                    .filter(|(_, b)| b.sender == c.id())
                    .count();
            assert_eq!(sent, c.sent_in_flight(), "{}: sent in-flight count", c.id());
        }
        assert_eq!(outbound, self.outbound_bytes, "outbound bytes");
        // The budget's waiters are exactly the connections it pauses, each once.
        let waiters: HashSet<_> = self.budget_waiters.iter().copied().collect();
        assert_eq!(
            waiters.len(),
            self.budget_waiters.len(),
            "budget waiters listed once"
        );
        for (conn, c) in self.conns.iter() {
            assert_eq!(
                c.is_paused_by_budget(),
                waiters.contains(&conn),
                "{conn}: budget pause"
            );
        }
        assert!(
            waiters.iter().all(|w| self.conns.contains(*w)),
            "budget waiter gone"
        );
    }
}
