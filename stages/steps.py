"""The ``process`` command's stage functions: each handles its own kind of value, passes others on.

One pipeline carries images and numeric data files side by side::

    read    SourceFile -> Loaded (bytes)        DataFile -> Split into parts (stages.data.plan)
    resize  Loaded -> Rendered (decode+resize)  parts pass through
    crunch  Rendered passes through             part -> partial statistics
            ... the parts of a data file are merged here, after the resize+crunch group ...
    write   Rendered -> files + record value    a data file's merged statistics pass through

``resize`` and ``crunch`` are adjacent process stages, so the engine fuses them into one worker
call: an image's decoded pixels and a chunk's values never cross a process boundary.

This module imports neither numpy nor Pillow: ``read`` and ``write`` run in the parent process,
which needs them only for data files. The workers' modules are preloaded by the forkserver
(``app.warmup.WORKER_MODULES``).
"""

from __future__ import annotations

from typing import Any

from pipeline import Split

from .files import DEFAULT_MAX_FILE_BYTES, Loaded, NumpyFile, read_file, read_head
from .options import ResizeOptions
from .parts import ArrayPart, CsvPart, DataOptions, ZipMemberPart
from .sniff import image_format
from .sources import DataFile, SourceFile
from .thumbs import Rendered, render, write_outputs

__all__ = ["crunch", "read", "resize", "write"]

_PARTS = (ArrayPart, ZipMemberPart, CsvPart)


def read(
    src: SourceFile | DataFile | Loaded,
    max_bytes: int = DEFAULT_MAX_FILE_BYTES,
    data: DataOptions | None = None,
) -> Loaded | Split:
    """An image's bytes (size-capped), or a data file's plan (a Split into chunks).

    By content first: a data file (by its extension) that holds an image is read as an image,
    an image-named file that holds an ``.npy`` array is planned as data.
    """
    if isinstance(src, DataFile):
        if src.member is None and image_format(read_head(src.path)) is not None:
            return read_file(SourceFile(src.path, src.rel, src.tag), max_bytes)
        return _plan(src, data)
    try:
        return read_file(src, max_bytes)
    except NumpyFile:
        assert isinstance(src, SourceFile)
        return _plan(DataFile(src.path, src.rel), data)


def _plan(src: DataFile, data: DataOptions | None) -> Split:
    from .data import plan

    split = plan(src, data or DataOptions())
    # the parts run through resize (passing) and crunch, fused or not (Dask runs them apart)
    return Split(split.parts, split.merge, through="crunch")


def resize(value: Any, options: ResizeOptions) -> Any:
    """Decode, resize and measure an image; anything else passes through."""
    return render(value, options) if isinstance(value, Loaded) else value


def crunch(value: Any) -> Any:
    """Statistics of one chunk of a data file; anything else passes through."""
    if not isinstance(value, _PARTS):
        return value
    from .data import crunch_part

    return crunch_part(value)


def write(value: Any, root: str) -> Any:
    """Write an image's outputs; a data file's statistics (a dict) pass through to its record."""
    return write_outputs(value, root) if isinstance(value, Rendered) else value
