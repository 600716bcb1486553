"""The group supervisor: one per stage group, it runs the group's lanes for the whole run.

It asks the backend for the group's :class:`~pipeline.backends.Workers`, starts a driver per
lane (``lane.depth`` of them: a process lane keeps a second batch in flight) in one
:class:`asyncio.TaskGroup`, and adds lanes when the autoscaler asks. The group ends when its
inbox has ended and every driver has returned; a driver's error (a crash budget exceeded, an
engine bug) cancels the others by construction, and the backend closes the lanes (killing
their workers unless the group ended normally). Either way the group's stream ends: it closes
the next group's inbox.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from .autoscale import GroupHandle
from .backends import Backend, GroupEnv, Workers
from .channel import Channel
from .drivers import GroupDriver
from .lanes import AsyncLane, Lane
from .records import Item
from .stage import Stage

__all__ = ["GroupSupervisor"]

log = logging.getLogger("pipeline")


class GroupSupervisor:
    """Runs one group (see the module docstring)."""

    def __init__(
        self,
        group: Sequence[Stage],
        driver: GroupDriver,
        *,
        backend: Backend,
        env: GroupEnv,
        inbox: Channel[Item],
        outbox: Channel[Item] | None,
        handles: list[GroupHandle],
    ) -> None:
        self.group = list(group)
        self.name = group[0].name
        self.driver = driver
        self.backend = backend
        self.env = env
        self.inbox = inbox
        self.outbox = outbox  # the next group's inbox (None after the last group)
        self.handles = handles  # the autoscaler's view of the running groups
        self._tasks: asyncio.TaskGroup | None = None
        self._workers: Workers | None = None
        self._handle: GroupHandle | None = None
        self._lanes = 0

    async def run(self) -> None:
        try:
            async with self.backend.workers(self.group, self.env) as workers:
                self._workers = workers
                if self.env.autoscale:
                    self._handle = self._register(workers.cap)
                async with asyncio.TaskGroup() as tasks:
                    self._tasks = tasks
                    for lane in workers.lanes:
                        self._start(lane)
        finally:
            if self._handle is not None:
                self._handle.done = True
            now = time.perf_counter()
            for m in self.driver.metrics:
                m.ended = now
            if self.outbox is not None:
                self.outbox.close()

    def _register(self, cap: int) -> GroupHandle:
        handle = GroupHandle(
            name=self.name,
            kind=self.group[0].kind,
            cap=cap,
            inbox=self.inbox,
            metrics=self.driver.metrics,
            add_lane=self._grow,
        )
        self.handles.append(handle)
        return handle

    def _start(self, lane: Lane) -> None:
        """Start the drivers of one more lane."""
        assert self._tasks is not None
        assert self._workers is not None
        if isinstance(lane, AsyncLane):
            self._tasks.create_task(self.driver.singles(lane, self.inbox))
        else:
            for _ in range(lane.depth):
                batches = self.driver.batches(lane, self.inbox, self._workers.batcher)
                self._tasks.create_task(batches)
        self._lanes += 1
        for m in self.driver.metrics:
            m.workers = self._lanes
        if self._handle is not None:
            self._handle.lanes = self._lanes

    def _grow(self) -> None:
        """One more lane, at the autoscaler's request."""
        workers = self._workers
        over = self.inbox.closed and len(self.inbox) == 0
        if workers is None or workers.grow is None or over:
            return  # not started, cannot grow, or its stream is over: no lane would be used
        try:
            self._start(workers.grow())
        except RuntimeError as exc:  # TaskGroup.create_task: the group is shutting down
            log.debug("group %s: no lane added (%s)", self.name, exc)
