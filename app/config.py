"""The options of the ``process`` and ``profile`` commands: :class:`ProcessConfig`.

A frozen, keyword-only dataclass validated on creation (errors are
:class:`~pipeline.ConfigError`, exit 2). The stages' own option objects (``ResizeOptions``,
``DataOptions``, ``DownloadConfig``) are built from it here, so a run that fails validation
fails before anything starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import ConfigError
from stages.files import DEFAULT_MAX_FILE_BYTES
from stages.options import ResizeOptions, parse_size
from stages.parts import DEFAULT_CHUNK_BYTES, DataOptions
from stages.sources import LEDGER_MARK

if TYPE_CHECKING:  # aiohttp is imported only when a run has URL lists (start-up time)
    from stages.download import DownloadConfig

__all__ = ["STAGE_NAMES", "ProcessConfig", "parse_bytes"]

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
        from stages.download import DownloadConfig

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
