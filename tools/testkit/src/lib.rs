//! # switchyard-testkit
//!
//! The one test kit of the workspace: used by the integration tests in `tests/`, the soak run,
//! the fuzz replays and the benches. Not published.
//!
//! - [`broker`]: a broker in a thread on `127.0.0.1:0` with the default test configuration;
//! - [`process`]: the real broker binary in a child process, killed by PID;
//! - [`raw`]: a raw frame-level peer over a blocking socket ([`raw::RawPeer`]);
//! - [`bystanders`]: a sender/receiver pair that proves a misbehaving client harmed no one;
//! - [`client`]: client-library helpers: connect, receive windows, a responder thread;
//! - [`scripted`]: a scripted broker, for testing the client library frame by frame;
//! - [`gauges`]: the broker's state counts: waits on them, the idle (leak) check, the peak of
//!   buffered bytes, and the same counts read from a `/metrics` scrape;
//! - [`body`]: seeded body generators and readers (whole, streamed, gated, failing);
//! - [`pattern`]: a running byte pattern for checking long streams in order without storing them;
//! - [`sockets`]: RST on close, a small receive buffer;
//! - [`tls`]: a certificate made at test time, a broker with a TLS listener, TLS clients;
//! - [`Scratch`]: a scratch directory with self-signed certificates made at test time.
//!
//! ## Contract
//!
//! Nothing here sleeps to synchronise, and every wait has a deadline. Order is established with
//! blocking calls bounded by [`DEADLINE`], with channels between threads, with a PING round trip
//! (the broker handles one connection's frames in order, so a PONG proves every earlier frame of
//! that connection was processed and every earlier frame *to* it was received), and with the
//! broker's event-driven `ServerHandle::wait_until` on its state counts. A helper that does not
//! get what it expects panics with a message naming the peer, what it waited for and what it got
//! instead. Every test ends with [`gauges::wait_idle`] after closing its clients.
// Unsafe code is denied workspace-wide; `process` and `sockets` allow it for their libc calls.
#![warn(missing_docs, unreachable_pub)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub mod body;
pub mod broker;
pub mod bystanders;
pub mod client;
pub mod gauges;
pub mod pattern;
pub mod process;
pub mod raw;
mod scratch;
pub mod scripted;
pub mod sockets;
pub mod tls;

pub use scratch::Scratch;

/// Bound on every wait for something that must happen: a frame, a state count, a log line, a
/// child process's answer. Only reached when a test fails, so it is generous (a debug build on a
/// busy machine, a broker process starting) and still short enough that a hang is reported
/// quickly.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// How long a test watches for something that must *not* happen (a delivery, a broadcast, a
/// close). Passing tests spend it in full, so it is short.
pub const QUIET: Duration = Duration::from_millis(300);

/// The test's clock: for measuring how long a call took, never to synchronise.
#[allow(clippy::disallowed_methods)] // Asserting on real elapsed time needs the real clock.
pub fn now() -> Instant {
    Instant::now()
}

/// Sets the flag when dropped: the stop signal of a helper thread's loop, given also when the
/// test panics.
pub struct SetOnDrop<'a>(pub &'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Asserts that `result` is `Err` with the given client error pattern (the error type is not
/// `PartialEq`).
#[macro_export]
macro_rules! assert_err {
    ($result:expr, $pattern:pat) => {
        match $result {
            Err($pattern) => {}
            Err(other) => panic!(
                "expected Err({}), got Err({other:?}) ({other})",
                stringify!($pattern)
            ),
            Ok(_) => panic!("expected Err({}), got Ok", stringify!($pattern)),
        }
    };
}
