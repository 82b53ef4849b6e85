"""A small asyncio queue with deadlines, closing and a bounded-capacity policy.

Why not :class:`asyncio.Queue`: a waiter must wake up when the owner closes (with the reason),
waits take an absolute deadline without :func:`asyncio.wait_for` (whose cancellation can lose an
item on older Pythons), and a full queue either drops its oldest item or refuses the new one.

Invariants: an item is removed only by the ``get`` that returns it (a cancelled or expired
``get`` loses nothing); after :meth:`Inbox.close`, items already queued are still returned, then
every ``get`` raises the close reason.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Deque, Generic, Optional, TypeVar

from ._errors import SwitchyardError, Timeout

T = TypeVar("T")


def _release(waiter: "asyncio.Future[None]") -> None:
    if not waiter.done():
        waiter.set_result(None)


class Inbox(Generic[T]):
    """A FIFO of ``T``. ``capacity=None`` is unbounded; when full, ``drop_oldest`` makes room by
    dropping the oldest item, else :meth:`put` refuses the new one."""

    def __init__(self, capacity: Optional[int] = None, drop_oldest: bool = False) -> None:
        self._items: Deque[T] = deque()
        self._waiters: Deque["asyncio.Future[None]"] = deque()
        self._capacity = capacity
        self._drop_oldest = drop_oldest
        self._closed: Optional[SwitchyardError] = None

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> Optional[SwitchyardError]:
        """The close reason, or ``None`` while open."""
        return self._closed

    def put(self, item: T) -> bool:
        """Queues ``item``; False when it was refused (full, or closed)."""
        if self._closed is not None:
            return False
        if self._capacity is not None and len(self._items) >= self._capacity:
            if not self._drop_oldest:
                return False
            self._items.popleft()
        self._items.append(item)
        self._wake_one()
        return True

    def close(self, reason: SwitchyardError) -> None:
        """Closes the inbox (the first reason wins) and wakes every waiter."""
        if self._closed is None:
            self._closed = reason
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def get_nowait(self) -> Optional[T]:
        """The next item if one is queued, else ``None`` (``None`` items are not supported)."""
        return self._items.popleft() if self._items else None

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def get(self, deadline: Optional[float] = None) -> T:
        """The next item. ``deadline`` is an event-loop time (``loop.time()``); past it, raises
        :class:`Timeout`. After :meth:`close` and once empty, raises the close reason."""
        loop = asyncio.get_running_loop()
        while not self._items:
            if self._closed is not None:
                raise self._closed
            if deadline is not None and loop.time() >= deadline:
                raise Timeout("nothing arrived in time")
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            timer = None
            if deadline is not None:
                timer = loop.call_at(deadline, _release, waiter)
            try:
                await waiter
            except BaseException:
                # Cancelled: pass a wakeup we may have consumed on to the next waiter.
                if self._items:
                    self._wake_one()
                raise
            finally:
                if timer is not None:
                    timer.cancel()
        return self._items.popleft()
