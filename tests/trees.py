"""Helpers for tests over trees of files whose names are bytes: the manifest read by exact
bytes (``key_b64`` / ``path_b64``), the files below a folder, tiny solid-colour images."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from PIL import Image, ImageStat

#: Well-separated colours (every channel 0, 128 or 255): each input of a tree gets its own, so an
#: output tells which input it was made from even after lossy encoding.
PALETTE: tuple[tuple[int, int, int], ...] = tuple(
    (r, g, b) for r in (0, 128, 255) for g in (0, 128, 255) for b in (0, 128, 255)
)


ROOT = Path(__file__).resolve().parents[1]

#: Named colours for tests that check which input an output was made from.
COLOURS = {
    "red": (220, 20, 20),
    "green": (20, 200, 20),
    "blue": (20, 20, 220),
    "yellow": (230, 220, 20),
}


def manifest_records(out: Path) -> list[dict[str, Any]]:
    lines = (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def key_bytes(record: dict[str, Any]) -> bytes:
    """A record's key exactly as the file system spells it."""
    raw = record.get("key_b64")
    return base64.b64decode(raw) if raw is not None else str(record["key"]).encode()


def path_bytes(output: dict[str, Any]) -> bytes:
    """An output's path (relative to the output folder) exactly as the file system spells it."""
    raw = output.get("path_b64")
    return base64.b64decode(raw) if raw is not None else str(output["path"]).encode()


def records_by_bytes(out: Path) -> dict[bytes, dict[str, Any]]:
    """The manifest's records by exact key bytes; fails on a key recorded twice."""
    records = manifest_records(out)
    found = {key_bytes(r): r for r in records}
    assert len(found) == len(records), "manifest has a key twice"
    return found


def outputs_of(record: dict[str, Any]) -> list[dict[str, Any]]:
    result = record.get("result")
    if not isinstance(result, dict):
        return []
    outputs = result.get("outputs")
    return outputs if isinstance(outputs, list) else []


def files_below(root: bytes) -> dict[bytes, int]:
    """Every regular file below ``root``: relative path (``b"/"``-separated) -> ``st_mtime_ns``."""
    found: dict[bytes, int] = {}
    for folder, _dirs, names in os.walk(root):
        rel = os.path.relpath(folder, root)
        for name in names:
            path = os.path.join(folder, name)
            found[name if rel == b"." else rel + b"/" + name] = os.stat(path).st_mtime_ns
    return found


def solid(fmt: str, colour: tuple[int, int, int], size: tuple[int, int]) -> bytes:
    """A solid-colour RGB image encoded as ``fmt``."""
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, fmt)
    return buf.getvalue()


def nearest_colour(path: bytes) -> tuple[int, int, int]:
    """The :data:`PALETTE` colour closest to the mean colour of the image at ``path`` (fully
    decoded: a file that does not decode fails here)."""
    with Image.open(os.fsdecode(path)) as im:
        im.load()
        mean = ImageStat.Stat(im.convert("RGB")).mean
    return min(PALETTE, key=lambda c: sum((a - b) ** 2 for a, b in zip(c, mean, strict=True)))


def image_bytes(colour: str = "red", fmt: str = "JPEG", size: tuple[int, int] = (40, 30)) -> bytes:
    """A solid image of one of the :data:`COLOURS`."""
    return solid(fmt, COLOURS[colour], size)


def write(folder: str | bytes | Path, name: str | bytes, data: bytes) -> bytes:
    """Write ``data`` at ``folder/name`` (either may be bytes); return the path as bytes."""
    path = os.path.join(os.fsencode(folder), os.fsencode(name))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)
    return path


def source_bytes(record: dict[str, Any]) -> bytes:
    raw = record.get("source_b64")
    return base64.b64decode(raw) if raw is not None else str(record["source"]).encode()


def run_id(out: Path) -> str:
    return str(json.loads((out / "summary.json").read_text())["run"])


def output_paths(record: dict[str, Any]) -> list[bytes]:
    return [path_bytes(o) for o in outputs_of(record)]


def looks(path: bytes, colour: str, tol: int = 40) -> bool:
    """Whether the image at ``path`` is (about) the named colour in its centre."""
    with Image.open(os.fsdecode(path)) as im:
        rgb = im.convert("RGB")
        got = rgb.getpixel((rgb.width // 2, rgb.height // 2))
    assert isinstance(got, tuple)
    return all(abs(a - b) <= tol for a, b in zip(got, COLOURS[colour], strict=True))


def cli(
    *args: str | bytes | Path, timeout: float = 120, **kw: Any
) -> subprocess.CompletedProcess[str]:
    """``python -m pipeline process ARGS`` in a subprocess (arguments may be bytes)."""
    argv = [sys.executable, "-m", "pipeline", "process", *(os.fsdecode(a) for a in args)]
    return subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False, **kw
    )
