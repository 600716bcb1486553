"""The Dask backend on one machine: ``--backend dask`` (a LocalCluster) vs the local backend.

Inputs: photo-like JPEGs from :mod:`bench.photos`, hard-linked under ``bench/.data/dask/``:
60 photos (20 of 12 MP, 40 of 2 MP) and, to see the fixed costs amortised, all 300 of the set
(100 of 12 MP, 200 of 2 MP); quick: 18 photos. Every measurement runs the ``process`` pipeline
(:func:`app.process.build_pipeline`: read -> resize -> write, thumbnails of 512 px) in a fresh
subprocess with ``force``:

* **local**: the local backend (a process pool with one worker per core);
* **dask**: :class:`~pipeline.backends.dask.DaskBackend` starting a LocalCluster of 2 one-thread
  worker processes, shard size 8; its start-up and shutdown are inside the timed run;
* **dask, MALLOC_TRIM_THRESHOLD_=65536**: the same, with Dask's default worker environment
  (``distributed.nanny.pre-spawn-environ``) instead of the backend's choice (unset).

Wall time is ``Pipeline.run`` (the cluster's start and stop included), median over the runs; the
variants rotate from run to run since the machine is shared. "Worker CPU" is the CPU time the
Dask workers spent inside shards (from the backend's summary), the cost the trim setting changes.

A last table isolates the trim setting from Dask's own noise: one process runs a worker's work
(:func:`~pipeline.backends.dask.run_shard` shard after shard) with and without
``MALLOC_TRIM_THRESHOLD_=65536`` in its environment: CPU, minor page faults, peak RSS.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import photos

DATA = photos.DATA.parent / "dask"
REPO = Path(__file__).resolve().parent.parent
SHARD = 8
WORKERS = 2
DASK_DEFAULT_TRIM = 65536

VARIANTS: dict[str, tuple[str, int | None]] = {
    "local": ("local", None),
    "dask": ("dask", None),
    "dask-trim": ("dask", DASK_DEFAULT_TRIM),
}
LABELS = {
    "local": f"local backend (process pool, {WORKERS} workers)",
    "dask": f"dask LocalCluster, {WORKERS} workers, MALLOC_TRIM_THRESHOLD_ unset (chosen)",
    "dask-trim": f"dask LocalCluster, {WORKERS} workers, MALLOC_TRIM_THRESHOLD_=65536 "
    "(Dask's default)",
}


def photo_set(n12: int, n2: int) -> tuple[Path, int, float]:
    """A folder of ``n12`` 12 MP and ``n2`` 2 MP photos: the folder, the count, megapixels."""
    sets = photos.ensure(["12mp", "2mp"])
    chosen = sets["12mp"][:n12] + sets["2mp"][:n2]
    folder = photos.link_folder(DATA / f"photos-{n12}x12-{n2}x2", chosen)
    mp = n12 * photos.SETS["12mp"].megapixels + n2 * photos.SETS["2mp"].megapixels
    return folder, len(chosen), mp


def run_one(variant: str, inputs: str, out: str) -> dict[str, Any]:
    """One timed run of the process pipeline, in this (fresh) process."""
    from app.config import ProcessConfig
    from app.process import build_pipeline
    from pipeline.backends.dask import DaskBackend
    from stages.sources import walk_inputs

    kind, trim = VARIANTS[variant]
    cfg = ProcessConfig.from_mapping(
        {"inputs": [inputs], "output": out, "quiet": True, "workers": {"resize": WORKERS}}
    )
    backend = (
        DaskBackend(shard_size=SHARD, n_workers=WORKERS, malloc_trim_threshold=trim)
        if kind == "dask"
        else None
    )
    started = time.perf_counter()
    result = build_pipeline(cfg).run(
        walk_inputs([inputs]),
        output=out,
        backend=backend,
        force=True,
        progress=False,
        fingerprint=cfg.fingerprint(),
    )
    wall = time.perf_counter() - started
    if result.error is not None or result.failed:
        raise RuntimeError(f"the benchmark run did not succeed: {result.error}, {result.counts}")
    summary: dict[str, Any] = backend.summary() if backend is not None else {}
    workers = summary.get("workers", {}).values()
    return {
        "wall": wall,
        "ok": result.ok,
        "worker_cpu": sum(w["cpu_s"] for w in workers) if workers else None,
        "worker_rss": max(w["peak_rss_mb"] for w in workers) if workers else None,
        "open_s": summary.get("open_s"),
        "startup_s": summary.get("startup_s"),
    }


def shard_cost(inputs: str, out: str) -> dict[str, float]:
    """A Dask worker's own work, in this process: :func:`run_shard` over the photos, shard by
    shard, after a warm-up shard (imports). CPU and minor page faults from ``getrusage``."""
    import resource

    from app.config import ProcessConfig
    from app.process import build_pipeline
    from pipeline import Item
    from pipeline.backends.dask import run_shard
    from stages.sources import walk_inputs

    cfg = ProcessConfig.from_mapping({"inputs": [inputs], "output": out, "quiet": True})
    stages = build_pipeline(cfg).stages
    values = [x.value for x in walk_inputs([inputs]) if isinstance(x, Item)]
    run_shard(stages, values[:2])
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    for i in range(0, len(values), SHARD):
        res = run_shard(stages, values[i : i + SHARD])
        if not all(it.ok for it in res.items):
            raise RuntimeError(f"an item of shard {i // SHARD} failed")
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "wall": time.perf_counter() - started,
        "cpu": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
        "minflt": float(after.ru_minflt - before.ru_minflt),
        "rss": after.ru_maxrss / 1024,
        "n": float(len(values)),
    }


def _trim_table(n12: int, n2: int, repeats: int) -> list[str]:
    """The trim setting alone: one process doing a worker's work, with and without it."""
    inputs, n, mp = photo_set(n12, n2)
    runs: dict[str, list[dict[str, float]]] = {"unset": [], "65536": []}
    for r in range(repeats):
        for trim in ("unset", "65536") if r % 2 == 0 else ("65536", "unset"):
            runs[trim].append(_shard_run(inputs, None if trim == "unset" else 65536))
    lines = [
        f"## MALLOC_TRIM_THRESHOLD_: a worker's work in one process, {n} photos ({mp:.0f} MP), "
        f"shards of {SHARD}, median of {repeats}",
        "",
        "| MALLOC_TRIM_THRESHOLD_ | CPU s | CPU ms/photo | minor page faults | peak RSS MB |",
        "|---|---:|---:|---:|---:|",
    ]
    med = {t: {k: statistics.median(x[k] for x in runs[t]) for k in runs[t][0]} for t in runs}
    for trim, label in (("unset", "unset (chosen)"), ("65536", "65536 (Dask's default)")):
        m = med[trim]
        lines.append(
            f"| {label} | {m['cpu']:.2f} | {1000 * m['cpu'] / n:.1f} | {m['minflt']:,.0f} "
            f"| {m['rss']:.0f} |"
        )
    on, off = med["65536"], med["unset"]
    lines += [
        "",
        f"65536 vs unset: CPU {on['cpu'] / off['cpu']:.2f}x, "
        f"page faults {on['minflt'] / max(off['minflt'], 1):.1f}x, "
        f"peak RSS {on['rss'] / off['rss']:.2f}x.",
        "",
    ]
    return lines


def _shard_run(inputs: Path, trim: int | None) -> dict[str, float]:
    return _in_subprocess("shard", inputs, trim)


def _measure(variant: str, inputs: Path) -> dict[str, Any]:
    return _in_subprocess(variant, inputs, None)


def _in_subprocess(variant: str, inputs: Path, trim: int | None) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter (its own peak RSS, its own malloc settings)."""
    out = DATA / f"out-{variant}"
    shutil.rmtree(out, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
    if trim is not None:
        env["MALLOC_TRIM_THRESHOLD_"] = str(trim)
    done = subprocess.run(
        [sys.executable, "-m", "bench.dask_backend", variant, str(inputs), str(out)],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    shutil.rmtree(out, ignore_errors=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main(*, quick: bool = False) -> str:
    # (12 MP photos, 2 MP photos, variants, repeats)
    plan: list[tuple[int, int, list[str], int]] = (
        [(6, 12, list(VARIANTS), 1)]
        if quick
        else [(20, 40, list(VARIANTS), 3), (100, 200, ["local", "dask"], 3)]
    )
    lines: list[str] = []
    for n12, n2, order, repeats in plan:
        lines += _table(n12, n2, order, repeats)
    lines += _trim_table(*((6, 12, 2) if quick else (20, 40, 5)))
    return "\n".join(lines)


def _table(n12: int, n2: int, order: list[str], repeats: int) -> list[str]:
    inputs, n, mp = photo_set(n12, n2)
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in order}
    for r in range(repeats):
        for v in order[r % len(order) :] + order[: r % len(order)]:
            runs[v].append(_measure(v, inputs))

    def med(v: str, key: str) -> float | None:
        got = [x[key] for x in runs.get(v, []) if x.get(key) is not None]
        return statistics.median(got) if got else None

    local = med("local", "wall") or 1.0
    lines = [
        f"## Dask backend vs local: {n} photos ({mp:.0f} MP), 512 px thumbnails, "
        f"{os.cpu_count()} cores, median of {repeats}",
        "",
        "| backend | wall s | vs local | cluster start-up s | wall without start-up s "
        "| worker CPU s | worker peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for v in order:
        wall, start = med(v, "wall") or 0.0, med(v, "startup_s")
        cpu, rss = med(v, "worker_cpu"), med(v, "worker_rss")
        lines.append(
            f"| {LABELS[v]} | {wall:.2f} | {wall / local:.2f}x | {_f(start)} "
            f"| {_f(wall - start if start is not None else None)} | {_f(cpu)} | {_f(rss, 0)} |"
        )
    lines += [
        "",
        f"Wall time is the whole run, the LocalCluster's start and stop included; shards of "
        f"{SHARD} photos. Target: dask within 1.25x of local.",
    ]
    cpu_on, cpu_off = med("dask-trim", "worker_cpu"), med("dask", "worker_cpu")
    wall_on, wall_off = med("dask-trim", "wall"), med("dask", "wall")
    if cpu_on and cpu_off and wall_on and wall_off:
        lines.append(
            f"MALLOC_TRIM_THRESHOLD_=65536 vs unset: worker CPU {cpu_on / cpu_off:.2f}x, "
            f"wall {wall_on / wall_off:.2f}x."
        )
    lines.append("")
    return lines


def _f(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "shard":
        print(json.dumps(shard_cost(sys.argv[2], sys.argv[3])))
    elif len(sys.argv) == 4:
        print(json.dumps(run_one(sys.argv[1], sys.argv[2], sys.argv[3])))
    else:
        print(main(quick="--quick" in sys.argv))
