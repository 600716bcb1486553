"""Inputs at storage URLs (:mod:`stages.storage`): a prefix walked folder by folder, or one
object, with the same keys and output names as a local folder (:mod:`stages.sources`).

* Keys: an object's path below the prefix given (``s3://bkt/photos/a/b.jpg`` given as
  ``s3://bkt/photos/`` is ``a/b.jpg``, or ``photos/a/b.jpg`` when several inputs are given).
* ``source``: the object's URL (the bare URL: options and credentials are never part of it).
* ``identity``: ``{"size", "etag"}`` (or ``{"size", "mtime"}`` where the store has no ETag),
  from the listing itself: no request per object. ``--verify-content`` adds nothing here: the
  ETag of a single-request upload already is a content hash.
* The walk is depth-first with one folder's listing at a time (see
  :func:`stages.storage.list_folder`). The output prefix and any ``.pipeline/`` folder (another
  run's ledger) are never walked; each is ``skipped`` as one entry when met.
* An ``.npz`` object is ``skipped``: its arrays are planned from the zip directory, which a
  storage input does not offer yet (``.npy``, CSV and TSV objects are data inputs as usual).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from pipeline import Item, Record, Status

from .naming import Folder, choose_tag
from .storage import ObjectInfo, StorageURL, identity, is_url, list_folder, object_info, options_of

__all__ = ["is_prefix", "walk_remote"]


def is_prefix(url: str) -> bool:
    """Whether ``url`` names a "folder" (a prefix with objects below it) rather than an
    object; a URL with nothing there counts as an (empty) folder."""
    if url.endswith("/"):
        return True
    info = object_info(url)
    return info is None or info.get("type") == "directory"


@dataclass(frozen=True, slots=True)
class RemoteWalk:
    """How the walk of :mod:`stages.sources` treats the objects it meets: ``wanted`` (the
    globs), the data extensions, the prefixes never walked, and the value classes
    (``SourceFile``, ``DataFile``: passed in, so this module does not import its caller)."""

    wanted: Callable[[str], bool]
    data_extensions: frozenset[str]
    never: Sequence[object]
    image: Callable[[str, str, str | None], object]
    data: Callable[[str, str, str | None], object]


def walk_remote(
    walk: RemoteWalk, url: str, folder: bool, prefix: str, tag: str | None
) -> Iterator[Item | Record]:
    """Items (or records) for the objects below the prefix ``url`` (``folder``), or for the
    object ``url`` itself (keyed ``prefix``, its name)."""
    if not folder:
        info = object_info(url) or {}
        size = int(info.get("size", 0) or 0)
        obj = ObjectInfo(StorageURL(url, options_of(url)), prefix, size, identity(info))
        yield from _entry(walk, obj, prefix, tag)
        return
    skip = {str(n).rstrip("/") for n in walk.never if is_url(n)}
    stack: list[tuple[str, str]] = [(url, "")]
    while stack:
        where, rel = stack.pop()
        files, folders = list_folder(where)
        subnames = [f.rstrip("/").rpartition("/")[2] for f in folders]
        names = Folder([o.rel for o in files] + subnames)
        subdirs: list[tuple[str, str]] = []
        for sub, name in zip(folders, subnames, strict=True):
            key = prefix + rel + name
            why = _not_walked(sub, name, skip)
            if why is None:
                subdirs.append((sub, rel + name + "/"))
            elif walk.wanted(key):
                yield _skipped(key + "/", str(sub), why)
        for obj in files:
            yield from _entry(walk, obj, prefix + rel + obj.rel, choose_tag(obj.rel, names))
        stack.extend(reversed(subdirs))


def _not_walked(sub: str, name: str, skip: set[str]) -> str | None:
    if sub.rstrip("/") in skip:
        return "the output folder: outputs are never read back as inputs"
    if name == ".pipeline":
        return "another run's ledger folder (.pipeline/): not walked"
    return None


def _entry(walk: RemoteWalk, obj: ObjectInfo, key: str, tag: str | None) -> Iterator[Item | Record]:
    if not walk.wanted(key):
        return
    source = str(obj.url)
    suffix = os.path.splitext(obj.rel.rpartition("/")[2])[1].lower()
    if suffix == ".npz" and suffix in walk.data_extensions:
        yield _skipped(key, source, "an .npz object at a storage URL is not supported yet")
        return
    make = walk.data if suffix in walk.data_extensions else walk.image
    yield Item(key=key, value=make(obj.url, key, tag), source=source, identity=obj.identity)


def _skipped(key: str, source: str, reason: str) -> Record:
    return Record(key=key, status=Status.SKIPPED, source=source, reason=reason)
