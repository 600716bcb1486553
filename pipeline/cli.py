"""The command line: ``python -m pipeline {process,demo} ...``.

Exit codes: 0 all ok, 1 finished with item failures, 2 usage or definition error, 3 fatal run
error, 130 interrupted. The ``process`` command and its options belong to the ``stages``
package; this module reaches it only through ``stages.registry``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import PipelineError
from .result import RunResult

__all__ = ["main", "report"]

log = logging.getLogger("pipeline")


def setup_logging(quiet: bool, verbose: bool = False) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


def report(result: RunResult, *, quiet: bool) -> None:
    """The end-of-run summary on stderr: counts, then the stage table naming the bottleneck."""
    if quiet:
        return
    counts = ", ".join(f"{k} {v}" for k, v in sorted(result.counts.items())) or "nothing to do"
    lines = [
        "",
        f"run {result.run_id}: {counts} in {result.duration:.2f} s"
        + (" (interrupted)" if result.interrupted else ""),
    ]
    if result.not_started:
        lines.append(f"not started: {result.not_started}")
    if result.stages and any(s.items for s in result.stages):
        lines.append(result.table())
        if result.bottleneck:
            lines.append(f"bottleneck: {result.bottleneck}")
        lines.append("advice:")
        lines.append(result.advice_text())
    if result.output is not None:
        lines.append(f"manifest: {result.output / 'manifest.jsonl'}")
    print("\n".join(lines), file=sys.stderr)


def _demo(args: argparse.Namespace) -> int:
    from .demo import demo_pipeline, walk_files

    pipe = demo_pipeline(args.workers, args.delay)
    result = pipe.run(
        walk_files(args.inputs), output=args.output, progress=False if args.quiet else None
    )
    report(result, quiet=args.quiet)
    return result.exit_code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline",
        description="A staged batch pipeline: downloads, reads, decode/resize/statistics in "
        "process workers, atomic writes, and a ledger that records every input.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="engine demo: size and SHA-256 of every file in INPUTS")
    demo.add_argument("inputs", nargs="+", type=Path)
    demo.add_argument("--output", "-o", type=Path, default=Path("out/demo"))
    demo.add_argument("--workers", type=int, default=None)
    demo.add_argument("--delay", type=float, default=0.0, help="seconds of simulated work per file")
    demo.add_argument("--quiet", "-q", action="store_true")
    demo.set_defaults(func=_demo)
    try:
        from stages.registry import add_commands
    except ImportError:  # the engine alone: only the demo command
        pass
    else:
        add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(getattr(args, "quiet", False), getattr(args, "verbose", False))
    try:
        code: int = args.func(args)
    except PipelineError as exc:
        log.error("%s: %s", type(exc).__name__, exc)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return code
