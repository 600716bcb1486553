"""Sources: input folders walked lazily, in a stable order.

Every regular file under an input root becomes one input whose key is its path relative to the
root (prefixed by the root's folder name when there are several roots, so keys never collide).
Images become :class:`SourceFile` inputs; numeric data files (``data_extensions``) become
:class:`DataFile` inputs, one per array for an ``.npz`` file (key ``file.npz:name``; only its
zip directory is read here). Other files are yielded as ``skipped`` records with the reason, so
they appear in the manifest instead of vanishing. Symlinks are followed only when they resolve to a
place inside the same input root; others are recorded ``skipped`` too.

The walk is a depth-first ``os.scandir`` with one directory's entries sorted at a time: memory
is bounded by the widest folder and the depth, never by the number of files.
"""

from __future__ import annotations

import fnmatch
import os
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline import Item, Record, Status

__all__ = ["DATA_EXTENSIONS", "IMAGE_EXTENSIONS", "DataFile", "SourceFile", "walk_inputs"]

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".gif", ".webp", ".tif", ".tiff", ".bmp", ".mpo", ".ppm"}
)
DATA_EXTENSIONS = frozenset({".npy", ".npz", ".csv", ".tsv"})


@dataclass(frozen=True, slots=True)
class SourceFile:
    """A file to process: its absolute path and its output-relative path (``rel``)."""

    path: str
    rel: str


@dataclass(frozen=True, slots=True)
class DataFile:
    """A numeric data input: a file, or one array (``member``) of an ``.npz`` file."""

    path: str
    rel: str
    member: str | None = None


def _matches(rel: str, patterns: Sequence[str]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(rel, p) or fnmatch.fnmatchcase(name, p) for p in patterns)


def walk_inputs(
    roots: Sequence[str | os.PathLike[str]],
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    extensions: frozenset[str] = IMAGE_EXTENSIONS,
    data_extensions: frozenset[str] = frozenset(),
) -> Iterator[Item | Record]:
    """Yield an :class:`~pipeline.Item` (value: :class:`SourceFile` or :class:`DataFile`) or a
    Record per file (skipped, or failed when it cannot even be listed).

    ``include`` / ``exclude`` are glob patterns matched against the key and the file name; files
    they leave out are not inputs at all (no record), as with ``rsync --exclude``.
    """
    paths = [Path(r) for r in roots]
    names = [p.resolve().name or "root" for p in paths]
    prefixed = len(paths) > 1
    if prefixed and len(set(names)) != len(names):  # two roots named alike: number them
        names = [f"{n}.{i}" for i, n in enumerate(names)]
    for root, name in zip(paths, names, strict=True):
        if root.is_file():
            rel = root.name
            key = f"{name}/{rel}" if prefixed else rel
            yield from _one(root, key, False, include, exclude, extensions, data_extensions)
            continue
        for path, rel, outside in _walk(root, root.resolve()):
            key = f"{name}/{rel}" if prefixed else rel
            yield from _one(path, key, outside, include, exclude, extensions, data_extensions)


def _one(
    path: Path,
    key: str,
    outside: bool | str,
    include: Sequence[str],
    exclude: Sequence[str],
    extensions: frozenset[str],
    data_extensions: frozenset[str],
) -> Iterator[Item | Record]:
    if include and not _matches(key, include):
        return
    if exclude and _matches(key, exclude):
        return
    if isinstance(outside, str):
        yield Record(
            key=key,
            status=Status.FAILED,
            source=str(path),
            stage="sources",
            error_type="UnreadableFolder",
            error=outside,
            attempts=1,
        )
        return
    if outside:
        yield Record(
            key=key,
            status=Status.SKIPPED,
            source=str(path),
            reason="symlink leads outside its input root; not followed",
        )
        return
    suffix = path.suffix.lower()
    if suffix in data_extensions:
        yield from _data(path, key, suffix)
        return
    if suffix not in extensions:
        what = f"'{suffix}'" if suffix else "no extension"
        kinds = "an image or data file" if data_extensions else "an image file"
        yield Record(
            key=key, status=Status.SKIPPED, source=str(path), reason=f"not {kinds} ({what})"
        )
        return
    yield Item(key=key, value=SourceFile(str(path), key), source=str(path))


def _data(path: Path, key: str, suffix: str) -> Iterator[Item | Record]:
    if suffix != ".npz":
        yield Item(key=key, value=DataFile(str(path), key), source=str(path))
        return
    try:
        with zipfile.ZipFile(path) as zf:
            members = [n for n in zf.namelist() if n.endswith(".npy")]
    except (OSError, zipfile.BadZipFile) as exc:
        yield Record(
            key=key,
            status=Status.FAILED,
            source=str(path),
            stage="sources",
            error_type=type(exc).__name__,
            error=f"not a readable .npz (zip) file: {exc}",
            attempts=1,
        )
        return
    if not members:
        yield Record(key=key, status=Status.SKIPPED, source=str(path), reason="no arrays in .npz")
    for member in members:
        name = f"{key}:{member.removesuffix('.npy')}"
        yield Item(key=name, value=DataFile(str(path), key, member), source=str(path))


def _walk(root: Path, real_root: Path) -> Iterator[tuple[Path, str, bool | str]]:
    """(path, relative path, what) per file: False, True (symlink outside the root) or an error."""
    stack: list[tuple[Path, str]] = [(root, "")]
    while stack:
        folder, prefix = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:  # an unreadable folder is recorded, not silently dropped
            yield folder, prefix or ".", f"{type(exc).__name__}: {exc.strerror or exc}"
            continue
        subdirs: list[tuple[Path, str]] = []
        for entry in entries:
            rel = f"{prefix}{entry.name}"
            path = Path(entry.path)
            if entry.is_symlink():
                try:
                    target = path.resolve(strict=True)
                except (OSError, RuntimeError):
                    yield path, rel, True
                    continue
                if not target.is_relative_to(real_root):
                    yield path, rel, True
                    continue
                if target.is_dir():
                    continue  # a link to a folder inside the root: its files are walked there
            if entry.is_dir(follow_symlinks=False):
                subdirs.append((path, rel + "/"))
            elif entry.is_file(follow_symlinks=True):
                yield path, rel, False
        stack.extend(reversed(subdirs))  # depth-first, in sorted order
