"""The local backend: every stage group runs on this machine, on the run's event loop.

Adjacent process stages are fused into one group (one worker call per item, so decoded data
never crosses a process boundary twice); every other stage is a group of its own. A group's
lanes follow its kind: a worker process each (:class:`~pipeline.procpool.ProcessLane`), a slot
of the stage's own :class:`~pipeline.threads.DaemonThreadPool`, a coroutine slot on the loop, or
the loop itself (inline). A stage's ``context`` is opened here, once for the run. Batches are
sized from measurements (:class:`~pipeline.batching.Batcher`) and never take more than a fair
share of the inbox. Under ``--workers auto`` a group starts at
:func:`~pipeline.autoscale.start_workers` lanes and may grow to its ``workers``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..autoscale import start_workers
from ..batching import Batcher, fuse
from ..calls import Step, steps_of
from ..lanes import AsyncLane, InlineLane, Lane, ThreadLane
from ..procpool import ProcessLane
from ..stage import Stage
from ..threads import DaemonThreadPool
from . import GroupEnv, Workers

__all__ = ["LocalBackend"]


class LocalBackend:
    """Run the stages here: the default backend (see the module docstring)."""

    name = "local"

    def open(self) -> contextlib.AbstractAsyncContextManager[object]:
        return contextlib.nullcontext(self)

    def groups(self, stages: Sequence[Stage]) -> list[list[Stage]]:
        return fuse(stages)

    def capacity(self, group: Sequence[Stage]) -> int:
        return group[0].capacity

    @contextlib.asynccontextmanager
    async def workers(self, group: Sequence[Stage], env: GroupEnv) -> AsyncIterator[Workers]:
        head, kind = group[0], group[0].kind
        cap = max(s.workers for s in group)
        start = start_workers(kind, cap) if env.autoscale else cap
        max_batch = min(s.max_batch for s in group) if kind in ("thread", "process") else 1
        batcher = Batcher(max_batch=max_batch, share=math.ceil(env.inbox_capacity / cap))
        async with contextlib.AsyncExitStack() as stack:
            extra: dict[str, Any] = {}
            if head.context is not None:
                extra[head.context_arg] = await stack.enter_async_context(head.context())
            made: list[Lane] = []
            new_lane = _lane_factory(
                kind, steps_of(group, extra), env, start, head.name, stack, batcher
            )

            def lane() -> Lane:
                made.append(new_lane())
                return made[-1]

            graceful = False
            try:
                lanes = [lane() for _ in range(start)]
                yield Workers(lanes, batcher, cap, lane if kind != "inline" else None)
                graceful = True
            finally:
                closing = (one.close(graceful=graceful) for one in made)
                await asyncio.gather(*closing, return_exceptions=True)

    def summary(self) -> dict[str, Any] | None:
        return None


def _lane_factory(
    kind: str,
    steps: Sequence[Step],
    env: GroupEnv,
    threads: int,
    name: str,
    stack: contextlib.AsyncExitStack,
    batcher: Batcher,
) -> Callable[[], Lane]:
    """How to make one more lane of ``kind`` (a thread lane grows its pool by one thread)."""
    if kind == "process":
        return lambda: ProcessLane(steps, on_crash=env.on_crash, batcher=batcher)
    if kind == "thread":
        pool = DaemonThreadPool(threads, name=name)
        stack.callback(pool.shutdown)
        made = 0

        def thread_lane() -> Lane:
            nonlocal made
            made += 1
            if made > threads:  # lanes beyond the first ones (--workers auto) add a thread
                pool.grow()
            return ThreadLane(steps, pool)

        return thread_lane
    if kind == "async":
        return lambda: AsyncLane(steps)
    return lambda: InlineLane(steps)


if TYPE_CHECKING:
    from . import Backend

    def _is_a_backend(backend: LocalBackend) -> Backend:  # mypy checks the protocol here
        return backend
