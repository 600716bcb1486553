"""Long runs: ``process`` over 10k, 100k and 1M tiny images (``--quick``: 2k, 10k, 20k).

Each size runs through the real CLI (``python -m pipeline process <tree> --output <out>
--quiet``, a fresh output folder each time) and the table shows, per size:

* **wall per item** (µs): the subprocess's wall time over the number of files;
* **parent peak RSS** (MiB): the parent's ``VmHWM`` (its peak resident set) read from
  ``/proc/<pid>/status`` every :data:`POLL` seconds until it exits (a high-water mark: one read
  between the peak and the exit is enough; at 0.1 s the reads missed the end-of-run peak of a
  10k run, whose end lasts 0.2 s. ``ru_maxrss`` of :func:`os.wait4` is no substitute: it is
  the largest of the parent's and its reaped children's, and the near-duplicate grouping of a
  1M run, a child, peaks higher than the parent);
* **RSS at the last item** (MiB): the parent's peak RSS up to the end of the run's last item
  (the latest ``finished`` time of the manifest): the run itself, before the end-of-run work
  (manifest, tables, near duplicates, report) adds its own;
* **parent CPU per item** (µs): the parent's user + system time (``/proc/<pid>/stat``, read once
  it has exited, before it is reaped: :func:`bench.procstat.own_cpu`) over the number of files;
* **end of run** (% of the wall time): from the end of the run's last item (the latest
  ``finished`` time in ``manifest.jsonl``) to the exit of the process: the ledger's last
  commit, the manifest, the tables, the summary, the report, the shutdown;

and the ratios of each size's figures to the smallest size's (linear: wall per item ratio near
1.00; flat: RSS ratio near 1.00).

The inputs: 64x64 JPEGs, every one distinct (a random 9x8 grid of grey levels per channel,
scaled up: distinct difference hashes, so no near-duplicate groups that a real set would not
have), generated once into ``bench/.data/longrun/pool`` (folders of 1,000 files) and cached;
each size's tree is hard links to the first files of the pool. Generating 1M files takes a few
minutes and 4 GB of disk (another 4 GB for the outputs while a run goes). In a git worktree,
the pool is the main checkout's (:func:`pool_folder`): generated once for every worktree;
``LONGRUN_POOL`` in the environment names another folder.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.procstat import own_cpu

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "bench" / ".data" / "longrun"


def pool_folder(repo: Path = REPO) -> Path:
    """``LONGRUN_POOL``, else the pool of the main checkout when ``repo`` is a git worktree
    (its ``.git`` is a file, ``gitdir: <main>/.git/worktrees/<name>``), else ``DATA/pool``."""
    if os.environ.get("LONGRUN_POOL"):
        return Path(os.environ["LONGRUN_POOL"])
    git = repo / ".git"
    if git.is_file():
        head, _, gitdir = git.read_text(encoding="utf-8").partition(":")
        common = Path(gitdir.strip()).parent.parent  # <main>/.git
        if head.strip() == "gitdir" and common.name == ".git":
            return common.parent / DATA.relative_to(REPO) / "pool"
    return DATA / "pool"


POOL = pool_folder()
PER_DIR = 1000
SIDE = 64
POLL = 0.01  # s between two reads of the parent's VmHWM (and CPU): ~0.3% of a core
SIZES = (10_000, 100_000, 1_000_000)
QUICK_SIZES = (2_000, 10_000, 20_000)
X = "\N{MULTIPLICATION SIGN}"  # of the ratio columns


def _encode(rng: object, n: int) -> list[bytes]:
    import numpy as np
    from PIL import Image

    assert isinstance(rng, np.random.Generator)
    out = []
    for _ in range(n):
        grid = rng.integers(0, 256, (3, 8, 9), dtype=np.uint8)
        im = Image.fromarray(np.moveaxis(grid, 0, -1), "RGB").resize((SIDE, SIDE), Image.BILINEAR)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def _pool_dir(i: int) -> Path:
    return POOL / f"d{i // PER_DIR:04d}"


def ensure_pool(n: int) -> None:
    """At least ``n`` distinct files in the pool (folders are filled whole, in order)."""
    import numpy as np

    dirs = (n + PER_DIR - 1) // PER_DIR
    for d in range(dirs):
        folder = POOL / f"d{d:04d}"
        done = folder / ".complete"
        if done.exists():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(d)
        for j, data in enumerate(_encode(rng, PER_DIR)):
            (folder / f"{d * PER_DIR + j:07d}.jpg").write_bytes(data)
        done.touch()


def ensure_tree(n: int) -> Path:
    """``DATA/n<n>``: hard links to the first ``n`` files of the pool, in folders of 1,000."""
    tree = DATA / f"n{n}"
    marker = DATA / f".n{n}.complete"
    if marker.exists():
        return tree
    ensure_pool(n)
    for i in range(0, n, PER_DIR):
        src, dst = _pool_dir(i), tree / f"d{i // PER_DIR:04d}"
        dst.mkdir(parents=True, exist_ok=True)
        for j in range(i, min(n, i + PER_DIR)):
            name = f"{j:07d}.jpg"
            if not (dst / name).exists():
                os.link(src / name, dst / name)
    marker.touch()
    return tree


@dataclass(frozen=True)
class Point:
    n: int
    wall: float  # s
    peak_rss: int  # bytes, the parent's VmHWM
    end: float  # s, from the last record's commit to the exit
    exit_code: int
    parent_cpu: float = 0.0  # s, user + system of the parent, its whole life
    run_rss: int = 0  # bytes, the parent's VmHWM at the end of the last item

    @property
    def per_item(self) -> float:
        return self.wall / self.n

    @property
    def end_share(self) -> float:
        return self.end / self.wall


def _hwm(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _last_finished(manifest: Path) -> float:
    """The latest ``finished`` time of the manifest's records: when the run's last item ended
    (the same for any version of the product, unlike a timing the product reports)."""
    latest = 0.0
    mark = b'"finished": '
    with open(manifest, "rb") as fh:
        for line in fh:
            at = line.find(mark)
            if at >= 0:
                end = line.find(b",", at)
                latest = max(latest, float(line[at + len(mark) : end if end >= 0 else -2]))
    return latest


def command(tree: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "pipeline", "process", str(tree), "--output", str(out), "--quiet"]


def run_once(n: int, repo: Path = REPO) -> Point:
    """One run of ``process`` (the code in ``repo``) over the ``n``-file tree into a fresh
    output folder."""
    tree = ensure_tree(n)
    out = DATA / f"out-{n}"
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(repo)}
    started = time.perf_counter()
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(
            command(tree, out), cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=errors
        )
        peak = [0]
        samples: list[tuple[float, int]] = []  # (time, VmHWM so far)
        exited_now = threading.Event()  # not proc.poll(): it would reap the exited process

        def watch() -> None:
            while not exited_now.is_set():
                peak[0] = max(peak[0], _hwm(proc.pid))
                samples.append((time.time(), peak[0]))
                time.sleep(POLL)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped yet
        exited_now.set()
        wall = time.perf_counter() - started
        exited = dt.datetime.now(dt.UTC)
        cpu = own_cpu(proc.pid)  # its whole life, read before it is reaped
        proc.wait()
        watcher.join()
        errors.seek(0)
        err = errors.read()
    if proc.returncode not in (0, 1):
        raise RuntimeError(
            f"process exited {proc.returncode}: {err.decode(errors='replace')[-2000:]}"
        )
    finished = _last_finished(out / "manifest.jsonl")
    end = (exited - dt.datetime.fromtimestamp(finished, dt.UTC)).total_seconds()
    run_rss = max((hwm for at, hwm in samples if at <= finished), default=0)
    shutil.rmtree(out, ignore_errors=True)
    return Point(n, wall, peak[0], end, proc.returncode, cpu, run_rss)


def table(points: list[Point]) -> list[str]:
    base = points[0]
    rows = [
        "| files | wall | wall/item | ratio | parent peak RSS | ratio | RSS at last item "
        "| ratio | end of run | % of run | parent CPU/item |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        rows.append(
            f"| {p.n:,} | {p.wall:.1f} s | {p.per_item * 1e6:.0f} µs "
            f"| {p.per_item / base.per_item:.2f}{X} | {p.peak_rss / 2**20:.0f} MiB "
            f"| {p.peak_rss / base.peak_rss:.2f}{X} | {p.run_rss / 2**20:.0f} MiB "
            f"| {p.run_rss / max(base.run_rss, 1):.2f}{X} | {p.end:.2f} s "
            f"| {100 * p.end_share:.1f}% | {p.parent_cpu / p.n * 1e6:.0f} µs |"
        )
    return rows


#: Sizes up to this many files run :data:`REPEATS` times and the table shows their medians: a
#: run of 10,000 files lasts 6-8 s, and one such run on this shared machine varied by 30% from
#: run to run (613-782 µs an item in five runs), while every other size's ratios are taken to
#: it. Larger sizes run once (100,000 files: about a minute; 1M: ten).
REPEATED_UP_TO = 20_000
REPEATS = 3


def measure(n: int, repo: Path = REPO, runs: int | None = None) -> Point:
    """``n`` files' figures: the median of ``runs`` runs (default: :data:`REPEATS` up to
    :data:`REPEATED_UP_TO` files, else one)."""
    (point,) = measure_all([n], repo, runs)
    return point


def measure_all(sizes: Sequence[int], repo: Path = REPO, runs: int | None = None) -> list[Point]:
    """Each size's figures (as :func:`measure`), the runs of the repeated sizes spread over the
    whole bench: one each at the start, the next ones between and after the large sizes (round
    after round when all repeat). 10k, 100k, 1M run as 10k, 100k, 10k, 1M, 10k: a machine
    whose load drifts over the bench's ~17 minutes weighs on the base size as on the others
    (three 10k runs in a row at the start gave 518 µs an item one day, against 613-782 before)."""
    want = {n: runs or (REPEATS if n <= REPEATED_UP_TO else 1) for n in sizes}
    large = [n for n in sizes if want[n] == 1]
    got: dict[int, list[Point]] = {n: [] for n in sizes}
    for r in range(max(want.values(), default=0)):
        for n in sizes:
            if want[n] > 1 and len(got[n]) < want[n]:
                got[n].append(run_once(n, repo))
        if r < len(large):
            got[large[r]].append(run_once(large[r], repo))
    for n in large[max(want.values(), default=0) :]:
        got[n].append(run_once(n, repo))
    return [_median(n, got[n]) for n in sizes]


def _median(n: int, got: Sequence[Point]) -> Point:
    return Point(
        n,
        statistics.median(p.wall for p in got),
        int(statistics.median(p.peak_rss for p in got)),
        statistics.median(p.end for p in got),
        max(p.exit_code for p in got),
        statistics.median(p.parent_cpu for p in got),
        int(statistics.median(p.run_rss for p in got)),
    )


def main(*, quick: bool = False, sizes: tuple[int, ...] | None = None) -> str:
    sizes = sizes or (QUICK_SIZES if quick else SIZES)
    for n in sizes:
        ensure_tree(n)
    points = measure_all(sizes, runs=REPEATS if quick else None)
    head = [
        f"## longrun: `process` over tiny 64x64 JPEGs ({', '.join(f'{n:,}' for n in sizes)}), "
        f"median of {REPEATS} runs up to {REPEATED_UP_TO:,} files (all, with --quick), spread "
        f"over the bench, else one; "
        f"`{' '.join(command(Path('<tree>'), Path('<out>'))[1:])}`",
        "",
    ]
    return "\n".join([*head, *table(points), ""])


if __name__ == "__main__":  # python -m bench.longrun [--repo DIR] [SIZE ...]: as main() does
    argv = sys.argv[1:]
    code = Path(argv[1]) if argv[:1] == ["--repo"] else REPO
    sizes = [int(a) for a in (argv[2:] if argv[:1] == ["--repo"] else argv)]
    for n in sizes:
        ensure_tree(n)
    print("\n".join(table(measure_all(sizes, code))))
