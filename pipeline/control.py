"""Ctrl-C and the end of the flow: the state a run's helper tasks wait on.

The first Ctrl-C, SIGTERM or SIGHUP (:meth:`Control.stop`) stops feeding: the watcher cancels
the feeder, whose stream ends by closing, so what is already in the pipeline drains for up to
``grace`` seconds. If the flow has not ended by then (or at a second signal,
:meth:`Control.abort`), the watcher raises :class:`Interrupted`, and its task group cancels
every other task of the run: lanes kill their workers, and the items still in flight are
recorded ``cancelled``. The sampler and the autoscaler sleep through :meth:`Control.pause`,
which returns early once the flow has ended.

Everything here runs on the run's event loop; a signal handler calls :meth:`stop` and
:meth:`abort` on it (another thread uses ``loop.call_soon_threadsafe``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

__all__ = ["Control", "Interrupted"]

log = logging.getLogger("pipeline")


class Interrupted(Exception):
    """The grace period after Ctrl-C is over: cancels the run's tasks (not an error)."""


class Control:
    """Whether the run was asked to stop or abort, and whether its flow has ended."""

    def __init__(self) -> None:
        self.stopping = False  # Ctrl-C: stop feeding
        self.aborting = False  # a second Ctrl-C: no grace period
        self.ended = False  # every item has left the stage groups
        self.interrupted = False  # a stop came before the end: the result says so
        self.stopped_by: str | None = None  # the first signal to stop it: SIGINT, SIGTERM, SIGHUP
        self._changed = asyncio.Event()

    def stop(self, by: str = "SIGINT") -> None:
        self.stopping = True
        self.stopped_by = self.stopped_by or by
        self._changed.set()

    def abort(self) -> None:
        self.stopping = self.aborting = True
        self._changed.set()

    def end(self) -> None:
        self.ended = True
        self._changed.set()

    async def until(self, condition: Callable[[], bool]) -> None:
        """Return once ``condition()`` holds; it is checked again at every change."""
        while not condition():
            self._changed.clear()
            await self._changed.wait()

    async def pause(self, seconds: float) -> bool:
        """Sleep ``seconds``, or less when the flow ends; True when it has ended."""
        try:
            async with asyncio.timeout(seconds):
                await self.until(lambda: self.ended)
        except TimeoutError:
            return False
        return True

    async def watch(self, feeder: asyncio.Task[None], grace: float) -> None:
        """Wait for Ctrl-C (or the end): then stop feeding, grant ``grace``, interrupt."""
        await self.until(lambda: self.stopping or self.ended)
        if self.ended:
            return
        self.interrupted = True
        if self.aborting:  # a second Ctrl-C already, or a consumer of iter() that left
            log.warning("interrupted: in-flight items cancelled at once")
        else:
            log.warning("interrupted: finishing in-flight items for up to %.1f s", grace)
        feeder.cancel()  # the one task stopped on its own: its stream ends by closing
        try:
            async with asyncio.timeout(grace):
                await self.until(lambda: self.aborting or self.ended)
        except TimeoutError:
            pass
        if not self.ended:
            raise Interrupted
