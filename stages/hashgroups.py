"""Near-duplicate groups of a few thousand 64-bit hashes, in pure Python; the parts of the rule
that :mod:`stages.neardups` (numpy, for any number of hashes) shares with it.

The rule is :func:`stages.neardups.near_duplicate_groups`'s; both paths give the same groups.
This one exists for the end of a ``process`` run: it groups up to :data:`FEW` hashes without
importing numpy (~15 MiB and ~65 ms); :mod:`stages.groupfile` chooses between the two. Pairs
are found with the pigeonhole bucketing by one chunk of ``64 / (d + 1)`` bits (for d = 6, 512
buckets: O(n) memory whatever n), about ``(d + 1)·n²/2^(64/(d+1))`` comparisons: 9 ms for
2,000 well-spread hashes, 0.09 s for 10,000.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Iterable, MutableSequence, Sequence

from .stats import DHASH_BITS

__all__ = ["FEW", "bucketings", "check_distance", "few_members", "take_groups"]

#: Up to this many hashes :func:`stages.groupfile.members_of_file` groups them with
#: :func:`few_members`: against importing numpy and grouping there (0.09 s + 0.02 s for
#: 10,000), as quick at 10,000 and quicker below, and never numpy's 15 MiB.
FEW = 10_000


def bucketings(max_distance: int, agree: int) -> list[tuple[tuple[int, int], ...]]:
    """Every ``agree`` of the ``max_distance + agree`` chunks of the 64 bits (none when there
    are more chunks than bits): two hashes within ``max_distance`` bits agree on one of them."""
    k = max_distance + agree
    if k > DHASH_BITS:
        return []
    bounds = [DHASH_BITS * m // k for m in range(k + 1)]
    return list(itertools.combinations(itertools.pairwise(bounds), agree))


def check_distance(max_distance: int) -> None:
    """``ValueError`` for a negative ``max_distance``."""
    if max_distance < 0:
        raise ValueError(f"max_distance must be >= 0, got {max_distance}")


def take_groups(
    linked: Iterable[int],
    weight: Sequence[int],
    value: Callable[[int], int],
    neighbours: Callable[[int], list[int]],
    label: MutableSequence[int],
    max_distance: int,
) -> None:
    """The greedy pass of the rule over distinct hashes. The ``linked`` ones (those with a near
    neighbour) are seeds in order of ``weight``, heaviest first (ties: the smaller hash, whose
    position is smaller); a seed not yet in a group opens one and takes its free
    ``neighbours``, nearest first (ties: smaller hash), each only if within ``max_distance``
    bits of every member already in; ``label[c]`` becomes the seed of the group ``c`` joins
    (a seed keeps its own)."""
    free = bytearray(b"\x01") * len(label)
    for seed in sorted(linked, key=lambda i: (-weight[i], i)):
        if not free[seed]:
            continue
        free[seed] = 0
        members = [value(seed)]
        nbrs = [(value(c), c) for c in neighbours(seed)]
        nbrs.sort(key=lambda hc: ((hc[0] ^ members[0]).bit_count(), hc[0]))  # nearest first
        for h, c in nbrs:
            if free[c] and all((h ^ m).bit_count() <= max_distance for m in members):
                members.append(h)
                free[c] = 0
                label[c] = seed


def few_members(values: Sequence[int], max_distance: int = 6) -> tuple[list[int], list[int]]:
    """:func:`stages.neardups.near_duplicate_members` of ``values`` (64-bit hashes, one per item,
    in any order) without numpy: the positions of the items in a group and their groups'
    labels (equal labels, one group; the label values themselves may differ from numpy's)."""
    check_distance(max_distance)
    counts = Counter(values)
    distinct = sorted(counts)
    n = len(distinct)
    label = list(range(n))
    if n and max_distance >= DHASH_BITS:
        label = [0] * n
    elif n > 1 and max_distance > 0:
        nbrs = _close(distinct, max_distance)
        weight = [counts[distinct[i]] + sum(counts[distinct[j]] for j in nbrs[i]) for i in range(n)]
        linked = (i for i in range(n) if nbrs[i])
        take_groups(linked, weight, distinct.__getitem__, nbrs.__getitem__, label, max_distance)
    of_value = dict(zip(distinct, label, strict=True))
    of_item = [of_value[v] for v in values]
    size = Counter(of_item)
    members = [i for i, g in enumerate(of_item) if size[g] > 1]
    return members, [of_item[i] for i in members]


def _close(distinct: Sequence[int], max_distance: int) -> list[list[int]]:
    """Each of the ``distinct`` (ascending) hashes' neighbours within ``max_distance`` bits, as
    positions. One comprehension over each bucket's pairs (``itertools.combinations``), not
    one per hash: 0.09 s for 10,000 well-spread hashes instead of 0.14."""
    pairs: set[tuple[int, int]] = set()
    for way in bucketings(max_distance, 1):
        ((lo, hi),) = way
        mask = (1 << (hi - lo)) - 1
        buckets: dict[int, list[int]] = {}
        for h in distinct:
            buckets.setdefault(h >> lo & mask, []).append(h)
        for bucket in buckets.values():
            if len(bucket) > 1:  # ascending: each pair (smaller, larger), in every bucketing
                pairs.update(
                    [
                        p
                        for p in itertools.combinations(bucket, 2)
                        if (p[0] ^ p[1]).bit_count() <= max_distance
                    ]
                )
    position = {h: i for i, h in enumerate(distinct)}
    nbrs: list[list[int]] = [[] for _ in distinct]
    for x, y in pairs:
        i, j = position[x], position[y]
        nbrs[i].append(j)
        nbrs[j].append(i)
    return nbrs
