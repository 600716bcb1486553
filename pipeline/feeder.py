"""The feeder: inputs taken lazily from the source, settled by resume or sent on by type.

A synchronous iterable is advanced on a helper thread, :data:`FEED_CHUNK` inputs at a time, so
a slow directory walk never blocks the event loop; a list is cut in place; an async iterable is
awaited. For each chunk the feeder asks the ledger which keys have an earlier record (one
look-up per chunk), records the inputs that resume settles (``skipped``) and the
:class:`~pipeline.records.Record` s a source settled itself, and sends the rest to the first
group that takes them (:mod:`pipeline.routing`). A key seen twice is counted and ignored.
After each chunk it tells the progress bars how many inputs it has taken so far, and once the
source is exhausted that this number is the total (:meth:`~pipeline.progress.Progress.fed`).
Its stream ends by closing the first group's inbox, also when it is cancelled (Ctrl-C).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .ledger import Ledger
from .progress import Progress
from .recorder import Recorder
from .records import Item, Record, as_item
from .resume import ResumePolicy
from .routing import Router

__all__ = ["FEED_CHUNK", "Feeder", "known_length"]

log = logging.getLogger("pipeline")

#: Items the feeder pulls from a synchronous iterator per hop to its helper thread.
FEED_CHUNK = 64


class Feeder:
    """Takes the inputs of one run into the pipeline (see the module docstring)."""

    def __init__(
        self,
        inputs: Iterable[Any] | AsyncIterable[Any],
        *,
        recorder: Recorder,
        router: Router,
        ledger: Ledger | None,
        policy: ResumePolicy,
        progress: Progress | None = None,
    ) -> None:
        self.inputs = inputs
        self.recorder = recorder
        self.router = router
        self.ledger = ledger
        self.policy = policy
        self.progress = progress if progress is not None and progress.enabled else None
        self.seen = 0  # inputs taken from the source, duplicates included
        self.duplicates = 0

    async def run(self) -> None:
        try:
            index = 0
            async with contextlib.aclosing(chunks(self.inputs)) as stream:
                async for chunk in stream:
                    items: list[Item] = []
                    for obj in chunk:
                        if isinstance(obj, Record):  # a source that already knows the outcome
                            await self._settled(obj)
                        else:
                            items.append(as_item(obj, index))
                        index += 1
                    await self._admit(items)
                    if self.progress is not None:
                        self.progress.fed(self.seen - self.duplicates)
            if self.progress is not None:  # exhausted (not cancelled): the total is final
                self.progress.fed(self.seen - self.duplicates, final=True)
        finally:
            self.router.close_feed()

    async def _settled(self, record: Record) -> None:
        self.seen += 1
        if not self.recorder.admit(Item(record.key, None, record.source)):
            self.duplicates += 1
            return
        await self.recorder.emit(record)

    async def _admit(self, items: Sequence[Item]) -> None:
        ledger, recorder = self.ledger, self.recorder
        prior = await ledger.lookup([it.key for it in items]) if ledger is not None else {}
        first = self.router.fixed_inbox(0)  # the first group takes every value: no look-up
        for item in items:
            self.seen += 1
            prev = prior.get(item.key)
            if (prev is not None and prev.run == recorder.run_id) or not recorder.admit(item):
                self.duplicates += 1
                log.warning("duplicate input key %r ignored", item.key)
                continue
            decided = self.policy.decide(item, prev) if ledger is not None else None
            if decided is not None:
                await recorder.emit(decided)
                continue
            if prev is not None:
                recorder.redo(item, prev)
            item.born = time.perf_counter()
            if first is not None:
                await first.send(item)
            else:
                await self.router.send(0, item)


async def chunks(src: Iterable[Any] | AsyncIterable[Any]) -> AsyncGenerator[list[Any], None]:
    """The inputs in lists of up to :data:`FEED_CHUNK`, without blocking the loop."""
    if isinstance(src, AsyncIterable):
        chunk: list[Any] = []
        async for obj in src:
            chunk.append(obj)
            if len(chunk) >= FEED_CHUNK:
                yield chunk
                chunk = []
        if chunk:
            yield chunk
        return
    if isinstance(src, list | tuple | range):
        for start in range(0, len(src), FEED_CHUNK):
            yield list(src[start : start + FEED_CHUNK])
        return
    it = iter(src)
    loop = asyncio.get_running_loop()
    with _single_thread("source") as thread:
        while True:
            chunk = await loop.run_in_executor(thread, _take, it, FEED_CHUNK)
            if not chunk:
                return
            yield chunk


def known_length(inputs: Any) -> int | None:
    """The number of inputs when the source knows it (a list, a range), else None."""
    try:
        return len(inputs)
    except TypeError:
        return None


@contextlib.contextmanager
def _single_thread(name: str) -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
    try:
        yield pool
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _take(it: Iterator[Any], n: int) -> list[Any]:
    out: list[Any] = []
    for obj in it:
        out.append(obj)
        if len(out) >= n:
            break
    return out
