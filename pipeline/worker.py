"""The process worker's side: its loop, reading batches, sending outcomes back.

Runs in a worker process forked from the forkserver (see :mod:`pipeline.procpool` for the
parent's side and the wire protocol). Light on purpose: no asyncio, no ledger, so a forkserver
that preloads it is ready sooner.

Imported by the forkserver (it is on every preload list), it also makes the forkserver ignore
the signals the run stops on and its exit quick: see :func:`_settle_forkserver`.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import gc
import io
import logging
import mmap
import multiprocessing.connection as mpc
import multiprocessing.reduction as mp_reduction
import os
import pickle
import sys
import time
import types
from collections.abc import MutableSequence, Sequence
from typing import Any

from . import malloc
from .calls import (
    SLOT_INDEX,
    SLOT_SEQ,
    Outcome,
    Step,
    portable_exception,
    run_chain,
    share_run_wait,
)
from .errors import Unpicklable
from .forkserver import die_with_run, ignore_stop_signals, lead_own_group
from .runwait import run_delay

__all__ = [
    "FLUSH_INTERVAL",
    "MALLOC_MMAP_THRESHOLD",
    "MALLOC_TRIM_THRESHOLD",
    "OUT_OF_BAND_BYTES",
    "Arena",
    "tune_malloc",
    "worker_main",
]

log = logging.getLogger("pipeline.procpool")

#: Outcomes are flushed to the parent at least this often while a batch runs (seconds), and at
#: the end of the batch. Each message costs the parent a turn of its loop; the worker does not
#: wait for them (its next batch is already in its pipe), and what a crash loses is only re-run
#: (the items whose outcomes had not come back), so a few messages per batch are enough:
#: at 5 ms a batch of small images sent one message per item or two.
FLUSH_INTERVAL = 0.025

#: ``bytes`` values at least this long travel to the worker out of the pickle stream.
OUT_OF_BAND_BYTES = 64 * 1024


#: glibc malloc settings of a worker process, unless its environment sets them
#: (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``). With glibc's defaults, the buffers of
#: an item (a 2.6 MB file copied out of the arena, a 3 MB decoded image, the resampler's output)
#: are mmap'ed, or freed at the top of the heap and trimmed, and the next item faults them in
#: again page by page: ~800 page faults per 12 MP photo. Kept instead, they are reused: ~3.5% of
#: a 12 MP run's wall time. Blocks above the mmap threshold are still given back when freed; at
#: most the trim threshold of free heap stays with an idle worker.
MALLOC_MMAP_THRESHOLD = 32 * 2**20
MALLOC_TRIM_THRESHOLD = 64 * 2**20


def tune_malloc() -> bool:
    """Apply :data:`MALLOC_MMAP_THRESHOLD` and :data:`MALLOC_TRIM_THRESHOLD` to this process
    (glibc only; settings given in the environment win). True when anything was set."""
    mmap = malloc.mallopt_unless_set(malloc.M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD)
    return malloc.mallopt_unless_set(malloc.M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD) or mmap


def _preloaded_by_forkserver() -> bool:
    """Whether the forkserver is importing this module now: its ``main`` is on the stack (its
    preload list is imported there). Also true in a worker forked from it; never in the
    process that runs the pipeline."""
    forkserver = sys.modules.get("multiprocessing.forkserver")
    main = getattr(forkserver, "main", None)
    code = getattr(main, "__code__", None)
    if code is None:
        return False
    frame: types.FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_code is code:
            return True
        frame = frame.f_back
    return False


def _settle_forkserver() -> None:
    """In the forkserver (a new interpreter, started by ``multiprocessing`` for a program that
    embeds the engine), as in the one ``python -m pipeline`` forks for itself:

    * ignore the signals the run stops on (:data:`pipeline.forkserver.STOP_SIGNALS`): a SIGTERM
      or SIGHUP to the program's whole process group (a batch scheduler's ``scancel``, systemd
      stopping a service, the shell when the terminal hangs up) killed the forkserver, and
      with it the workers it had forked, whose in-flight items then failed as worker crashes
      while the run was stopping gracefully (``multiprocessing`` protects it from SIGINT
      only). The forkserver still exits when the program does (its "alive" pipe closes);
    * ``gc.freeze()`` at exit, as ``python -m pipeline`` does for itself.

    The forkserver exits when the process that started it stops it (``pipeline.forkserver
    .shutdown``) and that process waits for it. Its interpreter shutdown garbage-collects every
    object of the modules it preloaded (numpy, Pillow, ...) several times: ~30 ms, ~10 ms with
    them frozen (only ``__del__`` in reference cycles is skipped, which Python never promises
    at exit). Workers forked from it leave with ``os._exit``: the handler never runs there.
    """
    if _preloaded_by_forkserver():
        ignore_stop_signals()
        atexit.register(gc.freeze)


_settle_forkserver()


class Arena:
    """A lane's shared memory for big payloads: written by the parent, read by its worker.

    Anonymous (``memfd``), so nothing is left behind in ``/dev/shm`` by a killed process. It
    pickles only while a worker is being started: the file descriptor is passed to the child the
    way multiprocessing passes a ``Connection``'s.
    """

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self.view = mmap.mmap(fd, size)
        self.high: dict[int, int] = {}  # region start -> end of its last batch (parent side)

    def put(self, copies: Sequence[tuple[int, bytes]], start: int, keep: int) -> None:
        """Copy a batch's payloads into its region, which begins at ``start`` (the region's
        previous batch is no longer read by anyone).

        Memory the region's previous batch touched beyond ``keep`` bytes is given back first, so
        an idle lane holds at most that much per region after a batch of big files went through.
        """
        view = self.view
        high = self.high.get(start, start)
        first = start + keep - (start + keep) % mmap.PAGESIZE
        if high > first and hasattr(mmap, "MADV_REMOVE"):
            with contextlib.suppress(OSError):
                view.madvise(mmap.MADV_REMOVE, first, high - first)
        end = start
        for offset, data in copies:
            end = offset + len(data)
            view[offset:end] = data
        self.high[start] = end

    @classmethod
    def create(cls, size: int) -> Arena | None:
        """A new arena of ``size`` bytes, or None where there is no ``memfd_create`` (or it
        fails)."""
        memfd_create = getattr(os, "memfd_create", None)
        if memfd_create is None:
            return None
        try:
            fd = memfd_create("pipeline-lane", getattr(os, "MFD_CLOEXEC", 0))
        except OSError as exc:
            log.debug("no shared-memory arena: %s", exc)
            return None
        try:
            os.ftruncate(fd, size)
            return cls(fd, size)
        except OSError as exc:
            os.close(fd)
            log.debug("no shared-memory arena: %s", exc)
            return None

    def __reduce__(self) -> tuple[Any, tuple[Any, int]]:
        return _attach_arena, (mp_reduction.DupFd(self.fd), self.size)

    def close(self) -> None:
        self.view.close()
        os.close(self.fd)


def _attach_arena(dup: Any, size: int) -> Arena:
    return Arena(dup.detach(), size)


class _OutOfBandUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, buffers: Sequence[bytes], arena: Arena | None) -> None:
        super().__init__(file)
        self.buffers = buffers
        self.arena = arena

    def persistent_load(self, pid: Any) -> bytes:
        if isinstance(pid, tuple):
            offset, n = pid
            assert self.arena is not None, "payload in an arena the worker does not have"
            data: bytes = self.arena.view[offset : offset + n]
            return data
        buffer: bytes = self.buffers[int(pid)]
        return buffer


def _recv_values(conn: mpc.Connection, arena: Arena | None) -> tuple[int, list[Any]] | None:
    """One parent → worker message (see the module docstring); None means exit."""
    message = pickle.loads(conn.recv_bytes())
    if message is None:
        return None
    seq, n, pickled = message
    buffers = [conn.recv_bytes() for _ in range(n)]
    values: list[Any] = _OutOfBandUnpickler(io.BytesIO(pickled), buffers, arena).load()
    return seq, values


def worker_main(
    conn: mpc.Connection,
    steps: Sequence[Step],
    slot: MutableSequence[float],
    arena: Arena | None = None,
) -> None:
    """Entry point of a worker process."""
    ignore_stop_signals()  # the run handles them (its grace period) and stops its workers
    lead_own_group()
    die_with_run()  # a run SIGKILLed: its workers do not go on writing outputs
    tune_malloc()
    while True:
        try:
            message = _recv_values(conn, arena)
        except (EOFError, OSError):
            return
        if message is None:
            return
        seq, values = message
        slot[SLOT_SEQ] = seq
        pending: list[tuple[int, Outcome]] = []
        last_flush, delay = time.monotonic(), run_delay()
        for index, value in enumerate(values):
            slot[SLOT_INDEX] = index
            cpu = time.process_time()
            outcome = run_chain(steps, value, slot)
            outcome.cpu = time.process_time() - cpu
            if not outcome.ok:
                outcome.value = portable_exception(outcome.value)
            pending.append((index, outcome))
            now = time.monotonic()
            if now - last_flush >= FLUSH_INTERVAL or index == len(values) - 1:
                delay = share_run_wait([o for _, o in pending], delay)  # its wait for a core
                try:
                    conn.send_bytes(_pack_outcomes(seq, pending, steps))
                except OSError:  # the run is gone (killed): nobody to tell, nothing to say
                    return
                pending = []
                last_flush = now


def _pack_outcomes(seq: int, pending: list[tuple[int, Outcome]], steps: Sequence[Step]) -> bytes:
    try:
        return pickle.dumps((seq, pending), protocol=5)
    except Exception:  # noqa: BLE001 — a user's result may fail to pickle in any way: find which
        pass
    safe: list[tuple[int, Outcome]] = []
    for index, outcome in pending:
        try:
            pickle.dumps(outcome.value, protocol=5)
        except Exception as exc:  # noqa: BLE001 — the per-item boundary: that item fails
            what = "result" if outcome.ok else "exception"
            error = Unpicklable(
                f"the {what} of stage {steps[outcome.step].name!r} cannot be pickled "
                f"to leave the worker process ({type(exc).__name__}: {exc})"
            )
            # the same step, attempts and timings (busy, cpu, run_wait), now failed
            outcome = dataclasses.replace(outcome, ok=False, value=error)
        safe.append((index, outcome))
    return pickle.dumps((seq, safe), protocol=5)
