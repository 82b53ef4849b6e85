//! What the client handle, the link thread and every live [`Response`](crate::Response) /
//! [`IncomingRequest`](crate::IncomingRequest) share ([`Shared`]): the sans-IO session and the
//! current link under one mutex, the condvars callers wait on, and the operations on them
//! (register, send, close, wait).
//!
//! # Invariants
//! - The mutex is never held across blocking I/O: frames are written after it is released.
//! - Closing drops every route and notifies every condvar, so every blocked caller returns.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use log::{debug, info};
use switchyard_proto::Frame;

use crate::link::Link;
use crate::session::{Ids, Session, Wakeups};
use crate::transport::{self, Flow};
use crate::{ClientOptions, Error, Limits};

/// What the client's mutex guards: the sans-IO session and the connection it runs over.
#[derive(Debug)]
pub(crate) struct Locked {
    pub(crate) session: Session,
    /// The current connection. INVARIANT: `Some` exactly while the session is connected; it is
    /// only replaced under this lock, together with the session's link state, so an operation
    /// that registers and takes the link in one critical section gets a matching pair.
    pub(crate) link: Option<Arc<Link>>,
    /// The limits of the last WELCOME (reported by [`Client::limits`] while reconnecting).
    pub(crate) limits: Limits,
    /// A clone of the stream of a reconnect handshake under way, so that closing cuts it short.
    pub(crate) dialing: Option<TcpStream>,
}

/// State shared by the client handle, the link thread, and every [`Response`] /
/// [`IncomingRequest`] still alive.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The client id (stable across reconnects: the one the first WELCOME gave) and channel.
    pub(crate) ids: Ids,
    /// The resume secret of the first WELCOME, presented by every reconnect (the broker keeps
    /// a client's secret for life: the one it gave, or the one a reconnect presents when the id
    /// had expired meanwhile).
    pub(crate) resume: switchyard_proto::RequestId,
    pub(crate) grace: Duration,
    /// Where to reconnect (resolved once, at connect).
    pub(crate) addrs: Vec<SocketAddr>,
    pub(crate) options: ClientOptions,
    pub(crate) locked: Mutex<Locked>,
    pub(crate) requests_ready: Condvar,
    pub(crate) broadcasts_ready: Condvar,
    pub(crate) presence_ready: Condvar,
    pub(crate) states_ready: Condvar,
    /// Wakes the link thread out of a reconnect backoff when the client closes.
    pub(crate) backoff: Condvar,
    /// Serialises "record the receive window, then send it" between the application and the
    /// link thread's re-issue, so the broker always ends up with the window set last.
    pub(crate) window_order: Mutex<()>,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Locked> {
        // The session's methods keep it consistent at every return; a panicking caller cannot
        // leave it half-updated, so poisoning carries no information here.
        self.locked.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Why an operation's route vanished without an answer: the close reason once closed, else
    /// the link dropped under it ([`Error::ConnectionLost`]).
    pub(crate) fn lost_error(&self) -> Error {
        self.lock()
            .session
            .close_reason()
            .unwrap_or(Error::ConnectionLost)
    }

    pub(crate) fn check_open(&self) -> Result<(), Error> {
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

    /// Closes the client for good with `reason` (the first reason wins) and wakes everyone,
    /// the link thread included.
    pub(crate) fn close(&self, reason: Error) {
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
    pub(crate) fn send(&self, link: &Link, frame: &Frame) -> Result<(), Error> {
        link.transport
            .send(frame)
            .map_err(|e| self.link_failed(link, e))
    }

    /// A write on `link` failed with `error`. Without reconnection the client closes, as it
    /// always did; with it, only that connection ends (the link thread then reconnects) and the
    /// operation fails with [`Error::ConnectionLost`].
    pub(crate) fn link_failed(&self, link: &Link, error: io::Error) -> Error {
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
    pub(crate) fn send_quietly(&self, link: &Link, frame: &Frame) {
        if link.transport.is_closed() {
            return;
        }
        if let Err(e) = self.send(link, frame) {
            debug!("{:?} not sent: {e}", frame.header.frame_type);
        }
    }

    /// The link thread's callback for every frame read on `link`.
    pub(crate) fn handle_frame(&self, link: &Link, frame: Frame) -> Flow {
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

    pub(crate) fn notify(&self, wakeups: Wakeups) {
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
    pub(crate) fn wait_queue<T>(
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

    /// One wait on `ready` until `deadline` (`None`: forever). `Err(WaitElapsed)` once it passed.
    pub(crate) fn wait<'a>(
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
                    return Err(Error::WaitElapsed);
                }
                Ok(ready
                    .wait_timeout(locked, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0)
            }
        }
    }
}
