"""Table rows on their way to a training set: inputs, download and decode that never raise
for one bad input, and the filters.

:func:`sample_inputs` makes one item per row of a URL table (:mod:`stages.tables_in`), keyed by
its row number. :func:`~stages.sample_fetch.download_sample` (in its own module, so that the
process workers that run :func:`render_sample` never import aiohttp: ~14 MB each) and
:func:`render_sample` are the download and resize stages of a shard run: for a bad input
they return a :class:`Rejected` value instead of raising, so that the input reaches the shard
writer and gets its row in the shard's metadata table (:mod:`stages.shards`, whose ``commit``
raises it again for the record).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline import Item, Record, RemoteError, Skip, Status

from .files import Loaded
from .options import ImageError, ResizeOptions
from .tables_in import iter_table
from .thumbs import Rendered, render

__all__ = [
    "Rejected",
    "SampleFilters",
    "SampleSource",
    "described_as",
    "render_sample",
    "sample_inputs",
]

_ROW_DIGITS = 9  # keys as img2dataset's: 9 digits (its shard id + index in shard)


@dataclass(frozen=True, slots=True)
class SampleSource:
    """A table row on its way to the download stage."""

    url: str
    key: str
    caption: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"key": self.key, "url": self.url, "caption": self.caption, "extra": self.extra}


@dataclass(frozen=True, slots=True)
class Rejected:
    """An input that will be no sample: its status (failed or skipped), where and why."""

    sample: dict[str, Any]
    status: str
    stage: str
    error_type: str
    message: str
    http_status: int | None = None

    def error(self) -> BaseException:
        """What ``commit`` raises, so that the record reads as if the stage had raised it."""
        if self.status == "skipped":
            return Skip(self.message)
        return RemoteError(self.error_type, self.message)


def sample_inputs(
    tables: Sequence[str],
    *,
    url_col: str = "url",
    caption_col: str | None = None,
    keep: Sequence[str] = (),
) -> Iterator[Item | Record]:
    """One item per table row, keyed by its row number (``000000042``; with several tables
    ``1_000000042`` for the second): stable from one run to the next. A row without a URL is a
    ``failed`` record."""
    described = caption_col is not None or bool(keep)
    for t, path in enumerate(tables):
        prefix = f"{t}_" if t else ""
        for row in iter_table(path, url_col=url_col, caption_col=caption_col, keep=keep):
            key = f"{prefix}{row.row:0{_ROW_DIGITS}d}"
            where = f"{path}:{row.row}"
            if row.error is not None:
                yield Record(
                    key=key,
                    status=Status.FAILED,
                    source=where,
                    stage="sources",
                    error_type="BadTableRow",
                    error=f"{row.error}: {row.url!r}"[:2048],
                    attempts=1,
                    meta={"url": row.url},
                )
                continue
            value = SampleSource(row.url, key, row.caption, row.extra)
            meta = {"url": row.url}
            if described:  # (a null caption too: one given since is an edit)
                meta["described"] = described_as(row.caption, row.extra)
            yield Item(key=key, value=value, source=where, meta=meta)


def described_as(caption: str | None, extra: dict[str, Any]) -> str:
    """A digest of what a row says of its image (its caption and kept columns), kept in its
    record: resume tells a row described otherwise since its sample was written."""
    text = json.dumps([caption, extra], sort_keys=True, default=repr, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class SampleFilters:
    """Images left out of a training set (skipped with the reason): a smaller side below
    ``min_side`` pixels, a longer side over ``max_ratio`` times the shorter (None: any)."""

    min_side: int = 0
    max_ratio: float | None = None

    def why_not(self, width: int, height: int) -> str | None:
        short, long = min(width, height), max(width, height)
        if short < self.min_side:
            return f"image {width}x{height} is smaller than --min-image-size {self.min_side}"
        if self.max_ratio is not None and long > self.max_ratio * max(short, 1):
            ratio = long / max(short, 1)
            return f"image {width}x{height}: aspect ratio {ratio:.2f} over {self.max_ratio:g}"
        return None


def render_sample(
    value: Loaded, options: ResizeOptions, filters: SampleFilters | None = None
) -> Rendered | Rejected:
    """Decode and resize (a process worker); an image error, or an image the filters leave out
    (checked on the header's size, before decoding), is a :class:`Rejected` value."""
    origin = value.origin or {}
    status = origin.get("download", {}).get("http_status")
    data = bytes(value.data)  # bytes already in a worker (a spooled body arrives as bytes)
    if filters is not None and (filters.min_side or filters.max_ratio is not None):
        why = filters.why_not(*_header_size(data))
        if why is not None:
            return Rejected(origin.get("sample", {}), "skipped", "resize", "Skip", why, status)
    # hashed here, in the worker, not on the parent's event loop
    origin["sha256"] = hashlib.sha256(data).hexdigest()
    try:
        return render(value, options)
    except ImageError as exc:
        return Rejected(
            origin.get("sample", {}), "failed", "resize", type(exc).__name__, str(exc), status
        )


def _header_size(data: bytes) -> tuple[int, int]:
    """The size an image's header declares (huge for what is not an image: the decode says why)."""
    from PIL import Image, UnidentifiedImageError

    from . import heif

    heif.register_for(data[:12])  # a HEIC's header is read by its plugin, as its decode is
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except (UnidentifiedImageError, OSError, ValueError):
        return (10**9, 10**9)  # not for the filters to judge: the decode fails it
