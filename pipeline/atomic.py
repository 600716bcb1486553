"""Atomic file writes: a temporary file beside the target, then put in place under its name.

:func:`atomic_write_bytes` writes bytes held in memory; :class:`AtomicFile` is the same for a
file written in pieces (a table streamed row by row), so its content never has to be in memory
whole. A module of its own (no asyncio, no sqlite) because process workers write outputs with it.

On Linux the temporary file has no name at all (``O_TMPFILE``): it gets the target's name when
it is whole (``linkat``), so a crash or a SIGKILL while it is written leaves nothing behind (the
kernel frees a file that has no name), a reader of the folder never sees it, and a new target
costs one directory entry instead of two, and no mkdir (~60 us less for a 7 kB thumbnail on
ext4). A target that exists already is replaced through a named temporary file (linked, then
renamed over it). Where the file system or the kernel cannot make such a file (``EOPNOTSUPP``:
NFS, FUSE, older kernels; no ``/proc``), the temporary file is named from the start
(``.pp-XXXXXXXX.tmp``), as on other systems.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

__all__ = [
    "FILE_MODE",
    "TEMP_PREFIX",
    "AtomicFile",
    "atomic_write_bytes",
    "atomic_write_text",
    "is_temp_name",
]

#: Temporary files are ``.pp-XXXXXXXX.tmp`` (16 bytes) whatever the target's name: a name
#: derived from the target (``.<name>.XXXX.tmp``) would exceed the file system's 255-byte name
#: limit for targets near it, and fail a write that the final name allows.
TEMP_PREFIX = ".pp-"

#: The exact names of those files: ``mkstemp``'s 8 characters (or ``os.urandom(4).hex()``)
#: between the prefix and ``.tmp``. A user's ``.pp-notes.tmp`` is not one of ours.
_TEMP_NAME = re.compile(re.escape(TEMP_PREFIX) + r"[a-z0-9_]{8}\.tmp")


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is the name of one of our temporary files (never a user's file)."""
    return _TEMP_NAME.fullmatch(name) is not None


def _read_umask() -> int:
    mask = os.umask(0o022)  # read once, at import (single-threaded), and put back at once
    os.umask(mask)
    return mask


#: mkstemp creates 0600 files; outputs get the usual mode (0666 less the umask) instead
FILE_MODE = 0o666 & ~_read_umask()


def atomic_write_bytes(path: Path, data: bytes, *, fsync: bool = True) -> None:
    """Write ``data`` to a temporary file beside ``path`` (its folder made if need be), then
    put it in place as ``path`` (:class:`AtomicFile`).

    Readers see the old file or the new one, never half of one. ``fsync`` also makes the new
    content durable across a power loss (the ledger wants that; bulk outputs may skip it).
    """
    with AtomicFile(path, fsync=fsync) as out:
        out.file.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


#: ``open(folder, O_TMPFILE)`` can make unnamed files here (Linux, with ``/proc`` to name them).
UNNAMED = hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")

#: The errors of ``open(folder, O_TMPFILE)`` that mean "not here" (the folder's file system, or
#: the kernel): the temporary file is then named.
_NOT_HERE = {errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOTSUP}


def _open_unnamed(folder: Path) -> int | None:
    """A new unnamed file in ``folder``, open for writing; None where there can be none."""
    if not UNNAMED:
        return None
    try:
        return os.open(folder, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, FILE_MODE)
    except OSError as exc:
        if exc.errno in _NOT_HERE:
            return None
        raise


def _name(fd: int, path: Path) -> None:
    """Give the unnamed file ``fd`` the name ``path`` (``linkat`` through ``/proc``: os.link
    calls linkat, which follows the magic link, only when given a directory descriptor; an
    absolute source ignores it). ``FileExistsError`` when ``path`` exists."""
    os.link(f"/proc/self/fd/{fd}", path, src_dir_fd=fd, follow_symlinks=True)


class AtomicFile:
    """A file written in pieces to a temporary file beside ``path``, then put in place at once.

    Write to :attr:`file` (binary); :meth:`commit` puts the temporary file in place as ``path``
    (after an ``fsync`` unless ``fsync=False``), :meth:`discard` removes it. As a context
    manager: commit when the block ends normally, discard when it raises. Readers of ``path``
    see the old file or the whole new one, never a part, as with :func:`atomic_write_bytes`.
    The temporary file has no name where it can (module docstring).
    """

    def __init__(self, path: Path, *, fsync: bool = True) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self._tmp: str | None = None  # the temporary file's name; None while it has none
        fd = self._create()
        try:
            self.file: BinaryIO = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            self._unlink()
            raise
        self._open = True

    def _create(self) -> int:
        folder = self.path.parent
        try:
            fd = _open_unnamed(folder)
        except FileNotFoundError:
            folder.mkdir(parents=True, exist_ok=True)
            fd = _open_unnamed(folder)
        if fd is not None:
            return fd
        folder.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(dir=folder, prefix=TEMP_PREFIX, suffix=".tmp")
        try:
            os.fchmod(fd, FILE_MODE)  # mkstemp's are 0600
        except BaseException:
            os.close(fd)
            self._unlink()
            raise
        return fd

    def commit(self) -> None:
        """Put the file in place; on an error the temporary file is removed and it raises."""
        if not self._open:
            raise ValueError(f"{self.path}: already committed or discarded")
        try:
            self.file.flush()
            if self.fsync:
                os.fsync(self.file.fileno())
            if self._tmp is None:
                self._put_unnamed()
            self.file.close()
            if self._tmp is not None:
                os.replace(self._tmp, self.path)
        except BaseException:
            self.discard()
            raise
        self._open = False

    def _put_unnamed(self) -> None:
        """Name the unnamed file ``path``; one that exists is replaced through a named one."""
        fd = self.file.fileno()
        try:
            _name(fd, self.path)
            return
        except FileExistsError:
            pass
        for _ in range(tempfile.TMP_MAX):
            tmp = os.path.join(self.path.parent, f"{TEMP_PREFIX}{os.urandom(4).hex()}.tmp")
            try:
                _name(fd, Path(tmp))
            except FileExistsError:
                continue
            self._tmp = tmp  # renamed over path once closed (commit)
            return
        raise FileExistsError(errno.EEXIST, "no free temporary name", str(self.path.parent))

    def discard(self) -> None:
        """Remove the temporary file; ``path`` is left as it was. Does nothing a second time."""
        if not self._open:
            return
        self._open = False
        with contextlib.suppress(OSError):
            self.file.close()
        self._unlink()

    def _unlink(self) -> None:
        """Remove the named temporary file, if it has a name (an unnamed one goes when closed)."""
        if self._tmp is not None:
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
