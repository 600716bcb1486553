"""The engine's side of a split item (:mod:`pipeline.split`): its parts and where they merge.

A :class:`Part` is an :class:`~pipeline.records.Item` of its own under the item's key; its
:class:`Join` keeps the parts' results until the last one is back. :class:`Joins` is the runner's
owner of both: it draws the parts lazily from ``Split.parts`` and routes each like any item (to
the next group that accepts its value), joins each part once it has gone past the join group
(the group of ``Split.through``, else the first group a part went to), merges, and sends the
item on by its merged value's type. The first failed part fails the item, once; the other parts
are dropped as they come back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import SplitError
from .recorder import Recorder
from .records import Item, Record
from .routing import Router
from .split import Split

__all__ = ["Join", "Joins", "Part"]


@dataclass(slots=True, eq=False)
class Join:
    """The bookkeeping of one split item."""

    item: Item  # the item that was split; it carries the merged value on
    stage: str  # the stage that split it (named in the record when the merge fails)
    merge: Callable[[list[Any]], Any]
    at: int = -1  # the group after which the parts are joined (the router's end: at the end)
    start: int = 0  # the group the parts enter at (the one after the split)
    entered: int = 0  # a bit per stage of the groups a part was sent to (see Router.stage_bits)
    results: dict[int, Any] = field(default_factory=dict)
    expected: int | None = None  # known once ``parts`` is exhausted
    closed: bool = False  # merged, failed or cancelled: later results are dropped
    attempts: int = 1

    def add(self, index: int, value: Any, attempts: int) -> bool:
        """Keep one part's result; True when that completes the item."""
        if self.closed:
            return False
        self.results[index] = value
        self.attempts = max(self.attempts, attempts)
        return self.complete()

    def complete(self) -> bool:
        return not self.closed and self.expected is not None and len(self.results) == self.expected

    def merged(self) -> Any:
        """``merge`` over the results in part order; closes the join (raises what merge raises)."""
        self.closed = True
        ordered = [self.results[i] for i in range(self.expected or 0)]
        self.results = {}
        return self.merge(ordered)

    def fail(self) -> bool:
        """Close after a failure; True the first time (the one failure that gets recorded)."""
        first = not self.closed
        self.closed = True
        self.results = {}
        return first


@dataclass(slots=True, kw_only=True)
class Part(Item):
    """One part of a split item, travelling under the item's key."""

    index: int
    join: Join


class Joins:
    """Splits items into parts, joins the parts' results, merges and sends the item on."""

    def __init__(self, router: Router, recorder: Recorder) -> None:
        self.router = router
        self.recorder = recorder

    async def split(self, item: Item, group: int) -> None:
        """``item.value`` is a :class:`Split` returned by group ``group``: send its parts on."""
        split: Split = item.value
        stage = self.router.stage_names[group][-1]
        join = Join(item, stage, split.merge, start=group + 1, attempts=item.attempts)
        count = 0
        try:
            parts = iter(split.parts)
            while not join.closed:  # a part failed already: draw no more
                try:
                    value = next(parts)
                except StopIteration:
                    break
                if join.at < 0:
                    join.at = self._join_point(group + 1, split.through, value)
                part = Part(
                    item.key,
                    value,
                    item.source,
                    meta=item.meta,
                    born=item.born,
                    attempts=item.attempts,
                    index=count,
                    join=join,
                )
                count += 1
                await self._onward(part, group + 1)
        except Exception as exc:  # noqa: BLE001 — the parts iterator is user code: the item fails
            if join.fail():
                await self.recorder.emit(self.recorder.failure(item, stage, exc, item.attempts))
            return
        if join.at < 0:  # no parts: merged at once, as if after the next group
            join.at = self._join_point(group + 1, split.through, None)
        join.expected = count
        if join.complete():  # every part is back already (or there were none)
            await self._merge(join)

    async def advance(self, part: Part, group: int) -> None:
        """A part's value is back from group ``group``: on to its next group, or joined."""
        join = part.join
        if join.closed:  # its item failed already
            return
        if isinstance(part.value, Split):
            if join.fail():
                stage = self.router.stage_names[group][-1]
                exc = SplitError(f"stage {stage!r} split a part of an already split item")
                await self.recorder.emit(self.recorder.failure(join.item, stage, exc, 1))
            return
        await self._onward(part, group + 1)

    async def failed(self, part: Part, record: Record) -> None:
        """The first failed part fails the whole item; later ones are dropped."""
        if part.join.fail():
            record.meta = {**record.meta, "part": part.index}
            await self.recorder.emit(record)

    async def _onward(self, part: Part, start: int) -> None:
        """Send a part to the next group from ``start`` that takes it, or join it when that
        group lies past its join group (or there is none)."""
        join = part.join
        target = self.router.target(start, part)
        if target <= join.at and target < self.router.end:
            join.entered |= self.router.stage_bits(target, target + 1)
            await self.router.put(target, part)
        elif join.add(part.index, part.value, part.attempts):
            await self._merge(join)

    async def _merge(self, join: Join) -> None:
        item = join.item
        try:
            item.value = join.merged()
        except Exception as exc:  # noqa: BLE001 — a merge is user code: the item fails
            await self.recorder.emit(self.recorder.failure(item, join.stage, exc, join.attempts))
            return
        item.attempts = join.attempts
        # the item itself skipped the stages up to the join: its parts ran in some of them
        skipped = self.router.stage_bits(join.start, join.at + 1) & ~join.entered
        item.bypassed |= skipped
        await self.router.send(join.at + 1, item)

    def _join_point(self, start: int, through: str | None, first: Any) -> int:
        """The group after which parts that enter at ``start`` are joined: the one holding
        stage ``through`` (the router's end when none does); else the first group that takes
        the first part ``first``, the next group when there are no parts, and ``start - 1``
        (joined at once, the merged item goes on from ``start``) when no group takes it."""
        router = self.router
        if through is None:
            if first is None:
                return start
            taker = router.first_taker(start, first)
            return taker if taker < router.end else start - 1
        for group in range(start, router.end):
            if through in router.stage_names[group]:
                return group
        return router.end
