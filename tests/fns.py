"""Module-level stage functions for the engine tests (process workers import them by name)."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any


def double(x: int) -> int:
    return x * 2


def inc(x: int) -> int:
    return x + 1


async def ainc(x: int) -> int:
    return x + 1


def fail_on_multiple_of_7(x: int) -> int:
    if x % 7 == 0:
        raise ValueError(f"{x} is a multiple of 7")
    return x


def disk_full_from(x: int, first: int, wrapped: str = "odd") -> int:
    """As a stage that writes its outputs would fail once the disk is full, wrapped as a
    stage's own error may be (``raise ... from``): the odd items' errors, or ``"all"``."""
    if x >= first:
        full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"/out/{x}.jpg")
        if x % 2 or wrapped == "all":
            return _reraised(full)
        raise full
    time.sleep(0.002)
    return x


def _reraised(exc: OSError) -> int:
    try:
        raise exc
    except OSError as cause:
        raise RuntimeError(f"cannot write the output: {cause}") from cause


def crash_on(x: int, bad: int, how: str) -> int:
    if x == bad:
        if how == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif how == "exit":
            os._exit(3)
        elif how == "segfault":
            ctypes.string_at(0)
    return x


def always_crash(x: int) -> int:
    os.kill(os.getpid(), signal.SIGKILL)
    return x


def sleep_on(x: int, bad: int, seconds: float) -> int:
    if x == bad:
        time.sleep(seconds)
    return x


async def asleep_on(x: int, bad: int, seconds: float) -> int:
    import asyncio

    if x == bad:
        await asyncio.sleep(seconds)
    return x


def run_tool_on(x: int, bad: int, pids: str) -> int:
    """A stage that runs an external program (``sleep``, standing in for a tool that hangs on
    input ``bad``), and notes the program's pid in the folder ``pids``."""
    import subprocess

    tool = subprocess.Popen(["sleep", "60" if x == bad else "0"])
    Path(pids, f"{x}.pid").write_text(str(tool.pid))
    tool.wait()
    return x


def run_tool_then_crash_on(x: int, bad: int, pids: str) -> int:
    """A stage that starts an external program (``sleep 60``) and, on input ``bad``, dies under
    it (SIGKILL, as the OOM killer would); notes the program's pid in the folder ``pids``."""
    import subprocess

    tool = subprocess.Popen(["sleep", "60" if x == bad else "0"])
    Path(pids, f"{x}.pid").write_text(str(tool.pid))
    if x == bad:
        os.kill(os.getpid(), signal.SIGKILL)
    tool.wait()
    return x


def start_tool_and_leave(x: int, pids: str) -> int:
    """A stage that starts an external program (``sleep 60``, a helper server say) and leaves
    it running; notes its pid in the folder ``pids``."""
    import subprocess

    tool = subprocess.Popen(["sleep", "60"])
    Path(pids, f"{x}.pid").write_text(str(tool.pid))
    return x


def sleep_each(x: Any, seconds: float) -> Any:
    time.sleep(seconds)
    return x


def flaky(x: int, folder: str, failures: int) -> int:
    """Fails ``failures`` times per item (counted in files, so it works across processes)."""
    marker = Path(folder) / f"{x}.count"
    count = int(marker.read_text()) if marker.exists() else 0
    marker.write_text(str(count + 1))
    if count < failures:
        raise ConnectionError(f"flaky {x} attempt {count + 1}")
    return x


def wrong_type_error(x: int) -> int:
    raise KeyError(x)


def unpicklable_result(x: int) -> Any:
    if x == 1:
        return threading.Lock()
    return x


class PickyError(Exception):
    def __init__(self, code: int, detail: str) -> None:  # pickles, but cannot unpickle
        super().__init__(f"picky {code}: {detail}")
        self.code = code


def raise_picky(x: int) -> int:
    if x == 2:
        raise PickyError(x, "custom init")
    return x


def make_lock(x: int) -> Any:
    return (x, threading.Lock())


def use_lock(pair: Any) -> int:
    x, lock = pair
    with lock:
        return int(x) * 10


def pid_of(x: int) -> tuple[int, int]:
    return (x, os.getpid())


def same_pid(pair: tuple[int, int]) -> int:
    x, pid = pair
    if pid != os.getpid():
        raise AssertionError("fused stages ran in different processes")
    return x


def spin(x: int, seconds: float) -> int:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass
    return x


def noop(x: Any) -> Any:
    return x


async def anoop(x: Any) -> Any:
    return x


def affine(x: int, a: int, b: int) -> int:
    return a * x + b


def fail_if(x: int, m: int, r: int) -> int:
    if x % m == r:
        raise ValueError(f"{x} % {m} == {r}")
    return x


async def aaffine(x: int, a: int, b: int) -> int:
    return a * x + b


async def afail_if(x: int, m: int, r: int) -> int:
    return fail_if(x, m, r)


class Session:
    """A stand-in for a client session: counts how often it is opened and closed."""

    opened = 0
    closed = 0

    async def __aenter__(self) -> Session:
        Session.opened += 1
        return self

    async def __aexit__(self, *exc: object) -> None:
        Session.closed += 1


async def with_session(x: int, *, session: Session) -> int:
    assert isinstance(session, Session)
    return x + 100


def py_spin(x: Any, seconds: float) -> Any:
    """Pure-Python work: holds the GIL the whole time."""
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        n += 1
    return x


def c_spin(x: Any, seconds: float) -> Any:
    """Work in C that releases the GIL (hashing large buffers; numpy ufuncs behave alike)."""
    import hashlib

    data = b"\x00" * (1 << 20)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        hashlib.sha256(data).digest()
    return x


def np_spin(x: Any, seconds: float) -> Any:
    """numpy work in C: large element-wise ufuncs release the GIL."""
    import numpy as np

    a = np.ones(1 << 20)
    out = np.empty_like(a)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        np.multiply(a, 1.0001, out=out)
        np.sqrt(out, out=out)
    return x


# -- split / join (pipeline.split) -------------------------------------------------------------


def split_range(n: int, parts: int) -> Any:
    """Split ``n`` into ``parts`` ranges [lo, hi) whose sums ``sum_parts`` adds up again."""
    from pipeline import Split

    step = max(1, -(-n // max(parts, 1)))
    return Split([(lo, min(n, lo + step)) for lo in range(0, n, step)], sum_parts)


def split_lazily(n: int, parts: int, fail_at: int = -1) -> Any:
    """As ``split_range``, with the parts drawn from a generator (that may raise at ``fail_at``)."""
    from pipeline import Split

    def gen() -> Any:
        step = max(1, -(-n // max(parts, 1)))
        for i, lo in enumerate(range(0, n, step)):
            if i == fail_at:
                raise OSError(f"cannot plan part {i}")
            yield (lo, min(n, lo + step))

    return Split(gen(), sum_parts)


def range_sum(bounds: tuple[int, int]) -> int:
    lo, hi = bounds
    return sum(range(lo, hi))


def range_sum_pid(bounds: tuple[int, int], folder: str, workers: int) -> tuple[int, int]:
    """``range_sum`` and the worker's pid. A worker's first part waits until ``workers``
    processes have each taken one (a file per pid in ``folder``): the parts cannot all go to
    whichever worker happened to be up first, however slowly the others start."""
    Path(folder, str(os.getpid())).touch()
    deadline = time.monotonic() + 60
    while len(os.listdir(folder)) < workers:
        if time.monotonic() > deadline:
            met = len(os.listdir(folder))
            raise TimeoutError(f"only {met} of {workers} workers took a part in 60 s")
        time.sleep(0.005)  # a poll interval
    return range_sum(bounds), os.getpid()


def range_sum_crash_at(bounds: tuple[int, int], bad: int) -> int:
    if bounds[0] == bad:
        os.kill(os.getpid(), signal.SIGKILL)
    return range_sum(bounds)


def range_sum_fail_at(bounds: tuple[int, int], bad: int) -> int:
    if bounds[0] == bad:
        raise ValueError(f"bad part starting at {bad}")
    return range_sum(bounds)


def sum_parts(values: list[Any]) -> int:
    return sum(v[0] if isinstance(v, tuple) else v for v in values)


def pids_of_parts(values: list[tuple[int, int]]) -> list[int]:
    return sorted({pid for _, pid in values})


def bad_merge(values: list[Any]) -> Any:
    raise ArithmeticError(f"cannot merge {len(values)} parts")


def split_with_bad_merge(n: int) -> Any:
    from pipeline import Split

    return Split([(0, n)], bad_merge)


def split_again(bounds: tuple[int, int]) -> Any:
    return split_range(bounds[1] - bounds[0], 2)


def digest(data: bytes) -> tuple[int, str]:
    return len(data), hashlib.sha256(data).hexdigest()


def digest_crash_on(data: bytes, bad: int) -> tuple[int, str]:
    if len(data) == bad:
        os.kill(os.getpid(), signal.SIGKILL)
    return digest(data)


def pace_then_crash_on(x: int, bad: int) -> tuple[int, int]:
    """Each item takes 20 ms (so the next batch is queued in the worker); ``bad`` is SIGKILLed."""
    time.sleep(0.02)
    if x == bad:
        os.kill(os.getpid(), signal.SIGKILL)
    return x, os.getpid()


def fault_churn(x: Any, rounds: int = 6) -> int:
    """Minor page faults over rounds 2.. of: four 3 MB buffers touched, then all freed. With
    glibc's defaults the freed top of the heap is trimmed every round, and faulted in again."""
    import resource

    before = 0
    for r in range(rounds):
        if r == 1:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        bufs = [bytearray(3 * 2**20) for _ in range(4)]
        del bufs
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def size_of(data: bytes) -> int:
    return len(data)


def exit_on(x: int, bad: int) -> int:
    if x == bad:
        sys.exit(3)  # a library that ends the program on an error
    return x


async def aexit_on(x: int, bad: int) -> int:
    return exit_on(x, bad)
