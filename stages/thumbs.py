"""The image stages' plain functions: ``render`` (decode + resize + statistics, one process
call) and ``write_outputs`` (atomic writes, the record's result).

Outputs mirror the input tree under ``<output>/<size label>/``: ``photos/a/b.jpg`` at size 512
becomes ``out/512/a/b.jpg`` (one folder per size). Names follow :mod:`stages.naming` (``b.png``
→ ``b.png.jpg``; unique in a run by construction). An output path that is not UTF-8 (from such
an input name) is recorded shown escaped as ``path`` and exactly as ``path_b64``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.names import from_b64, with_raw

from .files import Loaded, safe_join, write_atomic
from .naming import output_rel
from .options import ImageResult, ResizeOptions
from .storage import is_url

__all__ = ["Rendered", "output_path", "output_rel", "outputs_exist", "render", "write_outputs"]


@dataclass(frozen=True, slots=True)
class Rendered:
    rel: str
    result: ImageResult
    origin: dict[str, Any] | None = None
    tag: str | None = None


def render(loaded: Loaded, options: ResizeOptions) -> Rendered:
    """Decode, resize to every size, compute statistics: runs in a process worker."""
    from .imaging import process_image  # numpy and Pillow: in the workers only

    # bytes() is the bytes object itself, or a spooled download's content (a process worker
    # always receives plain bytes; a thread, as on Dask, reads the file here)
    result = process_image(bytes(loaded.data), options)
    return Rendered(loaded.rel, result, loaded.origin, loaded.tag)


def output_path(out: dict[str, Any]) -> str:
    """An output's path (relative to the output folder) as a record lists it, exactly."""
    raw = out.get("path_b64")
    return from_b64(raw) if isinstance(raw, str) else str(out["path"])


def write_outputs(rendered: Rendered, root: str) -> dict[str, Any]:
    """Write every output atomically; return the JSON-able result the manifest records."""
    base = Path(root)
    res = rendered.result
    outputs = []
    for enc in res.outputs:
        rel = output_rel(rendered.rel, enc.label, enc.ext, rendered.tag)
        if is_url(root):  # object storage: one whole object (stages.storage)
            from .storage import join_url, write_object

            write_object(join_url(root, rel), enc.data)
        else:
            write_atomic(safe_join(base, rel), enc.data)
        fields: dict[str, Any] = {}
        with_raw(fields, "path", rel)
        outputs.append(
            {
                **fields,
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


def outputs_exist(root: Path | str, result: Any) -> bool:
    """Resume check: every output an earlier ``ok`` record lists is still there and non-empty."""
    if not isinstance(result, dict) or not isinstance(result.get("outputs"), list):
        return False
    if isinstance(root, str) and is_url(root):  # object storage: each object, size > 0
        from .storage import StorageError, present_size

        try:
            sizes = (present_size(root, output_path(o)) for o in result["outputs"])
            return all((n or 0) > 0 for n in sizes)
        except (OSError, KeyError, TypeError, StorageError):
            return False
    root = Path(root)
    try:
        return all((root / output_path(o)).stat().st_size > 0 for o in result["outputs"])
    except (OSError, KeyError, TypeError):
        return False
