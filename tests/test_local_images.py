"""Local images: a file named as an image goes to its resize worker unopened (the worker checks
and reads it); the read stage checks any other file (its first bytes and size) and plans data
files, so the checks must hold in both places."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import Skip, Split
from stages import steps
from stages.files import FileTooLarge, ImageFile, NumpyFile, check_file
from stages.options import ResizeOptions
from stages.sources import DataFile, SourceFile


def _jpeg(path: Path, size: tuple[int, int] = (64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 40, 40)).save(buf, "JPEG")
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def test_check_file_passes_on_a_path_not_bytes(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    _jpeg(path)
    got = check_file(SourceFile(str(path), "a.jpg", "0123abcd"))
    assert got == ImageFile(str(path), "a.jpg", "0123abcd")


def test_check_file_refuses_and_skips_as_read_file_does(tmp_path: Path) -> None:
    big = tmp_path / "big.jpg"
    data = _jpeg(big)
    with pytest.raises(FileTooLarge, match=f"{len(data):,} bytes is over the 100-byte cap"):
        check_file(SourceFile(str(big), "big.jpg"), max_bytes=100)
    video = tmp_path / "video.jpg"
    video.write_bytes(b"\x1aE\xdf\xa3" + b"\x00" * 5000)
    with pytest.raises(Skip, match=r"Matroska/WebM video \(named \.jpg\)"):
        check_file(SourceFile(str(video), "video.jpg"))
    array = tmp_path / "array.jpg"
    np.save(array.with_suffix(".npy"), np.arange(10))
    os.replace(array.with_suffix(".npy"), array)
    with pytest.raises(NumpyFile):
        check_file(SourceFile(str(array), "array.jpg"))


@pytest.mark.timeout(10)
def test_check_file_never_waits_on_a_named_pipe(tmp_path: Path) -> None:
    path = tmp_path / "pipe.jpg"
    os.mkfifo(path)
    with pytest.raises(Skip, match="not a regular file"):
        check_file(SourceFile(str(path), "pipe.jpg"))


def test_the_read_stage_plans_data_files_and_passes_images_on(tmp_path: Path) -> None:
    image = tmp_path / "photo.jpg"
    _jpeg(image)
    assert steps.read(SourceFile(str(image), "photo.jpg")) == ImageFile(str(image), "photo.jpg")
    # an image-named .npy is planned as data here, in the parent
    named = tmp_path / "really_an_array.jpg"
    with named.open("wb") as fh:
        np.save(fh, np.arange(1000, dtype=np.float64))
    planned = steps.read(SourceFile(str(named), "really_an_array.jpg"))
    assert isinstance(planned, Split)
    assert planned.through == "crunch"
    # a data-named file that holds an image goes on as an image
    disguised = tmp_path / "image.npy"
    _jpeg(disguised)
    got = steps.read(DataFile(str(disguised), "image.npy"))
    assert got == ImageFile(str(disguised), "image.npy")


def test_the_worker_reads_the_file_and_checks_it_again(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    _jpeg(path, (640, 480))
    checked = check_file(SourceFile(str(path), "a.jpg"))
    options = ResizeOptions()
    rendered = steps.resize(checked, options)
    assert rendered.rel == "a.jpg"
    assert rendered.result.original_size == (640, 480)
    # changed between the check in the parent and the read in the worker
    path.write_bytes(b"%PDF-1.7\n" + b"x" * 100)
    with pytest.raises(Skip, match="not an image or data file"):
        steps.resize(checked, options)
    data = _jpeg(path, (640, 480))
    with pytest.raises(FileTooLarge):
        steps.resize(checked, options, len(data) - 1)
    os.unlink(path)
    with pytest.raises(FileNotFoundError):
        steps.resize(checked, options)


def test_files_named_as_images_go_to_the_worker_unopened(tmp_path: Path) -> None:
    src = SourceFile(str(tmp_path / "a.JPG"), "a.JPG", "t")
    assert steps.to_worker(src) == ImageFile(src.path, "a.JPG", "t")
    for other in (
        SourceFile(str(tmp_path / "notes.txt"), "notes.txt"),  # another name: read looks
        SourceFile(str(tmp_path / "jpg"), "jpg"),
        SourceFile("s3://bucket/a.jpg", "a.jpg"),  # storage: read in the parent's threads
        DataFile(str(tmp_path / "a.npy"), "a.npy"),
    ):
        assert steps.to_worker(other) is other


#: Runs ``process`` with an audit hook that lists the input files the parent opens.
_WATCH_OPENS = """
import json, os, sys
opened = []
root = os.path.realpath(sys.argv[1])
def hook(event, args):
    if event == "open" and isinstance(args[0], str) and args[0].startswith(root):
        opened.append(os.path.basename(args[0]))
sys.addaudithook(hook)
from app.config import ProcessConfig
from app.process import run_process
run_process(ProcessConfig(inputs=(root,), output=sys.argv[2], quiet=True))
print(json.dumps(sorted(set(opened))))
"""


def test_the_parent_opens_no_file_named_as_an_image(tmp_path: Path) -> None:
    """The parent's share of a local image is its directory entry: the resize worker opens it
    (in a real run, watched by an audit hook); a file of another name is opened by the read
    stage, in the parent, and still recognised by its content."""
    src = tmp_path / "in"
    src.mkdir()
    _jpeg(src / "a.jpg")
    _jpeg(src / "b.PNG")  # a JPEG named .PNG: by content, in the worker
    (src / "c.jpg").write_text("not an image")
    _jpeg(src / "photo")  # no extension: read looks at it
    (src / "notes.txt").write_text("hello")
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-c", _WATCH_OPENS, str(src), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == ["notes.txt", "photo"]
    recs = {r["key"]: r for r in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    assert {k: (r["status"], r.get("stage")) for k, r in recs.items()} == {
        "a.jpg": ("ok", None),
        "b.PNG": ("ok", None),
        "c.jpg": ("skipped", "resize"),
        "photo": ("ok", None),
        "notes.txt": ("skipped", "read"),
    }
