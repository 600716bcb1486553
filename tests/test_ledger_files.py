"""The ledger's files read and written in pieces: ``scan_manifest`` and ``read_manifest_at``
(one pass, then a few look-ups by offset), ``AtomicFile`` (a file streamed, then put in place)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from pipeline import AtomicFile, LedgerError, read_manifest, read_manifest_at, scan_manifest


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
