//! # switchyard-core
//!
//! The broker's routing core, sans-IO: channels, request assignment, broadcasts and their acks,
//! presence, flow control, access tokens and every timer, driven by `(connection, frame, now)`
//! events and emitting bytes per connection. The mio server in the `switchyard` crate is one
//! driver of it; a fake clock in the tests is another.
//!
//! ## Module map
//! - [`router`]: the [`Router`](router::Router) and its calling contract.
//! - [`wheel`]: the hierarchical timer wheel that holds every timeout.
//! - [`auth`]: access tokens and their constant-time comparison.
//! - [`pool`]: the bounded pool of warm read and outbound buffers.
//! - [`ids`]: the connection handle [`ConnId`](ids::ConnId) beside the wire ids.
//!
//! ## Promise
//! Nothing here touches a socket, a thread or a clock: time comes in as the `Instant`s the caller
//! passes. The dependency list (`switchyard-proto`, `bytes`, `slab`, `hashbrown`, `log`; `serde`
//! only for the configuration types, behind a feature) is what enforces it: no `mio`, no `rustls`.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod auth;
pub mod ids;
pub mod pool;
pub mod router;
pub mod wheel;

/// The wire format this core speaks (the `switchyard-proto` crate).
pub use switchyard_proto as protocol;
