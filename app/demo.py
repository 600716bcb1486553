"""A small engine-only chain (file sizes and SHA-256 digests): ``python -m pipeline demo``.

Functions are module-level so the process stage can import them in its workers.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pipeline import Item, Pipeline, stage

__all__ = ["demo_pipeline", "walk_files"]


def walk_files(roots: Sequence[str | os.PathLike[str]]) -> Iterator[Item]:
    """Every regular file under ``roots``, lazily, in a stable (sorted) order."""
    for root in map(Path, roots):
        stack = [root]
        while stack:
            folder = stack.pop()
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name, reverse=True)
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    rel = Path(entry.path).relative_to(root).as_posix()
                    key = f"{root.name}/{rel}" if len(roots) > 1 else rel
                    yield Item(key=key, value=entry.path, source=entry.path)


def read_bytes(path: str) -> bytes:
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
