"""The ``process`` command's end-of-run tables: collectors that see every terminal record of a
run (:class:`pipeline.Collector`) and put their result into ``summary.json``.

* :class:`StatsTable` writes ``stats.csv`` and ``stats.parquet`` (the image statistics).
* :class:`NearDuplicates` groups images whose difference hashes are close.
* :class:`DataAggregate` merges the statistics of every data record (this run's and, on resume,
  the earlier ones it skipped) over all arrays of the same shape and dtype kind, and over all
  CSV files with the same numeric columns (:class:`stages.aggregate.DataGroups` does the exact
  merging).
* :class:`DataTable` writes ``data_stats.csv``: one row per array or CSV column.

The tables are built from the manifest at the end of the run, so memory stays flat whatever the
number of records; pyarrow and numpy are imported only when there is something to write.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pipeline import Record, Status, atomic_write_bytes, read_manifest
from stages.aggregate import DataGroups
from stages.parts import is_data_result

__all__ = ["DataAggregate", "DataTable", "NearDuplicates", "StatsTable"]


class StatsTable:
    """Writes ``stats.csv`` and ``stats.parquet`` (when there are image rows) from the manifest."""

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

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        # (key, dhash) of every row, kept by result() for NearDuplicates, which needs them all
        # in memory anyway: one pass over the manifest serves both
        self.hashes: list[tuple[str, str]] | None = None

    def add(self, record: Record) -> None:
        return None

    def rows(self) -> Iterator[dict[str, Any]]:
        manifest = self.folder / "manifest.jsonl"
        if not manifest.exists():
            return
        for rec in read_manifest(manifest):
            res = rec.get("result")
            if not isinstance(res, dict) or "stats" not in res or is_data_result(res):
                continue
            st, orig = res["stats"], res.get("original", {})
            outs = res.get("outputs") or [{}]
            yield {
                "key": rec["key"],
                "status": rec["status"],
                "width": orig.get("width"),
                "height": orig.get("height"),
                "mode": orig.get("mode"),
                "format": orig.get("format"),
                "out_width": outs[0].get("width"),
                "out_height": outs[0].get("height"),
                "mean": " ".join(f"{v:.3f}" for v in st.get("mean", [])),
                "std": " ".join(f"{v:.3f}" for v in st.get("std", [])),
                "sharpness": st.get("sharpness"),
                "dhash": st.get("dhash"),
            }

    def result(self) -> dict[str, Any]:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.COLUMNS)
        writer.writeheader()
        n = 0
        hashes: list[tuple[str, str]] = []
        for row in self.rows():
            writer.writerow(row)
            n += 1
            if row.get("dhash"):
                hashes.append((row["key"], row["dhash"]))
        self.hashes = hashes
        data = buf.getvalue().encode()
        atomic_write_bytes(self.folder / "stats.csv", data)
        files = ["stats.csv"]
        if n:
            import pyarrow as pa
            import pyarrow.csv as pacsv
            import pyarrow.parquet as pq

            # the table from the CSV just written: pa.Table.from_pylist would import pandas
            # (when installed), half a second for nothing
            table = pacsv.read_csv(pa.BufferReader(data))
            sink = pa.BufferOutputStream()
            pq.write_table(table, sink)
            atomic_write_bytes(self.folder / "stats.parquet", sink.getvalue().to_pybytes())
            files.append("stats.parquet")
        return {"rows": n, "files": files}


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

        pairs: Iterable[tuple[str, str]] = self.table.hashes or (
            (r["key"], r["dhash"]) for r in self.table.rows() if r.get("dhash")
        )
        groups = near_duplicate_groups(pairs, max_distance=self.max_distance)
        return {"max_distance": self.max_distance, "groups": groups}


def _data_value(record: Record) -> dict[str, Any] | None:
    """A data record's statistics: this run's ``ok`` ones and, on resume, the earlier result of a
    ``skipped`` one; None for anything else (images, failures)."""
    v = record.value
    ok = record.status is Status.OK or (record.status is Status.SKIPPED and v is not None)
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


class DataTable:
    """``data_stats.csv``: one row per array or CSV column, from the manifest at the end of the
    run (as ``stats.csv``: memory stays flat whatever the number of records)."""

    name = "data_table"
    COLUMNS = ("key", "column", "count", "missing", "mean", "std", "min", "max", "sum", "bad")

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def add(self, record: Record) -> None:
        return None

    def result(self) -> dict[str, Any]:
        manifest = self.folder / "manifest.jsonl"
        if not manifest.exists():
            return {"rows": 0, "files": []}
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.COLUMNS)
        writer.writeheader()
        rows = 0
        for line in read_manifest(manifest):
            v = _data_value(Record.from_json(line))
            if v is None:
                continue
            if v["kind"] == "array":
                items = [("", v["stats"], 0)]
            else:
                bad = v.get("bad_cells", {})
                items = [(n, s, bad.get(n, 0)) for n, s in v["columns"].items()]
            for column, s, n_bad in items:
                row = {k: s.get(k) for k in self.COLUMNS[2:-1]}
                writer.writerow({"key": line["key"], "column": column, **row, "bad": n_bad})
                rows += 1
        if not rows:
            return {"rows": 0, "files": []}
        atomic_write_bytes(self.folder / "data_stats.csv", buf.getvalue().encode())
        return {"rows": rows, "files": ["data_stats.csv"]}
