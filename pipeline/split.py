"""Fan-out and fan-in: one item split into parts that run in parallel, then merged back.

A stage function returns ``Split(parts, merge)`` instead of a plain value when its item is too big
for one call (a 2 GB array cut into 64 MB chunks). The engine then

1. sends each part on as an item of its own, under the same key, routed like any item: to the
   next stage that accepts the part's value (``stage(..., accepts=...)``; a part no stage up to
   the join accepts is joined as it is). The parts are joined after the first stage a part went
   to, or after the stage named ``through``: they run through every stage up to and including
   that one (each stage that accepts them), spread over all of those stages' workers;
2. collects the parts' results as they come back and, once every part is in, calls
   ``merge(results)`` (results in part order) on the event loop; the merged value continues
   through the rest of the pipeline as the item's value, routed by its type. A split from the
   last stage is merged at the end.

The key still gets exactly one record: ``ok`` with the merged value, or ``failed`` at the first
part that fails (the other parts' results are dropped as they arrive; parts not yet sent are
never sent), or ``cancelled`` after Ctrl-C. Memory stays bounded: parts are drawn lazily from
``parts`` (a generator is fine) and sent through the bounded channels like any other item; the
join keeps only the parts' results. Parts are produced on the event loop, so make them cheap
descriptors (offsets, names), not data; make ``merge`` cheap too. A part cannot split again.

``Split`` crosses process boundaries when a process stage returns it: then ``parts`` must be a
list and ``merge`` a module-level function. This module is all a process worker needs of it; the
engine's side (parts, joins) is :mod:`pipeline.joins`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["Split"]


@dataclass(frozen=True, slots=True)
class Split:
    """Returned by a stage function: this item goes on as ``parts``, merged by ``merge``."""

    parts: Iterable[Any]
    merge: Callable[[list[Any]], Any]
    through: str | None = None  # the last stage the parts run through (None: the first one)
