"""The ``process`` command's end-of-run tables: collectors that see every terminal record of a
run (:class:`pipeline.Collector`) and put their result into ``summary.json``.

* :class:`StatsTable` writes ``stats.csv`` and ``stats.parquet`` (the image statistics).
* :class:`NearDuplicates` groups images whose difference hashes are close.
* :class:`DataAggregate` merges the statistics of every data record (this run's and, on resume,
  the earlier ones it skipped) over all arrays of the same shape and dtype kind, and over all
  CSV files with the same numeric columns (:class:`stages.aggregate.DataGroups` does the exact
  merging).
* :class:`DataTable` writes ``data_stats.csv``: one row per array or CSV column.
* :class:`FailureList` counts this run's failed inputs and keeps the first few, for the lines
  the command prints at the end (:mod:`app.console`).

The tables hold every record of the output folder, this run's and the earlier ones: they are
built from the manifest at the end of the run, as sinks of the one pass over it
(:class:`app.endofrun.ManifestPass`; give both tables the same one), written as the rows stream
(:mod:`app.tables`), so memory stays flat whatever the number of records; pyarrow and numpy
are imported only when there is something to write.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline import Record, Status, shown
from stages.aggregate import DataGroups
from stages.parts import is_data_result

from .endofrun import ManifestPass, data_result
from .tables import CsvStream, ParquetStream

__all__ = ["DataAggregate", "DataTable", "FailureList", "NearDuplicates", "StatsTable"]


class _ManifestTable(abc.ABC):
    """A table written from the manifest at the end of the run: a collector whose result is
    what its sink side (``take``/``finish``) put there, once the manifest pass has run."""

    def __init__(self, folder: Path, manifest: ManifestPass | None) -> None:
        self.folder = folder
        self.manifest = manifest if manifest is not None else ManifestPass(folder)
        self._result: dict[str, Any] = {}

    # -- the collector: the engine asks for the result after exporting the manifest ------------
    def add(self, record: Record) -> None:
        return None

    def result(self) -> dict[str, Any]:
        self.manifest.check(self)
        return self._result

    # -- the sink (app.endofrun.Sink): each table's own -----------------------------------------
    @abc.abstractmethod
    def take(self, record: dict[str, Any], offset: int) -> None: ...

    @abc.abstractmethod
    def finish(self) -> None: ...

    @abc.abstractmethod
    def discard(self) -> None: ...


class StatsTable(_ManifestTable):
    """Writes ``stats.csv`` and ``stats.parquet`` (when there are image rows) from the manifest,
    and keeps each row's (key, dhash) for :class:`NearDuplicates`, which needs them all."""

    name = "stats_table"
    COLUMNS = (
        "key",
        "status",
        "width",
        "height",
        "mode",
        "format",
        "out_width",
        "out_height",
        "mean",
        "std",
        "sharpness",
        "dhash",
    )

    def __init__(self, folder: Path, manifest: ManifestPass | None = None) -> None:
        super().__init__(folder, manifest)
        # the (key, dhash) of every row with a hash, as two lists (no tuple per row)
        self.keys: list[str] = []
        self.dhashes: list[Any] = []
        self._parquet = ParquetStream(folder / "stats.parquet", self.COLUMNS)
        self._csv = CsvStream(
            folder / "stats.csv", self.COLUMNS, keep_empty=True, on_chunk=self._parquet.chunk
        )
        self.manifest.add(self)

    def hashes(self) -> Iterator[tuple[str, Any]]:
        """(key, dhash) of every image row, in manifest order."""
        self.manifest.check(self)
        return zip(self.keys, self.dhashes, strict=True)

    # -- the sink: fed by the manifest pass ---------------------------------------------------
    def take(self, record: dict[str, Any], offset: int) -> None:
        res = record.get("result")
        if not isinstance(res, dict) or "stats" not in res or is_data_result(res):
            return
        st, orig = res["stats"], res.get("original", {})
        outs = res.get("outputs") or [{}]
        dhash = st.get("dhash")
        self._csv.write(  # in the order of COLUMNS
            (
                record["key"],
                record["status"],
                orig.get("width"),
                orig.get("height"),
                orig.get("mode"),
                orig.get("format"),
                outs[0].get("width"),
                outs[0].get("height"),
                " ".join(f"{v:.3f}" for v in st.get("mean", [])),
                " ".join(f"{v:.3f}" for v in st.get("std", [])),
                st.get("sharpness"),
                dhash,
            )
        )
        if dhash:
            self.keys.append(record["key"])
            self.dhashes.append(dhash)

    def finish(self) -> None:
        self._csv.commit()
        files = ["stats.csv"]
        if self._parquet.commit(self.folder / "stats.csv"):
            files.append("stats.parquet")
        self._result = {"rows": self._csv.rows, "files": files}

    def discard(self) -> None:
        self._csv.discard()
        self._parquet.discard()


class NearDuplicates:
    """Groups of images whose 64-bit difference hashes differ in at most ``max_distance`` bits."""

    name = "near_duplicates"

    def __init__(self, table: StatsTable, max_distance: int = 6) -> None:
        self.table = table
        self.max_distance = max_distance

    def add(self, record: Record) -> None:
        return None

    def result(self) -> dict[str, Any]:
        from stages.stats import near_duplicate_groups

        groups = near_duplicate_groups(self.table.hashes(), max_distance=self.max_distance)
        return {"max_distance": self.max_distance, "groups": groups}


def _data_value(record: Record) -> dict[str, Any] | None:
    """A data record's statistics: this run's ``ok`` ones and, on resume, the earlier result of a
    ``reused`` one (or of a ``skipped`` one that kept it); None for anything else (images,
    failures)."""
    v = record.value
    ok = record.status in (Status.OK, Status.REUSED) or (
        record.status is Status.SKIPPED and v is not None
    )
    if ok and isinstance(v, dict) and v.get("kind") in ("array", "csv"):
        return v
    return None


class DataAggregate:
    """Statistics merged over all data inputs of the same shape (arrays) or columns (CSV)."""

    name = "data_aggregate"

    def __init__(self) -> None:
        self.groups = DataGroups()

    def add(self, record: Record) -> None:
        value = _data_value(record)
        if value is not None:
            self.groups.add(value)

    def result(self) -> dict[str, Any]:
        return self.groups.result()


class DataTable(_ManifestTable):
    """``data_stats.csv``: one row per array or CSV column, from the manifest at the end of the
    run (as ``stats.csv``: written as it streams). No data rows, no file."""

    name = "data_table"
    COLUMNS = ("key", "column", "count", "missing", "mean", "std", "min", "max", "sum", "bad")

    def __init__(self, folder: Path, manifest: ManifestPass | None = None) -> None:
        super().__init__(folder, manifest)
        self._csv = CsvStream(folder / "data_stats.csv", self.COLUMNS, keep_empty=False)
        self.manifest.add(self)

    def take(self, record: dict[str, Any], offset: int) -> None:
        v = data_result(record)
        if v is None:
            return
        if v["kind"] == "array":
            items = [("", v["stats"], 0)]
        else:
            bad = v.get("bad_cells", {})
            items = [(n, s, bad.get(n, 0)) for n, s in v["columns"].items()]
        for column, s, n_bad in items:
            figures = [s.get(k) for k in self.COLUMNS[2:-1]]
            self._csv.write((record["key"], column, *figures, n_bad))

    def finish(self) -> None:
        written = self._csv.commit()
        self._result = {"rows": self._csv.rows, "files": ["data_stats.csv"] if written else []}

    def discard(self) -> None:
        self._csv.discard()


class FailureList:
    """This run's ``failed`` records: how many, and the first ``limit`` of them as the manifest
    writes them (``key`` shown, ``stage``, ``error_type``, ``error``), for the end-of-run lines
    on the console; in ``summary.json`` as ``collected.failures``. Memory: ``limit`` entries."""

    name = "failures"

    def __init__(self, limit: int = 20) -> None:
        self.limit = limit
        self.count = 0
        self.first: list[dict[str, Any]] = []

    def add(self, record: Record) -> None:
        if record.status is not Status.FAILED:
            return
        self.count += 1
        if len(self.first) < self.limit:
            self.first.append(
                {
                    "key": shown(record.key),
                    "stage": record.stage,
                    "error_type": record.error_type,
                    "error": shown(record.error or ""),
                }
            )

    def result(self) -> dict[str, Any]:
        return {"count": self.count, "first": self.first}
