"""URL tables as input: Parquet, CSV/TSV, JSON lines and plain URL lists, read in batches.

:func:`iter_table` yields one :class:`TableRow` per row of the table, lazily: a Parquet file
through ``ParquetFile.iter_batches`` (only the columns asked for), CSV/TSV through
``pyarrow.csv.open_csv`` (a streaming reader, every column read as text so that a column's
type cannot change from one block to the next; a quoted value may hold line breaks, its row
is still one row; header names count without their spaces, ``url, caption`` has a ``caption``
column, for :func:`check_table` as for the reader), JSON lines line by line (kept columns as
text too, numbers and lists as JSON: :func:`_text`), and any other file as a plain URL list
(:func:`stages.urls.iter_url_list`). At most one batch (:data:`BATCH_ROWS` rows) is held at a
time, so a table of 100 million rows never sits in memory.

The format follows the extension: ``.parquet``, ``.csv``, ``.tsv``, ``.jsonl`` / ``.json`` /
``.ndjson``; anything else is a URL list (one URL a line). ``row`` is the 0-based index of the
row in the table (for a URL list: of its lines that hold a URL or a bad entry), so it is stable
from one run to the next: sample keys derive from it.

:func:`check_table` reads only the schema (or the header) and raises :class:`TableError` (a
``ValueError``) for a missing URL, caption or kept column, before any row is read. A row whose
URL is null or empty is yielded with ``error`` set, never dropped.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .storage import is_url, open_input
from .urls import GZIP_MAGIC, iter_url_list, open_unpacked

__all__ = ["BATCH_ROWS", "TableError", "TableRow", "check_table", "iter_table", "table_format"]

TableFormat = Literal["parquet", "csv", "tsv", "jsonl", "text"]

#: Rows per batch read from a table: a few MB of URLs and captions at most.
BATCH_ROWS = 4096
#: Bytes per CSV block parsed at once (pyarrow's reader holds one block, plus one ahead).
CSV_BLOCK_BYTES = 1 << 20

_SUFFIXES: dict[str, TableFormat] = {
    ".parquet": "parquet",
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
}


class TableError(ValueError):
    """The table as a whole cannot be used (a missing column, an unreadable header)."""


@dataclass(frozen=True, slots=True)
class TableRow:
    """One row: its index, its URL, its caption and kept columns (JSON-able values)."""

    row: int
    url: str
    caption: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def table_format(path: str | os.PathLike[str]) -> TableFormat:
    """The format of a table by its extension, after an optional ``.gz`` (``t.csv.gz``: CSV;
    anything unknown: a URL list), as :func:`stages.urls.detect_format` reads a list's."""
    name = os.fspath(path).lower().removesuffix(".gz")
    return _SUFFIXES.get(os.path.splitext(name)[1], "text")


def _is_gzip(path: str) -> bool:
    with open_input(path) as raw:
        return raw.peek(2)[:2] == GZIP_MAGIC


def _columns(path: str, fmt: TableFormat) -> list[str]:
    """The column names of a table, from its schema or header only."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        with _arrow_source(path) as src:
            return list(pq.ParquetFile(src).schema_arrow.names)
    if fmt in ("csv", "tsv"):
        return [name.strip() for name in _csv_header(path, fmt)]
    with open_unpacked(path) as raw, io.TextIOWrapper(raw, "utf-8-sig") as fh:
        for line in fh:
            if line.strip():
                try:
                    obj = json.loads(line)
                except ValueError as exc:
                    raise TableError(f"{path}: first line is not JSON: {exc}") from exc
                return list(obj) if isinstance(obj, dict) else []
    return []


def check_table(
    path: str | os.PathLike[str],
    *,
    url_col: str = "url",
    caption_col: str | None = None,
    keep: Sequence[str] = (),
) -> None:
    """Raise :class:`TableError` when a column asked for is not in the table (URL lists: never;
    JSON lines: checked against the first object's fields)."""
    name = os.fspath(path)
    fmt = table_format(name)
    if fmt == "text":
        return
    try:
        have = _columns(name, fmt)
    except (OSError, UnicodeDecodeError) as exc:
        raise TableError(f"{name}: cannot read its columns: {exc}") from exc
    except Exception as exc:  # pyarrow's ArrowInvalid for a file that is not Parquet
        if type(exc).__module__.startswith("pyarrow"):
            raise TableError(f"{name}: not a readable {fmt} table: {exc}") from exc
        raise
    wanted = [("URL", url_col), *((("caption", caption_col),) if caption_col else ())]
    wanted += [("kept", c) for c in keep]
    for what, col in wanted:
        if col not in have:
            raise TableError(f"{name}: no {what} column {col!r}; its columns are {have}")


def iter_table(
    path: str | os.PathLike[str],
    *,
    url_col: str = "url",
    caption_col: str | None = None,
    keep: Sequence[str] = (),
    batch_rows: int = BATCH_ROWS,
) -> Iterator[TableRow]:
    """The rows of a table, lazily, one batch in memory at a time (see the module)."""
    name = os.fspath(path)
    fmt = table_format(name)
    if fmt == "text":
        yield from _text_rows(name)
        return
    cols = list(dict.fromkeys([url_col, *([caption_col] if caption_col else []), *keep]))
    if fmt == "jsonl":
        batches: Iterator[list[dict[str, Any]]] = _json_batches(name, batch_rows)
    else:
        batches = _arrow_batches(name, fmt, cols, batch_rows)
    row = 0
    kept = _plain if fmt != "jsonl" else _text  # JSON lines: no schema; see _text
    for batch in batches:
        for obj in batch:
            yield _row(row, obj, url_col, caption_col, keep, kept)
            row += 1


def _arrow_batches(
    path: str, fmt: TableFormat, cols: list[str], batch_rows: int
) -> Iterator[list[dict[str, Any]]]:
    import pyarrow as pa

    if fmt == "parquet":
        import pyarrow.parquet as pq

        with _arrow_source(path) as src, pq.ParquetFile(src) as pf:
            for batch in pf.iter_batches(batch_size=batch_rows, columns=cols):
                yield batch.to_pylist()
        return
    import pyarrow.csv as pcsv

    raw = _raw_names(_csv_header(path, fmt), cols)
    with _arrow_source(path, text=True) as src:
        reader = pcsv.open_csv(
            src,
            read_options=pcsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
            parse_options=_csv_parse_options(fmt),
            convert_options=pcsv.ConvertOptions(
                include_columns=list(raw.values()),
                column_types={c: pa.binary() for c in raw.values()},
            ),
        )
        with reader:
            for batch in reader:
                rows = batch.rename_columns(list(raw)).to_pylist()
                yield [{k: _decoded(v) for k, v in row.items()} for row in rows]


def _decoded(value: bytes | None) -> str | None:
    """A CSV cell as text: UTF-8, else Latin-1 (a caption written by a tool that does not say
    so: read as text, a byte that is no UTF-8 stopped the run at its block, exit 3)."""
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def _csv_parse_options(fmt: TableFormat) -> Any:
    """How a CSV/TSV table is parsed, its header as its rows: quoted values may hold line
    breaks (a caption of two lines, as ``csv.writer`` and R's ``write.csv`` write it), so the
    reader cuts its blocks at row ends, not at any line end inside a value."""
    import pyarrow.csv as pcsv

    return pcsv.ParseOptions(delimiter="," if fmt == "csv" else "\t", newlines_in_values=True)


def _csv_header(path: str, fmt: TableFormat) -> list[str]:
    """The column names of a CSV/TSV table as its reader sees them (quotes removed, spaces
    kept): read by pyarrow with the reader's options, so that the check and the reader agree."""
    import pyarrow.csv as pcsv

    with _arrow_source(path, text=True) as src:
        reader = pcsv.open_csv(
            src,
            read_options=pcsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
            parse_options=_csv_parse_options(fmt),
        )
        with reader:
            return list(reader.schema.names)


def _raw_names(header: list[str], cols: list[str]) -> dict[str, str]:
    """Each column asked for (a name without its spaces: ``url, caption`` has a ``caption``
    column, as :func:`check_table` says) and the header's name for it, the first that matches
    (as pyarrow picks the first of two columns of one name)."""
    stripped: dict[str, str] = {}
    for name in header:
        stripped.setdefault(name.strip(), name)
    return {c: stripped.get(c, c) for c in cols}


@contextlib.contextmanager
def _arrow_source(path: str, *, text: bool = False) -> Iterator[Any]:
    """What pyarrow reads: the path itself, or for a storage URL the object opened
    (:func:`stages.storage.open_input`, streamed), closed at the end; a ``text`` table (CSV,
    TSV) compressed with gzip, decompressed (:func:`~stages.urls.open_unpacked`)."""
    if text and _is_gzip(path):
        with open_unpacked(path) as fh:
            yield fh
        return
    if not is_url(path):
        yield path
        return
    with open_input(path) as fh:
        yield fh


def _json_batches(path: str, batch_rows: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    with open_unpacked(path) as raw, io.TextIOWrapper(raw, "utf-8-sig", errors="replace") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as exc:
                obj = {"\0error": f"invalid JSON: {exc}", "\0text": line.strip()[:2048]}
            batch.append(obj if isinstance(obj, dict) else {"\0error": "not a JSON object"})
            if len(batch) >= batch_rows:
                yield batch
                batch = []
    if batch:
        yield batch


def _row(
    row: int,
    obj: dict[str, Any],
    url_col: str,
    caption_col: str | None,
    keep: Sequence[str],
    kept: Callable[[Any], Any],
) -> TableRow:
    if "\0error" in obj:
        return TableRow(row, str(obj.get("\0text", "")), error=str(obj["\0error"]))
    url = obj.get(url_col)
    caption = obj.get(caption_col) if caption_col else None
    extra = {c: kept(obj.get(c)) for c in keep}
    cap = None if caption is None else str(caption)
    if not isinstance(url, str) or not url.strip():
        why = f"no URL in column {url_col!r}" if url is None else f"bad URL {url!r}"
        return TableRow(row, "" if url is None else str(url), cap, extra, error=why)
    return TableRow(row, url.strip(), cap, extra)


def _plain(value: Any) -> Any:
    """A value JSON can hold (dates, decimals, bytes: as text)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


def _text(value: Any) -> str | None:
    """A kept value of a JSON lines table, as text: a string as it is, anything else as JSON
    (``1``, ``2.5``, ``true``, ``["a", "b"]``). A JSON lines table has no schema: one row's
    ``1`` and the next one's ``2.5`` or ``"high"`` would give a shard's column one type and the
    next shard's another (or a Parquet shard's later row group a type its first one did not
    have), and a reader of the shards as one dataset would fail on them."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(_plain(value), ensure_ascii=False)


def _text_rows(path: str) -> Iterator[TableRow]:
    for row, entry in enumerate(iter_url_list(path, fmt="text")):
        yield TableRow(row, entry.url, error=entry.error)
