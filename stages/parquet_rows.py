"""Rows to Parquet: a file written a row group at a time, and tables of rows whose columns may
hold values of several types (the kept columns of a JSON lines table).

A table whose schema is known up front (:func:`schema_table`, :class:`RowGroupWriter` given a
``schema``) has it whatever its rows hold (a column all null, no row at all), so that every
shard of a run has one schema and the folder reads as one dataset."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["ROW_GROUP", "RowGroupWriter", "plain_type", "rows_table", "schema_table"]

ROW_GROUP = 256


class RowGroupWriter:
    """A Parquet file written a row group at a time. Its schema is ``schema`` when given (a
    file of no row has it too: a valid Parquet file of 0 rows); else the first group's (a
    column that is all null there is text), a later group's column of another type cast to
    it, or else written as text."""

    def __init__(
        self, sink: Any, types: Mapping[str, Any] | None = None, *, schema: Any = None
    ) -> None:
        self.sink = sink
        self.types = types or {}  # columns of a known type (see rows_table)
        self.rows: list[dict[str, Any]] = []
        self.writer: Any = None
        self.schema: Any = schema

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if len(self.rows) >= ROW_GROUP:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        rows, self.rows = self.rows, []
        if self.schema is not None:
            self._open()
            self.writer.write_table(schema_table(rows, self.schema))
            return
        import pyarrow as pa

        table = rows_table(rows, self.types)
        fields = [
            pa.field(f.name, pa.string()) if pa.types.is_null(f.type) else f for f in table.schema
        ]
        self.schema = pa.schema(fields)
        self._open()
        self.writer.write_table(_conform(table, self.schema))

    def _open(self) -> None:
        import pyarrow.parquet as pq

        if self.writer is None:
            self.writer = pq.ParquetWriter(self.sink, self.schema)

    def close(self) -> None:
        """Write what is left and the file's footer; a file that got no row has the schema
        given (or the known types' columns): loaders cannot read a file of 0 bytes."""
        self.flush()
        if self.writer is None:
            import pyarrow as pa

            if self.schema is None:
                self.schema = pa.schema([(n, _arrow_type(t)) for n, t in self.types.items()])
            self._open()
        self.writer.close()
        self.writer = None


def _arrow_type(t: Any) -> Any:
    """A pyarrow type, from itself or its alias (``"int64"``)."""
    import pyarrow as pa

    return pa.type_for_alias(t) if isinstance(t, str) else t


def schema_table(rows: list[dict[str, Any]], schema: Any) -> Any:
    """A pyarrow table of ``rows`` with exactly the columns and types of ``schema`` (a column
    a row lacks is null there). A value that is not of its column's type is written as text
    in a text column (JSON for numbers, lists and objects: a table of several types for one
    column, say), and is an error (``ValueError``) in a column of another type."""
    import pyarrow as pa

    columns = [_column([r.get(f.name) for r in rows], f) for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)


def _column(values: list[Any], f: Any) -> Any:
    import pyarrow as pa

    try:
        return pa.array(values, f.type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
        if not pa.types.is_string(f.type):
            raise ValueError(f"column {f.name!r}: values that are not {f.type}") from exc
        return pa.array([_text(v) for v in values], f.type)


def plain_type(t: Any) -> Any:
    """The type a column of a Parquet table of type ``t`` has once its values are plain
    (:func:`stages.tables_in.iter_table` gives a kept column's values as JSON holds them:
    dates, decimals, bytes as text): numbers, booleans and text keep theirs, lists and
    structs theirs with their items' plain types, anything else is text."""
    import pyarrow as pa

    types = pa.types
    if types.is_dictionary(t):
        return plain_type(t.value_type)
    if types.is_boolean(t) or types.is_integer(t) or types.is_floating(t):
        return t
    if types.is_list(t) or types.is_large_list(t) or types.is_fixed_size_list(t):
        return pa.list_(plain_type(t.value_type))
    if types.is_struct(t):
        return pa.struct([pa.field(f.name, plain_type(f.type)) for f in t])
    return pa.string()


def rows_table(rows: list[dict[str, Any]], types: Mapping[str, Any] | None = None) -> Any:
    """A pyarrow table of ``rows``; a column whose values have several types (a JSON lines
    table's ``1`` and ``"high"``) is written as text (JSON for numbers, lists and objects).
    ``types``: the columns whose type is known (pyarrow types or their names: ``"int64"``),
    which they have whatever the rows hold (all null in this table, say), so that every
    table of a run has the same schema for them."""
    table = _inferred(rows)
    return _typed(table, types) if types else table


def _typed(table: Any, types: Mapping[str, Any]) -> Any:
    import pyarrow as pa

    for name, alias in types.items():
        index = table.schema.get_field_index(name)
        if index < 0:
            continue
        wanted, col = _arrow_type(alias), table.column(index)
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
                col = pa.array([_text(v) for v in col.to_pylist()], f.type)
        columns.append(col)
    return pa.Table.from_arrays(columns, schema=schema)
