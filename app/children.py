"""Plain-interpreter children of the command: end-of-run work that needs what the command's own
process does without (numpy for a large run's near-duplicate groups, :mod:`app.grouping`).

A child is ``python -I -S -c PROGRAM`` given this process's ``sys.path`` (so the libraries and
this project are found where they are found here, whatever the install), not a
``multiprocessing`` one: no site (``-S``), ~10 ms to start, where a spawned process would
import the command's own modules (~0.5 s) and start a resource tracker. ``-I`` ignores the
``PYTHON*`` variables; the rest of the environment is inherited. Its memory and CPU are its
own, and go back to the system when it ends.

A child leads a process group of its own: a Ctrl-C at the terminal goes to the command's group,
and the command decides (the end of a run is not cut short: it finishes its tables). Every
child is stopped and waited for on every path: :func:`stop` (after its answer, on an
error), and at the interpreter's exit for one left over (:data:`LIVE`). :func:`how_it_ended`
says how one ended without its answer, for the error the caller raises. A command killed
outright (SIGKILL, the OOM killer) stops none of that: each child watches a pipe whose only
writing end the command holds (:data:`WATCH_VAR`), and exits at once when it closes, rather
than work on for nobody, beside the next run in the same folder.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
from collections.abc import Sequence
from multiprocessing import spawn
from pathlib import Path

import stages

__all__ = ["LIVE", "WATCH_VAR", "how_it_ended", "program", "start", "stop"]

#: The children not yet waited for (stopped at the interpreter's exit, if any is left).
LIVE: set[subprocess.Popen[bytes]] = set()

#: The environment variable that gives a child the reading end of its watch pipe.
WATCH_VAR = "PIXPIPE_WATCH_FD"

#: What a child runs first: a daemon thread that ends it once the command's end of the watch
#: pipe is closed (the command gone: ``os.read`` returns at its end of file).
_WATCH = (
    "import os, threading; _fd = int(os.environ.pop('" + WATCH_VAR + "', '-1')); "
    "_fd >= 0 and threading.Thread(target=lambda: (os.read(_fd, 1), os._exit(70)), "
    "daemon=True).start(); "
)

#: The command's writing end of each live child's watch pipe.
_WATCHES: dict[subprocess.Popen[bytes], int] = {}


def program(module: str, args: int) -> str:
    """The ``-c`` program that calls ``module.main`` with its first ``args`` arguments, the
    others put first on ``sys.path``; its return value is the exit code."""
    return (
        f"import sys; sys.path[:0] = sys.argv[{args + 1}:]; "
        f"from {module} import main; sys.exit(main(sys.argv[1:{args + 1}]))"
    )


def start(code: str, args: Sequence[str]) -> subprocess.Popen[bytes]:
    """``python -I -S -c code ARGS... PATHS...`` (module docstring), started now; no standard
    input, its standard output and error are pipes."""
    root = str(Path(next(iter(stages.__path__))).parent)
    paths = [root, *(p for p in sys.path if isinstance(p, str) and p)]
    # the interpreter the process workers' forkserver runs (multiprocessing.set_executable, for
    # a program that embeds Python; else sys.executable)
    python = spawn.get_executable() or sys.executable
    watched, watch = os.pipe()  # (neither end inherited by any other child: PEP 446)
    try:
        proc = subprocess.Popen(
            [python, "-I", "-S", "-c", _WATCH + code, *args, *paths],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            process_group=0,  # not the terminal's: its Ctrl-C is the command's to decide on
            pass_fds=(watched,),
            env={**os.environ, WATCH_VAR: str(watched)},
        )
    except BaseException:
        os.close(watch)
        raise
    finally:
        os.close(watched)
    LIVE.add(proc)
    _WATCHES[proc] = watch
    return proc


def how_it_ended(proc: subprocess.Popen[bytes], err: bytes, *, how: str = "") -> str:
    """How a child that gave no answer ended: ``how``, else its exit code or signal; then the
    last line of its standard error (``err``)."""
    code = proc.returncode
    if not how:
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
    last = err.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no message"]
    return f"{how}: {last[0]}"


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Kill the child if it still runs, and wait for it."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    watch = _WATCHES.pop(proc, None)
    if watch is not None:
        os.close(watch)
    LIVE.discard(proc)


@atexit.register
def _stop_all() -> None:
    for proc in list(LIVE):
        stop(proc)
