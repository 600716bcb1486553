"""The ``process`` command's stage functions, one kind of value each.

Each stage of the command declares the values it takes (``stage(..., accepts=...)``) and the
engine routes every item only through the stages that take its value::

    download  UrlSource -> Loaded (bytes)                       URLs only
    read      SourceFile -> ImageFile (checked: first bytes, size) files only (thread)
              SourceFile at a storage URL -> Loaded (its bytes, read here)
              DataFile -> Split into parts (stages.data.plan)
    resize    ImageFile -> Rendered (read + decode + resize + statistics)
              Loaded -> Rendered (decode + resize + statistics)
    crunch    a data part -> its partial statistics             data parts only
              ... the parts of a data file are merged after crunch ...
    write     Rendered -> files + the record's value            images only

``resize``, ``crunch`` and ``write`` are adjacent process stages, so the engine fuses them into
one worker call (a worker runs the steps that take the value): a local image's bytes, its
decoded pixels, its encoded outputs and a chunk's values never cross a process boundary; the
parent moves paths and the small records that come back. Each stage's metrics count its own
work only.

``read`` runs in the parent's threads: it opens each file only to check what it is (an image, a
data file by its content, something to skip) and how big; data files are planned there and
their chunks spread over the workers. This module imports neither numpy nor Pillow. The
workers' modules are preloaded by the forkserver (``app.warmup.WORKER_MODULES``).
"""

from __future__ import annotations

from typing import Any

from pipeline import Split

from .files import (
    DEFAULT_MAX_FILE_BYTES,
    ImageFile,
    Loaded,
    NumpyFile,
    check_file,
    read_file,
    read_head,
)
from .options import ResizeOptions
from .parts import ArrayPart, CsvPart, DataOptions, ZipMemberPart
from .sniff import image_format
from .sources import DataFile, SourceFile
from .storage import is_url
from .thumbs import Rendered, render, write_outputs

__all__ = ["IMAGES", "PARTS", "crunch", "read", "resize", "write"]

#: The values the ``resize`` stage takes: a checked local image file, or bytes (downloads).
IMAGES = (ImageFile, Loaded)

#: The values the ``crunch`` stage takes: the parts of a data file.
PARTS = (ArrayPart, ZipMemberPart, CsvPart)


def read(
    src: SourceFile | DataFile,
    max_bytes: int = DEFAULT_MAX_FILE_BYTES,
    data: DataOptions | None = None,
) -> ImageFile | Loaded | Split:
    """An image file, checked (its first bytes and size: the resize worker reads it), or a data
    file's plan (a Split into chunks).

    By content first: a data file (by its extension) that holds an image goes on as an image,
    an image-named file that holds an ``.npy`` array is planned as data.
    """
    if isinstance(src, DataFile):
        if src.member is None and image_format(read_head(src.path)) is not None:
            return _image(SourceFile(src.path, src.rel, src.tag), max_bytes)
        return _plan(src, data)
    try:
        return _image(src, max_bytes)
    except NumpyFile:
        return _plan(DataFile(src.path, src.rel), data)


def _image(src: SourceFile, max_bytes: int) -> ImageFile | Loaded:
    """A local image checked, for the worker to read; an object at a storage URL read here
    (the read threads wait on the network, the workers decode)."""
    if is_url(src.path):
        return read_file(src, max_bytes)
    return check_file(src, max_bytes)


def _plan(src: DataFile, data: DataOptions | None) -> Split:
    from .data import plan

    split = plan(src, data or DataOptions())
    # the parts go to crunch (the only stage that takes them) and merge after it
    return Split(split.parts, split.merge, through="crunch")


def resize(
    value: ImageFile | Loaded, options: ResizeOptions, max_bytes: int = DEFAULT_MAX_FILE_BYTES
) -> Rendered:
    """Read (a local file, up to ``max_bytes``), decode, resize and measure an image."""
    return render(read_file(value, max_bytes), options)


def crunch(value: ArrayPart | ZipMemberPart | CsvPart) -> Any:
    """Statistics of one chunk of a data file."""
    from .data import crunch_part

    return crunch_part(value)


def write(value: Rendered, root: str) -> dict[str, Any]:
    """Write an image's outputs (in the worker that made them); the record's value."""
    return write_outputs(value, root)
