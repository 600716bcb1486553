"""Fan-out and fan-in: one item split into parts that run in parallel, then merged back.

A stage function returns ``Split(parts, merge)`` instead of a plain value when its item is too big
for one call (a 2 GB array cut into 64 MB chunks). The engine then

1. sends each part on as an item of its own, under the same key, through the **next stage** (and
   the stages fused with it), or through every stage up to and including the one named
   ``through``, so the parts spread over all of those stages' workers;
2. collects the parts' results as they come back and, once every part is in, calls
   ``merge(results)`` (results in part order) on the event loop; the merged value continues
   through the rest of the pipeline as the item's value. A split from the last stage is merged
   at the end.

The key still gets exactly one record: ``ok`` with the merged value, or ``failed`` at the first
part that fails (the other parts' results are dropped as they arrive; parts not yet sent are
never sent), or ``cancelled`` after Ctrl-C. Memory stays bounded: parts are drawn lazily from
``parts`` (a generator is fine) and sent through the bounded channels like any other item; the
join keeps only the parts' results. Parts are produced on the event loop, so make them cheap
descriptors (offsets, names), not data; make ``merge`` cheap too. A part cannot split again.

``Split`` crosses process boundaries when a process stage returns it: then ``parts`` must be a
list and ``merge`` a module-level function.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .records import Item
    from .stage import Stage

__all__ = ["Join", "Split"]


@dataclass(frozen=True, slots=True)
class Split:
    """Returned by a stage function: this item goes on as ``parts``, merged by ``merge``."""

    parts: Iterable[Any]
    merge: Callable[[list[Any]], Any]
    through: str | None = None  # the last stage the parts run through (None: the next one)


@dataclass(slots=True, eq=False)
class Join:
    """The engine's bookkeeping for one split item (see the module docstring)."""

    item: Item  # the item that was split; it carries the merged value on
    stage: Stage  # the stage that split it (named in the record when the merge fails)
    merge: Callable[[list[Any]], Any]
    at: object  # the inbox of the stage group after which the parts are joined
    deliver: Callable[[Item], Awaitable[None]]  # where the merged item goes next
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
