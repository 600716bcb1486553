"""The process workers' forkserver, started as early as possible for a local ``process`` run.

``python -m pipeline`` calls :func:`warm_up_argv` first thing, before it parses the command line
or imports the rest: the forkserver imports the worker modules on another core meanwhile (about
half a second saved per run). The process has no other thread then, so the forkserver is a fork
of it (:func:`pipeline.forkserver.warm_up`). This module imports nothing but the standard library
at import time, so that call costs next to nothing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

__all__ = [
    "WORKER_MODULES",
    "start_forkserver",
    "the_commands_process",
    "warm_up",
    "warm_up_argv",
]

#: What the ``process`` command's workers run on images: the forkserver preloads these, so a
#: worker never imports them on its first image. Named one by one: ``stages.steps`` itself
#: imports neither numpy nor Pillow (the parent process runs its thread stages), the others
#: bring Pillow. Not numpy: the images' path does without it (:mod:`stages.stats`), and
#: preloaded it would cost ~11 MiB over the processes of every run (the forkserver's own copy
#: of what each worker touches, numpy's libraries). A worker imports it (``stages.data``) at
#: its first numeric data file, ~0.1 s once.
WORKER_MODULES = (
    "stages.steps",
    "stages.imaging",
    "stages.thumbs",
    "stages.stats",
)


def start_forkserver(*, fork: bool = False) -> None:
    """Process workers' forkserver starts importing the worker modules now, on another core,
    while this process goes on with its own imports. Harmless when it is already running.
    ``fork``: see :func:`pipeline.forkserver.warm_up`."""
    # The forkserver preloads a module only when it would find the same file as this process
    # (pipeline.forkserver._same_file_in_forkserver), which it tells from the package this
    # process has imported: the package itself, not its modules (those are the forkserver's job).
    import stages  # noqa: F401
    from pipeline.forkserver import warm_up as start

    start(WORKER_MODULES, fork=fork)


def the_commands_process() -> None:
    """``python -m pipeline``, before the command runs: choices for a process that is the
    command's alone, which an embedding program would not want made for it — pyarrow without
    numpy (:func:`app.tables.pyarrow_without_numpy`)."""
    from .tables import pyarrow_without_numpy

    pyarrow_without_numpy()


def warm_up_argv(argv: Sequence[str]) -> bool:
    """``python -m pipeline``: start the forkserver before the command line is even parsed, when
    ``argv`` is a ``process`` or ``profile`` run on the local backend; True if it did. For
    ``python -m pipeline`` only: the process is the command's, and it starts no resource
    tracker (its ``shutdown`` at the exit puts that back).

    A guess from the raw arguments, on the safe side: no help, nothing that mentions Dask (which
    covers ``--backend dask`` in any spelling) and no ``--config`` (its file may choose Dask).
    Otherwise nothing starts here and :func:`warm_up` decides after parsing, as it does for
    callers that do not go through ``__main__``.
    """
    if not argv or argv[0] not in ("process", "profile"):
        return False
    for arg in argv[1:]:
        if arg in ("-h", "--help") or "dask" in arg or arg.startswith("--con"):
            return False
    # the process is the command's: its workers create nothing the resource tracker would
    # have to clean up, so none is started (pipeline.forkserver.without_resource_tracker)
    from pipeline.forkserver import without_resource_tracker

    without_resource_tracker()
    start_forkserver(fork=True)
    return True


def warm_up(backend: str | None, config: str | os.PathLike[str] | None) -> None:
    """After parsing: start the forkserver unless the run goes to Dask (``backend``, or the
    ``backend`` key of the ``config`` file when the flag is not given)."""
    if backend is None and config is not None:
        import tomllib

        try:
            with open(config, "rb") as fh:
                chosen = tomllib.load(fh).get("backend")
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
            return  # reported by the run itself
        backend = chosen if isinstance(chosen, str) else None
    if (backend or "local") == "local":
        start_forkserver()
