"""Engine overhead: no-op items through async -> thread -> process vs a bare process pool,
the same with a ledger (an output folder: every item a record in the journal) and resumed
(every item settled by its earlier record, none worked on), and peak RSS of the whole chain
for a small and a large number of items.

The ledger rows catch a cap of the record path that the run without an output folder cannot
show: until 641220d the ledger writer let at most 512 records through every 0.1 s, 5,120
items/s whatever the work.

Each measurement runs in a fresh subprocess so peak RSS (ru_maxrss) belongs to that run alone.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from pipeline import Pipeline, stage


def noop(x: Any) -> Any:
    return x


async def anoop(x: Any) -> Any:
    return x


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _chain() -> Pipeline:
    workers = os.cpu_count() or 1
    return Pipeline(
        [
            stage(anoop, kind="async", workers=16, name="async"),
            stage(noop, kind="thread", workers=4, name="thread"),
            stage(noop, kind="process", workers=workers, name="process"),
        ]
    )


def run_engine(n: int, *, ledger: bool = False, resumed: bool = False) -> dict[str, float]:
    pipe = _chain()
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp:
        output = Path(tmp) if ledger or resumed else None
        if resumed:  # the first run, not timed: every item done, to be reused
            pipe.run(range(n), output=output, progress=False)
        started = time.perf_counter()
        result = pipe.run(range(n), output=output, progress=False)
        wall = time.perf_counter() - started
    done = result.counts.get("reused" if resumed else "ok", 0)
    if done != n:
        raise RuntimeError(f"{done} of {n} items {'reused' if resumed else 'ok'}: {result.counts}")
    return {"items_per_s": n / wall, "wall": wall, "rss_mb": _peak_rss_mb()}


def run_bare(n: int) -> dict[str, float]:
    workers = os.cpu_count() or 1
    started = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        count = sum(1 for _ in pool.map(noop, range(n)))
    wall = time.perf_counter() - started
    if count != n:
        raise RuntimeError(f"{count} of {n} items came back")
    return {"items_per_s": n / wall, "wall": wall, "rss_mb": _peak_rss_mb()}


def _measure(what: str, n: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.engine", what, str(n)],
        check=True,
        capture_output=True,
        text=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main(*, quick: bool = False) -> str:
    repeats, n, big, small = (
        (1, 20_000, 100_000, 10_000) if quick else (3, 100_000, 1_000_000, 10_000)
    )
    rate = {}
    for what in ("bare", "engine", "ledger", "resumed"):
        runs = [_measure(what, n) for _ in range(repeats)]
        rate[what] = statistics.median(r["items_per_s"] for r in runs)
    bare = rate["bare"]
    lines = [
        f"## Engine overhead: {n:,} no-op items, median of {repeats} runs, {os.cpu_count()} cores",
        "",
        "| method | items/s | ratio vs bare pool |",
        "|---|---:|---:|",
        f"| bare ProcessPoolExecutor.map | {bare:,.0f} | 1.00 |",
    ]
    for what, label in (
        ("engine", "pipeline async -> thread -> process"),
        ("ledger", "the same, with an output folder (a record per item in the ledger)"),
        ("resumed", "the same, resumed: every item reused from its record"),
    ):
        lines.append(f"| {label} | {rate[what]:,.0f} | {rate[what] / bare:.2f} |")
    lines.append("")
    mem = {k: _measure("engine", k) for k in (small, big)}
    lines += [
        "## Peak RSS of the parent, async -> thread -> process chain",
        "",
        "| items | peak RSS MB | wall s | items/s |",
        "|---:|---:|---:|---:|",
    ]
    for k, r in mem.items():
        lines.append(f"| {k:,} | {r['rss_mb']:.1f} | {r['wall']:.1f} | {r['items_per_s']:,.0f} |")
    growth = mem[big]["rss_mb"] / mem[small]["rss_mb"]
    lines += ["", f"RSS ratio {big:,} / {small:,} items: {growth:.3f}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    what, count = sys.argv[1], int(sys.argv[2])
    if what == "bare":
        print(json.dumps(run_bare(count)))
    else:
        print(json.dumps(run_engine(count, ledger=what == "ledger", resumed=what == "resumed")))
