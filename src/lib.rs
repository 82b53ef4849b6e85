//! # switchyard
//!
//! A low-latency message broker for request/reply and broadcast between services on one box.
//! This crate is the broker: the mio server, the TLS listener, the metrics endpoint, the
//! configuration and the `switchyard` binary. The parts it is built from are crates of their own:
//!
//! | crate | what | depends on |
//! |---|---|---|
//! | `switchyard-proto` ([`protocol`]) | wire format: ids, header, decoder, encoder | `bytes`, `uuid` |
//! | `switchyard-core` ([`router`], `wheel`, [`auth`]) | routing core, timer wheel, tokens | proto, `slab`, `hashbrown`, `log` |
//! | `switchyard-client` ([`client`]) | blocking client library, TLS files | proto, `rustls` (feature `tls`) |
//! | `switchyard` (this crate: [`server`], [`config`]) | mio loop, TLS listener, metrics, binary | all of the above, `mio`, `rustls` |
//!
//! ## Architecture
//! One thread runs one `mio` poll loop ([`server`]). Bytes read from each connection are decoded
//! by the sans-IO [`protocol`] decoder into frames, which feed the sans-IO routing core
//! ([`router`]) together with the time of the wakeup. The router keeps per-channel queues of
//! pending requests and ready receivers, assigns each request to exactly one receiver, tracks
//! broadcasts and their acks, and appends outgoing frames to per-connection outbound queues that
//! the server flushes with vectored writes. Every timeout lives in one hierarchical timer wheel
//! (`switchyard_core::wheel`) owned by the router; no thread or task exists per request.
//!
//! ## Promise
//! [`protocol`], [`router`] and the timer wheel never touch a socket and never read a clock: their
//! crates do not depend on `mio`, `rustls` or anything that does. They are driven by the events
//! and the `Instant`s they are given, which is what makes them testable with a fake clock and
//! embeddable in another program's event loop ([`server::Server`] is the embeddable driver).

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod config;
pub mod server;

/// The client library (`switchyard-client`), so a broker user has both ends from one crate.
pub use switchyard_client as client;
/// The rustls version this crate's TLS types come from, so applications name the same one.
pub use switchyard_client::rustls;
/// The TLS pieces the broker shares with the client: crypto provider, PEM loading, typed errors.
pub use switchyard_client::tls::files as tls;
/// Access tokens and their constant-time comparison (`switchyard-core`).
pub use switchyard_core::auth;
/// The connection handle and the wire ids (`switchyard-core`, `switchyard-proto`).
pub use switchyard_core::ids;
/// The routing core (`switchyard-core`): what an embedder configures through [`server::ServerConfig`].
pub use switchyard_core::router;
/// The wire format (`switchyard-proto`).
pub use switchyard_proto as protocol;
