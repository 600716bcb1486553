"""Ctrl-C during a real ``process --urls`` run whose downloads are in flight on the lean HTTP
client's kept connections: exit 130, one record per URL (the held ones ``cancelled``), no
process of the run left, and the server sees every held connection closed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.conftest import by_key
from tests.sigint_runs import GatedImages, gated_images, sigint_run

URLS, OPEN = 24, 8  # images from N = OPEN on wait for the gate


@pytest.fixture
def gated() -> Iterator[tuple[GatedImages, str]]:
    with gated_images(OPEN) as served:
        yield served


@pytest.mark.timeout(120)
def test_sigint_with_downloads_in_flight(tmp_path: Path, gated: tuple[GatedImages, str]) -> None:
    server, base = gated
    urls = tmp_path / "urls.txt"
    urls.write_text("".join(f"{base}/img/{i}.jpg\n" for i in range(URLS)))
    out = tmp_path / "out"
    args = ["process", "--urls", str(urls), "-o", str(out)]
    args += ["--size", "64", "--workers", "download=8", "--allow-private-hosts"]
    args += ["--download-retries", "0", "--quiet"]
    # every open image answered, and 8 downloads held at the gate (all download workers)
    run = sigint_run(
        args,
        "downloads were held",
        lambda: server.waiting >= 8 and sum(server.hits.values()) >= OPEN + 8,
    )
    assert run.returncode == 130, run.stderr
    _gone, alive = psutil.wait_procs(run.kids, timeout=5)
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
