"""The connection side of the asyncio client (``_aio``): the link, opening it, routing its
events, and reconnecting.

Structure: one :class:`_Link` per TCP (or TLS) connection is an :class:`asyncio.Protocol`; its
``data_received`` feeds the link's :class:`~switchyard._session.Session` and routes each event,
synchronously, to the operation waiting for it (an :class:`~switchyard._inbox.Inbox` or a
future). No reader task, no lock: everything runs on the event loop's thread, and every frame is
written with one ``transport.write`` call, so frames never interleave.

Here: ``_Link`` (the protocol of one connection: writing, heartbeat, failure), ``open_link``
(connect, HELLO, WELCOME), ``dispatch`` (routes one session event to its waiter, on the link or
on the :class:`~switchyard._aio.Client`'s queues), ``link_down`` and ``reconnect`` (what happens
when a link ends: the reconnect loop, see the invariants in ``_aio``).
"""

from __future__ import annotations

import asyncio
import logging
import ssl as _ssl
import uuid
from collections import deque
from typing import TYPE_CHECKING, Deque, Dict, List, Optional

from . import _protocol as p
from . import _session as s
from ._aio_streams import Broadcast, IncomingRequest
from ._aio_types import (
    ConnectionState,
    PresenceEvent,
    PresenceResync,
    ReconnectPolicy,
    _Chunk,
    _Item,
)
from ._errors import (
    BrokerError,
    Closed,
    ConnectFailed,
    ConnectionLost,
    ErrorCode,
    GoingAway,
    LimitExceeded,
    NotASwitchyardBroker,
    SwitchyardError,
    Timeout,
)
from ._inbox import Inbox

if TYPE_CHECKING:
    from ._aio import Client

log = logging.getLogger("switchyard")


def _recoverable(reason: Optional[SwitchyardError]) -> bool:
    """Whether a link lost for ``reason`` is worth a new connection (``reconnect.rs``)."""
    if reason is None or isinstance(reason, (ConnectionLost, Timeout, GoingAway, ConnectFailed)):
        return True
    if isinstance(reason, LimitExceeded):
        return True
    return isinstance(reason, BrokerError) and reason.code == ErrorCode.HEARTBEAT_TIMEOUT


class _Link(asyncio.Protocol):
    """One connection: its transport, its session, and the routes of operations on it."""

    def __init__(self, client: Client, session: s.Session) -> None:
        self.client = client
        self.session = session
        self.transport: Optional[asyncio.Transport] = None
        self.dead: Optional[SwitchyardError] = None
        self.welcome: "asyncio.Future[s.Welcome]" = asyncio.get_running_loop().create_future()
        self.lost: "asyncio.Future[None]" = asyncio.get_running_loop().create_future()
        self._writable = asyncio.Event()
        self._writable.set()
        self.responses: Dict[uuid.UUID, Inbox[_Item]] = {}
        self.incoming: Dict[uuid.UUID, IncomingRequest] = {}
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
            dispatch(self.client, self, event)

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
        link_down(self.client, self, reason)

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


async def open_link(client: Client) -> _Link:
    """Connects, sends HELLO and waits for the WELCOME, within ``connect_timeout``."""
    loop = asyncio.get_running_loop()
    session = s.Session(client._channel, client._client_id)
    link = _Link(client, session)
    opts = client._options
    host = client._address.host
    try:
        await asyncio.wait_for(
            loop.create_connection(
                lambda: link,
                host,
                client._address.port,
                ssl=client._ssl,
                server_hostname=(opts.server_hostname or host) if client._ssl else None,
            ),
            opts.connect_timeout,
        )
    except asyncio.TimeoutError:
        raise ConnectFailed(f"connecting to {host}:{client._address.port} timed out") from None
    except _ssl.SSLError as exc:
        raise ConnectFailed(f"TLS handshake with {host}:{client._address.port} failed: {exc}")
    except OSError as exc:
        raise ConnectFailed(f"could not connect to {host}:{client._address.port}: {exc}")
    link.write(session.hello_frame(opts.token, client._resume))
    try:
        welcome = await asyncio.wait_for(asyncio.shield(link.welcome), opts.connect_timeout)
    except asyncio.TimeoutError:
        what = (
            "sent bytes that are not a WELCOME" if link.received_any else "did not answer the HELLO"
        )
        link.fail(ConnectFailed("connect timed out"))
        cls = NotASwitchyardBroker if link.received_any else Timeout
        raise cls(
            f"{host}:{client._address.port} {what} within {opts.connect_timeout} s "
            f"(is it a switchyard broker?)"
        ) from None
    except BaseException:
        link.fail(Closed("connect abandoned"))
        raise
    client._client_id = welcome.client_id
    if client._resume == p.NIL:
        client._resume = welcome.resume
    client._limits = welcome.limits
    client._peers = [peer for peer in welcome.peers]
    link.start_heartbeat(welcome.limits.heartbeat_ms, opts.heartbeat_misses)
    return link


def link_down(client: Client, link: _Link, reason: SwitchyardError) -> None:
    """Called once per link when it ends (from :meth:`_Link.fail`)."""
    if link is not client._link:
        link.fail_routes(client._closed or reason)
        return
    client._link = None
    client._connected.clear()
    if client._closed is not None:
        link.fail_routes(client._closed)
        return
    policy = client._options.reconnect
    if policy is not None and _recoverable(reason):
        log.info("link to the broker lost (%s); reconnecting", reason)
        link.fail_routes(ConnectionLost(f"the connection was lost ({reason.message})"))
        client._state = ConnectionState.RECONNECTING
        client._reconnector = asyncio.get_running_loop().create_task(reconnect(client, policy))
    else:
        link.fail_routes(reason)
        client._close_now(reason)


async def reconnect(client: Client, policy: ReconnectPolicy) -> None:
    attempt = 0
    while client._closed is None:
        attempt += 1
        if policy.max_attempts is not None and attempt > policy.max_attempts:
            client._close_now(ConnectionLost("reconnection attempts exhausted"))
            return
        await asyncio.sleep(policy.delay(attempt))
        if client._closed is not None:
            return
        try:
            link = await open_link(client)
        except SwitchyardError as exc:
            if not _recoverable(exc) and not isinstance(exc, NotASwitchyardBroker):
                client._close_now(exc)
                return
            log.debug("reconnect attempt %d failed: %s", attempt, exc)
            continue
        if client._closed is not None:
            link.fail(client._closed)
            return
        try:
            client._install(link)
        except SwitchyardError:
            continue
        log.info("reconnected to the broker after %d attempt(s)", attempt)
        return


def dispatch(client: Client, link: _Link, event: s.Event) -> None:
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
            client._requests.put(request)
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
        if not client._broadcasts.put(item):
            log.debug("broadcast queue full; %s dropped without ACK", event.request_id)
    elif isinstance(event, s.BroadcastDone):
        fut = link.broadcasts.pop(event.request_id, None)
        if fut is not None and not fut.done():
            if event.error is not None:
                fut.set_exception(event.error)
            else:
                fut.set_result(event.acked)
    elif isinstance(event, s.Presence):
        if event.joined and event.peer not in client._peers:
            client._peers.append(event.peer)
        elif not event.joined and event.peer in client._peers:
            client._peers.remove(event.peer)
        client._presence.put(PresenceEvent(event.peer, event.joined))
    elif isinstance(event, s.PresenceResync):
        # The session asked PEERS again; the difference follows as Presence events.
        client._presence.put(PresenceResync())
    elif isinstance(event, s.PeersAnswer):
        client._peers = list(event.peers)
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
