"""The per-item boundary: calling a chain of stage functions on one value.

This is the per-item boundary: an exception from a stage function for one item becomes a failed
:class:`Outcome` (after the stage's retries, decided by :func:`retry_delay` for every kind), never
a stopped run. The same code runs inline on the loop, in threads and inside process workers, so
every kind behaves alike (async stages, which await, have their own loop in :mod:`pipeline.lanes`
with the same retry rule).

A step with ``accepts`` (a tuple of types) is skipped for a value that is none of them: the value
passes on unchanged, the step's function is not called, and the outcome's ``bypassed`` bit for
that step tells the runner not to count it in the step's metrics (routing by type, see
:func:`pipeline.stage`).

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

from .errors import RemoteError, Skip, is_out_of_space
from .runwait import run_delay
from .stage import Stage

__all__ = [
    "Outcome",
    "Step",
    "backoff_delay",
    "portable_exception",
    "retry_delay",
    "run_chain",
    "steps_of",
]

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
    accepts: tuple[type, ...] | None = None  # None: every value


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
            accepts=s.accepts,
        )
        for s in stages
    )


@dataclass(slots=True)
class Outcome:
    """What happened to one item in one chain call. Build with :meth:`success` or
    :meth:`failure`."""

    ok: bool
    value: Any  # the result, or the exception on failure
    step: int  # index of the step that produced ``value`` (the failing step on failure)
    attempts: int
    busy: list[float]  # seconds spent inside each step's function
    cpu: float = 0.0  # CPU seconds of the worker (process kind) or its thread (thread kind)
    bypassed: int = 0  # bit j set: step j did not accept the value and was skipped
    run_wait: float | None = None  # seconds runnable but waiting for a core; None: not measured
    #: the failure says a disk or quota is full (:func:`~pipeline.errors.is_out_of_space`),
    #: decided where the exception was raised: the exception a process worker sends back has
    #: lost the cause it was raised from (pickling keeps no ``__cause__``)
    out_of_space: bool = False
    #: the run stops once this failure is recorded (a worker crash past the crash budget:
    #: the item it killed is ``failed``, not ``cancelled`` with the rest)
    stops_run: BaseException | None = None

    @classmethod
    def success(
        cls,
        value: Any,
        *,
        step: int,
        attempts: int,
        busy: list[float],
        cpu: float = 0.0,
        bypassed: int = 0,
    ) -> Outcome:
        """The chain returned ``value``; ``step`` is its last step."""
        return cls(True, value, step, attempts, busy, cpu, bypassed)

    @classmethod
    def failure(
        cls,
        exc: BaseException,
        *,
        step: int,
        attempts: int,
        busy: list[float],
        cpu: float = 0.0,
        bypassed: int = 0,
        out_of_space: bool | None = None,
    ) -> Outcome:
        """Step ``step`` failed for good with ``exc`` after ``attempts`` attempts;
        ``out_of_space``: whether that says a disk is full (by default, ``exc`` tells)."""
        full = is_out_of_space(exc) if out_of_space is None else out_of_space
        return cls(False, exc, step, attempts, busy, cpu, bypassed, out_of_space=full)


def backoff_delay(base: float, attempt: int, *, cap: float = 30.0) -> float:
    """Exponential backoff with jitter: base * 2**(attempt-1), scaled by a random 0.5-1.5."""
    return float(min(cap, base * (2 ** (attempt - 1))) * random.uniform(0.5, 1.5))


def retry_delay(step: Step, exc: BaseException, attempts: int) -> float | None:
    """Seconds to wait before another attempt of ``step``, which raised ``exc`` on attempt
    number ``attempts``; None when that failure is final: the retries are used up, ``exc`` is
    not one of ``retry_on``, or it is a :class:`~pipeline.errors.Skip` (never retried)."""
    if attempts > step.retries or not isinstance(exc, step.retry_on) or isinstance(exc, Skip):
        return None
    return backoff_delay(step.backoff, attempts)


def portable_exception(exc: BaseException) -> BaseException:
    """``exc`` if it survives a pickle round trip, else a :class:`RemoteError` in its place."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 — a user's exception type may fail to pickle in any way
        tb = "".join(traceback.format_exception(exc))
        return RemoteError(type(exc).__name__, str(exc), tb)


def run_chain(
    steps: Sequence[Step],
    value: Any,
    slot: MutableSequence[float] | None = None,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> Outcome:
    """Call each step on the value in turn; stop at the first step that fails for good.

    A step whose ``accepts`` the value is not an instance of is skipped (its ``bypassed`` bit).
    """
    busy = [0.0] * len(steps)
    attempts = 0
    bypassed = 0
    for index, step in enumerate(steps):
        if step.accepts is not None and not isinstance(value, step.accepts):
            bypassed |= 1 << index
            continue
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
            except (Exception, SystemExit) as exc:  # noqa: BLE001 — the per-item boundary:
                # one item fails (sys.exit() in a stage's code too: it would end the run, unwritten)
                busy[index] += time.perf_counter() - started
                delay = retry_delay(step, exc, attempts)
                if delay is None:
                    return Outcome.failure(
                        exc, step=index, attempts=attempts, busy=busy, bypassed=bypassed
                    )
                if slot is not None:
                    slot[SLOT_DEADLINE] = math.inf
                sleep(delay)
                continue
            busy[index] += time.perf_counter() - started
            break
    if slot is not None:
        slot[SLOT_DEADLINE] = math.inf
    return Outcome.success(
        value, step=len(steps) - 1, attempts=max(attempts, 1), busy=busy, bypassed=bypassed
    )


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
    first, delay = len(done), run_delay()
    for index, value in enumerate(values):
        if abandoned():
            break
        slot[SLOT_INDEX] = index
        cpu = time.thread_time()
        outcome = run_chain(steps, value, slot)
        outcome.cpu = time.thread_time() - cpu  # this thread's CPU: holding the GIL or in C
        done.append(outcome)
    share_run_wait(done[first:], delay)  # and its wait for a core
    return done


def share_run_wait(outcomes: Sequence[Outcome], since: float | None) -> float | None:
    """Share the calling thread's run delay since the reading ``since`` among ``outcomes``,
    in proportion to their busy time; return the new reading, to go on from. Read once per
    batch (or per flush), not per item: a read is a system call, and one that releases the GIL.
    """
    now = run_delay()
    if not outcomes:
        return now
    if now is None or since is None:
        for outcome in outcomes:
            outcome.run_wait = None
        return now
    busy = [sum(o.busy) for o in outcomes]
    total, delay = sum(busy), max(0.0, now - since)
    for outcome, b in zip(outcomes, busy, strict=True):
        outcome.run_wait = delay * (b / total if total > 0 else 1 / len(outcomes))
    return now
