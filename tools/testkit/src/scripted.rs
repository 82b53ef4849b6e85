//! A scripted broker, for testing the client library against exact frame sequences: the test
//! plays the broker on a real socket, reading and writing frames with the protocol module, with
//! explicit read deadlines ([`DEADLINE`]), never sleeps.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;

use bytes::{Bytes, BytesMut};
use switchyard::client::{Client, ClientOptions};
use switchyard::ids::{ChannelId, ClientId, RequestId};
use switchyard::protocol::{
    encode_error, Decoder, ErrorCode, Flags, Frame, FrameType, Header, WelcomeBody,
};

use crate::{now, DEADLINE};

/// One accepted client connection, seen from the broker's side.
pub struct Peer {
    stream: TcpStream,
    decoder: Decoder,
    buf: BytesMut,
    channel: ChannelId,
}

impl Peer {
    /// Accepts the next connection on `listener`: the client expected to join `channel`.
    ///
    /// # Panics
    /// When accepting fails.
    pub fn accept(listener: &TcpListener, channel: ChannelId) -> Peer {
        let (stream, _) = listener.accept().expect("accepting the client");
        Peer {
            stream,
            decoder: Decoder::new(1 << 20),
            buf: BytesMut::new(),
            channel,
        }
    }

    /// The next frame from the client, within [`DEADLINE`].
    #[track_caller]
    pub fn recv(&mut self) -> Frame {
        self.try_recv()
            .unwrap_or_else(|e| panic!("no frame from the client: {e}"))
    }

    /// The next frame from the client, or the I/O error (timeout, EOF, reset).
    ///
    /// # Panics
    /// When the client sends an undecodable frame.
    pub fn try_recv(&mut self) -> io::Result<Frame> {
        let deadline = now() + DEADLINE;
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(frame) = self
                .decoder
                .decode(&mut self.buf)
                .expect("client sent a valid frame")
            {
                return Ok(frame);
            }
            let left = deadline.saturating_duration_since(now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            self.stream.set_read_timeout(Some(left))?;
            match self.stream.read(&mut chunk)? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Asserts the client closes the connection (EOF or reset) within [`DEADLINE`].
    #[track_caller]
    pub fn expect_closed(&mut self) {
        match self.try_recv() {
            Err(e) if e.kind() == io::ErrorKind::TimedOut => panic!("the client did not close"),
            Err(_) => {}
            Ok(frame) => panic!("expected the connection to close, got {:?}", frame.header),
        }
    }

    /// Sends `frame` to the client.
    pub fn send(&mut self, frame: Frame) {
        let mut out = BytesMut::new();
        switchyard::protocol::encode_frame(&frame, &mut out);
        self.stream.write_all(&out).expect("write to client");
    }

    /// A broker frame on this channel.
    pub fn frame(
        &self,
        frame_type: FrameType,
        flags: Flags,
        id: RequestId,
        seq: u32,
        fin: bool,
        payload: &[u8],
    ) -> Frame {
        let header = Header {
            flags,
            channel_id: self.channel,
            request_id: id,
            sequence: seq,
            is_final: fin,
            ..Header::new(frame_type)
        };
        Frame::new(header, Bytes::copy_from_slice(payload))
    }

    /// Sends `frame` as coming from the client `from`.
    pub fn send_from(&mut self, from: ClientId, mut frame: Frame) {
        frame.header.client_id = from;
        self.send(frame);
    }

    /// Sends an ERROR with `code` about `id` (nil: connection-level), naming `peers`.
    pub fn send_error(&mut self, id: RequestId, code: ErrorCode, peers: &[ClientId]) {
        let payload = encode_error(code as u16, "scripted", peers);
        let frame = self.frame(FrameType::Error, Flags::NONE, id, 0, false, &payload);
        self.send(frame);
    }

    /// Asserts the client's next frame is a PONG to a PING we send now, so nothing else (no
    /// stray CANCEL) was queued before it.
    #[track_caller]
    pub fn expect_quiet(&mut self) {
        let ping = self.frame(
            FrameType::Ping,
            Flags::NONE,
            RequestId::NIL,
            4242,
            false,
            b"",
        );
        self.send(ping);
        let pong = self.recv();
        assert_eq!(
            pong.header.frame_type,
            FrameType::Pong,
            "unexpected {:?}",
            pong.header
        );
        assert_eq!(pong.header.sequence, 4242);
    }
}

/// A WELCOME body with `max_payload`, the given `peers`, timeouts of 1 s (default) and 10 s
/// (max), and no heartbeat.
pub fn welcome(max_payload: u32, peers: Vec<ClientId>) -> WelcomeBody {
    WelcomeBody {
        max_payload,
        default_timeout_ms: 1000,
        max_timeout_ms: 10_000,
        heartbeat_ms: 0,
        peers,
    }
}

/// Connects a client with `options` and completes the handshake; returns the client, the
/// broker's side of the connection, and the HELLO.
pub fn connect_with(options: ClientOptions, body: WelcomeBody) -> (Client, Peer, Header) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let channel = ChannelId::random();
    let connecting = thread::spawn(move || Client::connect_with(addr, channel, options));
    let mut peer = Peer::accept(&listener, channel);
    let hello = peer.recv();
    assert_eq!(hello.header.frame_type, FrameType::Hello);
    assert_eq!(hello.header.channel_id, channel);
    let assigned = if hello.header.client_id.is_nil() {
        ClientId::random()
    } else {
        hello.header.client_id
    };
    let mut frame = peer.frame(
        FrameType::Welcome,
        Flags::NONE,
        RequestId::NIL,
        0,
        false,
        &body.encode(),
    );
    frame.header.client_id = assigned;
    peer.send(frame);
    let client = connecting.join().unwrap().expect("handshake");
    (client, peer, hello.header)
}

/// A client (default options) connected to a scripted broker whose WELCOME allows
/// `max_payload`.
pub fn connect(max_payload: u32) -> (Client, Peer) {
    let (client, peer, _) =
        connect_with(ClientOptions::default(), welcome(max_payload, Vec::new()));
    (client, peer)
}

/// As [`connect`], with reconnection off: losing the connection closes the client (the
/// reconnecting behaviour is tested against a real broker in `tests/reconnect.rs`).
pub fn connect_once(max_payload: u32) -> (Client, Peer) {
    let options = ClientOptions {
        reconnect: None,
        ..ClientOptions::default()
    };
    let (client, peer, _) = connect_with(options, welcome(max_payload, Vec::new()));
    (client, peer)
}

/// Reads a whole request body as the broker: returns the frames.
pub fn recv_stream(peer: &mut Peer) -> Vec<Frame> {
    let mut frames = Vec::new();
    loop {
        let frame = peer.recv();
        let fin = frame.header.is_final;
        frames.push(frame);
        if fin {
            return frames;
        }
    }
}
