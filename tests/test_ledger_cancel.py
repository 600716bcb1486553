"""A transaction of the ledger is made once asked for, even when whoever asked is cancelled."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import pytest

from pipeline import Record, Status
from pipeline.ledger import Ledger


@pytest.mark.timeout(30)
def test_a_write_cancelled_while_it_waits_for_the_ledgers_thread_is_made_all_the_same(
    tmp_path: Path,
) -> None:
    """The ledger writer cancelled (a run cancelled by the program that embeds it, a timeout
    around it) while its transaction waits behind another call on the ledger's thread: the
    records it took from the channel, counted and collected already, reach the journal all
    the same, before the next call on that thread (the run's leftovers, its close)."""

    async def go() -> dict[str, Record]:
        async with Ledger(tmp_path, run="r1") as ledger:
            await ledger.write([Record(key="before", status=Status.OK, source="b", run="r0")])
            # the ledger's thread is busy for a while: a pass over the journal that dawdles
            busy = asyncio.ensure_future(ledger.revisit("r1", lambda rec: time.sleep(0.3)))
            await asyncio.sleep(0.05)
            write = asyncio.ensure_future(
                ledger.write([Record(key="taken", status=Status.OK, source="t", run="r1")])
            )
            await asyncio.sleep(0.05)  # queued behind the pass
            write.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await write
            await busy
            return await ledger.lookup(["before", "taken"])

    found = asyncio.run(go())
    assert sorted(found) == ["before", "taken"]
