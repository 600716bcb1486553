"""Entry points onto the runner: :func:`execute` (on the caller's loop, optionally owning
SIGINT) and :func:`iterate` (records as they complete, the run on a background thread's loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import signal
import threading
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any

from .config import RunOptions
from .forkserver import STOP_SIGNALS, signal_workers
from .records import Record
from .result import Collector, RunResult
from .runner import Run
from .stage import Stage
from .terminal import let_go_of_lost_terminal

__all__ = ["execute", "iterate"]

log = logging.getLogger("pipeline")

#: The signals a run that owns them stops on, gracefully: Ctrl-C, SIGTERM, and SIGHUP (its
#: terminal hung up: :mod:`pipeline.terminal`).
_STOPPING = STOP_SIGNALS


async def execute(
    stages: Sequence[Stage],
    inputs: Iterable[Any] | AsyncIterable[Any],
    opts: RunOptions,
    *,
    collectors: Sequence[Collector] = (),
    on_record: Callable[[Record], Awaitable[None]] | None = None,
    signals: bool = False,
) -> RunResult:
    """Run ``stages`` over ``inputs`` on the current loop. With ``signals``, own SIGINT,
    SIGTERM and SIGHUP: the first of them stops the run as Ctrl-C does (``docker stop``,
    ``kill``, a batch scheduler's notice, a terminal that hung up: in-flight items get the grace
    period, the ledger is written, exit 128 + the signal's number), a second Ctrl-C or SIGTERM
    aborts it at once. A hang-up never aborts: it comes twice as a rule (from the terminal and
    from the shell, to every process of the job), and it also sends the output that was going
    to the lost terminal to ``/dev/null``."""
    run = Run(stages, inputs, opts, collectors, on_record)
    if not signals:
        return await run.execute()
    loop = asyncio.get_running_loop()
    received = 0

    def on_signal(sig: signal.Signals) -> None:
        nonlocal received
        if sig is signal.SIGHUP:
            let_go_of_lost_terminal()
            if received:  # stopping already: a hang-up does not cut the grace period short
                return
        received += 1
        name = "Ctrl-C" if sig is signal.SIGINT else sig.name
        if received == 1:
            again = {signal.SIGINT: "press again", signal.SIGTERM: "send it again"}.get(sig)
            log.warning("%s: stopping%s", name, f" ({again} to abort at once)" if again else "")
            run.request_stop(sig.name)
        else:
            log.warning("%s again: aborting now", name)
            run.hard_abort()

    # one this process was told to ignore stays ignored: SIGHUP under nohup, SIGINT in a
    # background job of a script (Python itself then installs no KeyboardInterrupt)
    before = {sig: h for sig in _STOPPING if (h := signal.getsignal(sig)) is not signal.SIG_IGN}
    for sig in before:
        loop.add_signal_handler(sig, on_signal, sig)
    if signal.getsignal(signal.SIGTSTP) is signal.SIG_DFL:  # job control: Ctrl-Z
        before[signal.SIGTSTP] = signal.SIG_DFL
        loop.add_signal_handler(signal.SIGTSTP, pause_with_workers)
    try:
        return await run.execute()
    finally:
        for sig, handler in before.items():
            loop.remove_signal_handler(sig)  # which sets the default: the caller's goes back
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def pause_with_workers() -> None:
    """Ctrl-Z: stop the workers (each leads a process group of its own, which the terminal's
    stop does not reach), then this process; once continued (``fg``, ``bg``), continue them.
    Without it the workers went on with the batches they held while the command stood still."""
    signal_workers(signal.SIGSTOP)
    os.kill(os.getpid(), signal.SIGSTOP)  # here until SIGCONT
    signal_workers(signal.SIGCONT)


def iterate(
    stages: Sequence[Stage],
    inputs: Iterable[Any],
    opts: RunOptions,
    *,
    collectors: Sequence[Collector] = (),
    buffer: int = 256,
) -> Iterator[Record]:
    """Yield terminal records as they complete; the run goes on a background thread's loop.

    At most ``buffer`` records wait for the caller; the run's ledger writer waits beyond that.
    Leaving early aborts the run (no grace period) and waits for its thread to end. A Ctrl-Z
    pauses the workers with the caller's process, while the iteration goes (main thread only,
    unless the caller handles SIGTSTP itself): see :func:`pause_with_workers`.
    """
    out: queue.Queue[Record | BaseException | None] = queue.Queue(maxsize=buffer)

    async def on_record(rec: Record) -> None:
        try:
            out.put_nowait(rec)
        except queue.Full:
            await asyncio.get_running_loop().run_in_executor(None, out.put, rec)

    background = _Background(Run(stages, inputs, opts, collectors, on_record), out)
    finished = False
    ctrl_z = _take_ctrl_z()
    try:
        while True:
            got = out.get()
            if got is None or isinstance(got, BaseException):
                finished = True  # the run is over; its thread only has to wind down
            if got is None:
                return
            if isinstance(got, BaseException):
                raise got
            yield got
    finally:
        if not finished:
            background.abort()
        background.thread.join()
        if ctrl_z:
            signal.signal(signal.SIGTSTP, signal.SIG_DFL)


def _take_ctrl_z() -> bool:
    """In the main thread, with SIGTSTP at its default: Ctrl-Z pauses the workers too (the
    handler runs in this thread, between the caller's steps or while it waits for a record).
    Whether it was taken (the default is put back at the end)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(signal.SIGTSTP) is not signal.SIG_DFL:
        return False
    signal.signal(signal.SIGTSTP, lambda signum, frame: pause_with_workers())
    return True


class _Background:
    """A run on a thread of its own, whose end (None, or its exception) goes into ``out``."""

    def __init__(self, run: Run, out: queue.Queue[Record | BaseException | None]) -> None:
        self.run = run
        self.out = out
        self.loop: asyncio.AbstractEventLoop | None = None
        self.running = threading.Event()  # the loop is known
        self.thread = threading.Thread(
            target=lambda: asyncio.run(self._main()), name="pipeline-run", daemon=True
        )
        self.thread.start()

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.running.set()
        try:
            await self.run.execute()
            self.out.put(None)
        except BaseException as exc:  # noqa: BLE001 — the run's thread hands its end to the caller
            self.out.put(exc)

    def abort(self) -> None:
        """Abort the run (the caller left early) and let its last records through."""
        while self.thread.is_alive() and not self.running.wait(0.05):
            pass  # left before the run's loop started: abort it once it has
        if self.loop is None or not self.thread.is_alive():
            return
        self.loop.call_soon_threadsafe(self.run.hard_abort)  # no grace period
        while self.thread.is_alive():  # unblock a writer waiting on a full queue
            with contextlib.suppress(queue.Empty):
                self.out.get(timeout=0.05)
