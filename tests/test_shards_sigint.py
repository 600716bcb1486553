"""Ctrl-C half-way through a real shard run, then resume: same samples, no duplicates, nothing
downloaded twice that sits in a complete shard."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from app.config import ProcessConfig
from app.process import run_process
from tests.conftest import by_key
from tests.sigint_runs import GatedImages, gated_images, sigint_run
from tests.test_shards import FAST, read_samples, write_parquet

ROWS, OPEN = 24, 12  # images from row OPEN on wait for the gate


@pytest.fixture
def gated() -> Iterator[tuple[GatedImages, str]]:
    with gated_images(OPEN) as served:
        yield served


@pytest.mark.timeout(120)
def test_sigint_half_way_then_resume(tmp_path: Path, gated: tuple[GatedImages, str]) -> None:
    server, base = gated
    rows = [{"url": f"{base}/img/{i}.jpg", "caption": f"c{i}"} for i in range(ROWS)]
    table = write_parquet(tmp_path / "t.parquet", rows)
    out = tmp_path / "out"
    args = ["process", "--urls", str(table), "-o", str(out)]
    args += ["--output-format", "webdataset", "--caption-col", "caption", "--size", "64"]
    args += ["--samples-per-shard", "8", "--workers", "download=4", "--allow-private-hosts"]
    args += ["--download-retries", "0", "--quiet"]
    # half-way: the first shard is complete and downloads of later rows are held
    run = sigint_run(
        args, "shard 0 was complete", lambda: (out / "00000.tar").exists() and server.waiting
    )
    assert run.returncode == 130, run.stderr
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
    assert {r["status"] for r in recs.values()} == {"ok", "reused"}
    shards = {(r.get("result") or {}).get("shard") for r in recs.values()}
    assert shards == set(new)
    stats = [json.loads(p.read_text()) for p in out.glob("*_stats.json")]
    assert sum(s["count"] for s in stats) == ROWS
