"""The ledger's files read and written in pieces: ``scan_manifest`` and ``read_manifest_at``
(one pass, then a few look-ups by offset), ``AtomicFile`` (a file streamed, then put in place)."""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import pipeline.atomic
from pipeline import AtomicFile, LedgerError, read_manifest, read_manifest_at, scan_manifest

ROOT = Path(__file__).resolve().parents[1]


def _manifest(folder: Path, records: list[dict[str, Any]]) -> Path:
    path = folder / "manifest.jsonl"
    lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in records]
    path.write_text("".join(lines), encoding="utf-8")
    return path


def test_scan_manifest_gives_offsets_that_read_the_records_back(tmp_path: Path) -> None:
    records = [{"key": "a", "status": "ok"}, {"key": "café/ü", "result": [1]}, {"key": "c"}]
    path = _manifest(tmp_path, records)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("\n   \n")  # blank lines are no records
    scanned = list(scan_manifest(path))
    assert [rec for _, rec in scanned] == list(read_manifest(path)) == records
    offsets = [offset for offset, _ in scanned]
    assert offsets[0] == 0
    assert list(read_manifest_at(path, reversed(offsets))) == records[::-1]


def test_a_line_that_is_not_json_is_named(tmp_path: Path) -> None:
    path = _manifest(tmp_path, [{"key": "a", "status": "ok"}])
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("{not json\n")
    with pytest.raises(LedgerError, match=r"manifest\.jsonl:2: not a JSON record"):
        list(scan_manifest(path))
    offset = len(path.read_bytes().splitlines(keepends=True)[0])
    with pytest.raises(LedgerError, match=rf"manifest\.jsonl:byte {offset}: not a JSON record"):
        list(read_manifest_at(path, [offset]))


def _write_half_then_fail(target: Path) -> None:
    with AtomicFile(target) as out:
        out.file.write(b"half")
        raise RuntimeError("stop")


def test_atomic_file_commits_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "t.csv"
    target.write_bytes(b"old")
    with AtomicFile(target) as out:
        out.file.write(b"new ")
        assert target.read_bytes() == b"old"  # nothing shows before the commit
        out.file.write(b"content")
    assert target.read_bytes() == b"new content"
    with pytest.raises(RuntimeError, match="stop"):
        _write_half_then_fail(target)
    assert target.read_bytes() == b"new content"
    out = AtomicFile(target)
    out.discard()
    out.discard()  # a second time does nothing
    with pytest.raises(ValueError, match="already committed or discarded"):
        out.commit()
    assert target.read_bytes() == b"new content"
    assert os.listdir(tmp_path) == ["t.csv"]


# -- the temporary file: unnamed where it can be (O_TMPFILE), named elsewhere ---------------------
TEMP = r"\.pp-\w+\.tmp"  # a named temporary file


def _unnamed_here(folder: Path) -> bool:
    """Whether ``folder``'s file system makes unnamed files (as pipeline.atomic asks it)."""
    try:
        os.close(os.open(folder, os.O_TMPFILE | os.O_WRONLY, 0o600))
    except OSError:
        return False
    return pipeline.atomic.UNNAMED


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def unnamed_folder(tmp_path: Path) -> Iterator[Path]:
    """A folder whose file system makes unnamed files: the test's own, else one in /dev/shm
    (tmpfs; a container's overlay file system may make none)."""
    if _unnamed_here(tmp_path):
        yield tmp_path
        return
    if not os.path.isdir("/dev/shm") or not _unnamed_here(Path("/dev/shm")):
        pytest.fail("no folder that makes unnamed files (O_TMPFILE): Linux with /proc expected")
    with tempfile.TemporaryDirectory(dir="/dev/shm") as folder:
        yield Path(folder)


def test_the_temporary_file_has_no_name_and_the_target_the_usual_mode(
    unnamed_folder: Path,
) -> None:
    """Nothing shows in the folder while the file is written; a new target, and folders for it,
    appear at the commit with the mode of any new file (0666 less the umask)."""
    tmp_path = unnamed_folder
    target = tmp_path / "deep" / "er" / "t.jpg"
    with AtomicFile(target, fsync=False) as out:
        out.file.write(b"thumbnail")
        assert list(tmp_path.rglob("*")) == [tmp_path / "deep", tmp_path / "deep" / "er"]
    assert target.read_bytes() == b"thumbnail"
    assert _mode(target) == pipeline.atomic.FILE_MODE
    assert sorted(p.name for p in target.parent.iterdir()) == ["t.jpg"]


def test_an_existing_target_is_replaced_through_a_named_file(tmp_path: Path) -> None:
    target = tmp_path / "t.csv"
    target.write_bytes(b"old")
    os.chmod(target, 0o600)
    seen: list[list[str]] = []
    rename = os.replace

    def watch(src: str, dst: Path) -> None:  # what the folder holds just before the rename
        seen.append(sorted(os.listdir(tmp_path)))
        rename(src, dst)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline.atomic.os, "replace", watch)
        pipeline.atomic.atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert _mode(target) == pipeline.atomic.FILE_MODE  # the new file's, not the old one's
    assert os.listdir(tmp_path) == ["t.csv"]
    if _unnamed_here(tmp_path):  # linked under a temporary name only once whole
        assert len(seen) == 1
        assert re.fullmatch(TEMP, seen[0][0])
        assert seen[0][1:] == ["t.csv"]


_WRITER = """
import sys
from pathlib import Path
from pipeline import AtomicFile
out = AtomicFile(Path(sys.argv[1]))
out.file.write(b"half of a thumbnail")
out.file.flush()
print("written", flush=True)
sys.stdin.read()  # killed here
"""


def test_a_writer_killed_mid_file_leaves_nothing(tmp_path: Path) -> None:
    """SIGKILL while the file is written: an unnamed temporary file goes with the process (a
    named one, where the file system makes no unnamed files, stays for the next run to sweep:
    app.leftovers)."""
    folder = tmp_path / "out"
    folder.mkdir()
    with subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(folder / "t.jpg")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=ROOT,
    ) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == b"written\n"
        finally:
            proc.kill()
            proc.wait(timeout=30)
    left = sorted(os.listdir(folder))
    if _unnamed_here(folder):
        assert left == []
    else:
        (name,) = left
        assert re.fullmatch(TEMP, name)


@pytest.mark.parametrize("how", ["file system", "no /proc"])
def test_without_unnamed_files_the_temporary_file_is_named(
    how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where ``O_TMPFILE`` fails with EOPNOTSUPP (NFS, FUSE) or ``/proc`` is missing, the file is
    written under a temporary name beside the target, then renamed: the same result."""
    if how == "no /proc":
        monkeypatch.setattr(pipeline.atomic, "UNNAMED", False)
    else:
        real_open = os.open

        def no_tmpfile(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
            if flags & os.O_TMPFILE == os.O_TMPFILE:
                raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP), str(path))
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(pipeline.atomic.os, "open", no_tmpfile)
    target = tmp_path / "sub" / "t.jpg"
    with AtomicFile(target) as out:
        out.file.write(b"thumbnail")
        (name,) = os.listdir(target.parent)
        assert re.fullmatch(TEMP, name)
    assert target.read_bytes() == b"thumbnail"
    assert _mode(target) == pipeline.atomic.FILE_MODE
    assert os.listdir(target.parent) == ["t.jpg"]
