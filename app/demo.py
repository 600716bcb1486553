"""A small engine-only chain (file sizes and SHA-256 digests): ``python -m pipeline demo``.

Its inputs come from the program's one directory walker, :func:`stages.walk` (as ``process``
walks): every regular file becomes an item keyed by its path relative to its folder (several
folders: each folder's name first) that carries its size and ``mtime_ns``, so a re-run redoes
the files that changed; special files and symlinks that lead nowhere or outside their folder
are recorded ``skipped`` with the reason; the output folder is never walked.

Functions are module-level so the process stage can import them in its workers.
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any

from pipeline import Pipeline, stage
from stages.sources import SourceFile

__all__ = ["demo_pipeline", "digest", "read_bytes"]


def read_bytes(value: SourceFile | str | os.PathLike[str]) -> bytes:
    """The bytes of a walked file (or of a path)."""
    path = value.path if isinstance(value, SourceFile) else value
    with open(path, "rb") as fh:
        return fh.read()


def digest(data: bytes, delay: float = 0.0) -> dict[str, Any]:
    """Size and SHA-256 of ``data``; ``delay`` simulates slow work (for demos and tests)."""
    if delay:
        time.sleep(delay)
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def demo_pipeline(workers: int | None = None, delay: float = 0.0) -> Pipeline:
    return Pipeline(
        [
            stage(read_bytes, kind="thread", name="read", workers=workers, capacity=16),
            stage(digest, delay, kind="process", name="digest", workers=workers, capacity=16),
        ],
        name="demo",
    )
