//! Automatic reconnection: the policy ([`ReconnectPolicy`]), the connection states reported to the
//! application ([`ConnectionState`], [`StateChange`]), the backoff schedule ([`Backoff`]), and
//! the loop that runs them on the link thread once a connection ended (`Shared::reconnect`:
//! backoff, attempt, re-issue the receive window, publish the new link).
//!
//! # Lifecycle of a client's link to the broker
//! ```text
//!   connect_with ok
//!        |
//!        v
//!   +-----------+  link lost (EOF, reset, heartbeat, GOING_AWAY then close,
//!   | Connected |  broker HEARTBEAT_TIMEOUT): in-flight operations fail with
//!   +-----------+  Error::ConnectionLost ------------------------------+
//!     ^     |   GOING_AWAY: Draining (still Connected underneath: in-flight operations
//!     |     |   finish, new ones fail with Error::GoingAway) until the broker closes
//!     ^     |                                                          v
//!     |     | close() / drop / a fatal error that          +--------------------------+
//!     |     | reconnecting cannot fix / policy None        | Reconnecting { attempt } |
//!     |     v                                              +--------------------------+
//!     |  +--------+   close() (also during the backoff) /     |  backoff, then HELLO with
//!     |  | Closed | <-- attempts exhausted (last error) / ----+  the same client id
//!     |  +--------+     an answer reconnecting cannot fix      |  attempt failed: attempt + 1
//!     |                                                        |
//!     +---- WELCOME: receive window re-issued -----------------+
//! ```
//! `Closed` is terminal. Every transition is reported once, in order, through
//! [`Client::next_state_change`](super::Client::next_state_change);
//! [`Client::state`](super::Client::state) is the current state.
//!
//! # What is retried and what is not
//! The *connection* is retried; *operations* never are (at-most-once): a request, broadcast,
//! ping or peer query in flight when the link drops fails at once with
//! [`Error::ConnectionLost`](super::Error::ConnectionLost), and one started while reconnecting
//! fails at once with [`Error::Reconnecting`](super::Error::Reconnecting) (nothing was sent).
//! Callers blocked in `next_request` / `next_broadcast` / `next_presence` are not in flight: they
//! keep waiting across a reconnect.
//!
//! A link is re-established after transport trouble and after the broker's own "come back
//! later" answers: I/O errors and EOF, the client's heartbeat giving up, `HEARTBEAT_TIMEOUT`,
//! `GOING_AWAY` (the broker drains; another may come up on the same address), `LIMIT_EXCEEDED`
//! with a nil request id (the broker is at a connection, channel or peer limit; a slot may free
//! up), a refused or timed out connection attempt. Anything else closes the client for good, because a new connection
//! would meet the same fate: `REPLACED` (another connection took over this client id: fighting
//! for it would flap forever), protocol violations, TLS failures (an untrusted or wrong
//! certificate does not fix itself), `TooLarge`, channel mismatches.

use std::net::TcpStream;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use log::{debug, info};
use switchyard_proto::{encode_u32, ErrorCode, Flags, FrameType, RequestId};

use crate::error::Error;
use crate::handshake::{handshake, Joined};
use crate::link::Link;
use crate::shared::Shared;
use crate::transport;

/// How a client reconnects after losing its link to the broker
/// ([`ClientOptions::reconnect`](super::ClientOptions::reconnect)).
///
/// The delay before attempt `n` (1-based) is `min(initial_delay × multiplierⁿ⁻¹, max_delay)`,
/// shortened by a random fraction of at most `jitter` of itself, so that clients that lost the
/// same broker do not all come back in the same millisecond.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReconnectPolicy {
    /// The delay before the first attempt. Default 100 ms: a reconnect then lands well inside the
    /// broker's default presence grace period (1 s), so peers see no PEER_LEFT / PEER_JOINED.
    pub initial_delay: Duration,
    /// The longest delay between two attempts. Default 5 s: a recovered broker is found within
    /// that, and a dead one costs a connection attempt per client every 5 s.
    pub max_delay: Duration,
    /// Growth of the delay per failed attempt (values below 1 count as 1). Default 2.
    pub multiplier: f64,
    /// Fraction of each delay that is random, in `0.0..=1.0` (clamped). Default 0.5: each delay
    /// is between half and all of its nominal value.
    pub jitter: f64,
    /// Attempts before giving up (the client then closes with the last attempt's error); `None`
    /// never gives up. Default `None`: a long-lived service outlasts a broker outage, and its
    /// application sees [`ConnectionState::Reconnecting`] meanwhile.
    pub max_attempts: Option<u32>,
}

impl Default for ReconnectPolicy {
    fn default() -> ReconnectPolicy {
        ReconnectPolicy {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            multiplier: 2.0,
            jitter: 0.5,
            max_attempts: None,
        }
    }
}

impl ReconnectPolicy {
    /// True when attempt number `attempt` (1-based) may be made.
    pub(crate) fn allows(&self, attempt: u32) -> bool {
        self.max_attempts.is_none_or(|max| attempt <= max)
    }
}

/// Whether a link lost (or an attempt failed) for `reason` is worth a new connection; see the
/// module docs.
pub(crate) fn is_recoverable(reason: &Error) -> bool {
    match reason {
        Error::Io(_)
        | Error::ConnectionRefused(_)
        | Error::Timeout
        | Error::ConnectTimeout
        | Error::GoingAway
        | Error::ConnectionLost => true,
        Error::Broker { .. } => matches!(
            reason.code(),
            Some(
                ErrorCode::HeartbeatTimeout
                    | ErrorCode::GoingAway
                    | ErrorCode::ShuttingDown
                    | ErrorCode::LimitExceeded
            )
        ),
        Error::Closed
        | Error::WaitElapsed
        | Error::NotABroker { .. }
        | Error::Unauthorized
        | Error::Replaced
        | Error::Reconnecting
        | Error::NoReceiver
        | Error::PeerGone
        | Error::Cancelled
        | Error::NoPeers
        | Error::BroadcastIncomplete { .. }
        | Error::TooLarge { .. }
        | Error::Protocol(_) => false,
        // A certificate the client does not trust, a protocol the two ends do not share, or a
        // port that does not speak TLS: a new connection meets the same.
        #[cfg(feature = "tls")]
        Error::Tls(_) => false,
    }
}

/// The client's link to the broker, as reported to the application
/// ([`Client::state`](super::Client::state)).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ConnectionState {
    /// Joined to the channel; operations go out at once.
    Connected,
    /// Still joined, but the broker announced it is shutting down (GOING_AWAY): operations in
    /// flight finish, new requests and broadcasts fail with
    /// [`Error::GoingAway`](super::Error::GoingAway). When the broker closes the connection the
    /// client reconnects (`Reconnecting`), possibly to a broker restarted on the same address;
    /// `wait_connected` waits for that new connection.
    Draining,
    /// The link was lost; waiting for, or making, connection attempt number `attempt` (1-based).
    /// New operations fail with [`Error::Reconnecting`](super::Error::Reconnecting).
    Reconnecting {
        /// The attempt being waited for or made.
        attempt: u32,
    },
    /// Closed for good (terminal): by [`Client::close`](super::Client::close), by drop, by an
    /// error reconnecting cannot fix, or after the last allowed attempt failed.
    Closed,
}

/// One transition of [`ConnectionState`], from
/// [`Client::next_state_change`](super::Client::next_state_change).
#[derive(Debug)]
pub struct StateChange {
    /// The state entered.
    pub state: ConnectionState,
    /// Why: for the first `Reconnecting`, what ended the link; for a later one, why the previous
    /// attempt failed; for `Closed`, the close reason (the last attempt's error when the attempts
    /// ran out, [`Error::Closed`](super::Error::Closed) after `close()`). `None` for `Connected`.
    pub cause: Option<Error>,
}

/// The delays of one outage's attempts: see [`ReconnectPolicy`]. Jitter comes from a xorshift64*
/// generator seeded per client (no dependency, and no shared state between clients).
#[derive(Debug)]
pub(crate) struct Backoff {
    policy: ReconnectPolicy,
    state: u64,
}

impl Backoff {
    /// A schedule for `policy`; `seed` should differ between clients (any value, 0 included).
    pub(crate) fn new(policy: ReconnectPolicy, seed: u64) -> Backoff {
        // splitmix64 of the seed: nearby seeds give unrelated streams, and the state is never 0
        // (xorshift's one fixed point).
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Backoff {
            policy,
            state: (z ^ (z >> 31)) | 1,
        }
    }

    /// The policy this schedule follows.
    pub(crate) fn policy(&self) -> ReconnectPolicy {
        self.policy
    }

    /// A uniform sample of `[0, 1)`.
    fn next_unit(&mut self) -> f64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        let bits = self.state.wrapping_mul(0x2545_F491_4F6C_DD1D);
        // The top 53 bits fill an f64 mantissa exactly.
        (bits >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The nominal delay before attempt `attempt` (1-based), without jitter.
    pub(crate) fn nominal(&self, attempt: u32) -> Duration {
        let policy = &self.policy;
        let multiplier = if policy.multiplier.is_finite() {
            policy.multiplier.max(1.0)
        } else {
            1.0
        };
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let max = policy.max_delay.as_secs_f64();
        let delay = (policy.initial_delay.as_secs_f64() * multiplier.powi(exponent)).min(max);
        // `delay` is finite and within [0, max] unless max itself is huge: then keep max.
        Duration::try_from_secs_f64(delay).unwrap_or(policy.max_delay)
    }

    /// The delay before attempt `attempt` (1-based), jitter included: at most the nominal delay,
    /// at least `1 - jitter` of it.
    pub(crate) fn delay(&mut self, attempt: u32) -> Duration {
        let nominal = self.nominal(attempt);
        let jitter = if self.policy.jitter.is_nan() {
            0.0
        } else {
            self.policy.jitter.clamp(0.0, 1.0)
        };
        let keep = 1.0 - jitter * self.next_unit();
        // Not `mul_f64`, which panics when a huge max delay rounds past `Duration::MAX`.
        Duration::try_from_secs_f64(nominal.as_secs_f64() * keep).unwrap_or(nominal)
    }
}

// ----- the reconnect loop (on the link thread) --------------------------------------------
impl Shared {
    /// `Connected => Reconnecting`, then backoff and attempts until one joins (returned) or the
    /// client closes (`None`).
    pub(crate) fn reconnect(
        &self,
        backoff: &mut Backoff,
        cause: Error,
    ) -> Option<(Joined, Arc<Link>)> {
        let message = cause.to_string();
        let mut last = cause.duplicate();
        let wakeups = {
            let mut locked = self.lock();
            if !locked.session.handle_disconnect(cause) {
                return None; // Closed meanwhile.
            }
            locked.link = None;
            locked.session.take_wakeups()
        };
        self.notify(wakeups);
        info!(
            "client {} on channel {} lost its connection ({message}); reconnecting",
            self.ids.client, self.ids.channel
        );
        let policy = backoff.policy();
        let mut attempt = 1u32;
        loop {
            if !policy.allows(attempt) {
                self.close(last);
                return None;
            }
            if !self.wait_backoff(backoff.delay(attempt)) {
                return None;
            }
            let error = match self.attempt() {
                Ok(Some(joined)) => return Some(joined),
                Ok(None) => return None,
                Err(error) => error,
            };
            debug!("reconnect attempt {attempt} failed: {error}");
            if !is_recoverable(&error) {
                self.close(error);
                return None;
            }
            attempt = attempt.saturating_add(1);
            if !policy.allows(attempt) {
                self.close(error);
                return None;
            }
            last = error.duplicate();
            let wakeups = {
                let mut locked = self.lock();
                if !locked.session.handle_attempt_failed(error) {
                    return None;
                }
                locked.session.take_wakeups()
            };
            self.notify(wakeups);
        }
    }

    /// Waits `delay` unless the client closes first (false). Not `thread::sleep`: a close wakes
    /// the condvar at once.
    fn wait_backoff(&self, delay: Duration) -> bool {
        let deadline = transport::now().checked_add(delay);
        let mut locked = self.lock();
        loop {
            if locked.session.close_reason().is_some() {
                return false;
            }
            locked = match self.wait(&self.backoff, locked, deadline) {
                Ok(locked) => locked,
                Err(_) => return true, // The delay is over.
            };
        }
    }

    /// One connection attempt with the client's id: handshake, receive window re-issued,
    /// `Reconnecting => Connected`. `Ok(None)` when the client closed meanwhile.
    fn attempt(&self) -> Result<Option<(Joined, Arc<Link>)>, Error> {
        let register = |stream: &TcpStream| -> Result<(), Error> {
            let clone = stream.try_clone().map_err(Error::Io)?;
            let mut locked = self.lock();
            if let Some(reason) = locked.session.close_reason() {
                return Err(reason);
            }
            locked.dialing = Some(clone);
            Ok(())
        };
        let joined = handshake(
            &self.addrs,
            self.ids.channel,
            self.ids.client,
            self.resume,
            &self.options,
            &register,
        );
        // From here on nothing blocks on the new stream for long (one small write into an
        // empty socket buffer), so a close need not cut it.
        self.lock().dialing = None;
        let joined = joined?;
        let link = Arc::new(joined.link()?);
        // The window goes out on the new connection before anything an operation can send, and
        // under `window_order`, so a concurrent `set_receive_window` is either recorded before
        // (and sent here) or sent after (on the new link).
        let order = self
            .window_order
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let window = self.lock().session.window();
        if window > 0 {
            let receive = self.ids.frame(
                FrameType::Receive,
                Flags::NONE,
                RequestId::NIL,
                0,
                false,
                encode_u32(window),
            );
            // Through the new link's transport (not published yet: nothing else writes on it).
            link.transport.send(&receive).map_err(Error::Io)?;
        }
        let mut joined = joined;
        let wakeups = {
            let mut locked = self.lock();
            if !locked
                .session
                .handle_reconnected(joined.max_payload, std::mem::take(&mut joined.peers))
            {
                return Ok(None); // Closed meanwhile: the new connection is dropped.
            }
            locked.link = Some(Arc::clone(&link));
            locked.limits = link.limits;
            locked.session.take_wakeups()
        };
        drop(order);
        self.notify(wakeups);
        info!(
            "client {} rejoined channel {} at {} (receive window {window})",
            self.ids.client, self.ids.channel, joined.peer_addr
        );
        Ok(Some((joined, link)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ReconnectPolicy {
        ReconnectPolicy {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            multiplier: 2.0,
            jitter: 0.5,
            max_attempts: Some(5),
        }
    }

    #[test]
    fn delays_grow_by_the_multiplier_up_to_the_cap() {
        let backoff = Backoff::new(policy(), 7);
        let nominal: Vec<u64> = (1..=7)
            .map(|n| backoff.nominal(n).as_millis() as u64)
            .collect();
        assert_eq!(nominal, [100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(backoff.nominal(u32::MAX), Duration::from_secs(2));
    }

    #[test]
    fn jitter_stays_within_its_fraction_and_varies() {
        let mut backoff = Backoff::new(policy(), 42);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let d = backoff.delay(3);
            assert!(
                d >= Duration::from_millis(200) && d <= Duration::from_millis(400),
                "{d:?}"
            );
            seen.insert(d);
        }
        assert!(seen.len() > 100, "jitter should spread the delays");
        // Two clients with different seeds do not share a schedule.
        let (mut a, mut b) = (Backoff::new(policy(), 1), Backoff::new(policy(), 2));
        assert_ne!(a.delay(1), b.delay(1));
    }

    #[test]
    fn odd_policies_never_panic() {
        for (multiplier, jitter) in [(f64::NAN, f64::NAN), (0.0, -1.0), (f64::INFINITY, 9.0)] {
            let mut backoff = Backoff::new(
                ReconnectPolicy {
                    multiplier,
                    jitter,
                    max_delay: Duration::MAX,
                    ..policy()
                },
                0,
            );
            for attempt in [0, 1, 2, 64, u32::MAX] {
                let _ = backoff.delay(attempt);
            }
        }
    }

    #[test]
    fn attempts_are_bounded_only_when_asked() {
        assert!(policy().allows(5));
        assert!(!policy().allows(6));
        assert!(ReconnectPolicy::default().allows(u32::MAX));
    }

    #[test]
    fn only_transport_trouble_is_recoverable() {
        assert!(is_recoverable(&Error::Io(
            std::io::ErrorKind::UnexpectedEof.into()
        )));
        assert!(is_recoverable(&Error::GoingAway));
        let broker = |code: ErrorCode| Error::Broker {
            code: code as u16,
            message: String::new(),
        };
        assert!(is_recoverable(&broker(ErrorCode::HeartbeatTimeout)));
        assert!(is_recoverable(&broker(ErrorCode::LimitExceeded)));
        assert!(!is_recoverable(&broker(ErrorCode::Replaced)));
        assert!(!is_recoverable(&broker(ErrorCode::Unauthorized)));
        assert!(!is_recoverable(&Error::Replaced));
        assert!(!is_recoverable(&Error::Unauthorized));
        assert!(!is_recoverable(&Error::NotABroker {
            received: b"HTTP".to_vec()
        }));
        assert!(is_recoverable(&Error::ConnectTimeout));
        assert!(!is_recoverable(&broker(ErrorCode::ChannelMismatch)));
        assert!(!is_recoverable(&Error::Closed));
        let bad_certificate =
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        assert!(!is_recoverable(&Error::Tls(bad_certificate)));
    }
}
