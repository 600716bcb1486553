"""The image stages' plain functions: ``render`` (decode + resize + statistics, one process
call) and ``write_outputs`` (atomic writes, the record's result).

Outputs mirror the input tree under ``<output>/<size label>/``: ``photos/a/b.jpg`` at size 512
becomes ``out/512/a/b.jpg`` (one folder per size). Names follow :mod:`stages.naming` (``b.png``
→ ``b.png.jpg``; unique in a run by construction). An output path that is not UTF-8 (from such
an input name) is recorded shown escaped as ``path`` and exactly as ``path_b64``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.names import from_b64, with_raw

from .files import Loaded, safe_join, write_output
from .naming import OUTPUT_EXTENSIONS, output_rel
from .options import ImageResult, ResizeOptions
from .storage import is_url

__all__ = [
    "Rendered",
    "output_path",
    "output_paths",
    "output_rel",
    "outputs_intact",
    "remove_output",
    "renamed_output",
    "render",
    "without_outputs",
    "write_outputs",
]


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
            write_output(base, rel, enc.data)
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


def outputs_intact(root: Path | str, result: Any) -> bool:
    """Resume check: every output an earlier ``ok`` record lists is still there as it was
    written, its size the record's ``bytes`` (not empty, for a record without them). An output
    cut short (a copy or a sync that stopped half-way) or written over since is made again,
    not reused: one ``stat`` an output, as a check of existence alone."""
    if not isinstance(result, dict) or not isinstance(result.get("outputs"), list):
        return False
    if isinstance(root, str) and is_url(root):  # object storage: each object's size
        from .storage import StorageError, present_size

        try:
            return all(
                _as_written(present_size(root, output_path(o)), o) for o in result["outputs"]
            )
        except (OSError, KeyError, TypeError, AttributeError, StorageError):
            return False
    # os.path, not pathlib: this runs for every done input of a resumed run (half the cost)
    try:
        return all(
            _as_written(os.stat(os.path.join(root, output_path(o))).st_size, o)
            for o in result["outputs"]
        )
    except (OSError, KeyError, TypeError, AttributeError, ValueError):
        # ValueError: bad base64 in a path_b64; AttributeError: an output that is no mapping
        return False


def _as_written(size: int | None, out: dict[str, Any]) -> bool:
    written = out.get("bytes")
    if isinstance(written, int) and not isinstance(written, bool):
        return size == written
    return (size or 0) > 0


def renamed_output(rel: str, tag: str | None, result: Any) -> str | None:
    """Resume check: the first output an earlier record lists that this run would name
    otherwise, now that the input's place is ``rel`` and its tag ``tag`` (a sibling that came
    or went since changes a name: :mod:`stages.naming`); None when every name still holds.
    Compared for the output's size label and any output extension: the options (the format)
    are compared by the fingerprint."""
    for out in _listed(result):
        try:
            path, label = output_path(out), str(out["size"])
        except (KeyError, TypeError, ValueError):
            continue  # not a record this version wrote: outputs_intact() judges it
        if not any(output_rel(rel, label, ext, tag) == path for ext in OUTPUT_EXTENSIONS):
            return path
    return None


def output_paths(result: Any) -> Iterator[str]:
    """The paths of the outputs a record's ``result`` lists (exactly: :func:`output_path`)."""
    for out in _listed(result):
        try:
            yield output_path(out)
        except (KeyError, TypeError, ValueError):
            continue


def remove_output(root: str, rel: str, before_ns: int) -> bool:
    """Remove the output ``rel`` of the output folder ``root``; False when there is none.
    A local file is removed only if it is a regular file last written before ``before_ns``
    (``time.time_ns()``; a later one was written by the run that asks) and inside ``root``:
    ``UnsafePath``, ``FileExistsError`` (not a file, or newer) otherwise."""
    if is_url(root):
        from .storage import join_url, remove_object

        return remove_object(join_url(root, rel))
    path = safe_join(Path(root), rel)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode):
        raise FileExistsError(f"{rel} is not a file")
    if st.st_mtime_ns >= before_ns:
        raise FileExistsError(f"{rel} was written by this run")
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def without_outputs(result: Any, drop: Callable[[str], bool]) -> Any:
    """``result`` without the outputs whose path ``drop`` picks: a copy, or ``result`` itself
    when it lists none of them."""
    outputs = _listed(result)
    kept = [o for o in outputs if not _picked(o, drop)]
    return result if len(kept) == len(outputs) else {**result, "outputs": kept}


def _picked(out: Any, drop: Callable[[str], bool]) -> bool:
    try:
        return drop(output_path(out))
    except (KeyError, TypeError, ValueError):
        return False


def _listed(result: Any) -> list[Any]:
    """The ``outputs`` a record's ``result`` lists ([] for another kind of result)."""
    outputs = result.get("outputs") if isinstance(result, dict) else None
    return outputs if isinstance(outputs, list) else []
