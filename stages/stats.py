"""Statistics of one decoded image: the summary the resize stage records for each image.

:func:`image_stats` summarises one (small) decoded image: size, mode, per-channel mean and
standard deviation, a 32-bin luminance histogram, a sharpness figure (variance of the Laplacian)
and a 64-bit difference hash (:func:`dhash`). The resize stage calls it on the largest *output*
image, never on the full-resolution decode, so it costs a fraction of a millisecond.

Pillow alone, no numpy: every figure comes from exact integer sums over histograms that Pillow
counts in C — the per-channel mean and deviation from each band's 256-level histogram, the
sharpness from the histogram of the Laplacian (an ``I`` image, counted 256 levels at a time).
The process workers of an image run then never import numpy, and the forkserver that they are
forked from does not preload it: ~11 MiB less over the processes of a run. Comparing and
grouping the hashes is :mod:`stages.neardups` (numpy).

Nothing here raises anything but ``ValueError`` (bad arguments).
"""

from __future__ import annotations

import math
import operator
from typing import TYPE_CHECKING, TypedDict, cast

if TYPE_CHECKING:  # Pillow is imported by the image stages
    from PIL import Image

__all__ = ["DHASH_BITS", "HISTOGRAM_BINS", "ImageStats", "dhash", "image_stats"]

HISTOGRAM_BINS = 32
"""Number of bins of the luminance histogram in :func:`image_stats` (8 grey levels per bin)."""

DHASH_BITS = 64
"""Bits in a difference hash (8 rows x 8 comparisons); rendered as 16 hex digits."""

_LEVELS = range(256)
_SQUARES = [v * v for v in _LEVELS]

#: The conversions that give each mode's colour bands; none for L, RGB and RGBA, taken as they
#: are: RGBA's alpha histogram comes last (not read), and its luminance leaves the alpha out (a
#: copy of the colour bands alone costs ~0.25 ms on a 512 px image). For LA the grey band alone
#: is counted more quickly than both; the premultiplied modes' conversion undoes the
#: premultiplication (Pillow converts La to LA only, hence two steps).
_COLOURS_OF: dict[str, tuple[str, ...]] = {
    "L": (),
    "RGB": (),
    "RGBA": (),
    "LA": ("L",),
    "La": ("LA", "L"),
    "RGBa": ("RGB",),
}


# --------------------------------------------------------------------------- image statistics


def _luminance(im: Image.Image) -> Image.Image:
    """8-bit luminance as Pillow computes it (ITU-R 601-2: L = 0.299 R + 0.587 G + 0.114 B)."""
    return im if im.mode == "L" else im.convert("L")


def dhash(im: Image.Image) -> str:
    """64-bit difference hash of ``im`` as 16 lowercase hex digits.

    Luminance resized to 9x8 with Lanczos; bit i (most significant first, row-major) is set when a
    pixel is brighter than its left neighbour. This is the construction of the ``imagehash``
    package's ``dhash``, so the strings are interchangeable with it.
    """
    from PIL import Image

    px = _luminance(im).resize((9, 8), Image.Resampling.LANCZOS).tobytes()  # 8 rows of 9
    value = 0
    for row in range(0, 72, 9):
        for left, right in zip(px[row : row + 8], px[row + 1 : row + 9], strict=True):
            value = value << 1 | (right > left)
    return f"{value:016x}"


#: The 4-neighbour Laplacian (up, left, centre, right, down), as Pillow's 3x3 kernel filter runs
#: it on an ``I`` image: in C, exact for 8-bit pixels (at most 1020 from zero). ``offset`` keeps
#: it non-negative.
_LAPLACIAN = (0, 1, 0, 1, -4, 1, 0, 1, 0)
_LAPLACIAN_OFFSET = 1020


def _sharpness(lum: Image.Image) -> float:
    """Variance of the 4-neighbour Laplacian of 8-bit ``lum`` over its interior pixels (0.0
    below 3x3).

    Exact: the Laplacian is an ``I`` image (Pillow's kernel filter; its edge pixels, which the
    filter copies, are cropped off). Pillow counts an ``I`` image's histogram over the 256
    levels from a given low one, so one count per 256 levels that the Laplacian spans (two to
    four for a photo) gives every level's count, and the sums are exact integers.
    """
    from PIL import ImageFilter

    w, h = lum.size
    if w < 3 or h < 3:
        return 0.0
    kernel = ImageFilter.Kernel((3, 3), _LAPLACIAN, scale=1, offset=_LAPLACIAN_OFFSET)
    lap = lum.convert("I").filter(kernel).crop((1, 1, w - 1, h - 1))
    low, high = cast("tuple[int, int]", lap.getextrema())  # an I image's: two ints
    n, s1, s2 = (w - 2) * (h - 2), 0, 0
    for base in range(low, high + 1, 256):
        counts = lap.histogram(extrema=(base, base + 255))  # level base + i in counts[i]
        c, c1, c2 = _level_sums(counts)
        v = base - _LAPLACIAN_OFFSET
        s1 += v * c + c1
        s2 += v * v * c + 2 * v * c1 + c2
    return (n * s2 - s1 * s1) / (n * n)


def _level_sums(counts: list[int]) -> tuple[int, int, int]:
    """n, Σx and Σx² of the levels 0..255 counted in ``counts`` (exact integers)."""
    return (
        sum(counts),
        sum(map(operator.mul, counts, _LEVELS)),
        sum(map(operator.mul, counts, _SQUARES)),
    )


def _moments(hist: list[int], bands: int) -> tuple[list[float], list[float]]:
    """Per-band mean and population std from Pillow's 256-bin histograms (exact integer sums)."""
    means: list[float] = []
    stds: list[float] = []
    for band in range(bands):
        n, s1, s2 = _level_sums(hist[band * 256 : (band + 1) * 256])
        means.append(s1 / n if n else math.nan)
        stds.append(math.sqrt(max(0, n * s2 - s1 * s1)) / n if n else math.nan)
    return means, stds


class ImageStats(TypedDict):
    """What :func:`image_stats` gives (the manifest's ``result.stats`` of an image)."""

    width: int
    height: int
    mode: str
    mean: list[float]
    std: list[float]
    histogram: list[int]
    sharpness: float
    dhash: str


def image_stats(im: Image.Image) -> ImageStats:
    """Summary statistics of a decoded image; every value is JSON-serialisable.

    Keys: ``width``, ``height``, ``mode`` (of ``im``); ``mean`` and ``std`` - per channel (R, G, B
    or L; an alpha channel is excluded, not used as a weight), population standard deviation;
    ``histogram`` - 32 bins of 8-bit luminance (bin = L // 8); ``sharpness`` - variance of the
    4-neighbour Laplacian of the luminance (higher is sharper; comparable only between images of
    similar size); ``dhash`` - see :func:`dhash`.

    Fully transparent pixels count with the colour they hold. The resize stage passes images
    whose invisible pixels are transparent black, as Pillow's (premultiplied) resampling makes
    them and as :mod:`stages.imaging` makes those of an image it does not resample: a file that
    keeps colour under its transparency gets the figures, and the near-duplicate group, of the
    same picture at another size. (Flattening onto white, as JPEG outputs are, was not chosen:
    the figures of every image with alpha would change, and alpha would no longer be left out.)

    Means and deviations come from Pillow's per-band histograms with exact integer sums, so the
    whole call costs about a millisecond on a 512 px image. Modes other than L/LA/RGB/RGBA (1, P,
    CMYK, I;16, ...) are converted with Pillow's default conversion first; callers in this package
    pass L, LA, RGB or RGBA.
    """
    conversions = _COLOURS_OF.get(im.mode)
    if conversions is not None:
        colour = im
        for mode in conversions:
            colour = colour.convert(mode)
    else:
        grey = im.mode in ("1", "I", "F") or im.mode.startswith("I;16")
        colour = im.convert("L" if grey else "RGB")
    bands = 1 if colour.mode == "L" else 3
    colour_hist = colour.histogram()
    means, stds = _moments(colour_hist, bands)
    lum_im = _luminance(colour)
    # a grey image is its own luminance: its histogram is counted once
    lum_hist = colour_hist if bands == 1 else lum_im.histogram()
    width = 256 // HISTOGRAM_BINS
    histogram = [sum(lum_hist[i : i + width]) for i in range(0, 256, width)]
    return {
        "width": im.width,
        "height": im.height,
        "mode": im.mode,
        "mean": means,
        "std": stds,
        "histogram": histogram,
        "sharpness": _sharpness(lum_im),
        "dhash": dhash(lum_im),
    }
