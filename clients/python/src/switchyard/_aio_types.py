"""Plain values and small helpers of the asyncio client (``_aio``): the body types, the public
value classes (:class:`ReconnectPolicy`, :class:`ConnectionState`, :class:`PresenceEvent`,
:class:`PresenceResync`), the connection :class:`Options`, the chunk items routed to readers,
and helpers for timeouts, events, tasks and body iterables. No I/O of its own.
"""

from __future__ import annotations

import asyncio
import enum
import math
import random
import ssl as _ssl
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterable, AsyncIterator, Iterable, Optional, Union

from ._errors import SwitchyardError

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


async def _aiter(source: Union[Iterable[bytes], AsyncIterable[bytes]]) -> AsyncIterator[bytes]:
    if hasattr(source, "__aiter__"):
        async for chunk in source:
            yield bytes(chunk)
    else:
        for chunk in source:
            yield bytes(chunk)
