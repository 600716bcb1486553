"""The runner: one event loop drives sources, stage groups, the sink and the ledger writer.

Data flow (every arrow a bounded :class:`~pipeline.channel.Channel`)::

    feeder ─▶ [group 1] ─▶ [group 2] ─▶ … ─▶ sink ─▶ ledger channel ─▶ ledger writer
                 └── failed records ───────────────▶ ledger channel

* The *feeder* pulls the inputs lazily (a sync iterator is advanced on a helper thread, 64 at a
  time, so a slow directory walk never blocks the loop), asks the ledger which keys are already
  done, records those as ``skipped`` and sends the rest on.
* Each *group* (one stage, or adjacent process stages fused) has ``workers`` driver coroutines,
  each owning one :mod:`lane <pipeline.lanes>`; drivers take small batches from the inbox.
* Every item taken from the source sits in ``inflight`` until its terminal record has been
  handed to the ledger channel. After Ctrl-C or a fatal error, whatever is still in ``inflight``
  is recorded ``cancelled``: that is how nothing is ever lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any

from .autoscale import Autoscaler, GroupHandle, start_workers
from .batching import Batcher, fuse
from .calls import Outcome, steps_of
from .channel import Channel, EndOfStream, WouldBlock
from .config import RunOptions
from .errors import (
    CrashBudgetExceeded,
    FatalRunError,
    LedgerError,
    RemoteError,
    Skip,
    SplitError,
)
from .lanes import AsyncLane, InlineLane, Lane, ThreadLane
from .ledger import Ledger
from .metrics import StageMetrics, Timeline
from .names import shown
from .procpool import DEPTH, ProcessLane
from .progress import Progress
from .records import Item, Record, Status, as_item
from .result import Collector, RunResult
from .split import Join, Split
from .stage import Stage
from .threads import DaemonThreadPool

__all__ = ["REASON_DONE", "Run"]

log = logging.getLogger("pipeline")

REASON_DONE = "already done"
#: Records buffered between the stages and the ledger writer; the writer commits them in
#: transactions of up to this many, so it also bounds what a SIGKILL of the parent can lose.
LEDGER_CAPACITY = 512
#: The ledger writer commits at most this often (seconds): records arriving one by one are
#: gathered into one transaction (and one hop to its thread) instead of one each. A SIGKILL of
#: the parent can lose at most this much of records, whose items a resume simply redoes.
LEDGER_INTERVAL = 0.02
#: Items the feeder pulls from a synchronous iterator per hop to its helper thread.
FEED_CHUNK = 64


class Run:
    """One run of a chain of stages over some inputs (see the module docstring)."""

    def __init__(
        self,
        stages: Sequence[Stage],
        inputs: Iterable[Any] | AsyncIterable[Any],
        opts: RunOptions,
        collectors: Sequence[Collector],
        on_record: Callable[[Record], Awaitable[None]] | None,
    ) -> None:
        self.stages = list(stages)
        self.backend = opts.backend
        # a backend runs the whole chain remotely, as one group of shard-sized batches
        self.groups = [list(stages)] if self.backend is not None else fuse(stages)
        self.inputs = inputs
        self.opts = opts
        self.collectors = list(collectors)
        self.on_record = on_record
        self.run_id = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        self.metrics = [StageMetrics(s.name, s.kind, s.workers) for s in stages]
        for group in self.groups:
            if len(group) > 1:
                names = tuple(s.name for s in group)
                for s in group:
                    self.metrics[self.stages.index(s)].fused_with = names
        self.inflight: dict[str, Item] = {}
        self.counts: Counter[str] = Counter()
        self.seen = 0
        self.duplicates = 0
        self.crashes: list[str] = []
        self.total = _known_length(inputs)
        self.ledger: Ledger | None = None
        self.ledger_ch: Channel[Record] = Channel(LEDGER_CAPACITY, name="ledger")
        self.channels: list[Channel[Item]] = []  # inbox of each group, then the sink's
        self.stop = asyncio.Event()
        self.abort = asyncio.Event()
        self.lanes: list[Lane] = []
        self.pools: dict[str, DaemonThreadPool] = {}  # thread stages' pools, by stage name
        self._contexts: dict[str, dict[str, Any]] = {}
        self.handles: list[GroupHandle] = []
        self.autoscaler = Autoscaler(self.handles) if opts.autoscale else None
        self.progress = Progress([s.name for s in stages], total=self.total, enabled=opts.progress)
        self.timeline = Timeline([s.name for s in stages])

    # -- records -------------------------------------------------------------------------------
    def fingerprint(self, key: str, item: Item | None = None) -> str | None:
        """The options' hash for ``key``: the item's own when its source set one."""
        if item is not None and item.fingerprint is not None:
            return item.fingerprint
        fp = self.opts.fingerprint
        return fp(key) if callable(fp) else fp

    async def emit(self, record: Record) -> None:
        record.run = self.run_id
        item = self.inflight.get(record.key)
        if record.status is not Status.SKIPPED or record.stage is not None:
            # processed (or declined by a stage): the record names the options and the input
            # it was made from; a skip of a done item keeps the earlier record's (see _skip)
            if record.fingerprint is None:
                record.fingerprint = self.fingerprint(record.key, item)
            if item is not None:
                record.identity = record.identity or item.identity
                record.redo = record.redo or item.redo
        await self.ledger_ch.send(record)
        self.inflight.pop(record.key, None)

    async def ledger_writer(self) -> None:
        loop = asyncio.get_running_loop()
        committed = -math.inf
        while True:
            try:
                first = await self.ledger_ch.receive()
            except EndOfStream:
                return
            wait = committed + LEDGER_INTERVAL - loop.time()
            if self.ledger is not None and wait > 0 and len(self.ledger_ch) < LEDGER_CAPACITY:
                # let more records in: one transaction for them all; the last records of a run
                # go as soon as the stream ends (a shard on a Dask worker waited 20 ms for them)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.ledger_ch.wait_closed(), wait)
            batch = [first]
            while len(batch) < LEDGER_CAPACITY:
                try:
                    batch.append(self.ledger_ch.receive_nowait())
                except (WouldBlock, EndOfStream):
                    break
            committed = loop.time()
            await self._record(batch)

    async def _record(self, batch: Sequence[Record]) -> None:
        for rec in batch:
            self.counts[str(rec.status)] += 1
            for col in self.collectors:
                col.add(rec)
        if self.ledger is not None:
            await self.ledger.write(batch)
        if self.on_record is not None:
            for rec in batch:
                await self.on_record(rec)
        self.progress.finish_item(len(batch))

    def on_crash(self, what: str) -> None:
        self.crashes.append(what)
        log.warning("worker crash %d/%d: %s", len(self.crashes), self.opts.crash_budget, what)
        if len(self.crashes) > self.opts.crash_budget:
            raise CrashBudgetExceeded(
                f"{len(self.crashes)} worker crashes, more than the crash budget of "
                f"{self.opts.crash_budget}; last: {what}"
            )

    # -- the feeder ----------------------------------------------------------------------------
    async def feed(self, out: Channel[Item]) -> None:
        try:
            index = 0
            async for chunk in self._chunks():
                items: list[Item] = []
                for obj in chunk:
                    if isinstance(obj, Record):  # a source that already knows the outcome
                        self.seen += 1
                        if obj.key in self.inflight:
                            self.duplicates += 1
                            continue
                        self.inflight[obj.key] = Item(obj.key, None, obj.source)
                        await self.emit(obj)
                    else:
                        items.append(as_item(obj, index))
                    index += 1
                prior = await self.ledger.lookup([it.key for it in items]) if self.ledger else {}
                for item in items:
                    self.seen += 1
                    prev = prior.get(item.key)
                    if item.key in self.inflight or (prev is not None and prev.run == self.run_id):
                        self.duplicates += 1
                        log.warning("duplicate input key %r ignored", item.key)
                        continue
                    self.inflight[item.key] = item
                    decided = self._decide(item, prev)
                    if decided is not None:
                        await self.emit(decided)
                        continue
                    item.born = time.perf_counter()
                    await out.send(item)
        finally:
            out.close()

    async def _chunks(self) -> Any:
        src = self.inputs
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

    def _decide(self, item: Item, prev: Record | None) -> Record | None:
        """None to process the item (``item.redo`` says why, when it has a record), or the
        record that settles it without work."""
        opts = self.opts
        if self.ledger is None:
            return None
        if prev is None:
            if opts.retry_failed and not opts.force:
                return self._skip(item, "not retried: no earlier failure (--retry-failed)")
            return None
        if opts.force:
            item.redo = "force"
            return None
        stale = self._stale(item, prev)
        if stale is None:
            if _declined(prev):  # a stage declined this very input before: it would again
                return self._skip(item, prev.reason or REASON_DONE, prev, stage=prev.stage)
            return self._skip(item, REASON_DONE, prev)
        if opts.retry_failed and prev.status is not Status.FAILED:
            why = REASON_DONE if _done(prev) else "not retried: no earlier failure (--retry-failed)"
            return self._skip(item, why, prev)
        item.redo = stale
        return None

    def _stale(self, item: Item, prev: Record) -> str | None:
        """Why the earlier record ``prev`` does not settle ``item`` (None: it is done).

        Done means: an ``ok`` record (or a skip of a done item) made with the same options
        (fingerprint) from the same input (source and identity, when the source gives one),
        whose outputs are still there (``is_done``). A stage's earlier skip of the same input
        (same options and identity: a file that is not an image) settles it too.
        """
        opts = self.opts
        if _declined(prev) and item.identity is None:
            return "earlier record skipped"  # without an identity, the input may have changed
        if not (_done(prev) or _declined(prev)):
            what = f" ({prev.error_type})" if prev.status is Status.FAILED else ""
            return f"earlier record {prev.status}{what}"
        if not opts.resume:
            return "resume off"
        fingerprint = self.fingerprint(item.key, item)
        if fingerprint is not None and prev.fingerprint != fingerprint:
            return "options changed"
        if item.identity is not None:
            if prev.source != item.source:
                return f"another input under this key (was {shown(prev.source)})"
            if prev.identity != item.identity:
                return _changed(prev.identity, item.identity)
        if opts.is_done is not None and not _declined(prev) and not opts.is_done(prev):
            return "earlier outputs missing"
        return None

    def _skip(
        self, item: Item, reason: str, prev: Record | None = None, *, stage: str | None = None
    ) -> Record:
        return Record(
            key=item.key,
            status=Status.SKIPPED,
            source=item.source,
            stage=stage,
            reason=reason,
            value=prev.value if prev is not None else None,
            meta=item.meta or (prev.meta if prev is not None else {}),
            fingerprint=prev.fingerprint if prev is not None else None,
            identity=prev.identity if prev is not None else None,
        )

    # -- stage groups --------------------------------------------------------------------------
    def _lanes(self, group: list[Stage], extra: dict[str, Any]) -> list[Lane]:
        if self.backend is not None:  # remote workers open the stages' contexts themselves
            return [
                self.backend.lane(group, on_crash=self.on_crash) for _ in range(self.backend.window)
            ]
        steps = steps_of(group, extra)
        kind = group[0].kind
        workers = max(s.workers for s in group)
        if kind == "process":
            return [ProcessLane(steps, on_crash=self.on_crash) for _ in range(workers)]
        if kind == "thread":
            start = start_workers(kind, workers) if self.opts.autoscale else workers
            pool = DaemonThreadPool(start, name=group[0].name)
            self.pools[group[0].name] = pool
            return [ThreadLane(steps, pool) for _ in range(workers)]
        if kind == "async":
            return [AsyncLane(steps) for _ in range(workers)]
        return [InlineLane(steps)]

    async def run_group(
        self, group: list[Stage], inbox: Channel[Item], outbox: Channel[Item]
    ) -> None:
        async with contextlib.AsyncExitStack() as stack:
            extra: dict[str, Any] = {}
            ctx_factory = group[0].context
            if ctx_factory is not None and self.backend is None:
                extra[group[0].context_arg] = await stack.enter_async_context(ctx_factory())
            self._contexts[group[0].name] = extra
            await self._run_lanes(group, self._lanes(group, extra), inbox, outbox)

    # -- split items (pipeline.split) ----------------------------------------------------------
    async def _split(self, item: Item, st: Stage, outbox: Channel[Item]) -> None:
        """Send the parts of a split item on; they are joined after the next group."""
        split: Split = item.value
        at = self._join_point(self.channels.index(outbox), split.through)
        deliver = self.channels[at + 1].send if at + 1 < len(self.channels) else self._finish
        join = Join(item, st, split.merge, self.channels[at], deliver, attempts=item.attempts)
        n = 0
        try:
            for value in split.parts:
                if join.closed:  # a part failed already: send no more
                    return
                part = Item(
                    item.key,
                    value,
                    item.source,
                    meta=item.meta,
                    born=item.born,
                    attempts=item.attempts,
                )
                part.part, part.join = n, join
                await outbox.send(part)
                n += 1
        except Exception as exc:  # noqa: BLE001 — the parts iterator failed: the item fails
            if join.fail():
                await self.emit(self._failed(item, st, exc, item.attempts))
            return
        join.expected = n
        if join.complete():  # every part is back already (or there were none)
            await self._merge(join)

    def _join_point(self, first: int, through: str | None) -> int:
        """Index of the group whose end joins parts that enter group ``first`` (len: the sink)."""
        if through is None:
            return first
        for gi in range(first, len(self.groups)):
            if any(s.name == through for s in self.groups[gi]):
                return gi
        return len(self.groups)

    async def _joined(self, part: Item, st: Stage) -> None:
        """A part's result is back: keep it; merge and deliver once the last one is in."""
        join = part.join
        assert join is not None
        if isinstance(part.value, Split):
            if join.fail():
                exc = SplitError(f"stage {st.name!r} split a part of an already split item")
                await self.emit(self._failed(join.item, st, exc, 1))
            return
        if join.add(part.part, part.value, part.attempts):
            await self._merge(join)

    async def _merge(self, join: Join) -> None:
        item = join.item
        try:
            item.value = join.merged()
        except Exception as exc:  # noqa: BLE001 — a merge is user code: the item fails
            await self.emit(self._failed(item, join.stage, exc, join.attempts))
            return
        item.attempts = join.attempts
        await join.deliver(item)

    async def _part_failed(self, part: Item, record: Record) -> None:
        """The first failed part fails the whole item; later ones are dropped."""
        assert part.join is not None
        if part.join.fail():
            record.meta = {**record.meta, "part": part.part}
            await self.emit(record)

    async def _run_lanes(
        self, group: list[Stage], lanes: list[Lane], inbox: Channel[Item], outbox: Channel[Item]
    ) -> None:
        first = self.stages.index(group[0])
        kind = group[0].kind
        max_batch = min(s.max_batch for s in group) if kind in ("thread", "process") else 1
        if self.backend is not None:
            shard = self.backend.shard_size
            batcher = Batcher(max_batch=shard, share=shard, fixed=shard)
        else:
            batcher = Batcher(max_batch=max_batch, share=math.ceil(inbox.capacity / len(lanes)))
        cap = len(lanes)
        if self.opts.autoscale and self.backend is None:
            keep = start_workers(kind, cap)
            # process lanes start their worker when created: stop those not used now
            # (the autoscaler grows through _extra_lane, which makes new lanes)
            await asyncio.gather(
                *(lane.close(graceful=True) for lane in lanes[keep:]), return_exceptions=True
            )
            lanes = lanes[:keep]
        live: list[Lane] = []
        tasks: set[asyncio.Task[None]] = set()
        grown = asyncio.Event()

        def add_lane(lane: Lane) -> None:
            live.append(lane)
            self.lanes.append(lane)
            if isinstance(lane, AsyncLane):
                tasks.add(asyncio.create_task(self.drive_async(group, first, lane, inbox, outbox)))
            else:
                # a process lane takes DEPTH batches at once: its worker never waits for the next
                for _ in range(DEPTH if isinstance(lane, ProcessLane) else 1):
                    driver = self.drive(group, first, lane, inbox, outbox, batcher)
                    tasks.add(asyncio.create_task(driver))
            for i in range(first, first + len(group)):
                self.metrics[i].workers = len(live)
            handle.lanes = len(live)
            grown.set()

        handle = GroupHandle(
            name=group[0].name,
            kind=kind,
            cap=cap,
            inbox=inbox,
            metrics=self.metrics[first : first + len(group)],
            add_lane=lambda: add_lane(self._extra_lane(group)),
        )
        self.handles.append(handle)
        for lane in lanes:
            add_lane(lane)
        graceful = False
        try:
            await _wait_growing(tasks, grown)
            graceful = True
        finally:
            handle.done = True
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.gather(
                *(lane.close(graceful=graceful) for lane in live), return_exceptions=True
            )
            now = time.perf_counter()
            for i in range(first, first + len(group)):
                self.metrics[i].ended = now
            outbox.close()

    def _extra_lane(self, group: list[Stage]) -> Lane:
        """One more lane for a growing group (thread pools grow by one thread)."""
        steps = steps_of(group, self._contexts.get(group[0].name, {}))
        kind = group[0].kind
        if kind == "process":
            return ProcessLane(steps, on_crash=self.on_crash)
        if kind == "thread":
            pool = self.pools[group[0].name]
            pool.grow()
            return ThreadLane(steps, pool)
        return AsyncLane(steps)

    async def drive(
        self,
        group: list[Stage],
        first: int,
        lane: Lane,
        inbox: Channel[Item],
        outbox: Channel[Item],
        batcher: Batcher,
    ) -> None:
        again: deque[Item] = deque()
        head = self.metrics[first]
        tail = self.metrics[first + len(group) - 1]
        while True:
            if again:
                batch = [again.popleft() for _ in range(min(len(again), batcher.size()))]
            else:
                waited = time.perf_counter()
                batch = await _take_batch(inbox, batcher.size())
                head.wait_inbox += time.perf_counter() - waited
                if not batch:
                    return
            started = time.perf_counter()
            done, back = await lane.run(batch)
            batcher.observe(time.perf_counter() - started, len(done))
            head.batches += 1
            again.extend(back)
            for item, outcome in done:
                self._account(first, len(group), outcome)
                blocked = time.perf_counter()
                await self._forward(group, item, outcome, inbox, outbox)
                if outcome.ok:
                    tail.blocked_outbox += time.perf_counter() - blocked

    async def drive_async(
        self,
        group: list[Stage],
        first: int,
        lane: AsyncLane,
        inbox: Channel[Item],
        outbox: Channel[Item],
    ) -> None:
        """:meth:`drive` for an async lane: one item at a time. An ``await`` costs no hop to
        amortise, so there is no batch list, batcher or hand-back queue to keep per item."""
        metrics = self.metrics[first]  # async stages are never fused: head and tail are one
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
            self._account(first, 1, outcome)
            blocked = perf()
            await self._forward(group, item, outcome, inbox, outbox)
            if outcome.ok:
                metrics.blocked_outbox += perf() - blocked

    async def _forward(
        self,
        group: list[Stage],
        item: Item,
        outcome: Outcome,
        inbox: Channel[Item],
        outbox: Channel[Item],
    ) -> None:
        """Hand on an item a group finished: its failure record, the next group, its join, or
        (after the last group) its record, directly rather than through the sink task."""
        if not outcome.ok:
            failure = self._failure(item, group[outcome.step], outcome)
            if item.join is not None:
                await self._part_failed(item, failure)
            else:
                await self.emit(failure)
            return
        item.value = outcome.value
        if outcome.attempts > item.attempts:
            item.attempts = outcome.attempts
        if item.join is not None:  # a part of a split item
            if item.join.closed:  # its item failed already
                return
            if item.join.at is inbox or isinstance(item.value, Split):
                await self._joined(item, group[-1])
            else:  # more stages to run before the join
                await outbox.send(item)
        elif isinstance(item.value, Split):
            await self._split(item, group[-1], outbox)
        elif outbox is self.channels[-1]:  # the last group: one task switch less per item
            await self._finish(item)
        else:
            await outbox.send(item)

    def _account(self, first: int, n: int, out: Outcome) -> None:
        total_busy = sum(out.busy) or 1e-12
        last = out.step if not out.ok else n - 1
        for j in range(last + 1):
            m = self.metrics[first + j]
            m.items += 1
            m.busy += out.busy[j]
            m.cpu += out.cpu * (out.busy[j] / total_busy)
            if j < last or out.ok:
                m.ok += 1
            elif not _is_skip(out.value):
                m.failed += 1
            self.progress.advance(first + j)

    def _failure(self, item: Item, st: Stage, out: Outcome) -> Record:
        return self._failed(item, st, out.value, out.attempts)

    def _failed(self, item: Item, st: Stage, exc: BaseException, attempts: int) -> Record:
        # an exception may carry its own attempt count (a download retried inside its stage)
        # and small JSON-able ``details`` for the record (an HTTP status)
        attempts = max(attempts, _int(getattr(exc, "attempts", 0)))
        details = getattr(exc, "details", None)
        meta = {**item.meta, **details} if isinstance(details, dict) else item.meta
        error_type = exc.error_type if isinstance(exc, RemoteError) else type(exc).__name__
        message = exc.message if isinstance(exc, RemoteError) else str(exc)
        if error_type == Skip.__name__:  # the stage declined the item (from a worker too)
            return Record(
                key=item.key,
                status=Status.SKIPPED,
                source=item.source,
                stage=st.name,
                reason=message or "declined by the stage",
                meta=meta,
                duration=time.perf_counter() - item.born if item.born else None,
            )
        return Record(
            key=item.key,
            status=Status.FAILED,
            source=item.source,
            stage=st.name,
            error_type=error_type,
            error=message or error_type,
            attempts=attempts,
            meta=meta,
            duration=time.perf_counter() - item.born if item.born else None,
        )

    async def sink(self, inbox: Channel[Item]) -> None:
        async for item in inbox:
            if item.join is not None:  # a part of an item the last stage split
                await self._joined(item, self.stages[-1])
            else:
                await self._finish(item)

    async def _finish(self, item: Item) -> None:
        await self.emit(
            Record(
                key=item.key,
                status=Status.OK,
                source=item.source,
                value=item.value,
                meta=item.meta,
                attempts=item.attempts,
                duration=time.perf_counter() - item.born if item.born else None,
            )
        )

    async def sampler(self, inbox_of: Sequence[Channel[Item]]) -> None:
        """Timeline samples and the progress bars' inbox fill, at the timeline's interval."""
        while True:
            await asyncio.sleep(self.timeline.interval)
            self._sample(inbox_of)
            self.progress.set_fill([(len(c), c.capacity) for c in inbox_of])

    def _sample(self, inbox_of: Sequence[Channel[Item]]) -> None:
        """One timeline sample (also a last one when the run ends, so that a run shorter than
        the interval still has its charts); ``inbox_of`` is each stage's inbox."""
        self.timeline.sample(
            [m.items for m in self.metrics],
            [len(c) for c in inbox_of],
            [m.workers for m in self.metrics],
        )

    # -- the whole run -------------------------------------------------------------------------
    async def execute(self) -> RunResult:
        started = time.perf_counter()
        started_at = dt.datetime.now(dt.UTC)
        ledger_cm: Any = (
            Ledger(self.opts.output, run=self.run_id)
            if self.opts.output is not None
            else _NoLedger()
        )
        error: BaseException | None = None
        interrupted = False
        backend_cm: Any = (
            self.backend.open() if self.backend is not None else contextlib.nullcontext()
        )
        async with ledger_cm as ledger, backend_cm:
            self.ledger = ledger
            if ledger is not None:
                await ledger.write_summary(
                    {"run": self.run_id, "finished": False, "started": started_at.isoformat()}
                )
            channels = [Channel[Item](self._capacity(g), name=g[0].name) for g in self.groups]
            channels.append(Channel[Item](max(8, self.groups[-1][-1].capacity), name="done"))
            self.channels = channels
            writer = asyncio.create_task(self.ledger_writer(), name="ledger")
            feeder = asyncio.create_task(self.feed(channels[0]), name="feeder")
            work = [feeder]
            for gi, group in enumerate(self.groups):
                work.append(
                    asyncio.create_task(
                        self.run_group(group, channels[gi], channels[gi + 1]), name=group[0].name
                    )
                )
            work.append(asyncio.create_task(self.sink(channels[-1]), name="sink"))
            # each stage's inbox: the channel in front of its group
            inbox_of = [channels[i] for i, group in enumerate(self.groups) for _ in group]
            refresher: asyncio.Task[None] | None = asyncio.create_task(self.sampler(inbox_of))
            scaler = (
                asyncio.create_task(self.autoscaler.run()) if self.autoscaler is not None else None
            )
            try:
                error, interrupted = await self._supervise(work, writer, feeder)
            finally:
                for t in work:
                    t.cancel()
                await asyncio.gather(*work, return_exceptions=True)
                for helper in (refresher, scaler):
                    if helper is not None:
                        helper.cancel()
                        await asyncio.gather(helper, return_exceptions=True)
                self._sample(inbox_of)
                self._stop_workers()
                self.ledger_ch.close()
                writer_error = (await asyncio.gather(writer, return_exceptions=True))[0]
                if isinstance(writer_error, BaseException) and error is None:
                    error = writer_error
                await self._cancel_leftovers(interrupted, error)
                self.progress.close()
            revisited = None
            seen_all = not interrupted and error is None  # a run that saw every input
            if ledger is not None and self.opts.revisit is not None and seen_all:
                revisited = await ledger.revisit(self.run_id, self.opts.revisit)
            lines = await ledger.export_manifest() if ledger is not None else None
            collected = await self._collect()
            if revisited is not None:
                collected["revisited"] = revisited
            if self.backend is not None:
                collected["backend"] = self.backend.summary()
            if self.autoscaler is not None:
                collected["autoscale"] = self.autoscaler.summary()
            result = self._result(started, error, interrupted, collected)
            if ledger is not None:
                await self._write_summary(ledger, result, started_at, lines)
        if error is not None:
            if isinstance(error, FatalRunError):
                raise error
            raise FatalRunError(f"run stopped by an engine error: {error!r}") from error
        return result

    def _capacity(self, group: list[Stage]) -> int:
        if self.backend is not None:  # room for one whole shard to gather while others run
            return max(group[0].capacity, int(self.backend.shard_size))
        return group[0].capacity

    async def _supervise(
        self, work: list[asyncio.Task[None]], writer: asyncio.Task[None], feeder: asyncio.Task[None]
    ) -> tuple[BaseException | None, bool]:
        stop = asyncio.create_task(self.stop.wait())
        try:
            pending = set(work)
            while pending:
                done, _ = await asyncio.wait(
                    pending | {writer, stop}, return_when=asyncio.FIRST_COMPLETED
                )
                for t in done & pending:
                    pending.discard(t)
                    if not t.cancelled() and t.exception() is not None:
                        return t.exception(), False
                if writer in done:
                    exc = writer.exception() if not writer.cancelled() else None
                    return exc or LedgerError("the ledger writer stopped early"), False
                if stop in done:
                    break
            if not pending:
                return None, False
            # Ctrl-C: stop feeding, give in-flight items `grace` seconds, then cancel the rest.
            log.warning("interrupted: finishing in-flight items for up to %.1f s", self.opts.grace)
            feeder.cancel()
            abort = asyncio.create_task(self.abort.wait())
            try:
                await _wait_all_or(pending - {feeder}, abort, self.opts.grace)
            finally:
                abort.cancel()
            return None, True
        finally:
            stop.cancel()

    def _stop_workers(self) -> None:
        for pool in self.pools.values():
            pool.shutdown()

    def hard_abort(self) -> None:
        """Second Ctrl-C: skip the grace period; cancelled lanes kill their workers at once."""
        self.stop.set()
        self.abort.set()

    async def _cancel_leftovers(self, interrupted: bool, error: BaseException | None) -> None:
        if not self.inflight:
            return
        reason = "interrupted" if interrupted else f"run stopped: {type(error).__name__}: {error}"
        leftovers = [
            Record(
                key=item.key,
                status=Status.CANCELLED,
                source=item.source,
                reason=reason,
                meta=item.meta,
                run=self.run_id,
                fingerprint=self.fingerprint(item.key, item),
                identity=item.identity,
                redo=item.redo,
            )
            for item in self.inflight.values()
        ]
        self.inflight.clear()
        await self._record(leftovers)

    async def _collect(self) -> dict[str, Any]:
        """Collectors' results, after the manifest is exported (they may read it)."""
        collected: dict[str, Any] = {}
        for col in self.collectors:
            try:
                collected[col.name] = await asyncio.to_thread(col.result)
            except Exception as exc:  # noqa: BLE001 — a report must not hide the run's outcome
                log.error("collector %s failed: %s: %s", col.name, type(exc).__name__, exc)
                collected[col.name] = {"error": f"{type(exc).__name__}: {exc}"}
        return collected

    def _result(
        self,
        started: float,
        error: BaseException | None,
        interrupted: bool,
        collected: dict[str, Any],
    ) -> RunResult:
        not_started = None
        if self.total is not None:
            not_started = max(0, self.total - self.seen)
        return RunResult(
            run_id=self.run_id,
            counts=dict(self.counts),
            seen=self.seen,
            not_started=not_started,
            duplicates=self.duplicates,
            interrupted=interrupted,
            error=f"{type(error).__name__}: {error}" if error is not None else None,
            duration=time.perf_counter() - started,
            stages=tuple(m.snapshot() for m in self.metrics),
            crashes=tuple(self.crashes),
            output=self.opts.output,
            collected=collected,
            timeline=self.timeline.to_json(),
        )

    async def _write_summary(
        self, ledger: Ledger, result: RunResult, started_at: dt.datetime, lines: int | None
    ) -> None:
        summary = {
            "run": self.run_id,
            "finished": True,
            "started": started_at.isoformat(),
            "ended": dt.datetime.now(dt.UTC).isoformat(),
            **result.to_json(),
            "manifest_lines": lines,
            "folder_counts": await ledger.folder_counts(),
            "exit_code": result.exit_code,
        }
        await ledger.write_summary(summary)


async def _wait_growing(tasks: set[asyncio.Task[None]], grown: asyncio.Event) -> None:
    """Wait for every task in ``tasks``, which may gain members meanwhile; raise the first error."""
    while True:
        pending = {t for t in tasks if not t.done()}
        for t in tasks - pending:
            if not t.cancelled() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
        if not pending:
            return
        grown.clear()
        signal_task = asyncio.create_task(grown.wait())
        try:
            await asyncio.wait(pending | {signal_task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            signal_task.cancel()


async def _wait_all_or(
    tasks: set[asyncio.Task[None]], abort: asyncio.Task[bool], grace: float
) -> None:
    """Wait until every task is done, ``abort`` completes, or ``grace`` seconds pass."""
    deadline = time.monotonic() + grace
    pending = set(tasks)
    while pending and not abort.done():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        done, _ = await asyncio.wait(
            pending | {abort}, timeout=left, return_when=asyncio.FIRST_COMPLETED
        )
        pending -= done


class _NoLedger:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


@contextlib.contextmanager
def _single_thread(name: str) -> Iterator[Any]:
    from concurrent.futures import ThreadPoolExecutor

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


async def _take_batch(inbox: Channel[Item], n: int) -> list[Item]:
    try:
        batch = [await inbox.receive()]
    except EndOfStream:
        return []
    while len(batch) < n:
        try:
            batch.append(inbox.receive_nowait())
        except (WouldBlock, EndOfStream):
            break
    return batch


def _done(prev: Record) -> bool:
    """An earlier record that says the item was made: ``ok``, or skipped as already done."""
    return prev.status is Status.OK or (
        prev.status is Status.SKIPPED and prev.reason == REASON_DONE
    )


def _declined(prev: Record) -> bool:
    """An earlier record of a stage that declined the input (raised :class:`Skip`)."""
    return prev.status is Status.SKIPPED and prev.stage is not None


def _changed(before: dict[str, Any] | None, now: dict[str, Any]) -> str:
    """The record's ``redo`` for an input whose identity changed: which fields did."""
    if before is None:
        return "input changed (no identity in the earlier record)"
    fields = sorted(k for k in {*before, *now} if before.get(k) != now.get(k))
    return f"input changed ({', '.join(fields)})"


def _is_skip(exc: Any) -> bool:
    if isinstance(exc, RemoteError):
        return exc.error_type == Skip.__name__
    return isinstance(exc, Skip)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _known_length(inputs: Any) -> int | None:
    try:
        return len(inputs)
    except TypeError:
        return None
