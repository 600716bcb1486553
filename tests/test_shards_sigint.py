"""Ctrl-C half-way through a real shard run, then resume: same samples, no duplicates, nothing
downloaded twice that sits in a complete shard."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from aiohttp import web

from app.config import ProcessConfig
from app.process import run_process
from tests.conftest import by_key
from tests.http_server import serve
from tests.test_shards import FAST, jpeg, read_samples, write_parquet

ROOT = Path(__file__).resolve().parents[1]
ROWS, OPEN = 24, 12  # images from row OPEN on wait for the gate
DEADLINE = 60.0


class GatedImages:
    """Images ``/img/N.jpg``; from N = OPEN on, the answer waits until :attr:`gate` is set."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.gate = threading.Event()
        self.waiting = 0

    def routes(self) -> list[web.RouteDef]:
        async def image(request: web.Request) -> web.Response:
            n = int(request.match_info["n"])
            self.hits[request.path] += 1
            if n >= OPEN:
                self.waiting += 1
                # a thread waits on the gate, the handler on the thread (no polling)
                await asyncio.to_thread(self.gate.wait, DEADLINE)
            return web.Response(body=jpeg(n), content_type="image/jpeg")

        return [web.get("/img/{n}.jpg", image)]


@pytest.fixture
def gated() -> Iterator[tuple[GatedImages, str]]:
    server = GatedImages()
    with serve(server.routes()) as base:
        try:
            yield server, base
        finally:
            server.gate.set()  # no handler outlives the test


def _wait_until(what: str, proc: subprocess.Popen[str], ready: object) -> None:
    deadline = time.monotonic() + DEADLINE
    while not ready():  # type: ignore[operator]
        if proc.poll() is not None:
            raise AssertionError(f"the run exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} within {DEADLINE:.0f} s")
        time.sleep(0.02)  # a poll interval, not a guess at how long the run takes


@pytest.mark.timeout(120)
def test_sigint_half_way_then_resume(tmp_path: Path, gated: tuple[GatedImages, str]) -> None:
    server, base = gated
    rows = [{"url": f"{base}/img/{i}.jpg", "caption": f"c{i}"} for i in range(ROWS)]
    table = write_parquet(tmp_path / "t.parquet", rows)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pipeline", "process", "--urls", str(table), "-o", str(out)]
    cmd += ["--output-format", "webdataset", "--caption-col", "caption", "--size", "64"]
    cmd += ["--samples-per-shard", "8", "--workers", "download=4", "--allow-private-hosts"]
    cmd += ["--download-retries", "0", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        # half-way: the first shard is complete and downloads of later rows are held
        _wait_until(
            "shard 0 was complete", proc, lambda: (out / "00000.tar").exists() and server.waiting
        )
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 130, err
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]  # the open shard is gone
    first = set(pq.read_table(out / "00000.parquet").column("key").to_pylist())
    assert len(first) == 8
    recs = by_key(out)
    ok = {k for k, r in recs.items() if r["status"] == "ok"}
    assert ok == first  # ok only in a complete shard; the rest cancelled or never started
    assert {r["status"] for k, r in recs.items() if k not in ok} <= {"cancelled"}
    tars = sorted(p.name for p in out.glob("*.tar"))
    hits_before = Counter(server.hits)

    server.gate.set()
    cfg = ProcessConfig.from_mapping(
        {
            "urls": [str(table)],
            "output": str(out),
            "output_format": "webdataset",
            "caption_col": "caption",
            "size": ["64"],
            "samples_per_shard": 8,
            **FAST,
        }
    )
    assert run_process(cfg).exit_code == 0
    samples = read_samples(out)
    keys = [str(s["__key__"]) for s in samples]
    assert sorted(keys) == [f"{i:09d}" for i in range(ROWS)]  # every row once: no duplicates
    assert all(s["txt"].decode() == f"c{int(s['__key__'])}" for s in samples)
    for key in first:  # what sat in a complete shard was not downloaded again
        assert server.hits[f"/img/{int(key)}.jpg"] == hits_before[f"/img/{int(key)}.jpg"] == 1
    new = sorted(p.name for p in out.glob("*.tar"))
    assert new[: len(tars)] == tars
    assert new[len(tars)] == f"{len(tars):05d}.tar"
    recs = by_key(out)
    assert {r["status"] for r in recs.values()} == {"ok", "skipped"}
    shards = {(r.get("result") or {}).get("shard") for r in recs.values()}
    assert shards == set(new)
    stats = [json.loads(p.read_text()) for p in out.glob("*_stats.json")]
    assert sum(s["count"] for s in stats) == ROWS
