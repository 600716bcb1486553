"""The per-item boundary: calling a chain of stage functions on one value.

This is the one place with a broad ``except``: an exception from a stage function for one item
becomes a failed :class:`Outcome` (after the stage's retries), never a stopped run. The same code
runs inline on the loop, in threads and inside process workers, so every kind behaves alike.

A *chain* is one stage, or several adjacent process stages fused into one worker call so that
their intermediate values (decoded pixels) never cross a process boundary.

``slot`` is a small shared array the caller's watchdog reads to enforce per-item timeouts:
``[batch_seq, index_in_batch, step, deadline]`` (``deadline`` on the ``time.monotonic`` clock,
which Linux shares across processes; ``inf`` when no timeout applies).
"""

from __future__ import annotations

import math
import pickle
import random
import time
import traceback
from collections.abc import Callable, Mapping, MutableSequence, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import RemoteError, Skip
from .stage import Stage

__all__ = ["Outcome", "Step", "backoff_delay", "portable_exception", "run_chain", "steps_of"]

SLOT_SEQ, SLOT_INDEX, SLOT_STEP, SLOT_DEADLINE = range(4)
SLOT_SIZE = 4


@dataclass(frozen=True, slots=True)
class Step:
    """The picklable part of a stage: what a worker needs to call it."""

    name: str
    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    retries: int = 0
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    backoff: float = 0.1
    timeout: float | None = None


def steps_of(stages: Sequence[Stage], extra: Mapping[str, Any] | None = None) -> tuple[Step, ...]:
    return tuple(
        Step(
            name=s.name,
            fn=s.fn,
            args=s.args,
            kwargs={**s.kwargs, **(extra or {})},
            retries=s.retries,
            retry_on=s.retry_on,
            backoff=s.backoff,
            timeout=s.timeout,
        )
        for s in stages
    )


@dataclass(slots=True)
class Outcome:
    """What happened to one item in one chain call."""

    ok: bool
    value: Any  # the result, or the exception on failure
    step: int  # index of the step that produced ``value`` (the failing step on failure)
    attempts: int
    busy: list[float]  # seconds spent inside each step's function
    cpu: float = 0.0  # CPU seconds of the worker (process kind) or its thread (thread kind)


def backoff_delay(base: float, attempt: int, *, cap: float = 30.0) -> float:
    """Exponential backoff with jitter: base * 2**(attempt-1), scaled by a random 0.5-1.5."""
    return float(min(cap, base * (2 ** (attempt - 1))) * random.uniform(0.5, 1.5))


def portable_exception(exc: BaseException) -> BaseException:
    """``exc`` if it survives a pickle round trip, else a :class:`RemoteError` in its place."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        tb = "".join(traceback.format_exception(exc))
        return RemoteError(type(exc).__name__, str(exc), tb)


def run_chain(
    steps: Sequence[Step],
    value: Any,
    slot: MutableSequence[float] | None = None,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> Outcome:
    """Call each step on the value in turn; stop at the first step that fails for good."""
    busy = [0.0] * len(steps)
    attempts = 0
    for index, step in enumerate(steps):
        attempts = 0
        while True:
            attempts += 1
            if slot is not None:
                slot[SLOT_STEP] = index
                slot[SLOT_DEADLINE] = (
                    time.monotonic() + step.timeout if step.timeout is not None else math.inf
                )
            started = time.perf_counter()
            try:
                value = step.fn(value, *step.args, **step.kwargs)
            except Exception as exc:  # the per-item boundary
                busy[index] += time.perf_counter() - started
                if (
                    attempts <= step.retries
                    and isinstance(exc, step.retry_on)
                    and not isinstance(exc, Skip)
                ):
                    if slot is not None:
                        slot[SLOT_DEADLINE] = math.inf
                    sleep(backoff_delay(step.backoff, attempts))
                    continue
                return Outcome(False, exc, index, attempts, busy)
            busy[index] += time.perf_counter() - started
            break
    if slot is not None:
        slot[SLOT_DEADLINE] = math.inf
    return Outcome(True, value, len(steps) - 1, attempts, busy)


def run_batch(
    steps: Sequence[Step],
    values: Sequence[Any],
    seq: int,
    slot: MutableSequence[float],
    done: list[Outcome],
    abandoned: Callable[[], bool],
) -> list[Outcome]:
    """Run a batch in a thread, appending to ``done`` as it goes (the watchdog reads it)."""
    slot[SLOT_SEQ] = seq
    for index, value in enumerate(values):
        if abandoned():
            break
        slot[SLOT_INDEX] = index
        cpu = time.thread_time()
        outcome = run_chain(steps, value, slot)
        outcome.cpu = time.thread_time() - cpu  # this thread's CPU: holding the GIL or in C
        done.append(outcome)
    return done
