"""The img2dataset benchmark's harness (``bench.measure``, ``bench.datasets``): what it measures
and counts, and how it reports a missing peer or a short output. No timing assertions: the
benchmark itself only prints tables."""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from bench import datasets
from bench.measure import Measured, measure

ROOT = Path(__file__).resolve().parents[1]

# a child that starts a grandchild holding 64 MB and burning 0.3 s of CPU, then waits for it
_TREE = """
import subprocess, sys
grandchild = '''
import time
block = bytearray(64 * 2**20)
for i in range(0, len(block), 4096):
    block[i] = 1
start = time.process_time()
while time.process_time() - start < 0.3:
    pass
time.sleep(0.6)  # a few PSS samples (every 0.25 s) while the block is held
'''
sys.exit(subprocess.run([sys.executable, "-c", grandchild]).returncode)
"""


def test_measure_sums_the_process_tree(tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    got = measure([sys.executable, "-c", _TREE], cwd=tmp_path, env={}, log=log)
    assert got.returncode == 0, log.read_text()
    assert got.peak_procs >= 2
    assert got.peak_rss >= 64 * 2**20  # the grandchild's block, seen through the child
    assert got.peak_pss >= 60 * 2**20
    assert got.cpu >= 0.3  # the grandchild's CPU, reaped by the child, counted


def test_measure_reports_a_failing_command(tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    cmd = [sys.executable, "-c", "import sys; print('boom', file=sys.stderr); sys.exit(3)"]
    got = measure(cmd, cwd=tmp_path, env={}, log=log)
    assert got.returncode == 3
    assert "boom" in log.read_text()


def _jpeg(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 30, 30)).save(buf, "JPEG")
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_count_shards_counts_images_in_nested_tars(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    for shard, sizes in (("a/00000.tar", [(256, 192), (192, 256)]), ("a/b/1.tar", [(256, 256)])):
        with tarfile.open(tmp_path / shard, "w") as tar:
            for i, (w, h) in enumerate(sizes):
                _add(tar, f"{i:05d}.jpg", _jpeg(w, h))
                _add(tar, f"{i:05d}.json", json.dumps({"w": w}).encode())
                _add(tar, f"{i:05d}.txt", b"a caption")
    (tmp_path / "manifest.jsonl").write_text("{}\n")
    got = datasets.count_shards(tmp_path)
    assert got.samples == 3
    assert got.kpx == pytest.approx((2 * 256 * 192 + 256 * 256) / 3 / 1000)


def test_count_reported_reads_the_last_json_line(tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    log.write_text('some warning\n{"ok": 5}\nnoise\n{"ok": 7, "kpx": 49.5}\n')
    assert datasets.count_reported(log) == datasets.Output(7, 49.5)
    log.write_text("Traceback: nothing reported\n")
    assert datasets.count_reported(log).samples == 0


def test_missing_peer_venv_is_a_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "PEER_VENV", ROOT / "bench" / "no-such-venv")
    monkeypatch.setattr(datasets, "PEER_PYTHON", ROOT / "bench" / "no-such-venv" / "bin" / "py")
    why = datasets.peer_status()
    assert why.startswith("img2dataset: not installed")
    assert "make bench-peers" in why


def test_broken_peer_venv_is_a_message(monkeypatch: pytest.MonkeyPatch) -> None:
    # an interpreter that exists but has no img2dataset: this very one
    monkeypatch.setattr(datasets, "PEER_VENV", ROOT / "bench")
    monkeypatch.setattr(datasets, "PEER_PYTHON", Path(sys.executable))
    why = datasets.peer_status()
    assert why.startswith("img2dataset: does not import")
    assert "ModuleNotFoundError" in why


def _method(key: str, samples: list[int], wall: float = 2.0) -> datasets.Method:
    method = datasets.Method(key, key, lambda job, out: [], datasets.count_reported)
    for got in samples:
        run = Measured(0, wall, 3.0, 500 * 2**20, 300 * 2**20, 3)
        method.runs.append((run, datasets.Output(got, 56.0)))
    return method


def test_a_short_output_shows_its_count_not_a_rate() -> None:
    base = _method("keep_ratio", [10, 10, 10], wall=2.0)
    ours = _method("pixpipe", [10, 9, 10], wall=1.0)
    info = datasets.Info(n=10, images=10, repeats=3, cores=2, load="1 / 1", mean_bytes=50_000)
    text = datasets.render([base, ours], ["pixpipe webdataset output: not available here"], info)
    rows = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| ")}
    assert "| keep_ratio | 5 | 1.00 |" in rows["| keep_ratio"]
    assert "— (9/10 samples!)" in rows["| pixpipe"]
    assert "| pixpipe | 10 |" not in text
    assert "skipped: not available here" in rows["| pixpipe webdataset output"]
    assert "not measured" in text  # the goal needs complete outputs


def test_the_goal_line_compares_rate_and_memory() -> None:
    base = _method("keep_ratio", [10, 10, 10], wall=2.0)
    ours = _method("pixpipe", [10, 10, 10], wall=1.0)
    info = datasets.Info(n=10, images=5, repeats=3, cores=2, load="0 / 0", mean_bytes=50_000)
    text = datasets.render([base, ours], [], info)
    assert "10 rows over 5 JPEGs" in text
    x = datasets.X
    assert f"vs img2dataset keep_ratio: 2.00{x} items/s at 1.00{x} its peak RSS" in text
    assert f"1.00{x} its CPU) — met" in text
    assert "— met" in text


def test_count_files_counts_images_under_the_size_folder(tmp_path: Path) -> None:
    (tmp_path / "256" / "127.0.0.1" / "img").mkdir(parents=True)
    (tmp_path / "256" / "127.0.0.1" / "img" / "a.jpg").write_bytes(_jpeg(256, 192))
    (tmp_path / "256" / "b.jpg").write_bytes(_jpeg(100, 100))
    (tmp_path / "report.html").write_text("<html></html>")
    (tmp_path / "manifest.jsonl").write_text("{}\n")
    got = datasets.count_files(tmp_path)
    assert got.samples == 2
    assert got.kpx == pytest.approx((256 * 192 + 100 * 100) / 2 / 1000)


def _with_fixed(name: str, fixed_samples: tuple[int, ...]) -> datasets.Method:
    method = _method(name, [120, 120, 120], wall=2.0)
    for got in fixed_samples:
        run = Measured(0, 1.0, 1.0, 100 * 2**20, 60 * 2**20, 3)
        method.fixed.append((run, datasets.Output(got, 56.0)))
    return method


def test_the_fixed_cost_table_takes_the_fixed_cost_out() -> None:
    found = [_with_fixed("full", (20, 20, 20)), _with_fixed("short", (20, 20, 19))]
    found.append(_method("floor", [120]))
    lines = datasets._fixed_table(found, n=120)
    rows = [line for line in lines if line.startswith("| ") and "wall s" not in line]
    # 100 more items in 2.0 - 1.0 s; a short fixed run is flagged, no rate; floors have no row
    assert rows == [
        "| full | 1.00 | 1.0 | 100 | 100 |",
        "| short (19/20 samples!) | 1.00 | 1.0 | 100 | — |",
    ]


def test_a_long_table_repeats_the_images_under_distinct_urls() -> None:
    paths = [Path("a.jpg"), Path("b.jpg")]
    assert datasets.url_paths(paths, 2) == ["/img/a.jpg", "/img/b.jpg"]
    assert datasets.url_paths(paths, 5) == [
        "/img/a.jpg",
        "/img/b.jpg",
        "/img/1/a.jpg",
        "/img/1/b.jpg",
        "/img/2/a.jpg",
    ]


def test_longrun_spreads_the_repeated_sizes_over_the_bench(monkeypatch: pytest.MonkeyPatch) -> None:
    """The base size's runs go before, between and after the large sizes (a drifting machine
    weighs on every size alike); each size's figures are the median of its runs."""
    import bench.longrun as longrun

    ran: list[int] = []

    def run_once(n: int, repo: Path = longrun.REPO) -> longrun.Point:
        ran.append(n)
        wall = n / 1000 * (1 + ran.count(n))  # each run of a size slower than the last
        return longrun.Point(n, wall, len(ran), 0.1, 0, 0.01 * n, 1)

    monkeypatch.setattr(longrun, "run_once", run_once)
    points = longrun.measure_all([10_000, 100_000, 1_000_000])
    assert ran == [10_000, 100_000, 10_000, 1_000_000, 10_000]
    assert [p.wall for p in points] == [30.0, 200.0, 2000.0]  # 10k: the median of 20, 30, 40
    assert points[0].peak_rss == 3  # the median of the 1st, 3rd and 5th runs' figures
    ran.clear()
    longrun.measure_all([2_000, 10_000], runs=2)  # all repeated: round after round
    assert ran == [2_000, 10_000, 2_000, 10_000]


def test_cost_rounds_do_not_always_run_one_method_right_after_another(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Every method once a round; rotated, and backwards every other round: the baseline is
    not right before ``process`` round after round (as the rotation alone had it)."""
    import bench.cost as cost

    monkeypatch.setenv("COST_BASELINE", str(tmp_path))
    found = cost.methods()
    orders = [[m.key for m in cost._order(found, r)] for r in range(5)]
    assert all(sorted(o) == sorted(m.key for m in found) for o in orders)
    before = sum(o.index("baseline") + 1 == o.index("process") for o in orders)
    after = sum(o.index("process") + 1 == o.index("baseline") for o in orders)
    assert before <= 2
    assert after <= 2
