//! Graceful shutdown: finish what is in flight, start nothing new, then close.
//!
//! ("Shutdown" is this phase's only name in the router; a queue whose bytes were all written is
//! "empty", and outputs are "polled".)
//!
//! ```text
//!  begin_shutdown ─▶ every connection gets ERROR GOING_AWAY (nil request id) — one awaiting its
//!                 hello too, which is then closed (it has nothing in flight);
//!                 new handshakes get GOING_AWAY and are closed; new requests and broadcasts get
//!                 SHUTTING_DOWN; requests and broadcasts in flight go on; waiting requests may
//!                 still be assigned; presence has no grace period any more
//!       │
//!       ├─ a connection with nothing left to do (no stream in flight, and not a receiver with
//!       │  credit on a channel where requests wait) is closed
//!       ▼
//!  shutdown deadline ─▶ every request and broadcast still in flight ends with SHUTTING_DOWN to its
//!                    sender and CANCEL to its receivers; every connection is closed
//! ```
//! The router is shut down ([`Router::is_shut_down`]) once no connection is left.

use std::time::{Duration, Instant};

use super::{insert_timer, Router, StreamKey, TimerTarget};
use crate::ids::{ConnId, RequestId};
use crate::protocol::ErrorCode;

impl Router {
    /// Begins a graceful shutdown that ends at `now + deadline` at the latest. Idempotent.
    pub fn begin_shutdown(&mut self, now: Instant, deadline: Duration) {
        self.now = self.now.max(now);
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        log::info!(
            "shutting down: {} connections, deadline in {deadline:?}",
            self.conns.len()
        );
        let tick = self.deadline_tick(now, deadline);
        self.shutdown_timer = Some(insert_timer(
            &mut self.wheel,
            tick,
            TimerTarget::ShutdownDeadline,
        ));
        // Ghosts would hold their channels (and timers) past the end: they leave now.
        let ghosts: Vec<_> = self
            .channels
            .iter()
            .flat_map(|(id, c)| c.ghosts.iter().map(move |g| (*id, g.client, g.timer)))
            .collect();
        for (channel, client, timer) in ghosts {
            self.wheel.remove(timer);
            self.expire_ghost(channel, client);
        }
        let open: Vec<ConnId> = self.conns.iter().map(|(id, _)| id).collect();
        for conn in open {
            if self
                .conns
                .get(conn)
                .is_some_and(|c| c.is_open() || c.is_awaiting_hello())
            {
                self.send_error(
                    conn,
                    ErrorCode::GoingAway,
                    RequestId::NIL,
                    "the broker is shutting down: finish what is in flight, start nothing new",
                );
            }
        }
        self.close_idle_for_shutdown();
    }

    /// True once a shutdown began and every connection is gone.
    pub fn is_shut_down(&self) -> bool {
        self.shutting_down && self.conns.len() == 0
    }

    /// True while a graceful shutdown is under way.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// Closes the connections that have nothing left to do. Called after every input while
    /// shutting down.
    pub(super) fn close_idle_for_shutdown(&mut self) {
        if !self.shutting_down {
            return;
        }
        let idle: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| !c.is_closing())
            .filter(|(_, c)| c.streams().is_empty())
            .filter(|(_, c)| !(c.window() > 0 && self.waiting_len(c.channel()) > 0))
            .map(|(id, _)| id)
            .collect();
        for conn in idle {
            self.close_connection(conn, None);
        }
    }

    /// The shutdown deadline passed: end everything still in flight and close every connection.
    pub(super) fn expire_shutdown(&mut self, now: Instant) {
        self.shutdown_timer = None;
        let streams: Vec<StreamKey> = self.streams.values().copied().collect();
        for stream in streams {
            match stream {
                StreamKey::Request(key) => self.end_request_for_shutdown(key, now),
                StreamKey::Broadcast(key) => self.end_broadcast_for_shutdown(key),
            }
        }
        let all: Vec<ConnId> = self.conns.iter().map(|(id, _)| id).collect();
        for conn in all {
            self.close_connection(conn, None);
        }
    }
}
