"""Verdicts: what each stage's figures say about how it should run, and how many workers
would balance the line. This is the decision guide people otherwise apply by guess.

Inputs are the :class:`~pipeline.metrics.StageSnapshot` figures:

* ``utilisation`` = busy / (wall x workers): how much of its capacity a stage used;
* ``cpu_per_busy`` = CPU seconds / seconds inside the function: ~1 means computing, ~0 waiting
  (I/O, sleep, or — for threads — waiting for the GIL);
* ``parallelism`` = CPU seconds / wall second: how many cores the stage kept busy.

Verdicts (``kind`` field):

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
* ``blocks-loop``  — an inline stage doing real work on the event loop: use thread or process.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .metrics import StageSnapshot, bottleneck

__all__ = ["Verdict", "advise", "render_advice"]

#: cpu_per_busy below this: the stage mostly waits
IO_BELOW = 0.3
#: a thread stage above this many cores has released the GIL
GIL_RELEASED_ABOVE = 1.3
#: a stage below this utilisation that is not the bottleneck is starved or blocked
IDLE_BELOW = 0.5


@dataclass(frozen=True, slots=True)
class Verdict:
    stage: str
    kind: str
    reason: str
    stage_kind: str
    workers: int
    suggested_workers: int
    suggested_kind: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _classify(s: StageSnapshot) -> tuple[str, str, str]:
    """(verdict kind, reason, suggested stage kind)."""
    ratio = s.cpu_per_busy
    cores = s.parallelism or 0.0
    figures = f"busy {100 * s.utilisation:.0f}% of {s.workers} worker(s)"
    if ratio is not None:
        figures += f", CPU {100 * ratio:.0f}% of busy time, {cores:.2f} cores"
    if s.kind == "async" or ratio is None:
        return "io-bound", f"coroutines waiting on I/O ({figures})", "async"
    if ratio < IO_BELOW:
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


def advise(stages: Sequence[StageSnapshot], *, cores: int | None = None) -> list[Verdict]:
    """One verdict per stage, with the workers that would balance the line."""
    cores = cores or os.cpu_count() or 1
    top = bottleneck(stages)
    classes = {s.name: _classify(s) for s in stages}
    # per-worker rates (items per busy second) and the line rate the cores allow
    rates = {s.name: (s.items / s.busy if s.busy > 0 and s.items else None) for s in stages}
    cpu_work = 0.0  # seconds of one core per item, over the stages that compute
    for s in stages:
        rate, (kind, _reason, suggested_kind) = rates[s.name], classes[s.name]
        if rate and (suggested_kind == "process" or kind == "cpu-c"):
            cpu_work += 1 / rate
    target = cores / cpu_work if cpu_work > 0 else None
    if target is None and top is not None and rates.get(top.name):
        target = (rates[top.name] or 0) * top.workers * 2  # no CPU stage: double the line
    verdicts = []
    top_index = next((i for i, s in enumerate(stages) if top and s.name == top.name), -1)
    for i, s in enumerate(stages):
        kind, reason, suggested_kind = classes[s.name]
        if not s.items:
            verdicts.append(
                Verdict(s.name, "idle", "saw no items", s.kind, s.workers, s.workers, s.kind)
            )
            continue
        if top is not None and s.name != top.name and s.utilisation < IDLE_BELOW:
            if i > top_index and s.wait_inbox > s.busy:
                kind, suggested_kind = "starved", s.kind
                reason = (
                    f"idle {100 * (1 - s.utilisation):.0f}% of the time, waiting for {top.name}"
                )
            elif i < top_index and s.blocked_outbox > s.busy:
                kind, suggested_kind = "starved", s.kind
                reason = (
                    f"blocked by {top.name} downstream ({s.blocked_outbox:.1f} s on its outbox)"
                )
        rate = rates[s.name]
        suggested = s.workers
        if rate and target:
            need = target / rate
            if kind == "starved":
                suggested = max(1, min(s.workers, math.ceil(need * 1.25)))
            elif suggested_kind == "process" or kind == "cpu-c":
                suggested = max(1, min(cores, math.ceil(need - 0.1)))
            else:
                suggested = max(1, min(512, math.ceil(need * 1.25)))
        verdicts.append(Verdict(s.name, kind, reason, s.kind, s.workers, suggested, suggested_kind))
    return verdicts


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
