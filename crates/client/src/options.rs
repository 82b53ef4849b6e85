//! What an application chooses: [`ClientOptions`] for a client, [`RequestOptions`] for one
//! request; and what the broker announced, [`Limits`].

use std::fmt;
use std::time::Duration;

#[cfg(feature = "tls")]
use crate::ClientTls;
#[cfg(doc)]
use crate::{Client, Error};
use crate::{ClientId, ReconnectPolicy};

/// Options for [`Client::connect_with`]. `Debug` shows the token as `<redacted>`.
#[derive(Clone)]
pub struct ClientOptions {
    /// The client id to join with; `None` lets the broker assign one.
    pub client_id: Option<ClientId>,
    /// Bound on connecting *and* completing the handshake. Default 5 s.
    pub connect_timeout: Duration,
    /// Added to an operation's timeout to form its local deadline. The broker answers every
    /// operation within its timeout; the grace only bounds the wait when the broker is dead or
    /// unreachable. Default 2 s.
    pub deadline_grace: Duration,
    /// When the broker announces heartbeats, the client also watches the broker: after each
    /// heartbeat interval without a frame it sends a PING, and after this many unanswered ones
    /// it closes with a `TimedOut` I/O error (a dead or half-open broker). Default 3.
    pub heartbeat_misses: u32,
    /// Completed broadcasts held until [`Client::next_broadcast`] takes them; beyond this a
    /// broadcast is dropped without an ACK. Default 1024.
    pub broadcast_queue: usize,
    /// Presence events held until [`Client::next_presence`] takes them; beyond this the oldest
    /// is dropped. Default 1024.
    pub presence_queue: usize,
    /// How to reconnect after the connection is lost; `None` closes the client instead (every
    /// later call fails with the cause). Default: on, with [`ReconnectPolicy::default`] (first
    /// attempt after 50–100 ms, doubling up to 5 s, unlimited attempts), because a client of a
    /// long-lived service should outlive a broker restart; operations in flight at the drop
    /// still fail ([`Error::ConnectionLost`]), so nothing is silently retried.
    pub reconnect: Option<ReconnectPolicy>,
    /// The access token sent as the HELLO's payload (on every connection, reconnects
    /// included), for a broker that requires one on this channel; `None` sends an empty
    /// payload. A missing or wrong token fails the connect with ERROR UNAUTHORIZED, which is
    /// not retried. Default `None`.
    pub token: Option<Vec<u8>>,
    /// The resume secret to present from the first HELLO on (PROTOCOL.md §5): with the same
    /// [`client_id`](ClientOptions::client_id), another `Client` — a restarted process — that
    /// presents it may take the id over while it is still present. `None` (the default): the
    /// secret the broker gives in the first WELCOME, known to this `Client` only, so only its own
    /// reconnects may take its id back; another connection naming the id while it is present
    /// fails with ERROR CLIENT_ID_IN_USE (not retried). Keep it as secret as a token.
    pub resume_secret: Option<[u8; 16]>,
    /// Connect with TLS (to the broker's TLS listener), trusting the certificates and verifying
    /// the name [`ClientTls`] holds; every reconnect uses it too. `None` (the default) speaks
    /// plain TCP. A certificate the client does not trust fails the connect with
    /// [`Error::Tls`], which is not retried. (With the `tls` feature.)
    #[cfg(feature = "tls")]
    pub tls: Option<ClientTls>,
}

impl fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("ClientOptions");
        debug
            .field("client_id", &self.client_id)
            .field("connect_timeout", &self.connect_timeout)
            .field("deadline_grace", &self.deadline_grace)
            .field("heartbeat_misses", &self.heartbeat_misses)
            .field("broadcast_queue", &self.broadcast_queue)
            .field("presence_queue", &self.presence_queue)
            .field("reconnect", &self.reconnect)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field(
                "resume_secret",
                &self.resume_secret.as_ref().map(|_| "<redacted>"),
            );
        #[cfg(feature = "tls")]
        debug.field("tls", &self.tls);
        debug.finish()
    }
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            client_id: None,
            connect_timeout: Duration::from_secs(5),
            deadline_grace: Duration::from_secs(2),
            heartbeat_misses: 3,
            broadcast_queue: 1024,
            presence_queue: 1024,
            reconnect: Some(ReconnectPolicy::default()),
            token: None,
            resume_secret: None,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

/// The broker's limits, from its WELCOME.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Limits {
    /// Largest payload of one frame; bodies are split into frames of at most this size.
    pub max_payload: u32,
    /// The timeout applied when an operation asks for none (`None`).
    pub default_timeout: Duration,
    /// Longer timeouts are clamped to this.
    pub max_timeout: Duration,
    /// Interval of the broker's heartbeat PINGs ([`Duration::ZERO`]: none). The client answers
    /// them automatically.
    pub heartbeat: Duration,
}

impl Limits {
    /// The timeout the broker applies to an operation that asked for `timeout` (`None`: its
    /// default; longer than its max: the max).
    pub(crate) fn effective_timeout(&self, timeout: Option<Duration>) -> Duration {
        let mut effective = match timeout {
            None => self.default_timeout,
            Some(timeout) => timeout.max(MIN_TIMEOUT),
        };
        if !self.max_timeout.is_zero() {
            effective = effective.min(self.max_timeout);
        }
        effective
    }
}

/// The shortest timeout the wire can carry: `timeout_ms` 0 means "the broker's default".
const MIN_TIMEOUT: Duration = Duration::from_millis(1);

/// The `timeout_ms` field for an operation's timeout: 0 (the broker's default) for `None`, else
/// milliseconds rounded up and at least 1 (so a short timeout never turns into the default),
/// saturating at `u32::MAX`.
pub(crate) fn timeout_ms(timeout: Option<Duration>) -> u32 {
    match timeout {
        None => 0,
        Some(timeout) => {
            let ms = timeout.max(MIN_TIMEOUT).as_nanos().div_ceil(1_000_000);
            u32::try_from(ms).unwrap_or(u32::MAX)
        }
    }
}

/// Options for [`Client::request_with`] (and `AsyncClient::request_with`).
#[derive(Clone, Copy, Default, Debug)]
pub struct RequestOptions {
    /// How long the broker waits for a receiver and for the complete response: `None` (the
    /// default) is the broker's default timeout ([`Limits::default_timeout`]); longer than the
    /// broker's max is clamped, shorter than 1 ms is 1 ms.
    pub timeout: Option<Duration>,
    /// Fail at once with [`Error::NoReceiver`] when no receiver has a free slot, instead of
    /// queueing.
    pub no_wait: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_ms_rounds_up_and_saturates() {
        assert_eq!(timeout_ms(None), 0);
        assert_eq!(timeout_ms(Some(Duration::ZERO)), 1);
        assert_eq!(timeout_ms(Some(Duration::from_micros(1))), 1);
        assert_eq!(timeout_ms(Some(Duration::from_millis(1500))), 1500);
        assert_eq!(timeout_ms(Some(Duration::MAX)), u32::MAX);
    }

    #[test]
    fn effective_timeout_takes_the_default_and_the_max() {
        let limits = Limits {
            max_payload: 1,
            default_timeout: Duration::from_secs(30),
            max_timeout: Duration::from_secs(60),
            heartbeat: Duration::ZERO,
        };
        assert_eq!(limits.effective_timeout(None), Duration::from_secs(30));
        assert_eq!(
            limits.effective_timeout(Some(Duration::from_secs(90))),
            Duration::from_secs(60)
        );
        assert_eq!(limits.effective_timeout(Some(Duration::ZERO)), MIN_TIMEOUT);
    }
}
