"""Numeric data files: ``.npy``, ``.npz`` members and CSV/TSV, crunched in chunks on all workers.

    plan (read stage, thread)  ──Split──▶  crunch_part (process workers, one chunk each)
                               ◀──merge──  one record per array / file

* :func:`plan` reads only a header (the ``.npy`` header, the zip entry, the CSV header line and a
  small sample to tell numeric columns from others) and returns a :class:`~pipeline.Split` into
  parts of about ``chunk_size`` bytes: element ranges of a memory-mapped array, or byte ranges of
  a CSV file (a line belongs to the part its first byte falls in, so no line is read twice).
* :func:`crunch_part` runs in a process worker: it maps (``.npy``) or reads (CSV) one part and
  returns its :class:`~stages.arraystats.ArrayStats`; memory is about one chunk.
* the merge functions combine the parts exactly (:func:`stages.arraystats.merge`) into the
  record's value: for an array ``{"kind": "array", "stats": ...}``, for a CSV file
  ``{"kind": "csv", "columns": {name: stats}, ...}``.

CSV parsing uses pyarrow's reader (C++): quoted fields, ``""`` escapes, CRLF, and the usual
missing-value spellings (empty, NA, NaN, null, …) counted as missing. A cell of a numeric column
that is not a number is a *bad cell*: counted and reported (first one with its line), not fatal;
a row with the wrong number of fields is a *bad row*, counted the same way. Quoted values may
not contain line breaks (such a row shows up as bad rows). A compressed ``.npz`` member cannot
be memory-mapped: it is streamed in one part.

The options and part classes are defined in :mod:`stages.parts` (no numpy) and re-exported here.
"""

from __future__ import annotations

import codecs
import csv
import functools
import math
import os
import struct
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np

from pipeline import Split

from .arraystats import BLOCK, FLOAT_EXP_FLOOR, ArrayStats, array_stats, exp_floor_of, merge_all
from .parts import (
    DEFAULT_CHUNK_BYTES,
    ArrayPart,
    CsvPart,
    DataOptions,
    ZipMemberPart,
    is_data_result,
)
from .sources import DATA_EXTENSIONS, DataFile
from .storage import is_url

__all__ = [
    "DATA_EXTENSIONS",
    "DEFAULT_CHUNK_BYTES",
    "ArrayPart",
    "CsvPart",
    "DataError",
    "DataFile",
    "DataOptions",
    "ZipMemberPart",
    "crunch_part",
    "is_data_result",
    "plan",
]

#: Bytes of a CSV file read to tell numeric columns from others.
SAMPLE_BYTES = 1 << 20
#: The longest header line read (a table of a million columns); past it the file fails.
MAX_HEADER_BYTES = 64 << 20
_ZIP_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # zipfile's sizeFileHeader (30 bytes)


class DataError(Exception):
    """A data file that cannot be read as what its name says (the message says where)."""


@dataclass(slots=True)
class CsvPartResult:
    lines: int  # lines in this part (bad rows included)
    rows: int  # rows parsed
    columns: dict[str, ArrayStats]
    non_numeric: dict[str, int]  # non-missing cells of the other columns
    bad_cells: dict[str, int] = field(default_factory=dict)
    bad_rows: int = 0
    first_bad: dict[str, Any] | None = None  # its "line" is 1-based in the part


# ------------------------------------------------------------------------------------ planning
def plan(src: DataFile, opts: DataOptions) -> Split:
    """Read the header of a data input and split it into parts (runs in the read stage).

    An ``.npz`` member, a CSV/TSV file (by extension), else an ``.npy`` array: by extension, or
    recognised by its magic number whatever its name (the header check says when it is not).
    """
    if is_url(src.path):  # an object in storage: planned from a local copy (stages.remote_data)
        from .remote_data import plan_object

        return plan_object(src, opts, plan)
    suffix = os.path.splitext(src.path)[1].lower()
    if src.member is not None or suffix == ".npz":
        return _plan_npz(src, opts)
    if suffix in (".csv", ".tsv"):
        return _plan_csv(src, opts, suffix)
    with open(src.path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        return _plan_array(src, _npy_header(f, 0, size, src.rel), opts)


@dataclass(frozen=True, slots=True)
class _Header:
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    offset: int  # of the first element, in the file


def _npy_header(f: BinaryIO, base: int, size: int, where: str) -> _Header:
    """Parse an ``.npy`` header that starts at byte ``base`` of ``f``; check the data is there."""
    f.seek(base)
    try:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0), (3, 0)):  # the versions numpy knows
            raise ValueError(f"unknown format version {version[0]}.{version[1]}")
        if version == (1, 0):
            shape, _fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, _fortran, dtype = np.lib.format.read_array_header_2_0(f)
    except (ValueError, OSError, SyntaxError) as exc:
        raise DataError(f"{where}: not a valid .npy header at byte {base}: {exc}") from exc
    if dtype.kind not in "biuf" or dtype.fields is not None:
        raise DataError(f"{where}: dtype {dtype} is not numeric (bool, integer or float)")
    if any(d < 0 for d in shape):
        raise DataError(f"{where}: not a valid .npy header: negative dimension in shape {shape}")
    offset = f.tell()
    need = offset + math.prod(shape) * dtype.itemsize
    if need > size:
        raise DataError(
            f"{where}: truncated: the header says {math.prod(shape):,} values of {dtype} "
            f"(data up to byte {need:,}), the file has {size:,} bytes"
        )
    return _Header(tuple(shape), dtype, offset)


def _plan_array(src: DataFile, h: _Header, opts: DataOptions) -> Split:
    n = math.prod(h.shape)
    per = n if opts.chunk_size == 0 else max(1, opts.chunk_size // h.dtype.itemsize)
    parts = [
        ArrayPart(src.path, h.offset, h.dtype.str, lo, min(n, lo + per), opts.bins)
        for lo in range(0, n, max(per, 1))
    ]
    info = {
        "kind": "array",
        "format": "npz" if src.member else "npy",
        "dtype": str(h.dtype),
        "shape": list(h.shape),
    }
    return Split(parts, functools.partial(merge_array, info, exp_floor_of(h.dtype)))


def _plan_npz(src: DataFile, opts: DataOptions) -> Split:
    if src.member is None:
        raise DataError(f"{src.rel}: an .npz file is planned per member")
    where = f"{src.rel}:{src.member.removesuffix('.npy')}"
    try:
        with zipfile.ZipFile(src.path) as zf:
            info = zf.getinfo(src.member)
            if info.compress_type != zipfile.ZIP_STORED:
                with zf.open(info) as member:
                    h = _npy_header(member, 0, info.file_size, where)  # type: ignore[arg-type]
                meta = {"kind": "array", "format": "npz", "dtype": str(h.dtype)}
                floor = exp_floor_of(h.dtype)
                merge = functools.partial(merge_array, {**meta, "shape": list(h.shape)}, floor)
                return Split([ZipMemberPart(src.path, src.member, opts.bins)], merge)
        with open(src.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(info.header_offset)
            fields = _ZIP_LOCAL_HEADER.unpack(f.read(_ZIP_LOCAL_HEADER.size))
            base = info.header_offset + _ZIP_LOCAL_HEADER.size + fields[10] + fields[11]
            h = _npy_header(f, base, min(size, base + info.file_size), where)
    except (zipfile.BadZipFile, KeyError, struct.error) as exc:
        raise DataError(f"{where}: unreadable zip entry: {exc}") from exc
    return _plan_array(src, h, opts)


def _plan_csv(src: DataFile, opts: DataOptions, suffix: str) -> Split:
    with open(src.path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        sample = f.read(SAMPLE_BYTES)
        end = sample.find(b"\n")
        if end < 0 and len(sample) < size:  # a header line longer than the sample (wide tables)
            end = _next_line(f, len(sample)) - 1
            if end >= MAX_HEADER_BYTES:
                raise DataError(f"{src.rel}: a header line over {MAX_HEADER_BYTES:,} bytes")
            f.seek(0)
            sample = f.read(end + 1 + SAMPLE_BYTES)
            end = end if sample[end : end + 1] == b"\n" else -1
    if not sample.strip():
        raise DataError(f"{src.rel}: empty file: no header line")
    _check_text(sample, src.rel)
    header_bytes = sample if end < 0 else sample[:end]
    data_start = len(sample) if end < 0 else end + 1
    header = header_bytes.removeprefix(b"\xef\xbb\xbf").decode("utf-8", "replace").rstrip("\r")
    delimiter = opts.delimiter or ("\t" if suffix == ".tsv" else _sniff(header))
    names = _unique(next(csv.reader([header], delimiter=delimiter)))
    if opts.columns:
        missing = [c for c in opts.columns if c not in names]
        if missing:
            raise DataError(
                f"{src.rel}: no column(s) {missing} in the header (line 1): {list(names)}"
            )
        numeric: tuple[str, ...] = tuple(dict.fromkeys(opts.columns))  # each once
        other: tuple[str, ...] = ()
    else:
        body = sample[data_start:]
        if len(sample) == SAMPLE_BYTES:  # cut at the last whole line
            body = body[: body.rfind(b"\n") + 1]
        numeric, other = _classify(body, names, delimiter)
    step = size if opts.chunk_size == 0 else max(opts.chunk_size, 1)
    parts = (
        CsvPart(
            src.path,
            lo,
            min(size, lo + step),
            data_start,
            names,
            numeric,
            other,
            delimiter,
            opts.bins,
        )
        for lo in range(data_start, size, step)
    )
    info = {"kind": "csv", "delimiter": delimiter, "header": list(names)}
    return Split(parts, functools.partial(merge_csv, info, numeric, other))


#: The magic numbers of compressed files, which a CSV's name may hide: read, they made an ``ok``
#: record of a header of binary junk and no rows.
_COMPRESSED = {
    b"\x1f\x8b": "gzip",
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"(\xb5/\xfd": "zstd",
    b"PK\x03\x04": "zip",
}


def _check_text(sample: bytes, where: str) -> None:
    """A DataError for a file named CSV that is no text: compressed, or holding NUL bytes
    (binary, or UTF-16, which the reader does not take)."""
    for magic, kind in _COMPRESSED.items():
        if sample.startswith(magic):
            raise DataError(f"{where}: {kind}-compressed data, not a text CSV: unpack it first")
    if b"\x00" in sample:
        raise DataError(
            f"{where}: NUL bytes in the first {len(sample):,} bytes: binary data or UTF-16, not "
            "a text CSV (UTF-8, or a one-byte encoding)"
        )


def _sniff(header: str) -> str:
    counts = {d: header.count(d) for d in (",", "\t", ";", "|")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def _unique(names: Sequence[str]) -> tuple[str, ...]:
    """Header names made unique and non-empty (``a, a, '' -> a, a.1, column_3``)."""
    out: list[str] = []
    for i, raw in enumerate(names):
        name = raw.strip() or f"column_{i + 1}"
        base, n = name, 1
        while name in out:
            name, n = f"{base}.{n}", n + 1
        out.append(name)
    return tuple(out)


def _classify(
    body: bytes, names: tuple[str, ...], delimiter: str
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Numeric columns: pyarrow infers a number type, or at least half of the first 1,000
    non-missing cells of the sample parse as numbers (a column with a few bad cells)."""
    import pyarrow as pa

    if not body.strip():
        return names, ()
    table = _read_clean(body, names, None, (), delimiter).read.table
    numeric: list[str] = []
    other: list[str] = []
    for name in names:
        col = table.column(name)
        t = col.type
        if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_null(t):
            numeric.append(name)
            continue
        if not (pa.types.is_string(t) or pa.types.is_binary(t)):
            other.append(name)  # dates, times, timestamps, true/false: not numbers
            continue
        values = [v for v in col.slice(0, 4000).to_pylist() if v is not None][:1000]
        good = sum(1 for v in values if _is_number(v))
        (numeric if not values or 2 * good >= len(values) else other).append(name)
    return tuple(numeric), tuple(other)


def _is_number(v: bytes | str) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return True


# ------------------------------------------------------------------------------------ crunching
def crunch_part(part: ArrayPart | ZipMemberPart | CsvPart) -> ArrayStats | CsvPartResult:
    """Statistics of one part (runs in a process worker)."""
    if isinstance(part, ArrayPart):
        return _crunch_array(part)
    if isinstance(part, ZipMemberPart):
        return _crunch_zip_member(part)
    return _crunch_csv(part)


def _crunch_array(part: ArrayPart) -> ArrayStats:
    dtype = np.dtype(part.dtype)
    n = part.stop - part.start
    floor = exp_floor_of(dtype)
    if n == 0:
        return array_stats(np.empty(0, dtype), max_bins=part.bins, exp_floor=floor)
    mm = np.memmap(
        part.path, dtype=dtype, mode="r", offset=part.offset + part.start * dtype.itemsize, shape=n
    )
    try:
        return array_stats(mm, max_bins=part.bins, exp_floor=floor)
    finally:
        del mm  # unmapped now: a worker holds one part's pages at a time


def _crunch_zip_member(part: ZipMemberPart) -> ArrayStats:
    with zipfile.ZipFile(part.path) as zf, zf.open(part.member) as f:
        where = f"{part.path}:{part.member}"
        info = zf.getinfo(part.member)
        h = _npy_header(f, 0, info.file_size, where)  # type: ignore[arg-type]
        floor = exp_floor_of(h.dtype)
        left = math.prod(h.shape)
        stats: list[ArrayStats] = []
        while left:
            take = min(left, BLOCK)
            raw = f.read(take * h.dtype.itemsize)
            if len(raw) != take * h.dtype.itemsize:
                raise DataError(f"{where}: truncated member data")
            stats.append(
                array_stats(np.frombuffer(raw, h.dtype), max_bins=part.bins, exp_floor=floor)
            )
            left -= take
    return merge_all(stats) if stats else array_stats(np.empty(0, h.dtype), max_bins=part.bins)


def _lines(path: str, start: int, stop: int, data_start: int) -> bytes:
    """The bytes of the lines whose first byte lies in ``[start, stop)``."""
    with open(path, "rb") as f:
        begin = start
        if start > data_start:
            f.seek(start - 1)
            if f.read(1) != b"\n":  # start is inside a line: it belongs to the part before
                begin = _next_line(f, start)
        if begin >= stop:
            return b""
        # a part ending inside a line finishes it: find where first, then one read (a `+=` of
        # the tail would copy the whole part once more)
        f.seek(stop - 1)
        end = stop if f.read(1) in (b"\n", b"") else _next_line(f, stop)
        f.seek(begin)
        return f.read(end - begin)


def _next_line(f: BinaryIO, pos: int) -> int:
    """Offset just after the first newline at or after ``pos`` (the file's end if none)."""
    f.seek(pos)
    while True:
        block = f.read(1 << 16)
        if not block:
            return f.tell()
        i = block.find(b"\n")
        if i >= 0:
            return pos + i + 1
        pos += len(block)


#: Lines of one part with a quote left open that are set aside before its rows are read again;
#: past that the file fails (each search goes on from the line after the last: 10,000 in a part
#: of 25 MB take about 2 s).
MAX_OPEN_QUOTES = 10_000


@dataclass(slots=True)
class _Read:
    """A part's rows as pyarrow read them (``table``); how many it set aside as bad, and the
    text of the first (``first``); the encoding the bytes were read in. (pyarrow's row numbers
    are not lines: they count otherwise after a quoted field; the text is found in the
    bytes.)"""

    table: Any
    encoding: str
    bad: int = 0
    first: str | None = None

    def find(self, data: bytes, text: str) -> int:
        """Where the line that is the row ``text`` starts in ``data`` (-1: not found): the
        first whole line equal to it (a short row is often a piece of an earlier line)."""
        want = text.encode(self.encoding, "surrogateescape").rstrip(b"\r\n")
        at = data.find(want)
        while at >= 0:
            end = at + len(want)
            if (at == 0 or data[at - 1] == 10) and data[end : end + 1] in (b"", b"\n", b"\r"):
                return at
            at = data.find(want, at + 1)
        return -1


def _read_table(
    data: bytes,
    names: tuple[str, ...],
    numeric: tuple[str, ...] | None,
    other: tuple[str, ...],
    delimiter: str,
    encoding: str | None = None,
) -> _Read:
    """pyarrow table of ``data``: ``numeric`` columns as float64, ``other`` ones as bytes (or
    every column with inferred types when ``numeric`` is None); rows with the wrong number of
    fields are skipped and counted. Bytes that are not UTF-8 are read as Latin-1 (a bad row's
    text is decoded for the handler: such bytes failed the whole file); ``encoding``: when
    known already (:func:`_encoding`)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    read = _Read(None, encoding or _encoding(data))

    def skip(row: Any) -> str:
        read.bad += 1
        if read.first is None:
            read.first = row.text
        return "skip"

    if numeric is None:
        types, include = {}, list(names)
    else:
        types = {n: pa.float64() for n in numeric} | {n: pa.binary() for n in other}
        include = [*numeric, *other]
    read.table = pacsv.read_csv(
        pa.BufferReader(data),
        read_options=pacsv.ReadOptions(
            column_names=list(names),
            use_threads=False,
            encoding=read.encoding,
        ),
        parse_options=pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=skip),
        convert_options=pacsv.ConvertOptions(
            column_types=types,
            include_columns=include,
            strings_can_be_null=True,
            quoted_strings_can_be_null=True,
        ),
    )
    return read


def _encoding(data: bytes) -> str:
    """How :func:`_read_table` reads ``data``: UTF-8, else Latin-1."""
    return "utf8" if _is_utf8(data) else "latin1"


def _line_count(data: bytes) -> int:
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


def _is_utf8(data: bytes) -> bool:
    if data.isascii():
        return True
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        for at in range(0, len(data), 1 << 20):  # a block at a time: no copy of the whole part
            decoder.decode(data[at : at + (1 << 20)])
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


@dataclass(slots=True)
class _Cleaned:
    """A part's bytes without the lines whose quote was left open (``dropped``: their
    0-based lines in the part, in order), and its rows as read."""

    data: bytes
    read: _Read
    dropped: list[int] = field(default_factory=list)

    def line(self, at: int) -> int:
        """The 0-based line in the part of line ``at`` of :attr:`data`."""
        for d in self.dropped:
            if d <= at:
                at += 1
        return at


def _read_clean(
    data: bytes,
    names: tuple[str, ...],
    numeric: tuple[str, ...] | None,
    other: tuple[str, ...],
    delimiter: str,
) -> _Cleaned:
    """:func:`_read_table`, but a line with a quote left open (a stray ``"`` opening a text
    field) does not take the lines after it. pyarrow reads on past the line's end, up to the
    next quote or the part's end, and makes all of it one bad row, or one good row: the rows
    lost, the figures changing with ``--chunk-size``. When the rows read and the lines do not
    add up, such lines are found (:func:`_open_quote_lines`), set aside as bad rows, and the
    rest read again."""
    import pyarrow as pa

    encoding = _encoding(data)
    try:
        out = _Cleaned(data, _read_table(data, names, numeric, other, delimiter, encoding))
    except pa.ArrowInvalid as exc:  # a quote left open past one of the reader's 1 MiB blocks
        if "out of sync" not in str(exc):
            raise
        out = _Cleaned(data, _Read(None, encoding))
    lines = _line_count(data)
    # a quote left open on the last line ends with the data: a row that adds up
    last = data[data.rstrip(b"\r\n").rfind(b"\n") + 1 :]
    if out.read.table is not None and b'"' not in last:
        if out.read.table.num_rows + out.read.bad >= lines:
            return out  # every line a row (the usual case: a count of the bytes)
        if out.read.table.num_rows + out.read.bad >= len(_non_empty_lines(data)):
            return out  # blank lines (the reader skips them)
    dropped = _open_quote_lines(data, delimiter, encoding)
    if not dropped:
        if out.read.table is None:  # (the reader found what the csv module does not)
            raise DataError("a quoted value runs past the reader's block: cannot read it")
        return out
    kept = np.ones(lines, dtype=bool)
    kept[dropped] = False
    starts, ends = _line_spans(data)
    out.data = b"".join(data[s:e] for s, e in zip(starts[kept], ends[kept], strict=True))
    out.dropped = dropped
    if out.data.strip():
        out.read = _read_table(out.data, names, numeric, other, delimiter, encoding)
    else:  # every line set aside (pyarrow says "Empty CSV file")
        out.read = _Read(_empty_table(names, numeric, other), encoding)
    return out


def _empty_table(
    names: tuple[str, ...], numeric: tuple[str, ...] | None, other: tuple[str, ...]
) -> Any:
    """A table of no rows with the columns :func:`_read_table` would give."""
    import pyarrow as pa

    if numeric is None:
        return pa.table({n: pa.array([], pa.null()) for n in names})
    return pa.table(
        {n: pa.array([], pa.float64()) for n in numeric}
        | {n: pa.array([], pa.binary()) for n in other}
    )


def _line_spans(data: bytes) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Where each line of ``data`` starts and ends (its newline included)."""
    if not data:
        return np.empty(0, np.intp), np.empty(0, np.intp)
    ends = np.flatnonzero(np.frombuffer(data, np.uint8) == 10) + 1
    if len(data) and data[-1:] != b"\n":
        ends = np.append(ends, len(data))
    return np.concatenate(([0], ends[:-1])).astype(np.intp), ends


def _open_quote_lines(data: bytes, delimiter: str, encoding: str) -> list[int]:
    """The 0-based lines of ``data`` where a quoted field opens and is not closed on the line
    (read with the csv module, a line at a time, from the line after each one found)."""
    starts, ends = _line_spans(data)
    found: list[int] = []
    at = 0
    while at < len(starts) and len(found) <= MAX_OPEN_QUOTES:
        texts = (
            data[s:e].decode(encoding, "surrogateescape")
            for s, e in zip(starts[at:], ends[at:], strict=True)
        )
        reader = csv.reader(texts, delimiter=delimiter, strict=True)
        row_start, next_at = at, None
        try:
            for _row in reader:
                if reader.line_num > row_start - at + 1:  # this row took more than its line
                    next_at = row_start + 1
                    break
                row_start = at + reader.line_num
        except csv.Error:  # the data ended inside a quoted field
            next_at = row_start + 1
        if next_at is None:
            break
        found.append(row_start)
        at = next_at
    if len(found) > MAX_OPEN_QUOTES:
        raise DataError(
            f"more than {MAX_OPEN_QUOTES} lines with a quote not closed on the line (quoted "
            "values may not contain line breaks)"
        )
    return found


def _non_empty_lines(data: bytes) -> np.ndarray[Any, np.dtype[np.intp]]:
    """The 0-based numbers of the lines of ``data`` that pyarrow reads as rows (not empty, not
    a bare ``\\r``), quotes aside."""
    starts, ends = _line_spans(data)
    buf = np.frombuffer(data, np.uint8)
    length = ends - starts - (buf[ends - 1] == 10).astype(np.intp)  # without its newline
    bare_cr = (length == 1) & (buf[starts] == 13)
    return np.flatnonzero((length > 0) & ~bare_cr)


def _crunch_csv(part: CsvPart) -> CsvPartResult:
    import pyarrow as pa

    data = _lines(part.path, part.start, part.stop, part.data_start)
    res = CsvPartResult(lines=_line_count(data), rows=0, columns={}, non_numeric={})
    if not data or data.isspace():  # data.strip() would copy the whole part
        res.columns = {n: array_stats(np.empty(0), max_bins=part.bins) for n in part.numeric}
        res.non_numeric = dict.fromkeys(part.other, 0)
        return res
    cells: list[tuple[int, str, str]] = []  # the first bad cell of each column: row, name, text
    try:
        clean = _read_clean(data, part.names, part.numeric, part.other, part.delimiter)
        columns = {n: _floats(clean.read.table.column(n)) for n in part.numeric}
    except pa.ArrowInvalid as exc:
        if "conversion error" not in str(exc):
            raise DataError(
                f"{part.path}: cannot parse bytes {part.start:,}-{part.stop:,}: {exc}"
            ) from exc
        # a cell that is not a number: read the numeric columns as bytes, convert one by one
        clean = _read_clean(data, part.names, (), (*part.numeric, *part.other), part.delimiter)
        table = clean.read.table
        columns = {n: _to_floats(n, table.column(n), res, cells) for n in part.numeric}
    except DataError as exc:
        raise DataError(f"{part.path}: bytes {part.start:,}-{part.stop:,}: {exc}") from exc
    table = clean.read.table
    res.bad_rows = clean.read.bad + len(clean.dropped)
    res.first_bad = _first_bad(clean, cells)
    res.rows = table.num_rows
    res.columns = {
        n: array_stats(v, max_bins=part.bins, exp_floor=FLOAT_EXP_FLOOR) for n, v in columns.items()
    }
    res.non_numeric = {n: len(table.column(n)) - table.column(n).null_count for n in part.other}
    return res


def _first_bad(clean: _Cleaned, cells: list[tuple[int, str, str]]) -> dict[str, Any] | None:
    """The first bad line of a part, whatever it is (``line``: 1-based in the part), or None:
    a line set aside for its open quote, a row with the wrong number of fields, a bad cell."""
    found: list[tuple[int, dict[str, Any]]] = [
        (d, {"what": "a quote not closed on its line"}) for d in clean.dropped
    ]
    row_line = None  # the first bad row's line in clean.data
    if clean.read.first is not None and (at := clean.read.find(clean.data, clean.read.first)) >= 0:
        row_line = clean.data.count(b"\n", 0, at)
        found.append((clean.line(row_line), {"what": "wrong number of fields"}))
    if cells:
        row, column, text = min(cells)
        rows = _non_empty_lines(clean.data)  # the rows' lines while no bad row came before
        if row < len(rows) and (row_line is None or rows[row] < row_line):
            found.append((clean.line(int(rows[row])), {"column": column, "value": text}))
    if not found:
        return None
    line, what = min(found, key=lambda f: f[0])
    return {**what, "line": line + 1}


def _floats(col: Any) -> np.ndarray[Any, np.dtype[np.float64]]:
    """A float64 pyarrow column as numpy, nulls as NaN, read from its buffers.

    (``to_numpy()`` would import pandas when it is installed: half a second per worker.)
    """
    out = np.empty(len(col), dtype=np.float64)
    pos = 0
    for chunk in col.chunks:
        n = len(chunk)
        if n == 0:
            continue
        validity, data = chunk.buffers()[:2]
        out[pos : pos + n] = np.frombuffer(data, np.float64, count=n, offset=chunk.offset * 8)
        if chunk.null_count:
            bits = np.unpackbits(np.frombuffer(validity, np.uint8), bitorder="little")
            out[pos : pos + n][bits[chunk.offset : chunk.offset + n] == 0] = np.nan
        pos += n
    return out


def _to_floats(
    name: str, col: Any, res: CsvPartResult, cells: list[tuple[int, str, str]]
) -> np.ndarray[Any, np.dtype[np.float64]]:
    """Cells of one column as floats; missing ones NaN; bad ones counted and left out (the
    first one's row, column and text added to ``cells``)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        return _floats(pc.cast(pc.cast(col, pa.string()), pa.float64()))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    out = np.empty(len(col), dtype=np.float64)
    keep = np.ones(len(col), dtype=bool)
    bad = 0
    for i, v in enumerate(col.to_pylist()):
        if v is None:
            out[i] = math.nan
            continue
        try:
            out[i] = float(v)
        except ValueError:
            keep[i] = False
            bad += 1
            if bad == 1:
                cells.append((i, name, v.decode("utf-8", "replace")[:40]))
    res.bad_cells[name] = bad
    return out[keep] if bad else out


# ------------------------------------------------------------------------------------ merging
def merge_array(info: dict[str, Any], exp_floor: int, parts: list[ArrayStats]) -> dict[str, Any]:
    """One array's record value from its parts' statistics."""
    stats = merge_all(parts) if parts else array_stats(np.empty(0), exp_floor=exp_floor)
    return {**info, "chunks": len(parts), "stats": stats.to_dict()}


def merge_csv(
    info: dict[str, Any],
    numeric: tuple[str, ...],
    other: tuple[str, ...],
    parts: list[CsvPartResult],
) -> dict[str, Any]:
    """One CSV file's record value: per-column statistics merged over its parts, in order."""
    columns = {n: merge_all([p.columns[n] for p in parts]).to_dict() for n in numeric}
    bad_cells = {n: sum(p.bad_cells.get(n, 0) for p in parts) for n in numeric}
    first_bad = None
    line = 1  # the header
    for p in parts:
        if p.first_bad is not None and first_bad is None:
            first_bad = {**p.first_bad, "line": p.first_bad["line"] + line}
        line += p.lines
    return {
        **info,
        "chunks": len(parts),
        "rows": sum(p.rows for p in parts),
        "columns": columns,
        "non_numeric": {n: sum(p.non_numeric.get(n, 0) for p in parts) for n in other},
        "bad_cells": {n: c for n, c in bad_cells.items() if c},
        "bad_rows": sum(p.bad_rows for p in parts),
        "first_bad": first_bad,
    }
