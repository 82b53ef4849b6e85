//! # switchyard-client
//!
//! A blocking, multiplexing client for the switchyard broker.
//!
//! One [`Client`] is one TCP connection joined to one channel. It is `Send + Sync`: share it
//! (`&Client`, `Arc<Client>`, scoped threads) and run any number of operations at once from any
//! number of threads; they are multiplexed over the connection by request id.
//!
//! ```no_run
//! use std::time::Duration;
//! use switchyard_client::{ChannelId, Client};
//!
//! # fn main() -> Result<(), switchyard_client::Error> {
//! let channel = ChannelId::random();
//! let client = Client::connect("127.0.0.1:7400", channel)?;
//! let reply = client.request(b"ping?", Duration::from_secs(1))?;
//! # let _ = reply; Ok(()) }
//! ```
//!
//! # Threading model
//! - **Link thread** (one per client, `transport.rs`): owns the read half of the socket, decodes
//!   frames and feeds them to the sans-IO `session.rs`, which routes each to the queue of the
//!   operation it belongs to. It never blocks on anything but the socket: deliveries go into
//!   unbounded queues, and the only frames it writes itself (PONG answers, CANCELs for streams the
//!   broker broke) go through a non-blocking control queue. When the connection ends it
//!   reconnects (see below) or closes the client; it ends with the client, which joins it.
//! - **Caller threads** write their own frames: the write half sits in a `Mutex` held for exactly
//!   one whole frame, so frames never interleave and a request goes out the moment it is made
//!   (`TCP_NODELAY`, no flush timer). Callers then block on their operation's own queue (an
//!   `mpsc` channel, or a condvar-guarded queue for `next_*`), never on a lock held across I/O.
//!
//! With [`ClientOptions::tls`] the connection is TLS ([`ClientTls`]): the same threads, with the
//! rustls session in a lock of its own that is never held across blocking I/O (`transport.rs`).
//!
//! # Invariants
//! - An operation registers its route in the session *before* its first frame is written, so
//!   an answer cannot arrive unrouted.
//! - Every wait is bounded or wakeable: waits for the broker use the operation's timeout plus a
//!   grace period ([`ClientOptions::deadline_grace`]; the broker itself always answers within the
//!   timeout, the grace only guards against a dead broker); losing the connection fails every
//!   operation's route at once; closing the client (by [`Client::close`], by drop, by a fatal
//!   broker error, or by losing the connection without reconnection) drops every route and
//!   notifies every condvar, the backoff's included, so every blocked caller returns at once with
//!   the cause.
//! - An operation that ends on the client side without the broker knowing (a local deadline, a
//!   dropped [`Response`] or [`IncomingRequest`], a failing body reader) sends the CANCEL of its
//!   direction, so neither the broker nor the counterpart is left waiting.
//! - Nothing here panics on broker input; bad input is a typed [`ProtocolViolation`].
//!
//! # Reconnection
//! With [`ClientOptions::reconnect`] set (the default), a lost connection is re-established by
//! the link thread with exponential backoff and jitter ([`ReconnectPolicy`]), under the same
//! client id (the broker's takeover and presence grace period make a quick reconnect invisible
//! to the peers), and the receive window is re-issued before anything else is sent on the new
//! connection. Operations in flight at the drop fail at once with [`Error::ConnectionLost`] —
//! never retried: at-most-once — and new ones fail with [`Error::Reconnecting`] until the link is
//! back; the `next_*` waits go on. [`Client::state`], [`Client::next_state_change`] and
//! [`Client::wait_connected`] report the link. Each operation writes only on the connection it
//! was registered on. The lifecycle and what is retried are in `reconnect.rs`.
//!
//! # Memory
//! See `session.rs`: per-operation queues are unbounded (a slowly read body is buffered in full);
//! incoming requests are bounded by the receive window the application sets; broadcasts and
//! presence events are bounded by [`ClientOptions::broadcast_queue`] and
//! [`ClientOptions::presence_queue`].

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod error;
mod reconnect;
mod session;
pub mod tls;
mod transport;

pub use error::{Error, ProtocolViolation};
pub use reconnect::{ConnectionState, ReconnectPolicy, StateChange};
/// The rustls version this crate's TLS types come from ([`ClientTls::from_config`],
/// [`Error::Tls`]), so applications name the same one.
pub use rustls;
/// The wire ids, re-exported so a client user needs no other dependency to name a channel.
pub use switchyard_proto::{ChannelId, ClientId, RequestId};
pub use tls::ClientTls;

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use log::{debug, info};

use reconnect::{is_recoverable, Backoff};
use session::{Capacities, Ids, Session, StreamEvent, Wakeups};
use switchyard_proto::{
    encode_u32, Decoder, ErrorBody, Flags, Frame, FrameType, WelcomeBody, MAX_PAYLOAD_CEILING,
    MAX_SEQUENCE,
};
use transport::{Flow, SharedTls, Transport};

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
    /// Connect with TLS (to the broker's TLS listener), trusting the certificates and verifying
    /// the name [`ClientTls`] holds; every reconnect uses it too. `None` (the default) speaks
    /// plain TCP. A certificate the client does not trust fails the connect with
    /// [`Error::Tls`], which is not retried.
    pub tls: Option<ClientTls>,
}

impl fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientOptions")
            .field("client_id", &self.client_id)
            .field("connect_timeout", &self.connect_timeout)
            .field("deadline_grace", &self.deadline_grace)
            .field("heartbeat_misses", &self.heartbeat_misses)
            .field("broadcast_queue", &self.broadcast_queue)
            .field("presence_queue", &self.presence_queue)
            .field("reconnect", &self.reconnect)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .finish()
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

/// A change of the channel's peers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PresenceEvent {
    /// A peer joined the channel.
    Joined(ClientId),
    /// A peer left the channel.
    Left(ClientId),
}

/// A broadcast received in full and acknowledged.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Broadcast {
    /// The broadcast's stream id.
    pub id: RequestId,
    /// The peer that sent it.
    pub sender: ClientId,
    /// The whole body.
    pub body: Vec<u8>,
}

/// One connection to the broker: its write side and the limits its WELCOME announced. An
/// operation keeps the `Arc<Link>` it was registered on and writes only there, so no frame of
/// an operation started on one connection can go out on the next one (at-most-once).
#[derive(Debug)]
struct Link {
    transport: Transport,
    limits: Limits,
}

impl Link {
    /// Bytes per frame when sending: the broker's limit, within the decoder ceiling every
    /// broker honours.
    fn chunk_size(&self) -> u64 {
        u64::from(self.limits.max_payload.clamp(1, MAX_PAYLOAD_CEILING))
    }

    /// The local deadline of an operation with the given timeout, from now, plus `grace`.
    /// `None` when it does not fit an `Instant` (wait forever).
    fn deadline(&self, timeout: Duration, grace: Duration) -> Option<Instant> {
        let mut effective = if timeout.is_zero() {
            self.limits.default_timeout
        } else {
            timeout
        };
        if !self.limits.max_timeout.is_zero() {
            effective = effective.min(self.limits.max_timeout);
        }
        transport::now().checked_add(effective)?.checked_add(grace)
    }
}

/// What the client's mutex guards: the sans-IO session and the connection it runs over.
#[derive(Debug)]
struct Locked {
    session: Session,
    /// The current connection. INVARIANT: `Some` exactly while the session is connected; it is
    /// only replaced under this lock, together with the session's link state, so an operation
    /// that registers and takes the link in one critical section gets a matching pair.
    link: Option<Arc<Link>>,
    /// The limits of the last WELCOME (reported by [`Client::limits`] while reconnecting).
    limits: Limits,
    /// A clone of the stream of a reconnect handshake under way, so that closing cuts it short.
    dialing: Option<TcpStream>,
}

/// State shared by the client handle, the link thread, and every [`Response`] /
/// [`IncomingRequest`] still alive.
#[derive(Debug)]
struct Shared {
    /// The client id (stable across reconnects: the one the first WELCOME gave) and channel.
    ids: Ids,
    grace: Duration,
    /// Where to reconnect (resolved once, at connect).
    addrs: Vec<SocketAddr>,
    options: ClientOptions,
    locked: Mutex<Locked>,
    requests_ready: Condvar,
    broadcasts_ready: Condvar,
    presence_ready: Condvar,
    states_ready: Condvar,
    /// Wakes the link thread out of a reconnect backoff when the client closes.
    backoff: Condvar,
    /// Serialises "record the receive window, then send it" between the application and the
    /// link thread's re-issue, so the broker always ends up with the window set last.
    window_order: Mutex<()>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Locked> {
        // The session's methods keep it consistent at every return; a panicking caller cannot
        // leave it half-updated, so poisoning carries no information here.
        self.locked.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Why an operation's route vanished without an answer: the close reason once closed, else
    /// the link dropped under it ([`Error::ConnectionLost`]).
    fn lost_error(&self) -> Error {
        self.lock()
            .session
            .close_reason()
            .unwrap_or(Error::ConnectionLost)
    }

    fn check_open(&self) -> Result<(), Error> {
        match self.lock().session.close_reason() {
            Some(reason) => Err(reason),
            None => Ok(()),
        }
    }

    /// Registers an operation with `register` and returns it with the link it must be sent on.
    ///
    /// # Errors
    /// The close reason when closed, [`Error::Reconnecting`] between connections, or the
    /// registration's own error.
    fn register<T>(
        &self,
        register: impl FnOnce(&mut Session) -> Result<T, Error>,
    ) -> Result<(T, Arc<Link>), Error> {
        let mut locked = self.lock();
        let Some(link) = locked.link.clone() else {
            return Err(locked.session.close_reason().unwrap_or(Error::Reconnecting));
        };
        let value = register(&mut locked.session)?;
        Ok((value, link))
    }

    /// Closes the client for good with `reason` (the first reason wins) and wakes everyone,
    /// the link thread included.
    fn close(&self, reason: Error) {
        let message = reason.to_string();
        let (first, link, dialing, wakeups) = {
            let mut locked = self.lock();
            let first = locked.session.close(reason);
            let wakeups = locked.session.take_wakeups();
            (first, locked.link.take(), locked.dialing.take(), wakeups)
        };
        if first {
            info!(
                "client {} on channel {} closed: {message}",
                self.ids.client, self.ids.channel
            );
        }
        self.notify(wakeups);
        self.requests_ready.notify_all();
        self.broadcasts_ready.notify_all();
        self.presence_ready.notify_all();
        self.states_ready.notify_all();
        self.backoff.notify_all();
        if let Some(link) = link {
            link.transport.shutdown();
        }
        if let Some(dialing) = dialing {
            // NotConnected: the broker already reset it; nothing left to cut.
            let _ = dialing.shutdown(Shutdown::Both);
        }
    }

    /// Writes a frame on `link`; a failure ends that connection (see [`Shared::link_failed`]).
    fn send(&self, link: &Link, frame: &Frame) -> Result<(), Error> {
        link.transport
            .send(frame)
            .map_err(|e| self.link_failed(link, e))
    }

    /// A write on `link` failed with `error`. Without reconnection the client closes, as it
    /// always did; with it, only that connection ends (the link thread then reconnects) and the
    /// operation fails with [`Error::ConnectionLost`].
    fn link_failed(&self, link: &Link, error: io::Error) -> Error {
        if self.options.reconnect.is_none() {
            self.close(Error::Io(error));
        } else {
            debug!("write failed, dropping the connection: {error}");
            link.transport.shutdown();
        }
        self.lost_error()
    }

    /// Writes a frame nobody waits on (CANCEL, ACK from a drop); errors already ended the
    /// connection and are only logged.
    fn send_quietly(&self, link: &Link, frame: &Frame) {
        if link.transport.is_closed() {
            return;
        }
        if let Err(e) = self.send(link, frame) {
            debug!("{:?} not sent: {e}", frame.header.frame_type);
        }
    }

    /// The link thread's callback for every frame read on `link`.
    fn handle_frame(&self, link: &Link, frame: Frame) -> Flow {
        let mut locked = self.lock();
        let result = locked.session.handle_frame(frame);
        let output: Vec<Frame> = std::iter::from_fn(|| locked.session.poll_output()).collect();
        let wakeups = locked.session.take_wakeups();
        drop(locked);
        self.notify(wakeups);
        for frame in output {
            link.transport.send_control(frame);
        }
        match result {
            Ok(()) => Flow::Continue,
            Err(reason) => Flow::Stop(reason),
        }
    }

    fn notify(&self, wakeups: Wakeups) {
        if wakeups.requests {
            self.requests_ready.notify_one();
        }
        if wakeups.broadcasts {
            self.broadcasts_ready.notify_one();
        }
        if wakeups.presence {
            self.presence_ready.notify_one();
        }
        if wakeups.states {
            // Both `next_state_change` and `wait_connected` callers wait here.
            self.states_ready.notify_all();
        }
    }

    /// Waits on one of the application queues. Waiting goes on across a reconnect; only the
    /// close ends it.
    fn wait_queue<T>(
        &self,
        ready: &Condvar,
        timeout: Option<Duration>,
        mut pop: impl FnMut(&mut Locked) -> Option<T>,
    ) -> Result<T, Error> {
        let deadline = timeout.and_then(|timeout| transport::now().checked_add(timeout));
        let mut locked = self.lock();
        loop {
            if let Some(reason) = locked.session.close_reason() {
                return Err(reason);
            }
            if let Some(item) = pop(&mut locked) {
                return Ok(item);
            }
            locked = self.wait(ready, locked, deadline)?;
        }
    }

    /// One wait on `ready` until `deadline` (`None`: forever). `Err(Timeout)` once it passed.
    fn wait<'a>(
        &self,
        ready: &Condvar,
        locked: MutexGuard<'a, Locked>,
        deadline: Option<Instant>,
    ) -> Result<MutexGuard<'a, Locked>, Error> {
        match deadline {
            // No timeout, or one that overflows an Instant: as good as forever.
            None => Ok(ready.wait(locked).unwrap_or_else(PoisonError::into_inner)),
            Some(deadline) => {
                let left = deadline.saturating_duration_since(transport::now());
                if left.is_zero() {
                    return Err(Error::Timeout);
                }
                Ok(ready
                    .wait_timeout(locked, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0)
            }
        }
    }

    // ----- the link thread ---------------------------------------------------------------------

    /// The link thread: reads the current connection until it ends, then reconnects (per the
    /// policy) or closes the client. Returns once the client is closed.
    fn run_link(&self, mut joined: Joined, mut link: Arc<Link>) {
        let mut seed = [0u8; 8];
        seed.copy_from_slice(&RequestId::random().as_bytes()[..8]);
        let mut backoff = self
            .options
            .reconnect
            .map(|policy| Backoff::new(policy, u64::from_le_bytes(seed)));
        loop {
            // The broker pings a silent client; the client, symmetrically, pings a silent
            // broker and gives up on it after `heartbeat_misses` unanswered intervals.
            let heartbeat = link.limits.heartbeat;
            let liveness = transport::Liveness {
                interval: (!heartbeat.is_zero()).then_some(heartbeat),
                misses: self.options.heartbeat_misses,
            };
            let inbound = transport::Inbound {
                stream: &mut joined.stream,
                tls: joined.tls.as_ref(),
                decoder: &mut joined.decoder,
                buf: &mut joined.buf,
            };
            let reason = transport::read_frames(
                inbound,
                liveness,
                |frame| self.handle_frame(&link, frame),
                |sequence| {
                    let ping = self.ids.frame(
                        FrameType::Ping,
                        Flags::NONE,
                        RequestId::NIL,
                        sequence,
                        false,
                        Bytes::new(),
                    );
                    link.transport.send_control(ping);
                },
                || link.transport.flush_pending(),
            );
            let backoff = match backoff.as_mut() {
                Some(backoff) if is_recoverable(&reason) => backoff,
                // Reconnection off, or an end a new connection would not fix. Closing first
                // (it shuts the connection down) makes `reason` the one every caller sees.
                _ => return self.close(reason),
            };
            link.transport.shutdown();
            drop(joined);
            let Some(next) = self.reconnect(backoff, reason) else {
                return;
            };
            (joined, link) = next;
        }
    }

    /// `Connected => Reconnecting`, then backoff and attempts until one joins (returned) or the
    /// client closes (`None`).
    fn reconnect(&self, backoff: &mut Backoff, cause: Error) -> Option<(Joined, Arc<Link>)> {
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

/// A connection whose handshake completed, before the link thread reads it.
#[derive(Debug)]
struct Joined {
    stream: TcpStream,
    /// The TLS session, for a TLS connection.
    tls: Option<SharedTls>,
    decoder: Decoder,
    /// Bytes read past the WELCOME.
    buf: BytesMut,
    client: ClientId,
    max_payload: u32,
    limits: Limits,
    peers: Vec<ClientId>,
    peer_addr: SocketAddr,
}

impl Joined {
    /// The write side of the connection.
    fn link(&self) -> Result<Link, Error> {
        Ok(Link {
            transport: Transport::new(
                self.stream.try_clone().map_err(Error::Io)?,
                self.stream.try_clone().map_err(Error::Io)?,
                self.tls.clone(),
            ),
            limits: self.limits,
        })
    }
}

/// Connects to `addrs`, runs the TLS handshake (with [`ClientOptions::tls`]), sends HELLO with
/// `requested` (nil: assign one) for `channel`, and waits for the WELCOME, all within
/// `options.connect_timeout`. `on_connected` sees the stream once the TCP connection is up (its
/// error aborts the attempt).
///
/// # Errors
/// As [`Client::connect_with`].
fn handshake(
    addrs: &[SocketAddr],
    channel: ChannelId,
    requested: ClientId,
    options: &ClientOptions,
    on_connected: &dyn Fn(&TcpStream) -> Result<(), Error>,
) -> Result<Joined, Error> {
    // A timeout too large for an Instant means "no practical bound": a year will do.
    let deadline = transport::now()
        .checked_add(options.connect_timeout)
        .unwrap_or_else(|| transport::now() + Duration::from_secs(365 * 24 * 3600));
    let mut stream = transport::connect(addrs, options.connect_timeout)?;
    on_connected(&stream)?;
    let mut buf = BytesMut::new();
    let tls = match &options.tls {
        None => None,
        Some(client_tls) => {
            let peer = stream.peer_addr().map_err(Error::Io)?;
            let tls = transport::share(client_tls.session(peer).map_err(Error::Tls)?);
            transport::tls_handshake(&mut stream, &tls, &mut buf, deadline)?;
            Some(tls)
        }
    };
    let hello_ids = Ids {
        client: requested,
        channel,
    };
    let hello = hello_ids.frame(
        FrameType::Hello,
        Flags::NONE,
        RequestId::NIL,
        0,
        false,
        options
            .token
            .as_ref()
            .map_or_else(Bytes::new, |token| Bytes::copy_from_slice(token)),
    );
    transport::write_frame_on(&mut stream, tls.as_ref(), &hello).map_err(Error::Io)?;

    // The client trusts the broker's frames up to the protocol's hard ceiling; the WELCOME's
    // own max payload only governs what the client sends.
    let mut decoder = Decoder::new(MAX_PAYLOAD_CEILING);
    let (header, welcome) = loop {
        let frame = transport::read_frame_until(
            &mut stream,
            tls.as_ref(),
            &mut decoder,
            &mut buf,
            deadline,
        )?;
        let bad_payload = |frame_type, error| {
            Error::Protocol(ProtocolViolation::BadPayload { frame_type, error })
        };
        match frame.header.frame_type {
            FrameType::Welcome => {
                let body = WelcomeBody::decode(&frame.payload)
                    .map_err(|e| bad_payload(FrameType::Welcome, e))?;
                break (frame.header, body);
            }
            FrameType::Error => {
                let body = ErrorBody::decode(&frame.payload)
                    .map_err(|e| bad_payload(FrameType::Error, e))?;
                return Err(Error::from_error_body(body, None));
            }
            FrameType::Ping => {
                let h = frame.header;
                let pong = hello_ids.frame(
                    FrameType::Pong,
                    Flags::NONE,
                    RequestId::NIL,
                    h.sequence,
                    h.is_final,
                    Bytes::new(),
                );
                transport::write_frame_on(&mut stream, tls.as_ref(), &pong).map_err(Error::Io)?;
            }
            frame_type => {
                return Err(Error::Protocol(ProtocolViolation::UnexpectedFrame {
                    frame_type,
                }))
            }
        }
    };
    if header.channel_id != channel {
        let got = header.channel_id;
        return Err(Error::Protocol(ProtocolViolation::ChannelMismatch {
            expected: channel,
            got,
        }));
    }
    let assigned = header.client_id;
    if assigned.is_nil() || (!requested.is_nil() && assigned != requested) {
        return Err(Error::Protocol(ProtocolViolation::BadClientId {
            requested,
            assigned,
        }));
    }
    if welcome.max_payload == 0 {
        return Err(Error::Protocol(ProtocolViolation::ZeroMaxPayload));
    }
    stream.set_read_timeout(None).map_err(Error::Io)?;
    let peer_addr = stream.peer_addr().map_err(Error::Io)?;
    Ok(Joined {
        stream,
        tls,
        decoder,
        buf,
        client: assigned,
        max_payload: welcome.max_payload,
        limits: Limits {
            max_payload: welcome.max_payload,
            default_timeout: Duration::from_millis(welcome.default_timeout_ms.into()),
            max_timeout: Duration::from_millis(welcome.max_timeout_ms.into()),
            heartbeat: Duration::from_millis(welcome.heartbeat_ms.into()),
        },
        peers: welcome.peers,
        peer_addr,
    })
}

/// A connection to the broker, joined to one channel. See the module docs.
#[derive(Debug)]
pub struct Client {
    shared: Arc<Shared>,
    link_thread: Mutex<Option<JoinHandle<()>>>,
}

/// The `timeout_ms` field for a timeout: milliseconds rounded up (so a sub-millisecond timeout
/// does not turn into 0, "the broker's default"), saturating at `u32::MAX`.
fn timeout_ms(timeout: Duration) -> u32 {
    let ms = timeout.as_nanos().div_ceil(1_000_000);
    u32::try_from(ms).unwrap_or(u32::MAX)
}

impl Client {
    /// Connects with default options: see [`Client::connect_with`].
    ///
    /// # Errors
    /// As [`Client::connect_with`].
    pub fn connect(addr: impl ToSocketAddrs, channel: ChannelId) -> Result<Client, Error> {
        Client::connect_with(addr, channel, ClientOptions::default())
    }

    /// Connects, sends HELLO for `channel`, and waits for the WELCOME, all within
    /// `options.connect_timeout`. This first connection is not retried: a wrong address or a
    /// broker that is down fails here, at once. Once connected, the client reconnects on its
    /// own per [`ClientOptions::reconnect`], to the addresses `addr` resolved to now.
    ///
    /// # Errors
    /// - [`Error::ConnectionRefused`]: no address accepted the TCP connection;
    /// - [`Error::Timeout`]: no WELCOME in time;
    /// - [`Error::Broker`]: the broker refused the handshake (`CLIENT_ID_IN_USE`,
    ///   `CHANNEL_MISMATCH` for a nil channel, `GOING_AWAY`, `LIMIT_EXCEEDED` when the broker is
    ///   at a connection, channel or peer limit, …);
    /// - [`Error::Protocol`]: the broker answered something else than a valid WELCOME;
    /// - [`Error::Tls`]: with [`ClientOptions::tls`], the TLS handshake failed (an untrusted
    ///   certificate, a wrong server name, a port that does not speak TLS);
    /// - [`Error::Io`]: the connection failed during the handshake.
    pub fn connect_with(
        addr: impl ToSocketAddrs,
        channel: ChannelId,
        options: ClientOptions,
    ) -> Result<Client, Error> {
        let addrs: Vec<SocketAddr> = addr
            .to_socket_addrs()
            .map_err(Error::ConnectionRefused)?
            .collect();
        let requested = options.client_id.unwrap_or(ClientId::NIL);
        let joined = handshake(&addrs, channel, requested, &options, &|_| Ok(()))?;
        let link = Arc::new(joined.link()?);
        let ids = Ids {
            client: joined.client,
            channel,
        };
        let capacities = Capacities {
            broadcasts: options.broadcast_queue,
            presence: options.presence_queue,
            states: STATE_QUEUE,
        };
        let peer_addr = joined.peer_addr;
        let session = Session::new(ids, joined.max_payload, joined.peers.clone(), capacities);
        let shared = Arc::new(Shared {
            ids,
            grace: options.deadline_grace,
            addrs,
            options,
            locked: Mutex::new(Locked {
                session,
                link: Some(Arc::clone(&link)),
                limits: link.limits,
                dialing: None,
            }),
            requests_ready: Condvar::new(),
            broadcasts_ready: Condvar::new(),
            presence_ready: Condvar::new(),
            states_ready: Condvar::new(),
            backoff: Condvar::new(),
            window_order: Mutex::new(()),
        });
        let running = Arc::clone(&shared);
        let link_thread = thread::Builder::new()
            .name("switchyard-client-link".into())
            .spawn(move || running.run_link(joined, link))
            .map_err(Error::Io)?;
        info!(
            "client {} joined channel {channel} at {peer_addr}",
            ids.client
        );
        Ok(Client {
            shared,
            link_thread: Mutex::new(Some(link_thread)),
        })
    }

    /// This client's id (assigned by the broker when none was asked for). It stays the same
    /// across reconnects.
    pub fn client_id(&self) -> ClientId {
        self.shared.ids.client
    }

    /// The channel joined.
    pub fn channel_id(&self) -> ChannelId {
        self.shared.ids.channel
    }

    /// The broker's limits from the last WELCOME.
    pub fn limits(&self) -> Limits {
        self.shared.lock().limits
    }

    /// The other peers on the channel now: the WELCOME's list, kept current by PEER_JOINED /
    /// PEER_LEFT (and replaced by the WELCOME of each reconnect).
    pub fn peers(&self) -> Vec<ClientId> {
        self.shared.lock().session.peers()
    }

    /// True once the client is closed for good (by [`Client::close`], a fatal broker error, or a
    /// lost connection that is not, or no longer, retried). False while reconnecting.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().session.close_reason().is_some()
    }

    /// The state of the link to the broker now.
    pub fn state(&self) -> ConnectionState {
        self.shared.lock().session.connection_state()
    }

    /// Waits for the next change of [`Client::state`] (`None`: wait forever) and returns it
    /// with its cause. Every change is reported once, in order (the oldest are dropped beyond
    /// 64 unread ones); the last is the `Closed` change, after which this returns the close
    /// reason. Several threads calling it share the changes (each gets different ones); to
    /// wait for a state, use [`Client::wait_connected`].
    ///
    /// # Errors
    /// [`Error::Timeout`] when nothing changed in time; the close reason once the `Closed`
    /// change was taken.
    pub fn next_state_change(&self, timeout: Option<Duration>) -> Result<StateChange, Error> {
        let shared = &self.shared;
        let deadline = timeout.and_then(|timeout| transport::now().checked_add(timeout));
        let mut locked = shared.lock();
        loop {
            if let Some(change) = locked.session.pop_state_change() {
                return Ok(change);
            }
            if let Some(reason) = locked.session.close_reason() {
                return Err(reason);
            }
            locked = shared.wait(&shared.states_ready, locked, deadline)?;
        }
    }

    /// Returns once the client is connected (at once if it is), waiting for a reconnect for at
    /// most `timeout` (`None`: forever).
    ///
    /// # Errors
    /// [`Error::Timeout`] when still reconnecting at the deadline; the close reason when the
    /// client is (or becomes) closed, for example the last attempt's error.
    pub fn wait_connected(&self, timeout: Option<Duration>) -> Result<(), Error> {
        let shared = &self.shared;
        let deadline = timeout.and_then(|timeout| transport::now().checked_add(timeout));
        let mut locked = shared.lock();
        loop {
            match locked.session.connection_state() {
                ConnectionState::Connected => return Ok(()),
                ConnectionState::Closed => {
                    return Err(locked.session.close_reason().unwrap_or(Error::Closed))
                }
                ConnectionState::Reconnecting { .. } => {}
            }
            locked = shared.wait(&shared.states_ready, locked, deadline)?;
        }
    }

    // ----- sender side -----------------------------------------------------------------------

    /// Sends a request and waits for the whole response body.
    ///
    /// # Errors
    /// [`Error::NoReceiver`], [`Error::Timeout`], [`Error::PeerGone`], [`Error::Cancelled`], the
    /// other per-request broker errors as [`Error::Broker`], [`Error::ConnectionLost`] when the
    /// connection dropped meanwhile, [`Error::Reconnecting`] when there was none, or a
    /// connection-fatal error.
    pub fn request(&self, body: &[u8], timeout: Duration) -> Result<Vec<u8>, Error> {
        let mut body = body;
        self.request_with(
            &mut body,
            RequestOptions {
                timeout,
                no_wait: false,
            },
        )?
        .read_to_vec()
    }

    /// Streams a request body from `body` (frames of at most `limits().max_payload` bytes, read
    /// one chunk ahead so a small body is one START|FINAL frame), then waits for the response to
    /// begin and returns it for streaming.
    ///
    /// Returns once the whole request is sent *and* the response's START arrived, so the
    /// responder is known and an early failure (no receiver, timeout…) is this call's `Err`. If
    /// the response completes while the request is still being sent, sending stops there.
    ///
    /// # Errors
    /// As [`Client::request`]; plus [`Error::Io`] with the body reader's error, in which case
    /// the request was cancelled (CANCEL(REQUEST)) if any of it was sent; the client stays open.
    pub fn request_with(
        &self,
        body: &mut dyn Read,
        options: RequestOptions,
    ) -> Result<Response, Error> {
        let shared = &self.shared;
        shared.check_open()?;
        let (events, receiver) = mpsc::channel();
        let (id, link) = shared.register(|session| session.register_request(events))?;
        let deadline = link.deadline(options.timeout, shared.grace);
        let mut stream = BodyStream::new(
            Arc::clone(shared),
            Arc::clone(&link),
            id,
            Direction::Outgoing,
            receiver,
            deadline,
        );
        let start_flags = if options.no_wait {
            Flags::NO_WAIT
        } else {
            Flags::NONE
        };
        let wire_timeout = timeout_ms(options.timeout);
        let sent = send_body(
            shared,
            &link,
            id,
            Flags::REQUEST,
            start_flags,
            wire_timeout,
            body,
            || stream.pump(),
        );
        match sent {
            Ok(()) => {}
            Err(SendFailure::Read { error, started }) => {
                if started {
                    stream.cancel();
                } else {
                    stream.settled = true; // Nothing reached the broker.
                }
                return Err(Error::Io(error));
            }
            Err(SendFailure::Abort(e)) => {
                stream.cancel();
                return Err(e);
            }
            Err(SendFailure::Ended(e)) => {
                stream.settled = true;
                return Err(e);
            }
        }
        let responder = stream.await_start()?;
        Ok(Response { stream, responder })
    }

    // ----- receiver side ---------------------------------------------------------------------

    /// Sends RECEIVE(window): the broker assigns this client at most `window` requests at once.
    /// The window is *set*, not added to; 0 stops new assignments (held requests finish). A
    /// held request frees its slot when it completes, times out or is cancelled.
    ///
    /// The window is a standing setting: the client re-issues it after every reconnect. While
    /// reconnecting (or when the connection drops during this call) it is recorded, `Ok`, and
    /// sent as soon as the link is back.
    ///
    /// # Errors
    /// A connection-fatal error.
    pub fn set_receive_window(&self, window: u32) -> Result<(), Error> {
        let shared = &self.shared;
        let _order = shared
            .window_order
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let link = {
            let mut locked = shared.lock();
            locked.session.set_window(window)?;
            locked.link.clone()
        };
        let Some(link) = link else {
            return Ok(()); // Reconnecting: re-issued by the link thread.
        };
        let frame = shared.ids.frame(
            FrameType::Receive,
            Flags::NONE,
            RequestId::NIL,
            0,
            false,
            encode_u32(window),
        );
        match shared.send(&link, &frame) {
            // Recorded: the next connection gets it.
            Err(Error::ConnectionLost) => Ok(()),
            other => other,
        }
    }

    /// Waits for the next request assigned to this client (`None`: wait forever). Requests are
    /// only assigned after [`Client::set_receive_window`] gave credit. The wait goes on across a
    /// reconnect.
    ///
    /// # Errors
    /// [`Error::Timeout`] when none arrived in time, or a connection-fatal error.
    pub fn next_request(&self, timeout: Option<Duration>) -> Result<IncomingRequest, Error> {
        let shared = &self.shared;
        let (new, link) = shared.wait_queue(&shared.requests_ready, timeout, |locked| {
            let link = locked.link.clone()?;
            locked.session.pop_request().map(|new| (new, link))
        })?;
        let remaining = Duration::from_millis(new.timeout_ms.into());
        let deadline = transport::now()
            .checked_add(remaining)
            .and_then(|d| d.checked_add(shared.grace));
        let mut stream = BodyStream::new(
            Arc::clone(shared),
            link,
            new.id,
            Direction::Incoming,
            new.events,
            deadline,
        );
        stream.settle_on_finish = false;
        Ok(IncomingRequest {
            stream,
            sender: new.sender,
            timeout: remaining,
        })
    }

    // ----- broadcast -------------------------------------------------------------------------

    /// Sends `body` to every other peer of the channel and waits until all acknowledged.
    /// Returns the number of peers that acknowledged.
    ///
    /// # Errors
    /// [`Error::NoPeers`], [`Error::BroadcastIncomplete`] with the peers that did not ack,
    /// [`Error::Timeout`] when the broker did not answer within the local deadline,
    /// [`Error::ConnectionLost`] / [`Error::Reconnecting`], or a connection-fatal error.
    pub fn broadcast(&self, body: &[u8], timeout: Duration) -> Result<u32, Error> {
        let shared = &self.shared;
        shared.check_open()?;
        let (outcome, receiver) = mpsc::channel();
        let (id, link) = shared.register(|session| session.register_broadcast(outcome))?;
        let deadline = link.deadline(timeout, shared.grace);
        let mut early = None;
        let flags = Flags::REQUEST | Flags::BROADCAST;
        let mut body = body;
        let sent = send_body(
            shared,
            &link,
            id,
            flags,
            Flags::NONE,
            timeout_ms(timeout),
            &mut body,
            || match receiver.try_recv() {
                Ok(outcome) => {
                    early = Some(outcome);
                    Ok(true)
                }
                Err(TryRecvError::Empty) => Ok(false),
                Err(TryRecvError::Disconnected) => Err(shared.lost_error()),
            },
        );
        let cancel = || {
            if shared.lock().session.forget_outgoing(id) {
                shared.send_quietly(&link, &shared.ids.cancel(id, flags));
            }
        };
        match sent {
            Ok(()) => {}
            Err(SendFailure::Read { error, .. }) => {
                cancel();
                return Err(Error::Io(error));
            }
            Err(SendFailure::Abort(e)) => {
                cancel();
                return Err(e);
            }
            Err(SendFailure::Ended(e)) => {
                shared.lock().session.forget_outgoing(id);
                return Err(e);
            }
        }
        let outcome = match early {
            Some(outcome) => Ok(outcome),
            None => match deadline {
                Some(deadline) => {
                    receiver.recv_timeout(deadline.saturating_duration_since(transport::now()))
                }
                None => receiver.recv().map_err(|_| RecvTimeoutError::Disconnected),
            },
        };
        match outcome {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout) => {
                cancel();
                Err(Error::Timeout)
            }
            Err(RecvTimeoutError::Disconnected) => Err(shared.lost_error()),
        }
    }

    /// Waits for the next broadcast from another peer (`None`: wait forever), sends its ACK and
    /// returns it. A broadcast is handed out only once received in full. The wait goes on
    /// across a reconnect (broadcasts received but not handed out when the connection dropped
    /// are discarded: their ACK can no longer reach the broker).
    ///
    /// # Errors
    /// [`Error::Timeout`] when none arrived in time, [`Error::ConnectionLost`] when the ACK
    /// could not be sent, or a connection-fatal error.
    pub fn next_broadcast(&self, timeout: Option<Duration>) -> Result<Broadcast, Error> {
        let shared = &self.shared;
        let (done, link) = shared.wait_queue(&shared.broadcasts_ready, timeout, |locked| {
            let link = locked.link.clone()?;
            locked.session.pop_broadcast().map(|done| (done, link))
        })?;
        let ack = shared.ids.frame(
            FrameType::Ack,
            Flags::BROADCAST,
            done.id,
            0,
            false,
            Bytes::new(),
        );
        shared.send(&link, &ack)?;
        Ok(Broadcast {
            id: done.id,
            sender: done.sender,
            body: done.body,
        })
    }

    /// Waits for the next presence change (`None`: wait forever). The wait goes on across a
    /// reconnect; after one, the difference between the old and the new WELCOME's peer lists is
    /// reported as `Left` / `Joined` events.
    ///
    /// # Errors
    /// [`Error::Timeout`] when none arrived in time, or a connection-fatal error.
    pub fn next_presence(&self, timeout: Option<Duration>) -> Result<PresenceEvent, Error> {
        let shared = &self.shared;
        shared.wait_queue(&shared.presence_ready, timeout, |locked| {
            locked.session.pop_presence()
        })
    }

    /// Asks the broker for the current peer list of the channel (the others, including peers
    /// inside their presence grace period) and returns it; [`Client::peers`] is refreshed too.
    ///
    /// # Errors
    /// [`Error::Timeout`] when no answer came within `timeout`, [`Error::ConnectionLost`] /
    /// [`Error::Reconnecting`], or a connection-fatal error.
    pub fn fetch_peers(&self, timeout: Duration) -> Result<Vec<ClientId>, Error> {
        let shared = &self.shared;
        shared.check_open()?;
        let (waiter, receiver) = mpsc::channel();
        // Answers are matched to callers in registration order. Two callers racing may swap
        // answers, which is harmless: both lists are current (the lock is not held across the
        // write, so the link thread is never blocked behind a slow socket).
        let ((), link) = shared.register(|session| session.register_peer_list(waiter))?;
        let frame = shared.ids.frame(
            FrameType::Peers,
            Flags::NONE,
            RequestId::NIL,
            0,
            false,
            Bytes::new(),
        );
        shared.send(&link, &frame)?;
        match receiver.recv_timeout(timeout) {
            Ok(peers) => Ok(peers),
            Err(RecvTimeoutError::Timeout) => Err(Error::Timeout),
            Err(RecvTimeoutError::Disconnected) => Err(shared.lost_error()),
        }
    }

    /// Sends a PING and returns the round-trip time to its PONG. (The client answers the
    /// broker's PINGs on its own.)
    ///
    /// # Errors
    /// [`Error::Timeout`] when no PONG came within `timeout`, [`Error::ConnectionLost`] /
    /// [`Error::Reconnecting`], or a connection-fatal error.
    pub fn ping(&self, timeout: Duration) -> Result<Duration, Error> {
        let shared = &self.shared;
        shared.check_open()?;
        let (waiter, receiver) = mpsc::channel();
        let (sequence, link) = shared.register(|session| session.register_ping(waiter))?;
        let started = transport::now();
        let frame = shared.ids.frame(
            FrameType::Ping,
            Flags::NONE,
            RequestId::NIL,
            sequence,
            false,
            Bytes::new(),
        );
        if let Err(e) = shared.send(&link, &frame) {
            shared.lock().session.forget_ping(sequence);
            return Err(e);
        }
        match receiver.recv_timeout(timeout) {
            Ok(()) => Ok(started.elapsed()),
            Err(RecvTimeoutError::Timeout) => {
                shared.lock().session.forget_ping(sequence);
                Err(Error::Timeout)
            }
            Err(RecvTimeoutError::Disconnected) => Err(shared.lost_error()),
        }
    }

    /// Closes the client for good: shuts the connection down both ways (or stops reconnecting,
    /// cutting a backoff short at once), fails every pending operation with [`Error::Closed`],
    /// wakes every blocked caller, and joins the link thread. (A TCP connect of a reconnect
    /// attempt cannot be interrupted: in that case this waits for it, at most
    /// [`ClientOptions::connect_timeout`].) Idempotent; every later call returns
    /// `Err(Error::Closed)` (or the earlier cause, when the client had already closed).
    pub fn close(&self) {
        self.shared.close(Error::Closed);
        let link_thread = self
            .link_thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(link_thread) = link_thread {
            if link_thread.join().is_err() {
                debug!("the client link thread panicked");
            }
        }
    }
}

/// Unread state changes kept for [`Client::next_state_change`]: enough for every change of an
/// outage and its recovery to be seen by an application that reads them as they come; beyond
/// that only the latest matter (the current state is always [`Client::state`]).
const STATE_QUEUE: usize = 64;

impl Drop for Client {
    /// Closes the client (see [`Client::close`]).
    fn drop(&mut self) {
        self.close();
    }
}

// ----- streams -------------------------------------------------------------------------------

/// Which session map a stream's route lives in, and so which direction its CANCEL goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    /// We sent the request; the stream is the response. We cancel with REQUEST.
    Outgoing,
    /// The request was assigned to us; the stream is its body. We cancel with RESPONSE.
    Incoming,
}

/// Where an inbound stream stands.
#[derive(Debug)]
enum StreamState {
    /// More frames to come.
    Open,
    /// The FINAL frame arrived.
    Finished,
    /// Ended abnormally; the error is repeated to every later read.
    Failed(Error),
}

/// The reading end of one stream (a response, or an incoming request's body), with the
/// operation's cancel-on-drop duty.
#[derive(Debug)]
struct BodyStream {
    shared: Arc<Shared>,
    /// The connection the operation was registered on: its only way out.
    link: Arc<Link>,
    id: RequestId,
    direction: Direction,
    events: Receiver<StreamEvent>,
    /// Events taken off `events` early (while sending), to be read in order.
    early: VecDeque<StreamEvent>,
    /// True when `early` holds the stream's FINAL.
    final_queued: bool,
    current: Bytes,
    state: StreamState,
    /// True once nothing more is owed on the wire (no CANCEL on drop).
    settled: bool,
    /// Whether the inbound FINAL settles the operation (true for a response; false for an
    /// incoming request, which still owes its response).
    settle_on_finish: bool,
    deadline: Option<Instant>,
}

impl BodyStream {
    fn new(
        shared: Arc<Shared>,
        link: Arc<Link>,
        id: RequestId,
        direction: Direction,
        events: Receiver<StreamEvent>,
        deadline: Option<Instant>,
    ) -> BodyStream {
        BodyStream {
            shared,
            link,
            id,
            direction,
            events,
            early: VecDeque::new(),
            final_queued: false,
            current: Bytes::new(),
            state: StreamState::Open,
            settled: false,
            settle_on_finish: true,
            deadline,
        }
    }

    fn forget(&self) -> bool {
        let session = &mut self.shared.lock().session;
        match self.direction {
            Direction::Outgoing => session.forget_outgoing(self.id),
            Direction::Incoming => session.forget_incoming(self.id),
        }
    }

    /// Ends the operation from our side: stops routing and, unless settled, sends CANCEL in our
    /// direction.
    fn cancel(&mut self) {
        let was_routed = self.forget();
        if !self.settled {
            self.settled = true;
            let flags = match self.direction {
                Direction::Outgoing => Flags::REQUEST,
                Direction::Incoming => Flags::RESPONSE,
            };
            // Even an unrouted incoming request is worth cancelling: the broker only drops it.
            if was_routed || self.direction == Direction::Incoming {
                self.shared
                    .send_quietly(&self.link, &self.shared.ids.cancel(self.id, flags));
            }
        }
    }

    fn fail(&mut self, error: &Error) {
        self.set_state(StreamState::Failed(error.duplicate()));
        self.settled = true;
    }

    fn next_event(&mut self) -> Result<StreamEvent, Error> {
        if let Some(event) = self.early.pop_front() {
            return Ok(event);
        }
        let received = match self.deadline {
            Some(deadline) => self
                .events
                .recv_timeout(deadline.saturating_duration_since(transport::now())),
            None => self
                .events
                .recv()
                .map_err(|_| RecvTimeoutError::Disconnected),
        };
        match received {
            Ok(event) => Ok(event),
            Err(RecvTimeoutError::Timeout) => {
                debug!("stream {} passed its local deadline; cancelling", self.id);
                self.cancel();
                Err(Error::Timeout)
            }
            Err(RecvTimeoutError::Disconnected) => Err(self.shared.lost_error()),
        }
    }

    /// The next event; failing to get one (a deadline, a lost connection) fails the stream too.
    fn next_event_or_fail(&mut self) -> Result<StreamEvent, Error> {
        self.next_event().inspect_err(|e| self.fail(e))
    }

    /// Waits for the response START; returns the responder.
    fn await_start(&mut self) -> Result<ClientId, Error> {
        let event = self.next_event_or_fail()?;
        match event {
            StreamEvent::Start {
                peer,
                data,
                is_final,
                ..
            } => {
                self.take_data(data, is_final);
                Ok(peer)
            }
            // The session only routes a START first; keep the data anyway.
            StreamEvent::Data { data, is_final } => {
                self.take_data(data, is_final);
                Ok(ClientId::NIL)
            }
            StreamEvent::Failed(e) => {
                self.fail(&e);
                Err(e)
            }
        }
    }

    /// Keeps the START's bytes as the first to read (nothing was read before it).
    fn take_data(&mut self, data: Bytes, is_final: bool) {
        debug_assert!(self.current.is_empty(), "the START is the first event");
        if is_final {
            self.finish();
        }
        self.current = data;
    }

    /// The one place the state changes (logged at trace).
    fn set_state(&mut self, state: StreamState) {
        log::trace!(
            "stream {} ({:?}): {:?} => {:?}",
            self.id,
            self.direction,
            self.state,
            state
        );
        self.state = state;
    }

    fn finish(&mut self) {
        self.set_state(StreamState::Finished);
        if self.settle_on_finish {
            self.settled = true;
        }
    }

    /// The next non-empty run of bytes, or `None` at the end of the stream.
    fn next_chunk(&mut self) -> Result<Option<Bytes>, Error> {
        loop {
            match &self.state {
                StreamState::Finished => return Ok(None),
                StreamState::Failed(e) => return Err(e.duplicate()),
                StreamState::Open => {}
            }
            let event = self.next_event_or_fail()?;
            match event {
                StreamEvent::Start { data, is_final, .. }
                | StreamEvent::Data { data, is_final } => {
                    if is_final {
                        self.finish();
                    }
                    if !data.is_empty() {
                        return Ok(Some(data));
                    }
                }
                StreamEvent::Failed(e) => {
                    self.fail(&e);
                    return Err(e);
                }
            }
        }
    }

    fn read(&mut self, out: &mut [u8]) -> Result<usize, Error> {
        if out.is_empty() {
            return Ok(0);
        }
        while self.current.is_empty() {
            match self.next_chunk()? {
                Some(chunk) => self.current = chunk,
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.current.len());
        out[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }

    fn read_to_vec(&mut self) -> Result<Vec<u8>, Error> {
        let mut body = Vec::from(std::mem::take(&mut self.current));
        while let Some(chunk) = self.next_chunk()? {
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// Takes every event already delivered, without blocking (between two frames we send).
    /// Returns whether the stream's FINAL is among them; `Err` when the stream failed.
    fn pump(&mut self) -> Result<bool, Error> {
        if let StreamState::Failed(e) = &self.state {
            return Err(e.duplicate());
        }
        loop {
            match self.events.try_recv() {
                Ok(StreamEvent::Failed(e)) => {
                    self.fail(&e);
                    return Err(e);
                }
                Ok(event) => {
                    if matches!(
                        event,
                        StreamEvent::Start { is_final: true, .. }
                            | StreamEvent::Data { is_final: true, .. }
                    ) {
                        self.final_queued = true;
                    }
                    self.early.push_back(event);
                }
                Err(TryRecvError::Empty) => return Ok(self.final_queued),
                Err(TryRecvError::Disconnected) => {
                    let e = self.shared.lost_error();
                    self.fail(&e);
                    return Err(e);
                }
            }
        }
    }
}

impl Drop for BodyStream {
    fn drop(&mut self) {
        // Unsettled: the operation was abandoned mid-way; tell the broker. Settled: just make
        // sure the route is gone.
        if self.settled {
            self.forget();
        } else {
            self.cancel();
        }
    }
}

/// A response being received: an [`io::Read`] over its body.
///
/// Dropping it before the body's end cancels the request (CANCEL(REQUEST)).
#[derive(Debug)]
pub struct Response {
    stream: BodyStream,
    responder: ClientId,
}

impl Response {
    /// The receiver that responded.
    pub fn responder(&self) -> ClientId {
        self.responder
    }

    /// The request's id.
    pub fn request_id(&self) -> RequestId {
        self.stream.id
    }

    /// Reads the rest of the body.
    ///
    /// # Errors
    /// [`Error::Timeout`], [`Error::PeerGone`], [`Error::Cancelled`], another broker error, or
    /// a connection-fatal error.
    pub fn read_to_vec(mut self) -> Result<Vec<u8>, Error> {
        self.stream.read_to_vec()
    }
}

/// Errors convert with `From<Error> for io::Error` (the typed error is the inner error).
impl Read for Response {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.read(buf).map_err(io::Error::from)
    }
}

/// A request assigned to this client. Read its body (it streams in as it arrives), then answer
/// with [`IncomingRequest::respond`] / [`IncomingRequest::respond_with`], or give up with
/// [`IncomingRequest::cancel`].
///
/// Dropping it without responding sends CANCEL(RESPONSE), so the sender is not left waiting.
/// If the sender cancels (or the request times out), reading the body fails with
/// [`Error::Cancelled`] and so does responding.
#[derive(Debug)]
pub struct IncomingRequest {
    stream: BodyStream,
    sender: ClientId,
    timeout: Duration,
}

impl IncomingRequest {
    /// The request's id.
    pub fn id(&self) -> RequestId {
        self.stream.id
    }

    /// The client that sent it.
    pub fn sender(&self) -> ClientId {
        self.sender
    }

    /// The time the request had left when the broker assigned it.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Reads the rest of the body.
    ///
    /// # Errors
    /// [`Error::Cancelled`] when the sender cancelled (or the request timed out),
    /// [`Error::Timeout`] past the local deadline, or a connection-fatal error.
    pub fn read_body(&mut self) -> Result<Vec<u8>, Error> {
        self.stream.read_to_vec()
    }

    /// Sends the response `body` (see [`IncomingRequest::respond_with`]).
    ///
    /// # Errors
    /// As [`IncomingRequest::respond_with`].
    pub fn respond(self, body: &[u8]) -> Result<(), Error> {
        let mut body = body;
        self.respond_with(&mut body)
    }

    /// Streams the response from `body`, split as request bodies are. The request body need not
    /// have been read; what is left of it is discarded.
    ///
    /// # Errors
    /// [`Error::Cancelled`] when the sender cancelled first (sending stops), [`Error::Io`] with
    /// the reader's error (the response is cancelled), another per-request broker error, or a
    /// connection-fatal error.
    pub fn respond_with(mut self, body: &mut dyn Read) -> Result<(), Error> {
        self.stream.pump()?;
        let shared = Arc::clone(&self.stream.shared);
        let link = Arc::clone(&self.stream.link);
        let stream = &mut self.stream;
        let sent = send_body(
            &shared,
            &link,
            stream.id,
            Flags::RESPONSE,
            Flags::NONE,
            0,
            body,
            || stream.pump().map(|_| false),
        );
        match sent {
            Ok(()) => {
                self.stream.settled = true;
                Ok(())
            }
            Err(SendFailure::Read { error, .. }) => {
                self.stream.cancel();
                Err(Error::Io(error))
            }
            Err(SendFailure::Abort(e)) => {
                self.stream.cancel();
                Err(e)
            }
            Err(SendFailure::Ended(e)) => {
                self.stream.settled = true;
                Err(e)
            }
        }
    }

    /// Gives up on the request: sends CANCEL(RESPONSE) (the sender gets [`Error::Cancelled`]).
    pub fn cancel(mut self) {
        self.stream.cancel();
    }
}

/// Errors convert with `From<Error> for io::Error` (the typed error is the inner error).
impl Read for IncomingRequest {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.read(buf).map_err(io::Error::from)
    }
}

// ----- sending bodies --------------------------------------------------------------------------

/// Why [`send_body`] stopped early.
#[derive(Debug)]
enum SendFailure {
    /// The body reader failed; `started` says whether the START went out.
    Read { error: io::Error, started: bool },
    /// We must give up; the caller MUST cancel the stream.
    Abort(Error),
    /// The stream or the connection already ended; nothing to cancel.
    Ended(Error),
}

/// One chunk of at most `max` bytes (fewer only at the end of the body).
fn read_chunk(body: &mut dyn Read, max: u64) -> io::Result<Bytes> {
    let mut chunk = Vec::new();
    body.take(max).read_to_end(&mut chunk)?;
    Ok(Bytes::from(chunk))
}

/// Streams `body` as START, CHUNK…, END (or one START|FINAL), reading one chunk ahead so the
/// last frame carries FINAL. `check` runs between frames: `Err` stops with [`SendFailure::Ended`]
/// (the counterpart ended the stream), `Ok(true)` stops successfully (the counterpart completed
/// the exchange; more frames would only be answered with UNKNOWN_REQUEST).
#[allow(clippy::too_many_arguments)] // One call per direction; a struct would only rename them.
fn send_body(
    shared: &Shared,
    link: &Link,
    id: RequestId,
    flags: Flags,
    start_flags: Flags,
    timeout_ms: u32,
    body: &mut dyn Read,
    mut check: impl FnMut() -> Result<bool, Error>,
) -> Result<(), SendFailure> {
    let max = link.chunk_size();
    let mut sequence = 0u32;
    let mut current = read_chunk(body, max).map_err(|error| SendFailure::Read {
        error,
        started: false,
    })?;
    loop {
        let next = if (current.len() as u64) < max {
            None
        } else {
            let next = read_chunk(body, max).map_err(|error| SendFailure::Read {
                error,
                started: sequence > 0,
            })?;
            (!next.is_empty()).then_some(next)
        };
        // The read ahead may have blocked for a while: the stream may have been cancelled or
        // ended meanwhile. Check before every frame, the final one included, so a stream the
        // client knows is over is never continued nor reported as sent.
        if check().map_err(SendFailure::Ended)? {
            return Ok(());
        }
        let is_final = next.is_none();
        let (frame_type, frame_flags) = match (sequence, is_final) {
            (0, _) => (FrameType::Start, flags | start_flags),
            (_, true) => (FrameType::End, flags),
            (_, false) => (FrameType::Chunk, flags),
        };
        let mut frame = shared
            .ids
            .frame(frame_type, frame_flags, id, sequence, is_final, current);
        if sequence == 0 {
            frame.header.timeout_ms = timeout_ms;
        }
        shared.send(link, &frame).map_err(SendFailure::Ended)?;
        let Some(next) = next else {
            return Ok(());
        };
        if sequence == MAX_SEQUENCE {
            let max_payload = link.limits.max_payload;
            return Err(SendFailure::Abort(Error::TooLarge { max_payload }));
        }
        sequence += 1;
        current = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_is_send_sync_and_handles_are_send() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_sync::<Client>();
        send::<Response>();
        send::<IncomingRequest>();
        send_sync::<Error>();
    }

    #[test]
    fn timeout_ms_rounds_up_and_saturates() {
        assert_eq!(timeout_ms(Duration::ZERO), 0);
        assert_eq!(timeout_ms(Duration::from_micros(1)), 1);
        assert_eq!(timeout_ms(Duration::from_millis(1500)), 1500);
        assert_eq!(timeout_ms(Duration::MAX), u32::MAX);
    }
}
