//! The mio glue: the only code that touches sockets or reads the clock.
//!
//! [`Server`] owns a listener, the I/O half of every connection (socket, read buffer, decoder)
//! and the [`Router`]. It can run its own loop ([`Server::run`], [`Server::spawn`]) or be
//! embedded in a host's `mio::Poll`:
//!
//! ```text
//!   server.register(poll.registry(), token_base)?;      // tokens token_base .. +TOKEN_SPAN
//!   loop {
//!       let timeout = server.poll_timeout().map(|at| at.saturating_duration_since(Instant::now()));
//!       poll.poll(&mut events, timeout)?;
//!       let now = Instant::now();
//!       for event in &events {
//!           if server.owns(event.token()) { server.handle_event(event, now); }
//!       }
//!       server.handle_timeout(now);                     // MUST follow every batch
//!   }
//! ```
//!
//! # Loop-turn discipline
//! - Sockets are registered once for READABLE | WRITABLE (edge-triggered): no `epoll_ctl` per
//!   write. Reads go until `WouldBlock`, the per-connection read budget, or a router pause;
//!   connections stopped by the budget are re-queued and served next turn (fairness: one
//!   firehose cannot starve the others).
//! - Frames are handed to the router as they are decoded; the router's outputs are collected and
//!   every connection with bytes queued is flushed once at the end of the turn with vectored
//!   writes, up to a byte budget.
//! - A connection the router closes gets its queued error frame written first, best effort.
//!
//! # Connection limits
//! Beyond [`ServerConfig::max_connections`] open connections, or
//! [`ServerConfig::max_connections_per_ip`] from one address, an accepted connection gets one
//! ERROR LIMIT_EXCEEDED (nil request id), written straight to the fresh socket, and is closed
//! at once; the router never sees it. Accepting it (rather than leaving it in the backlog) keeps
//! the edge-triggered listener drained, so a flood of connections never makes the loop spin.
//! Out of descriptors or memory, `accept` itself fails: the backlog is then retried when a
//! connection closes or on a bounded backoff, with one warning per episode (`accept.rs`).
//!
//! # TLS
//! With [`ServerConfig::tls`] set, a second listener takes TLS connections (TLS 1.2 and 1.3,
//! rustls with the `ring` provider); the plain listener stays as it is. The certificate chain and
//! key are read at [`Server::bind`], which fails with a [`TlsConfigError`](crate::tls::TlsConfigError)
//! naming the file. Connections from either listener are one connection type whose transport is
//! plain or TLS (`connection.rs`); the router sees the same frames from both. The TLS transport's
//! invariants — rustls holds at most [`TLS_BUFFER_LIMIT`] bytes of records behind the router's
//! queue, records (handshake included) are written at every flush even with nothing queued,
//! nothing blocks — are in `tls.rs`. A TLS peer that never completes its handshake never says
//! HELLO either, so the router's handshake timeout closes it. At a connection limit, a TLS
//! connection is closed without the plain-protocol ERROR frame (it could not read one).
//!
//! # Metrics
//! With [`ServerConfig::metrics_listen`] set, the same loop serves Prometheus' `GET /metrics` on
//! a second listener (see `metrics.rs`): a few connections with their own small buffers and a
//! deadline, under fixed tokens of the server's range, answered at the end of a turn.

mod accept;
mod connection;
mod flush;
mod metrics;
mod tls;

pub use connection::CloseReason;
pub use tls::{TlsListenerConfig, BUFFER_LIMIT as TLS_BUFFER_LIMIT};

use hashbrown::HashMap;
use mio::event::Event;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::ids::{ConnId, RequestId};
use crate::protocol::{encode_error, ErrorCode, FrameType, Header};
use crate::router::{Output, Router, RouterConfig, RouterStats};
use connection::{Fill, IoConnection, Transport};
use switchyard_core::pool::BufferPool;

/// Configuration of the server. `Default` listens on 127.0.0.1:7878 with the documented limits.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The routing core's limits and timeouts.
    pub router: RouterConfig,
    /// Bytes read from one connection per loop turn before the others get their turn.
    pub read_budget: usize,
    /// Bytes written to one connection per loop turn.
    pub write_budget: usize,
    /// After a loop turn with events, keep polling without sleeping for this long before
    /// blocking ([`Server::run`] and [`Server::spawn`] only). Zero (the default) never spins;
    /// 50–200 µs trades a core's idle time under load for lower request/reply latency.
    pub busy_poll: Duration,
    /// How long a graceful shutdown lets in-flight requests finish.
    pub drain_deadline: Duration,
    /// Address of the Prometheus metrics endpoint (`GET /metrics`); `None` (the default of the
    /// library, so embedded and test servers bind nothing more) serves no metrics. The broker
    /// binary defaults to 127.0.0.1:7879.
    pub metrics_listen: Option<SocketAddr>,
    /// How long a metrics connection may stay open, from its accept: a scraper that has not sent
    /// its request and read the answer by then is closed.
    pub metrics_timeout: Duration,
    /// Broker connections open at once. One more is accepted, sent ERROR LIMIT_EXCEEDED (nil
    /// request id) and closed at once, so the backlog drains and the listener never spins.
    pub max_connections: usize,
    /// Broker connections open at once from one IP address; beyond it, as `max_connections`.
    pub max_connections_per_ip: usize,
    /// A second listener for TLS connections; `None` (the default) listens for plain TCP only.
    /// Its connections count in the same limits as the plain listener's.
    pub tls: Option<TlsListenerConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7878)),
            router: RouterConfig::default(),
            read_budget: 256 * 1024,
            write_budget: 1024 * 1024,
            busy_poll: Duration::ZERO,
            drain_deadline: Duration::from_secs(5),
            metrics_listen: None,
            // Prometheus' own default scrape timeout.
            metrics_timeout: Duration::from_secs(10),
            // The scale one single-threaded loop is built for (C10K), well under common
            // descriptor limits; raise it (and `ulimit -n`) for more idle connections.
            max_connections: 10_000,
            // A tenth of the whole: one host (or NAT gateway) cannot take every slot.
            max_connections_per_ip: 1_000,
            tls: None,
        }
    }
}

/// State counts of the whole broker: the router's plus the I/O layer's.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct ServerStats {
    /// The routing core's counts.
    pub router: RouterStats,
    /// Open sockets.
    pub sockets: usize,
    /// Bytes received but not yet decoded into frames.
    pub read_buffered_bytes: usize,
    /// Capacity kept warm in the buffer pools (bounded; not data held for anyone).
    pub pooled_bytes: usize,
    /// Cumulative: connections accepted.
    pub accepted: u64,
    /// Cumulative: connections closed.
    pub closed: u64,
    /// Cumulative: frames decoded.
    pub frames_in: u64,
    /// Cumulative: bytes read from sockets.
    pub bytes_in: u64,
    /// Open connections of the metrics endpoint (not counted in `sockets`).
    pub metrics_connections: usize,
    /// Cumulative: connections refused at accept by `max_connections` or
    /// `max_connections_per_ip` (not counted in `accepted`).
    pub refused: u64,
    /// Open connections of the TLS listener (counted in `sockets` too).
    pub tls_sockets: usize,
    /// Cumulative: connections accepted on the TLS listener (counted in `accepted` too).
    pub tls_accepted: u64,
    /// Cumulative: TLS connections closed before their TLS handshake completed (a TLS error,
    /// a peer that is not speaking TLS, a certificate the client refused, EOF, or the handshake
    /// timeout).
    pub tls_handshake_failures: u64,
    /// Cumulative: `accept` calls that failed for lack of descriptors or memory (see
    /// `accept.rs`: the backlog is retried on a schedule, never in a loop).
    pub accept_errors: u64,
    /// An accept-starvation episode is under way: connections wait in the kernel's backlog.
    pub accept_starved: bool,
}

impl ServerStats {
    /// Every byte the broker holds for its clients: read buffers, outbound queues, held frames.
    pub fn buffered_bytes(&self) -> usize {
        self.router.buffered_bytes + self.read_buffered_bytes
    }

    /// True when no connection, channel, request, broadcast, timer or buffered byte remains.
    pub fn is_idle(&self) -> bool {
        let r = &self.router;
        self.sockets == 0
            && r.connections == 0
            && r.channels == 0
            && r.pending_requests == 0
            && r.assignments == 0
            && r.broadcasts == 0
            && r.armed_timers == 0
            && self.buffered_bytes() == 0
    }
}

/// Offsets inside the server's token range: the listener, the TLS listener, the metrics
/// listener, a fixed block of metrics connections, then broker connections by slot.
const LISTENER_OFFSET: usize = 0;
const TLS_LISTENER_OFFSET: usize = 1;
const METRICS_LISTENER_OFFSET: usize = 2;
const METRICS_CONN_OFFSET: usize = 3;
const CONN_OFFSET: usize = METRICS_CONN_OFFSET + metrics::MAX_SCRAPES;

/// The broker's I/O layer. See the module docs.
pub struct Server {
    config: ServerConfig,
    listener: TcpListener,
    local_addr: SocketAddr,
    /// The TLS listener, when [`ServerConfig::tls`] is set.
    tls: Option<TlsListener>,
    registry: Option<Registry>,
    token_base: usize,
    /// I/O halves of connections, indexed by `ConnId::slot` (the router's slab slot).
    conns: Vec<Option<IoConnection>>,
    sockets: usize,
    /// Open broker connections per peer IP address (entries at zero are removed).
    per_ip: HashMap<IpAddr, usize>,
    router: Router,
    to_read: VecDeque<ConnId>,
    to_flush: Vec<ConnId>,
    to_close: Vec<(ConnId, CloseReason)>,
    /// Time of the latest input; what `poll_timeout` returns when work is already pending.
    now: Instant,
    /// Every read lands here first (see `connection.rs`).
    scratch: Box<[u8]>,
    /// Read buffers of connections with nothing undecoded (see `pool.rs`).
    read_pool: BufferPool,
    /// End of the current busy-poll window (see [`ServerConfig::busy_poll`]).
    spin_until: Instant,
    /// A graceful shutdown began: the listener is deregistered and the router drains.
    shutting_down: bool,
    stats: ServerStats,
    /// The Prometheus endpoint, when `metrics_listen` is set.
    metrics: Option<metrics::MetricsEndpoint>,
    /// `accept` failed for lack of resources and the backlog waits for a retry (`accept.rs`).
    accept_starved: Option<accept::Starvation>,
}

/// The TLS listener and the rustls configuration its connections share.
struct TlsListener {
    listener: TcpListener,
    local_addr: SocketAddr,
    config: std::sync::Arc<rustls::ServerConfig>,
}

/// Which listener a connection came from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Listener {
    Plain,
    Tls,
}

impl Server {
    /// Number of tokens a server uses from its base: the listeners, the metrics connections and
    /// one per connection slot.
    pub const TOKEN_SPAN: usize = 1 << 30;

    /// Binds the listeners (not yet registered with any poll); with [`ServerConfig::tls`], reads
    /// the certificate and key first.
    ///
    /// # Errors
    /// The bind error (address in use, permission denied...), or a TLS configuration error
    /// wrapping a [`TlsConfigError`](crate::tls::TlsConfigError) that names the file (recover it
    /// with `get_ref()` + `downcast_ref`).
    pub fn bind(config: ServerConfig) -> io::Result<Server> {
        // The files first: a bad certificate must not leave a half-bound broker behind.
        let tls_config = config
            .tls
            .as_ref()
            .map(TlsListenerConfig::load)
            .transpose()?;
        let listener = TcpListener::bind(config.listen)?;
        let local_addr = listener.local_addr()?;
        let tls = match (&config.tls, tls_config) {
            (Some(tls), Some(tls_config)) => {
                let listener = TcpListener::bind(tls.listen).map_err(|e| {
                    io::Error::new(e.kind(), format!("TLS listener {}: {e}", tls.listen))
                })?;
                Some(TlsListener {
                    local_addr: listener.local_addr()?,
                    listener,
                    config: tls_config,
                })
            }
            _ => None,
        };
        let metrics = config
            .metrics_listen
            .map(|addr| metrics::MetricsEndpoint::bind(addr, config.metrics_timeout))
            .transpose()?;
        // The only clock read at construction: the router's epoch.
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        let router = Router::new(config.router.clone(), now);
        Ok(Server {
            config,
            listener,
            local_addr,
            tls,
            registry: None,
            token_base: 0,
            conns: Vec::new(),
            sockets: 0,
            per_ip: HashMap::new(),
            router,
            to_read: VecDeque::new(),
            to_flush: Vec::new(),
            to_close: Vec::new(),
            now,
            scratch: vec![0; connection::READ_CHUNK].into_boxed_slice(),
            // 256 warm buffers of up to 64 KiB: at most 16 MiB retained; new ones 4 KiB.
            read_pool: BufferPool::new(256, 4 * 1024, 64 * 1024),
            spin_until: now,
            shutting_down: false,
            stats: ServerStats::default(),
            metrics,
            accept_starved: None,
        })
    }

    /// The address the listener is bound to (the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address the metrics endpoint is bound to, when it is on.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|m| m.local_addr())
    }

    /// The address the TLS listener is bound to, when it is on.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref().map(|t| t.local_addr)
    }

    /// Registers the listener with `registry`; the server will use tokens
    /// `token_base ..= token_base + TOKEN_SPAN - 1` for itself and its connections.
    ///
    /// # Errors
    /// Registration or registry-clone failure.
    pub fn register(&mut self, registry: &Registry, token_base: Token) -> io::Result<()> {
        self.token_base = token_base.0;
        registry.register(
            &mut self.listener,
            Token(self.token_base + LISTENER_OFFSET),
            Interest::READABLE,
        )?;
        if let Some(tls) = &mut self.tls {
            registry.register(
                &mut tls.listener,
                Token(self.token_base + TLS_LISTENER_OFFSET),
                Interest::READABLE,
            )?;
        }
        if let Some(metrics) = &mut self.metrics {
            metrics.register(registry, Token(self.token_base + METRICS_LISTENER_OFFSET))?;
        }
        self.registry = Some(registry.try_clone()?);
        Ok(())
    }

    /// True when `token` belongs to this server.
    pub fn owns(&self, token: Token) -> bool {
        token.0 >= self.token_base && token.0 - self.token_base < Self::TOKEN_SPAN
    }

    /// The routing core's view of the broker and the I/O layer's counts.
    pub fn stats(&self) -> ServerStats {
        let mut stats = self.stats;
        stats.router = self.router.stats();
        stats.sockets = self.sockets;
        stats.metrics_connections = self.metrics.as_ref().map_or(0, |m| m.open());
        stats.read_buffered_bytes = self.conns.iter().flatten().map(|c| c.read_buf.len()).sum();
        stats.tls_sockets = self.conns.iter().flatten().filter(|c| c.is_tls()).count();
        stats.pooled_bytes = self.read_pool.retained_bytes() + self.router.pooled_bytes();
        stats.accept_starved = self.accept_starved.is_some();
        stats
    }

    /// The earliest instant at which [`Server::handle_timeout`] has work; an instant in the past
    /// (poll without blocking) when work is already pending.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.to_read.is_empty() || !self.to_flush.is_empty() || !self.to_close.is_empty() {
            return Some(self.now);
        }
        [
            self.router.poll_timeout(),
            self.metrics_timeout(),
            self.accept_retry_at(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Handles one readiness event for a token this server [`owns`](Server::owns).
    pub fn handle_event(&mut self, event: &Event, now: Instant) {
        self.now = self.now.max(now);
        let offset = event.token().0.wrapping_sub(self.token_base);
        if offset == LISTENER_OFFSET {
            return self.on_listener_ready(Listener::Plain, now);
        }
        if offset == TLS_LISTENER_OFFSET {
            return self.on_listener_ready(Listener::Tls, now);
        }
        if (METRICS_LISTENER_OFFSET..CONN_OFFSET).contains(&offset) {
            return self.handle_metrics_event(offset, event, now);
        }
        let Some(slot) = offset.checked_sub(CONN_OFFSET) else {
            return;
        };
        let Some(id) = self.conns.get(slot).and_then(|c| c.as_ref()).map(|c| c.id) else {
            // A stale event for a connection closed earlier in this batch.
            return;
        };
        if (event.is_read_closed() || event.is_error()) && self.router.is_read_paused(id) {
            // A connection paused by flow control is not read, so its EOF would never be seen
            // by a read: close it now (its unread frames have no one left to answer anyway).
            let reason = if event.is_error() {
                CloseReason::IoError(io::ErrorKind::ConnectionReset)
            } else {
                CloseReason::PeerClosed
            };
            return self.close(id, reason, now);
        }
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            self.drive_input(id, now);
        }
        if event.is_writable() {
            self.queue_flush(id);
        }
    }

    /// Fires due timers and finishes the turn: re-queued reads, flushes, closes. Call after every
    /// batch of events and whenever [`Server::poll_timeout`] has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = self.now.max(now);
        self.router.handle_timeout(now);
        self.poll_router_outputs();
        // Connections re-queued by their budget or a resume: one pass over those queued now, so a
        // firehose re-queued during the pass waits for the next turn.
        for _ in 0..self.to_read.len() {
            let Some(id) = self.to_read.pop_front() else {
                break;
            };
            if let Some(c) = self.conn_mut(id) {
                c.queued_for_read = false;
                self.drive_input(id, now);
            }
        }
        self.flush_all();
        while !self.to_close.is_empty() {
            for (id, reason) in std::mem::take(&mut self.to_close) {
                self.close(id, reason, now);
            }
            self.flush_all();
        }
        // After the closes: a descriptor they freed may take a connection waiting in the backlog.
        self.retry_starved_accept(now);
        // Last: the metrics see the turn's outcome.
        self.serve_metrics(now);
    }

    /// Begins a graceful shutdown (PROTOCOL.md §8.1): stops accepting connections and lets the
    /// router drain, for at most the configured drain deadline. Idempotent. The server is done
    /// when [`Server::is_finished`].
    pub fn begin_shutdown(&mut self, now: Instant) {
        if std::mem::replace(&mut self.shutting_down, true) {
            return;
        }
        self.now = self.now.max(now);
        if let Some(registry) = &self.registry {
            let _ = registry.deregister(&mut self.listener);
            if let Some(tls) = &mut self.tls {
                let _ = registry.deregister(&mut tls.listener);
            }
        }
        log::info!(
            "shutting down: no new connections; draining for at most {:?}",
            self.config.drain_deadline
        );
        self.router.begin_drain(now, self.config.drain_deadline);
        self.poll_router_outputs();
    }

    /// True once a graceful shutdown has closed every connection.
    pub fn is_finished(&self) -> bool {
        self.shutting_down && self.sockets == 0 && self.router.is_drained()
    }

    /// Runs the server's own poll loop. SIGINT or SIGTERM begins a graceful shutdown; a second
    /// one closes every connection at once. Returns when the shutdown is complete.
    ///
    /// # Errors
    /// Failure to create or wait on the poll, or to install the signal handlers.
    pub fn run(mut self) -> io::Result<()> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut poll = Poll::new()?;
        self.register(poll.registry(), Token(0))?;
        let mut signals = signal_hook_mio::v1_0::Signals::new([SIGINT, SIGTERM])?;
        poll.registry()
            .register(&mut signals, SIGNAL_TOKEN, Interest::READABLE)?;
        let mut events = Events::with_capacity(1024);
        loop {
            let foreign = self.turn(&mut poll, &mut events)?;
            if foreign {
                for signal in signals.pending() {
                    #[allow(clippy::disallowed_methods)] // the server reads the clock
                    let now = Instant::now();
                    if self.shutting_down {
                        log::warn!("signal {signal} again: closing every connection now");
                        self.close_all();
                    } else {
                        log::info!("signal {signal}: graceful shutdown");
                        self.begin_shutdown(now);
                        self.handle_timeout(now);
                    }
                }
            }
            if self.is_finished() {
                log::info!("shutdown complete");
                return Ok(());
            }
        }
    }

    /// Runs the server on its own thread; the handle reads its stats and stops it.
    ///
    /// # Errors
    /// Bind or poll creation failure.
    pub fn spawn(config: ServerConfig) -> io::Result<ServerHandle> {
        let mut server = Server::bind(config)?;
        let addr = server.local_addr();
        let metrics_addr = server.metrics_addr();
        let tls_addr = server.tls_addr();
        let poll = Poll::new()?;
        server.register(poll.registry(), Token(0))?;
        let waker = Waker::new(poll.registry(), CONTROL_TOKEN)?;
        let (control_tx, control_rx) = mpsc::channel::<Control>();
        let thread = thread::Builder::new()
            .name("switchyard".into())
            .spawn(move || serve_with_control(server, poll, control_rx))?;
        Ok(ServerHandle {
            addr,
            metrics_addr,
            tls_addr,
            waker,
            control: control_tx,
            thread: Some(thread),
        })
    }

    /// One loop turn: wait, dispatch events, finish the turn. Returns whether an event for a
    /// token outside the server's range arrived (the caller's own sources).
    fn turn(&mut self, poll: &mut Poll, events: &mut Events) -> io::Result<bool> {
        #[allow(clippy::disallowed_methods)] // the server is where the clock is read
        let before = Instant::now();
        let mut timeout = self
            .poll_timeout()
            .map(|at| at.saturating_duration_since(before));
        if self.spin_until > before {
            // Busy-poll window after activity: look for more without sleeping, which saves the
            // wakeup (tens of µs on a VM) of a request that follows the last one closely.
            timeout = Some(Duration::ZERO);
        }
        match poll.poll(events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(false),
            Err(e) => return Err(e),
        }
        #[allow(clippy::disallowed_methods)] // once per wakeup, passed down
        let now = Instant::now();
        let mut foreign = false;
        for event in events.iter() {
            if self.owns(event.token()) {
                self.handle_event(event, now);
            } else {
                foreign = true;
            }
        }
        if !events.is_empty() && !self.config.busy_poll.is_zero() {
            self.spin_until = now + self.config.busy_poll;
        }
        self.handle_timeout(now);
        Ok(foreign)
    }

    /// Closes every connection (shutdown).
    pub fn close_all(&mut self) {
        let ids: Vec<ConnId> = self.conns.iter().flatten().map(|c| c.id).collect();
        let now = self.now;
        for id in ids {
            self.close(id, CloseReason::Shutdown, now);
        }
    }

    fn conn_mut(&mut self, id: ConnId) -> Option<&mut IoConnection> {
        self.conns
            .get_mut(id.slot as usize)?
            .as_mut()
            .filter(|c| c.id == id)
    }

    fn accept(&mut self, mut stream: TcpStream, addr: SocketAddr, from: Listener, now: Instant) {
        if let Err(e) = stream.set_nodelay(true) {
            log::debug!("{addr}: set_nodelay failed: {e}");
        }
        let ip = addr.ip();
        let from_ip = self.per_ip.get(&ip).copied().unwrap_or(0);
        if self.sockets >= self.config.max_connections {
            let max = self.config.max_connections;
            return self.refuse(
                stream,
                addr,
                from,
                &format!("the broker has {max} connections"),
            );
        }
        if from_ip >= self.config.max_connections_per_ip {
            let max = self.config.max_connections_per_ip;
            return self.refuse(
                stream,
                addr,
                from,
                &format!("{max} connections from {ip} are open"),
            );
        }
        let transport = match (from, &self.tls) {
            (Listener::Plain, _) => Transport::Plain,
            (Listener::Tls, Some(tls)) => match tls::new_session(&tls.config) {
                Ok(session) => Transport::Tls(Box::new(session)),
                Err(e) => {
                    log::warn!("{addr}: TLS session refused: {e}");
                    return;
                }
            },
            (Listener::Tls, None) => return,
        };
        let Some(registry) = self.registry.as_ref() else {
            return;
        };
        let id = self.router.handle_connect(now);
        self.router.set_peer_addr(id, addr);
        let token = Token(self.token_base + CONN_OFFSET + id.slot as usize);
        if let Err(e) =
            registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
        {
            log::warn!("{addr}: register failed: {e}");
            self.router.handle_disconnect(id, now);
            return;
        }
        let slot = id.slot as usize;
        if self.conns.len() <= slot {
            self.conns.resize_with(slot + 1, || None);
        }
        self.conns[slot] = Some(IoConnection::new(
            id,
            stream,
            ip,
            transport,
            self.config.router.max_payload,
        ));
        *self.per_ip.entry(ip).or_default() += 1;
        self.sockets += 1;
        self.stats.accepted += 1;
        match from {
            Listener::Plain => log::info!("{id}: accepted from {addr}"),
            Listener::Tls => {
                self.stats.tls_accepted += 1;
                log::info!("{id}: accepted from {addr} (tls)");
            }
        }
    }

    /// Refuses an accepted connection over a connection limit: one ERROR LIMIT_EXCEEDED (nil
    /// request id), best effort, then close. The router never sees it.
    fn refuse(&mut self, mut stream: TcpStream, addr: SocketAddr, from: Listener, text: &str) {
        use std::io::{Read, Write};
        self.stats.refused += 1;
        // A debug line and a counter, not an info line: a connection flood must not flood the log.
        log::debug!("{addr}: refused: {text}");
        if from == Listener::Tls {
            // A TLS client could not read a plain ERROR frame: it sees the connection closed
            // during its handshake. Dropping the stream closes it.
            return;
        }
        let payload = encode_error(ErrorCode::LimitExceeded as u16, text, &[]);
        let header = Header {
            request_id: RequestId::NIL,
            is_final: true,
            payload_len: payload.len() as u32,
            ..Header::new(FrameType::Error)
        };
        let mut frame = Vec::with_capacity(header.encode().len() + payload.len());
        frame.extend_from_slice(&header.encode());
        frame.extend_from_slice(&payload);
        // A fresh socket's send buffer takes a small frame whole; if not, the peer gets only the
        // close. Nothing here blocks: the stream is non-blocking.
        if let Err(e) = stream.write_all(&frame) {
            log::debug!("{addr}: refusal not written: {e}");
        }
        // FIN after the frame; then discard what the peer already sent (its HELLO), so that the
        // close does not turn into a reset that could destroy the frame before it is read.
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let mut sink = [0u8; 1024];
        for _ in 0..64 {
            match stream.read(&mut sink) {
                Ok(n) if n > 0 => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                _ => break,
            }
        }
    }

    /// Decodes buffered frames and reads more, within the budget, until paused or drained.
    fn drive_input(&mut self, id: ConnId, now: Instant) {
        let mut budget = self.config.read_budget;
        loop {
            // Frames already buffered first: they may be all that is left after a pause.
            loop {
                if self.router.is_read_paused(id) {
                    return;
                }
                let Some(c) = self.conn_mut(id) else {
                    return;
                };
                match c.decoder.decode(&mut c.read_buf) {
                    Ok(Some(frame)) => {
                        self.stats.frames_in += 1;
                        self.router.handle_frame(id, frame, now);
                        self.poll_router_outputs();
                    }
                    Ok(None) => break,
                    Err(error) => {
                        self.router.handle_decode_error(id, error, now);
                        self.poll_router_outputs();
                        return;
                    }
                }
            }
            if budget == 0 {
                self.queue_read(id);
                return;
            }
            let slot = self
                .conns
                .get_mut(id.slot as usize)
                .and_then(|c| c.as_mut());
            let Some(c) = slot.filter(|c| c.id == id) else {
                return;
            };
            let filled = c.fill(&mut self.scratch, &mut self.read_pool);
            // TLS: input may call for output with nothing queued in the router (the handshake's
            // next flight, an alert, a key update): the flush at the end of the turn writes it.
            let tls_output = c.tls_wants_write();
            match filled {
                Ok(Fill::Read(n)) => {
                    self.stats.bytes_in += n as u64;
                    budget = budget.saturating_sub(n);
                    if tls_output {
                        self.queue_flush(id);
                    }
                }
                Ok(Fill::TlsHandshakeDone(n)) => {
                    self.stats.bytes_in += n as u64;
                    budget = budget.saturating_sub(n);
                    if let Some(Transport::Tls(tls)) = self.conn_mut(id).map(|c| &c.transport) {
                        log::debug!(
                            "{id}: TLS handshake done ({:?}, {:?})",
                            tls.conn.protocol_version(),
                            tls.conn.negotiated_cipher_suite().map(|s| s.suite())
                        );
                    }
                    if tls_output {
                        self.queue_flush(id);
                    }
                }
                Ok(Fill::TlsFailed(error)) => {
                    let who = self.router.describe(id);
                    let handshaking = self.conn_mut(id).is_some_and(
                        |c| matches!(&c.transport, Transport::Tls(t) if t.is_handshaking()),
                    );
                    if handshaking {
                        log::info!("{who}: TLS handshake failed: {error}");
                    } else {
                        log::info!("{who}: TLS error: {error}");
                    }
                    return self.close(id, CloseReason::TlsError, now);
                }
                Ok(Fill::WouldBlock) => {
                    c.trim(&mut self.read_pool);
                    return;
                }
                // Close at once, not at the end of the turn: anything routed later in this
                // turn (a reconnect with the same client id, presence) must already see the
                // departure, in the order the peer's actions happened.
                Ok(Fill::Eof) => return self.close(id, CloseReason::PeerClosed, now),
                Err(e) => return self.close(id, CloseReason::IoError(e.kind()), now),
            }
        }
    }

    fn poll_router_outputs(&mut self) {
        while let Some(output) = self.router.poll_output() {
            match output {
                Output::Transmit(id) => self.queue_flush(id),
                Output::Close(id) => {
                    self.queue_flush(id);
                    self.to_close.push((id, CloseReason::ProtocolError));
                }
                Output::Resume(id) => self.queue_read(id),
            }
        }
    }

    fn queue_read(&mut self, id: ConnId) {
        if let Some(c) = self.conn_mut(id) {
            if !std::mem::replace(&mut c.queued_for_read, true) {
                self.to_read.push_back(id);
            }
        }
    }

    fn close(&mut self, id: ConnId, reason: CloseReason, now: Instant) {
        let Some(mut c) = self.conns.get_mut(id.slot as usize).and_then(|slot| {
            if slot.as_ref().is_some_and(|c| c.id == id) {
                slot.take()
            } else {
                None
            }
        }) else {
            return;
        };
        let mut tls_unfinished = false;
        if let Transport::Tls(tls) = &mut c.transport {
            tls_unfinished = tls.is_handshaking();
            if tls_unfinished {
                self.stats.tls_handshake_failures += 1;
            }
            if !matches!(reason, CloseReason::IoError(_)) {
                // After the router's last frame (flushed before the close): close_notify, or the
                // fatal alert rustls queued, best effort.
                tls.close(&mut c.stream);
            }
        }
        if let Some(registry) = &self.registry {
            let _ = registry.deregister(&mut c.stream);
        }
        let who = self.router.describe(id);
        self.router.handle_disconnect(id, now);
        self.poll_router_outputs();
        if let hashbrown::hash_map::Entry::Occupied(mut open) = self.per_ip.entry(c.ip) {
            *open.get_mut() -= 1;
            if *open.get() == 0 {
                open.remove();
            }
        }
        self.sockets -= 1;
        self.stats.closed += 1;
        if tls_unfinished {
            log::info!("{who}: closed ({reason:?}) before completing its TLS handshake");
        } else {
            log::info!("{who}: closed ({reason:?})");
        }
    }
}

/// The loop of [`Server::spawn`]: turns, then control messages, then watchers.
fn serve_with_control(mut server: Server, mut poll: Poll, control_rx: mpsc::Receiver<Control>) {
    let mut events = Events::with_capacity(1024);
    let mut watchers: Vec<Watcher> = Vec::new();
    loop {
        if let Err(e) = server.turn(&mut poll, &mut events) {
            log::error!("poll failed: {e}");
            return;
        }
        while let Ok(control) = control_rx.try_recv() {
            match control {
                Control::Stats(reply) => {
                    let _ = reply.send(server.stats());
                }
                Control::Watch(watcher) => watchers.push(watcher),
                Control::Drain => {
                    #[allow(clippy::disallowed_methods)] // the server reads the clock
                    let now = Instant::now();
                    server.begin_shutdown(now);
                    server.handle_timeout(now);
                }
                Control::Shutdown => {
                    server.close_all();
                    return;
                }
            }
        }
        if !watchers.is_empty() {
            // Checked after every turn, so a watcher sees every state the loop passes through.
            let stats = server.stats();
            watchers.retain(|w| {
                if (w.condition)(&stats) {
                    let _ = w.reply.try_send(stats);
                    false
                } else {
                    !w.abandoned()
                }
            });
        }
        if server.is_finished() {
            log::info!("shutdown complete");
            return;
        }
    }
}

/// Token of the control waker in [`Server::spawn`]'s loop: just past the server's range.
const CONTROL_TOKEN: Token = Token(Server::TOKEN_SPAN);

/// Token of the signal source in [`Server::run`]'s loop.
const SIGNAL_TOKEN: Token = Token(Server::TOKEN_SPAN + 1);

enum Control {
    Stats(mpsc::Sender<ServerStats>),
    Watch(Watcher),
    Drain,
    Shutdown,
}

/// A waiter of [`ServerHandle::wait_until`]: answered with the first stats that satisfy it.
struct Watcher {
    condition: Box<dyn Fn(&ServerStats) -> bool + Send>,
    reply: mpsc::SyncSender<ServerStats>,
    gave_up: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Watcher {
    fn abandoned(&self) -> bool {
        self.gave_up.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Handle to a server running on its own thread ([`Server::spawn`]). Dropping it stops the
/// server.
pub struct ServerHandle {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    tls_addr: Option<SocketAddr>,
    waker: Waker,
    control: mpsc::Sender<Control>,
    thread: Option<thread::JoinHandle<()>>,
}

impl ServerHandle {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address of the metrics endpoint, when it is on.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The address of the TLS listener, when it is on.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// A snapshot of the server's state counts, taken between two loop turns.
    ///
    /// # Errors
    /// `BrokenPipe` when the server thread has stopped.
    pub fn stats(&self) -> io::Result<ServerStats> {
        let (tx, rx) = mpsc::channel();
        self.control
            .send(Control::Stats(tx))
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
        self.waker.wake()?;
        rx.recv_timeout(Duration::from_secs(10))
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))
    }

    /// Waits until the server's stats satisfy `condition` (checked after every loop turn), for at
    /// most `timeout`. Returns the first satisfying stats, or the error `TimedOut` with no stats.
    /// Event-driven: no polling, no sleeping.
    ///
    /// # Errors
    /// `TimedOut`, or `BrokenPipe` when the server thread has stopped.
    pub fn wait_until(
        &self,
        condition: impl Fn(&ServerStats) -> bool + Send + 'static,
        timeout: Duration,
    ) -> io::Result<ServerStats> {
        let (tx, rx) = mpsc::sync_channel(1);
        let gave_up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watcher = Watcher {
            condition: Box::new(condition),
            reply: tx,
            gave_up: gave_up.clone(),
        };
        self.control
            .send(Control::Watch(watcher))
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
        self.waker.wake()?;
        match rx.recv_timeout(timeout) {
            Ok(stats) => Ok(stats),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                gave_up.store(true, std::sync::atomic::Ordering::Relaxed);
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "condition not reached in time",
                ))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(io::ErrorKind::BrokenPipe.into()),
        }
    }

    /// Waits until every connection, channel, request, broadcast, timer and buffered byte is
    /// gone ([`ServerStats::is_idle`]).
    ///
    /// # Errors
    /// As [`ServerHandle::wait_until`].
    pub fn wait_idle(&self, timeout: Duration) -> io::Result<ServerStats> {
        self.wait_until(ServerStats::is_idle, timeout)
    }

    /// Begins a graceful shutdown, as a signal does for [`Server::run`]: the server thread ends
    /// once the drain is complete (see [`ServerHandle::join`]).
    ///
    /// # Errors
    /// `BrokenPipe` when the server thread has stopped.
    pub fn begin_shutdown(&self) -> io::Result<()> {
        self.control
            .send(Control::Drain)
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
        self.waker.wake()
    }

    /// Waits for the server thread to end (after a graceful shutdown completed).
    pub fn join(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    /// Stops the server: closes every connection and joins its thread. Idempotent.
    pub fn shutdown(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = self.control.send(Control::Shutdown);
            let _ = self.waker.wake();
            let _ = thread.join();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}
