"""The blocking client: the same operations as the asyncio one, for threaded code.

Design: each blocking :class:`Client` owns a private event loop running in a daemon thread
(``switchyard-loop``) and the asyncio :class:`switchyard.Client` living on it; every blocking
call submits the matching coroutine with :func:`asyncio.run_coroutine_threadsafe` and waits for
its result. So both fronts share one implementation of the protocol (the sans-IO core and the
asyncio routing above it), and the blocking client is safe to use from any number of threads at
once (calls are multiplexed over the connection). If a waiting thread is interrupted
(``KeyboardInterrupt``), its coroutine is cancelled, which sends the operation's CANCEL.

Request bodies given as iterables are pulled on the *calling* thread (a slow generator never
stalls the loop); each chunk is handed to the loop as it comes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import uuid
from typing import Any, Awaitable, Callable, Iterable, Iterator, List, Optional, TypeVar, Union

from . import _aio
from ._aio import Body, ConnectionState, PresenceChange, PresenceEvent, PresenceResync, ReconnectPolicy
from ._errors import Closed
from ._protocol import Limits

T = TypeVar("T")

__all__ = ["connect", "Client", "Response", "IncomingRequest", "Broadcast"]


class _Loop:
    """An event loop running in its own daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.call_soon(ready.set)
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name="switchyard-loop", daemon=True)
        self.thread.start()
        ready.wait()

    def run(self, make: Callable[[], Awaitable[T]]) -> T:
        """Runs the coroutine ``make()`` on the loop and waits for its result."""
        if threading.current_thread() is self.thread:
            raise RuntimeError("a blocking switchyard call from its own loop thread")

        async def wrapper() -> T:
            return await make()

        future = asyncio.run_coroutine_threadsafe(wrapper(), self.loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def stop(self) -> None:
        """Stops the loop and joins its thread (idempotent)."""
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


class Response:
    """A blocking response: iterate for the body's chunks, or :meth:`read` it whole."""

    def __init__(self, loop: _Loop, inner: _aio.Response) -> None:
        self._loop = loop
        self._inner = inner

    @property
    def responder(self) -> Optional[uuid.UUID]:
        """The receiver that answered, once the response started."""
        return self._inner.responder

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        try:
            return self._loop.run(self._inner.__anext__)
        except StopAsyncIteration:
            raise StopIteration from None

    def read(self) -> bytes:
        """The whole (remaining) body."""
        return self._loop.run(self._inner.read)

    def cancel(self) -> None:
        """Abandons the request (sends its CANCEL unless it ended)."""
        self._loop.run(self._inner.cancel)


class IncomingRequest:
    """A request assigned to this client (see :class:`switchyard.IncomingRequest`)."""

    def __init__(self, loop: _Loop, inner: _aio.IncomingRequest) -> None:
        self._loop = loop
        self._inner = inner
        self.id = inner.id
        self.sender = inner.sender
        self.timeout = inner.timeout

    def __repr__(self) -> str:
        return f"blocking.IncomingRequest(id={self.id}, sender={self.sender})"

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        try:
            return self._loop.run(self._inner.__anext__)
        except StopAsyncIteration:
            raise StopIteration from None

    def body(self) -> bytes:
        """The whole (remaining) request body."""
        return self._loop.run(self._inner.body)

    def respond(self, body: Body = b"") -> None:
        """Sends the whole response."""
        self._loop.run(lambda: self._inner.respond(body))

    def respond_stream(self, chunks: Iterable[bytes]) -> None:
        """Sends the response chunk by chunk (pulled on the calling thread)."""
        inner = self._inner
        session = inner._link.session
        try:
            for chunk in chunks:

                async def send(data: bytes = bytes(chunk)) -> None:
                    inner._check()
                    await inner._link.send(session.response_frames(inner.id, data, False))

                self._loop.run(send)
        except BaseException:
            self.cancel()
            raise
        self.respond(b"")

    def cancel(self) -> None:
        """Gives the request up (the sender gets CANCEL)."""
        self._loop.run(self._inner.cancel)


class Broadcast:
    """A received broadcast: ``id``, ``sender``, ``body``; :meth:`ack` (see
    :class:`switchyard.Broadcast`)."""

    def __init__(self, loop: _Loop, inner: _aio.Broadcast) -> None:
        self._loop = loop
        self._inner = inner
        self.id = inner.id
        self.sender = inner.sender
        self.body = inner.body

    def ack(self) -> None:
        """Acknowledges it (idempotent)."""
        self._loop.run(self._inner.ack)


class Client:
    """A blocking client; create with :func:`connect`. Thread-safe. Use ``with`` or
    :meth:`close`."""

    def __init__(self, loop: _Loop, inner: _aio.Client) -> None:
        self._loop = loop
        self._inner = inner

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def resume_secret(self) -> bytes:
        """See :attr:`switchyard.Client.resume_secret`."""
        return self._inner.resume_secret

    @property
    def client_id(self) -> uuid.UUID:
        """This client's id."""
        return self._inner.client_id

    @property
    def channel_id(self) -> uuid.UUID:
        """The channel's id."""
        return self._inner.channel_id

    @property
    def limits(self) -> Limits:
        """The broker's limits (last WELCOME)."""
        return self._inner.limits

    @property
    def state(self) -> ConnectionState:
        """Connected, reconnecting or closed."""
        return self._inner.state

    @property
    def known_peers(self) -> List[uuid.UUID]:
        """The other peers as last reported."""
        return self._inner.known_peers

    def close(self) -> None:
        """Closes the client and stops its loop thread (idempotent)."""
        if not self._loop.loop.is_closed():
            self._loop.run(self._inner.close)
            self._loop.stop()

    def wait_connected(self, timeout: Optional[float] = None) -> None:
        """Blocks until the link is up (see :meth:`switchyard.Client.wait_connected`)."""
        self._loop.run(lambda: self._inner.wait_connected(timeout))

    def request(
        self, body: Body = b"", *, timeout: Optional[float] = None, no_wait: bool = False
    ) -> bytes:
        """Sends a request; returns the whole response body."""
        return self._loop.run(lambda: self._inner.request(body, timeout=timeout, no_wait=no_wait))

    def request_stream(
        self,
        body: Union[Body, Iterable[bytes]],
        *,
        timeout: Optional[float] = None,
        no_wait: bool = False,
    ) -> Response:
        """Sends a request whose body is ``bytes`` or an iterable of chunks (pulled on the
        calling thread); returns the :class:`Response` once the body is sent."""
        if isinstance(body, (bytes, bytearray, memoryview)):
            data = bytes(body)
            inner = self._loop.run(
                lambda: self._inner.request_stream(data, timeout=timeout, no_wait=no_wait)
            )
            return Response(self._loop, inner)
        queue: "asyncio.Queue[Optional[bytes]]"

        async def open_stream() -> _aio.Response:
            nonlocal queue
            queue = asyncio.Queue(maxsize=2)

            async def chunks() -> Any:
                while True:
                    item = await queue.get()
                    if item is None:
                        return
                    yield item

            return await self._inner.request_stream(chunks(), timeout=timeout, no_wait=no_wait)

        inner = self._loop.run(open_stream)
        try:
            for chunk in body:
                data = bytes(chunk)
                self._loop.run(lambda: queue.put(data))
            self._loop.run(lambda: queue.put(None))
        except BaseException:
            self._loop.run(inner.cancel)
            raise
        return Response(self._loop, inner)

    def set_receive_window(self, window: int) -> None:
        """How many requests this client holds at once."""
        self._loop.run(lambda: self._inner.set_receive_window(window))

    def next_request(self, timeout: Optional[float] = None) -> IncomingRequest:
        """The next request assigned to this client; :class:`Timeout` after ``timeout`` s."""
        return IncomingRequest(self._loop, self._loop.run(lambda: self._inner.next_request(timeout)))

    def requests(self, window: Optional[int] = None) -> Iterator[IncomingRequest]:
        """``for req in client.requests(window=4)``; ends when the client is closed."""
        if window is not None:
            self.set_receive_window(window)
        return self._iterate(self.next_request)

    def broadcast(self, body: Body = b"", *, timeout: Optional[float] = None) -> int:
        """Sends a broadcast; returns the ack count."""
        return self._loop.run(lambda: self._inner.broadcast(body, timeout=timeout))

    def next_broadcast(self, timeout: Optional[float] = None, *, auto_ack: bool = True) -> Broadcast:
        """The next broadcast received in full (acked unless ``auto_ack=False``)."""
        inner = self._loop.run(lambda: self._inner.next_broadcast(timeout, auto_ack=auto_ack))
        return Broadcast(self._loop, inner)

    def broadcasts(self, *, auto_ack: bool = True) -> Iterator[Broadcast]:
        """``for msg in client.broadcasts()``; ends when the client is closed."""
        return self._iterate(lambda: self.next_broadcast(auto_ack=auto_ack))

    def next_presence(self, timeout: Optional[float] = None) -> PresenceChange:
        """The next presence change."""
        return self._loop.run(lambda: self._inner.next_presence(timeout))

    def presence(self) -> Iterator[PresenceChange]:
        """``for ev in client.presence()``; ends when the client is closed."""
        return self._iterate(self.next_presence)

    def peers(self, timeout: float = 5.0) -> List[uuid.UUID]:
        """Asks the broker for the channel's other peers."""
        return self._loop.run(lambda: self._inner.peers(timeout))

    def ping(self, timeout: float = 5.0) -> float:
        """Round trip to the broker, in seconds."""
        return self._loop.run(lambda: self._inner.ping(timeout))

    def _iterate(self, next_item: Callable[[], T]) -> Iterator[T]:
        while True:
            try:
                yield next_item()
            except (Closed, concurrent.futures.CancelledError):
                return


def connect(
    url: str,
    channel: Union[str, uuid.UUID],
    **options: Any,
) -> Client:
    """Connects like :func:`switchyard.connect` (same keyword options), blocking."""
    loop = _Loop()
    try:
        inner = loop.run(lambda: _aio.connect(url, channel, **options))
    except BaseException:
        loop.stop()
        raise
    return Client(loop, inner)


# Re-exported for annotations in user code.
__all__ += ["ReconnectPolicy", "ConnectionState", "PresenceEvent", "PresenceResync", "PresenceChange"]
