"""Inputs at storage URLs (:mod:`stages.storage`): a prefix walked folder by folder, or one
object, with the same keys and output names as a local folder (:mod:`stages.sources`).

* Keys: an object's path below the prefix given (``s3://bkt/photos/a/b.jpg`` given as
  ``s3://bkt/photos/`` is ``a/b.jpg``, or ``photos/a/b.jpg`` when several inputs are given).
* ``source``: the object's URL (the bare URL: options and credentials are never part of it).
* ``identity``: ``{"size", "etag"}`` (or ``{"size", "mtime"}`` where the store has no ETag),
  from the listing itself: no request per object. ``--verify-content`` adds nothing here: the
  ETag of a single-request upload already is a content hash.
* The walk is depth-first in the store's key order (:func:`stages.storage.iter_folder`: on S3
  page by page): a subfolder is walked when its listing meets it, so the walk holds one
  listing cursor per level of the tree, never a folder's list of subfolders. The output prefix
  and any ``.pipeline/`` folder (another run's ledger) are never walked; each is ``skipped`` as
  one entry when met.
* Tags (:mod:`stages.naming`, rule 3) need every name of a folder before its first file: a
  first pass over the folder's listing collects them. Up to ``SPILL_NAMES`` entries, the
  entries themselves are kept and walked from memory; above, the lower-cased names go to a
  temporary SQLite file (:class:`SpilledNames`, in the temporary folder, removed when the folder
  is done) and the folder is listed a second time for the walk. So memory holds at most
  ``SPILL_NAMES`` entries per level of the tree, whatever a folder holds, with the same tags
  as the in-memory :class:`~stages.naming.Folder`. (An object that appears between the two
  passes is walked, its tag chosen among the first pass's names.)
* An ``.npz`` object is one item per array (``key:name``), as a local ``.npz``: its zip
  directory is read with range requests at the walk, and each array is planned from a local
  copy of the object (:mod:`stages.remote_data`; one copy per array). ``.npy``, CSV and TSV
  objects are data inputs as usual.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from pipeline import Item, Record, Status

from .naming import Folder, Siblings, fold, placed, taken_by, twin_folder, twin_name
from .npz_items import npz_items
from .storage import (
    ObjectInfo,
    StorageURL,
    is_url,
    iter_folder,
    object_info,
    open_input,
    options_of,
)

__all__ = ["SPILL_NAMES", "SpilledNames", "is_prefix", "walk_remote"]

#: Entries of one folder walked from memory; a larger folder's names spill to disk.
SPILL_NAMES = 50_000

#: Names written to the spill file per statement.
_BATCH = 5_000


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
    data: Callable[[str, str, str | None, str | None], object]  # (path, key, tag, place)
    member: Callable[[str, str, str], object]  # (path, rel, member): an array of an .npz


def walk_remote(
    walk: RemoteWalk, url: str, folder: bool, prefix: str, tag: str | None
) -> Iterator[Item | Record]:
    """Items (or records) for the objects below the prefix ``url`` (``folder``), or for the
    object ``url`` itself (keyed ``prefix``, its name)."""
    if not folder:
        info = object_info(url) or {}
        obj = ObjectInfo.of(StorageURL(url, options_of(url)), prefix, info)
        yield from _entry(walk, obj, prefix, tag)
        return
    skip = {str(n).rstrip("/") for n in walk.never if is_url(n)}
    yield from _folder(walk, StorageURL(url, options_of(url)), prefix, "", skip)


def _folder(
    walk: RemoteWalk, where: StorageURL, prefix: str, rel: str, skip: set[str], place: str = ""
) -> Iterator[Item | Record]:
    """The folder ``where`` (keys ``prefix + rel + name``; ``place``: ``rel`` with twins'
    names tagged, its place in the output), its subfolders walked as met."""
    names, held = _first_pass(where)
    moved = place != rel  # below a twin folder: every object's place differs from its key
    try:
        for entry in held if held is not None else iter_folder(where):
            if isinstance(entry, ObjectInfo):
                out, tag = placed(entry.rel, names, prefix, place, moved)
                yield from _entry(walk, entry, prefix + rel + entry.rel, tag, out)
                continue
            name = _name(entry)
            why = _not_walked(entry, name, skip)
            if why is None:
                sub = place + _prefix_place(name, names, entry)
                yield from _folder(walk, entry, prefix, rel + name + "/", skip, sub)
            elif walk.wanted(prefix + rel + name):
                yield _skipped(prefix + rel + name + "/", str(entry), why)
    finally:
        if isinstance(names, SpilledNames):
            names.close()


def _prefix_place(name: str, names: Siblings, prefix: StorageURL) -> str:
    """The place of the prefix ``name`` (a folder) in the output: :func:`twin_folder`'s, but
    beside an object of the very same name (``a.jpg`` and ``a.jpg/b.jpg``, as object storage
    allows) the tag of its name with the slash: the object's outputs take the tag of the name
    alone, and one path cannot be the object's output and the folder of the prefix's."""
    if names.is_twin(name):
        info = object_info(StorageURL(str(prefix).rstrip("/"), prefix.options))
        if info is not None and info.get("type") != "directory":
            return twin_name(name, names, name + "/") + "/"
    return twin_folder(name, names)


def _name(entry: ObjectInfo | StorageURL) -> str:
    if isinstance(entry, ObjectInfo):
        return entry.rel
    return "" if entry.endswith("//") else entry.rstrip("/").rpartition("/")[2]


def _first_pass(where: StorageURL) -> tuple[Siblings, list[ObjectInfo | StorageURL] | None]:
    """The folder's names, and its entries when there are at most ``SPILL_NAMES`` (else None:
    the names are on disk and the folder is to be listed again)."""
    held: list[ObjectInfo | StorageURL] = []
    listing = iter_folder(where)
    for entry in listing:
        held.append(entry)
        if len(held) > SPILL_NAMES:
            spilled = SpilledNames()
            try:
                spilled.add(_name(e) for e in held)
                held.clear()
                spilled.add(_name(e) for e in listing)
            except BaseException:
                spilled.close()
                raise
            return spilled, None
    return Folder(_name(e) for e in held), held


class SpilledNames:
    """A folder's names, folded (:func:`~stages.naming.fold`, as :class:`~stages.naming.Folder`
    keeps them), in a temporary SQLite file (a :class:`~stages.naming.Siblings`): memory holds
    SQLite's page cache, not the names."""

    def __init__(self) -> None:
        fd, self.path = tempfile.mkstemp(prefix="pixpipe-names-", suffix=".sqlite")
        os.close(fd)
        self._db = sqlite3.connect(self.path)
        self._db.execute("PRAGMA journal_mode = OFF")
        self._db.execute("PRAGMA synchronous = OFF")
        # each folded name, and how many entries have it: twins have 2+
        self._db.execute("CREATE TABLE folds (name BLOB PRIMARY KEY, n INTEGER) WITHOUT ROWID")

    def add(self, names: Iterable[str]) -> None:
        batch: list[tuple[bytes]] = []
        for name in names:
            batch.append((_key(fold(name)),))
            if len(batch) >= _BATCH:
                self._insert(batch)
        self._insert(batch)
        self._db.commit()

    def _insert(self, batch: list[tuple[bytes]]) -> None:
        self._db.executemany(
            "INSERT INTO folds VALUES (?, 1) ON CONFLICT (name) DO UPDATE SET n = n + 1", batch
        )
        batch.clear()

    def is_name(self, lower: str) -> bool:
        found = self._db.execute("SELECT 1 FROM folds WHERE name = ?", (_key(fold(lower)),))
        return found.fetchone() is not None

    def is_twin(self, name: str) -> bool:
        found = self._db.execute("SELECT n FROM folds WHERE name = ?", (_key(fold(name)),))
        row = found.fetchone()
        return row is not None and int(row[0]) > 1

    def is_taken(self, lower: str) -> bool:
        return taken_by(lower, self.is_name)

    def close(self) -> None:
        self._db.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)


def _key(lower: str) -> bytes:
    return lower.encode("utf-8", "surrogatepass")


def _not_walked(sub: str, name: str, skip: set[str]) -> str | None:
    if not name:  # (stages.storage: the keys below it have an empty segment, "a//b.jpg")
        return "keys with an empty path segment ('//'): not walked (no file path has one)"
    if sub.rstrip("/") in skip:
        return "the output folder: outputs are never read back as inputs"
    if name == ".pipeline":
        return "another run's ledger folder (.pipeline/): not walked"
    return None


def _entry(
    walk: RemoteWalk, obj: ObjectInfo, key: str, tag: str | None, out: str | None = None
) -> Iterator[Item | Record]:
    """One object; ``out``: its place below the size folders, when not ``key`` (a twin's,
    :func:`stages.naming.twin_name`)."""
    if not walk.wanted(key):
        return
    source = str(obj.url)
    suffix = os.path.splitext(obj.rel.rpartition("/")[2])[1].lower()
    if suffix == ".npz" and suffix in walk.data_extensions:
        yield from _npz(walk, obj, key, tag, key if out is None else out)
        return
    if suffix in walk.data_extensions:
        value = walk.data(obj.url, key, tag, out)
    else:
        value = walk.image(obj.url, key if out is None else out, tag)
    yield Item(key=key, value=value, source=source, identity=obj.identity)


def _npz(
    walk: RemoteWalk, obj: ObjectInfo, key: str, tag: str | None, place: str
) -> Iterator[Item | Record]:
    """An ``.npz`` object, as a local one (:func:`~stages.npz_items.npz_items`): its zip
    directory is read with range requests (the end of the object, not all of it)."""
    return npz_items(
        key,
        str(obj.url),
        obj.identity,
        lambda: open_input(obj.url),
        lambda: walk.image(obj.url, place, tag),
        lambda member: walk.member(obj.url, key, member),
    )


def _skipped(key: str, source: str, reason: str) -> Record:
    return Record(key=key, status=Status.SKIPPED, source=source, reason=reason)
