//! The cross-structure invariants of the router (see the module docs of `router`), checked
//! after every step of the randomized and fuzz tests. The cost is linear in the state: tests only.

use super::{Router, StreamKey};

impl Router {
    /// Verifies the cross-structure invariants; panics with a description when one is broken.
    /// For tests (cost is linear in the state).
    #[doc(hidden)]
    pub fn check_invariants(&self) {
        let mut held = 0;
        for (key, request) in self.requests.iter() {
            assert_eq!(
                self.streams.get(&request.id),
                Some(&StreamKey::Request(key))
            );
            assert!(
                self.wheel.deadline(request.timer).is_some(),
                "request without a timer"
            );
            held += request.held_bytes();
            if let Some(receiver) = request.receiver() {
                let c = self.conns.get(receiver).expect("receiver alive");
                assert!(c.streams().contains(&StreamKey::Request(key)));
                assert!(!c.is_read_closed(), "{receiver}: read-closed receiver");
            }
            let s = self.conns.get(request.sender).expect("sender alive");
            assert!(s.streams().contains(&StreamKey::Request(key)));
        }
        for (key, broadcast) in self.broadcasts.iter() {
            assert_eq!(
                self.streams.get(&broadcast.id),
                Some(&StreamKey::Broadcast(key))
            );
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
    }
}
