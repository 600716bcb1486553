"""Near-duplicate groups of 64-bit difference hashes (:func:`stages.stats.dhash`).

:func:`hamming` compares two hashes; :func:`near_duplicate_groups` makes complete groups (every
two members near, so groups never chain) and uses pigeonhole buckets so that 200k hashes are
grouped in a few seconds instead of 2·10¹⁰ pair comparisons (see the function's docstring for
the rule and the complexity). numpy, here alone: the image statistics of the workers
(:mod:`stages.stats`) do without it.

Nothing here raises anything but ``ValueError`` (bad arguments).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, MutableSequence, Sequence
from typing import cast

import numpy as np
import numpy.typing as npt

from .hashgroups import bucketings, check_distance, take_groups
from .stats import DHASH_BITS

__all__ = [
    "hamming",
    "near_duplicate_groups",
    "near_duplicate_labels",
    "near_duplicate_members",
]


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


_PAIR_BLOCK = 1 << 22  # max elements of one broadcast comparison block (~32 MB of uint64)
_SMALL_BUCKET = 64  # buckets up to this size are compared all together (_close_pairs_in_buckets)


def _read_hashes(items: Iterable[tuple[str, str]]) -> tuple[list[str], array[int]]:
    """The keys, and their hashes as a flat array of 64-bit values (8 bytes a hash, not a
    Python int's 36)."""
    keys: list[str] = []
    values = array("Q")
    for key, hex_hash in items:
        value = _parse_hash(hex_hash)
        if value >= 1 << DHASH_BITS:
            raise ValueError(f"hash of {key!r} has more than {DHASH_BITS} bits: {hex_hash!r}")
        keys.append(key)
        values.append(value)
    return keys, values


def _close_pairs_in_bucket(
    members: npt.NDArray[np.intp], hashes: npt.NDArray[np.uint64], max_distance: int
) -> Iterable[npt.NDArray[np.int64]]:
    """The pairs (i, j), i < j, of ``members`` whose hashes differ in ≤ max_distance bits, as
    blocks of codes ``i * len(hashes) + j``."""
    h = hashes[members]
    b, n = len(members), len(hashes)
    rows = max(1, _PAIR_BLOCK // b)
    cols = np.arange(b)[None, :]
    for start in range(0, b - 1, rows):
        stop = min(b - 1, start + rows)
        close = np.bitwise_count(h[start:stop, None] ^ h[None, :]) <= max_distance
        ri, ci = np.nonzero(close & (cols > np.arange(start, stop)[:, None]))  # upper triangle
        if len(ri):
            i, j = members[start + ri].astype(np.int64), members[ci].astype(np.int64)
            yield np.minimum(i, j) * n + np.maximum(i, j)


def _close_pairs_in_buckets(
    order: npt.NDArray[np.intp],
    keys: npt.NDArray[np.uint64],
    hashes: npt.NDArray[np.uint64],
    max_distance: int,
) -> Iterable[npt.NDArray[np.int64]]:
    """The close pairs within the buckets of equal ``keys`` (sorted; ``order`` the hashes'
    positions). Buckets of more than :data:`_SMALL_BUCKET` one at a time; all the small ones
    at once, as the pairs (p, p + k) of sorted positions in the same bucket, for k = 1, 2, …
    (a bucketing by many bits has a great many buckets of one, two or three hashes: a Python
    call each would cost more than the comparisons)."""
    n = len(order)
    starts = np.concatenate(([0], np.flatnonzero(np.diff(keys)) + 1))
    sizes = np.diff(np.concatenate((starts, [n])))
    for b in np.flatnonzero(sizes > _SMALL_BUCKET).tolist():
        s = int(starts[b])
        yield from _close_pairs_in_bucket(order[s : s + int(sizes[b])], hashes, max_distance)
    small = (sizes > 1) & (sizes <= _SMALL_BUCKET)
    size_at = np.repeat(np.where(small, sizes, 0), sizes)
    after = size_at - (np.arange(n) - np.repeat(starts, sizes)) - 1  # partners ahead of p
    pos = np.flatnonzero(after > 0)
    k = 1
    while len(pos):
        i, j = order[pos].astype(np.int64), order[pos + k].astype(np.int64)
        close = np.bitwise_count(hashes[i] ^ hashes[j]) <= max_distance
        if close.any():
            i, j = i[close], j[close]
            yield np.minimum(i, j) * n + np.maximum(i, j)
        k += 1
        pos = pos[after[pos] >= k]


def _close_pairs(hashes: npt.NDArray[np.uint64], max_distance: int) -> npt.NDArray[np.int64]:
    """Every pair of ``hashes`` (distinct) within ``max_distance`` bits, as sorted unique codes
    ``i * n + j`` (i < j). Pigeonhole: the 64 bits are cut into ``k`` chunks; two hashes that
    close differ in at most ``max_distance`` chunks, so they agree exactly on at least
    ``k - max_distance`` of them, and only the pairs inside a bucket of equal values of those
    chunks are compared. ``k = max_distance + 1`` buckets by one chunk (64/(d+1) bits: for
    d = 6, 9 bits, buckets of n/512); ``k = max_distance + 2`` by every two chunks (C(d+2, 2)
    bucketings by 2·64/(d+2) bits: for d = 6, 28 of 16 bits, buckets of n/65536): more sorts,
    far fewer pairs once n is large (:func:`_chunking` picks the cheaper)."""
    found: list[npt.NDArray[np.int64]] = []
    for chunks in _chunking(len(hashes), max_distance):
        key = np.zeros(len(hashes), dtype=np.uint64)
        for lo, hi in chunks:
            part = (hashes >> np.uint64(lo)) & np.uint64((1 << (hi - lo)) - 1)
            key = (key << np.uint64(hi - lo)) | part
        order = np.argsort(key, kind="stable")
        found.extend(_close_pairs_in_buckets(order, key[order], hashes, max_distance))
        if found:  # a pair is found in every bucketing the two agree on: keep it once
            found = [np.unique(np.concatenate(found))]
    return found[0] if found else np.zeros(0, dtype=np.int64)


def _chunking(n: int, max_distance: int) -> list[tuple[tuple[int, int], ...]]:
    """The bucketings of :func:`_close_pairs`: each a tuple of (lo, hi) bit ranges whose values
    together are the bucket key; the scheme (k = d + 1 or d + 2 chunks) with the smaller
    expected cost for ``n`` well-spread hashes: a sort per bucketing, plus the pairs compared."""
    schemes = []
    for agree in (1, 2):
        ways = bucketings(max_distance, agree)
        if not ways:
            continue
        bits = min(sum(hi - lo for lo, hi in way) for way in ways)
        cost = len(ways) * (n * max(1.0, math.log2(max(n, 1))) + n * n / 2 ** min(bits, 62))
        schemes.append((cost, ways))
    return min(schemes, key=lambda cw: cw[0])[1]


def _neighbours(
    codes: npt.NDArray[np.int64], n: int
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Adjacency lists of the pairs ``codes`` over ``n`` hashes: node i's neighbours are
    ``dst[start[i]:start[i + 1]]``, in ascending order."""
    i, j = codes // n, codes % n
    src, dst = np.concatenate((i, j)), np.concatenate((j, i))
    order = np.lexsort((dst, src))
    start = np.zeros(n + 1, dtype=np.intp)
    np.cumsum(np.bincount(src, minlength=n), out=start[1:])
    return start, dst[order].astype(np.intp)


def _complete_groups(
    hashes: npt.NDArray[np.uint64], counts: npt.NDArray[np.intp], max_distance: int
) -> npt.NDArray[np.intp]:
    """A group label for each of the distinct, ascending ``hashes`` (``counts`` items each):
    the index of its group's seed. See :func:`near_duplicate_groups` for the rule."""
    n = len(hashes)
    label = np.arange(n, dtype=np.intp)
    if max_distance >= DHASH_BITS:
        return np.zeros(n, dtype=np.intp)
    if max_distance == 0 or n < 2:
        return label
    start, dst = _neighbours(_close_pairs(hashes, max_distance), n)
    src = np.repeat(np.arange(n), np.diff(start))
    weight = counts + np.bincount(src, weights=counts[dst], minlength=n).astype(np.intp)
    take_groups(
        np.flatnonzero(np.diff(start) > 0).tolist(),  # the hashes with a near neighbour
        cast("Sequence[int]", weight),  # indexed for the linked ones only: no list of n
        lambda i: int(hashes[i]),
        lambda s: dst[start[s] : start[s + 1]].tolist(),
        cast("MutableSequence[int]", label),  # an array of ints: indexed and set alike
        max_distance,
    )
    return label


def near_duplicate_groups(
    items: Iterable[tuple[str, str]], max_distance: int = 6
) -> list[list[str]]:
    """Group keys whose 64-bit hashes are all within ``max_distance`` bits of each other.

    ``items`` are ``(key, hex_hash)`` pairs (keys are expected to be unique). The groups are
    *complete*: every two keys of a group are within ``max_distance`` bits, so groups do not
    chain (a~b and b~c with a far from c never put a and c together). Only groups of two or
    more keys are returned.

    The rule, greedy over the distinct hashes: items with the same hash always share a group.
    Each hash's *weight* is the number of items within ``max_distance`` bits of it (itself
    included). Hashes with a near neighbour are taken as seeds in order of weight, heaviest
    first (ties: the smaller hash value first); a seed not yet in a group opens one and takes
    its free neighbours, nearest first (ties: smaller hash), each only if it is within
    ``max_distance`` bits of every member already in. The groups depend on the hashes alone,
    never on the input order, and so does the output's order: keys sorted within a group,
    groups sorted by their first key (a report or a table of them is the same from run to run,
    whichever item finished first). ``max_distance`` ≥ 64 puts everything in one group.

    Cost (pigeonhole / multi-index hashing, see :func:`_close_pairs`): for n distinct,
    well-spread hashes O(n log n + (d+1)·n²/2^(64/(d+1))) — for d = 6 about 7·n²/512 popcounts,
    a few seconds for n = 200 000 — instead of n²/2; clustered hashes make the buckets
    bigger, and the worst case (every hash sharing every chunk) is O(n²). Then a pass over the
    hashes that have a near neighbour, each comparing its neighbours with its group's members.
    Memory, besides the keys: about 90 bytes per hash at the peak (17 MB for 200 000 hashes,
    ``python -m bench dups``), plus about 40 per near pair.
    """
    keys, values = _read_hashes(items)
    of_item = near_duplicate_labels(np.frombuffer(values, dtype=np.uint64), max_distance)
    groups: dict[int, list[str]] = {}
    for i in np.flatnonzero(of_item >= 0).tolist():
        groups.setdefault(int(of_item[i]), []).append(keys[i])
    return sorted(sorted(g) for g in groups.values())


def near_duplicate_members(
    hashes: npt.NDArray[np.uint64], max_distance: int = 6
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """The positions of the hashes that are in a group, and their labels
    (:func:`near_duplicate_labels` without the items in no group: small to send back from a
    process)."""
    labels = near_duplicate_labels(hashes, max_distance)
    members = np.flatnonzero(labels >= 0)
    return members, labels[members]


def near_duplicate_labels(
    hashes: npt.NDArray[np.uint64], max_distance: int = 6
) -> npt.NDArray[np.intp]:
    """The groups of :func:`near_duplicate_groups` for hashes alone: for each of ``hashes`` (64-bit
    values, one per item, in any order) its group's label, or -1 when it is in no group of two
    or more. Items with the same label form one group. For a caller that keeps 8 bytes per
    item (the hashes in an array) rather than a key each: it finds the keys of the grouped
    items afterwards, by their positions."""
    check_distance(max_distance)
    if len(hashes) < 2:
        return np.full(len(hashes), -1, dtype=np.intp)
    distinct, inverse, counts = np.unique(hashes, return_inverse=True, return_counts=True)
    label = _complete_groups(distinct, counts, max_distance)
    of_item = label[inverse.reshape(-1)]
    alone = np.bincount(of_item, minlength=len(distinct))[of_item] < 2
    of_item[alone] = -1
    return of_item
