"""The commands: ``process``, ``profile`` (a ``process`` run over a sample, stage figures only)
and ``demo`` (the engine alone). :func:`add_commands` adds them to the parser of :mod:`app.cli`;
each command is a function of the parsed arguments that returns the exit code.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import ConfigError
from pipeline.config import load_toml

from .warmup import warm_up

if TYPE_CHECKING:
    from .config import ProcessConfig

__all__ = ["COMMANDS", "add_commands"]

log = logging.getLogger("app")


def _parse_workers(values: list[str] | None) -> dict[str, int] | None:
    if not values:
        return None
    out: dict[str, int] = {}
    for value in values:
        if value == "auto":
            continue
        for part in value.split(","):
            name, eq, num = part.partition("=")
            try:
                if eq:
                    out[name.strip()] = int(num)
                else:
                    out["resize"] = int(name)
            except ValueError:
                raise ConfigError(
                    f"--workers: expected N or stage=N[,stage=N], got {value!r}"
                ) from None
    return out


def _config(args: argparse.Namespace) -> ProcessConfig:
    from .config import ProcessConfig

    data: dict[str, Any] = load_toml(args.config) if args.config else {}
    flags = {
        "inputs": [str(p) for p in args.inputs] or None,
        "urls": [str(p) for p in args.urls] if args.urls else None,
        "allow_private_hosts": args.allow_private_hosts,
        "connect_timeout": args.connect_timeout,
        "read_timeout": args.read_timeout,
        "download_timeout": args.download_timeout,
        "download_retries": args.download_retries,
        "max_download_size": args.max_download_size,
        "limit_per_host": args.limit_per_host,
        "user_agent": args.user_agent,
        "backend": args.backend,
        "scheduler": args.scheduler,
        "shard_size": args.shard_size,
        "chunk_size": args.chunk_size,
        "columns": _split_columns(args.columns),
        "delimiter": _delimiter(args.delimiter),
        "bins": args.bins,
        "output": str(args.output) if args.output is not None else None,
        "sizes": args.size,
        "mode": args.mode,
        "upscale": args.upscale,
        "format": args.format,
        "quality": args.quality,
        "allow_truncated": args.allow_truncated,
        "max_pixels": args.max_pixels,
        "max_file_size": args.max_file_size,
        "include": args.include,
        "exclude": args.exclude,
        "workers": _parse_workers(args.workers),
        "auto_workers": True if args.workers and "auto" in args.workers else None,
        "timeout": args.timeout,
        "retry_failed": args.retry_failed,
        "force": args.force,
        "verify_content": args.verify_content,
        "quiet": args.quiet,
    }
    if isinstance(data.get("workers"), dict) and flags["workers"]:
        flags["workers"] = {**data["workers"], **flags["workers"]}
    data.update({k: v for k, v in flags.items() if v is not None})
    return ProcessConfig.from_mapping(data)


def _split_columns(values: list[str] | None) -> list[str] | None:
    """``--columns a,b --columns c`` -> [a, b, c]."""
    if not values:
        return None
    return [c.strip() for v in values for c in v.split(",") if c.strip()]


def _delimiter(value: str | None) -> str | None:
    """``\\t`` and ``tab`` mean a tab (a real tab is hard to type in a shell)."""
    return "\t" if value in ("\\t", "tab", "TAB") else value


def _process(args: argparse.Namespace) -> int:
    warm_up(args.backend, args.config)
    from .console import print_summary
    from .process import run_process

    cfg = _config(args)
    result = run_process(cfg)
    print_summary(result, quiet=cfg.quiet)
    if not cfg.quiet:
        groups = result.collected.get("near_duplicates", {}).get("groups", [])
        if groups:
            log.info("near-duplicate groups: %d (listed in summary.json)", len(groups))
    return result.exit_code


def _profile(args: argparse.Namespace) -> int:
    warm_up(args.backend, args.config)
    import dataclasses
    import tempfile

    from .console import print_profile
    from .process import run_process

    cfg = _config(args)
    with tempfile.TemporaryDirectory(prefix="pixpipe-profile-") as tmp:
        cfg = dataclasses.replace(cfg, output=tmp, force=True, retry_failed=False)
        result = run_process(cfg, limit=args.sample)
    print_profile(result)
    return 0 if result.error is None else 3


def _add_process(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "process",
        help="make thumbnails and statistics for every image in input folders",
        description="Walk INPUTS, write resized images under OUTPUT/<size>/ mirroring the input "
        "tree, and record one line per input in OUTPUT/manifest.jsonl. Re-running into the same "
        "OUTPUT resumes. Options may come from --config run.toml (same names, flags win).",
    )
    _add_options(p)
    p.set_defaults(func=_process)
    prof: argparse.ArgumentParser = sub.add_parser(
        "profile",
        help="run a short sample of the inputs and print only the stage profile and advice",
        description="Process the first --sample inputs into a temporary folder (discarded) and "
        "print each stage's figures, the bottleneck and a verdict per stage: I/O-bound, "
        "CPU-bound in Python (use processes), CPU-bound in C that releases the GIL (threads "
        "scale), or starved — with the workers that would balance the line.",
    )
    _add_options(prof)
    prof.add_argument("--sample", type=int, default=100, help="inputs to run (default 100)")
    prof.set_defaults(func=_profile)


def _add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="*", type=Path, help="input folders (or files)")
    p.add_argument("--output", "-o", type=Path, default=None, help="output folder (default: out)")
    p.add_argument("--config", type=Path, help="TOML file with any of these options")
    p.add_argument(
        "--size",
        action="append",
        default=None,
        help="max side (512) or box (640x480); repeat for several sizes (default 512)",
    )
    p.add_argument("--mode", choices=["fit", "fill", "pad", "exact"], default=None)
    p.add_argument(
        "--upscale",
        action="store_true",
        default=None,
        help="enlarge images smaller than the box (off by default)",
    )
    p.add_argument("--format", choices=["keep", "jpeg", "png", "webp"], default=None)
    p.add_argument("--quality", type=int, default=None, help="JPEG/WebP quality (default 85)")
    p.add_argument(
        "--workers",
        action="append",
        default=None,
        help="N (resize processes), stage=N[,stage=N] for download, read, resize, write, or "
        "auto: start small and size each stage from measurements (numbers become caps)",
    )
    p.add_argument("--include", action="append", default=None, help="only paths matching GLOB")
    p.add_argument("--exclude", action="append", default=None, help="skip paths matching GLOB")
    p.add_argument(
        "--allow-truncated",
        action="store_true",
        default=None,
        help="decode truncated images (missing part grey) instead of failing them",
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        help="refuse images whose header declares more pixels (default 100000000)",
    )
    p.add_argument("--max-file-size", default=None, help="read size cap, e.g. 200MB")
    p.add_argument("--timeout", type=float, default=None, help="per-item timeout in s (120)")
    p.add_argument(
        "--retry-failed",
        action="store_true",
        default=None,
        help="redo only the inputs that failed in earlier runs",
    )
    p.add_argument("--force", action="store_true", default=None, help="redo everything")
    p.add_argument(
        "--verify-content",
        action="store_true",
        default=None,
        help="resume: compare a SHA-256 of each input file too, not only its size and mtime "
        "(reads every input once more)",
    )
    p.add_argument(
        "--quiet", "-q", action="store_true", default=None, help="no progress bars, no summary"
    )
    _add_download_options(p.add_argument_group("downloads (URL lists)"))
    _add_data_options(p.add_argument_group("numeric data files (.npy, .npz, .csv, .tsv)"))
    _add_backend_options(p.add_argument_group("beyond one machine"))
    p.add_argument("--verbose", "-v", action="store_true")


def _add_data_options(d: Any) -> None:
    d.add_argument(
        "--chunk-size",
        default=None,
        help="split data files into parts of this size, crunched in parallel (64MB; 0: never)",
    )
    d.add_argument(
        "--columns",
        action="append",
        default=None,
        metavar="A,B",
        help="CSV: crunch only these columns (default: every numeric column)",
    )
    d.add_argument(
        "--delimiter",
        default=None,
        help="CSV field separator (default: tab for .tsv, else sniffed from the header); \\t = tab",
    )
    d.add_argument("--bins", type=int, default=None, help="histogram bins, at most (64)")


def _add_download_options(d: Any) -> None:
    d.add_argument(
        "--urls",
        action="append",
        type=Path,
        default=None,
        help="URL list: text (one a line), .csv/.tsv or .jsonl with a url column, "
        "optionally .gz; repeatable",
    )
    d.add_argument(
        "--allow-private-hosts",
        action="store_true",
        default=None,
        help="allow hosts on loopback/private/link-local addresses (local servers)",
    )
    d.add_argument("--connect-timeout", type=float, default=None, help="seconds (10)")
    d.add_argument("--read-timeout", type=float, default=None, help="socket read, seconds (30)")
    d.add_argument(
        "--download-timeout", type=float, default=None, help="one attempt in all, seconds (120)"
    )
    d.add_argument("--download-retries", type=int, default=None, help="extra attempts (3)")
    d.add_argument("--max-download-size", default=None, help="byte cap per body (50MiB)")
    d.add_argument("--limit-per-host", type=int, default=None, help="connections per host (8)")
    d.add_argument("--user-agent", default=None)


def _add_backend_options(b: Any) -> None:
    b.add_argument(
        "--backend",
        choices=["local", "dask"],
        default=None,
        help="where stages run: this machine (default) or a Dask cluster",
    )
    b.add_argument(
        "--scheduler",
        default=None,
        help="Dask scheduler address (tcp://host:8786); without it --backend dask "
        "starts a LocalCluster sized to this machine",
    )
    b.add_argument("--shard-size", type=int, default=None, help="inputs per Dask task (256)")


def _demo(args: argparse.Namespace) -> int:
    from .console import print_summary
    from .demo import demo_pipeline, walk_files

    pipe = demo_pipeline(args.workers, args.delay)
    result = pipe.run(
        walk_files(args.inputs), output=args.output, progress=False if args.quiet else None
    )
    print_summary(result, quiet=args.quiet)
    return result.exit_code


def _add_demo(sub: Any) -> None:
    demo = sub.add_parser("demo", help="engine demo: size and SHA-256 of every file in INPUTS")
    demo.add_argument("inputs", nargs="+", type=Path)
    demo.add_argument("--output", "-o", type=Path, default=Path("out/demo"))
    demo.add_argument("--workers", type=int, default=None)
    demo.add_argument("--delay", type=float, default=0.0, help="seconds of simulated work per file")
    demo.add_argument("--quiet", "-q", action="store_true")
    demo.set_defaults(func=_demo)


#: command name -> function adding it to the CLI's sub-parsers
COMMANDS: dict[str, Callable[[Any], None]] = {
    "demo": _add_demo,
    "process": _add_process,  # adds "profile" too
}


def add_commands(sub: Any) -> None:
    for add in COMMANDS.values():
        add(sub)
