"""Sources: the inputs on the command line, walked lazily, one record or item per entry.

**Keys.** A file inside a folder given as input is keyed by its path relative to that folder,
prefixed by the folder's name when the command line names several inputs (two folders with the
same name get a tag: ``photos~1f0c9a2b/``, from their real paths). A file given by itself is
keyed by its name, flat at the top (two with the same name: ``x~<tag>.jpg``, see
:mod:`stages.naming`). Keys are the program's strings for the bytes the file system holds
(``os.fsdecode``): any name works, non-UTF-8 ones included. In an output folder that earlier runs
filled, an input they knew keeps its key (:func:`plan_inputs`, given what the folder remembers:
``app.input_keys``).

**Identity.** Each file's item carries ``identity = {"size", "mtime_ns"}`` (plus ``sha256`` with
``verify_content``) and its absolute path as ``source``: resume redoes a key whose file changed,
or that now comes from another file (see :mod:`pipeline.runner`).

**Every entry gets one record or item**:

* a regular file becomes an :class:`~pipeline.Item` — a :class:`DataFile` when its extension is
  a data extension (an ``.npz`` that is a zip: one item per array, ``file.npz:name``), else a
  :class:`SourceFile`. Whether it is an image is decided by its content where it is first
  opened (the ``process`` command: a file named as an image in its resize worker, any other
  file and an object in storage in the read stage, :mod:`stages.steps`); anything else is
  ``skipped`` there with what it is;
* a named pipe, socket or device is ``skipped`` with what it is, and never opened (no hang);
* a symlink is followed to a file inside its input root (anywhere, with ``follow_symlinks``); a
  dangling one, a loop, one that leads outside the root and one to a folder are ``skipped``,
  each with its reason (a folder inside the root: its files are recorded at their own path);
  so is one into the output folder (outputs are never read back as inputs);
* a folder that cannot be listed is ``failed`` (``UnreadableFolder``);
* the output folder, when it lies inside an input folder, is ``skipped`` as one entry and never
  walked; so is any folder holding another run's ledger (``.pipeline/``): outputs are never
  read back as inputs.

An input given twice, or inside another input folder of the command line, is walked once (as
part of that folder: ``process a a/sub`` keys ``a``'s files alone, each once).

``include`` / ``exclude`` globs leave files out before all this (no record, as with
``rsync --exclude``). A glob matches a file's key or its name, in either case by default
(``*.jpg`` takes ``IMG_0001.JPG``: cameras and phones write upper-case names), exactly with
``case_sensitive_globs``. Case-blind matching is Python's ``re.IGNORECASE`` (simple case
folding, one character for one, so ``?`` still stands for one character): any key matches
without error, undecodable bytes (escaped as lone surrogates) included.

The walk is a depth-first ``os.scandir`` with one folder's names sorted at a time: memory
is bounded by the widest folder (~240 bytes a name, let go one by one as the walk goes) and the
depth, never by the number of files.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import hashlib
import os
import re
import stat
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from pipeline import Item, Record, Status

from .naming import Folder, choose_tag, fold, name_tag, placed, tagged, twin_folder
from .storage import is_url, open_input

__all__ = [
    "DATA_EXTENSIONS",
    "LEDGER_MARK",
    "DataFile",
    "InputKey",
    "InputPlan",
    "InputRoot",
    "SourceFile",
    "plan_inputs",
    "walk_inputs",
]

DATA_EXTENSIONS = frozenset({".npy", ".npz", ".csv", ".tsv"})
#: A folder holding this is another run's output folder (its ledger journal).
LEDGER_MARK = os.path.join(".pipeline", "ledger.sqlite")


@dataclass(frozen=True, slots=True)
class SourceFile:
    """A file to read: its path, its place below the size folders (``rel``), and the tag its
    output names take (see :mod:`stages.naming`; None for the plain names)."""

    path: str
    rel: str
    tag: str | None = None


@dataclass(frozen=True, slots=True)
class DataFile:
    """A numeric data input: a file, or one array (``member``) of an ``.npz`` file."""

    path: str
    rel: str
    member: str | None = None
    tag: str | None = None  # for a data file that turns out to hold an image
    place: str | None = None  # and its place below the size folders, when not rel (a twin's)

    @property
    def placed(self) -> str:
        """Its place below the size folders, when it holds an image."""
        return self.rel if self.place is None else self.place

    def is_table(self) -> bool:
        """Whether it is read as a CSV/TSV table (by its name, as :func:`stages.data.plan`
        does), not as an array."""
        return self.member is None and os.path.splitext(self.path)[1].lower() in (".csv", ".tsv")


@dataclass(frozen=True, slots=True)
class InputRoot:
    path: str  # absolute
    real: str  # symlinks resolved
    folder: bool
    prefix: str  # a folder's key prefix ("" or "label/"); a file's key
    tag: str | None = None  # a file argument's output-name tag
    #: Folders inside this one that the output folder knew as inputs of their own, by
    #: (st_dev, st_ino): their files keep those keys (prefix of each), as they were.
    nested: Mapping[tuple[int, int], str] = field(default_factory=dict, compare=False)


def walk_inputs(
    roots: Sequence[str | os.PathLike[str]] | InputPlan,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    data_extensions: frozenset[str] = frozenset(),
    never: Sequence[str | os.PathLike[str]] = (),
    verify_content: bool = False,
    case_sensitive_globs: bool = False,
    follow_symlinks: bool = False,
) -> Iterator[Item | Record]:
    """Yield an :class:`~pipeline.Item` (value: :class:`SourceFile` or :class:`DataFile`) or a
    :class:`~pipeline.Record` for every entry under ``roots`` (see the module docstring), or
    under the inputs of a plan (:func:`plan_inputs`: keys an output folder's earlier runs gave).

    ``never``: folders not to walk (the output folder). ``verify_content``: add the SHA-256 of
    each file to its identity (reads every file here, once). ``case_sensitive_globs``: the
    globs match in the key's case only. ``follow_symlinks``: a symlink in a folder is followed
    to a file outside that folder too.
    """
    flags = 0 if case_sensitive_globs else re.IGNORECASE
    wanted = [re.compile(fnmatch.translate(p), flags) for p in include]
    unwanted = [re.compile(fnmatch.translate(p), flags) for p in exclude]
    walk = _Walk(wanted, unwanted, data_extensions, never, verify_content, follow_symlinks)
    plan = roots if isinstance(roots, InputPlan) else plan_inputs(roots)
    for root in plan.roots:
        if is_url(root.path):
            yield from _walk_remote(root, walk, data_extensions, never)
        elif root.folder:
            yield from walk.folder(root)
        else:
            yield from walk.entry(root, root.path, root.prefix, root.tag)


def _walk_remote(
    root: InputRoot, walk: _Walk, data_extensions: frozenset[str], never: Sequence[object]
) -> Iterator[Item | Record]:
    from .remote_sources import RemoteWalk, walk_remote

    def data(path: str, key: str, tag: str | None, place: str | None) -> DataFile:
        return DataFile(path, key, tag=tag, place=place)

    def member(path: str, key: str, name: str) -> DataFile:
        return DataFile(path, key, name)

    how = RemoteWalk(walk._wanted, data_extensions, never, SourceFile, data, member)
    yield from walk_remote(how, root.path, root.folder, root.prefix, root.tag)


class InputKey(NamedTuple):
    """What an input was known by in an output folder: its real path (or URL), whether it is a
    folder, and its key (a folder's key prefix, ``""`` or ``"name/"``; a file's key). A named
    tuple, as :class:`InputPlan`: a seventh of a frozen dataclass's cost to define, which every
    command pays at its start."""

    real: str
    folder: bool
    key: str


class InputPlan(NamedTuple):
    """The keys of a run's inputs (:func:`plan_inputs`): ``roots`` to walk, and ``known``, what
    the output folder should remember for its next runs (these inputs, and the earlier ones
    that are still there)."""

    roots: tuple[InputRoot, ...]
    known: tuple[InputKey, ...]
    #: The inputs whose key is not the one the command line alone gives them: (input, key it
    #: keeps or takes, key the command line alone would give).
    changed: tuple[tuple[InputRoot, str, str], ...] = ()


def plan_inputs(
    roots: Sequence[str | os.PathLike[str]], earlier: Sequence[InputKey] = ()
) -> InputPlan:
    """Keys and tags of the command line's inputs, the same whatever their order (module
    docstring), in an output folder whose earlier runs knew the inputs ``earlier``.

    An input that an earlier run knew keeps its key, so that a run with other inputs beside it
    finds its files done rather than keying them anew (with several inputs a folder's name
    comes first: ``process a`` then ``process a b`` would otherwise key ``a``'s files again as
    ``a/...`` and write their outputs a second time). The earlier inputs that are still there
    count as inputs. A folder inside one of them is keyed as its files were there
    (``process a/sub`` after ``process a``: ``sub/...``), and a folder holding one of them
    keeps that one's keys for its files (``process a`` after ``process a/sub``: the walk of
    ``a`` gives ``sub``'s files the keys they had, :attr:`InputRoot.nested`). A new input
    beside them is prefixed by its name, which takes its tag (``b~<tag>/``) when an earlier
    input holds it, or when one holding the unprefixed keys (it was the only input) has an
    entry of that name (``a/b/``: its keys ``b/...``). An earlier input no longer there is
    forgotten (a folder moved elsewhere is keyed as if new)."""
    plain = _distinct(roots)
    alive = [k for k in earlier if _still_there(k)]
    held = {_same(k.real): k for k in alive}
    now = {_same(real) for _, real, _ in plain}
    kept = {r: k for _, r, is_dir in plain if (k := held.get(_same(r))) and k.folder == is_dir}
    others = [k for k in alive if _same(k.real) not in now]
    for _, real, is_dir in plain:  # a folder inside one the folder knew: keyed as it was there
        below = _inside(real, alive) if is_dir and real not in kept else None
        if below is not None:
            kept[real] = below
    owners = [k.real for k in (*kept.values(), *others) if k.folder and not k.key]
    for real in _lost_names(kept, owners):
        del kept[real]  # keyed anew, as a new input beside them (it takes a tag); never an owner
    new = [(path, real, is_dir) for path, real, is_dir in plain if real not in kept]
    earlier_here = [*kept.values(), *others]
    names = _names(new, taken=[k.key.rstrip("/").lower() for k in earlier_here], owners=owners)
    prefixed = len(plain) + len(others) > 1
    top_names = [*names.values(), *(k.key.rstrip("/") for k in earlier_here)]
    if any(not is_dir for _, _, is_dir in plain):  # a file given by itself: at the top too
        top_names += _entries(owners)
    top = Folder(top_names)
    out: list[InputRoot] = []
    for path, real, is_dir in plain:
        key = kept[real].key if real in kept else _key(names[real], is_dir, prefixed)
        tag = None if is_dir else choose_tag(key, top)
        out.append(InputRoot(path, real, is_dir, key, tag, _nested(real, alive) if is_dir else {}))
    alone = {r.real: r.prefix for r in _plan_alone(plain)} if kept or others else {}
    changed = tuple(
        (r, r.prefix, alone[r.real]) for r in out if alone and alone[r.real] != r.prefix
    )
    mine = tuple(InputKey(r.real, r.folder, r.prefix) for r in out)
    return InputPlan(tuple(out), (*mine, *others), changed)


def _distinct(roots: Sequence[str | os.PathLike[str]]) -> list[tuple[str, str, bool]]:
    """(path, real path, is a folder) of each input: the same one given twice once, and none
    inside another input folder (its files are that folder's)."""
    seen: set[str] = set()
    plain: list[tuple[str, str, bool]] = []
    for r in roots:
        if isinstance(r, str) and is_url(r):  # a storage URL: a prefix or an object
            from .remote_sources import is_prefix

            path = real = r
            if real.rstrip("/") in seen:
                continue
            seen.add(real.rstrip("/"))
            plain.append((path, real, is_prefix(path)))
            continue
        path = os.path.abspath(os.fspath(r))
        real = os.path.realpath(path)
        if real in seen:
            continue  # the same input twice
        seen.add(real)
        plain.append((path, real, os.path.isdir(path)))
    # an input inside another input folder is walked once, as part of that folder
    folders = [real for _, real, is_dir in plain if is_dir and not is_url(real)]
    return [p for p in plain if not any(_below(p[1], f) for f in folders)]


def _below(real: str, folder: str) -> bool:
    """Whether the local path ``real`` lies inside ``folder`` (both real paths)."""
    return not is_url(real) and real.startswith(folder.rstrip(os.sep) + os.sep)


def _same(real: str) -> str:
    """What tells two inputs apart: the real path, or the URL without its trailing slashes."""
    return real.rstrip("/") if is_url(real) else real


def _inside(real: str, known: Sequence[InputKey]) -> InputKey | None:
    """A local folder inside an input folder an earlier run knew (the deepest such), keyed as
    its files were there: that folder's prefix, then the path between them."""
    if is_url(real):
        return None
    holders = [k for k in known if k.folder and _below(real, k.real)]
    if not holders:
        return None
    holder = max(holders, key=lambda k: len(k.real))
    rel = os.path.relpath(real, holder.real).replace(os.sep, "/")
    return InputKey(real, True, f"{holder.key}{rel}/")


def _nested(real: str, known: Sequence[InputKey]) -> dict[tuple[int, int], str]:
    """The input folders the output folder knew inside the local folder ``real``: their keys'
    prefixes, by (st_dev, st_ino) (``process a`` after ``process a/sub`` keeps ``sub``'s)."""
    nested: dict[tuple[int, int], str] = {}
    if is_url(real):
        return nested
    for k in known:
        if k.folder and _below(k.real, real):
            try:
                st = os.stat(k.real)
            except OSError:
                continue  # gone since: walked as any folder
            nested[(st.st_dev, st.st_ino)] = k.key
    return nested


def _still_there(known: InputKey) -> bool:
    """Whether an earlier run's input is still there (one in storage is taken to be)."""
    if is_url(known.real):
        return True
    return os.path.isdir(known.real) if known.folder else os.path.lexists(known.real)


def _names(
    plain: Sequence[tuple[str, str, bool]], taken: Sequence[str] = (), owners: Sequence[str] = ()
) -> dict[str, str]:
    """The name each input (by real path) is known by, that no earlier run knew. ``taken``:
    the names (lower-cased) that earlier inputs hold; ``owners``: the earlier input folders
    that hold the unprefixed keys."""
    names = [
        (os.path.basename(real.rstrip(os.sep).rstrip("/")) or "root")
        if is_dir
        else os.path.basename(path)
        for path, real, is_dir in plain
    ]
    folded = [fold(n) for n in names]  # Photos and photos: one folder where case is ignored
    times = Counter(folded)  # counted once: 20,000 file arguments took 6.5 s with list.count
    held = set(taken)
    # two inputs of one name, a name an earlier input holds, or a name that is an entry of an
    # earlier input holding the unprefixed keys: the name tagged with a hash of its path
    return {
        real: tagged(n, name_tag(real if is_dir else path))
        if times[f] > 1 or n.lower() in held or _held_by(n, owners)
        else n
        for n, f, (path, real, is_dir) in zip(names, folded, plain, strict=True)
    }


def _lost_names(kept: Mapping[str, InputKey], owners: Sequence[str]) -> list[str]:
    """The kept inputs (by real path) whose name an input folder keyed without a prefix
    (``owners``; local ones) now has an entry of (``a/b/`` appeared after ``b`` took the prefix
    ``b/``): their keys would be that folder's files' keys too, one input's files taken for the
    other's. Not a folder inside that one (keyed as its files are there)."""
    owners = [o for o in owners if not is_url(o)]
    lost = []
    for real, k in kept.items():
        name = k.key.rstrip("/")
        if not name or "/" in name:  # no prefix, or a folder inside another input folder
            continue
        if any(o != real and not _below(real, o) and _held_by(name, [o]) for o in owners):
            lost.append(real)
    return lost


def _entries(owners: Sequence[str]) -> list[str]:
    """The names in the local folders ``owners``: earlier inputs keyed without a prefix, whose
    files' outputs are at the top of the output folder, where a file given by itself writes
    its own (``x``'s ``x.jpg`` must not be ``x.jpg``'s, an entry of theirs: it takes a tag)."""
    names: list[str] = []
    for owner in owners:
        if not is_url(owner):
            with contextlib.suppress(OSError):
                names += os.listdir(owner)
    return names


def _held_by(name: str, owners: Sequence[str]) -> bool:
    """Whether keys below ``name`` can be those of an input folder keyed without a prefix: it
    has an entry of that name (one in storage is taken to have)."""
    return any(is_url(o) or os.path.lexists(os.path.join(o, name)) for o in owners)


def _key(name: str, is_dir: bool, prefixed: bool) -> str:
    """A folder's key prefix or a file's key, from the name it is known by."""
    if is_dir:
        return f"{name}/" if prefixed else ""
    return name


def _plan_alone(plain: Sequence[tuple[str, str, bool]]) -> list[InputRoot]:
    """The keys the command line alone gives (no earlier input)."""
    names = _names(plain)
    prefixed = len(plain) > 1
    return [InputRoot(p, r, d, _key(names[r], d, prefixed)) for p, r, d in plain]


class _Walk:
    def __init__(
        self,
        include: Sequence[re.Pattern[str]],
        exclude: Sequence[re.Pattern[str]],
        data_extensions: frozenset[str],
        never: Sequence[str | os.PathLike[str]],
        verify_content: bool,
        follow_symlinks: bool = False,
    ) -> None:
        self.include, self.exclude = include, exclude
        self.data_extensions = data_extensions
        self.verify_content = verify_content
        self.follow_symlinks = follow_symlinks
        self.never: set[tuple[int, int]] = set()
        for folder in never:
            try:
                st = os.stat(folder)
            except OSError:
                continue  # not there: nothing of it to walk
            self.never.add((st.st_dev, st.st_ino))

    # -- folders -------------------------------------------------------------------------------
    def folder(self, root: InputRoot) -> Iterator[Item | Record]:
        # (folder, key prefix of its subtree, its path below that, its place below the prefix
        # in the output: that path with twins' names tagged): a folder the output folder knew
        # as an input of its own keeps its keys (root.nested)
        stack: list[tuple[str, str, str, str]] = [(root.path, root.prefix, "", "")]
        while stack:
            folder, prefix, rel, place = stack.pop()
            try:
                listed, dirs = _listing(folder)
            except OSError as exc:  # an unreadable folder is recorded, not silently dropped
                yield _failed(prefix + (rel or "."), folder, "UnreadableFolder", exc)
                continue
            names = Folder(listed)
            moved = place != rel  # below a twin folder: every file's place differs from its key
            subdirs: list[tuple[str, str, str, str]] = []
            listed.reverse()  # taken from the end: each name let go once done
            while listed:
                name = listed.pop()
                path, key_rel = os.path.join(folder, name), rel + name
                if name in dirs:
                    st = _lstat(path)  # None: it went away; its walk reports that
                    why = self._not_walked(path, st)
                    if why is None:
                        sub_prefix, sub_rel = self._subtree(root, st, prefix, key_rel)
                        sub_place = place + twin_folder(name, names) if sub_rel else ""
                        subdirs.append((path, sub_prefix, sub_rel, sub_place))
                    elif self._wanted(prefix + key_rel):
                        yield _skipped(prefix + key_rel + "/", path, why)
                    continue
                out, tag = placed(name, names, prefix, place, moved)
                yield from self.entry(root, path, prefix + key_rel, tag, out)
            stack.extend(reversed(subdirs))  # depth-first, in sorted order

    @staticmethod
    def _subtree(
        root: InputRoot, st: os.stat_result | None, prefix: str, key_rel: str
    ) -> tuple[str, str]:
        """A subfolder's key prefix and path below it (``st``: its ``lstat``): below its
        parent, or, if the output folder knew it as an input of its own, that input's prefix."""
        known = root.nested.get((st.st_dev, st.st_ino)) if root.nested and st else None
        if known is not None:
            return known, ""
        return prefix, key_rel + "/"

    def _not_walked(self, path: str, st: os.stat_result | None) -> str | None:
        if st is None:
            return None
        if (st.st_dev, st.st_ino) in self.never:
            return "the output folder: outputs are never read back as inputs"
        if os.path.exists(os.path.join(path, LEDGER_MARK)):
            return "another run's output folder (it holds .pipeline/): not walked"
        return None

    def _symlink(self, path: str, real_root: str | None) -> str | None:
        """Why the symlink at ``path`` is not followed, or None to follow it (to a file).
        ``real_root``: the input folder it is in (resolved), None for a file argument."""
        target = _target(path)
        if not isinstance(target, tuple):
            return target
        real, is_dir = target
        inside = real_root is None or real == real_root or _below(real, real_root)
        if is_dir:
            if inside:
                return (
                    "symlink to a folder inside the input root: its files are recorded at their "
                    "own path"
                )
            return "symlink to a folder outside its input root: not walked (give it as an input)"
        into = self._into_outputs(real)  # first: the option does not take those either
        if into is None and not inside and not self.follow_symlinks:
            return "symlink leads outside its input root; not followed (--follow-symlinks does)"
        return into

    def _into_outputs(self, real: str) -> str | None:
        """Why the file ``real`` (a symlink's resolved target) is not read, or None: it is in
        the output folder (a folder above it is), which would read this run's outputs back."""
        if not self.never:
            return None
        folder = os.path.dirname(real)
        while True:
            try:
                st = os.stat(folder)
            except OSError:
                return None
            if (st.st_dev, st.st_ino) in self.never:
                return "symlink into the output folder: outputs are never read back as inputs"
            parent = os.path.dirname(folder)
            if parent == folder:
                return None
            folder = parent

    # -- one entry -----------------------------------------------------------------------------
    def entry(
        self,
        root: InputRoot,
        path: str,
        rel: str,
        tag: str | None,
        out: str | None = None,
    ) -> Iterator[Item | Record]:
        """One entry: ``rel`` is its key (in a folder: the prefix and its path below; a file
        argument: its name); ``out`` its place below the size folders, when that is not ``rel``
        (a twin's tagged name, :func:`stages.naming.twin_name`)."""
        key = rel if root.folder else root.prefix
        if not self._wanted(key):
            return
        try:
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                why = self._symlink(path, root.real if root.folder else None)
                if why is not None:
                    yield _skipped(key, path, why, st)
                    return
                st = os.stat(path)
        except OSError as exc:
            yield _failed(key, path, type(exc).__name__, exc)
            return
        what = _special(st.st_mode)
        if what is not None:
            yield _skipped(key, path, f"{what}: not a regular file; never opened", st)
            return
        identity = _stat_identity(st)
        if self.verify_content:
            try:
                identity["sha256"] = _sha256(path)
            except OSError as exc:
                yield _failed(key, path, type(exc).__name__, exc)
                return
        name = path.rpartition(os.sep)[2]
        suffix = os.path.splitext(name)[1].lower()
        if suffix in self.data_extensions:
            yield from _data(path, key, suffix, identity, tag, out)
            return
        value = SourceFile(path, rel if out is None else out, tag)
        yield Item(key=key, value=value, source=path, identity=identity)

    def _wanted(self, key: str) -> bool:
        if self.include and not _matches(key, self.include):
            return False
        return not (self.exclude and _matches(key, self.exclude))


def _listing(folder: str) -> tuple[list[str], set[str]]:
    """The names in ``folder``, sorted, and those of its subfolders (from the listing's file
    types: no ``stat``). Names alone are kept, a string each: ``os.DirEntry`` objects held their
    path too, and each the stat it took, until the folder was done (a flat folder of 300,000
    files: 304 MiB more at the walk's peak, 74 MiB with names alone)."""
    names: list[str] = []
    dirs: set[str] = set()
    with os.scandir(folder) as it:
        for entry in it:
            names.append(entry.name)
            if _is_dir(entry):
                dirs.add(entry.name)
    names.sort()
    return names, dirs


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError:
        return None


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _target(path: str) -> tuple[str, bool] | str:
    """The symlink ``path``'s resolved target and whether it is a folder; else why it cannot be
    followed."""
    try:
        target = os.path.realpath(path, strict=True)
    except FileNotFoundError:
        return "dangling symlink: its target does not exist"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symlink loop: it leads back to itself"
        return f"symlink that cannot be followed: {exc.strerror or exc}"
    except RuntimeError:  # older Pythons report a loop this way
        return "symlink loop: it leads back to itself"
    return target, os.path.isdir(target)


_SPECIAL = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _special(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return None
    for test, what in _SPECIAL:
        if test(mode):
            return what
    return "an entry of an unknown type"


def _sha256(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _matches(rel: str, patterns: Sequence[re.Pattern[str]]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return any(p.match(rel) or p.match(name) for p in patterns)


def _skipped(key: str, path: str, reason: str, st: os.stat_result | None = None) -> Record:
    return Record(
        key=key, status=Status.SKIPPED, source=path, reason=reason, identity=_identity(path, st)
    )


def _failed(key: str, path: str, error_type: str, exc: OSError) -> Record:
    return Record(
        key=key,
        status=Status.FAILED,
        source=path,
        stage="sources",
        error_type=error_type,
        error=f"{type(exc).__name__}: {exc.strerror or exc}",
        attempts=1,
        identity=_identity(path),
    )


def _identity(path: str, st: os.stat_result | None = None) -> dict[str, Any] | None:
    """The identity of an entry the walk records without reading it (a special file, a bad
    symlink, one that cannot be read): its own ``lstat``, so that a later run marks its record
    "input gone" once it is (``app.gone.mark_gone``); None when even that fails."""
    if st is None:
        try:
            st = os.lstat(path)
        except OSError:
            return None
    return _stat_identity(st)


def _stat_identity(st: os.stat_result) -> dict[str, Any]:
    """A file's identity, from its ``stat``: what resume compares (module docstring)."""
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _data(
    path: str,
    key: str,
    suffix: str,
    identity: dict[str, Any],
    tag: str | None,
    place: str | None = None,
) -> Iterator[Item | Record]:
    if suffix != ".npz":
        value = DataFile(path, key, tag=tag, place=place)
        yield Item(key=key, value=value, source=path, identity=identity)
        return
    from .npz_items import npz_items  # and zipfile: only a walk that meets an .npz pays for it

    yield from npz_items(
        key,
        path,
        identity,
        lambda: open_input(path),
        lambda: SourceFile(path, key if place is None else place, tag),
        lambda member: DataFile(path, key, member),
    )
