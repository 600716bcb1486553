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
SIGINT (the parent owns shutdown) and are daemonic, so none outlives the parent. Items go to a
worker in small batches and outcomes come back in batches flushed at least every
``FLUSH_INTERVAL`` seconds, so an item a crash could lose is at most that much work old.

Wire protocol (``Connection.send_bytes`` of pickles, protocol 5):
parent → worker ``(seq, [value, ...])`` or ``None`` to exit;
worker → parent ``(seq, [(index, Outcome), ...])``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import multiprocessing as mp
import multiprocessing.connection as mpc
import os
import pickle
import signal
import time
from collections.abc import Callable, MutableSequence, Sequence
from typing import Any

from .calls import (
    SLOT_DEADLINE,
    SLOT_INDEX,
    SLOT_SEQ,
    SLOT_SIZE,
    SLOT_STEP,
    Outcome,
    Step,
    portable_exception,
    run_chain,
)
from .errors import Unpicklable, WorkerCrashed
from .lanes import LaneResult, min_timeout, timeout_outcome, watch
from .records import Item

__all__ = ["ProcessLane", "mp_context"]

log = logging.getLogger(__name__)

#: Outcomes are flushed to the parent at least this often while a batch runs (seconds).
FLUSH_INTERVAL = 0.005


def mp_context() -> Any:
    """The multiprocessing context for workers: forkserver (safe with threads in the parent)."""
    return mp.get_context("forkserver")


def _worker_main(conn: mpc.Connection, steps: Sequence[Step], slot: MutableSequence[float]) -> None:
    """Entry point of a worker process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            raw = conn.recv_bytes()
        except (EOFError, OSError):
            return
        message = pickle.loads(raw)
        if message is None:
            return
        seq, values = message
        slot[SLOT_SEQ] = seq
        pending: list[tuple[int, Outcome]] = []
        last_flush = time.monotonic()
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
                conn.send_bytes(_pack_outcomes(seq, pending, steps))
                pending = []
                last_flush = now


def _pack_outcomes(seq: int, pending: list[tuple[int, Outcome]], steps: Sequence[Step]) -> bytes:
    try:
        return pickle.dumps((seq, pending), protocol=5)
    except Exception:
        pass
    safe: list[tuple[int, Outcome]] = []
    for index, outcome in pending:
        try:
            pickle.dumps(outcome.value, protocol=5)
        except Exception as exc:
            what = "result" if outcome.ok else "exception"
            outcome = Outcome(
                False,
                Unpicklable(
                    f"the {what} of stage {steps[outcome.step].name!r} cannot be pickled "
                    f"to leave the worker process ({type(exc).__name__}: {exc})"
                ),
                outcome.step,
                outcome.attempts,
                outcome.busy,
                outcome.cpu,
            )
        safe.append((index, outcome))
    return pickle.dumps((seq, safe), protocol=5)


def _pack_values(
    steps: Sequence[Step], seq: int, batch: Sequence[Item]
) -> tuple[bytes | None, dict[int, Outcome]]:
    """Pickle the batch's values; items that cannot be pickled fail here, in the parent."""
    values = [it.value for it in batch]
    try:
        return pickle.dumps((seq, values), protocol=5), {}
    except Exception:
        pass
    bad: dict[int, Outcome] = {}
    for i, value in enumerate(values):
        try:
            pickle.dumps(value, protocol=5)
        except Exception as exc:
            bad[i] = Outcome(
                False,
                Unpicklable(
                    f"the input of stage {steps[0].name!r} cannot be pickled to reach a worker "
                    f"process ({type(exc).__name__}: {exc})"
                ),
                0,
                1,
                [0.0] * len(steps),
            )
    return None, bad


class ProcessLane:
    """One worker process; restarted after a crash or a timeout kill."""

    def __init__(self, steps: Sequence[Step], *, on_crash: Callable[[str], None]) -> None:
        self.steps = tuple(steps)
        self.floor = min_timeout(self.steps)
        self._on_crash = on_crash
        self._ctx = mp_context()
        self._proc: Any = None
        self._conn: mpc.Connection | None = None
        self._slot: Any = None
        self._seq = 0
        self._waiter: asyncio.Future[None] | None = None
        self._received: dict[int, Outcome] = {}
        self._expected = 0
        self._dead = False
        self.started = 0

    # -- lifecycle -----------------------------------------------------------------------------
    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        parent, child = self._ctx.Pipe(duplex=True)
        slot = self._ctx.RawArray("d", SLOT_SIZE)
        slot[SLOT_SEQ] = -1.0
        slot[SLOT_DEADLINE] = math.inf
        proc = self._ctx.Process(
            target=_worker_main, args=(child, self.steps, slot), daemon=True, name="pipeline-worker"
        )
        await loop.run_in_executor(None, proc.start)
        child.close()
        self._proc, self._conn, self._slot = proc, parent, slot
        self._dead = False
        self.started += 1
        loop.add_reader(parent.fileno(), self._on_readable)
        loop.add_reader(proc.sentinel, self._on_readable, True)

    def _detach(self) -> None:
        loop = asyncio.get_running_loop()
        if self._conn is not None:
            with contextlib.suppress(Exception):
                loop.remove_reader(self._conn.fileno())
        if self._proc is not None:
            with contextlib.suppress(Exception):
                loop.remove_reader(self._proc.sentinel)

    def _kill(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, signal.SIGKILL)

    def _reap(self) -> str:
        """Forget the dead worker; return how it ended."""
        self._detach()
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if conn is not None:
            conn.close()
        if proc is None:
            return "never started"
        proc.join(1.0)
        code = proc.exitcode
        if code is None:
            return f"worker pid {proc.pid} stopped answering"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = str(-code)
            return f"worker pid {proc.pid} was killed by {name}"
        return f"worker pid {proc.pid} exited with code {code}"

    async def close(self, *, graceful: bool) -> None:
        proc, conn = self._proc, self._conn
        if proc is None or conn is None:
            return
        self._detach()
        if graceful and self._waiter is None:
            with contextlib.suppress(OSError):
                conn.send_bytes(pickle.dumps(None))
            await asyncio.get_running_loop().run_in_executor(None, proc.join, 2.0)
        if proc.is_alive():
            proc.terminate()
            await asyncio.get_running_loop().run_in_executor(None, proc.join, 0.5)
        if proc.is_alive():
            proc.kill()
            await asyncio.get_running_loop().run_in_executor(None, proc.join, 1.0)
        conn.close()
        self._proc = self._conn = None

    # -- the loop's reader callback -------------------------------------------------------------
    def _on_readable(self, exited: bool = False) -> None:
        """Take the outcomes the worker sent; ``exited`` when its process sentinel fired."""
        conn = self._conn
        if conn is None:
            return
        try:
            while conn.poll():
                seq, outcomes = pickle.loads(conn.recv_bytes())
                if seq == self._seq:
                    self._received.update(outcomes)
        except (EOFError, OSError):
            self._dead = True
        if exited:  # outcomes it sent before going were drained above
            self._dead = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            if self._dead or len(self._received) >= self._expected:
                waiter.set_result(None)
        elif self._dead:
            self._detach()  # died while idle; noticed at the next run()

    # -- running a batch -----------------------------------------------------------------------
    async def run(self, batch: Sequence[Item]) -> LaneResult:
        self._seq += 1
        seq = self._seq
        payload, bad = _pack_values(self.steps, seq, batch)
        if payload is None:
            done = [(batch[i], out) for i, out in bad.items()]
            again = [it for i, it in enumerate(batch) if i not in bad]
            return done, again
        if self._proc is None or self._dead:
            if self._proc is not None:
                self._reap()
            await self._start()
        assert self._conn is not None
        loop = asyncio.get_running_loop()
        self._received = {}
        self._expected = len(batch)
        self._waiter = waiter = loop.create_future()
        late: tuple[int, int] | None = None
        try:
            try:
                self._conn.send_bytes(payload)
            except OSError:
                self._dead = True
                waiter.set_result(None)
            late = await watch(waiter, self._slot, seq, self.floor)
            if late is not None:
                self._kill()
                await asyncio.wait({waiter}, timeout=5.0)
                self._dead = True
        except asyncio.CancelledError:
            self._kill()  # the worker holds items nobody will take; the parent owns shutdown
            raise
        finally:
            self._waiter = None
        return self._collect(batch, seq, late)

    def _collect(self, batch: Sequence[Item], seq: int, late: tuple[int, int] | None) -> LaneResult:
        received = self._received
        done = [(batch[i], out) for i, out in sorted(received.items())]
        if not self._dead and len(received) >= len(batch):
            return done, []
        slot = self._slot
        started_batch = slot is not None and int(slot[SLOT_SEQ]) == seq
        how = self._reap()
        if late is not None and late[0] not in received:
            index, step = late
            done.append(
                (batch[index], timeout_outcome(self.steps, step, self.steps[step].timeout or 0))
            )
            log.warning("killed %s: item %s ran past its timeout", how, batch[index].key)
        elif late is not None:
            index = -1
        elif started_batch:
            index, step = int(slot[SLOT_INDEX]), int(slot[SLOT_STEP])
            if index in received:  # died after its last item, before exiting cleanly
                index = -1
            else:
                exc = WorkerCrashed(f"{how} while running stage {self.steps[step].name!r}")
                done.append((batch[index], Outcome(False, exc, step, 1, [0.0] * len(self.steps))))
            self._on_crash(f"{how} (item {batch[index].key if index >= 0 else '-'})")
        else:
            index = -1
            self._on_crash(f"{how} before starting its batch")
        again = [it for i, it in enumerate(batch) if i not in received and i != index]
        return done, again
