"""The sampler: the timeline's samples and the progress bars' inbox fill, at the timeline's
interval, until the flow ends; the runner takes one last sample when the run ends, so that a
run shorter than the interval still has its charts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .channel import Channel
from .control import Control
from .metrics import StageMetrics, Timeline
from .progress import Progress

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
        while not await control.pause(self.timeline.interval):
            self.sample()
            self.progress.set_fill([(len(c), c.capacity) for c in self.inbox_of])

    def sample(self) -> None:
        self.timeline.sample(
            [m.items for m in self.metrics],
            [len(c) for c in self.inbox_of],
            [m.workers for m in self.metrics],
        )
