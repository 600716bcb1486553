"""Process lanes: one worker process per lane, each with its own pipe and timeout slot.

Why not ``concurrent.futures.ProcessPoolExecutor`` or ``multiprocessing.Pool``: when one worker
dies, the former breaks the whole pool (every pending future fails with ``BrokenProcessPool``)
and the latter waits forever. Neither can kill the one worker whose item ran past its timeout.
Here every lane owns one process, so the parent always knows which items a dead worker held:

* items whose outcomes already came back keep them;
* the item the worker was running (read from the shared ``slot``) is failed with
  :class:`~pipeline.errors.WorkerCrashed` (or :class:`~pipeline.errors.ItemTimeout` when the
  watchdog killed it);
* the rest of the batch is handed back to be run again on the replacement worker.

Workers start with ``forkserver`` (never ``fork`` from a parent that runs threads), ignore
SIGINT (the parent owns shutdown) and are daemonic, so none outlives the parent. Each leads a
process group of its own, which is killed whole: a program its stage started goes with it.
Items go to a worker in small batches and outcomes come back in batches flushed at least every
``pipeline.worker.FLUSH_INTERVAL`` seconds and at the end of each batch, so an item a crash
could lose (to be run again) is at most that much work old.

Start-up: a lane created on a running event loop starts its worker at once (a task), so the
worker is up before the first item arrives; without a running loop it starts at its first batch.
Workers are forks of a forkserver that preloaded the stage modules: see
:mod:`pipeline.forkserver`. The worker's loop is :mod:`pipeline.worker`.

Wire protocol (``Connection.send_bytes`` of pickles, protocol 5):
parent → worker ``(seq, n, pickled_values)`` followed by ``n`` raw messages, or ``None`` to
exit. ``pickled_values`` is the pickle of ``[value, ...]`` in which every ``bytes`` object of at
least ``pipeline.worker.OUT_OF_BAND_BYTES`` is left out as a persistent id, so big payloads (file
contents) are never copied into and out of a pickle stream:

* ``(offset, length)``: the bytes are in the lane's shared-memory arena (Linux: a ``memfd`` of
  ``ARENA_BYTES``, mapped by the parent and passed to the worker at its start), cut into
  ``DEPTH`` regions, one per batch in flight. The parent copies a batch's payloads into a free
  region before sending the message; the worker copies them out when it receives it, before
  running anything; the region is free again once every outcome of that batch is back (or the
  worker is gone). A copy each side (~0.1 ms per MB) replaces pushing the bytes through the
  socket, which costs the worker ~1.5 ms of CPU per MB in ``recv`` calls of a socket buffer's
  size;
* ``i`` (an int): the ``i``-th raw message after the header; for payloads that do not fit in
  what is left of the arena, and where there is no arena.

worker → parent ``(seq, [(index, Outcome), ...])``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import math
import multiprocessing.connection as mpc
import pickle
import select
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .batching import Batcher
from .calls import SLOT_DEADLINE, SLOT_INDEX, SLOT_SEQ, SLOT_SIZE, SLOT_STEP, Outcome, Step
from .errors import FatalRunError, Unpicklable, WorkerCrashed
from .forkserver import (
    WORKER_NAME,
    _request_preload,
    kill_group,
    kill_worker,
    mp_context,
    preload_modules,
    spawn,
    warm_up,
)
from .lanes import LaneResult, min_timeout, timeout_outcome, watch
from .records import Item
from .worker import OUT_OF_BAND_BYTES, Arena, worker_main

__all__ = ["DEPTH", "ProcessLane", "mp_context", "preload_modules", "warm_up"]

log = logging.getLogger(__name__)

#: Size of a lane's shared-memory arena for big payloads (memory is used only as far as a batch
#: has filled it; a payload that does not fit in the rest goes through the socket).
ARENA_BYTES = 64 * 1024 * 1024

#: Arena memory a lane keeps between batches; what a bigger batch touched beyond it is freed.
ARENA_KEEP = 16 * 1024 * 1024

#: Added to the crash message of a worker that exited with code 1 before it ever answered: it
#: most likely failed while starting (importing the main script or a stage module).
STARTUP_HINT = (
    " without ever answering (its error is on stderr; a script that runs a pipeline with"
    " process stages must start it under `if __name__ == '__main__':`)"
)

#: A batch whose header is at most this long, with no payload by socket and at most
#: ``INLINE_COPY`` bytes of arena copies, is sent from the event loop instead of a thread (a hop
#: less). With ``DEPTH`` such headers unread the socket buffer (~200 kB) still has room.
INLINE_BYTES = 32 * 1024
INLINE_COPY = 1024 * 1024

#: Batches in flight per lane: while the worker runs one, the next is already in its socket and
#: arena (the arena is cut into this many regions, one per batch in flight).
DEPTH = 2

# -- the wire --------------------------------------------------------------------------------


class _OutOfBandPickler(pickle.Pickler):
    """Pickles with big ``bytes`` objects left out, as persistent ids (module docstring)."""

    def __init__(self, file: io.BytesIO, region: tuple[int, int]) -> None:
        super().__init__(file, protocol=5)
        self.buffers: list[bytes] = []
        self.copies: list[tuple[int, bytes]] = []  # (arena offset, payload)
        self.used, self.end = region  # the part of the arena this batch may fill

    def persistent_id(self, obj: Any) -> int | tuple[int, int] | None:
        if type(obj) is not bytes or len(obj) < OUT_OF_BAND_BYTES:
            return None
        n = len(obj)
        if self.used + n <= self.end:
            self.copies.append((self.used, obj))
            self.used += n
            return self.used - n, n
        self.buffers.append(obj)
        return len(self.buffers) - 1


@dataclass
class _Outgoing:
    """One batch on its way to a worker: arena copies first, then the socket messages."""

    messages: list[bytes]
    copies: list[tuple[int, bytes]]
    start: int  # of the batch's arena region

    def size(self) -> int:
        return sum(map(len, self.messages)) + sum(len(data) for _, data in self.copies)


def _dumps_values(values: Any, region: tuple[int, int]) -> tuple[bytes, _OutOfBandPickler]:
    """Pickle ``values``; big bytes go into the arena ``region`` (start, end) while they fit."""
    out = io.BytesIO()
    pickler = _OutOfBandPickler(out, region)
    pickler.dump(values)
    return out.getvalue(), pickler


def _pack_values(
    steps: Sequence[Step], seq: int, batch: Sequence[Item], region: tuple[int, int]
) -> tuple[_Outgoing | None, dict[int, Outcome]]:
    """The batch's messages; items that cannot be pickled fail here, in the parent."""
    values = [it.value for it in batch]
    try:
        pickled, p = _dumps_values(values, region)
        header = pickle.dumps((seq, len(p.buffers), pickled), protocol=5)
        return _Outgoing([header, *p.buffers], p.copies, region[0]), {}
    except Exception:  # noqa: BLE001 — a user's value may fail to pickle in any way: find which
        pass
    bad: dict[int, Outcome] = {}
    for i, value in enumerate(values):
        try:
            pickle.dumps(value, protocol=5)
        except Exception as exc:  # noqa: BLE001 — the per-item boundary: that item fails
            error = Unpicklable(
                f"the input of stage {steps[0].name!r} cannot be pickled to reach a worker "
                f"process ({type(exc).__name__}: {exc})"
            )
            bad[i] = Outcome.failure(error, step=0, attempts=1, busy=[0.0] * len(steps))
    return None, bad


@dataclass
class _Ended:
    """How a lane's worker ended, which batch it was running, whether a crash was reported."""

    how: str
    running: int  # seq of the batch in its slot (-1: none)
    index: int  # of the item in that batch it was running
    step: int  # of the stage it was in
    reported: bool = False  # the crash (or the timeout kill) is accounted for


@dataclass
class _Call:
    """One batch in flight on a lane (a lane has up to ``DEPTH``)."""

    seq: int
    size: int
    waiter: asyncio.Future[None]
    region: int  # index of its arena region
    worker: int = 0  # generation of the worker it was sent to
    heavy: bool = False  # some of it went by socket beyond the header (may sit unread there)
    received: dict[int, Outcome] = field(default_factory=dict)


class ProcessLane:
    """One worker process; started with the lane, restarted after a crash or a timeout kill.

    Up to ``DEPTH`` batches are in flight at once (``run`` may be awaited by that many drivers
    concurrently): the worker reads the next batch as soon as it is done with one, instead of
    waiting a round trip through the parent's event loop for it.
    """

    depth = DEPTH  # a driver per batch in flight

    def __init__(
        self,
        steps: Sequence[Step],
        *,
        on_crash: Callable[[str], None],
        batcher: Batcher | None = None,
    ) -> None:
        self.steps = tuple(steps)
        self._batcher = batcher  # told what each batch carried (it caps batches by bytes)
        self.floor = min_timeout(self.steps)
        self._on_crash = on_crash
        self._ctx = mp_context()
        self._proc: Any = None
        self._conn: mpc.Connection | None = None
        self._slot: Any = None
        self._seq = 0
        self._calls: dict[int, _Call] = {}  # in flight, by seq
        self._regions: asyncio.Queue[int] = asyncio.Queue()  # free arena regions: DEPTH at most
        for region in range(DEPTH):
            self._regions.put_nowait(region)
        self._send_lock = asyncio.Lock()  # one batch written at a time, in seq order
        self._dead = False
        self._answered = False
        self._ended: dict[int, _Ended] = {}  # by worker generation
        self.started = 0
        _request_preload(preload_modules(self.steps))
        self._sending: asyncio.Future[None] | None = None  # the last batch's write
        self._starting: asyncio.Task[None] | None = None
        self._poller = select.poll()  # of the current worker's pipe (see _start)
        self._arena = Arena.create(ARENA_BYTES)  # shared by the lane's successive workers
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop yet: the worker starts with the first batch
            return
        self._starting = loop.create_task(self._start(), name="pipeline-worker-start")

    # -- lifecycle -----------------------------------------------------------------------------
    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        parent, child = self._ctx.Pipe(duplex=True)
        slot = self._ctx.RawArray("d", SLOT_SIZE)
        slot[SLOT_SEQ] = -1.0
        slot[SLOT_DEADLINE] = math.inf
        proc = self._ctx.Process(
            target=worker_main,
            args=(child, self.steps, slot, self._arena),
            daemon=True,
            name=WORKER_NAME,
        )
        starting = loop.run_in_executor(None, spawn, proc)
        try:
            await asyncio.shield(starting)
        except asyncio.CancelledError:
            # the start goes on in its thread: stop that worker as soon as it is up
            def discard(fut: asyncio.Future[None]) -> None:
                _retrieve(fut)
                _discard(proc, parent, child)

            starting.add_done_callback(discard)
            raise
        except BaseException:
            parent.close()
            child.close()
            raise
        child.close()
        self._proc, self._conn, self._slot = proc, parent, slot
        # Connection.poll() builds a selector per call (five system calls and ~50 us of Python
        # for every message); one poll object per worker asks the kernel once
        self._poller = select.poll()
        self._poller.register(parent.fileno(), select.POLLIN)
        self._dead = False
        self._answered = False  # this worker has sent an outcome
        self.started += 1
        loop.add_reader(parent.fileno(), self._on_readable)
        loop.add_reader(proc.sentinel, self._on_readable, True)

    async def wait_started(self) -> None:
        """Wait for the start begun when the lane was made, if any (the wait is not
        cancelled when the caller is)."""
        starting = self._starting
        if starting is None:
            return
        await asyncio.wait({starting})
        self._starting = None
        if not starting.cancelled() and starting.exception() is not None:
            log.debug("worker start failed: %r", starting.exception())

    def _detach(self) -> None:
        loop = asyncio.get_running_loop()
        # a closed pipe has no fileno (OSError); a closed descriptor is not watched (ValueError)
        if self._conn is not None:
            with contextlib.suppress(OSError, ValueError):
                loop.remove_reader(self._conn.fileno())
        if self._proc is not None:
            with contextlib.suppress(OSError, ValueError):
                loop.remove_reader(self._proc.sentinel)

    def _kill(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            kill_worker(self._proc.pid)  # and what its stages started

    def _reap(self) -> None:
        """Forget the dead worker; note how it ended and which batch it was running."""
        slot = self._slot
        running, index, step = (
            (int(slot[SLOT_SEQ]), int(slot[SLOT_INDEX]), int(slot[SLOT_STEP]))
            if slot is not None
            else (-1, -1, -1)
        )
        self._detach()
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if conn is not None:
            conn.close()
        how = "never started"
        if proc is not None:
            kill_group(proc.pid)  # what its stages started: it died under them, they go too
            proc.join(1.0)
            code = proc.exitcode
            if code is None:
                how = f"worker pid {proc.pid} stopped answering"
            elif code < 0:
                try:
                    name = signal.Signals(-code).name
                except ValueError:
                    name = str(-code)
                how = f"worker pid {proc.pid} was killed by {name}"
            else:
                how = f"worker pid {proc.pid} exited with code {code}"
                if code == 1 and not self._answered:
                    how += STARTUP_HINT
        self._ended[self.started] = _Ended(how, running, index, step)
        for old in [g for g in self._ended if g < self.started - 4]:
            del self._ended[old]

    async def close(self, *, graceful: bool) -> None:
        await self.wait_started()  # a worker still starting is stopped once it is up
        sending = self._sending
        if sending is not None and not sending.done():  # never close the pipe under a write
            await asyncio.wait({sending}, timeout=2.0)
            if not sending.done():  # a worker that does not read: killing it ends the write
                self._kill()
                await asyncio.wait({sending}, timeout=5.0)
        if self._arena is not None and (sending is None or sending.done()):
            self._arena.close()  # the worker keeps its own mapping until it exits
            self._arena = None
        proc, conn = self._proc, self._conn
        if proc is None or conn is None:
            return
        self._detach()
        if graceful and not self._calls:
            with contextlib.suppress(OSError):
                conn.send_bytes(pickle.dumps(None))
            await asyncio.get_running_loop().run_in_executor(None, proc.join, 2.0)
        if proc.is_alive():  # SIGKILL: a worker ignores SIGTERM (pipeline.worker.worker_main)
            kill_worker(proc.pid)
            await asyncio.get_running_loop().run_in_executor(None, proc.join, 1.0)
        else:  # it ended: a program its stages started and left running ends with the run
            kill_group(proc.pid)
        conn.close()
        self._proc = self._conn = None

    # -- the loop's reader callback -------------------------------------------------------------
    def _on_readable(self, exited: bool = False) -> None:
        """Take the outcomes the worker sent; ``exited`` when its process sentinel fired."""
        conn = self._conn
        if conn is None:
            return
        ready = self._poller.poll
        try:
            while ready(0):  # a message (or the end of the pipe: recv_bytes raises EOFError)
                seq, outcomes = pickle.loads(conn.recv_bytes())
                self._answered = True
                call = self._calls.get(seq)
                if call is not None:
                    call.received.update(outcomes)
                    if len(call.received) >= call.size and not call.waiter.done():
                        call.waiter.set_result(None)
        except (EOFError, OSError):
            self._dead = True
        if exited:  # outcomes it sent before going were drained above
            self._dead = True
        if self._dead:
            self._wake_all()
            if not self._calls:
                self._detach()  # died while idle; noticed at the next run()

    def _wake_all(self) -> None:
        """The worker is gone: every batch sent to it is over (each finds out what it lost)."""
        for call in self._calls.values():
            if call.worker == self.started and not call.waiter.done():
                call.waiter.set_result(None)

    # -- running a batch -----------------------------------------------------------------------
    async def run(self, batch: Sequence[Item]) -> LaneResult:
        region = await self._regions.get()  # waits while DEPTH batches are in flight
        try:
            return await self._run(batch, region)
        finally:
            self._regions.put_nowait(region)

    async def _run(self, batch: Sequence[Item], region: int) -> LaneResult:
        self._seq += 1
        seq = self._seq
        size = ARENA_BYTES // DEPTH if self._arena is not None else 0
        outgoing, bad = _pack_values(self.steps, seq, batch, (region * size, (region + 1) * size))
        if outgoing is None:
            done = [(batch[i], out) for i, out in bad.items()]
            again = [it for i, it in enumerate(batch) if i not in bad]
            return done, again
        if self._batcher is not None:
            self._batcher.carried(outgoing.size(), len(batch))
        loop = asyncio.get_running_loop()
        call = _Call(seq, len(batch), loop.create_future(), region)
        late: tuple[int, int] | None = None
        try:
            async with self._send_lock:  # batches reach the worker whole and in seq order
                await self.wait_started()
                if self._proc is None or self._dead:
                    if self._proc is not None:
                        self._reap()
                    await self._start()
                assert self._conn is not None
                call.worker = self.started
                call.heavy = len(outgoing.messages) > 1
                light = not call.heavy and _light(outgoing)
                light = light and not any(c.heavy for c in self._calls.values())
                self._calls[seq] = call
                try:
                    if light:  # fits the socket's buffer whatever the worker is doing: no hop
                        _send_all(self._conn, outgoing, self._arena)
                    else:
                        # megabytes of file contents: written from a thread, so the loop (other
                        # lanes' outcomes, the watchdogs) never waits for this worker to read them
                        self._sending = sending = loop.run_in_executor(
                            None, _send_all, self._conn, outgoing, self._arena
                        )
                        sending.add_done_callback(_retrieve)  # also when we are cancelled
                        await sending
                except OSError:
                    self._dead = True
                    self._wake_all()
                # the bytes are in the arena and the socket now: not held until the batch returns
                outgoing.copies.clear()
                outgoing.messages.clear()
            late = await watch(call.waiter, self._slot, seq, self.floor)
            if late is not None:
                self._kill()
                await asyncio.wait({call.waiter}, timeout=5.0)
                self._dead = True
        except asyncio.CancelledError:
            self._kill()  # the worker holds items nobody will take; the parent owns shutdown
            raise
        finally:
            self._calls.pop(seq, None)
        return self._collect(batch, call, late)

    def _collect(
        self, batch: Sequence[Item], call: _Call, late: tuple[int, int] | None
    ) -> LaneResult:
        received = call.received
        done = [(batch[i], out) for i, out in sorted(received.items())]
        if len(received) >= len(batch):
            return done, []
        if self._proc is not None and self.started == call.worker:
            self._reap()  # else reaped already, by another batch of this worker or a restart
        ended = self._ended.get(call.worker) or _Ended("worker gone", -1, -1, -1)
        how, index, step = ended.how, ended.index, ended.step
        if late is not None:
            ended.reported = True  # a timeout kill is not a crash
            index, step = late
            if index in received:
                index = -1
            else:
                done.append(
                    (batch[index], timeout_outcome(self.steps, step, self.steps[step].timeout or 0))
                )
                log.warning("killed %s: item %s ran past its timeout", how, batch[index].key)
        elif ended.running == call.seq:
            lost = None
            if index < 0 or index in received:  # died after its last item, before exiting
                index = -1
            else:
                exc = WorkerCrashed(f"{how} while running stage {self.steps[step].name!r}")
                lost = Outcome.failure(exc, step=step, attempts=1, busy=[0.0] * len(self.steps))
                done.append((batch[index], lost))
            ended.reported = True
            try:
                self._on_crash(f"{how} (item {batch[index].key if index >= 0 else '-'})")
            except FatalRunError as exc:  # past the budget: once the item is recorded failed
                if lost is None:
                    raise
                lost.stops_run = exc
        else:
            index = -1
            runner = self._calls.get(ended.running)
            if not ended.reported and (runner is None or runner.worker != call.worker):
                # no batch of this worker was running (or it has gone): one report per death
                ended.reported = True
                self._on_crash(f"{how} before starting its batch")
        again = [it for i, it in enumerate(batch) if i not in received and i != index]
        return done, again


def _light(out: _Outgoing) -> bool:
    """Small enough to send from the event loop: the header alone fits well within a socket
    buffer (with the other batch in flight's), and the arena copies take well under a ms."""
    header = out.messages[0]
    return len(header) <= INLINE_BYTES and sum(len(d) for _, d in out.copies) <= INLINE_COPY


def _send_all(conn: mpc.Connection, out: _Outgoing, arena: Arena | None) -> None:
    if arena is not None:
        arena.put(out.copies, out.start, ARENA_KEEP // DEPTH)
    for message in out.messages:
        conn.send_bytes(message)


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """Mark a send's error retrieved (a worker killed meanwhile makes the write fail)."""
    if not fut.cancelled():
        fut.exception()


def _discard(proc: Any, *conns: mpc.Connection) -> None:
    """Stop a worker whose lane gave up on it while it was starting."""
    for conn in conns:
        conn.close()
    if proc.pid is not None and proc.exitcode is None:
        kill_worker(proc.pid)
