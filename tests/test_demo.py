"""``python -m pipeline demo``: size and SHA-256 of every file, walked by the one walker
(:func:`stages.walk`, as ``process`` walks)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import by_key

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    root = tmp_path / "in"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "a.bin").write_bytes(b"alpha")
    (root / "sub" / "b.txt").write_bytes(b"bravo!")
    (root / "sub" / "deeper" / "c").write_bytes(b"")
    os.symlink("a.bin", root / "link.bin")  # a symlink to a file of the folder: followed
    os.symlink("missing", root / "dangling")
    os.mkfifo(root / "pipe")
    return root


def _demo(*args: str) -> int:
    cmd = [sys.executable, "-m", "pipeline", "demo", *args, "--workers", "2", "--quiet"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode in (0, 2), done.stderr
    return done.returncode


def test_demo_digests_every_file_and_records_every_entry(inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _demo(str(inputs), "--output", str(out)) == 0
    recs = by_key(out)
    files = {"a.bin": b"alpha", "sub/b.txt": b"bravo!", "sub/deeper/c": b"", "link.bin": b"alpha"}
    for key, data in files.items():
        assert recs[key]["status"] == "ok", recs[key]
        assert recs[key]["result"] == {
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    assert recs["dangling"]["status"] == "skipped"
    assert recs["pipe"]["status"] == "skipped"  # never opened: no hang
    assert set(recs) == {*files, "dangling", "pipe"}


def test_demo_redoes_what_changed_and_never_walks_its_output(inputs: Path) -> None:
    out = inputs / "out"  # inside the input folder
    assert _demo(str(inputs), "--output", str(out)) == 0
    (inputs / "a.bin").write_bytes(b"changed")
    assert _demo(str(inputs), "--output", str(out)) == 0
    recs = by_key(out)
    assert recs["a.bin"]["status"] == "ok"
    assert recs["a.bin"]["result"]["bytes"] == len(b"changed")
    assert recs["sub/b.txt"]["status"] == "reused"  # unchanged: done by the first run
    assert recs["out/"]["status"] == "skipped"
    assert not [k for k in recs if k.startswith("out/") and k != "out/"]


def test_demo_keys_name_each_folder_when_there_are_several(tmp_path: Path) -> None:
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "x.bin").write_bytes(name.encode())
    out = tmp_path / "out"
    assert _demo(str(tmp_path / "one"), str(tmp_path / "two"), "--output", str(out)) == 0
    assert sorted(by_key(out)) == ["one/x.bin", "two/x.bin"]


def test_demo_input_that_does_not_exist_is_a_usage_error(tmp_path: Path) -> None:
    assert _demo(str(tmp_path / "missing"), "--output", str(tmp_path / "out")) == 2
