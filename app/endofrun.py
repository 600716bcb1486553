"""The end of a ``process`` run: one pass over ``manifest.jsonl`` feeds everything built from it.

The engine exports the manifest from its journal (the ledger's last step), then asks the
collectors for their results, writes ``summary.json``, and the command writes ``report.html``.
Three consumers need every record of the folder (this run's and the earlier ones): they are
sinks (:class:`Sink`) of one :class:`ManifestPass`, the only reader of the manifest at the end
of a run. The first of them asked for its result runs the pass; it reads and parses each line
once and hands the record to every sink in turn::

    manifest.jsonl ─▶ ManifestPass.run() ─┬─▶ StatsTable   stats.csv (streamed), stats.parquet,
                       (once, in order)   │                the (key, dhash) of each image
                                          ├─▶ DataTable    data_stats.csv (streamed)
                                          └─▶ ReportSheet  the contact sheet's first tiles, the
                                                           data table's first rows, the line
                                                           offset of each ok image

    NearDuplicates  groups StatsTable's hashes         (collector: summary.json)
    DataAggregate   this run's records, as they come   (collector; not a sink)
    write_report    summary.json + ReportSheet, after the summary; looks up the thumbnails of
                    the near-duplicates by their line offsets (a few reads, not a pass)

Memory is bounded whatever the number of records: tables are written as they stream
(:mod:`app.tables`), the report keeps at most ``MAX_TILES`` tiles and rows; only what needs
every row is kept whole — each image's key and difference hash (for the grouping) and the line
offset of each ``ok`` image (8 bytes, for the thumbnails of the groups).

Errors: a manifest that cannot be read (a line that is not JSON: :class:`~pipeline.LedgerError`
naming it; an ``OSError``) fails every sink with that error. A sink's own error (say a full disk
while it writes its table) fails that sink alone: it is fed no more, its temporary files are
removed, and the error is raised to whoever asks it for its result (the engine records it in
``summary.json`` as that collector's error); the other sinks go on.

The pass is not thread-safe: the collectors' results are asked for one after the other (on a
helper thread, see :func:`pipeline.summary.collect`), the report after them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from pipeline import read_manifest_at, scan_manifest
from stages.parts import is_data_result

__all__ = ["MANIFEST", "ManifestPass", "Sink", "data_result"]

log = logging.getLogger("app")

MANIFEST = "manifest.jsonl"


class Sink(Protocol):
    """A consumer of the records of :class:`ManifestPass`."""

    def take(self, record: dict[str, Any], offset: int) -> None:
        """One record of the manifest (as :func:`pipeline.read_manifest` yields it) and the
        offset of its line, for :meth:`ManifestPass.records_at`."""

    def finish(self) -> None:
        """After the last record: put the outputs in place (commit the tables)."""

    def discard(self) -> None:
        """The pass failed for this sink: remove what it has half-written."""


class ManifestPass:
    """Reads ``folder/manifest.jsonl`` once and hands each record to every sink (see the
    module docstring). A missing manifest is an empty one."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / MANIFEST
        self._sinks: list[Sink] = []
        self._errors: dict[int, BaseException] = {}  # by id(sink)
        self.done = False

    def add(self, sink: Sink) -> None:
        """Feed ``sink`` too; only before the pass has run."""
        if self.done:
            raise RuntimeError("the manifest pass has run already: add sinks before it runs")
        self._sinks.append(sink)

    def run(self) -> None:
        """Run the pass, once: later calls return at once (whatever happened the first time)."""
        if self.done:
            return
        self.done = True
        fed = list(self._sinks)
        try:
            for offset, record in self._records():
                for sink in fed:
                    try:
                        sink.take(record, offset)
                    # Broad by design: one table's failure must not take the others down; the
                    # error is raised again to whoever asks this sink for its result.
                    except Exception as exc:  # noqa: BLE001
                        self._fail(sink, exc)
                        fed = [s for s in fed if s is not sink]
            while fed:
                try:
                    fed[0].finish()
                except Exception as exc:  # noqa: BLE001 — as in take()
                    self._fail(fed[0], exc)
                del fed[0]
        except BaseException as exc:  # the manifest itself (a bad line, an unreadable file),
            for sink in fed:  # or a Ctrl-C: every sink not finished fails with it
                self._fail(sink, exc)
            if not isinstance(exc, Exception):
                raise

    def check(self, sink: Sink) -> None:
        """Run the pass if need be; raise the error that failed ``sink`` in it, if any."""
        self.run()
        error = self._errors.get(id(sink))
        if error is not None:
            raise error

    def records_at(self, offsets: Iterable[int]) -> Iterator[dict[str, Any]]:
        """The records whose lines start at ``offsets`` (as sinks were given them), read back
        from the manifest in that order."""
        return read_manifest_at(self.path, offsets)

    def _records(self) -> Iterator[tuple[int, dict[str, Any]]]:
        if not self.path.exists():
            return iter(())
        return scan_manifest(self.path)

    def _fail(self, sink: Sink, exc: BaseException) -> None:
        log.debug("end-of-run %s failed: %s: %s", type(sink).__name__, type(exc).__name__, exc)
        self._errors[id(sink)] = exc
        try:
            sink.discard()
        except Exception as err:  # noqa: BLE001 — the first error is the one that matters
            log.debug("discarding %s failed: %s", type(sink).__name__, err)


def data_result(record: Mapping[str, Any]) -> dict[str, Any] | None:
    """A manifest record's data-file statistics, for the sinks that list them: those of an ``ok``
    or ``reused`` record (or the kept result of a ``skipped`` one: input gone, not retried);
    None for anything else (images, failures)."""
    v = record.get("result")
    if record.get("status") in ("ok", "reused", "skipped") and is_data_result(v):
        assert isinstance(v, dict)
        return v
    return None
