//! Helpers over the client library (`switchyard::client`): connecting to a broker in a thread,
//! receive windows with a PING barrier, and a responder loop on its own thread.

use std::io;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use std::time::Duration;

use switchyard::client::{
    Client, ClientOptions, Error, IncomingRequest, ReconnectPolicy, RequestOptions,
};
use switchyard::ids::ChannelId;
use switchyard::server::ServerHandle;

use crate::DEADLINE;

/// A client joined to `channel`.
#[track_caller]
pub fn connect(handle: &ServerHandle, channel: ChannelId) -> Client {
    Client::connect(handle.local_addr(), channel).expect("connect to the broker")
}

/// Client options that reconnect at test speed: attempts every 10–20 ms, at most
/// `max_attempts` of them (`None`: no limit).
pub fn fast_reconnect(max_attempts: Option<u32>) -> ClientOptions {
    ClientOptions {
        connect_timeout: Duration::from_secs(2),
        reconnect: Some(ReconnectPolicy {
            initial_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(20),
            multiplier: 2.0,
            jitter: 0.5,
            max_attempts,
        }),
        ..ClientOptions::default()
    }
}

/// Options of a waiting request (not NO_WAIT) with `timeout`.
pub fn request_options(timeout: Duration) -> RequestOptions {
    RequestOptions {
        timeout: Some(timeout),
        ..RequestOptions::default()
    }
}

/// Sets the receive window and returns once the broker has processed it (PING barrier).
#[track_caller]
pub fn set_window(client: &Client, window: u32) {
    client.set_receive_window(window).expect("RECEIVE");
    client.ping(DEADLINE).expect("PONG after RECEIVE");
}

/// A client joined to `channel` whose receive window the broker already knows.
#[track_caller]
pub fn receiver(handle: &ServerHandle, channel: ChannelId, window: u32) -> Client {
    let client = connect(handle, channel);
    set_window(&client, window);
    client
}

/// The body transformation a [`Responder`] applies: the incoming request (for its id and
/// sender) and its whole body, to the response body.
pub type Transform = dyn Fn(&IncomingRequest, Vec<u8>) -> Vec<u8> + Send + Sync;

/// What a responder loop did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Served {
    /// Requests answered successfully.
    pub answered: usize,
    /// Requests whose body read or response failed (cancelled, timed out).
    pub failed: usize,
}

/// A receiver client answering every request on its own thread: reads the whole body, applies
/// the transform, responds. The loop ends when the client is closed ([`Responder::stop`]).
pub struct Responder {
    client: Arc<Client>,
    thread: Option<JoinHandle<Served>>,
}

impl Responder {
    /// Gives `client` a receive window of `window` (PING barrier included) and starts the loop.
    #[track_caller]
    pub fn spawn(
        client: Client,
        window: u32,
        transform: impl Fn(&IncomingRequest, Vec<u8>) -> Vec<u8> + Send + Sync + 'static,
    ) -> Responder {
        Responder::spawn_shared(Arc::new(client), window, Arc::new(transform))
    }

    /// As [`Responder::spawn`], with a client shared with other threads (which may send their
    /// own requests on it) and a shared transform.
    #[track_caller]
    pub fn spawn_shared(client: Arc<Client>, window: u32, transform: Arc<Transform>) -> Responder {
        set_window(&client, window);
        let looped = Arc::clone(&client);
        let thread = thread::Builder::new()
            .name(format!("responder-{}", client.client_id()))
            .spawn(move || respond_loop(&looped, &*transform))
            .expect("spawn the responder thread");
        Responder {
            client,
            thread: Some(thread),
        }
    }

    /// The receiver client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Closes the client, ends the loop and returns what it served. A panic of the loop (an
    /// assertion inside the transform) is re-raised here.
    #[track_caller]
    pub fn stop(mut self) -> Served {
        self.client.close();
        let thread = self.thread.take().expect("joined once");
        match thread.join() {
            Ok(served) => served,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.client.close();
        if let Some(thread) = self.thread.take() {
            // Only reached when the test is already failing (stop() was not called).
            let _ = thread.join();
        }
    }
}

fn respond_loop(client: &Client, transform: &Transform) -> Served {
    let mut served = Served::default();
    loop {
        let mut incoming = match client.next_request(None) {
            Ok(incoming) => incoming,
            Err(e) if e.is_connection_fatal() => return served,
            Err(e) => panic!("next_request failed without closing the client: {e}"),
        };
        let body = match incoming.read_body() {
            Ok(body) => body,
            Err(e) if e.is_connection_fatal() => return served,
            Err(_) => {
                served.failed += 1;
                continue;
            }
        };
        let reply = transform(&incoming, body);
        match incoming.respond(&reply) {
            Ok(()) => served.answered += 1,
            Err(e) if e.is_connection_fatal() => return served,
            Err(_) => served.failed += 1,
        }
    }
}

/// The echo transform.
pub fn echo(_: &IncomingRequest, body: Vec<u8>) -> Vec<u8> {
    body
}

/// Tells whether `e` (from an `io::Read` of a body) wraps the client error `Cancelled`.
pub fn is_cancelled(e: &io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<Error>())
        .is_some_and(|inner| matches!(inner, Error::Cancelled))
}

/// The reverse transform: the request reversed, so a reply is never the request echoed by
/// mistake.
pub fn reversed(_: &IncomingRequest, mut body: Vec<u8>) -> Vec<u8> {
    body.reverse();
    body
}

/// Sends `request` and asserts the reply is its reverse (a [`reversed`] responder).
#[track_caller]
pub fn expect_reversed(client: &Client, request: &[u8]) {
    let reply = client.request(request, DEADLINE).expect("a reply");
    let mut expected = request.to_vec();
    expected.reverse();
    assert!(
        reply == expected,
        "reply of {} bytes differs from the reversed request of {} bytes",
        reply.len(),
        request.len()
    );
}
