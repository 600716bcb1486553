"""The options of the ``process`` and ``profile`` commands: :class:`ProcessConfig`.

Each option is declared once, as a field of :class:`ProcessConfig` (:func:`app.options.option`:
name, type and default from the field; kind, help, metavar/unit and group in the declaration).
The command-line flags, the config-file keys, the validation messages and the README's option
table are derived from these fields by :mod:`app.options`:

* ``ProcessConfig(...)`` from Python: values of the options' types (or their text forms),
  checked on creation;
* :meth:`ProcessConfig.from_mapping` / :func:`load_config`: a mapping or a TOML file whose keys
  are the flags' names (``size = ["512", "128x128"]``, ``workers = {resize = 2, read = 4}``);
* :func:`config_from_args`: the parsed command line over an optional ``--config`` file (flags
  win; ``--workers`` adds to the file's ``workers``). An option declared with ``needs`` does
  something only where its need is met (``--shard-size`` only with ``--backend dask``): a flag
  given elsewhere is a usage error, a config-file key a warning (a file may hold settings
  shared by runs of several kinds); Python callers are not checked.

A frozen, keyword-only dataclass validated on creation (errors are
:class:`~pipeline.ConfigError`, exit 2). The stages' own option objects (``ResizeOptions``,
``DataOptions``, ``DownloadConfig``) are built from it here, so a run that fails validation fails
before anything starts. Image defaults come from ``ResizeOptions``; the download defaults are
``DownloadConfig``'s (a test keeps them in step: importing it here would import aiohttp).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

from pipeline import ConfigError
from pipeline.config import load_toml
from stages.files import DEFAULT_MAX_FILE_BYTES
from stages.options import OutputFormat, ResizeMode, ResizeOptions, parse_size
from stages.parts import DEFAULT_CHUNK_BYTES, DataOptions
from stages.sources import LEDGER_MARK
from stages.storage import is_url, parse_options

from .options import (
    ByteSize,
    Choice,
    Color,
    Flag,
    Integer,
    Kind,
    Needs,
    Number,
    Table,
    Text,
    TextList,
    declared,
    inert,
    merge_values,
    option,
    values_from_args,
    values_from_mapping,
)
from .storage_config import attach_storage_options as attach
from .storage_config import check_storage_output, check_storage_url

if TYPE_CHECKING:  # aiohttp is imported only when a run has URL lists (start-up time)
    from stages.download import DownloadConfig

__all__ = [
    "STAGE_NAMES",
    "ProcessConfig",
    "Workers",
    "check_path",
    "config_from_args",
    "load_config",
]

log = logging.getLogger("app")

STAGE_NAMES = ("download", "read", "resize", "crunch", "write")

#: The most workers a stage takes: concurrent requests for downloads (coroutines, a few KB
#: each), else threads or processes (a process worker holds tens of MB). A count past these is
#: a typo, and starting that many would exhaust the machine before the first item.
MAX_WORKERS = {"download": 10_000, "resize": 1024}


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


@dataclass(frozen=True)
class Workers(Mapping[str, int]):
    """Workers per stage (a mapping ``stage -> N``); ``auto``: start small and size each stage
    from measurements, the numbers becoming caps. In a :class:`ProcessConfig`, every stage has
    its number (the defaults of this machine for those not given)."""

    counts: Mapping[str, int] = field(default_factory=dict)
    auto: bool = False

    def __getitem__(self, stage: str) -> int:
        return self.counts[stage]

    def __iter__(self) -> Iterator[str]:
        return iter(self.counts)

    def __len__(self) -> int:
        return len(self.counts)


class WorkersKind(Kind[Workers]):
    """``--workers``: ``N`` (resize processes), ``stage=N[,stage=N]``, ``auto``, repeatable; in a
    file also an integer, a table ``{resize = 2, read = 4}`` or a list of those."""

    arity = "list"
    what = "N, stage=N[,stage=N], auto; in a file also a table {resize = 2}"
    metavar = "N|stage=N,...|auto"
    _usage = f"N, stage=N[,stage=N] (stages: {', '.join(STAGE_NAMES)}) or auto"

    def from_text(self, text: str) -> Workers:
        counts: dict[str, int] = {}
        auto = False
        for part in (p.strip() for p in text.split(",")):
            name, eq, num = part.partition("=")
            if not eq and name == "auto":
                auto = True
                continue
            stage = name.strip() if eq else "resize"
            counts[stage] = self._count(stage, num if eq else name, text)
        return Workers(counts, auto)

    def from_value(self, value: object) -> Workers:
        if isinstance(value, Workers):
            return Workers({s: self._count(s, n, value) for s, n in value.items()}, value.auto)
        if isinstance(value, str):
            return self.from_text(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return Workers({"resize": self._count("resize", value, value)})
        if isinstance(value, Mapping):
            return Workers({str(s): self._count(str(s), n, value) for s, n in value.items()})
        if isinstance(value, list | tuple) and value:
            return self.join([self.from_value(v) for v in value])
        raise ValueError(f"expected {self._usage}, got {value!r}")

    def _count(self, stage: str, n: object, given: object) -> int:
        if stage not in STAGE_NAMES:
            raise ValueError(f"unknown stage {stage!r} in {given!r}; stages: {STAGE_NAMES}")
        if isinstance(n, str):
            try:
                n = int(n.strip())
            except ValueError:
                raise ValueError(f"expected {self._usage}, got {given!r}") from None
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"workers must be integers >= 1, got {given!r}")
        most = MAX_WORKERS.get(stage, MAX_WORKERS["resize"])
        if n > most:
            raise ValueError(f"{stage} workers: at most {most}, got {n} (in {given!r})")
        return n

    def join(self, values: Sequence[Workers]) -> Workers:
        counts = {s: n for w in values for s, n in w.items()}
        return Workers(counts, any(w.auto for w in values))

    def override(self, earlier: Workers, later: Workers) -> Workers:
        return self.join([earlier, later])  # --workers read=8 keeps the file's resize = 2

    def show(self, value: Workers) -> str:
        shown = ",".join(f"{s}={n}" for s, n in value.items())
        return ",".join(([shown] if shown else []) + (["auto"] if value.auto else []))


def _delimiter(value: str) -> str:
    """``\\t`` and ``tab`` mean a tab (a real tab is hard to type in a shell)."""
    return "\t" if value in ("\\t", "tab", "TAB") else value


def _one_character(value: str) -> None:
    if len(value) != 1:
        raise ValueError(f"expected one character (or tab), got {value!r}")


# The groups, in the order of --help and of the README's tables
FILES = "inputs and outputs"
IMAGES = "images"
RUN = "the run"
DOWNLOADS = "downloads (URL lists)"
SHARDS = "training sets (URL tables in, shards out)"
DATA = "numeric data files (.npy, .npz, .csv, .tsv)"
BACKEND = "beyond one machine"


# where options do something (see the module docstring)
def check_path(value: str) -> None:
    """A path is not empty: ``-o ""`` (a shell variable left unset) wrote a run into the
    working folder."""
    if not value.strip():
        raise ValueError("an empty path (a variable left unset?): give a folder or file")


_URLS = Needs("urls")
_DASK = Needs("backend", value="dask")
_SHARDS = Needs("output_format", value=("webdataset", "parquet"))

#: The options of a training set that choose its samples (the URL column, the filters, the
#: noai opt-out) or fill its metadata (the caption, the kept columns): a run with others into
#: a folder of shards would keep the samples already there as they are, beside new ones chosen
#: or described otherwise, so it is refused (:func:`app.shard_folder.check_shard_folder`).
SAMPLE_OPTIONS = (
    "url_col",
    "caption_col",
    "keep_columns",
    "ignore_noai",
    "min_image_size",
    "max_aspect_ratio",
)


@dataclass(frozen=True, kw_only=True)
class ProcessConfig:
    """Every option of ``process`` (and ``profile``), each declared once (see the module)."""

    # -- inputs and outputs
    inputs: tuple[str, ...] = option(
        (),
        kind=TextList(Text(what="path", metavar="INPUTS", check=check_path), what="paths"),
        positional=True,
        help="input folders (or files)",
        group=FILES,
    )
    output: str = option(
        "out",
        kind=Text(what="path", metavar="DIR", check=check_path),
        short="-o",
        help="output folder, or a storage URL (s3://bucket/prefix/)",
        group=FILES,
    )
    storage_options: dict[str, Any] = option(
        default_factory=dict,
        kind=Table(parse_options),
        help="options of the storage URLs' file system (fsspec): endpoint, profile, keys; "
        "never written to the manifest, logs or report",
        group=FILES,
        secret=True,
    )
    mirror_every: float = option(
        30.0,
        kind=Number(),
        unit="s",
        help="seconds between uploads of the run's journal while it goes (a crashed run "
        "resumes from the last one, from any machine)",
        group=FILES,
        needs=Needs("output", test=is_url, said="a storage --output (s3://…)"),
    )
    include: tuple[str, ...] = option(
        (),
        kind=TextList(Text(what="glob", metavar="GLOB"), what="globs"),
        help="only paths matching GLOB (repeatable)",
        group=FILES,
    )
    exclude: tuple[str, ...] = option(
        (),
        kind=TextList(Text(what="glob", metavar="GLOB"), what="globs"),
        help="skip paths matching GLOB (repeatable)",
        group=FILES,
    )
    case_sensitive_globs: bool = option(
        False,
        kind=Flag(),
        help="--include / --exclude match the exact case (else *.jpg takes IMG_1.JPG too)",
        group=FILES,
        needs=Needs("include", "exclude"),
    )
    follow_symlinks: bool = option(
        False,
        kind=Flag(),
        help="follow a symlink in an input folder to a file outside that folder too (a "
        "git-annex tree, a subset made of links); by default it is skipped with its reason. "
        "Never to a special file, a folder or into the output folder",
        group=FILES,
    )
    max_file_size: int = option(
        DEFAULT_MAX_FILE_BYTES,
        kind=ByteSize(low=1),
        help="read size cap per input file",
        group=FILES,
    )
    # -- images (the defaults are ResizeOptions')
    size: tuple[str, ...] = option(
        ("512",),
        kind=TextList(
            Text(what="size", metavar="SIZE", check=parse_size, numbers=True),
            what="sizes (512, 640x480, 640x, x480)",
        ),
        help="max side (512) or box (640x480); repeat for several sizes",
        group=IMAGES,
    )
    mode: str = option(
        ResizeOptions.mode,
        kind=Choice(get_args(ResizeMode)),
        help="fit inside the box, fill it and crop, pad to it, or stretch to it exactly",
        group=IMAGES,
    )
    pad_color: tuple[int, int, int] = option(
        ResizeOptions.pad_color,
        kind=Color(),
        help="the padding of --mode pad (transparent when the output keeps alpha)",
        group=IMAGES,
        needs=Needs("mode", value="pad"),
    )
    upscale: bool = option(
        ResizeOptions.upscale,
        kind=Flag(),
        help="enlarge images smaller than the box",
        group=IMAGES,
    )
    format: str = option(
        ResizeOptions.format,
        kind=Choice(get_args(OutputFormat)),
        help="output format; keep: JPEG stays jpeg, PNG png, WebP webp, AVIF avif, others "
        "(HEIC, TIFF, GIF…) png with alpha, jpeg without",
        group=IMAGES,
    )
    quality: int = option(
        ResizeOptions.quality,
        kind=Integer(low=1, high=100),
        help="JPEG/WebP/AVIF quality (AVIF's own scale: ~70 looks like JPEG 85)",
        group=IMAGES,
    )
    allow_truncated: bool = option(
        ResizeOptions.allow_truncated,
        kind=Flag(),
        help="decode truncated images (missing part grey) instead of failing them",
        group=IMAGES,
    )
    max_pixels: int = option(
        ResizeOptions.max_pixels,
        kind=Integer(low=1),
        help="refuse images whose header declares more pixels (decompression bombs)",
        group=IMAGES,
    )
    max_output_pixels: int = option(
        ResizeOptions.max_output_pixels,
        kind=Integer(low=1),
        help="refuse an image one of whose outputs would have more pixels (8192x8192: a "
        "10000 box with --upscale is refused, a 61 MP photo passes at full size); a --size "
        "that makes every output larger (--upscale or --mode pad) is a usage error",
        group=IMAGES,
    )
    # -- the run
    workers: Workers = option(
        default_factory=Workers,
        kind=WorkersKind(),
        help="N (resize processes), stage=N[,stage=N] for download, read, resize, crunch, "
        "write, or auto: start small and size each stage from measurements (numbers become caps); "
        "images are written by the resize processes, so write=N sets threads for memory:// "
        "outputs only",
        shown_default="download=64, read=max(2, cores), resize=cores, crunch=resize, "
        "write=max(1, cores // 2)",
        group=RUN,
    )
    timeout: float = option(120.0, kind=Number(), unit="s", help="per-item timeout", group=RUN)
    retry_failed: bool = option(
        False, kind=Flag(), help="redo only the inputs that failed in earlier runs", group=RUN
    )
    force: bool = option(False, kind=Flag(), help="redo everything", group=RUN)
    verify_content: bool = option(
        False,
        kind=Flag(),
        help="resume: compare a SHA-256 of each input file too, not only its size and mtime "
        "(reads every input once more); a folder moved since (renamed, a drive mounted "
        "elsewhere) is then found done",
        group=RUN,
    )
    quiet: bool = option(
        False, kind=Flag(), short="-q", help="no progress bars, no summary", group=RUN
    )
    # -- downloads (URL lists); the defaults are DownloadConfig's (see the module docstring)
    urls: tuple[str, ...] = option(
        (),
        kind=TextList(Text(what="path", metavar="FILE", check=check_path), what="paths"),
        help="URL list: text (one a line), .csv/.tsv or .jsonl with a url column, optionally "
        ".gz; repeatable",
        group=DOWNLOADS,
    )
    allow_private_hosts: bool = option(
        False,
        kind=Flag(),
        help="allow hosts on loopback/private/link-local addresses (local servers)",
        group=DOWNLOADS,
        needs=_URLS,
    )
    connect_timeout: float = option(
        10.0, kind=Number(), unit="s", help="DNS and each connect", group=DOWNLOADS, needs=_URLS
    )
    read_timeout: float = option(
        30.0,
        kind=Number(),
        unit="s",
        help="longest wait for the next bytes",
        group=DOWNLOADS,
        needs=_URLS,
    )
    download_timeout: float = option(
        120.0,
        kind=Number(),
        unit="s",
        help="one attempt in all, from when it can start (not waiting for --limit-per-host)",
        group=DOWNLOADS,
        needs=_URLS,
    )
    download_retries: int = option(
        3, kind=Integer(low=0), help="extra attempts after the first", group=DOWNLOADS, needs=_URLS
    )
    max_download_size: int = option(
        50 * 2**20, kind=ByteSize(low=1), help="byte cap per body", group=DOWNLOADS, needs=_URLS
    )
    limit_per_host: int = option(
        8, kind=Integer(low=1), help="connections per host", group=DOWNLOADS, needs=_URLS
    )
    ignore_noai: bool = option(
        False,
        kind=Flag(),
        help="download images whose response says X-Robots-Tag: noai or noimageai (skipped "
        "by default)",
        group=DOWNLOADS,
        needs=_URLS,
    )
    user_agent: str = option(
        "pixpipe/0.1 (+batch image pipeline)",
        kind=Text(),
        help="the User-Agent header",
        group=DOWNLOADS,
        needs=_URLS,
    )
    # -- training sets: URL tables in, WebDataset / Parquet shards out (stages.shards)
    url_col: str = option(
        "url",
        kind=Text(what="column name", metavar="NAME"),
        help="the URL column of --urls tables (.parquet, .csv, .tsv, .jsonl)",
        group=SHARDS,
        needs=_URLS,
    )
    caption_col: str | None = option(
        None,
        kind=Text(what="column name", metavar="NAME"),
        help="the caption column (KEY.txt in a sample; it must exist)",
        group=SHARDS,
        needs=_URLS,
    )
    keep_columns: tuple[str, ...] = option(
        (),
        kind=TextList(Text(what="column name", metavar="A"), what="column names", commas=True),
        help="table columns carried into each sample and record",
        group=SHARDS,
        needs=_URLS,
    )
    output_format: str = option(
        "files",
        kind=Choice(("files", "webdataset", "parquet")),
        help="files: a folder tree; webdataset: tar shards; parquet: Parquet shards",
        group=SHARDS,
    )
    samples_per_shard: int = option(
        10000,
        kind=Integer(low=1),
        help="inputs per shard (failed ones included)",
        group=SHARDS,
        needs=_SHARDS,
    )
    min_image_size: int = option(
        0,
        kind=Integer(low=0),
        help="skip images whose smaller side is below N pixels (0: no minimum)",
        group=SHARDS,
        needs=_SHARDS,
    )
    max_aspect_ratio: float | None = option(
        None,
        kind=Number(what="a number > 0"),
        metavar="R",
        help="skip images whose longer side is over R times the shorter",
        group=SHARDS,
        needs=_SHARDS,
    )
    # -- numeric data files
    chunk_size: int = option(
        DEFAULT_CHUNK_BYTES,
        kind=ByteSize(low=0),
        help="split data files into parts of this size, crunched in parallel (0: never)",
        group=DATA,
    )
    columns: tuple[str, ...] = option(
        (),
        kind=TextList(Text(what="column name", metavar="A"), what="column names", commas=True),
        help="CSV: crunch only these columns (default: every numeric column)",
        group=DATA,
    )
    delimiter: str | None = option(
        None,
        kind=Text(what="one character", metavar="CHAR", normalize=_delimiter, check=_one_character),
        help="CSV field separator (default: tab for .tsv, else sniffed from the header); "
        "tab or \\t = tab",
        group=DATA,
    )
    bins: int = option(
        DataOptions.bins, kind=Integer(low=1, high=4096), help="histogram bins, at most", group=DATA
    )
    # -- where the stages run: this machine, or a Dask cluster (see pipeline.backends)
    backend: str = option(
        "local",
        kind=Choice(("local", "dask")),
        help="where stages run: this machine or a Dask cluster",
        group=BACKEND,
    )
    scheduler: str | None = option(
        None,
        kind=Text(what="address", metavar="ADDRESS"),
        help="Dask scheduler address (tcp://host:8786); without it --backend dask starts a "
        "LocalCluster sized to this machine",
        group=BACKEND,
        needs=_DASK,
    )
    shard_size: int = option(
        256, kind=Integer(low=1), help="inputs per Dask task", group=BACKEND, needs=_DASK
    )
    # -- not options: from Python only, or derived
    progress: bool | None = None  # None: progress bars when stderr is a terminal
    resize: ResizeOptions = field(init=False, repr=False)
    data: DataOptions = field(init=False, repr=False)
    download: DownloadConfig | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for d in declared(type(self)):  # values from Python: checked and normalised here too
            object.__setattr__(self, d.name, d.read(getattr(self, d.name), d.name))
        if not self.inputs and not self.urls:
            raise ConfigError("nothing to process: give input folders and/or --urls lists")
        storage = self.storage_options  # URLs hold them (stages.storage.StorageURL)
        object.__setattr__(self, "inputs", tuple(attach(i, storage) for i in self.inputs))
        object.__setattr__(self, "urls", tuple(attach(u, storage) for u in self.urls))
        object.__setattr__(self, "output", attach(self.output, storage))
        for item in (*self.inputs, *self.urls):
            if not (check_storage_url(item) if is_url(item) else Path(item).exists()):
                raise ConfigError(f"input {item!r} does not exist")
        if is_url(self.output):
            check_storage_output(self.output, self.output_format, self.inputs)
        else:
            _check_output_apart(self.inputs, self.output)
        _check_tables(self)
        counts = {**_default_workers(), **self.workers.counts}
        if "crunch" not in self.workers.counts:
            counts["crunch"] = counts["resize"]
        object.__setattr__(self, "workers", Workers(counts, self.workers.auto))
        if self.retry_failed and self.force:
            raise ConfigError("--retry-failed and --force exclude each other")
        try:
            opts = ResizeOptions(
                sizes=tuple(parse_size(s) for s in self.size),
                mode=self.mode,  # type: ignore[arg-type]
                upscale=self.upscale,
                format=self.format,  # type: ignore[arg-type]
                quality=self.quality,
                allow_truncated=self.allow_truncated,
                max_pixels=self.max_pixels,
                max_output_pixels=self.max_output_pixels,
                pad_color=self.pad_color,
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
        object.__setattr__(self, "download", self._download_config() if self.urls else None)

    def reads_table(self, path: str) -> bool:
        """Whether ``--urls path`` is read as a table (:mod:`stages.tables_in`): Parquet always;
        CSV/TSV/JSON lines when writing shards or given table options; else as a URL list
        (:mod:`stages.urls`, as before tables)."""
        from stages.tables_in import table_format

        fmt = table_format(path)
        given = self.url_col != "url" or self.caption_col is not None or bool(self.keep_columns)
        return fmt == "parquet" or (fmt != "text" and (self.output_format != "files" or given))

    @property
    def auto_workers(self) -> bool:
        """``--workers auto``: the numbers of :attr:`workers` are caps."""
        return self.workers.auto

    def _download_config(self) -> DownloadConfig:
        from stages.download import DownloadConfig

        try:
            return DownloadConfig(
                connect_timeout=self.connect_timeout,
                read_timeout=self.read_timeout,
                total_timeout=self.download_timeout,
                retries=self.download_retries,
                max_bytes=self.max_download_size,
                limit=max(self.workers["download"], self.limit_per_host),
                limit_per_host=self.limit_per_host,
                allow_private_hosts=self.allow_private_hosts,
                user_agent=self.user_agent,
                respect_noai=not self.ignore_noai,
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str | None = None) -> ProcessConfig:
        """From a mapping whose keys are the options' names (``max-file-size`` or
        ``max_file_size``); ``source`` (a file's name) is named in error messages."""
        return cls(**values_from_mapping(data, cls, source=source))

    def fingerprint(self) -> str:
        """Hash of the options that shape image outputs: changing any redoes the images."""
        return self.resize.fingerprint()

    def sample_options(self) -> dict[str, Any]:
        """The options of a training set that choose its samples or fill its metadata
        (:data:`SAMPLE_OPTIONS`), by name, as JSON values (held by its folder: see
        :func:`app.shard_folder.check_shard_folder`)."""
        chosen = {name: getattr(self, name) for name in SAMPLE_OPTIONS}
        return dict(json.loads(json.dumps(chosen)))

    def data_fingerprint(self, *, csv: bool = True) -> str:
        """Hash of the options that shape data statistics: changing any redoes the data files
        (with ``csv=False``, an array's: the CSV options left out)."""
        return _digest(self.data.fingerprint_fields(csv=csv))


def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The options of a TOML file, read and checked (errors name the file and the key)."""
    data = load_toml(path)
    return values_from_mapping(data, ProcessConfig, source=os.fspath(path))


def config_from_args(args: argparse.Namespace) -> ProcessConfig:
    """The command line's options over those of its ``--config`` file, if any."""
    path = getattr(args, "config", None)
    from_file = load_config(path) if path else {}
    from_flags = values_from_args(args, ProcessConfig)
    values = merge_values(ProcessConfig, from_file, from_flags)
    for d, needs in inert(ProcessConfig, values):
        if d.name in from_flags:
            raise ConfigError(
                f"{d.where} does nothing without {needs}: add {needs}, or leave {d.where} out"
            )
        log.warning("%s:%s does nothing without %s (ignored)", path, d.key, needs)
    return ProcessConfig(**values)


def _check_output_apart(inputs: Sequence[str], output: str) -> None:
    """Refuse (exit 2) an output folder that is an input folder or holds one, and an input
    that is another run's output folder: outputs must never be read back as inputs. (An output
    folder *inside* an input folder is fine: the walk leaves it out.) Refuse an output that is
    a file, or below one, too."""
    out = os.path.realpath(output)
    # the nearest part of the path that exists must be a folder (the rest is created)
    there = out
    while not os.path.lexists(there) and os.path.dirname(there) != there:
        there = os.path.dirname(there)
    if not os.path.isdir(there):
        what = "is not a folder" if there == out else f"is below a file ({there!r})"
        raise ConfigError(f"--output {output!r} {what}: give a folder (it is made if missing)")
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


def _check_tables(cfg: ProcessConfig) -> None:
    """Shards take URL inputs only; the columns asked for must be in every table (exit 2)."""
    from stages.tables_in import TableError, check_table

    if cfg.output_format != "files" and cfg.inputs:
        raise ConfigError(
            f"--output-format {cfg.output_format} takes --urls lists or tables, not input folders"
        )
    if cfg.output_format != "files" and len(cfg.size) > 1:
        raise ConfigError(
            f"--output-format {cfg.output_format} takes one --size (one image a sample)"
        )
    if cfg.output_format != "files" and cfg.workers.auto:
        raise ConfigError(f"--output-format {cfg.output_format} does not take --workers auto yet")
    for path in cfg.urls:
        if not cfg.reads_table(path):
            _check_url_list(path)
            continue
        try:
            check_table(
                path, url_col=cfg.url_col, caption_col=cfg.caption_col, keep=cfg.keep_columns
            )
        except TableError as exc:
            raise ConfigError(str(exc)) from exc


def _check_url_list(path: str) -> None:
    from stages.urls import UrlListError, check_url_list

    try:
        check_url_list(path)
    except UrlListError as exc:
        raise ConfigError(str(exc)) from exc


def _digest(doc: Any) -> str:
    return hashlib.sha1(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:12]
