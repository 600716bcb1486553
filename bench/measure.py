"""Run a command as a subprocess and measure its whole process tree: wall time, CPU time and the
peak of the summed resident set size.

* **wall**: from ``Popen`` to the end of ``wait`` (interpreter start-up included);
* **CPU**: user + system seconds of the command and every descendant it waited for, from
  ``getrusage(RUSAGE_CHILDREN)`` before and after (exact, unlike sampling; a grandchild nobody
  waits for would be missed — pool workers are waited for by their pool);
* **peak RSS**: a thread samples the tree every :data:`INTERVAL` seconds with psutil (the command
  and all its descendants, recursively) and keeps the largest sum of their RSS. Pages shared
  between the processes (the interpreter's libraries, copy-on-write memory) count once per
  process, as they would in ``ps``; a peak shorter than the interval can be missed;
* **peak PSS**: the same for the proportional set size (shared pages split between the processes
  that map them: the tree's real footprint), sampled every :data:`PSS_EVERY`-th time only, as
  reading ``smaps_rollup`` costs ~0.5 ms per process.

The sampler runs in the bench's own process, not in the measured tree, and costs the same for
every command measured.
"""

from __future__ import annotations

import contextlib
import resource
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

INTERVAL = 0.05  # s between samples of the process tree: ~1 ms of CPU each on a quiet machine
PSS_EVERY = 5  # PSS at every 5th sample (0.25 s): a few % of a core for a tree of 5 processes


@dataclass(frozen=True)
class Measured:
    returncode: int
    wall: float  # s
    cpu: float  # s, user + system of the whole tree
    peak_rss: int  # bytes, largest sum over the tree at one sample
    peak_pss: int  # bytes, the same for PSS (sampled less often)
    peak_procs: int  # most processes seen at one sample


def _tree_memory(root: psutil.Process, *, pss: bool) -> tuple[int, int, int]:
    """(summed RSS, summed PSS or 0, process count) of ``root`` and its descendants; vanished
    processes count 0."""
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0, 0, 0
    rss = proportional = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            if pss:
                full = proc.memory_full_info()
                rss += full.rss
                proportional += full.pss
            else:
                rss += proc.memory_info().rss
    return rss, proportional, len(procs)


class _Sampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(name=f"rss-sampler-{pid}", daemon=True)
        self.pid = pid
        self.stop = threading.Event()
        self.peak = 0
        self.peak_pss = 0
        self.procs = 0

    def run(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.Error:  # already gone: nothing to sample
            return
        tick = 0
        while True:
            rss, pss, procs = _tree_memory(root, pss=tick % PSS_EVERY == 0)
            tick += 1
            self.peak = max(self.peak, rss)
            self.peak_pss = max(self.peak_pss, pss)
            self.procs = max(self.procs, procs)
            if self.stop.wait(INTERVAL):
                return


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(
    cmd: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    log: Path,
    timeout: float = 1800.0,
) -> Measured:
    """Run ``cmd`` (stdout and stderr into ``log``) and measure its process tree."""
    cpu_before = _children_cpu()
    with log.open("wb") as sink:
        started = time.perf_counter()
        proc = subprocess.Popen(list(cmd), cwd=cwd, env=dict(env), stdout=sink, stderr=sink)
        sampler = _Sampler(proc.pid)
        sampler.start()
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        wall = time.perf_counter() - started
        sampler.stop.set()
        sampler.join()
    cpu = _children_cpu() - cpu_before
    return Measured(code, wall, cpu, sampler.peak, sampler.peak_pss, sampler.procs)
