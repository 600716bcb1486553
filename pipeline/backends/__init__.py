"""Backends: where a pipeline's stage functions run when one machine is not enough.

A backend replaces the local stage groups by one *remote* group: the runner still owns the
sources, resume decisions, the ledger, progress and Ctrl-C, and hands the backend *shards*
(batches of ``shard_size`` items) through ``window`` lanes, so at most ``window`` shards are in
flight — the window is the queue. Each lane's ``run(batch)`` returns one
:class:`~pipeline.calls.Outcome` per item exactly like a local lane, so the ledger logic is the
same for every backend.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from ..lanes import Lane
from ..stage import Stage

__all__ = ["Backend"]


class Backend(Protocol):
    name: str
    shard_size: int
    window: int

    def open(self) -> AbstractAsyncContextManager[Any]:
        """Connect to (or start) the cluster for the duration of a run."""
        ...

    def lane(self, stages: Sequence[Stage], *, on_crash: Callable[[str], None]) -> Lane:
        """One of ``window`` lanes; ``run(batch)`` runs a whole shard through ``stages``.

        The stages (functions, options, context factories) are pickled to the workers, which run
        them with the local engine; contexts are opened there, not on the driver.
        """
        ...

    def summary(self) -> dict[str, Any]:
        """What goes into ``summary.json`` under ``backend`` (e.g. per-worker throughput)."""
        ...
