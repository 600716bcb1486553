"""CSV/TSV URL tables as ``csv.writer`` and R's ``write.csv`` write them: quoted captions of
several lines past the reader's first block, quoted header names, spaces after the commas of a
header. The header check and the reader must see the same columns, and a row spanning lines is
one row (its key its row number)."""

from __future__ import annotations

import csv
import gzip
import io
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from PIL import Image

from app.process import run_process
from stages.tables_in import CSV_BLOCK_BYTES, TableError, check_table, iter_table
from tests.http_server import serve
from tests.test_shards import read_samples, shard_config

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[1]


def write_table(path: Path, rows: Sequence[Sequence[str]], **fmt: object) -> Path:
    """``rows`` written by ``csv.writer`` (a TSV with a tab; gzipped for ``.gz``)."""
    buf = io.StringIO(newline="")
    delimiter = "\t" if ".tsv" in path.name else ","
    csv.writer(buf, delimiter=delimiter, **fmt).writerows(rows)  # type: ignore[arg-type]
    data = buf.getvalue().encode()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 120, 200)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A loopback server of JPEGs: ``/0.jpg`` … ``/199.jpg``."""
    folder = tmp_path_factory.mktemp("img")
    picture = jpeg()
    for i in range(200):
        (folder / f"{i}.jpg").write_bytes(picture)
    with serve(folder) as url:
        yield url


@pytest.mark.parametrize("name", ["t.csv", "t.tsv", "t.csv.gz"])
def test_multiline_captions_past_the_first_block(tmp_path: Path, name: str) -> None:
    """The reviewer's table, longer: 20000 rows of two-line captions, over 2 MiB. It stopped
    the run (``CSV parse error: Expected 2 columns, got 1``) where a block ended inside a
    caption. Each row is one row, numbered as ``csv.reader`` counts them, whatever its lines."""
    b = "http://127.0.0.1:9"
    rows = [("url", "caption")] + [
        (f"{b}/{i % 200}.jpg", f"first line of caption {i}\nsecond line {i} " + "x" * 40)
        for i in range(20_000)
    ]
    table = write_table(tmp_path / name, rows)
    assert (
        len(gzip.decompress(table.read_bytes()) if name.endswith(".gz") else table.read_bytes())
        > 2 * CSV_BLOCK_BYTES
    )
    check_table(table, caption_col="caption")
    got = [(r.row, r.url, r.caption, r.error) for r in iter_table(table, caption_col="caption")]
    assert got == [(i, u, c, None) for i, (u, c) in enumerate(rows[1:])]


def test_multiline_captions_in_a_shard_run(tmp_path: Path, base: str) -> None:
    """The same through a whole run into WebDataset shards: every row a sample keyed by its
    row number, its caption of 3001 lines whole."""
    captions = [f"picture {i}\n" + f"line of caption {i}\r\n" * 3000 for i in range(30)]
    rows = [("url", "caption")] + [(f"{base}/{i}.jpg", c) for i, c in enumerate(captions)]
    table = write_table(tmp_path / "t.csv", rows)
    assert table.stat().st_size > CSV_BLOCK_BYTES
    out = tmp_path / "out"
    result = run_process(shard_config(out, table, keep_columns=[], samples_per_shard=10))
    assert result.exit_code == 0
    got = sorted((str(s["__key__"]), s["txt"].decode()) for s in read_samples(out))
    assert got == [(f"{i:09d}", c) for i, c in enumerate(captions)]


@pytest.mark.parametrize(
    ("header", "quoting"),
    [
        (("url", "caption", "license"), csv.QUOTE_ALL),  # "url","caption": R's write.csv
        (("url", " caption", " license"), csv.QUOTE_MINIMAL),  # url, caption, license
        ((" url ", '"caption"', "license"), csv.QUOTE_MINIMAL),  # " url ","""caption""",...
    ],
)
def test_header_check_and_reader_see_one_set_of_columns(
    tmp_path: Path, base: str, header: tuple[str, ...], quoting: int
) -> None:
    """A quoted header was refused (``no URL column 'url'; its columns are ['"url"', ...]``);
    one with spaces after its commas passed the check, then stopped the run with
    ``ArrowKeyError``. Names count without their spaces, quotes removed as the reader does."""
    rows = [header] + [(f"{base}/{i}.jpg", f"caption {i}", f"cc-{i}") for i in range(3)]
    table = write_table(tmp_path / "t.csv", rows, quoting=quoting)
    caption = header[1].strip()
    check_table(table, caption_col=caption, keep=["license"])
    got = [
        (r.row, r.url, r.caption, r.extra)
        for r in iter_table(table, caption_col=caption, keep=["license"])
    ]
    assert got == [(i, u, c, {"license": lic}) for i, (u, c, lic) in enumerate(rows[1:])]
    out = tmp_path / "out"
    cfg = shard_config(out, table, caption_col=caption, keep_columns=["license"])
    assert run_process(cfg).exit_code == 0
    assert sorted(s["txt"].decode() for s in read_samples(out)) == [r[1] for r in rows[1:]]


def test_a_column_the_header_lacks_is_a_usage_error(tmp_path: Path) -> None:
    """Exit 2 before anything starts, naming the columns as the reader sees them."""
    rows = [("url", " caption"), ("http://127.0.0.1:9/a.jpg", "a")]
    table = write_table(tmp_path / "t.csv", rows, quoting=csv.QUOTE_ALL)
    with pytest.raises(
        TableError, match=r"no caption column 'title'; its columns are \['url', 'caption'\]"
    ):
        check_table(table, caption_col="title")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "pipeline", "process", "--urls", str(table)]
    cmd += ["--caption-col", "title", "--output-format", "webdataset", "-o", str(tmp_path / "o")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert "no caption column 'title'" in done.stderr
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").glob("*.tar"))


def test_quoted_table_by_the_command_line(tmp_path: Path, base: str) -> None:
    """The reviewer's command on a ``QUOTE_ALL`` table with multi-line captions: exit 0."""
    rows = [("url", "caption")] + [(f"{base}/{i}.jpg", f"a\nb {i}") for i in range(3)]
    table = write_table(tmp_path / "t.csv", rows, quoting=csv.QUOTE_ALL)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "pipeline", "process", "--urls", str(table), "--quiet"]
    cmd += ["--caption-col", "caption", "--output-format", "webdataset", "--size", "32"]
    cmd += ["--allow-private-hosts", "-o", str(tmp_path / "o")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr
    got = sorted((str(s["__key__"]), s["txt"].decode()) for s in read_samples(tmp_path / "o"))
    assert got == [(f"{i:09d}", f"a\nb {i}") for i in range(3)]


def test_a_caption_that_is_not_utf8_is_read_as_latin1(tmp_path: Path) -> None:
    """A CSV table whose caption holds a Latin-1 byte (``caf\\xe9``) past the first block
    stopped every run there: exit 3, 'CSV conversion error to string: invalid UTF8 data',
    naming neither the file nor the row. Each cell is UTF-8, else Latin-1."""
    rows = [f"http://127.0.0.1:9/img/{i}.jpg,caption number {i}\n" for i in range(60_000)]
    rows[50_000] = "http://127.0.0.1:9/img/x.jpg,caf\xe9 au lait\n"
    path = tmp_path / "latin.csv"
    path.write_bytes(("url,caption\n" + "".join(rows)).encode("latin-1"))
    assert path.stat().st_size > CSV_BLOCK_BYTES
    got = list(iter_table(str(path), url_col="url", caption_col="caption"))
    assert len(got) == 60_000
    assert got[50_000].caption == "café au lait"
    assert got[1].caption == "caption number 1"
