"""The ``process`` command's end-of-run tables: collectors that see every terminal record of a
run (:class:`pipeline.Collector`) and put their result into ``summary.json``.

* :class:`StatsTable` writes ``stats.csv`` and ``stats.parquet`` (the image statistics).
* :class:`NearDuplicates` groups images whose difference hashes are close.
* :class:`DataAggregate` merges the statistics of every data record (this run's and, on resume,
  the earlier ones it skipped) over all arrays of the same shape and dtype kind, and over all
  CSV files with the same numeric columns (:class:`stages.aggregate.DataGroups` does the exact
  merging).
* :class:`DataTable` writes ``data_stats.csv``: one row per array or CSV column.
* :class:`FailureList` counts this run's failed inputs and keeps the first few, for the lines
  the command prints at the end (:mod:`app.console`).

The tables hold every record of the output folder, this run's and the earlier ones: they are
sinks of the run's one feed of records (:class:`app.endofrun.RecordFeed`; give both tables the
same one), built while the run goes and written as the rows stream (:mod:`app.tables`), so
memory stays flat whatever the number of records (each image's difference hash goes to a
temporary file as it comes); pyarrow and numpy are imported only when there is something to write.
"""

from __future__ import annotations

import abc
import bisect
import contextlib
import os
import sys
import tempfile
from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from pipeline import Record, Status, shown
from pipeline.atomic import TEMP_PREFIX
from stages.aggregate import DataGroups
from stages.groupfile import members_of_file
from stages.hashgroups import check_distance
from stages.parts import is_data_result

from .endofrun import RecordFeed, data_result
from .grouping import GroupingChild, GroupingFailed
from .report import GROUP_SHOWN, as_number, smallest_output
from .tables import CsvStream, ParquetStream

__all__ = ["DataAggregate", "DataTable", "FailureList", "MadeBy", "NearDuplicates", "StatsTable"]


class _FolderTable(abc.ABC):
    """A table of every record of the folder: a collector whose result is what its sink side
    (``take``/``finish``) put there, once the feed has ended."""

    def __init__(self, folder: Path, feed: RecordFeed | None) -> None:
        self.folder = folder
        self.feed = feed if feed is not None else RecordFeed(folder)
        self._result: dict[str, Any] = {}

    # -- the collector: the feed hands it the records ------------------------------------------
    def add(self, record: Record) -> None:
        return None

    def result(self) -> dict[str, Any]:
        self.feed.check(self)
        return self._result

    # -- the sink (app.endofrun.Sink): each table's own -----------------------------------------
    @abc.abstractmethod
    def take(self, record: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    def finish(self) -> None: ...

    @abc.abstractmethod
    def discard(self) -> None: ...


class StatsTable(_FolderTable):
    """Writes ``stats.csv`` as the records come and, from it at the end, ``stats.parquet``
    (when there are image rows); keeps each image's 64-bit difference hash for
    :class:`NearDuplicates`, which needs them all: 8 bytes an image in a temporary file
    (:meth:`hash_file`; the last :data:`HASH_BUFFER` in memory), its key and smallest output
    in another (read back for the images of the groups only)."""

    name = "stats_table"
    COLUMNS = (
        "key",
        "status",
        "width",
        "height",
        "mode",
        "format",
        "out_width",
        "out_height",
        "mean",
        "std",
        "sharpness",
        "dhash",
    )
    #: The columns of few distinct values: dictionary-encoded in ``stats.parquet`` (the others,
    #: all different from row to row, plain: see :mod:`app.tables`).
    REPEATED = ("status", "width", "height", "mode", "format", "out_width", "out_height")
    #: The columns' types in ``stats.parquet`` (see :class:`app.tables.ParquetStream`).
    TYPES = {
        **dict.fromkeys(("key", "status", "mode", "format", "mean", "std", "dhash"), "string"),
        **dict.fromkeys(("width", "height", "out_width", "out_height"), "int64"),
        "sharpness": "double",
    }

    def __init__(self, folder: Path, feed: RecordFeed | None = None) -> None:
        super().__init__(folder, feed)
        self.hashes = array("Q")  # the latest hashes, not yet in the hash file
        self.hash_count = 0  # rows with a hash
        self._hash_path: Path | None = None  # 8 bytes a hashed row, in order (hash_file)
        self._spill: IO[bytes] | None = None  # a line [key, smallest output] per hash
        self._spilling: list[str] = []  # its next lines, written SPILL_ROWS at a time
        self._parquet = ParquetStream(
            folder / "stats.parquet", self.COLUMNS, self.REPEATED, self.TYPES
        )
        self._csv = CsvStream(folder / "stats.csv", self.COLUMNS, keep_empty=True)
        self._when_complete: list[Callable[[], None]] | None = []  # None: complete
        self.feed.add_sink(self)

    def when_complete(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` once the feed has ended, the hashes all in, before the tables are
        written (:class:`NearDuplicates` starts its child then); now if that time has passed."""
        if self._when_complete is None:
            fn()
        else:
            self._when_complete.append(fn)

    def hashed(self, wanted: set[int]) -> Iterator[tuple[int, str, Mapping[str, Any] | None]]:
        """(position, key, smallest output) of the hashed rows at the ``wanted`` positions (in
        :attr:`hashes`), in order: one read of the temporary file."""
        self.feed.check(self)
        if not wanted or self._spill is None:
            return
        self._flush_spill()
        self._spill.flush()
        self._spill.seek(0)
        for i, fields in enumerate(_spilled(self._spill)):
            if i in wanted:
                key, path, raw, width, height = (f.decode("utf-8") for f in fields)
                out = {"path": path, "width": int(width), "height": int(height)} if path else None
                if out is not None and raw:
                    out["path_b64"] = raw
                yield i, key, out

    # -- the sink: fed by the record feed -----------------------------------------------------
    def take(self, record: dict[str, Any]) -> None:
        res = record.get("result")
        if not isinstance(res, dict) or "stats" not in res or is_data_result(res):
            return
        st, orig = res["stats"], res.get("original", {})
        outs = res.get("outputs") or [{}]
        dhash = st.get("dhash")
        self._csv.write(  # in the order of COLUMNS
            (
                record["key"],
                record["status"],
                orig.get("width"),
                orig.get("height"),
                orig.get("mode"),
                orig.get("format"),
                outs[0].get("width"),
                outs[0].get("height"),
                " ".join([f"{v:.3f}" for v in st.get("mean", ())]),
                " ".join([f"{v:.3f}" for v in st.get("std", ())]),
                st.get("sharpness"),
                dhash,
            )
        )
        if dhash:
            self._hash(record, int(dhash, 16))

    def _hash(self, record: dict[str, Any], value: int) -> None:
        if not 0 <= value < 1 << 64:
            raise ValueError(f"hash of {record['key']!r} has more than 64 bits: {value:x}")
        if self._spill is None:  # no name on disk: gone when closed, or when the process ends
            self._spill = tempfile.TemporaryFile(dir=self.folder)  # noqa: SIM115 — closed by close()
        out = smallest_output(record) if record.get("status") in ("ok", "reused") else None
        if out is None:
            line = f"{record['key']}\0\0\0\0\0"
        else:
            size = f"{int(as_number(out.get('width')))}\0{int(as_number(out.get('height')))}"
            line = f"{record['key']}\0{out['path']}\0{out.get('path_b64') or ''}\0{size}\0"
        self._spilling.append(line)
        if len(self._spilling) >= SPILL_ROWS:
            self._flush_spill()
        self.hashes.append(value)
        self.hash_count += 1
        if len(self.hashes) >= HASH_BUFFER:
            self._flush_hashes()

    def _flush_hashes(self) -> None:
        if self._hash_path is None:  # named: a child process groups large sets from it
            fd, name = tempfile.mkstemp(dir=self.folder, prefix=TEMP_PREFIX, suffix=".tmp")
            os.close(fd)
            self._hash_path = Path(name)
        with open(self._hash_path, "ab") as fh:
            self.hashes.tofile(fh)
        del self.hashes[:]

    def hash_file(self) -> Path | None:
        """The file of every hash so far (native 64-bit integers, in row order), or None
        when no row has one; removed by :meth:`close`."""
        self.feed.check(self)
        if self.hashes:  # rows with a hash and no file yet have them all here
            self._flush_hashes()
        return self._hash_path

    def _flush_spill(self) -> None:
        """Write the rows gathered for the temporary file (one write per :data:`SPILL_ROWS`)."""
        if self._spill is not None and self._spilling:
            self._spill.write("".join(self._spilling).encode("utf-8"))
        self._spilling.clear()

    def finish(self) -> None:
        self._flush_spill()  # the temporary file is whole once the feed has ended
        calls, self._when_complete = self._when_complete or [], None
        for fn in calls:
            fn()
        self._csv.commit()
        files = ["stats.csv"]
        if self._parquet.write_from(self._csv):
            files.append("stats.parquet")
        else:  # no image rows in the folder now: an earlier run's table is not this one
            _remove_earlier(self._parquet.path)
        self._result = {"rows": self._csv.rows, "files": files}

    def discard(self) -> None:
        self._csv.discard()
        self._parquet.discard()
        self.close()

    def close(self) -> None:
        """Remove the temporary files (once the groups are found)."""
        self._spilling.clear()
        if self._spill is not None:
            self._spill.close()
            self._spill = None
        del self.hashes[:]
        path, self._hash_path = self._hash_path, None
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


#: Hashes StatsTable holds before it appends them to its hash file (32 KB).
HASH_BUFFER = 4096


#: Rows of StatsTable's temporary file gathered in memory before one write (a few dozen kB).
SPILL_ROWS = 512

#: Fields of a row of StatsTable's temporary file, each followed by a NUL (no key, path or
#: number holds one: a file name cannot): key, smallest output's path, its path_b64, width,
#: height (empty: no output).
SPILL_FIELDS = 5


#: Bytes of StatsTable's temporary file read at a time when the groups' rows are looked up
#: (64 KiB). Each block is split into its fields, two blocks' worth alive at once: at 1 MiB, a
#: 1M-image run's lookup (it reads the whole file) raised the parent's peak RSS by 14 MiB (and
#: took 0.45 s); at 64 KiB by nothing measurable (0.30 s).
SPILL_BLOCK = 1 << 16


def _spilled(fh: IO[bytes], size: int = SPILL_BLOCK) -> Iterator[list[bytes]]:
    """The rows of a StatsTable's temporary file, read in blocks of ``size`` bytes from where
    ``fh`` stands."""
    rest = b""
    while block := fh.read(size):
        fields = (rest + block).split(b"\0")
        rest = fields.pop()  # the part after the last NUL: the next block continues it
        rows = len(fields) // SPILL_FIELDS
        for r in range(rows):
            yield fields[r * SPILL_FIELDS : (r + 1) * SPILL_FIELDS]
        rest = b"\0".join([*fields[rows * SPILL_FIELDS :], rest])


#: Up to this many images the parent groups the hashes itself (:func:`few_members`, ~0.03 s for
#: 5,000 well-spread hashes: about what a child's start costs); from the next one on a child groups
#: them (:class:`app.grouping.GroupingChild`) while the parent writes ``stats.parquet``. Above
#: the 2,000 images of ``make bench``'s small set: the child's few MiB would count at the end of
#: a run whose processes' summed memory is measured.
IN_PARENT = 5_000


class NearDuplicates:
    """Groups of images whose 64-bit difference hashes differ in at most ``max_distance`` bits.

    Memory: the table's hashes, read from its file here up to :data:`IN_PARENT` of them, else by
    a child process started as soon as they are all in (:class:`app.grouping.GroupingChild`,
    while the table writes ``stats.parquet``); the keys (and thumbnails, :attr:`thumbs`, for
    the report) of the grouped images only. :meth:`close` (also after :meth:`result`) stops the
    child and removes the table's temporary files."""

    name = "near_duplicates"

    def __init__(self, table: StatsTable, max_distance: int = 6) -> None:
        check_distance(max_distance)
        self.table = table
        self.max_distance = max_distance
        self.thumbs: dict[str, Mapping[str, Any]] = {}
        self._child: GroupingChild | None = None
        self._start_error: OSError | None = None
        table.when_complete(self._start)

    def add(self, record: Record) -> None:
        return None

    def _start(self) -> None:
        """The table has every hash: a child groups a large set from now on. A hash file that
        cannot be written, or a child that cannot start, fails the groups (at :meth:`result`),
        not the table."""
        if self.table.hash_count > IN_PARENT:
            try:
                path = self.table.hash_file()
                assert path is not None  # hash_file() writes out what the buffer holds
                self._child = GroupingChild(path, self.max_distance)
            except OSError as exc:
                self._start_error = exc

    def _members(self) -> tuple[list[int], list[int]]:
        if self._child is not None:
            return self._child.result()
        if self._start_error is not None:
            raise GroupingFailed(
                f"the near-duplicate grouping could not start: {self._start_error}"
            ) from self._start_error
        path = self.table.hash_file()
        return members_of_file(str(path) if path is not None else None, self.max_distance)

    def result(self) -> dict[str, Any]:
        try:
            self.table.feed.check(self.table)
            members, labels = self._members()
        except BaseException:
            with contextlib.suppress(OSError):  # the first error is the one that matters
                self.close()
            raise
        of = dict(zip(members, labels, strict=True))
        found: dict[int, list[str]] = {}
        firsts: dict[int, list[tuple[str, Mapping[str, Any]]]] = {}  # what the report shows
        for i, key, out in self.table.hashed(set(of)):
            found.setdefault(of[i], []).append(key)
            if out is not None:
                _keep_first(firsts.setdefault(of[i], []), key, out)
        self.close()
        self.thumbs = {key: out for kept in firsts.values() for key, out in kept}
        groups = sorted(sorted(g) for g in found.values())
        return {"max_distance": self.max_distance, "groups": groups}

    def close(self) -> None:
        """Stop the child, if one runs; remove the table's temporary files."""
        child, self._child = self._child, None
        if child is not None:
            child.stop()
        self.table.close()


def _keep_first(
    kept: list[tuple[str, Mapping[str, Any]]], key: str, out: Mapping[str, Any]
) -> None:
    """Keep ``(key, out)`` among a group's first :data:`app.report.GROUP_SHOWN` keys in order
    (those the report shows): thumbnails held for at most that many members a group, however
    large the group (one placeholder image of a web crawl, thousands of times)."""
    if len(kept) < GROUP_SHOWN or key < kept[-1][0]:
        bisect.insort(kept, (key, out), key=lambda pair: pair[0])
        del kept[GROUP_SHOWN:]


def _data_value(record: Record) -> dict[str, Any] | None:
    """A data record's statistics: this run's ``ok`` ones and, on resume, the earlier result of a
    ``reused`` one (or of a ``skipped`` one that kept it); None for anything else (images,
    failures)."""
    v = record.value
    ok = record.status in (Status.OK, Status.REUSED) or (
        record.status is Status.SKIPPED and v is not None
    )
    if ok and isinstance(v, dict) and v.get("kind") in ("array", "csv"):
        return v
    return None


class DataAggregate:
    """Statistics merged over all data inputs of the same shape (arrays) or columns (CSV)."""

    name = "data_aggregate"

    def __init__(self) -> None:
        self.groups = DataGroups()

    def add(self, record: Record) -> None:
        value = _data_value(record)
        if value is not None:
            self.groups.add(value)

    def result(self) -> dict[str, Any]:
        return self.groups.result()


class DataTable(_FolderTable):
    """``data_stats.csv``: one row per array or CSV column of every data record of the folder
    (as ``stats.csv``: written as the records come). No data rows, no file."""

    name = "data_table"
    COLUMNS = ("key", "column", "count", "missing", "mean", "std", "min", "max", "sum", "bad")

    def __init__(self, folder: Path, feed: RecordFeed | None = None) -> None:
        super().__init__(folder, feed)
        self._csv = CsvStream(folder / "data_stats.csv", self.COLUMNS, keep_empty=False)
        self.feed.add_sink(self)

    def take(self, record: dict[str, Any]) -> None:
        v = data_result(record)
        if v is None:
            return
        if v["kind"] == "array":
            items = [("", v["stats"], 0)]
        else:
            bad = v.get("bad_cells", {})
            items = [(n, s, bad.get(n, 0)) for n, s in v["columns"].items()]
        for column, s, n_bad in items:
            figures = [s.get(k) for k in self.COLUMNS[2:-1]]
            self._csv.write((record["key"], column, *figures, n_bad))

    def finish(self) -> None:
        written = self._csv.commit()
        if not written:  # no data rows in the folder now: an earlier run's table is not this one
            _remove_earlier(self._csv.path)
        self._result = {"rows": self._csv.rows, "files": ["data_stats.csv"] if written else []}

    def discard(self) -> None:
        self._csv.discard()


def _remove_earlier(path: Path) -> None:
    """An end-of-run table an earlier run wrote, which this run (from every record of the
    folder) finds empty: left, it showed rows of records that are no longer ok."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


class FailureList:
    """This run's ``failed`` records: how many, and the first ``limit`` of them as the manifest
    writes them (``key`` shown, ``stage``, ``error_type``, ``error``), for the end-of-run lines
    on the console; in ``summary.json`` as ``collected.failures``. Memory: ``limit`` entries."""

    name = "failures"

    def __init__(self, limit: int = 20) -> None:
        self.limit = limit
        self.count = 0
        self.first: list[dict[str, Any]] = []

    def add(self, record: Record) -> None:
        if record.status is not Status.FAILED:
            return
        self.count += 1
        if len(self.first) < self.limit:
            self.first.append(
                {
                    "key": shown(record.key),
                    "stage": record.stage,
                    "error_type": record.error_type,
                    "error": shown(record.error or ""),
                }
            )

    def result(self) -> dict[str, Any]:
        return {"count": self.count, "first": self.first}


class MadeBy:
    """Not about the records: what made this run's outputs, for ``summary.json`` as
    ``collected.made_by`` (the release to suspect, should an output turn out wrong): the
    versions of pixpipe, of how it makes outputs, of Python and of the libraries that shape
    them, and the command line (without secrets, as the folder's lock file shows it)."""

    name = "made_by"

    def __init__(self, argv: Sequence[str]) -> None:
        self.argv = [os.fsdecode(a) for a in argv]

    def add(self, record: Record) -> None:
        return None

    def result(self) -> dict[str, Any]:
        import pipeline
        from stages.options import RENDER_VERSION
        from stages.parts import CRUNCH_VERSION

        versions = {
            "pixpipe": pipeline.__version__,
            "render_version": RENDER_VERSION,
            "crunch_version": CRUNCH_VERSION,
            "python": ".".join(map(str, sys.version_info[:3])),
            "pillow": _pillow_version(),
        }
        for name in ("numpy", "pyarrow"):  # when this run used them
            module = sys.modules.get(name)
            if module is not None and isinstance(getattr(module, "__version__", None), str):
                versions[name] = module.__version__
        return {**versions, "command": [shown(a) for a in self.argv]}


def _pillow_version() -> str | None:
    """Pillow's version as the workers have it, without importing it here (this process never
    needs Pillow, and ``importlib.metadata`` costs ~35 ms): its ``PIL/_version.py``, read."""
    module = sys.modules.get("PIL")
    if module is not None:
        return str(module.__version__)
    import importlib.util
    import re

    try:
        spec = importlib.util.find_spec("PIL")
        origin = spec.origin if spec is not None else None
        if origin is None:
            return None
        with open(os.path.join(os.path.dirname(origin), "_version.py"), encoding="utf-8") as fh:
            found = re.search(r"""__version__\s*=\s*["']([^"']+)["']""", fh.read())
    except (OSError, ImportError, ValueError):
        return None
    return found.group(1) if found else None
