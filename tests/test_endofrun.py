"""The end-of-run outputs: one feed of the records builds the tables and the report while the run
goes, the manifest never read back (app.endofrun), and tables written as they stream
(app.tables)."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

import app.children
import app.endofrun
import app.tables
import pipeline.ledger
import pipeline.malloc
from app.collectors import DataTable, NearDuplicates, StatsTable
from app.config import ProcessConfig
from app.endofrun import RecordFeed
from app.process import run_process
from app.report import ReportSheet, write_report
from app.tables import CsvStream, ParquetStream
from pipeline import LedgerError, Record

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "sample_data" / "images"
DATA = ROOT / "sample_data" / "data"


def _image(key: str, dhash: str, *, status: str = "ok") -> dict[str, Any]:
    stats = {"mean": [1.0, 2.0, 3.0], "std": [0.5, 0.5, 0.5], "sharpness": 2.5, "dhash": dhash}
    out = {"path": f"64/{key}", "width": 64, "height": 48}
    result = {"original": {"width": 640, "height": 480}, "outputs": [out], "stats": stats}
    return {"key": key, "status": status, "result": result}


def _array(key: str) -> dict[str, Any]:
    stats = {"count": 4, "missing": 0, "mean": 1.5, "std": 1.0, "min": 0, "max": 3, "sum": 6}
    result = {"kind": "array", "dtype": "float64", "shape": [4], "stats": stats}
    return {"key": key, "status": "ok", "result": result}


def _folder(tmp_path: Path, records: list[dict[str, Any]]) -> Path:
    folder = tmp_path / "out"
    folder.mkdir(parents=True)
    lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in records]
    (folder / "manifest.jsonl").write_text("".join(lines), encoding="utf-8")
    return folder


def _temporaries(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".pp-")]


# -- one pass -------------------------------------------------------------------------------------
def test_a_process_run_never_reads_the_manifest_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tables, the near-duplicate groups (with their thumbnails) and the report come from
    the records as they are committed, and from the ledger's one pass over the records the
    run did not write: a second run over part of the inputs still lists the whole folder."""
    inputs = tmp_path / "in"
    shutil.copytree(IMAGES, inputs / "images")
    shutil.copy(IMAGES / "640x480_rgb.jpg", inputs / "copy.jpg")  # a near-duplicate group
    shutil.copytree(DATA, inputs / "data")

    def no_read(path: Path, *args: Any) -> Iterator[dict[str, Any]]:
        raise AssertionError(f"{path} read back")

    monkeypatch.setattr(app.endofrun, "read_manifest", no_read)
    monkeypatch.setattr(pipeline.ledger, "read_manifest", no_read)
    out = tmp_path / "out"
    cfg = {"inputs": [str(inputs)], "output": str(out), "quiet": True}
    first = run_process(ProcessConfig.from_mapping(cfg))
    assert first.collected["folder_records"] == {"this_run": first.seen, "earlier": 0}
    shutil.rmtree(inputs / "data")  # the second run sees the images only
    result = run_process(ProcessConfig.from_mapping(cfg))
    total = sum(first.counts.values())
    assert result.collected["folder_records"] == {
        "this_run": result.seen,
        "earlier": total - result.seen,
    }
    groups = result.collected["near_duplicates"]["groups"]
    assert ["copy.jpg", "images/640x480_rgb.jpg"] in groups
    assert result.collected["stats_table"] == first.collected["stats_table"]
    assert result.collected["stats_table"]["files"] == ["stats.csv", "stats.parquet"]
    assert result.collected["data_table"]["rows"] == first.collected["data_table"]["rows"] > 0
    report = (out / "report.html").read_text(encoding="utf-8")
    assert 'src="512/copy.jpg"' in report  # the sheet's tile and the group's thumbnail
    assert report.count('src="512/copy.jpg"') == 2
    assert '<table id="data">' in report
    assert _temporaries(out) == []


def test_tables_list_every_record_of_the_folder_in_any_order(tmp_path: Path) -> None:
    """The rows of a run's stats.csv are those of the manifest: the same set of keys, one row
    each, whatever order the feed saw them in."""
    out = tmp_path / "out"
    cfg = {"inputs": [str(IMAGES)], "output": str(out), "quiet": True}
    run_process(ProcessConfig.from_mapping(cfg))
    with open(out / "stats.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    images = [r for r in manifest if "stats" in (r.get("result") or {})]
    assert sorted(r["key"] for r in rows) == sorted(r["key"] for r in images)
    assert len(rows) == len(images) > 0


def test_the_tables_show_the_records_the_run_did_not_write_as_revisit_left_them(
    tmp_path: Path,
) -> None:
    """An input gone since the last run: its record, changed to ``skipped`` by the ledger's
    end pass, is the one the tables list (fed from that pass, not from the manifest)."""
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for name in ("640x480_rgb.jpg", "600x400_gray.jpg"):
        shutil.copy(IMAGES / name, inputs / name)
    cfg = ProcessConfig.from_mapping({"inputs": [str(inputs)], "output": str(out), "quiet": True})
    run_process(cfg)
    (inputs / "600x400_gray.jpg").unlink()
    result = run_process(cfg)
    assert result.collected["folder_records"] == {"this_run": 1, "earlier": 1}
    assert result.collected["revisited"] == 1
    with open(out / "stats.csv", encoding="utf-8", newline="") as fh:
        status = {row["key"]: row["status"] for row in csv.DictReader(fh)}
    assert status == {"640x480_rgb.jpg": "reused", "600x400_gray.jpg": "skipped"}


def test_a_table_that_cannot_be_written_fails_alone(tmp_path: Path) -> None:
    folder = _folder(tmp_path, [_image("a.jpg", "00ff"), _image("b.jpg", "00fe"), _array("x")])
    (folder / "stats.csv").mkdir()  # stats.csv cannot be replaced
    feed = RecordFeed(folder)
    sheet = ReportSheet(feed)
    table, data = StatsTable(folder, feed), DataTable(folder, feed)
    with pytest.raises(IsADirectoryError):
        table.result()
    with pytest.raises(IsADirectoryError):
        NearDuplicates(table).result()
    assert data.result() == {"rows": 1, "files": ["data_stats.csv"]}
    write_report(folder, sheet)
    assert "b.jpg" in (folder / "report.html").read_text(encoding="utf-8")
    assert not (folder / "stats.parquet").exists()
    assert _temporaries(folder) == []


def test_a_hash_file_that_cannot_be_written_fails_its_table_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hashes go to a temporary file as the records come (one at a time here): when it
    cannot be written, the table and the groups fail with the error; the data table goes on."""
    import app.collectors

    monkeypatch.setattr(app.collectors, "HASH_BUFFER", 1)
    folder = tmp_path / "out"
    folder.mkdir()
    feed = RecordFeed(folder)
    table, data = StatsTable(folder, feed), DataTable(folder, feed)
    feed.add(Record.from_json(_image("a.jpg", "00ff")))
    (hashes,) = (folder / name for name in _temporaries(folder))
    hashes.unlink()
    hashes.mkdir()  # where the next hash goes: a folder, not the file
    feed.add(Record.from_json(_image("b.jpg", "00fe")))
    feed.add(Record.from_json(_array("x")))
    with pytest.raises(IsADirectoryError):
        table.result()
    with pytest.raises(IsADirectoryError):
        NearDuplicates(table).result()
    assert data.result() == {"rows": 1, "files": ["data_stats.csv"]}
    assert not (folder / "stats.csv").exists()
    hashes.rmdir()
    assert _temporaries(folder) == []  # the table's own temporary files are gone


def test_a_manifest_that_cannot_be_read_fails_every_consumer(tmp_path: Path) -> None:
    folder = _folder(tmp_path, [_image("a.jpg", "00ff")])
    with open(folder / "manifest.jsonl", "a", encoding="utf-8") as fh:
        fh.write("{not json\n")
    feed = RecordFeed(folder)
    sheet = ReportSheet(feed)
    table, data = StatsTable(folder, feed), DataTable(folder, feed)
    for consumer in (table, NearDuplicates(table), data):
        with pytest.raises(LedgerError, match=r"manifest\.jsonl:2"):
            consumer.result()
    with pytest.raises(LedgerError, match=r"manifest\.jsonl:2"):
        write_report(folder, sheet)
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.jsonl"]


def test_sinks_are_added_before_the_feed_starts(tmp_path: Path) -> None:
    feed = RecordFeed(tmp_path)  # never fed, no manifest: an empty one
    table = StatsTable(tmp_path, feed)
    assert table.result() == {"rows": 0, "files": ["stats.csv"]}
    with pytest.raises(RuntimeError, match="add sinks before"):
        DataTable(tmp_path, feed)


def test_the_grouped_images_keys_and_thumbnails_are_read_back_whatever_the_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """StatsTable keeps 8 bytes an image in a temporary file (written 3 at a time here); the
    keys (any text, a newline included) and the thumbnails of the grouped ones come back from
    another, read in blocks that cut rows anywhere."""
    import app.collectors

    monkeypatch.setattr(app.collectors, "HASH_BUFFER", 3)
    records = [_image(f"k\n{i}é.jpg", f"{i:016x}") for i in range(0, 64, 8)]  # 1 bit apart
    records.append(_image("far.jpg", "f0f0f0f0f0f0f0f0"))
    records.append(_image("failed.jpg", "0000000000000000", status="failed"))
    folder = _folder(tmp_path, records)
    table = StatsTable(folder)
    dups = NearDuplicates(table)
    assert table.result()["rows"] == len(records)
    assert table._spill is not None
    table._spill.seek(0)
    whole = list(app.collectors._spilled(table._spill))
    for size in (1, 3, 7, 100):
        table._spill.seek(0)
        assert list(app.collectors._spilled(table._spill, size)) == whole
    assert len(whole) == len(records)
    assert table.hash_count == len(records)
    assert len(table.hashes) == len(records) % 3  # the rest is in the hash file
    (group,) = dups.result()["groups"]
    assert sorted(group) == sorted([r["key"] for r in records[:8]] + ["failed.jpg"])
    assert dups.thumbs["k\n8é.jpg"] == {"path": "64/k\n8é.jpg", "width": 64, "height": 48}
    assert "failed.jpg" not in dups.thumbs  # a failure has no output
    assert table._spill is None  # closed once the groups are found
    assert _temporaries(folder) == []


def _children() -> set[int]:
    """This process's children (a run earlier in the session may have left its forkserver)."""
    import psutil

    return {p.pid for p in psutil.Process().children(recursive=True)}


@pytest.mark.parametrize(("way", "in_parent"), [("in the parent", 100), ("in a child", 3)])
def test_both_ways_of_grouping_find_the_same_groups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, way: str, in_parent: int
) -> None:
    """Up to IN_PARENT hashes the parent groups them; more, a child process started as soon as
    the table has them all (before it writes stats.parquet), gone after."""
    import app.collectors
    import app.grouping

    hashes = {"a.jpg": "0", "b.jpg": "1", "c.jpg": "f0f0f0f0f0f0f0f0", "d.jpg": "0f0f0f0f0f0f0f0f"}
    records = [_image(key, value) for key, value in hashes.items()]
    monkeypatch.setattr(app.collectors, "IN_PARENT", in_parent)
    order: list[str] = []  # what happened, in order
    start = app.grouping.GroupingChild.__init__
    write_from = app.tables.ParquetStream.write_from

    def spy(child: Any, path: Path, max_distance: int) -> None:
        order.append(f"child of {len(path.read_bytes()) // 8} hashes")
        start(child, path, max_distance)

    def parquet(stream: Any, source: Any) -> bool:
        order.append("stats.parquet")
        return write_from(stream, source)

    monkeypatch.setattr(app.grouping.GroupingChild, "__init__", spy)
    monkeypatch.setattr(app.tables.ParquetStream, "write_from", parquet)
    before = _children()
    folder = _folder(tmp_path, records)
    table = StatsTable(folder)
    dups = NearDuplicates(table)
    assert table.result()["files"] == ["stats.csv", "stats.parquet"]
    child = ["child of 4 hashes"] if way == "in a child" else []
    assert order == [*child, "stats.parquet"]  # the child runs while the table is written
    assert dups.result()["groups"] == [["a.jpg", "b.jpg"]]
    assert _children() == before  # the child was waited for
    assert not app.children.LIVE
    assert _temporaries(folder) == []  # the hash file is gone


def test_a_group_of_thousands_shows_its_first_members_and_counts_the_rest(
    tmp_path: Path,
) -> None:
    """One placeholder image a web crawl saved a thousand times is one group: summary.json's
    groups list every member, the report shows the first GROUP_SHOWN with their thumbnails and
    counts the rest, and only their thumbnails are held (a report of every member was 3.2 MB
    for 20,000 copies, each thumbnail held in memory for it)."""
    from app.report import GROUP_SHOWN

    n = GROUP_SHOWN + 30
    records = [_image(f"copy{i:04d}.jpg", "0f0f0f0f0f0f0f0f") for i in reversed(range(n))]
    folder = _folder(tmp_path, [*records, _image("other.jpg", "f0f0f0f0f0f0f0f0")])
    table = StatsTable(folder)
    sheet = ReportSheet(table.feed)
    dups = NearDuplicates(table)
    assert table.result()["rows"] == n + 1
    (group,) = dups.result()["groups"]
    assert group == [f"copy{i:04d}.jpg" for i in range(n)]  # all of them, in order
    assert sorted(dups.thumbs) == group[:GROUP_SHOWN]  # the shown ones' thumbnails only
    summary = {"collected": {"near_duplicates": {"max_distance": 6, "groups": [group]}}}
    (folder / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    for made in (write_report(folder, sheet, dups.thumbs), write_report(folder)):  # the run's
        shown = made.read_text(encoding="utf-8").split('<div id="duplicates">', 1)[1]  # or not
        assert shown.count("<figure>") == GROUP_SHOWN
        assert shown.count('loading="lazy"') == GROUP_SHOWN  # each with its thumbnail
        assert "copy0000.jpg" in shown
        assert f"copy{n - 1:04d}.jpg" not in shown
        assert "… and 30 more in this group (summary.json)" in shown


def _large_run_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StatsTable:
    import app.collectors

    monkeypatch.setattr(app.collectors, "IN_PARENT", 1)
    return StatsTable(_folder(tmp_path, [_image("a.jpg", "0"), _image("b.jpg", "1")]))


def test_a_grouping_child_killed_fails_the_groups_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A child that dies (SIGKILL, as the kernel's out-of-memory killer does) fails the groups
    with how it ended; the tables stand, nothing is left behind."""
    import app.grouping

    kill = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    monkeypatch.setattr(app.grouping, "_PROGRAM", kill)
    before = _children()
    table = _large_run_table(tmp_path, monkeypatch)
    dups = NearDuplicates(table)
    assert table.result()["rows"] == 2
    with pytest.raises(app.grouping.GroupingFailed, match="killed by signal 9"):
        dups.result()
    assert _children() == before
    assert not app.children.LIVE
    assert _temporaries(table.folder) == []


def test_a_grouping_child_that_fails_or_cannot_start_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A child that exits with an error, one that answers something else than its result, and
    one that cannot start (no process left to fork): the groups fail, saying which."""
    import subprocess

    import app.grouping

    monkeypatch.setattr(app.grouping, "_PROGRAM", "raise SystemExit('no memory for the buckets')")
    table = _large_run_table(tmp_path / "a", monkeypatch)
    with pytest.raises(app.grouping.GroupingFailed, match="code 1: no memory for the buckets"):
        NearDuplicates(table).result()
    monkeypatch.setattr(app.grouping, "_PROGRAM", "print('hello')")
    table = _large_run_table(tmp_path / "b", monkeypatch)
    with pytest.raises(app.grouping.GroupingFailed, match="answered 6 bytes that are not its"):
        NearDuplicates(table).result()

    def no_fork(*args: Any, **kwargs: Any) -> None:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(subprocess, "Popen", no_fork)
    table = _large_run_table(tmp_path / "c", monkeypatch)
    dups = NearDuplicates(table)
    assert table.result()["files"] == ["stats.csv", "stats.parquet"]  # the table is written
    with pytest.raises(app.grouping.GroupingFailed, match=r"could not start: .*unavailable"):
        dups.result()
    assert _temporaries(table.folder) == []


def test_a_hash_file_that_cannot_be_written_at_the_end_fails_the_groups_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large run's last hashes go to the hash file when the table completes, for the child:
    when that write fails, the groups fail with the error and the tables are written."""
    import app.collectors
    import app.grouping

    monkeypatch.setattr(app.collectors, "HASH_BUFFER", 3)
    monkeypatch.setattr(app.collectors, "IN_PARENT", 1)
    folder = tmp_path / "out"
    folder.mkdir()
    feed = RecordFeed(folder)
    table = StatsTable(folder, feed)
    dups = NearDuplicates(table)
    for i in range(4):  # three in the file, the fourth in the buffer
        feed.add(Record.from_json(_image(f"{i}.jpg", f"{i:x}")))
    (hashes,) = (folder / name for name in _temporaries(folder))
    hashes.unlink()
    hashes.mkdir()  # where the last hash goes: a folder, not the file
    assert table.result() == {"rows": 4, "files": ["stats.csv", "stats.parquet"]}
    with pytest.raises(app.grouping.GroupingFailed, match=r"could not start: .*Is a directory"):
        dups.result()
    hashes.rmdir()
    assert _temporaries(folder) == []


def test_the_grouping_child_runs_the_interpreter_multiprocessing_is_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A program that embeds Python names its interpreter with ``multiprocessing.set_executable``
    (the process workers' forkserver runs it): the grouping child runs it too."""
    import sys
    from multiprocessing import spawn

    import app.collectors
    import app.grouping

    used = tmp_path / "used"
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\ntouch "{used}"\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    monkeypatch.setattr(spawn, "_python_exe", str(python))  # what set_executable sets
    monkeypatch.setattr(app.collectors, "IN_PARENT", 1)
    table = StatsTable(_folder(tmp_path, [_image("a.jpg", "0"), _image("b.jpg", "1")]))
    assert NearDuplicates(table).result()["groups"] == [["a.jpg", "b.jpg"]]
    assert used.exists()


def test_a_grouping_child_still_running_is_stopped_by_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run stopped (an error, Ctrl-C) between the child's start and its answer:
    process.run_process closes the groups, which kills and waits for the child."""
    import app.grouping

    monkeypatch.setattr(app.grouping, "_PROGRAM", "import time; time.sleep(60)")
    before = _children()
    table = _large_run_table(tmp_path, monkeypatch)
    dups = NearDuplicates(table)
    table.result()
    assert len(_children() - before) == 1
    dups.close()
    assert _children() == before
    assert not app.children.LIVE
    assert _temporaries(table.folder) == []


# -- tables written as they stream ----------------------------------------------------------------
COLUMNS = ("key", "value")
MIXED = {  # a column's values, chunk after chunk (two rows a chunk)
    "same": ["1", "2", "3", "4", "5"],
    "int then float": ["1", "2", "3", "4.5", "6"],
    "grey then colour means": ["12.500", "13.000", "1.000 2.000 3.000", "4.000 5.000 6.000"],
    "empty then int": ["", "", "", "7", ""],
    "int then bool": ["1", "0", "true", "false"],  # bool reads 1 and 0: bool
    "not bool then bool": ["2", "3", "true", "false"],  # bool does not read 2: string
    "timezone then text": ["2020-01-01T00:00:00Z", "2020-01-02T00:00:00Z", "x", "y"],
    "text then int": ["a", "b", "1", "2"],
}


@pytest.mark.parametrize("case", sorted(MIXED))
def test_chunked_tables_equal_the_whole_table(tmp_path: Path, case: str) -> None:
    """The CSV's bytes are DictWriter's over all rows; the Parquet table is what read_csv
    infers for the whole CSV, whatever each chunk infers on its own."""
    rows = [{"key": f"k{i}", "value": v} for i, v in enumerate(MIXED[case])]
    path = tmp_path / "t.csv"
    parquet = ParquetStream(tmp_path / "t.parquet", COLUMNS)
    table = CsvStream(path, COLUMNS, keep_empty=True, chunk_rows=2)
    for row in rows:
        table.write([row[c] for c in COLUMNS])
    assert table.commit()
    assert len(table.chunks) == (len(rows) + 1) // 2
    assert parquet.write_from(table)
    buf = io.StringIO()
    whole = csv.DictWriter(buf, fieldnames=COLUMNS)
    whole.writeheader()
    whole.writerows(rows)
    assert path.read_bytes() == buf.getvalue().encode()
    expected = pacsv.read_csv(pa.BufferReader(path.read_bytes()))
    got = pq.read_table(tmp_path / "t.parquet")
    assert got.schema.equals(expected.schema)
    assert got.equals(expected)
    assert sorted(os.listdir(tmp_path)) == ["t.csv", "t.parquet"]


def test_only_the_columns_named_are_dictionary_encoded(tmp_path: Path) -> None:
    """A column of few values gets a dictionary; one whose values all differ is written plain
    (a dictionary there only costs memory and bytes); the table read back is the CSV's."""
    columns = ["key", "status"]
    table = CsvStream(tmp_path / "t.csv", columns, keep_empty=True, chunk_rows=3)
    for i in range(10):
        table.write([f"k{i}", "ok" if i % 3 else "failed"])
    assert table.commit()
    parquet = ParquetStream(tmp_path / "t.parquet", columns, dictionary=["status", "absent"])
    assert parquet.write_from(table)
    meta = pq.ParquetFile(tmp_path / "t.parquet").metadata
    assert meta.num_row_groups == 4
    for group in range(meta.num_row_groups):
        key, status = (meta.row_group(group).column(i).encodings for i in range(2))
        assert not any("DICTIONARY" in e for e in key), key
        assert any("DICTIONARY" in e for e in status), status
    expected = pacsv.read_csv(tmp_path / "t.csv")
    assert pq.read_table(tmp_path / "t.parquet").equals(expected)


class _FakeGlibc:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[int, ...]]] = []

    def mallopt(self, param: Any, value: Any) -> int:
        self.calls.append(("mallopt", (param.value, value.value)))
        return 1

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(("malloc_trim", (pad,)))
        return 1


@pytest.mark.parametrize("user_threshold", [None, "65536"])
def test_parquet_is_written_with_large_blocks_mapped_unless_the_user_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, user_threshold: str | None
) -> None:
    """Before its first chunk, ParquetStream keeps glibc's mmap threshold at 128 KiB (glibc
    raises it as large blocks are freed, and the later chunks' buffers then fragmented the
    heap: the peak grew with the chunks); a threshold in the environment is the user's."""
    fake = _FakeGlibc()
    monkeypatch.setattr(pipeline.malloc, "glibc", lambda: fake)
    if user_threshold is None:
        monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    else:
        monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", user_threshold)
    table = CsvStream(tmp_path / "t.csv", ["key"], keep_empty=True, chunk_rows=2)
    for i in range(5):
        table.write([f"k{i}"])
    assert table.commit()
    assert ParquetStream(tmp_path / "t.parquet", ["key"]).write_from(table)
    mapped = [("mallopt", (-3, 128 * 1024))] if user_threshold is None else []
    assert fake.calls == mapped + [("malloc_trim", (0,))] * 3  # then a trim after each chunk
    assert pq.read_table(tmp_path / "t.parquet").num_rows == 5


def test_a_runs_stats_parquet_has_dictionaries_for_its_repeated_columns(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_process(ProcessConfig(inputs=(str(IMAGES),), output=str(out), quiet=True))
    pf = pq.ParquetFile(out / "stats.parquet")
    group = pf.metadata.row_group(0)
    encoded = {
        group.column(i).path_in_schema: any("DICTIONARY" in e for e in group.column(i).encodings)
        for i in range(group.num_columns)
    }
    assert {c for c, d in encoded.items() if d} == set(StatsTable.REPEATED)
    assert pf.read().num_rows == sum(1 for p in IMAGES.rglob("*") if p.is_file())


def test_csv_chunks_are_whole_rows_whatever_the_flushes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CSV text is written every FLUSH_ROWS rows (the memory of a run), and the chunks it
    records for the Parquet file still hold chunk_rows whole rows each (the last: the rest)."""
    monkeypatch.setattr(app.tables, "FLUSH_ROWS", 2)
    path = tmp_path / "t.csv"
    table = CsvStream(path, COLUMNS, keep_empty=True, chunk_rows=5)
    for i in range(12):
        table.write([f"k{i}", i])
        assert table._pending < 2  # flushed every 2 rows
    assert table.commit()
    data = path.read_bytes()
    assert table.header_size + sum(table.chunks) == len(data)
    at, rows = table.header_size, []
    for size in table.chunks:
        rows.append(data[at : at + size].decode().splitlines())
        at += size
    assert [len(r) for r in rows] == [5, 5, 2]
    assert rows[1][0] == "k5,5"
    assert rows[2][-1] == "k11,11"


def test_stats_table_in_many_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app.tables, "CHUNK_ROWS", 3)
    records = [_image(f"{i}.jpg", f"{i:04x}") for i in range(9)]
    greys = [_image(f"grey{i}.jpg", f"0f0{i}") for i in range(2)]
    for grey in greys:  # one channel: their own chunk would infer a double "mean"
        grey["result"]["stats"]["mean"] = [12.0]
    spied: list[bool] = []
    rewrite = ParquetStream._rewrite
    monkeypatch.setattr(
        ParquetStream, "_rewrite", lambda self, path: spied.append(True) or rewrite(self, path)
    )
    for name, extra in (("colour", records[:1]), ("mixed", greys)):
        folder = _folder(tmp_path / name, records + extra)
        rows = len(records + extra)
        table = StatsTable(folder)
        assert table.result() == {"rows": rows, "files": ["stats.csv", "stats.parquet"]}
        table.close()
        typed = {c: pa.type_for_alias(t) for c, t in StatsTable.TYPES.items()}
        expected = pacsv.read_csv(
            folder / "stats.csv", convert_options=pacsv.ConvertOptions(column_types=typed)
        )
        got = pq.read_table(folder / "stats.parquet")
        assert got.equals(expected)
        assert got.schema.equals(expected.schema)
        assert pq.ParquetFile(folder / "stats.parquet").metadata.num_row_groups == 4
        assert spied == []  # the types are the table's own, whatever a chunk holds
    assert got.schema.field("mean").type == pa.string()


def test_stats_parquet_keeps_each_columns_type_whatever_the_values(tmp_path: Path) -> None:
    """Keys of digits alone (a training set's row numbers, files named 0001) stay text with
    their zeros, a hash of digits stays its hex text: the columns' types were guessed from the
    values (key int64 [1, 2, 10], dhash 0 for "0000000000000000")."""
    records = [_image(k, "0000000000000000") for k in ("000000001", "0002", "10")]
    folder = _folder(tmp_path, records)
    stats = StatsTable(folder)
    assert stats.result()["files"] == ["stats.csv", "stats.parquet"]
    stats.close()  # (its temporary files)
    table = pq.read_table(folder / "stats.parquet")
    assert table.column("key").to_pylist() == ["000000001", "0002", "10"]
    assert table.column("dhash").to_pylist() == ["0000000000000000"] * 3
    assert {f.name: str(f.type) for f in table.schema if f.name in ("width", "sharpness")} == {
        "width": "int64",
        "sharpness": "double",
    }


def test_a_table_that_is_empty_now_leaves_no_earlier_one(tmp_path: Path) -> None:
    """A folder whose images (or data files) are no longer ok: stats.parquet (data_stats.csv)
    of an earlier run was left as it was, listing them, beside this run's empty stats.csv."""
    folder = _folder(tmp_path, [_image("a.jpg", "00ff"), _array("x.npy")])
    table, data = StatsTable(folder), DataTable(folder)
    assert table.result()["files"] == ["stats.csv", "stats.parquet"]
    assert data.result()["files"] == ["data_stats.csv"]
    table.close()
    failed = [
        {"key": k, "status": "failed", "error_type": "DecodeError"} for k in ("a.jpg", "x.npy")
    ]
    folder = _folder(tmp_path / "again", failed)
    for name in ("stats.parquet", "data_stats.csv"):
        shutil.copy(tmp_path / "out" / name, folder / name)  # as the earlier run left them
    table, data = StatsTable(folder), DataTable(folder)
    assert table.result() == {"rows": 0, "files": ["stats.csv"]}
    assert data.result() == {"rows": 0, "files": []}
    table.close()
    assert not (folder / "stats.parquet").exists()
    assert not (folder / "data_stats.csv").exists()


def test_a_child_ends_with_a_command_killed_outright(tmp_path: Path) -> None:
    """The command SIGKILLed (the OOM killer) stops none of its children: each watches a pipe
    only the command writes to, and exits once it closes. The near-duplicate grouping of a
    large run worked on for nobody, beside the next run in the same folder."""
    import signal
    import subprocess
    import sys
    import time

    script = (
        "import sys, time; sys.path.insert(0, sys.argv[1]); from app import children; "
        "p = children.start('import time; time.sleep(60)', []); print(p.pid, flush=True); "
        "time.sleep(60)"
    )
    with subprocess.Popen(
        [sys.executable, "-c", script, str(ROOT)], stdout=subprocess.PIPE, text=True
    ) as command:
        assert command.stdout is not None
        child = int(command.stdout.readline())
        os.kill(child, 0)  # it runs
        command.send_signal(signal.SIGKILL)
        command.wait(timeout=10)
    deadline = time.monotonic() + 10
    while True:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        with open(f"/proc/{child}/stat") as fh:  # a zombie waiting for init is gone too
            if fh.read().split(")")[-1].split()[0] == "Z":
                break
        assert time.monotonic() < deadline, "the child outlived its command"
        time.sleep(0.05)
