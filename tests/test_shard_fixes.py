"""Training-set shards, a reviewer's findings: a shard of no sample, rows without a caption,
kept columns all null in one shard, commit workers that grew with ``--samples-per-shard``, and
failures recorded in the stage that failed them. Real runs against a loopback image server."""

from __future__ import annotations

import dataclasses
import gc
import json
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from app.process import build_pipeline, run_process
from tests.conftest import by_key
from tests.http_server import serve
from tests.test_shards import Images, shard_config, write_parquet

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def base() -> Iterator[str]:
    with serve(Images().routes()) as url:
        yield url


def data_shards(out: Path) -> list[Path]:
    return sorted(out.glob("[0-9]*[0-9].parquet"))


def test_a_parquet_shard_of_no_sample_is_a_valid_empty_file(tmp_path: Path, base: str) -> None:
    """A shard whose two inputs failed is a Parquet file of 0 rows with the others' schema
    (it was 0 bytes, which no loader reads), also when a rerun redoes the failed rows."""
    rows = [{"url": f"{base}/img/{i}.jpg", "caption": f"c{i}"} for i in range(2)]
    rows += [{"url": f"{base}/missing.jpg", "caption": "gone"}] * 2
    table = write_parquet(tmp_path / "t.parquet", rows)
    out = tmp_path / "out"
    cfg = shard_config(out, table, output_format="parquet", samples_per_shard=2, keep_columns=())
    for _ in range(2):  # the second: the failed rows again, into a new shard
        assert run_process(cfg).exit_code == 1
        paths = data_shards(out)
        assert sorted(pq.read_metadata(p).num_rows for p in paths) == [0, 2]
        assert pq.read_schema(paths[0]) == pq.read_schema(paths[1])
        whole = pq.read_table([str(p) for p in paths])  # the folder reads as one
        assert sorted(whole.column("caption").to_pylist()) == ["c0", "c1"]


def read_pairs(out: Path) -> list[tuple[Any, Any]]:
    """(image, caption) of every sample, as the README's loader reads them."""
    tars = sorted(str(p) for p in out.glob("*.tar"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        dataset = wds.WebDataset(tars, shardshuffle=False).decode("pil").to_tuple("jpg", "txt")
        pairs = list(dataset)
        gc.collect()
    return pairs


def test_a_row_without_caption_has_an_empty_txt(tmp_path: Path, base: str) -> None:
    """With ``--caption-col`` every sample has its ``KEY.txt`` (empty for a null caption), so
    that the README's loader reads every sample; a Parquet shard's caption column is text in
    a shard whose captions are all null."""
    captions = ["one", None, "three"]
    rows = [{"url": f"{base}/img/{i}.jpg", "caption": c} for i, c in enumerate(captions)]
    table = write_parquet(tmp_path / "t.parquet", rows)
    out = tmp_path / "wds"
    assert run_process(shard_config(out, table, keep_columns=())).exit_code == 0
    assert sorted(c for _, c in read_pairs(out)) == ["", "one", "three"]
    out = tmp_path / "pq"
    cfg = shard_config(out, table, output_format="parquet", samples_per_shard=1, keep_columns=())
    assert run_process(cfg).exit_code == 0
    schemas = {pq.read_schema(p) for p in data_shards(out)}
    assert len(schemas) == 1
    assert schemas.pop().field("caption").type == pa.string()
    whole = pq.read_table([str(p) for p in data_shards(out)]).to_pylist()
    assert {r["key"]: r["caption"] for r in whole} == {
        f"{i:09d}": c for i, c in enumerate(captions)
    }


TYPES = {"cnt": pa.int64(), "score": pa.float64(), "tags": pa.list_(pa.int64())}


def kept_table(base: str) -> pa.Table:
    """Five rows: the first two (a shard of 2, a row group of 1) hold nulls only."""
    rows = [
        {"url": f"{base}/img/{i}.jpg", "cnt": None, "score": None, "tags": None} for i in (0, 1)
    ]
    rows += [
        {"url": f"{base}/img/{i}.jpg", "cnt": i, "score": i / 2, "tags": [i, i + 1]}
        for i in (2, 3, 4)
    ]
    schema = pa.schema([("url", pa.string()), *TYPES.items()])
    return pa.Table.from_pylist(rows, schema=schema)


@pytest.mark.parametrize("fmt", ["webdataset", "parquet"])
def test_kept_columns_keep_the_table_types_in_every_shard(
    tmp_path: Path, base: str, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kept columns all null in the first shard (and a Parquet shard's first row group):
    every shard has the Parquet table's types, and the folder reads as one dataset. Before,
    they were null in the first metadata table (the folder did not read as one), text in a
    Parquet shard (lists as Python's repr)."""
    import stages.parquet_rows

    monkeypatch.setattr(stages.parquet_rows, "ROW_GROUP", 1)
    table = tmp_path / "t.parquet"
    pq.write_table(kept_table(base), table)
    out = tmp_path / "out"
    cfg = shard_config(
        out,
        table,
        output_format=fmt,
        caption_col=None,
        keep_columns="cnt,score,tags",
        samples_per_shard=2,
    )
    assert run_process(cfg).exit_code == 0
    groups = [sorted(out.glob("[0-9]*[0-9].parquet" if fmt == "webdataset" else "*_meta.parquet"))]
    if fmt == "parquet":
        groups.append(data_shards(out))
    for paths in groups:
        assert len(paths) == 3
        whole = pq.read_table([str(p) for p in paths])
        assert {n: whole.schema.field(n).type for n in TYPES} == TYPES
        assert ds.dataset([str(p) for p in paths]).to_table().num_rows == 5
        got = {r["cnt"]: r["tags"] for r in whole.to_pylist()}
        assert got == {None: None, 2: [2, 3], 3: [3, 4], 4: [4, 5]}


def test_kept_columns_of_a_json_lines_table_are_text_in_every_shard(
    tmp_path: Path, base: str
) -> None:
    """A JSON lines table's kept columns are text, also in a shard where they are all null
    (it was null-typed there, and the folder did not read as one)."""
    notes = [None, None, 1, "two"]
    table = tmp_path / "t.jsonl"
    rows = [{"url": f"{base}/img/{i}.jpg", "note": n} for i, n in enumerate(notes)]
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    cfg = shard_config(out, table, caption_col=None, keep_columns="note", samples_per_shard=2)
    assert run_process(cfg).exit_code == 0
    metas = sorted(out.glob("[0-9]*[0-9].parquet"))
    assert [pq.read_schema(p).field("note").type for p in metas] == [pa.string()] * 2
    whole = pq.read_table([str(p) for p in metas])
    assert sorted(whole.column("note").to_pylist(), key=str) == ["1", None, None, "two"]


def test_commit_workers_do_not_grow_with_samples_per_shard(tmp_path: Path, base: str) -> None:
    """A million samples per shard on a table of 5 rows: a few hundred commit workers at
    most (there was one per sample of a shard: 2.8 GB and a long start-up), and the run
    writes its one shard at once."""
    from stages.shards import COMMIT_WORKERS

    rows = [{"url": f"{base}/img/{i}.jpg", "caption": f"c{i}"} for i in range(5)]
    table = write_parquet(tmp_path / "t.parquet", rows)
    out = tmp_path / "out"
    cfg = shard_config(out, table, samples_per_shard=1_000_000, keep_columns=())
    (commit,) = [s for s in build_pipeline(cfg).stages if s.name == "commit"]
    assert commit.workers <= COMMIT_WORKERS
    started = time.monotonic()
    assert run_process(cfg).exit_code == 0
    assert time.monotonic() - started < 30
    assert [p.name for p in out.glob("*.tar")] == ["00000.tar"]
    assert len(read_pairs(out)) == 5


def test_shards_fill_with_fewer_commit_workers_than_samples(
    tmp_path: Path, base: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shards of 10 inputs with 3 commit workers: the inputs that find no worker wait in the
    commit stage's inbox, so every shard fills (no deadlock) and every input is recorded."""
    import stages.shards

    monkeypatch.setattr(stages.shards, "COMMIT_WORKERS", 3)
    rows = [{"url": f"{base}/img/{i}.jpg", "caption": f"c{i}"} for i in range(25)]
    rows[12] = {"url": f"{base}/missing.jpg", "caption": "gone"}
    table = write_parquet(tmp_path / "t.parquet", rows)
    out = tmp_path / "out"
    cfg = shard_config(out, table, samples_per_shard=10, keep_columns=())
    (commit,) = [s for s in build_pipeline(cfg).stages if s.name == "commit"]
    assert commit.workers == 3
    assert run_process(cfg).exit_code == 1
    stats = [json.loads(p.read_text()) for p in sorted(out.glob("*_stats.json"))]
    assert [s["count"] for s in stats] == [10, 10, 5]
    records = by_key(out)
    assert sorted(r["status"] for r in records.values()) == ["failed"] + ["ok"] * 24
    assert len(read_pairs(out)) == 24


def test_a_failure_is_recorded_in_the_stage_that_failed(tmp_path: Path, base: str) -> None:
    """A download error is a failure in ``download``, an image that does not decode one in
    ``resize``, an image a filter leaves out a skip there: not in ``commit``, where the
    shard's writer raises them again."""
    paths = ["/img/1.jpg", "/missing.jpg", "/truncated.jpg", "/sized/20x20.jpg", "/noai.jpg"]
    rows = [{"url": base + p, "caption": p} for p in paths]
    table = write_parquet(tmp_path / "t.parquet", rows)
    out = tmp_path / "out"
    cfg = shard_config(out, table, keep_columns=(), min_image_size=32)
    result = run_process(cfg)
    assert result.exit_code == 1
    got = {r["meta"]["url"].removeprefix(base): r for r in by_key(out).values()}
    assert {p: (r["status"], r.get("stage")) for p, r in got.items()} == {
        "/img/1.jpg": ("ok", None),
        "/missing.jpg": ("failed", "download"),
        "/truncated.jpg": ("failed", "resize"),
        "/sized/20x20.jpg": ("skipped", "resize"),
        "/noai.jpg": ("skipped", "download"),
    }
    assert got["/missing.jpg"]["error_type"] == "HTTPStatusError"
    assert got["/truncated.jpg"]["error_type"] == "TruncatedImage"


def test_a_rerun_removes_the_shards_of_failures_it_redid(tmp_path: Path, base: str) -> None:
    """Each rerun of a set with failures writes them into a new shard of no sample; the one
    before, named by no record any more, was set aside as .unrecorded with a warning, and those
    piled up run after run. A shard of no sample is removed; one with samples is set aside."""
    rows = [{"url": f"{base}/img/{i}.jpg", "caption": f"c{i}"} for i in range(2)]
    rows += [{"url": f"{base}/missing.jpg", "caption": "gone"}] * 2
    table = write_parquet(tmp_path / "t.parquet", rows)
    out = tmp_path / "out"
    cfg = shard_config(out, table, samples_per_shard=2, keep_columns=())
    for _ in range(3):
        assert run_process(cfg).exit_code == 1
    assert not list(out.glob("*.unrecorded"))
    tars = sorted(p.name for p in out.glob("*.tar"))
    assert len(tars) == 2  # the samples' shard and the last run's shard of failures
    assert {
        r["result"]["shard"] if "result" in r else r["meta"]["shard"] for r in by_key(out).values()
    } == set(tars)


def test_a_null_caption_given_since_is_an_edit(tmp_path: Path, base: str) -> None:
    """A caption that was null when its sample was written, given since: the row said nothing,
    had no digest, and the sample went on with an empty KEY.txt, reused."""
    from app.shard_folder import TableChanged

    rows = [
        {"url": f"{base}/img/{i}.jpg", "caption": None if i == 0 else f"c{i}"} for i in range(3)
    ]
    table = write_parquet(tmp_path / "t.parquet", rows)
    out = tmp_path / "out"
    cfg = shard_config(out, table, keep_columns=())
    assert run_process(cfg).exit_code == 0
    rows[0]["caption"] = "now a caption"
    write_parquet(table, rows)
    with pytest.raises(TableChanged, match=r"row 000000000 .* another caption"):
        run_process(cfg)


def test_kept_columns_of_another_type_in_a_later_run_are_refused(tmp_path: Path, base: str) -> None:
    """A later run whose tables give a kept column another type (a table of int32 where the
    shards hold int64, or a CSV table: text) wrote shards that no longer read as one dataset
    with the earlier ones; the types are held with the sample options, so it is refused."""
    from pipeline import ConfigError

    def table(name: str, first: int, kind: pa.DataType) -> Path:
        urls = [f"{base}/img/{first + i}.jpg" for i in range(2)]
        tags = pa.array([[i, i + 1] for i in range(2)], pa.list_(kind))
        pq.write_table(
            pa.table({"url": urls, "caption": ["a", "b"], "tags": tags}), tmp_path / name
        )
        return tmp_path / name

    one, two = table("one.parquet", 0, pa.int64()), table("two.parquet", 2, pa.int32())
    out = tmp_path / "out"
    assert run_process(shard_config(out, one, keep_columns="tags")).exit_code == 0
    both = dataclasses.replace(
        shard_config(out, one, keep_columns="tags"), urls=(str(one), str(two))
    )
    with pytest.raises(
        ConfigError,
        match=r"the kept columns' types tags: string \(the folder's: tags: list<item: int64>\)",
    ):
        run_process(both)
    # the same types again: fine
    three = table("three.parquet", 4, pa.int64())
    assert run_process(dataclasses.replace(both, urls=(str(one), str(three)))).exit_code == 0
    metas = [str(p) for p in out.glob("[0-9]*[0-9].parquet")]
    assert ds.dataset(metas).to_table().num_rows == 4


def test_kept_integers_of_several_widths_are_int64(tmp_path: Path, base: str) -> None:
    """Two tables that give a kept column as int32 and int64: the shards' column is int64
    (it fell back to text), and a later run with an int16 table is the same schema."""
    from stages.shards import kept_types

    def table(name: str, first: int, kind: pa.DataType) -> Path:
        urls = [f"{base}/img/{first + i}.jpg" for i in range(2)]
        n = pa.array([first, first + 1], kind)
        pq.write_table(pa.table({"url": urls, "caption": ["a", "b"], "n": n}), tmp_path / name)
        return tmp_path / name

    one, two = table("one.parquet", 0, pa.int32()), table("two.parquet", 2, pa.int64())
    assert kept_types([str(one), str(two)], ["n"]) == {"n": pa.int64()}
    out = tmp_path / "out"
    cfg = dataclasses.replace(
        shard_config(out, one, keep_columns="n", samples_per_shard=2), urls=(str(one), str(two))
    )
    assert run_process(cfg).exit_code == 0
    three = table("three.parquet", 4, pa.int16())
    assert run_process(dataclasses.replace(cfg, urls=(str(one), str(two), str(three)))).ok == 2
    metas = [str(p) for p in out.glob("[0-9]*[0-9].parquet")]
    got = ds.dataset(metas).to_table()
    assert got.schema.field("n").type == pa.int64()
    assert sorted(got.column("n").to_pylist()) == [0, 1, 2, 3, 4, 5]
