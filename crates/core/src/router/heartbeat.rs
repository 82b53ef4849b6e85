//! Heartbeats: finding connections that went silent (a dead peer, a half-open TCP connection).
//!
//! Design: nothing happens per frame except storing the frame's tick in `last_activity`. Each
//! connection has one timer in the wheel. When it fires:
//!
//! ```text
//!   heard from since the last ping ─▶ unanswered = 0 (then as below)
//!   heard from within the interval ─▶ re-arm at last_activity + interval
//!   silent for a whole interval ───▶ unanswered < misses: PING, unanswered += 1, re-arm in interval
//!                                    unanswered = misses: ERROR HEARTBEAT_TIMEOUT, close
//! ```
//! So a busy connection costs one timer re-arm per interval, whatever its frame rate, and a
//! silent one is closed after `interval × (misses + 1)`. Any frame counts as a sign of life, a
//! PONG included. A connection whose reading flow control has paused cannot be heard (its frames
//! wait unread in the socket), so for it a sign of life is taking bytes of its outbound queue:
//! with an empty queue it is never pinged nor closed; with bytes queued that it does not take for
//! `interval × (misses + 1)` it is closed (a client that stopped reading its socket, paused for
//! its own unread answers, would otherwise collect presence frames and pings without bound).
//! The timer is armed at accept, so a connection that never says hello is pinged and closed the
//! same way.
//!
//! A paused connection with nothing queued still gets a *probe* every interval: a PING with
//! sequence 0, whose answer is not awaited (it waits unread behind the input the broker is not
//! reading). Its purpose is the write: a client that exited while paused may have left its FIN
//! behind request bytes the broker will never read, invisible; a segment sent to its closed
//! socket draws an RST, which the I/O layer sees at once as a departure — so what the broker
//! held for it is freed within an interval, not at its requests' timeouts (1 h at most).

use std::time::Instant;

use super::{insert_timer, Router, TimerTarget};
use crate::ids::ConnId;
use crate::protocol::{ErrorCode, FrameType, Header};
use crate::wheel::TimerKey;

/// What the heartbeat knows of one connection. Ticks are the wheel's (milliseconds).
#[derive(Default)]
pub(super) struct Liveness {
    /// Tick of the last frame received from it.
    last_activity: u64,
    /// Tick of the last write that took bytes of its outbound queue: while its reading is
    /// paused, the only sign of life the broker can see.
    last_written: u64,
    /// Its armed heartbeat timer (none when heartbeats are off, or while it fires).
    timer: Option<TimerKey>,
    /// Pings sent since it was last heard from.
    unanswered_pings: u32,
    /// Tick at which the last ping was sent (a frame at or after it answers it).
    pinged_at: u64,
}

/// What a firing heartbeat timer decided.
enum Verdict {
    /// Alive: re-arm at `next`.
    Alive { next: u64 },
    /// Silent for an interval: send PING `sequence`, re-arm at `next`.
    Ping { sequence: u32, next: u64 },
    /// Silent through every allowed ping: close it.
    Dead { silent_for: u64 },
}

impl Liveness {
    /// A frame arrived from it (the heartbeat's whole per-frame cost: one store).
    pub(super) fn heard(&mut self, tick: u64) {
        self.last_activity = tick;
    }

    /// A write took bytes of its outbound queue.
    pub(super) fn wrote(&mut self, tick: u64) {
        self.last_written = tick;
    }

    pub(super) fn set_timer(&mut self, timer: TimerKey) {
        self.timer = Some(timer);
    }

    pub(super) fn take_timer(&mut self) -> Option<TimerKey> {
        self.timer.take()
    }

    pub(super) fn has_timer(&self) -> bool {
        self.timer.is_some()
    }

    /// The timer fired at `tick`. `paused_queue_empty` is `Some(queue is empty)` while flow
    /// control pauses its reading, `None` otherwise. See the module docs.
    fn check(
        &mut self,
        tick: u64,
        interval_ms: u64,
        misses: u32,
        paused_queue_empty: Option<bool>,
    ) -> Verdict {
        match paused_queue_empty {
            // Flow control stopped reading it, so its frames (its PONGs too) wait unread: its
            // silence is ours. It is alive if it owes nothing (an empty queue: paused for
            // someone else's sake) or takes what is queued for it; a paused connection that
            // takes nothing for the whole heartbeat window is stuck, and closed like a silent
            // one — else it would collect presence frames and pings without bound.
            Some(true) => {
                self.last_activity = tick;
                self.unanswered_pings = 0;
            }
            Some(false) => self.last_activity = self.last_activity.max(self.last_written),
            None => {}
        }
        if self.last_activity >= self.pinged_at {
            // Heard from since the last ping: it is alive, whatever the interval says.
            self.unanswered_pings = 0;
        }
        let silent_for = tick.saturating_sub(self.last_activity);
        if silent_for < interval_ms {
            Verdict::Alive {
                next: self.last_activity + interval_ms,
            }
        } else if self.unanswered_pings < misses {
            self.unanswered_pings += 1;
            // Strictly after `last_activity`: only a frame that arrives from now on answers it.
            self.pinged_at = tick.max(self.last_activity + 1);
            Verdict::Ping {
                sequence: self.unanswered_pings,
                next: tick + interval_ms,
            }
        } else {
            Verdict::Dead { silent_for }
        }
    }
}

impl Router {
    /// Arms the first heartbeat of a new connection.
    pub(super) fn arm_heartbeat(&mut self, conn: ConnId, now: Instant) {
        let interval = self.config.heartbeat_interval;
        if interval.is_zero() {
            return;
        }
        let tick = self.tick(now);
        let deadline = self.deadline_tick(now, interval);
        let timer = insert_timer(&mut self.wheel, deadline, TimerTarget::Heartbeat(conn));
        if let Some(c) = self.conns.get_mut(conn) {
            let liveness = c.liveness_mut();
            liveness.heard(tick);
            liveness.set_timer(timer);
        }
    }

    /// A connection's heartbeat timer fired.
    pub(super) fn expire_heartbeat(&mut self, conn: ConnId, now: Instant) {
        let interval_ms = self.config.heartbeat_interval.as_millis() as u64;
        let misses = self.config.heartbeat_misses;
        let tick = self.tick(now);
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        c.liveness_mut().take_timer();
        if c.is_closing() {
            return;
        }
        // A connection that shut its write side cannot be heard either (`half_close.rs`).
        let unheard = c.is_read_paused() || c.is_read_closed();
        let paused_queue_empty = unheard.then(|| c.outbound().is_empty());
        let channel_id = c.channel();
        if paused_queue_empty == Some(true) {
            // The probe (see the module docs): only its write matters.
            let probe = Header {
                channel_id,
                sequence: 0,
                ..Header::new(FrameType::Ping)
            };
            self.send(conn, &probe, &bytes::Bytes::new(), None);
        }
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        let next = match c
            .liveness_mut()
            .check(tick, interval_ms, misses, paused_queue_empty)
        {
            Verdict::Alive { next } => next,
            Verdict::Ping { sequence, next } => {
                let ping = Header {
                    channel_id,
                    sequence,
                    is_final: true,
                    ..Header::new(FrameType::Ping)
                };
                self.send(conn, &ping, &bytes::Bytes::new(), None);
                next
            }
            Verdict::Dead { silent_for } => {
                log::debug!("{conn}: no answer to {misses} pings; closing");
                return self.fail_connection(
                    conn,
                    ErrorCode::HeartbeatTimeout,
                    &format!("silent for {silent_for} ms; {misses} pings unanswered"),
                );
            }
        };
        let timer = insert_timer(&mut self.wheel, next, TimerTarget::Heartbeat(conn));
        if let Some(c) = self.conns.get_mut(conn) {
            c.liveness_mut().set_timer(timer);
        }
    }
}
