//! [`AsyncClient`]: the async front of the client, on tokio (feature `tokio`).
//!
//! # Design
//! The async client runs the *same* sans-IO [`Session`] as the blocking [`Client`](crate::Client):
//! frames are routed by the same code, to the same kind of per-operation queue (`chan.rs`), which
//! both fronts can wait on. Only the I/O around it differs:
//! - **One driver task per client** (`driver.rs`, spawned on the runtime that ran
//!   [`AsyncClient::connect`]) owns the connection: it reads and decodes frames and feeds them to
//!   the session, writes every outgoing frame, pings a silent broker, and reconnects. Reading
//!   and writing are two futures polled by that one task, so a long write never stops the
//!   reading (the broker may be waiting for us to read before it reads more of our write).
//! - **Operations** lock the session only to register or to pop (never across an `.await`),
//!   and hand their frames to the driver through the link's unbounded channel ([`Link`]), so a
//!   frame can be queued from anywhere, `Drop` included. Body frames also take one credit of a
//!   semaphore that the writer gives back once the frame is written: a large body is streamed
//!   with at most [`BODY_CREDITS`] frames queued, not read into memory at once.
//! - **Waiting** for an application queue (`next_request`, `next_broadcast`, `next_presence`,
//!   state changes) is a [`Notify`] per queue, armed before the queue is checked, so a wakeup
//!   between the check and the wait is never lost.
//!
//! # Cancellation
//! Every future is cancel-safe in the sense of the protocol: dropping a request future, an
//! [`AsyncResponse`] or an [`AsyncIncomingRequest`] before its stream ended sends the CANCEL of
//! its direction (queued by `Drop`; the driver writes it after any frame of the stream already
//! queued, so the broker never sees a CANCEL overtake its START). A `next_*` future that is
//! dropped takes nothing off its queue: an item is popped and handed out with no `.await` in
//! between.
//!
//! # Invariants
//! - The session lock is a `std::sync::Mutex` held for in-memory work only: never across an
//!   `.await`, never while writing to the socket.
//! - An operation keeps the [`Link`] it was registered on and writes only there: no frame of an
//!   operation started on one connection goes out on the next (at-most-once).
//! - Closing (by [`AsyncClient::close`], by dropping the last clone, by a fatal error) drops
//!   every route, wakes every waiter and stops the driver task.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use log::info;
use switchyard_proto::Frame;
use tokio::sync::{mpsc, watch, Notify, Semaphore};

use crate::session::{Ids, Session, Wakeups};
use crate::{Error, Limits, RequestId};

mod body;
mod broadcast;
mod client;
mod driver;
mod request;
mod wire;

pub use body::{AsyncIncomingRequest, AsyncResponse};
pub use client::AsyncClient;

/// Body frames one connection may have queued for writing (see the module docs): enough to keep
/// the socket busy while the application produces the next chunk, few enough that a body is
/// never buffered whole (at most this many frames of the broker's max payload each).
pub(crate) const BODY_CREDITS: usize = 8;

/// What the driver's writer takes from the link's channel.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// A frame to write; `credited` frames return their body credit once written.
    Frame { frame: Frame, credited: bool },
    /// Reading made the TLS session want to write (an alert, a key update): write its records.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    TlsRecords,
}

/// One connection's way out: its writer's channel, the body credits, the WELCOME's limits.
#[derive(Debug)]
pub(crate) struct Link {
    out: mpsc::UnboundedSender<Outbound>,
    credits: Arc<Semaphore>,
    pub(crate) limits: Limits,
}

impl Link {
    pub(crate) fn new(limits: Limits) -> (Link, mpsc::UnboundedReceiver<Outbound>, Arc<Semaphore>) {
        let (out, outbound) = mpsc::unbounded_channel();
        let credits = Arc::new(Semaphore::new(BODY_CREDITS));
        let link = Link {
            out,
            credits: Arc::clone(&credits),
            limits,
        };
        (link, outbound, credits)
    }

    /// Queues a frame without waiting (control frames, CANCELs from `Drop`). `false` once the
    /// connection has ended.
    pub(crate) fn queue(&self, frame: Frame) -> bool {
        self.out
            .send(Outbound::Frame {
                frame,
                credited: false,
            })
            .is_ok()
    }

    /// Queues a body frame once a credit is free. `false` once the connection has ended.
    pub(crate) async fn queue_body(&self, frame: Frame) -> bool {
        match self.credits.acquire().await {
            // The writer gives the credit back (add_permits) once the frame is written.
            Ok(permit) => permit.forget(),
            Err(_) => return false, // Closed with the connection.
        }
        self.out
            .send(Outbound::Frame {
                frame,
                credited: true,
            })
            .is_ok()
    }

    /// Queues a TLS records flush (see [`Outbound::TlsRecords`]).
    #[cfg(feature = "tls")]
    pub(crate) fn queue_tls_records(&self) {
        // The writer is gone only when the connection ended: nothing left to flush then.
        let _ = self.out.send(Outbound::TlsRecords);
    }

    /// Bytes per body frame: the broker's limit, within the decoder ceiling every broker honours.
    pub(crate) fn chunk_size(&self) -> usize {
        let max = self
            .limits
            .max_payload
            .clamp(1, switchyard_proto::MAX_PAYLOAD_CEILING);
        usize::try_from(max).unwrap_or(usize::MAX)
    }

    /// How long to wait locally for an operation with `timeout` (`None`: the broker's
    /// default): the timeout the broker applies, plus `grace`.
    pub(crate) fn local_timeout(&self, timeout: Option<Duration>, grace: Duration) -> Duration {
        self.limits.effective_timeout(timeout).saturating_add(grace)
    }
}

/// What the session lock guards.
#[derive(Debug)]
pub(crate) struct Locked {
    pub(crate) session: Session,
    /// INVARIANT: `Some` exactly while the session is connected; replaced only under this lock,
    /// together with the session's link state.
    pub(crate) link: Option<Arc<Link>>,
    /// The limits of the last WELCOME.
    pub(crate) limits: Limits,
}

/// What the handles, the driver task and every live body share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) ids: Ids,
    /// The resume secret of the first WELCOME, presented by every reconnect (PROTOCOL.md §5.2).
    pub(crate) resume: RequestId,
    pub(crate) options: crate::ClientOptions,
    /// Where to reconnect (resolved once, at connect).
    pub(crate) addrs: Vec<SocketAddr>,
    pub(crate) locked: Mutex<Locked>,
    pub(crate) requests_ready: Notify,
    pub(crate) broadcasts_ready: Notify,
    pub(crate) presence_ready: Notify,
    pub(crate) states_ready: Notify,
    /// Set once the client closes; the driver task watches it.
    pub(crate) closing: watch::Sender<bool>,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Locked> {
        // The session keeps itself consistent at every return; poisoning carries nothing.
        self.locked.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Why a route vanished without an answer: the close reason once closed, else the link
    /// dropped under it.
    pub(crate) fn lost_error(&self) -> Error {
        self.lock()
            .session
            .close_reason()
            .unwrap_or(Error::ConnectionLost)
    }

    /// Registers an operation and returns it with the link it must be sent on.
    ///
    /// # Errors
    /// The close reason when closed, [`Error::Reconnecting`] between connections, or the
    /// registration's own error.
    pub(crate) fn register<T>(
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

    /// Queues `frame` on `link`; [`Shared::lost_error`] once that connection has ended.
    pub(crate) fn send(&self, link: &Link, frame: Frame) -> Result<(), Error> {
        if link.queue(frame) {
            Ok(())
        } else {
            Err(self.lost_error())
        }
    }

    /// Closes the client for good (the first reason wins), wakes every waiter and stops the
    /// driver task.
    pub(crate) fn close(&self, reason: Error) {
        let message = reason.to_string();
        let (first, wakeups) = {
            let mut locked = self.lock();
            let first = locked.session.close(reason);
            locked.link = None;
            (first, locked.session.take_wakeups())
        };
        if first {
            info!(
                "async client {} on channel {} closed: {message}",
                self.ids.client, self.ids.channel
            );
        }
        self.notify(wakeups);
        self.closing.send_replace(true);
    }

    pub(crate) fn notify(&self, wakeups: Wakeups) {
        // `notify_waiters`: every waiter re-checks its queue (each pops at most one item), and
        // a closed client must wake them all.
        if wakeups.requests {
            self.requests_ready.notify_waiters();
        }
        if wakeups.broadcasts {
            self.broadcasts_ready.notify_waiters();
        }
        if wakeups.presence {
            self.presence_ready.notify_waiters();
        }
        if wakeups.states {
            self.states_ready.notify_waiters();
        }
    }

    /// Waits on one application queue (`None`: no bound). The wait goes on across a reconnect;
    /// only the close ends it. Cancel-safe: `pop` runs only under the lock and its item is
    /// returned at once.
    pub(crate) async fn wait_queue<T>(
        &self,
        ready: &Notify,
        timeout: Option<Duration>,
        mut pop: impl FnMut(&mut Locked) -> Option<T>,
    ) -> Result<T, Error> {
        let wait = async {
            loop {
                let notified = ready.notified();
                tokio::pin!(notified);
                // Registered before the check: a notify_waiters between the check and the
                // await still wakes this waiter.
                notified.as_mut().enable();
                {
                    let mut locked = self.lock();
                    if let Some(reason) = locked.session.close_reason() {
                        return Err(reason);
                    }
                    if let Some(item) = pop(&mut locked) {
                        return Ok(item);
                    }
                }
                notified.await;
            }
        };
        with_timeout(timeout, Error::WaitElapsed, wait).await
    }
}

/// Runs `future` for at most `timeout` (`None`: no bound); `elapsed` when it ran out.
pub(crate) async fn with_timeout<T>(
    timeout: Option<Duration>,
    elapsed: Error,
    future: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    match timeout {
        None => future.await,
        Some(timeout) => tokio::time::timeout(timeout, future)
            .await
            .unwrap_or(Err(elapsed)),
    }
}
