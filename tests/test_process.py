"""End to end: `python -m pipeline process` over the committed samples and edge cases."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from app.config import ProcessConfig
from app.process import run_process
from pipeline import ConfigError, Item
from stages.files import UnsafePath, safe_join
from stages.parts import is_data_result
from stages.sources import walk_inputs
from stages.thumbs import output_rel
from tests.conftest import by_key

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "sample_data" / "images"
EDGE = ROOT / "sample_data" / "edge"


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "process", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def run(inputs: list[Path], out: Path, **kw: object) -> dict[str, dict[str, object]]:
    cfg = ProcessConfig.from_mapping(
        {"inputs": [str(p) for p in inputs], "output": str(out), "quiet": True, **kw}
    )
    run_process(cfg)
    return by_key(out)


def test_sample_images_all_become_thumbnails(out: Path) -> None:
    done = cli(str(IMAGES), "--output", str(out), "--quiet")
    assert done.returncode == 0, done.stderr
    recs = by_key(out)
    files = [p for p in IMAGES.rglob("*") if p.is_file()]
    assert len(recs) == len(files)
    for rec in recs.values():
        assert rec["status"] == "ok", rec
        res = rec["result"]
        (o,) = res["outputs"]
        path = out / o["path"]
        assert o["path"].startswith("512/")
        with Image.open(path) as im:
            assert im.size == (o["width"], o["height"])
            assert max(im.size) <= 512
            w, h = res["original"]["width"], res["original"]["height"]
            if max(w, h) <= 512:  # never upscaled
                assert im.size == (w, h)
            else:  # fit keeps the aspect ratio
                assert abs(im.size[0] / im.size[1] - w / h) < 0.02
        stats = res["stats"]
        assert len(stats["dhash"]) == 16
        assert stats["sharpness"] >= 0
    # the tree is mirrored
    assert (out / "512" / "nested").is_dir()
    with open(out / "stats.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(files)
    import pyarrow.parquet as pq  # a dev dependency: the Parquet path is tested, not skipped

    table = pq.read_table(out / "stats.parquet")
    assert table.num_rows == len(files)
    assert sorted(table.column("key").to_pylist()) == sorted(r["key"] for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"]
    assert summary["counts"] == {"ok": len(files)}
    assert "groups" in summary["collected"]["near_duplicates"]
    # what made these outputs: the release to suspect, should one turn out wrong
    made_by = summary["collected"]["made_by"]
    import PIL

    import pipeline
    from stages.options import RENDER_VERSION

    assert made_by["pixpipe"] == pipeline.__version__
    assert made_by["render_version"] == RENDER_VERSION
    assert made_by["pillow"] == PIL.__version__
    # as typed (sys.orig_argv), not with the path of pipeline/__main__.py for "-m pipeline"
    args = ["process", str(IMAGES), "--output", str(out), "--quiet"]
    assert made_by["command"][1:] == ["-m", "pipeline", *args]


EXPECTED_FAILURES = {
    "truncated.jpg": "TruncatedImage",
    "bomb.png": "DecompressionBomb",
}
#: inputs recognised by content: named like images, they are not, and say what they are
EXPECTED_SKIPS = {
    "not_an_image.jpg": "not an image or data file: unrecognised binary data (named .jpg)",
    "zero_bytes.jpg": "not an image or data file: an empty file (0 bytes) (named .jpg)",
}


def test_edge_cases_each_get_their_expected_record(out: Path) -> None:
    recs = run([EDGE], out)
    names = {p.name for p in EDGE.iterdir() if p.is_file()}
    assert set(recs) == names
    for name, rec in recs.items():
        if name in EXPECTED_FAILURES:
            assert rec["status"] == "failed", rec
            assert rec["error_type"] == EXPECTED_FAILURES[name]
            assert rec["stage"] == "resize"
            assert rec["error"]
            assert not list(out.glob(f"*/{name}*")), "a failed input left an output"
        elif name in EXPECTED_SKIPS:
            assert rec["status"] == "skipped", rec
            assert rec["stage"] == "resize", rec  # the resize worker opens a local file
            assert rec["reason"] == EXPECTED_SKIPS[name]
        elif name.endswith(".md"):
            assert rec["status"] == "skipped"
        else:
            assert rec["status"] == "ok", rec


@pytest.mark.parametrize("n", range(1, 9))
def test_exif_orientation_is_applied_in_the_written_file(out: Path, n: int) -> None:
    recs = run([EDGE], out, include=[f"exif_rot{n}.jpg"], size=["120"])
    (o,) = recs[f"exif_rot{n}.jpg"]["result"]["outputs"]  # type: ignore[index]
    with Image.open(out / o["path"]) as im:
        rgb = im.convert("RGB")
        w, h = rgb.size
        assert w > h  # the correctly oriented card is landscape
        r, g, b = rgb.getpixel((w // 10, h // 10))  # type: ignore[misc]
        # the red block is top-left
        assert r > 150, (n, (r, g, b))
        assert g < 100, (n, (r, g, b))
        assert b < 100, (n, (r, g, b))


def test_truncated_allowed_gives_an_output(out: Path) -> None:
    recs = run([EDGE], out, include=["truncated.jpg"], allow_truncated=True)
    assert recs["truncated.jpg"]["status"] == "ok"


def test_resume_skips_done_redoes_missing_and_changed(out: Path) -> None:
    first = run([IMAGES], out)
    n = len(first)
    second = run([IMAGES], out)
    assert {r["status"] for r in second.values()} == {"reused"}
    assert all("reason" not in r and "stats" in r["result"] for r in second.values())
    # an output deleted by hand is redone, the rest stay skipped
    victim = next(iter(first.values()))
    os.unlink(out / victim["result"]["outputs"][0]["path"])  # type: ignore[index]
    third = run([IMAGES], out)
    assert [k for k, r in third.items() if r["status"] == "ok"] == [victim["key"]]
    # changed options redo everything, writing the new size
    fourth = run([IMAGES], out, size=["256"])
    assert sum(r["status"] == "ok" for r in fourth.values()) == n
    assert (out / "256").is_dir()


def test_retry_failed_and_force(out: Path) -> None:
    run([EDGE], out)
    again = run([EDGE], out, retry_failed=True)
    redone = {
        k
        for k, r in again.items()
        if r["run"] == json.loads((out / "summary.json").read_text())["run"]
        and r["status"] == "failed"
    }
    assert redone == set(EXPECTED_FAILURES)
    forced = run([EDGE], out, force=True)
    not_ok = len(EXPECTED_FAILURES) + len(EXPECTED_SKIPS)
    assert sum(r["status"] == "ok" for r in forced.values()) == len(forced) - not_ok


def test_several_roots_prefix_keys_and_outputs(out: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        folder.mkdir()
        Image.new("RGB", (64, 48), "red").save(folder / "same.jpg")
    recs = run([a, b], out)
    assert set(recs) == {"a/same.jpg", "b/same.jpg"}
    assert (out / "512" / "a" / "same.jpg").exists()
    assert (out / "512" / "b" / "same.jpg").exists()


def test_sources_give_every_file_and_skip_outside_symlinks(tmp_path: Path) -> None:
    root, outside = tmp_path / "in", tmp_path / "elsewhere"
    root.mkdir()
    outside.mkdir()
    Image.new("RGB", (8, 8)).save(outside / "secret.jpg")
    Image.new("RGB", (8, 8)).save(root / "a.jpg")
    (root / "notes.txt").write_text("hi")
    (root / "link.jpg").symlink_to(outside / "secret.jpg")
    (root / "inside.jpg").symlink_to(root / "a.jpg")
    got = {getattr(x, "key", None): x for x in walk_inputs([root])}
    assert set(got) == {"a.jpg", "notes.txt", "link.jpg", "inside.jpg"}
    # what a file is, is decided by its content in the read stage: every file is an item here
    assert isinstance(got["notes.txt"], Item)
    assert got["link.jpg"].status == "skipped"  # type: ignore[union-attr]
    assert "outside" in got["link.jpg"].reason  # type: ignore[union-attr]
    assert got["inside.jpg"].value.path.endswith("inside.jpg")  # type: ignore[union-attr]
    only = [x.key for x in walk_inputs([root], include=["*.jpg"], exclude=["link*"])]
    assert only == ["a.jpg", "inside.jpg"]


def test_output_names_never_escape_or_collide(tmp_path: Path) -> None:
    assert output_rel("a/b.png", "512", ".png") == "512/a/b.png"
    assert output_rel("a/b.png", "512", ".jpg") == "512/a/b.png.jpg"
    assert output_rel("b.JPEG", "256", ".jpg") == "256/b.JPEG"
    assert output_rel("a/b.gif", "512", ".jpg", "0123abcd") == "512/a/b.gif~0123abcd.jpg"
    for bad in ("../x.jpg", "/etc/passwd", "a/../../x", ""):
        with pytest.raises(UnsafePath):
            safe_join(tmp_path, bad)
    (tmp_path / "evil").symlink_to("/tmp")
    with pytest.raises(UnsafePath):
        safe_join(tmp_path, "evil/x.jpg")


def test_an_output_path_through_a_link_is_judged_by_where_it_leads(tmp_path: Path) -> None:
    """Only links among the existing folders under the root can take a path out of it: each is
    followed, wherever it is, and a path is refused only if it ends outside."""
    root = tmp_path / "out"
    (root / "512" / "a").mkdir(parents=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (root / "512" / "a" / "up").symlink_to(outside)  # deep, to a real folder outside
    (root / "512" / "gone").symlink_to(tmp_path / "missing")  # dangling, outside
    (root / "same").symlink_to(root / "512")  # inside: allowed
    (root / "512" / "a" / "loop").symlink_to(root / "same" / "a" / "up")  # inside, then out
    (root / "file").write_bytes(b"")  # a file where a folder should be: the write fails later
    for bad in ("512/a/up/x.jpg", "512/gone/x.jpg", "512/a/loop/x.jpg", "same/a/up/x.jpg"):
        with pytest.raises(UnsafePath, match="resolves outside"):
            safe_join(root, bad)
    for good in ("512/a/x.jpg", "same/a/x.jpg", "512/new/deeper/x.jpg", "file/x.jpg"):
        assert safe_join(root, good) == root.joinpath(*good.split("/"))
    relative = Path(os.path.relpath(root))  # a relative root: the same answers
    with pytest.raises(UnsafePath):
        safe_join(relative, "512/a/up/x.jpg")
    assert safe_join(relative, "same/a/x.jpg") == relative / "same" / "a" / "x.jpg"


def test_toml_config_and_flags_override(tmp_path: Path) -> None:
    out = tmp_path / "out"
    conf = tmp_path / "run.toml"
    conf.write_text(
        f'inputs = ["{IMAGES}"]\noutput = "{out}"\nsize = ["64", "32x32"]\nmode = "fill"\n'
        'format = "webp"\n[workers]\nread = 2\nresize = 1\n'
    )
    done = cli("--config", str(conf), "--format", "png", "--quiet")
    assert done.returncode == 0, done.stderr
    rec = next(iter(by_key(out).values()))
    sizes = {o["size"]: (o["width"], o["height"], o["format"]) for o in rec["result"]["outputs"]}
    assert sizes["32"] == (32, 32, "png")  # fill crops to the box; the flag beat the file
    assert sizes["64"] == (64, 64, "png")


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert cli(str(tmp_path / "missing")).returncode == 2
    assert cli(str(IMAGES), "--size", "abc", "--output", str(tmp_path / "o")).returncode == 2
    assert cli(str(IMAGES), "--workers", "bogus=3", "--output", str(tmp_path / "o")).returncode == 2
    with pytest.raises(ConfigError):
        ProcessConfig.from_mapping({"inputs": [str(IMAGES)], "colour": "blue"})


def test_near_duplicates_reuse_the_stats_tables_pass_over_the_manifest(tmp_path: Path) -> None:
    from app.collectors import NearDuplicates, StatsTable

    def line(key: str, dhash: str) -> str:
        stats = {"mean": [1.0], "std": [0.0], "sharpness": 1.0, "dhash": dhash}
        result = {"original": {"width": 8, "height": 8}, "outputs": [{}], "stats": stats}
        return json.dumps({"key": key, "status": "ok", "result": result})

    hashes = {"a": "ffff0000ffff0000", "b": "ffff0000ffff0001", "c": "0000ffff0000ffff"}
    (tmp_path / "manifest.jsonl").write_text("".join(line(k, h) + "\n" for k, h in hashes.items()))
    table = StatsTable(tmp_path)
    assert table.result()["rows"] == 3
    (tmp_path / "manifest.jsonl").unlink()  # the groups must come from the table's own pass
    assert NearDuplicates(table).result()["groups"] == [["a", "b"]]


def test_each_stage_counts_only_the_inputs_it_works_on(out: Path) -> None:
    """Routing by type: local images go straight to resize -> write (the resize worker opens
    them: the parent does not), data files read -> crunch; no stage sees (or counts) an item
    that is not its kind."""
    data = ROOT / "sample_data" / "data"
    done = cli(str(IMAGES), str(data), "--output", str(out), "--quiet", "--chunk-size", "0")
    assert done.returncode == 0, done.stderr
    images = sum(1 for p in IMAGES.rglob("*") if p.is_file())
    data_records = sum(1 for r in by_key(out).values() if is_data_result(r.get("result")))
    stages = {s["name"]: s for s in json.loads((out / "summary.json").read_text())["stages"]}
    assert data_records + images == len(by_key(out))
    assert stages["read"]["items"] == data_records  # every data input (an .npz: one per array)
    assert stages["resize"]["items"] == stages["write"]["items"] == images
    assert stages["crunch"]["items"] == data_records  # --chunk-size 0: one part each


def test_a_run_removes_the_temporary_files_a_killed_run_left(out: Path) -> None:
    """A run killed outright (SIGKILL, power cut) leaves its open temporary files (``.pp-*.tmp``:
    a table, the ledger's export, the near-duplicate hashes) at the top of the output folder;
    the next run into it, holding the folder, removes them and nothing else: a user's file
    whose name merely looks like one (``.pp-notes.tmp``) is kept."""
    out.mkdir(parents=True)
    (out / ".pp-abc12345.tmp").write_bytes(b"half a table")  # mkstemp's 8 characters
    (out / ".pp-9f0e1d2c.tmp").write_bytes(b"\0" * 64)  # os.urandom(4).hex()
    keep = [out / ".pp-notes.txt", out / "mine.tmp", out / ".pp-folder.tmp" / "x"]
    keep += [out / ".pp-notes.tmp", out / ".pp-ABCDEFGH.tmp", out / ".pp-abc12345.tmp.bak"]
    for path in keep:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("the user's")
    beside = out / "512" / "sub" / ".pp-0123abcd.tmp"  # a thumbnail's, below: see the next test
    beside.parent.mkdir(parents=True)
    beside.write_bytes(b"half a thumbnail")
    done = cli(str(IMAGES), "--output", str(out), "--quiet")
    assert done.returncode == 0, done.stderr
    left = sorted(p.name for p in out.glob(".pp-*.tmp"))
    assert left == [".pp-ABCDEFGH.tmp", ".pp-folder.tmp", ".pp-notes.tmp"]  # (a folder: kept)
    for path in keep:
        assert path.read_text() == "the user's"
    # the last run finished (no summary says otherwise): its tree is not walked at the start
    assert beside.exists()


@pytest.mark.parametrize("ending", ["fatal", "ctrl-c"])
def test_a_run_that_fails_or_is_interrupted_at_its_end_sweeps_the_tree(
    out: Path, monkeypatch: pytest.MonkeyPatch, ending: str
) -> None:
    """A run that ends with a fatal error (more worker crashes than its budget: a worker killed
    mid-write leaves its temporary file beside the thumbnail) or a Ctrl-C during its tables or
    report sweeps the tree as a run with one worker crash does. Before, only a run that
    returned did: its summary says finished, so no later run swept it either."""
    import app.process
    from pipeline import CrashBudgetExceeded

    half = out / "512" / "a" / ".pp-0123abcd.tmp"
    real_run = app.process._run

    def run_then_end(*args: Any, **kw: Any) -> Any:
        real_run(*args, **kw)
        half.parent.mkdir(parents=True, exist_ok=True)
        half.write_bytes(b"half a thumbnail")  # a worker killed mid-write
        if ending == "fatal":
            raise CrashBudgetExceeded("3 worker crashes: over the run's budget")
        raise KeyboardInterrupt

    monkeypatch.setattr(app.process, "_run", run_then_end)
    with pytest.raises(CrashBudgetExceeded if ending == "fatal" else KeyboardInterrupt):
        run([IMAGES], out)
    assert not half.exists()
    assert (out / "512").is_dir()  # the thumbnails stay


def test_a_run_after_one_killed_outright_sweeps_the_whole_output_tree(out: Path) -> None:
    """A worker killed with its run (the parent SIGKILLed, a power cut) leaves a thumbnail's
    temporary file beside the thumbnail, anywhere below the output folder; the run's summary
    still says ``"finished": false``, so the next run sweeps the tree (the ledger's own folder
    and every other name left alone)."""
    done = cli(str(IMAGES), "--output", str(out), "--quiet")
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    (out / "summary.json").write_text(json.dumps({"run": summary["run"], "finished": False}))
    half = [out / "512" / ".pp-0123abcd.tmp", out / "512" / "a" / "b" / ".pp-4567ef01.tmp"]
    keep = [out / "512" / "a" / "mine.tmp", out / ".pipeline" / ".pp-89abcdef.tmp"]
    for path in [*half, *keep]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half a file")
    done = cli(str(IMAGES), "--output", str(out), "--quiet")
    assert done.returncode == 0, done.stderr
    assert not any(p.exists() for p in half)
    assert all(p.read_bytes() == b"half a file" for p in keep)
    assert json.loads((out / "summary.json").read_text())["finished"] is True
