"""The image stages' plain functions: ``render`` (decode + resize + statistics, one process
call) and ``write_outputs`` (atomic writes, the record's result).

Outputs mirror the input tree under ``<output>/<size label>/``: ``photos/a/b.jpg`` at size 512
becomes ``out/512/a/b.jpg`` (one folder per size). When the output format changes the
extension, the original one is kept in the name (``b.png`` → ``b.png.jpg``) so that ``b.png``
and ``b.jpg`` never write the same file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .files import Loaded, safe_join, write_atomic
from .options import ImageResult, ResizeOptions

__all__ = ["Rendered", "output_rel", "outputs_exist", "render", "write_outputs"]

_SAME = {".jpeg": ".jpg", ".jpe": ".jpg", ".tif": ".tiff"}


@dataclass(frozen=True, slots=True)
class Rendered:
    rel: str
    result: ImageResult
    origin: dict[str, Any] | None = None


def render(loaded: Loaded, options: ResizeOptions) -> Rendered:
    """Decode, resize to every size, compute statistics: runs in a process worker."""
    from .imaging import process_image  # numpy and Pillow: in the workers only

    return Rendered(loaded.rel, process_image(loaded.data, options), loaded.origin)


def output_rel(rel: str, label: str, ext: str) -> str:
    """Where one output of ``rel`` goes, relative to the output folder."""
    _stem, dot, suffix = rel.rpartition(".")
    current = _SAME.get(f".{suffix.lower()}", f".{suffix.lower()}") if dot else ""
    name = rel if current == ext else f"{rel}{ext}"
    return f"{label}/{name}"


def write_outputs(rendered: Rendered, root: str) -> dict[str, Any]:
    """Write every output atomically; return the JSON-able result the manifest records."""
    base = Path(root)
    res = rendered.result
    outputs = []
    for enc in res.outputs:
        rel = output_rel(rendered.rel, enc.label, enc.ext)
        write_atomic(safe_join(base, rel), enc.data)
        outputs.append(
            {
                "path": rel,
                "size": enc.label,
                "width": enc.width,
                "height": enc.height,
                "format": enc.format,
                "bytes": len(enc.data),
            }
        )
    width, height = res.original_size
    extra = {"download": rendered.origin} if rendered.origin else {}
    return {
        **extra,
        "original": {
            "width": width,
            "height": height,
            "mode": res.original_mode,
            "format": res.original_format,
        },
        "outputs": outputs,
        "stats": res.stats,
    }


def outputs_exist(root: Path, result: Any) -> bool:
    """Resume check: every output an earlier ``ok`` record lists is still there and non-empty."""
    if not isinstance(result, dict) or not isinstance(result.get("outputs"), list):
        return False
    try:
        return all((root / o["path"]).stat().st_size > 0 for o in result["outputs"])
    except (OSError, KeyError, TypeError):
        return False
