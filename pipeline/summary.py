"""The end of a run: the ledger's last steps, the collectors' reports, the result, the summary.

In this order, once every record of the run is committed: one pass over the records the run
did not write (``revisit`` applied to them only after a run that saw all its inputs; the
collectors that want the whole folder, :class:`FolderCollector`, see them there), then
``manifest.jsonl`` exported from the journal, the collectors' results, the :class:`RunResult`,
and ``summary.json`` last: its ``"finished": true`` marks a finished run.

A :class:`FolderCollector` thus sees every record of the output folder exactly once, this run's
as they are committed (``add``) and the earlier ones at the end (``add_earlier``), without
reading the manifest back: the end of a run costs the records the run did not write, not all.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from .ledger import Ledger
from .records import Record
from .result import Collector, RunResult

__all__ = ["Ending", "FolderCollector", "collect", "finish_ledger", "write_summary"]

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


@runtime_checkable
class FolderCollector(Protocol):
    """A collector of every record of the output folder (module docstring): besides
    :meth:`add` for this run's records, :meth:`add_earlier` for the records of the folder that
    the run did not write, at the end of the run (on the ledger's thread; once each, in the
    journal's order; after ``revisit`` changed them), before ``result()`` is asked for."""

    name: str

    def add(self, record: Record) -> None: ...

    def add_earlier(self, record: Record) -> None: ...

    def result(self) -> Any: ...


async def finish_ledger(
    ledger: Ledger,
    run_id: str,
    revisit: Callable[[Record], Record | None] | None,
    complete: bool,
    collectors: Sequence[object] = (),
) -> tuple[int | None, int]:
    """Revisit what a complete run did not see and show it to the folder collectors (one
    pass); export the manifest. Returns (records revisited or None, manifest lines)."""
    fn = revisit if complete else None
    folder = [c for c in collectors if isinstance(c, FolderCollector)]
    revisited = None
    if fn is not None or folder:
        changed = await ledger.revisit(run_id, fn, _each(folder) if folder else None)
        revisited = changed if fn is not None else None
    return revisited, await ledger.export_manifest()


def _each(collectors: Sequence[FolderCollector]) -> Callable[[Record], None]:
    def add(record: Record) -> None:
        for col in collectors:
            col.add_earlier(record)

    return add


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
    ledger: Ledger,
    result: RunResult,
    started_at: dt.datetime,
    lines: int | None,
    work_seconds: float | None = None,
) -> None:
    """``summary.json``; ``work_seconds``: from the start to the commit of the run's last
    record (the rest of ``duration`` is the end of the run: this module's work and the
    collectors')."""
    summary: Mapping[str, Any] = {
        "run": result.run_id,
        "finished": True,
        "started": started_at.isoformat(),
        "ended": dt.datetime.now(dt.UTC).isoformat(),
        "work_seconds": None if work_seconds is None else round(work_seconds, 3),
        **result.to_json(),
        "manifest_lines": lines,
        "folder_counts": await ledger.folder_counts(),
        "exit_code": result.exit_code,
    }
    await ledger.write_summary(summary)
