"""``Pipeline``: a chain of stages and the ways to run it.

>>> from pipeline import Pipeline, stage
>>> result = Pipeline([stage(str.upper, kind="thread")]).run(["a", "b"], progress=False)
>>> result.ok
2
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .batching import fuse
from .config import Fingerprint, RunOptions
from .entry import execute, iterate
from .errors import DefinitionError
from .mainguard import check_main_guard
from .procpool import DEPTH
from .records import Item, Record
from .result import Collector, RunResult
from .stage import Stage

if TYPE_CHECKING:
    from .backends import Backend

__all__ = ["Pipeline", "run_stage"]


class Pipeline:
    """An ordered chain of stages. Adjacent process stages are fused into one worker call."""

    def __init__(self, stages: Sequence[Stage], *, name: str = "pipeline") -> None:
        if not stages:
            raise DefinitionError("a pipeline needs at least one stage")
        for st in stages:
            if not isinstance(st, Stage):
                raise DefinitionError(f"not a stage: {st!r} (wrap functions with stage(fn, ...))")
        names = [s.name for s in stages]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise DefinitionError(f"stage names must be unique; repeated: {sorted(dupes)}")
        self.stages: tuple[Stage, ...] = tuple(stages)
        self.name = name

    def __repr__(self) -> str:
        return f"Pipeline({[s.name for s in self.stages]!r})"

    def describe(self) -> str:
        """Stages (with the types they accept), kinds, workers, fused groups and the bound on
        items held in memory (on this machine: the local backend's groups)."""
        lines = [f"pipeline {self.name!r}:"]
        bound = 0
        for group in fuse(self.stages):
            workers = max(s.workers for s in group)
            batch = min(s.max_batch for s in group) if group[0].kind in ("thread", "process") else 1
            share = max(1, -(-group[0].capacity // workers))
            # a process lane keeps DEPTH batches in flight (procpool), other lanes one
            depth = DEPTH if group[0].kind == "process" else 1
            in_flight = workers * depth * min(batch, share)
            bound += group[0].capacity + in_flight
            label = " + ".join(s.name + _takes(s) for s in group)
            fused = " (fused: one worker call)" if len(group) > 1 else ""
            lines.append(
                f"  [{group[0].capacity:>4}] -> {label}: {group[0].kind} x{workers}, "
                f"up to {in_flight} items in flight{fused}"
            )
        lines.append(
            f"  at most {bound} items held between source and ledger, whatever the input size"
        )
        return "\n".join(lines)

    # -- running -------------------------------------------------------------------------------
    # The keyword arguments below are the fields of RunOptions (documented there, once), plus
    # where the records go: ``collectors`` (reports in summary.json) and, for run_async,
    # ``on_record``.
    def run(
        self,
        inputs: Iterable[Any],
        *,
        output: str | Path | None = None,
        resume: bool = True,
        retry_failed: bool = False,
        force: bool = False,
        progress: bool | None = None,
        crash_budget: int = 10,
        grace: float = 2.0,
        fingerprint: Fingerprint = None,
        is_done: Callable[[Record], bool] | None = None,
        outdated: Callable[[Item, Record], str | None] | None = None,
        backend: Backend | None = None,
        autoscale: bool = False,
        revisit: Callable[[Record], Record | None] | None = None,
        handle_signals: bool = True,
        collectors: Sequence[Collector] = (),
        stop_helpers: bool = False,
    ) -> RunResult:
        """Run over ``inputs`` (consumed lazily) and return counts, timings and metrics.

        The options are those of :class:`RunOptions`. In the main thread the run owns SIGINT,
        SIGTERM and SIGHUP (unless ``handle_signals=False``): the first Ctrl-C (or SIGTERM, or
        SIGHUP) stops feeding and lets in-flight items finish for ``grace`` seconds, a second
        Ctrl-C or SIGTERM cancels them at once; the ledger is written either way and the
        result says ``interrupted`` (exit code 130; 143 for SIGTERM, 129 for SIGHUP,
        ``stopped_by``).
        """
        opts = RunOptions(
            output=_path(output),
            resume=resume,
            retry_failed=retry_failed,
            force=force,
            progress=progress,
            crash_budget=crash_budget,
            grace=grace,
            fingerprint=fingerprint,
            is_done=is_done,
            outdated=outdated,
            backend=backend,
            autoscale=autoscale,
            revisit=revisit,
            handle_signals=handle_signals,
            stop_helpers=stop_helpers,
        )
        self._check_script(backend)
        _no_running_loop()
        signals = opts.handle_signals and threading.current_thread() is threading.main_thread()
        return asyncio.run(
            execute(self.stages, inputs, opts, collectors=collectors, signals=signals)
        )

    async def run_async(
        self,
        inputs: Iterable[Any] | AsyncIterable[Any],
        *,
        output: str | Path | None = None,
        resume: bool = True,
        retry_failed: bool = False,
        force: bool = False,
        progress: bool | None = None,
        crash_budget: int = 10,
        grace: float = 2.0,
        fingerprint: Fingerprint = None,
        is_done: Callable[[Record], bool] | None = None,
        outdated: Callable[[Item, Record], str | None] | None = None,
        backend: Backend | None = None,
        autoscale: bool = False,
        revisit: Callable[[Record], Record | None] | None = None,
        collectors: Sequence[Collector] = (),
        on_record: Callable[[Record], Awaitable[None]] | None = None,
    ) -> RunResult:
        """The same run on the caller's event loop (signals are left to the caller);
        ``on_record`` is awaited with every terminal record as it is committed."""
        opts = RunOptions(
            output=_path(output),
            resume=resume,
            retry_failed=retry_failed,
            force=force,
            progress=progress,
            crash_budget=crash_budget,
            grace=grace,
            fingerprint=fingerprint,
            is_done=is_done,
            outdated=outdated,
            backend=backend,
            autoscale=autoscale,
            revisit=revisit,
            handle_signals=False,
        )
        self._check_script(backend)
        return await execute(self.stages, inputs, opts, collectors=collectors, on_record=on_record)

    def iter(
        self,
        inputs: Iterable[Any],
        *,
        output: str | Path | None = None,
        resume: bool = True,
        retry_failed: bool = False,
        force: bool = False,
        progress: bool | None = False,
        crash_budget: int = 10,
        grace: float = 2.0,
        fingerprint: Fingerprint = None,
        is_done: Callable[[Record], bool] | None = None,
        outdated: Callable[[Item, Record], str | None] | None = None,
        backend: Backend | None = None,
        autoscale: bool = False,
        revisit: Callable[[Record], Record | None] | None = None,
        collectors: Sequence[Collector] = (),
    ) -> Iterator[Record]:
        """Yield each input's terminal record (``record.value`` holds the result) as it completes.

        The run goes on a thread of its own (progress bars off unless asked). Leaving the loop
        early stops the run and cancels what is in flight.
        """
        opts = RunOptions(
            output=_path(output),
            resume=resume,
            retry_failed=retry_failed,
            force=force,
            progress=progress,
            crash_budget=crash_budget,
            grace=grace,
            fingerprint=fingerprint,
            is_done=is_done,
            outdated=outdated,
            backend=backend,
            autoscale=autoscale,
            revisit=revisit,
            handle_signals=False,
        )
        self._check_script(backend)
        return iterate(self.stages, inputs, opts, collectors=collectors)

    def _check_script(self, backend: Backend | None) -> None:
        """A script that starts process workers here must not do it at its top level
        (:mod:`pipeline.mainguard`)."""
        check_main_guard(self.stages, local=backend is None or backend.name == "local")


def run_stage(
    st: Stage,
    inputs: Iterable[Any],
    *,
    output: str | Path | None = None,
    resume: bool = True,
    retry_failed: bool = False,
    force: bool = False,
    progress: bool | None = False,
    crash_budget: int = 10,
    grace: float = 2.0,
    fingerprint: Fingerprint = None,
    is_done: Callable[[Record], bool] | None = None,
    outdated: Callable[[Item, Record], str | None] | None = None,
    backend: Backend | None = None,
    autoscale: bool = False,
    revisit: Callable[[Record], Record | None] | None = None,
    collectors: Sequence[Collector] = (),
) -> Iterator[Record]:
    """Run one stage alone over ``inputs``; yields records as they complete
    (:meth:`Pipeline.iter` with the same keyword arguments)."""
    return Pipeline([st], name=st.name).iter(
        inputs,
        output=output,
        resume=resume,
        retry_failed=retry_failed,
        force=force,
        progress=progress,
        crash_budget=crash_budget,
        grace=grace,
        fingerprint=fingerprint,
        is_done=is_done,
        outdated=outdated,
        backend=backend,
        autoscale=autoscale,
        revisit=revisit,
        collectors=collectors,
    )


def _takes(st: Stage) -> str:
    """`` [int|str]``: the types a stage accepts (nothing when it takes every value)."""
    if st.accepts is None:
        return ""
    return " [" + "|".join(t.__name__ for t in st.accepts) + "]"


def _path(output: str | Path | None) -> Path | None:
    return Path(output) if output is not None else None


def _no_running_loop() -> None:
    """``run`` starts its own event loop: refused (:class:`DefinitionError`) where one runs
    already, which asyncio would refuse with a bare RuntimeError (a notebook's cell, an async
    function), saying what works there."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise DefinitionError(
        "Pipeline.run() starts its own event loop, and one is running here (a notebook, an "
        "async function): use `await pipe.run_async(...)`, or `for record in pipe.iter(...)`"
    )
