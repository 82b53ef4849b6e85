//! A raw frame-level peer: one client connection over a blocking `std::net::TcpStream`, driven
//! frame by frame with no client library in between, for tests of the protocol as the broker
//! speaks it (malformed input, exact frame sequences, flow control).
//!
//! Every read times out after [`DEADLINE`] (the socket's read timeout, changeable per peer);
//! [`RawPeer::barrier`] is the PING round trip that orders a test without sleeping.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use bytes::Bytes;
use switchyard::ids::{ChannelId, ClientId, RequestId};
use switchyard::protocol::{
    encode_u32, ErrorBody, ErrorCode, Flags, Frame, FrameType, Header, WelcomeBody, HEADER_LEN,
};

use crate::DEADLINE;

/// One client connection driven frame by frame, with no client library in between.
pub struct RawPeer {
    stream: TcpStream,
    /// Name used in panic messages.
    pub name: String,
    /// The channel joined by [`RawPeer::hello`] (nil before), used by the frame helpers.
    pub channel: ChannelId,
    /// The client id from the welcome (nil before).
    pub client: ClientId,
    /// The resume secret from the welcome (nil before): what a successor presents to take
    /// this peer's client id over ([`RawPeer::hello_resuming`]).
    pub resume: RequestId,
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
            resume: RequestId::NIL,
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
        self.send_hello_resuming(channel, client, RequestId::NIL);
    }

    /// Sends HELLO presenting `secret` (a resume secret; nil for none) without waiting for the
    /// answer.
    #[track_caller]
    pub fn send_hello_resuming(&mut self, channel: ChannelId, client: ClientId, secret: RequestId) {
        let header = Header {
            client_id: client,
            channel_id: channel,
            request_id: secret,
            ..Header::new(FrameType::Hello)
        };
        self.send(header, &[]);
    }

    /// Handshake presenting `secret` (the resume secret of the id's earlier WELCOME): takes the
    /// id over, or resumes it in its grace period. As [`RawPeer::hello`] otherwise.
    #[track_caller]
    pub fn hello_resuming(
        &mut self,
        channel: ChannelId,
        client: ClientId,
        secret: RequestId,
    ) -> WelcomeBody {
        self.send_hello_resuming(channel, client, secret);
        self.welcome(channel, client)
    }

    /// Handshake: HELLO, then the WELCOME (checked and decoded). Remembers the channel and the
    /// (possibly broker-assigned) client id.
    #[track_caller]
    pub fn hello(&mut self, channel: ChannelId, client: ClientId) -> WelcomeBody {
        self.send_hello(channel, client);
        self.welcome(channel, client)
    }

    /// The WELCOME answering a HELLO for `client` on `channel` (checked and decoded).
    #[track_caller]
    fn welcome(&mut self, channel: ChannelId, client: ClientId) -> WelcomeBody {
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
        assert!(
            !h.request_id.is_nil(),
            "{}: welcome without a resume secret",
            self.name
        );
        self.channel = channel;
        self.client = h.client_id;
        self.resume = h.request_id;
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
