"""The ledger: exactly one terminal record per input key, kept in the output folder.

Files in ``<output>/``:

* ``manifest.jsonl`` — one JSON object a line, one line per key ever seen in this folder, in
  first-seen order; the latest outcome wins. Rewritten atomically (temporary file + rename) at
  the end of every run, also after Ctrl-C or a fatal error.
* ``summary.json`` — written last, atomically; its presence with ``"finished": true`` marks a
  finished run.
* ``.pipeline/ledger.sqlite`` — the journal. Records are committed there in small transactions
  while the run goes, so a run killed with SIGKILL loses at most the last uncommitted batch.
  The next run opens the same journal, and its manifest includes what the crashed run recorded.
  SQLite keeps the key index on disk, so resume look-ups and the manifest export never hold all
  keys in memory.

The folder is held by one run at a time (:mod:`pipeline.folderlock`): a second run into it
stops with :class:`~pipeline.errors.FolderBusy` before it writes anything.

Keys are the program's strings; a key from a file name that is not UTF-8 (lone surrogates, see
:mod:`pipeline.names`) is stored in the journal's key column as its shown form, a NUL and its
exact bytes in base64 (no file name holds a NUL, so no clean key can look like that), and in the
manifest as ``key`` (shown) plus ``key_b64``.

All SQLite work happens on one dedicated thread; the event loop only awaits it. Errors reading or
writing any of these files raise :class:`~pipeline.errors.LedgerError` (a fatal run error).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .atomic import FILE_MODE as _FILE_MODE
from .atomic import TEMP_PREFIX, atomic_write_bytes, atomic_write_text
from .errors import LedgerError, if_full
from .folderlock import hold_folder
from .names import is_clean, raw_b64, shown, text_safe
from .records import LEGACY_DONE, Record, upgrade

__all__ = [
    "Ledger",
    "atomic_write_bytes",
    "atomic_write_text",
    "read_manifest",
    "read_manifest_at",
    "scan_manifest",
]

log = logging.getLogger("pipeline")

#: Records looked at per transaction by :meth:`Ledger.revisit`.
REVISIT_CHUNK = 1000
#: Manifest lines fetched from the journal and written at once by the export: some 250 KB of
#: small images' lines. The export runs once the run's memory is at its peak; at 4,096 rows the
#: rows, their joined text and its encoded bytes held ~13 MB more (a tenth of a run's peak RSS)
#: for no gain in speed (the file is buffered by the MB anyway).
EXPORT_ROWS = 256

MANIFEST = "manifest.jsonl"
SUMMARY = "summary.json"
JOURNAL = ".pipeline/ledger.sqlite"
#: The journal's ``PRAGMA user_version``: 1 once done keys say ``reused`` (0: an older journal,
#: upgraded when opened).
JOURNAL_VERSION = 1


def read_manifest(path: Path) -> Iterator[dict[str, Any]]:
    """Yield the records of a ``manifest.jsonl`` (the README documents the fields); a line an
    older version wrote is read as today's (:func:`~pipeline.records.upgrade`: ``skipped`` /
    ``already done`` is ``reused``)."""
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                yield _parse_line(path, lineno, line)


def scan_manifest(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(offset, record)`` for the records of a ``manifest.jsonl``, as
    :func:`read_manifest` does; ``offset`` is where the record's line starts in the file.

    A reader that makes one pass over a large manifest and needs a few records again afterwards
    keeps their offsets (8 bytes each) rather than the records, and reads them back with
    :func:`read_manifest_at`.
    """
    with open(path, "rb") as fh:
        offset = 0
        for lineno, line in enumerate(fh, 1):
            start, offset = offset, offset + len(line)
            if line.strip():
                yield start, _parse_line(path, lineno, line)


def read_manifest_at(path: Path, offsets: Iterable[int]) -> Iterator[dict[str, Any]]:
    """Yield the records whose lines start at ``offsets`` (from :func:`scan_manifest`), in that
    order, opening the file once."""
    with open(path, "rb") as fh:
        for offset in offsets:
            fh.seek(offset)
            yield _parse_line(path, f"byte {offset}", fh.readline())


def _parse_line(path: Path, where: int | str, line: bytes) -> dict[str, Any]:
    """One manifest line's record; a LedgerError for one that is none (damaged bytes too: a
    UnicodeDecodeError was a traceback)."""
    try:
        record: dict[str, Any] = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise LedgerError(f"{path}:{where}: not a JSON record (bytes not UTF-8: {exc})") from exc
    except json.JSONDecodeError as exc:
        raise LedgerError(f"{path}:{where}: not a JSON record ({exc})") from exc
    if not isinstance(record, dict):
        raise LedgerError(f"{path}:{where}: not a JSON record (a {type(record).__name__})")
    return upgrade(record)


class Ledger:
    """The records of one output folder. Use as ``async with Ledger(folder) as ledger``."""

    def __init__(self, folder: str | os.PathLike[str], *, run: str = "") -> None:
        self.folder = Path(folder)
        self.run = run
        self._lock = contextlib.ExitStack()
        self.manifest_path = self.folder / MANIFEST
        self.summary_path = self.folder / SUMMARY
        self.journal_path = self.folder / JOURNAL
        # One thread owns the SQLite connection: sqlite3 objects stay on their thread.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger")
        self._db: sqlite3.Connection | None = None
        self._seq = 0

    async def __aenter__(self) -> Ledger:
        self._lock.enter_context(hold_folder(self.folder, run=self.run))
        try:
            await self._call(self._open)
        except BaseException:
            self._lock.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self._call(self._close)
            self._thread.shutdown(wait=True)
        finally:
            self._lock.close()

    async def _call(self, fn: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, fn, *args)

    # -- thread side ---------------------------------------------------------------------------
    def _open(self) -> None:
        try:
            self.journal_path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.journal_path, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._db = db
            # the table and the manifest's records, if any, in one transaction: a run killed
            # while it imports leaves no table (the next run imports again), never half of one
            # that would be taken for the folder's records
            db.execute("BEGIN")
            fresh = not db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'records'"
            ).fetchone()
            db.execute(
                "CREATE TABLE IF NOT EXISTS records (key TEXT PRIMARY KEY, "
                "seq INTEGER NOT NULL, status TEXT NOT NULL, json TEXT NOT NULL)"
            )
            db.execute("CREATE INDEX IF NOT EXISTS records_seq ON records(seq)")
            if fresh and self.manifest_path.exists():
                self._import_manifest()
            db.execute("COMMIT")
            if db.execute("PRAGMA user_version").fetchone()[0] < JOURNAL_VERSION:
                self._upgrade_journal()
            row = db.execute("SELECT COALESCE(MAX(seq), 0) FROM records").fetchone()
            self._seq = int(row[0])
        except (OSError, sqlite3.Error) as exc:
            why = f"{exc}{if_full(exc, started=False)}"
            raise LedgerError(f"cannot open the ledger in {self.folder}: {why}") from exc

    def _import_manifest(self) -> None:
        """A folder with a manifest but no journal (copied, or journal deleted): adopt it,
        within the caller's transaction."""
        batch: list[tuple[str, str, str]] = []
        for rec in read_manifest(self.manifest_path):
            key = Record.from_json(rec).key
            batch.append((key, rec["status"], json.dumps(rec, ensure_ascii=False)))
            if len(batch) >= 1000:
                self._insert(batch)
                batch = []
        if batch:
            self._insert(batch)

    def _upgrade_journal(self) -> None:
        """Rows an older version journalled as ``skipped`` / ``already done`` become ``reused``
        (:func:`~pipeline.records.upgrade`), so resume, the counts and the next manifest agree.
        Once per journal: its ``user_version`` says it is done."""
        assert self._db is not None
        mark = json.dumps({"reason": LEGACY_DONE})[1:-1]  # as Record.to_line writes it
        rows = self._db.execute(
            "SELECT key, json FROM records WHERE status = 'skipped' AND instr(json, ?) > 0",
            (mark,),
        ).fetchall()
        updates = []
        for key, text in rows:
            data = json.loads(text)
            if upgrade(data).get("status") == "reused":
                updates.append((json.dumps(data, ensure_ascii=False), key))
        if updates:
            self._db.execute("BEGIN")
            self._db.executemany(
                "UPDATE records SET status = 'reused', json = ? WHERE key = ?", updates
            )
            self._db.execute("COMMIT")
        self._db.execute(f"PRAGMA user_version = {JOURNAL_VERSION}")

    def _upsert(self, records: Sequence[tuple[str, str, str]]) -> None:
        """Insert or replace ``(key, status, manifest line)`` rows in one transaction."""
        assert self._db is not None
        self._db.execute("BEGIN")
        self._insert(records)
        self._db.execute("COMMIT")

    def _insert(self, records: Sequence[tuple[str, str, str]]) -> None:
        """Insert or replace ``(key, status, manifest line)`` rows (in the open transaction)."""
        assert self._db is not None
        rows = []
        for key, status, line in records:
            self._seq += 1
            rows.append((_column(key), self._seq, status, line))
        self._db.executemany(
            "INSERT INTO records(key, seq, status, json) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET status=excluded.status, json=excluded.json",
            rows,
        )

    def _write(self, records: Sequence[Record]) -> None:
        rows = [(r.key, str(r.status), r.to_line()) for r in records]
        try:
            self._upsert(rows)
        except sqlite3.Error as exc:
            raise LedgerError(
                f"cannot write the ledger journal {self.journal_path}: {exc}{if_full(exc)}"
            ) from exc

    def _lookup(self, keys: Sequence[str]) -> dict[str, Record]:
        assert self._db is not None
        found: dict[str, Record] = {}
        for start in range(0, len(keys), 500):
            chunk = [_column(k) for k in keys[start : start + 500]]
            marks = ",".join("?" * len(chunk))
            for (text,) in self._db.execute(
                f"SELECT json FROM records WHERE key IN ({marks})", chunk
            ):
                rec = Record.from_json(json.loads(text))
                found[rec.key] = rec
        return found

    def _revisit(
        self,
        run: str,
        fn: Callable[[Record], Record | None] | None,
        each: Callable[[Record], None] | None,
    ) -> int:
        """Offer every record that run ``run`` did not write to ``fn`` and store what it returns;
        then hand the record as it stands to ``each``. One pass over the journal, in order."""
        assert self._db is not None
        mark = json.dumps({"run": run})[1:-1]  # '"run": "<id>"', as Record.to_line writes it
        after, changed = 0, 0
        while True:
            rows = self._db.execute(
                "SELECT seq, json FROM records WHERE seq > ? AND instr(json, ?) = 0 "
                "ORDER BY seq LIMIT ?",
                (after, mark, REVISIT_CHUNK),
            ).fetchall()
            if not rows:
                return changed
            after = rows[-1][0]
            updates = []
            for _seq, text in rows:
                rec = Record.from_json(json.loads(text))
                new = fn(rec) if fn is not None else None
                if new is not None:
                    new.run = run
                    updates.append((_column(new.key), str(new.status), new.to_line()))
                    rec = new
                if each is not None:
                    each(rec)
            if updates:
                self._db.execute("BEGIN")
                self._db.executemany(
                    "UPDATE records SET status = ?, json = ? WHERE key = ?",
                    [(status, line, key) for key, status, line in updates],
                )
                self._db.execute("COMMIT")
                changed += len(updates)

    def _export(self) -> int:
        """Stream the journal into ``manifest.jsonl`` atomically; returns the line count."""
        assert self._db is not None
        path = self.manifest_path
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=TEMP_PREFIX, suffix=".tmp")
        n = 0
        try:
            os.fchmod(fd, _FILE_MODE)
            with os.fdopen(fd, "w", encoding="utf-8", buffering=1 << 20) as fh:
                rows = self._db.execute("SELECT json FROM records ORDER BY seq")
                while batch := rows.fetchmany(EXPORT_ROWS):
                    fh.write("\n".join([text for (text,) in batch]))
                    fh.write("\n")
                    n += len(batch)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except (OSError, sqlite3.Error) as exc:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise LedgerError(f"cannot write {path}: {exc}{if_full(exc)}") from exc
        return n

    def _counts(self) -> dict[str, int]:
        assert self._db is not None
        return {
            str(s): int(n)
            for s, n in self._db.execute("SELECT status, COUNT(*) FROM records GROUP BY status")
        }

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # -- loop side -----------------------------------------------------------------------------
    async def write(self, records: Sequence[Record]) -> None:
        """Commit ``records`` in one transaction. Once asked for, it is made: a caller cancelled
        while the transaction waits its turn on the ledger's thread (the ledger writer of a run
        that the program embedding it cancels) does not take it back, so the calls after it on
        that thread (the run's leftovers, the close) find those records in the journal."""
        if not records:
            return
        loop = asyncio.get_running_loop()
        made = loop.run_in_executor(self._thread, self._write, records)
        try:
            await asyncio.shield(made)
        except asyncio.CancelledError:
            made.add_done_callback(_log_failure)  # nobody else is left to hear of it
            raise

    async def lookup(self, keys: Sequence[str]) -> dict[str, Record]:
        if not keys:
            return {}
        result: dict[str, Record] = await self._call(self._lookup, list(keys))
        return result

    async def revisit(
        self,
        run: str,
        fn: Callable[[Record], Record | None] | None,
        each: Callable[[Record], None] | None = None,
    ) -> int:
        """Pass each record not written by run ``run`` (keys this run did not see) to ``fn``,
        on the ledger's thread; a record it returns replaces the old one (same key). Returns
        how many were replaced. For example: mark the inputs that are gone from disk.
        ``each`` then sees each of those records as it stands (replaced or not), in the
        journal's order: a reader of the whole folder gets the records the run did not write
        from this one pass rather than from the manifest."""
        try:
            changed: int = await self._call(self._revisit, run, fn, each)
        except sqlite3.Error as exc:
            raise LedgerError(
                f"cannot update the ledger journal {self.journal_path}: {exc}"
            ) from exc
        return changed

    async def export_manifest(self) -> int:
        n: int = await self._call(self._export)
        return n

    async def folder_counts(self) -> dict[str, int]:
        counts: dict[str, int] = await self._call(self._counts)
        return counts

    async def write_summary(self, summary: Mapping[str, Any]) -> None:
        text = json.dumps(summary, indent=2, ensure_ascii=False, default=str) + "\n"
        if not is_clean(text):  # a file name that is not UTF-8, in an error message
            text = json.dumps(text_safe(summary), indent=2, ensure_ascii=False, default=str) + "\n"
        try:
            await self._call(atomic_write_text, self.summary_path, text)
        except OSError as exc:
            raise LedgerError(f"cannot write {self.summary_path}: {exc}{if_full(exc)}") from exc


def _log_failure(made: asyncio.Future[None]) -> None:
    if not made.cancelled() and made.exception() is not None:
        log.error(
            "a transaction of the ledger failed after its run was cancelled: %s", made.exception()
        )


def _column(key: str) -> str:
    """The journal's key column for ``key``: itself, or (not UTF-8) shown form, NUL, bytes."""
    return key if is_clean(key) else f"{shown(key)}\x00{raw_b64(key)}"
