"""Atomic file writes: a temporary file beside the target, then a rename over it.

:func:`atomic_write_bytes` writes bytes held in memory; :class:`AtomicFile` is the same for a
file written in pieces (a table streamed row by row), so its content never has to be in memory
whole. A module of its own (no asyncio, no sqlite) because process workers write outputs with it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

__all__ = ["FILE_MODE", "TEMP_PREFIX", "AtomicFile", "atomic_write_bytes", "atomic_write_text"]

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
    with AtomicFile(path, fsync=fsync) as out:
        out.file.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


class AtomicFile:
    """A file written in pieces to a temporary file beside ``path``, then put in place at once.

    Write to :attr:`file` (binary); :meth:`commit` renames the temporary file over ``path``
    (after an ``fsync`` unless ``fsync=False``), :meth:`discard` removes it. As a context
    manager: commit when the block ends normally, discard when it raises. Readers of ``path``
    see the old file or the whole new one, never a part, as with :func:`atomic_write_bytes`.
    """

    def __init__(self, path: Path, *, fsync: bool = True) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(dir=self.path.parent, prefix=TEMP_PREFIX, suffix=".tmp")
        try:
            os.fchmod(fd, FILE_MODE)
            self.file: BinaryIO = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            os.unlink(self._tmp)
            raise
        self._open = True

    def commit(self) -> None:
        """Put the file in place; on an error the temporary file is removed and it raises."""
        if not self._open:
            raise ValueError(f"{self.path}: already committed or discarded")
        try:
            self.file.flush()
            if self.fsync:
                os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self._tmp, self.path)
        except BaseException:
            self.discard()
            raise
        self._open = False

    def discard(self) -> None:
        """Remove the temporary file; ``path`` is left as it was. Does nothing a second time."""
        if not self._open:
            return
        self._open = False
        with contextlib.suppress(OSError):
            self.file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()
