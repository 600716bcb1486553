"""How work is cut: adjacent process stages fused into groups, and batch sizes per worker call."""

from __future__ import annotations

from collections.abc import Sequence

from .stage import Stage

__all__ = ["BATCH_SECONDS", "Batcher", "fuse"]

#: Target time of one worker call, the busy time of its items (what the driver observes): long
#: enough to amortise the per-call overhead (tens of microseconds for threads; for processes
#: ~100 us of the parent's CPU: a message each way, the loop's turns, the watchdog), short
#: enough to keep lanes even at the end of a run (a process lane has a second batch in
#: flight). Measured from the wall of the call (which includes the wait behind that second
#: batch and the trip) at 0.02 s, batches of small images stayed at 1-2 items: 2,000 web JPEGs
#: took ~2,000 worker calls and ~7,000 turns of the parent's loop.
BATCH_SECONDS = 0.05


class Batcher:
    """Sizes batches so one worker call lasts about ``BATCH_SECONDS``."""

    def __init__(self, *, max_batch: int, share: int, fixed: int | None = None) -> None:
        self.max_batch = max(1, max_batch)
        self.share = max(1, share)  # never take more than inbox capacity / workers at once
        self.fixed = fixed  # backends ship shards of a fixed size
        self.per_item: float | None = None

    def size(self) -> int:
        if self.fixed is not None:
            return self.fixed
        if self.per_item is None:
            return 1
        want = int(BATCH_SECONDS / max(self.per_item, 1e-7))
        return max(1, min(want, self.max_batch, self.share))

    def observe(self, seconds: float, n: int) -> None:
        if n:
            sample = seconds / n
            self.per_item = sample if self.per_item is None else 0.8 * self.per_item + 0.2 * sample


def fuse(stages: Sequence[Stage]) -> list[list[Stage]]:
    """Group stages: adjacent process stages share one worker call; every other stage is alone."""
    groups: list[list[Stage]] = []
    for st in stages:
        if groups and st.kind == "process" and groups[-1][-1].kind == "process":
            groups[-1].append(st)
        else:
            groups.append([st])
    return groups
