"""The explicit registry: command names to the functions that add them to the CLI.

Until the image stages land, ``process`` runs the engine's demo chain (sizes and SHA-256 of
every file) so that ``make process`` works from the first commit.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["add_commands"]


def _process(args: argparse.Namespace) -> int:
    from pipeline.cli import report
    from pipeline.demo import demo_pipeline, walk_files

    result = demo_pipeline(args.workers).run(
        walk_files(args.inputs), output=args.output, progress=False if args.quiet else None
    )
    report(result, quiet=args.quiet)
    return result.exit_code


def add_commands(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("process", help="process input folders")
    p.add_argument("inputs", nargs="+", type=Path)
    p.add_argument("--output", "-o", type=Path, default=Path("out"))
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--quiet", "-q", action="store_true")
    p.set_defaults(func=_process)
