"""The near-duplicate groups of a file of hashes: :func:`members_of_file`, and ``python -m
stages.groupfile FILE MAX_DISTANCE`` (:func:`main`), the program of the end-of-run child
process that groups a large run's hashes (:mod:`app.grouping`), which writes its answer to its
standard output.

Pure Python (:func:`stages.hashgroups.few_members`) up to :data:`stages.hashgroups.FEW`
hashes, numpy (:func:`stages.neardups.near_duplicate_members`, imported then) above: the same
groups either way.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Sequence

from .hashgroups import FEW, few_members

__all__ = ["main", "members_of_file"]


def members_of_file(path: str | None, max_distance: int) -> tuple[list[int], list[int]]:
    """:func:`few_members` of the hashes in file ``path`` (native unsigned 64-bit integers, as
    ``array("Q")`` writes them; None: no hash) up to :data:`FEW` of them, else
    :func:`stages.neardups.near_duplicate_members` (numpy), as lists."""
    values = array("Q")
    if path is not None:
        with open(path, "rb") as fh:
            values.frombytes(fh.read())
    if len(values) <= FEW:
        return few_members(values, max_distance)
    import numpy as np

    from .neardups import near_duplicate_members

    members, labels = near_duplicate_members(np.frombuffer(values, np.uint64), max_distance)
    return members.tolist(), labels.tolist()


def main(argv: Sequence[str]) -> int:
    """``python -m stages.groupfile FILE MAX_DISTANCE``: :func:`members_of_file`, written to
    the standard output as native signed 64-bit integers: the number of members, the members'
    positions, their labels."""
    path, distance = argv
    members, labels = members_of_file(path or None, int(distance))
    out = array("q", [len(members)])
    out.extend(members)
    out.extend(labels)
    sys.stdout.buffer.write(out.tobytes())
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
