"""The feeder: inputs taken lazily from the source, settled by resume or sent on by type.

A synchronous iterable is advanced on a helper thread, :data:`FEED_CHUNK` inputs at a time, so
a slow directory walk never blocks the event loop (what a chunk has read goes on after
:data:`TRICKLE` seconds: a source blocked for its next input holds back none before it); a
list is cut in place; an async iterable is awaited, a chunk going as soon as the source would
make it wait. The inputs a source gave before it raised go on; then its error ends the run.
For each chunk the feeder asks the ledger which keys have an earlier record (one look-up per
chunk), records the inputs that resume settles (``reused``, ``skipped``: :mod:`pipeline.resume`;
off the event loop once its checks of earlier outputs prove slow, see :meth:`Feeder._decide`)
and the :class:`~pipeline.records.Record` s a source settled itself, and sends the rest to the
first group that takes them (:mod:`pipeline.routing`). A key seen twice is counted and
ignored. After each chunk it tells the progress bars how many inputs it has taken so far, and
once the source is exhausted that this number is the total
(:meth:`~pipeline.progress.Progress.fed`). Its stream ends by closing the first group's inbox,
also when it is cancelled (Ctrl-C).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    Callable,
    Iterable,
    Iterator,
    Sequence,
)
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .channel import Channel
from .ledger import Ledger
from .progress import Progress
from .recorder import Recorder
from .records import Item, Record, Status, as_item
from .resume import ResumePolicy
from .routing import Router

__all__ = ["FEED_CHUNK", "SLOW_DECISIONS", "Feeder", "known_length"]

log = logging.getLogger("pipeline")

#: Items the feeder pulls from a synchronous iterator per hop to its helper thread.
FEED_CHUNK = 64
#: Seconds a chunk of a synchronous source may take before what it has read goes on anyway.
TRICKLE = 0.05
#: Seconds past which resume's decisions on one chunk are slow (local files: ~1 ms): the rest
#: of the run's are made on a helper thread, off the event loop (:meth:`Feeder._decide`).
SLOW_DECISIONS = 0.02

#: Duplicate input keys named one by one in warnings; the rest are counted.
DUPLICATES_SHOWN = 10


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
        self._thread: ThreadPoolExecutor | None = None  # resume's checks of earlier outputs

    async def run(self) -> None:
        try:
            index = 0
            async with contextlib.aclosing(chunks(self.inputs)) as stream:
                async for chunk in stream:
                    items: list[Item] = []
                    settled: list[Record] = []
                    for obj in chunk:
                        if isinstance(obj, Record):  # a source that already knows the outcome
                            settled.append(obj)
                        else:
                            items.append(as_item(obj, index))
                        index += 1
                    if settled:
                        await self._settled(settled)
                    await self._admit(items)
                    if self.progress is not None:
                        self.progress.fed(self.seen - self.duplicates)
            if self.progress is not None:  # exhausted (not cancelled): the total is final
                self.progress.fed(self.seen - self.duplicates, final=True)
        finally:
            self.router.close_feed()
            if self._thread is not None:  # a check under way ends on its own; nothing waits
                self._thread.shutdown(wait=False, cancel_futures=True)

    async def _settled(self, records: Sequence[Record]) -> None:
        """Records a source made itself (an entry the walk declined, a bad line of a list):
        each carries the key's earlier record, as a redone item's does. A ``skipped`` one keeps
        the earlier result, as an input gone does: what the earlier run made (a link followed
        then, not now; a file now a dangling link) stays, listed, never left unlisted."""
        ledger, recorder = self.ledger, self.recorder
        prior = await ledger.lookup([r.key for r in records]) if ledger is not None else {}
        for record in records:
            self.seen += 1
            prev = prior.get(record.key)
            item = Item(record.key, None, record.source)
            if (prev is not None and prev.run == recorder.run_id) or not recorder.admit(item):
                self._duplicate(record.key)
                continue
            if prev is not None:
                recorder.redo(item, prev)
                if record.status is Status.SKIPPED and record.value is None:
                    record.value = prev.value
            await recorder.emit(record)

    def _duplicate(self, key: str) -> None:
        """An input whose key the run has seen already: counted, not done again. The first
        :data:`DUPLICATES_SHOWN` are named in a warning, then one says more follow (a URL list
        of a million lines with every URL twice would otherwise print a million warnings)."""
        self.duplicates += 1
        if self.duplicates <= DUPLICATES_SHOWN:
            log.warning("duplicate input key %r ignored", key)
        elif self.duplicates == DUPLICATES_SHOWN + 1:
            log.warning("more duplicate input keys ignored (the run's duplicates count them all)")

    async def _admit(self, items: Sequence[Item]) -> None:
        ledger, recorder = self.ledger, self.recorder
        prior = await ledger.lookup([it.key for it in items]) if ledger is not None else {}
        admitted: list[tuple[Item, Record | None]] = []
        for item in items:
            self.seen += 1
            prev = prior.get(item.key)
            if (prev is not None and prev.run == recorder.run_id) or not recorder.admit(item):
                self._duplicate(item.key)
                continue
            admitted.append((item, prev))
        try:
            decisions = await self._decide(admitted) if ledger is not None else None
        except BaseException:
            self._unadmit(admitted, 0)
            raise
        first = self.router.fixed_inbox(0)  # the first group takes every value: no look-up
        i = 0
        try:
            for i, (item, prev) in enumerate(admitted):
                decided = decisions[i] if decisions is not None else None
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
        except BaseException:  # (the one under way is in flight: cancelled, if need be)
            self._unadmit(admitted, i + 1)
            raise

    def _unadmit(self, admitted: Sequence[tuple[Item, Record | None]], start: int) -> None:
        """The inputs of ``admitted`` from ``start`` on, taken in but never handed on (an error,
        or the run stopped, while their chunk was decided or handed on): one with an earlier
        record leaves it as it is, still the truth, rather than a ``cancelled`` one in its place
        (which listed none of its outputs, and had a training set's sample written again,
        beside the one its shard holds); a new one is cancelled, as any in flight."""
        self.recorder.forget([it.key for it, prev in admitted[start:] if prev is not None])

    async def _decide(self, admitted: Sequence[tuple[Item, Record | None]]) -> list[Record | None]:
        """Resume's decision for each input. When they look at the outputs of earlier records
        (a ``stat`` each, a listing of a storage folder, a shard's index), and one chunk's took
        longer than :data:`SLOW_DECISIONS` (a network file system, object storage: milliseconds
        to seconds that stop the event loop, and with it every stage and the progress bars),
        the rest of the run's are made on a helper thread. Local files stay on the loop: the
        hop to a thread would cost more than their ``stat`` s."""
        decide = self.policy.decide
        if self._thread is None or all(prev is None for _, prev in admitted):
            started = time.perf_counter()
            decisions = _decide_all(decide, admitted)
            slow = time.perf_counter() - started > SLOW_DECISIONS
            if slow and self._thread is None and self.policy.looks_at_outputs:
                self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="resume")
            return decisions
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, _decide_all, decide, admitted)


def _decide_all(
    decide: Callable[[Item, Record | None], Record | None],
    admitted: Sequence[tuple[Item, Record | None]],
) -> list[Record | None]:
    return [decide(item, prev) for item, prev in admitted]


async def chunks(src: Iterable[Any] | AsyncIterable[Any]) -> AsyncGenerator[list[Any], None]:
    """The inputs in lists of up to :data:`FEED_CHUNK`, without blocking the loop."""
    if isinstance(src, AsyncIterable):
        async for chunk in _ready_chunks(src):
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
            reading = _Reading()
            taking = loop.run_in_executor(thread, _take, it, FEED_CHUNK, reading)
            # a source slower than TRICKLE for a chunk (a generator over a queue of incoming
            # work, blocked for its next input): what it gave so far goes on meanwhile
            while not (await asyncio.wait({taking}, timeout=TRICKLE))[0]:
                if part := reading.more():
                    yield part
            error = taking.result()
            if part := reading.more():  # the inputs before a source's error go on too
                yield part
            if error is not None:
                raise error
            if not reading.items:
                return


async def _ready_chunks(src: AsyncIterable[Any]) -> AsyncGenerator[list[Any], None]:
    """What an async source has ready, up to :data:`FEED_CHUNK` at a time: a chunk goes as soon
    as the source would make the feeder wait, so inputs that trickle in (a queue of incoming
    work) are processed as they come, not held back until a chunk's worth has arrived. A task
    takes the inputs from the source into a channel of one chunk; its error is the feeder's."""
    ready = Channel[Any](FEED_CHUNK, name="source")

    async def pump() -> None:
        try:
            async for obj in src:
                await ready.send(obj)
        finally:
            ready.close()

    task = asyncio.create_task(pump(), name="source")
    try:
        while chunk := await ready.receive_some(FEED_CHUNK):
            yield chunk
        await task  # the source's error, if it ended with one
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


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


class _Reading:
    """One chunk of a synchronous source being read on the source's thread: the thread appends
    to :attr:`items`, the loop takes what came since it last looked (no lock: a list's append
    and slice are atomic)."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._taken = 0

    def more(self) -> list[Any]:
        """The inputs read since the last call."""
        part = self.items[self._taken :]
        self._taken += len(part)
        return part


def _take(it: Iterator[Any], n: int, reading: _Reading) -> Exception | None:
    """Read up to ``n`` inputs of ``it`` into ``reading``; the error that ended them early."""
    items = reading.items
    try:
        for obj in it:
            items.append(obj)
            if len(items) >= n:
                break
    except Exception as exc:  # noqa: BLE001 — the source's error: raised after these inputs
        return exc
    return None
