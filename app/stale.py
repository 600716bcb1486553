"""Earlier outputs that no record lists any more: removed at the end of a run.

A run that redoes an input may list other outputs for it than the earlier run did: another
format or other sizes (``512/x.jpg`` became ``512/x.jpg.png``), other names (a twin or a
sibling named like an output came or went, :mod:`stages.naming`). Or the input changed and is
now unreadable: its earlier thumbnail shows a picture that is no longer there. Left in place,
such files look current to whatever reads the folder (a data loader, a web page, a copy).
:class:`StaleOutputs` removes them once every record of the folder has streamed by.

For a key this run redid (its earlier record: :attr:`pipeline.Record.earlier`), the files the
earlier record listed are removed when

* the new record is ``ok``: those it does not list (the others were written again);
* the new record is ``failed``, ``skipped`` or ``cancelled`` and the input changed (its
  ``source`` or ``identity``): all of them — they show content that is gone;
* the new record is ``skipped`` by a stage that withdrew the input (:class:`pipeline.Withdraw`:
  a site that opts out of AI use): all of them.

They are kept when the redo failed on the same input (``--force``, other options, a server
that did not answer): still a true picture of the input, perhaps its only one; and when the
run cancelled the key of an unchanged input (nothing was decided). The new record then keeps
the earlier one's result (:mod:`pipeline.recorder`), so they stay listed, and a later redo that
succeeds removes them. A file is never removed when any record of the
folder lists it (this run's or an earlier one's, in any order: every listed path goes through
a fixed-size Bloom filter, :class:`Listed`, whose rare false positive keeps a file, never
removes one), when it was written since the run started (a local file's ``mtime``), when it
is not a regular file, or outside the output folder. Emptied folders below the output folder
go too. ``summary.json`` says what was removed (``collected.stale_outputs``), and so does the
console.

The outputs of inputs gone are kept, but for one whose name a current output now has (exactly,
or but for case): :meth:`StaleOutputs.taken`, asked by ``app.gone.mark_gone``.

The paths to remove are written, as they come, to a file of the ledger's (:data:`PENDING`),
removed once they are: a run killed before its end (SIGKILL, a power cut) has its redone
records in the ledger already, which no longer say what they replaced; the next run removes
those paths too (when no record lists them then).

Memory: two Bloom filters of 1 MiB (every listed path; this run's new outputs, folded), only in
a folder that had records before the run; the paths to remove are in that file.
"""

from __future__ import annotations

import itertools
import logging
import os
import stat
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

from pipeline import Record, Status, shown
from pipeline.ledger import JOURNAL
from stages.files import UnsafePath
from stages.naming import fold
from stages.storage import StorageError, is_url
from stages.thumbs import output_paths, remove_output

from .endofrun import MANIFEST, RecordFeed

#: The paths a run is to remove at its end, in the ledger's folder, until it has (module
#: docstring): a run killed before its end leaves them to the next run.
PENDING = ".pipeline/stale-outputs"

__all__ = ["Listed", "StaleOutputs"]

log = logging.getLogger("app")

#: Paths removed, and removal errors, kept for ``summary.json`` (the counts have them all).
MAX_LISTED = 20

#: Objects in storage are removed by this many threads at once (one request each), this many
#: paths at a time (memory stays bounded, however many there are).
STORAGE_THREADS = 16
STORAGE_CHUNK = 256


class Listed:
    """A Bloom filter of output paths: ``maybe(path)`` is True for every path added (and, for a
    few in a hundred at a million paths, for one never added). 2**23 bits, 3 probes."""

    BITS = 1 << 23
    _MASK = BITS - 1
    _MIX = 0x9E3779B97F4A7C15  # 2**64 / golden ratio: the second hash, from the first

    def __init__(self) -> None:
        self.bits = bytearray(self.BITS // 8)

    def _probes(self, path: str) -> tuple[int, int, int]:
        h1 = hash(path) & 0xFFFFFFFFFFFFFFFF
        h2 = ((h1 * self._MIX) & 0xFFFFFFFFFFFFFFFF) >> 40 | 1
        mask = self._MASK
        return h1 & mask, (h1 + h2) & mask, (h1 + 2 * h2) & mask

    def add(self, path: str) -> None:
        bits = self.bits
        for i in self._probes(path):
            bits[i >> 3] |= 1 << (i & 7)

    def maybe(self, path: str) -> bool:
        bits = self.bits
        return all(bits[i >> 3] & (1 << (i & 7)) for i in self._probes(path))


class StaleOutputs:
    """A collector (this run's records: which earlier outputs to remove) and a sink of the
    feed (every record of the folder: which paths are listed); see the module docstring.

    ``root``: the output folder (a path or a storage URL); ``ledger``: the folder of the run's
    ledger (the same, or a storage output's working folder). A folder without records before
    the run redoes nothing: no filter then, no cost per record."""

    name = "stale_outputs"

    def __init__(self, root: str, ledger: Path, feed: RecordFeed) -> None:
        self.root = root
        self.feed = feed
        self.started = time.time_ns()
        active = any((ledger / name).exists() for name in (MANIFEST, JOURNAL))
        self.listed = Listed() if active else None  # every record's outputs
        self.current = Listed() if active else None  # this run's new outputs, folded
        # the paths to remove, NUL-separated, in the ledger's folder: a run killed before its
        # end leaves them to the next one (whose records no longer say what they replaced)
        self.pending = ledger / PENDING
        self._doomed: IO[bytes] | None = None
        if active and self.pending.exists():
            self._doomed = self.pending.open("a+b", buffering=0)
        self.counts = {"removed": 0, "listed": 0, "newer": 0, "missing": 0, "failed": 0}
        self.errors: list[str] = []
        self.first: list[str] = []  # the first paths removed, shown
        if active:
            feed.add_sink(self)

    # -- the collector: this run's records ------------------------------------------------------
    def add(self, record: Record) -> None:
        if self.current is not None and record.status is Status.OK:
            for path in output_paths(record.value):
                self.current.add(fold(path))
        earlier = record.earlier
        if earlier is None or earlier.value is None:
            return
        for path in _superseded(record, earlier):
            self._doom(path)

    def _doom(self, path: str) -> None:
        """``path`` is to be removed at the end, unless a record lists it then."""
        if self._doomed is None:  # closed by discard(), whatever happens
            self.pending.parent.mkdir(exist_ok=True)  # (a folder with a manifest alone)
            self._doomed = self.pending.open("a+b", buffering=0)
        self._doomed.write(os.fsencode(path) + b"\0")  # at once: a SIGKILL loses none

    def result(self) -> dict[str, Any]:
        """Remove what is stale and say so. The engine asks after the ledger's pass over the
        records the run did not write (:func:`pipeline.summary.collect`): only then has every
        listed path gone through the filter. A feed that failed (a manifest that cannot be
        read) raises its error here, and nothing is removed."""
        if self.listed is not None:
            self.feed.check(self)
            self._sweep()
        return {**self.counts, "first": self.first, "errors": self.errors}

    def taken(self, rel: str) -> bool:
        """Whether an output this run wrote now has the name ``rel``, exactly or but for case
        and normalization (:func:`stages.naming.fold`); asked once the run's records are all
        in, for the outputs of an input gone, whose names the naming rules no longer keep
        free. Such an output is no longer the gone input's; a file ``rel`` other than this
        run's output is removed at the end (on a disk that ignores case, the two would be
        one). Local: names compared on disk, a file written since the run started; storage:
        exact names, through the filters. Local, too: ``rel`` is a folder now, or a folder on
        its path is a file (:func:`stages.files.clear_way` removed the gone output for an
        output of this run, or anything else did): it is no longer there to list."""
        if self.current is None:
            return False
        if not is_url(self.root) and _blocked(Path(self.root), rel):
            return True
        if not self.current.maybe(fold(rel)):
            return False
        if is_url(self.root):
            return self.listed is not None and self.listed.maybe(rel)
        root = Path(self.root)
        written = [p for p in _spellings(root, rel) if _newer(root / p, self.started)]
        if not written:
            return False
        if rel not in written:
            self._doom(rel)
        return True

    # -- the sink: every record of the folder ---------------------------------------------------
    def take(self, record: dict[str, Any]) -> None:
        assert self.listed is not None
        for path in output_paths(record.get("result")):
            self.listed.add(path)

    def finish(self) -> None:
        return None  # the feed has ended; result() removes, once the engine is done too

    def discard(self) -> None:
        if self._doomed is not None:
            self._doomed.close()
            self._doomed = None

    def _sweep(self) -> None:
        emptied: set[str] = set()  # the folders of removed files (few: the size folders' own)
        for rel, what in self._removals():
            self.counts[what] += 1
            if what == "removed":
                emptied.add(rel.rpartition("/")[0])
                if len(self.first) < MAX_LISTED:
                    self.first.append(shown(rel))
        if emptied and not is_url(self.root):
            _prune(Path(self.root), emptied)
        if self.counts["removed"]:
            log.debug("removed %d earlier output(s) that no record lists", self.counts["removed"])
        self.discard()
        self.pending.unlink(missing_ok=True)  # all done: nothing left to a later run

    def _removals(self) -> Iterator[tuple[str, str]]:
        """Each path to remove, and what became of it. In storage (a request each), by
        :data:`STORAGE_THREADS` threads, :data:`STORAGE_CHUNK` paths at a time."""
        paths = self._paths()
        if not is_url(self.root):
            for rel in paths:
                yield rel, self._remove(rel)
            return
        with ThreadPoolExecutor(STORAGE_THREADS, thread_name_prefix="stale") as pool:
            while chunk := list(itertools.islice(paths, STORAGE_CHUNK)):
                yield from zip(chunk, pool.map(self._remove, chunk), strict=True)

    def _paths(self) -> Iterator[str]:
        if self._doomed is None:
            return
        self._doomed.seek(0)
        rest = b""
        while chunk := self._doomed.read(1 << 16):
            *whole, rest = (rest + chunk).split(b"\0")
            for raw in whole:
                yield os.fsdecode(raw)

    def _remove(self, rel: str) -> str:
        assert self.listed is not None
        if self.listed.maybe(rel):
            return "listed"
        try:
            return "removed" if remove_output(self.root, rel, self.started) else "missing"
        except FileExistsError:
            return "newer"
        except (OSError, UnsafePath, StorageError) as exc:
            if len(self.errors) < MAX_LISTED:
                self.errors.append(f"{shown(rel)}: {exc}")
            return "failed"


#: A redo that made nothing: the earlier outputs go when the input changed (cancelled too: a
#: changed input's earlier result is not kept, so no record would list them any more).
_NOT_DONE = (Status.FAILED, Status.SKIPPED, Status.CANCELLED)


def _superseded(record: Record, earlier: Record) -> list[str]:
    """The earlier record's outputs that the new ``record`` makes stale (module docstring)."""
    if record.status is Status.OK:
        keep = set(output_paths(record.value))
        return [p for p in output_paths(earlier.value) if p not in keep]
    if record.status in _NOT_DONE and (record.withdrawn or not record.same_input(earlier)):
        # a picture of what the input no longer is, or one a stage took back
        return list(output_paths(earlier.value))
    return []


def _spellings(root: Path, rel: str) -> list[str]:
    """The paths below ``root`` that are ``rel`` but for case and normalization (``rel`` among
    them when it is there), found folder by folder."""
    found = [""]
    for part in rel.split("/"):
        want = fold(part)
        deeper: list[str] = []
        for base in found:
            try:
                with os.scandir(root / base if base else root) as entries:
                    names = [e.name for e in entries if fold(e.name) == want]
            except OSError:
                continue
            deeper += [f"{base}/{n}" if base else n for n in names]
        found = deeper
    return found


def _blocked(root: Path, rel: str) -> bool:
    """Whether no file ``rel`` can be below ``root``: a folder has its name, or a file has the
    name of one of its folders."""
    try:
        return stat.S_ISDIR(os.lstat(root / rel).st_mode)
    except NotADirectoryError:
        return True
    except OSError:
        return False


def _newer(path: Path, started_ns: int) -> bool:
    try:
        return os.lstat(path).st_mtime_ns >= started_ns
    except OSError:
        return False


def _prune(root: Path, folders: set[str]) -> None:
    """Remove ``folders`` (``/``-separated, below ``root``) and their parents below ``root``
    when removing files left them empty; the deepest first."""
    for rel in sorted(folders - {""}, key=lambda f: -f.count("/")):
        parts = rel.split("/")
        while parts:
            try:
                root.joinpath(*parts).rmdir()
            except OSError:  # not empty (or gone): its parents are not either
                break
            parts.pop()
