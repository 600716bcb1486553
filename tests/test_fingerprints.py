"""Resume and options: a stage's own fingerprint (the options that shape its results) is the
run's when the run gives none, so an embedded pipeline redoes its items when they change."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

import stages
from pipeline import Pipeline, stage
from tests.fns import inc

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "sample_data" / "images"

pytestmark = pytest.mark.timeout(120)


def _statuses(out: Path) -> dict[str, str]:
    lines = (out / "manifest.jsonl").read_text().splitlines()
    return {json.loads(x)["key"]: json.loads(x)["status"] for x in lines}


def test_a_stage_fingerprint_redoes_items_when_it_changes(tmp_path: Path) -> None:
    out = tmp_path / "out"

    def pipe(fp: str) -> Pipeline:
        return Pipeline([stage(inc, kind="inline", fingerprint=fp)])

    assert pipe("a").run([("x", 1)], output=out, progress=False).counts == {"ok": 1}
    assert pipe("a").run([("x", 1)], output=out, progress=False).counts == {"reused": 1}
    assert pipe("b").run([("x", 1)], output=out, progress=False).counts == {"ok": 1}
    rec = json.loads((out / "manifest.jsonl").read_text())
    assert rec["redo"] == "options changed"
    # a fingerprint given to the run wins over the stages'
    run = pipe("c").run([("x", 1)], output=out, progress=False, fingerprint="mine")
    assert run.counts == {"ok": 1}
    run = pipe("d").run([("x", 1)], output=out, progress=False, fingerprint="mine")
    assert run.counts == {"reused": 1}


def test_resize_stage_options_are_its_fingerprint(tmp_path: Path) -> None:
    photos, out = tmp_path / "photos", tmp_path / "out"
    photos.mkdir()
    shutil.copy(IMAGES / "640x480_rgb.jpg", photos)

    def run(size: int) -> dict[str, int]:
        pipe = Pipeline(
            [stages.read_stage(), stages.resize_stage(size, workers=1), stages.write_stage(out)]
        )
        return pipe.run(stages.walk(photos), output=out, progress=False).counts

    assert run(64) == {"ok": 1}
    assert run(64) == {"reused": 1}
    assert run(32) == {"ok": 1}  # another size: redone, not reused
    with Image.open(out / "32" / "640x480_rgb.jpg") as im:
        assert max(im.size) == 32
    assert _statuses(out) == {"640x480_rgb.jpg": "ok"}


def test_fingerprints_of_the_default_options_never_change_by_accident() -> None:
    """Every output folder's records hold these: a change to how they are computed (a new
    option with its default, another JSON layout) would redo every user's outputs on their
    next run. Change them only on purpose, with RENDER_VERSION / CRUNCH_VERSION."""
    from app.config import ProcessConfig

    cfg = ProcessConfig(inputs=(str(IMAGES),))
    # (until RENDER_VERSION 2 and CRUNCH_VERSION 2: "6358aa674c30", "7c58523feb7e")
    assert (cfg.fingerprint(), cfg.data_fingerprint()) == ("07d521d04735", "f77c15e7235d")
    assert cfg.data_fingerprint(csv=False) == cfg.data_fingerprint()  # defaults: one hash


def test_options_that_shape_no_output_leave_the_fingerprint_alone() -> None:
    """A pad colour without mode pad (warned as ignored) and a quality for PNG make the same
    outputs: they redid every input (``options changed``); with what they shape, they count."""
    from stages.options import ResizeOptions

    plain = ResizeOptions().fingerprint()
    assert ResizeOptions(pad_color=(0, 0, 0)).fingerprint() == plain
    assert ResizeOptions(mode="pad", pad_color=(0, 0, 0)).fingerprint() != (
        ResizeOptions(mode="pad").fingerprint()
    )
    png = ResizeOptions(format="png").fingerprint()
    assert ResizeOptions(format="png", quality=50).fingerprint() == png
    assert ResizeOptions(format="webp", quality=50).fingerprint() != (
        ResizeOptions(format="webp").fingerprint()
    )


def test_the_order_of_the_sizes_redoes_nothing(tmp_path: Path) -> None:
    """``--size 64 --size 32`` then ``--size 32 --size 64``: each size's output is made alone,
    so the same files; the second run reused everything (it redid all, "options changed").
    The statistics are the largest output's whatever the order, a tie (same area) too."""
    from app.config import ProcessConfig
    from app.process import run_process

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    shutil.copy(IMAGES / "640x480_rgb.jpg", src)

    def run(*sizes: str) -> dict[str, str]:
        cfg = ProcessConfig.from_mapping(
            {"inputs": [str(src)], "output": str(out), "size": list(sizes), "workers": "1"}
        )
        return dict(run_process(cfg).counts)

    assert run("64", "32") == {"ok": 1}
    assert run("32", "64") == {"reused": 1}
    assert run("32", "64", "16") == {"ok": 1}  # a size more: redone

    def stats(*sizes: str) -> object:
        from stages.imaging import process_image
        from stages.options import ResizeOptions, as_sizes

        options = ResizeOptions(sizes=as_sizes(list(sizes)), mode="fill")
        return process_image((src / "640x480_rgb.jpg").read_bytes(), options).stats

    assert stats("40x20", "20x40") == stats("20x40", "40x20")  # two crops of 800 pixels
    assert stats("64", "32") == stats("32", "64")


@pytest.mark.parametrize("what", ["images", "data"])
def test_a_new_render_version_redoes_what_an_older_one_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, what: str
) -> None:
    """A release whose code makes other outputs from the same input and options (a fixed colour
    conversion) raises RENDER_VERSION (data: CRUNCH_VERSION): what an older version made is
    redone on resume, not reused as done."""
    import numpy as np

    import stages.options
    import stages.parts
    from app.config import ProcessConfig
    from app.process import run_process

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    if what == "images":
        shutil.copy(IMAGES / "640x480_rgb.jpg", src)
    else:
        np.save(src / "a.npy", np.arange(1000, dtype=np.float32))
    cfg = ProcessConfig(inputs=(str(src),), output=str(out), progress=False)
    assert run_process(cfg).counts == {"ok": 1}
    assert run_process(cfg).counts == {"reused": 1}
    module, name = (
        (stages.options, "RENDER_VERSION")
        if what == "images"
        else (
            stages.parts,
            "CRUNCH_VERSION",
        )
    )
    monkeypatch.setattr(module, name, getattr(module, name) + 1)
    assert run_process(
        ProcessConfig(inputs=(str(src),), output=str(out), progress=False)
    ).counts == {"ok": 1}
    (rec,) = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert rec["redo"] == "options changed"
