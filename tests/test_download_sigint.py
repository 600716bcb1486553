"""Ctrl-C during a real ``process --urls`` run whose downloads are in flight on the lean HTTP
client's kept connections: exit 130, one record per URL (the held ones ``cancelled``), no
process of the run left, and the server sees every held connection closed."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from aiohttp import web

from tests.conftest import by_key
from tests.http_server import serve
from tests.test_shards import jpeg

ROOT = Path(__file__).resolve().parents[1]
URLS, OPEN = 24, 8  # images from N = OPEN on wait for the gate
DEADLINE = 60.0


class Gated:
    """``/img/N.jpg``: a JPEG; from N = OPEN on, the answer waits for :attr:`gate`."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.gate = threading.Event()
        self.waiting = 0
        self.dropped = 0  # held requests whose client went away

    def routes(self) -> list[web.RouteDef]:
        async def image(request: web.Request) -> web.StreamResponse:
            n = int(request.match_info["n"])
            self.hits[request.path] += 1
            if n >= OPEN:
                self.waiting += 1
                try:
                    # a thread waits on the gate, the handler on the thread (no polling)
                    await asyncio.to_thread(self.gate.wait, DEADLINE)
                except asyncio.CancelledError:  # aiohttp cancels when the client hangs up
                    self.dropped += 1
                    raise
            return web.Response(body=jpeg(n), content_type="image/jpeg")

        return [web.get("/img/{n}.jpg", image)]


@pytest.fixture
def gated() -> Iterator[tuple[Gated, str]]:
    server = Gated()
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
def test_sigint_with_downloads_in_flight(tmp_path: Path, gated: tuple[Gated, str]) -> None:
    server, base = gated
    urls = tmp_path / "urls.txt"
    urls.write_text("".join(f"{base}/img/{i}.jpg\n" for i in range(URLS)))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pipeline", "process", "--urls", str(urls), "-o", str(out)]
    cmd += ["--size", "64", "--workers", "download=8", "--allow-private-hosts"]
    cmd += ["--download-retries", "0", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    kids: list[psutil.Process] = []
    try:
        # every open image answered, and 8 downloads held at the gate (all download workers)
        _wait_until(
            "downloads were held",
            proc,
            lambda: server.waiting >= 8 and sum(server.hits.values()) >= OPEN + 8,
        )
        kids = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 130, err
    _gone, alive = psutil.wait_procs(kids, timeout=5)
    assert alive == [], f"left behind: {alive}"
    recs = by_key(out)
    assert len(recs) == len(set(recs)) <= URLS  # one record per URL seen
    held = {f"{base}/img/{i}.jpg" for i in range(OPEN, URLS) if server.hits[f"/img/{i}.jpg"]}
    assert len(held) == 8
    assert {recs[u]["status"] for u in held} == {"cancelled"}
    assert {r["status"] for r in recs.values()} <= {"ok", "cancelled"}
    # the run closed the held connections: the server saw each request's client go
    deadline = time.monotonic() + 10
    while server.dropped < 8 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.dropped == 8
