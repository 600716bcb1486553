"""Download bodies over ``spool_above`` go to an unnamed temporary file (stages.spool): their
bytes, their lifecycle (nothing left behind on errors or cancellation), and the parent's peak
memory for many concurrent large downloads, spooled or not."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import pickle
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bench.spool import BODIES, BODY_BYTES, CLIENT
from bench.spool import body as body_of
from stages.download import DownloadConfig, Downloaded, TooLarge, TruncatedBody, fetch, make_session
from stages.spool import Spool, SpooledBody
from tests.http_server import serve

ROOT = Path(__file__).resolve().parents[1]


def cfg(spool_dir: Path, **overrides: Any) -> DownloadConfig:
    values: dict[str, Any] = {
        "connect_timeout": 2.0,
        "read_timeout": 2.0,
        "total_timeout": 10.0,
        "retries": 0,
        "allow_private_hosts": True,
        "spool_above": 100_000,
        "spool_dir": str(spool_dir),
    }
    values.update(overrides)
    return DownloadConfig(**values)


async def get(url: str, config: DownloadConfig) -> Downloaded:
    async with make_session(config) as session:
        return await fetch(session, url, config)


def open_spools(folder: Path) -> list[str]:
    """This process's open descriptors of (deleted) files in ``folder``."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the descriptor listdir itself used
        if target.startswith(str(folder)):
            found.append(target)
    return found


@pytest.fixture
def server() -> Iterator[str]:
    with serve() as base_url:
        yield base_url


@pytest.fixture
def spool_dir(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "spool"
    folder.mkdir()
    yield folder
    gc.collect()
    assert open_spools(folder) == []  # every body's file closed
    assert list(folder.iterdir()) == []  # and none ever had a name there


# --------------------------------------------------------------------------- fetch


@pytest.mark.asyncio
@pytest.mark.parametrize("route", ["big", "chunked"])  # Content-Length, or none
async def test_a_body_over_the_threshold_is_spooled_and_reads_back_whole(
    server: str, spool_dir: Path, route: str
) -> None:
    got = await get(f"{server}/{route}?size=2500000", cfg(spool_dir))
    body = got.data
    assert isinstance(body, SpooledBody)
    assert len(body) == 2_500_000
    expected = (b"\0" if route == "big" else b"\1") * 2_500_000
    assert bytes(body) == expected
    assert body.read() == expected  # as often as needed
    assert open_spools(spool_dir) != []
    assert pickle.loads(pickle.dumps(body)) == expected  # a process worker gets the bytes
    body.close()
    assert open_spools(spool_dir) == []
    assert "closed" in repr(body)
    with pytest.raises(ValueError, match="closed"):
        body.read()


@pytest.mark.asyncio
@pytest.mark.parametrize(("route", "spool_above"), [("big", 100_000), ("chunked", None)])
async def test_bodies_up_to_the_threshold_stay_in_memory(
    server: str, spool_dir: Path, route: str, spool_above: int | None
) -> None:
    size = 100_000 if spool_above else 300_000
    got = await get(f"{server}/{route}?size={size}", cfg(spool_dir, spool_above=spool_above))
    assert type(got.data) is bytes
    assert len(got.data) == size


@pytest.mark.asyncio
async def test_a_spooled_body_is_dropped_when_garbage_collected(
    server: str, spool_dir: Path
) -> None:
    got = await get(f"{server}/big?size=300000", cfg(spool_dir))
    assert open_spools(spool_dir) != []
    del got
    gc.collect()
    assert open_spools(spool_dir) == []


@pytest.mark.asyncio
async def test_errors_while_spooling_leave_nothing_behind(server: str, spool_dir: Path) -> None:
    too_large = cfg(spool_dir, max_bytes=3_000_000)
    with pytest.raises(TooLarge):
        await get(f"{server}/endless?chunk=65536", too_large)
    with pytest.raises(TruncatedBody):
        await get(f"{server}/short?declared=3000000&sent=2000000", cfg(spool_dir))
    # the fixture checks that no descriptor is left


@pytest.mark.asyncio
@pytest.mark.parametrize("write_bytes", [2**20, 64 * 2**20])
async def test_cancelled_while_spooling_leaves_nothing_behind(
    server: str, spool_dir: Path, write_bytes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 64 MiB writes take tens of ms in their thread: the cancellation lands while one runs
    monkeypatch.setattr("stages.download.WRITE_BYTES", write_bytes)
    config = cfg(spool_dir, max_bytes=2**40, total_timeout=30.0)
    task = asyncio.create_task(get(f"{server}/endless?chunk=262144", config))
    for _ in range(1000):  # until the body is on its way to its file
        await asyncio.sleep(0.005)
        if open_spools(spool_dir):
            break
    assert open_spools(spool_dir) != []
    task.cancel()
    with pytest.raises(asyncio.CancelledError):  # nothing else, and no descriptor left
        await task


@pytest.mark.asyncio
async def test_spool_write_finish_and_discard(spool_dir: Path) -> None:
    spool = Spool.create(str(spool_dir))
    await spool.write(b"abc")
    await spool.write(bytearray(b"def"))
    body = await spool.finish()
    assert (len(body), body.read()) == (6, b"abcdef")
    body.close()
    spool = Spool.create(str(spool_dir))
    await spool.write(b"x" * 10)
    await spool.discard()
    assert open_spools(spool_dir) == []


def test_spool_options_are_checked(tmp_path: Path) -> None:
    for bad in ({"spool_above": -1}, {"spool_above": 1.5}, {"spool_dir": str(tmp_path / "no")}):
        with pytest.raises(ValueError, match="spool"):
            DownloadConfig(**bad)  # type: ignore[arg-type]
    assert DownloadConfig().spool_above == 4 * 2**20
    assert DownloadConfig(spool_above=None, spool_dir=str(tmp_path)).spool_dir == str(tmp_path)


# --------------------------------------------------------------------------- memory


def _peak_mb(base: str, tmp_path: Path, spool: str) -> float:
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    out = tmp_path / f"out-{spool}"
    done = subprocess.run(
        [sys.executable, str(script), base, str(out), str(BODIES), spool],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=100,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "TMPDIR": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["ok"] == BODIES
    return float(seen["peak_mb"])


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")
@pytest.mark.timeout(240)
def test_spooling_keeps_the_parents_peak_memory_down(tmp_path: Path) -> None:
    payload = body_of()

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=payload, content_type="image/jpeg")

    with serve([web.get("/body/{n}", handler)]) as base:
        in_memory = _peak_mb(base, tmp_path, "off")
        spooled = _peak_mb(base, tmp_path, "on")
    figures = f"peak RSS over the run: in memory {in_memory:.0f} MB, spooled {spooled:.0f} MB"
    total_mb = BODIES * BODY_BYTES / 2**20
    # held in memory, all 20 bodies (160 MB) are alive at once while the 2 workers drain them;
    # spooled, the parent holds a body only while it goes to a worker: 2 lanes x 2 batches in
    # flight, a body each (batches capped by bytes), ~80 MB with the downloads' write buffers
    assert in_memory > 0.75 * total_mb, figures
    assert spooled < in_memory - 0.5 * total_mb, figures
    assert spooled < 0.75 * total_mb, figures
