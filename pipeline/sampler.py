"""The sampler: the timeline's samples at the timeline's interval, and the progress bars'
redraw (inbox fill, elapsed time, rate) every :data:`~pipeline.progress.REFRESH_INTERVAL`
seconds, until the flow ends. The timeline's interval grows on long runs (it keeps at most
``Timeline.MAX_SAMPLES``), the bars' does not: they never go stale. The runner takes one last
sample when the run ends, so that a run shorter than the interval still has its charts and the
bars show the inboxes as they are at the end."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from .channel import Channel
from .control import Control
from .metrics import StageMetrics, Timeline
from .progress import REFRESH_INTERVAL, Progress

__all__ = ["Sampler"]


class Sampler:
    """Samples per-stage figures; ``inbox_of`` is each stage's inbox (its group's)."""

    def __init__(
        self,
        metrics: Sequence[StageMetrics],
        inbox_of: Sequence[Channel[Any]],
        timeline: Timeline,
        progress: Progress,
    ) -> None:
        self.metrics = metrics
        self.inbox_of = inbox_of
        self.timeline = timeline
        self.progress = progress

    async def run(self, control: Control) -> None:
        sampled = time.perf_counter()
        while not await control.pause(self._tick()):
            now = time.perf_counter()
            if now - sampled >= self.timeline.interval * 0.99:  # pause() may wake a hair early
                self.timeline_sample()
                sampled = now
            self.redraw()

    def _tick(self) -> float:
        interval = self.timeline.interval
        return min(interval, REFRESH_INTERVAL) if self.progress.enabled else interval

    def sample(self) -> None:
        """A timeline sample and a redraw of the bars (the run's last one)."""
        self.timeline_sample()
        self.redraw()

    def timeline_sample(self) -> None:
        self.timeline.sample(
            [m.items for m in self.metrics],
            [len(c) for c in self.inbox_of],
            [m.workers for m in self.metrics],
        )

    def redraw(self) -> None:
        if self.progress.enabled:
            self.progress.set_fill([(len(c), c.capacity) for c in self.inbox_of])
