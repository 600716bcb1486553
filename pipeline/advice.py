"""Verdicts: what each stage's figures say about how it should run, and how many workers
would balance the line. This is the decision guide people otherwise apply by guess.

Inputs are the :class:`~pipeline.metrics.StageSnapshot` figures, with each fused group of
process stages as one row (:func:`~pipeline.metrics.fuse`: they share their workers, so they get
one verdict, computed from the figures of that row, which the verdict carries in ``figures``):

* ``utilisation`` = busy / (wall x workers): how much of its capacity a stage used;
* ``cpu_per_busy`` = CPU seconds / seconds inside the function: ~1 means computing, ~0 waiting
  (I/O, sleep, or — for threads — waiting for the GIL);
* ``core_wait`` = run delay / busy: the share of busy time the workers were runnable but had no
  core (other processes, or more workers than cores). It is what a low CPU share means on a
  loaded machine, so a stage is called I/O-bound only when CPU + core wait is a small share of
  its busy time;
* ``parallelism`` = CPU seconds / wall second: how many cores the stage kept busy.

Verdicts (``kind`` field):

* ``contended``    — computes, but its workers spent ``CONTENDED_ABOVE`` or more of their time
  waiting for a core: the CPUs are busy (with other work, or with more workers than cores);
  more workers will not help, and the verdict never suggests more;
* ``starved``      — mostly idle: waiting on its inbox for the bottleneck before it, or blocked
  on its outbox by the bottleneck after it;
* ``io-bound``     — waits more than it computes: threads or async are right, and more workers
  help while it is the bottleneck;
* ``cpu-python``   — a thread stage that computes but never uses more than one core: it holds
  the GIL, so use processes;
* ``cpu-c``        — a thread stage using more than one core: its C code releases the GIL, so
  threads scale and save the pickling a process stage would cost;
* ``cpu``          — a process stage that computes: processes are right;
* ``io-in-process``— a process stage that mostly waits: threads would do, without pickling;
* ``blocks-loop``  — an inline stage doing real work on the event loop: use thread or process;
* ``brief``        — busy less than ``MIN_BUSY`` seconds in all, and neither starved nor
  contended (their waits are measured in nanoseconds, not in CPU ticks; a contended one still
  waited ``MIN_WAIT`` seconds in all at least): too little work to tell. CPU time comes in
  10 ms ticks: on the README's first run, 0.4 s of work, timing noise turned ``cpu`` into
  ``cpu-python`` from one run to the next. No change is suggested.

Where the run delay is not measured (no ``/proc/thread-self/schedstat``), ``load`` (the
machine's load average, given by the caller) stands in: on a machine loaded beyond its cores a
low CPU share is not taken for I/O.

Suggested workers: the line rate the cores allow is the cores over the CPU seconds each input
costs (summed over the computing stages, per item that entered the line); each stage gets the
workers that rate needs, capped — at the cores for processes and GIL-free threads, at
``max(4 x workers, 8 x cores)`` (and ``MAX_WORKERS``) for waiting stages, at the current number
for starved and contended ones.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .metrics import StageSnapshot, bottleneck, fuse

__all__ = ["MIN_BUSY", "Verdict", "advise", "render_advice", "unmeasured_load"]

#: (CPU + core wait) / busy below this: the stage mostly waits (sleeps: I/O, locks)
IO_BELOW = 0.3
#: a thread stage above this many cores has released the GIL
GIL_RELEASED_ABOVE = 1.3
#: a stage below this utilisation that is not the bottleneck is starved or blocked
IDLE_BELOW = 0.5
#: share of busy time waiting for a core from which a computing stage is ``contended``
CONTENDED_ABOVE = 0.25
#: never more workers than this, whatever the figures
MAX_WORKERS = 512
#: a stage busy less than this many seconds in all (its workers together) gets no verdict
MIN_BUSY = 0.5
#: ... unless it is contended, its workers waiting for a core this many seconds in all at least
#: (waits are measured in nanoseconds; a few milliseconds of them over a few items say nothing)
MIN_WAIT = 0.05


@dataclass(frozen=True, slots=True)
class Verdict:
    stage: str
    kind: str
    reason: str
    stage_kind: str
    workers: int
    suggested_workers: int
    suggested_kind: str
    #: the figures the verdict was computed from (the stage's, or its fused row's)
    figures: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class _Line:
    """What a verdict needs to know beyond its own row."""

    cores: int
    load: float | None  # the machine's load average, where the run delay is not measured
    own_cores: float  # cores the line's stages kept busy, together


def _figures(s: StageSnapshot) -> str:
    figures = f"busy {100 * s.utilisation:.0f}% of {s.workers} worker(s)"
    if s.cpu_per_busy is not None:
        figures += f", CPU {100 * s.cpu_per_busy:.0f}% of busy time, {s.parallelism or 0:.2f} cores"
    if s.core_wait is not None:
        figures += f", {100 * s.core_wait:.0f}% waiting for a core"
    return figures


def _contention(s: StageSnapshot, line: _Line) -> str | None:
    """Why the stage's CPU share says nothing about I/O (None: it does)."""
    wait = s.core_wait
    if wait is None:
        if line.load is None or line.load < line.cores:
            return None
        return (
            f"the CPUs are busy (load average {line.load:.1f} on {line.cores} cores): a low CPU "
            "share may be waiting for a core rather than I/O; more workers will not help"
        )
    ratio = s.cpu_per_busy or 0.0
    if wait < CONTENDED_ABOVE or ratio + wait < IO_BELOW:
        return None
    who = (
        f"the line's own workers fill the {line.cores} cores"
        if line.own_cores >= 0.8 * line.cores
        else "the CPUs are busy with other work"
    )
    return (
        f"{who}: {100 * wait:.0f}% of worker time was spent waiting for a core; "
        "more workers will not help"
    )


def _classify(s: StageSnapshot, line: _Line) -> tuple[str, str, str]:
    """(verdict kind, reason, suggested stage kind)."""
    ratio, cores, figures = s.cpu_per_busy, s.parallelism or 0.0, _figures(s)
    if s.kind == "async" or ratio is None:
        return "io-bound", f"coroutines waiting on I/O ({figures})", "async"
    contended = _contention(s, line)
    if contended is not None:
        return "contended", f"{contended} ({figures})", s.kind
    if ratio + (s.core_wait or 0.0) < IO_BELOW:
        if s.kind == "process":
            return (
                "io-in-process",
                f"mostly waits ({figures}): threads would do and save pickling",
                "thread",
            )
        return "io-bound", f"mostly waits ({figures}): threads/async are right", s.kind
    if s.kind == "inline":
        return "blocks-loop", f"computes on the event loop ({figures})", "process"
    if s.kind == "process":
        return "cpu", f"computes ({figures}): processes are right", "process"
    return _classify_threads(s, figures, cores)


def _classify_threads(s: StageSnapshot, figures: str, cores: float) -> tuple[str, str, str]:
    concurrent = s.busy / s.wall  # workers busy at once, on average
    if cores > GIL_RELEASED_ABOVE:
        return (
            "cpu-c",
            f"computes on {cores:.2f} cores from threads ({figures}): its C code releases "
            "the GIL, threads scale without pickling",
            "thread",
        )
    if concurrent > 1.5:  # several threads ran at once, yet not beyond one core
        return (
            "cpu-python",
            f"computes but never beyond one core ({figures}): Python code holding the GIL, "
            "use processes",
            "process",
        )
    return (
        "cpu",
        f"computes ({figures}); too few threads ran at once to tell whether it releases the GIL",
        "thread",
    )


def _computes(kind: str, suggested_kind: str) -> bool:
    return kind in ("cpu-c", "contended") or suggested_kind == "process"


def _target(
    rows: Sequence[StageSnapshot], classes: dict[str, tuple[str, str, str]], cores: int
) -> float | None:
    """Inputs per second the line could reach: the cores over the CPU seconds each item that
    entered the line costs in the computing stages; without one, twice the bottleneck's rate."""
    entered = max((r.entered or r.items for r in rows), default=0)
    if not entered:
        return None
    cpu_work = sum(
        (r.cpu or 0.0) / entered for r in rows if _computes(*classes[r.name][::2]) and r.items
    )
    if cpu_work > 0:
        return cores / cpu_work
    top = bottleneck(rows)
    if top is None or top.busy <= 0:
        return None
    return 2 * entered * top.workers / top.busy  # the bottleneck fully busy, doubled


def _suggest(s: StageSnapshot, kind: str, suggested_kind: str, need: float, cores: int) -> int:
    if kind in ("starved", "contended"):
        cap = min(s.workers, cores) if kind == "contended" and s.kind == "process" else s.workers
        return max(1, min(cap, math.ceil(need * 1.25)))
    if _computes(kind, suggested_kind):
        return max(1, min(cores, math.ceil(need - 0.1)))
    cap = min(MAX_WORKERS, max(4 * s.workers, 8 * cores))
    return max(1, min(cap, math.ceil(need * 1.25)))


def _starved(
    s: StageSnapshot, i: int, top: StageSnapshot | None, top_index: int
) -> tuple[str, str] | None:
    """(kind, reason) when a stage that is not the bottleneck idles because of it."""
    if top is None or s.name == top.name or s.utilisation >= IDLE_BELOW:
        return None
    if i > top_index and s.wait_inbox > s.busy:
        return (
            "starved",
            f"idle {100 * (1 - s.utilisation):.0f}% of the time, waiting for {top.name}",
        )
    if i < top_index and s.blocked_outbox > s.busy:
        return (
            "starved",
            f"blocked by {top.name} downstream ({s.blocked_outbox:.1f} s on its outbox)",
        )
    return None


def advise(
    stages: Sequence[StageSnapshot], *, cores: int | None = None, load: float | None = None
) -> list[Verdict]:
    """One verdict per stage — per fused group for stages fused into one worker call — with the
    workers that would balance the line. ``load``: the machine's load average, used only for the
    stages whose run delay was not measured."""
    cores = cores or os.cpu_count() or 1
    rows = fuse(stages)
    line = _Line(cores, load, sum(r.parallelism or 0.0 for r in rows))
    top = bottleneck(rows)
    classes = {r.name: _classify(r, line) for r in rows}
    target = _target(rows, classes, cores)
    entered = max((r.entered or r.items for r in rows), default=0)
    top_index = next((i for i, r in enumerate(rows) if top and r.name == top.name), -1)
    verdicts = []
    for i, r in enumerate(rows):
        kind, reason, suggested_kind = classes[r.name]
        if not r.items:
            kind, reason, suggested_kind = "idle", "saw no items", r.kind
        elif (starved := _starved(r, i, top, top_index)) is not None:
            (kind, reason), suggested_kind = starved, r.kind
        elif r.busy < MIN_BUSY and (kind != "contended" or (r.run_wait or 0.0) < MIN_WAIT):
            reason = f"too little work to tell: busy {r.busy:.2f} s in all, under {MIN_BUSY:g} s"
            kind, suggested_kind = "brief", r.kind
        suggested = r.workers
        if r.items and r.busy > 0 and target and kind != "brief":
            need = target * r.busy / entered  # worker-seconds per input x inputs per second
            suggested = _suggest(r, kind, suggested_kind, need, cores)
        verdicts.append(
            Verdict(r.name, kind, reason, r.kind, r.workers, suggested, suggested_kind, r.to_json())
        )
    return verdicts


def unmeasured_load(stages: Sequence[StageSnapshot]) -> float | None:
    """The machine's 1-minute load average when some stage computed without a run-delay
    reading (the fallback of :func:`advise`); None otherwise, or where the OS does not say."""
    if all(s.cpu is None or s.run_wait is not None for s in stages):
        return None
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def render_advice(verdicts: Sequence[Verdict]) -> str:
    lines = []
    for v in verdicts:
        change = ""
        if v.suggested_kind != v.stage_kind:
            change = f" -> try kind={v.suggested_kind}, workers={v.suggested_workers}"
        elif v.suggested_workers != v.workers:
            change = f" -> try workers={v.suggested_workers}"
        lines.append(f"  {v.stage}: {v.kind}: {v.reason}{change}")
    return "\n".join(lines)
