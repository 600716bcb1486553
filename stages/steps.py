"""The ``process`` command's stage functions, one kind of value each.

Each stage of the command declares the values it takes (``stage(..., accepts=...)``) and the
engine routes every item only through the stages that take its value::

    (inputs)  a local file named as an image -> ImageFile (:func:`to_worker`: not opened here)
    download  UrlSource -> Loaded (bytes)                       URLs only
    read      SourceFile at a storage URL -> Loaded (its bytes, read here)  (thread)
              SourceFile of another name -> ImageFile (checked: first bytes, size), or skipped
              DataFile -> Split into parts (stages.data.plan)
              DataFile holding an image -> ImageFile (checked: first bytes, size)
    resize    ImageFile -> Rendered (check + read + decode + resize + statistics)
              ImageFile holding an .npy array -> its statistics (:func:`resize`)
              Loaded -> Rendered (decode + resize + statistics)
    crunch    a data part -> its partial statistics             data parts only
              ... the parts of a data file are merged after crunch ...
    write     Rendered -> files + the record's value            images only

``resize``, ``crunch`` and ``write`` are adjacent process stages, so the engine fuses them into
one worker call (a worker runs the steps that take the value): a local image's bytes, its
decoded pixels, its encoded outputs and a chunk's values never cross a process boundary; the
parent moves paths and the small records that come back. Each stage's metrics count its own
work only.

A local file named as an image goes straight to a resize worker, which opens it once: what
it is (an image, an ``.npy`` array by its content, something to skip), how big, and its bytes
(:func:`stages.files.read_file`). The parent never opens it: on small images the parent's share
per file (an open, a stat, a read and a close in its threads, and a thread stage's turn on the
loop) was a quarter of its CPU. ``read`` runs in the parent's threads for what needs them:
objects in storage (network reads), data files, planned there and their chunks spread over the
workers, and files of other names (most of them are not images). This module imports neither
numpy nor Pillow. The workers' modules are preloaded by the forkserver
(``app.warmup.WORKER_MODULES``).
"""

from __future__ import annotations

import os
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

__all__ = ["IMAGES", "PARTS", "crunch", "output_place", "read", "resize", "to_worker", "write"]

#: The values the ``resize`` stage takes: a local image file (its worker checks and reads it), or
#: bytes (downloads, objects in storage).
IMAGES = (ImageFile, Loaded)

#: The values the ``crunch`` stage takes: the parts of a data file.
PARTS = (ArrayPart, ZipMemberPart, CsvPart)


def read(
    src: SourceFile | DataFile,
    max_bytes: int = DEFAULT_MAX_FILE_BYTES,
    data: DataOptions | None = None,
) -> ImageFile | Loaded | Split:
    """An object in storage, read here (its bytes); a data file's plan (a Split into chunks);
    a local image file, checked (its first bytes and size: the resize worker reads it), for a
    data file that holds one and for local files that did not go through :func:`to_worker`.

    By content first: a data file (by its extension) that holds an image goes on as an image,
    an image-named file that holds an ``.npy`` array is planned as data.
    """
    if isinstance(src, DataFile):
        if src.member is None and image_format(read_head(src.path)) is not None:
            return _image(SourceFile(src.path, src.placed, src.tag), max_bytes)
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


#: The names of the local files that go straight to a resize worker (:func:`to_worker`), by
#: extension, in lower case. Only the route depends on it: the worker and ``read`` both go by
#: the content (an image, an ``.npy`` array, or skipped with what it is); a file with another
#: name (a README, a sidecar ``.xmp`` or ``.json``) is looked at by ``read`` in the parent.
IMAGE_NAMES = frozenset(
    {
        ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".webp", ".gif", ".tif", ".tiff",
        ".bmp", ".heic", ".heif", ".avif", ".jp2", ".j2k", ".jpx", ".mpo", ".ico", ".ppm",
        ".pgm", ".pbm", ".pnm", ".tga", ".qoi",
    }
)  # fmt: skip


def to_worker(src: SourceFile | DataFile) -> SourceFile | DataFile | ImageFile:
    """An input as the resize worker takes it: a local file named as an image
    (:data:`IMAGE_NAMES`) becomes an :class:`ImageFile` the worker checks and reads itself
    (:func:`resize`); any other, data files and objects in storage stay as they are, for
    ``read``."""
    if (
        type(src) is SourceFile
        and os.path.splitext(src.rel)[1].lower() in IMAGE_NAMES
        and not is_url(src.path)
    ):
        return ImageFile(src.path, src.rel, src.tag)
    return src


def output_place(value: object) -> tuple[str, str | None] | None:
    """Where this run writes an input's outputs below the size folders, and their tag
    (:mod:`stages.naming`): a local or stored file's, as the walk placed it; None for a URL
    (its place comes from the URL alone, the same in every run) and anything else."""
    if isinstance(value, ImageFile | SourceFile):
        return value.rel, value.tag
    if isinstance(value, DataFile):  # one that holds an image is written at its place
        return value.placed, value.tag
    return None


def resize(
    value: ImageFile | Loaded,
    options: ResizeOptions,
    max_bytes: int = DEFAULT_MAX_FILE_BYTES,
    data: DataOptions | None = None,
) -> Rendered | dict[str, Any]:
    """Check and read (a local file, up to ``max_bytes``), decode, resize and measure an image.

    A local file whose first bytes say ``.npy`` array, whatever its name, is a data input: its
    statistics are made here, chunk after chunk, as the crunch workers make them for a file
    named as data (the same plan, the same merge); the write step does not take them.
    """
    try:
        loaded = read_file(value, max_bytes)
    except NumpyFile:
        if not isinstance(value, ImageFile):
            raise
        return _data_here(DataFile(value.path, value.rel), data)
    return render(loaded, options)


def _data_here(src: DataFile, data: DataOptions | None) -> dict[str, Any]:
    """A data file's record value, its parts crunched one after the other in this worker."""
    from .data import crunch_part, plan

    split = plan(src, data or DataOptions())
    value: dict[str, Any] = split.merge([crunch_part(part) for part in split.parts])
    return value


def crunch(value: ArrayPart | ZipMemberPart | CsvPart) -> Any:
    """Statistics of one chunk of a data file."""
    from .data import crunch_part

    return crunch_part(value)


def write(value: Rendered, root: str) -> dict[str, Any]:
    """Write an image's outputs (in the worker that made them); the record's value."""
    return write_outputs(value, root)
