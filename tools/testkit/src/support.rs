//! Shared helpers of the real-socket integration tests: a broker on `127.0.0.1:0`, a raw
//! frame-level peer over a blocking `std::net::TcpStream`, and a cheap running byte pattern for
//! checking large bodies in order without storing them.
//!
//! Every wait has a deadline: reads time out after [`DEADLINE`] (the socket's read timeout) and
//! broker-state waits use [`ServerHandle::wait_until`], which is event-driven. Nothing sleeps.
//! A helper that does not get what it expects panics with a message naming the peer, what it
//! waited for and what it got instead.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use bytes::Bytes;
use switchyard::ids::{ChannelId, ClientId, RequestId};
use switchyard::protocol::{
    encode_u32, ErrorBody, ErrorCode, Flags, Frame, FrameType, Header, WelcomeBody, HEADER_LEN,
};
use switchyard::server::{Server, ServerConfig, ServerHandle, ServerStats};

/// How long any single wait may take before the test fails: generous for a debug build on a
/// busy machine, short enough that a hang is reported quickly.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// The default configuration, listening on an ephemeral loopback port, with the presence grace
/// period off (PEER_LEFT at once; the grace period has its own tests in `presence_grace.rs`).
pub fn config() -> ServerConfig {
    let mut config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    };
    config.router.presence_grace = Duration::ZERO;
    config
}

/// A broker with the default limits on an ephemeral port.
pub fn start() -> ServerHandle {
    start_with(config())
}

/// A broker with `config` (whose `listen` should be `127.0.0.1:0`).
pub fn start_with(config: ServerConfig) -> ServerHandle {
    Server::spawn(config).expect("spawning the broker")
}

/// Waits until every count of the broker is back to zero ([`ServerStats::is_idle`]); panics with
/// the broker's current stats otherwise.
#[track_caller]
pub fn wait_idle(handle: &ServerHandle) -> ServerStats {
    match handle.wait_idle(DEADLINE) {
        Ok(stats) => stats,
        Err(err) => panic!(
            "the broker did not return to idle within {DEADLINE:?} ({err}); now: {:#?}",
            handle.stats()
        ),
    }
}

/// Waits until the broker's stats satisfy `condition`; panics naming `what` otherwise.
#[track_caller]
pub fn wait_for(
    handle: &ServerHandle,
    what: &str,
    condition: impl Fn(&ServerStats) -> bool + Send + 'static,
) -> ServerStats {
    match handle.wait_until(condition, DEADLINE) {
        Ok(stats) => stats,
        Err(err) => panic!(
            "broker state never reached: {what} (within {DEADLINE:?}: {err}); now: {:#?}",
            handle.stats()
        ),
    }
}

/// One client connection driven frame by frame, with no client library in between.
pub struct RawPeer {
    stream: TcpStream,
    /// Name used in panic messages.
    pub name: String,
    /// The channel joined by [`RawPeer::hello`] (nil before), used by the frame helpers.
    pub channel: ChannelId,
    /// The client id from the welcome (nil before).
    pub client: ClientId,
    next_ping: u32,
    /// The read timeout in force: how long any one read may wait.
    deadline: Duration,
}

impl RawPeer {
    /// Connects to the broker; reads time out after [`DEADLINE`].
    #[track_caller]
    pub fn connect(addr: SocketAddr) -> RawPeer {
        let stream = TcpStream::connect(addr).expect("connecting to the broker");
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        stream.set_nodelay(true).unwrap();
        let name = format!("peer:{}", stream.local_addr().unwrap().port());
        RawPeer {
            stream,
            name,
            channel: ChannelId::NIL,
            client: ClientId::NIL,
            next_ping: 1,
            deadline: DEADLINE,
        }
    }

    /// Connects and names the peer (for panic messages).
    #[track_caller]
    pub fn named(addr: SocketAddr, name: &str) -> RawPeer {
        let mut peer = RawPeer::connect(addr);
        peer.name = format!("{name}:{}", peer.stream.local_addr().unwrap().port());
        peer
    }

    /// Sets how long any one read may wait (the default is [`DEADLINE`]).
    pub fn set_deadline(&mut self, deadline: Duration) {
        self.stream.set_read_timeout(Some(deadline)).unwrap();
        self.deadline = deadline;
    }

    /// A second handle on the same socket (for a writer thread).
    pub fn try_clone_stream(&self) -> TcpStream {
        self.stream.try_clone().expect("cloning the socket")
    }

    /// The underlying socket.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// A header of `kind` carrying this peer's channel and client id, everything else zero.
    pub fn header(&self, kind: FrameType) -> Header {
        Header {
            client_id: self.client,
            channel_id: self.channel,
            ..Header::new(kind)
        }
    }

    /// Sends one frame; `payload_len` is set from `payload`.
    #[track_caller]
    pub fn send(&mut self, mut header: Header, payload: &[u8]) {
        header.payload_len = u32::try_from(payload.len()).unwrap();
        let mut wire = Vec::with_capacity(HEADER_LEN + payload.len());
        wire.extend_from_slice(&header.encode());
        wire.extend_from_slice(payload);
        self.send_bytes(&wire);
    }

    /// Writes raw bytes.
    #[track_caller]
    pub fn send_bytes(&mut self, bytes: &[u8]) {
        if let Err(err) = self.stream.write_all(bytes) {
            panic!("{}: writing {} bytes failed: {err}", self.name, bytes.len());
        }
    }

    /// Closes the writing half (the broker reads EOF).
    pub fn shutdown_write(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// Reads one frame, or the I/O error (timeout, EOF, reset, or undecodable header).
    pub fn try_recv(&mut self) -> io::Result<Frame> {
        let mut head = [0u8; HEADER_LEN];
        self.stream.read_exact(&mut head)?;
        let header = Header::parse(&head)
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err.to_string()))?;
        let mut payload = vec![0u8; header.payload_len as usize];
        self.stream.read_exact(&mut payload)?;
        Ok(Frame {
            header,
            payload: Bytes::from(payload),
        })
    }

    /// Reads one frame's header and its payload into `payload` (reused: no allocation per frame
    /// once it is large enough). For bulk transfers.
    #[track_caller]
    pub fn recv_into(&mut self, payload: &mut Vec<u8>) -> Header {
        let result = (|| {
            let mut head = [0u8; HEADER_LEN];
            self.stream.read_exact(&mut head)?;
            let header = Header::parse(&head)
                .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err.to_string()))?;
            payload.resize(header.payload_len as usize, 0);
            self.stream.read_exact(payload)?;
            Ok::<_, io::Error>(header)
        })();
        result.unwrap_or_else(|err| self.recv_failed(err))
    }

    /// Reads one frame; panics if none arrives within [`DEADLINE`] or the connection closes.
    #[track_caller]
    pub fn recv(&mut self) -> Frame {
        match self.try_recv() {
            Ok(frame) => frame,
            Err(err) => self.recv_failed(err),
        }
    }

    #[track_caller]
    fn recv_failed(&self, err: io::Error) -> ! {
        match err.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                panic!("{}: no frame within {:?}", self.name, self.deadline)
            }
            io::ErrorKind::UnexpectedEof => {
                panic!(
                    "{}: the broker closed the connection while a frame was expected",
                    self.name
                )
            }
            _ => panic!("{}: reading a frame failed: {err}", self.name),
        }
    }

    /// Reads the next frame, which must be of `kind`; PEER_JOINED / PEER_LEFT frames before it
    /// are skipped when `skip_presence` is set.
    #[track_caller]
    pub fn recv_kind(&mut self, kind: FrameType, skip_presence: bool) -> Frame {
        loop {
            let frame = self.recv();
            let presence = matches!(
                frame.header.frame_type,
                FrameType::PeerJoined | FrameType::PeerLeft
            );
            if frame.header.frame_type == kind {
                return frame;
            }
            if skip_presence && presence {
                continue;
            }
            panic!(
                "{}: expected a {kind:?} frame, got {}",
                self.name,
                describe(&frame)
            );
        }
    }

    /// Reads the next frame, which must be of `kind` with exactly `flags`, for `request_id`.
    #[track_caller]
    pub fn expect(&mut self, kind: FrameType, flags: Flags, request_id: RequestId) -> Frame {
        let frame = self.recv();
        let h = &frame.header;
        assert!(
            h.frame_type == kind && h.flags == flags && h.request_id == request_id,
            "{}: expected {kind:?} {flags:?} for {request_id}, got {}",
            self.name,
            describe(&frame)
        );
        frame
    }

    /// Reads the next frame, which must be PEER_JOINED or PEER_LEFT (`kind`) about `peer`.
    #[track_caller]
    pub fn expect_presence(&mut self, kind: FrameType, peer: ClientId) {
        let frame = self.recv();
        let h = &frame.header;
        assert!(
            h.frame_type == kind
                && h.client_id == peer
                && h.channel_id == self.channel
                && h.flags == Flags::NONE
                && frame.payload.is_empty(),
            "{}: expected {kind:?} about {peer}, got {}",
            self.name,
            describe(&frame)
        );
    }

    /// The broker must close the connection (EOF or reset) without sending anything more.
    #[track_caller]
    pub fn expect_closed(&mut self) {
        let mut buf = [0u8; 4096];
        match self.stream.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => {
                let first = <[u8; HEADER_LEN]>::try_from(&buf[..HEADER_LEN.min(n)])
                    .ok()
                    .and_then(|head| Header::parse(&head).ok());
                panic!(
                    "{}: expected the broker to close the connection, got {n} more bytes \
                     (first header: {first:?})",
                    self.name
                )
            }
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::ConnectionReset
                        | io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::BrokenPipe
                ) => {}
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                panic!(
                    "{}: the broker did not close the connection within {:?}",
                    self.name, self.deadline
                )
            }
            Err(err) => panic!(
                "{}: unexpected error waiting for the close: {err}",
                self.name
            ),
        }
    }

    /// Sends HELLO without waiting for the answer.
    #[track_caller]
    pub fn send_hello(&mut self, channel: ChannelId, client: ClientId) {
        let header = Header {
            client_id: client,
            channel_id: channel,
            ..Header::new(FrameType::Hello)
        };
        self.send(header, &[]);
    }

    /// Handshake: HELLO, then the WELCOME (checked and decoded). Remembers the channel and the
    /// (possibly broker-assigned) client id.
    #[track_caller]
    pub fn hello(&mut self, channel: ChannelId, client: ClientId) -> WelcomeBody {
        self.send_hello(channel, client);
        let frame = self.recv_kind(FrameType::Welcome, false);
        let h = &frame.header;
        assert_eq!(h.channel_id, channel, "{}: welcome channel", self.name);
        if client.is_nil() {
            assert!(
                !h.client_id.is_nil(),
                "{}: no client id assigned",
                self.name
            );
        } else {
            assert_eq!(h.client_id, client, "{}: welcome client id", self.name);
        }
        assert_eq!(h.flags, Flags::NONE, "{}: welcome flags", self.name);
        assert!(h.request_id.is_nil(), "{}: welcome request id", self.name);
        self.channel = channel;
        self.client = h.client_id;
        WelcomeBody::decode(&frame.payload)
            .unwrap_or_else(|err| panic!("{}: malformed welcome payload: {err}", self.name))
    }

    /// RECEIVE(window).
    #[track_caller]
    pub fn receive(&mut self, window: u32) {
        let header = self.header(FrameType::Receive);
        self.send(header, &encode_u32(window));
    }

    /// A stream frame (START / CHUNK / END / CANCEL) with the given fields.
    #[track_caller]
    pub fn send_stream(
        &mut self,
        kind: FrameType,
        flags: Flags,
        request_id: RequestId,
        sequence: u32,
        is_final: bool,
        body: &[u8],
    ) {
        let header = Header {
            flags,
            request_id,
            sequence,
            is_final,
            ..self.header(kind)
        };
        self.send(header, body);
    }

    /// A one-frame request: START (REQUEST, FINAL) with `body`.
    #[track_caller]
    pub fn request(&mut self, request_id: RequestId, timeout_ms: u32, body: &[u8]) {
        let header = Header {
            flags: Flags::REQUEST,
            request_id,
            timeout_ms,
            is_final: true,
            ..self.header(FrameType::Start)
        };
        self.send(header, body);
    }

    /// A one-frame response: START (RESPONSE, FINAL) with `body`.
    #[track_caller]
    pub fn respond(&mut self, request_id: RequestId, body: &[u8]) {
        self.send_stream(FrameType::Start, Flags::RESPONSE, request_id, 0, true, body);
    }

    /// The next frame must be an ERROR with `code` about `request_id` (nil for connection-level
    /// errors); returns its decoded body.
    #[track_caller]
    pub fn expect_error(&mut self, code: ErrorCode, request_id: RequestId) -> ErrorBody {
        let frame = self.recv();
        let h = &frame.header;
        assert!(
            h.frame_type == FrameType::Error,
            "{}: expected ERROR {code:?}, got {}",
            self.name,
            describe(&frame)
        );
        let body = ErrorBody::decode(&frame.payload)
            .unwrap_or_else(|err| panic!("{}: malformed error payload: {err}", self.name));
        assert_eq!(
            body.known_code(),
            Some(code),
            "{}: error code (raw 0x{:04x}, text {:?})",
            self.name,
            body.code,
            body.message
        );
        assert_eq!(
            h.request_id, request_id,
            "{}: error's request id",
            self.name
        );
        assert_eq!(h.flags, Flags::NONE, "{}: error flags", self.name);
        body
    }

    /// A connection-fatal error: the ERROR frame (request id nil), then the broker closes the
    /// connection. Returns the error's body.
    #[track_caller]
    pub fn expect_fatal(&mut self, code: ErrorCode) -> ErrorBody {
        assert!(code.is_connection_fatal(), "{code:?} is not fatal");
        let body = self.expect_error(code, RequestId::NIL);
        self.expect_closed();
        body
    }

    /// PING with `sequence`.
    #[track_caller]
    pub fn ping(&mut self, sequence: u32) {
        let header = Header {
            sequence,
            ..self.header(FrameType::Ping)
        };
        self.send(header, &[]);
    }

    /// A barrier: PING, and the very next frame must be its PONG. Since the broker handles a
    /// connection's frames in order and queues its output in order, this proves that nothing
    /// else was waiting for this peer (an empty inbox) and that the connection is open.
    #[track_caller]
    pub fn barrier(&mut self) {
        let sequence = self.next_ping;
        self.next_ping += 1;
        self.ping(sequence);
        let frame = self.recv();
        assert!(
            frame.header.frame_type == FrameType::Pong && frame.header.sequence == sequence,
            "{}: expected PONG {sequence} (an empty inbox), got {}",
            self.name,
            describe(&frame)
        );
    }
}

/// A one-line description of a frame for failure messages.
pub fn describe(frame: &Frame) -> String {
    let h = &frame.header;
    let mut text = format!(
        "{:?} {:?} client {} channel {} request {} seq {}{} len {}",
        h.frame_type,
        h.flags,
        h.client_id,
        h.channel_id,
        h.request_id,
        h.sequence,
        if h.is_final { " FINAL" } else { "" },
        frame.payload.len()
    );
    if h.frame_type == FrameType::Error {
        if let Ok(body) = ErrorBody::decode(&frame.payload) {
            text.push_str(&format!(
                " (code 0x{:04x} {:?}: {:?})",
                body.code,
                body.known_code(),
                body.message
            ));
        }
    }
    text
}

/// A deterministic byte pattern with a prime period, so a body of any length can be produced
/// and checked in order by slicing (memcpy / memcmp speed even in debug builds) without storing
/// it. A lost, duplicated or reordered piece shifts the bytes against the period and is caught
/// (a shift by an exact multiple of the period would also change the total length).
pub struct Pattern {
    /// The period's bytes twice over, so any window of up to `PERIOD` bytes is one slice.
    table: Vec<u8>,
}

impl Pattern {
    /// The period: a prime just under 2 MiB, above any frame payload the tests send.
    pub const PERIOD: usize = 2_097_143;

    /// The pattern (xorshift bytes; the seed only has to be fixed).
    pub fn new() -> Pattern {
        let mut table = Vec::with_capacity(2 * Self::PERIOD);
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        while table.len() < Self::PERIOD {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            table.extend_from_slice(&state.to_le_bytes());
        }
        table.truncate(Self::PERIOD);
        table.extend_from_within(..Self::PERIOD);
        Pattern { table }
    }

    /// The `len` pattern bytes at stream offset `offset` (`len <= PERIOD`).
    pub fn slice(&self, offset: u64, len: usize) -> &[u8] {
        assert!(len <= Self::PERIOD, "pattern window too long");
        let start = (offset % Self::PERIOD as u64) as usize;
        &self.table[start..start + len]
    }

    /// Checks that `data` is the pattern at `offset`; panics with the first differing offset.
    #[track_caller]
    pub fn check(&self, offset: u64, data: &[u8]) {
        let mut done = 0;
        while done < data.len() {
            let len = (data.len() - done).min(Self::PERIOD);
            let expected = self.slice(offset + done as u64, len);
            let got = &data[done..done + len];
            if got != expected {
                let at = got.iter().zip(expected).position(|(a, b)| a != b).unwrap();
                panic!(
                    "body differs from the pattern at stream offset {}",
                    offset + (done + at) as u64
                );
            }
            done += len;
        }
    }
}

impl Default for Pattern {
    fn default() -> Self {
        Pattern::new()
    }
}

/// Runs `body` while a watcher records the largest buffered-bytes figure the broker reports
/// after any loop turn (a watcher is checked after every turn, so it sees every state the loop
/// passes through). Returns the body's result and that peak.
pub fn with_peak_buffered<T>(handle: &ServerHandle, body: impl FnOnce() -> T) -> (T, usize) {
    let peak = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    thread::scope(|s| {
        let monitor = {
            let (peak, stop) = (Arc::clone(&peak), Arc::clone(&stop));
            s.spawn(move || {
                handle.wait_until(
                    move |stats: &ServerStats| {
                        peak.fetch_max(stats.buffered_bytes(), Ordering::Relaxed);
                        stop.load(Ordering::Relaxed)
                    },
                    Duration::from_secs(60),
                )
            })
        };
        let stopping = StopMonitor { stop, handle };
        let result = body();
        drop(stopping);
        monitor.join().unwrap().expect("the monitor saw every turn");
        (result, peak.load(Ordering::Relaxed))
    })
}

/// Ends the monitor's watch, passing or failing: sets its flag and makes the broker turn once
/// more (a stats request) so that the watcher sees it.
struct StopMonitor<'a> {
    stop: Arc<AtomicBool>,
    handle: &'a ServerHandle,
}

impl Drop for StopMonitor<'_> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.handle.stats();
    }
}
