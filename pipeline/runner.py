"""The runner: one run of a chain of stages, as a few owners started in task groups.

Data flow (every arrow a bounded :class:`~pipeline.channel.Channel`; items only move
downstream, each to the next group that takes its value: :mod:`pipeline.routing`)::

    feeder ─▶ [group 1] ─▶ [group 2] ─▶ … ─▶ ok record ─┐
      │           └── failed / skipped records ────────┼─▶ records channel ─▶ ledger writer
      └── records settled by resume ───────────────────┘

The owners, each in its own module:

* the feeder (:mod:`pipeline.feeder`), with the resume policy (:mod:`pipeline.resume`);
* one supervisor per stage group (:mod:`pipeline.supervisor`) and its drivers
  (:mod:`pipeline.drivers`), on lanes that the backend provides (:mod:`pipeline.backends`);
  split items' parts and joins (:mod:`pipeline.joins`);
* the recorder (:mod:`pipeline.recorder`): the in-flight set, every terminal record, the
  ``cancelled`` leftovers; the ledger writer (:mod:`pipeline.writer`);
* the sampler (:mod:`pipeline.sampler`), the autoscaler (:mod:`pipeline.autoscale`) and the
  Ctrl-C watcher (:mod:`pipeline.control`);
* the end of the run: :mod:`pipeline.summary`.

The tasks, structured so that a failure or Ctrl-C cancels the rest by construction::

    run ── TaskGroup ─┬─ ledger writer
                      └─ work ── TaskGroup ─┬─ sampler, autoscaler, Ctrl-C watcher
                                            └─ flow ── TaskGroup ─┬─ feeder
                                                                  └─ group supervisors
                                                                     (each a TaskGroup
                                                                      of its drivers)

An error in the flow (crash budget exceeded, a broken engine) cancels the rest of the flow and
the helpers; Ctrl-C past its grace period does the same through the watcher. Either way the
work then closes the records channel, the writer commits everything queued and ends, and the
items still in flight are recorded ``cancelled``. An error of the writer (the ledger cannot be
written) cancels the work. ``summary.json`` is written last, also after an error or Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import os
import time
from collections import Counter
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .autoscale import Autoscaler, GroupHandle
from .backends import Backend, GroupEnv
from .backends.local import LocalBackend
from .channel import Channel
from .config import RunOptions
from .control import Control, Interrupted
from .drivers import GroupDriver
from .errors import CrashBudgetExceeded, FatalRunError, LedgerError
from .feeder import Feeder, known_length
from .forkserver import shutdown
from .joins import Joins
from .ledger import Ledger
from .metrics import StageMetrics, Timeline
from .progress import Progress
from .recorder import Recorder
from .records import Item, Record
from .result import Collector, RunResult
from .resume import ResumePolicy
from .routing import Router
from .sampler import Sampler
from .stage import Stage
from .summary import Ending, collect, finish_ledger, write_summary
from .supervisor import GroupSupervisor
from .writer import LEDGER_CAPACITY, LedgerWriter, open_ledger

__all__ = ["Run"]

log = logging.getLogger("pipeline")


@dataclass(slots=True)
class _Flow:
    """The owners of one run that move items, built once the ledger is open."""

    feeder: Feeder
    supervisors: list[GroupSupervisor]
    sampler: Sampler


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
        self.inputs = inputs
        self.opts = opts
        self.collectors = list(collectors)
        self.on_record = on_record
        self.backend: Backend = opts.backend if opts.backend is not None else LocalBackend()
        self.groups = self.backend.groups(self.stages)
        # 6 random hex digits, as uuid4().hex[:6] gave (uuid imports platform: ~2 ms at start-up)
        self.run_id = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S") + "-" + os.urandom(3).hex()
        self.metrics = _metrics(self.stages, self.groups)
        self.total = known_length(inputs)
        self.crashes: list[str] = []
        self.work_seconds: float | None = None
        self.counts: Counter[str] = Counter()
        self.seen = self.duplicates = 0
        self.control = Control()
        self.handles: list[GroupHandle] = []
        self.autoscaler = Autoscaler(self.handles) if opts.autoscale else None
        names = [s.name for s in self.stages]
        self.progress = Progress(names, total=self.total, enabled=opts.progress)
        self.timeline = Timeline(names)
        records = Channel[Record](LEDGER_CAPACITY, name="ledger")
        fingerprint = opts.fingerprint
        if fingerprint is None:
            fingerprint = _stages_fingerprint(stages)
        self.recorder = Recorder(self.run_id, fingerprint, records)

    def request_stop(self, by: str = "SIGINT") -> None:
        """Ctrl-C (or SIGTERM, SIGHUP: ``by``): stop feeding; in-flight items get their grace."""
        self.control.stop(by)

    def hard_abort(self) -> None:
        """Second Ctrl-C: skip the grace period; cancelled lanes kill their workers at once."""
        self.control.abort()

    def on_crash(self, what: str) -> None:
        """A worker crashed (its item fails); past the crash budget the run stops."""
        self.crashes.append(what)
        log.warning("worker crash %d/%d: %s", len(self.crashes), self.opts.crash_budget, what)
        if len(self.crashes) > self.opts.crash_budget:
            raise CrashBudgetExceeded(
                f"{len(self.crashes)} worker crashes, more than the crash budget of "
                f"{self.opts.crash_budget}; last: {what}"
            )

    async def execute(self) -> RunResult:
        started, started_at = time.perf_counter(), dt.datetime.now(dt.UTC)
        async with open_ledger(self.opts.output, self.run_id) as ledger, self.backend.open():
            if ledger is not None:
                await ledger.write_summary(
                    {"run": self.run_id, "finished": False, "started": started_at.isoformat()}
                )
            ending = await self._run(ledger)
            self.work_seconds = time.perf_counter() - started  # the last record is committed
            if self.opts.stop_helpers and isinstance(self.backend, LocalBackend):
                # the run's workers are gone (see RunOptions): told to exit, waited for later
                shutdown(wait=False)
            with _only_logged_after(ending, "the end of the run is not written"):
                result = await self._conclude(ledger, ending, started, started_at)
        if ending.error is not None:
            if isinstance(ending.error, FatalRunError):
                raise ending.error
            raise FatalRunError(f"run stopped by an engine error: {ending.error!r}") from (
                ending.error
            )
        return result

    # -- the tasks -----------------------------------------------------------------------------
    async def _run(self, ledger: Ledger | None) -> Ending:
        """The ledger writer beside the work; then the leftovers, whatever happened."""
        writer = LedgerWriter(
            self.recorder.channel,
            ledger,
            collectors=self.collectors,
            on_record=self.on_record,
            progress=self.progress,
            saved=self.recorder.saved,
        )
        flow = self._build(ledger)
        ending = Ending()
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(writer.run(), name="ledger")
                tasks.create_task(self._work(flow, ending), name="work")
        except* Exception as group:  # noqa: BLE001 — the run's fatal error, raised after the ledger
            ending.error = ending.error or _first(group)
        finally:  # also when the run itself is cancelled
            flow.sampler.sample()
            in_flight = "the records of the inputs in flight are not journalled"
            with _only_logged_after(ending, in_flight):
                await writer.commit(self.recorder.leftovers(ending.reason()))
            self.progress.close()
            self.counts = writer.counts
            self.seen, self.duplicates = flow.feeder.seen, flow.feeder.duplicates
        return ending

    async def _work(self, flow: _Flow, ending: Ending) -> None:
        """The flow and its helpers; closes the records channel at its end, however it ends."""
        control = self.control
        try:
            async with asyncio.TaskGroup() as helpers:
                helpers.create_task(flow.sampler.run(control), name="sampler")
                if self.autoscaler is not None:
                    helpers.create_task(self.autoscaler.run(control), name="autoscaler")
                try:
                    async with asyncio.TaskGroup() as tasks:
                        feeder = tasks.create_task(flow.feeder.run(), name="feeder")
                        watch = control.watch(feeder, self.opts.grace)
                        helpers.create_task(watch, name="ctrl-c")
                        for supervisor in flow.supervisors:
                            tasks.create_task(supervisor.run(), name=supervisor.name)
                finally:
                    control.end()
        except* Interrupted:
            pass  # Ctrl-C past the grace period: what is still in flight is recorded cancelled
        except* Exception as group:  # noqa: BLE001 — the run's fatal error, raised after the ledger
            ending.error = _first(group)
        finally:
            ending.interrupted = control.interrupted
            self.recorder.close()  # the writer commits what is queued, then ends

    def _build(self, ledger: Ledger | None) -> _Flow:
        capacity = self.backend.capacity
        inboxes = [Channel[Item](capacity(g), name=g[0].name) for g in self.groups]
        router = Router(self.groups, inboxes, self.recorder)
        joins = Joins(router, self.recorder)
        policy = ResumePolicy(self.opts, self.recorder.fingerprint)
        feeder = Feeder(
            self.inputs,
            recorder=self.recorder,
            router=router,
            ledger=ledger,
            policy=policy,
            progress=self.progress,
        )
        supervisors = [self._supervisor(i, router, joins) for i in range(len(self.groups))]
        inbox_of = [inboxes[i] for i, group in enumerate(self.groups) for _ in group]
        return _Flow(
            feeder, supervisors, Sampler(self.metrics, inbox_of, self.timeline, self.progress)
        )

    def _supervisor(self, index: int, router: Router, joins: Joins) -> GroupSupervisor:
        group = self.groups[index]
        first = sum(len(g) for g in self.groups[:index])
        metrics = self.metrics[first : first + len(group)]
        driver = GroupDriver(
            index,
            first,
            metrics,
            router=router,
            joins=joins,
            recorder=self.recorder,
            progress=self.progress,
        )
        inboxes = router.inboxes
        return GroupSupervisor(
            group,
            driver,
            backend=self.backend,
            env=GroupEnv(self.on_crash, inboxes[index].capacity, self.opts.autoscale),
            inbox=inboxes[index],
            outbox=inboxes[index + 1] if index + 1 < len(inboxes) else None,
            handles=self.handles,
        )

    # -- the end -------------------------------------------------------------------------------
    async def _conclude(
        self, ledger: Ledger | None, ending: Ending, started: float, started_at: dt.datetime
    ) -> RunResult:
        revisited, lines = None, None
        if ledger is not None:
            complete = ending.complete
            revisited, lines = await finish_ledger(
                ledger, self.run_id, self.opts.revisit, complete, self.collectors
            )
        collected = await collect(self.collectors)
        if revisited is not None:
            collected["revisited"] = revisited
        backend = self.backend.summary()
        if backend is not None:
            collected["backend"] = backend
        if self.autoscaler is not None:
            collected["autoscale"] = self.autoscaler.summary()
        result = RunResult(
            run_id=self.run_id,
            counts=dict(self.counts),
            seen=self.seen,
            not_started=max(0, self.total - self.seen) if self.total is not None else None,
            duplicates=self.duplicates,
            interrupted=ending.interrupted,
            stopped_by=self.control.stopped_by if ending.interrupted else None,
            error=f"{type(ending.error).__name__}: {ending.error}" if ending.error else None,
            duration=time.perf_counter() - started,
            stages=tuple(m.snapshot() for m in self.metrics),
            crashes=tuple(self.crashes),
            output=self.opts.output,
            collected=collected,
            timeline=self.timeline.to_json(),
        )
        if ledger is not None:
            await write_summary(ledger, result, started_at, lines, self.work_seconds)
        return result


def _metrics(stages: Sequence[Stage], groups: Sequence[Sequence[Stage]]) -> list[StageMetrics]:
    """A stage's metrics, naming the stages it is fused with (a group of several)."""
    metrics = [StageMetrics(s.name, s.kind, s.workers) for s in stages]
    first = 0
    for group in groups:
        if len(group) > 1:
            names = tuple(s.name for s in group)
            for m in metrics[first : first + len(group)]:
                m.fused_with = names
        first += len(group)
    return metrics


def _first(group: BaseExceptionGroup[Any]) -> BaseException:
    """The first error in a task group's (nested) exception group."""
    exc: BaseException = group.exceptions[0]
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _stages_fingerprint(stages: Sequence[Stage]) -> str | None:
    """The run's default fingerprint: the stages' own, together (None when no stage has one)."""
    parts = [f"{s.name}={s.fingerprint}" for s in stages if s.fingerprint is not None]
    if not parts:
        return None
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()[:12]


@contextlib.contextmanager
def _only_logged_after(ending: Ending, what: str) -> Iterator[None]:
    """A :class:`LedgerError` inside, once an error has stopped the run (a full disk), is
    logged as ``what``: the error that stopped the run stays the one reported."""
    try:
        yield
    except LedgerError as exc:
        if ending.error is None:
            raise
        log.warning("%s: %s", what, exc)
