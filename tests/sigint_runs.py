"""Ctrl-C a real ``process`` run: a loopback image server whose later images wait on a gate
(so downloads are held in flight), and a helper that starts the CLI as a subprocess, waits until
the run is where the test wants it, sends SIGINT and collects the exit."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
from aiohttp import web

from tests.http_server import serve
from tests.test_shards import jpeg

ROOT = Path(__file__).resolve().parents[1]
DEADLINE = 60.0


class GatedImages:
    """``/img/N.jpg``: a JPEG; from N = ``open_from`` on, the answer waits for :attr:`gate`."""

    def __init__(self, open_from: int) -> None:
        self.open_from = open_from
        self.hits: Counter[str] = Counter()
        self.gate = threading.Event()
        self.waiting = 0
        self.dropped = 0  # held requests whose client went away

    def routes(self) -> list[web.RouteDef]:
        async def image(request: web.Request) -> web.StreamResponse:
            n = int(request.match_info["n"])
            self.hits[request.path] += 1
            if n >= self.open_from:
                self.waiting += 1
                try:
                    # a thread waits on the gate, the handler on the thread (no polling)
                    await asyncio.to_thread(self.gate.wait, DEADLINE)
                except asyncio.CancelledError:  # aiohttp cancels when the client hangs up
                    self.dropped += 1
                    raise
            return web.Response(body=jpeg(n), content_type="image/jpeg")

        return [web.get("/img/{n}.jpg", image)]


@contextlib.contextmanager
def gated_images(open_from: int) -> Iterator[tuple[GatedImages, str]]:
    """A :class:`GatedImages` served on loopback and its base URL; the gate opens on the way out
    so no handler outlives the test."""
    server = GatedImages(open_from)
    with serve(server.routes()) as base:
        try:
            yield server, base
        finally:
            server.gate.set()


def wait_until(what: str, proc: subprocess.Popen[str], ready: Callable[[], object]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"the run exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} within {DEADLINE:.0f} s")
        time.sleep(0.02)  # a poll interval, not a guess at how long the run takes


@dataclass(frozen=True)
class Interrupted:
    returncode: int
    stderr: str
    kids: list[psutil.Process]  # the run's child processes just before the signal


def sigint_run(args: list[str], what: str, ready: Callable[[], object]) -> Interrupted:
    """Run ``python -m pipeline <args>``, wait until ``ready()`` (described by ``what``), send
    SIGINT and wait for the exit; the run is killed if it outlives the test."""
    cmd = [sys.executable, "-m", "pipeline", *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_until(what, proc, ready)
        kids = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    return Interrupted(proc.returncode, err, kids)
