"""The end-of-run outputs of a ``process`` run, built while the run goes: one feed of records.

Three consumers need every record of the output folder (this run's and the earlier ones): the
tables and the report. They are sinks (:class:`Sink`) of one :class:`RecordFeed`, a collector
of the engine (:class:`pipeline.FolderCollector`) that hands each record, in its manifest form,
to every sink in turn — this run's records as the ledger writer commits them, then, at the end,
the folder's records that the run did not write, from the ledger's one pass over them. The
manifest is never read back::

    ledger writer ─▶ RecordFeed.add ──────┬─▶ StatsTable   stats.csv (streamed), stats.parquet,
    (as records commit)                   │                each image's 64-bit dhash (to a file)
    ledger's end pass ─▶ .add_earlier ────┼─▶ DataTable    data_stats.csv (streamed)
    (records the run did not write)       └─▶ ReportSheet  the contact sheet's first tiles, the
                                                           data table's first rows

    NearDuplicates  groups StatsTable's hashes; the keys and thumbnails of the grouped images
                    read back from StatsTable's spill file (collector: summary.json)
    DataAggregate   this run's records, as they come   (collector; not a sink)
    write_report    summary.json + ReportSheet + the groups' thumbnails, after the summary

Memory is bounded whatever the number of records: tables are written as they stream
(:mod:`app.tables`), the report keeps at most ``MAX_TILES`` tiles and rows; only what needs
every row is kept — each image's 64-bit difference hash, in a temporary file (its key and
thumbnail in another, read back only for the images that are in a group).

Without the engine (:func:`~app.report.write_report` on a folder, a run stopped before its end),
a feed that was never fed reads ``manifest.jsonl`` once instead (:meth:`RecordFeed.run`).

Errors: a manifest that cannot be read (a line that is not JSON: :class:`~pipeline.LedgerError`
naming it; an ``OSError``) fails every sink with that error. A sink's own error (say a full disk
while it writes its table) fails that sink alone: it is fed no more, its temporary files are
removed, and the error is raised to whoever asks it for its result (the engine records it in
``summary.json`` as that collector's error); the other sinks go on.

Not thread-safe: the engine feeds it from one thread at a time (the event loop while the run
goes, the ledger's thread at its end), then asks for the results one after the other.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from pipeline import Record, Status, read_manifest, text_safe
from stages.parts import is_data_result

__all__ = ["MANIFEST", "RecordFeed", "Sink", "data_result", "manifest_form"]

log = logging.getLogger("app")

MANIFEST = "manifest.jsonl"


class Sink(Protocol):
    """A consumer of the records of :class:`RecordFeed`."""

    def take(self, record: dict[str, Any]) -> None:
        """One record, as a line of the manifest holds it (:func:`manifest_form`)."""

    def finish(self) -> None:
        """After the last record: put the outputs in place (commit the tables)."""

    def discard(self) -> None:
        """The feed failed for this sink: remove what it has half-written."""


def manifest_form(record: Record) -> dict[str, Any]:
    """``record`` as its manifest line reads back (:meth:`pipeline.Record.to_json`), without
    the round trip through JSON text. The results of the stages are JSON already; a failure or
    a skip may quote a name that is not UTF-8, shown escaped as the manifest shows it."""
    if record.status in (Status.OK, Status.REUSED):
        return record.to_json(checked=False)
    form: dict[str, Any] = text_safe(record.to_json())
    return form


class RecordFeed:
    """Every record of the output folder, once, to every sink (see the module docstring).

    A collector of the engine: give it to the run (``collectors=[feed, ...]``, before the
    sinks, whose results it completes); its own result counts what it was fed.
    """

    name = "folder_records"

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / MANIFEST
        self._sinks: list[Sink] = []
        self._errors: dict[int, BaseException] = {}  # by id(sink)
        self.fed = {"this_run": 0, "earlier": 0}
        self.live = False  # fed by the engine (else the manifest is read at the end)
        self.done = False

    def add_sink(self, sink: Sink) -> None:
        """Feed ``sink`` too; only before the first record."""
        if self.live or self.done:
            raise RuntimeError("the record feed has started: add sinks before it starts")
        self._sinks.append(sink)

    # -- the collector (pipeline.FolderCollector) ----------------------------------------------
    def add(self, record: Record) -> None:
        self._feed(record, "this_run")

    def add_earlier(self, record: Record) -> None:
        self._feed(record, "earlier")

    def _feed(self, record: Record, which: str) -> None:
        self.live = True
        self.fed[which] += 1
        self._take(manifest_form(record))

    def result(self) -> dict[str, int]:
        self.run()
        return dict(self.fed)

    # -- the end -------------------------------------------------------------------------------
    def run(self) -> None:
        """Finish every sink, once (later calls return at once, whatever happened the first
        time); a feed never fed reads the manifest first."""
        if self.done:
            return
        self.done = True
        try:
            if not self.live:
                for record in self._manifest():
                    self._take(record)
            for sink in self._alive():
                try:
                    sink.finish()
                except Exception as exc:  # noqa: BLE001 — as in _take()
                    self._fail(sink, exc)
        except BaseException as exc:  # the manifest itself (a bad line, an unreadable file),
            for sink in self._alive():  # or a Ctrl-C: every sink not finished fails with it
                self._fail(sink, exc)
            if not isinstance(exc, Exception):
                raise

    def check(self, sink: Sink) -> None:
        """Finish the feed if need be; raise the error that failed ``sink`` in it, if any."""
        self.run()
        error = self._errors.get(id(sink))
        if error is not None:
            raise error

    def records_for(self, keys: set[str]) -> Iterator[dict[str, Any]]:
        """The manifest's records of ``keys`` (shown form), read from the manifest: for a
        report made without the engine (the run's own feed keeps what it needs)."""
        for record in self._manifest():
            if record.get("key") in keys:
                yield record

    def _alive(self) -> list[Sink]:
        return [s for s in self._sinks if id(s) not in self._errors]

    def _take(self, record: dict[str, Any]) -> None:
        for sink in self._sinks:
            if id(sink) in self._errors:
                continue
            try:
                sink.take(record)
            # Broad by design: one table's failure must not take the others down; the error
            # is raised again to whoever asks this sink for its result.
            except Exception as exc:  # noqa: BLE001
                self._fail(sink, exc)

    def _manifest(self) -> Iterator[dict[str, Any]]:
        if not self.path.exists():
            return iter(())
        return read_manifest(self.path)

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
