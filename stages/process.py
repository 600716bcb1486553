"""The ``process`` command: folders in, thumbnails, statistics and a manifest out.

    sources (walk, lazy) -> [download (async)] -> read (thread)
        -> resize + crunch (process, fused: decode+resize+stats / data chunk statistics)
        -> write (thread) -> ledger

Numeric data files (``.npy``, ``.npz``, CSV/TSV) found among the inputs go through the same
stages (see :mod:`stages.steps`): the read stage splits each into chunks that the process
workers crunch in parallel, merged back into one record per array or file.

:class:`ProcessConfig` holds every option (from flags and/or a TOML file; flags win) and is
validated on creation; :func:`build_pipeline` turns it into a :class:`~pipeline.Pipeline`;
:func:`run_process` runs it with resume, the statistics table and near-duplicate groups, and
writes ``report.html`` (:mod:`stages.report`) at the end of every run.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import importlib
import io
import itertools
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import (
    ConfigError,
    Item,
    LedgerError,
    Pipeline,
    Record,
    RunResult,
    Status,
    atomic_write_bytes,
    hold_folder,
    read_manifest,
    stage,
)

from . import steps
from .aggregate import DataAggregate, DataTable
from .files import DEFAULT_MAX_FILE_BYTES
from .options import ResizeOptions, parse_size
from .parts import DEFAULT_CHUNK_BYTES, DataOptions, is_data_result
from .report import write_report
from .sources import DATA_EXTENSIONS, LEDGER_MARK, DataFile, walk_inputs
from .thumbs import outputs_exist

if TYPE_CHECKING:  # aiohttp is imported only when a run has URL lists (start-up time)
    from .download import DownloadConfig

log = logging.getLogger("stages")

__all__ = ["ProcessConfig", "build_pipeline", "parse_bytes", "run_process"]

STAGE_NAMES = ("download", "read", "resize", "crunch", "write")
_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
}


def parse_bytes(text: str | int) -> int:
    """``"200MB"`` → 200000000; ``"64MiB"`` → 67108864; ints pass through."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).upper() not in _UNITS:
        raise ConfigError(f"invalid size {text!r}: expected e.g. 200MB, 64MiB or 1048576")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def _default_workers() -> dict[str, int]:
    cores = os.cpu_count() or 1
    # download: concurrent requests (the session's connection limit follows it);
    # crunch is fused with resize (one worker call), so it follows resize unless given.
    # read and write threads only have to keep the process workers fed and drained: a thread
    # reads a 2.5 MB file in ~1 ms from the page cache, a worker needs 20-70 ms per image, and
    # every extra thread lane costs the parent GIL hand-offs (on 2 cores, 2000 small JPEGs:
    # 8 read + 4 write threads 247-278 images/s, 2 + 1 328-342, 12 MP photos unchanged)
    return {
        "download": 64,
        "read": max(2, cores),
        "resize": cores,
        "crunch": cores,
        "write": max(1, cores // 2),
    }


@dataclass(frozen=True, kw_only=True)
class ProcessConfig:
    inputs: tuple[str, ...] = ()
    urls: tuple[str, ...] = ()
    output: str = "out"
    sizes: tuple[str, ...] = ("512",)
    # image defaults live in one place, ResizeOptions
    mode: str = ResizeOptions.mode
    upscale: bool = ResizeOptions.upscale
    format: str = ResizeOptions.format
    quality: int = ResizeOptions.quality
    allow_truncated: bool = ResizeOptions.allow_truncated
    max_pixels: int = ResizeOptions.max_pixels
    max_file_size: int = DEFAULT_MAX_FILE_BYTES
    # numeric data files
    chunk_size: int = DEFAULT_CHUNK_BYTES
    columns: tuple[str, ...] = ()
    delimiter: str | None = None
    bins: int = 64
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    workers: Mapping[str, int] = field(default_factory=_default_workers)
    auto_workers: bool = False  # --workers auto: the numbers above become caps
    timeout: float = 120.0
    retry_failed: bool = False
    force: bool = False
    verify_content: bool = False  # resume compares a SHA-256 of each file, not only size+mtime
    quiet: bool = False
    progress: bool | None = None
    # downloads (URL lists)
    allow_private_hosts: bool = False
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    download_timeout: float = 120.0
    download_retries: int = 3
    max_download_size: int = 50 * 2**20
    limit_per_host: int = 8
    user_agent: str = "pixpipe/0.1 (+batch image pipeline)"
    # where the stages run: "local" (this machine) or "dask" (a cluster; see pipeline.backends)
    backend: str = "local"
    scheduler: str | None = None  # tcp://host:8786; None with backend "dask": a LocalCluster
    shard_size: int = 256
    resize: ResizeOptions = field(init=False, repr=False)
    data: DataOptions = field(init=False, repr=False)
    download: DownloadConfig | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.inputs and not self.urls:
            raise ConfigError("nothing to process: give input folders and/or --urls lists")
        for item in (*self.inputs, *self.urls):
            if not Path(item).exists():
                raise ConfigError(f"input {item!r} does not exist")
        _check_output_apart(self.inputs, self.output)
        unknown = set(self.workers) - set(STAGE_NAMES)
        if unknown:
            raise ConfigError(f"--workers: unknown stage(s) {sorted(unknown)}; use {STAGE_NAMES}")
        merged = {**_default_workers(), **dict(self.workers)}
        if "crunch" not in self.workers:
            merged["crunch"] = merged["resize"]
        if any(not isinstance(n, int) or n < 1 for n in merged.values()):
            raise ConfigError(f"--workers must be positive integers, got {merged}")
        object.__setattr__(self, "workers", merged)
        if self.retry_failed and self.force:
            raise ConfigError("--retry-failed and --force exclude each other")
        if self.backend not in ("local", "dask"):
            raise ConfigError(f"--backend must be 'local' or 'dask', got {self.backend!r}")
        if self.scheduler is not None and self.backend != "dask":
            raise ConfigError("--scheduler needs --backend dask")
        if self.shard_size < 1:
            raise ConfigError("--shard-size must be >= 1")
        if self.max_file_size < 1:
            raise ConfigError("--max-file-size must be positive")
        if not self.timeout > 0:
            raise ConfigError("--timeout must be > 0 seconds")
        try:
            opts = ResizeOptions(
                sizes=tuple(parse_size(s) for s in self.sizes),
                mode=self.mode,  # type: ignore[arg-type]
                upscale=self.upscale,
                format=self.format,  # type: ignore[arg-type]
                quality=self.quality,
                allow_truncated=self.allow_truncated,
                max_pixels=self.max_pixels,
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        object.__setattr__(self, "resize", opts)
        try:
            data = DataOptions(
                chunk_size=self.chunk_size,
                columns=self.columns,
                delimiter=self.delimiter,
                bins=self.bins,
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        object.__setattr__(self, "data", data)
        object.__setattr__(self, "download", self._download_config(merged) if self.urls else None)

    def _download_config(self, merged: Mapping[str, int]) -> DownloadConfig:
        from .download import DownloadConfig

        try:
            return DownloadConfig(
                connect_timeout=self.connect_timeout,
                read_timeout=self.read_timeout,
                total_timeout=self.download_timeout,
                retries=self.download_retries,
                max_bytes=self.max_download_size,
                limit=max(merged["download"], self.limit_per_host),
                limit_per_host=self.limit_per_host,
                allow_private_hosts=self.allow_private_hosts,
                user_agent=self.user_agent,
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> ProcessConfig:
        names = {f.name for f in fields(cls) if f.init}
        unknown = set(data) - names
        if unknown:
            raise ConfigError(f"unknown option(s): {', '.join(sorted(unknown))}")
        clean = dict(data)
        for key in ("inputs", "urls", "sizes", "include", "exclude", "columns"):
            if key in clean and isinstance(clean[key], str):
                clean[key] = (clean[key],)
            if key in clean:
                clean[key] = tuple(str(v) for v in clean[key])
        for key in ("max_file_size", "max_download_size", "chunk_size"):
            if key in clean:
                clean[key] = parse_bytes(clean[key])
        try:
            return cls(**clean)
        except TypeError as exc:
            raise ConfigError(str(exc)) from exc

    def fingerprint(self) -> str:
        """Hash of the options that shape image outputs: changing any redoes the images."""
        return _digest(asdict(self.resize))

    def data_fingerprint(self) -> str:
        """Hash of the options that shape data statistics: changing any redoes the data files."""
        return _digest(self.data.fingerprint_fields())


def _check_output_apart(inputs: Sequence[str], output: str) -> None:
    """Refuse (exit 2) an output folder that is an input folder or holds one, and an input
    that is another run's output folder: outputs must never be read back as inputs. (An output
    folder *inside* an input folder is fine: the walk leaves it out.)"""
    out = os.path.realpath(output)
    for item in inputs:
        real = os.path.realpath(item)
        if real == out or (real + os.sep).startswith(out.rstrip(os.sep) + os.sep):
            raise ConfigError(
                f"input {item!r} is the output folder {output!r} or inside it: its outputs would "
                "be read back as inputs; choose another --output"
            )
        if os.path.isdir(real) and os.path.exists(os.path.join(real, LEDGER_MARK)):
            raise ConfigError(
                f"input {item!r} is the output folder of an earlier run (it holds .pipeline/); "
                "give its size folders instead (e.g. its 512/ folder)"
            )


def _digest(doc: Any) -> str:
    return hashlib.sha1(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:12]


def build_pipeline(cfg: ProcessConfig) -> Pipeline:
    w = cfg.workers
    fetching = []
    if cfg.download is not None:
        from .fetching import download, session_factory

        # one aiohttp session per run (the stage's context); fetch enforces connect/read/total
        # timeouts and retries itself, so the stage has no engine timeout of its own
        fetching.append(
            stage(
                download,
                cfg.download,
                kind="async",
                name="download",
                workers=w["download"],
                capacity=64,
                context=session_factory(cfg.download),
                context_arg="session",
            )
        )
    return Pipeline(
        [
            *fetching,
            # inbox of small path records; batches of reads go to the threads; data files are
            # planned here (header only) and split into chunks for the process workers
            stage(
                steps.read,
                cfg.max_file_size,
                cfg.data,
                kind="thread",
                name="read",
                workers=w["read"],
                capacity=64,
                timeout=cfg.timeout,
                retries=1,
                retry_on=(InterruptedError,),
            ),
            # inbox holds whole files (up to max_file_size each): keep it at 2 per worker
            stage(
                steps.resize,
                cfg.resize,
                kind="process",
                name="resize",
                workers=w["resize"],
                capacity=2 * w["resize"],
                timeout=cfg.timeout,
                max_batch=4,
            ),
            # fused with resize: data chunks' statistics (images pass through)
            stage(
                steps.crunch,
                kind="process",
                name="crunch",
                workers=w["crunch"],
                capacity=2 * w["crunch"],
                timeout=cfg.timeout,
                max_batch=4,
            ),
            # inbox holds encoded thumbnails: small
            stage(
                steps.write,
                str(cfg.output),
                kind="thread",
                name="write",
                workers=w["write"],
                capacity=32,
                timeout=cfg.timeout,
            ),
        ],
        name="process",
    )


class StatsTable:
    """Writes ``stats.csv`` and ``stats.parquet`` (when there are image rows) from the manifest."""

    name = "stats_table"
    COLUMNS = (
        "key",
        "status",
        "width",
        "height",
        "mode",
        "format",
        "out_width",
        "out_height",
        "mean",
        "std",
        "sharpness",
        "dhash",
    )

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        # (key, dhash) of every row, kept by result() for NearDuplicates, which needs them all
        # in memory anyway: one pass over the manifest serves both
        self.hashes: list[tuple[str, str]] | None = None

    def add(self, record: Record) -> None:
        return None

    def rows(self) -> Iterator[dict[str, Any]]:
        manifest = self.folder / "manifest.jsonl"
        if not manifest.exists():
            return
        for rec in read_manifest(manifest):
            res = rec.get("result")
            if not isinstance(res, dict) or "stats" not in res or is_data_result(res):
                continue
            st, orig = res["stats"], res.get("original", {})
            outs = res.get("outputs") or [{}]
            yield {
                "key": rec["key"],
                "status": rec["status"],
                "width": orig.get("width"),
                "height": orig.get("height"),
                "mode": orig.get("mode"),
                "format": orig.get("format"),
                "out_width": outs[0].get("width"),
                "out_height": outs[0].get("height"),
                "mean": " ".join(f"{v:.3f}" for v in st.get("mean", [])),
                "std": " ".join(f"{v:.3f}" for v in st.get("std", [])),
                "sharpness": st.get("sharpness"),
                "dhash": st.get("dhash"),
            }

    def result(self) -> dict[str, Any]:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.COLUMNS)
        writer.writeheader()
        n = 0
        hashes: list[tuple[str, str]] = []
        for row in self.rows():
            writer.writerow(row)
            n += 1
            if row.get("dhash"):
                hashes.append((row["key"], row["dhash"]))
        self.hashes = hashes
        data = buf.getvalue().encode()
        atomic_write_bytes(self.folder / "stats.csv", data)
        files = ["stats.csv"]
        if n:
            import pyarrow as pa
            import pyarrow.csv as pacsv
            import pyarrow.parquet as pq

            # the table from the CSV just written: pa.Table.from_pylist would import pandas
            # (when installed), half a second for nothing
            table = pacsv.read_csv(pa.BufferReader(data))
            sink = pa.BufferOutputStream()
            pq.write_table(table, sink)
            atomic_write_bytes(self.folder / "stats.parquet", sink.getvalue().to_pybytes())
            files.append("stats.parquet")
        return {"rows": n, "files": files}


class NearDuplicates:
    """Groups of images whose 64-bit difference hashes differ in at most ``max_distance`` bits."""

    name = "near_duplicates"

    def __init__(self, table: StatsTable, max_distance: int = 6) -> None:
        self.table = table
        self.max_distance = max_distance

    def add(self, record: Record) -> None:
        return None

    def result(self) -> dict[str, Any]:
        from .stats import near_duplicate_groups

        pairs: Iterable[tuple[str, str]] = self.table.hashes or (
            (r["key"], r["dhash"]) for r in self.table.rows() if r.get("dhash")
        )
        groups = near_duplicate_groups(pairs, max_distance=self.max_distance)
        return {"max_distance": self.max_distance, "groups": groups}


def _url_inputs(lists: Sequence[str]) -> Iterator[Item | Record]:
    if not lists:
        return iter(())
    from .fetching import url_inputs

    return url_inputs(lists)


#: What the end of a run imports (``stats.parquet``: pyarrow and numpy, a tenth of a second or
#: more; near-duplicate groups: numpy), imported ahead in a thread from the run's first input on,
#: while the parent mostly waits for its workers.
END_OF_RUN_MODULES = ("pyarrow.csv", "pyarrow.parquet", "stages.stats")


@functools.cache
def _prefetch_end_of_run() -> None:
    """Start importing :data:`END_OF_RUN_MODULES` in a thread, once per process.

    Not a daemon: interpreter shutdown waits for it rather than cutting an import short.
    """
    threading.Thread(target=_import_all, args=(END_OF_RUN_MODULES,), name="prefetch").start()


def _import_all(names: Sequence[str]) -> None:
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:  # the collector that needs it imports it again and reports
            log.debug("prefetching %s failed: %s", name, exc)
            return


def _first_calls(
    inputs: Iterable[Item | Record], action: Callable[[], None]
) -> Iterator[Item | Record]:
    """``inputs`` unchanged; ``action()`` runs just before the first one is taken."""
    for i, value in enumerate(inputs):
        if i == 0:
            action()
        yield value


def run_process(cfg: ProcessConfig, *, limit: int | None = None) -> RunResult:
    """Run ``process``; ``limit`` takes only the first inputs (``profile`` samples that way).

    The output folder is held for the whole command (run, tables, report): a second command
    into it stops at once with :class:`~pipeline.FolderBusy` (exit 2).
    """
    out = Path(cfg.output)
    with hold_folder(out):
        try:
            return _run(cfg, out, limit)
        finally:
            _write_report(out)


def _run(cfg: ProcessConfig, out: Path, limit: int | None) -> RunResult:
    table = StatsTable(out)
    pipe = build_pipeline(cfg)
    inputs: Iterator[Item | Record] = itertools.chain(
        walk_inputs(
            cfg.inputs,
            include=cfg.include,
            exclude=cfg.exclude,
            data_extensions=DATA_EXTENSIONS,
            never=[out],
            verify_content=cfg.verify_content,
        ),
        _url_inputs(cfg.urls),
    )
    if limit is not None:
        inputs = itertools.islice(inputs, limit)
    inputs = _first_calls(_fingerprinted(inputs, cfg), _prefetch_end_of_run)
    backend = None
    if cfg.backend == "dask":
        from pipeline.backends.dask import DaskBackend

        backend = DaskBackend(cfg.scheduler, shard_size=cfg.shard_size)
    return pipe.run(
        inputs,
        backend=backend,
        autoscale=cfg.auto_workers,
        output=out,
        collectors=[table, NearDuplicates(table), DataAggregate(), DataTable(out)],
        fingerprint=cfg.fingerprint(),  # items carry their own (see _fingerprinted)
        is_done=lambda rec: is_data_result(rec.value) or outputs_exist(out, rec.value),
        retry_failed=cfg.retry_failed,
        force=cfg.force,
        progress=False if cfg.quiet else cfg.progress,
        revisit=None if limit is not None else mark_gone,
    )


def _fingerprinted(inputs: Iterable[Item | Record], cfg: ProcessConfig) -> Iterator[Item | Record]:
    """Each item with the fingerprint of the options its kind depends on (data files: the data
    options; images: the image options), known from the source rather than guessed from the
    key (a key may hold ``.npz:`` and still be an image)."""
    image, data = cfg.fingerprint(), cfg.data_fingerprint()
    for obj in inputs:
        if isinstance(obj, Item):
            obj.fingerprint = data if isinstance(obj.value, DataFile) else image
        yield obj


#: The ``skipped`` reason of a key whose input file is no longer there.
REASON_GONE = "input gone: the file no longer exists (its outputs are kept)"


def mark_gone(rec: Record) -> Record | None:
    """For keys a run did not see: a record whose input file is gone becomes ``skipped`` with
    :data:`REASON_GONE` (its earlier result kept, so its outputs stay listed); others stay."""
    if rec.identity is None or rec.reason == REASON_GONE:  # not a file (a URL), or known gone
        return None
    if os.path.lexists(rec.source):
        return None
    return Record(
        key=rec.key,
        status=Status.SKIPPED,
        source=rec.source,
        reason=REASON_GONE,
        value=rec.value,
        meta=rec.meta,
        fingerprint=rec.fingerprint,
        identity=rec.identity,
    )


def _write_report(out: Path) -> None:
    """``report.html`` after every run (failed and interrupted ones too); never raises."""
    if not (out / "summary.json").exists():
        return  # the run never got as far as its output folder
    try:
        write_report(out)
    except (OSError, ValueError, LedgerError) as exc:
        log.warning("could not write %s: %s", out / "report.html", exc)
