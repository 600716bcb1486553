"""Near-duplicate grouping (:func:`stages.neardups.near_duplicate_groups`) over many hashes:
time and peak memory.

Inputs, made from a fixed seed: ``n`` random 64-bit hashes (well spread: almost no pair is near)
plus clusters planted among them — one cluster per 200 hashes, each a *chain* of 6 hashes where
each differs from the one before it by 3 bits (so the ends of a chain are up to 15 bits apart:
the case where linking neighbours used to put far-apart images in one group) — and one exact
duplicate per 1,000 hashes.

Each size runs in a fresh subprocess so that its figures are its own: wall time of the call,
peak memory allocated during the call as ``tracemalloc`` sees it (numpy's buffers included; the
input list is built before tracing starts) and the subprocess' peak RSS. Nothing is asserted;
the table is the result.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import tracemalloc
from typing import Any

import numpy as np


def make_items(n: int, seed: int = 20) -> list[tuple[str, str]]:
    rng = np.random.default_rng(seed)
    values = [int(v) for v in rng.integers(0, 2**64, n, dtype=np.uint64)]
    items = [(f"k{i}", f"{v:016x}") for i, v in enumerate(values)]
    for c in range(n // 200):
        value = values[c]
        for step in range(6):
            for bit in rng.choice(64, size=3, replace=False):
                value ^= 1 << int(bit)
            items.append((f"c{c}-{step}", f"{value:016x}"))
    items += [(f"dup{i}", f"{values[i]:016x}") for i in range(0, n, 1000)]
    return items


def measure(n: int) -> dict[str, Any]:
    import resource

    from stages.neardups import near_duplicate_groups

    items = make_items(n)
    tracemalloc.start()
    started = time.perf_counter()
    groups = near_duplicate_groups(items, max_distance=6)
    wall = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "n": len(items),
        "wall": wall,
        "peak_mb": peak / 2**20,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "groups": len(groups),
        "largest": max((len(g) for g in groups), default=0),
    }


def _measure(n: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.dups", str(n)], check=True, capture_output=True, text=True
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main(*, quick: bool = False) -> str:
    sizes = (20_000, 50_000) if quick else (20_000, 200_000)
    lines = [
        "## Near-duplicate groups (max_distance 6), one subprocess per size",
        "",
        "| hashes | wall s | traced peak MB | peak RSS MB | groups | largest group |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for n in sizes:
        r = _measure(n)
        lines.append(
            f"| {r['n']:,} | {r['wall']:.2f} | {r['peak_mb']:.1f} | {r['rss_mb']:.0f} "
            f"| {r['groups']:,} | {r['largest']} |"
        )
    return "\n".join([*lines, ""])


if __name__ == "__main__":
    print(json.dumps(measure(int(sys.argv[1]))))
