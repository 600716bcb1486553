"""The README's Python examples run as written.

Each ```python block is a script of its own, run by a fresh interpreter in a fresh folder that
holds what the examples use: ``photos/`` (the sample images) and ``urls.txt`` (those images on a
loopback server, and one URL that is not there). The examples of "Use it from Python" that write
files are checked for what they say they write.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.http_server import serve

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "sample_data" / "images"
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)
SECTION = README.split("\n## Use it from Python\n", 1)[1].split("\n## ", 1)[0]


def _name(code: str) -> str:
    """The file name an example gives in its first line (``# thumbs.py — ...``), or ''."""
    m = re.match(r"#\s*(\S+\.py)\b", code)
    return m.group(1) if m else ""


def _manifest(folder: Path) -> dict[str, dict[str, object]]:
    lines = (folder / "manifest.jsonl").read_text().splitlines()
    return {rec["key"]: rec for rec in map(json.loads, lines)}


def _check_thumbs(folder: Path) -> None:
    jpegs = sorted(IMAGES.glob("*.jpg"))
    assert jpegs
    assert sorted(p.name for p in (folder / "thumbs").iterdir()) == sorted(
        f"{p.stem}.webp" for p in jpegs
    )


def _check_photos_to_thumbs(folder: Path) -> None:
    recs = _manifest(folder / "out")
    images = [p for p in IMAGES.rglob("*") if p.is_file()]
    assert len(recs) == len(images)
    assert {r["status"] for r in recs.values()} == {"ok"}
    assert (folder / "out" / "256" / "nested" / "1000x667_nested.jpg.webp").is_file()
    assert (folder / "out" / "640x480" / "640x480_rgb.jpg.webp").is_file()


def _check_fetch_thumbs(folder: Path) -> None:
    recs = _manifest(folder / "downloads")
    statuses = sorted(str(r["status"]) for r in recs.values())
    assert statuses == ["failed"] + ["ok"] * len(list(IMAGES.glob("*.*")))
    written = [p for p in (folder / "downloads" / "256").rglob("*") if p.is_file()]
    assert len(written) == statuses.count("ok")


#: what the examples that write files must have written
CHECKS = {
    "thumbs.py": _check_thumbs,
    "photos_to_thumbs.py": _check_photos_to_thumbs,
    "fetch_thumbs.py": _check_fetch_thumbs,
}


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with serve(IMAGES) as url:
        yield url


def test_every_example_of_use_it_from_python_is_run_and_checked() -> None:
    in_section = re.findall(r"```python\n(.*?)```", SECTION, flags=re.S)
    assert len(in_section) >= 5
    assert all(code in BLOCKS for code in in_section)  # run by the test below
    assert set(CHECKS) <= {_name(code) for code in in_section}


@pytest.mark.parametrize(
    "code", BLOCKS, ids=[_name(c) or f"block{i}" for i, c in enumerate(BLOCKS)]
)
def test_readme_python_example_runs(code: str, tmp_path: Path, base_url: str) -> None:
    shutil.copytree(IMAGES, tmp_path / "photos")
    urls = [f"{base_url}/{p.name}" for p in sorted(IMAGES.glob("*.*"))]
    (tmp_path / "urls.txt").write_text("\n".join([*urls, f"{base_url}/not-there.jpg"]) + "\n")
    script = tmp_path / (_name(code) or "example.py")
    script.write_text(code)
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=100,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    check = CHECKS.get(_name(code))
    if check is not None:
        check(tmp_path)
