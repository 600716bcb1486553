"""Rows to Parquet: a file written a row group at a time, and tables of rows whose columns may
hold values of several types (the kept columns of a JSON lines table)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["ROW_GROUP", "RowGroupWriter", "rows_table"]

ROW_GROUP = 256


class RowGroupWriter:
    """A Parquet file written a row group at a time. Its schema is the first group's (a
    column that is all null there is text); a later group's column of another type is cast to
    it, or else written as text."""

    def __init__(self, sink: Any, types: Mapping[str, str] | None = None) -> None:
        self.sink = sink
        self.types = types or {}  # columns of a known type (see rows_table)
        self.rows: list[dict[str, Any]] = []
        self.writer: Any = None
        self.schema: Any = None

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if len(self.rows) >= ROW_GROUP:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.rows:
            return
        table = rows_table(self.rows, self.types)
        self.rows = []
        if self.writer is None:
            fields = [
                pa.field(f.name, pa.string()) if pa.types.is_null(f.type) else f
                for f in table.schema
            ]
            self.schema = pa.schema(fields)
            self.writer = pq.ParquetWriter(self.sink, self.schema)
        self.writer.write_table(_conform(table, self.schema))

    def close(self) -> None:
        self.flush()
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def rows_table(rows: list[dict[str, Any]], types: Mapping[str, str] | None = None) -> Any:
    """A pyarrow table of ``rows``; a column whose values have several types (a JSON lines
    table's ``1`` and ``"high"``) is written as text (JSON for numbers, lists and objects).
    ``types``: the columns whose type is known (pyarrow's names: ``"int64"``), which they have
    whatever the rows hold (all null in this table, say), so that every table of a run has
    the same schema for them."""
    table = _inferred(rows)
    return _typed(table, types) if types else table


def _typed(table: Any, types: Mapping[str, str]) -> Any:
    import pyarrow as pa

    for name, alias in types.items():
        index = table.schema.get_field_index(name)
        if index < 0:
            continue
        wanted, col = pa.type_for_alias(alias), table.column(index)
        if col.type != wanted:
            try:
                col = col.cast(wanted)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                continue  # left as it is (the values say otherwise)
            table = table.set_column(index, pa.field(name, wanted), col)
    return table


def _inferred(rows: list[dict[str, Any]]) -> Any:
    import pyarrow as pa

    try:
        return pa.Table.from_pylist(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    kinds: dict[str, set[type]] = {}
    for row in rows:
        for name, value in row.items():
            if value is not None:
                kind = (
                    float
                    if isinstance(value, int | float) and not isinstance(value, bool)
                    else type(value)
                )
                kinds.setdefault(name, set()).add(kind)
    mixed = {name for name, k in kinds.items() if len(k) > 1 or k & {list, dict}}
    return pa.Table.from_pylist(
        [{k: _text(v) if k in mixed else v for k, v in r.items()} for r in rows]
    )


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.hex()
    return json.dumps(value, default=str)


def _conform(table: Any, schema: Any) -> Any:
    """``table`` with the columns of ``schema`` (missing ones null, others cast or as text)."""
    import pyarrow as pa

    columns = []
    for f in schema:
        if f.name not in table.column_names:
            columns.append(pa.nulls(len(table), f.type))
            continue
        col = table[f.name]
        if col.type != f.type:
            try:
                col = col.cast(f.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                if not pa.types.is_string(f.type):
                    what = f"column {f.name!r}: {col.type} values in a {f.type} column"
                    raise ValueError(what) from exc
                col = pa.array([None if v is None else str(v) for v in col.to_pylist()], f.type)
        columns.append(col)
    return pa.Table.from_arrays(columns, schema=schema)
