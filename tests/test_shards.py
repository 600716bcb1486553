"""URL tables in, WebDataset shards out: read back with the real `webdataset` and `pyarrow`."""

from __future__ import annotations

import gc
import io
import json
import os
import subprocess
import sys
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from aiohttp import web
from PIL import Image

from app.cli import build_parser
from app.config import ProcessConfig, config_from_args
from app.process import run_process
from app.shard_folder import SAMPLES_FILE
from stages.tables_in import iter_table
from tests.conftest import by_key
from tests.http_server import serve

ROOT = Path(__file__).resolve().parents[1]
FAST = {
    "allow_private_hosts": True,
    "connect_timeout": 2.0,
    "read_timeout": 2.0,
    "download_timeout": 5.0,
    "download_retries": 0,
    "quiet": True,
}


def jpeg(n: int) -> bytes:
    """A JPEG of 80 + n by 60 pixels, its colour from n."""
    buf = io.BytesIO()
    Image.new("RGB", (80 + n, 60), (n * 7 % 256, 90, 160)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


class Images:
    """A loopback image server that counts requests per path."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.agents: set[str] = set()

    def routes(self) -> list[web.RouteDef]:
        async def image(request: web.Request) -> web.Response:
            self.hits[request.path] += 1
            self.agents.add(request.headers.get("User-Agent", ""))
            return web.Response(body=jpeg(int(request.match_info["n"])), content_type="image/jpeg")

        async def html(request: web.Request) -> web.Response:
            self.hits[request.path] += 1
            return web.Response(text="<html>no image</html>", content_type="text/html")

        async def truncated(request: web.Request) -> web.Response:
            self.hits[request.path] += 1
            return web.Response(body=jpeg(5)[:400], content_type="image/jpeg")

        async def missing(request: web.Request) -> web.Response:
            self.hits[request.path] += 1
            return web.Response(status=404, text="gone")

        async def sized(request: web.Request) -> web.Response:
            w, h = int(request.match_info["w"]), int(request.match_info["h"])
            buf = io.BytesIO()
            Image.new("RGB", (w, h), (9, 9, 9)).save(buf, "JPEG")
            return web.Response(body=buf.getvalue(), content_type="image/jpeg")

        async def noai(request: web.Request) -> web.Response:
            headers = {"X-Robots-Tag": request.query.get("tag", "noai")}
            return web.Response(body=jpeg(1), content_type="image/jpeg", headers=headers)

        return [
            web.get("/img/{n}.jpg", image),
            web.get("/sized/{w}x{h}.jpg", sized),
            web.get("/noai.jpg", noai),
            web.get("/html", html),
            web.get("/truncated.jpg", truncated),
            web.get("/missing.jpg", missing),
        ]


@pytest.fixture
def images() -> Iterator[tuple[Images, str]]:
    server = Images()
    with serve(server.routes()) as base:
        yield server, base


BAD = {
    "/missing.jpg": "HTTPStatusError",
    "/html": "DecodeError",
    "/truncated.jpg": "TruncatedImage",
}


def table_rows(base: str, good: int) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = [
        {
            "url": f"{base}/img/{i}.jpg",
            "caption": f"picture {i}",
            "license": f"cc-{i}",
            "score": i / 2,
        }
        for i in range(good)
    ]
    for j, path in enumerate(BAD):  # bad rows in the middle of the table
        rows.insert(3 + 2 * j, {"url": base + path, "caption": path, "license": "x", "score": -1.0})
    return rows


def write_parquet(path: Path, rows: list[dict[str, object]]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def shard_config(out: Path, table: Path, **kw: object) -> ProcessConfig:
    return ProcessConfig.from_mapping(
        {
            "urls": [str(table)],
            "output": str(out),
            "output_format": "webdataset",
            "caption_col": "caption",
            "keep_columns": "license,score",
            "samples_per_shard": 8,
            "size": ["64"],
            "format": "jpeg",
            **FAST,
            **kw,
        }
    )


def read_samples(out: Path) -> list[dict[str, Any]]:
    """Every sample of the shards, read by ``webdataset`` (whose file objects webdataset 1.0
    leaves to the garbage collector: collected here, their ResourceWarning ignored)."""
    tars = sorted(str(p) for p in out.glob("*.tar"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        samples = list(wds.WebDataset(tars, shardshuffle=False, empty_check=False))
        gc.collect()
    return samples


def metadata_rows(out: Path) -> list[dict[str, Any]]:
    return [
        r for p in sorted(out.glob("[0-9]*[0-9].parquet")) for r in pq.read_table(p).to_pylist()
    ]


def test_parquet_table_to_webdataset_shards(tmp_path: Path, images: tuple[Images, str]) -> None:
    server, base = images
    rows = table_rows(base, 20)
    table = write_parquet(tmp_path / "table.parquet", rows)
    out = tmp_path / "out"
    result = run_process(shard_config(out, table))
    assert result.exit_code == 1  # three failures
    keys = [f"{i:09d}" for i in range(len(rows))]
    samples = read_samples(out)
    # every row is exactly one sample or one failed metadata row
    meta = metadata_rows(out)
    assert sorted(r["key"] for r in meta) == keys
    failed = {r["url"].removeprefix(base): r for r in meta if r["status"] != "ok"}
    assert {p: r["error_type"] for p, r in failed.items()} == BAD
    assert all(r["status"] == "failed" and r["error_message"] for r in failed.values())
    assert failed["/missing.jpg"]["http_status"] == 404
    ok = {r["key"] for r in meta if r["status"] == "ok"}
    assert sorted(s["__key__"] for s in samples) == sorted(ok)
    assert len(ok) == 20
    by_row = {f"{i:09d}": row for i, row in enumerate(rows)}
    for s in samples:
        row = by_row[str(s["__key__"])]
        assert s["txt"].decode() == row["caption"]
        doc = json.loads(s["json"])
        assert (doc["license"], doc["score"], doc["url"]) == (
            row["license"],
            row["score"],
            row["url"],
        )
        img = Image.open(io.BytesIO(s["jpg"]))
        assert img.format == "JPEG"
        assert max(img.size) == 64
        assert (doc["width"], doc["height"]) == img.size
        assert len(doc["sha256"]) == 64
    # shards of 8 inputs each (failures count), named in order, each with its stats
    assert sorted(p.name for p in out.glob("*.tar")) == ["00000.tar", "00001.tar", "00002.tar"]
    stats = [json.loads((out / f"{n:05d}_stats.json").read_text()) for n in range(3)]
    assert [s["count"] for s in stats] == [8, 8, 7]
    assert sum(s["failed"] for s in stats) == 3
    assert sum(s["successes"] for s in stats) == 20
    assert Counter(k for s in stats for k in s["error_classes"]) == Counter(BAD.values())
    # the manifest: one record per row, naming its shard and key
    recs = by_key(out)
    assert sorted(recs) == keys
    for key, rec in recs.items():
        where = rec["result"] if rec["status"] == "ok" else rec["meta"]
        assert where["key"] == key
        assert where["shard"].endswith(".tar")
    csv_rows = (out / "stats.csv").read_text().splitlines()
    assert csv_rows[0].startswith("key,status,width,height,mode,format,out_width")
    assert sum(",ok,86,60,RGB,jpeg,64,45," in line for line in csv_rows) == 1  # /img/6.jpg
    assert {recs[r["key"]]["error_type"] for r in failed.values()} == set(BAD.values())
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]
    # a second run downloads nothing again, writes no new shard
    before = sum(server.hits.values())
    again = run_process(shard_config(out, table))
    assert again.counts.get("reused", 0) == 20
    fetched_again = sum(server.hits.values()) - before
    assert fetched_again == 3  # only the failures are retried (as for every resume)
    assert len(list(out.glob("*.tar"))) == 4  # the retried failures: one shard of 3 rows
    assert sorted(s["__key__"] for s in read_samples(out)) == sorted(ok)


def test_tar_is_plain_tar(tmp_path: Path, images: tuple[Images, str]) -> None:
    import tarfile

    _, base = images
    table = write_parquet(tmp_path / "t.parquet", table_rows(base, 3)[:3])
    out = tmp_path / "out"
    run_process(shard_config(out, table))
    with tarfile.open(out / "00000.tar") as tar:
        names = tar.getnames()
    assert sorted(names) == [f"{i:09d}.{ext}" for i in range(3) for ext in ("jpg", "json", "txt")]
    assert [n.split(".")[0] for n in names[::3]] == [n.split(".")[0] for n in names[2::3]]


@pytest.mark.parametrize(
    "suffix", [".csv", ".tsv", ".jsonl", ".json", ".csv.gz", ".tsv.gz", ".jsonl.gz"]
)
def test_other_table_formats(tmp_path: Path, images: tuple[Images, str], suffix: str) -> None:
    """Each format, and each gzipped (a .csv.gz was read as a URL list: its header a bad URL,
    each row's URL with its other columns, no caption)."""
    import gzip

    _, base = images
    rows = [
        {"url": f"{base}/img/{i}.jpg", "caption": f"c{i}", "license": f"l{i}"} for i in range(5)
    ]
    table = tmp_path / f"t{suffix}"
    if ".json" in suffix:
        text = "".join(json.dumps(r) + "\n" for r in rows)
    else:
        sep = "," if ".csv" in suffix else "\t"
        lines = [sep.join(rows[0])] + [sep.join(str(v) for v in r.values()) for r in rows]
        text = "\n".join(lines) + "\n"
    table.write_bytes(gzip.compress(text.encode()) if suffix.endswith(".gz") else text.encode())
    out = tmp_path / "out"
    cfg = shard_config(out, table, keep_columns="license")
    assert run_process(cfg).exit_code == 0
    samples = read_samples(out)
    assert sorted((s["__key__"], s["txt"].decode()) for s in samples) == [
        (f"{i:09d}", f"c{i}") for i in range(5)
    ]
    assert {json.loads(s["json"])["license"] for s in samples} == {f"l{i}" for i in range(5)}


def test_missing_url_column_is_a_usage_error(tmp_path: Path) -> None:
    table = write_parquet(tmp_path / "t.parquet", [{"link": "http://x.example/a.jpg"}])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "pipeline", "process", "--urls", str(table)]
    cmd += ["--output-format", "webdataset", "-o", str(tmp_path / "out")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert "no URL column 'url'" in done.stderr
    assert "link" in done.stderr
    cmd += ["--url-col", "link", "--caption-col", "nope"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "no caption column 'nope'" in done.stderr


def test_table_is_read_in_batches(tmp_path: Path) -> None:
    """The reader is lazy: the first rows come before the rest of the table is read."""
    path = tmp_path / "big.parquet"
    n = 50_000
    table = pa.table({"url": [f"http://h.example/{i}.jpg" for i in range(n)], "c": list(range(n))})
    pq.write_table(table, path, row_group_size=10_000)
    rows = iter_table(path, keep=("c",), batch_rows=1000)
    first = next(rows)
    assert (first.row, first.url, first.extra) == (0, "http://h.example/0.jpg", {"c": 0})
    frame = rows.gi_frame  # type: ignore[attr-defined]
    assert frame is not None  # suspended inside one batch, not a list of the table
    assert sum(1 for _ in rows) == n - 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"url": "http://a.example/1.jpg"}\nnot json\n{"url": ""}\n')
    got = list(iter_table(bad))
    assert [r.error is None for r in got] == [True, False, False]


def test_parquet_table_to_parquet_shards(tmp_path: Path, images: tuple[Images, str]) -> None:
    _, base = images
    rows = table_rows(base, 12)
    table = write_parquet(tmp_path / "table.parquet", rows)
    out = tmp_path / "out"
    assert run_process(shard_config(out, table, output_format="parquet")).exit_code == 1
    data = sorted(p.name for p in out.glob("[0-9]*[0-9].parquet"))
    assert data == ["00000.parquet", "00001.parquet"]  # 15 inputs, 8 a shard
    samples = [r for name in data for r in pq.read_table(out / name).to_pylist()]
    meta = [r for p in sorted(out.glob("*_meta.parquet")) for r in pq.read_table(p).to_pylist()]
    keys = [f"{i:09d}" for i in range(len(rows))]
    assert sorted(r["key"] for r in meta) == keys
    assert sorted(r["key"] for r in samples) == sorted(
        r["key"] for r in meta if r["status"] == "ok"
    )
    assert len(samples) == 12
    by_row = {f"{i:09d}": row for i, row in enumerate(rows)}
    for s in samples:
        row = by_row[s["key"]]
        assert (s["caption"], s["license"], s["score"]) == (
            row["caption"],
            row["license"],
            row["score"],
        )
        img = Image.open(io.BytesIO(s["image"]))
        assert (img.format, img.size) == ("JPEG", (s["width"], s["height"]))
        assert max(img.size) == 64
        assert s["format"] == "jpeg"
        assert json.loads(s["stats"])["width"] == s["width"]
    failed = {r["url"].removeprefix(base): r["error_type"] for r in meta if r["status"] != "ok"}
    assert failed == BAD
    stats = json.loads((out / "00000_stats.json").read_text())
    assert stats["shard"] == "00000.parquet"
    assert stats["count"] == 8


def test_noai_and_size_filters_skip_with_reasons(
    tmp_path: Path, images: tuple[Images, str]
) -> None:
    server, base = images
    paths = ["/img/1.jpg", "/sized/20x20.jpg", "/sized/300x40.jpg", "/noai.jpg"]
    paths += ["/noai.jpg?tag=googlebot:%20noimageai", "/noai.jpg?tag=noindex"]
    table = write_parquet(tmp_path / "t.parquet", [{"url": base + p, "caption": p} for p in paths])
    out = tmp_path / "out"
    cfg = shard_config(out, table, min_image_size=30, max_aspect_ratio=3, keep_columns=[])
    assert run_process(cfg).exit_code == 0  # skips are no failures
    meta = {r["url"].removeprefix(base): r for r in metadata_rows(out)}
    assert {p: r["status"] for p, r in meta.items()} == {
        "/img/1.jpg": "ok",
        "/sized/20x20.jpg": "skipped",
        "/sized/300x40.jpg": "skipped",
        "/noai.jpg": "skipped",
        "/noai.jpg?tag=googlebot:%20noimageai": "skipped",
        "/noai.jpg?tag=noindex": "ok",
    }
    assert "smaller than --min-image-size 30" in meta["/sized/20x20.jpg"]["error_message"]
    assert "aspect ratio 7.50 over 3" in meta["/sized/300x40.jpg"]["error_message"]
    assert "X-Robots-Tag: noai" in meta["/noai.jpg"]["error_message"]
    recs = by_key(out)
    assert recs["000000003"]["status"] == "skipped"
    assert "noai" in recs["000000003"]["reason"]
    assert all(agent.startswith("pixpipe/") for agent in server.agents)
    # a rerun: the rows a filter or an opt-out left out are settled by their shard's rows, as
    # done ones are (each rerun downloaded them again, into a new shard of skipped rows, and
    # set the one before aside as unrecorded)
    shards = sorted(p.name for p in out.iterdir())
    fetched = len(server.agents)
    again = run_process(cfg)
    assert again.counts == {"reused": 2, "skipped": 4}
    assert len(server.agents) == fetched
    assert sorted(p.name for p in out.iterdir()) == shards
    assert by_key(out)["000000003"]["reason"] == recs["000000003"]["reason"]
    # --ignore-noai downloads them
    other = tmp_path / "other"
    assert run_process(shard_config(other, table, ignore_noai=True, keep_columns=[])).ok == 6


def test_noai_in_files_output(tmp_path: Path, images: tuple[Images, str]) -> None:
    _, base = images
    urls = tmp_path / "urls.txt"
    urls.write_text(f"{base}/noai.jpg\n{base}/img/2.jpg\n")
    cfg = ProcessConfig.from_mapping({"urls": [str(urls)], "output": str(tmp_path / "o"), **FAST})
    assert run_process(cfg).exit_code == 0
    recs = by_key(tmp_path / "o")
    assert recs[f"{base}/noai.jpg"]["status"] == "skipped"
    assert recs[f"{base}/img/2.jpg"]["status"] == "ok"


def test_dropping_ignore_noai_takes_the_opted_out_images_away(
    tmp_path: Path, images: tuple[Images, str]
) -> None:
    """Files output: a run with --ignore-noai keeps an image whose site opts out of AI use (its
    record says so); the next run without it finds that record done by key, and kept the
    image for good. Now it is redone: skipped, its output removed; the others reused."""
    _, base = images
    urls = tmp_path / "urls.txt"
    urls.write_text(f"{base}/noai.jpg\n{base}/img/2.jpg\n")
    out = tmp_path / "o"

    def run(**kw: object) -> dict[str, int]:
        cfg = ProcessConfig.from_mapping({"urls": [str(urls)], "output": str(out), **FAST, **kw})
        return dict(run_process(cfg).counts)

    assert run(ignore_noai=True) == {"ok": 2}
    kept = by_key(out)[f"{base}/noai.jpg"]
    assert kept["result"]["download"]["noai"] == "noai"
    (output,) = [out / o["path"] for o in kept["result"]["outputs"]]
    assert output.is_file()
    assert run() == {"skipped": 1, "reused": 1}
    assert by_key(out)[f"{base}/noai.jpg"]["reason"].startswith("X-Robots-Tag: noai")
    assert not output.exists()
    assert "noai" not in by_key(out)[f"{base}/img/2.jpg"]["result"]["download"]
    assert run(ignore_noai=True) == {"ok": 1, "reused": 1}


def test_shard_options_refused_where_they_cannot_work(tmp_path: Path) -> None:
    from pipeline import ConfigError

    urls = tmp_path / "u.txt"
    urls.write_text("http://127.0.0.1:1/a.jpg\n")
    base = {"urls": [str(urls)], "output": str(tmp_path / "o")}
    with pytest.raises(ConfigError, match="does nothing without --output-format"):
        config_from_args(build_parser().parse_args(["process", "--min-image-size", "10"]))
    with pytest.raises(ConfigError, match="does not take --workers auto"):
        ProcessConfig.from_mapping({**base, "output_format": "parquet", "workers": "auto"})
    with pytest.raises(ConfigError, match="not input folders"):
        ProcessConfig.from_mapping(
            {
                **base,
                "inputs": [str(tmp_path)],
                "output": str(tmp_path / "x" / "o"),
                "output_format": "webdataset",
            }
        )


@pytest.mark.timeout(120)
def test_dask_workers_write_their_own_shards(tmp_path: Path, images: tuple[Images, str]) -> None:
    """``--backend dask``: each task writes its own shards (names of its own), the driver only
    records; the same rows as with the local backend."""
    _, base = images
    rows = table_rows(base, 20)
    table = write_parquet(tmp_path / "table.parquet", rows)
    out = tmp_path / "out"
    cfg = shard_config(out, table, backend="dask", shard_size=6, workers="resize=1")
    result = run_process(cfg)
    assert result.exit_code == 1
    meta = metadata_rows_any(out)
    assert sorted(r["key"] for r in meta) == [f"{i:09d}" for i in range(len(rows))]
    samples = read_samples(out)
    assert len(samples) == 20
    assert len({s["__key__"] for s in samples}) == 20
    tars = sorted(p.name for p in out.glob("*.tar"))
    assert len(tars) == 4  # 23 inputs, 6 a task: one shard per task
    assert len({t.split("-")[0] for t in tars}) == 4  # one writer per task
    recs = by_key(out)
    for rec in recs.values():
        where = rec["result"] if rec["status"] == "ok" else rec["meta"]
        assert where["shard"] in tars
    again = run_process(cfg)  # resume: nothing in a shard is done again
    assert again.counts.get("reused", 0) == 20


def metadata_rows_any(out: Path) -> list[dict[str, Any]]:
    """The metadata tables beside tar shards, whatever the shards' names."""
    return [
        r
        for t in sorted(out.glob("*.tar"))
        for r in pq.read_table(t.with_suffix(".parquet")).to_pylist()
    ]


def test_retry_failed_redoes_only_the_failures(tmp_path: Path, images: tuple[Images, str]) -> None:
    server, base = images
    table = write_parquet(tmp_path / "t.parquet", table_rows(base, 6))
    out = tmp_path / "out"
    assert run_process(shard_config(out, table)).exit_code == 1
    before = Counter(server.hits)
    again = run_process(shard_config(out, table, retry_failed=True))
    assert again.counts == {"reused": 6, "failed": 3}
    assert server.hits - before == Counter(list(BAD))  # each failure once more, nothing else
    recs = by_key(out)
    assert [k for k, r in recs.items() if r["status"] == "failed"] == [
        k for k, r in recs.items() if r["meta"].get("shard") == "00002.tar"
    ]


def test_one_size_per_sample(tmp_path: Path) -> None:
    from pipeline import ConfigError

    urls = tmp_path / "u.txt"
    urls.write_text("http://127.0.0.1:1/a.jpg\n")
    with pytest.raises(ConfigError, match="takes one --size"):
        ProcessConfig.from_mapping(
            {"urls": [str(urls)], "output_format": "webdataset", "size": ["64", "128"]}
        )


def test_parquet_table_into_files_output(tmp_path: Path, images: tuple[Images, str]) -> None:
    """``files`` output from a table: keyed by URL as URL lists are; caption and kept columns
    in the record's meta; a row without a URL is a failed record, not a lost row."""
    _, base = images
    rows = [
        {"link": f"{base}/img/3.jpg", "caption": "three", "license": "cc"},
        {"link": None, "caption": "no url", "license": "x"},
    ]
    table = write_parquet(tmp_path / "t.parquet", rows)
    out = tmp_path / "out"
    cfg = ProcessConfig.from_mapping(
        {
            "urls": [str(table)],
            "output": str(out),
            "url_col": "link",
            "caption_col": "caption",
            "keep_columns": "license",
            "size": ["32"],
            **FAST,
        }
    )
    assert run_process(cfg).exit_code == 1
    recs = by_key(out)
    ok = recs[f"{base}/img/3.jpg"]
    assert ok["status"] == "ok"
    assert ok["meta"] == {"license": "cc", "caption": "three"}
    (bad,) = [r for r in recs.values() if r["status"] == "failed"]
    assert bad["error_type"] == "BadTableRow"
    assert "no URL in column 'link'" in bad["error"]


def test_kept_columns_of_mixed_types(tmp_path: Path, images: tuple[Images, str]) -> None:
    """A JSON lines column holding a number in one row and text in another is written as
    text, for both formats, instead of failing the shard."""
    _, base = images
    table = tmp_path / "t.jsonl"
    rows = [{"url": f"{base}/img/{i}.jpg", "score": v} for i, v in enumerate([1, "high", None])]
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for fmt in ("webdataset", "parquet"):
        out = tmp_path / fmt
        cfg = shard_config(out, table, output_format=fmt, caption_col=None, keep_columns="score")
        assert run_process(cfg).exit_code == 0
        meta = pq.read_table(
            out / ("00000.parquet" if fmt == "webdataset" else "00000_meta.parquet")
        )
        assert Counter(meta.column("score").to_pylist()) == Counter(["1", "high", None])


@pytest.mark.parametrize("fmt", ["webdataset", "parquet"])
def test_every_shard_of_a_run_has_one_schema(
    tmp_path: Path, images: tuple[Images, str], fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shard whose inputs all succeeded and one with failures; a JSON lines column holding
    ``1`` in the first rows and ``2.5`` or ``"high"`` in later ones (a later row group of a
    Parquet shard, a later shard): every shard's tables have one schema, and the folder reads
    as one dataset. Before, the error columns were null-typed in a shard without errors, and
    a kept column int64 in one shard and double in the next (the folder did not read as one);
    a Parquet shard whose later row group held a double in an int64 column stopped the run."""
    import pyarrow.dataset as ds

    import stages.parquet_rows

    monkeypatch.setattr(stages.parquet_rows, "ROW_GROUP", 3)
    _, base = images
    scores: list[object] = [1, 2, 3, 4, 5, 6, 2.5, "high", None, 7]
    rows = [{"url": f"{base}/img/{i}.jpg", "score": v} for i, v in enumerate(scores)]
    rows.insert(8, {"url": f"{base}/missing.jpg", "score": 0})  # in the second shard only
    table = tmp_path / "t.jsonl"
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    cfg = shard_config(
        out, table, output_format=fmt, caption_col=None, keep_columns="score", samples_per_shard=6
    )
    assert run_process(cfg).exit_code == 1  # the missing one
    meta = "[0-9]*[0-9].parquet" if fmt == "webdataset" else "[0-9]*_meta.parquet"
    tables = [sorted(out.glob(meta))]
    if fmt == "parquet":
        tables.append(sorted(out.glob("[0-9]*[0-9].parquet")))
    for paths in tables:
        assert len(paths) == 2
        assert pq.read_schema(paths[0]) == pq.read_schema(paths[1])
        whole = ds.dataset([str(p) for p in paths]).to_table()  # one dataset
        assert whole.schema.field("score").type == pa.string()
        assert set(whole.column("score").to_pylist()) >= {"1", "2.5", "high", None}
    first = pq.read_table(tables[0][0])
    assert first.schema.field("error_type").type == pa.string()  # none failed there


def test_plain_url_list_to_shards(tmp_path: Path, images: tuple[Images, str]) -> None:
    _, base = images
    urls = tmp_path / "list.txt"
    urls.write_text(f"# a list\n{base}/img/1.jpg\n\n{base}/img/2.jpg\n{base}/missing.jpg\n")
    out = tmp_path / "out"
    cfg = shard_config(out, urls, caption_col=None, keep_columns=[])
    assert run_process(cfg).exit_code == 1
    assert sorted(s["__key__"] for s in read_samples(out)) == ["000000000", "000000001"]
    assert [r["status"] for r in metadata_rows(out) if r["key"] == "000000002"] == ["failed"]


def test_each_table_keys_its_own_rows(tmp_path: Path, images: tuple[Images, str]) -> None:
    """Two ``--urls`` tables: the second's rows are keyed ``1_000000000`` and on, each row a
    sample; the second's rows were keyed as the first's, taken for duplicates and dropped."""
    _, base = images
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text(f"{base}/img/1.jpg\n{base}/img/2.jpg\n")
    second.write_text(f"{base}/img/3.jpg\n")
    out = tmp_path / "out"
    cfg = shard_config(out, first, urls=[str(first), str(second)], caption_col=None)
    assert run_process(cfg).exit_code == 0
    keys = sorted(s["__key__"] for s in read_samples(out))
    assert keys == ["000000000", "000000001", "1_000000000"]
    urls = {r["key"]: r["url"] for r in metadata_rows(out)}
    assert urls["1_000000000"] == f"{base}/img/3.jpg"


def test_the_end_of_run_names_the_shards(tmp_path: Path) -> None:
    from app.console import _files

    tars, parq = tmp_path / "w", tmp_path / "p"
    tars.mkdir(), parq.mkdir()
    for n in range(2):
        (tars / f"{n:05d}.tar").write_bytes(b"")
        (tars / f"{n:05d}.parquet").write_bytes(b"")
        (parq / f"{n:05d}.parquet").write_bytes(b"")
        (parq / f"{n:05d}_meta.parquet").write_bytes(b"")
    (line,) = [s for s in _files(tars) if s.startswith("shards:")]
    assert "2 WebDataset tar shard(s)" in line
    assert line.endswith("(metadata and stats beside each)")
    assert "00000.tar …" in line
    (line,) = [s for s in _files(parq) if s.startswith("shards:")]
    assert "2 Parquet shard(s)" in line
    assert "00000.parquet …" in line
    assert not [s for s in _files(tmp_path) if s.startswith("shards:")]


def test_a_folder_of_shards_takes_no_other_training_set(
    tmp_path: Path, images: tuple[Images, str]
) -> None:
    """Other image options, --force or the other shard format into a folder of shards would
    write every sample twice (or nothing): refused before anything starts, nothing changes."""
    from pipeline import ConfigError

    server, base = images
    table = write_parquet(tmp_path / "t.parquet", table_rows(base, 6))
    out = tmp_path / "out"
    assert run_process(shard_config(out, table)).exit_code == 1
    shards = sorted(p.name for p in out.iterdir())
    hits = sum(server.hits.values())
    refused = {
        "other image options": {"size": ["32"]},
        "--force would write": {"force": True},
        "in --output-format webdataset: a parquet run": {"output_format": "parquet"},
        r"sample options: --min-image-size 30 \(the folder's: 0\)": {"min_image_size": 30},
        r"--caption-col none \(the folder's: caption\); --keep-columns license "
        r"\(the folder's: license,score\)": {"caption_col": None, "keep_columns": "license"},
        r"--ignore-noai on \(the folder's: off\)": {"ignore_noai": True},
    }
    for why, change in refused.items():
        with pytest.raises(ConfigError, match=why):
            run_process(shard_config(out, table, **change))
    assert sorted(p.name for p in out.iterdir()) == shards
    assert sum(server.hits.values()) == hits
    # the same options resume, and a new folder takes the new options
    assert run_process(shard_config(out, table)).counts.get("reused") == 6
    # a folder of shards made before its sample options were held takes those of the next run
    held = json.loads((out / SAMPLES_FILE).read_text())
    assert held["keep_columns"] == ["license", "score"]
    (out / SAMPLES_FILE).unlink()
    assert run_process(shard_config(out, table, max_aspect_ratio=9)).counts.get("reused") == 6
    with pytest.raises(ConfigError, match=r"--max-aspect-ratio none \(the folder's: 9"):
        run_process(shard_config(out, table))
    assert run_process(shard_config(tmp_path / "new", table, size=["32"])).counts.get("ok") == 6
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "process",
            "--urls",
            str(table),
            "--output",
            str(out),
            "--output-format",
            "webdataset",
            "--caption-col",
            "caption",
            "--size",
            "64",
            "--force",
            "--allow-private-hosts",
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "--force would write every input again" in done.stderr


def test_the_resize_workers_of_a_shard_run_do_not_import_aiohttp() -> None:
    """render_sample's module (what the process workers import) leaves the download's aiohttp
    out: ~14 MB in every worker and the forkserver."""
    code = "import sys, stages.samples, stages.shards; print(sorted(sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = set(done.stdout.strip()[2:-2].split("', '"))
    assert "stages.samples" in loaded
    assert not {m for m in loaded if m.split(".")[0] in ("aiohttp", "pyarrow")}


@pytest.mark.parametrize("fmt", ["webdataset", "parquet"])
def test_a_shard_not_as_written_is_set_aside_and_its_inputs_done_again(
    tmp_path: Path, images: tuple[Images, str], fmt: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Resume trusts a shard only as it was written (its size is in its records): one cut short
    (a copy that stopped, a disk that lost its last pages) is set aside as NAME.damaged with
    its metadata table and stats, a warning says so, and its samples are made again into a new
    shard; a shard deleted, likewise. Every sample is then in exactly one shard a loader reads.
    Before, a shard cut short was reused: its records said ok, its samples were lost."""
    _, base = images
    table = write_parquet(tmp_path / "t.parquet", table_rows(base, 20))
    out = tmp_path / "out"
    assert run_process(shard_config(out, table, output_format=fmt)).exit_code == 1
    ext = "tar" if fmt == "webdataset" else "parquet"
    meta = "00001.parquet" if fmt == "webdataset" else "00001_meta.parquet"
    recs = by_key(out)
    ok = {k for k, r in recs.items() if r["status"] == "ok"}
    in_shard = {
        n: {k for k in ok if recs[k]["result"]["shard"] == f"{n:05d}.{ext}"} for n in (1, 2)
    }
    assert {recs[k]["result"]["shard_bytes"] for k in in_shard[1]} == {
        (out / f"00001.{ext}").stat().st_size
    }
    cut = out / f"00001.{ext}"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    (out / f"00002.{ext}").unlink()

    with caplog.at_level("WARNING", logger="stages.shards"):
        again = run_process(shard_config(out, table, output_format=fmt))
    redone = in_shard[1] | in_shard[2]
    assert again.counts == {"reused": len(ok - redone), "ok": len(redone), "failed": len(BAD)}
    for name in (f"00001.{ext}", meta, "00001_stats.json"):
        assert (out / f"{name}.damaged").is_file()
    assert not cut.exists()
    assert f"shard 00001.{ext} is not as it was written" in caplog.text
    if fmt == "webdataset":
        keys = [str(s["__key__"]) for s in read_samples(out)]
    else:
        data = list(out.glob("[0-9]*[0-9].parquet"))
        keys = [r["key"] for p in data for r in pq.read_table(p).to_pylist()]
    assert sorted(keys) == sorted(ok)  # each sample once
    now = by_key(out)
    assert f"00001.{ext}" not in {now[k]["result"]["shard"] for k in redone}
    # a third run finds every shard as written: nothing is done again, nothing set aside
    third = run_process(shard_config(out, table, output_format=fmt))
    assert third.counts == {"reused": len(ok), "failed": len(BAD)}


KILLED_AFTER_SECOND_SHARD = """
import os, sys
import stages.shards

finish = stages.shards._Shard.finish
done = []


def finish_then_die(self):  # the shard is renamed into place; its inputs not yet recorded
    finish(self)
    done.append(self.name)
    if len(done) == 2:
        os.kill(os.getpid(), 9)


if __name__ == "__main__":
    stages.shards._Shard.finish = finish_then_die
    from app.cli import main

    sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("fmt", ["webdataset", "parquet"])
def test_a_shard_no_record_names_is_set_aside_at_the_end_of_the_next_run(
    tmp_path: Path, images: tuple[Images, str], fmt: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The parent SIGKILLed right after a shard is renamed into place, before its inputs are
    recorded: the next run does those inputs again into a new shard and, at its end (every
    record of the folder known), sets the shard no record names aside as NAME.unrecorded with
    its metadata table and stats. Before, it stayed: its samples were in two shards."""
    _, base = images
    table = write_parquet(tmp_path / "t.parquet", table_rows(base, 20))
    out = tmp_path / "out"
    script = tmp_path / "killed.py"
    script.write_text(KILLED_AFTER_SECOND_SHARD)
    args = ["process", "--urls", str(table), "-o", str(out), "--output-format", fmt]
    args += ["--samples-per-shard", "8", "--size", "64", "--allow-private-hosts", "-q"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    killed = subprocess.run(
        [sys.executable, str(script), *args], env=env, capture_output=True, timeout=120
    )
    assert killed.returncode == -9, killed.stderr
    ext = "tar" if fmt == "webdataset" else "parquet"
    assert (out / f"00001.{ext}").is_file()  # in place, named by no record

    with caplog.at_level("WARNING", logger="stages.shards"):
        again = run_process(shard_config(out, table, output_format=fmt, keep_columns=[]))
    assert again.exit_code == 1  # the bad rows
    meta = "00001.parquet" if fmt == "webdataset" else "00001_meta.parquet"
    for name in (f"00001.{ext}", meta, "00001_stats.json"):
        assert (out / f"{name}.unrecorded").is_file()
    assert f"shard 00001.{ext} is named by no record" in caplog.text
    assert again.collected["unrecorded_shards"]["set_aside"][-1] == f"00001.{ext}"
    recs = by_key(out)
    ok = sorted(k for k, r in recs.items() if r["status"] == "ok")
    assert len(ok) == 20
    if fmt == "webdataset":
        keys = [str(s["__key__"]) for s in read_samples(out)]
    else:
        data = list(out.glob("[0-9]*[0-9].parquet"))
        keys = [r["key"] for p in data for r in pq.read_table(p).to_pylist()]
    assert sorted(keys) == ok  # each sample once
    # a third run: every shard named, nothing done again or set aside
    third = run_process(shard_config(out, table, output_format=fmt, keep_columns=[]))
    assert third.counts == {"reused": 20, "failed": len(BAD)}
    assert third.collected["unrecorded_shards"] == {"set_aside": []}


def test_resume_knows_the_shards_that_were_there_when_the_run_started(tmp_path: Path) -> None:
    """A shard deleted by hand has its number taken again by the next run (numbers go on after
    the highest left). Its records name the old shard: a new one written under that name while
    the run looks them up is not it, and is neither taken for it nor set aside."""
    from stages.shards import shard_done

    (tmp_path / "00000.tar").write_bytes(b"x" * 10)
    done = shard_done(tmp_path)  # before the run writes a shard
    (tmp_path / "00001.tar").write_bytes(b"y" * 10)  # this run's, under a deleted shard's name
    assert done({"shard": "00000.tar", "shard_bytes": 10})
    assert not done({"shard": "00001.tar", "shard_bytes": 10})
    assert (tmp_path / "00001.tar").read_bytes() == b"y" * 10  # left as it is


def test_a_table_whose_rows_moved_is_refused_at_the_first_moved_row(
    tmp_path: Path, images: tuple[Images, str]
) -> None:
    """A row inserted into the table: every row after it holds another URL than the sample of
    its key (its row number). Reused, each key kept another picture; redone, each would be in
    two shards. The run stops at the first such row (exit 3), the shards as they were; rows
    appended at the end are new keys, and go on."""
    from app.shard_folder import TableChanged

    _, base = images
    rows = [r for r in table_rows(base, 6) if r["score"] != -1.0]  # the good ones
    table = write_parquet(tmp_path / "t.parquet", rows)
    out = tmp_path / "out"
    assert run_process(shard_config(out, table)).exit_code == 0
    before = {p.name: p.stat().st_size for p in out.iterdir() if p.is_file()}
    extra = {**rows[0], "url": f"{base}/img/{len(rows)}.jpg", "caption": "appended"}
    write_parquet(table, [*rows, extra])  # appended: a new key, done
    assert run_process(shard_config(out, table)).counts == {"reused": 6, "ok": 1}
    inserted = {**extra, "url": f"{base}/img/{len(rows) + 1}.jpg", "caption": "inserted"}
    write_parquet(table, [rows[0], inserted, *rows[1:], extra])
    shards = sorted(p.name for p in out.glob("*.tar"))
    with pytest.raises(TableChanged, match=r"row 000000001 is .*/img/7\.jpg, but its sample in"):
        run_process(shard_config(out, table))
    assert sorted(p.name for p in out.glob("*.tar")) == shards
    # the rows of the chunk under way when it stopped keep their records: a cancelled one in
    # each's place named no shard, and every shard was set aside as unrecorded
    statuses = {k: r["status"] for k, r in by_key(out).items()}
    assert statuses.pop("000000007") == "cancelled"  # new: in flight, never started
    assert set(statuses.values()) <= {"ok", "reused"}
    assert not list(out.glob("*.unrecorded"))
    assert {k: v for k, v in before.items() if k.endswith(".tar")}.items() <= {
        p.name: p.stat().st_size for p in out.glob("*.tar")
    }.items()


def test_a_row_whose_caption_was_edited_is_refused(
    tmp_path: Path, images: tuple[Images, str]
) -> None:
    """A caption (or a kept column) edited in the table after its sample was written: reused,
    the shard would go on serving the old caption with the image, silently. The run stops at
    that row (exit 3), the shards as they were; the table as it was goes on."""
    from app.shard_folder import TableChanged

    _, base = images
    rows = [r for r in table_rows(base, 6) if r["score"] != -1.0]
    table = write_parquet(tmp_path / "t.parquet", rows)
    out = tmp_path / "out"
    assert run_process(shard_config(out, table)).exit_code == 0
    records = by_key(out)
    assert all(len(r["meta"]["described"]) == 16 for r in records.values())
    shards = {p.name: p.read_bytes() for p in out.glob("*.tar")}
    edited = [dict(r) for r in rows]
    edited[2]["caption"] = "a better caption"
    write_parquet(table, edited)
    with pytest.raises(TableChanged, match=r"row 000000002 \(.*/img/2\.jpg\) has another caption"):
        run_process(shard_config(out, table))
    assert {p.name: p.read_bytes() for p in out.glob("*.tar")} == shards
    edited[2]["caption"] = rows[2]["caption"]
    edited[4]["score"] = 0.123  # a kept column
    write_parquet(table, edited)
    with pytest.raises(TableChanged, match=r"row 000000004 .* other kept columns"):
        run_process(shard_config(out, table))
    write_parquet(table, rows)  # as it was
    assert run_process(shard_config(out, table)).counts == {"reused": 6}
