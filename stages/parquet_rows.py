"""Rows to Parquet, in a schema known up front: a file written a row group at a time
(:class:`RowGroupWriter`) and a table of rows (:func:`schema_table`). Either has the schema
whatever its rows hold (a column all null, no row at all: a valid file of 0 rows), so that
every shard of a run has one and the folder reads as one dataset. A value not of its
column's type is written as text in a text column (the kept columns of a JSON lines table may
hold several types)."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["ROW_GROUP", "RowGroupWriter", "plain_type", "schema_table"]

ROW_GROUP = 256


class RowGroupWriter:
    """A Parquet file of ``schema``, written a row group (:data:`ROW_GROUP` rows) at a time."""

    def __init__(self, sink: Any, *, schema: Any) -> None:
        self.sink = sink
        self.schema = schema
        self.rows: list[dict[str, Any]] = []
        self.writer: Any = None

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if len(self.rows) >= ROW_GROUP:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        rows, self.rows = self.rows, []
        self._open()
        self.writer.write_table(schema_table(rows, self.schema))

    def _open(self) -> None:
        import pyarrow.parquet as pq

        if self.writer is None:
            self.writer = pq.ParquetWriter(self.sink, self.schema)

    def close(self) -> None:
        """Write what is left and the file's footer; a file that got no row has the schema
        too (loaders cannot read a file of 0 bytes)."""
        self.flush()
        self._open()
        self.writer.close()
        self.writer = None


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


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.hex()
    return json.dumps(value, default=str)
