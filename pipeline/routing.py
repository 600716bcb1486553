"""Routing by type: where an item goes after the feeder or a stage group.

Each group has an inbox channel; a group *takes* a value when one of its stages accepts it
(``stage(..., accepts=...)``; a stage without ``accepts`` takes everything). After the feeder
and after each group, an item goes to the inbox of the next group that takes its value; when no
group further on does, it is finished there: recorded ``ok`` with that value. A value that a
stage does not accept therefore never reaches that stage's workers, and the stage's metrics do
not count it. (Inside a fused process group, the worker skips such a step itself: see
:func:`pipeline.calls.run_chain`.)

Items only ever move downstream, so each inbox is still closed by the group just before it (by
the feeder for the first): every producer upstream of a channel has finished before it closes.

With no ``accepts`` anywhere, the next group is always the one after: one list look-up per item.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .channel import Channel
from .recorder import Recorder
from .records import Item
from .stage import Stage

__all__ = ["Router", "group_accepts"]


def group_accepts(group: Sequence[Stage]) -> tuple[type, ...] | None:
    """The types a group takes: those its stages accept together (None: every value)."""
    if any(st.accepts is None for st in group):
        return None
    return tuple(t for st in group for t in st.accepts or ())


class Router:
    """The groups' inboxes in pipeline order, and the rule that picks one for a value."""

    def __init__(
        self,
        groups: Sequence[Sequence[Stage]],
        inboxes: Sequence[Channel[Item]],
        recorder: Recorder,
    ) -> None:
        self.inboxes = list(inboxes)
        self.end = len(self.inboxes)  # "past the last group": the item is finished
        self.recorder = recorder
        self.stage_names = [tuple(st.name for st in group) for group in groups]
        self._takes = [group_accepts(group) for group in groups]
        first = [0]
        for group in groups:
            first.append(first[-1] + len(group))
        self._first_stage = first  # index of each group's first stage (and the stage count)

    def first_taker(self, start: int, value: Any) -> int:
        """The first group from ``start`` on that takes ``value`` (:attr:`end` if none)."""
        takes = self._takes
        group = start
        while group < self.end:
            accepted = takes[group]
            if accepted is None or isinstance(value, accepted):
                return group
            group += 1
        return group

    def target(self, start: int, item: Item) -> int:
        """:meth:`first_taker` for ``item``, whose ``bypassed`` notes the stages it skips."""
        group = self.first_taker(start, item.value)
        if group != start and start < self.end:
            item.bypassed |= self.stage_bits(start, group)
        return group

    def stage_bits(self, start: int, stop: int) -> int:
        """A bit for each stage of the groups ``start`` to ``stop - 1`` (pipeline indices)."""
        first = self._first_stage
        start, stop = min(start, self.end), min(stop, self.end)
        return (1 << first[stop]) - (1 << first[start]) if stop > start else 0

    def fixed_inbox(self, group: int) -> Channel[Item] | None:
        """The inbox of ``group`` when it takes every value (no look-up needed), else None."""
        return self.inboxes[group] if group < self.end and self._takes[group] is None else None

    async def send(self, start: int, item: Item) -> None:
        """Send ``item`` to the first group from ``start`` on that takes it, or finish it."""
        group = self.target(start, item)
        if group < self.end:
            await self.inboxes[group].send(item)
        else:
            await self.recorder.finish(item)

    async def put(self, group: int, item: Item) -> None:
        """Send ``item`` to group ``group``'s inbox (it takes the item: see :meth:`target`)."""
        await self.inboxes[group].send(item)

    def close_feed(self) -> None:
        """The feeder is done: close the first group's inbox (the others close in turn)."""
        self.inboxes[0].close()
