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
    /// The timeout applied when an operation asks for [`Duration::ZERO`].
    pub default_timeout: Duration,
    /// Longer timeouts are clamped to this.
    pub max_timeout: Duration,
    /// Interval of the broker's heartbeat PINGs ([`Duration::ZERO`]: none). The client answers
    /// them automatically.
    pub heartbeat: Duration,
}

/// Options for [`Client::request_with`].
#[derive(Clone, Copy, Default, Debug)]
pub struct RequestOptions {
    /// How long the broker waits for a receiver and for the complete response.
    /// [`Duration::ZERO`] asks for the broker's default; longer than the broker's max is clamped.
    pub timeout: Duration,
    /// Fail at once with [`Error::NoReceiver`] when no receiver has a free slot, instead of
    /// queueing.
    pub no_wait: bool,
}
