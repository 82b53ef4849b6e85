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
//! # Module map
//! ```text
//!   mod.rs         Server: configuration, stats, the embedding API, router outputs, close
//!   accept.rs      admission (limits, TLS session, registration) and accept starvation
//!   input.rs       read + decode + feed the router, within the read budget
//!   flush.rs       the write side of the router's byte seam (poll_transmit / handle_written)
//!   connection.rs  the I/O half of one connection: socket, encryption, read buffer, decoder
//!   tls.rs         rustls, sans-IO, under the same loop
//!   run.rs         Server::run, Server::spawn and ServerHandle: loops on the embedding API
//!   metrics/       the Prometheus endpoint: HTTP handling (mod.rs), rendering (render.rs)
//! ```
//! Two connection tables, one id: the router's holds each connection's protocol state and
//! outbound queue, the server's (`conns`, indexed by [`ConnId`]'s slot) holds its socket, read
//! buffer and decoder. Bytes arrive here and leave through the router's queue.
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
//! - Read buffers count in the router's memory budget (`max_buffered_bytes`) by capacity; over
//!   it a connection is read only into memory it already holds (`input.rs`). A FIN or RST seen
//!   on a connection that is not read closes it at once (`input.rs`, "Departures while not
//!   read").
//!
//! # Connection limits
//! Beyond [`ServerConfig::max_connections`] open connections, or
//! [`ServerConfig::max_connections_per_ip`] from one non-loopback address, an accepted connection gets one
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
//! naming the file. Connections from either listener are one connection type whose encryption is
//! plain or TLS (`connection.rs`); the router sees the same frames from both. The TLS path.s
//! invariants — rustls holds at most [`TLS_BUFFER_LIMIT`] bytes of records behind the router's
//! queue, records (handshake included) are written at every flush even with nothing queued,
//! nothing blocks — are in `tls.rs`. A TLS peer that never completes its handshake never says
//! HELLO either, so the router's handshake timeout closes it. At a connection limit, a TLS
//! connection is closed without the plain-protocol ERROR frame (it could not read one).
//!
//! # Metrics
//! With [`ServerConfig::metrics_listen`] set, the same loop serves Prometheus' `GET /metrics` on
//! a second listener (see `metrics/`), with `/healthz` and `/readyz`: a few connections with their own small buffers and a
//! deadline, under fixed tokens of the server's range, answered at the end of a turn.

mod accept;
mod cert_validity;
mod connection;
mod flush;
mod input;
mod log_limit;
mod metrics;
mod run;
mod tls;

pub use connection::CloseReason;
pub use run::ServerHandle;
pub use tls::{TlsListenerConfig, BUFFER_LIMIT as TLS_BUFFER_LIMIT};

use hashbrown::HashMap;
use mio::event::Event;
use mio::net::TcpListener;
use mio::{Interest, Registry, Token};
use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::ids::ConnId;
use crate::router::{Output, Router, RouterConfig, RouterStats};
use connection::{Encryption, IoConnection};
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
    /// Per-channel series (`switchyard_channel_peers{channel=…}`) in a scrape: the members of
    /// this many busiest channels. 0 (the default) lists none, so a scrape's size and cost do not
    /// grow with the number of channels, and channel ids are not exposed.
    pub metrics_channel_series: usize,
    /// Broker connections open at once. One more is accepted, sent ERROR LIMIT_EXCEEDED (nil
    /// request id) and closed at once, so the backlog drains and the listener never spins.
    pub max_connections: usize,
    /// Broker connections open at once from one IP address; beyond it, as `max_connections`.
    /// Loopback addresses are exempt (every local client shares them; `max_connections` bounds
    /// them all, and `RouterConfig::max_unauthenticated` bounds handshake-less floods).
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
            metrics_channel_series: 0,
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
    /// `max_connections_per_ip`, or for a graceful shutdown (not counted in `accepted`).
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
            && r.pending_cleanup == 0
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
    /// A graceful shutdown began: the listener is deregistered and the router shuts down.
    shutting_down: bool,
    stats: ServerStats,
    /// The Prometheus endpoint, when `metrics_listen` is set.
    metrics: Option<metrics::MetricsEndpoint>,
    /// `accept` failed for lack of resources and the backlog waits for a retry (`accept.rs`).
    accept_starved: Option<accept::Starvation>,
    /// Sum of the read buffers' capacities, as counted in the memory budget (`input.rs`).
    read_capacity: usize,
    /// Connections not read until the broker is back under its memory budget (`input.rs`).
    budget_blocked: Vec<ConnId>,
    /// The rate limit of the connections' close lines (`log_limit.rs`).
    close_log: log_limit::RateLimit,
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
            read_capacity: 0,
            budget_blocked: Vec::new(),
            close_log: log_limit::RateLimit::default(),
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
        if event.is_read_closed() || event.is_error() {
            let reason = if event.is_error() {
                CloseReason::IoError(io::ErrorKind::ConnectionReset)
            } else {
                CloseReason::PeerClosed
            };
            if let Some(c) = self.conn_mut(id) {
                c.departure.get_or_insert(reason);
            }
            // A connection that is not read (flow control, the memory budget) would never see
            // its EOF by a read: close it now (see `input.rs`, "Departures while not read").
            if self.close_if_departed_unread(id, now) {
                return;
            }
        }
        if event.is_error() && self.conn_mut(id).is_some_and(|c| c.read_closed) {
            // Half-closed (`input.rs`) and now reset: nobody is left to answer.
            return self.close(
                id,
                CloseReason::IoError(io::ErrorKind::ConnectionReset),
                now,
            );
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
        self.unblock_budget();
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

    /// Begins a graceful shutdown (PROTOCOL.md §8.1): answers every new connection ERROR
    /// GOING_AWAY and closes it, and lets the router shut down gracefully (GOING_AWAY to every
    /// connection, those without a handshake included), for at most [`ServerConfig::drain_deadline`] (the setting
    /// keeps its name: it is the graceful shutdown's deadline). Idempotent. The server is done
    /// when [`Server::is_finished`].
    pub fn begin_shutdown(&mut self, now: Instant) {
        if std::mem::replace(&mut self.shutting_down, true) {
            return;
        }
        self.now = self.now.max(now);
        // The listeners stay registered: a connection made during the drain is accepted and
        // answered ERROR GOING_AWAY, then closed (`accept.rs`), instead of waiting unanswered
        // in the backlog until the process exits and resets it.
        log::info!(
            "shutting down: new connections get GOING_AWAY; draining for at most {:?}",
            self.config.drain_deadline
        );
        self.router.begin_shutdown(now, self.config.drain_deadline);
        self.poll_router_outputs();
    }

    /// True once a graceful shutdown has closed every connection.
    pub fn is_finished(&self) -> bool {
        self.shutting_down && self.sockets == 0 && self.router.is_shut_down()
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
        if let Encryption::Tls(tls) = &mut c.encryption {
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
        self.read_capacity -= c.counted_capacity;
        self.router.set_read_buffered(self.read_capacity);
        let who = self.router.describe(id);
        let cause = self.router.close_cause(id);
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
        self.log_close(&who, &c, reason, cause, tls_unfinished, now);
    }

    /// The connection's one info line (STYLE §10): who (address, channel, client), why, how
    /// long it lived; rate-limited (`log_limit.rs`).
    fn log_close(
        &mut self,
        who: &str,
        c: &IoConnection,
        reason: CloseReason,
        cause: Option<crate::protocol::ErrorCode>,
        tls_unfinished: bool,
        now: Instant,
    ) {
        if !log::log_enabled!(log::Level::Info) {
            return;
        }
        let log_limit::Verdict::Write { suppressed } = self.close_log.check(now) else {
            return;
        };
        // The broker's own error (HANDSHAKE_REQUIRED, HEARTBEAT_TIMEOUT...) says more than
        // "ProtocolError"; a TLS failure's text says more than "TlsError".
        let why = match (cause, &c.failure) {
            (Some(code), _) => format!("{code:?}"),
            (None, Some(failure)) => format!("{reason:?}: {failure}"),
            (None, None) => format!("{reason:?}"),
        };
        let lived = c
            .accepted_at
            .map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
        let tls = if c.is_tls() { " tls" } else { "" };
        let unfinished = if tls_unfinished {
            " before completing its TLS handshake"
        } else {
            ""
        };
        log::info!(
            "{who}{tls}: closed ({why}){unfinished} after {lived:.1?}{}",
            log_limit::suppressed_note(suppressed)
        );
    }
}
