"""Numeric data files: chunked statistics equal one pass; CSV edge cases; .npz; process runs."""

from __future__ import annotations

import itertools
import json
import math
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from app.config import ProcessConfig
from app.process import run_process
from pipeline import Split
from stages.arraystats import ArrayStats, array_stats, merge, merge_all
from stages.data import DataError, DataOptions, crunch_part, plan
from stages.sources import DataFile
from tests.conftest import by_key

FAST = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def run_plan(path: Path, opts: DataOptions, member: str | None = None) -> dict[str, Any]:
    """What the pipeline does with one data file, in this process: plan, crunch parts, merge."""
    split = plan(DataFile(str(path), path.name, member), opts)
    assert isinstance(split, Split)
    return split.merge([crunch_part(p) for p in split.parts])  # type: ignore[no-any-return]


def check_against_numpy(s: dict[str, Any], a: npt.NDArray[Any]) -> None:
    flat = a.astype(np.float64).ravel()
    finite = flat[np.isfinite(flat)]
    assert s["count"] == int((~np.isnan(flat)).sum())
    assert s["missing"] == int(np.isnan(flat).sum())
    if finite.size == 0:
        assert s["mean"] is None
        assert s["histogram"] is None
        return
    scale = max(1.0, float(np.abs(finite).max()))
    assert math.isclose(s["mean"], float(finite.mean()), rel_tol=1e-9, abs_tol=1e-12 * scale)
    assert math.isclose(s["std"], float(finite.std()), rel_tol=1e-7, abs_tol=1e-9 * scale)
    assert math.isclose(s["sumsq"], float(np.dot(finite, finite)), rel_tol=1e-9, abs_tol=1e-9)
    if not np.isinf(flat).any():
        assert s["min"] == float(finite.min())
        assert s["max"] == float(finite.max())
    h = s["histogram"]
    edges = h["low"] + h["width"] * np.arange(len(h["counts"]) + 1)
    expected, _ = np.histogram(finite, bins=edges)
    assert list(expected) == h["counts"]  # numpy puts the max into the last bin, as we do
    assert sum(h["counts"]) == finite.size


floats = st.one_of(st.floats(-1e6, 1e6, width=64), st.just(math.nan))
arrays = hnp.arrays(
    dtype=np.float64,
    shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=40),
    elements=floats,
)
dtypes = st.sampled_from(["float64", "float32", "int32", "uint8", "int64"])


@FAST
@given(a=arrays, dtype=dtypes, chunk=st.integers(1, 5000))
def test_chunked_npy_statistics_equal_one_pass(
    a: npt.NDArray[Any], dtype: str, chunk: int, tmp_path: Path
) -> None:
    kind = np.dtype(dtype)
    a = a.astype(kind) if kind.kind == "f" else np.nan_to_num(np.abs(a)).astype(kind)
    path = tmp_path / "a.npy"
    np.save(path, a)
    value = run_plan(path, DataOptions(chunk_size=chunk, bins=16))
    assert value["shape"] == list(a.shape)
    assert value["kind"] == "array"
    check_against_numpy(value["stats"], a)
    one = run_plan(path, DataOptions(chunk_size=0, bins=16))
    assert one["chunks"] <= 1
    assert one["stats"]["histogram"] == value["stats"]["histogram"]  # exactly, any chunking
    assert one["stats"]["count"] == value["stats"]["count"]


@FAST
@given(
    a=hnp.arrays(np.float64, st.integers(0, 3000), elements=st.floats(allow_nan=True, width=64)),
    cuts=st.lists(st.integers(0, 3000), max_size=8),
    bins=st.integers(1, 100),
)
def test_merge_is_exact_for_any_split_and_nan_pattern(
    a: npt.NDArray[np.float64], cuts: list[int], bins: int
) -> None:
    bounds = sorted({0, a.size, *(c for c in cuts if c <= a.size)})
    parts = [array_stats(a[lo:hi], max_bins=bins) for lo, hi in itertools.pairwise(bounds)]
    merged = merge_all(parts) if parts else array_stats(a, max_bins=bins)
    whole = array_stats(a, max_bins=bins)
    assert merged.histogram == whole.histogram
    assert (merged.count, merged.nan_count, merged.neg_inf, merged.pos_inf) == (
        whole.count,
        whole.nan_count,
        whole.neg_inf,
        whole.pos_inf,
    )
    for x, y in ((merged.min, whole.min), (merged.max, whole.max)):
        assert x == y or (math.isnan(x) and math.isnan(y))
    if whole.finite and math.isfinite(whole.mean) and abs(whole.mean) < 1e300:
        scale = max(1.0, abs(whole.histogram.lo), abs(whole.histogram.hi))  # type: ignore[union-attr]
        assert math.isclose(merged.mean, whole.mean, rel_tol=1e-9, abs_tol=1e-12 * scale)


def test_array_stats_basics_and_round_trip() -> None:
    s = array_stats(np.array([1.0, 2.0, np.nan, 3.0, np.inf]), max_bins=8)
    assert (s.count, s.nan_count, s.pos_inf, s.finite) == (4, 1, 1, 3)
    assert s.mean == 2.0
    assert s.max == math.inf
    assert s.min == 1.0
    assert math.isclose(s.std, float(np.std([1.0, 2.0, 3.0])))
    d = s.to_dict()
    back = ArrayStats.from_dict(json.loads(json.dumps(d)), max_bins=8, exp_floor=-32)
    assert back.histogram == s.histogram
    assert back.to_dict() == d
    ints = array_stats(np.arange(1000, dtype=np.int16), max_bins=10)
    assert ints.histogram is not None
    assert ints.histogram.width == 128.0  # integer-wide bins
    with pytest.raises(ValueError, match="numeric"):
        array_stats(np.array(["a"]))
    with pytest.raises(ValueError, match="max_bins"):
        array_stats(np.arange(3), max_bins=0)
    huge = array_stats(np.array([1e308, 1e308, -5.0]), max_bins=1).to_dict()
    json.dumps(huge, allow_nan=False)  # bins wider than the float range: edges None, exp kept
    assert huge["histogram"]["counts"] == [1, 2]
    assert huge["histogram"]["width"] is None
    empty = merge(array_stats(np.array([np.nan])), array_stats(np.empty(0)))
    assert empty.count == 0
    assert empty.nan_count == 1
    assert math.isnan(empty.mean)


# -------------------------------------------------------------------------------------- CSV
def write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def test_csv_quoted_fields_missing_values_and_bad_cells(tmp_path: Path) -> None:
    text = (
        'id,"name, quoted",val,note\n'
        '1,"Smith, J",1.5,"say ""hi"""\n'
        "2,,NA,\n"
        "3,x,,plain\n"
        "4,y,abc,bad cell above? no: here\n"
        "5,z,2.5,ok\n"
        "6,w\n"  # ragged: too few fields
        "7,v,3.5,x,extra\n"  # ragged: too many
        "8,u,-1e3,last\n"
    )
    value = run_plan(write(tmp_path / "t.csv", text), DataOptions())
    assert value["header"] == ["id", "name, quoted", "val", "note"]
    assert set(value["columns"]) == {"id", "val"}
    assert value["non_numeric"] == {"name, quoted": 5, "note": 5}
    assert value["rows"] == 6
    assert value["bad_rows"] == 2
    val = value["columns"]["val"]
    assert val["count"] == 3
    assert val["missing"] == 2  # NA and empty
    assert val["sum"] == 1.5 + 2.5 - 1e3
    assert value["bad_cells"] == {"val": 1}
    assert value["first_bad"]["line"] in (5, 7)  # the bad cell (line 5) or first ragged row
    assert value["columns"]["id"]["count"] == 6


def test_csv_bad_cell_is_reported_with_its_line(tmp_path: Path) -> None:
    rows = "".join(f"{i},{i * 2}\n" for i in range(100))
    value = run_plan(write(tmp_path / "t.csv", "a,b\n" + rows + "7,oops\n"), DataOptions())
    assert value["bad_cells"] == {"b": 1}
    assert value["first_bad"] == {"column": "b", "value": "oops", "line": 102}
    assert value["columns"]["b"]["count"] == 100


def test_csv_header_only_empty_file_and_tsv(tmp_path: Path) -> None:
    value = run_plan(write(tmp_path / "h.csv", "a,b\r\n"), DataOptions())
    assert value["rows"] == 0
    assert value["columns"]["a"]["count"] == 0
    with pytest.raises(DataError, match="empty file"):
        run_plan(write(tmp_path / "e.csv", b""), DataOptions())
    tsv = run_plan(write(tmp_path / "x.tsv", "a\tb\r\n1\t2\r\n3\t4\r\n"), DataOptions())
    assert tsv["delimiter"] == "\t"
    assert tsv["columns"]["b"]["sum"] == 6.0


def test_csv_non_utf8_bytes_are_bad_cells_not_a_crash(tmp_path: Path) -> None:
    data = b"x,label\n1,caf\xe9\n2,\xff\xfe\n\xff,ok\n4,fine\n"
    value = run_plan(write(tmp_path / "l.csv", data), DataOptions())
    assert value["columns"]["x"]["count"] == 3
    assert value["bad_cells"] == {"x": 1}
    assert value["non_numeric"] == {"label": 4}


def test_csv_columns_and_delimiter_options(tmp_path: Path) -> None:
    path = write(tmp_path / "s.csv", "a;b;c\n1;2;3\n4;5;6\n")
    value = run_plan(path, DataOptions(columns=("c",)))
    assert value["delimiter"] == ";"
    assert list(value["columns"]) == ["c"]
    with pytest.raises(DataError, match=r"no column\(s\) \['zz'\]"):
        run_plan(path, DataOptions(columns=("zz",)))
    forced = run_plan(path, DataOptions(delimiter=","))
    assert forced["header"] == ["a;b;c"]
    assert forced["non_numeric"] == {"a;b;c": 2}


@pytest.mark.parametrize("chunk", [0, 200, 37])
def test_a_stray_quote_costs_its_line_not_the_rest(tmp_path: Path, chunk: int) -> None:
    """A quote opened in a text field and not closed on its line: pyarrow reads on past the
    line's end to the part's end (or the next quote) and made all of it one bad row; 90 rows of
    100 were gone, counted as "bad_rows: 1", the figures changing with --chunk-size. Now that
    line alone is a bad row, at its line, and the rest is read."""
    rows = [f"item{i},{i}.5,{i}" for i in range(100)]
    rows[10] = '"unterminated,499,1'
    rows[60] = 'x"y,1,2'  # a quote inside a field: not a quoted field, fine
    rows[70] = '"again,7'
    path = write(tmp_path / "q.csv", "name,price,qty\n" + "\n".join(rows) + "\n")
    value = run_plan(path, DataOptions(chunk_size=chunk))
    assert value["rows"] == 98
    assert value["bad_rows"] == 2
    assert value["first_bad"] == {"what": "a quote not closed on its line", "line": 12}
    price = [float(f"{i}.5") for i in range(100) if i not in (10, 60, 70)] + [1.0]
    assert math.isclose(value["columns"]["price"]["sum"], sum(price))


@pytest.mark.parametrize("chunk", [0, 8, 1000])
def test_a_stray_quote_on_the_last_line_is_a_bad_row(tmp_path: Path, chunk: int) -> None:
    """A quote left open on a part's last line ends with the data: pyarrow made it a good row
    (its numbers counted), and the figures changed with --chunk-size."""
    mid = run_plan(
        write(tmp_path / "m.csv", 'a,b,t\n1,2,x\n3,4,"stray\n5,6,y\n7,8,z\n'),
        DataOptions(chunk_size=chunk),
    )
    assert (mid["rows"], mid["bad_rows"], mid["columns"]["a"]["sum"]) == (3, 1, 13.0)
    assert mid["first_bad"] == {"what": "a quote not closed on its line", "line": 3}
    cut = run_plan(
        write(tmp_path / "c.csv", 'a,b,t\n1,2,x\n3,4,"stray'), DataOptions(chunk_size=chunk)
    )
    assert (cut["rows"], cut["bad_rows"], cut["columns"]["a"]["sum"]) == (1, 1, 1.0)


def test_a_stray_quote_in_a_part_over_a_mib_and_many_of_them(tmp_path: Path) -> None:
    """The reader reads a part in blocks of 1 MiB: a quote left open past one failed the whole
    file ("out of sync with chunker"), at the default --chunk-size. And more than 100 such
    lines failed it too (a cap that a search from the line after each does not need)."""
    lines = ["id,v,note"] + [f"{i},{i % 7},ok" for i in range(150_000)]
    lines[1001] = '1000,6,"unterminated note'
    value = run_plan(write(tmp_path / "big.csv", "\n".join(lines) + "\n"), DataOptions())
    assert (value["rows"], value["bad_rows"]) == (149_999, 1)
    assert value["first_bad"] == {"what": "a quote not closed on its line", "line": 1002}
    many = ["id,v,note"] + [
        f'{i},{i % 7},"unterminated' if i % 130 == 0 else f"{i},{i % 7},ok" for i in range(20_000)
    ]
    value = run_plan(write(tmp_path / "many.csv", "\n".join(many) + "\n"), DataOptions())
    assert (value["rows"], value["bad_rows"]) == (20_000 - 154, 154)


def test_csv_first_bad_is_the_first_bad_line_in_the_file(tmp_path: Path) -> None:
    """The first bad line, of any kind, at its line in the file: a bad cell was taken over an
    earlier bad row, and blank lines (which the reader skips) shifted the lines said."""
    lines = ["x,y"] + [f"{i},{i * 2}" for i in range(1, 200)]
    lines[9] = "1,2,3"  # line 10: wrong number of fields
    lines[149] = "oops,5"  # line 150: a bad cell
    value = run_plan(write(tmp_path / "o.csv", "\n".join(lines) + "\n"), DataOptions())
    assert value["first_bad"] == {"what": "wrong number of fields", "line": 10}
    # a short row is a piece of an earlier line: its own line is the one said
    short = run_plan(write(tmp_path / "s.csv", "a,b,c\n1,2,5\n3,4,6\n5\n7,8,9\n"), DataOptions())
    assert short["first_bad"] == {"what": "wrong number of fields", "line": 4}
    lines = ["x,y"] + [f"{i},{i * 2}" for i in range(1, 200)]
    lines[20] = lines[21] = ""
    lines[30] = "\r"  # a blank line of a CRLF file
    lines[99] = "oops,5"  # line 100
    for chunk in (0, 100):
        path = write(tmp_path / "b.csv", "\n".join(lines) + "\n")
        value = run_plan(path, DataOptions(chunk_size=chunk))
        assert value["first_bad"] == {"column": "x", "value": "oops", "line": 100}
        assert value["rows"] == 196


def test_csv_dates_times_and_booleans_are_other_columns(tmp_path: Path) -> None:
    """A date, time or timestamp column failed the whole file (TypeError from float(date));
    a true/false column was "numeric" with every cell bad."""
    body = "".join(
        f"2024-01-{i:02d},2024-01-{i:02d} 10:00:00,10:{i:02d}:00,{'true' if i % 2 else 'false'},"
        f"{i * 1.5}\n"
        for i in range(1, 29)
    )
    value = run_plan(write(tmp_path / "d.csv", "day,at,time,flag,temp\n" + body), DataOptions())
    assert list(value["columns"]) == ["temp"]
    assert value["non_numeric"] == {"day": 28, "at": 28, "time": 28, "flag": 28}
    assert value["bad_cells"] == {}
    assert value["columns"]["temp"]["sum"] == sum(i * 1.5 for i in range(1, 29))


def test_csv_latin1_bytes_in_a_bad_row_are_not_a_failure(tmp_path: Path) -> None:
    """A bad row holding bytes that are not UTF-8: pyarrow decodes its text for the row
    handler, which raised, failing the whole file with a traceback on stderr."""
    rows = ["city,temp,load"] + [f"Zürich,{i},{i * 2}" for i in range(50)]
    rows[30] = "Genève,1,2,3"
    path = write(tmp_path / "l.csv", ("\n".join(rows) + "\n").encode("latin-1"))
    value = run_plan(path, DataOptions())
    assert value["rows"] == 49
    assert value["bad_rows"] == 1
    assert value["first_bad"] == {"what": "wrong number of fields", "line": 31}
    assert value["non_numeric"] == {"city": 49}


def test_csv_that_is_no_text_fails_with_the_reason(tmp_path: Path) -> None:
    """A gzipped file named .csv, or a binary one, was ``ok`` with a header of junk and no
    rows."""
    import gzip

    with pytest.raises(DataError, match="gzip-compressed data, not a text CSV"):
        run_plan(write(tmp_path / "g.csv", gzip.compress(b"a,b\n1,2\n" * 100)), DataOptions())
    utf16 = "a,b\n1,2\n".encode("utf-16")
    with pytest.raises(DataError, match=r"NUL bytes .* not a text CSV"):
        run_plan(write(tmp_path / "u.csv", utf16), DataOptions())


def test_csv_header_longer_than_the_sample_and_repeated_columns(tmp_path: Path) -> None:
    """A header line over SAMPLE_BYTES (1 MiB) was cut there, its tail read as data: wrong
    columns, no rows, ``ok``. ``--columns a,a`` failed every file (a KeyError)."""
    n = 2_000  # long names: the header's length matters, not the number of columns
    header = ",".join(f"col{i:07d}_" + "x" * 600 for i in range(n))
    path = write(tmp_path / "w.csv", header + "\n" + ",".join(map(str, range(n))) + "\n")
    assert len(header) > (1 << 20)
    value = run_plan(path, DataOptions())
    assert len(value["header"]) == n
    assert value["rows"] == 1
    assert value["columns"][f"col{n - 1:07d}_" + "x" * 600]["sum"] == n - 1
    small = write(tmp_path / "s.csv", "a,b\n1,2\n3,4\n")
    assert list(run_plan(small, DataOptions(columns=("a", "a")))["columns"]) == ["a"]


@FAST
@given(chunk=st.integers(1, 400), rows=st.integers(0, 60))
def test_csv_chunk_boundaries_never_lose_or_repeat_a_line(
    chunk: int, rows: int, tmp_path: Path
) -> None:
    lines = [f'{i},"{"q" * (i % 7)}",{i * 0.25 if i % 5 else ""}\n' for i in range(rows)]
    path = write(tmp_path / "c.csv", "n,s,v\n" + "".join(lines))
    split = run_plan(path, DataOptions(chunk_size=chunk))
    whole = run_plan(path, DataOptions(chunk_size=0))
    assert split["rows"] == whole["rows"] == rows
    assert split["columns"]["n"] == whole["columns"]["n"] or math.isclose(
        split["columns"]["n"]["sum"], whole["columns"]["n"]["sum"]
    )
    assert split["columns"]["n"]["count"] == rows
    assert split["columns"]["v"]["missing"] == whole["columns"]["v"]["missing"]


# -------------------------------------------------------------------------------------- .npz
def test_npz_stored_and_compressed_members(tmp_path: Path) -> None:
    a, b = np.arange(10_000, dtype=np.int32).reshape(100, 100), np.linspace(0, 1, 777)
    np.savez(tmp_path / "s.npz", a=a, b=b)
    np.savez_compressed(tmp_path / "c.npz", b=b)
    stored = run_plan(tmp_path / "s.npz", DataOptions(chunk_size=4096), member="a.npy")
    assert stored["chunks"] == 10
    assert stored["shape"] == [100, 100]
    check_against_numpy(stored["stats"], a)
    compressed = run_plan(tmp_path / "c.npz", DataOptions(chunk_size=64), member="b.npy")
    assert compressed["chunks"] == 1  # deflate cannot seek: one part
    check_against_numpy(compressed["stats"], b)


def test_bad_npy_files_fail_with_the_reason(tmp_path: Path) -> None:
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="not numeric"):
        run_plan(tmp_path / "obj.npy", DataOptions())
    np.save(tmp_path / "t.npy", np.arange(1000.0))
    raw = (tmp_path / "t.npy").read_bytes()
    write(tmp_path / "t.npy", raw[:-100])
    with pytest.raises(DataError, match="truncated"):
        run_plan(tmp_path / "t.npy", DataOptions())
    write(tmp_path / "junk.npy", b"not numpy at all")
    with pytest.raises(DataError, match=r"not a valid \.npy header"):
        run_plan(tmp_path / "junk.npy", DataOptions())


# ------------------------------------------------------------------------------ through process
@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    rng = np.random.default_rng(7)
    np.save(d / "big.npy", rng.normal(3.0, 2.0, 300_000))
    np.save(d / "big2.npy", rng.normal(-1.0, 1.0, 300_000))
    np.savez(d / "sub" / "pair.npz", x=np.arange(50), y=np.ones((3, 4)))
    write(d / "table.csv", "a,b,label\n" + "".join(f"{i},{i % 3},n{i}\n" for i in range(5000)))
    write(d / "empty.csv", b"")
    write(d / "broken.npz", b"PK not really a zip")
    write(d / "notes.txt", "hello")
    return d


def test_process_runs_data_files_in_chunks_with_one_record_each(
    data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    cfg = ProcessConfig(inputs=(str(data_dir),), output=str(out), chunk_size=100_000, quiet=True)
    result = run_process(cfg)
    recs = by_key(out)
    assert set(recs) == {
        "big.npy",
        "big2.npy",
        "sub/pair.npz:x",
        "sub/pair.npz:y",
        "table.csv",
        "empty.csv",
        "broken.npz",
        "notes.txt",
    }
    assert len((out / "manifest.jsonl").read_text().splitlines()) == len(recs)
    big = recs["big.npy"]["result"]
    assert big["chunks"] == 24  # 2.4 MB of float64 in 100 kB parts
    check_against_numpy(big["stats"], np.load(data_dir / "big.npy"))
    assert recs["sub/pair.npz:y"]["result"]["stats"]["sum"] == 12.0
    assert recs["table.csv"]["result"]["columns"]["b"]["sum"] == sum(i % 3 for i in range(5000))
    assert recs["empty.csv"]["status"] == "failed"
    assert "empty file" in recs["empty.csv"]["error"]
    assert recs["broken.npz"]["status"] == "failed"
    assert recs["broken.npz"]["stage"] == "sources"
    assert recs["notes.txt"]["status"] == "skipped"
    assert result.counts == {"ok": 5, "failed": 2, "skipped": 1}
    crunch = next(s for s in result.stages if s.name == "crunch")
    assert crunch.items > 48  # every part of both big arrays went through the workers

    summary = json.loads((out / "summary.json").read_text())
    groups = summary["collected"]["data_aggregate"]["groups"]
    both = next(g for g in groups if g["kind"] == "array" and g["shape"] == [300_000])
    assert both["files"] == 2
    together = np.concatenate([np.load(data_dir / "big.npy"), np.load(data_dir / "big2.npy")])
    check_against_numpy(both["stats"], together)
    report = (out / "report.html").read_text()
    assert '<table id="data">' in report
    assert "<td>table.csv</td><td>b</td>" in report
    table = (out / "data_stats.csv").read_text().splitlines()
    assert table[0].startswith("key,column,count")
    assert any(r.startswith("table.csv,b,") for r in table)


def test_process_resume_redoes_only_what_changed(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    images = Path(__file__).resolve().parent.parent / "sample_data" / "images"
    inputs = (str(data_dir), str(images))
    run_process(ProcessConfig(inputs=inputs, output=str(out), quiet=True))
    again = run_process(ProcessConfig(inputs=inputs, output=str(out), quiet=True))
    assert again.counts.get("ok", 0) == 0  # everything done is reused
    changed = run_process(ProcessConfig(inputs=inputs, output=str(out), bins=16, quiet=True))
    recs = by_key(out)
    data_keys = {k for k in recs if k.startswith("in/") and not k.endswith((".txt",))}
    redone = {k for k, r in recs.items() if r["status"] == "ok"}
    assert changed.counts["ok"] == len(redone)
    ok_data = {k for k in data_keys if recs[k]["status"] == "ok"}
    assert ok_data
    assert redone == ok_data  # new histogram bins redo the data, not the images
    hist = recs["in/big.npy"]["result"]["stats"]["histogram"]
    assert len(hist["counts"]) <= 16
    groups = json.loads((out / "summary.json").read_text())["collected"]["data_aggregate"]
    both = next(g for g in groups["groups"] if g["kind"] == "array" and g["shape"] == [300_000])
    assert len(both["stats"]["histogram"]["counts"]) <= 16  # the aggregate keeps --bins too


def test_data_files_inside_a_zip_that_is_not_one(tmp_path: Path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    with zipfile.ZipFile(d / "odd.npz", "w") as zf:
        zf.writestr("readme.txt", "no arrays here")
    out = tmp_path / "out"
    run_process(ProcessConfig(inputs=(str(d),), output=str(out), quiet=True))
    rec = by_key(out)["odd.npz"]
    assert rec["status"] == "skipped"
    assert "no arrays" in rec["reason"]


def test_csv_options_redo_the_tables_not_the_arrays(tmp_path: Path) -> None:
    """--columns and --delimiter shape CSV figures only: they redid every .npy and .npz array
    too (one fingerprint for all data files); --bins redoes both."""
    d, out = tmp_path / "in", tmp_path / "out"
    d.mkdir()
    np.save(d / "p.npy", np.arange(10.0))
    np.savez(d / "z.npz", a=np.ones(3), b=np.zeros(2))
    write(d / "t.csv", "x,y\n1,2\n3,4\n")

    def run(**kw: object) -> dict[str, int]:
        cfg = ProcessConfig.from_mapping({"inputs": [str(d)], "output": str(out), **kw})
        return dict(run_process(cfg).counts)

    assert run() == {"ok": 4}
    assert run(columns="x") == {"ok": 1, "reused": 3}
    assert by_key(out)["t.csv"]["result"]["header"] == ["x", "y"]
    assert list(by_key(out)["t.csv"]["result"]["columns"]) == ["x"]
    assert run(delimiter=";") == {"ok": 1, "reused": 3}
    assert by_key(out)["t.csv"]["result"]["header"] == ["x,y"]
    assert run(delimiter=";", bins=8) == {"ok": 4}


def test_sample_data_becomes_what_its_readme_says(tmp_path: Path) -> None:
    data = Path(__file__).resolve().parent.parent / "sample_data" / "data"
    out = tmp_path / "out"
    result = run_process(ProcessConfig(inputs=(str(data),), output=str(out), quiet=True))
    assert result.counts == {"ok": 4}
    recs = by_key(out)
    grid = recs["temperature_grid.npy"]["result"]["stats"]
    assert (grid["count"], grid["missing"]) == (19196, 4)
    assert recs["arrays.npz:weights"]["result"]["shape"] == [50, 40]
    assert recs["arrays.npz:counts"]["result"]["stats"]["count"] == 5000
    sensors = recs["sensors.csv"]["result"]
    temp = sensors["columns"]["temp_c"]
    assert (temp["count"], temp["missing"]) == (988, 11)
    assert sensors["bad_cells"] == {"temp_c": 1}
    assert sensors["first_bad"]["line"] == 501
    assert sensors["non_numeric"] == {"station": 1000, "note": 1000}


def test_an_array_under_an_image_name_gets_the_statistics_of_a_data_file(tmp_path: Path) -> None:
    """A local file goes to a resize worker unopened; when its first bytes say ``.npy`` the
    worker makes its statistics there, part after part, the same as for an ``.npy`` name (read
    -> crunch workers -> merge): same plan, same chunks, same merged values."""
    src = tmp_path / "in"
    src.mkdir()
    values = np.random.default_rng(7).normal(size=60_000)
    values[::97] = np.nan
    np.save(src / "named.npy", values)
    (src / "hidden.jpg").write_bytes((src / "named.npy").read_bytes())
    out = tmp_path / "out"
    cfg = ProcessConfig(inputs=(str(src),), output=str(out), chunk_size=100_000, quiet=True)
    result = run_process(cfg)
    assert result.counts == {"ok": 2}
    recs = by_key(out)
    named, hidden = recs["named.npy"]["result"], recs["hidden.jpg"]["result"]
    assert hidden["chunks"] == named["chunks"] == 5  # 480 kB of float64 in 100 kB parts
    assert hidden == named
    check_against_numpy(hidden["stats"], values)
    assert not (out / "512").exists()  # no thumbnail: it is not an image
    stages = {s.name: s.items for s in result.stages}
    assert stages["read"] == 1  # the .npy name: planned in the parent's read threads
    assert stages["crunch"] == 5  # its parts; the other one's ran inside its resize call


def test_the_arrays_an_npz_no_longer_holds_are_gone(tmp_path: Path) -> None:
    """An .npz rewritten with fewer arrays (or made unreadable): the arrays no longer in it
    stayed ``ok`` with their old figures, for good; they are ``skipped``, input gone."""
    from app.gone import REASON_MEMBER_GONE

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    np.savez(src / "pack.npz", x=np.arange(4.0), y=np.arange(3.0), z=np.ones(2))
    cfg = ProcessConfig(inputs=(str(src),), output=str(out), quiet=True)
    run_process(cfg)
    np.savez(src / "pack.npz", x=np.arange(5.0))
    run_process(cfg)
    recs = by_key(out)
    assert recs["pack.npz:x"]["status"] == "ok"
    for gone in ("pack.npz:y", "pack.npz:z"):
        assert (recs[gone]["status"], recs[gone]["reason"]) == ("skipped", REASON_MEMBER_GONE)
    (src / "pack.npz").write_bytes(b"garbage")
    run_process(cfg)
    recs = by_key(out)
    assert recs["pack.npz"]["status"] == "failed"
    assert recs["pack.npz:x"]["reason"] == REASON_MEMBER_GONE
    run_process(cfg)  # a run that finds them gone already changes nothing
    assert by_key(out)["pack.npz:x"]["run"] == recs["pack.npz:x"]["run"]
