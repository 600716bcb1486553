"""``--workers auto``: size each stage from its measurements while the run goes.

Every stage starts small (process stages at the cores, two threads, eight coroutines; see
:func:`start_workers`) and the autoscaler looks
at the last interval's figures twice a second. It adds a worker to the busiest stage when:

* the stage's workers were busy more than ``BUSY_ABOVE`` of the interval and work is waiting in
  its inbox (it is the bottleneck, not starved);
* it stays within the stage's ``workers`` (the cap) and, for process stages, within the cores
  (all process workers together) and the memory budget (free memory above ``MEMORY_FLOOR``);
* a thread stage is not held by the GIL (several threads busy yet at most one core used:
  more threads would not help; the advice says to use processes);
* the stage's workers did not wait for a core ``CONTENDED_ABOVE`` of their busy time or more
  (the run delay, :mod:`pipeline.runwait`): the CPUs are taken, more workers would only wait.

Each decision is recorded with the figures behind it; the summary lists them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .advice import CONTENDED_ABOVE
from .channel import Channel
from .control import Control
from .metrics import StageMetrics

__all__ = ["Autoscaler", "GroupHandle", "start_workers"]

BUSY_ABOVE = 0.75
INTERVAL = 0.5
MEMORY_FLOOR = 512 * 2**20


def start_workers(kind: str, cap: int, cores: int | None = None) -> int:
    """Where a stage starts under ``--workers auto``.

    Process stages exist for CPU work, so they start at the cores (within their cap): growing
    them from one would waste the first seconds of every run. Threads start at two, coroutines
    at eight, and grow from the measurements.
    """
    if kind == "process":
        return min(cap, cores or os.cpu_count() or 1)
    return min(cap, 8 if kind == "async" else 2)


@dataclass
class GroupHandle:
    """What the autoscaler may change about one running stage group."""

    name: str
    kind: str
    cap: int
    inbox: Channel[Any]
    metrics: list[StageMetrics]
    add_lane: Callable[[], None]
    lanes: int = 0
    last_busy: float = 0.0
    last_cpu: float = 0.0
    last_wait: float = 0.0
    done: bool = False
    history: list[tuple[float, int]] = field(default_factory=list)


def _contended(d_busy: float, d_wait: float) -> str:
    """ "contended" when the workers waited for a core much of their busy interval."""
    return "contended" if d_busy > 0 and d_wait / d_busy >= CONTENDED_ABOVE else ""


def _available_memory() -> int | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


class Autoscaler:
    def __init__(self, handles: Sequence[GroupHandle], *, cores: int | None = None) -> None:
        self.handles = handles  # the group supervisors append theirs as they start
        self.cores = cores or os.cpu_count() or 1
        self.decisions: list[dict[str, Any]] = []
        self._start = time.perf_counter()
        self._last = self._start

    async def run(self, control: Control) -> None:
        """Step every ``INTERVAL`` seconds until the run's flow ends."""
        while not await control.pause(INTERVAL):
            self.step()

    def step(self) -> None:
        now = time.perf_counter()
        dt = max(now - self._last, 1e-6)
        self._last = now
        scored = []
        for h in self.handles:
            busy = sum(m.busy for m in h.metrics)
            cpu = sum(m.cpu for m in h.metrics)
            wait = sum(m.run_wait for m in h.metrics)
            d_busy, d_cpu, d_wait = busy - h.last_busy, cpu - h.last_cpu, wait - h.last_wait
            h.last_busy, h.last_cpu, h.last_wait = busy, cpu, wait
            if h.done or h.lanes >= h.cap or not len(h.inbox):
                continue
            util = d_busy / (dt * max(h.lanes, 1))
            if util < BUSY_ABOVE:
                continue
            scored.append((util, h, d_busy, d_cpu, d_wait))
        if not scored:
            return
        util, h, d_busy, d_cpu, d_wait = max(scored, key=lambda x: x[0])
        why = self._blocked(h, d_busy, d_cpu, dt) or _contended(d_busy, d_wait)
        if why:
            return
        before = h.lanes
        n = before if h.kind == "async" else 1  # coroutines are cheap: double them
        for _ in range(min(n, h.cap - before)):
            h.add_lane()
        self.decisions.append(
            {
                "t": round(now - self._start, 2),
                "stage": h.name,
                "workers": [before, h.lanes],
                "reason": f"busy {100 * util:.0f}% of {before} worker(s) with "
                f"{len(h.inbox)} item(s) waiting; CPU {d_cpu / max(d_busy, 1e-9):.2f} of busy time",
            }
        )

    def _blocked(self, h: GroupHandle, d_busy: float, d_cpu: float, dt: float) -> str:
        if h.kind == "process":
            procs = sum(x.lanes for x in self.handles if x.kind == "process" and not x.done)
            if procs >= self.cores:
                return "cores"
            free = _available_memory()
            if free is not None and free < MEMORY_FLOOR:
                return "memory"
        if h.kind == "thread" and h.lanes >= 2:
            cores_used = d_cpu / dt
            if d_busy / dt > 1.5 and cores_used <= 1.15 and d_cpu / max(d_busy, 1e-9) > 0.3:
                return "gil"  # several threads busy, one core used: more threads won't help
        if h.kind == "inline":
            return "inline"
        return ""

    def summary(self) -> dict[str, Any]:
        return {
            "decisions": self.decisions,
            "final": {h.name: h.lanes for h in self.handles},
        }
