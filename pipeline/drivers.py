"""Drivers: the coroutines that feed a stage group's lanes and hand on what comes back.

A driver takes a batch from the group's inbox (sized by the backend's batcher), runs it on its
lane, and for each item accounts the group's stage metrics and forwards the item: its failure
record, its split's parts, its join, or the next group that takes its value
(:mod:`pipeline.routing`). Items a lane hands back untouched (a worker died before reaching
them) go first into the driver's next batch. An async lane has a leaner driver of its own: one
item at a time, no batch list or hand-back queue (an ``await`` costs no hop to amortise).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence

from .batching import Batcher
from .calls import Outcome
from .channel import Channel, EndOfStream, WouldBlock
from .errors import FREE_SPACE, OutOfSpace, RemoteError, Skip
from .joins import Joins, Part
from .lanes import AsyncLane, Lane
from .metrics import StageMetrics
from .progress import Progress
from .recorder import Recorder
from .records import Item
from .routing import Router
from .split import Split

__all__ = ["GroupDriver"]


class GroupDriver:
    """What every driver of one group shares: where items go next, and the metrics."""

    def __init__(
        self,
        index: int,
        first: int,
        metrics: Sequence[StageMetrics],
        *,
        router: Router,
        joins: Joins,
        recorder: Recorder,
        progress: Progress,
    ) -> None:
        self.index = index  # of the group
        self.first = first  # index of its first stage in the pipeline
        self.metrics = list(metrics)  # of its stages, in order
        self.names = router.stage_names[index]
        self.router = router
        self.joins = joins
        self.recorder = recorder
        # per item, the common case costs no look-up: the next group takes every value
        # (its inbox), or this is the last group (the item is finished)
        self.outbox = router.fixed_inbox(index + 1)
        self.last = index + 1 >= router.end
        self.advance = progress.advance if progress.enabled else None  # bars off: no call

    async def batches(self, lane: Lane, inbox: Channel[Item], batcher: Batcher) -> None:
        """Drive ``lane`` with batches from ``inbox`` until the stream ends."""
        again: deque[Item] = deque()
        head, tail = self.metrics[0], self.metrics[-1]
        perf = time.perf_counter
        while True:
            if again:
                batch = [again.popleft() for _ in range(min(len(again), batcher.size()))]
            else:
                waited = perf()
                batch = await inbox.receive_some(batcher.size())
                head.wait_inbox += perf() - waited
                if not batch:
                    return
            started = perf()
            done, back = await lane.run(batch)
            # the batch's time in the worker (its items' busy time), not the wall of the call,
            # which also holds the wait behind a batch already in the worker and the trip there
            work = sum([sum(out.busy) for _, out in done])
            batcher.observe(work or perf() - started, len(done))
            head.batches += 1
            again.extend(back)
            for item, outcome in done:
                self.account(outcome)
                blocked = perf()
                await self.forward(item, outcome)
                if outcome.ok:
                    tail.blocked_outbox += perf() - blocked

    async def singles(self, lane: AsyncLane, inbox: Channel[Item]) -> None:
        """:meth:`batches` for an async lane (async stages are never fused)."""
        metrics = self.metrics[0]
        perf = time.perf_counter
        while True:
            try:
                item = inbox.receive_nowait()
            except WouldBlock:
                waited = perf()
                try:
                    item = await inbox.receive()
                except EndOfStream:
                    return
                metrics.wait_inbox += perf() - waited
            except EndOfStream:
                return
            outcome = await lane.one(item.value)
            metrics.batches += 1
            self.account(outcome)
            blocked = perf()
            await self.forward(item, outcome)
            if outcome.ok:
                metrics.blocked_outbox += perf() - blocked

    def account(self, out: Outcome) -> None:
        """Count one item in the metrics of every stage of the group it went through (not
        those it bypassed: they did not accept its value)."""
        busy, ok, skipped, metrics = out.busy, out.ok, out.bypassed, self.metrics
        advance = self.advance
        total_busy = sum(busy) or 1e-12
        metrics[0].entered += 1
        last = out.step if not ok else len(metrics) - 1
        for j in range(last + 1):
            if skipped and skipped >> j & 1:
                continue
            m = metrics[j]
            m.items += 1
            m.busy += busy[j]
            m.cpu += out.cpu * (busy[j] / total_busy)
            if out.run_wait is None:
                m.run_wait_missing = True
            else:
                m.run_wait += out.run_wait * (busy[j] / total_busy)
            if j < last or ok:
                m.ok += 1
            elif not _is_skip(out.value):
                m.failed += 1
            if advance is not None:
                advance(self.first + j)

    async def forward(self, item: Item, out: Outcome) -> None:
        """Hand on an item the group finished: its failure record, its join, its split's
        parts, or the next group that takes its value (its record after the last group)."""
        if out.bypassed:
            item.bypassed |= out.bypassed << self.first
        if not out.ok:
            record = self.recorder.failure(item, self.names[out.step], out.value, out.attempts)
            if item.__class__ is Part:
                await self.joins.failed(item, record)
            else:
                await self.recorder.emit(record)
            if out.stops_run is not None:
                raise out.stops_run
            if out.out_of_space:  # the next items would fail alike: the run stops
                if record.error_type == OutOfSpace.__name__:  # a Dask worker's run stopped on
                    raise OutOfSpace(record.error or "")  # it, and said where and what to do
                raise OutOfSpace(
                    f"{record.error_type}: {record.error} (stage {record.stage!r}, input "
                    f"{item.key!r}); {FREE_SPACE}"
                )
            return
        item.value = value = out.value
        if out.attempts > item.attempts:
            item.attempts = out.attempts
        if item.__class__ is Part:  # (an attribute, not a call: this runs for every item)
            await self.joins.advance(item, self.index)
        elif isinstance(value, Split):
            await self.joins.split(item, self.index)
        elif self.outbox is not None:
            await self.outbox.send(item)
        elif self.last:
            await self.recorder.finish(item)
        else:
            await self.router.send(self.index + 1, item)


def _is_skip(exc: object) -> bool:
    if isinstance(exc, RemoteError):
        return exc.error_type == Skip.__name__
    return isinstance(exc, Skip)
