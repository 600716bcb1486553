"""--include / --exclude: globs match in either case by default (``*.jpg`` takes
``IMG_0001.JPG``), exactly with ``--case-sensitive-globs`` (or ``case-sensitive-globs = true``
in a config file); names that are not UTF-8 match too. Through the real CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

import stages
from pipeline import ConfigError
from stages.sources import walk_inputs
from tests.conftest import by_key
from tests.trees import cli

ROOT = Path(__file__).resolve().parents[1]
JPEG = ROOT / "sample_data" / "images" / "640x480_rgb.jpg"
PNG = ROOT / "sample_data" / "images" / "300x300_small.png"
#: a name that is not UTF-8 (Latin-1 "café"), upper-case extension
CAFE = b"caf\xe9.JPG"
CAFE_KEY = "caf\\xe9.JPG"  # as the manifest shows it


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    (folder / "DCIM").mkdir(parents=True)
    shutil.copy(JPEG, folder / "DCIM" / "IMG_0001.JPG")
    shutil.copy(JPEG, folder / "a.jpg")
    shutil.copy(JPEG, folder / "b.Jpeg")
    shutil.copy(PNG, folder / "c.PNG")
    shutil.copy(JPEG, os.path.join(os.fsencode(folder), CAFE))
    return folder


def _cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return cli(*args, "--quiet", timeout=90)


def test_include_matches_any_case_by_default(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = _cli(photos, "-o", out, "--include", "*.jpg")
    assert done.returncode == 0, done.stderr
    records = by_key(out)
    assert set(records) == {"DCIM/IMG_0001.JPG", "a.jpg", CAFE_KEY}
    assert all(r["status"] == "ok" for r in records.values())
    (made,) = records["DCIM/IMG_0001.JPG"]["result"]["outputs"]
    assert (out / made["path"]).is_file()


def test_exclude_matches_any_case_too(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = _cli(photos, "-o", out, "--exclude", "*.png", "--exclude", "dcim/*")
    assert done.returncode == 0, done.stderr
    assert set(by_key(out)) == {"a.jpg", "b.Jpeg", CAFE_KEY}


def test_case_sensitive_globs_by_flag_and_in_a_file(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "flag"
    done = _cli(photos, "-o", out, "--include", "*.jpg", "--case-sensitive-globs")
    assert done.returncode == 0, done.stderr
    assert set(by_key(out)) == {"a.jpg"}
    conf = tmp_path / "run.toml"
    conf.write_text('include = ["*.JPG", "*.PNG"]\ncase-sensitive-globs = true\n')
    out = tmp_path / "file"
    done = _cli(photos, "-o", out, "--config", conf)
    assert done.returncode == 0, done.stderr
    assert set(by_key(out)) == {"DCIM/IMG_0001.JPG", "c.PNG", CAFE_KEY}


def test_globs_on_names_that_are_not_utf8(tmp_path: Path) -> None:
    folder = os.fsencode(tmp_path)
    for name in (b"\xff\xfe.JPG", b"x\xe9y.txt", b"\xc3(.JPEG"):
        Path(os.fsdecode(os.path.join(folder, name))).write_bytes(b"x")
    keys = {
        getattr(x, "key", None)
        for x in walk_inputs([tmp_path], include=["*.jpg", "?\udce9*", "*.jpeg"])
    }
    assert keys == {
        os.fsdecode(b"\xff\xfe.JPG"),
        os.fsdecode(b"x\xe9y.txt"),
        os.fsdecode(b"\xc3(.JPEG"),
    }
    exact = {
        getattr(x, "key", None)
        for x in walk_inputs([tmp_path], include=["*.jpg"], case_sensitive_globs=True)
    }
    assert exact == set()


def test_walk_takes_the_option_too(photos: Path) -> None:
    keys = {x.key for x in stages.walk(photos, include="*.JPG", case_sensitive_globs=True)}
    assert keys == {"DCIM/IMG_0001.JPG", os.fsdecode(CAFE)}
    assert len(list(stages.walk(photos, include="*.JPG"))) == 3
    with pytest.raises(ConfigError, match="case_sensitive_globs must be a bool"):
        stages.walk(photos, case_sensitive_globs="yes")  # type: ignore[arg-type]
