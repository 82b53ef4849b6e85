"""The asyncio client: :func:`connect` and :class:`Client`, over the sans-IO ``_session``.

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

The implementation is split: ``_aio_types`` (values, options, helpers), ``_aio_conn`` (the
``asyncio.Protocol`` of one connection, opening it, event routing, the reconnect loop),
``_aio_streams`` (:class:`Response`, :class:`IncomingRequest`, :class:`Broadcast`). This module
holds :class:`Client` and :func:`connect`, and re-exports the public names.
"""

from __future__ import annotations

import asyncio
import ssl as _ssl
import uuid
from typing import Any, AsyncIterable, AsyncIterator, Iterable, List, Optional, Union

from . import _protocol as p
from ._aio_conn import _Link, open_link
from ._aio_streams import Broadcast, IncomingRequest, Response, _Iter
from ._aio_types import Body as Body
from ._aio_types import BodySource as BodySource
from ._aio_types import (
    ConnectionState,
    Options,
    PresenceChange,
    PresenceEvent,
    PresenceResync,
    ReconnectPolicy,
    _aiter,
    _Item,
    _current_task,
    _timeout_ms,
    _wait_event,
)
from ._errors import (
    Cancelled,
    Closed,
    GoingAway,
    ProtocolError,
    Reconnecting,
    SwitchyardError,
    Timeout,
)
from ._inbox import Inbox


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

    def _install(self, link: _Link) -> None:
        if self._window:
            link.write(link.session.receive_frame(self._window))
        self._link = link
        self._state = ConnectionState.CONNECTED
        self._connected.set()

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
    link = await open_link(client)
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
