"""The ``process`` command's stage functions, one kind of value each.

Each stage of the command declares the values it takes (``stage(..., accepts=...)``) and the
engine routes every item only through the stages that take its value::

    download  UrlSource -> Loaded (bytes)                       URLs only
    read      SourceFile -> Loaded (an image's bytes)           files only
              DataFile -> Split into parts (stages.data.plan)
    resize    Loaded -> Rendered (decode + resize + statistics) images only
    crunch    a data part -> its partial statistics             data parts only
              ... the parts of a data file are merged after crunch ...
    write     Rendered -> files + the record's value            images only

``resize`` and ``crunch`` are adjacent process stages, so the engine fuses them into one worker
call (a worker runs the step that takes the value); an image's decoded pixels and a chunk's
values never cross a process boundary, and each stage's metrics count its own work only.

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

__all__ = ["PARTS", "crunch", "read", "resize", "write"]

#: The values the ``crunch`` stage takes: the parts of a data file.
PARTS = (ArrayPart, ZipMemberPart, CsvPart)


def read(
    src: SourceFile | DataFile,
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
    # the parts go to crunch (the only stage that takes them) and merge after it
    return Split(split.parts, split.merge, through="crunch")


def resize(value: Loaded, options: ResizeOptions) -> Rendered:
    """Decode, resize and measure an image."""
    return render(value, options)


def crunch(value: ArrayPart | ZipMemberPart | CsvPart) -> Any:
    """Statistics of one chunk of a data file."""
    from .data import crunch_part

    return crunch_part(value)


def write(value: Rendered, root: str) -> dict[str, Any]:
    """Write an image's outputs; the record's value."""
    return write_outputs(value, root)
