"""URL-list source: read a list of URLs lazily, one :class:`UrlEntry` per record.

Formats, chosen by extension (after an optional ``.gz``) unless ``fmt`` is given:

- plain text (any other extension): one URL per line; blank lines and lines whose first
  non-blank character is ``#`` are skipped. The whole stripped line is the URL (no inline
  comments: ``#`` inside a URL is a fragment).
- ``.csv`` / ``.tsv`` (``.tab``): a header row naming a ``url`` column (case-insensitive, the
  first such column); every other column goes into ``extra``. Standard CSV quoting in both, so
  quoted fields may span lines. Blank rows are skipped.
- ``.jsonl`` / ``.ndjson``: one JSON object per line with a string ``url``; other scalar fields
  go into ``extra`` as strings (strings as they are, numbers/true/false/null as JSON text);
  nested arrays/objects are dropped. Blank lines are skipped.

Any of them may be gzip-compressed; the gzip magic bytes decide, not the ``.gz`` suffix.
Text is UTF-8 (a BOM is ignored). Reading is lazy: line by line, never the whole file, and a
line longer than :data:`MAX_LINE_BYTES` is skipped in pieces rather than held in memory.

Errors:

- A line or record that cannot become a URL (invalid UTF-8, invalid JSON, no url field, an empty
  url, a CSV row with more fields than the header, an over-long line) does not raise and is not
  dropped: it is yielded as an entry with ``error`` set (``url`` holds the raw text, clipped), so
  the caller records one failure for that line. Check ``entry.error`` (or ``entry.ok``).
- ``UrlListError`` (a ``ValueError``) is raised for a problem with the file as a whole, when the
  iterator reaches it: a CSV/TSV header without a ``url`` column, a corrupt gzip stream. Opening
  errors (``OSError``: missing file, permissions) surface on the first ``next()``.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import json
import logging
import os
import zlib
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import IO, Literal, NamedTuple, Protocol, cast

from .storage import open_input

log = logging.getLogger(__name__)

__all__ = [
    "GZIP_MAGIC",
    "MAX_LINE_BYTES",
    "Format",
    "UrlEntry",
    "UrlListError",
    "check_url_list",
    "detect_format",
    "iter_url_list",
    "open_unpacked",
]

Format = Literal["text", "csv", "tsv", "jsonl"]

# Longest line kept. URLs are rarely above a few KB; 1 MiB leaves room for CSV rows with long
# extra columns while bounding memory per line.
MAX_LINE_BYTES = 1 << 20
# Raw text kept in an error entry, so one bad line cannot bloat the ledger.
_MAX_ERROR_TEXT = 2048

_SUFFIX_FORMATS: dict[str, Format] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
}
GZIP_MAGIC = b"\x1f\x8b"


class UrlListError(ValueError):
    """The URL list as a whole cannot be read (bad header, corrupt compression)."""


@dataclass(frozen=True, slots=True)
class UrlEntry:
    """One record of a URL list. ``line`` is the 1-based line where the record starts.
    ``error`` is None for a usable entry, else why this line gave no URL."""

    url: str
    line: int
    extra: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class _ByteLines(Protocol):
    def readline(self, size: int = -1, /) -> bytes: ...


class _Line(NamedTuple):
    number: int
    text: str  # decoded, line ending kept
    error: str | None


def detect_format(path: str | os.PathLike[str]) -> Format:
    """The format implied by the file name (``list.csv.gz`` -> ``"csv"``)."""
    name = os.fspath(path).lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return _SUFFIX_FORMATS.get(os.path.splitext(name)[1], "text")


def _clip(text: str) -> str:
    text = text.strip()
    return text if len(text) <= _MAX_ERROR_TEXT else text[:_MAX_ERROR_TEXT] + "..."


def _read_lines(stream: _ByteLines, path: str) -> Iterator[_Line]:
    number = 0
    while True:
        try:
            raw = stream.readline(MAX_LINE_BYTES + 1)
            overlong = len(raw) > MAX_LINE_BYTES
            while overlong and not raw.endswith(b"\n"):
                rest = stream.readline(MAX_LINE_BYTES)  # skip the tail, a piece at a time
                if not rest or rest.endswith(b"\n"):
                    break
        except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
            raise UrlListError(f"{path}: unreadable after line {number}: {exc}") from exc
        if not raw:
            return
        number += 1
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        if overlong:
            text = raw[:_MAX_ERROR_TEXT].decode("utf-8", "replace")
            yield _Line(number, text, f"line longer than {MAX_LINE_BYTES} bytes")
            continue
        try:
            yield _Line(number, raw.decode("utf-8"), None)
        except UnicodeDecodeError:
            yield _Line(number, raw.decode("utf-8", "replace"), "invalid UTF-8")


def _bad(line: _Line) -> UrlEntry:
    assert line.error is not None
    return UrlEntry(url=_clip(line.text), line=line.number, error=line.error)


def _iter_text(lines: Iterator[_Line]) -> Iterator[UrlEntry]:
    for line in lines:
        if line.error:
            yield _bad(line)
            continue
        text = line.text.strip()
        if text and not text.startswith("#"):
            yield UrlEntry(url=text, line=line.number)


def _scalar(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, bool | int | float):
        return json.dumps(value)
    return None  # arrays and objects are not kept


def _iter_jsonl(lines: Iterator[_Line]) -> Iterator[UrlEntry]:
    for line in lines:
        if line.error:
            yield _bad(line)
            continue
        text = line.text.strip()
        if not text:
            continue
        try:
            obj = json.loads(text)
        except ValueError as exc:
            yield UrlEntry(url=_clip(text), line=line.number, error=f"invalid JSON: {exc}")
            continue
        if not isinstance(obj, dict):
            yield UrlEntry(url=_clip(text), line=line.number, error="not a JSON object")
            continue
        url = obj.get("url")
        if not isinstance(url, str) or not url.strip():
            problem = "missing url field" if url is None else "url is not a non-empty string"
            yield UrlEntry(url=_clip(text), line=line.number, error=problem)
            continue
        extra = {k: v for k, raw in obj.items() if k != "url" and (v := _scalar(raw)) is not None}
        yield UrlEntry(url=url.strip(), line=line.number, extra=extra)


def _url_column(header: list[str], path: str) -> int:
    for i, name in enumerate(header):
        if name.strip().lower() == "url":
            return i
    raise UrlListError(f"{path}: missing url column in header {header!r}")


def _iter_csv(lines: Iterator[_Line], delimiter: str, path: str) -> Iterator[UrlEntry]:
    pending: list[UrlEntry] = []  # bad lines seen by the feeder, reported in file order
    consumed = 0

    def feed() -> Iterator[str]:
        nonlocal consumed
        for line in lines:
            consumed = line.number
            if line.error:
                pending.append(_bad(line))
                yield "\n"  # csv sees a blank row in its place
            else:
                yield line.text

    reader = csv.reader(feed(), delimiter=delimiter)
    header: list[str] | None = None
    url_index = 0
    spanning = 0  # rows read across line breaks (quoted fields), the first one's lines below
    first_span = (0, 0)
    while True:
        start = consumed + 1
        try:
            row = next(reader, None)
        except csv.Error as exc:
            span = f"lines {start}-{consumed}" if consumed > start else f"line {start}"
            why = f"CSV error: {exc} ({span} read as one field: a quote left open?)"
            yield UrlEntry(url="", line=start, error=why)
            continue
        yield from pending
        pending.clear()
        if row is None:
            _say_spanning(path, spanning, first_span)
            return
        if consumed > start:
            spanning += 1
            first_span = first_span if spanning > 1 else (start, consumed)
        if not any(cell.strip() for cell in row):
            continue
        if header is None:
            header = [name.strip() for name in row]
            url_index = _url_column(header, path)
            continue
        raw = delimiter.join(row)
        if len(row) > len(header):
            problem = f"{len(row)} fields but the header has {len(header)}"
            yield UrlEntry(url=_clip(raw), line=start, error=problem)
            continue
        url = row[url_index].strip() if url_index < len(row) else ""
        if not url:
            yield UrlEntry(url=_clip(raw), line=start, error="empty or missing url")
            continue
        extra = {
            (name or f"column{i + 1}"): value
            for i, (name, value) in enumerate(zip(header, row, strict=False))
            if i != url_index
        }
        yield UrlEntry(url=url, line=start, extra=extra)


def _say_spanning(path: str, spans: int, first_span: tuple[int, int]) -> None:
    """A warning for the ``spans`` rows of a CSV/TSV list read across line breaks (a quoted
    field that holds them, as CSV allows), the first one's lines ``first_span``: a quote opened
    by mistake (``"5"" tall``) reads the rows after it into one field, and they get no record
    of their own."""
    if not spans:
        return
    first, last = first_span
    log.warning(
        "%s: %d row(s) read across line breaks (a quoted field holding them), the first at "
        "lines %d-%d: if a quote there was not meant to open a field, the lines it took in are "
        "no rows of their own",
        path,
        spans,
        first,
        last,
    )


def iter_url_list(
    path: str | os.PathLike[str], *, fmt: Format | None = None
) -> Generator[UrlEntry, None, None]:
    """Yield the entries of a URL list lazily (see the module docstring for formats/errors).

    The file stays open while the iterator is alive; it is closed when the iterator is
    exhausted, closed (``.close()``) or garbage-collected.
    """
    name = os.fspath(path)
    kind = fmt or detect_format(name)
    with open_unpacked(name) as stream:
        lines = _read_lines(stream, name)
        if kind == "text":
            yield from _iter_text(lines)
        elif kind == "jsonl":
            yield from _iter_jsonl(lines)
        else:
            yield from _iter_csv(lines, "," if kind == "csv" else "\t", name)


@contextlib.contextmanager
def open_unpacked(path: str) -> Iterator[IO[bytes]]:
    """``path``'s bytes (a local path or a storage URL), decompressed when they are gzip's: its
    magic bytes decide, not a ``.gz`` suffix (URL lists, and the tables of
    :mod:`stages.tables_in`)."""
    with open_input(path) as raw:
        if raw.peek(2)[:2] != GZIP_MAGIC:
            yield raw
            return
        with gzip.GzipFile(fileobj=raw, mode="rb") as unpacked:
            yield cast(IO[bytes], unpacked)


def check_url_list(path: str | os.PathLike[str]) -> None:
    """Raise :class:`UrlListError` for a list that cannot be read at all, before a run starts
    on it: not there, a folder, unreadable, a CSV/TSV header without a ``url`` column. Reads
    its first entry only (what :func:`iter_url_list` raises later stops a run part-way)."""
    entries = iter_url_list(path)
    try:
        next(entries, None)
    except OSError as exc:
        raise UrlListError(f"{os.fspath(path)}: cannot read the URL list: {exc}") from exc
    finally:
        entries.close()
