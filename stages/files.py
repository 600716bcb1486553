"""Reading inputs and writing outputs.

A local image is not opened by the parent: it reaches a resize worker as an :class:`ImageFile`
(a path and a name: no image bytes cross a process boundary), and the worker checks and reads
it with ``read_file`` in one open, then writes its outputs itself
(``stages.thumbs.write_outputs``, the ``write`` step of the same worker call). Downloaded
bytes (a :class:`Loaded`) reach the worker as they are. All output paths are checked to stay
inside the output folder, and every file is written to a temporary name in its target folder
and renamed (``os.replace``), so no reader ever sees half a file. Outputs are not fsynced (the
ledger's ``is_done`` check re-verifies them on resume).

Both recognise images by their first bytes (:mod:`stages.sniff`), whatever their name: a file
that is not an image raises :class:`pipeline.Skip` with what it is (its record is ``skipped``),
before the rest of it is read or the size cap applies. They open with ``O_NONBLOCK`` and read
only regular files, so a file swapped for a named pipe after the walk cannot hang a reader.
:func:`check_file` (the read stage's threads, for a data file that holds an image) checks
without reading; ``read_file`` checks again (the file may change in between).
"""

from __future__ import annotations

import functools
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import Skip, atomic_write_bytes

from .sniff import HEAD_BYTES, NPY_MAGIC, describe, image_format
from .sources import SourceFile
from .storage import is_url

if TYPE_CHECKING:
    from .spool import SpooledBody

__all__ = [
    "FileTooLarge",
    "ImageFile",
    "Loaded",
    "NumpyFile",
    "UnsafePath",
    "check_file",
    "clear_way",
    "read_file",
    "read_head",
    "safe_join",
    "write_atomic",
    "write_output",
]

DEFAULT_MAX_FILE_BYTES = 200 * 2**20


class FileTooLarge(Exception):
    """The input file is larger than the read stage's size cap."""


class UnsafePath(Exception):
    """An output path would land outside the output folder."""


class NumpyFile(Exception):
    """The file is a NumPy ``.npy`` array whatever its name: a data input, not an image."""


@dataclass(frozen=True, slots=True)
class Loaded:
    """Input bytes on their way to the decode stage, with the output-relative path.

    ``data`` is the file's bytes; a download over ``spool_above`` bytes is a
    :class:`~stages.spool.SpooledBody` instead (an unnamed temporary file: ``len(data)``,
    ``bytes(data)``), which a process worker receives as plain bytes. ``origin`` says where
    downloaded bytes came from (final URL, HTTP status, attempts); ``tag`` is the output-name
    tag of the input (:mod:`stages.naming`).
    """

    rel: str
    data: bytes | SpooledBody = field(repr=False)
    origin: dict[str, Any] | None = None
    tag: str | None = None


@dataclass(frozen=True, slots=True)
class ImageFile:
    """A local file for a resize worker to check and read (:func:`read_file`: its first bytes,
    its size, its bytes); checked already when it came through :func:`check_file`. ``rel``
    and ``tag`` as in :class:`Loaded`."""

    path: str
    rel: str
    tag: str | None = None

    def __reduce__(self) -> tuple[type[ImageFile], tuple[str, str, str | None]]:
        # a frozen slots dataclass pickles through dataclasses' __getstate__/__setstate__
        # (fields() and an object.__setattr__ per field): one per image, in the parent
        return ImageFile, (self.path, self.rel, self.tag)


def _open_regular(path: str) -> tuple[int, int]:
    """A descriptor of the regular file at ``path`` and its size (one ``fstat``);
    :class:`Skip` for anything else."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise Skip("not a regular file (it changed since the folder was listed); never read")
    return fd, st.st_size


def read_head(path: str) -> bytes:
    """The first :data:`~stages.sniff.HEAD_BYTES` of a regular file (or storage object)."""
    if is_url(path):
        from .storage import read_range

        return read_range(path, 0, HEAD_BYTES)
    fd, _ = _open_regular(path)
    try:
        return os.pread(fd, HEAD_BYTES, 0)
    finally:
        os.close(fd)


def _not_an_image(src: SourceFile | ImageFile, head: bytes, size: int) -> Skip:
    name = src.path.rpartition(os.sep)[2]
    suffix = os.path.splitext(name)[1]
    named = f"named {suffix}" if suffix else "no extension"
    return Skip(f"not an image or data file: {describe(head, size)} ({named})")


def _check_head(head: bytes, src: SourceFile | ImageFile, size: Callable[[], int]) -> None:
    """Pass when an input's first bytes say image; :class:`NumpyFile` for an ``.npy`` array,
    :class:`Skip` (what it is, and ``size()`` bytes) for anything else."""
    if image_format(head) is None:
        if head.startswith(NPY_MAGIC):
            raise NumpyFile(src.path)
        raise _not_an_image(src, head, size())


def _check(fd: int, size: int, src: SourceFile | ImageFile, max_bytes: int) -> None:
    """Pass when the first bytes of the open file ``fd`` (of ``size`` bytes, from
    :func:`_open_regular`) say image and it is within the cap; :class:`Skip` (not an image),
    :class:`NumpyFile` or :class:`FileTooLarge` otherwise."""
    _check_head(os.pread(fd, HEAD_BYTES, 0), src, lambda: size)
    if size > max_bytes:
        raise FileTooLarge(f"{size:,} bytes is over the {max_bytes:,}-byte cap")


def check_file(src: SourceFile, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> ImageFile:
    """:func:`read_file`'s checks without reading the file: its first bytes and its size. The
    parent's share of a local image; the worker reads it."""
    fd, size = _open_regular(src.path)
    try:
        _check(fd, size, src, max_bytes)
    finally:
        os.close(fd)
    return ImageFile(src.path, src.rel, src.tag)


def read_file(
    src: SourceFile | ImageFile | Loaded, max_bytes: int = DEFAULT_MAX_FILE_BYTES
) -> Loaded:
    """Read an image file's bytes, refusing files over ``max_bytes``; :class:`Skip` for a file
    that is not an image; :class:`NumpyFile` for an ``.npy`` array. Downloaded bytes pass
    through."""
    if isinstance(src, Loaded):
        return src
    if is_url(src.path):
        return _read_object(src, max_bytes)
    fd, size = _open_regular(src.path)
    with os.fdopen(fd, "rb") as fh:
        _check(fd, size, src, max_bytes)
        # read(size + 1), not read(max_bytes + 1): CPython allocates the whole request first,
        # and a 200 MB request is a fresh mmap whose pages fault in one by one (650 faults and
        # ~1 ms per 2.6 MB photo); a buffer of the file's size is recycled by malloc from one
        # file to the next
        data = fh.read(size + 1)
        if len(data) > size:  # it grows while we read it: the rest, up to the cap
            data += fh.read(max_bytes + 1 - len(data))
    if len(data) > max_bytes:  # grew while we read it
        raise FileTooLarge(f"more than the {max_bytes:,}-byte cap")
    return Loaded(src.rel, data, tag=src.tag)


#: The first request for a storage object asks for this much (or the cap, if smaller): most
#: images are smaller, so one GET reads them whole; a larger object takes a second GET for the
#: rest, and one that is no image costs no more than this before it is skipped.
FIRST_GET_BYTES = 4 * 2**20


def _read_object(src: SourceFile | ImageFile, max_bytes: int) -> Loaded:
    """An input at a storage URL (:mod:`stages.storage`), with the same checks as a file, in
    one GET for most images (see :data:`FIRST_GET_BYTES`)."""
    from .storage import object_size, read_range

    ask = min(FIRST_GET_BYTES, max_bytes + 1)
    data = read_range(src.path, 0, ask)
    whole = len(data) < ask  # the size is known without asking the store
    _check_head(
        data[:HEAD_BYTES], src, lambda: len(data) if whole else object_size(src.path) or len(data)
    )
    if len(data) == ask and ask <= max_bytes:  # more to read, up to the cap (+1: over it?)
        data += read_range(src.path, ask, max_bytes + 1)
    if len(data) > max_bytes:
        raise FileTooLarge(f"more than the {max_bytes:,}-byte cap")
    return Loaded(src.rel, data, tag=src.tag)


@functools.lru_cache(maxsize=16)
def _resolved_root(root: str, cwd: str) -> Path:
    """``root`` resolved, once per output root (and working folder, for a relative root):
    resolving it on every write was about a quarter of the write stage's CPU."""
    return Path(root).resolve()


def safe_join(root: Path, rel: str) -> Path:
    """``root / rel``, refusing absolute paths, ``..`` and anything resolving outside root.

    ``rel`` is ``/``-separated; a backslash is an ordinary character of a name (POSIX names may
    hold one), never a separator.
    """
    parts = rel.split("/")
    if rel.startswith("/") or any(p in ("..", ".", "") for p in parts):
        raise UnsafePath(f"output path {rel!r} is not a plain relative path")
    resolved = _resolved_root(str(root), os.getcwd())
    if _escapes(resolved, parts):
        raise UnsafePath(f"output path {rel!r} resolves outside {root}")
    return root.joinpath(*parts)


def _escapes(resolved: Path, parts: list[str]) -> bool:
    """Whether ``resolved / parts`` (plain names) resolves outside ``resolved``: only through
    a symbolic link among its existing components, so those alone are looked at (one lstat
    each, up to the first that does not exist), not every folder above the root as
    ``Path.resolve`` does on each call."""
    current = str(resolved)
    for i, part in enumerate(parts):
        current = os.path.join(current, part)
        try:
            mode = os.lstat(current).st_mode
        except OSError:  # not there (or not under a folder): nothing below it can be a link
            return False
        if stat.S_ISLNK(mode):
            return not Path(current, *parts[i + 1 :]).resolve().is_relative_to(resolved)
    return False


def write_atomic(path: Path, data: bytes) -> None:
    """A temporary file in the target folder, then put in place (:mod:`pipeline.atomic`: unnamed
    until then where it can be); not fsynced: see above."""
    atomic_write_bytes(path, data, fsync=False)


def write_output(root: Path, rel: str, data: bytes) -> None:
    """:func:`write_atomic` to ``root / rel`` (:func:`safe_join`), where an earlier output in
    its way is removed first (:func:`clear_way`)."""
    path = safe_join(root, rel)
    try:
        write_atomic(path, data)
    except (NotADirectoryError, IsADirectoryError, FileExistsError):
        clear_way(root, rel)  # (or another worker did, for an output beside this one)
        write_atomic(path, data)


def clear_way(root: Path, rel: str) -> str | None:
    """Remove what stands in the way of the output ``rel`` below ``root``, and say what (None:
    nothing, or nothing that may go): a file where one of its folders must be, or a folder
    where it must be. That is the output, or the folder of outputs, of an input gone: an input
    file replaced by a folder of the same name (``x.jpg`` by ``x.jpg/z.jpg``), or the reverse.
    Only below a first-level folder (a size's), only a regular file or a real folder (a folder
    with all it holds); a symbolic link, or anything else, is left, and the write fails."""
    parts = rel.split("/")
    current = root / parts[0]
    for i, part in enumerate(parts[1:], start=2):
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            return None
        last = i == len(parts)
        if last and stat.S_ISDIR(mode):
            shutil.rmtree(current)
        elif not last and stat.S_ISREG(mode):
            os.unlink(current)
        elif last or not stat.S_ISDIR(mode):
            return None
        else:
            continue
        return "/".join(parts[:i])
    return None
