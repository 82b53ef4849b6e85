//! A blocking, multiplexing client for the switchyard broker.
//!
//! One [`Client`] is one TCP connection joined to one channel. It is `Send + Sync`: share it
//! (`&Client`, `Arc<Client>`, scoped threads) and run any number of operations at once from any
//! number of threads; they are multiplexed over the connection by request id.
//!
//! ```no_run
//! use std::time::Duration;
//! use switchyard::client::Client;
//! use switchyard::ids::ChannelId;
//!
//! # fn main() -> Result<(), switchyard::client::Error> {
//! let channel = ChannelId::random();
//! let client = Client::connect("127.0.0.1:7400", channel)?;
//! let reply = client.request(b"ping?", Duration::from_secs(1))?;
//! # let _ = reply; Ok(()) }
//! ```
//!
//! # Threading model
//! - **Reader thread** (one per client, `transport.rs`): owns the read half of the socket, decodes
//!   frames and feeds them to the sans-IO `session.rs`, which routes each to the queue of the
//!   operation it belongs to. It never blocks on anything but the socket: deliveries go into
//!   unbounded queues, and the only frames it writes itself (PONG answers, CANCELs for streams the
//!   broker broke) go through a non-blocking control queue. It ends when the socket closes.
//! - **Caller threads** write their own frames: the write half sits in a `Mutex` held for exactly
//!   one whole frame, so frames never interleave and a request goes out the moment it is made
//!   (`TCP_NODELAY`, no flush timer). Callers then block on their operation's own queue (an
//!   `mpsc` channel, or a condvar-guarded queue for `next_*`), never on a lock held across I/O.
//!
//! # Invariants
//! - An operation registers its route in the session *before* its first frame is written, so
//!   an answer cannot arrive unrouted.
//! - Every wait is bounded or wakeable: waits for the broker use the operation's timeout plus a
//!   grace period ([`ClientOptions::deadline_grace`]; the broker itself always answers within the
//!   timeout, the grace only guards against a dead broker), and closing the client (by
//!   [`Client::close`], by drop, by a fatal broker error or by losing the connection) drops every
//!   route and notifies every condvar, so every blocked caller returns at once with the cause.
//! - An operation that ends on the client side without the broker knowing (a local deadline, a
//!   dropped [`Response`] or [`IncomingRequest`], a failing body reader) sends the CANCEL of its
//!   direction, so neither the broker nor the counterpart is left waiting.
//! - Nothing here panics on broker input; bad input is a typed [`ProtocolViolation`].
//!
//! # Memory
//! See `session.rs`: per-operation queues are unbounded (a slowly read body is buffered in full);
//! incoming requests are bounded by the receive window the application sets; broadcasts and
//! presence events are bounded by [`ClientOptions::broadcast_queue`] and
//! [`ClientOptions::presence_queue`].

mod error;
mod session;
mod transport;

pub use error::{Error, ProtocolViolation};

use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::ToSocketAddrs;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use log::{debug, info};

use crate::ids::{ChannelId, ClientId, RequestId};
use crate::protocol::{
    encode_u32, Decoder, ErrorBody, Flags, Frame, FrameType, WelcomeBody, MAX_PAYLOAD_CEILING,
    MAX_SEQUENCE,
};
use session::{Capacities, Ids, Session, StreamEvent, Wakeups};
use transport::{Flow, Transport};

/// Options for [`Client::connect_with`].
#[derive(Clone, Debug)]
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

/// State shared by the client handle, the reader thread, and every [`Response`] /
/// [`IncomingRequest`] still alive.
#[derive(Debug)]
struct Shared {
    ids: Ids,
    limits: Limits,
    grace: Duration,
    session: Mutex<Session>,
    requests_ready: Condvar,
    broadcasts_ready: Condvar,
    presence_ready: Condvar,
    transport: Transport,
}

impl Shared {
    fn session(&self) -> MutexGuard<'_, Session> {
        // The session's methods keep it consistent at every return; a panicking caller cannot
        // leave it half-updated, so poisoning carries no information here.
        self.session.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes per frame when sending: the broker's limit, within the decoder ceiling every
    /// broker honours.
    fn chunk_size(&self) -> u64 {
        u64::from(self.limits.max_payload.clamp(1, MAX_PAYLOAD_CEILING))
    }

    /// The local deadline of an operation with the given timeout, from now. `None` when it
    /// does not fit an `Instant` (wait forever).
    fn deadline(&self, timeout: Duration) -> Option<Instant> {
        let mut effective = if timeout.is_zero() {
            self.limits.default_timeout
        } else {
            timeout
        };
        if !self.limits.max_timeout.is_zero() {
            effective = effective.min(self.limits.max_timeout);
        }
        transport::now()
            .checked_add(effective)?
            .checked_add(self.grace)
    }

    /// The close reason, or `Closed` while still open (only asked after a disconnect).
    fn close_error(&self) -> Error {
        self.session().close_reason().unwrap_or(Error::Closed)
    }

    fn check_open(&self) -> Result<(), Error> {
        match self.session().close_reason() {
            Some(reason) => Err(reason),
            None => Ok(()),
        }
    }

    /// Closes the connection with `reason` (the first reason wins) and wakes everyone.
    fn close(&self, reason: Error) {
        let message = reason.to_string();
        let first = self.session().close(reason);
        if first {
            info!(
                "client {} on channel {} closed: {message}",
                self.ids.client, self.ids.channel
            );
        }
        self.requests_ready.notify_all();
        self.broadcasts_ready.notify_all();
        self.presence_ready.notify_all();
        self.transport.shutdown();
    }

    /// Writes a frame; a failure closes the client.
    fn send(&self, frame: &Frame) -> Result<(), Error> {
        self.transport.send(frame).map_err(|e| {
            self.close(Error::Io(e));
            self.close_error()
        })
    }

    /// Writes a frame nobody waits on (CANCEL, ACK from a drop); errors already closed the
    /// client and are only logged.
    fn send_quietly(&self, frame: &Frame) {
        if self.transport.is_closed() {
            return;
        }
        if let Err(e) = self.send(frame) {
            debug!("{:?} not sent: {e}", frame.header.frame_type);
        }
    }

    /// The reader thread's callback for every frame.
    fn handle_frame(&self, frame: Frame) -> Flow {
        let mut session = self.session();
        let result = session.handle_frame(frame);
        let output: Vec<Frame> = std::iter::from_fn(|| session.poll_output()).collect();
        let wakeups = session.take_wakeups();
        drop(session);
        self.notify(wakeups);
        for frame in output {
            self.transport.send_control(frame);
        }
        match result {
            Ok(()) => Flow::Continue,
            Err(reason) => {
                self.close(reason);
                Flow::Stop
            }
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
    }

    /// Waits on one of the application queues.
    fn wait_queue<T>(
        &self,
        ready: &Condvar,
        timeout: Option<Duration>,
        mut pop: impl FnMut(&mut Session) -> Option<T>,
    ) -> Result<T, Error> {
        let deadline = timeout.and_then(|timeout| transport::now().checked_add(timeout));
        let mut session = self.session();
        loop {
            if let Some(reason) = session.close_reason() {
                return Err(reason);
            }
            if let Some(item) = pop(&mut session) {
                return Ok(item);
            }
            session = match deadline {
                // No timeout, or one that overflows an Instant: as good as forever.
                None => ready.wait(session).unwrap_or_else(PoisonError::into_inner),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(transport::now());
                    if left.is_zero() {
                        return Err(Error::Timeout);
                    }
                    ready
                        .wait_timeout(session, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }
}

/// A connection to the broker, joined to one channel. See the module docs.
#[derive(Debug)]
pub struct Client {
    shared: Arc<Shared>,
    reader: Mutex<Option<JoinHandle<()>>>,
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
    /// `options.connect_timeout`.
    ///
    /// # Errors
    /// - [`Error::ConnectionRefused`]: no address accepted the TCP connection;
    /// - [`Error::Timeout`]: no WELCOME in time;
    /// - [`Error::Broker`]: the broker refused the handshake (`CLIENT_ID_IN_USE`,
    ///   `CHANNEL_MISMATCH` for a nil channel, `GOING_AWAY`, …);
    /// - [`Error::Protocol`]: the broker answered something else than a valid WELCOME;
    /// - [`Error::Io`]: the connection failed during the handshake.
    pub fn connect_with(
        addr: impl ToSocketAddrs,
        channel: ChannelId,
        options: ClientOptions,
    ) -> Result<Client, Error> {
        // A timeout too large for an Instant means "no practical bound": a year will do.
        let deadline = transport::now()
            .checked_add(options.connect_timeout)
            .unwrap_or_else(|| transport::now() + Duration::from_secs(365 * 24 * 3600));
        let mut stream = transport::connect(addr, options.connect_timeout)?;
        let requested = options.client_id.unwrap_or(ClientId::NIL);
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
            Bytes::new(),
        );
        transport::write_frame(&mut stream, &hello).map_err(Error::Io)?;

        // The client trusts the broker's frames up to the protocol's hard ceiling; the WELCOME's
        // own max payload only governs what the client sends.
        let mut decoder = Decoder::new(MAX_PAYLOAD_CEILING);
        let mut buf = BytesMut::new();
        let (header, welcome) = loop {
            let frame = transport::read_frame_until(&mut stream, &mut decoder, &mut buf, deadline)?;
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
                    transport::write_frame(&mut stream, &pong).map_err(Error::Io)?;
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

        let limits = Limits {
            max_payload: welcome.max_payload,
            default_timeout: Duration::from_millis(welcome.default_timeout_ms.into()),
            max_timeout: Duration::from_millis(welcome.max_timeout_ms.into()),
            heartbeat: Duration::from_millis(welcome.heartbeat_ms.into()),
        };
        let ids = Ids {
            client: assigned,
            channel,
        };
        let capacities = Capacities {
            broadcasts: options.broadcast_queue,
            presence: options.presence_queue,
        };
        let transport = Transport::new(
            stream.try_clone().map_err(Error::Io)?,
            stream.try_clone().map_err(Error::Io)?,
        );
        let peer_addr = stream.peer_addr().map_err(Error::Io)?;
        let shared = Arc::new(Shared {
            ids,
            limits,
            grace: options.deadline_grace,
            session: Mutex::new(Session::new(
                ids,
                welcome.max_payload,
                welcome.peers,
                capacities,
            )),
            requests_ready: Condvar::new(),
            broadcasts_ready: Condvar::new(),
            presence_ready: Condvar::new(),
            transport,
        });
        let on_frame = Arc::clone(&shared);
        let on_silence = Arc::clone(&shared);
        let on_end = Arc::clone(&shared);
        // The broker pings a silent client; the client, symmetrically, pings a silent broker
        // and gives up on it after `heartbeat_misses` unanswered intervals.
        let liveness = transport::Liveness {
            interval: (!limits.heartbeat.is_zero()).then_some(limits.heartbeat),
            misses: options.heartbeat_misses,
        };
        let reader = transport::spawn_reader(
            stream,
            decoder,
            buf,
            liveness,
            move |frame| on_frame.handle_frame(frame),
            move |sequence| {
                let ping = on_silence.ids.frame(
                    FrameType::Ping,
                    Flags::NONE,
                    RequestId::NIL,
                    sequence,
                    false,
                    Bytes::new(),
                );
                on_silence.transport.send_control(ping);
            },
            move |reason| on_end.close(reason),
        )
        .map_err(Error::Io)?;
        info!("client {assigned} joined channel {channel} at {peer_addr}");
        Ok(Client {
            shared,
            reader: Mutex::new(Some(reader)),
        })
    }

    /// This client's id (assigned by the broker when none was asked for).
    pub fn client_id(&self) -> ClientId {
        self.shared.ids.client
    }

    /// The channel joined.
    pub fn channel_id(&self) -> ChannelId {
        self.shared.ids.channel
    }

    /// The broker's limits from the WELCOME.
    pub fn limits(&self) -> Limits {
        self.shared.limits
    }

    /// The other peers on the channel now: the WELCOME's list, kept current by PEER_JOINED /
    /// PEER_LEFT.
    pub fn peers(&self) -> Vec<ClientId> {
        self.shared.session().peers()
    }

    /// True once the client is closed (by [`Client::close`], a fatal broker error, or a lost
    /// connection).
    pub fn is_closed(&self) -> bool {
        self.shared.session().close_reason().is_some()
    }

    // ----- sender side -----------------------------------------------------------------------

    /// Sends a request and waits for the whole response body.
    ///
    /// # Errors
    /// [`Error::NoReceiver`], [`Error::Timeout`], [`Error::PeerGone`], [`Error::Cancelled`], the
    /// other per-request broker errors as [`Error::Broker`], or a connection-fatal error.
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
        let id = shared.session().register_request(events)?;
        let deadline = shared.deadline(options.timeout);
        let mut stream = BodyStream::new(
            Arc::clone(shared),
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
    /// # Errors
    /// A connection-fatal error.
    pub fn set_receive_window(&self, window: u32) -> Result<(), Error> {
        let shared = &self.shared;
        shared.check_open()?;
        let frame = shared.ids.frame(
            FrameType::Receive,
            Flags::NONE,
            RequestId::NIL,
            0,
            false,
            encode_u32(window),
        );
        shared.send(&frame)
    }

    /// Waits for the next request assigned to this client (`None`: wait forever). Requests are
    /// only assigned after [`Client::set_receive_window`] gave credit.
    ///
    /// # Errors
    /// [`Error::Timeout`] when none arrived in time, or a connection-fatal error.
    pub fn next_request(&self, timeout: Option<Duration>) -> Result<IncomingRequest, Error> {
        let shared = &self.shared;
        let new = shared.wait_queue(&shared.requests_ready, timeout, Session::pop_request)?;
        let remaining = Duration::from_millis(new.timeout_ms.into());
        let deadline = transport::now()
            .checked_add(remaining)
            .and_then(|d| d.checked_add(shared.grace));
        let mut stream = BodyStream::new(
            Arc::clone(shared),
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
    /// [`Error::Timeout`] when the broker did not answer within the local deadline, or a
    /// connection-fatal error.
    pub fn broadcast(&self, body: &[u8], timeout: Duration) -> Result<u32, Error> {
        let shared = &self.shared;
        shared.check_open()?;
        let (outcome, receiver) = mpsc::channel();
        let id = shared.session().register_broadcast(outcome)?;
        let deadline = shared.deadline(timeout);
        let mut early = None;
        let flags = Flags::REQUEST | Flags::BROADCAST;
        let mut body = body;
        let sent = send_body(
            shared,
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
                Err(TryRecvError::Disconnected) => Err(shared.close_error()),
            },
        );
        let cancel = || {
            if shared.session().forget_outgoing(id) {
                shared.send_quietly(&shared.ids.cancel(id, flags));
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
                shared.session().forget_outgoing(id);
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
            Err(RecvTimeoutError::Disconnected) => Err(shared.close_error()),
        }
    }

    /// Waits for the next broadcast from another peer (`None`: wait forever), sends its ACK and
    /// returns it. A broadcast is handed out only once received in full.
    ///
    /// # Errors
    /// [`Error::Timeout`] when none arrived in time, or a connection-fatal error (also when the
    /// ACK could not be sent).
    pub fn next_broadcast(&self, timeout: Option<Duration>) -> Result<Broadcast, Error> {
        let shared = &self.shared;
        let done = shared.wait_queue(&shared.broadcasts_ready, timeout, Session::pop_broadcast)?;
        let ack = shared.ids.frame(
            FrameType::Ack,
            Flags::BROADCAST,
            done.id,
            0,
            false,
            Bytes::new(),
        );
        shared.send(&ack)?;
        Ok(Broadcast {
            id: done.id,
            sender: done.sender,
            body: done.body,
        })
    }

    /// Waits for the next presence change (`None`: wait forever).
    ///
    /// # Errors
    /// [`Error::Timeout`] when none arrived in time, or a connection-fatal error.
    pub fn next_presence(&self, timeout: Option<Duration>) -> Result<PresenceEvent, Error> {
        let shared = &self.shared;
        shared.wait_queue(&shared.presence_ready, timeout, Session::pop_presence)
    }

    /// Asks the broker for the current peer list of the channel (the others, including peers
    /// inside their presence grace period) and returns it; [`Client::peers`] is refreshed too.
    ///
    /// # Errors
    /// [`Error::Timeout`] when no answer came within `timeout`, or a connection-fatal error.
    pub fn fetch_peers(&self, timeout: Duration) -> Result<Vec<ClientId>, Error> {
        let shared = &self.shared;
        shared.check_open()?;
        let (waiter, receiver) = mpsc::channel();
        // Answers are matched to callers in registration order. Two callers racing may swap
        // answers, which is harmless: both lists are current (the lock is not held across the
        // write, so the reader thread is never blocked behind a slow socket).
        {
            let mut session = shared.session();
            session.register_peer_list(waiter)?;
            let frame = shared.ids.frame(
                FrameType::Peers,
                Flags::NONE,
                RequestId::NIL,
                0,
                false,
                Bytes::new(),
            );
            drop(session);
            shared.send(&frame)?;
        }
        match receiver.recv_timeout(timeout) {
            Ok(peers) => Ok(peers),
            Err(RecvTimeoutError::Timeout) => Err(Error::Timeout),
            Err(RecvTimeoutError::Disconnected) => Err(shared.close_error()),
        }
    }

    /// Sends a PING and returns the round-trip time to its PONG. (The client answers the
    /// broker's PINGs on its own.)
    ///
    /// # Errors
    /// [`Error::Timeout`] when no PONG came within `timeout`, or a connection-fatal error.
    pub fn ping(&self, timeout: Duration) -> Result<Duration, Error> {
        let shared = &self.shared;
        shared.check_open()?;
        let (waiter, receiver) = mpsc::channel();
        let sequence = shared.session().register_ping(waiter)?;
        let started = transport::now();
        let frame = shared.ids.frame(
            FrameType::Ping,
            Flags::NONE,
            RequestId::NIL,
            sequence,
            false,
            Bytes::new(),
        );
        if let Err(e) = shared.send(&frame) {
            shared.session().forget_ping(sequence);
            return Err(e);
        }
        match receiver.recv_timeout(timeout) {
            Ok(()) => Ok(started.elapsed()),
            Err(RecvTimeoutError::Timeout) => {
                shared.session().forget_ping(sequence);
                Err(Error::Timeout)
            }
            Err(RecvTimeoutError::Disconnected) => Err(shared.close_error()),
        }
    }

    /// Closes the connection: shuts the socket down both ways, fails every pending operation
    /// with [`Error::Closed`], wakes every blocked caller, and joins the reader thread.
    /// Idempotent; every later call returns `Err(Error::Closed)` (or the earlier cause, when the
    /// connection had already been lost).
    pub fn close(&self) {
        self.shared.close(Error::Closed);
        let reader = self
            .reader
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(reader) = reader {
            if reader.join().is_err() {
                debug!("the client reader thread panicked");
            }
        }
    }
}

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
        id: RequestId,
        direction: Direction,
        events: Receiver<StreamEvent>,
        deadline: Option<Instant>,
    ) -> BodyStream {
        BodyStream {
            shared,
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
        let mut session = self.shared.session();
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
                    .send_quietly(&self.shared.ids.cancel(self.id, flags));
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
            Err(RecvTimeoutError::Disconnected) => Err(self.shared.close_error()),
        }
    }

    /// Waits for the response START; returns the responder.
    fn await_start(&mut self) -> Result<ClientId, Error> {
        let event = match self.next_event() {
            Ok(event) => event,
            Err(e) => {
                self.fail(&e);
                return Err(e);
            }
        };
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
            let event = match self.next_event() {
                Ok(event) => event,
                Err(e) => {
                    self.fail(&e);
                    return Err(e);
                }
            };
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
                    let e = self.shared.close_error();
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
        let stream = &mut self.stream;
        let sent = send_body(
            &shared,
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
fn send_body(
    shared: &Shared,
    id: RequestId,
    flags: Flags,
    start_flags: Flags,
    timeout_ms: u32,
    body: &mut dyn Read,
    mut check: impl FnMut() -> Result<bool, Error>,
) -> Result<(), SendFailure> {
    let max = shared.chunk_size();
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
        shared.send(&frame).map_err(SendFailure::Ended)?;
        let Some(next) = next else {
            return Ok(());
        };
        if sequence == MAX_SEQUENCE {
            let max_payload = shared.limits.max_payload;
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
