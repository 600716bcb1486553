"""Ctrl-C sent to a real CLI run: exit 130 quickly, no child left, ledger consistent."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from tests.conftest import by_key

ROOT = Path(__file__).resolve().parents[1]


def _make_inputs(folder: Path, n: int) -> None:
    folder.mkdir()
    for i in range(n):
        (folder / f"f{i:04d}.bin").write_bytes(os.urandom(64))


#: Longest a test waits for a run to get going or to say something (a busy machine is slow).
DEADLINE = 60.0


def _start(inputs: Path, out: Path, delay: float) -> subprocess.Popen[bytes]:
    """A demo run into ``out``; its stderr (the log) goes to :func:`_stderr_file`."""
    cmd = [
        sys.executable,
        "-m",
        "pipeline",
        "demo",
        str(inputs),
        "--output",
        str(out),
        "--workers",
        "2",
        "--delay",
        str(delay),
        "--quiet",
    ]
    with _stderr_file(out).open("wb") as stderr:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr)


def _stderr_file(out: Path) -> Path:
    return out.parent / f"{out.name}.stderr.txt"


def _stderr(out: Path) -> str:
    return _stderr_file(out).read_text(errors="replace")


def _journalled(out: Path) -> int:
    """Records the run has committed to its journal so far (0 while there is none).

    Read from the SQLite journal itself, read-only (WAL: the run's writer is not blocked): the
    manifest is only written at the end of a run.
    """
    journal = out / ".pipeline" / "ledger.sqlite"
    if not journal.exists():
        return 0
    try:
        uri = f"{journal.as_uri()}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=1.0)) as db:
            (n,) = db.execute("SELECT COUNT(*) FROM records").fetchone()
    except sqlite3.Error:  # being created (no table yet) or busy for a moment: not yet
        return 0
    return int(n)


def _wait_until(
    what: str, out: Path, proc: subprocess.Popen[bytes], ready: Callable[[], bool]
) -> None:
    """Poll ``ready()`` until it holds; fail at once if the run ends, or after DEADLINE."""
    deadline = time.monotonic() + DEADLINE
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(
                f"the run exited ({proc.returncode}) before {what}:\n{_stderr(out)}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} within {DEADLINE:.0f} s:\n{_stderr(out)}")
        time.sleep(0.02)  # a poll interval, not a guess at how long the run takes


def _wait_for_progress(out: Path, proc: subprocess.Popen[bytes]) -> list[psutil.Process]:
    """Until both workers are up and the run has journalled a record: items are done and more
    are in flight. Returns the run's processes then (the forkserver's workers included)."""
    kids: list[psutil.Process] = []

    def going() -> bool:
        nonlocal kids
        with contextlib.suppress(psutil.NoSuchProcess):
            kids = psutil.Process(proc.pid).children(recursive=True)
        # workers are forked by the forkserver: the parent's grandchildren
        workers = [k for k in kids if _ppid(k) not in (proc.pid, None)]
        return len(workers) >= 2 and _journalled(out) >= 1

    _wait_until("the run got going", out, proc, going)
    return kids


def _wait_for_log(out: Path, proc: subprocess.Popen[bytes], text: str) -> None:
    _wait_until(f"its log said {text!r}", out, proc, lambda: text in _stderr(out))


def _ppid(p: psutil.Process) -> int | None:
    try:
        return p.ppid()
    except psutil.NoSuchProcess:
        return None


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:  # never leave a run behind when a test fails
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)


def _check_ledger(out: Path, n_inputs: int, exit_code: int = 130) -> dict[str, int]:
    recs = by_key(out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] is True
    assert summary["interrupted"] is True
    assert summary["exit_code"] == exit_code
    statuses = [r["status"] for r in recs.values()]
    assert set(statuses) <= {"ok", "cancelled", "failed"}
    assert "cancelled" in statuses or "ok" in statuses
    # every input seen has exactly one record; the rest were not started
    assert summary["inputs_seen"] == len(recs)
    assert len(recs) <= n_inputs
    assert sum(summary["counts"].values()) == summary["inputs_seen"]
    return {s: statuses.count(s) for s in set(statuses)}


@pytest.mark.timeout(90)
def test_sigint_stops_within_5s_and_leaves_nothing_behind(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    inputs, out = tmp_path / "in", tmp_path / "out"
    _make_inputs(inputs, 400)
    proc = _start(inputs, out, delay=0.2)
    procs.append(proc)
    kids = _wait_for_progress(out, proc)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    code = proc.wait(timeout=15)
    elapsed = time.monotonic() - sent
    assert code == 130, _stderr(out)
    assert elapsed < 5.0
    _gone, alive = psutil.wait_procs(kids, timeout=3)
    assert alive == [], f"left behind: {alive}"
    counts = _check_ledger(out, 400)
    assert counts.get("ok", 0) < 400


@pytest.mark.timeout(90)
def test_second_sigint_aborts_at_once(tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    inputs, out = tmp_path / "in", tmp_path / "out"
    _make_inputs(inputs, 200)
    proc = _start(inputs, out, delay=3.0)  # items far longer than the grace period
    procs.append(proc)
    kids = _wait_for_progress(out, proc)
    proc.send_signal(signal.SIGINT)
    # the first Ctrl-C was taken: the run stopped feeding and its grace period has begun
    _wait_for_log(out, proc, "interrupted: finishing in-flight items")
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    code = proc.wait(timeout=15)
    assert code == 130, _stderr(out)
    assert time.monotonic() - sent < 2.0
    _, alive = psutil.wait_procs(kids, timeout=3)
    assert alive == []
    counts = _check_ledger(out, 200)
    assert counts.get("cancelled", 0) >= 1


@pytest.mark.timeout(120)
def test_sigkilled_parent_loses_nothing_on_the_next_run(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    inputs, out = tmp_path / "in", tmp_path / "out"
    _make_inputs(inputs, 150)
    proc = _start(inputs, out, delay=0.05)
    procs.append(proc)
    kids = _wait_for_progress(out, proc)
    proc.kill()  # no chance to flush anything
    proc.wait(timeout=10)
    psutil.wait_procs(kids, timeout=5)
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "demo", str(inputs), "--output", str(out), "--quiet"],
        cwd=ROOT,
        timeout=90,
        capture_output=True,
    )
    assert done.returncode == 0, done.stderr.decode()
    recs = by_key(out)
    assert len(recs) == 150
    statuses = {r["status"] for r in recs.values()}
    assert statuses <= {"ok", "reused"}
    assert "reused" in statuses  # the killed run's journalled work was not redone
