"""What the ledger writer has taken reaches the journal, even when its run is cancelled."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import pipeline.writer
from pipeline import Pipeline, Record, Status, stage
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


@pytest.mark.timeout(30)
def test_a_record_the_writer_holds_when_its_run_is_cancelled_is_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ledger writer lets records gather for an interval before a transaction; a run
    cancelled meanwhile (by the program that embeds it) still commits the ones it holds."""
    monkeypatch.setattr(pipeline.writer, "LEDGER_INTERVAL", 60.0)
    done: dict[str, threading.Event] = {"first": threading.Event(), "second": threading.Event()}

    def inc(value: int, key: str) -> int:  # a thread stage: tells the test what it did
        done[key].set()
        return value + 1

    async def wait_for(key: str) -> None:
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, done[key].wait, 10)
        await asyncio.sleep(0.2)  # its record handed to the writer

    async def inputs() -> AsyncIterator[tuple[str, tuple[int, str]]]:
        yield ("first", (1, "first"))  # the writer's first transaction, at once
        await wait_for("first")
        yield ("second", (2, "second"))  # held by the writer, which waits for more
        await asyncio.sleep(60)

    async def go() -> None:
        pipe = Pipeline([stage(lambda pair: inc(*pair), kind="thread", name="inc")])
        run = asyncio.create_task(pipe.run_async(inputs(), output=tmp_path, progress=False))
        await wait_for("second")
        run.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run

    asyncio.run(go())

    async def journal() -> dict[str, Record]:
        async with Ledger(tmp_path) as ledger:
            return await ledger.lookup(["first", "second"])

    found = asyncio.run(journal())
    assert {k: (r.status, r.value) for k, r in found.items()} == {
        "first": (Status.OK, 2),
        "second": (Status.OK, 3),
    }
