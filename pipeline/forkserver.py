"""The process workers' forkserver: its preload list, its early start, starting a worker.

Light on purpose (no asyncio): ``python -m pipeline`` starts the forkserver from here before it
imports the engine, so the forkserver imports the worker modules on another core meanwhile.

Before the first worker starts, the forkserver is told to preload the modules of the steps'
functions (and of their arguments) and the worker loop's (:mod:`pipeline.worker`), so each worker
is a fork of a process that already imported them instead of importing them itself on its first
item. The forkserver is process-global and starts once: modules of pipelines built after it
started are imported by their workers as before. A preloaded module that fails to import with
``ImportError`` is skipped by the forkserver; one that fails otherwise kills the forkserver, and
the lane then starts its worker again with the preload list as it was before (see
:func:`spawn`).
"""

from __future__ import annotations

import functools
import importlib.machinery
import logging
import multiprocessing as mp
import multiprocessing.forkserver as mp_forkserver
import os
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .calls import Step

__all__ = ["WORKER_MODULE", "mp_context", "preload_modules", "spawn", "warm_up"]

log = logging.getLogger("pipeline.procpool")

#: The module of the worker loop, preloaded with every pipeline's modules.
WORKER_MODULE = "pipeline.worker"

#: How long a lane retries starting its worker while a forkserver broken by a preloaded module
#: is replaced (seconds).
RESTART_WAIT = 5.0


def mp_context() -> Any:
    """The multiprocessing context for workers: forkserver (safe with threads in the parent)."""
    return mp.get_context("forkserver")


_preload_lock = threading.Lock()
_preload_before: list[str] | None = None  # the forkserver's preload list before we extended it
_preload_dropped = False  # a preloaded module broke the forkserver: never extend the list again


def _module_of(obj: Any) -> str | None:
    while isinstance(obj, functools.partial):
        obj = obj.func
    name = getattr(obj, "__module__", None)
    return name if isinstance(name, str) else None


def preload_modules(steps: Sequence[Step]) -> list[str]:
    """Modules a worker of ``steps`` imports: the worker loop's, the functions', the arguments'.

    Only modules the parent has already imported are named (they import cleanly here, so they
    almost certainly do in the forkserver), never ``__main__`` nor builtins, and only those the
    forkserver would load from the same file (see :func:`_same_file_in_forkserver`).
    """
    candidates: list[Any] = []
    for step in steps:
        candidates.append(step.fn)
        candidates.extend(type(a) for a in step.args)
        candidates.extend(type(v) for v in step.kwargs.values())
    names: list[str] = []
    for name in [WORKER_MODULE, *map(_module_of, candidates)]:
        if name is None or name in names or name in ("__main__", "builtins"):
            continue
        if name in sys.modules and _same_file_in_forkserver(name):
            names.append(name)
    return names


def warm_up(modules: Sequence[str]) -> None:
    """Start the forkserver now, preloading ``modules``, while the caller is still busy with its
    own imports: the forkserver imports them on another core, and the first workers fork from it
    at once. For a CLI about to run a pipeline; best effort (a failure only costs the head start).
    """
    names = [n for n in modules if _same_file_in_forkserver(n)]
    _request_preload([WORKER_MODULE, *names])
    try:
        mp_forkserver.ensure_running()
    except OSError as exc:  # the first worker start will try again, and report
        log.debug("forkserver warm-up failed: %s", exc)


def _same_file_in_forkserver(name: str) -> bool:
    """Whether the forkserver would import ``name``'s package from where the parent did.

    The forkserver is a ``python -c`` process: it searches its working directory first and, on
    Python < 3.13, ignores the parent's ``sys.path`` while preloading. A package of the same
    name there (another checkout, say) would otherwise be preloaded in place of the parent's.
    """
    top = name.partition(".")[0]
    origin = getattr(getattr(sys.modules.get(top), "__spec__", None), "origin", None)
    try:
        spec = importlib.machinery.PathFinder.find_spec(top, [os.getcwd(), *sys.path[1:]])
    except (ImportError, ValueError, OSError):
        return False
    return spec is None or spec.origin == origin


def _current_preload() -> list[str]:
    server = getattr(mp_forkserver, "_forkserver", None)
    current = getattr(server, "_preload_modules", None)  # no public getter
    return list(current) if isinstance(current, list) else ["__main__"]


def _request_preload(names: Iterable[str]) -> None:
    """Add ``names`` to the forkserver's preload list (used when the forkserver next starts)."""
    global _preload_before
    with _preload_lock:
        if _preload_dropped:
            return
        current = _current_preload()
        wanted = current + [n for n in names if n not in current]
        if wanted != current:
            if _preload_before is None:
                _preload_before = current
            mp_forkserver.set_forkserver_preload(wanted)


def _drop_preload() -> bool:
    """Put the preload list back as it was before we extended it.

    True when a preload list of ours may be what broke the forkserver (now or in another lane's
    start a moment ago), i.e. when starting again is worth it.
    """
    global _preload_before, _preload_dropped
    with _preload_lock:
        if _preload_before is not None:
            mp_forkserver.set_forkserver_preload(_preload_before)
            _preload_before = None
            _preload_dropped = True
            log.warning("the forkserver died importing its preload list; starting without them")
        return _preload_dropped


def spawn(proc: Any) -> None:
    """``proc.start()``; if the forkserver died (a preloaded module raised), retry without it.

    A forkserver that dies while importing its preload list makes ``start`` fail with EOFError
    or ConnectionRefusedError; ``ensure_running`` launches a new one once the old one has exited
    (several lanes may be starting at once: each retries until then).
    """
    try:
        proc.start()
        return
    except (EOFError, OSError):
        if not _drop_preload():
            raise
    deadline = time.monotonic() + RESTART_WAIT
    while True:
        try:
            proc.start()
            return
        except (EOFError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
