"""The public image functions: a thumbnail, its statistics, its encoding; what a script calls.

These are the pipeline's own steps, not a second implementation: :func:`thumbnail` is the
resize stage's decode and resize (:func:`stages.imaging.thumbnail_image`), :func:`encode` its
encoding (:func:`stages.imaging.encode_image`) and :func:`image_stats` the statistics the
manifest records (:func:`stages.stats.image_stats`), so ``encode(thumbnail(data, 256), "jpeg")``
is byte for byte what ``process --size 256 --format jpeg`` writes for ``data``.

Options are keyword-only and checked before any work: an invalid one is a ``ValueError``. A bad
input image raises an :class:`~stages.options.ImageError` (``DecodeError``, ``TruncatedImage``,
``DecompressionBomb``, ``OutputTooLarge``, ``UnsupportedImage``).

This module imports neither numpy nor Pillow: the functions import them when first called, so
``import stages`` stays light (a process that only builds pipelines never loads them).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from .options import EncodedFormat, ResizeMode, ResizeOptions, SizeLike, as_size

if TYPE_CHECKING:
    from PIL import Image

    from .stats import ImageStats

__all__ = ["encode", "image_stats", "thumbnail"]

_DEFAULTS = ResizeOptions()
_FORMATS: dict[str, EncodedFormat] = {
    "jpeg": "jpeg",
    "jpg": "jpeg",
    "png": "png",
    "webp": "webp",
    "avif": "avif",
}


def thumbnail(
    source: bytes | bytearray | memoryview | str | os.PathLike[str],
    size: SizeLike,
    *,
    mode: ResizeMode = "fit",
    upscale: bool = False,
    allow_truncated: bool = False,
    max_pixels: int = _DEFAULTS.max_pixels,
    max_output_pixels: int = _DEFAULTS.max_output_pixels,
    pad_color: tuple[int, int, int] = _DEFAULTS.pad_color,
) -> Image.Image:
    """An image file (a path, or its bytes) resized to ``size``, as a ``PIL.Image.Image``.

    ``size``: ``512`` or ``"512"`` (a 512x512 box), ``"640x480"``, ``(640, 480)``, ``"640x"``
    (width only). ``mode``: ``fit`` inside the box, ``fill`` it and crop the overflow, ``pad``
    to exactly the box with ``pad_color``, ``exact`` (stretch). ``upscale``: enlarge images
    smaller than the box (off: they keep their size).

    The decode is the pipeline's: EXIF orientation applied, an embedded ICC profile converted
    to sRGB, CMYK, palette, 16-bit and 1-bit images converted, the first frame of an animation,
    the pixel count checked from the header before anything is decoded (``max_pixels``:
    :class:`~stages.options.DecompressionBomb`), and the output's (``max_output_pixels``,
    8192 x 8192 by default: :class:`~stages.options.OutputTooLarge`), JPEGs decoded at a reduced
    scale when the target is much smaller. The result is L, LA, RGB or RGBA (alpha kept; ``pad``
    pads it with transparency), without metadata. A truncated file raises
    :class:`~stages.options.TruncatedImage` unless ``allow_truncated``.
    """
    options = ResizeOptions(
        sizes=(as_size(size),),
        mode=mode,
        upscale=upscale,
        allow_truncated=allow_truncated,
        max_pixels=max_pixels,
        max_output_pixels=max_output_pixels,
        pad_color=pad_color,
    )
    data = _read(source)
    from .imaging import thumbnail_image

    return thumbnail_image(data, options)


def _read(source: bytes | bytearray | memoryview | str | os.PathLike[str]) -> bytes:
    if isinstance(source, bytes):
        return source
    if isinstance(source, bytearray | memoryview):
        return bytes(source)
    if isinstance(source, str | os.PathLike):
        return Path(source).read_bytes()
    raise TypeError(f"expected a path or the bytes of an image file, got {type(source).__name__}")


def encode(image: Image.Image, format: str = "jpeg", *, quality: int = 85) -> bytes:
    """``image`` encoded as ``format`` (``"jpeg"``/``"jpg"``, ``"png"``, ``"webp"``, ``"avif"``),
    as the pipeline writes its outputs: alpha flattened onto white for JPEG, an embedded ICC
    profile converted to sRGB, no metadata; ``quality`` (1..100) for JPEG, WebP and AVIF.
    ``image`` is left unchanged."""
    fmt = _FORMATS.get(format.lower()) if isinstance(format, str) else None
    if fmt is None:
        raise ValueError(f"format must be one of {sorted(_FORMATS)}, got {format!r}")
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ValueError(f"quality must be an int between 1 and 100, got {quality!r}")
    from .imaging import encode_image

    return encode_image(image, fmt, quality)


def image_stats(image: Image.Image) -> ImageStats:
    """The statistics the manifest records for an image, all JSON-serialisable.

    ``width``, ``height``, ``mode``; ``mean`` and ``std`` per channel (R, G, B or L; alpha left
    out); ``histogram``: 32 bins of 8-bit luminance; ``sharpness``: the variance of the
    Laplacian of the luminance (higher is sharper; compare images of similar size); ``dhash``:
    a 64-bit difference hash as 16 hex digits (near-duplicates differ in few bits). The
    pipeline computes them on the largest output, so for the manifest's figures pass the
    thumbnail, not the original.
    """
    from .stats import image_stats as stats_of

    return stats_of(image)
