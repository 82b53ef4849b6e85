//! # switchyard-client
//!
//! A multiplexing client for the switchyard broker, blocking ([`Client`]) and, with the
//! `tokio` feature, async (`AsyncClient`).
//!
//! One [`Client`] is one TCP connection joined to one channel. It is `Send + Sync`: share it
//! (`&Client`, `Arc<Client>`, scoped threads) and run any number of operations at once from any
//! number of threads; they are multiplexed over the connection by request id. `AsyncClient` is
//! the same client for tokio applications: the same operations as futures, on the same sans-IO
//! session (so the two cannot drift), driven by one task per client (see its module docs).
//!
//! ```no_run
//! use std::time::Duration;
//! use switchyard_client::{ChannelId, Client};
//!
//! # fn main() -> Result<(), switchyard_client::Error> {
//! let channel = ChannelId::random();
//! let client = Client::connect("127.0.0.1:7400", channel)?;
//! let reply = client.request(b"ping?", Duration::from_secs(1))?;
//! # let _ = reply; Ok(()) }
//! ```
//!
//! # Threading model
//! - **Link thread** (one per client, `link.rs` over `transport/`): owns the read half of the
//!   socket, decodes frames and feeds them to the sans-IO `session/`, which routes each to the
//!   queue of the operation it belongs to. It never blocks on anything but the socket: deliveries go into
//!   unbounded queues, and the only frames it writes itself (PONG answers, CANCELs for streams the
//!   broker broke) go through a non-blocking control queue. When the connection ends it
//!   reconnects (see below) or closes the client; it ends with the client, which joins it.
//! - **Caller threads** write their own frames: the write half sits in a `Mutex` held for exactly
//!   one whole frame, so frames never interleave and a request goes out the moment it is made
//!   (`TCP_NODELAY`, no flush timer). Callers then block on their operation's own queue (a
//!   `chan.rs` channel, or a condvar-guarded queue for `next_*`), never on a lock held across
//!   I/O.
//!
//! With `ClientOptions::tls` the connection is TLS (`ClientTls`): the same threads, with the
//! rustls session in a lock of its own that is never held across blocking I/O (`transport/`).
//!
//! # Features
//! - `tls` (default): TLS to the broker's TLS listener — `ClientTls`, `ClientOptions::tls`,
//!   `Error::Tls`, the `rustls` re-export — and `tls::files`, the PEM loading
//!   the broker shares. Without it the crate builds without rustls and ring, and speaks plain
//!   TCP only.
//! - `tokio` (off by default): `AsyncClient`, `AsyncResponse`, `AsyncIncomingRequest`, on the
//!   tokio runtime. With `tls` too, the async client speaks TLS with the same `ClientTls`.
//!
//! # Timeouts
//! Every timeout parameter is an `Option<Duration>` (any `impl Into<Option<Duration>>`, so a
//! plain `Duration` works), and `None` always means "no bound of the caller's own":
//! - for what the *broker* times (a request, a broadcast): the broker's default timeout
//!   ([`Limits::default_timeout`]); `Some(t)` is sent as is (rounded up to whole milliseconds,
//!   at least 1, clamped by the broker to [`Limits::max_timeout`]). The client adds
//!   [`ClientOptions::deadline_grace`] for its own deadline, in case the broker is dead.
//! - for a *local* wait (`next_request`, `next_broadcast`, `next_presence`,
//!   `next_state_change`, `wait_connected`, `ping`, `fetch_peers`): wait until there is
//!   something, or until the connection ends or the client closes.
//!
//! What ran out says which kind it was: [`Error::Timeout`] for an operation's timeout,
//! [`Error::WaitElapsed`] for a local wait with nothing to return, [`Error::ConnectTimeout`]
//! for connecting ([`ClientOptions::connect_timeout`]).
//!
//! # Invariants
//! - An operation registers its route in the session *before* its first frame is written, so
//!   an answer cannot arrive unrouted.
//! - Every wait is bounded or wakeable: waits for the broker use the operation's timeout plus a
//!   grace period ([`ClientOptions::deadline_grace`]; the broker itself always answers within the
//!   timeout, the grace only guards against a dead broker); losing the connection fails every
//!   operation's route at once; closing the client (by [`Client::close`], by drop, by a fatal
//!   broker error, or by losing the connection without reconnection) drops every route and
//!   notifies every condvar, the backoff's included, so every blocked caller returns at once with
//!   the cause.
//! - An operation that ends on the client side without the broker knowing (a local deadline, a
//!   dropped [`Response`] or [`IncomingRequest`], a failing body reader) sends the CANCEL of its
//!   direction, so neither the broker nor the counterpart is left waiting.
//! - Nothing here panics on broker input; bad input is a typed [`ProtocolViolation`].
//!
//! # Reconnection
//! With [`ClientOptions::reconnect`] set (the default), a lost connection is re-established by
//! the link thread with exponential backoff and jitter ([`ReconnectPolicy`]), under the same
//! client id (the broker's takeover and presence grace period make a quick reconnect invisible
//! to the peers), and the receive window is re-issued before anything else is sent on the new
//! connection. Operations in flight at the drop fail at once with [`Error::ConnectionLost`] —
//! never retried: at-most-once — and new ones fail with [`Error::Reconnecting`] until the link is
//! back; the `next_*` waits go on. [`Client::state`], [`Client::next_state_change`] and
//! [`Client::wait_connected`] report the link. Each operation writes only on the connection it
//! was registered on. The lifecycle and what is retried are in `reconnect.rs`.
//!
//! # Memory
//! See `session/`: per-operation queues are unbounded (a slowly read body is buffered in full);
//! incoming requests are bounded by the receive window the application sets; broadcasts and
//! presence events are bounded by [`ClientOptions::broadcast_queue`] and
//! [`ClientOptions::presence_queue`].

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

// Module map (each file's docs hold its contracts):
// - options.rs    ClientOptions, Limits, RequestOptions: what the application chooses and the
//                 broker announced
// - client/       Client: connect, state, ping, close (mod.rs); requests (request.rs);
//                 broadcast and presence (broadcast.rs)
// - body.rs       Response and IncomingRequest (io::Read), sending a body as frames
// - stream.rs     BodyStream: the reading end of one stream, cancel on drop
// - shared.rs     what the handle, the link thread and the streams share: session + link
// - link.rs       one connection's write side and the link thread's read loop
// - reconnect.rs  reconnection: lifecycle, what is retried, policy, backoff, the loop
// - handshake.rs  connect, TLS, HELLO, WELCOME; the sans-IO answer to HELLO both fronts share
// - session/      the sans-IO session: routes every frame to its operation
// - chan.rs       the per-operation channel the session delivers into, waitable blocking or async
// - async_client/ AsyncClient (feature `tokio`): the driver task, async bodies, the same session
// - transport/    sockets: connect, whole-frame writes, the reader, TLS records
// - tls/          ClientTls and the PEM loading the broker shares
#[cfg(feature = "tokio")]
mod async_client;
mod body;
mod chan;
mod client;
mod error;
mod handshake;
mod link;
mod options;
mod reconnect;
mod session;
mod shared;
mod stream;
#[cfg(feature = "tls")]
pub mod tls;
mod transport;

#[cfg(feature = "tokio")]
pub use async_client::{AsyncClient, AsyncIncomingRequest, AsyncResponse};
pub use body::{IncomingRequest, Response};
pub use client::{Broadcast, Client, PresenceEvent};
pub use error::{Error, ProtocolViolation};
pub(crate) use options::timeout_ms;
pub use options::{ClientOptions, Limits, RequestOptions};
pub use reconnect::{ConnectionState, ReconnectPolicy, StateChange};
/// The rustls version this crate's TLS types come from ([`ClientTls::from_config`],
/// [`Error::Tls`]), so applications name the same one.
#[cfg(feature = "tls")]
pub use rustls;
/// The wire ids, re-exported so a client user needs no other dependency to name a channel.
pub use switchyard_proto::{ChannelId, ChannelNameError, ClientId, RequestId};
#[cfg(feature = "tls")]
pub use tls::ClientTls;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_is_send_sync_and_handles_are_send() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_sync::<Client>();
        send::<Response>();
        send::<IncomingRequest>();
        send_sync::<Error>();
    }

    #[cfg(feature = "tokio")]
    #[test]
    fn async_client_is_a_send_sync_handle_and_its_futures_are_send() {
        fn send_sync_clone<T: Send + Sync + Clone>() {}
        fn send<T: Send>(_: &T) {}
        send_sync_clone::<AsyncClient>();
        fn futures(client: &AsyncClient) {
            send(&client.request("x", None));
            send(&client.request_with(&b"x"[..], RequestOptions::default()));
            send(&client.next_request(None));
            send(&client.broadcast("x", None));
            send(&client.next_broadcast(None));
            send(&client.ping(None));
        }
        let _ = futures;
        fn handles(response: AsyncResponse, request: AsyncIncomingRequest) {
            send(&response.bytes());
            send(&request.respond("x"));
        }
        let _ = handles;
    }
}
