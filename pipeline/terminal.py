"""The terminal that went away: SIGHUP after an ssh session dropped or a terminal window closed.

From the hang-up on, every write to that terminal fails (``EIO``): the next progress bar, log
line or summary would raise in whatever printed it, and nobody is left to read it anyway.
:func:`let_go_of_lost_terminal` points standard output and error at ``/dev/null`` when they were
that terminal, so the run can stop as on Ctrl-C and write its ledger, manifest and summary.
Only the standard library: ``python -m pipeline`` imports this before its warm-up.
"""

from __future__ import annotations

import os
import stat

__all__ = ["let_go_of_lost_terminal", "to_devnull"]


def let_go_of_lost_terminal() -> list[int]:
    """Point file descriptors 1 and 2 at ``/dev/null`` where they are a terminal that no longer
    answers as one (hung up: a character device for which ``isatty`` is now false). Output sent
    to a file, a pipe or a terminal still there is left as it is. Returns the descriptors moved.
    """
    moved: list[int] = []
    for fd in (1, 2):
        try:
            mode = os.fstat(fd).st_mode
        except OSError:  # closed
            continue
        if not stat.S_ISCHR(mode) or os.isatty(fd):
            continue
        to_devnull(fd)
        moved.append(fd)
    return moved


def to_devnull(fd: int) -> None:
    """Point file descriptor ``fd`` at ``/dev/null``: what is written to it from now on (and
    what its buffers still hold) goes nowhere, without an error."""
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, fd)
    finally:
        os.close(null)
