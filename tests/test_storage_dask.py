"""s3:// in and out over ``--backend dask`` with no shared local folder: a scheduler and two
worker processes, each in its own private working folder, reach the store (moto's S3 server on
127.0.0.1) with the options that travel with the URLs; the parent schedules keys only."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.s3_server import ROOT, S3, SECRET, decodes, s3

pytest.importorskip("distributed")

IMAGES = ROOT / "sample_data" / "images"
DATA = ROOT / "sample_data" / "data"
BIN = Path(sys.executable).parent


@pytest.fixture
def server(tmp_path: Path) -> Iterator[S3]:
    with s3(tmp_path) as srv:
        yield srv


@pytest.fixture
def cluster(tmp_path: Path, server: S3) -> Iterator[str]:
    """``dask scheduler`` + 2 ``dask worker`` processes, each in a private folder, whose
    environment names no endpoint and no keys (those come with the URLs)."""
    env = server.env()
    procs: list[subprocess.Popen[bytes]] = []
    sched_file = tmp_path / "scheduler.json"
    common = ["--host", "127.0.0.1", "--no-dashboard"]
    try:
        folder = tmp_path / "sched"
        folder.mkdir()
        procs.append(
            _spawn(
                ["scheduler", "--port", "0", "--scheduler-file", str(sched_file), *common],
                folder,
                env,
            )
        )
        deadline = time.monotonic() + 60
        while not sched_file.exists() or not sched_file.read_text().strip():
            assert procs[0].poll() is None, "the scheduler exited"
            assert time.monotonic() < deadline, "no scheduler file within 60 s"
            time.sleep(0.1)
        for i in range(2):
            own = tmp_path / f"worker{i}"
            own.mkdir()
            procs.append(
                _spawn(
                    [
                        "worker",
                        "--scheduler-file",
                        str(sched_file),
                        *common,
                        "--nworkers",
                        "1",
                        "--nthreads",
                        "1",
                        "--local-directory",
                        str(own),
                    ],
                    own,
                    env,
                )
            )
        yield json.loads(sched_file.read_text())["address"]
    finally:
        for p in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                for q in [psutil.Process(p.pid), *psutil.Process(p.pid).children(True)]:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        q.kill()
                p.wait(timeout=10)


def _spawn(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(BIN / "dask"), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.mark.timeout(240)
def test_s3_to_s3_on_a_dask_cluster_without_a_shared_folder(
    server: S3, cluster: str, tmp_path: Path
) -> None:
    server.bucket("pix-in")
    n = 0
    for i in range(3):
        n += server.put_tree(IMAGES, f"s3://pix-in/photos/set{i}")
    # data objects: crunched on the worker from its own local copy (.npz: one item per array)
    n += server.put_tree(DATA, "s3://pix-in/photos/data") + 1  # arrays.npz holds two arrays
    server.bucket("pix-out")
    out = "s3://pix-out/dask"
    argv = _dask_argv(server, out, cluster, "64")

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv,
            cwd=tmp_path,
            env=server.env(),
            capture_output=True,
            text=True,
            timeout=200,
            check=False,
        )

    done = run()
    assert done.returncode == 0, done.stderr
    recs = server.records(out)
    assert len(recs) == n == len({r["key"] for r in recs})  # the ledger exact: each key once
    by_key = {r["key"]: r for r in recs}
    assert by_key["data/arrays.npz:counts"]["result"]["format"] == "npz"
    assert {r["status"] for r in by_key.values()} == {"ok"}
    assert by_key["data/sensors.csv"]["result"]["kind"] == "csv"
    assert by_key["data/temperature_grid.npy"]["result"]["kind"] == "array"
    stored = server.objects(out)
    images = [r for k, r in by_key.items() if not k.startswith("data/")]
    for r in images:
        for o in r["result"]["outputs"]:
            assert decodes(server.read(f"{out}/{o['path']}")) == (o["width"], o["height"])
            assert stored[o["path"]] == o["bytes"]
    summary = json.loads(server.read(f"{out}/summary.json"))
    workers = summary["collected"]["backend"]["workers"]
    assert sum(w["items"] for w in workers.values()) == len(by_key)
    # nothing written in the workers' private folders but Dask's own; no secret anywhere
    for own in (tmp_path / "worker0", tmp_path / "worker1"):
        assert not [p for p in own.rglob("*") if p.suffix in (".jpg", ".png", ".webp")]
    assert SECRET not in done.stdout + done.stderr
    # a rerun on the cluster reuses everything
    again = run()
    assert again.returncode == 0, again.stderr
    recs = server.records(out)
    assert {r["status"] for r in recs} == {"reused"}


def _dask_argv(server: S3, out: str, cluster: str, size: str) -> list[str]:
    """``process s3://pix-in/photos/ -o out`` on the cluster, in shards of 4 inputs."""
    dask = ("--backend", "dask", "--scheduler", cluster, "--shard-size", "4")
    return server.argv("s3://pix-in/photos/", out, "--size", size, *dask)


@pytest.mark.timeout(240)
def test_a_worker_killed_mid_run_loses_only_its_shard(
    server: S3, cluster: str, tmp_path: Path
) -> None:
    server.bucket("pix-in")
    n = sum(server.put_tree(IMAGES, f"s3://pix-in/photos/set{i}") for i in range(6))
    server.bucket("pix-out")
    out = "s3://pix-out/killed"
    argv = _dask_argv(server, out, cluster, "256")
    proc = subprocess.Popen(
        argv,
        cwd=tmp_path,
        env=server.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while len(server.objects(out)) < 4:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no outputs within 120 s"
            time.sleep(0.05)
        victims = _worker_processes(tmp_path / "worker0")
        assert victims, "no worker process found"
        for v in victims:
            v.kill()  # SIGKILL: the worker dies mid-shard; its nanny starts another
        assert proc.poll() is None, "the run ended before the worker was killed"
        _, err = proc.communicate(timeout=200)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    recs = server.records(out)
    assert len(recs) == n == len({r["key"] for r in recs})  # each input once
    assert {r["status"] for r in recs} == {"ok"}
    stored = server.objects(out)
    for r in recs:
        for o in r["result"]["outputs"]:
            assert stored[o["path"]] == o["bytes"]
    backend = json.loads(server.read(f"{out}/summary.json"))["collected"]["backend"]
    # the killed worker had taken work (a replacement may join in time to take some too)
    assert len(backend["workers"]) >= 2


def _worker_processes(folder: Path) -> list[psutil.Process]:
    """The worker processes (not the nanny) whose working folder is ``folder``'s worker."""
    found = []
    for p in psutil.process_iter(["cmdline", "cwd"]):
        with contextlib.suppress(psutil.Error):
            cmd = " ".join(p.info["cmdline"] or [])
            if "dask" in cmd and "worker" in cmd and p.info["cwd"] == str(folder):
                found.extend(p.children(recursive=True))
    return [c for c in found if c.is_running()]
