"""Atomic file writes: a temporary file beside the target, then a rename over it.

A module of its own (no asyncio, no sqlite) because process workers write outputs with it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["FILE_MODE", "TEMP_PREFIX", "atomic_write_bytes", "atomic_write_text"]

#: Temporary files are ``.pp-XXXXXXXX.tmp`` (16 bytes) whatever the target's name: a name
#: derived from the target (``.<name>.XXXX.tmp``) would exceed the file system's 255-byte name
#: limit for targets near it, and fail a write that the final name allows.
TEMP_PREFIX = ".pp-"


def _read_umask() -> int:
    mask = os.umask(0o022)  # read once, at import (single-threaded), and put back at once
    os.umask(mask)
    return mask


#: mkstemp creates 0600 files; outputs get the usual mode (0666 less the umask) instead
FILE_MODE = 0o666 & ~_read_umask()


def atomic_write_bytes(path: Path, data: bytes, *, fsync: bool = True) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``.

    Readers see the old file or the new one, never half of one. ``fsync`` also makes the new
    content durable across a power loss (the ledger wants that; bulk outputs may skip it).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TEMP_PREFIX, suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
