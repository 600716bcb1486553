"""URL lists through `process`: one record per URL, failures named, resume, private hosts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from app.config import ProcessConfig
from app.process import run_process
from tests.conftest import by_key
from tests.http_server import serve, silent_server

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "sample_data" / "images"

FAST = {
    "allow_private_hosts": True,
    "connect_timeout": 2.0,
    "read_timeout": 1.0,
    "download_timeout": 4.0,
    "download_retries": 2,
    "max_download_size": "2MiB",
    "quiet": True,
}


def process(out: Path, urls: Path, **kw: object) -> dict[str, dict[str, object]]:
    cfg = ProcessConfig.from_mapping({"urls": [str(urls)], "output": str(out), **FAST, **kw})
    run_process(cfg)
    return by_key(out)


@pytest.mark.timeout(120)
def test_every_failure_mode_ends_in_its_record(tmp_path: Path) -> None:
    out, urls = tmp_path / "out", tmp_path / "urls.txt"
    with serve() as base, silent_server() as silent:
        cases = {
            f"{base}/ok/a": ("ok", None),
            f"{base}/flaky?fails=1": ("ok", None),
            f"{base}/ratelimited?fails=1&retry_after=1": ("ok", None),
            f"{base}/status/404": ("failed", "HTTPStatusError"),
            f"{base}/status/503": ("failed", "HTTPStatusError"),
            f"{base}/trickle?interval=3&count=5": ("failed", "DownloadTimeout"),
            f"{base}/reset?after=1000": ("failed", "TruncatedBody"),
            f"{base}/short?declared=5000&sent=100": ("failed", "TruncatedBody"),
            f"{base}/loop": ("failed", "TooManyRedirects"),
            f"{base}/endless?chunk=65536": ("failed", "TooLarge"),
            f"{base}/html": ("failed", "DecodeError"),  # downloaded fine, not an image
            f"{base}/redirect-to?location=file:///etc/passwd": ("failed", "BadURL"),
            f"{silent}/never": ("failed", "DownloadTimeout"),
        }
        urls.write_text("# one URL a line\n\n" + "\n".join(cases) + "\nnot a url\n")
        recs = process(out, urls)
    assert len(recs) == len(cases) + 1
    for url, (status, error_type) in cases.items():
        rec = recs[url]
        assert rec["status"] == status, (url, rec)
        if status == "failed":
            assert rec["error_type"] == error_type, (url, rec)
            assert rec["attempts"] >= 1
        else:
            (o,) = rec["result"]["outputs"]  # type: ignore[index]
            assert (out / o["path"]).resolve().is_relative_to(out.resolve())
    assert recs[f"{base}/status/404"]["attempts"] == 1  # no retry on other 4xx
    assert recs[f"{base}/status/503"]["attempts"] == 3
    assert recs[f"{base}/status/503"]["meta"]["http_status"] == 503  # type: ignore[index]
    assert recs[f"{base}/flaky?fails=1"]["result"]["download"]["attempts"] == 2  # type: ignore[index]
    bad = recs["not a url"]  # a text line is taken as a URL, and refused as one
    assert bad["status"] == "failed"
    assert bad["error_type"] == "BadURL"


def test_private_hosts_are_refused_by_default(tmp_path: Path) -> None:
    out, urls = tmp_path / "out", tmp_path / "urls.txt"
    with serve() as base:
        urls.write_text(f"{base}/ok/a\n")
        recs = process(out, urls, allow_private_hosts=False)
    (rec,) = recs.values()
    assert rec["status"] == "failed"
    assert rec["error_type"] == "ForbiddenAddress"


def test_folders_and_url_lists_in_one_run_then_resume(tmp_path: Path) -> None:
    out, urls = tmp_path / "out", tmp_path / "urls.csv"
    with serve(IMAGES) as base:
        names = sorted(p.name for p in IMAGES.glob("*.jpg"))
        urls.write_text(
            "url,label\n" + "".join(f"{base}/{n},{n}\n" for n in names) + ",no url here\n"
        )
        cfg = {"inputs": [str(IMAGES)], "urls": [str(urls)], "output": str(out), **FAST}
        run_process(ProcessConfig.from_mapping(cfg))
        recs = by_key(out)
        n_files = sum(1 for p in IMAGES.rglob("*") if p.is_file())
        assert len(recs) == n_files + len(names) + 1
        (bad,) = [r for r in recs.values() if r["status"] != "ok"]
        assert bad["error_type"] == "BadUrlListEntry"
        assert bad["key"].endswith("#line" + str(len(names) + 2))
        first_url = f"{base}/{names[0]}"
        assert recs[first_url]["meta"] == {"label": names[0]}
        out_path = out / recs[first_url]["result"]["outputs"][0]["path"]  # type: ignore[index]
        with Image.open(out_path) as im:
            assert max(im.size) <= 512
        run_process(ProcessConfig.from_mapping(cfg))
        again = by_key(out)
        assert [r["status"] for r in again.values()].count("reused") == len(again) - 1
        summary = json.loads((out / "summary.json").read_text())
        assert summary["counts"] == {"reused": len(again) - 1, "failed": 1}


@pytest.mark.timeout(120)
def test_a_tables_bad_rows_are_keyed_by_table_and_row(tmp_path: Path) -> None:
    """Files output: a row of a --urls table without a URL is keyed ``TABLE#rowN``. Keyed by
    its bare row number, the second table's bad row 1 was a duplicate of the first's (one
    record for two), and a local file named ``000000001`` had no record at all."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pics, out = tmp_path / "pics", tmp_path / "out"
    pics.mkdir()
    (pics / "000000001").write_bytes(
        (IMAGES / sorted(p.name for p in IMAGES.glob("*.jpg"))[0]).read_bytes()
    )
    with serve(IMAGES) as base:
        first = sorted(p.name for p in IMAGES.glob("*.jpg"))[0]
        tables = []
        for n in (1, 2):
            table = tmp_path / f"t{n}.parquet"
            pq.write_table(pa.table({"url": [f"{base}/{first}?t={n}", None]}), table)
            tables.append(str(table))
        cfg = {"inputs": [str(pics)], "urls": tables, "output": str(out), **FAST}
        run_process(ProcessConfig.from_mapping(cfg))
    recs = by_key(out)
    assert recs["000000001"]["status"] == "ok"
    for table in tables:
        bad = recs[f"{table}#row1"]
        assert (bad["status"], bad["error_type"]) == ("failed", "BadTableRow")
    assert len(recs) == 5


@pytest.mark.timeout(60)
def test_a_url_list_that_cannot_be_read_is_a_usage_error_before_the_run(tmp_path: Path) -> None:
    """A CSV list without a url column, or a folder given as a list: exit 2 before anything
    starts. Found part-way, it stopped the run (exit 3) with the other lists' URLs cancelled,
    on every rerun."""
    import subprocess
    import sys

    good, nourl, folder = tmp_path / "good.txt", tmp_path / "nourl.csv", tmp_path / "lists"
    good.write_text("http://127.0.0.1:9/a.jpg\n")
    nourl.write_text("link,notes\nhttp://127.0.0.1:9/b.jpg,x\n")
    folder.mkdir()
    for bad, said in ((nourl, "missing url column"), (folder, "cannot read the URL list")):
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pipeline",
                "process",
                "--urls",
                str(good),
                "--urls",
                str(bad),
                "--output",
                str(tmp_path / "out"),
                "-q",
            ],
            capture_output=True,
            text=True,
            timeout=50,
            cwd=ROOT,
        )
        assert done.returncode == 2, done.stderr
        assert said in done.stderr
        assert not (tmp_path / "out" / "manifest.jsonl").exists()


@pytest.mark.timeout(120)
def test_gzipped_tables_and_json_lists_into_files(tmp_path: Path) -> None:
    """Files output: a .csv.gz given --url-col is read as a table (it was read as a URL list,
    its --url-col ignored), a .json list as JSON lines (every line was a bad URL)."""
    import gzip

    names = sorted(p.name for p in IMAGES.glob("*.jpg"))[:2]
    with serve(IMAGES) as base:
        table = tmp_path / "t.csv.gz"
        rows = "".join(f"{base}/{n},{base}/missing.jpg\n" for n in names[:1])
        table.write_bytes(gzip.compress(f"link,url\n{rows}".encode()))
        listed = tmp_path / "l.json"
        listed.write_text(json.dumps({"url": f"{base}/{names[1]}", "who": "me"}) + "\n")
        recs = process(tmp_path / "out", table, url_col="link")
        recs |= process(tmp_path / "out2", listed)
    assert {k: r["status"] for k, r in recs.items()} == {
        f"{base}/{names[0]}": "ok",
        f"{base}/{names[1]}": "ok",
    }
    assert recs[f"{base}/{names[1]}"]["meta"] == {"who": "me"}


@pytest.mark.timeout(120)
def test_a_mended_bad_line_is_no_longer_a_failure(tmp_path: Path) -> None:
    """A list's bad line fails as ``LIST#lineN``; once mended (or removed), the next run that
    reads the list makes that record ``skipped``, saying so: it stayed ``failed`` for good, in
    ``failures`` and untouched by --retry-failed. A run of another list leaves it."""
    names = sorted(p.name for p in IMAGES.glob("*.jpg"))[:2]
    out, urls, other = tmp_path / "out", tmp_path / "urls.txt", tmp_path / "other.txt"
    with serve(IMAGES) as base:
        urls.write_bytes(f"{base}/{names[0]}\n".encode() + b"caf\xe9.jpg\n")  # not UTF-8
        recs = process(out, urls)
        assert recs[f"{urls}#line2"]["status"] == "failed"
        other.write_text(f"{base}/{names[1]}\n")
        assert process(out, other)[f"{urls}#line2"]["status"] == "failed"
        urls.write_text(f"{base}/{names[0]}\n{base}/{names[1]}\n")
        recs = process(out, urls)
    gone = recs[f"{urls}#line2"]
    assert gone["status"] == "skipped"
    assert gone["reason"] == f"bad entry gone: {urls} has no bad entry at line2 any more"
    assert {r["status"] for k, r in recs.items() if k != f"{urls}#line2"} <= {"ok", "reused"}
