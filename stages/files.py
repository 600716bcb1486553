"""Reading inputs and writing outputs.

``read_file`` runs in the read stage's thread pool; ``write_outputs`` in the write stage's. All
output paths are checked to stay inside the output folder, and every file is written to a
temporary name in its target folder and renamed (``os.replace``), so no reader ever sees half a
file. Outputs are not fsynced (the ledger's ``is_done`` check re-verifies them on resume).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from pipeline import atomic_write_bytes

from .sources import SourceFile

__all__ = ["FileTooLarge", "Loaded", "UnsafePath", "read_file", "safe_join", "write_atomic"]

DEFAULT_MAX_FILE_BYTES = 200 * 2**20


class FileTooLarge(Exception):
    """The input file is larger than the read stage's size cap."""


class UnsafePath(Exception):
    """An output path would land outside the output folder."""


@dataclass(frozen=True, slots=True)
class Loaded:
    """Input bytes on their way to the decode stage, with the output-relative path.

    ``origin`` says where downloaded bytes came from (final URL, HTTP status, attempts).
    """

    rel: str
    data: bytes = field(repr=False)
    origin: dict[str, Any] | None = None


def read_file(src: SourceFile | Loaded, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> Loaded:
    """Read a file's bytes, refusing files over ``max_bytes``. Downloaded bytes pass through."""
    if isinstance(src, Loaded):
        return src
    with open(src.path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > max_bytes:
            raise FileTooLarge(f"{size:,} bytes is over the {max_bytes:,}-byte cap")
        # read(size + 1), not read(max_bytes + 1): CPython allocates the whole request first,
        # and a 200 MB request is a fresh mmap whose pages fault in one by one (650 faults and
        # ~1 ms per 2.6 MB photo, in the parent that feeds the workers); a buffer of the file's
        # size is recycled by malloc from one file to the next
        data = fh.read(size + 1)
        if len(data) > size:  # it grows while we read it: the rest, up to the cap
            data += fh.read(max_bytes + 1 - len(data))
    if len(data) > max_bytes:  # grew while we read it
        raise FileTooLarge(f"more than the {max_bytes:,}-byte cap")
    return Loaded(src.rel, data)


def safe_join(root: Path, rel: str) -> Path:
    """``root / rel``, refusing absolute paths, ``..`` and anything resolving outside root."""
    parts = PurePosixPath(rel.replace("\\", "/")).parts
    if not parts or rel.startswith("/") or any(p in ("..", "") for p in parts):
        raise UnsafePath(f"output path {rel!r} is not a plain relative path")
    target = root.joinpath(*parts)
    real_root = root.resolve()
    if not target.resolve().is_relative_to(real_root):
        raise UnsafePath(f"output path {rel!r} resolves outside {root}")
    return target


def write_atomic(path: Path, data: bytes) -> None:
    """Temporary file in the target folder, then ``os.replace`` (not fsynced: see above)."""
    atomic_write_bytes(path, data, fsync=False)
