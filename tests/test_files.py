"""The read stage's function: content recognition, the size cap, files that grow while they are
read, and entries that are not regular files."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import stages.files
from pipeline import Skip
from stages.files import FileTooLarge, Loaded, read_file
from stages.sources import SourceFile

JPEG_HEAD = b"\xff\xd8\xff\xe0"


def test_reads_the_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    payload = JPEG_HEAD + bytes(range(256)) * 1000
    path.write_bytes(payload)
    got = read_file(SourceFile(str(path), "a.jpg", "0123abcd"))
    assert got == Loaded("a.jpg", payload, tag="0123abcd")


def test_a_file_over_the_cap_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    path.write_bytes(JPEG_HEAD + b"x" * 997)
    with pytest.raises(FileTooLarge, match="1,001 bytes is over the 1,000-byte cap"):
        read_file(SourceFile(str(path), "big.jpg"), max_bytes=1000)
    assert len(read_file(SourceFile(str(path), "big.jpg"), max_bytes=1001).data) == 1001


def test_a_big_file_that_is_not_an_image_is_skipped_not_refused(tmp_path: Path) -> None:
    path = tmp_path / "video.jpg"
    path.write_bytes(b"\x1aE\xdf\xa3" + b"\x00" * 5000)
    with pytest.raises(Skip, match=r"Matroska/WebM video \(named \.jpg\)"):
        read_file(SourceFile(str(path), "video.jpg"), max_bytes=1000)


def _fstat_saying(size: int) -> Callable[[int], Any]:
    """``os.fstat`` as it answers just before a file grows: the size it had then."""
    real = os.fstat

    def fstat(fd: int) -> os.stat_result:
        st = real(fd)
        values = list(st)
        values[6] = min(size, st.st_size)  # st_size
        return os.stat_result(values)

    return fstat


def test_a_file_that_grows_while_it_is_read_is_read_to_its_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = JPEG_HEAD + os.urandom(100_000)
    path = tmp_path / "g.jpg"
    path.write_bytes(payload)
    monkeypatch.setattr(stages.files.os, "fstat", _fstat_saying(10_000))
    assert read_file(SourceFile(str(path), "g.jpg"), max_bytes=200_000).data == payload


def test_a_file_that_grows_past_the_cap_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "g.jpg"
    path.write_bytes(JPEG_HEAD + os.urandom(100_000))
    monkeypatch.setattr(stages.files.os, "fstat", _fstat_saying(10_000))
    with pytest.raises(FileTooLarge, match="more than the 50,000-byte cap"):
        read_file(SourceFile(str(path), "g.jpg"), max_bytes=50_000)


@pytest.mark.timeout(10)
def test_a_named_pipe_is_never_waited_on(tmp_path: Path) -> None:
    """A file swapped for a FIFO after the walk: opened without blocking, then skipped."""
    path = tmp_path / "pipe.jpg"
    os.mkfifo(path)
    with pytest.raises(Skip, match="not a regular file"):
        read_file(SourceFile(str(path), "pipe.jpg"))


def test_downloaded_bytes_pass_through() -> None:
    loaded = Loaded("host/a.jpg", b"data", {"status": 200})
    assert read_file(loaded) is loaded


def test_walking_a_wide_folder_keeps_its_names_not_its_entries(tmp_path: Path) -> None:
    """A flat folder of many files (a dataset of one folder: COCO's 118,000 images, or a
    million): the walk holds the folder's names while it goes, ~240 bytes a file. It held an
    ``os.DirEntry`` a file, and the stat each had taken, until the folder was done: ~1 KB a
    file (984 B here; a million files, a gigabyte), on top of the run's own memory."""
    import tracemalloc

    from stages.sources import walk_inputs

    n = 20_000
    for i in range(n):
        os.close(os.open(tmp_path / f"img_{i:07d}_from_a_camera.jpg", os.O_CREAT | os.O_WRONLY))
    tracemalloc.start()
    try:
        keys = [item.key for item in walk_inputs([tmp_path])]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    keys_size = sum(len(k) + 49 for k in keys) + 8 * n  # what the test itself keeps
    assert len(keys) == n
    assert keys == sorted(keys)
    assert (peak - keys_size) / n < 400, f"{(peak - keys_size) / n:.0f} bytes a file"
