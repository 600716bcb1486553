"""Statistics of numeric data files merged across files: :class:`DataGroups`.

Every array of the same shape and dtype kind, and every CSV file with the same numeric columns,
forms one group whose statistics are merged exactly, with the same pairwise merge as the chunks
of one file (:func:`stages.arraystats.merge`): the result equals one pass over all of them.

:mod:`stages.arraystats` (numpy) is imported at the first value only: a run of images never
needs it. The ``process`` command feeds this from its records (``app.collectors``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["MAX_GROUPS", "DataGroups"]

#: Distinct groups kept; files beyond are counted, not merged.
MAX_GROUPS = 256


def _is_int(dtype: str) -> bool:
    """Integer or bool, by numpy's dtype kind: ``>i4`` (big-endian) is int32's kind too."""
    import numpy as np

    try:
        return np.dtype(dtype).kind in "biu"
    except TypeError:  # not a dtype numpy knows: by its name
        return dtype.startswith(("int", "uint", "bool"))


class DataGroups:
    """Statistics merged over data results (a data file's record value, ``kind`` ``"array"`` or
    ``"csv"``; see :mod:`stages.data`) of the same shape (arrays) or columns (CSV)."""

    def __init__(self) -> None:
        self.groups: dict[tuple[Any, ...], dict[str, Any]] = {}
        self.other_files = 0

    def add(self, v: Mapping[str, Any]) -> None:
        """Merge one data result into its group."""
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
        """``{"groups": [...], "other_files": n}``: each group's kind, files, shape or columns and
        its merged statistics (as :meth:`stages.arraystats.ArrayStats.to_dict`)."""
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
