"""The ledger writer: the one consumer of the records channel, the only code that commits them.

It takes records as they come and commits them to the ledger's journal in transactions of up to
:data:`LEDGER_CAPACITY`, at most every :data:`LEDGER_INTERVAL` seconds (at once when the channel
is full: its senders wait); each record is also counted, and once committed shown to the
collectors and passed to ``on_record``. The stream ends when the recorder closes the channel:
the writer commits what is left at once and returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

from .channel import Channel
from .ledger import Ledger
from .progress import Progress
from .records import Record
from .result import Collector

__all__ = ["LEDGER_CAPACITY", "LEDGER_INTERVAL", "LedgerWriter", "open_ledger"]

#: Records buffered between the stages and the ledger writer; the writer commits them in
#: transactions of up to this many, so it also bounds what a SIGKILL of the parent can lose.
LEDGER_CAPACITY = 512
#: The ledger writer commits at most this often (seconds), unless the channel fills up before:
#: records arriving one by one are gathered into one transaction (and one hop to its thread)
#: instead of one each. A SIGKILL of the parent can lose at most this much of records (or a
#: channel's worth), whose items a resume simply redoes. 0.1 s: on tiny files (~2,000 items/s)
#: a transaction of ~200 records rather than ~5 at 0.02 s, a fifth of the commits and hops;
#: the stream's end is committed at once anyway.
LEDGER_INTERVAL = 0.1


@contextlib.asynccontextmanager
async def open_ledger(output: Path | None, run_id: str) -> AsyncIterator[Ledger | None]:
    """The output folder's ledger for the run (None: a run without an output folder)."""
    if output is None:
        yield None
        return
    async with Ledger(output, run=run_id) as ledger:
        yield ledger


class LedgerWriter:
    """Commits the records of :attr:`channel` (see the module docstring)."""

    def __init__(
        self,
        channel: Channel[Record],
        ledger: Ledger | None,
        *,
        collectors: Sequence[Collector],
        on_record: Callable[[Record], Awaitable[None]] | None,
        progress: Progress,
        saved: Callable[[Sequence[Record]], None] | None = None,
    ) -> None:
        self.channel = channel
        self.ledger = ledger
        self.saved = saved  # told of each batch once it is in the journal
        self.collectors = list(collectors)
        self.on_record = on_record
        self.progress = progress
        self.counts: Counter[str] = Counter()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        committed = -math.inf
        while True:
            # the records stay in the channel until they are committed at once: cancelled
            # while it waits, the writer holds none (the run's leftovers take them from there)
            await self.channel.wait_ready()
            if not self.channel:  # closed, and every record committed
                return
            wait = committed + LEDGER_INTERVAL - loop.time()
            if self.ledger is not None and wait > 0:
                # let more records in: one transaction for them all. Not past a full channel,
                # whose senders wait (records settled without work come far faster than one
                # channel an interval: 5,120/s); the last records of a run go as soon as the
                # stream ends (a shard on a Dask worker waited 20 ms for them)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.channel.wait_full(), wait)
            batch = self.channel.drain(LEDGER_CAPACITY)
            committed = loop.time()
            await self.commit(batch)

    async def commit(self, batch: Sequence[Record]) -> None:
        """Count, journal, collect and pass on ``batch`` (also the run's last, cancelled ones).
        The journal before the collectors: one that fails (a bug of the program that gave it)
        stops the run, and the records it was shown are in the journal all the same."""
        for rec in batch:
            self.counts[str(rec.status)] += 1
        if self.ledger is not None:
            await self.ledger.write(batch)
        if self.saved is not None:
            self.saved(batch)
        for rec in batch:
            for col in self.collectors:
                col.add(rec)
        if self.on_record is not None:
            for rec in batch:
                await self.on_record(rec)
        self.progress.finish_item(len(batch))
