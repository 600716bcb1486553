"""Run-level views of the numeric data records: an aggregate per shape / header, and a table.

* :class:`DataAggregate` merges the statistics of every data record (this run's and, on resume,
  the earlier ones it skipped) over all arrays of the same shape and dtype kind, and over all CSV
  files with the same numeric columns; the result goes into ``summary.json``. Merging uses the
  same exact pairwise merge as the chunks of one file.
* :class:`DataTable` writes ``data_stats.csv``: one row per array or CSV column.

:mod:`stages.arraystats` (numpy) is imported at the first data record only: a run of images
never needs it.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from pipeline import Record, Status, atomic_write_bytes, read_manifest

__all__ = ["DataAggregate", "DataTable"]

#: Distinct groups kept in the aggregate; files beyond are counted, not merged.
MAX_GROUPS = 256


def _data_value(record: Record) -> dict[str, Any] | None:
    v = record.value
    ok = record.status is Status.OK or (record.status is Status.SKIPPED and v is not None)
    if ok and isinstance(v, dict) and v.get("kind") in ("array", "csv"):
        return v
    return None


def _is_int(dtype: str) -> bool:
    return dtype.startswith(("int", "uint", "bool"))


class DataAggregate:
    """Statistics merged over all data inputs of the same shape (arrays) or columns (CSV)."""

    name = "data_aggregate"

    def __init__(self) -> None:
        self.groups: dict[tuple[Any, ...], dict[str, Any]] = {}
        self.other_files = 0

    def add(self, record: Record) -> None:
        v = _data_value(record)
        if v is None:
            return
        from .arraystats import FLOAT_EXP_FLOOR, INT_EXP_FLOOR, ArrayStats, merge

        if v["kind"] == "array":
            is_int = _is_int(v["dtype"])
            key: tuple[Any, ...] = ("array", tuple(v["shape"]), "int" if is_int else "float")
            columns = {"values": (v["stats"], INT_EXP_FLOOR if is_int else FLOAT_EXP_FLOOR)}
        else:
            key = ("csv", tuple(v["columns"]))
            columns = {n: (s, FLOAT_EXP_FLOOR) for n, s in v["columns"].items()}
        group = self.groups.get(key)
        if group is None:
            if len(self.groups) >= MAX_GROUPS:
                self.other_files += 1
                return
            group = self.groups[key] = {"files": 0, "rows": 0, "stats": {}}
        group["files"] += 1
        group["rows"] += int(v.get("rows", 0))
        for name, (d, floor) in columns.items():
            s = ArrayStats.from_dict(d, max_bins=64, exp_floor=floor)
            prev = group["stats"].get(name)
            group["stats"][name] = s if prev is None else merge(prev, s)

    def result(self) -> dict[str, Any]:
        groups = []
        for key, g in self.groups.items():
            entry: dict[str, Any] = {"kind": key[0], "files": g["files"]}
            if key[0] == "array":
                entry |= {"shape": list(key[1]), "dtype_kind": key[2]}
                entry["stats"] = g["stats"]["values"].to_dict()
            else:
                entry |= {"columns": list(key[1]), "rows": g["rows"]}
                entry["stats"] = {n: s.to_dict() for n, s in g["stats"].items()}
            groups.append(entry)
        return {"groups": groups, "other_files": self.other_files}


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
