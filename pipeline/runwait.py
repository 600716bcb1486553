"""Time a thread spent waiting for a core: the run delay, from ``/proc/thread-self/schedstat``.

A worker's wall time inside a stage function splits three ways: on a core (its CPU time),
runnable but waiting for a core (the *run delay*: the scheduler's run queue, because other
threads or processes hold the cores), and asleep (I/O, locks, sleeps, the GIL). CPU time alone
cannot tell the last two apart: on a machine busy with other work a computing worker gets a core
only part of the time, and its CPU share falls as if it waited for I/O. The run delay tells them
apart. Linux reports it per thread, in nanoseconds, as the second field of
``/proc/thread-self/schedstat`` (kernels with ``CONFIG_SCHED_INFO``, the default).

:func:`run_delay` keeps one descriptor per thread open and re-reads it with ``os.pread`` (a few
microseconds; the file is regenerated at each read from offset 0). The callers read it once per
batch, not per item (:func:`pipeline.calls.share_run_wait`). Where the file does not exist
(another OS, an old kernel, a sandbox hiding ``/proc``) it returns None, and the figures say
"not measured" instead of 0.
"""

from __future__ import annotations

import os
import threading

__all__ = ["SCHEDSTAT", "run_delay"]

SCHEDSTAT = "/proc/thread-self/schedstat"

_local = threading.local()


class _Schedstat:
    """The calling thread's schedstat file, open; closed when its thread's locals go."""

    __slots__ = ("fd",)

    def __init__(self, path: str) -> None:
        self.fd: int | None = None
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self.fd = None

    def read(self) -> float | None:
        if self.fd is None:
            return None
        try:
            return int(os.pread(self.fd, 128, 0).split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            return None

    def __del__(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def run_delay(path: str = SCHEDSTAT) -> float | None:
    """Seconds the calling thread has spent runnable but waiting for a core since it started,
    or None where the system does not say. Subtract two readings for an interval."""
    stat: _Schedstat | None = getattr(_local, "stat", None)
    if stat is None or getattr(_local, "path", None) != path or _local.pid != os.getpid():
        stat = _local.stat = _Schedstat(path)
        _local.path, _local.pid = path, os.getpid()
    return stat.read()
