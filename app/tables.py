"""Tables written as their rows stream in: the end of a run's CSV files and ``stats.parquet``.

* :class:`CsvStream` writes rows with :func:`csv.writer` (header first, ``\\r\\n`` line ends,
  UTF-8: what :class:`csv.DictWriter` writes), :data:`FLUSH_ROWS` rows at a time, into a
  temporary file that :meth:`~CsvStream.commit` renames into place
  (:class:`pipeline.AtomicFile`). Its bytes are those of the whole table written at once. It
  keeps the size of each chunk of :data:`CHUNK_ROWS` rows (:attr:`~CsvStream.chunks`).
* :class:`ParquetStream` turns the CSV, once it is in place, into a Parquet file, one chunk at
  a time (:mod:`app.parquet`: the columns have the types the whole CSV file infers), put in
  place at once. The command writes it in a child process (:func:`parquet_in_child`).

Memory, whatever the number of rows: :data:`FLUSH_ROWS` rows of CSV text while a run goes; a
chunk of rows (a few MB) while the Parquet file is written, in the child (the command) or in
this process (an embedding program, which imports pyarrow for it at the end of a run). Row
groups hold :data:`CHUNK_ROWS` rows.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline import AtomicFile, malloc

from . import children

__all__ = ["CHUNK_ROWS", "CsvStream", "ParquetStream", "parquet_in_child"]

log = logging.getLogger("app")

_in_child = False  # parquet_in_child() was called


def parquet_in_child() -> None:
    """From now on, :class:`ParquetStream` writes in a child process (:mod:`app.children`).

    For a process that is the command's alone (``python -m pipeline`` calls it): pyarrow (some
    50 MB, 40 ms to import, with numpy 15 MiB and 65 ms more) then never comes into it. A run
    of images imports neither otherwise (not even for its near-duplicate groups: a child too,
    above a few thousand images): the command's process, which feeds the workers, stays small
    and its CPU its own. The child imports pyarrow without numpy. An embedding program writes
    in its own process, with pyarrow as it is."""
    global _in_child
    _in_child = True


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
    """``path`` as a Parquet file of a :class:`CsvStream`'s table (:mod:`app.parquet`), put in
    place at once by :meth:`write_from`. No row, no file (``path`` is left as it was)."""

    def __init__(self, path: Path, columns: Sequence[str], dictionary: Sequence[str] = ()) -> None:
        self.path = path
        self.columns = list(columns)
        self.dictionary = list(dictionary)
        self._file: AtomicFile | None = None

    def write_from(self, csv: CsvStream) -> bool:
        """Write the file from ``csv``'s table, now in place, a chunk at a time, and put it in
        place; returns whether a file was written."""
        if not csv.chunks:
            return False
        self._file = AtomicFile(self.path)
        try:
            written = self._in_child(csv) if _in_child else self._here(csv)
        except BaseException:
            self.discard()
            raise
        if written:
            self._file.commit()
        else:
            self._file.discard()
        return written

    def discard(self) -> None:
        if self._file is not None:
            self._file.discard()

    def _job(self, csv: CsvStream) -> dict[str, Any]:
        return {
            "csv": str(csv.path),
            "header": csv.header_size,
            "chunks": csv.chunks,
            "columns": self.columns,
            "dictionary": self.dictionary,
            "chunk_rows": csv.chunk_rows,
        }

    def _here(self, csv: CsvStream) -> bool:
        from .parquet import ParquetChunks, import_pyarrow

        assert self._file is not None
        import_pyarrow(without_numpy=False)
        map_large_blocks()
        table = ParquetChunks(
            self._file.file, self.columns, self.dictionary, chunk_rows=csv.chunk_rows
        )
        try:
            return table.write_from(csv.path, csv.header_size, csv.chunks, release_freed)
        finally:
            table.close()

    def _in_child(self, csv: CsvStream) -> bool:
        """:func:`app.parquet.main` in a child, given the temporary file's descriptor."""
        assert self._file is not None
        fd = self._file.file.fileno()
        env = {}  # large blocks mapped in the child too (see map_large_blocks)
        if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
            env["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)
        proc = children.start(_PROGRAM, [str(fd)], stdin=subprocess.PIPE, pass_fds=(fd,), env=env)
        try:
            out, err = proc.communicate(json.dumps(self._job(csv)).encode("utf-8"))
        finally:
            children.stop(proc)
        try:
            answer = json.loads(out) if out else None
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            how = children.how_it_ended(proc, err)
            raise RuntimeError(f"the child process writing {self.path.name} {how}")
        if "error" in answer:
            raise _error(answer, self.path)
        return bool(answer.get("written"))


#: The child's program: ``app.parquet.main(FD)``.
_PROGRAM = children.program("app.parquet", 1)


def _error(answer: dict[str, Any], path: Path) -> Exception:
    """The child's error, raised here: an ``OSError`` as one (a full disk stays ``ENOSPC``)."""
    code, message = answer.get("errno"), str(answer.get("message", ""))
    if isinstance(code, int):
        return OSError(code, os.strerror(code), str(path))
    return RuntimeError(f"writing {path.name}: {answer.get('error')}: {message}")


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
