"""Edge cases of numeric arrays, through real runs: ±inf and overflow in the group statistics,
exact integer bounds, big-endian dtypes, extended precision and corrupt ``.npy`` headers."""

from __future__ import annotations

import io
import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from app.config import ProcessConfig
from app.process import run_process
from stages.arraystats import array_stats
from tests.conftest import by_key

pytestmark = pytest.mark.timeout(120)

EXACT = ("count", "missing", "min", "max", "neg_inf", "pos_inf", "histogram")


def run(inputs: Path, out: Path, **options: Any) -> dict[str, dict[str, Any]]:
    """One real run over ``inputs``; its records by key."""
    mapping = {"inputs": [str(inputs)], "output": str(out), "quiet": True, **options}
    run_process(ProcessConfig.from_mapping(mapping))
    return by_key(out)


def groups(out: Path) -> list[dict[str, Any]]:
    summary = json.loads((out / "summary.json").read_text())
    found: list[dict[str, Any]] = summary["collected"]["data_aggregate"]["groups"]
    return found


def the_group(out: Path, shape: list[int]) -> dict[str, Any]:
    (group,) = [g for g in groups(out) if g["kind"] == "array" and g["shape"] == shape]
    return group


def close(a: float | None, b: float | None) -> bool:
    return a is b is None or (a is not None and b is not None and math.isclose(a, b))


@pytest.mark.parametrize(
    "parts",
    [
        ([-np.inf, 1.0], [2.0, 3.0]),  # the reviewer's case: min is -inf, not 2.0
        ([np.inf, 1.0], [2.0, -3.0]),
        ([-np.inf, np.nan], [np.inf, np.nan]),  # no finite value at all
        ([np.inf, np.inf], [-np.inf, 5.0]),
        ([1e200, -1e200], [3e200, -3e200]),  # each file's M2 overflows: the group's too
        ([1e200, -1e200], [1.0, 2.0]),
    ],
)
def test_group_statistics_equal_one_file_holding_all_values(
    tmp_path: Path, parts: tuple[list[float], list[float]]
) -> None:
    """Files merged in the summary say what one file with all their values says (to_dict writes
    ±inf and overflows as null: reading them back as NaN/0 gave min 2.0 and std 0.0)."""
    d = tmp_path / "in"
    d.mkdir()
    for i, values in enumerate(parts):
        np.save(d / f"part{i}.npy", np.array(values))
    np.save(d / "all.npy", np.concatenate([np.array(p) for p in parts]))
    out = tmp_path / "out"
    whole = run(d, out)["all.npy"]["result"]["stats"]
    merged = the_group(out, [len(parts[0])])
    assert merged["files"] == 2
    got = merged["stats"]
    assert {k: got[k] for k in EXACT} == {k: whole[k] for k in EXACT}
    for k in ("mean", "std", "sumsq", "m2"):
        assert close(got[k], whole[k]), (k, got[k], whole[k])


def test_group_std_is_unknown_not_zero_when_a_file_overflowed(tmp_path: Path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    np.save(d / "a.npy", np.array([1e200, -1e200]))
    np.save(d / "b.npy", np.array([3e200, -3e200]))
    out = tmp_path / "out"
    recs = run(d, out)
    assert recs["a.npy"]["result"]["stats"]["std"] is None  # overflowed: unknown
    stats = the_group(out, [2])["stats"]
    assert (stats["std"], stats["m2"], stats["sumsq"]) == (None, None, None)
    assert (stats["min"], stats["max"], stats["count"]) == (-3e200, 3e200, 4)


def test_a_file_with_minus_inf_reports_min_as_its_group_does(tmp_path: Path) -> None:
    """One file's record says min null (-inf) with neg_inf 1; so does the group holding it, with
    the finite bounds in the histogram, never the other file's 2.0."""
    d = tmp_path / "in"
    d.mkdir()
    np.save(d / "a.npy", np.array([-np.inf, 1.0]))
    np.save(d / "b.npy", np.array([2.0, 3.0]))
    out = tmp_path / "out"
    one = run(d, out)["a.npy"]["result"]["stats"]
    assert (one["min"], one["neg_inf"], one["histogram"]["finite_min"]) == (None, 1, 1.0)
    stats = the_group(out, [2])["stats"]
    assert (stats["min"], stats["max"], stats["neg_inf"]) == (None, 3.0, 1)
    assert (stats["histogram"]["finite_min"], stats["histogram"]["finite_max"]) == (1.0, 3.0)
    assert (stats["mean"], stats["count"]) == (2.0, 4)


BIG = 1_700_000_000_123_456_999  # not a float64: rounds to 1.700000000123457e+18


def test_integer_min_and_max_are_exact_across_chunks_and_files(tmp_path: Path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    a = np.full(300_000, BIG - 10**6, dtype=np.int64)  # 2.4 MB: several chunks and blocks
    a[123_456], a[-1] = BIG - 2**40 - 1, BIG  # min in a middle chunk, max in the last one
    np.save(d / "a.npy", a)
    b = np.full(300_000, 7, dtype=np.int64)
    b[5] = -(2**63)
    np.save(d / "b.npy", b)
    np.save(d / "u.npy", np.array([2**64 - 1, 3], dtype=np.uint64))
    out = tmp_path / "out"
    recs = run(d, out, chunk_size="500kB")
    stats = recs["a.npy"]["result"]["stats"]
    assert recs["a.npy"]["result"]["chunks"] > 1
    assert (stats["min"], stats["max"]) == (BIG - 2**40 - 1, BIG)
    assert all(type(stats[k]) is int for k in ("min", "max"))
    u = recs["u.npy"]["result"]["stats"]
    assert (u["min"], u["max"]) == (3, 2**64 - 1)
    group = the_group(out, [300_000])
    assert (group["files"], group["dtype_kind"]) == (2, "int")
    assert (group["stats"]["min"], group["stats"]["max"]) == (-(2**63), BIG)
    assert str(BIG) in (out / "data_stats.csv").read_text()


def test_float_arrays_keep_float_bounds() -> None:
    s = array_stats(np.array([3.0, -1.0, 2.5]))
    assert (s.min, s.max) == (-1.0, 3.0)
    assert type(s.min) is float
    assert type(s.max) is float


def test_a_big_endian_int_array_joins_the_native_int_group(tmp_path: Path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    np.save(d / "big_endian.npy", np.array([1, 2, 3], dtype=">i4"))
    np.save(d / "native.npy", np.array([4, 5, 6], dtype=np.int32))
    out = tmp_path / "out"
    recs = run(d, out)
    assert recs["big_endian.npy"]["result"]["dtype"] == ">i4"
    (group,) = groups(out)
    assert (group["files"], group["dtype_kind"]) == (2, "int")
    assert (group["stats"]["min"], group["stats"]["max"], group["stats"]["count"]) == (1, 6, 6)


WIDE = np.finfo(np.longdouble).max > np.finfo(np.float64).max
needs_wide = pytest.mark.skipif(not WIDE, reason="longdouble is float64 on this platform")


@needs_wide
def test_longdouble_beyond_float64_is_refused_with_no_warning() -> None:
    big = np.array([1.0, 2.0, 3.0], dtype=np.longdouble) * np.longdouble("1e310")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the overflow in the cast must not warn
        with pytest.raises(ValueError, match="beyond the float64 range"):
            array_stats(big)
        s = array_stats(np.array([1.5, -np.inf, np.nan, 2.0], dtype=np.longdouble))
    assert (s.count, s.neg_inf, s.pos_inf, s.nan_count, s.max) == (3, 1, 0, 1, 2.0)


@needs_wide
def test_a_longdouble_file_beyond_float64_fails_and_says_why(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "in"
    d.mkdir()
    np.save(d / "huge.npy", np.array([1.0, 2.0, 3.0], dtype=np.longdouble) * np.longdouble("1e310"))
    np.save(d / "fine.npy", np.array([1.0, 2.0, 3.0], dtype=np.longdouble))
    recs = run(d, tmp_path / "out")
    huge = recs["huge.npy"]
    assert huge["status"] == "failed"
    assert "beyond the float64 range" in huge["error"]
    assert "such as 1e+310" in huge["error"]
    fine = recs["fine.npy"]["result"]["stats"]  # in range: crunched as float64
    assert (fine["count"], fine["min"], fine["max"], fine["pos_inf"]) == (3, 1.0, 3.0, 0)
    assert "overflow" not in capfd.readouterr().err


def npy_bytes(values: npt.NDArray[Any], version: tuple[int, int] = (1, 0)) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, values, version=version)
    return buf.getvalue()


def with_header(data: bytes, old: str, new: str) -> bytes:
    """A version 1.0 ``.npy`` with ``old`` replaced by ``new`` in its header (same length)."""
    hlen = int.from_bytes(data[8:10], "little")
    header = data[10 : 10 + hlen].decode("latin1")
    changed = header.replace(old, new).rstrip("\n ")
    assert len(changed) < hlen
    return data[:10] + (changed.ljust(hlen - 1) + "\n").encode("latin1") + data[10 + hlen :]


def test_corrupt_npy_headers_fail_as_numpy_refuses_them(tmp_path: Path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    six = npy_bytes(np.arange(6.0))
    (d / "minus_one.npy").write_bytes(with_header(six, "(6,)", "(-1,)"))
    (d / "minus_two_three.npy").write_bytes(with_header(six, "(6,)", "(-2, -3)"))
    v2 = npy_bytes(np.arange(6.0), version=(2, 0))
    (d / "version_9.npy").write_bytes(v2[:6] + bytes([9, 0]) + v2[8:])  # a valid 2.0 header
    (d / "version_2.npy").write_bytes(v2)
    (d / "version_3.npy").write_bytes(npy_bytes(np.arange(6.0), version=(3, 0)))
    cases = [  # (file, what numpy says, what the record says)
        ("minus_one.npy", "Expected", "negative dimension in shape (-1,)"),
        ("minus_two_three.npy", "unknown dimension", "negative dimension in shape (-2, -3)"),
        ("version_9.npy", "format version", "unknown format version 9.0"),
    ]
    for name, numpy_says, _ in cases:
        with pytest.raises(ValueError, match=numpy_says):
            np.load(d / name)
    recs = run(d, tmp_path / "out")
    for name, _, says in cases:
        rec = recs[name]
        assert (rec["status"], rec["error_type"]) == ("failed", "DataError"), rec
        assert says in rec["error"]
    for key in ("version_2.npy", "version_3.npy"):
        assert recs[key]["status"] == "ok"
        assert recs[key]["result"]["stats"]["sum"] == 15.0
