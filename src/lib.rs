//! # switchyard
//!
//! A low-latency message broker for request/reply and broadcast between services on one box.
//!
//! ## Architecture
//! One thread runs one `mio` poll loop ([`server`]). Bytes read from each connection are decoded
//! by the sans-IO [`protocol`] decoder into frames, which feed the sans-IO routing core
//! ([`router`]) together with the time of the wakeup. The router keeps per-channel queues of
//! pending requests and ready receivers, assigns each request to exactly one receiver, tracks
//! broadcasts and their acks, and appends outgoing frames to per-connection outbound queues that
//! the server flushes with vectored writes. Every timeout lives in one hierarchical timer wheel
//! ([`wheel`]) owned by the router; no thread or task exists per request.
//!
//! ## Module map
//! - [`ids`]: identifier newtypes (wire UUIDs and the generation-checked connection handle).
//! - [`protocol`]: frame header, streaming decoder, encoder, control payloads.
//! - [`router`]: channels, request assignment, broadcasts, presence, flow control.
//! - [`wheel`]: the hierarchical timer wheel.
//! - [`server`]: the mio glue — listener, connections, the poll loop; embeddable.
//! - [`client`]: a blocking, multiplexing client library.
//! - [`tls`]: what the broker and the client share for TLS (PEM loading, typed errors).
//!
//! ## Promise
//! [`protocol`], [`router`] and [`wheel`] never touch a socket and never read a clock: they are
//! driven by the events and the `Instant`s they are given, which is what makes them testable with
//! a fake clock and embeddable in another program's event loop.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod auth;
pub mod client;
pub mod config;
pub mod ids;
mod pool;
pub mod protocol;
pub mod router;
pub mod server;
pub mod tls;
pub mod wheel;

/// The rustls version this crate's TLS types come from ([`client::ClientTls::from_config`],
/// [`client::Error::Tls`]), so applications name the same one.
pub use rustls;
