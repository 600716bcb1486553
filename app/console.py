"""What the command line prints: the one module of the application that writes to the terminal.

The end-of-run summary goes to stderr (stdout stays free for a command's own output); the
``profile`` command's stage table goes to stdout, since it is that command's result.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline import RunResult

__all__ = ["print_profile", "print_summary"]


def print_summary(result: RunResult, *, quiet: bool) -> None:
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


def print_profile(result: RunResult) -> None:
    """``profile``: the sample's rate, the stage table, the bottleneck and the advice, on stdout."""
    lines = [
        f"profile of {result.seen} input(s) in {result.duration:.2f} s "
        f"({result.seen / max(result.duration, 1e-9):.1f} inputs/s, outputs discarded)",
        result.table(),
        f"bottleneck: {result.bottleneck}",
        "advice:",
        result.advice_text(),
    ]
    print("\n".join(lines))
