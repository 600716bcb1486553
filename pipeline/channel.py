"""Bounded memory channels between stages, in the manner of trio/anyio memory channels.

A :class:`Channel` has a fixed ``capacity`` chosen by its consumer stage (there is no unbounded
mode: ``capacity`` must be at least 1). ``send`` waits while the channel is full, which is how
back-pressure travels up the pipeline to the source. A stream ends by *closing*: once the sender
side calls :meth:`Channel.close`, receivers get the remaining items and then
:class:`EndOfStream` — no sentinels, no counting, no polling.

Everything here runs on one event loop and is not thread-safe; stages that run in threads or
processes are driven by coroutines on the loop, which are the only users of channels.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Channel", "ChannelClosed", "ChannelStats", "EndOfStream", "WouldBlock"]

T = TypeVar("T")


class EndOfStream(Exception):
    """The channel was closed and every item in it has been received."""


class WouldBlock(Exception):
    """A ``*_nowait`` call would have had to wait."""


class ChannelClosed(Exception):
    """``send`` on a channel that was already closed (an engine bug, not an item error)."""


@dataclass(frozen=True, slots=True)
class ChannelStats:
    size: int
    capacity: int
    closed: bool
    waiting_senders: int
    waiting_receivers: int


class Channel(Generic[T]):
    """A bounded FIFO with close semantics."""

    def __init__(self, capacity: int, *, name: str = "") -> None:
        if capacity < 1:
            raise ValueError(f"channel capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.name = name
        self._items: deque[T] = deque()
        self._closed = False
        self._senders: deque[asyncio.Future[None]] = deque()
        self._receivers: deque[asyncio.Future[None]] = deque()
        self._closers: list[asyncio.Future[None]] = []  # wait_closed() callers
        self._fillers: list[asyncio.Future[None]] = []  # wait_full() callers

    # -- sending -------------------------------------------------------------------------------
    async def send(self, item: T) -> None:
        while len(self._items) >= self.capacity and not self._closed:
            await self._wait_turn(self._senders)
        self.send_nowait(item)

    def send_nowait(self, item: T) -> None:
        if self._closed:
            raise ChannelClosed(f"send on closed channel {self.name!r}")
        if len(self._items) >= self.capacity:
            raise WouldBlock
        self._items.append(item)
        self._wake_next(self._receivers)
        if self._fillers and len(self._items) >= self.capacity:
            self._wake_all(self._fillers)

    def close(self) -> None:
        """End the stream: receivers drain what is left, then get :class:`EndOfStream`."""
        if self._closed:
            return
        self._closed = True
        for waiters in (self._receivers, self._senders, self._closers, self._fillers):
            self._wake_all(waiters)

    async def wait_closed(self) -> None:
        """Return once the channel is closed (items may still be in it); receives nothing."""
        if not self._closed:
            await self._wait(self._closers)

    async def wait_full(self) -> None:
        """Return once the channel is full or closed; receives nothing. A consumer that lets
        items gather (the ledger writer) takes them then: its senders would wait otherwise."""
        if not self._closed and len(self._items) < self.capacity:
            await self._wait(self._fillers)

    @staticmethod
    async def _wait(waiters: list[asyncio.Future[None]]) -> None:
        fut = asyncio.get_running_loop().create_future()
        waiters.append(fut)
        try:
            await fut
        finally:
            if fut in waiters:
                waiters.remove(fut)

    # -- receiving -----------------------------------------------------------------------------
    async def receive(self) -> T:
        if not self._items:
            await self.wait_ready()
        return self.receive_nowait()  # EndOfStream: closed, and every item received

    async def wait_ready(self) -> None:
        """Return once the channel holds an item or is closed; receives nothing. A consumer
        that lets items gather (the ledger writer) leaves them in the channel meanwhile, where
        whoever takes over after it was cancelled finds them."""
        while not self._items and not self._closed:
            await self._wait_turn(self._receivers)

    async def receive_some(self, most: int) -> list[T]:
        """Wait for an item, then take up to ``most`` of those there (a batch as ready as the
        channel is, never waiting for a full one); ``[]`` at the end of the stream."""
        try:
            first = await self.receive()
        except EndOfStream:
            return []
        return [first, *self.drain(most - 1)]

    def drain(self, most: int) -> list[T]:
        """Up to ``most`` of the items there now, without waiting."""
        taken: list[T] = []
        while self._items and len(taken) < most:
            taken.append(self.receive_nowait())
        return taken

    def receive_nowait(self) -> T:
        if not self._items:
            if self._closed:
                raise EndOfStream
            raise WouldBlock
        item = self._items.popleft()
        self._wake_next(self._senders)
        return item

    def __aiter__(self) -> Channel[T]:
        return self

    async def __anext__(self) -> T:
        try:
            return await self.receive()
        except EndOfStream:
            raise StopAsyncIteration from None

    # -- introspection -------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._items)

    def statistics(self) -> ChannelStats:
        return ChannelStats(
            size=len(self._items),
            capacity=self.capacity,
            closed=self._closed,
            waiting_senders=sum(not f.done() for f in self._senders),
            waiting_receivers=sum(not f.done() for f in self._receivers),
        )

    @classmethod
    async def _wait_turn(cls, waiters: deque[asyncio.Future[None]]) -> None:
        """Wait in line until woken (``_wake_next``, ``close``)."""
        fut = asyncio.get_running_loop().create_future()
        waiters.append(fut)
        try:
            await fut
        except BaseException:
            fut.cancel()
            cls._wake_next(waiters)  # pass the turn on if we were woken, then cancelled
            raise

    @staticmethod
    def _wake_all(waiters: list[asyncio.Future[None]] | deque[asyncio.Future[None]]) -> None:
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)
        waiters.clear()

    @staticmethod
    def _wake_next(waiters: deque[asyncio.Future[None]]) -> None:
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
