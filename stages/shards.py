"""Training-set outputs: WebDataset tar shards, each with a metadata table and a stats file.

Data flow (``process --output-format webdataset``)::

    sample_inputs (table rows, lazily) ─▶ download_sample (async) ─▶ render_sample (process)
        ─▶ pack (async, one worker: owns the open shard) ─▶ commit (async, waits for the shard)

* Every input that reaches ``pack`` is one row of its shard's metadata table: a sample
  (``Rendered``) or a :class:`Rejected` input (a download error, an image that does not decode,
  a filter's skip). ``download_sample`` and ``render_sample`` return a :class:`Rejected` value
  for those instead of raising, so that the shard sees them; ``commit`` raises them again, so
  the manifest still says ``failed`` / ``skipped`` with the original error type.
* A shard holds ``samples_per_shard`` inputs (failed ones included, as img2dataset's
  ``number_sample_per_shard``). It is written under a temporary name beside its final one
  (:class:`pipeline.AtomicFile`) and renamed when full, or when the stream ends (the ``pack``
  stage's context closes the last one). Its metadata table and stats file are put in place
  first, the tar last: the tar's name is the commit.
* ``commit`` returns an input's record value only once its shard is renamed: a record says
  ``ok`` only for a sample that sits in a complete shard. After Ctrl-C (or a crash) the inputs
  of the open shard are ``cancelled`` (its temporary file is removed) and the next run redoes
  them. Resume trusts an ``ok`` record only while its shard exists (:func:`shard_done`).
* Shard numbers go on after the highest shard in the folder, so a resumed run never writes
  over a shard and no input is in two shards.

Names in the output folder, ``--output-format webdataset``: ``00000.tar`` (samples
``KEY.jpg``/``.png``/``.webp``, ``KEY.json``, ``KEY.txt`` when there is a caption; keys are
digits only: the WebDataset ``__key__``), ``00000.parquet`` (the metadata table: one row per
input of the shard, failed ones with their status, error type and reason) and
``00000_stats.json`` (counts by status and by error class, bytes, time), as img2dataset names
them. ``--output-format parquet``: ``00000.parquet`` (one row per sample: key, image bytes,
width, height, format, caption, url, sha256, original size, HTTP status, the kept columns,
statistics as JSON text), and beside it ``00000_meta.parquet`` (the metadata table; a distinct
name, since the data shard takes the plain one) and ``00000_stats.json``. Kept columns take the
names they have in the table; a kept column named like one of the fields above is overwritten by
that field.

With ``--backend dask`` every task runs the stages on its worker, so each task's ``write``
stage writes its own shards, named ``<token>-00000.tar`` (a random token per task: tasks run at
once and never pick one name); the driver receives records only, never image bytes. A worker
that dies after renaming a shard leaves that shard behind when Dask retries its task: the
retry writes those samples again, and the manifest names the shard that counts.

Inputs that fail in the engine itself (a worker crash, a per-item timeout) never reach the
shard: they are in the manifest only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import re
import tarfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from pipeline import AtomicFile, Item, Record, RemoteError, Skip, Status, atomic_write_bytes

from .download import DownloadConfig, DownloadError, fetch, noai
from .files import Loaded
from .options import ImageError, ResizeOptions
from .tables_in import iter_table
from .thumbs import Rendered, render

__all__ = [
    "Packed",
    "Rejected",
    "SampleFilters",
    "SampleSource",
    "ShardWriter",
    "commit",
    "download_sample",
    "pack",
    "render_sample",
    "sample_inputs",
    "shard_done",
]

_SHARD_NAME = re.compile(r"^(\d{5,})\.(tar|parquet)$")
_DATA_NAME = re.compile(r"^[0-9a-f]*-?\d{5,}\.(tar|parquet)$")  # what a record may name
_EXTENSION = {"webdataset": "tar", "parquet": "parquet"}
_ROW_DIGITS = 9  # keys as img2dataset's: 9 digits (its shard id + index in shard)


@dataclass(frozen=True, slots=True)
class SampleSource:
    """A table row on its way to the download stage."""

    url: str
    key: str
    caption: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"key": self.key, "url": self.url, "caption": self.caption, "extra": self.extra}


@dataclass(frozen=True, slots=True)
class Rejected:
    """An input that will be no sample: its status (failed or skipped), where and why."""

    sample: dict[str, Any]
    status: str
    stage: str
    error_type: str
    message: str
    http_status: int | None = None

    def error(self) -> BaseException:
        """What ``commit`` raises, so that the record reads as if the stage had raised it."""
        if self.status == "skipped":
            return Skip(self.message)
        return RemoteError(self.error_type, self.message)


def sample_inputs(
    tables: Sequence[str],
    *,
    url_col: str = "url",
    caption_col: str | None = None,
    keep: Sequence[str] = (),
) -> Iterator[Item | Record]:
    """One item per table row, keyed by its row number (``000000042``; with several tables
    ``1_000000042`` for the second): stable from one run to the next. A row without a URL is a
    ``failed`` record."""
    for t, path in enumerate(tables):
        prefix = f"{t}_" if t else ""
        for row in iter_table(path, url_col=url_col, caption_col=caption_col, keep=keep):
            key = f"{prefix}{row.row:0{_ROW_DIGITS}d}"
            where = f"{path}:{row.row}"
            if row.error is not None:
                yield Record(
                    key=key,
                    status=Status.FAILED,
                    source=where,
                    stage="sources",
                    error_type="BadTableRow",
                    error=f"{row.error}: {row.url!r}"[:2048],
                    attempts=1,
                    meta={"url": row.url},
                )
                continue
            value = SampleSource(row.url, key, row.caption, row.extra)
            yield Item(key=key, value=value, source=where, meta={"url": row.url})


async def download_sample(
    value: SampleSource, config: DownloadConfig, *, session: aiohttp.ClientSession
) -> Loaded | Rejected:
    """A row's image bytes, with the row and the download in ``origin``; a download error is a
    :class:`Rejected` value (it goes into the shard's metadata)."""
    try:
        got = await fetch(session, value.url, config)
    except DownloadError as exc:
        return Rejected(
            value.describe(), "failed", "download", type(exc).__name__, str(exc), exc.status
        )
    directive = noai(got.robots) if config.respect_noai else None
    if directive is not None:
        why = f"X-Robots-Tag: {directive} (the site opts out of AI use; --ignore-noai)"
        return Rejected(value.describe(), "skipped", "download", "Skip", why, got.status)
    data = bytes(got.data)
    origin = {
        "sample": value.describe(),
        "download": {
            "final_url": got.final_url,
            "http_status": got.status,
            "content_type": got.content_type,
            "attempts": got.attempts,
            "bytes": len(data),
        },
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    return Loaded(value.key, data, origin)


@dataclass(frozen=True, slots=True)
class SampleFilters:
    """Images left out of a training set (skipped with the reason): a smaller side below
    ``min_side`` pixels, a longer side over ``max_ratio`` times the shorter (None: any)."""

    min_side: int = 0
    max_ratio: float | None = None

    def why_not(self, width: int, height: int) -> str | None:
        short, long = min(width, height), max(width, height)
        if short < self.min_side:
            return f"image {width}x{height} is smaller than --min-image-size {self.min_side}"
        if self.max_ratio is not None and long > self.max_ratio * max(short, 1):
            ratio = long / max(short, 1)
            return f"image {width}x{height}: aspect ratio {ratio:.2f} over {self.max_ratio:g}"
        return None


def render_sample(
    value: Loaded, options: ResizeOptions, filters: SampleFilters | None = None
) -> Rendered | Rejected:
    """Decode and resize (a process worker); an image error, or an image the filters leave out
    (checked on the header's size, before decoding), is a :class:`Rejected` value."""
    origin = value.origin or {}
    status = origin.get("download", {}).get("http_status")
    if filters is not None and (filters.min_side or filters.max_ratio is not None):
        why = filters.why_not(*_header_size(bytes(value.data)))
        if why is not None:
            return Rejected(origin.get("sample", {}), "skipped", "resize", "Skip", why, status)
    try:
        return render(value, options)
    except ImageError as exc:
        return Rejected(
            origin.get("sample", {}), "failed", "resize", type(exc).__name__, str(exc), status
        )


def _header_size(data: bytes) -> tuple[int, int]:
    """The size an image's header declares (huge for what is not an image: the decode says why)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except (UnidentifiedImageError, OSError, ValueError):
        return (10**9, 10**9)  # not for the filters to judge: the decode fails it


@dataclass(slots=True)
class Packed:
    """An input written into the open shard: its record value, and the shard's commit."""

    record: dict[str, Any]
    committed: asyncio.Future[None] = field(repr=False)
    rejected: Rejected | None = None


class _Shard:
    """One open shard: the data file being written and the metadata rows of its inputs.

    ``webdataset``: a tar of the samples' files; ``parquet``: a Parquet file of one row per
    sample, written a row group (:data:`ROW_GROUP`) at a time."""

    def __init__(self, folder: Path, name: str, fmt: str) -> None:
        self.name = name
        self.fmt = fmt
        self.folder = folder
        self.data_name = f"{self.name}.tar" if fmt == "webdataset" else f"{self.name}.parquet"
        self.file = AtomicFile(folder / self.data_name, fsync=False)
        self.tar: tarfile.TarFile | None = None
        self.table: _TableWriter | None = None
        if fmt == "webdataset":
            # closed by finish() or discard(), which own the shard for its lifetime
            self.tar = tarfile.open(fileobj=self.file.file, mode="w", format=tarfile.PAX_FORMAT)  # noqa: SIM115
        else:
            self.table = _TableWriter(self.file.file)
        self.rows: list[dict[str, Any]] = []
        self.bytes = 0
        self.started = time.time()
        self.committed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def add(self, key: str, sample: _Sample | None, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if sample is None:
            return
        if self.tar is not None:
            for ext, data in sample.files:
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(data), int(self.started), 0o644
                self.tar.addfile(info, io.BytesIO(data))
        elif self.table is not None:
            self.table.add(sample.row)
        self.bytes += len(sample.files[0][1])

    def finish(self) -> None:
        """Metadata table and stats in place, then the data file (the commit)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.tar is not None:
            self.tar.close()
        if self.table is not None:
            self.table.close()
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(self.rows), buf)
        meta = f"{self.name}.parquet" if self.fmt == "webdataset" else f"{self.name}_meta.parquet"
        atomic_write_bytes(self.folder / meta, buf.getvalue(), fsync=False)
        stats = _stats(self.rows, self.bytes, self.started)
        text = json.dumps({"shard": self.data_name, **stats}, indent=2)
        atomic_write_bytes(self.folder / f"{self.name}_stats.json", text.encode(), fsync=False)
        self.file.commit()

    def discard(self) -> None:
        with contextlib.suppress(Exception):  # the file goes whatever state its writer is in
            if self.tar is not None:
                self.tar.close()
            if self.table is not None:
                self.table.close()
        self.file.discard()


#: Samples per row group of a Parquet shard: 256 images of a few tens of KB, a few MB.
ROW_GROUP = 256


class _TableWriter:
    """A Parquet file written a row group at a time. Its schema is the first group's (a
    column that is all null there is text); a later group's column of another type is cast to
    it, or else written as text."""

    def __init__(self, sink: Any) -> None:
        self.sink = sink
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
        table = pa.Table.from_pylist(self.rows)
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


def _stats(rows: Sequence[dict[str, Any]], size: int, started: float) -> dict[str, Any]:
    ended = time.time()
    statuses = Counter(r["status"] for r in rows)
    errors = Counter(r["error_type"] for r in rows if r["error_type"])
    return {
        "count": len(rows),
        "successes": statuses.get("ok", 0),
        "failed": statuses.get("failed", 0),
        "skipped": statuses.get("skipped", 0),
        "status_dict": dict(statuses),
        "error_classes": dict(errors),
        "bytes": size,
        "start_time": started,
        "end_time": ended,
        "duration": round(ended - started, 3),
    }


class ShardWriter:
    """The open shard of a run (the ``pack`` stage's context): rolls every ``per_shard``
    inputs; on the stage's end commits the last one, on an error or Ctrl-C discards it."""

    def __init__(
        self, folder: str, per_shard: int, fmt: str = "webdataset", *, unique: bool = False
    ) -> None:
        self.folder = Path(folder)
        self.per_shard = per_shard
        self.fmt = fmt
        # several writers at once (one per Dask task): numbers from 0 after a token of this
        # writer's own, so that no two writers ever pick one name
        self.prefix = f"{uuid.uuid4().hex[:12]}-" if unique else ""
        self.next = 0 if unique else _next_number(self.folder, _EXTENSION[fmt])
        self.open: _Shard | None = None

    async def __aenter__(self) -> ShardWriter:
        self.folder.mkdir(parents=True, exist_ok=True)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        shard, self.open = self.open, None
        if shard is None:
            return
        if exc_type is None:
            await self._finish(shard)
        else:
            shard.discard()
            shard.committed.cancel()

    async def add(self, value: Rendered | Rejected) -> Packed:
        if self.open is None:
            self.open = _Shard(self.folder, f"{self.prefix}{self.next:05d}", self.fmt)
            self.next += 1
        shard = self.open
        key, sample, row, record = _sample(value, shard.data_name)
        await asyncio.to_thread(shard.add, key, sample, row)
        packed = Packed(record, shard.committed, value if isinstance(value, Rejected) else None)
        if len(shard.rows) >= self.per_shard:
            self.open = None
            await self._finish(shard)
        return packed

    async def _finish(self, shard: _Shard) -> None:
        try:
            await asyncio.to_thread(shard.finish)
        except BaseException as exc:
            shard.discard()
            if not shard.committed.done():
                shard.committed.set_exception(exc)
            raise
        shard.committed.set_result(None)


def _next_number(folder: Path, ext: str) -> int:
    """One more than the highest shard number in ``folder`` (0 in a new one)."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return 0
    matches = (_SHARD_NAME.match(n) for n in names)
    numbers = [int(m.group(1)) for m in matches if m and m.group(2) == ext]
    return max(numbers, default=-1) + 1


@dataclass(frozen=True, slots=True)
class _Sample:
    """A sample as a tar holds it (``files``: extension, bytes; the image first) and as a row of
    a Parquet shard."""

    files: list[tuple[str, bytes]]
    row: dict[str, Any]


def _sample(
    value: Rendered | Rejected, shard: str
) -> tuple[str, _Sample | None, dict[str, Any], dict[str, Any]]:
    """(key, the sample, its metadata row, its record value)."""
    if isinstance(value, Rejected):
        s = value.sample
        row = _row(s, value.status, value.error_type, value.message, value.http_status)
        return str(s.get("key")), None, row, {"shard": shard, "key": s.get("key")}
    origin = value.origin or {}
    s, download = origin.get("sample", {}), origin.get("download", {})
    res = value.result
    enc = res.outputs[0]
    width, height = res.original_size
    row = _row(s, "ok", None, None, download.get("http_status"))
    row.update(
        width=enc.width,
        height=enc.height,
        original_width=width,
        original_height=height,
        format=enc.format,
        sha256=origin.get("sha256"),
    )
    doc = {
        **{k: v for k, v in s.get("extra", {}).items()},
        "key": s["key"],
        "url": s["url"],
        "caption": s.get("caption"),
        "shard": shard,
        "status": "ok",
        "width": enc.width,
        "height": enc.height,
        "original_width": width,
        "original_height": height,
        "format": enc.format,
        "sha256": origin.get("sha256"),
        "http_status": download.get("http_status"),
        "stats": res.stats,
    }
    files = [(enc.ext.lstrip("."), enc.data), ("json", json.dumps(doc, default=str).encode())]
    if s.get("caption") is not None:
        files.append(("txt", str(s["caption"]).encode()))
    data_row = {**doc, "image": enc.data, "stats": json.dumps(res.stats, default=str)}
    for name in ("shard", "status"):
        data_row.pop(name)
    record = {
        "shard": shard,
        "key": s["key"],
        "original": {"width": width, "height": height, "format": res.original_format},
        "output": {"width": enc.width, "height": enc.height, "format": enc.format},
        "sha256": origin.get("sha256"),
        "download": download,
        "stats": res.stats,
    }
    return str(s["key"]), _Sample(files, data_row), row, record


def _row(
    s: dict[str, Any],
    status: str,
    error_type: str | None,
    message: str | None,
    http_status: int | None,
) -> dict[str, Any]:
    return {
        **s.get("extra", {}),
        "key": s.get("key"),
        "url": s.get("url"),
        "caption": s.get("caption"),
        "status": status,
        "error_type": error_type,
        "error_message": message,
        "http_status": http_status,
        "width": None,
        "height": None,
        "original_width": None,
        "original_height": None,
        "format": None,
        "sha256": None,
    }


async def pack(value: Rendered | Rejected, *, shards: ShardWriter) -> Packed:
    """Write an input into the open shard (a sample, or a metadata row for a rejected one)."""
    return await shards.add(value)


async def commit(value: Packed) -> dict[str, Any]:
    """Wait until the input's shard is renamed; its record value (or its error raised)."""
    await asyncio.shield(value.committed)
    rejected = value.rejected
    if rejected is not None:
        exc = rejected.error()
        # the engine adds an exception's ``details`` to the record's meta: where its row is
        status = {"http_status": rejected.http_status} if rejected.http_status else {}
        exc.details = {**value.record, "failed_in": rejected.stage, **status}  # type: ignore[attr-defined]
        raise exc
    return value.record


@contextlib.asynccontextmanager
async def open_shards(
    folder: str, per_shard: int, fmt: str, unique: bool = False
) -> AsyncIterator[ShardWriter]:
    """The ``pack`` stage's context (a factory for ``stage(..., context=...)``); ``unique``:
    shard names of this writer's own (see :class:`ShardWriter`)."""
    async with ShardWriter(folder, per_shard, fmt, unique=unique) as writer:
        yield writer


class ShardIndex:
    """Resume: whether the shard an ``ok`` record names is there (one ``stat`` per shard)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.seen: dict[str, bool] = {}

    def __call__(self, value: Any) -> bool:
        shard = value.get("shard") if isinstance(value, dict) else None
        if not isinstance(shard, str) or not _DATA_NAME.match(shard):
            return False
        if shard not in self.seen:
            self.seen[shard] = (self.folder / shard).is_file()
        return self.seen[shard]


def shard_done(folder: Path) -> ShardIndex:
    """The ``is_done`` test of a shard run's records (see :class:`ShardIndex`)."""
    return ShardIndex(folder)
