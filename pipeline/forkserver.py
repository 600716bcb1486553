"""The process workers' forkserver: its preload list, its early start, starting a worker.

Light on purpose (no asyncio): ``python -m pipeline`` starts the forkserver from here before it
imports the engine, so the forkserver imports the worker modules on another core meanwhile. There
the forkserver is a fork of the command (``warm_up(fork=True)``), which has no other thread yet:
it starts with what the command has imported (no new interpreter, multiprocessing and the
engine's package imported already) and shares those pages with it.

Before the first worker starts, the forkserver is told to preload the modules of the steps'
functions (and of their arguments) and the worker loop's (:mod:`pipeline.worker`), so each worker
is a fork of a process that already imported them instead of importing them itself on its first
item. The forkserver is process-global and starts once: modules of pipelines built after it
started are imported by their workers as before. A preloaded module that fails to import with
``ImportError`` is skipped by the forkserver; one that fails otherwise kills the forkserver, and
the lane then starts its worker again with the preload list as it was before (see
:func:`spawn`).

The forkserver, and the resource tracker multiprocessing starts with it, are helper processes
that stay up for the life of the process (a pipeline run reuses the forkserver of the one
before; ``python -m pipeline`` starts no tracker: :func:`without_resource_tracker`). Nothing
stops them on its own: when their parent exits, they notice the end of their
pipes and exit *after* it, orphaned. :func:`shutdown` stops and waits for them; ``python -m
pipeline`` calls it before it exits.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.machinery
import logging
import multiprocessing as mp
import multiprocessing.forkserver as mp_forkserver
import multiprocessing.resource_tracker as mp_resource_tracker
import multiprocessing.util as mp_util
import os
import select
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .calls import Step

__all__ = [
    "SHUTDOWN_TIMEOUT",
    "STOP_SIGNALS",
    "WORKER_MODULE",
    "WORKER_NAME",
    "die_with_run",
    "ignore_stop_signals",
    "kill_worker",
    "lead_own_group",
    "mp_context",
    "preload_modules",
    "shutdown",
    "signal_workers",
    "spawn",
    "warm_up",
    "without_resource_tracker",
]

log = logging.getLogger("pipeline.procpool")

#: The module of the worker loop, preloaded with every pipeline's modules.
WORKER_MODULE = "pipeline.worker"

#: The ``name`` of every worker process (``multiprocessing.Process.name``): how
#: :func:`shutdown` tells the pipeline's workers from other children of the process.
WORKER_NAME = "pipeline-worker"

#: How long a lane retries starting its worker while a forkserver broken by a preloaded module
#: is replaced (seconds).
RESTART_WAIT = 5.0

#: How long :func:`shutdown` waits for the helper processes to exit before it kills them
#: (seconds). They exit in a few tens of ms once told to.
SHUTDOWN_TIMEOUT = 5.0


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


def warm_up(modules: Sequence[str], *, fork: bool = False) -> None:
    """Start the forkserver now, preloading ``modules``, while the caller is still busy with its
    own imports: the forkserver imports them on another core, and the first workers fork from it
    at once. For a CLI about to run a pipeline; best effort (a failure only costs the head start).

    ``fork=True``: the forkserver is a fork of this process rather than a new interpreter
    (:func:`_fork_server`), when this process runs no other thread. For a process that is the
    command's own, at its very start (``python -m pipeline``).
    """
    names = [n for n in modules if _same_file_in_forkserver(n)]
    _request_preload([WORKER_MODULE, *names])
    starting = _forking_server() if fork and _may_fork() else contextlib.nullcontext()
    try:
        with starting:
            mp_forkserver.ensure_running()
    except OSError as exc:  # the first worker start will try again, and report
        log.debug("forkserver warm-up failed: %s", exc)


def _may_fork() -> bool:
    """Whether forking this process is safe: Linux (the one platform this is measured on),
    and no thread but this one (a fork copies a lock another thread holds, held for good)."""
    return sys.platform.startswith("linux") and threading.active_count() == 1


@contextlib.contextmanager
def _forking_server() -> Iterator[None]:
    """While inside, multiprocessing starts its forkserver with :func:`_fork_server` instead of a
    new interpreter (``util.spawnv_passfds`` is what ``ForkServer.ensure_running`` calls)."""
    util: Any = mp_util  # typeshed's spawnv_passfds takes a path as bytes; CPython passes str
    spawn = util.spawnv_passfds
    util.spawnv_passfds = _fork_server
    try:
        yield
    finally:
        util.spawnv_passfds = spawn


def _fork_server(path: str, args: Sequence[str], passfds: Sequence[int]) -> int:
    """``util.spawnv_passfds`` for the forkserver, by ``fork`` alone: the child runs the ``-c``
    command of ``args`` that a new interpreter would, and exits with its code.

    What it saves: the new interpreter's start-up and the imports this process has made
    already (multiprocessing, the engine's package), tens of ms before the first worker can
    start; and the pages of those modules are shared with this process instead of held twice
    (``python -m bench.cost``: summed peak PSS 64 MiB instead of 67 on small images). As with
    ``spawnv_passfds``, the child keeps only standard input, output and error and ``passfds``
    (never this process's end of the forkserver's "alive" pipe, which would keep it alive).
    It leaves with ``os._exit``: none of this process's exit handlers run there.
    """
    command = args[list(args).index("-c") + 1]
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        ignore_stop_signals()  # the command handles them (and stops this process)
        _close_fds_except({0, 1, 2, *passfds})
        server: Any = mp_forkserver._forkserver  # private: its lock, held by ensure_running,
        server._lock = threading.Lock()  # is held here too, by nobody
        exec(command, {"__name__": "__mp_forkserver__"})  # multiprocessing's own command
        code = 0
    except SystemExit as exc:  # how the forkserver's loop ends
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except BaseException:  # noqa: BLE001 - reported as a new interpreter would, then exit
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os._exit(code)


def _close_fds_except(keep: set[int]) -> None:
    for fd in map(int, os.listdir("/proc/self/fd")):
        if fd not in keep:
            _close(fd)  # the listing's own descriptor is closed already: ignored


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
            log.warning(
                "the workers' forkserver died (a module of its preload list failed to import, "
                "or it was killed); starting it again without that list"
            )
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


#: The signals a run stops on, gracefully (:mod:`pipeline.entry`): a terminal's Ctrl-C, a batch
#: scheduler's SIGTERM, a shell's SIGHUP when its terminal hangs up. Each may come to the whole
#: process group; the forkserver and the workers ignore them (:func:`ignore_stop_signals`).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def ignore_stop_signals() -> None:
    """In the forkserver and a worker: leave :data:`STOP_SIGNALS` to the run, which stops its
    processes itself (a worker dead of one would fail its item as a crash instead)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def lead_own_group() -> None:
    """Make this worker the leader of a process group of its own, so that what its stages
    start (an external tool run with ``subprocess``) is in it and goes with it: the parent
    kills the whole group (:func:`kill_worker`) at an item's timeout, past the grace period
    and at shutdown. Left in the command's group, such a program outlived the worker killed
    under it, an orphan. Out of the terminal's foreground group, a worker that writes to the
    terminal must not be stopped for it (``SIGTTOU``, under ``stty tostop``)."""
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    with contextlib.suppress(OSError):  # already a group leader (a direct call, a test)
        os.setpgid(0, 0)


def die_with_run() -> None:
    """In a worker: end it, and what its stages started (its process group), as soon as the
    process that started it (the run's) is gone, even SIGKILLed: a daemon thread waits on
    multiprocessing's parent sentinel, the read end of a pipe whose write end only that process
    holds (with the worker's ``Process`` object, kept until the worker is reaped). Before, a
    worker learnt it only when it next sent a result, after its item, however long: it went on
    writing outputs into a folder the next run held by then. (The forkserver, the worker's
    parent, outlives the run as long as its workers do: they hold its "alive" pipe.)"""
    parent = mp.parent_process()
    sentinel = getattr(parent, "sentinel", None)
    if not isinstance(sentinel, int):  # not started by a run (a direct call, a test)
        return

    def watch() -> None:
        try:
            poller = select.poll()
            poller.register(sentinel, select.POLLIN)
            poller.poll()  # POLLHUP: the run's end of the pipe is closed
        except (OSError, ValueError):  # cannot watch: the worker goes on as it did
            return
        kill_worker(os.getpid())  # and its group, when it leads one

    threading.Thread(target=watch, name="pipeline-run-watch", daemon=True).start()


def kill_worker(pid: int) -> None:
    """SIGKILL worker ``pid`` and its process group (see :func:`lead_own_group`); only the
    worker where it leads none yet (killed while it was starting)."""
    if not kill_group(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def signal_workers(sig: int) -> None:
    """Send ``sig`` to the process group of each live worker of this process. The terminal's
    job control (Ctrl-Z, ``fg``, ``bg``) signals the command's own process group only, which
    the workers are not in (:func:`lead_own_group`): the command passes it on."""
    for proc in _live_workers():
        if proc.pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)


def _live_workers() -> list[Any]:
    """The pipelines' worker processes of this process still alive."""
    return [p for p in mp.active_children() if p.name == WORKER_NAME]


def kill_group(pid: int) -> bool:
    """SIGKILL what is left of the process group worker ``pid`` led; False if there is none
    (nothing left, or it never led one). Also once the worker has died on its own (a crash,
    the OOM killer), since what its stages started outlives it: the group, and so its number,
    lasts as long as a process is in it."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):  # no group of its own (or not ours)
        return False
    return True


# -- the resource tracker ----------------------------------------------------------------------

_no_tracker_fd: int | None = None  # what the tracker's pipe is, under without_resource_tracker()


def without_resource_tracker() -> bool:
    """Let this process's forkserver and workers start without multiprocessing's resource
    tracker; True if it will (none is running yet).

    For a process that is the command's own (``python -m pipeline``), not for a program that
    embeds the engine. The tracker is a Python process of its own (~7.5 MB, and ~30 ms of CPU
    to start, beside the forkserver, at the start of every run) whose only job is to remove
    the *named* resources (semaphores, shared memory) that processes which die leave behind.
    The engine's workers create none: they talk through pipes, and their progress slots are
    anonymous shared memory (``RawArray``: a file unlinked at once). A program of its own may:
    its ``multiprocessing`` locks and queues need the tracker, so it keeps it.

    multiprocessing has no switch for it: the forkserver always hands each worker the
    tracker's pipe. Here that pipe is ``/dev/null`` (multiprocessing takes a pipe it can write
    to for a live tracker): registrations, of which the engine makes none, go nowhere.
    :func:`shutdown` closes it, so a process started after it (the spawned near-duplicate
    grouping of a very large run, whose queues are named semaphores) starts a real tracker.
    """
    global _no_tracker_fd
    tracker: Any = mp_resource_tracker._resource_tracker  # private: no public switch
    if not hasattr(tracker, "_fd") or not hasattr(tracker, "_lock"):
        return False  # another Python's multiprocessing: keep its tracker
    with tracker._lock:
        if tracker._fd is not None:  # running already (or inherited): keep it
            return False
        _no_tracker_fd = tracker._fd = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    return True


# -- stopping the helpers ----------------------------------------------------------------------


def shutdown(timeout: float = SHUTDOWN_TIMEOUT, *, wait: bool = True) -> None:
    """Stop the helper processes of this process's workers and wait for them: the forkserver
    (if this process started it) and multiprocessing's resource tracker (idem).

    ``python -m pipeline`` calls it once, before it exits, whatever the exit. A program that
    embeds :class:`~pipeline.Pipeline` may call it when it is done with process stages, e.g.
    before it exits: otherwise both helpers outlive it for a moment and are left for ``init``
    to reap. Not after each run: the forkserver is kept for the next run (its preloaded
    modules save every worker their imports), and a run after this one starts new helpers.
    Not while multiprocessing objects of the program's own that hold a named semaphore (a
    ``Queue``, a ``Lock``) are still alive: the resource tracker takes them for leaked when it
    stops, and removes their semaphores.

    Worker processes of pipelines that are still alive (there are none once a run has
    returned) are killed first. The helpers are told to exit by closing the pipes that keep
    them alive, as multiprocessing's own (private) ``ForkServer._stop`` and
    ``ResourceTracker._stop`` do; one still there after ``timeout`` seconds (another child of
    this process started with ``forkserver`` or ``spawn`` still holds its pipe) is killed.
    Idempotent; does nothing when the helpers never started; never raises because a helper
    is gone already.

    ``wait=False``: tell them and return at once (they exit in tens of ms, while the caller
    goes on); the next ``shutdown()`` waits for them (and kills one still there after
    ``timeout`` seconds from then). ``python -m pipeline`` does so after a run, and waits at
    its exit.
    """
    _stop_workers(timeout)
    deadline = time.monotonic() + timeout
    waiting = _stopping  # those told by an earlier shutdown(wait=False) too
    # both are told first, then waited for: they exit side by side
    server: Any = mp_forkserver._forkserver  # private attributes: typeshed knows none
    with server._lock:  # no worker start meanwhile (one would start a new forkserver)
        pid = _close_forkserver(server)
        if pid is not None:
            waiting[pid] = "forkserver"
        tracker: Any = mp_resource_tracker._resource_tracker
        with tracker._lock:
            pid = _close_resource_tracker(tracker)
            if pid is not None:
                waiting[pid] = "resource tracker"
            if wait:
                _wait_exited(waiting, deadline)


#: Helpers told to exit and not yet waited for (pid -> what it is): see ``shutdown(wait=False)``.
_stopping: dict[int, str] = {}


def _stop_workers(timeout: float) -> None:
    """Kill and join the pipeline's workers still alive (lanes close theirs: a safety net).

    Joining a worker means the forkserver has reaped it (a worker's exit code comes from the
    forkserver, after ``waitpid``): none is left as a zombie when the forkserver exits.
    """
    workers = _live_workers()
    for proc in workers:
        log.debug("stopping worker pid %s, still alive at shutdown", proc.pid)
        if proc.pid is not None:
            kill_worker(proc.pid)
    for proc in workers:
        proc.join(timeout)


def _close_forkserver(server: Any) -> int | None:
    """Close our end of the forkserver's "alive" pipe (it exits at EOF, once every worker has
    closed its copy too) and forget the forkserver; its pid to wait for, if we started it."""
    pid: int | None = server._forkserver_pid
    if pid is None:  # never started, stopped already, or started by another process
        return None
    fd, address = server._forkserver_alive_fd, server._forkserver_address
    server._forkserver_pid = server._forkserver_alive_fd = server._forkserver_address = None
    if hasattr(server, "_forkserver_authkey"):  # Python 3.13+
        server._forkserver_authkey = None
    if fd is not None:
        _close(fd)
    if address is not None and not mp_util.is_abstract_socket_namespace(address):
        try:
            os.unlink(address)
        except OSError as exc:  # gone already (multiprocessing's temp dir was removed)
            log.debug("forkserver socket %s: %s", address, exc)
    return pid


def _close_resource_tracker(tracker: Any) -> int | None:
    """Close our end of the resource tracker's pipe (it exits at EOF) if we started it; its
    pid to wait for. One inherited from a parent (``_pid`` None) is the parent's to stop;
    the ``/dev/null`` of :func:`without_resource_tracker` is closed (no process to wait for),
    and whatever starts next gets a real tracker."""
    global _no_tracker_fd
    fd, pid = tracker._fd, tracker._pid
    if fd is not None and fd == _no_tracker_fd:
        tracker._fd = _no_tracker_fd = None
        _close(fd)
        return None
    if fd is None or pid is None:
        return None
    tracker._fd = tracker._pid = None
    _close(fd)
    return int(pid)


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError as exc:  # closed behind multiprocessing's back: nothing left to close
        log.debug("closing fd %d: %s", fd, exc)


def _wait_exited(pids: dict[int, str], deadline: float) -> None:
    """``waitpid`` each of ``pids`` (pid -> what it is); kill those alive at ``deadline``."""
    pause = 0.0002
    while pids:
        for pid in list(pids):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # reaped by someone else already
                done = pid
            if done:
                del pids[pid]
        if not pids:
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(pause)
        pause = min(pause * 2, 0.002)
    for pid, what in pids.items():
        log.warning("the %s (pid %d) did not exit; killing it", what, pid)
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):  # it exited meanwhile
            pass
    pids.clear()
