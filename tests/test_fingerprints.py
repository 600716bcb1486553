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
