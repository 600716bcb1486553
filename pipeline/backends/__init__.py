"""Backends: where a pipeline's stage functions run.

The runner owns what needs one owner whatever the backend: the sources, resume decisions,
routing, the ledger, progress and Ctrl-C. A :class:`Backend` decides the rest, so the runner
never asks which backend it has:

* ``groups(stages)`` — how the stages are cut into groups, each driven as one unit: the local
  backend fuses adjacent process stages (:func:`pipeline.batching.fuse`); the Dask backend runs
  the whole chain as one remote group;
* ``capacity(group)`` — the size of a group's inbox channel;
* ``workers(group, env)`` — an async context manager that sets up the group's lanes for the run
  (opening the stages' context, a thread pool, worker processes — or shard lanes) and closes
  them at its exit, gracefully when the group ended normally. It yields :class:`Workers`: the
  lanes to start with, how to size their batches, and, for groups that may grow under
  ``--workers auto``, how to add a lane;
* ``open()`` — for the duration of a run (connect to a cluster);
* ``summary()`` — what goes into ``summary.json`` under ``collected.backend`` (None: nothing).

Each lane's ``run(batch)`` returns one :class:`~pipeline.calls.Outcome` per item, so the ledger
logic is the same for every backend. :class:`~pipeline.backends.local.LocalBackend` is the
default (``RunOptions(backend=None)``); :class:`~pipeline.backends.dask.DaskBackend` hands the
runner *shards* (batches of ``shard_size`` items) through ``window`` lanes, so at most
``window`` shards are in flight: the window is the queue.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from ..batching import Batcher
from ..lanes import Lane
from ..stage import Stage

__all__ = ["Backend", "GroupEnv", "Workers"]


@dataclass(frozen=True, slots=True)
class GroupEnv:
    """What the runner tells a backend about one group's run."""

    on_crash: Callable[[str], None]  # report a worker crash (raises past the crash budget)
    inbox_capacity: int  # the group's inbox: a batch takes at most a share of it
    autoscale: bool  # --workers auto: start small, grow through ``Workers.grow``


@dataclass(slots=True)
class Workers:
    """A group's lanes as a backend set them up for one run."""

    lanes: list[Lane]  # the lanes to start with
    batcher: Batcher  # sizes the batches the group's drivers take from the inbox
    cap: int  # the most lanes the group may have
    grow: Callable[[], Lane] | None = None  # one more lane; None: the group cannot grow


class Backend(Protocol):
    """Where the stages of a run execute (see the module docstring)."""

    name: str

    def open(self) -> AbstractAsyncContextManager[object]:
        """Connect to (or start) what the run needs, for the duration of the run."""
        ...

    def groups(self, stages: Sequence[Stage]) -> list[list[Stage]]:
        """The stages cut into the groups the runner drives, in pipeline order."""
        ...

    def capacity(self, group: Sequence[Stage]) -> int:
        """The capacity of the group's inbox channel."""
        ...

    def workers(
        self, group: Sequence[Stage], env: GroupEnv
    ) -> AbstractAsyncContextManager[Workers]:
        """The group's lanes for the run; closed at the exit (gracefully when no error)."""
        ...

    def summary(self) -> dict[str, Any] | None:
        """What goes into ``summary.json`` under ``backend``; None for nothing."""
        ...
