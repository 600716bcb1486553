"""Lanes: one worker slot of a stage group, driven by one coroutine.

A lane runs a *batch* of items through its chain and returns ``(done, again)``: outcomes for the
items it finished and the items it must hand back untouched (a worker died or timed out before
reaching them). Kinds:

* :class:`InlineLane`  — on the loop itself;
* :class:`AsyncLane`   — ``await fn(value)`` on the loop, with ``asyncio.timeout``;
* :class:`ThreadLane`  — a job in the stage's :class:`~pipeline.threads.DaemonThreadPool`;
* :class:`~pipeline.procpool.ProcessLane` — one worker process of its own (see ``procpool``).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol

from .calls import (
    SLOT_DEADLINE,
    SLOT_INDEX,
    SLOT_SEQ,
    SLOT_SIZE,
    SLOT_STEP,
    Outcome,
    Step,
    retry_delay,
    run_batch,
    run_chain,
    share_run_wait,
)
from .errors import ItemTimeout
from .records import Item
from .runwait import run_delay
from .threads import DaemonThreadPool

__all__ = ["AsyncLane", "InlineLane", "Lane", "LaneResult", "ThreadLane", "watch"]

LaneResult = tuple[list[tuple[Item, Outcome]], list[Item]]


class Lane(Protocol):
    """One worker slot. ``depth``: batches a lane takes at once (one driver each)."""

    depth: int

    async def run(self, batch: Sequence[Item]) -> LaneResult: ...

    async def close(self, *, graceful: bool) -> None: ...


def min_timeout(steps: Sequence[Step]) -> float | None:
    limits = [s.timeout for s in steps if s.timeout is not None]
    return min(limits) if limits else None


async def watch(
    fut: asyncio.Future[Any], slot: Sequence[float], seq: int, floor: float | None
) -> tuple[int, int] | None:
    """Wait for ``fut``; if the item in ``slot`` passes its deadline first, return (index, step).

    A timer checks the slot at the current item's deadline (never more often than ``floor``,
    the smallest timeout of the chain); returns None when ``fut`` completes. One timer and one
    callback per batch, no task: this runs for every batch a lane takes.
    """
    if floor is None:
        await asyncio.wait({fut})
        return None
    loop = asyncio.get_running_loop()
    woken: asyncio.Future[tuple[int, int] | None] = loop.create_future()
    timer: asyncio.TimerHandle | None = None

    def done(_: object = None) -> None:
        if not woken.done():
            woken.set_result(None)

    def check() -> None:
        nonlocal timer
        if woken.done():
            return
        current = slot[SLOT_SEQ] == seq
        deadline = slot[SLOT_DEADLINE] if current else math.inf
        now = time.monotonic()
        if current and now > deadline:
            woken.set_result((int(slot[SLOT_INDEX]), int(slot[SLOT_STEP])))
            return
        wait = deadline - now if math.isfinite(deadline) else floor
        timer = loop.call_at(loop.time() + max(wait, 0.0) + 0.001, check)

    fut.add_done_callback(done)
    check()
    try:
        return await woken
    finally:
        fut.remove_done_callback(done)
        if timer is not None:
            timer.cancel()


def timeout_outcome(steps: Sequence[Step], step: int, busy: float) -> Outcome:
    limit = steps[step].timeout
    exc = ItemTimeout(f"stage {steps[step].name!r} ran past its timeout of {limit:g} s")
    times = [0.0] * len(steps)
    times[step] = busy
    return Outcome.failure(exc, step=step, attempts=1, busy=times)


class InlineLane:
    depth = 1

    def __init__(self, steps: Sequence[Step]) -> None:
        self.steps = tuple(steps)

    async def run(self, batch: Sequence[Item]) -> LaneResult:
        done = []
        delay = run_delay()
        for item in batch:
            cpu = time.thread_time()
            outcome = run_chain(self.steps, item.value)
            outcome.cpu = time.thread_time() - cpu
            done.append((item, outcome))
        share_run_wait([outcome for _, outcome in done], delay)
        return done, []

    async def close(self, *, graceful: bool) -> None:
        return None


class AsyncLane:
    """Runs one coroutine stage (async stages are never fused)."""

    depth = 1

    def __init__(self, steps: Sequence[Step]) -> None:
        (self.step,) = steps

    async def run(self, batch: Sequence[Item]) -> LaneResult:
        return [(item, await self.one(item.value)) for item in batch], []

    async def one(self, value: Any) -> Outcome:
        """Call the stage on one value (its retries and timeout included)."""
        step = self.step
        attempts = 0
        busy = 0.0
        while True:
            attempts += 1
            started = time.perf_counter()
            try:
                if step.timeout is None:  # no timer to arm: saves a few us per item
                    result = await step.fn(value, *step.args, **step.kwargs)
                else:
                    async with asyncio.timeout(step.timeout):
                        result = await step.fn(value, *step.args, **step.kwargs)
            except (Exception, SystemExit) as exc:  # noqa: BLE001 — the per-item boundary
                busy += time.perf_counter() - started
                if isinstance(exc, TimeoutError) and isinstance(
                    exc.__context__, asyncio.CancelledError
                ):
                    # our deadline, not a TimeoutError raised by the function: final, as for
                    # thread and process stages whose timed-out workers are abandoned or killed
                    msg = f"stage {step.name!r} ran past its timeout of {step.timeout:g} s"
                    exc = ItemTimeout(msg)
                    delay = None
                else:
                    delay = retry_delay(step, exc, attempts)
                if delay is None:
                    return Outcome.failure(exc, step=0, attempts=attempts, busy=[busy])
                await asyncio.sleep(delay)
                continue
            busy += time.perf_counter() - started
            return Outcome.success(result, step=0, attempts=attempts, busy=[busy])

    async def close(self, *, graceful: bool) -> None:
        return None


class ThreadLane:
    """One of ``workers`` slots of a thread stage; the pool is shared by the stage's lanes."""

    depth = 1

    def __init__(self, steps: Sequence[Step], pool: DaemonThreadPool) -> None:
        self.steps = tuple(steps)
        self.pool = pool
        self.floor = min_timeout(self.steps)
        self._seq = 0

    async def run(self, batch: Sequence[Item]) -> LaneResult:
        self._seq += 1
        seq = self._seq
        slot = [float(seq), 0.0, 0.0, math.inf][:SLOT_SIZE]
        done: list[Outcome] = []
        stop = threading.Event()
        job = self.pool.submit(
            run_batch, self.steps, [it.value for it in batch], seq, slot, done, stop.is_set
        )
        fut = asyncio.wrap_future(job.future)
        try:
            late = await watch(fut, slot, seq, self.floor)
        except asyncio.CancelledError:
            stop.set()  # the thread finishes its current item, then leaves the batch
            raise
        if late is None:
            outcomes = fut.result()
            return list(zip(batch, outcomes, strict=True)), []
        index, step = late
        stop.set()
        self.pool.abandon(job)
        finished = list(done[:index])
        result = [(batch[i], finished[i]) for i in range(len(finished))]
        result.append(
            (batch[index], timeout_outcome(self.steps, step, self.steps[step].timeout or 0))
        )
        return result, list(batch[index + 1 :])

    async def close(self, *, graceful: bool) -> None:
        return None
