//! # switchyard-testkit
//!
//! The one test kit of the workspace: used by the integration tests in `tests/`, the soak run,
//! the fuzz replays and the benches. Not published.
//!
//! - [`common`]: a broker in a thread and client-level helpers (responders, bodies, leak check);
//! - [`support`]: a raw frame-level peer over a blocking socket, byte patterns, gauges;
//! - [`process`]: the real broker binary in a child process, killed by PID;
//! - [`sockets`]: RST on close, a small receive buffer;
//! - [`Scratch`]: a scratch directory with self-signed certificates made at test time.
//!
//! Contract of everything here: no sleeps as synchronisation; every wait has a deadline.

pub mod common;
pub mod process;
mod scratch;
pub mod sockets;
pub mod support;

pub use scratch::Scratch;
