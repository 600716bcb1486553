"""A run whose output disk fills up: it stops with a clear error, loses nothing, and a run of the
same command once there is room again resumes and finishes.

The disk is real: a tmpfs of a few hundred KiB mounted for the test (``mount`` needs root, or a
user and mount namespace of its own: ``unshare``), made larger afterwards with ``mount -o
remount``, as a user would free some space.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import by_key

ROOT = Path(__file__).resolve().parents[1]

#: A tmpfs this small fills after a few of the images below (and the journal with them).
SMALL = "384k"
ROOM = "64m"


def _can_mount() -> str | None:
    """Why a tmpfs cannot be mounted here, or None."""
    if not sys.platform.startswith("linux"):
        return "tmpfs mounts are Linux's"
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root (CAP_SYS_ADMIN)"
    if shutil.which("mount") is None:
        return "no mount command"
    return None


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of :data:`SMALL` at ``tmp_path/disk``; unmounted at the end of the test."""
    why = _can_mount()
    if why is not None:
        pytest.skip(f"no small disk to fill: {why}")
    disk = tmp_path / "disk"
    disk.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SMALL}", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
        check=False,
    )
    if made.returncode != 0:
        pytest.skip(f"no small disk to fill: mount failed: {made.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _noise_images(folder: Path, n: int) -> list[str]:
    """``n`` JPEGs of noise, 300 px (kept at that size: some 60 KB each once written)."""
    import numpy as np
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(7)
    names = []
    for i in range(n):
        pixels = rng.integers(0, 256, size=(300, 300, 3), dtype=np.uint8)
        name = f"n{i:03d}.jpg"
        Image.fromarray(pixels).save(folder / name, quality=95)
        names.append(name)
    return names


def _process(inputs: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "process", str(inputs), "--output", str(out)],
        cwd=ROOT,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _fill(path: Path) -> None:
    """Write to ``path`` until the disk refuses (raises its OSError)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".pp-*"))


@pytest.mark.timeout(180)
def test_a_full_disk_stops_the_run_and_a_run_with_room_again_finishes(
    small_disk: Path, tmp_path: Path
) -> None:
    n = 120
    names = _noise_images(tmp_path / "in", n)
    out = small_disk / "out"

    full = _process(tmp_path / "in", out)
    assert full.returncode == 3, full.stderr  # a fatal run error, not item failures
    assert "No space left on device" in full.stderr or "disk is full" in full.stderr
    assert "free some space" in full.stderr  # and what to do about it
    assert "Traceback" not in full.stderr, full.stderr
    assert len(list(out.glob("*/*.jpg"))) < n  # it did stop part of the way

    subprocess.run(["mount", "-o", f"remount,size={ROOM}", str(small_disk)], check=True)
    again = _process(tmp_path / "in", out)
    assert again.returncode == 0, again.stderr
    records = by_key(out)
    assert sorted(records) == names  # one record each, none lost
    assert {r["status"] for r in records.values()} <= {"ok", "reused"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] is True
    assert sum(summary["counts"].values()) == n
    written = sorted(o["path"] for r in records.values() for o in r["result"]["outputs"])
    assert written == [f"512/{name}" for name in names]  # the default size, 512
    assert sorted(str(p.relative_to(out)) for p in out.glob("*/*.jpg")) == written
    assert _temporaries(out) == []


@pytest.mark.timeout(120)
def test_a_disk_full_before_the_run_starts_says_so(small_disk: Path, tmp_path: Path) -> None:
    """Not even the output folder's lock file fits: the command says what to do at once."""
    with pytest.raises(OSError, match="No space left on device"):
        _fill(small_disk / "filler")
    _noise_images(tmp_path / "in", 3)
    got = _process(tmp_path / "in", small_disk / "out")
    assert got.returncode == 3, got.stderr
    assert "No space left on device" in got.stderr
    assert "free some space and run the same command again" in got.stderr
    assert "resumes" not in got.stderr  # nothing of this run to resume
    assert "Traceback" not in got.stderr, got.stderr
