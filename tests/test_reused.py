"""The ``reused`` status: done by an earlier run and unchanged, distinct from ``skipped``.

Resume records a done input ``reused`` (the earlier result, options and identity kept), and a
``reused`` record is done for the next resume; ``skipped`` keeps meaning "not processed, here is
why". Ledgers of earlier versions, which said ``skipped`` / ``already done``, are read as
``reused``: from a manifest alone, and from a journal.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import pipeline.feeder
from pipeline import Pipeline, Record, Status, read_manifest, stage
from pipeline.records import LEGACY_DONE, upgrade
from tests import fns
from tests.conftest import by_key
from tests.conftest import read_manifest as manifest_lines

ROOT = Path(__file__).resolve().parents[1]


def keyed(n: int) -> list[tuple[str, int]]:
    return [(f"k{i:04d}", i) for i in range(n)]


def _pipe() -> Pipeline:
    return Pipeline([stage(fns.fail_on_multiple_of_7, kind="thread")])


def _legacy(line: dict[str, object]) -> dict[str, object]:
    """A done record as earlier versions wrote it on resume."""
    if line["status"] in ("ok", "reused"):
        return {**line, "status": "skipped", "reason": LEGACY_DONE}
    return line


def test_a_reused_record_is_done_and_keeps_the_earlier_result(out: Path) -> None:
    first = _pipe().run(keyed(10), output=out, progress=False)
    assert first.counts == {"ok": 8, "failed": 2}
    made = by_key(out)
    for n in (2, 3):  # a reused record is reused again
        again = _pipe().run(keyed(10), output=out, progress=False)
        assert again.counts == {"reused": 8, "failed": 2}, n
        assert (again.reused, again.skipped, again.ok) == (8, 0, 0)
        recs = by_key(out)
        for key, rec in recs.items():
            if made[key]["status"] == "ok":
                assert rec["status"] == "reused"
                assert rec["result"] == made[key]["result"]
                assert rec["run"] == again.run_id
                assert "reason" not in rec
                assert "redo" not in rec
    summary = json.loads((out / "summary.json").read_text())
    assert summary["folder_counts"] == {"reused": 8, "failed": 2}
    assert summary["exit_code"] == 1  # the failures, not the reused ones


def test_a_reused_input_that_changed_is_redone(out: Path) -> None:
    _pipe().run(keyed(3), output=out, progress=False, fingerprint="a")
    assert _pipe().run(keyed(3), output=out, progress=False, fingerprint="a").reused == 2
    changed = _pipe().run(keyed(3), output=out, progress=False, fingerprint="b")
    assert changed.counts == {"ok": 2, "failed": 1}
    assert by_key(out)["k0001"]["redo"] == "options changed"


def test_retry_failed_does_not_call_a_changed_input_reused(out: Path) -> None:
    _pipe().run(keyed(3), output=out, progress=False, fingerprint="a")
    retry = _pipe().run(keyed(3), output=out, progress=False, fingerprint="b", retry_failed=True)
    assert retry.counts == {"skipped": 2, "failed": 1}
    rec = by_key(out)["k0001"]
    assert (rec["status"], rec["reason"]) == ("skipped", "not retried: options changed")
    # not done: the next run redoes it
    assert _pipe().run(keyed(3), output=out, progress=False, fingerprint="b").ok == 2


def test_upgrade_reads_already_done_as_reused_and_leaves_real_skips() -> None:
    old = {"key": "a", "status": "skipped", "reason": LEGACY_DONE, "result": 1}
    assert upgrade(dict(old)) == {"key": "a", "status": "reused", "result": 1}
    rec = Record.from_json(old)
    assert (rec.status, rec.reason, rec.value) == (Status.REUSED, None, 1)
    declined = {"key": "b", "status": "skipped", "stage": "read", "reason": LEGACY_DONE}
    assert upgrade(dict(declined)) == declined  # a stage's own reason, whatever its words
    other = {"key": "c", "status": "skipped", "reason": "a socket: not a regular file"}
    assert Record.from_json(other).status is Status.SKIPPED


def test_an_old_manifest_without_a_journal_is_read_as_reused(out: Path) -> None:
    _pipe().run(keyed(10), output=out, progress=False)
    lines = [_legacy(rec) for rec in manifest_lines(out)]
    (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (out / ".pipeline" / "ledger.sqlite").unlink()
    assert {r["status"] for r in read_manifest(out / "manifest.jsonl")} == {"reused", "failed"}
    again = _pipe().run(keyed(10), output=out, progress=False)
    assert again.counts == {"reused": 8, "failed": 2}
    assert {r["status"] for r in manifest_lines(out)} == {"reused", "failed"}


_KILLED_WHILE_IMPORTING = """
import os, sys
import pipeline.ledger
from pipeline import Pipeline, stage
from tests import fns

insert = pipeline.ledger.Ledger._insert
calls = []


def insert_then_die(self, records):  # the second batch of the manifest's import
    insert(self, records)
    calls.append(len(records))
    if len(calls) == 2:
        os.kill(os.getpid(), 9)


if __name__ == "__main__":
    pipeline.ledger.Ledger._insert = insert_then_die
    keyed = [(f"k{i:04d}", i) for i in range(2500)]
    Pipeline([stage(fns.fail_on_multiple_of_7, kind="thread")]).run(
        keyed, output=sys.argv[1], progress=False
    )
"""


@pytest.mark.timeout(120)
def test_a_run_killed_while_it_imports_the_manifest_leaves_it_to_the_next(out: Path) -> None:
    """A folder with a manifest and no journal (copied without ``.pipeline/``): the run that
    adopts the manifest is SIGKILLed half-way through its import. The next run imports it
    again, whole: every input is reused. Before, the journal the killed run had made (2,000
    of the 2,500 records) was taken for the folder's: the rest was done again, and a record
    of an input no longer given was lost from the manifest."""
    first = _pipe().run(keyed(2500), output=out, progress=False)
    assert first.counts == {"ok": 2142, "failed": 358}
    (out / ".pipeline" / "ledger.sqlite").unlink()
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_WHILE_IMPORTING, str(out)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        timeout=60,
    )
    assert killed.returncode == -9, killed.stderr
    again = _pipe().run(keyed(2499), output=out, progress=False)  # one input no longer given
    assert again.counts == {"reused": 2142, "failed": 357}
    assert len(manifest_lines(out)) == 2500  # the record of the one not given is kept


def test_an_old_journal_is_upgraded_once(out: Path) -> None:
    _pipe().run(keyed(10), output=out, progress=False)
    journal = out / ".pipeline" / "ledger.sqlite"
    db = sqlite3.connect(journal)
    try:
        rows = db.execute("SELECT key, json FROM records").fetchall()
        for key, text in rows:
            rec = _legacy(json.loads(text))
            db.execute(
                "UPDATE records SET status = ?, json = ? WHERE key = ?",
                (rec["status"], json.dumps(rec), key),
            )
        db.execute("PRAGMA user_version = 0")
        db.commit()
    finally:
        db.close()
    # a run that sees only some keys: the others come from the journal, upgraded too
    again = _pipe().run(keyed(5), output=out, progress=False)
    assert again.counts == {"reused": 4, "failed": 1}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["folder_counts"] == {"reused": 8, "failed": 2}
    assert {r["status"] for r in manifest_lines(out)} == {"reused", "failed"}
    db = sqlite3.connect(journal)
    try:
        assert db.execute("PRAGMA user_version").fetchone() == (1,)
    finally:
        db.close()


class Earlier:
    name = "earlier"

    def __init__(self) -> None:
        self.seen: dict[str, Any] = {}

    def add(self, record: Record) -> None:
        self.seen[record.key] = None if record.earlier is None else record.earlier.value

    def result(self) -> None:
        return None


def test_a_redone_keys_record_carries_the_one_it_replaces(out: Path) -> None:
    pipe = Pipeline([stage(fns.double, kind="thread")])
    pipe.run([("a", 1), ("b", 2)], output=out, progress=False, fingerprint="v1")
    seen = Earlier()
    # b's earlier result is "outdated": redone with the reason given, and its record knows it
    again = pipe.run(
        [("a", 1), ("b", 5), ("c", 3)],
        output=out,
        progress=False,
        fingerprint="v1",
        outdated=lambda item, rec: "moved" if item.key == "b" else None,
        collectors=[seen],
    )
    assert again.counts == {"reused": 1, "ok": 2}
    assert seen.seen == {"a": None, "b": 4, "c": None}
    manifest = by_key(out)
    assert manifest["b"]["redo"] == "moved"
    assert manifest["b"]["result"] == 10
    assert "earlier" not in manifest["b"]
    assert Status(manifest["a"]["status"]) is Status.REUSED


def _where_checked(out: Path, n: int, pause: float) -> tuple[dict[str, int], list[str]]:
    """A resumed run of ``n`` done inputs whose check of earlier outputs takes ``pause``
    seconds each: the counts, and the thread each check ran on, in order."""
    pipe = Pipeline([stage(fns.inc, kind="thread")])
    assert pipe.run(keyed(n), output=out, progress=False).ok == n
    threads: list[str] = []

    def is_done(rec: Record) -> bool:
        threads.append(threading.current_thread().name)
        time.sleep(pause)
        return True

    result = pipe.run(keyed(n), output=out, progress=False, is_done=is_done)
    return result.counts, threads


@pytest.mark.timeout(60)
def test_slow_checks_of_earlier_outputs_move_off_the_event_loop(out: Path) -> None:
    """A network file system or object storage (a ``stat`` of milliseconds, a folder's
    listing): after the first chunk whose checks prove slow, the feeder makes them on its
    helper thread, which leaves the event loop (every stage, the progress bars) free meanwhile."""
    chunk = pipeline.feeder.FEED_CHUNK
    pause = 2 * pipeline.feeder.SLOW_DECISIONS / chunk  # a chunk's checks: twice too slow
    counts, threads = _where_checked(out, 3 * chunk, pause)
    assert counts == {"reused": 3 * chunk}
    loop_thread = threads[0]
    assert threads[:chunk] == [loop_thread] * chunk  # the chunk that showed them slow
    assert threads[chunk:] == ["resume_0"] * 2 * chunk


@pytest.mark.timeout(60)
def test_fast_checks_of_earlier_outputs_stay_on_the_event_loop(
    out: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Local files: a ``stat`` costs less than a hop to a thread."""
    # a test process preempted on a busy machine may take 20 ms for anything
    monkeypatch.setattr(pipeline.feeder, "SLOW_DECISIONS", 1.0)
    counts, threads = _where_checked(out, 3 * pipeline.feeder.FEED_CHUNK, 0.0)
    assert counts == {"reused": 3 * pipeline.feeder.FEED_CHUNK}
    assert len(set(threads)) == 1
    assert not threads[0].startswith("resume")
