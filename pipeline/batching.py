"""How work is cut: adjacent process stages fused into groups, and batch sizes per worker call."""

from __future__ import annotations

from collections.abc import Sequence

from .stage import Stage

__all__ = ["BATCH_BYTES", "BATCH_SECONDS", "Batcher", "fuse"]

#: Target time of one worker call, the busy time of its items (what the driver observes): long
#: enough to amortise the per-call overhead (tens of microseconds for threads; for processes
#: ~100 us of the parent's CPU: a message each way, the loop's turns, the watchdog), short
#: enough to keep lanes even at the end of a run (a process lane has a second batch in
#: flight). Measured from the wall of the call (which includes the wait behind that second
#: batch and the trip) at 0.02 s, batches of small images stayed at 1-2 items: 2,000 web JPEGs
#: took ~2,000 worker calls and ~7,000 turns of the parent's loop.
BATCH_SECONDS = 0.05

#: Bytes one call to a worker process carries at most (what its items pickle to), unless one item
#: alone is bigger. A process lane holds ``DEPTH`` batches at once in its shared-memory arena, and
#: the parent reads a spooled download whole while its batch is packed: items that are big but
#: quick to run (spooled bodies of 8 MB that are mostly not image) would otherwise go 4 to a
#: batch by time: 20 such downloads raised the parent's peak RSS by 126-142 MB, capped by 76-84
#: (``tests/test_spool.py``; 32 MB of it the arena: 2 lanes x 2 batches of one body).
BATCH_BYTES = 8 * 2**20


class Batcher:
    """Sizes batches so one worker call lasts about ``BATCH_SECONDS`` and, to a worker
    process, carries about ``BATCH_BYTES`` at most (the lane tells :meth:`carried`)."""

    def __init__(self, *, max_batch: int, share: int, fixed: int | None = None) -> None:
        self.max_batch = max(1, max_batch)
        self.share = max(1, share)  # never take more than inbox capacity / workers at once
        self.fixed = fixed  # backends ship shards of a fixed size
        self.per_item: float | None = None
        self.bytes_per_item = 0.0

    def size(self) -> int:
        if self.fixed is not None:
            return self.fixed
        if self.per_item is None:
            return 1
        want = int(BATCH_SECONDS / max(self.per_item, 1e-7))
        if self.bytes_per_item:
            want = min(want, int(BATCH_BYTES / self.bytes_per_item))
        return max(1, min(want, self.max_batch, self.share))

    def observe(self, seconds: float, n: int) -> None:
        if n:
            sample = seconds / n
            self.per_item = sample if self.per_item is None else 0.8 * self.per_item + 0.2 * sample

    def carried(self, nbytes: int, n: int) -> None:
        """A batch of ``n`` items went to a worker process as ``nbytes`` of messages and copies."""
        if n:
            sample = nbytes / n
            self.bytes_per_item = (
                sample if not self.bytes_per_item else 0.8 * self.bytes_per_item + 0.2 * sample
            )


def fuse(stages: Sequence[Stage]) -> list[list[Stage]]:
    """Group stages: adjacent process stages share one worker call; every other stage is alone."""
    groups: list[list[Stage]] = []
    for st in stages:
        if groups and st.kind == "process" and groups[-1][-1].kind == "process":
            groups[-1].append(st)
        else:
            groups.append([st])
    return groups
