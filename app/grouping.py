"""The near-duplicate grouping of a large run's hashes, in a child process that runs while the
parent writes ``stats.parquet``.

At the end of a run the parent writes the tables (pyarrow) and then groups the images' hashes:
for 10,000 images that is ~0.05 s and ~0.1 s, one after the other, on one core while the other
idles. :class:`GroupingChild` starts ``python -m stages.groupfile`` on StatsTable's hash file as
soon as the hashes are all in (:meth:`app.collectors.StatsTable.finish`, before the Parquet
write): the two overlap, the grouping's memory is the child's (it goes back to the system when
the child ends, and numpy, from :data:`stages.hashgroups.FEW` hashes on, is never imported
here), and the parent reads back the few hashes that are in groups.

The child is a plain interpreter given this process's ``sys.path`` (``-I -S``: no site, ~10 ms
to start; ``-I`` ignores the ``PYTHON*`` variables, the rest of the environment is inherited),
not a ``multiprocessing`` one (~0.5 s: it would import the command's own modules, and start a
resource tracker). It is stopped and waited for on every
path: :meth:`GroupingChild.stop` (after its answer, on an error, at the folder's close), and at
the interpreter's exit for one left over. A child that fails (killed, out of memory) fails the
groups with :class:`GroupingFailed`, which names how it ended: the run's other results stand.
"""

from __future__ import annotations

import atexit
import subprocess
import sys
from array import array
from multiprocessing import spawn
from pathlib import Path

import stages

__all__ = ["GroupingChild", "GroupingFailed"]

#: The child's program: ``sys.path`` is this process's (so numpy and ``stages`` are found where
#: they are found here, whatever the install), with the folder holding ``stages`` first.
_PROGRAM = (
    "import sys; sys.path[:0] = sys.argv[3:]; "
    "from stages.groupfile import main; sys.exit(main(sys.argv[1:3]))"
)

#: The children not yet waited for (stopped at the interpreter's exit, if any is left).
_LIVE: set[subprocess.Popen[bytes]] = set()


class GroupingFailed(RuntimeError):
    """The grouping child ended without its answer."""


class GroupingChild:
    """``stages.groupfile.members_of_file(path, max_distance)`` in a child process, started now;
    :meth:`result` waits for it."""

    def __init__(self, path: Path, max_distance: int) -> None:
        root = str(Path(next(iter(stages.__path__))).parent)
        paths = [root, *(p for p in sys.path if isinstance(p, str) and p)]
        # the interpreter the process workers' forkserver runs (multiprocessing.set_executable,
        # for a program that embeds Python; else sys.executable)
        python = spawn.get_executable() or sys.executable
        cmd = [python, "-I", "-S", "-c", _PROGRAM, str(path), str(max_distance), *paths]
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        _LIVE.add(self._proc)

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
        if code == 0:
            how = f"answered {len(out)} bytes that are not its result"
        else:
            how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        last = err.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no message"]
        raise GroupingFailed(f"the near-duplicate grouping's child process {how}: {last[0]}")

    def stop(self) -> None:
        """Kill the child if it still runs, and wait for it."""
        _stop(self._proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    _LIVE.discard(proc)


@atexit.register
def _stop_all() -> None:
    for proc in list(_LIVE):
        _stop(proc)
