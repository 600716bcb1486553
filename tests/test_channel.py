"""The bounded channel between stages: back-pressure, end of stream by closing, wait_closed,
wait_full, wait_ready."""

from __future__ import annotations

import asyncio

import pytest

from pipeline.channel import Channel, ChannelClosed, EndOfStream, WouldBlock


@pytest.mark.asyncio
async def test_a_full_channel_blocks_its_sender_until_a_receive() -> None:
    ch = Channel[int](2)
    await ch.send(1)
    await ch.send(2)
    with pytest.raises(WouldBlock):
        ch.send_nowait(3)
    third = asyncio.create_task(ch.send(3))
    await asyncio.sleep(0)  # one turn of the loop: the task runs until it blocks (no timing)
    assert not third.done()
    assert ch.statistics().waiting_senders == 1
    assert await ch.receive() == 1
    await third
    assert [await ch.receive(), await ch.receive()] == [2, 3]


@pytest.mark.asyncio
async def test_closing_ends_the_stream_after_what_is_left() -> None:
    ch = Channel[int](4)
    await ch.send(1)
    ch.close()
    with pytest.raises(ChannelClosed):
        await ch.send(2)
    assert [x async for x in ch] == [1]
    with pytest.raises(EndOfStream):
        await ch.receive()


@pytest.mark.asyncio
async def test_wait_closed_returns_when_the_channel_closes_and_receives_nothing() -> None:
    ch = Channel[int](4)
    waiter = asyncio.create_task(ch.wait_closed())
    await asyncio.sleep(0)  # one turn of the loop: the waiter is waiting now
    assert len(ch._closers) == 1
    await ch.send(1)  # a send does not wake it
    await asyncio.sleep(0)  # one turn: had the send woken it, it would be done now
    assert not waiter.done()
    ch.close()
    await asyncio.wait_for(waiter, 1)
    assert await ch.receive() == 1  # the item is still there
    await asyncio.wait_for(ch.wait_closed(), 1)  # already closed: returns at once


@pytest.mark.asyncio
@pytest.mark.parametrize("wait", ["wait_closed", "wait_full"])
async def test_a_cancelled_wait_leaves_no_waiter_behind(wait: str) -> None:
    ch = Channel[int](1)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(getattr(ch, wait)(), 0.01)
    assert ch._closers == ch._fillers == []
    ch.close()


@pytest.mark.asyncio
async def test_wait_ready_returns_when_an_item_arrives_or_the_channel_closes() -> None:
    ch = Channel[int](2)
    waiter = asyncio.create_task(ch.wait_ready())
    await asyncio.sleep(0)  # one turn of the loop: the waiter is waiting now
    assert not waiter.done()
    await ch.send(1)
    await asyncio.wait_for(waiter, 1)
    await asyncio.wait_for(ch.wait_ready(), 1)  # an item there already: returns at once
    assert ch.receive_nowait() == 1  # it received nothing
    with pytest.raises(TimeoutError):  # cancelled: leaves nothing that a send would wake
        await asyncio.wait_for(ch.wait_ready(), 0.01)
    assert all(f.done() for f in ch._receivers)
    await _returns_once_closed(ch, "wait_ready")


@pytest.mark.asyncio
async def test_wait_full_returns_when_the_channel_fills_or_closes() -> None:
    ch = Channel[int](2)
    waiter = asyncio.create_task(ch.wait_full())
    await ch.send(1)  # not full yet: the waiter waits on
    await asyncio.sleep(0)  # one turn of the loop: had the send woken it, it would be done now
    assert not waiter.done()
    await ch.send(2)
    await asyncio.wait_for(waiter, 1)
    assert ch._fillers == []
    await asyncio.wait_for(ch.wait_full(), 1)  # full already: returns at once
    assert [ch.receive_nowait(), ch.receive_nowait()] == [1, 2]  # it received nothing
    await _returns_once_closed(ch, "wait_full")


async def _returns_once_closed(ch: Channel[int], wait: str) -> None:
    """``ch.<wait>()`` (empty, not full) waits until the channel closes, then returns at once."""
    closing = asyncio.create_task(getattr(ch, wait)())
    await asyncio.sleep(0)
    assert not closing.done()
    ch.close()
    await asyncio.wait_for(closing, 1)
    await asyncio.wait_for(getattr(ch, wait)(), 1)  # closed: returns at once


@pytest.mark.asyncio
async def test_receive_some_takes_what_is_there_and_drain_never_waits() -> None:
    ch = Channel[int](8)
    assert ch.drain(4) == []  # empty: nothing, at once
    for i in range(5):
        await ch.send(i)
    assert await ch.receive_some(3) == [0, 1, 2]  # at most that many
    assert await ch.receive_some(8) == [3, 4]  # what is there: no waiting for more
    waiter = asyncio.create_task(ch.receive_some(8))
    await asyncio.sleep(0)
    assert not waiter.done()  # nothing there: it waits for the first
    await ch.send(5)
    assert await asyncio.wait_for(waiter, 1) == [5]
    await ch.send(6)
    ch.close()
    assert ch.drain(8) == [6]  # closed: what is left
    assert await ch.receive_some(8) == []  # the end of the stream
