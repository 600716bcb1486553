"""The near-duplicate grouping of a large run's hashes, in a child process that runs while the
parent writes ``stats.parquet``.

At the end of a run the parent writes the tables (pyarrow) and then groups the images' hashes:
for 10,000 images that is ~0.05 s and ~0.1 s, one after the other, on one core while the other
idles. :class:`GroupingChild` starts ``python -m stages.groupfile`` on StatsTable's hash file as
soon as the hashes are all in (:meth:`app.collectors.StatsTable.finish`, before the Parquet
write): the two overlap, the grouping's memory is the child's (it goes back to the system when
the child ends, and numpy, from :data:`stages.hashgroups.FEW` hashes on, is never imported
here), and the parent reads back the few hashes that are in groups.

The child is a plain interpreter (:mod:`app.children`), stopped and waited for on every path:
:meth:`GroupingChild.stop` (after its answer, on an error, at the folder's close), and at the
interpreter's exit for one left over. A child that fails (killed, out of memory) fails the
groups with :class:`GroupingFailed`, which names how it ended: the run's other results stand.
"""

from __future__ import annotations

from array import array
from pathlib import Path

from . import children

__all__ = ["GroupingChild", "GroupingFailed"]

#: The child's program: ``stages.groupfile.main(FILE, MAX_DISTANCE)``.
_PROGRAM = children.program("stages.groupfile", 2)


class GroupingFailed(RuntimeError):
    """The grouping child ended without its answer."""


class GroupingChild:
    """``stages.groupfile.members_of_file(path, max_distance)`` in a child process, started now;
    :meth:`result` waits for it."""

    def __init__(self, path: Path, max_distance: int) -> None:
        self._proc = children.start(_PROGRAM, [str(path), str(max_distance)])

    def result(self) -> tuple[list[int], list[int]]:
        """(positions, labels) of the hashes in a group, as
        :func:`stages.hashgroups.few_members` gives them."""
        try:
            out, err = self._proc.communicate()
        finally:
            self.stop()
        code = self._proc.returncode
        values = array("q")
        if code == 0 and len(out) % values.itemsize == 0:
            values.frombytes(out)
            if values and len(values) == 1 + 2 * values[0]:
                n = values[0]
                return values[1 : 1 + n].tolist(), values[1 + n :].tolist()
        wrong = f"answered {len(out)} bytes that are not its result" if code == 0 else ""
        how = children.how_it_ended(self._proc, err, how=wrong)
        raise GroupingFailed(f"the near-duplicate grouping's child process {how}")

    def stop(self) -> None:
        """Kill the child if it still runs, and wait for it."""
        children.stop(self._proc)
