"""Training-set outputs: WebDataset tar shards, each with a metadata table and a stats file.

Data flow (``process --output-format webdataset``; the first three in :mod:`stages.samples`)::

    sample_inputs (rows, lazily) ─▶ download_sample (async) ─▶ render_sample (process)
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
  them. Resume trusts an ``ok`` record only while its shard is there as it was written: its
  size is in the record (``shard_bytes``); a shard of another size is set aside as
  ``NAME.damaged`` and its inputs are done again (:func:`shard_done`).
* Shard numbers go on after the highest shard in the folder, so a resumed run never writes
  over a shard and no input is in two shards.

Names in the output folder, ``--output-format webdataset``: ``00000.tar`` (samples
``KEY.jpg``/``.png``/``.webp``, ``KEY.json``, with ``--caption-col`` ``KEY.txt`` (empty for a
row without a caption); keys are digits only: the WebDataset ``__key__``), ``00000.parquet``
(the metadata table: one row per input of the shard, failed ones with their status, error type
and reason) and ``00000_stats.json`` (counts by status and by error class, bytes, time), as
img2dataset names them. ``--output-format parquet``: ``00000.parquet`` (one row per sample: key,
image bytes, width, height, format, caption, url, sha256, original size, HTTP status, the kept
columns, statistics as JSON text), and beside it ``00000_meta.parquet`` (the metadata table; a
distinct name, since the data shard takes the plain one) and ``00000_stats.json``. Kept columns
take the names they have in the table; a kept column named like one of the fields above is
overwritten by that field.

With ``--backend dask`` every task runs the stages on its worker, so each task's ``write``
stage writes its own shards, named ``<token>-00000.tar`` (a random token per task: tasks run at
once and never pick one name); the driver receives records only, never image bytes. A worker
that dies after renaming a shard leaves that shard behind when Dask retries its task: the
retry writes those samples again, and the manifest names the shard that counts. Such a shard,
and one a killed run renamed into place before it recorded its inputs, is named by no record:
it is set aside at the end of the next run (:func:`set_aside_unrecorded`).

Inputs that fail in the engine itself (a worker crash, a per-item timeout) never reach the
shard: they are in the manifest only.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import re
import tarfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import AtomicFile, atomic_write_bytes

from .parquet_rows import RowGroupWriter, plain_type, schema_table
from .samples import Rejected
from .storage import is_url, open_input
from .tables_in import table_format
from .thumbs import Rendered

log = logging.getLogger(__name__)

__all__ = [
    "COMMIT_WORKERS",
    "Packed",
    "ShardIndex",
    "ShardWriter",
    "commit",
    "kept_types",
    "open_shards",
    "pack",
    "set_aside_unrecorded",
    "shard_done",
    "table_schema",
]

#: a shard's own name, or one set aside (counted too: a number is never taken again)
_SHARD_NAME = re.compile(r"^(\d{5,})\.(tar|parquet)(?:\.damaged|\.unrecorded)?$")
_DATA_NAME = re.compile(r"^[0-9a-f]*-?\d{5,}\.(tar|parquet)$")  # what a record may name
_EXTENSION = {"webdataset": "tar", "parquet": "parquet"}

#: The types of the metadata table's own columns, whatever a shard's rows hold (a shard whose
#: inputs all succeeded has no error: its error columns are typed all the same), so that every
#: shard's table has one schema and the folder reads as one dataset.
META_TYPES = {
    "key": "string",
    "url": "string",
    "caption": "string",
    "status": "string",
    "error_type": "string",
    "error_message": "string",
    "http_status": "int64",
    "width": "int64",
    "height": "int64",
    "original_width": "int64",
    "original_height": "int64",
    "format": "string",
    "sha256": "string",
}

#: The same for a Parquet shard's own columns, in the order of its rows.
DATA_TYPES = {
    "key": "string",
    "url": "string",
    "caption": "string",
    "width": "int64",
    "height": "int64",
    "original_width": "int64",
    "original_height": "int64",
    "format": "string",
    "sha256": "string",
    "http_status": "int64",
    "stats": "string",
    "image": "binary",
}

#: Commit workers at most (``--samples-per-shard`` + 1 below it): the inputs of the open shard
#: that find none wait in the stage's inbox, which holds a shard (see ``app.process``).
COMMIT_WORKERS = 256


def table_schema(own: dict[str, str], kept: Mapping[str, Any] | None = None) -> Any:
    """The schema of every shard's table of a run: the kept columns first (``kept``: their
    types, see :func:`kept_types`), then the table's ``own`` columns (which a kept column
    named like one of them does not take: the field overwrites it)."""
    import pyarrow as pa

    fields = [pa.field(n, t) for n, t in (kept or {}).items() if n not in own]
    return pa.schema([*fields, *(pa.field(n, pa.type_for_alias(t)) for n, t in own.items())])


def kept_types(tables: Sequence[str], keep: Sequence[str]) -> dict[str, Any]:
    """The type of each kept column in the shards, known before any row is read: a Parquet
    table's own (as its values are given: :func:`~stages.parquet_rows.plain_type`), text for
    a CSV/TSV or JSON lines table's (as :mod:`stages.tables_in` reads them); for a column whose
    tables differ, a type that holds them all (:func:`_common_type`), else text; text too when
    a Parquet schema cannot be read here (the run says why when it reads the table)."""
    import pyarrow as pa

    found: dict[str, set[Any]] = {c: set() for c in keep}
    for path in tables:
        schema = _parquet_schema(path) if table_format(path) == "parquet" else pa.schema([])
        for c in keep:
            index = schema.get_field_index(c)
            found[c].add(plain_type(schema.field(index).type) if index >= 0 else pa.string())
    return {c: _common_type(types) for c, types in found.items()}


def _common_type(types: set[Any]) -> Any:
    """One type for a kept column that its tables give as ``types``: theirs when they agree;
    int64 for integers of several widths, float64 for floats (and integers); else text."""
    import pyarrow as pa

    if len(types) == 1:
        return next(iter(types))
    if all(pa.types.is_integer(t) and t != pa.uint64() for t in types):
        return pa.int64()
    if all(pa.types.is_floating(t) or pa.types.is_integer(t) for t in types):
        return pa.float64()
    return pa.string()


def _parquet_schema(path: str) -> Any:
    """The Arrow schema of a Parquet table (a path or a storage URL); empty if unreadable."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if not is_url(path):
            return pq.ParquetFile(path).schema_arrow
        with open_input(path) as fh:
            return pq.ParquetFile(fh).schema_arrow
    except Exception:  # any reader error: the table's own reading reports it
        log.debug("cannot read the schema of %s", path, exc_info=True)
        return pa.schema([])


@dataclass(slots=True)
class Packed:
    """An input written into the open shard: its record value, and the shard's commit."""

    record: dict[str, Any]
    committed: asyncio.Future[None] = field(repr=False)
    rejected: Rejected | None = None


class _Shard:
    """One open shard: the data file being written and the metadata rows of its inputs.

    ``webdataset``: a tar of the samples' files; ``parquet``: a Parquet file of one row per
    sample, written a row group (:data:`ROW_GROUP`) at a time. ``schemas``: those of the
    metadata table and of a Parquet shard (:func:`table_schema`)."""

    def __init__(self, folder: Path, name: str, fmt: str, schemas: tuple[Any, Any]) -> None:
        self.name = name
        self.fmt = fmt
        self.folder = folder
        self.data_name = f"{self.name}.tar" if fmt == "webdataset" else f"{self.name}.parquet"
        self.file = AtomicFile(folder / self.data_name, fsync=False)
        self.tar: tarfile.TarFile | None = None
        self.table: RowGroupWriter | None = None
        if fmt == "webdataset":
            # closed by finish() or discard(), which own the shard for its lifetime
            self.tar = tarfile.open(fileobj=self.file.file, mode="w", format=tarfile.PAX_FORMAT)  # noqa: SIM115
        else:
            self.table = RowGroupWriter(self.file.file, schema=schemas[1])
        self.meta_schema = schemas[0]
        self.rows: list[dict[str, Any]] = []
        self.records: list[dict[str, Any]] = []  # the record values of its samples
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
        import pyarrow.parquet as pq

        if self.tar is not None:
            self.tar.close()
        if self.table is not None:
            self.table.close()
        self.file.file.flush()
        size = os.fstat(self.file.file.fileno()).st_size
        for record in self.records:  # what resume checks the shard against (ShardIndex)
            record["shard_bytes"] = size
        buf = io.BytesIO()
        pq.write_table(schema_table(self.rows, self.meta_schema), buf)
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
    inputs; on the stage's end commits the last one, on an error or Ctrl-C discards it.

    ``kept``: the kept columns' types (:func:`kept_types`), which every shard's tables have
    whatever its rows hold. ``captions``: the table has a caption column (``--caption-col``):
    every sample of a tar then has its ``KEY.txt``, empty for a row without a caption, as
    img2dataset writes it, so that a loader asking each sample for its ``txt`` finds it."""

    def __init__(
        self,
        folder: str,
        per_shard: int,
        fmt: str = "webdataset",
        *,
        unique: bool = False,
        kept: Mapping[str, Any] | None = None,
        captions: bool = False,
    ) -> None:
        self.folder = Path(folder)
        self.per_shard = per_shard
        self.fmt = fmt
        self.captions = captions
        # a kept column named like the record's own shard and status is not in a Parquet
        # shard's rows (see _sample)
        data_kept = {k: t for k, t in (kept or {}).items() if k not in ("shard", "status")}
        self.schemas = (table_schema(META_TYPES, kept), table_schema(DATA_TYPES, data_kept))
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
            name = f"{self.prefix}{self.next:05d}"
            self.open = _Shard(self.folder, name, self.fmt, self.schemas)
            self.next += 1
        shard = self.open
        key, sample, row, record = _sample(value, shard.data_name, self.captions)
        await asyncio.to_thread(shard.add, key, sample, row)
        if sample is not None:
            shard.records.append(record)
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
    value: Rendered | Rejected, shard: str, captions: bool = False
) -> tuple[str, _Sample | None, dict[str, Any], dict[str, Any]]:
    """(key, the sample, its metadata row, its record value); ``captions``: a ``txt`` file
    for every sample (see :class:`ShardWriter`)."""
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
        **s.get("extra", {}),
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
    if captions or s.get("caption") is not None:
        files.append(("txt", str(s.get("caption") or "").encode()))
    data_row = {**doc, "image": enc.data, "stats": json.dumps(res.stats, default=str)}
    for name in ("shard", "status"):
        data_row.pop(name)
    record = _record(value, shard)
    return str(s["key"]), _Sample(files, data_row), row, record


def _record(value: Rendered, shard: str) -> dict[str, Any]:
    """The record value of a sample: where it is, and what it is (as a files record)."""
    origin = value.origin or {}
    res, enc = value.result, value.result.outputs[0]
    width, height = res.original_size
    return {
        "shard": shard,
        "key": origin.get("sample", {}).get("key"),
        "original": {
            "width": width,
            "height": height,
            "mode": res.original_mode,
            "format": res.original_format,
        },
        # as a files record lists them, without a path (the sample is in the shard)
        "outputs": [
            {
                "size": enc.label,
                "width": enc.width,
                "height": enc.height,
                "format": enc.format,
                "bytes": len(enc.data),
            }
        ],
        "sha256": origin.get("sha256"),
        "download": origin.get("download", {}),
        "stats": res.stats,
    }


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
        # the record's stage is the one the input failed in, not this one (pipeline.Recorder)
        exc.failed_in = rejected.stage  # type: ignore[attr-defined]
        raise exc
    return value.record


@contextlib.asynccontextmanager
async def open_shards(
    folder: str,
    per_shard: int,
    fmt: str,
    unique: bool = False,
    kept: Mapping[str, Any] | None = None,
    captions: bool = False,
) -> AsyncIterator[ShardWriter]:
    """The ``pack`` stage's context (a factory for ``stage(..., context=...)``); ``unique``:
    shard names of this writer's own; ``kept``, ``captions``: see :class:`ShardWriter`."""
    writer = ShardWriter(folder, per_shard, fmt, unique=unique, kept=kept, captions=captions)
    async with writer:
        yield writer


class ShardIndex:
    """Resume: whether the shard an ``ok`` record names is there as it was written (one
    ``stat`` per shard). Its size must be the ``shard_bytes`` its records say (records written
    before they said it: the shard's presence is enough).

    A shard that is there but not as written (a copy cut short, a disk that lost its last
    pages) is set aside at once, with its metadata table and stats file: each renamed
    ``NAME.damaged`` (a warning says so), so that no loader reads it and none of its inputs is
    in two shards; its inputs are done again, into new shards.

    The shards are those in the folder when the index is made, before the run writes any: a
    shard deleted by hand has its number taken again by the run (numbers go on after the highest
    left), and the new shard under that name is not the one the earlier records name."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.sizes = _shard_sizes(folder)  # by name; None once set aside

    def __call__(self, value: Any) -> bool:
        shard = value.get("shard") if isinstance(value, dict) else None
        if not isinstance(shard, str) or not _DATA_NAME.match(shard):
            return False
        size = self.sizes.get(shard)
        if size is None:
            return False
        written = value.get("shard_bytes")
        if isinstance(written, int) and written != size:
            self.sizes[shard] = None
            why = f"is not as it was written ({size:,} bytes where {written:,} were written)"
            _set_aside(self.folder, shard, ".damaged", why, "its inputs are done again")
            return False
        return True


def _shard_sizes(folder: Path) -> dict[str, int | None]:
    """The size of each shard (data file) in ``folder``, by name: one listing, a ``stat`` each."""
    sizes: dict[str, int | None] = {}
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if _DATA_NAME.match(entry.name):
                    with contextlib.suppress(OSError):  # gone since the listing
                        if entry.is_file():
                            sizes[entry.name] = entry.stat().st_size
    except (FileNotFoundError, NotADirectoryError):  # a new folder: no shard yet
        pass
    return sizes


def set_aside_unrecorded(folder: Path, fmt: str, named: set[str]) -> list[str]:
    """Set aside every data shard of ``folder`` (format ``fmt``) that no record names (not in
    ``named``): each renamed ``NAME.unrecorded``, with its metadata table and stats file, and
    a warning; their names. Call it once every record of the folder is known (the end of a
    run): such a shard was renamed into place by a run killed before it recorded its inputs
    (or by a Dask task that was retried), and those inputs are not done: a run redoes them into
    new shards, and a loader would read them twice. One that holds no sample (its stats say
    so) is removed instead, quietly: its rows were failures, redone since."""
    ext = _EXTENSION[fmt]
    gone = sorted(n for n in _shard_sizes(folder) if n.endswith(ext) and n not in named)
    aside = []
    for shard in gone:
        if _no_sample(folder, shard):  # rows of failures only, redone since: nothing to keep
            _remove_shard(folder, shard)
        else:
            _set_aside(folder, shard, ".unrecorded", _UNRECORDED, _NOT_DONE)
            aside.append(shard)
    return aside


def _no_sample(folder: Path, shard: str) -> bool:
    """Whether ``shard``'s stats file says it holds no sample (its rows all failed or were
    left out): each rerun of a set with failures wrote them into a new such shard, and the
    next set the one before aside, with a warning, for good."""
    try:
        stats = json.loads((folder / _files_of(shard)[2]).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(stats, dict) and stats.get("successes") == 0 and stats.get("shard") == shard


def _remove_shard(folder: Path, shard: str) -> None:
    for name in _files_of(shard):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(folder / name)
    log.info("shard %s held no sample and no record names it: removed", shard)


_UNRECORDED = (
    "is named by no record (its run was killed before recording its inputs, or they were all "
    "done again since)"
)
_NOT_DONE = "its inputs count as not done (a run given them writes them into new shards)"


def _files_of(shard: str) -> tuple[str, str, str]:
    """The files of the data shard ``shard``: itself, its metadata table, its stats file."""
    stem, ext = shard.rsplit(".", 1)
    meta = f"{stem}.parquet" if ext == "tar" else f"{stem}_meta.parquet"
    return shard, meta, f"{stem}_stats.json"


def _set_aside(folder: Path, shard: str, suffix: str, why: str, then: str) -> None:
    """Rename the data file ``shard`` of ``folder``, its metadata table and its stats file
    ``NAME<suffix>``, and say why and what ``then``."""
    for name in _files_of(shard):
        with contextlib.suppress(FileNotFoundError):
            os.replace(folder / name, folder / f"{name}{suffix}")
    log.warning("shard %s %s: set aside as %s%s; %s", shard, why, shard, suffix, then)


def shard_done(folder: Path) -> ShardIndex:
    """The ``is_done`` test of a shard run's records (see :class:`ShardIndex`)."""
    return ShardIndex(folder)
