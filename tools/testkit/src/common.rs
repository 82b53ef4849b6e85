//! Shared helpers for the client-level integration tests (`request_reply`, `broadcast`,
//! `payloads`, `concurrency`): a broker on `127.0.0.1:0`, connect helpers, a responder loop on its
//! own thread, deterministic body generators, and the end-of-test leak check.
//!
//! Contract of every test using it: no sleeps. Ordering is established with blocking calls that
//! have deadlines, with channels between threads, with a PING round trip on a client (the broker
//! handles one connection's frames in order, so a PONG proves every earlier frame of that
//! connection was processed and every earlier frame *to* it was received), and with
//! [`ServerHandle::wait_until`] on the broker's state counts. Every test ends with
//! [`assert_idle`] after closing its clients.

use std::io::{self, Read};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use switchyard::client::{Client, Error, IncomingRequest};
use switchyard::ids::ChannelId;
use switchyard::router::RouterConfig;
use switchyard::server::{Server, ServerConfig, ServerHandle};

/// Bound on every wait for something that must happen; only reached when a test fails.
pub const WAIT: Duration = Duration::from_secs(5);

/// How long a test watches for something that must *not* happen (a delivery, a broadcast).
pub const QUIET: Duration = Duration::from_millis(300);

/// The test's clock: for measuring how long a call took, never to synchronise.
#[allow(clippy::disallowed_methods)] // Asserting on real elapsed time needs the real clock.
pub fn now() -> Instant {
    Instant::now()
}

/// A broker with `router` limits, listening on an ephemeral port of 127.0.0.1.
/// The presence grace period is turned off (PEER_LEFT at once, so a test's broker is idle as
/// soon as its clients are gone); the grace period has its own tests.
pub fn start(router: RouterConfig) -> ServerHandle {
    let router = RouterConfig {
        presence_grace: Duration::ZERO,
        ..router
    };
    start_with(ServerConfig {
        router,
        ..server_config()
    })
}

/// A broker with the default limits on an ephemeral port.
pub fn start_default() -> ServerHandle {
    start(RouterConfig::default())
}

/// The default server configuration, listening on 127.0.0.1:0.
pub fn server_config() -> ServerConfig {
    ServerConfig {
        listen: "127.0.0.1:0".parse().expect("socket address"),
        ..ServerConfig::default()
    }
}

/// A broker with a full server configuration (its `listen` should be 127.0.0.1:0).
pub fn start_with(config: ServerConfig) -> ServerHandle {
    Server::spawn(config).expect("spawn the broker")
}

/// A client joined to `channel`.
#[track_caller]
pub fn connect(handle: &ServerHandle, channel: ChannelId) -> Client {
    Client::connect(handle.local_addr(), channel).expect("connect to the broker")
}

/// Sets the receive window and returns once the broker has processed it (PING barrier).
#[track_caller]
pub fn set_window(client: &Client, window: u32) {
    client.set_receive_window(window).expect("RECEIVE");
    client.ping(WAIT).expect("PONG after RECEIVE");
}

/// A client joined to `channel` whose receive window the broker already knows.
#[track_caller]
pub fn receiver(handle: &ServerHandle, channel: ChannelId, window: u32) -> Client {
    let client = connect(handle, channel);
    set_window(&client, window);
    client
}

/// Asserts that the broker returns to idle (no connection, channel, request, assignment,
/// broadcast, armed timer or buffered byte) within [`WAIT`]. Call after closing every client.
#[track_caller]
pub fn assert_idle(handle: &ServerHandle) {
    if let Err(e) = handle.wait_idle(WAIT) {
        panic!(
            "broker not idle within {WAIT:?} ({e}): {:?}",
            handle.stats()
        );
    }
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

/// A fast seeded generator (xorshift64*) for body bytes: deterministic, not periodic at any
/// frame size, cheap in a debug build.
#[derive(Clone, Debug)]
pub struct Pattern {
    state: u64,
}

impl Pattern {
    /// A generator for `seed` (any value, 0 included).
    pub fn new(seed: u64) -> Pattern {
        // splitmix64 of the seed, so that nearby seeds give unrelated streams; never 0.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Pattern {
            state: (z ^ (z >> 31)) | 1,
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Fills `buf` with the next bytes of the stream.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut words = buf.chunks_exact_mut(8);
        for word in &mut words {
            word.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = words.into_remainder();
        let last = self.next_u64().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }
}

/// `len` bytes of the pattern for `seed`.
pub fn body(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    Pattern::new(seed).fill(&mut out);
    out
}

/// An `io::Read` producing `len` pattern bytes for `seed` (byte-for-byte the same as
/// [`body`]`(seed, len)`), without ever holding them all.
pub struct PatternReader {
    pattern: Pattern,
    /// Generated bytes not yet handed out (`pending[at..]`).
    pending: [u8; 8],
    at: usize,
    left: u64,
}

impl PatternReader {
    /// A reader of `len` bytes.
    pub fn new(seed: u64, len: u64) -> PatternReader {
        PatternReader {
            pattern: Pattern::new(seed),
            pending: [0; 8],
            at: 8,
            left: len,
        }
    }

    /// Bytes not yet read.
    pub fn left(&self) -> u64 {
        self.left
    }
}

impl Read for PatternReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let mut n = 0;
        while n < want {
            if self.at == 8 {
                self.pending = self.pattern.next_u64().to_le_bytes();
                self.at = 0;
            }
            let take = (8 - self.at).min(want - n);
            buf[n..n + take].copy_from_slice(&self.pending[self.at..self.at + take]);
            self.at += take;
            n += take;
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Reads `reader` to its end in pieces, checking every byte against the pattern for `seed`
/// without holding the whole body; returns the number of bytes read.
///
/// # Errors
/// The reader's error, or `InvalidData` at the first byte that differs.
pub fn check_stream(reader: &mut dyn Read, seed: u64) -> io::Result<u64> {
    let mut expected = PatternReader::new(seed, u64::MAX);
    let mut got = vec![0u8; 48 * 1024 + 7]; // Deliberately not a frame size.
    let mut want = vec![0u8; got.len()];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut got)?;
        if n == 0 {
            return Ok(total);
        }
        expected.read_exact(&mut want[..n])?;
        if let Some(i) = (0..n).find(|&i| got[i] != want[i]) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("byte {} differs", total + i as u64),
            ));
        }
        total += n as u64;
    }
}

/// Tells whether `e` (from an `io::Read` of a body) wraps the client error `Cancelled`.
pub fn is_cancelled(e: &io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<Error>())
        .is_some_and(|inner| matches!(inner, Error::Cancelled))
}

/// An `io::Read` that yields `head_len` pattern bytes for `seed`, then blocks until the gate
/// opens (a message or the sender's drop), then ends. Holds a stream half-sent for as long as a
/// test needs.
pub struct GatedReader {
    head: PatternReader,
    gate: Option<mpsc::Receiver<()>>,
}

impl GatedReader {
    /// The reader and the gate's key: send `()` (or drop it) to let the body end.
    pub fn new(seed: u64, head_len: u64) -> (GatedReader, mpsc::Sender<()>) {
        let (open, gate) = mpsc::channel();
        let reader = GatedReader {
            head: PatternReader::new(seed, head_len),
            gate: Some(gate),
        };
        (reader, open)
    }
}

impl Read for GatedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.head.left() > 0 {
            return self.head.read(buf);
        }
        if let Some(gate) = self.gate.take() {
            // Either a message or the key's drop opens the gate.
            let _ = gate.recv();
        }
        Ok(0)
    }
}

/// An `io::Read` that yields `head_len` pattern bytes for `seed`, then fails with `message`.
pub struct FailingReader {
    head: PatternReader,
    message: &'static str,
}

impl FailingReader {
    /// The reader.
    pub fn new(seed: u64, head_len: u64, message: &'static str) -> FailingReader {
        FailingReader {
            head: PatternReader::new(seed, head_len),
            message,
        }
    }
}

impl Read for FailingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.head.left() > 0 {
            return self.head.read(buf);
        }
        Err(io::Error::other(self.message))
    }
}
