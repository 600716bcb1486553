"""Statistics: per-image summaries, perceptual hashes, and mergeable array statistics.

Two independent parts, all plain functions over numpy:

* :func:`image_stats` summarises one (small) decoded image: size, mode, per-channel mean and
  standard deviation, a 32-bin luminance histogram, a sharpness figure (variance of the Laplacian)
  and a 64-bit difference hash. The resize stage calls it on the largest *output* image, never on
  the full-resolution decode, so it costs a few milliseconds.
* :func:`hamming` and :func:`near_duplicate_groups` compare difference hashes; the grouping uses
  pigeonhole buckets so that 100k hashes are grouped in about a second instead of 5·10⁹ pair
  comparisons (see the function's docstring for the complexity).

The per-channel mean and standard deviation come from each band's 256-level histogram through
:func:`stages.arraystats.level_sums` (exact integer sums), the same sums from which
:func:`stages.arraystats.level_stats` builds the numeric data files' mergeable statistics.

Nothing here raises anything but ``ValueError`` (bad arguments).
"""

from __future__ import annotations

import itertools
import math
from array import array
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from .arraystats import level_sums

if TYPE_CHECKING:  # Pillow is imported by the image stages; grouping hashes does not need it
    from PIL import Image

__all__ = [
    "DHASH_BITS",
    "HISTOGRAM_BINS",
    "dhash",
    "hamming",
    "image_stats",
    "near_duplicate_groups",
]

HISTOGRAM_BINS = 32
"""Number of bins of the luminance histogram in :func:`image_stats` (8 grey levels per bin)."""

DHASH_BITS = 64
"""Bits in a difference hash (8 rows x 8 comparisons); rendered as 16 hex digits."""

_COLOUR_MODES = {"L": "L", "LA": "L", "La": "L", "RGB": "RGB", "RGBA": "RGB", "RGBa": "RGB"}


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

    small = _luminance(im).resize((9, 8), Image.Resampling.LANCZOS)
    px = np.asarray(small, dtype=np.int16)
    bits = (px[:, 1:] > px[:, :-1]).ravel()
    return np.packbits(bits).tobytes().hex()


def _sharpness(lum: npt.NDArray[np.uint8]) -> float:
    """Variance of the 4-neighbour Laplacian over the interior pixels (0.0 below 3x3).

    Exact integer arithmetic: the Laplacian of 8-bit pixels lies in -1020..1020, so it is built
    in place in int16 and squared in int32 (less memory traffic than int32 throughout), and both
    sums are taken in int64. No BLAS call (``np.dot`` on floats would wake OpenBLAS threads that
    spin on the other cores of a process pool).
    """
    if lum.shape[0] < 3 or lum.shape[1] < 3:
        return 0.0
    px = lum.astype(np.int16)
    lap = px[:-2, 1:-1] + px[2:, 1:-1]
    lap += px[1:-1, :-2]
    lap += px[1:-1, 2:]
    lap -= 4 * px[1:-1, 1:-1]
    n = lap.size
    s1 = int(lap.sum(dtype=np.int64))
    sq = lap.astype(np.int32)
    sq *= sq
    s2 = int(sq.sum(dtype=np.int64))
    return (n * s2 - s1 * s1) / (n * n)


def _moments(hist: list[int], bands: int) -> tuple[list[float], list[float]]:
    """Per-band mean and population std from Pillow's 256-bin histograms (exact integer sums)."""
    means: list[float] = []
    stds: list[float] = []
    for row in np.asarray(hist, dtype=np.int64).reshape(bands, 256):
        n, s1, s2 = level_sums(row)
        means.append(s1 / n if n else math.nan)
        stds.append(math.sqrt(max(0, n * s2 - s1 * s1)) / n if n else math.nan)
    return means, stds


def image_stats(im: Image.Image) -> dict[str, object]:
    """Summary statistics of a decoded image; every value is JSON-serialisable.

    Keys: ``width``, ``height``, ``mode`` (of ``im``); ``mean`` and ``std`` - per channel (R, G, B
    or L; an alpha channel is excluded, not used as a weight), population standard deviation;
    ``histogram`` - 32 bins of 8-bit luminance (bin = L // 8); ``sharpness`` - variance of the
    4-neighbour Laplacian of the luminance (higher is sharper; comparable only between images of
    similar size); ``dhash`` - see :func:`dhash`.

    Means and deviations come from Pillow's per-band histograms with exact integer sums, so the
    whole call costs a few milliseconds on a 512 px image. Modes other than L/LA/RGB/RGBA (1, P,
    CMYK, I;16, ...) are converted with Pillow's default conversion first; callers in this package
    pass L, LA, RGB or RGBA.
    """
    colour_mode = _COLOUR_MODES.get(im.mode)
    if colour_mode is None:
        grey = im.mode in ("1", "I", "F") or im.mode.startswith("I;16")
        colour = im.convert("L" if grey else "RGB")
    elif colour_mode != im.mode:
        colour = im.convert(colour_mode)
    else:
        colour = im
    bands = len(colour.getbands())
    means, stds = _moments(colour.histogram(), bands)
    lum_im = _luminance(colour)
    lum_hist = np.asarray(lum_im.histogram(), dtype=np.int64)
    histogram = lum_hist.reshape(HISTOGRAM_BINS, 256 // HISTOGRAM_BINS).sum(axis=1)
    return {
        "width": im.width,
        "height": im.height,
        "mode": im.mode,
        "mean": means,
        "std": stds,
        "histogram": [int(v) for v in histogram],
        "sharpness": _sharpness(np.asarray(lum_im, dtype=np.uint8)),
        "dhash": dhash(lum_im),
    }


# --------------------------------------------------------------------------- hashes


def _parse_hash(h: str) -> int:
    try:
        value = int(h, 16)
    except (TypeError, ValueError):
        raise ValueError(f"not a hexadecimal hash: {h!r}") from None
    if value < 0:
        raise ValueError(f"not a hexadecimal hash: {h!r}")
    return value


def hamming(a_hex: str, b_hex: str) -> int:
    """Number of differing bits between two hex-encoded hashes (e.g. two :func:`dhash` values)."""
    return (_parse_hash(a_hex) ^ _parse_hash(b_hex)).bit_count()


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        parent = self.parent
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            # the smaller index becomes the root: keeps results independent of union order
            if rb < ra:
                ra, rb = rb, ra
            self.parent[rb] = ra


_PAIR_BLOCK = 1 << 22  # max elements of one broadcast comparison block (~32 MB of uint64)


def _close_pairs_in_bucket(
    members: npt.NDArray[np.intp], hashes: npt.NDArray[np.uint64], max_distance: int
) -> Iterable[tuple[int, int]]:
    """All pairs (i, j), i < j, of ``members`` whose hashes differ in ≤ max_distance bits."""
    h = hashes[members]
    b = len(members)
    rows = max(1, _PAIR_BLOCK // b)
    for start in range(0, b - 1, rows):
        stop = min(b - 1, start + rows)
        block = h[start:stop, None] ^ h[None, :]
        close = np.bitwise_count(block) <= max_distance
        # keep only the upper triangle (column index > row index)
        cols = np.arange(b)[None, :]
        rws = np.arange(start, stop)[:, None]
        ri, ci = np.nonzero(close & (cols > rws))
        for r, c in zip(ri.tolist(), ci.tolist(), strict=True):
            yield int(members[start + r]), int(members[c])


def near_duplicate_groups(
    items: Iterable[tuple[str, str]], max_distance: int = 6
) -> list[list[str]]:
    """Group keys whose 64-bit hashes are within ``max_distance`` bits of each other.

    ``items`` are ``(key, hex_hash)`` pairs (keys are expected to be unique). Two keys are linked
    when ``hamming(h1, h2) <= max_distance``; the result is the connected components of size ≥ 2
    (so grouping is transitive: a~b and b~c put a, b, c together even if a and c are further
    apart). Order is deterministic: keys inside a group in input order, groups ordered by their
    first key's input position.

    Algorithm (pigeonhole / multi-index hashing): identical hashes are merged first; the 64 bits
    are cut into ``max_distance + 1`` contiguous chunks, and two hashes within ``max_distance``
    bits must agree exactly on at least one chunk. Each chunk's values are bucketed and only pairs
    inside a bucket are compared, vectorised with numpy. For n distinct, well-spread hashes this
    costs O(n log n + (d+1)·n²/2^(64/(d+1))) — for d = 6 about 7·n²/512 popcounts, roughly one
    second for n = 100 000 — instead of n²/2. Clustered hashes (many near-identical images) make
    buckets bigger; in the worst case (every hash shares every chunk) it degrades to O(n²).
    ``max_distance`` ≥ 64 links everything.

    Memory, besides the keys: about 50 bytes per hash at the peak (hashes, indices and the
    union-find in flat arrays; a list only for the keys of each group found).
    """
    if max_distance < 0:
        raise ValueError(f"max_distance must be >= 0, got {max_distance}")
    keys: list[str] = []
    values = array("Q")  # 8 bytes a hash, not a Python int's 36
    for key, hex_hash in items:
        value = _parse_hash(hex_hash)
        if value >= 1 << DHASH_BITS:
            raise ValueError(f"hash of {key!r} has more than {DHASH_BITS} bits: {hex_hash!r}")
        keys.append(key)
        values.append(value)
    n = len(keys)
    if n < 2:
        return []
    uf = _UnionFind(n)
    hashes = np.frombuffer(values, dtype=np.uint64)

    # 1. exact duplicates: one representative per distinct hash (its first index)
    _, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
    owner = first[inverse.reshape(-1)]
    for i in np.flatnonzero(owner != np.arange(n)).tolist():
        uf.union(int(owner[i]), i)
    reps = np.sort(first)

    if max_distance >= DHASH_BITS:
        for i in reps.tolist():
            uf.union(int(reps[0]), i)
    elif max_distance > 0 and len(reps) > 1:
        # 2. pigeonhole buckets over max_distance + 1 chunks of the 64 bits
        n_chunks = max_distance + 1
        bounds = [DHASH_BITS * k // n_chunks for k in range(n_chunks + 1)]
        rep_hashes = hashes[reps]
        for lo, hi in itertools.pairwise(bounds):
            mask = np.uint64((1 << (hi - lo)) - 1)
            chunk = (rep_hashes >> np.uint64(lo)) & mask
            order = np.argsort(chunk, kind="stable")
            sorted_chunk = chunk[order]
            edges = np.flatnonzero(np.diff(sorted_chunk)) + 1
            starts = np.concatenate(([0], edges))
            stops = np.concatenate((edges, [len(order)]))
            for s, e in zip(starts.tolist(), stops.tolist(), strict=True):
                if e - s < 2:
                    continue
                members = reps[order[s:e]]
                for i, j in _close_pairs_in_bucket(members, hashes, max_distance):
                    uf.union(i, j)

    roots = np.fromiter(map(uf.find, range(n)), dtype=np.intp, count=n)
    grouped = np.flatnonzero(np.bincount(roots, minlength=n)[roots] >= 2)  # in input order
    groups: dict[int, list[str]] = {}
    for i in grouped.tolist():
        groups.setdefault(int(roots[i]), []).append(keys[i])
    # roots are the smallest index of each component, so dict order = first-key input order
    return list(groups.values())
