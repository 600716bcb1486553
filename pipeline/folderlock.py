"""One run per output folder: an advisory lock on ``<output>/.pipeline/lock``.

The lock is ``fcntl.flock`` on an open file: the kernel drops it when the process holding it
exits, however it exits (SIGKILL, OOM, a power cut ends everything anyway), so a lock left
behind by a dead run is never stale; its file stays and the next run simply takes it. The
file's content (pid, host, run, start time, command line) only serves the message a second run
prints when it finds the folder taken.

Within one process the lock is re-entrant: the ``process`` command holds it around the whole
command (run, tables, report), and the ledger inside the run takes it again (a second
``open()`` + ``flock`` of the same file in the same process would conflict with the first).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from .errors import FolderBusy, LedgerError, if_full

__all__ = ["LOCK_FILE", "hold_folder"]

LOCK_FILE = ".pipeline/lock"

_held: dict[str, list[int]] = {}  # real folder path -> [fd, holders]
_guard = threading.Lock()


@contextlib.contextmanager
def hold_folder(
    folder: str | os.PathLike[str], *, run: str = "", argv: Sequence[str] | None = None
) -> Iterator[None]:
    """Hold ``folder``'s lock for the ``with`` block; :class:`FolderBusy` if a live run has it,
    :class:`LedgerError` if the folder cannot be written. ``argv``: the command line the lock
    file shows (default ``sys.argv``; a caller passes it with secrets left out)."""
    path = Path(folder) / LOCK_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        real = os.path.realpath(path)
        with _guard:
            entry = _held.get(real)
            if entry is not None:
                entry[1] += 1
            else:
                _held[real] = [_take(path, run, sys.argv if argv is None else argv), 1]
    except OSError as exc:
        why = f"{exc}{if_full(exc, started=False)}"
        raise LedgerError(f"cannot lock the output folder {folder}: {why}") from exc
    try:
        yield
    finally:
        with _guard:
            entry = _held[real]
            entry[1] -= 1
            if entry[1] == 0:
                del _held[real]
                os.close(entry[0])  # releases the flock


def _take(path: Path, run: str, argv: Sequence[str]) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = _describe(fd)
        os.close(fd)
        raise FolderBusy(
            f"output folder {path.parent.parent} is in use by another run ({other}); wait for "
            "it to end or choose another output folder"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "run": run,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": [os.fsdecode(a) for a in argv],
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info, ensure_ascii=True).encode() + b"\n", 0)
    return fd


def _describe(fd: int) -> str:
    """What the lock file says of the run that holds it (best effort: it may be mid-write)."""
    try:
        info = json.loads(os.pread(fd, 65536, 0) or b"{}")
    except (OSError, ValueError):
        return "its details are unreadable"
    if not isinstance(info, dict):
        return "its details are unreadable"
    parts = [f"pid {info.get('pid', '?')} on {info.get('host', '?')}"]
    if info.get("run"):
        parts.append(f"run {info['run']}")
    if info.get("started"):
        parts.append(f"started {info['started']}")
    argv = info.get("argv")
    if isinstance(argv, list) and argv:
        parts.append("command: " + " ".join(str(a) for a in argv))
    return ", ".join(parts)
