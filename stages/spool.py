"""Download bodies too big to hold in memory: written to an anonymous temporary file as they
arrive, read back whole only where the bytes are needed.

The download stage keeps a body in memory up to ``DownloadConfig.spool_above`` bytes (4 MiB by
default); a bigger one goes to a :class:`Spool` (an unnamed file in ``spool_dir``, by default the
system's temporary folder, ``TMPDIR``), written from the event loop through ``aiofiles``: each
write runs in a thread, so a disk that stalls (writeback throttling) never stalls the loop. The
result is a :class:`SpooledBody`, which travels in ``Loaded.data`` in place of ``bytes``:

* ``len(body)`` is its size and ``bytes(body)`` (or ``body.read()``) its content; a thread stage
  reads it there (``thumbs.render`` does, when the resize stage runs in a thread, as on Dask);
* pickled, it becomes those bytes: a process stage's worker receives plain ``bytes``, read from
  the file when the batch is sent (``pipeline.procpool`` then copies them into its arena), so the
  parent holds a big body only while it is being sent to a worker;
* the file has no name (unlinked when created), so its space goes back to the file system when
  the body is closed: by :meth:`SpooledBody.close`, or when the body is garbage-collected,
  however its item ended (written, failed, cancelled) — and when the process dies.

Memory per download is then at most ``spool_above`` (or one write of :data:`WRITE_BYTES`, when
the ``Content-Length`` says at once that the body is bigger), whatever ``max_bytes`` allows; the
bodies queued between the download stage and the resize workers hold a file descriptor each.
A ``TMPDIR`` on tmpfs keeps the bodies in memory after all (as shared memory, outside the
process's RSS): point ``spool_dir`` at a disk in that case.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import weakref
from typing import Any

from aiofiles.threadpool.binary import AsyncBufferedIOBase

__all__ = ["WRITE_BYTES", "Spool", "SpooledBody"]

#: A spooling download writes in pieces of this size: few thread hops (8 for an 8 MiB body),
#: little memory per download.
WRITE_BYTES = 1 << 20


class SpooledBody:
    """The bytes of a download, in an unnamed temporary file (see the module docstring)."""

    def __init__(self, fd: int, size: int) -> None:
        self._fd = fd
        self._size = size
        self._close = weakref.finalize(self, os.close, fd)

    def __len__(self) -> int:
        return self._size

    def __repr__(self) -> str:
        state = "" if self._close.alive else ", closed"
        return f"SpooledBody({self._size} bytes{state})"

    def read(self) -> bytes:
        """The whole content (any number of times, from any thread)."""
        if not self._close.alive:
            raise ValueError("read of a closed SpooledBody")
        parts: list[bytes] = []
        offset = 0
        while offset < self._size:
            part = os.pread(self._fd, self._size - offset, offset)
            if not part:
                raise OSError(f"spooled body cut short: {offset} of {self._size} bytes")
            parts.append(part)
            offset += len(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    __bytes__ = read

    def __reduce__(self) -> tuple[Any, ...]:
        # to another process: the bytes themselves (procpool sends them out of band)
        return (bytes, (self.read(),))

    def close(self) -> None:
        """Give the file's space back now (also done when the body is garbage-collected)."""
        self._close()


class Spool:
    """An unnamed temporary file written from the event loop; :meth:`finish` makes the body."""

    def __init__(self, writer: AsyncBufferedIOBase, read_fd: int) -> None:
        self._writer = writer  # owns the write descriptor
        self._read_fd: int | None = read_fd
        self.size = 0

    @classmethod
    def create(cls, folder: str | None) -> Spool:
        """A new spool. Synchronous on purpose, a few system calls: the descriptor changes
        owner here, and an ``await`` (aiofiles' own ``open`` runs in a thread) would let a
        cancellation leave a file object that owns it half made."""
        fd, path = tempfile.mkstemp(prefix=".pp-spool-", dir=folder)
        try:
            os.unlink(path)  # nameless from the start: nothing to clean up, whatever happens
            read_fd = os.dup(fd)
        except BaseException:
            os.close(fd)
            raise
        try:
            file = open(fd, "wb")  # noqa: SIM115 - owned by the spool, closed by finish/discard
        except BaseException:
            os.close(fd)
            os.close(read_fd)
            raise
        return cls(AsyncBufferedIOBase(file, loop=None, executor=None), read_fd)

    async def write(self, data: bytes | bytearray) -> None:
        await self._writer.write(data)
        self.size += len(data)

    async def finish(self) -> SpooledBody:
        """Flush and close the writer; the body owns the file from here on."""
        await self._writer.close()
        fd, self._read_fd = self._read_fd, None
        assert fd is not None, "a spool finishes once"
        return SpooledBody(fd, self.size)

    async def discard(self) -> None:
        """Drop what was written (on an error or a cancellation)."""
        if self._read_fd is not None:
            os.close(self._read_fd)
            self._read_fd = None
        # The writer's close waits for a write still running in its thread (the buffered file's
        # lock), so the descriptor is never closed under it. Cancelled again meanwhile, the file
        # is closed when the writer is collected.
        with contextlib.suppress(OSError):
            await self._writer.close()
