//! The Prometheus metrics endpoint: `GET /metrics` in the text exposition format 0.0.4, served
//! on its own listener by the broker's own poll loop (no thread, no lock: the numbers are read
//! from the router and the server between two loop turns).
//!
//! # Contract
//! - The metrics listener and its connections use the fixed token block
//!   `METRICS_LISTENER_OFFSET .. CONN_OFFSET` of the server's range (see `mod.rs`): one token for
//!   the listener, one per scrape slot. At most [`MAX_SCRAPES`] scrapes are open at once. A
//!   connection beyond that evicts the oldest open scrape that is not answered yet (still reading
//!   its request — silent scrapers first — else still writing its answer): 16 silent connections
//!   cannot blind monitoring. Only when every slot awaits this turn's rendering is the newcomer
//!   closed at once, without an answer.
//! - Requests are parsed with `httparse`. The request head may be at most [`MAX_REQUEST`] bytes
//!   (431 beyond) and must arrive within [`REQUEST_TIMEOUT`] of the accept (or the scrape
//!   deadline, if shorter). `GET` or `HEAD` of `/metrics` (any query string) gets 200 (HEAD: the
//!   head only, without `Content-Length`: nothing is rendered), `/healthz` 200 while the loop runs
//!   (it is the loop that answers), `/readyz` 200 while the broker listens and 503 once it is
//!   shutting down (draining); another path 404, another method 405, unparsable bytes 400.
//!   Every answer says `Connection: close`: after it is written the
//!   server shuts its write side, discards what the scraper sent beyond its request head (so the
//!   close does not turn into a reset that could destroy the answer in flight) and closes.
//! - A scrape never costs the broker more than its own buffers: sockets are non-blocking and
//!   edge-triggered, a scrape owns an 8 KiB request buffer and its answer, and every scrape has a
//!   deadline ([`ServerConfig::metrics_timeout`](super::ServerConfig::metrics_timeout), from
//!   its accept) after which it is closed wherever it is, silent or slow to read. The deadline is
//!   driven by the server's clock: it is part of [`Server::poll_timeout`] and enforced in
//!   [`Server::handle_timeout`], like the router's timers. (A byte or turn bound alone would not
//!   do: a scraper that sends nothing produces no event to count.)
//! - The body is rendered once per loop turn, at the end of the turn, for every scrape whose
//!   request completed in it: all of them see the same consistent snapshot. Its size does not
//!   depend on the number of channels: per-channel series are off by default and, when on
//!   ([`ServerConfig::metrics_channel_series`](super::ServerConfig::metrics_channel_series)),
//!   bounded to that many busiest channels (choosing them is one pass over the channels).
//!
//! The HTTP side (listener, scrapes, deadlines, answers) is this file; what the body says is
//! `render.rs`, a pure function of a snapshot of the broker's counts.
//!
//! A misbehaving scraper gets a debug line and is counted in
//! `switchyard_metrics_scrapes_total{outcome=...}`; successful scrapes are logged at trace (a
//! scrape every few seconds would drown the per-connection info lines).

use bytes::Bytes;
use mio::event::Event;
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use super::{Server, METRICS_CONN_OFFSET, METRICS_LISTENER_OFFSET};

mod answer;
mod render;

use answer::{head_only, response, Asked, CONTENT_TYPE};
use render::render;

/// Simultaneous metrics connections. One Prometheus server scrapes over one connection at a
/// time; 16 leaves room for several scrapers and a curl without letting idle sockets pile up.
pub(crate) const MAX_SCRAPES: usize = 16;

/// Largest request head accepted, bytes: a scrape's request line and headers are a few hundred
/// bytes; 8 KiB is the common server default (nginx, Go's net/http allow more, but need not).
pub(crate) const MAX_REQUEST: usize = 8 * 1024;

/// Headers parsed per request; Prometheus sends about six.
const MAX_HEADERS: usize = 32;

/// Bytes discarded after the answer before closing (a request body, pipelined requests). Past
/// it the socket is closed anyway: the scraper sent what it was not asked for.
const MAX_DISCARD: usize = 64 * 1024;

/// How long a scraper has, from its accept, to send its whole request head: Prometheus sends
/// it at once; a connection silent this long is idle and closed (`TimedOut`).
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// How one scrape ended, for `switchyard_metrics_scrapes_total{outcome=...}`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Outcome {
    /// 200 with the metrics.
    Ok,
    /// 503 from `/readyz`: the broker is shutting down.
    NotReady,
    /// 404: another path.
    NotFound,
    /// 405: another method.
    MethodNotAllowed,
    /// 400: bytes that are not an HTTP/1.x request head.
    BadRequest,
    /// 431: the request head did not fit in [`MAX_REQUEST`] bytes (or had too many headers).
    TooLarge,
    /// Closed at its deadline, before its answer was written.
    TimedOut,
    /// Closed at once: [`MAX_SCRAPES`] were already open, none of them evictable.
    Refused,
    /// Closed unanswered to make room for a newer scrape ([`MAX_SCRAPES`] were open).
    Evicted,
    /// The scraper closed (or its socket failed) before its answer was written.
    Aborted,
}

impl Outcome {
    const ALL: [Outcome; 10] = [
        Outcome::Ok,
        Outcome::NotReady,
        Outcome::NotFound,
        Outcome::MethodNotAllowed,
        Outcome::BadRequest,
        Outcome::TooLarge,
        Outcome::TimedOut,
        Outcome::Refused,
        Outcome::Evicted,
        Outcome::Aborted,
    ];

    fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::NotReady => "not_ready",
            Outcome::NotFound => "not_found",
            Outcome::MethodNotAllowed => "method_not_allowed",
            Outcome::BadRequest => "bad_request",
            Outcome::TooLarge => "too_large",
            Outcome::TimedOut => "timed_out",
            Outcome::Refused => "refused",
            Outcome::Evicted => "evicted",
            Outcome::Aborted => "aborted",
        }
    }
}

/// One metrics connection. `Reading → (AwaitingRender →) Writing → closed`; any state may be
/// closed by the deadline or a socket error.
struct Scrape {
    stream: TcpStream,
    peer: Option<SocketAddr>,
    /// When it was accepted: the order of eviction, and the origin of its deadlines.
    accepted: Instant,
    /// The scrape deadline's length ([`MetricsEndpoint::timeout`]).
    timeout: Duration,
    deadline: Instant,
    state: ScrapeState,
    /// What the answer says, counted when it has been written.
    outcome: Outcome,
}

enum ScrapeState {
    /// Waiting for a complete request head: the buffer (`MAX_REQUEST` bytes) and its fill.
    Reading { buf: Box<[u8]>, filled: usize },
    /// A request for `asked` arrived (`head`: HEAD, no body): answered at the end of the turn.
    AwaitingRender { asked: Asked, head: bool },
    /// Writing the answer.
    Writing { answer: Bytes, written: usize },
}

/// What a step of a scrape asks of the endpoint.
enum Step {
    /// Wait for the next event.
    Wait,
    /// Close now and count this outcome.
    Close(Outcome),
}

/// The listener and the open scrapes. Owned by [`Server`] when `metrics_listen` is set.
pub(crate) struct MetricsEndpoint {
    listener: TcpListener,
    local_addr: SocketAddr,
    timeout: Duration,
    /// Scrape slots; slot `i` uses token `token_base + METRICS_CONN_OFFSET + i`.
    scrapes: [Option<Scrape>; MAX_SCRAPES],
    open: usize,
    /// Scrapes ended, by [`Outcome`] (index in `Outcome::ALL`).
    outcomes: [u64; Outcome::ALL.len()],
}

impl MetricsEndpoint {
    /// Binds the listener (registered later, with the server's).
    pub(crate) fn bind(addr: SocketAddr, timeout: Duration) -> io::Result<MetricsEndpoint> {
        let listener = TcpListener::bind(addr)
            .map_err(|e| io::Error::new(e.kind(), format!("metrics listener {addr}: {e}")))?;
        let local_addr = listener.local_addr()?;
        Ok(MetricsEndpoint {
            listener,
            local_addr,
            timeout,
            scrapes: std::array::from_fn(|_| None),
            open: 0,
            outcomes: [0; Outcome::ALL.len()],
        })
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Open metrics connections.
    pub(crate) fn open(&self) -> usize {
        self.open
    }

    pub(crate) fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        registry.register(&mut self.listener, token, Interest::READABLE)
    }

    fn wants_render(&self) -> bool {
        self.scrapes
            .iter()
            .flatten()
            .any(|s| matches!(s.state, ScrapeState::AwaitingRender { .. }))
    }

    /// True when a scrape awaits the exposition itself (GET /metrics): only then is it rendered.
    fn wants_exposition(&self) -> bool {
        self.scrapes.iter().flatten().any(|s| {
            matches!(
                s.state,
                ScrapeState::AwaitingRender {
                    asked: Asked::Metrics,
                    head: false
                }
            )
        })
    }

    /// The slot of the scrape to evict for a newcomer: the oldest still reading its request,
    /// else the oldest still writing its answer; never one awaiting this turn's answer.
    fn evictable(&self) -> Option<usize> {
        let oldest = |reading: bool| {
            self.scrapes
                .iter()
                .enumerate()
                .filter_map(|(slot, s)| s.as_ref().map(|s| (slot, s)))
                .filter(|(_, s)| match s.state {
                    ScrapeState::Reading { .. } => reading,
                    ScrapeState::Writing { .. } => !reading,
                    ScrapeState::AwaitingRender { .. } => false,
                })
                .min_by_key(|(_, s)| s.accepted)
                .map(|(slot, _)| slot)
        };
        oldest(true).or_else(|| oldest(false))
    }

    /// The earliest scrape deadline.
    fn next_deadline(&self) -> Option<Instant> {
        self.scrapes.iter().flatten().map(|s| s.deadline).min()
    }

    fn count(&mut self, outcome: Outcome) {
        if let Some(i) = Outcome::ALL.iter().position(|o| *o == outcome) {
            self.outcomes[i] += 1;
        }
    }

    fn accept_all(&mut self, registry: &Registry, token_base: usize, now: Instant) {
        loop {
            let (mut stream, addr) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(e) => {
                    // Out of descriptors or memory: leave the rest in the backlog; the next
                    // scrape's arrival retries (scrapers come back on their interval). Debug, not
                    // warn: a scrape per failure must not flood the log, and the broker's own
                    // listener already warns once per starvation episode (`accept.rs`).
                    log::debug!("metrics: accept failed: {e}");
                    return;
                }
            };
            let free = self.scrapes.iter().position(Option::is_none);
            let Some(slot) = free.or_else(|| {
                let slot = self.evictable()?;
                log::debug!("metrics: {addr} evicts the oldest unanswered scrape");
                self.close(registry, slot, Outcome::Evicted);
                Some(slot)
            }) else {
                // Dropping the stream closes it: the scraper sees EOF without an answer.
                log::debug!("metrics: {addr} refused: {MAX_SCRAPES} scrapes await their answer");
                self.count(Outcome::Refused);
                continue;
            };
            let token = Token(token_base + METRICS_CONN_OFFSET + slot);
            if let Err(e) =
                registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
            {
                log::warn!("metrics: {addr}: register failed: {e}");
                continue;
            }
            self.scrapes[slot] = Some(Scrape {
                stream,
                peer: Some(addr),
                accepted: now,
                timeout: self.timeout,
                deadline: now + self.timeout.min(REQUEST_TIMEOUT),
                state: ScrapeState::Reading {
                    buf: vec![0; MAX_REQUEST].into_boxed_slice(),
                    filled: 0,
                },
                outcome: Outcome::Ok,
            });
            self.open += 1;
            log::trace!("metrics: scrape from {addr}");
        }
    }

    fn handle_scrape_event(&mut self, registry: &Registry, slot: usize, event: &Event) {
        let Some(scrape) = self.scrapes.get_mut(slot).and_then(Option::as_mut) else {
            // A stale event for a scrape closed earlier in this batch.
            return;
        };
        let step = match scrape.state {
            ScrapeState::Reading { .. }
                if event.is_readable() || event.is_read_closed() || event.is_error() =>
            {
                scrape.read_request()
            }
            ScrapeState::Writing { .. } if event.is_writable() || event.is_error() => {
                scrape.write_answer()
            }
            // Readiness that the current state does not wait on: nothing to do until the state
            // changes (the socket is edge-triggered, and each state tries its I/O on entry).
            ScrapeState::Reading { .. }
            | ScrapeState::AwaitingRender { .. }
            | ScrapeState::Writing { .. } => Step::Wait,
        };
        if let Step::Close(outcome) = step {
            self.close(registry, slot, outcome);
        }
    }

    /// Answers every scrape awaiting its answer: `body` is the exposition (rendered when a GET
    /// of `/metrics` waits), `ready` what `/readyz` says.
    fn answer_awaiting(&mut self, registry: &Registry, body: Option<&str>, ready: bool) {
        let exposition = body.map(|body| response("200 OK", CONTENT_TYPE, &[], body));
        for slot in 0..MAX_SCRAPES {
            let Some(scrape) = self.scrapes[slot].as_mut() else {
                continue;
            };
            let ScrapeState::AwaitingRender { asked, head } = scrape.state else {
                continue;
            };
            let (status, text) = match asked {
                Asked::Metrics => ("200 OK", ""),
                Asked::Health => ("200 OK", "ok\n"),
                Asked::Ready if ready => ("200 OK", "ready\n"),
                Asked::Ready => ("503 Service Unavailable", "shutting down\n"),
            };
            let answer = match (asked, head, &exposition) {
                (Asked::Metrics, false, Some(answer)) => answer.clone(),
                // HEAD /metrics: the head only; its length would need a rendering.
                (Asked::Metrics, _, _) => head_only(status, CONTENT_TYPE, None),
                (_, true, _) => head_only(status, "text/plain", Some(text.len())),
                (_, false, _) => response(status, "text/plain", &[], text),
            };
            if status != "200 OK" {
                scrape.outcome = Outcome::NotReady;
            }
            scrape.state = ScrapeState::Writing { answer, written: 0 };
            if let Step::Close(outcome) = scrape.write_answer() {
                self.close(registry, slot, outcome);
            }
        }
    }

    /// Closes every scrape whose deadline has passed.
    fn expire(&mut self, registry: &Registry, now: Instant) {
        for slot in 0..MAX_SCRAPES {
            if self.scrapes[slot]
                .as_ref()
                .is_some_and(|s| s.deadline <= now)
            {
                self.close(registry, slot, Outcome::TimedOut);
            }
        }
    }

    fn close(&mut self, registry: &Registry, slot: usize, outcome: Outcome) {
        let Some(mut scrape) = self.scrapes.get_mut(slot).and_then(Option::take) else {
            return;
        };
        let _ = registry.deregister(&mut scrape.stream);
        self.open -= 1;
        self.count(outcome);
        let peer = scrape.peer.map_or_else(String::new, |a| a.to_string());
        match outcome {
            Outcome::Ok => log::trace!("metrics: scrape from {peer} answered"),
            _ => log::debug!("metrics: scrape from {peer} closed: {}", outcome.label()),
        }
    }
}

impl Scrape {
    /// Reads until the request head is complete, the buffer is full, or `WouldBlock`; then
    /// parses and, when it is complete, moves on to the answer.
    fn read_request(&mut self) -> Step {
        let ScrapeState::Reading { buf, filled } = &mut self.state else {
            return Step::Wait;
        };
        let mut eof = false;
        while *filled < buf.len() {
            match self.stream.read(&mut buf[*filled..]) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => *filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => return Step::Close(Outcome::Aborted),
            }
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        let (status, reason, extra, body): (_, _, &[(&str, &str)], _) =
            match request.parse(&buf[..*filled]) {
                Ok(httparse::Status::Complete(_)) => {
                    let path = request.path.unwrap_or("");
                    let path = path.split_once('?').map_or(path, |(path, _query)| path);
                    let head = request.method == Some("HEAD");
                    if request.method != Some("GET") && !head {
                        (
                            Outcome::MethodNotAllowed,
                            "405 Method Not Allowed",
                            &[("Allow", "GET, HEAD")],
                            "only GET and HEAD are served\n",
                        )
                    } else if let Some(asked) = Asked::from_path(path) {
                        // Answered at the end of the turn, within the scrape's whole deadline.
                        self.deadline = self.accepted + self.timeout;
                        self.state = ScrapeState::AwaitingRender { asked, head };
                        return Step::Wait;
                    } else {
                        (
                            Outcome::NotFound,
                            "404 Not Found",
                            &[],
                            "not found: try /metrics, /healthz or /readyz\n",
                        )
                    }
                }
                Ok(httparse::Status::Partial) if *filled == buf.len() => (
                    Outcome::TooLarge,
                    "431 Request Header Fields Too Large",
                    &[],
                    "request head too large\n",
                ),
                Ok(httparse::Status::Partial) if eof => return Step::Close(Outcome::Aborted),
                Ok(httparse::Status::Partial) => return Step::Wait,
                Err(httparse::Error::TooManyHeaders) => (
                    Outcome::TooLarge,
                    "431 Request Header Fields Too Large",
                    &[],
                    "too many headers\n",
                ),
                Err(_) => (
                    Outcome::BadRequest,
                    "400 Bad Request",
                    &[],
                    "not an HTTP/1.x request\n",
                ),
            };
        self.outcome = status;
        self.state = ScrapeState::Writing {
            answer: response(reason, "text/plain", extra, body),
            written: 0,
        };
        self.write_answer()
    }

    /// Writes the rest of the answer; once it is all written, shuts the write side, discards
    /// what the scraper sent beyond its request head, and asks to be closed.
    fn write_answer(&mut self) -> Step {
        let ScrapeState::Writing { answer, written } = &mut self.state else {
            return Step::Wait;
        };
        while *written < answer.len() {
            match self.stream.write(&answer[*written..]) {
                Ok(0) => return Step::Close(Outcome::Aborted),
                Ok(n) => *written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Wait,
                Err(_) => return Step::Close(Outcome::Aborted),
            }
        }
        // The answer is in the kernel's hands. Closing with unread input would send a reset,
        // which may make the scraper's kernel drop the answer before it is read: read it first.
        let _ = self.stream.shutdown(Shutdown::Write);
        let mut sink = [0u8; 1024];
        let mut discarded = 0;
        while discarded < MAX_DISCARD {
            match self.stream.read(&mut sink) {
                Ok(0) => break,
                Ok(n) => discarded += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        Step::Close(self.outcome)
    }
}

/// The server's side of the endpoint: event dispatch, the deadline, and the snapshot.
impl Server {
    /// Handles an event for a token in the metrics block (`offset` from the token base).
    pub(super) fn handle_metrics_event(&mut self, offset: usize, event: &Event, now: Instant) {
        let (Some(metrics), Some(registry)) = (self.metrics.as_mut(), self.registry.as_ref())
        else {
            return;
        };
        if offset == METRICS_LISTENER_OFFSET {
            metrics.accept_all(registry, self.token_base, now);
        } else if let Some(slot) = offset.checked_sub(METRICS_CONN_OFFSET) {
            metrics.handle_scrape_event(registry, slot, event);
        }
    }

    /// When the endpoint next needs [`Server::handle_timeout`]: now if a scrape awaits its
    /// answer, else the earliest scrape deadline (a request head's, or a whole scrape's).
    pub(super) fn metrics_timeout(&self) -> Option<Instant> {
        let metrics = self.metrics.as_ref()?;
        if metrics.wants_render() {
            return Some(self.now);
        }
        metrics.next_deadline()
    }

    /// End of the turn: answers the scrapes whose request completed in it with one rendering,
    /// and closes those past their deadline.
    pub(super) fn serve_metrics(&mut self, now: Instant) {
        let Some(metrics) = self.metrics.as_ref() else {
            return;
        };
        let body = metrics.wants_exposition().then(|| self.render_metrics());
        // Ready: listening, not shutting down (PROTOCOL.md §8.1's drain).
        let ready = !self.shutting_down;
        let (Some(metrics), Some(registry)) = (self.metrics.as_mut(), self.registry.as_ref())
        else {
            return;
        };
        if metrics.wants_render() {
            metrics.answer_awaiting(registry, body.as_deref(), ready);
        }
        metrics.expire(registry, now);
    }

    /// The exposition text of the broker's current state.
    fn render_metrics(&self) -> String {
        // Off by default: no pass over the channels at all.
        let channels = match self.config.metrics_channel_series {
            0 => Vec::new(),
            n => self.router.busiest_channels(n),
        };
        let outcomes = self
            .metrics
            .as_ref()
            .map_or([0; Outcome::ALL.len()], |m| m.outcomes);
        render(
            &self.stats(),
            &self.router.errors_sent(),
            &channels,
            &outcomes,
        )
    }
}
