"""Stage definitions: a plain function plus how to run it.

``stage(fn, *args, kind=..., workers=..., ...)`` returns a frozen :class:`Stage`. The function is
called as ``fn(value, *args, **kwargs)`` for every item and returns the value handed to the next
stage. Kinds:

* ``"async"``   — ``fn`` is a coroutine function, run on the event loop, ``workers`` at a time;
* ``"thread"``  — ``fn`` runs in the stage's own thread pool of ``workers`` threads;
* ``"process"`` — ``fn`` runs in the stage's own pool of ``workers`` processes (``forkserver``);
  it must be importable by name in a fresh process, which is checked here, at definition;
* ``"inline"``  — ``fn`` is called on the event loop, one item at a time: for debugging, and the
  reference model the other kinds are tested against.

Routing by type: a stage with ``accepts=`` (a type or a tuple of types) works on those values
only. Any other value skips the stage entirely: the function is not called, the item never
reaches the stage's workers and the stage's metrics do not count it; it goes on to the next
stage that accepts it, or, when none does, ends ``ok`` with that value. Inside a fused process
group the worker skips the step itself. ``Split`` parts are routed the same way. See
:mod:`pipeline.routing`.
"""

from __future__ import annotations

import inspect
import os
import pickle
import sys
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from .errors import DefinitionError

__all__ = ["Kind", "Stage", "default_workers", "stage"]

Kind = Literal["async", "thread", "process", "inline"]
KINDS: tuple[str, ...] = get_args(Kind)


def default_workers(kind: str) -> int:
    """Workers per kind when not given: one process per core; I/O kinds get more."""
    cores = os.cpu_count() or 1
    if kind == "process":
        return cores
    if kind == "thread":
        return min(32, cores * 4)
    if kind == "async":
        return 64
    return 1


@dataclass(frozen=True, kw_only=True)
class Stage:
    """A function and the way to run it. Build with :func:`stage`."""

    fn: Callable[..., Any]
    kind: Kind
    name: str
    workers: int
    capacity: int
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    timeout: float | None = None
    retries: int = 0
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    backoff: float = 0.1
    max_batch: int = 256
    context: Callable[[], AbstractAsyncContextManager[Any]] | None = None
    context_arg: str = "context"
    accepts: tuple[type, ...] | None = None  # the value types it takes (None: every value)
    fingerprint: str | None = None  # a hash of the options that shape its results

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise DefinitionError(
                f"stage {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}"
            )
        if self.workers < 1:
            raise DefinitionError(f"stage {self.name!r}: workers must be >= 1, got {self.workers}")
        if self.kind == "inline" and self.workers != 1:
            raise DefinitionError(f"stage {self.name!r}: an inline stage has exactly one worker")
        if self.capacity < 1:
            raise DefinitionError(
                f"stage {self.name!r}: capacity must be >= 1 (channels are bounded)"
            )
        if self.timeout is not None and not self.timeout > 0:
            raise DefinitionError(f"stage {self.name!r}: timeout must be > 0 seconds or None")
        if self.retries < 0:
            raise DefinitionError(f"stage {self.name!r}: retries must be >= 0")
        if self.backoff < 0:
            raise DefinitionError(f"stage {self.name!r}: backoff must be >= 0")
        if self.max_batch < 1:
            raise DefinitionError(f"stage {self.name!r}: max_batch must be >= 1")
        _check_types(self)
        is_coro = inspect.iscoroutinefunction(self.fn) or inspect.iscoroutinefunction(
            getattr(self.fn, "func", None)
        )
        if self.kind == "async" and not is_coro:
            raise DefinitionError(
                f"stage {self.name!r}: kind='async' needs a coroutine function (async def); "
                "use kind='thread' for a blocking function"
            )
        if self.kind != "async" and is_coro:
            raise DefinitionError(
                f"stage {self.name!r}: {self.name} is a coroutine function; use kind='async'"
            )
        if self.kind == "process":
            if self.context is not None:
                raise DefinitionError(
                    f"stage {self.name!r}: a process stage cannot share a context object; "
                    "open what it needs inside the function, or use kind='thread'/'async'"
                )
            _check_picklable(self)

    def with_options(self, **changes: Any) -> Stage:
        """A copy with some options changed (validated again)."""
        fields = {f: getattr(self, f) for f in self.__dataclass_fields__}
        fields.update(changes)
        return Stage(**fields)


def stage(
    fn: Callable[..., Any],
    *args: Any,
    kind: Kind = "thread",
    name: str | None = None,
    workers: int | None = None,
    capacity: int | None = None,
    kwargs: Mapping[str, Any] | None = None,
    timeout: float | None = None,
    retries: int = 0,
    retry_on: tuple[type[BaseException], ...] | type[BaseException] = (Exception,),
    backoff: float = 0.1,
    max_batch: int = 256,
    context: Callable[[], AbstractAsyncContextManager[Any]] | None = None,
    context_arg: str = "context",
    accepts: type | tuple[type, ...] | None = None,
    fingerprint: str | None = None,
) -> Stage:
    """Turn ``fn`` into a stage; ``fn(value, *args, **kwargs)`` is called per item.

    ``capacity`` is the size of the stage's inbox. The default, 128 items, lets small items move
    in batches of up to ``max_batch``; stages whose items are large (image bytes) should pass a
    smaller one, since peak memory is the sum over stages of (capacity + workers x batch) items
    (x 2 for process stages, which keep a second batch in flight per worker). A batch to a
    process stage also stops near ``pipeline.batching.BATCH_BYTES`` (8 MiB) of pickled items.

    ``context`` is an async context manager factory entered once when the stage starts and
    exited when it ends (an ``aiohttp.ClientSession``, a database pool); its value is passed to
    every call as the keyword argument ``context_arg``. Not for process stages.

    ``accepts`` (a type or a tuple of types; None, the default, takes every value) routes by
    type: an item whose value is none of these skips the stage entirely. ``fn`` is not called
    for it, the item never reaches the stage's workers, and the stage's metrics (items, busy
    time, the verdicts built on them) count only what it accepted. Between stages such an item
    goes straight to the next stage that accepts it, or ends ``ok`` with its value when no
    stage further on does; inside a fused process group the worker skips the step. The parts
    of a :class:`~pipeline.Split` are routed the same way (``through=`` still names the stage
    after which they merge), and so is a merged value. The Dask backend applies the same rule
    inside its shards. A stage whose function would pass on what it does not handle (an
    ``isinstance`` test returning the value unchanged) wants ``accepts`` instead.

    ``fingerprint`` names the options that shape the stage's results (a short hash: a size, a
    quality). A run given no ``fingerprint`` of its own uses its stages' together, so that
    resume redoes the items when a stage's options change (the ``stages`` factories set it).
    """
    if not callable(fn):
        raise DefinitionError(f"stage function must be callable, got {fn!r}")
    label = (
        name
        or getattr(fn, "__name__", None)
        or getattr(getattr(fn, "func", None), "__name__", "stage")
    )
    n_workers = workers if workers is not None else default_workers(kind)
    if kind == "inline" and workers is None:
        n_workers = 1
    retry_types = retry_on if isinstance(retry_on, tuple) else (retry_on,)
    accepted = accepts if isinstance(accepts, tuple) or accepts is None else (accepts,)
    return Stage(
        fn=fn,
        kind=kind,
        name=str(label),
        workers=n_workers,
        capacity=capacity if capacity is not None else 128,
        args=tuple(args),
        kwargs=dict(kwargs or {}),
        timeout=timeout,
        retries=retries,
        retry_on=retry_types,
        backoff=backoff,
        max_batch=max_batch,
        context=context,
        context_arg=context_arg,
        accepts=accepted,
        fingerprint=fingerprint,
    )


def _check_types(st: Stage) -> None:
    """``retry_on`` holds exception types; ``accepts`` is None or a non-empty tuple of types."""
    for exc_type in st.retry_on:
        if not (isinstance(exc_type, type) and issubclass(exc_type, BaseException)):
            raise DefinitionError(f"stage {st.name!r}: retry_on must hold exception types")
    if st.accepts is not None and (
        not isinstance(st.accepts, tuple)
        or not st.accepts
        or not all(isinstance(t, type) for t in st.accepts)
    ):
        raise DefinitionError(
            f"stage {st.name!r}: accepts must be a type or a non-empty tuple of types "
            f"(None: every value), got {st.accepts!r}"
        )


def _check_picklable(st: Stage) -> None:
    """A process stage's function must be importable by name from a fresh worker process."""
    fn = st.fn
    target = getattr(fn, "func", fn)  # functools.partial
    qualname = getattr(target, "__qualname__", "")
    module = getattr(target, "__module__", None)
    how = (
        f"define {qualname or st.name!r} at the top level of an importable module "
        "(not a lambda, not a function nested in another function), or use kind='thread'"
    )
    if "<lambda>" in qualname or "<locals>" in qualname:
        raise DefinitionError(
            f"process stage {st.name!r}: {qualname} cannot be sent to worker processes; {how}"
        )
    if module == "__main__" and not getattr(sys.modules.get("__main__"), "__file__", None):
        raise DefinitionError(
            f"process stage {st.name!r}: {qualname} is defined in an interactive __main__, which "
            f"worker processes cannot import; {how}"
        )
    try:
        pickle.dumps((fn, st.args, dict(st.kwargs), st.retry_on, st.accepts))
    except Exception as exc:
        raise DefinitionError(
            f"process stage {st.name!r}: its function or arguments cannot be pickled "
            f"({type(exc).__name__}: {exc}); {how}"
        ) from exc
