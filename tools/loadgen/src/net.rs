//! The client machinery both back-ends share, so that client overhead is equal on both sides.
//!
//! One [`Net`] is one mio poll loop over every connection of a scenario (requesters, receivers,
//! broadcast peers, idle connections alike): no thread per connection, no task per request.
//!
//! ```text
//!   loop turn:  poll ──▶ now = clock() ──▶ per readable connection: read until WouldBlock,
//!               parse every complete message (Protocol::parse), hand each to the scenario's
//!               handler, which appends its answers to that connection's write buffer
//!               ──▶ flush every connection with bytes queued, once (writes batched per turn)
//! ```
//!
//! # Contract
//! - A back-end is a [`Protocol`]: it writes messages into a `Vec<u8>` and parses them from a
//!   byte slice. Everything else (sockets, buffers, the loop, flushing) is here and identical.
//! - No allocation per message once warm: read buffers grow (doubling) only when a message does
//!   not fit, write buffers keep their capacity, and parsed messages ([`Inbound`]) borrow from
//!   the read buffer. A handler must answer while the borrow lives (it gets the connection's
//!   writer for that purpose): answers always go out on the connection the message came in on.
//! - Sockets are registered once, READABLE | WRITABLE, edge-triggered (as the broker does): a
//!   write that hits `WouldBlock` resumes on the next writable event.
//! - Readiness barrier: every connection ends its setup with a ping; [`Net::unanswered_pings`]
//!   counts pings whose pong has not come back. Both brokers answer in order, so a pong proves
//!   that everything sent before it (handshake, subscriptions, credit) has been processed.

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The one clock read of the load generator: once per loop turn (and at phase boundaries).
#[allow(clippy::disallowed_methods)] // a load generator must read the clock to measure time
pub(crate) fn clock() -> Instant {
    Instant::now()
}

/// First read buffer size of a connection: small, so 10 000 idle connections stay cheap.
const INITIAL_READ_BUF: usize = 4 * 1024;
/// A busy connection's read buffer grows (doubling) when a read fills it, up to this size;
/// beyond it, only a single message larger than the buffer makes it grow.
const MAX_ADAPTIVE_READ_BUF: usize = 256 * 1024;
/// Below this much free space after the unread bytes, the buffer is compacted before a read.
const MIN_READ_SPACE: usize = 2 * 1024;

/// What a connection does in a scenario; decides the back-end's setup messages.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Role {
    /// Sends requests and waits for their responses.
    Requester,
    /// Answers requests; `window` is how many it is ready to hold at once (switchyard credit).
    Receiver { window: u32 },
    /// Sends broadcasts.
    BroadcastSender,
    /// Receives broadcasts (and acks them where the protocol has acks).
    BroadcastPeer,
    /// Connects, completes the handshake and joins (channel / one subscription), then sits idle.
    Idle,
}

/// One parsed message, borrowed from the connection's read buffer.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Inbound<'a> {
    /// The answer to one of our pings (the readiness barrier).
    Pong,
    /// The broker pings us; [`Net`] answers it itself.
    ServerPing,
    /// A request to answer; `reply_to` names where the answer goes (request id / inbox).
    Request { reply_to: &'a [u8], body_len: usize },
    /// The response to our request `tag`.
    Response { tag: u32 },
    /// A broadcast delivered to this peer; `id` names it for the ack.
    Broadcast { id: &'a [u8] },
    /// Every peer acknowledged our broadcast `tag` (switchyard only).
    BroadcastDone { tag: u32 },
    /// The broker reported an error, for one of our requests (`tag`) or the connection.
    Failed { tag: Option<u32>, code: u16 },
    /// Anything the scenarios do not act on (WELCOME, PEER_JOINED, INFO, +OK…).
    Ignored,
}

/// Why a back-end could not make sense of the bytes (the scenario aborts).
#[derive(Debug)]
pub(crate) struct WireError(pub(crate) String);

/// A back-end: one wire protocol, written into and parsed from plain byte buffers.
pub(crate) trait Protocol {
    /// Per-connection protocol state.
    type Session;
    /// True when a broadcast completes with an ack to the sender ([`Inbound::BroadcastDone`]).
    const ACKS_BROADCASTS: bool;

    /// The state of connection number `conn`, in scenario group `group` (switchyard: the
    /// channel; NATS: the subjects).
    fn new_session(&self, conn: usize, group: u32) -> Self::Session;
    /// Handshake and role setup: everything sent before the barrier ping.
    fn write_setup(&self, session: &mut Self::Session, role: Role, out: &mut Vec<u8>);
    /// A ping the broker answers with a pong, in order.
    fn write_ping(&self, session: &mut Self::Session, out: &mut Vec<u8>);
    /// The answer to a broker ping.
    fn write_pong(&self, session: &mut Self::Session, out: &mut Vec<u8>);
    /// A one-message request; `tag` comes back in [`Inbound::Response`].
    fn write_request(&self, session: &mut Self::Session, tag: u32, body: &[u8], out: &mut Vec<u8>);
    /// The one-message response to a request.
    fn write_reply(
        &self,
        session: &mut Self::Session,
        reply_to: &[u8],
        body: &[u8],
        out: &mut Vec<u8>,
    );
    /// A one-message broadcast; with acks, `tag` comes back in [`Inbound::BroadcastDone`].
    fn write_broadcast(
        &self,
        session: &mut Self::Session,
        tag: u32,
        body: &[u8],
        out: &mut Vec<u8>,
    );
    /// A peer's acknowledgement of a broadcast (nothing where the protocol has none).
    fn write_broadcast_ack(&self, session: &mut Self::Session, id: &[u8], out: &mut Vec<u8>);
    /// Parses one message from the front of `buf`: `Ok(Some((message, bytes used)))`, or
    /// `Ok(None)` when `buf` holds no complete message yet.
    ///
    /// # Errors
    /// Bytes that are not this protocol.
    fn parse<'a>(
        &self,
        session: &mut Self::Session,
        buf: &'a [u8],
    ) -> Result<Option<(Inbound<'a>, usize)>, WireError>;
}

/// Unread bytes of one connection: `data[start..end]`; `data` stays initialised, so reads never
/// zero-fill.
struct ReadBuf {
    data: Vec<u8>,
    start: usize,
    end: usize,
}

impl ReadBuf {
    fn new() -> ReadBuf {
        ReadBuf {
            data: vec![0; INITIAL_READ_BUF],
            start: 0,
            end: 0,
        }
    }

    /// Makes room for the next read: drop consumed bytes, compact, or grow when full.
    fn make_room(&mut self) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.data.len() - self.end >= MIN_READ_SPACE {
            return;
        }
        if self.start > 0 {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.data.len() - self.end < MIN_READ_SPACE {
            let grown = self.data.len() * 2;
            self.data.resize(grown, 0);
        }
    }

    /// A read filled all the free space: a busy connection gets a bigger buffer.
    fn grow_if_busy(&mut self) {
        if self.end == self.data.len() && self.data.len() < MAX_ADAPTIVE_READ_BUF {
            let grown = self.data.len() * 2;
            self.data.resize(grown, 0);
        }
    }
}

/// Bytes queued for one connection: `data[sent..]` is still to be written.
struct WriteBuf {
    data: Vec<u8>,
    sent: usize,
}

struct Conn<S> {
    stream: TcpStream,
    rx: ReadBuf,
    tx: WriteBuf,
    session: S,
    /// In [`Net::dirty`] already.
    queued_for_flush: bool,
    /// Pings sent whose pong has not arrived.
    unanswered_pings: u32,
}

/// The writer a handler gets for the connection a message arrived on.
pub(crate) struct Out<'n, P: Protocol> {
    proto: &'n P,
    session: &'n mut P::Session,
    tx: &'n mut Vec<u8>,
}

impl<P: Protocol> Out<'_, P> {
    pub(crate) fn request(&mut self, tag: u32, body: &[u8]) {
        self.proto.write_request(self.session, tag, body, self.tx);
    }

    pub(crate) fn reply(&mut self, reply_to: &[u8], body: &[u8]) {
        self.proto
            .write_reply(self.session, reply_to, body, self.tx);
    }

    pub(crate) fn broadcast(&mut self, tag: u32, body: &[u8]) {
        self.proto.write_broadcast(self.session, tag, body, self.tx);
    }

    pub(crate) fn ack_broadcast(&mut self, id: &[u8]) {
        self.proto.write_broadcast_ack(self.session, id, self.tx);
    }
}

/// One poll loop over many connections to one broker. See the module docs.
pub(crate) struct Net<P: Protocol> {
    proto: P,
    addr: SocketAddr,
    poll: Poll,
    events: Events,
    conns: Vec<Conn<P::Session>>,
    /// Connections with bytes queued, flushed at the end of the turn.
    dirty: Vec<usize>,
    /// Sum of every connection's unanswered pings.
    unanswered_pings: u64,
}

impl<P: Protocol> Net<P> {
    /// An empty loop for connections to `addr`.
    ///
    /// # Errors
    /// Failure to create the poll.
    pub(crate) fn new(proto: P, addr: SocketAddr) -> io::Result<Net<P>> {
        Ok(Net {
            proto,
            addr,
            poll: Poll::new()?,
            events: Events::with_capacity(1024),
            conns: Vec::new(),
            dirty: Vec::new(),
            unanswered_pings: 0,
        })
    }

    /// Number of connections opened so far.
    pub(crate) fn len(&self) -> usize {
        self.conns.len()
    }

    /// Pings still waiting for their pong, over all connections.
    pub(crate) fn unanswered_pings(&self) -> u64 {
        self.unanswered_pings
    }

    /// Opens a connection in `group` with `role`, queues its setup and the barrier ping, and
    /// returns its index. The connect completes in the loop.
    ///
    /// # Errors
    /// The socket or registration error.
    pub(crate) fn open(&mut self, group: u32, role: Role) -> io::Result<usize> {
        let index = self.conns.len();
        let mut stream = TcpStream::connect(self.addr)?;
        stream.set_nodelay(true)?;
        self.poll.registry().register(
            &mut stream,
            Token(index),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let mut session = self.proto.new_session(index, group);
        let mut tx = Vec::with_capacity(256);
        self.proto.write_setup(&mut session, role, &mut tx);
        self.proto.write_ping(&mut session, &mut tx);
        self.unanswered_pings += 1;
        self.conns.push(Conn {
            stream,
            rx: ReadBuf::new(),
            tx: WriteBuf { data: tx, sent: 0 },
            session,
            queued_for_flush: true,
            unanswered_pings: 1,
        });
        self.dirty.push(index);
        Ok(index)
    }

    /// Lets `write` append messages for connection `index`; they go out at the end of the next
    /// turn (or at [`Net::flush`]).
    pub(crate) fn send(&mut self, index: usize, write: impl FnOnce(&mut Out<'_, P>)) {
        let conn = &mut self.conns[index];
        write(&mut Out {
            proto: &self.proto,
            session: &mut conn.session,
            tx: &mut conn.tx.data,
        });
        if !std::mem::replace(&mut conn.queued_for_flush, true) {
            self.dirty.push(index);
        }
    }

    /// One loop turn: flushes what was queued since the last turn, waits up to `timeout` for
    /// readiness, reads and parses everything available, hands each message to `handler(now, connection, message, writer)`, then
    /// flushes. Returns the turn's `now`.
    ///
    /// # Errors
    /// An I/O error on any connection (including the broker closing it) or bytes the protocol
    /// cannot parse: the scenario cannot go on.
    pub(crate) fn turn<H>(
        &mut self,
        timeout: Option<Duration>,
        handler: &mut H,
    ) -> io::Result<Instant>
    where
        H: FnMut(Instant, usize, Inbound<'_>, &mut Out<'_, P>),
    {
        // Whatever was queued outside a turn (kick-offs, refills) goes out before we wait.
        self.flush()?;
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        let now = clock();
        for event in self.events.iter() {
            let index = event.token().0;
            let Some(conn) = self.conns.get_mut(index) else {
                continue;
            };
            if event.is_writable() && !std::mem::replace(&mut conn.queued_for_flush, true) {
                self.dirty.push(index);
            }
            if event.is_readable() || event.is_read_closed() || event.is_error() {
                let queued = read_and_dispatch(
                    &self.proto,
                    conn,
                    index,
                    now,
                    &mut self.unanswered_pings,
                    handler,
                )
                .map_err(|e| io::Error::new(e.kind(), format!("connection {index}: {e}")))?;
                if queued && !std::mem::replace(&mut conn.queued_for_flush, true) {
                    self.dirty.push(index);
                }
            }
        }
        self.flush()?;
        Ok(now)
    }

    /// Writes every connection with bytes queued, until done or `WouldBlock`.
    ///
    /// # Errors
    /// A write error other than `WouldBlock`.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        for index in self.dirty.drain(..) {
            let conn = &mut self.conns[index];
            conn.queued_for_flush = false;
            flush_conn(conn)
                .map_err(|e| io::Error::new(e.kind(), format!("connection {index}: {e}")))?;
        }
        Ok(())
    }
}

/// Reads until `WouldBlock`, dispatching every complete message. Returns true when the handler
/// (or a broker ping) queued bytes to write.
fn read_and_dispatch<P: Protocol, H>(
    proto: &P,
    conn: &mut Conn<P::Session>,
    index: usize,
    now: Instant,
    unanswered_pings: &mut u64,
    handler: &mut H,
) -> io::Result<bool>
where
    H: FnMut(Instant, usize, Inbound<'_>, &mut Out<'_, P>),
{
    let queued_before = conn.tx.data.len();
    loop {
        conn.rx.make_room();
        let end = conn.rx.end;
        match conn.stream.read(&mut conn.rx.data[end..]) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the broker closed the connection",
                ))
            }
            Ok(n) => conn.rx.end += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        loop {
            let unread = &conn.rx.data[conn.rx.start..conn.rx.end];
            let parsed = proto
                .parse(&mut conn.session, unread)
                .map_err(|WireError(why)| io::Error::new(io::ErrorKind::InvalidData, why))?;
            let Some((message, used)) = parsed else {
                break;
            };
            match message {
                Inbound::Pong => {
                    conn.unanswered_pings = conn.unanswered_pings.saturating_sub(1);
                    *unanswered_pings = unanswered_pings.saturating_sub(1);
                }
                Inbound::ServerPing => proto.write_pong(&mut conn.session, &mut conn.tx.data),
                _ => {}
            }
            handler(
                now,
                index,
                message,
                &mut Out {
                    proto,
                    session: &mut conn.session,
                    tx: &mut conn.tx.data,
                },
            );
            conn.rx.start += used;
        }
        conn.rx.grow_if_busy();
    }
    Ok(conn.tx.data.len() != queued_before)
}

fn flush_conn<S>(conn: &mut Conn<S>) -> io::Result<()> {
    let tx = &mut conn.tx;
    while tx.sent < tx.data.len() {
        match conn.stream.write(&tx.data[tx.sent..]) {
            Ok(n) => tx.sent += n,
            // Still connecting, or the socket buffer is full: the writable event resumes us.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    tx.data.clear();
    tx.sent = 0;
    Ok(())
}
