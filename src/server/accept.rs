//! Accepting connections, and what the loop does when `accept` fails for lack of resources.
//!
//! # Descriptor (or memory) exhaustion
//! When the process is out of file descriptors (`EMFILE`, `ENFILE`) or kernel memory
//! (`ENOBUFS`, `ENOMEM`), `accept` fails and the connection stays in the kernel's backlog. The
//! listener is edge-triggered, so no new readiness event comes for it until another connection
//! arrives: a loop that only retried on events would leave the backlog waiting until then, and
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

use std::io;
use std::time::{Duration, Instant};

use super::Server;

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
    /// The listener is readable: accept everything pending, unless starved (then the backlog
    /// waits for the retry schedule; see the module docs).
    pub(super) fn on_listener_ready(&mut self, now: Instant) {
        if self.accept_starved.is_none() {
            self.accept_all(now);
        }
    }

    /// When the next timed retry of a starved accept is due, if starved.
    pub(super) fn accept_retry_at(&self) -> Option<Instant> {
        self.accept_starved.as_ref().map(|s| s.retry_at)
    }

    /// End of a turn: retries the backlog if starved and a connection closed since the latest
    /// failure, or the backoff has passed.
    pub(super) fn retry_starved_accept(&mut self, now: Instant) {
        let Some(starved) = &self.accept_starved else {
            return;
        };
        if self.shutting_down {
            // The listener is deregistered: nothing more is accepted.
            self.accept_starved = None;
            return;
        }
        if self.stats.closed > starved.closed_seen || now >= starved.retry_at {
            self.accept_all(now);
        }
    }

    /// Accepts until the backlog is drained (`WouldBlock`) or `accept` fails for lack of
    /// resources.
    pub(super) fn accept_all(&mut self, now: Instant) {
        loop {
            match self.listener.accept() {
                Ok((stream, addr)) => {
                    if let Some(starved) = &mut self.accept_starved {
                        starved.accepted += 1;
                    }
                    self.accept(stream, addr, now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.end_starvation(now);
                    return;
                }
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
                Err(e) => return self.starve(&e, now),
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
