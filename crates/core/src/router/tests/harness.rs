//! Test harness: a [`Router`] with a fake clock and per-connection inboxes.
//!
//! `send` feeds a frame, polls the router's outputs (writing every transmitted byte into the
//! connection's inbox and decoding it back into frames) and checks the invariants after every
//! step. Time moves only through `advance`.

use bytes::{Bytes, BytesMut};
use hashbrown::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::ids::{ChannelId, ClientId, ConnId, RequestId};
use crate::protocol::{
    encode_u32, Decoder, ErrorBody, ErrorCode, Flags, Frame, FrameType, Header, WelcomeBody,
};
use crate::router::{Output, Router, RouterConfig, RouterStats};

pub(super) struct Harness {
    pub(super) router: Router,
    pub(super) now: Instant,
    inbox: HashMap<ConnId, Vec<Frame>>,
    pub(super) closed: HashSet<ConnId>,
    pub(super) resumed: Vec<ConnId>,
    /// Connections whose transmits are not written (a client that stopped reading).
    pub(super) stalled: HashSet<ConnId>,
    channels: HashMap<ConnId, ChannelId>,
    /// The resume secret of every WELCOME seen, by channel and client id.
    pub(super) secrets: HashMap<(ChannelId, ClientId), RequestId>,
}

/// The default configuration with heartbeats, the handshake timeout and the presence grace
/// period off (each has its own tests), so that timer counts and presence are those of the
/// behaviour under test.
pub(super) fn quiet() -> RouterConfig {
    RouterConfig {
        heartbeat_interval: Duration::ZERO,
        handshake_timeout: Duration::ZERO,
        presence_grace: Duration::ZERO,
        ..RouterConfig::default()
    }
}

pub(super) fn channel(n: u8) -> ChannelId {
    ChannelId::from_bytes([n; 16])
}

pub(super) fn client(n: u8) -> ClientId {
    ClientId::from_bytes([0xC0 ^ n; 16])
}

pub(super) fn req(n: u8) -> RequestId {
    let mut bytes = [0xEE; 16];
    bytes[15] = n;
    RequestId::from_bytes(bytes)
}

impl Harness {
    /// A harness with heartbeats off, so that timer counts are those of requests and broadcasts
    /// (heartbeats have their own tests).
    pub(super) fn new() -> Harness {
        Harness::with_config(quiet())
    }

    pub(super) fn with_config(config: RouterConfig) -> Harness {
        // The fake clock's origin; only `advance` moves it from here.
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        Harness {
            router: Router::new(config, now),
            now,
            inbox: HashMap::new(),
            closed: HashSet::new(),
            resumed: Vec::new(),
            stalled: HashSet::new(),
            channels: HashMap::new(),
            secrets: HashMap::new(),
        }
    }

    pub(super) fn connect(&mut self) -> ConnId {
        let conn = self.router.handle_connect(self.now);
        self.inbox.insert(conn, Vec::new());
        self.poll_outputs();
        conn
    }

    /// Connects and completes a handshake; returns the connection and the welcome.
    #[track_caller]
    pub(super) fn join(&mut self, ch: ChannelId, id: ClientId) -> (ConnId, WelcomeBody) {
        let conn = self.connect();
        self.send(
            conn,
            Header {
                channel_id: ch,
                client_id: id,
                ..Header::new(FrameType::Hello)
            },
            b"",
        );
        let frames = self.take(conn);
        assert_eq!(frames.len(), 1, "expected one welcome, got {frames:?}");
        assert_eq!(frames[0].header.frame_type, FrameType::Welcome);
        if !id.is_nil() {
            assert_eq!(frames[0].header.client_id, id);
        }
        self.channels.insert(conn, ch);
        (
            conn,
            WelcomeBody::decode(&frames[0].payload).expect("welcome body"),
        )
    }

    /// Joins and discards the presence frames the join caused at `others`.
    #[track_caller]
    pub(super) fn join_quietly(
        &mut self,
        ch: ChannelId,
        id: ClientId,
        others: &[ConnId],
    ) -> ConnId {
        let (conn, _) = self.join(ch, id);
        for other in others {
            let frames = self.take(*other);
            assert!(frames
                .iter()
                .all(|f| f.header.frame_type == FrameType::PeerJoined));
        }
        conn
    }

    /// Records the channel a connection joined outside [`Harness::join`].
    pub(super) fn set_channel(&mut self, conn: ConnId, ch: ChannelId) {
        self.channels.insert(conn, ch);
    }

    pub(super) fn channel_of(&self, conn: ConnId) -> ChannelId {
        self.channels.get(&conn).copied().unwrap_or(ChannelId::NIL)
    }

    /// Feeds one frame with the given header (payload length filled in). A HELLO with a nil
    /// request id presents the resume secret of the last WELCOME for its channel and client id,
    /// as a well-behaved client does (use [`Harness::send_as_is`] to present none).
    pub(super) fn send(&mut self, conn: ConnId, mut header: Header, payload: &[u8]) {
        if header.frame_type == FrameType::Hello && header.request_id.is_nil() {
            if let Some(secret) = self.secrets.get(&(header.channel_id, header.client_id)) {
                header.request_id = *secret;
            }
        }
        self.send_as_is(conn, header, payload);
    }

    /// Feeds one frame exactly as given (payload length filled in).
    pub(super) fn send_as_is(&mut self, conn: ConnId, header: Header, payload: &[u8]) {
        let frame = Frame::new(header, Bytes::copy_from_slice(payload));
        self.router.handle_frame(conn, frame, self.now);
        self.poll_outputs();
    }

    pub(super) fn receive(&mut self, conn: ConnId, window: u32) {
        let header = Header {
            channel_id: self.channel_of(conn),
            ..Header::new(FrameType::Receive)
        };
        let frame = Frame::new(header, encode_u32(window));
        self.router.handle_frame(conn, frame, self.now);
        self.poll_outputs();
    }

    /// A stream frame of `kind` with `flags` on the connection's channel.
    #[allow(clippy::too_many_arguments)] // mirrors the header fields a test sets; a builder would hide them
    pub(super) fn stream(
        &mut self,
        conn: ConnId,
        kind: FrameType,
        flags: Flags,
        id: RequestId,
        sequence: u32,
        is_final: bool,
        payload: &[u8],
    ) {
        let header = Header {
            flags,
            channel_id: self.channel_of(conn),
            request_id: id,
            sequence,
            is_final,
            ..Header::new(kind)
        };
        self.send(conn, header, payload);
    }

    /// A one-frame request (START|FINAL) with a timeout.
    pub(super) fn request(&mut self, conn: ConnId, id: RequestId, timeout_ms: u32, body: &[u8]) {
        let header = Header {
            flags: Flags::REQUEST,
            channel_id: self.channel_of(conn),
            request_id: id,
            timeout_ms,
            is_final: true,
            ..Header::new(FrameType::Start)
        };
        self.send(conn, header, body);
    }

    /// A one-frame response (START|FINAL).
    pub(super) fn respond(&mut self, conn: ConnId, id: RequestId, body: &[u8]) {
        self.stream(conn, FrameType::Start, Flags::RESPONSE, id, 0, true, body);
    }

    pub(super) fn control(&mut self, conn: ConnId, kind: FrameType, flags: Flags, id: RequestId) {
        self.stream(conn, kind, flags, id, 0, kind == FrameType::Cancel, b"");
    }

    pub(super) fn disconnect(&mut self, conn: ConnId) {
        self.router.handle_disconnect(conn, self.now);
        self.inbox.remove(&conn);
        self.stalled.remove(&conn);
        self.poll_outputs();
    }

    /// The connection shut its write side (EOF); returns the router's verdict.
    pub(super) fn read_closed(&mut self, conn: ConnId) -> crate::router::ReadClosed {
        let verdict = self.router.handle_read_closed(conn, self.now);
        self.poll_outputs();
        verdict
    }

    pub(super) fn advance(&mut self, ms: u64) {
        self.now += Duration::from_millis(ms);
        self.router.handle_timeout(self.now);
        self.poll_outputs();
    }

    /// A sender and a receiver of channel 1 (clients 0 and 1), the receiver with a window of 1
    /// and stalled: the start of the flow-control and budget scenarios.
    pub(super) fn stalled_pair(&mut self) -> (ConnId, ConnId) {
        let s = self.join_quietly(channel(1), client(0), &[]);
        let r = self.join_quietly(channel(1), client(1), &[s]);
        self.receive(r, 1);
        self.stall(r);
        (s, r)
    }

    /// Makes the connection's socket "stop reading": bytes stay queued in the router.
    pub(super) fn stall(&mut self, conn: ConnId) {
        self.stalled.insert(conn);
    }

    /// The connection reads again: everything queued is written.
    pub(super) fn unstall(&mut self, conn: ConnId) {
        self.stalled.remove(&conn);
        self.flush(conn);
        self.poll_outputs();
    }

    fn flush(&mut self, conn: ConnId) {
        let mut wire = Vec::new();
        write_all_queued(&mut self.router, conn, &mut wire);
        let mut buf = BytesMut::from(&wire[..]);
        // The broker never sends a frame above the max payload it announces (PROTOCOL §9.1):
        // every frame of every test is decoded with that limit.
        let mut decoder = Decoder::new(self.router.config().max_payload);
        while let Some(frame) = decoder
            .decode(&mut buf)
            .expect("the router emits valid frames")
        {
            if frame.header.frame_type == FrameType::Welcome {
                let h = &frame.header;
                self.secrets
                    .insert((h.channel_id, h.client_id), h.request_id);
            }
            if let Some(inbox) = self.inbox.get_mut(&conn) {
                inbox.push(frame);
            }
        }
        assert!(buf.is_empty(), "the router emitted a partial frame");
    }

    fn poll_outputs(&mut self) {
        while let Some(output) = self.router.poll_output() {
            match output {
                Output::Transmit(conn) if !self.stalled.contains(&conn) => self.flush(conn),
                Output::Transmit(_) => {}
                Output::Close(conn) => {
                    self.flush(conn);
                    self.closed.insert(conn);
                }
                Output::Resume(conn) => self.resumed.push(conn),
            }
        }
        self.router.check_invariants();
    }

    /// Everything delivered to `conn` since the last take.
    pub(super) fn take(&mut self, conn: ConnId) -> Vec<Frame> {
        std::mem::take(self.inbox.get_mut(&conn).expect("known connection"))
    }

    #[track_caller]
    pub(super) fn expect_nothing(&mut self, conn: ConnId) {
        let frames = self.take(conn);
        assert!(frames.is_empty(), "expected nothing, got {frames:?}");
    }

    /// Takes exactly one frame and returns it.
    #[track_caller]
    pub(super) fn expect_one(&mut self, conn: ConnId) -> Frame {
        let mut frames = self.take(conn);
        assert_eq!(frames.len(), 1, "expected one frame, got {frames:?}");
        frames.remove(0)
    }

    /// Takes exactly one error frame with this code (and request id) and returns its body.
    #[track_caller]
    pub(super) fn expect_error(
        &mut self,
        conn: ConnId,
        code: ErrorCode,
        id: RequestId,
    ) -> ErrorBody {
        let frame = self.expect_one(conn);
        assert_eq!(frame.header.frame_type, FrameType::Error, "{frame:?}");
        assert_eq!(frame.header.request_id, id);
        let body = ErrorBody::decode(&frame.payload).expect("error body");
        assert_eq!(body.known_code(), Some(code), "{body:?}");
        body
    }

    /// Takes exactly one CANCEL about `id`.
    #[track_caller]
    pub(super) fn expect_cancel(&mut self, conn: ConnId, id: RequestId) -> Frame {
        let frame = self.expect_one(conn);
        assert_eq!(frame.header.frame_type, FrameType::Cancel, "{frame:?}");
        assert_eq!(frame.header.request_id, id);
        frame
    }

    #[track_caller]
    pub(super) fn expect_closed_with(&mut self, conn: ConnId, code: ErrorCode) {
        let body = self.expect_error(conn, code, RequestId::NIL);
        assert!(!body.message.is_empty());
        assert!(self.closed.contains(&conn), "{conn} was not closed");
        assert!(self.router.is_read_paused(conn));
        self.disconnect(conn);
    }

    pub(super) fn stats(&self) -> RouterStats {
        self.router.stats()
    }

    /// Every live count is zero.
    #[track_caller]
    pub(super) fn assert_empty(&self) {
        let s = self.stats();
        assert_eq!(
            (
                s.connections,
                s.channels,
                s.pending_requests,
                s.assignments,
                s.broadcasts,
                s.armed_timers,
                s.buffered_bytes
            ),
            (0, 0, 0, 0, 0, 0, 0),
            "{s:?}"
        );
    }
}

/// Writes every byte queued for `conn` to `wire` through the byte seam: what a socket that takes
/// everything does.
pub(super) fn write_all_queued(router: &mut Router, conn: ConnId, wire: &mut Vec<u8>) {
    while let Some(transmit) = router.poll_transmit(conn) {
        let n = transmit.len();
        for slice in transmit.slices() {
            wire.extend_from_slice(slice);
        }
        router.handle_written(conn, n);
    }
}

/// Writes at most `limit` of the bytes queued for `conn` (the rest stays queued), as a socket
/// with that much room left does. Returns the bytes written.
pub(super) fn write_at_most(router: &mut Router, conn: ConnId, limit: usize) -> usize {
    let mut written = 0;
    while written < limit {
        let Some(transmit) = router.poll_transmit(conn) else {
            break;
        };
        let n = transmit.len().min(limit - written);
        router.handle_written(conn, n);
        written += n;
    }
    written
}
