"""The end of a run: the ledger's last steps, the collectors' reports, the result, the summary.

In this order, once every record of the run is committed: ``revisit`` over the records the run
did not see (only after a run that saw all its inputs), ``manifest.jsonl`` exported from the
journal, the collectors' results (they may read the manifest), the :class:`RunResult`, and
``summary.json`` last: its ``"finished": true`` marks a finished run.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .ledger import Ledger
from .records import Record
from .result import Collector, RunResult

__all__ = ["Ending", "collect", "finish_ledger", "write_summary"]

log = logging.getLogger("pipeline")


@dataclass(slots=True)
class Ending:
    """How a run's tasks ended: a fatal error, a Ctrl-C, or neither."""

    error: BaseException | None = None
    interrupted: bool = False

    @property
    def complete(self) -> bool:
        """The run saw every input: neither stopped nor interrupted."""
        return self.error is None and not self.interrupted

    def reason(self) -> str:
        """The ``reason`` of the records of items still in flight at the end."""
        if self.error is not None:
            return f"run stopped: {type(self.error).__name__}: {self.error}"
        return "interrupted" if self.interrupted else "run cancelled"


async def finish_ledger(
    ledger: Ledger, run_id: str, revisit: Callable[[Record], Record | None] | None, complete: bool
) -> tuple[int | None, int]:
    """Revisit what a complete run did not see; export the manifest. Returns (records
    revisited or None, manifest lines)."""
    revisited = None
    if revisit is not None and complete:
        revisited = await ledger.revisit(run_id, revisit)
    return revisited, await ledger.export_manifest()


async def collect(collectors: Sequence[Collector]) -> dict[str, Any]:
    """Collectors' results, after the manifest is exported (they may read it)."""
    collected: dict[str, Any] = {}
    for col in collectors:
        try:
            collected[col.name] = await asyncio.to_thread(col.result)
        except Exception as exc:  # noqa: BLE001 — a report must not hide the run's outcome
            log.error("collector %s failed: %s: %s", col.name, type(exc).__name__, exc)
            collected[col.name] = {"error": f"{type(exc).__name__}: {exc}"}
    return collected


async def write_summary(
    ledger: Ledger, result: RunResult, started_at: dt.datetime, lines: int | None
) -> None:
    summary: Mapping[str, Any] = {
        "run": result.run_id,
        "finished": True,
        "started": started_at.isoformat(),
        "ended": dt.datetime.now(dt.UTC).isoformat(),
        **result.to_json(),
        "manifest_lines": lines,
        "folder_counts": await ledger.folder_counts(),
        "exit_code": result.exit_code,
    }
    await ledger.write_summary(summary)
