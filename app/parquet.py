"""A Parquet file from the chunks of a CSV table (``stats.parquet`` from ``stats.csv``).

:class:`ParquetChunks` writes, one chunk of rows at a time, a Parquet file whose columns have
the types :func:`pyarrow.csv.read_csv` infers for the whole CSV file — what the table had when
it was read whole into memory: pyarrow's CSV inference takes, for each column, the first of
null, int64, bool, date32, time32, timestamp, double, string, binary that reads *every* value (a
column of integers with one ``1.5`` is double; grey images' single-channel ``mean`` beside
colour images' ``"r g b"`` is string). Each chunk's table (its own inference) is appended as it
comes; when a later chunk's types differ, the file is written again from the CSV with the types
of the whole: the latest type in that order among the chunks' if it reads every chunk (it is
then what the whole file infers), else — a case no table of this program produces — with the
whole CSV read into memory.

Memory, whatever the number of rows: a chunk of rows (a few MB). Row groups hold ``chunk_rows``
rows (the content is what one table written whole would hold; only the layout of the file
differs). Only the columns named ``dictionary`` are dictionary-encoded (pyarrow's default is
every column): a column of values that are all different (keys, hashes, means) gains nothing
from a dictionary, and its dictionary builder kept some 9 MB more after the first chunk (107
against 98 MB at the peak of a 100,000-row table), in a larger file (6.7 against 5.8 MB).

The command writes the file in a child process (:func:`main`, started by
:class:`app.tables.ParquetStream`): pyarrow (some 50 MB, 40 ms to import) is then never in the
command's own process. This module imports the standard library only, pyarrow when it writes.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["ParquetChunks", "import_pyarrow", "main"]


def import_pyarrow(*, without_numpy: bool) -> None:
    """Import the pyarrow modules the tables use; ``without_numpy``: and not numpy, when this
    process has imported neither (a supported mode since pyarrow 16). Nothing else in the
    process may then want pyarrow's numpy conversions: pyarrow would import numpy only to have
    it (15 MiB and 65 ms)."""
    block = without_numpy and "pyarrow" not in sys.modules and "numpy" not in sys.modules
    if block:  # its import fails: pyarrow's try
        sys.modules["numpy"] = None  # type: ignore[assignment]
    try:
        import pyarrow.csv
        import pyarrow.parquet  # noqa: F401
    finally:
        if block:
            del sys.modules["numpy"]


class ParquetChunks:
    """A Parquet file of ``columns``, written to ``fh`` (a binary file open for writing, at its
    start) from the chunks of a CSV table (module docstring). ``fh`` is the caller's: it is
    neither closed nor put in place here."""

    def __init__(
        self,
        fh: BinaryIO,
        columns: Sequence[str],
        dictionary: Sequence[str] = (),
        *,
        chunk_rows: int,
    ) -> None:
        self.fh = fh
        self.columns = list(columns)
        self.dictionary = [c for c in dictionary if c in self.columns]  # few distinct values
        self.chunk_rows = chunk_rows
        self._schemas: list[Any] = []  # each chunk's inferred pyarrow schema
        self._writer: Any = None  # pyarrow.parquet.ParquetWriter
        self._mixed = False  # a chunk's types differed from the first's

    def write_from(
        self,
        csv_path: Path,
        header_size: int,
        chunks: Sequence[int],
        after_chunk: Callable[[], None] = lambda: None,
    ) -> bool:
        """Write the file from the CSV at ``csv_path``: its header of ``header_size`` bytes,
        then chunks of the sizes ``chunks``, each read and written in turn (``after_chunk``
        called after each). Returns whether a file was written (no chunk, none)."""
        with open(csv_path, "rb") as fh:
            fh.seek(header_size)
            for size in chunks:
                self.chunk(fh.read(size))
                after_chunk()
        return self.finish(csv_path)

    def chunk(self, data: bytes) -> None:
        """The next rows of the CSV (no header)."""
        import pyarrow as pa
        import pyarrow.csv as pacsv

        # the table from the CSV text: pa.Table.from_pylist would import pandas (when
        # installed), half a second for nothing, and infer other types. One thread: a chunk is
        # small, and the reader's threads would each keep memory of their own.
        opts = pacsv.ReadOptions(column_names=self.columns, use_threads=False)
        table = pacsv.read_csv(pa.BufferReader(data), read_options=opts, memory_pool=_pool())
        self._schemas.append(table.schema)
        if self._mixed:
            return
        if self._writer is None:
            self._writer = self._open(table.schema)
        if table.schema.equals(self._writer.schema):
            self._write(table)
        else:
            self._mixed = True  # written again from the CSV by finish()

    def finish(self, csv_path: Path) -> bool:
        """The file whole in ``fh`` (flushed); ``csv_path`` is the whole CSV (needed when the
        chunks' types differ). Returns whether a file was written."""
        if self._writer is None:
            return False
        self.close()
        if self._mixed:
            self._rewrite(csv_path)
        self.fh.flush()
        return True

    def close(self) -> None:
        """Close the Parquet writer, if open (``fh`` stays open)."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

    def _open(self, schema: Any) -> Any:
        import pyarrow.parquet as pq

        return pq.ParquetWriter(
            self.fh, schema, memory_pool=_pool(), use_dictionary=self.dictionary or False
        )

    def _rewrite(self, csv_path: Path) -> None:
        """The file written again, from the start, with the whole CSV's types."""
        import pyarrow as pa
        import pyarrow.csv as pacsv

        schema = _whole_file_schema(self._schemas)
        if schema is not None:
            try:
                self._stream(csv_path, schema)
                return
            except pa.ArrowInvalid:  # a chunk that the type does not read: not the whole's
                self.close()
        table = pacsv.read_csv(csv_path, memory_pool=_pool())
        self._restart(table.schema)
        self._write(table)
        self.close()

    def _restart(self, schema: Any) -> None:
        self.fh.seek(0)
        self.fh.truncate()
        self._writer = self._open(schema)

    def _stream(self, csv_path: Path, schema: Any) -> None:
        """The CSV read again with the given column types, in batches."""
        import pyarrow as pa
        import pyarrow.csv as pacsv

        types = pacsv.ConvertOptions(column_types=schema)
        with pacsv.open_csv(csv_path, convert_options=types, memory_pool=_pool()) as reader:
            self._restart(schema)
            batches: list[Any] = []
            rows = 0
            for batch in reader:  # blocks of about a megabyte: row groups of chunk_rows rows
                batches.append(batch)
                rows += batch.num_rows
                if rows >= self.chunk_rows:
                    self._write(pa.Table.from_batches(batches, schema))
                    batches, rows = [], 0
            if batches:
                self._write(pa.Table.from_batches(batches, schema))
        self.close()

    def _write(self, table: Any) -> None:
        self._writer.write_table(table, row_group_size=self.chunk_rows)


def _pool() -> Any:
    """The memory pool of the tables' pyarrow work: the system allocator's, which gives freed
    memory back (pyarrow's default, mimalloc, keeps some 7 MB more for the rest of the run)."""
    import pyarrow as pa

    return pa.system_memory_pool()


def _whole_file_schema(schemas: Sequence[Any]) -> Any:
    """The schema that ``read_csv`` infers for the whole file, from its chunks' schemas, if the
    latest type of each column (in pyarrow's order of inference) is it; None when a column has
    a type outside that order. The caller checks that the types read every chunk."""
    import pyarrow as pa

    order = [
        pa.null(),
        pa.int64(),
        pa.bool_(),
        pa.date32(),
        pa.time32("s"),
        pa.timestamp("s"),
        pa.timestamp("ns"),
        pa.float64(),
        pa.string(),
        pa.binary(),
    ]
    fields = []
    for i, first in enumerate(schemas[0]):
        types = {s.field(i).type for s in schemas}
        if not types <= set(order):
            return None
        fields.append(pa.field(first.name, max(types, key=order.index)))
    return pa.schema(fields)


def main(argv: Sequence[str]) -> int:
    """The child's program (:func:`app.children.program`): ``FD``, the descriptor of the file
    to write (open, empty, passed to it); the job on the standard input, as JSON: ``csv``,
    ``header``, ``chunks``, ``columns``, ``dictionary``, ``chunk_rows``. Answers on the
    standard output, as JSON: ``{"written": bool}``, or ``{"error": type, "errno": n (an
    OSError's) or null, "message": text}`` with exit code 1."""
    job = json.loads(sys.stdin.buffer.read())
    try:
        import_pyarrow(without_numpy=True)
        with os.fdopen(int(argv[0]), "wb") as fh:
            table = ParquetChunks(
                fh, job["columns"], job["dictionary"], chunk_rows=job["chunk_rows"]
            )
            written = table.write_from(Path(job["csv"]), job["header"], job["chunks"])
        answer: dict[str, Any] = {"written": written}
        code = 0
    except Exception as exc:  # noqa: BLE001 — every error goes back to the parent, whole
        errno = exc.errno if isinstance(exc, OSError) else None
        answer = {"error": type(exc).__name__, "errno": errno, "message": str(exc)}
        code = 1
    sys.stdout.write(json.dumps(answer))
    return code
