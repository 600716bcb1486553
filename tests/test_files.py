"""The read stage's function: the size cap, and files that grow while they are read."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

import pytest

from stages.files import FileTooLarge, Loaded, read_file
from stages.sources import SourceFile


def test_reads_the_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    path.write_bytes(bytes(range(256)) * 1000)
    got = read_file(SourceFile(str(path), "a.jpg"))
    assert got == Loaded("a.jpg", bytes(range(256)) * 1000)


def test_a_file_over_the_cap_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    path.write_bytes(b"x" * 1001)
    with pytest.raises(FileTooLarge, match="1,001 bytes is over the 1,000-byte cap"):
        read_file(SourceFile(str(path), "big.jpg"), max_bytes=1000)
    assert read_file(SourceFile(str(path), "big.jpg"), max_bytes=1001).data == b"x" * 1001


def _fifo_fed_with(tmp_path: Path, payload: bytes) -> tuple[Path, threading.Thread]:
    """A named pipe: its size says 0, then ``payload`` arrives, like a file still growing."""
    path = tmp_path / "growing.jpg"
    os.mkfifo(path)

    def feed() -> None:
        # open blocks until the reader opens the pipe; a reader that stops early (the cap)
        # closes it, and the rest of the payload has nowhere to go
        with contextlib.suppress(BrokenPipeError), open(path, "wb") as fh:
            for i in range(0, len(payload), 4096):
                fh.write(payload[i : i + 4096])

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    return path, writer


def test_a_file_that_grows_while_it_is_read_is_read_to_its_end(tmp_path: Path) -> None:
    payload = os.urandom(100_000)
    path, writer = _fifo_fed_with(tmp_path, payload)
    assert read_file(SourceFile(str(path), "g.jpg"), max_bytes=200_000).data == payload
    writer.join(5)


def test_a_file_that_grows_past_the_cap_is_refused(tmp_path: Path) -> None:
    path, writer = _fifo_fed_with(tmp_path, os.urandom(100_000))
    with pytest.raises(FileTooLarge, match="more than the 50,000-byte cap"):
        read_file(SourceFile(str(path), "g.jpg"), max_bytes=50_000)
    writer.join(5)


def test_downloaded_bytes_pass_through() -> None:
    loaded = Loaded("host/a.jpg", b"data", {"status": 200})
    assert read_file(loaded) is loaded
