"""The per-operation objects of the asyncio client (``_aio``): :class:`Response` (the answer to a
request, an async iterator of body chunks), :class:`IncomingRequest` (a request assigned to
this client, read and answered through it), :class:`Broadcast` (a broadcast received in full),
and ``_Iter``, the iteration behind ``Client.requests()``/``broadcasts()``/``presence()``.
Each object keeps the link (``_aio_conn._Link``) its operation was routed on and writes only
there.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING, Any, AsyncIterable, AsyncIterator, Iterable, Optional, Union

from ._aio_types import Body, _aiter, _Item, _wait_event
from ._errors import Cancelled, Closed, SwitchyardError, Timeout
from ._inbox import Inbox

if TYPE_CHECKING:
    from ._aio import Client
    from ._aio_conn import _Link


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
