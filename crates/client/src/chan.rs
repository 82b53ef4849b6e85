//! The channel every session route delivers into ([`channel`]): one sender (the session's
//! route), one receiver (the operation), unbounded, and waitable both ways — a blocking
//! [`Receiver::recv_timeout`] for the blocking client's caller threads and a
//! [`Receiver::poll_recv`] for the async client's futures. One type for both fronts is what lets
//! the two clients share the session unchanged.
//!
//! # Invariants
//! - [`Sender::send`] never blocks and never waits for the receiver (the session calls it under
//!   the client's lock, from the link thread or the driver task): it fails, returning the value,
//!   only once the receiver is gone.
//! - Dropping the sender wakes the receiver, blocked or polled: after the queued values it sees
//!   the disconnect (`RecvTimeoutError::Disconnected`, `Poll::Ready(None)`), so removing a route
//!   is how the session tells an operation "no answer will come".
//! - The lock is held only to move one value or one waker, never across a wait.

use std::collections::VecDeque;
use std::fmt;
use std::sync::mpsc::{RecvError, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::Waker;
#[cfg(feature = "tokio")]
use std::task::{Context, Poll};
use std::time::Duration;

use crate::transport;

/// A new channel: see the module docs.
pub(crate) fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let inner = Arc::new(Inner {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            sender_alive: true,
            receiver_alive: true,
            waker: None,
        }),
        ready: Condvar::new(),
    });
    (
        Sender {
            inner: Arc::clone(&inner),
        },
        Receiver { inner },
    )
}

struct Inner<T> {
    state: Mutex<State<T>>,
    /// Wakes a blocked `recv` / `recv_timeout`.
    ready: Condvar,
}

struct State<T> {
    queue: VecDeque<T>,
    sender_alive: bool,
    receiver_alive: bool,
    /// The task that last polled an empty channel.
    waker: Option<Waker>,
}

impl<T> Inner<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Every critical section is a push, a pop or a flag: a panic cannot leave it half done.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes whoever waits, blocked or polled, after the state changed (lock released).
    fn wake(&self, waker: Option<Waker>) {
        self.ready.notify_one();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The sending end (held by a session route).
pub(crate) struct Sender<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Sender<T> {
    /// Queues `value`; `Err(value)` when the receiver is gone.
    pub(crate) fn send(&self, value: T) -> Result<(), T> {
        let waker = {
            let mut state = self.inner.lock();
            if !state.receiver_alive {
                return Err(value);
            }
            state.queue.push_back(value);
            state.waker.take()
        };
        self.inner.wake(waker);
        Ok(())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut state = self.inner.lock();
            state.sender_alive = false;
            state.waker.take()
        };
        self.inner.wake(waker);
    }
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("chan::Sender")
    }
}

/// The receiving end (held by an operation).
pub(crate) struct Receiver<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Receiver<T> {
    /// The next value without waiting.
    pub(crate) fn try_recv(&self) -> Result<T, TryRecvError> {
        let mut state = self.inner.lock();
        match state.queue.pop_front() {
            Some(value) => Ok(value),
            None if state.sender_alive => Err(TryRecvError::Empty),
            None => Err(TryRecvError::Disconnected),
        }
    }

    /// Blocks until a value arrives or the sender is gone.
    pub(crate) fn recv(&self) -> Result<T, RecvError> {
        let mut state = self.inner.lock();
        loop {
            if let Some(value) = state.queue.pop_front() {
                return Ok(value);
            }
            if !state.sender_alive {
                return Err(RecvError);
            }
            state = self
                .inner
                .ready
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Blocks for at most `timeout` (one that overflows an `Instant` is as good as forever).
    pub(crate) fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        let Some(deadline) = transport::now().checked_add(timeout) else {
            return self.recv().map_err(|_| RecvTimeoutError::Disconnected);
        };
        let mut state = self.inner.lock();
        loop {
            if let Some(value) = state.queue.pop_front() {
                return Ok(value);
            }
            if !state.sender_alive {
                return Err(RecvTimeoutError::Disconnected);
            }
            let left = deadline.saturating_duration_since(transport::now());
            if left.is_zero() {
                return Err(RecvTimeoutError::Timeout);
            }
            state = self
                .inner
                .ready
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// The async side: `Ready(Some)` with the next value, `Ready(None)` once the sender is gone
    /// and the queue empty, else `Pending` with the task's waker kept.
    #[cfg(feature = "tokio")]
    pub(crate) fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut state = self.inner.lock();
        if let Some(value) = state.queue.pop_front() {
            return Poll::Ready(Some(value));
        }
        if !state.sender_alive {
            return Poll::Ready(None);
        }
        match &state.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => state.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Waits for the next value; `None` once the sender is gone.
    #[cfg(feature = "tokio")]
    pub(crate) async fn recv_async(&self) -> Option<T> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut state = self.inner.lock();
        state.receiver_alive = false;
        // Values nobody will read: free them now rather than with the last handle.
        state.queue.clear();
    }
}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("chan::Receiver")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_then_disconnect() {
        let (tx, rx) = channel();
        tx.send(1).unwrap();
        tx.send(2).unwrap();
        drop(tx);
        assert_eq!(rx.try_recv(), Ok(1));
        assert_eq!(rx.recv_timeout(Duration::from_millis(1)), Ok(2));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
        assert_eq!(rx.recv(), Err(RecvError));
    }

    #[test]
    fn send_fails_once_the_receiver_is_gone() {
        let (tx, rx) = channel();
        drop(rx);
        assert_eq!(tx.send(7), Err(7));
    }

    #[test]
    fn a_blocked_receiver_wakes_on_send_and_on_drop() {
        let (tx, rx) = channel::<u8>();
        let thread = std::thread::spawn(move || (rx.recv(), rx.recv()));
        tx.send(3).unwrap();
        drop(tx);
        assert_eq!(thread.join().unwrap(), (Ok(3), Err(RecvError)));
    }

    #[test]
    fn an_empty_channel_times_out() {
        let (_tx, rx) = channel::<u8>();
        assert_eq!(
            rx.recv_timeout(Duration::from_millis(5)),
            Err(RecvTimeoutError::Timeout)
        );
    }
}
