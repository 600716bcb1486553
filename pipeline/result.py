"""What a run returns: :class:`RunResult`, and the :class:`Collector` protocol for reports."""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .advice import Verdict, advise, render_advice, unmeasured_load
from .metrics import StageSnapshot, bottleneck, render_table
from .records import Record

__all__ = ["Collector", "RunResult"]


class Collector(Protocol):
    """Sees every terminal record of a run; its ``result()`` goes into ``summary.json``.

    ``result()`` is called once, on a helper thread, after ``manifest.jsonl`` has been written
    and before ``summary.json``: a collector may stream the manifest to build a report.
    """

    name: str

    def add(self, record: Record) -> None: ...

    def result(self) -> Any: ...


@dataclass(frozen=True)
class RunResult:
    """What a run did: counts by status (this run's records), timings and stage metrics."""

    run_id: str
    counts: dict[str, int]
    seen: int
    not_started: int | None
    duplicates: int
    interrupted: bool
    error: str | None
    duration: float
    stages: tuple[StageSnapshot, ...]
    crashes: tuple[str, ...] = ()
    output: Path | None = None
    collected: dict[str, Any] = field(default_factory=dict)
    timeline: dict[str, Any] = field(default_factory=dict)
    stopped_by: str | None = None  # interrupted by this signal: SIGINT (Ctrl-C), SIGTERM, SIGHUP

    @property
    def advice(self) -> list[Verdict]:
        """Per-stage verdicts (I/O- or CPU-bound, GIL, starved) and balancing worker counts."""
        return advise(self.stages, load=unmeasured_load(self.stages))

    @property
    def ok(self) -> int:
        return self.counts.get("ok", 0)

    @property
    def failed(self) -> int:
        return self.counts.get("failed", 0)

    @property
    def skipped(self) -> int:
        return self.counts.get("skipped", 0)

    @property
    def reused(self) -> int:
        """Keys done by an earlier run and unchanged (resume): done, not processed again."""
        return self.counts.get("reused", 0)

    @property
    def cancelled(self) -> int:
        return self.counts.get("cancelled", 0)

    @property
    def bottleneck(self) -> str | None:
        top = bottleneck(self.stages)
        return top.name if top else None

    @property
    def exit_code(self) -> int:
        """128 + the signal's number when interrupted, as a shell reports it (130 Ctrl-C, 143
        SIGTERM, 129 SIGHUP), 3 a fatal error, 1 item failures, else 0 (``ok``, ``reused`` and
        ``skipped`` records are no failures)."""
        if self.interrupted:
            by = signal.Signals.__members__.get(self.stopped_by or "SIGINT", signal.SIGINT)
            return 128 + by.value
        if self.error is not None:
            return 3
        return 1 if self.failed else 0

    def table(self) -> str:
        return render_table(self.stages)

    def advice_text(self) -> str:
        return render_advice(self.advice)

    def to_json(self) -> dict[str, Any]:
        top = bottleneck(self.stages)
        return {
            "run": self.run_id,
            "counts": dict(self.counts),
            "inputs_seen": self.seen,
            "not_started": self.not_started,
            "duplicates": self.duplicates,
            "interrupted": self.interrupted,
            "stopped_by": self.stopped_by,
            "error": self.error,
            "duration_s": round(self.duration, 3),
            "items_per_s": round(self.seen / self.duration, 3) if self.duration > 0 else None,
            "crashes": list(self.crashes),
            "stages": [s.to_json() for s in self.stages],
            "bottleneck": top.to_json() if top else None,
            "advice": [v.to_json() for v in self.advice],
            "timeline": self.timeline,
            **({"collected": self.collected} if self.collected else {}),
        }
