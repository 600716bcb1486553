"""Per-stage measurements taken while a run goes, the timeline, and the end-of-run table.

For each stage: items in and out, busy time (inside the stage function, summed over workers),
time its drivers waited on the inbox, time they were blocked on the outbox, and CPU time:
the worker process's for process stages, the calling thread's (``time.thread_time``) for thread
and inline stages. ``utilisation`` is busy time over (wall time x workers): the stage with the
highest one is the bottleneck of the line. ``parallelism`` is CPU seconds per wall second: how
many cores the stage kept busy (above 1 for threads means its code released the GIL).
``run_wait`` is the time the workers were runnable but waited for a core (the scheduler's run
delay, :mod:`pipeline.runwait`; None where the system does not report it): busy time is CPU
time + run wait + time asleep (I/O), so a low CPU share means I/O only when the run wait does
not explain it.

Adjacent process stages fused into one worker call share their workers: :func:`fuse` makes one
row of their summed figures, the *fused row*, and that row is what the bottleneck, the verdicts
(:mod:`pipeline.advice`) and the table's fused line are computed from. Each member keeps its own
row too, for what each step cost.

The :class:`Timeline` samples cumulative items and inbox fill per stage at a fixed interval
that doubles whenever the sample buffer fills, so it stays under ``MAX_SAMPLES`` for any run.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

__all__ = ["StageMetrics", "StageSnapshot", "Timeline", "bottleneck", "fuse", "render_table"]


@dataclass(slots=True)
class StageMetrics:
    name: str
    kind: str
    workers: int
    items: int = 0
    ok: int = 0
    failed: int = 0
    busy: float = 0.0
    cpu: float = 0.0
    run_wait: float = 0.0
    run_wait_missing: bool = False  # some item came back without a run-wait reading
    entered: int = 0  # items that entered the stage's group (counted on its first stage)
    wait_inbox: float = 0.0
    blocked_outbox: float = 0.0
    batches: int = 0
    started: float = field(default_factory=time.perf_counter)
    ended: float | None = None
    fused_with: tuple[str, ...] = ()

    def snapshot(self) -> StageSnapshot:
        end = self.ended if self.ended is not None else time.perf_counter()
        wall = max(end - self.started, 1e-9)
        workers = max(self.workers, 1)
        measured = self.kind != "async"  # coroutines share the loop's thread: no CPU split
        return StageSnapshot(
            name=self.name,
            kind=self.kind,
            workers=self.workers,
            items=self.items,
            ok=self.ok,
            failed=self.failed,
            wall=wall,
            items_per_s=self.items / wall,
            busy=self.busy,
            utilisation=min(self.busy / (wall * workers), 1.0),
            wait_inbox=self.wait_inbox,
            blocked_outbox=self.blocked_outbox,
            cpu=self.cpu if measured else None,
            cpu_per_busy=(self.cpu / self.busy if self.busy > 0 else None) if measured else None,
            parallelism=self.cpu / wall if measured else None,
            mean_batch=self.items / self.batches if self.batches else 0.0,
            fused_with=list(self.fused_with),
            run_wait=self.run_wait if measured and not self.run_wait_missing else None,
            entered=self.entered,
        )


@dataclass(frozen=True, slots=True)
class StageSnapshot:
    name: str
    kind: str
    workers: int
    items: int
    ok: int
    failed: int
    wall: float
    items_per_s: float
    busy: float
    utilisation: float
    wait_inbox: float
    blocked_outbox: float
    cpu: float | None
    cpu_per_busy: float | None
    parallelism: float | None
    mean_batch: float
    fused_with: list[str]
    run_wait: float | None = None
    entered: int = 0

    @property
    def core_wait(self) -> float | None:
        """Share of busy time spent runnable, waiting for a core (None: not measured)."""
        if self.run_wait is None or self.busy <= 0:
            return None
        return min(self.run_wait / self.busy, 1.0)

    def to_json(self) -> dict[str, Any]:
        figures = {**asdict(self), "core_wait": self.core_wait}
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in figures.items()}


def _fused_row(members: Sequence[StageSnapshot]) -> StageSnapshot:
    """One row for a fused group: its members' figures summed over the group's workers."""
    first = members[0]
    wall, workers = max(m.wall for m in members), max(max(m.workers for m in members), 1)
    busy, failed = sum(m.busy for m in members), sum(m.failed for m in members)
    items = first.entered or max(m.items for m in members)
    cpus = [m.cpu for m in members]
    cpu = None if None in cpus else sum(c or 0.0 for c in cpus)
    waits = [m.run_wait for m in members]
    batches = (first.items / first.mean_batch) if first.mean_batch else 0.0
    return replace(
        first,
        name="+".join(m.name for m in members),
        workers=workers,
        items=items,
        ok=items - failed,
        failed=failed,
        wall=wall,
        items_per_s=items / wall,
        busy=busy,
        utilisation=min(busy / (wall * workers), 1.0),
        wait_inbox=sum(m.wait_inbox for m in members),
        blocked_outbox=sum(m.blocked_outbox for m in members),
        cpu=cpu,
        cpu_per_busy=(cpu / busy if busy > 0 else None) if cpu is not None else None,
        parallelism=cpu / wall if cpu is not None else None,
        mean_batch=items / batches if batches else 0.0,
        run_wait=None if None in waits else sum(w or 0.0 for w in waits),
        entered=items,
    )


def fuse(stages: Sequence[StageSnapshot]) -> list[StageSnapshot]:
    """The line as it runs: each fused group of stages as one row (see the module docstring),
    the other stages as they are."""
    rows: list[StageSnapshot] = []
    i = 0
    while i < len(stages):
        group = stages[i].fused_with
        n = (
            len(group)
            if len(group) > 1 and [s.name for s in stages[i : i + len(group)]] == group
            else 1
        )
        rows.append(_fused_row(stages[i : i + n]) if n > 1 else stages[i])
        i += n
    return rows


class Timeline:
    """Cumulative items done and inbox fill per stage, sampled over the run."""

    MAX_SAMPLES = 400

    def __init__(self, names: Sequence[str], *, interval: float = 0.25) -> None:
        self.names = list(names)
        self.interval = interval
        self.t: list[float] = []
        self.done: list[list[int]] = [[] for _ in names]
        self.inbox: list[list[int]] = [[] for _ in names]
        self.workers: list[list[int]] = [[] for _ in names]
        self._start = time.perf_counter()

    def sample(self, done: Sequence[int], inbox: Sequence[int], workers: Sequence[int]) -> None:
        self.t.append(round(time.perf_counter() - self._start, 3))
        for series, values in ((self.done, done), (self.inbox, inbox), (self.workers, workers)):
            for i, v in enumerate(values):
                series[i].append(v)
        if len(self.t) >= self.MAX_SAMPLES:  # keep every other sample, sample half as often
            self.t = self.t[::2]
            for series in (self.done, self.inbox, self.workers):
                for i in range(len(series)):
                    series[i] = series[i][::2]
            self.interval *= 2

    def to_json(self) -> dict[str, Any]:
        return {
            "t": self.t,
            "interval": self.interval,
            "stages": {
                name: {"done": self.done[i], "inbox": self.inbox[i], "workers": self.workers[i]}
                for i, name in enumerate(self.names)
            },
        }


def bottleneck(stages: Sequence[StageSnapshot]) -> StageSnapshot | None:
    """The stage (or fused row) whose workers were busiest relative to their number."""
    busy = [s for s in fuse(stages) if s.items]
    return max(busy, key=lambda s: s.utilisation) if busy else None


def render_table(stages: Sequence[StageSnapshot]) -> str:
    """A plain-text table for the terminal: a row per stage, then each fused group's row (its
    name joins its members' with ``+``); the bottleneck row is marked. ``core-wait`` is the
    share of busy time spent waiting for a core (``-``: not measured)."""
    top = bottleneck(stages)
    rows = fuse(stages)
    width = max([14, *(len(r.name) for r in rows)])  # a fused group's name whole
    head = (
        f"{'stage':<{width}} {'kind':<8} {'wkrs':>4} {'items':>8} {'failed':>6} {'items/s':>9} "
        f"{'busy%':>6} {'inbox-wait s':>12} {'outbox-block s':>14} {'cpu/busy':>8} {'cores':>5} "
        f"{'core-wait':>9}"
    )
    lines = [head, "-" * len(head)]
    members = {s.name for s in stages}
    for row in rows:
        if row.name not in members:  # a fused group: its members first, then its row
            lines += [_row(s, None, width) for s in stages if s.name in row.fused_with]
        lines.append(_row(row, top, width))
    return "\n".join(lines)


def _row(s: StageSnapshot, top: StageSnapshot | None, width: int = 14) -> str:
    ratio = f"{s.cpu_per_busy:.2f}" if s.cpu_per_busy is not None else "-"
    cores = f"{s.parallelism:.2f}" if s.parallelism is not None else "-"
    wait = f"{100 * s.core_wait:.0f}%" if s.core_wait is not None else "-"
    mark = "  <- bottleneck" if top is not None and s.name == top.name else ""
    return (
        f"{s.name:<{width}} {s.kind:<8} {s.workers:>4} {s.items:>8} {s.failed:>6} "
        f"{s.items_per_s:>9.1f} {100 * s.utilisation:>5.0f}% {s.wait_inbox:>12.2f} "
        f"{s.blocked_outbox:>14.2f} {ratio:>8} {cores:>5} {wait:>9}{mark}"
    )
