"""Tables written as their rows stream in: the end of a run's CSV files and ``stats.parquet``.

* :class:`CsvStream` writes rows with :func:`csv.writer` (header first, ``\\r\\n`` line ends,
  UTF-8: what :class:`csv.DictWriter` writes), :data:`FLUSH_ROWS` rows at a time, into a
  temporary file that :meth:`~CsvStream.commit` renames into place
  (:class:`pipeline.AtomicFile`). Its bytes are those of the whole table written at once. It
  keeps the size of each chunk of :data:`CHUNK_ROWS` rows (:attr:`~CsvStream.chunks`).
* :class:`ParquetStream` turns the CSV, once it is in place, into a Parquet file, one chunk at
  a time (:meth:`~ParquetStream.write_from`), whose columns have the types
  :func:`pyarrow.csv.read_csv` infers for the whole CSV file — what the table had when it was
  read whole into memory: pyarrow's CSV inference takes, for each column, the first of null,
  int64, bool, date32, time32, timestamp, double, string, binary that reads *every* value (a
  column of integers with one ``1.5`` is double; grey images' single-channel ``mean`` beside
  colour images' ``"r g b"`` is string). Each chunk's table (its own inference) is appended
  as it comes; when a later chunk's types differ, the file is rewritten from the CSV with the
  types of the whole: the latest type in that order among the chunks' if it reads every chunk
  (it is then what the whole file infers), else — a case no table of this program produces —
  with the whole CSV read into memory, as before.

Memory, whatever the number of rows: :data:`FLUSH_ROWS` rows of CSV text while a run goes; a
chunk of rows (a few MB) while the Parquet file is written. Row groups hold
:data:`CHUNK_ROWS` rows (the content is what one table written whole would hold; only the
layout of the file differs). pyarrow (some 50 MB) is imported by :meth:`ParquetStream.write_from`
only, at the end of a run: while the run goes, the parent holds none of it. Only the columns
named ``dictionary`` are dictionary-encoded (pyarrow's default is every column): a column of
values that are all different (keys, hashes, means) gains nothing from a dictionary, and its
dictionary builder kept some 9 MB more after the first chunk (107 against 98 MB at the peak of a
100,000-row table), in a larger file (6.7 against 5.8 MB).
"""

from __future__ import annotations

import csv
import io
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline import AtomicFile, malloc

__all__ = ["CHUNK_ROWS", "CsvStream", "ParquetStream", "pyarrow_without_numpy"]

log = logging.getLogger("app")

_without_numpy = False  # pyarrow_without_numpy() was called


def pyarrow_without_numpy() -> None:
    """From now on, pyarrow is imported without numpy when this process has imported neither.

    For a process that is the command's alone (``python -m pipeline`` calls it): pyarrow then
    goes without numpy for the rest of the process (a supported mode since pyarrow 16), so
    nothing else in it may want pyarrow's numpy conversions. A run of images never imports
    numpy otherwise (not even for its near-duplicate groups: :mod:`stages.hashgroups` in this
    process up to a few thousand images, a child process above, :mod:`app.grouping`),
    and pyarrow would import it only to have it: 15 MiB and 65 ms at the end of the run, when
    this process writes ``stats.parquet`` and peaks. An embedding program keeps pyarrow as
    it is."""
    global _without_numpy
    _without_numpy = True


def _import_pyarrow() -> None:
    """Import the pyarrow modules the tables use (see :func:`pyarrow_without_numpy`)."""
    if not _without_numpy or "pyarrow" in sys.modules or "numpy" in sys.modules:
        return
    sys.modules["numpy"] = None  # type: ignore[assignment]  # its import fails: pyarrow's try
    try:
        import pyarrow.csv
        import pyarrow.parquet  # noqa: F401
    finally:
        del sys.modules["numpy"]


#: Rows per chunk: the unit of the Parquet file's type inference and its row groups.
CHUNK_ROWS = 16_384

#: Rows of CSV text held in memory before they are written (a few hundred kB): the parent's
#: memory while a run goes, whatever its number of rows.
FLUSH_ROWS = 2_048


class CsvStream:
    """``path`` as a CSV table of ``columns``, written a chunk at a time (module docstring).

    ``keep_empty``: write the file (a header only) when there are no rows; otherwise a table
    without rows leaves ``path`` as it was. ``chunk_rows``: :data:`CHUNK_ROWS` by default.
    """

    def __init__(
        self,
        path: Path,
        columns: Sequence[str],
        *,
        keep_empty: bool,
        chunk_rows: int | None = None,
    ) -> None:
        self.path = path
        self.keep_empty = keep_empty
        self.chunk_rows = CHUNK_ROWS if chunk_rows is None else chunk_rows
        self.rows = 0
        self._buf = io.StringIO()
        self._writer = csv.writer(self._buf)
        self._writer.writerow(columns)
        self._header = self._take()
        #: The size in bytes of each whole chunk of ``chunk_rows`` rows written so far (the last
        #: one may be shorter once committed), in order, after the header.
        self.chunks: list[int] = []
        self._pending = 0  # rows in the buffer
        self._in_chunk = 0  # rows of the current chunk, written or in the buffer
        self._chunk_bytes = 0  # bytes of the current chunk written so far
        self._file: AtomicFile | None = None

    def write(self, row: Sequence[Any]) -> None:
        """One row: its values in the order of the columns."""
        self._writer.writerow(row)
        self.rows += 1
        self._pending += 1
        self._in_chunk += 1
        if self._in_chunk >= self.chunk_rows:
            self._flush()
            self._end_chunk()
        elif self._pending >= FLUSH_ROWS:
            self._flush()

    def commit(self) -> bool:
        """Put the table in place; returns whether a file was written."""
        if self._pending:
            self._flush()
        if self._in_chunk:
            self._end_chunk()
        if self._file is None and self.keep_empty:
            self._open()
        if self._file is None:
            return False
        self._file.commit()
        return True

    def discard(self) -> None:
        if self._file is not None:
            self._file.discard()

    def _take(self) -> bytes:
        data = self._buf.getvalue().encode("utf-8")
        self._buf.seek(0)
        self._buf.truncate()
        return data

    def _open(self) -> AtomicFile:
        self._file = AtomicFile(self.path)
        self._file.file.write(self._header)
        return self._file

    def _flush(self) -> None:
        data = self._take()
        self._pending = 0
        out = self._file if self._file is not None else self._open()
        out.file.write(data)
        self._chunk_bytes += len(data)

    def _end_chunk(self) -> None:
        self.chunks.append(self._chunk_bytes)
        self._chunk_bytes = self._in_chunk = 0

    @property
    def header_size(self) -> int:
        """The size in bytes of the header line, before the first chunk."""
        return len(self._header)


class ParquetStream:
    """``path`` as a Parquet file of the CSV chunks given to :meth:`chunk` (module docstring).

    No chunk, no file (``path`` is left as it was).
    """

    def __init__(
        self,
        path: Path,
        columns: Sequence[str],
        dictionary: Sequence[str] = (),
        types: Mapping[str, str] | None = None,
    ) -> None:
        self.path = path
        self.columns = list(columns)
        #: each column's pyarrow type by name (``"string"``, ``"int64"``, ``"double"``): read as
        #: that, never guessed from the values (a key ``000000001`` is no number, nor is a hash
        #: of digits alone); None: guessed, chunk by chunk
        self.types = dict(types) if types is not None else None
        self.dictionary = [c for c in dictionary if c in self.columns]  # few distinct values
        self._schemas: list[Any] = []  # each chunk's inferred pyarrow schema
        self._file: AtomicFile | None = None
        self._writer: Any = None  # pyarrow.parquet.ParquetWriter
        self._mixed = False  # a chunk's types differed from the first's

    def write_from(self, csv: CsvStream) -> bool:
        """Write the file from ``csv``'s table, now in place, a chunk at a time, and put it in
        place; returns whether a file was written (no rows, no file)."""
        map_large_blocks()
        with csv.path.open("rb") as fh:
            fh.seek(csv.header_size)
            for size in csv.chunks:
                self.chunk(fh.read(size))
                release_freed()
        return self.commit(csv.path)

    def chunk(self, data: bytes) -> None:
        """The next rows of the CSV (no header)."""
        _import_pyarrow()
        import pyarrow as pa
        import pyarrow.csv as pacsv

        # the table from the CSV text: pa.Table.from_pylist would import pandas (when
        # installed), half a second for nothing, and infer other types. One thread: a chunk is
        # small, and the reader's threads would each keep memory of their own.
        opts = pacsv.ReadOptions(column_names=self.columns, use_threads=False)
        typed = None
        if self.types is not None:
            typed = {c: pa.type_for_alias(t) for c, t in self.types.items()}
        table = pacsv.read_csv(
            pa.BufferReader(data),
            read_options=opts,
            convert_options=pacsv.ConvertOptions(column_types=typed),
            memory_pool=_pool(),
        )
        self._schemas.append(table.schema)
        if self._mixed:
            return
        if self._writer is None:
            self._writer = self._open(table.schema)
        if table.schema.equals(self._writer.schema):
            self._write(table)
        else:
            self._mixed = True  # rewritten from the CSV by commit()

    def commit(self, csv_path: Path) -> bool:
        """Put the file in place; ``csv_path`` is the whole CSV (needed when chunks' types
        differ). Returns whether a file was written."""
        if self._writer is None:
            return False
        if self._mixed:
            self.discard()
            self._rewrite(csv_path)
        else:
            self._commit()
        return True

    def discard(self) -> None:
        try:
            self._close()
        except (OSError, ValueError) as exc:  # the file goes anyway
            log.debug("closing %s: %s", self.path, exc)
        if self._file is not None:
            self._file.discard()

    def _open(self, schema: Any) -> Any:
        import pyarrow.parquet as pq

        self._file = AtomicFile(self.path)
        return pq.ParquetWriter(
            self._file.file,
            schema,
            memory_pool=_pool(),
            use_dictionary=self.dictionary or False,
        )

    def _close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

    def _rewrite(self, csv_path: Path) -> None:
        _import_pyarrow()
        import pyarrow as pa
        import pyarrow.csv as pacsv

        schema = _whole_file_schema(self._schemas)
        if schema is not None:
            try:
                self._stream(csv_path, schema)
                return
            except pa.ArrowInvalid:  # a chunk that the type does not read: not the whole's
                self.discard()
        table = pacsv.read_csv(csv_path, memory_pool=_pool())
        self._writer = self._open(table.schema)
        self._write(table)
        self._commit()

    def _stream(self, csv_path: Path, schema: Any) -> None:
        """The CSV read again with the given column types, in batches."""
        import pyarrow as pa
        import pyarrow.csv as pacsv

        types = pacsv.ConvertOptions(column_types=schema)
        with pacsv.open_csv(csv_path, convert_options=types, memory_pool=_pool()) as reader:
            self._writer = self._open(schema)
            batches: list[Any] = []
            rows = 0
            for batch in reader:  # blocks of about a megabyte: row groups of CHUNK_ROWS rows
                batches.append(batch)
                rows += batch.num_rows
                if rows >= CHUNK_ROWS:
                    self._write(pa.Table.from_batches(batches, schema))
                    batches, rows = [], 0
            if batches:
                self._write(pa.Table.from_batches(batches, schema))
        self._commit()

    def _write(self, table: Any) -> None:
        self._writer.write_table(table, row_group_size=CHUNK_ROWS)

    def _commit(self) -> None:
        self._close()
        assert self._file is not None
        self._file.commit()


def release_freed() -> None:
    """Give the memory freed so far back to the system (glibc's ``malloc_trim``; nothing
    elsewhere). glibc keeps freed blocks of a few MB in its arenas: over the chunks of a long
    table the process's RSS grew ~0.6 MB a chunk (112 -> 150 MB over 61 chunks of 16,384
    rows), and stayed at 116 MB with a trim after each (a millisecond or two)."""
    malloc.trim()


#: Blocks from this size on get pages of their own (mmap), given back when freed.
MMAP_THRESHOLD = 128 * 1024


def map_large_blocks() -> None:
    """From now on, every block of :data:`MMAP_THRESHOLD` or more gets pages of its own, given
    back to the system when it is freed (glibc; ``MALLOC_MMAP_THRESHOLD_`` in the environment
    wins). glibc starts there too, but raises the threshold to the size of each large block
    freed (up to 32 MB): the column buffers of the tables' later chunks then came from the
    heap among smaller blocks, and the peak RSS of writing stats.parquet grew with the number
    of chunks (+9 MB from 1 to 61 chunks: 77 -> 86 MB; +3 MB with the threshold kept). Setting
    it keeps it. For the end of a run (this process's items are done): process-wide."""
    malloc.mallopt_unless_set(malloc.M_MMAP_THRESHOLD, MMAP_THRESHOLD)


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
