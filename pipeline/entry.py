"""Entry points onto the runner: :func:`execute` (on the caller's loop, optionally owning
SIGINT) and :func:`iterate` (records as they complete, the run on a background thread's loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import signal
import threading
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any

from .config import RunOptions
from .records import Record
from .result import Collector, RunResult
from .runner import Run
from .stage import Stage

__all__ = ["execute", "iterate"]

log = logging.getLogger("pipeline")


async def execute(
    stages: Sequence[Stage],
    inputs: Iterable[Any] | AsyncIterable[Any],
    opts: RunOptions,
    *,
    collectors: Sequence[Collector] = (),
    on_record: Callable[[Record], Awaitable[None]] | None = None,
    signals: bool = False,
) -> RunResult:
    """Run ``stages`` over ``inputs`` on the current loop. With ``signals``, own SIGINT."""
    run = Run(stages, inputs, opts, collectors, on_record)
    if not signals:
        return await run.execute()
    loop = asyncio.get_running_loop()
    presses = 0

    def on_sigint() -> None:
        nonlocal presses
        presses += 1
        if presses == 1:
            log.warning("Ctrl-C: stopping (press again to abort at once)")
            run.request_stop()
        else:
            log.warning("Ctrl-C again: aborting now")
            run.hard_abort()

    loop.add_signal_handler(signal.SIGINT, on_sigint)
    try:
        return await run.execute()
    finally:
        loop.remove_signal_handler(signal.SIGINT)


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
    Leaving early aborts the run (no grace period) and waits for its thread to end.
    """
    out: queue.Queue[Record | BaseException | None] = queue.Queue(maxsize=buffer)
    loops: list[asyncio.AbstractEventLoop] = []  # the run's loop, once it runs
    running = threading.Event()

    async def on_record(rec: Record) -> None:
        try:
            out.put_nowait(rec)
        except queue.Full:
            await asyncio.get_running_loop().run_in_executor(None, out.put, rec)

    run = Run(stages, inputs, opts, collectors, on_record)

    async def main() -> None:
        loops.append(asyncio.get_running_loop())
        running.set()
        try:
            await run.execute()
            out.put(None)
        except BaseException as exc:  # noqa: BLE001 — the run's thread hands its end to the caller
            out.put(exc)

    thread = threading.Thread(target=lambda: asyncio.run(main()), name="pipeline-run", daemon=True)
    thread.start()
    finished = False
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
        while not finished and thread.is_alive() and not running.wait(0.05):
            pass  # left before the run's loop started: abort it once it has
        if not finished and thread.is_alive():
            loops[0].call_soon_threadsafe(run.hard_abort)  # leaving early: no grace period
            while thread.is_alive():  # unblock a writer waiting on a full queue
                with contextlib.suppress(queue.Empty):
                    out.get(timeout=0.05)
        thread.join()
