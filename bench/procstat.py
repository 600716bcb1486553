"""The CPU time of one process, read from ``/proc/<pid>/stat`` (standard library only: the
anchor scripts of :mod:`bench.cost` import it)."""

from __future__ import annotations

import os

__all__ = ["own_cpu"]


def own_cpu(pid: int, default: float = 0.0) -> float:
    """User + system seconds of process ``pid``: all its threads, none of its children. Also of
    a process that has exited and is not reaped yet (``os.waitid`` with ``WNOWAIT``): the
    whole of its life. ``default`` when it cannot be read (reaped, not Linux)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return default
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
