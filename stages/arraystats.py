"""Mergeable statistics of numeric arrays: what a chunk of a big file contributes, exactly.

:func:`array_stats` summarises one array (or one chunk of one); :func:`merge` combines the
summaries of two disjoint parts so that statistics merged over any chunking equal one pass over
the whole array, up to floating-point rounding in the sums:

* count, NaN count, ±inf counts, min, max and the histogram merge exactly;
* mean and M2 (the sum of squared deviations, from which the standard deviation follows) use
  Chan, Golub & LeVeque's pairwise update, which is numerically stable;
* the histogram has fixed bins whose range need not be known in advance: bins are ``2**exp``
  wide and aligned to multiples of ``2**exp``, ``exp`` being the smallest exponent (not below a
  floor) at which the finite values fit into ``max_bins`` bins. Aligned power-of-two bins nest,
  so a finer histogram coarsens into a wider one exactly, and the exponent chosen after a merge
  is the one a single pass over all values would have chosen.

Arrays are crunched in blocks of :data:`BLOCK` values (cache-sized float64 temporaries), so the
memory a call needs beyond its input is a few blocks, whatever the input's size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "BLOCK",
    "ArrayStats",
    "Histogram",
    "array_stats",
    "level_stats",
    "level_sums",
    "merge",
    "merge_all",
]

#: Values per block when crunching (256 Ki float64 = 2 MiB: stays in the CPU caches).
BLOCK = 1 << 18
#: Smallest bin exponent for float data (bins no narrower than 2**-32) and for integers (1).
FLOAT_EXP_FLOOR = -32
INT_EXP_FLOOR = 0
#: Bins are chosen so that value / 2**exp stays an exact integer in float64.
_MANTISSA = 52


@dataclass(frozen=True, slots=True)
class Histogram:
    """Counts of finite values in bins ``[(start+i)·2**exp, (start+i+1)·2**exp)``.

    ``lo`` and ``hi`` are the smallest and largest finite value: a merge needs them (not just
    the bin edges) to choose the exponent a single pass would have chosen.
    """

    exp: int
    start: int
    counts: tuple[int, ...]
    max_bins: int
    lo: float
    hi: float

    @property
    def width(self) -> float:
        return _ldexp(1, self.exp)

    @property
    def low(self) -> float:
        return _ldexp(self.start, self.exp)

    @property
    def high(self) -> float:
        return _ldexp(self.start + len(self.counts), self.exp)

    def edges(self) -> list[float]:
        return [_ldexp(self.start + i, self.exp) for i in range(len(self.counts) + 1)]

    def coarsen(self, exp: int) -> Histogram:
        """The same counts in the wider bins of ``exp`` (>= self.exp): exact, bins nest."""
        if exp == self.exp:
            return self
        shift = exp - self.exp
        first = self.start >> shift  # floor division by 2**shift, for negative starts too
        last = (self.start + len(self.counts) - 1) >> shift
        out = [0] * (last - first + 1)
        for i, c in enumerate(self.counts):
            if c:
                out[((self.start + i) >> shift) - first] += c
        return Histogram(exp, first, tuple(out), self.max_bins, self.lo, self.hi)

    def to_dict(self) -> dict[str, Any]:
        """Edges are ``low + i·width``; ``exp``/``start`` give them exactly (width = 2**exp)."""
        return {
            "low": _finite_or_none(self.low),
            "width": _finite_or_none(self.width),
            "counts": list(self.counts),
            "finite_min": self.lo,
            "finite_max": self.hi,
            "exp": self.exp,
            "start": self.start,
            "max_bins": self.max_bins,
        }


def _ldexp(m: int, e: int) -> float:
    """m·2**e as a float; ±inf where it overflows (bins wider than the float range)."""
    try:
        return math.ldexp(float(m), e)
    except OverflowError:
        return math.copysign(math.inf, m) if m else 0.0


def _finite_or_none(v: float) -> float | None:
    return v if math.isfinite(v) else None


def _floor_scaled(v: float, exp: int) -> int:
    """floor(v / 2**exp), exactly (a negative v whose quotient underflows to -0.0 gives -1)."""
    r = math.ldexp(v, -exp)
    return -1 if r == 0 and v < 0 else math.floor(r)


def _span(lo: float, hi: float, exp: int) -> int:
    return _floor_scaled(hi, exp) - _floor_scaled(lo, exp) + 1


def choose_exp(lo: float, hi: float, max_bins: int, floor: int) -> int:
    """Smallest exponent >= the floors at which [lo, hi] fits into ``max_bins`` aligned bins.

    Aligned bins never straddle zero, so a range with both signs gets at least two bins.
    """
    if lo < 0 <= hi:
        max_bins = max(max_bins, 2)
    biggest = max(abs(lo), abs(hi))
    exp = floor
    if biggest > 0:
        exp = max(exp, math.frexp(biggest)[1] - _MANTISSA)
    if hi > lo:
        exp = max(exp, math.frexp((hi - lo) / max_bins)[1] - 1)
    while _span(lo, hi, exp) > max_bins:
        exp += 1
    return exp


@dataclass(frozen=True, slots=True)
class ArrayStats:
    """Mergeable statistics of a numeric array; NaNs (and missing values) are counted apart.

    ``count`` counts non-NaN values, ±inf included (``neg_inf`` / ``pos_inf`` say how many);
    ``m2`` is the sum of squared deviations from ``mean`` over the finite values. The histogram
    covers the finite values (None when there are none). With no finite value, mean is NaN.
    ``min`` and ``max`` are exact: Python ints for an integer array (float64 would round beyond
    2**53), ±inf when the values hold one (the finite bounds are the histogram's ``lo``/``hi``).
    """

    count: int
    nan_count: int
    sum: float
    m2: float
    mean: float
    min: float
    max: float
    histogram: Histogram | None
    neg_inf: int = 0
    pos_inf: int = 0
    exp_floor: int = FLOAT_EXP_FLOOR

    @property
    def finite(self) -> int:
        return self.count - self.neg_inf - self.pos_inf

    @property
    def variance(self) -> float:
        return self.m2 / self.finite if self.finite else math.nan

    @property
    def std(self) -> float:
        return math.sqrt(self.variance) if self.finite else math.nan

    @property
    def sumsq(self) -> float:
        """Sum of squares of the finite values (Σx² = M2 + n·mean²)."""
        return self.m2 + self.finite * self.mean * self.mean if self.finite else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON form for records and summaries (NaN and ±inf become None)."""

        def num(v: float) -> float | None:
            return v if math.isfinite(v) else None

        return {
            "count": self.count,
            "missing": self.nan_count,
            "sum": num(self.sum),
            "sumsq": num(self.sumsq),
            "mean": num(self.mean),
            "std": num(self.std),
            "min": num(self.min),
            "max": num(self.max),
            "neg_inf": self.neg_inf,
            "pos_inf": self.pos_inf,
            "histogram": self.histogram.to_dict() if self.histogram is not None else None,
            "m2": num(self.m2),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, max_bins: int, exp_floor: int) -> ArrayStats:
        """Inverse of :meth:`to_dict` (for aggregating records read back from a manifest).

        :meth:`to_dict` writes NaN and ±inf as None; they are rebuilt from what else the dict
        holds, so that a merge gives what one pass would have: a None min (max) is -inf (+inf)
        when the values hold one, else the histogram's finite bound; a None m2 (or mean) with
        finite values present means it overflowed: NaN, unknown, which merges stay (std None).
        Integer min/max stay Python ints (exact). ``max_bins``: for histograms written before
        they recorded their own.
        """
        hist = _histogram_from_dict(d.get("histogram"), max_bins)
        neg, pos = int(d.get("neg_inf", 0)), int(d.get("pos_inf", 0))
        count = int(d["count"])
        lo, hi = d["min"], d["max"]
        if lo is None:
            lo = -math.inf if neg else hist.lo if hist else math.inf if pos else math.nan
        if hi is None:
            hi = math.inf if pos else hist.hi if hist else -math.inf if neg else math.nan
        return cls(
            count=count,
            nan_count=int(d["missing"]),
            sum=_float_or_nan(d["sum"]),
            m2=_m2_from_dict(d, count - neg - pos),
            mean=_float_or_nan(d["mean"]),
            min=_exact(lo),
            max=_exact(hi),
            histogram=hist,
            neg_inf=neg,
            pos_inf=pos,
            exp_floor=exp_floor,
        )


def _histogram_from_dict(h: dict[str, Any] | None, max_bins: int) -> Histogram | None:
    if h is None:
        return None
    if "exp" in h:
        exp, start = int(h["exp"]), int(h["start"])
    else:  # written before exp/start were recorded
        exp = math.frexp(h["width"])[1] - 1
        start = round(math.ldexp(h["low"], -exp))
    counts = tuple(int(c) for c in h["counts"])
    max_bins = int(h.get("max_bins", max_bins))
    return Histogram(exp, start, counts, max_bins, h["finite_min"], h["finite_max"])


def _float_or_nan(v: float | None) -> float:
    return float(v) if v is not None else math.nan


def _exact(v: float) -> float:
    """A min or max read back: an int (an integer array's) stays an exact int."""
    return v if isinstance(v, int) else float(v)


def _m2_from_dict(d: dict[str, Any], finite: int) -> float:
    """M2 of a dict: None with finite values present is an overflow (NaN: unknown)."""
    if not finite:
        return 0.0
    if "m2" in d:
        return _float_or_nan(d["m2"])
    std = d.get("std")  # written before m2 was recorded
    return float(std) * float(std) * finite if std is not None else math.nan


def empty_stats(nan_count: int = 0, *, exp_floor: int = FLOAT_EXP_FLOOR) -> ArrayStats:
    return ArrayStats(
        count=0,
        nan_count=nan_count,
        sum=0.0,
        m2=0.0,
        mean=math.nan,
        min=math.nan,
        max=math.nan,
        histogram=None,
        exp_floor=exp_floor,
    )


def exp_floor_of(dtype: np.dtype[Any]) -> int:
    """Integers (and bools) get bins at least 1 wide; floats down to 2**-32."""
    return INT_EXP_FLOOR if dtype.kind in "biu" else FLOAT_EXP_FLOOR


def array_stats(
    a: npt.ArrayLike, *, max_bins: int = 64, exp_floor: int | None = None
) -> ArrayStats:
    """Statistics of all values of ``a`` (any shape; bool, integer or float; memmaps welcome).

    Values are crunched as float64; an integer array's min and max are exact Python ints.
    Extended-precision floats (``longdouble``) are rounded to float64 (values too small for it
    become 0): an array holding a finite value beyond the float64 range (about ±1.8e308) is
    refused with a ValueError, rather than counting it as ±inf.
    """
    if isinstance(max_bins, bool) or not isinstance(max_bins, int) or max_bins < 1:
        raise ValueError(f"max_bins must be a positive int, got {max_bins!r}")
    arr = np.asarray(a)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"numeric statistics need a bool, integer or float array, got {arr.dtype}")
    floor = exp_floor_of(arr.dtype) if exp_floor is None else exp_floor
    flat = arr.reshape(-1, order="A") if arr.ndim != 1 else arr
    total: ArrayStats | None = None
    # temporaries allocated once per call, not per block: a fresh 2 MiB array per block costs
    # more in page faults (malloc gives blocks this big back to the kernel) than its arithmetic
    scratch = _Scratch(min(BLOCK, max(flat.size, 1)))
    ints, wide = arr.dtype.kind in "iu", arr.dtype.kind == "f" and arr.dtype.itemsize > 8
    for lo in range(0, flat.size, BLOCK):
        block = flat[lo : lo + BLOCK]
        x = scratch.x[: block.size]
        if wide:
            _from_wide_floats(x, block)
        else:
            np.copyto(x, block, casting="unsafe")
        part = _block_stats(x, max_bins, floor, scratch)
        if ints:
            part = _exact_int_bounds(part, block)
        total = part if total is None else merge(total, part)
    return total if total is not None else empty_stats(exp_floor=floor)


def _from_wide_floats(x: npt.NDArray[np.float64], block: npt.NDArray[Any]) -> None:
    """``block`` (longdouble) rounded into ``x``; a finite value beyond float64 is refused."""
    with np.errstate(over="ignore"):  # no RuntimeWarning: the check below says it
        np.copyto(x, block, casting="unsafe")
    inf = np.isinf(x)
    if inf.any():
        big = block[inf & np.isfinite(block)]
        if big.size:
            first = np.format_float_scientific(big[0], precision=6, trim="-")
            raise ValueError(
                f"finite {block.dtype} value(s) beyond the float64 range (about ±1.8e308), "
                f"such as {first}: statistics are computed in float64, which cannot hold them"
            )


#: Integers of a smaller magnitude are exact in float64 (and the float64 min/max exact ints).
_EXACT_IN_FLOAT = 2.0**53


def _exact_int_bounds(s: ArrayStats, block: npt.NDArray[Any]) -> ArrayStats:
    """``s`` (of the non-empty integer ``block``) with min and max as exact Python ints."""
    lo, hi = s.min, s.max
    if not -_EXACT_IN_FLOAT < lo <= hi < _EXACT_IN_FLOAT:  # rounded as float64: one more pass
        lo, hi = block.min(), block.max()
    return replace(s, min=int(lo), max=int(hi))


_LEVELS = np.arange(256, dtype=np.int64)


def level_sums(counts: npt.NDArray[np.int64]) -> tuple[int, int, int]:
    """n, Σx and Σx² of integer values ``0..len(counts)-1`` from how often each occurs, as exact
    Python integers (integer dot products: no BLAS)."""
    levels = _LEVELS if len(counts) == 256 else np.arange(len(counts), dtype=np.int64)
    return int(counts.sum()), int(counts @ levels), int(counts @ (levels * levels))


def level_stats(counts: Sequence[int], *, max_bins: int = 64) -> ArrayStats:
    """Statistics of integer values ``0..len(counts)-1`` given how often each occurs — an image
    band's 256-level histogram — with exact integer sums (no pass over the pixels)."""
    c = np.asarray(counts, dtype=np.int64)
    n, s1, s2 = level_sums(c)
    if n == 0:
        return empty_stats(exp_floor=INT_EXP_FLOOR)
    present = np.flatnonzero(c)
    lo, hi = int(present[0]), int(present[-1])
    levels = np.arange(lo, hi + 1, dtype=np.int64)
    exp = choose_exp(float(lo), float(hi), max_bins, INT_EXP_FLOOR)
    first = lo >> exp
    # float64 weights: exact below 2**53
    binned = np.bincount((levels >> exp) - first, weights=c[lo : hi + 1])
    return ArrayStats(
        count=n,
        nan_count=0,
        sum=float(s1),
        m2=(n * s2 - s1 * s1) / n,  # exact in integers, one rounding
        mean=s1 / n,
        min=float(lo),
        max=float(hi),
        histogram=Histogram(
            exp, first, tuple(binned.astype(np.int64).tolist()), max_bins, float(lo), float(hi)
        ),
        exp_floor=INT_EXP_FLOOR,
    )


class _Scratch:
    """The temporaries of :func:`array_stats`, one block long each."""

    __slots__ = ("dev", "idx", "mask", "mask2", "x")

    def __init__(self, size: int) -> None:
        self.x = np.empty(size, dtype=np.float64)
        self.dev = np.empty(size, dtype=np.float64)
        self.idx = np.empty(size, dtype=np.int64)
        self.mask = np.empty(size, dtype=bool)
        self.mask2 = np.empty(size, dtype=bool)


def _block_stats(
    x: npt.NDArray[np.float64], max_bins: int, floor: int, scratch: _Scratch | None = None
) -> ArrayStats:
    """Statistics of one float64 block (``x`` and ``scratch`` may be overwritten)."""
    # values near the float64 limit overflow the sums to inf: a result, not an error
    with np.errstate(over="ignore", invalid="ignore"):
        return _block_stats_raw(x, max_bins, floor, scratch or _Scratch(x.size))


def _block_stats_raw(
    x: npt.NDArray[np.float64], max_bins: int, floor: int, scratch: _Scratch
) -> ArrayStats:
    size = int(x.size)
    dev = scratch.dev[:size]
    total = float(x.sum())
    nan_count = neg_inf = pos_inf = 0
    if not math.isfinite(total):  # NaN or ±inf somewhere (or an overflow): the careful path
        finite = np.isfinite(x, out=scratch.mask[:size])
        kept = int(np.count_nonzero(finite))
        if kept < size:
            inf = int(np.count_nonzero(np.isinf(x, out=scratch.mask2[:size])))
            if inf:  # rare: a temporary is fine
                neg_inf = int(np.count_nonzero(x == -np.inf))
                pos_inf = inf - neg_inf
            nan_count = size - kept - inf
            # the finite values, packed into the other buffer; x's buffer becomes the scratch
            np.compress(finite, x, out=dev[:kept])
            x, dev = dev[:kept], x
        total = float(x.sum())
    n = int(x.size)
    if n == 0:
        s = empty_stats(nan_count, exp_floor=floor)
        if neg_inf or pos_inf:
            s = _with_inf(s, neg_inf, pos_inf)
        return s
    lo, hi = float(x.min()), float(x.max())
    mean = total / n
    exp = choose_exp(lo, hi, max_bins, floor)
    start = _floor_scaled(lo, exp)
    scale = math.ldexp(1.0, -exp)
    dev = dev[:n]
    np.subtract(x, mean, out=dev)
    np.square(dev, out=dev)  # not np.dot: BLAS threads would spin on the other workers' cores
    m2 = float(dev.sum())
    # bin index: x·2**-exp is exact (a power-of-two scale) and its floor an exact integer below
    # 2**53; the start is subtracted in integers (as floats, 1 - 1e-25 would round to 1)
    np.multiply(x, scale, out=dev)
    np.floor(dev, out=dev)
    idx = scratch.idx[:n]
    np.copyto(idx, dev, casting="unsafe")
    if exp > 0 and lo < 0:  # bins wider than 1: a negative x tinier than 2**(exp-1074)
        tiny = (x < 0) & (x > -math.ldexp(1.0, exp - 1074))  # underflows to -0.0, bin -1
        idx[tiny] = -1
    idx -= start
    counts = np.bincount(idx, minlength=_span(lo, hi, exp))
    hist = Histogram(exp, start, tuple(counts.tolist()), max_bins, lo, hi)
    s = ArrayStats(
        count=n,
        nan_count=nan_count,
        sum=total,
        m2=m2,
        mean=mean,
        min=lo,
        max=hi,
        histogram=hist,
        exp_floor=floor,
    )
    return _with_inf(s, neg_inf, pos_inf) if neg_inf or pos_inf else s


def _with_inf(s: ArrayStats, neg_inf: int, pos_inf: int) -> ArrayStats:
    """Add ±inf values to finite statistics: they count, and set min/max/sum, not the moments."""
    lo = -math.inf if neg_inf else s.min
    hi = math.inf if pos_inf else s.max
    if s.finite == 0:
        lo = -math.inf if neg_inf else math.inf
        hi = math.inf if pos_inf else -math.inf
    return replace(
        s,
        count=s.count + neg_inf + pos_inf,
        sum=s.sum + (-math.inf if neg_inf else 0.0) + (math.inf if pos_inf else 0.0),
        min=lo,
        max=hi,
        neg_inf=s.neg_inf + neg_inf,
        pos_inf=s.pos_inf + pos_inf,
    )


def _merge_hist(a: Histogram | None, b: Histogram | None, floor: int) -> Histogram | None:
    if a is None or b is None:
        return a if b is None else b
    max_bins = max(a.max_bins, b.max_bins)
    lo, hi = min(a.lo, b.lo), max(a.hi, b.hi)
    # one pass over both would choose choose_exp(lo, hi), which is never below either side's
    exp = max(a.exp, b.exp, choose_exp(lo, hi, max_bins, floor))
    ca, cb = a.coarsen(exp), b.coarsen(exp)
    first = min(ca.start, cb.start)
    out = [0] * (max(ca.start + len(ca.counts), cb.start + len(cb.counts)) - first)
    for h in (ca, cb):
        off = h.start - first
        for i, c in enumerate(h.counts):
            out[off + i] += c
    return Histogram(exp, first, tuple(out), max_bins, lo, hi)


def merge(a: ArrayStats, b: ArrayStats) -> ArrayStats:
    """Statistics of two disjoint parts combined, as if computed in one pass over both.

    Mean and M2 (finite values only) use Chan, Golub & LeVeque's update::

        n = na + nb;  δ = mean_b - mean_a
        mean = mean_a + δ·nb/n;  M2 = M2_a + M2_b + δ²·na·nb/n
    """
    floor = min(a.exp_floor, b.exp_floor)
    na, nb = a.finite, b.finite
    if na == 0 or nb == 0:
        mean, m2 = (b.mean, b.m2) if na == 0 else (a.mean, a.m2)
        if na == 0 and nb == 0:
            mean, m2 = math.nan, 0.0
    else:
        n = na + nb
        delta = b.mean - a.mean
        mean = a.mean + delta * (nb / n)
        m2 = a.m2 + b.m2 + delta * delta * (na * nb / n)
    return ArrayStats(
        count=a.count + b.count,
        nan_count=a.nan_count + b.nan_count,
        sum=a.sum + b.sum,
        m2=m2,
        mean=mean,
        min=_nanmin(a.min, b.min),
        max=_nanmax(a.max, b.max),
        histogram=_merge_hist(a.histogram, b.histogram, floor),
        neg_inf=a.neg_inf + b.neg_inf,
        pos_inf=a.pos_inf + b.pos_inf,
        exp_floor=floor,
    )


def merge_all(parts: list[ArrayStats]) -> ArrayStats:
    """Pairwise (tree) merge of many parts: the rounding error grows with log(parts)."""
    if not parts:
        return empty_stats()
    level = list(parts)
    while len(level) > 1:
        nxt = [merge(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def _nanmin(x: float, y: float) -> float:
    return y if math.isnan(x) else x if math.isnan(y) else min(x, y)


def _nanmax(x: float, y: float) -> float:
    return y if math.isnan(x) else x if math.isnan(y) else max(x, y)
