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

use std::time::Instant;

use super::connection::ConnState;
use super::{insert_timer, Router, TimerTarget};
use crate::ids::ConnId;
use crate::protocol::{ErrorCode, FrameType, Header};

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
            c.last_activity = tick;
            c.heartbeat = Some(timer);
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
        c.heartbeat = None;
        if matches!(c.state, ConnState::Closing) {
            return;
        }
        if c.is_read_paused() {
            // Flow control stopped reading it, so its frames (its PONGs too) wait unread: its
            // silence is ours. It is alive if it owes nothing (an empty queue: paused for
            // someone else's sake) or takes what is queued for it; a paused connection that
            // takes nothing for the whole heartbeat window is stuck, and closed like a silent
            // one — else it would collect presence frames and pings without bound.
            if c.outbound.is_empty() {
                c.last_activity = tick;
                c.unanswered_pings = 0;
            } else {
                c.last_activity = c.last_activity.max(c.last_written);
            }
        }
        if c.last_activity >= c.pinged_at {
            // Heard from since the last ping: it is alive, whatever the interval says.
            c.unanswered_pings = 0;
        }
        let silent_for = tick.saturating_sub(c.last_activity);
        let next = if silent_for < interval_ms {
            c.last_activity + interval_ms
        } else if c.unanswered_pings < misses {
            c.unanswered_pings += 1;
            // Strictly after `last_activity`: only a frame that arrives from now on answers it.
            c.pinged_at = tick.max(c.last_activity + 1);
            let sequence = c.unanswered_pings;
            let channel_id = c.channel();
            let ping = Header {
                channel_id,
                sequence,
                ..Header::new(FrameType::Ping)
            };
            self.send(conn, &ping, &bytes::Bytes::new(), None);
            tick + interval_ms
        } else {
            log::info!("{conn}: no answer to {misses} pings; closing");
            return self.fail_connection(
                conn,
                ErrorCode::HeartbeatTimeout,
                &format!("silent for {silent_for} ms; {misses} pings unanswered"),
            );
        };
        let timer = insert_timer(&mut self.wheel, next, TimerTarget::Heartbeat(conn));
        if let Some(c) = self.conns.get_mut(conn) {
            c.heartbeat = Some(timer);
        }
    }
}
