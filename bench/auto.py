"""``--workers auto`` against a sweep of fixed worker settings and the defaults, same photos.

Each configuration is one ``python -m pipeline process`` subprocess over the same JPEGs (start-up
included, ``--force`` so every run does all the work), median of N runs.
"""

from __future__ import annotations

import itertools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import photos
from bench.images import _subset_folder

ROOT = Path(__file__).resolve().parents[1]


def _run(folder: Path, workers: list[str]) -> float:
    out = Path(tempfile.mkdtemp(prefix="bench-auto-"))
    try:
        started = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pipeline",
                "process",
                str(folder),
                "--output",
                str(out),
                "--quiet",
                "--force",
                *[arg for w in workers for arg in ("--workers", w)],
            ],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        return time.perf_counter() - started
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main(*, quick: bool = False) -> str:
    count, repeats = (40, 1) if quick else (200, 3)
    files = photos.ensure(["2mp"], verbose=False)["2mp"][:count]
    folder = _subset_folder("2mp", files)
    cores = os.cpu_count() or 1
    sweep = {
        f"resize={r},read={rd},write={w}": [f"resize={r},read={rd},write={w}"]
        for r, rd, w in itertools.product(sorted({1, cores}), (1, 8), (1, 4))
    }
    configs = {"defaults": [], **sweep, "auto": ["auto"]}
    samples: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(repeats):  # interleave configurations so drift hits them alike
        for name, workers in configs.items():
            samples[name].append(_run(folder, workers))
    med = {name: statistics.median(v) for name, v in samples.items()}
    best_name = min(sweep, key=lambda n: med[n])
    best = count / med[best_name]
    lines = [
        f"## --workers auto vs fixed settings: {count} JPEGs of 2 MP, fit 512, {cores} cores, "
        f"median of {repeats} run(s), start-up included",
        "",
        "| configuration | images/s | x best fixed |",
        "|---|---:|---:|",
    ]
    for name in configs:
        rate = count / med[name]
        mark = " (best fixed)" if name == best_name else ""
        lines.append(f"| {name}{mark} | {rate:.2f} | {rate / best:.2f} |")
    lines += ["", "Target: auto within 10% of the best fixed setting (>= 0.90x).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(main(quick="--quick" in sys.argv))
