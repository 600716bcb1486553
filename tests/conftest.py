from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest


def read_manifest(folder: Path) -> list[dict[str, Any]]:
    lines = (folder / "manifest.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def by_key(folder: Path) -> dict[str, dict[str, Any]]:
    records = read_manifest(folder)
    keys = [r["key"] for r in records]
    assert len(keys) == len(set(keys)), "manifest has a key twice"
    return {r["key"]: r for r in records}


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "out"
