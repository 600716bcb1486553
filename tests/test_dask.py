"""The Dask backend: same records as the local backend, faults, cancellation, a real Ctrl-C.

A module-scoped LocalCluster (2 one-thread worker processes on 127.0.0.1) serves most tests;
one test starts ``dask scheduler`` and ``dask worker`` as separate processes, one lets the
backend start (and stop) its own LocalCluster, and one sends SIGINT to a real CLI run.

The item functions below are defined here, at module level, so that Dask workers can import them
as ``tests.test_dask`` (the repository root is on the workers' ``sys.path``).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from app.config import ProcessConfig
from app.process import run_process
from pipeline import ConfigError, FatalRunError, Pipeline, stage
from pipeline.backends.dask import DaskBackend, local_stages, run_shard
from pipeline.forkserver import shutdown
from tests.conftest import by_key

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "sample_data" / "images"
EDGE = ROOT / "sample_data" / "edge"
BIN = Path(sys.executable).parent


# -- item functions (imported by the workers) ---------------------------------------------------
class OddError(Exception):
    """Pickles but cannot be unpickled (two required arguments, one in ``args``)."""

    def __init__(self, value: int, why: str) -> None:
        super().__init__(f"odd value {value}: {why}")


def add_one(x: int) -> int:
    return x + 1


def fail_some(x: int) -> int:
    if x % 5 == 0:
        raise ValueError(f"bad value {x}")
    if x % 7 == 0:
        raise OddError(x, "seven")
    return x * 10


def slow_mark(x: int, folder: str, delay: float) -> int:
    """Sleep, then leave a marker ``<x>-<pid>``: which process did which item, how often."""
    time.sleep(delay)
    Path(folder, f"{x}-{os.getpid()}").touch()
    return x * 2


def crash_on(x: int, poison: int) -> int:
    if x == poison:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.01)  # simulated work: a shard of 10 takes a moment
    return x


def worker_settings(x: int) -> list[Any]:
    """The Dask settings of the worker process running the item."""
    import dask

    from pipeline.backends.dask import LOCAL_CLUSTER_CONFIG

    return [dask.config.get(key) for key in LOCAL_CLUSTER_CONFIG]


# -- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A LocalCluster of 2 worker processes; yields the scheduler address."""
    from distributed import LocalCluster

    env = dict(os.environ)  # the nannies copy their pre-spawn environment into this process
    lc = LocalCluster(  # type: ignore[no-untyped-call]
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=":0",
        worker_dashboard_address=None,
    )
    try:
        yield str(lc.scheduler_address)
    finally:
        lc.close()
        os.environ.clear()
        os.environ.update(env)
        # a forkserver the local runs here started has the nannies' environment (their malloc
        # settings, which the engine's workers leave alone): the next module's workers must not
        shutdown()


def _workers_ready(address: str, n: int) -> None:
    from distributed import Client

    with Client(address, timeout="30s") as client:  # type: ignore[no-untyped-call]
        client.wait_for_workers(n, timeout=60)


def _marks(folder: Path) -> list[tuple[int, int]]:
    return [tuple(map(int, p.name.split("-"))) for p in folder.iterdir()]  # type: ignore[misc]


# -- unit ------------------------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_window_is_known_after_open_or_given() -> None:
    with pytest.raises(RuntimeError, match="open"):
        _ = DaskBackend().window
    assert DaskBackend(window=3).window == 3
    for bad in ({"shard_size": 0}, {"window": 0}, {"n_workers": 0}):
        (name,) = bad
        with pytest.raises(ValueError, match=f"^{name} must be >= 1$"):
            DaskBackend(**bad)  # type: ignore[arg-type]
    summary = DaskBackend("tcp://127.0.0.1:1", shard_size=7).summary()
    assert summary["shard_size"] == 7
    assert summary["window"] is None
    assert summary["shards"] == 0


@pytest.mark.timeout(30)
def test_run_shard_runs_the_local_engine_in_process() -> None:
    stages = [
        stage(add_one, kind="thread", name="add"),
        stage(fail_some, kind="process", name="check", workers=4, retries=1),
    ]
    assert [s.kind for s in local_stages(stages)] == ["thread", "thread"]
    assert local_stages(stages)[1].workers == 1
    res = run_shard(stages, [3, 4, 6, 9])  # add -> 4, 5 (ValueError), 7 (OddError), 10 (ValueError)
    assert [it.ok for it in res.items] == [True, False, False, False]
    assert res.items[0].value == 40
    assert [(it.step, it.error_type) for it in res.items[1:]] == [
        (1, "ValueError"),
        (1, "OddError"),
        (1, "ValueError"),
    ]
    assert res.items[1].message == "bad value 5"
    assert res.items[1].attempts == 2
    assert res.reached == [4, 4]
    assert len(res.busy) == 2
    assert res.worker == f"pid:{os.getpid()}"


def _routed_stages() -> list[Any]:
    from tests.test_routing import Chunk, crunch, inc, plan, shout

    return [
        stage(plan, kind="thread", name="read"),
        stage(shout, kind="process", accepts=str, name="resize"),
        stage(crunch, kind="process", accepts=Chunk, name="crunch"),
        stage(inc, kind="thread", accepts=int, name="write"),
    ]


@pytest.mark.timeout(30)
def test_a_shard_routes_by_type_and_says_which_stages_each_item_skipped() -> None:
    res = run_shard(_routed_stages(), ["a", 1000, 7])
    assert [it.value for it in res.items] == ["A!", sum(range(1000)) + 1, 8]
    assert all(it.ok for it in res.items)
    # stages: 0 read, 1 resize, 2 crunch, 3 write; bit j set: stage j skipped the item
    assert [it.bypassed for it in res.items] == [0b1100, 0b0010, 0b0110]
    assert res.reached == [3, 1, 4, 2]  # crunch ran the data file's four chunks


@pytest.mark.timeout(120)
def test_dask_stage_metrics_count_only_the_items_a_stage_accepted(
    cluster: str, tmp_path: Path
) -> None:
    inputs = [("img1", "a"), ("data", 1000), ("img2", "b"), ("small", 7)]
    got = {}
    for name, backend in (("local", None), ("dask", DaskBackend(cluster, shard_size=2))):
        result = Pipeline(_routed_stages()).run(
            inputs, output=tmp_path / name, backend=backend, progress=False
        )
        assert result.counts == {"ok": 4}
        got[name] = {s.name: s.items for s in result.stages}
        assert {k: r["result"] for k, r in by_key(tmp_path / name).items()} == {
            "img1": "A!",
            "img2": "B!",
            "data": sum(range(1000)) + 1,
            "small": 8,
        }
    assert got["local"] == {"read": 4, "resize": 2, "crunch": 4, "write": 2}
    # the driver counts items (not the parts a shard ran): the data file once in crunch
    assert got["dask"] == {"read": 4, "resize": 2, "crunch": 1, "write": 2}


@pytest.mark.timeout(60)
def test_an_unreachable_scheduler_is_a_fatal_run_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipeline.backends.dask as dask_backend

    monkeypatch.setattr(dask_backend, "CONNECT_TIMEOUT", 2.0)
    monkeypatch.setattr(dask_backend, "HANDSHAKE_SLACK", 1.0)
    pipe = Pipeline([stage(add_one, kind="thread")])
    with pytest.raises(FatalRunError, match="cannot connect to the Dask scheduler"):
        pipe.run(range(3), output=tmp_path / "out", backend=DaskBackend("tcp://127.0.0.1:1"))
    # a port that accepts and never answers (another service's): the handshake had no limit
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"tcp://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(FatalRunError, match="cannot connect to the Dask scheduler"):
            pipe.run(range(3), output=tmp_path / "out2", backend=DaskBackend(address))
        assert time.monotonic() - started < 20
    with pytest.raises(ConfigError, match="is not one"):
        pipe.run(range(3), output=tmp_path / "out3", backend=DaskBackend("notanaddress"))


# -- against the shared cluster --------------------------------------------------------------------
@pytest.mark.timeout(180)
def test_process_matches_the_local_backend(cluster: str, tmp_path: Path) -> None:
    import numpy as np

    data = tmp_path / "data"
    data.mkdir()
    np.save(data / "a.npy", np.linspace(-3.0, 7.0, 40_000))
    np.savez(data / "b.npz", x=np.arange(1000), y=np.eye(5))
    (data / "t.csv").write_text("a,b\n" + "".join(f"{i},{i * i}\n" for i in range(3000)))
    outs = {}
    for backend in ("local", "dask"):
        out = tmp_path / backend
        cfg = ProcessConfig.from_mapping(
            {
                "inputs": [str(IMAGES), str(EDGE), str(data)],
                "output": str(out),
                "chunk_size": "64KB",
                "quiet": True,
                "backend": backend,
                **({"scheduler": cluster, "shard_size": 8} if backend == "dask" else {}),
            }
        )
        result = run_process(cfg)
        assert result.error is None
        outs[backend] = out
    local, dask = by_key(outs["local"]), by_key(outs["dask"])
    assert local.keys() == dask.keys()
    failed = {k for k, r in local.items() if r["status"] == "failed"}
    assert failed
    assert len(failed) < len(local)  # edge cases fail one by one, the rest is ok
    for key, rec in local.items():
        other = dask[key]
        for field in ("status", "stage", "error_type", "error", "reason", "attempts"):
            assert rec.get(field) == other.get(field), (key, field)
        if rec["status"] == "ok":
            assert rec["result"] == other["result"], key
            for o in rec["result"].get("outputs", []):
                a, b = outs["local"] / o["path"], outs["dask"] / o["path"]
                assert a.read_bytes() == b.read_bytes(), o["path"]
    summary = json.loads((outs["dask"] / "summary.json").read_text())
    backend = summary["collected"]["backend"]
    assert backend["name"] == "dask"
    assert backend["scheduler"] == cluster
    assert backend["shard_size"] == 8
    assert backend["shards"] >= 1
    # processed on the workers: ok, failed, and skipped by a stage (not an image: the read stage)
    processed = sum(1 for r in dask.values() if r["status"] in ("ok", "failed") or r.get("stage"))
    assert backend["items"] == processed == sum(w["items"] for w in backend["workers"].values())
    assert summary["counts"] == json.loads((outs["local"] / "summary.json").read_text())["counts"]
    assert dask["data/a.npy"]["result"]["chunks"] == 5  # 320 kB in 64 kB parts
    assert dask["data/b.npz:y"]["result"]["stats"]["sum"] == 5.0


@pytest.mark.timeout(180)
def test_a_dask_rerun_reuses_what_is_done(cluster: str, tmp_path: Path) -> None:
    """Resume is the driver's: a second run records every done input ``reused`` (as locally),
    sends none of them to the workers, and the tables keep them."""
    out = tmp_path / "out"
    cfg = ProcessConfig.from_mapping(
        {
            "inputs": [str(IMAGES), str(EDGE)],
            "output": str(out),
            "quiet": True,
            "backend": "dask",
            "scheduler": cluster,
            "shard_size": 8,
        }
    )
    first = run_process(cfg)
    assert first.error is None
    made = by_key(out)
    again = run_process(cfg)
    assert again.error is None
    assert again.exit_code == 1  # the edge cases that fail are tried again, and fail
    recs = by_key(out)
    ok = {k for k, r in made.items() if r["status"] == "ok"}
    failed = {k for k, r in made.items() if r["status"] == "failed"}
    assert ok
    assert failed
    assert {k for k, r in recs.items() if r["status"] == "reused"} == ok
    assert {k for k, r in recs.items() if r["status"] == "failed"} == failed
    assert again.counts == {
        "reused": len(ok),
        "failed": len(failed),
        "skipped": first.counts["skipped"],  # declined by the read stage again, not redone
    }
    for key in ok:
        assert recs[key]["result"] == made[key]["result"]
    backend = json.loads((out / "summary.json").read_text())["collected"]["backend"]
    assert backend["items"] == len(failed)  # only the failures went to the workers again
    with open(out / "stats.csv", newline="") as fh:
        rows = {row["key"]: row["status"] for row in csv.DictReader(fh)}
    assert rows == {k: "reused" for k in ok}


@pytest.mark.timeout(120)
def test_item_errors_fail_alone_with_their_type(cluster: str, tmp_path: Path) -> None:
    stages = [
        stage(add_one, kind="thread", name="add"),
        stage(fail_some, kind="process", name="check", workers=2, retries=1),
    ]
    got: dict[str, dict[str, dict[str, Any]]] = {}
    for name, backend in (("local", None), ("dask", DaskBackend(cluster, shard_size=16))):
        out = tmp_path / name
        result = Pipeline(stages).run(range(60), output=out, backend=backend, progress=False)
        assert result.error is None
        assert result.exit_code == 1
        got[name] = by_key(out)
    local, dask = got["local"], got["dask"]
    assert local.keys() == dask.keys()
    assert len(dask) == 60
    for key, rec in dask.items():
        x = int(key.lstrip("#")) + 1
        if x % 5 == 0:
            assert (rec["status"], rec["stage"], rec["error_type"]) == (
                "failed",
                "check",
                "ValueError",
            )
            assert rec["error"] == f"bad value {x}"
            assert rec["attempts"] == 2
        elif x % 7 == 0:  # cannot cross a process boundary as itself: type name and message kept
            assert (rec["status"], rec["error_type"]) == ("failed", "OddError")
            assert f"odd value {x}: seven" in rec["error"]
        else:
            assert rec["status"] == "ok"
            assert rec["result"] == x * 10
        assert {k: rec.get(k) for k in ("status", "stage", "error_type", "attempts")} == {
            k: local[key].get(k) for k in ("status", "stage", "error_type", "attempts")
        }


@pytest.mark.timeout(60)
def test_a_stage_the_workers_cannot_load_stops_the_run_and_says_why(
    cluster: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stage function from a module installed here but not on the workers: every shard would
    fail alike, so the run stops at the first with what to do. Left to Dask, the task's message
    failed to load on the worker before any task ran, the worker's link to the scheduler died,
    and the run waited forever (it was still waiting after 120 s). The cluster stays usable."""
    import importlib

    (tmp_path / "only_on_the_driver.py").write_text("def triple(x):\n    return 3 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # here only: the workers are running already
    module = importlib.import_module("only_on_the_driver")
    pipe = Pipeline([stage(module.triple, kind="process", name="triple")])
    out = tmp_path / "out"
    started = time.monotonic()
    with pytest.raises(FatalRunError, match="cannot load this pipeline: ModuleNotFoundError"):
        pipe.run(range(200), output=out, backend=DaskBackend(cluster, shard_size=8), progress=False)
    assert time.monotonic() - started < 30
    recorded = by_key(out)
    assert {r["status"] for r in recorded.values()} <= {"cancelled"}  # none done, none lost
    assert len(recorded) < 200
    # the workers are well: the next run on the same cluster goes through
    again = Pipeline([stage(add_one, kind="process")]).run(
        range(20), backend=DaskBackend(cluster, shard_size=8), progress=False
    )
    assert again.ok == 20


@pytest.mark.timeout(120)
def test_a_shard_that_finds_the_disk_full_stops_the_run(cluster: str, tmp_path: Path) -> None:
    """The worker's run stops at the item that found the disk full (OutOfSpace, which the shard's
    task raises); the driver's run stops too rather than fail shard after shard. The shard's
    items are recorded failed with what to do, once; a run with room does the rest."""
    from pipeline.errors import OutOfSpace
    from tests import fns

    inputs = [(f"k{i:03d}", i) for i in range(400)]
    backend = DaskBackend(cluster, shard_size=8, window=2)
    full = Pipeline([stage(fns.disk_full_from, 40, "all", kind="process", name="write")])
    out = tmp_path / "out"
    with pytest.raises(OutOfSpace, match="free some space") as got:
        full.run(inputs, output=out, backend=backend, progress=False)
    assert got.value.exit_code == 3
    assert str(got.value).count("free some space") == 1, got.value
    # the input that found the disk full, by its key in the run (not its place in the shard)
    assert re.search(r"/out/(\d+)\.jpg' \(stage 'write', input 'k0*\1'\)", str(got.value))
    recorded = by_key(out)
    assert len(recorded) < 400  # it stopped
    failed = [r for r in recorded.values() if r["status"] == "failed"]
    assert failed, recorded
    assert all(r["error_type"] == "OutOfSpace" for r in failed), failed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["error"].startswith("OutOfSpace: ")

    room = Pipeline([stage(fns.disk_full_from, 10_000, kind="process", name="write")])
    again = room.run(inputs, output=out, backend=DaskBackend(cluster, shard_size=8), progress=False)
    assert again.ok + again.reused == 400


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_cancelling_a_run_cancels_its_shards(cluster: str, tmp_path: Path) -> None:
    from distributed import Client

    marks = tmp_path / "marks"
    marks.mkdir()
    pipe = Pipeline([stage(slow_mark, str(marks), 0.3, kind="process", name="mark")])
    run = asyncio.create_task(
        pipe.run_async(range(60), backend=DaskBackend(cluster, shard_size=6), progress=False)
    )
    deadline = time.monotonic() + 60
    while len(_marks(marks)) < 2:
        assert time.monotonic() < deadline
        assert not run.done()
        await asyncio.sleep(0.02)
    run.cancel()
    sent = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert time.monotonic() - sent < 5
    at_cancel = len(_marks(marks))
    async with Client(cluster, asynchronous=True, timeout="30s") as client:  # type: ignore[no-untyped-call]
        left = -1
        while time.monotonic() < sent + 10:
            left = await client.run_on_scheduler(_n_tasks)
            if left == 0:
                break
            await asyncio.sleep(0.1)
        assert left == 0, "shard tasks left on the scheduler"
        # a running shard notices its cancellation and stops after the item it is on: wait
        # until no worker thread runs a task any more (not a fixed time), then count
        busy = -1
        while time.monotonic() < sent + 20:
            busy = sum((await client.run(_n_running)).values())
            if busy == 0:
                break
            await asyncio.sleep(0.05)
        assert busy == 0, "a shard kept running after its task was cancelled"
    assert len(_marks(marks)) - at_cancel <= 2
    assert len(_marks(marks)) < 60


def _n_tasks(dask_scheduler: Any) -> int:
    return len(dask_scheduler.tasks)


def _n_running(dask_worker: Any) -> int:
    """Tasks whose function is running on a worker's threads right now."""
    return len(dask_worker.active_threads)


@pytest.mark.timeout(180)
def test_worker_sigkilled_mid_shard_every_input_once(cluster: str, tmp_path: Path) -> None:
    _workers_ready(cluster, 2)
    marks, out = tmp_path / "marks", tmp_path / "out"
    marks.mkdir()
    n, victim_item = 120, 35  # shards of 10: 35 is in the middle of one
    killed: list[int] = []

    def killer() -> None:  # SIGKILL the worker that has just finished item 35, mid-shard
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not killed:
            for x, pid in _marks(marks):
                if x == victim_item:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
            time.sleep(0.005)

    import threading

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    pipe = Pipeline([stage(slow_mark, str(marks), 0.05, kind="process", name="mark")])
    backend = DaskBackend(cluster, shard_size=10)
    result = pipe.run(range(n), output=out, backend=backend, progress=False)
    thread.join(timeout=5)
    assert killed, "the worker was never killed"
    assert not psutil.pid_exists(killed[0]) or psutil.Process(killed[0]).status() == "zombie"
    recs = by_key(out)  # by_key asserts that no key is recorded twice
    assert len(recs) == n
    assert all(r["status"] == "ok" for r in recs.values())
    assert sorted(r["result"] for r in recs.values()) == [2 * x for x in range(n)]
    assert result.crashes == ()
    assert result.ok == n
    done = _marks(marks)
    by_item: dict[int, set[int]] = {}
    for x, pid in done:
        by_item.setdefault(x, set()).add(pid)
    assert set(by_item) == set(range(n))
    redone = [x for x, pids in by_item.items() if len(pids) > 1]
    assert redone
    assert all(killed[0] in by_item[x] for x in redone)  # the shard ran again
    summary = json.loads((out / "summary.json").read_text())
    assert summary["collected"]["backend"]["items"] == n
    _workers_ready(cluster, 2)  # the nanny restarted it: leave the cluster whole


# -- clusters of their own -------------------------------------------------------------------------
@pytest.mark.timeout(180)
def test_item_that_kills_workers_fails_alone_and_the_cluster_goes(tmp_path: Path) -> None:
    import dask
    import distributed  # noqa: F401  # before dask.config.set: its exit would drop the defaults

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    pipe = Pipeline([stage(crash_on, 13, kind="process", name="crash")])
    backend = DaskBackend(shard_size=10, n_workers=2)
    settings = {
        "distributed.scheduler.allowed-failures": 1,
        "distributed.scheduler.worker-saturation": 1.0,
    }
    with dask.config.set(settings):
        result = pipe.run(range(30), output=tmp_path / "out", backend=backend, progress=False)
    recs = by_key(tmp_path / "out")
    assert len(recs) == 30
    bad = {k: r for k, r in recs.items() if r["status"] != "ok"}
    assert list(bad) == ["#000000013"]
    assert (bad["#000000013"]["error_type"], bad["#000000013"]["stage"]) == (
        "WorkerCrashed",
        "crash",
    )
    assert len(result.crashes) == 2  # the shard, then the item alone
    summary = backend.summary()
    assert summary["killed_shards"] == 1
    assert summary["crashed_items"] == 1
    assert summary["local_cluster"] is True
    assert summary["malloc_trim_threshold"] is None
    # the LocalCluster the backend started is gone, workers included
    left = [
        p
        for p in psutil.Process().children(recursive=True)
        if p.pid not in before and "resource_tracker" not in " ".join(_cmdline(p))
    ]
    _, alive = psutil.wait_procs(left, timeout=10)
    assert alive == []


@pytest.mark.timeout(120)
def test_a_local_cluster_runs_with_the_quiet_housekeeping_settings(tmp_path: Path) -> None:
    from pipeline.backends.dask import LOCAL_CLUSTER_CONFIG

    pipe = Pipeline([stage(worker_settings, kind="process", name="settings")])
    pipe.run(range(2), output=tmp_path / "out", backend=DaskBackend(n_workers=1), progress=False)
    for rec in by_key(tmp_path / "out").values():
        assert rec["result"] == list(LOCAL_CLUSTER_CONFIG.values())
    assert LOCAL_CLUSTER_CONFIG["distributed.worker.profile.enabled"] is False


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return list(p.cmdline())
    except psutil.Error:
        return []


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:  # never leave a process tree behind when a test fails
        try:
            tree = [psutil.Process(p.pid), *psutil.Process(p.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        for q in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                q.kill()
        p.wait(timeout=10)
        for stream in (p.stdout, p.stderr):
            if stream is not None:
                stream.close()


def _scheduler_and_worker(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> tuple[str, subprocess.Popen[bytes], subprocess.Popen[bytes]]:
    """``dask scheduler`` and a ``dask worker`` (one process, one thread) as an operator starts
    them: the scheduler's address and both processes (stopped by ``procs`` at the end)."""
    sched_file = tmp_path / "scheduler.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    common = ["--host", "127.0.0.1", "--no-dashboard"]
    scheduler = subprocess.Popen(
        [
            str(BIN / "dask"),
            "scheduler",
            "--port",
            "0",
            "--scheduler-file",
            str(sched_file),
            *common,
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    procs.append(scheduler)
    deadline = time.monotonic() + 60
    while not sched_file.exists() or not sched_file.read_text().strip():
        assert scheduler.poll() is None, "the scheduler exited before writing its file"
        assert time.monotonic() < deadline, "no scheduler file within 60 s"
        time.sleep(0.1)
    address = json.loads(sched_file.read_text())["address"]
    one = ["--nworkers", "1", "--nthreads", "1", "--local-directory", str(tmp_path)]
    worker = subprocess.Popen(
        [str(BIN / "dask"), "worker", "--scheduler-file", str(sched_file), *common, *one],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    procs.append(worker)
    return address, scheduler, worker


@pytest.mark.timeout(180)
def test_separate_scheduler_and_worker_processes(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    address, scheduler, worker = _scheduler_and_worker(tmp_path, procs)
    cfg = ProcessConfig.from_mapping(
        {
            "inputs": [str(IMAGES)],
            "output": str(tmp_path / "out"),
            "quiet": True,
            "backend": "dask",
            "scheduler": address,
        }
    )
    result = run_process(cfg)  # waits for the worker to join
    recs = by_key(tmp_path / "out")
    n_files = sum(1 for p in IMAGES.rglob("*") if p.is_file())
    assert len(recs) == n_files
    assert result.ok == n_files
    backend = json.loads((tmp_path / "out" / "summary.json").read_text())["collected"]["backend"]
    assert backend["scheduler"] == address
    assert backend["local_cluster"] is False
    assert backend["worker_threads"] == 1
    assert backend["window"] == 2
    (w,) = backend["workers"].values()
    assert w["items"] == n_files
    # stop them the way an operator would; nothing may be left running
    tree = [psutil.Process(p.pid) for p in (worker, scheduler)]
    tree += [c for p in tree for c in p.children(recursive=True)]
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) is not None
    scheduler.send_signal(signal.SIGTERM)
    assert scheduler.wait(timeout=30) is not None
    _, alive = psutil.wait_procs(tree, timeout=10)
    assert alive == []


@pytest.mark.timeout(120)
def test_a_cluster_left_without_a_worker_stops_the_run(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    """An external cluster whose only worker dies mid-run (its nanny with it): the run waits
    for one to join for ``no_workers_timeout`` seconds, then stops (exit 3) with what to do, its
    unfinished inputs cancelled, not failed. Dask alone waits forever."""
    address, _, worker = _scheduler_and_worker(tmp_path, procs)
    marks = tmp_path / "marks"
    marks.mkdir()

    def kill_the_worker() -> None:
        deadline = time.monotonic() + 60
        while len(list(marks.iterdir())) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        tree = [psutil.Process(worker.pid), *psutil.Process(worker.pid).children(recursive=True)]
        for p in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()

    killer = threading.Thread(target=kill_the_worker, daemon=True)
    killer.start()
    pipe = Pipeline([stage(slow_mark, str(marks), 0.05, kind="process", name="mark")])
    out = tmp_path / "out"
    backend = DaskBackend(address, shard_size=4, no_workers_timeout=2)
    started = time.monotonic()
    with pytest.raises(FatalRunError, match=r"no Dask worker for 2 s: .* run the same command"):
        pipe.run(range(200), output=out, backend=backend, progress=False)
    assert time.monotonic() - started < 60
    killer.join(timeout=10)
    recorded = by_key(out)
    assert {r["status"] for r in recorded.values()} <= {"ok", "cancelled"}
    # the shards in flight when the worker died are cancelled; how many finished before it
    # did is a race (a shard's result leaves its worker after its last item's mark)
    assert sum(r["status"] == "cancelled" for r in recorded.values()) > 0


# -- Ctrl-C on a real CLI run -------------------------------------------------------------------
def _slow_images(folder: Path, n: int) -> None:
    """``n`` copies of one smooth 2400x1800 PNG: slow enough to decode and resize."""
    import numpy as np
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8))
    small.resize((2400, 1800), Image.Resampling.BICUBIC).save(
        folder / "p0000.png", compress_level=1
    )
    for i in range(1, n):
        shutil.copyfile(folder / "p0000.png", folder / f"p{i:04d}.png")


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("sig", "to", "code"),
    [
        ("SIGINT", "command", 130),  # Ctrl-C
        ("SIGHUP", "group", 129),  # the terminal hung up: the shell's, to every process of the job
        ("SIGTERM", "group", 143),  # a batch scheduler's (scancel), to every process of the job
    ],
)
def test_sigint_stops_a_dask_run_and_leaves_nothing_behind(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]], sig: str, to: str, code: int
) -> None:
    """The run stops as on Ctrl-C; the cluster's workers, which leave these signals to the
    run, are not killed by one sent to the whole group (their shards would fail)."""
    inputs, out = tmp_path / "in", tmp_path / "out"
    n = 80
    _slow_images(inputs, n)
    cmd = [sys.executable, "-m", "pipeline", "process", str(inputs), "--output", str(out)]
    cmd += ["--backend", "dask", "--shard-size", "4", "--quiet"]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    procs.append(proc)
    journal = out / ".pipeline" / "ledger.sqlite"
    deadline = time.monotonic() + 90
    kids: list[psutil.Process] = []
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        kids = psutil.Process(proc.pid).children(recursive=True)
        workers = [k for k in kids if "spawn_main" in " ".join(_cmdline(k))]
        if journal.exists() and len(workers) >= 2 and any(out.rglob("*.png")):
            break  # the cluster runs and thumbnails are being written
        time.sleep(0.1)
    else:
        raise AssertionError("the run never got going")
    kids = psutil.Process(proc.pid).children(recursive=True)
    sent = time.monotonic()
    if to == "command":
        proc.send_signal(getattr(signal, sig))
    else:
        os.killpg(proc.pid, getattr(signal, sig))  # its own session: the run's processes only
    before = {k.pid for k in kids}
    restarted: set[int] = set()  # a worker the signal killed comes back as a new process
    while proc.poll() is None and time.monotonic() < sent + 60:
        with contextlib.suppress(psutil.NoSuchProcess):
            now = psutil.Process(proc.pid).children(recursive=True)
            restarted |= {k.pid for k in now if "spawn_main" in " ".join(_cmdline(k))} - before
        time.sleep(0.02)
    got = proc.wait(timeout=60)
    elapsed = time.monotonic() - sent
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    assert got == code, stderr
    assert elapsed < 12, f"took {elapsed:.1f} s to stop"
    _, alive = psutil.wait_procs(kids, timeout=5)
    assert alive == [], f"left behind: {alive}"
    assert restarted == set(), "a worker died of the signal and was started again"
    recs = by_key(out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] is True
    assert summary["interrupted"] is True
    assert summary["exit_code"] == code
    assert summary["inputs_seen"] == len(recs) <= n
    assert sum(summary["counts"].values()) == len(recs)
    statuses = {r["status"] for r in recs.values()}
    assert statuses <= {"ok", "cancelled"}
    assert "cancelled" in statuses
    for rec in recs.values():  # an ok record means its thumbnail is there
        if rec["status"] == "ok":
            assert all((out / o["path"]).is_file() for o in rec["result"]["outputs"])
