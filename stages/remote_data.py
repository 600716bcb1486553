"""Data files at storage URLs (:mod:`stages.storage`): planned from a local copy.

A ``.npy`` array is crunched memory-mapped and a CSV file by byte ranges, both from a file on
this machine's disk. So :func:`plan_object` first copies the object (streamed, never whole in
memory) into this process's spool folder, plans the copy, and removes it when the parts are
merged. The crunch workers of the same machine read the copy: on the local backend the parent
plans and its process workers crunch; on Dask a shard runs whole on one worker.

The spool folder (``pixpipe-objects-*`` in the system's temporary folder) is removed when the
process exits; a copy whose parts failed waits there until then.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

from pipeline import Split

from .parts import DataOptions
from .sources import DataFile
from .storage import filesystem

__all__ = ["plan_object"]


@functools.cache
def _spool() -> str:
    folder = tempfile.mkdtemp(prefix="pixpipe-objects-")
    atexit.register(shutil.rmtree, folder, True)
    return folder


def plan_object(
    src: DataFile, opts: DataOptions, plan: Callable[[DataFile, DataOptions], Split]
) -> Split:
    """``plan`` over a local copy of the object ``src.path``; the copy goes once merged."""
    fs, path = filesystem(src.path)
    suffix = os.path.splitext(path)[1]
    fd, local = tempfile.mkstemp(suffix=suffix, dir=_spool())
    os.close(fd)
    try:
        fs.get_file(path, local)
        split = plan(dataclasses.replace(src, path=local), opts)
    except BaseException:
        os.unlink(local)
        raise
    return Split(split.parts, functools.partial(_merged, split.merge, local))


def _merged(merge: Callable[[list[Any]], Any], local: str, parts: list[Any]) -> Any:
    try:
        return merge(parts)
    finally:
        os.unlink(local)
