//! Accepting connections: admission (the connection limits, a TLS session for the TLS
//! listener, registration), and what the loop does when `accept` fails for lack of resources.
//!
//! # During a graceful shutdown
//! The listeners stay registered while the broker drains: every connection accepted then gets
//! one ERROR GOING_AWAY (nil request id) on the fresh socket and is closed, like a refusal over a
//! limit (PROTOCOL.md §8.1), instead of sitting unanswered in the backlog until the process exits.
//!
//! # Admission
//! Beyond `max_connections` open connections, or `max_connections_per_ip` from one non-loopback
//! address (loopback is exempt: every local client shares it; see [`is_loopback`]), an accepted
//! connection is refused: one ERROR LIMIT_EXCEEDED (nil request id) written straight to
//! the fresh socket (not for TLS: the peer could not read it), FIN, and close. The router never
//! sees a refused connection. An admitted one is registered with the router first (its
//! [`ConnId`](crate::ids::ConnId) names its slot in both connection tables), then with mio.
//! Connections that have not said HELLO have their own budget in the router
//! (`RouterConfig::max_unauthenticated`, oldest evicted first), from any address.
//!
//! # Descriptor (or memory) exhaustion
//! When the process is out of file descriptors (`EMFILE`, `ENFILE`) or kernel memory
//! (`ENOBUFS`, `ENOMEM`), `accept` fails and the connection stays in the kernel's backlog. The
//! listeners (plain and TLS) are edge-triggered, so no new readiness event comes until another
//! connection arrives: a loop that only retried on events would leave the backlog waiting until then, and
//! would fail (and log) once per new arrival. Instead the server enters *accept starvation*:
//! - listener events are ignored while starved (a flood of arrivals costs nothing: the backlog is
//!   retried on the server's own schedule, never per arrival, so nothing spins);
//! - the backlog is retried at the end of any turn in which a broker connection closed (a
//!   descriptor came free), and otherwise on a backoff timer folded into
//!   [`Server::poll_timeout`] — [`FIRST_RETRY`] after the failure, doubling up to
//!   [`MAX_RETRY`] — for descriptors freed elsewhere (a metrics scrape, another thread of an
//!   embedding host);
//! - the episode ends when a retry drains the backlog (`WouldBlock`); connections accepted in
//!   between do not end it, so a broker hovering at its limit is one episode, not a flapping one;
//! - one warning when an episode begins, one info line when it ends (with the number of failed
//!   attempts and the episode's length), debug lines in between: an attack cannot flood the log.
//!   Every failed call is counted in `ServerStats::accept_errors`
//!   (`switchyard_accept_errors_total`), and `ServerStats::accept_starved` says whether an
//!   episode is under way (`switchyard_accept_starved`).
//!
//! On Linux `accept` takes the descriptor before it looks at the backlog, so a broker that has
//! just used its last descriptor gets `EMFILE` from the call that would have said `WouldBlock`:
//! the episode begins at the limit, before anyone waits, and while nothing frees a descriptor
//! it costs one failed call per [`MAX_RETRY`] at most.
//!
//! Any other `accept` error that is not about one pending connection (those — aborted or reset
//! before the accept — are skipped) is handled the same way: retried later, never in a loop.
//!
//! No descriptor is kept in reserve to accept-and-refuse connections while starved (the classic
//! trick): a connection in the backlog is served as soon as a descriptor frees up, which under a
//! short exhaustion is better than a refusal, and a client that cannot wait has its own connect
//! or handshake timeout. The kernel's backlog bounds how many wait; beyond it new connection
//! attempts are not completed by the kernel (the client's SYNs are retried and time out).

use mio::net::TcpStream;
use mio::{Interest, Token};
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::connection::{Encryption, IoConnection};
use super::{tls, Listener, Server, CONN_OFFSET};
use crate::ids::RequestId;
use crate::protocol::{encode_error, ErrorCode, FrameType, Header, MAX_HELLO_PAYLOAD};

/// How one listener's accept loop ended.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Backlog {
    /// `WouldBlock`: nothing more waits.
    Empty,
    /// `accept` failed for lack of resources: the rest waits for a retry.
    Starved,
}

/// Delay before the first timed retry of a starved accept.
pub(crate) const FIRST_RETRY: Duration = Duration::from_millis(100);

/// Longest delay between two timed retries: a descriptor freed outside the broker's own
/// connections is noticed within this.
pub(crate) const MAX_RETRY: Duration = Duration::from_secs(1);

/// An accept-starvation episode (see the module docs).
pub(crate) struct Starvation {
    /// When the episode began.
    since: Instant,
    /// Failed accept calls in this episode, the first included.
    failed: u64,
    /// Connections accepted during the episode (by retries that got some before failing again).
    accepted: u64,
    /// Delay of the next timed retry after a failed one.
    backoff: Duration,
    /// When the next timed retry is due.
    retry_at: Instant,
    /// `ServerStats::closed` at the latest failure: any close since then freed a descriptor.
    closed_seen: u64,
}

impl Server {
    /// A listener is readable: accept everything pending on it, unless starved (then every
    /// backlog waits for the retry schedule; see the module docs).
    pub(super) fn on_listener_ready(&mut self, from: Listener, now: Instant) {
        if self.accept_starved.is_none() {
            self.accept_all(from, now);
        }
    }

    /// When the next timed retry of a starved accept is due, if starved.
    pub(super) fn accept_retry_at(&self) -> Option<Instant> {
        self.accept_starved.as_ref().map(|s| s.retry_at)
    }

    /// End of a turn: retries the backlogs if starved and a connection closed since the latest
    /// failure, or the backoff has passed. The episode ends once every listener's backlog is
    /// drained: descriptors are the process's, so both listeners starve together.
    pub(super) fn retry_starved_accept(&mut self, now: Instant) {
        let Some(starved) = &self.accept_starved else {
            return;
        };
        if self.stats.closed > starved.closed_seen || now >= starved.retry_at {
            let listeners = [Listener::Plain, Listener::Tls];
            for from in listeners {
                if self.accept_all(from, now) == Backlog::Starved {
                    return;
                }
            }
            self.end_starvation(now);
        }
    }

    /// Accepts from one listener until its backlog is drained (`WouldBlock`) or `accept` fails
    /// for lack of resources (which begins or continues an episode).
    fn accept_all(&mut self, from: Listener, now: Instant) -> Backlog {
        loop {
            let accepted = match (from, &self.tls) {
                (Listener::Plain, _) => self.listener.accept(),
                (Listener::Tls, Some(tls)) => tls.listener.accept(),
                (Listener::Tls, None) => return Backlog::Empty,
            };
            match accepted {
                Ok((stream, addr)) => {
                    if let Some(starved) = &mut self.accept_starved {
                        starved.accepted += 1;
                    }
                    self.accept(stream, addr, from, now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Backlog::Empty,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // One pending connection died before it was accepted: skip it.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
                    ) =>
                {
                    continue
                }
                Err(e) => {
                    self.starve(&e, now);
                    return Backlog::Starved;
                }
            }
        }
    }

    /// An accept failed for lack of resources (or an unexpected reason): begin or continue the
    /// episode and schedule the next retry.
    fn starve(&mut self, error: &io::Error, now: Instant) {
        self.stats.accept_errors += 1;
        let closed = self.stats.closed;
        match &mut self.accept_starved {
            Some(starved) => {
                starved.failed += 1;
                starved.closed_seen = closed;
                starved.retry_at = now + starved.backoff;
                starved.backoff = (starved.backoff * 2).min(MAX_RETRY);
                log::debug!("accept failed again: {error}");
            }
            None => {
                log::warn!(
                    "accept failed: {error} ({} connections open); pending connections wait in \
                     the backlog: retrying when a connection closes, or in {FIRST_RETRY:?} \
                     (backing off to {MAX_RETRY:?})",
                    self.sockets
                );
                self.accept_starved = Some(Starvation {
                    since: now,
                    failed: 1,
                    accepted: 0,
                    backoff: (FIRST_RETRY * 2).min(MAX_RETRY),
                    retry_at: now + FIRST_RETRY,
                    closed_seen: closed,
                });
            }
        }
    }

    fn end_starvation(&mut self, now: Instant) {
        if let Some(starved) = self.accept_starved.take() {
            log::info!(
                "accepting again: the backlog is drained after {} failed accept attempts over \
                 {:?} ({} connections accepted meanwhile)",
                starved.failed,
                now.saturating_duration_since(starved.since),
                starved.accepted
            );
        }
    }
}

/// Whether `ip` is a loopback address (IPv4-mapped IPv6 loopback included): exempt from
/// `max_connections_per_ip`.
fn is_loopback(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => v4.is_loopback(),
        std::net::IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Admission.
impl Server {
    fn accept(&mut self, mut stream: TcpStream, addr: SocketAddr, from: Listener, now: Instant) {
        if let Err(e) = stream.set_nodelay(true) {
            log::debug!("{addr}: set_nodelay failed: {e}");
        }
        let ip = addr.ip();
        let from_ip = self.per_ip.get(&ip).copied().unwrap_or(0);
        if self.shutting_down {
            return self.refuse_with(
                ErrorCode::GoingAway,
                stream,
                addr,
                from,
                "the broker is shutting down",
            );
        }
        if self.sockets >= self.config.max_connections {
            let max = self.config.max_connections;
            return self.refuse(
                stream,
                addr,
                from,
                &format!("the broker has {max} connections"),
            );
        }
        // Loopback is exempt: every local client shares its address, so a per-address limit
        // there would be a limit on the whole box (`max_connections` already is one) that one
        // local process could fill. Unauthenticated floods are bounded by the router's own
        // budget, oldest evicted first, wherever they come from.
        if !is_loopback(ip) && from_ip >= self.config.max_connections_per_ip {
            let max = self.config.max_connections_per_ip;
            return self.refuse(
                stream,
                addr,
                from,
                &format!("{max} connections from {ip} are open"),
            );
        }
        let encryption = match (from, &self.tls) {
            (Listener::Plain, _) => Encryption::Plain,
            (Listener::Tls, Some(tls)) => match tls::new_session(&tls.config) {
                Ok(session) => Encryption::Tls(Box::new(session)),
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
            encryption,
            // Until its handshake (see `input.rs`): a HELLO is refused at the header beyond it.
            self.config.router.max_payload.min(MAX_HELLO_PAYLOAD),
        ));
        if let Some(c) = self.conns[slot].as_mut() {
            c.accepted_at = Some(now);
        }
        *self.per_ip.entry(ip).or_default() += 1;
        self.sockets += 1;
        self.stats.accepted += 1;
        // Debug: a connection's one info line is written at its close (`Server::close`).
        match from {
            Listener::Plain => log::debug!("{id}: accepted from {addr}"),
            Listener::Tls => {
                self.stats.tls_accepted += 1;
                log::debug!("{id}: accepted from {addr} (tls)");
            }
        }
    }

    /// Refuses an accepted connection over a connection limit: one ERROR LIMIT_EXCEEDED (nil
    /// request id), best effort, then close. The router never sees it.
    fn refuse(&mut self, stream: TcpStream, addr: SocketAddr, from: Listener, text: &str) {
        self.refuse_with(ErrorCode::LimitExceeded, stream, addr, from, text);
    }

    /// Refuses an accepted connection with one connection-fatal ERROR `code` (nil request id),
    /// best effort, then close: over a limit (LIMIT_EXCEEDED), or during a graceful shutdown
    /// (GOING_AWAY). The router never sees it.
    fn refuse_with(
        &mut self,
        code: ErrorCode,
        mut stream: TcpStream,
        addr: SocketAddr,
        from: Listener,
        text: &str,
    ) {
        use std::io::{Read, Write};
        self.stats.refused += 1;
        // A debug line and a counter, not an info line: a connection flood must not flood the log.
        log::debug!("{addr}: refused: {text}");
        if from == Listener::Tls {
            // A TLS client could not read a plain ERROR frame: it sees the connection closed
            // during its handshake. Dropping the stream closes it.
            return;
        }
        let payload = encode_error(code as u16, text, &[]);
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
}
