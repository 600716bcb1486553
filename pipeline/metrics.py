"""Per-stage measurements taken while a run goes, and the end-of-run table.

For each stage: items in and out, busy time (inside the stage function, summed over workers),
time its drivers waited on the inbox, time they were blocked on the outbox, and for process
stages the CPU time the workers spent against their wall time. ``utilisation`` is busy time over
(wall time x workers): the stage with the highest one is the bottleneck of the line.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["StageMetrics", "StageSnapshot", "bottleneck", "render_table"]


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
    wait_inbox: float = 0.0
    blocked_outbox: float = 0.0
    batches: int = 0
    started: float = field(default_factory=time.perf_counter)
    ended: float | None = None
    fused_with: tuple[str, ...] = ()

    def snapshot(self) -> StageSnapshot:
        end = self.ended if self.ended is not None else time.perf_counter()
        wall = max(end - self.started, 1e-9)
        capacity = wall * self.workers
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
            utilisation=min(self.busy / capacity, 1.0),
            wait_inbox=self.wait_inbox,
            blocked_outbox=self.blocked_outbox,
            cpu=self.cpu if self.kind == "process" else None,
            cpu_per_busy=(self.cpu / self.busy if self.busy > 0 else None)
            if self.kind == "process"
            else None,
            mean_batch=self.items / self.batches if self.batches else 0.0,
            fused_with=list(self.fused_with),
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
    mean_batch: float
    fused_with: list[str]

    def to_json(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def bottleneck(stages: Sequence[StageSnapshot]) -> StageSnapshot | None:
    """The stage whose workers were busiest relative to their number."""
    busy = [s for s in stages if s.items]
    return max(busy, key=lambda s: s.utilisation) if busy else None


def render_table(stages: Sequence[StageSnapshot]) -> str:
    """A plain-text table for the terminal; the bottleneck row is marked."""
    top = bottleneck(stages)
    head = (
        f"{'stage':<18} {'kind':<8} {'wkrs':>4} {'items':>9} {'failed':>6} {'items/s':>10} "
        f"{'busy%':>6} {'inbox-wait s':>12} {'outbox-block s':>14} {'cpu/busy':>8}"
    )
    lines = [head, "-" * len(head)]
    for s in stages:
        ratio = f"{s.cpu_per_busy:.2f}" if s.cpu_per_busy is not None else "-"
        mark = "  <- bottleneck" if top is not None and s.name == top.name else ""
        lines.append(
            f"{s.name[:18]:<18} {s.kind:<8} {s.workers:>4} {s.items:>9} {s.failed:>6} "
            f"{s.items_per_s:>10.1f} {100 * s.utilisation:>5.0f}% {s.wait_inbox:>12.2f} "
            f"{s.blocked_outbox:>14.2f} {ratio:>8}{mark}"
        )
    return "\n".join(lines)
