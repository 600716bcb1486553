"""Engine overhead: no-op items through async -> thread -> process vs a bare process pool,
and peak RSS of the whole chain for a small and a large number of items.

Each measurement runs in a fresh subprocess so peak RSS (ru_maxrss) belongs to that run alone.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from pipeline import Pipeline, stage


def noop(x: Any) -> Any:
    return x


async def anoop(x: Any) -> Any:
    return x


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_engine(n: int) -> dict[str, float]:
    workers = os.cpu_count() or 1
    pipe = Pipeline(
        [
            stage(anoop, kind="async", workers=16, name="async"),
            stage(noop, kind="thread", workers=4, name="thread"),
            stage(noop, kind="process", workers=workers, name="process"),
        ]
    )
    started = time.perf_counter()
    result = pipe.run(range(n), progress=False)
    wall = time.perf_counter() - started
    if result.ok != n:
        raise RuntimeError(f"{result.ok} of {n} items ok: {result.counts}")
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
    rows = []
    for what in ("bare", "engine"):
        runs = [_measure(what, n) for _ in range(repeats)]
        rows.append((what, statistics.median(r["items_per_s"] for r in runs)))
    bare, eng = rows[0][1], rows[1][1]
    lines = [
        f"## Engine overhead: {n:,} no-op items, median of {repeats} runs, {os.cpu_count()} cores",
        "",
        "| method | items/s | ratio vs bare pool |",
        "|---|---:|---:|",
        f"| bare ProcessPoolExecutor.map | {bare:,.0f} | 1.00 |",
        f"| pipeline async -> thread -> process | {eng:,.0f} | {eng / bare:.2f} |",
        "",
    ]
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
    fn = run_engine if what == "engine" else run_bare
    print(json.dumps(fn(count)))
