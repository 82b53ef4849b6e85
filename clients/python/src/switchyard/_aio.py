"""The asyncio client: :func:`connect` and :class:`Client`, over the sans-IO ``_session``.

Structure: one :class:`_Link` per TCP (or TLS) connection is an :class:`asyncio.Protocol`; its
``data_received`` feeds the link's :class:`~switchyard._session.Session` and routes each event,
synchronously, to the operation waiting for it (an :class:`~switchyard._inbox.Inbox` or a
future). No reader task, no lock: everything runs on the event loop's thread, and every frame is
written with one ``transport.write`` call, so frames never interleave.

Invariants (as the Rust client's ``lib.rs``):

- An operation registers its route *before* its first frame is written, so no answer arrives
  unrouted; it keeps the link it was registered on and writes only there (a frame of an
  operation started on one connection never goes out on the next: at-most-once).
- Every wait is bounded or wakeable: waits for the broker use the operation's timeout plus a
  grace period (``deadline_grace``); losing the link fails every route of that link at once
  (:class:`ConnectionLost`); closing the client wakes every waiter with the reason.
- An operation that ends on the client side without the broker knowing (local deadline, task
  cancelled, a failing body iterator) sends the CANCEL of its direction.
- Reconnection (``reconnect``): the link is re-established with exponential backoff and jitter
  under the same client id, and the receive window is re-issued first. Operations in flight fail
  with :class:`ConnectionLost` (never retried), new ones fail with :class:`Reconnecting` until
  the link is back; ``requests()``/``broadcasts()``/``presence()`` iterations go on. There is no
  reconnect after REPLACED, UNAUTHORIZED, a protocol error or TLS failure, nor after
  :meth:`Client.close`.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import random
import ssl as _ssl
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import (
    Any,
    AsyncIterable,
    AsyncIterator,
    Deque,
    Dict,
    Iterable,
    List,
    Optional,
    Union,
)

from . import _protocol as p
from . import _session as s
from ._errors import (
    BrokerError,
    Cancelled,
    Closed,
    ConnectFailed,
    ConnectionLost,
    ErrorCode,
    GoingAway,
    LimitExceeded,
    NotASwitchyardBroker,
    ProtocolError,
    Reconnecting,
    SwitchyardError,
    Timeout,
)
from ._inbox import Inbox

log = logging.getLogger("switchyard")

Body = Union[bytes, bytearray, memoryview]
BodySource = Union[Body, Iterable[bytes], AsyncIterable[bytes]]


@dataclass(frozen=True)
class ReconnectPolicy:
    """How a client reconnects after losing its link. The delay before attempt ``n`` (1-based)
    is ``min(initial_delay * multiplier**(n-1), max_delay)``, shortened by a random fraction of
    at most ``jitter`` of itself. ``max_attempts=None`` never gives up. Times in seconds."""

    initial_delay: float = 0.1
    max_delay: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.5
    max_attempts: Optional[int] = None

    def delay(self, attempt: int) -> float:
        """The delay before attempt number ``attempt`` (1-based)."""
        nominal = min(
            self.initial_delay * max(self.multiplier, 1.0) ** (attempt - 1), self.max_delay
        )
        jitter = min(max(self.jitter, 0.0), 1.0)
        return float(nominal * (1.0 - jitter * random.random()))


class ConnectionState(enum.Enum):
    """The client's link to the broker."""

    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


@dataclass(frozen=True)
class PresenceEvent:
    """A peer joined (``joined=True``) or left the channel."""

    peer: uuid.UUID
    joined: bool


@dataclass(frozen=True)
class PresenceResync:
    """The broker dropped presence events while this client was behind (PRESENCE_OVERFLOW,
    PROTOCOL.md §8): the events so far may miss some. The client has asked for the peer list
    again; when the answer arrives, :class:`PresenceEvent` s follow for the difference, so the
    events still add up to :attr:`Client.known_peers`."""


#: What :meth:`Client.next_presence` and :meth:`Client.presence` yield.
PresenceChange = Union[PresenceEvent, PresenceResync]


@dataclass(frozen=True)
class _Chunk:
    data: bytes
    end: bool
    peer: Optional[uuid.UUID] = None


_Item = Union[_Chunk, SwitchyardError]


@dataclass(frozen=True)
class Options:
    """Connection options (see :func:`connect`)."""

    token: bytes = b""
    ssl: Optional[_ssl.SSLContext] = None
    server_hostname: Optional[str] = None
    client_id: Optional[uuid.UUID] = None
    connect_timeout: float = 5.0
    deadline_grace: float = 2.0
    heartbeat_misses: int = 3
    reconnect: Optional[ReconnectPolicy] = field(default_factory=ReconnectPolicy)
    broadcast_queue: int = 1024
    presence_queue: int = 1024
    #: 16 bytes presented from the first HELLO on (PROTOCOL.md §5); ``None``: the secret of the
    #: first WELCOME. See :func:`connect`.
    resume_secret: Optional[bytes] = None


def _timeout_ms(timeout: Optional[float]) -> int:
    """Seconds → the START's ``timeout_ms`` (0 = the broker's default; at least 1 otherwise)."""
    if timeout is None or timeout <= 0:
        return 0
    return max(1, min(math.ceil(timeout * 1000), 0xFFFF_FFFF))


def _recoverable(reason: Optional[SwitchyardError]) -> bool:
    """Whether a link lost for ``reason`` is worth a new connection (``reconnect.rs``)."""
    if reason is None or isinstance(reason, (ConnectionLost, Timeout, GoingAway, ConnectFailed)):
        return True
    if isinstance(reason, LimitExceeded):
        return True
    return isinstance(reason, BrokerError) and reason.code == ErrorCode.HEARTBEAT_TIMEOUT


class _Link(asyncio.Protocol):
    """One connection: its transport, its session, and the routes of operations on it."""

    def __init__(self, client: "Client", session: s.Session) -> None:
        self.client = client
        self.session = session
        self.transport: Optional[asyncio.Transport] = None
        self.dead: Optional[SwitchyardError] = None
        self.welcome: "asyncio.Future[s.Welcome]" = asyncio.get_running_loop().create_future()
        self.lost: "asyncio.Future[None]" = asyncio.get_running_loop().create_future()
        self._writable = asyncio.Event()
        self._writable.set()
        self.responses: Dict[uuid.UUID, Inbox[_Item]] = {}
        self.incoming: Dict[uuid.UUID, "IncomingRequest"] = {}
        self.broadcasts: Dict[uuid.UUID, "asyncio.Future[int]"] = {}
        self.pings: Dict[int, "asyncio.Future[None]"] = {}
        self.peer_waiters: Deque["asyncio.Future[List[uuid.UUID]]"] = deque()
        self.received_any = False
        self._heard = True
        self._unanswered = 0
        self._timer: Optional[asyncio.TimerHandle] = None

    # ----- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        self._heard = True
        self._unanswered = 0
        events = self.session.receive_data(data)
        self._flush_output()
        for event in events:
            if self.dead is not None:
                return
            self.client._dispatch(self, event)

    def eof_received(self) -> Optional[bool]:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        self._writable.set()
        if self.dead is None:
            if not self.session.welcomed and not self.welcome.done():
                if self.received_any:
                    error: SwitchyardError = NotASwitchyardBroker(
                        "the server closed the connection without a WELCOME "
                        "(not a switchyard broker?)"
                    )
                else:
                    error = ConnectFailed(
                        f"the connection closed before the WELCOME"
                        f"{': ' + str(exc) if exc else ''}"
                    )
                self.fail(error)
            else:
                self.fail(ConnectionLost(f"connection lost{': ' + str(exc) if exc else ''}"))

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # ----- writing ---------------------------------------------------------------------------

    def _flush_output(self) -> None:
        if self.session.output:
            frames, self.session.output = self.session.output, []
            self.write(b"".join(frames))

    def write(self, data: bytes) -> None:
        """Writes whole frames now; raises the link's failure when it is down."""
        if self.dead is not None or self.transport is None or self.transport.is_closing():
            raise self.dead if self.dead is not None else ConnectionLost()
        if data:
            self.transport.write(data)

    def write_quietly(self, data: Optional[bytes]) -> None:
        """Writes a frame nobody waits on (a CANCEL, an ACK); a dead link is ignored."""
        if data and self.dead is None and self.transport and not self.transport.is_closing():
            self.transport.write(data)

    async def send(self, frames: List[bytes]) -> None:
        """Writes ``frames``, waiting for the transport's buffer to drain between them."""
        for frame in frames:
            self.write(frame)
            if not self._writable.is_set():
                await self._writable.wait()
        if self.dead is not None:
            raise self.dead

    # ----- heartbeat -------------------------------------------------------------------------

    def start_heartbeat(self, interval_ms: int, misses: int) -> None:
        """Watches the broker: PING after each silent interval; after ``misses`` unanswered
        ones, the link is declared dead (a half-open or hung broker)."""
        if interval_ms <= 0:
            return
        loop = asyncio.get_running_loop()
        interval = interval_ms / 1000.0

        def tick() -> None:
            if self.dead is not None:
                return
            if self._heard:
                self._heard = False
            else:
                self._unanswered += 1
                if self._unanswered > misses:
                    self.fail(Timeout("the broker did not answer the heartbeat"))
                    return
                _, frame = self.session.ping_frame()
                self.write_quietly(frame)
            self._timer = loop.call_later(interval, tick)

        self._timer = loop.call_later(interval, tick)

    # ----- failure ---------------------------------------------------------------------------

    def fail(self, reason: SwitchyardError) -> None:
        """Ends the link for ``reason`` (the first call wins): aborts the transport, fails
        every route, tells the client."""
        if self.dead is not None:
            return
        self.dead = reason
        if self._timer is not None:
            self._timer.cancel()
        if self.transport is not None:
            self.transport.abort()
        if not self.welcome.done():
            self.welcome.set_exception(reason)
            self.welcome.exception()  # mark retrieved: the caller may be gone already
        self._writable.set()
        self.client._link_down(self, reason)

    def fail_routes(self, error: SwitchyardError) -> None:
        """Fails every operation routed on this link with ``error``."""
        for inbox in self.responses.values():
            inbox.put(error)
        self.responses.clear()
        for request in self.incoming.values():
            request._fail(error)
        self.incoming.clear()
        for fut in list(self.broadcasts.values()) + list(self.pings.values()):
            if not fut.done():
                fut.set_exception(error)
        self.broadcasts.clear()
        self.pings.clear()
        while self.peer_waiters:
            waiter = self.peer_waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)


class Response:
    """The response to a request: an async iterator of the body's chunks (``bytes``), as they
    arrive. :meth:`read` collects them. Leaving it unread past the deadline, or cancelling the
    task reading it, sends the request's CANCEL."""

    def __init__(self, link: _Link, request_id: uuid.UUID, inbox: Inbox[_Item], deadline: float):
        self._link = link
        self._inbox = inbox
        self._deadline = deadline
        self._done = False
        self._sender: Optional["asyncio.Task[None]"] = None
        #: The request's id.
        self.request_id = request_id
        #: The receiver that answered, once the response started.
        self.responder: Optional[uuid.UUID] = None

    def __aiter__(self) -> "Response":
        return self

    async def __anext__(self) -> bytes:
        while not self._done:
            try:
                item = await self._inbox.get(self._deadline)
            except Timeout:
                self._abandon()
                raise Timeout("no complete response within the timeout (plus grace)") from None
            except BaseException:
                self._abandon()
                raise
            if isinstance(item, SwitchyardError):
                self._finish()
                raise item
            if item.peer is not None:
                self.responder = item.peer
            if item.end:
                self._finish()
            if item.data:
                return item.data
        raise StopAsyncIteration

    async def read(self) -> bytes:
        """The whole (remaining) response body."""
        parts = [chunk async for chunk in self]
        return b"".join(parts)

    async def cancel(self) -> None:
        """Abandons the request: sends its CANCEL unless it already ended."""
        self._abandon()

    aclose = cancel

    def _finish(self) -> None:
        self._done = True
        self._link.responses.pop(self.request_id, None)

    def _abandon(self) -> None:
        if not self._done:
            self._done = True
            self._link.responses.pop(self.request_id, None)
            self._link.write_quietly(self._link.session.cancel_request_frame(self.request_id))
        if self._sender is not None and not self._sender.done():
            self._sender.cancel()


class IncomingRequest:
    """A request assigned to this client. Read it with :meth:`body` or ``async for chunk in
    req``; answer with :meth:`respond` or :meth:`respond_stream`, or give up with
    :meth:`cancel`. ``timeout`` is the time (s) that was left when it arrived."""

    def __init__(self, link: _Link, request_id: uuid.UUID, sender: uuid.UUID, timeout_ms: int):
        self._link = link
        self._inbox: Inbox[_Item] = Inbox()
        self._body_done = False
        self._failure: Optional[SwitchyardError] = None
        self._ended = asyncio.Event()
        self.id = request_id
        self.sender = sender
        self.timeout = timeout_ms / 1000.0

    def __repr__(self) -> str:
        return f"IncomingRequest(id={self.id}, sender={self.sender})"

    def _fail(self, error: SwitchyardError) -> None:
        if self._failure is None:
            self._failure = error
        self._inbox.put(error)
        self._ended.set()

    @property
    def cancelled(self) -> bool:
        """True once the request ended without our response (the sender cancelled, it timed
        out, or the link was lost)."""
        return self._failure is not None

    async def wait_cancelled(self, timeout: Optional[float] = None) -> SwitchyardError:
        """Waits until the request is cancelled (see :attr:`cancelled`) and returns why;
        :class:`Timeout` after ``timeout`` s. For a worker that wants to stop early."""
        await _wait_event(self._ended, timeout)
        if self._failure is None:
            raise Timeout("the request was not cancelled in time")
        return self._failure

    def __aiter__(self) -> "IncomingRequest":
        return self

    async def __anext__(self) -> bytes:
        while not self._body_done:
            item = await self._inbox.get()
            if isinstance(item, SwitchyardError):
                self._body_done = True
                raise item
            if item.end:
                self._body_done = True
            if item.data:
                return item.data
        raise StopAsyncIteration

    async def body(self) -> bytes:
        """The whole (remaining) request body. Raises :class:`Cancelled` if the sender gave up
        (or the request timed out) meanwhile."""
        return b"".join([chunk async for chunk in self])

    def _check(self) -> None:
        if self._failure is not None:
            raise self._failure
        if not self._link.session.is_incoming(self.id):
            raise self._link.dead or Cancelled("the request already ended")

    async def respond(self, body: Body = b"") -> None:
        """Sends the whole response (split into frames of at most the broker's max payload)."""
        self._check()
        frames = self._link.session.response_frames(self.id, bytes(body), True)
        self._link.incoming.pop(self.id, None)
        await self._link.send(frames)

    async def respond_stream(self, chunks: Union[Iterable[bytes], AsyncIterable[bytes]]) -> None:
        """Sends the response from ``chunks`` as they come (the last frame is the FINAL); if
        the iterable fails, the request is cancelled and the error re-raised."""
        try:
            async for chunk in _aiter(chunks):
                self._check()
                await self._link.send(self._link.session.response_frames(self.id, chunk, False))
            self._check()
        except BaseException:
            await self.cancel()
            raise
        await self.respond(b"")

    async def cancel(self) -> None:
        """Gives the request up: the sender gets CANCEL (nothing if it already ended)."""
        self._link.incoming.pop(self.id, None)
        self._link.write_quietly(self._link.session.cancel_incoming_frame(self.id))


class Broadcast:
    """A broadcast received in full: ``id``, ``sender``, ``body``. Its ACK is sent by
    :meth:`ack`, which the iteration does for you unless ``auto_ack=False`` (the Rust client
    acks when the application takes the broadcast)."""

    def __init__(self, link: _Link, request_id: uuid.UUID, sender: uuid.UUID, body: bytes):
        self._link = link
        self.id = request_id
        self.sender = sender
        self.body = body

    def __repr__(self) -> str:
        return f"Broadcast(id={self.id}, sender={self.sender}, {len(self.body)} bytes)"

    def _owed(self) -> bool:
        return self._link.dead is None and self._link.session.ack_owed(self.id)

    async def ack(self) -> None:
        """Acknowledges it (once; later calls, or a broadcast the broker already ended, do
        nothing)."""
        self._link.write_quietly(self._link.session.ack_frame(self.id))


async def _aiter(source: Union[Iterable[bytes], AsyncIterable[bytes]]) -> AsyncIterator[bytes]:
    if hasattr(source, "__aiter__"):
        async for chunk in source:
            yield bytes(chunk)
    else:
        for chunk in source:
            yield bytes(chunk)


class Client:
    """One connection to the broker, joined to one channel. Create with :func:`connect`.

    Any number of operations may run at once from any number of tasks; they are multiplexed
    over the connection by request id. Use ``async with`` or :meth:`close`.
    """

    def __init__(self, address: p.Address, channel: uuid.UUID, options: Options) -> None:
        self._address = address
        self._channel = channel
        self._options = options
        self._client_id = options.client_id
        #: Presented by every HELLO (PROTOCOL.md §5): the configured secret, else the first
        #: WELCOME's (the broker keeps it for the id's life, or adopts it when the id is free).
        self._resume = (
            uuid.UUID(bytes=options.resume_secret) if options.resume_secret is not None else p.NIL
        )
        self._link: Optional[_Link] = None
        self._limits = p.Limits()
        self._closed: Optional[SwitchyardError] = None
        self._state = ConnectionState.RECONNECTING
        self._connected = asyncio.Event()
        self._window = 0
        self._reconnector: Optional["asyncio.Task[None]"] = None
        self._requests: Inbox[IncomingRequest] = Inbox()
        self._broadcasts: Inbox[Broadcast] = Inbox(options.broadcast_queue)
        self._presence: Inbox[PresenceChange] = Inbox(options.presence_queue, drop_oldest=True)
        self._peers: List[uuid.UUID] = []
        self._ssl: Optional[_ssl.SSLContext] = options.ssl
        if address.tls and self._ssl is None:
            self._ssl = _ssl.create_default_context()

    # ----- properties ------------------------------------------------------------------------

    @property
    def client_id(self) -> uuid.UUID:
        """This client's id (stable across reconnects)."""
        assert self._client_id is not None
        return self._client_id

    @property
    def resume_secret(self) -> bytes:
        """The 16-byte secret that proves this client's id (PROTOCOL.md §5): give it as
        ``resume_secret`` to :func:`connect` with the same ``client_id`` to take the id over from
        another process. Keep it as secret as a token."""
        return self._resume.bytes

    @property
    def channel_id(self) -> uuid.UUID:
        """The channel's id."""
        return self._channel

    @property
    def limits(self) -> p.Limits:
        """The limits of the last WELCOME."""
        return self._limits

    @property
    def state(self) -> ConnectionState:
        """Connected, reconnecting, or closed."""
        return self._state

    @property
    def known_peers(self) -> List[uuid.UUID]:
        """The other peers, as last reported (WELCOME, presence events, PEERS answers)."""
        return list(self._peers)

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # ----- connection ------------------------------------------------------------------------

    async def _open_link(self) -> _Link:
        """Connects, sends HELLO and waits for the WELCOME, within ``connect_timeout``."""
        loop = asyncio.get_running_loop()
        session = s.Session(self._channel, self._client_id)
        link = _Link(self, session)
        opts = self._options
        host = self._address.host
        try:
            await asyncio.wait_for(
                loop.create_connection(
                    lambda: link,
                    host,
                    self._address.port,
                    ssl=self._ssl,
                    server_hostname=(opts.server_hostname or host) if self._ssl else None,
                ),
                opts.connect_timeout,
            )
        except asyncio.TimeoutError:
            raise ConnectFailed(f"connecting to {host}:{self._address.port} timed out") from None
        except _ssl.SSLError as exc:
            raise ConnectFailed(f"TLS handshake with {host}:{self._address.port} failed: {exc}")
        except OSError as exc:
            raise ConnectFailed(f"could not connect to {host}:{self._address.port}: {exc}")
        link.write(session.hello_frame(opts.token, self._resume))
        try:
            welcome = await asyncio.wait_for(asyncio.shield(link.welcome), opts.connect_timeout)
        except asyncio.TimeoutError:
            what = (
                "sent bytes that are not a WELCOME"
                if link.received_any
                else "did not answer the HELLO"
            )
            link.fail(ConnectFailed("connect timed out"))
            cls = NotASwitchyardBroker if link.received_any else Timeout
            raise cls(
                f"{host}:{self._address.port} {what} within {opts.connect_timeout} s "
                f"(is it a switchyard broker?)"
            ) from None
        except BaseException:
            link.fail(Closed("connect abandoned"))
            raise
        self._client_id = welcome.client_id
        if self._resume == p.NIL:
            self._resume = welcome.resume
        self._limits = welcome.limits
        self._peers = [peer for peer in welcome.peers]
        link.start_heartbeat(welcome.limits.heartbeat_ms, opts.heartbeat_misses)
        return link

    def _install(self, link: _Link) -> None:
        if self._window:
            link.write(link.session.receive_frame(self._window))
        self._link = link
        self._state = ConnectionState.CONNECTED
        self._connected.set()

    def _link_down(self, link: _Link, reason: SwitchyardError) -> None:
        """Called once per link when it ends (from :meth:`_Link.fail`)."""
        if link is not self._link:
            link.fail_routes(self._closed or reason)
            return
        self._link = None
        self._connected.clear()
        if self._closed is not None:
            link.fail_routes(self._closed)
            return
        policy = self._options.reconnect
        if policy is not None and _recoverable(reason):
            log.info("link to the broker lost (%s); reconnecting", reason)
            link.fail_routes(ConnectionLost(f"the connection was lost ({reason.message})"))
            self._state = ConnectionState.RECONNECTING
            self._reconnector = asyncio.get_running_loop().create_task(self._reconnect(policy))
        else:
            link.fail_routes(reason)
            self._close_now(reason)

    async def _reconnect(self, policy: ReconnectPolicy) -> None:
        attempt = 0
        while self._closed is None:
            attempt += 1
            if policy.max_attempts is not None and attempt > policy.max_attempts:
                self._close_now(ConnectionLost("reconnection attempts exhausted"))
                return
            await asyncio.sleep(policy.delay(attempt))
            if self._closed is not None:
                return
            try:
                link = await self._open_link()
            except SwitchyardError as exc:
                if not _recoverable(exc) and not isinstance(exc, NotASwitchyardBroker):
                    self._close_now(exc)
                    return
                log.debug("reconnect attempt %d failed: %s", attempt, exc)
                continue
            if self._closed is not None:
                link.fail(self._closed)
                return
            try:
                self._install(link)
            except SwitchyardError:
                continue
            log.info("reconnected to the broker after %d attempt(s)", attempt)
            return

    def _close_now(self, reason: SwitchyardError) -> None:
        if self._closed is not None:
            return
        self._closed = reason
        self._state = ConnectionState.CLOSED
        self._connected.set()  # wake wait_connected (it then raises the reason)
        self._requests.close(reason)
        self._broadcasts.close(reason)
        self._presence.close(reason)
        if self._link is not None:
            self._link.fail(reason)
        if self._reconnector is not None and self._reconnector is not _current_task():
            self._reconnector.cancel()

    async def close(self) -> None:
        """Closes the client: every operation and iteration ends with :class:`Closed` (the
        iterations simply stop). Idempotent."""
        link = self._link
        self._close_now(Closed())
        if link is not None and link.transport is not None:
            await asyncio.wait({link.lost}, timeout=1.0)

    async def wait_connected(self, timeout: Optional[float] = None) -> None:
        """Returns once the link is up (at once when it is); raises the close reason if the
        client closes, :class:`Timeout` after ``timeout`` s."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            if self._closed is not None:
                raise self._closed
            if self._link is not None:
                return
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                raise Timeout("not reconnected in time")
            await _wait_event(self._connected, remaining)

    def _current(self) -> _Link:
        if self._closed is not None:
            raise self._closed
        link = self._link
        if link is None:
            raise Reconnecting()
        if link.session.going_away:
            raise GoingAway()
        return link

    def _deadline(self, timeout: Optional[float]) -> float:
        limits = self._limits
        effective = timeout if timeout is not None and timeout > 0 else None
        if effective is None:
            effective = limits.default_timeout_ms / 1000.0
        if limits.max_timeout_ms:
            effective = min(effective, limits.max_timeout_ms / 1000.0)
        return asyncio.get_running_loop().time() + effective + self._options.deadline_grace

    # ----- event routing ---------------------------------------------------------------------

    def _dispatch(self, link: _Link, event: s.Event) -> None:
        if isinstance(event, s.ResponseData):
            inbox = link.responses.get(event.request_id)
            if inbox is not None:
                inbox.put(_Chunk(event.data, event.end, event.responder))
                if event.end:
                    del link.responses[event.request_id]
        elif isinstance(event, s.ResponseFailed):
            inbox = link.responses.pop(event.request_id, None)
            if inbox is not None:
                inbox.put(event.error)
        elif isinstance(event, s.RequestData):
            if event.start:
                request = IncomingRequest(link, event.request_id, event.sender, event.timeout_ms)
                link.incoming[event.request_id] = request
                request._inbox.put(_Chunk(event.data, event.end))
                self._requests.put(request)
            else:
                found = link.incoming.get(event.request_id)
                if found is not None:
                    found._inbox.put(_Chunk(event.data, event.end))
        elif isinstance(event, s.RequestFailed):
            gone = link.incoming.pop(event.request_id, None)
            if gone is not None:
                gone._fail(event.error)
        elif isinstance(event, s.BroadcastReceived):
            item = Broadcast(link, event.request_id, event.sender, event.body)
            if not self._broadcasts.put(item):
                log.debug("broadcast queue full; %s dropped without ACK", event.request_id)
        elif isinstance(event, s.BroadcastDone):
            fut = link.broadcasts.pop(event.request_id, None)
            if fut is not None and not fut.done():
                if event.error is not None:
                    fut.set_exception(event.error)
                else:
                    fut.set_result(event.acked)
        elif isinstance(event, s.Presence):
            if event.joined and event.peer not in self._peers:
                self._peers.append(event.peer)
            elif not event.joined and event.peer in self._peers:
                self._peers.remove(event.peer)
            self._presence.put(PresenceEvent(event.peer, event.joined))
        elif isinstance(event, s.PresenceResync):
            # The session asked PEERS again; the difference follows as Presence events.
            self._presence.put(PresenceResync())
        elif isinstance(event, s.PeersAnswer):
            self._peers = list(event.peers)
            if link.peer_waiters:
                waiter = link.peer_waiters.popleft()
                if not waiter.done():
                    waiter.set_result(list(event.peers))
        elif isinstance(event, s.Pong):
            ping = link.pings.pop(event.sequence, None)
            if ping is not None and not ping.done():
                ping.set_result(None)
        elif isinstance(event, s.Welcome):
            if not link.welcome.done():
                link.welcome.set_result(event)
        elif isinstance(event, s.GoingAwayNotice):
            log.info("the broker is going away: %s", event.message)
        elif isinstance(event, s.ConnectionFailed):
            link.fail(event.error)
        # BroadcastCancelled: nothing routed; the queued Broadcast sees it owes no ACK.

    # ----- request / reply -------------------------------------------------------------------

    async def request(
        self, body: Body = b"", *, timeout: Optional[float] = None, no_wait: bool = False
    ) -> bytes:
        """Sends a request and returns the whole response body.

        ``timeout`` (s) bounds waiting for a receiver and for the complete response (``None``:
        the broker's default); ``no_wait`` fails at once with :class:`NoReceiver` when no
        receiver has a free slot. Raises :class:`NoReceiver`, :class:`Timeout`,
        :class:`PeerGone`, :class:`Cancelled`, :class:`LimitExceeded`,
        :class:`ConnectionLost`, :class:`Reconnecting`, ...
        """
        response = await self.request_stream(bytes(body), timeout=timeout, no_wait=no_wait)
        return await response.read()

    async def request_stream(
        self, body: BodySource, *, timeout: Optional[float] = None, no_wait: bool = False
    ) -> Response:
        """Sends a request whose body is ``bytes`` or an (async) iterable of ``bytes`` chunks
        (sent as they come, in frames of at most the broker's max payload), and returns the
        :class:`Response` at once: an async iterator of the response's chunks. The response may
        start before the request body is complete."""
        link = self._current()
        rid = link.session.start_request(_timeout_ms(timeout), no_wait)
        inbox: Inbox[_Item] = Inbox()
        link.responses[rid] = inbox
        response = Response(link, rid, inbox, self._deadline(timeout))
        if isinstance(body, (bytes, bytearray, memoryview)):
            try:
                await link.send(link.session.body_frames(rid, bytes(body), True))
            except BaseException:
                response._abandon()
                raise
        else:
            response._sender = asyncio.get_running_loop().create_task(
                self._pump(link, rid, response, body)
            )
        return response

    async def _pump(
        self,
        link: _Link,
        rid: uuid.UUID,
        response: Response,
        body: Union[Iterable[bytes], AsyncIterable[bytes]],
    ) -> None:
        try:
            async for chunk in _aiter(body):
                await link.send(link.session.body_frames(rid, chunk, False))
            await link.send(link.session.body_frames(rid, b"", True))
        except asyncio.CancelledError:
            raise
        except SwitchyardError:
            pass  # the response reports the link's failure
        except Exception as exc:  # the body iterator failed: cancel, tell the reader
            inbox = link.responses.get(rid)
            response._abandon()
            if inbox is not None:
                inbox.put(Cancelled(f"the request body failed: {exc!r}"))

    async def set_receive_window(self, window: int) -> None:
        """How many requests this client holds at once (0 stops new assignments; held ones
        finish normally). Re-issued after every reconnect."""
        if not 0 <= window <= 0xFFFF_FFFF:
            raise ValueError("the window is 0 ..= 2^32 - 1")
        if self._closed is not None:
            raise self._closed
        self._window = window
        if self._link is not None:
            self._link.write(self._link.session.receive_frame(window))

    async def next_request(self, timeout: Optional[float] = None) -> IncomingRequest:
        """The next request assigned to this client (after :meth:`set_receive_window`)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            request = await self._requests.get(deadline)
            if request._link.dead is None and request._link.session.is_incoming(request.id):
                return request

    def requests(self, window: Optional[int] = None) -> AsyncIterator[IncomingRequest]:
        """``async for req in client.requests(window=4)``: sets the receive window (when
        given), then yields requests as they are assigned; ends when the client is closed."""
        return _Iter(self, self.next_request, window)

    # ----- broadcast -------------------------------------------------------------------------

    async def broadcast(self, body: Body = b"", *, timeout: Optional[float] = None) -> int:
        """Sends ``body`` to every other peer of the channel; returns how many acknowledged
        (all of them). Raises :class:`NoPeers`, :class:`BroadcastIncomplete` (``.missing``)."""
        link = self._current()
        rid = link.session.start_broadcast(_timeout_ms(timeout))
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        link.broadcasts[rid] = fut
        deadline = self._deadline(timeout)
        try:
            await link.send(link.session.body_frames(rid, bytes(body), True))
            remaining = deadline - asyncio.get_running_loop().time()
            done, _ = await asyncio.wait({fut}, timeout=max(remaining, 0))
            if not done:
                raise Timeout("no broadcast outcome within the timeout (plus grace)")
            return fut.result()
        except BaseException:
            if link.broadcasts.pop(rid, None) is not None:
                link.write_quietly(link.session.cancel_request_frame(rid))
            raise

    async def next_broadcast(
        self, timeout: Optional[float] = None, *, auto_ack: bool = True
    ) -> Broadcast:
        """The next broadcast received in full (acked on return unless ``auto_ack=False``)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            item = await self._broadcasts.get(deadline)
            if item._owed():
                if auto_ack:
                    await item.ack()
                return item

    def broadcasts(self, *, auto_ack: bool = True) -> AsyncIterator[Broadcast]:
        """``async for msg in client.broadcasts()``; ends when the client is closed."""

        async def next_one(timeout: Optional[float] = None) -> Broadcast:
            return await self.next_broadcast(timeout, auto_ack=auto_ack)

        return _Iter(self, next_one, None)

    # ----- presence, peers, ping -------------------------------------------------------------

    async def next_presence(self, timeout: Optional[float] = None) -> PresenceChange:
        """The next presence change (the oldest is dropped beyond ``presence_queue``): a
        :class:`PresenceEvent`, or a :class:`PresenceResync` after the broker dropped some."""
        loop = asyncio.get_running_loop()
        return await self._presence.get(None if timeout is None else loop.time() + timeout)

    def presence(self) -> AsyncIterator[PresenceChange]:
        """``async for ev in client.presence()``; ends when the client is closed."""
        return _Iter(self, self.next_presence, None)

    async def peers(self, timeout: float = 5.0) -> List[uuid.UUID]:
        """Asks the broker for the channel's other peers (departed ones within their presence
        grace period included)."""
        link = self._current()
        fut: asyncio.Future[List[uuid.UUID]] = asyncio.get_running_loop().create_future()
        link.peer_waiters.append(fut)  # stays queued on timeout: answers come in order
        link.write(link.session.peers_frame())
        done, _ = await asyncio.wait({fut}, timeout=timeout)
        if not done:
            fut.cancel()
            raise Timeout("no PEERS answer in time")
        return fut.result()

    async def ping(self, timeout: float = 5.0) -> float:
        """Round trip to the broker, in seconds."""
        link = self._current()
        loop = asyncio.get_running_loop()
        seq, frame = link.session.ping_frame()
        fut: asyncio.Future[None] = loop.create_future()
        link.pings[seq] = fut
        started = loop.time()
        link.write(frame)
        done, _ = await asyncio.wait({fut}, timeout=timeout)
        if not done:
            link.pings.pop(seq, None)
            raise Timeout("no PONG in time")
        fut.result()
        return loop.time() - started


async def _wait_event(event: asyncio.Event, timeout: Optional[float]) -> None:
    """Waits for ``event`` at most ``timeout`` s (``None``: forever); never raises a timeout."""
    if event.is_set():
        return
    task = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({task}, timeout=timeout)
    finally:
        task.cancel()


def _current_task() -> Optional["asyncio.Task[Any]"]:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


class _Iter(AsyncIterator[Any]):
    """An iteration over one of the client's queues; stops when the client was closed by
    :meth:`Client.close`, raises any other close reason."""

    def __init__(self, client: Client, next_item: Any, window: Optional[int]) -> None:
        self._client = client
        self._next = next_item
        self._window = window

    def __aiter__(self) -> "_Iter":
        return self

    async def __anext__(self) -> Any:
        if self._window is not None:
            window, self._window = self._window, None
            await self._client.set_receive_window(window)
        try:
            return await self._next()
        except Closed:
            raise StopAsyncIteration from None


async def connect(
    url: str,
    channel: Union[str, uuid.UUID],
    *,
    token: Union[bytes, str, None] = None,
    ssl: Optional[_ssl.SSLContext] = None,
    server_hostname: Optional[str] = None,
    client_id: Optional[uuid.UUID] = None,
    connect_timeout: float = 5.0,
    deadline_grace: float = 2.0,
    heartbeat_misses: int = 3,
    reconnect: Optional[ReconnectPolicy] = ReconnectPolicy(),
    broadcast_queue: int = 1024,
    presence_queue: int = 1024,
    resume_secret: Optional[bytes] = None,
) -> Client:
    """Connects to the broker at ``url`` (``tcp://host:port``, ``host:port``, ``host``,
    ``tls://host:port``; default port 7878) and joins ``channel`` (a UUID, or a name: see
    :func:`switchyard.channel_id`).

    ``ssl`` is the TLS context (``tls://`` without one uses :func:`ssl.create_default_context`;
    passing one also turns TLS on for ``tcp://``). ``token`` is the access token. The first
    connection is not retried: it raises :class:`ConnectFailed`, :class:`Unauthorized`,
    :class:`NotASwitchyardBroker`, :class:`Timeout`, :class:`LimitExceeded`, ...

    ``client_id`` names the id to join with. While that id is present on the channel (connected,
    or in its grace period after a disconnect), only a HELLO with its resume secret may take it
    over: pass ``resume_secret`` (16 bytes, e.g. another client's :attr:`Client.resume_secret`,
    or a secret of your own that every process of this client uses), else the connect fails
    with :class:`ClientIdInUse`. Reconnects present the secret by themselves.
    """
    if resume_secret is not None and len(resume_secret) != 16:
        raise ValueError("resume_secret is 16 bytes")
    address = p.parse_url(url)
    if ssl is not None and not address.tls:
        address = p.Address(address.host, address.port, True)
    raw_token = token.encode("utf-8") if isinstance(token, str) else (token or b"")
    options = Options(
        token=raw_token,
        ssl=ssl,
        server_hostname=server_hostname,
        client_id=client_id,
        connect_timeout=connect_timeout,
        deadline_grace=deadline_grace,
        heartbeat_misses=heartbeat_misses,
        reconnect=reconnect,
        broadcast_queue=broadcast_queue,
        presence_queue=presence_queue,
        resume_secret=resume_secret,
    )
    client = Client(address, p.channel_id(channel), options)
    link = await client._open_link()
    client._install(link)
    return client


__all__ = [
    "Broadcast",
    "Client",
    "ConnectionState",
    "IncomingRequest",
    "PresenceEvent",
    "PresenceResync",
    "PresenceChange",
    "ReconnectPolicy",
    "Response",
    "connect",
    "ProtocolError",
]
