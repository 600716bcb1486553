"""The recorder: every terminal record of a run goes through it, exactly once per key.

Every item taken from the source sits in :attr:`Recorder.inflight` from the moment the feeder
admits it until its terminal record has been handed to the ledger channel (:meth:`emit`). After
Ctrl-C or a fatal error, whatever is still in flight is recorded ``cancelled``
(:meth:`leftovers`): that is how nothing is ever lost. The ledger writer
(:mod:`pipeline.writer`) is the channel's one consumer.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from .channel import Channel
from .config import Fingerprint
from .errors import RemoteError, Skip, Withdraw
from .records import Item, Record, Status

__all__ = ["Recorder"]


class Recorder:
    """Terminal records on their way to the ledger writer, and the items still in flight."""

    def __init__(self, run_id: str, fingerprint: Fingerprint, channel: Channel[Record]) -> None:
        self.run_id = run_id
        self.channel = channel
        self.inflight: dict[str, Item] = {}
        #: keys whose record has been handed to the writer but is not in the ledger yet (in the
        #: channel, or in the transaction being committed): a look-up does not find them, and
        #: they are no longer in flight, yet an input with one of them is a duplicate all the
        #: same. The writer drops them once committed (:meth:`saved`); at most two channels'
        #: worth.
        self.unsaved: set[str] = set()
        #: the earlier records of the keys in flight that are being redone (Record.earlier)
        self.replacing: dict[str, Record] = {}
        self._fingerprint = fingerprint

    def fingerprint(self, key: str, item: Item | None = None) -> str | None:
        """The options' hash for ``key``: the item's own when its source set one."""
        if item is not None and item.fingerprint is not None:
            return item.fingerprint
        fp = self._fingerprint
        return fp(key) if callable(fp) else fp

    def admit(self, item: Item) -> bool:
        """Put ``item`` in flight; False when its key is in flight already, or recorded by this
        run and not committed yet (a duplicate)."""
        if item.key in self.inflight or item.key in self.unsaved:
            return False
        self.inflight[item.key] = item
        return True

    def forget(self, keys: Sequence[str]) -> None:
        """``keys`` are no longer in flight, and get no record from this run."""
        for key in keys:
            self.inflight.pop(key, None)
            self.replacing.pop(key, None)

    def redo(self, item: Item, earlier: Record) -> None:
        """``item``, in flight, is processed again: its record will carry ``earlier``."""
        self.replacing[item.key] = earlier

    async def emit(self, record: Record) -> None:
        """Hand ``record`` to the ledger writer; its key is no longer in flight."""
        record.run = self.run_id
        item = self.inflight.get(record.key)
        if self.replacing:
            record.earlier = self.replacing.pop(record.key, None)
        if record.status not in (Status.SKIPPED, Status.REUSED) or record.stage is not None:
            # processed (or declined by a stage): the record names the options and the input
            # it was made from; a reused record keeps the earlier record's (pipeline.resume)
            if record.fingerprint is None:
                record.fingerprint = self.fingerprint(record.key, item)
            if item is not None:
                record.identity = record.identity or item.identity
                record.redo = record.redo or item.redo
        _keep_earlier_result(record)
        await self.channel.send(record)
        self.unsaved.add(record.key)
        self.inflight.pop(record.key, None)

    def saved(self, records: Sequence[Record]) -> None:
        """``records`` are committed: a look-up finds their keys from now on."""
        unsaved = self.unsaved
        for record in records:
            unsaved.discard(record.key)

    async def finish(self, item: Item) -> None:
        """``item`` went through every stage that takes it: record it ``ok``."""
        await self.emit(
            Record(
                key=item.key,
                status=Status.OK,
                source=item.source,
                value=item.value,
                meta=item.meta,
                attempts=item.attempts,
                duration=_since(item.born),
            )
        )

    def failure(self, item: Item, stage: str, exc: BaseException, attempts: int) -> Record:
        """The record of ``item`` failed by ``exc`` in ``stage`` (``skipped`` for a Skip)."""
        # an exception may carry its own attempt count (a download retried inside its stage)
        # and small JSON-able ``details`` for the record (an HTTP status)
        attempts = max(attempts, _int(getattr(exc, "attempts", 0)))
        # and the stage the item failed in, when a later stage raises that one's error again
        # (a training set's commit, for an input its shard holds as a failed row)
        failed_in = getattr(exc, "failed_in", None)
        stage = failed_in if isinstance(failed_in, str) and failed_in else stage
        details = getattr(exc, "details", None)
        meta = {**item.meta, **details} if isinstance(details, dict) else item.meta
        error_type = exc.error_type if isinstance(exc, RemoteError) else type(exc).__name__
        message = exc.message if isinstance(exc, RemoteError) else str(exc)
        # the stage declined the item (a subclass of Skip too; by name from a worker, when it
        # could not be sent back as itself)
        if isinstance(exc, Skip) or error_type in _SKIPS:
            return Record(
                key=item.key,
                status=Status.SKIPPED,
                source=item.source,
                stage=stage,
                reason=message or "declined by the stage",
                meta=meta,
                duration=_since(item.born),
                withdrawn=isinstance(exc, Withdraw) or error_type == Withdraw.__name__,
            )
        return Record(
            key=item.key,
            status=Status.FAILED,
            source=item.source,
            stage=stage,
            error_type=error_type,
            error=message or error_type,
            attempts=attempts,
            meta=meta,
            duration=_since(item.born),
        )

    def close(self) -> None:
        """No more records: the ledger writer commits what is left and ends."""
        self.channel.close()

    def leftovers(self, reason: str) -> list[Record]:
        """Records the writer did not take (it was stopped), then a ``cancelled`` record for
        every item still in flight, with ``reason``; nothing is in flight afterwards."""
        records = self.channel.drain(len(self.channel))
        cancelled = [
            Record(
                key=item.key,
                status=Status.CANCELLED,
                source=item.source,
                reason=reason,
                meta=item.meta,
                run=self.run_id,
                fingerprint=self.fingerprint(item.key, item),
                identity=item.identity,
                redo=item.redo,
                earlier=self.replacing.get(item.key),
            )
            for item in self.inflight.values()
        ]
        for record in cancelled:  # (the drained ones went through emit())
            _keep_earlier_result(record)
        records += cancelled
        self.inflight.clear()
        self.replacing.clear()
        return records


_SKIPS = (Skip.__name__, Withdraw.__name__)


def _keep_earlier_result(record: Record) -> None:
    """A redo that failed, was declined by a stage or was cancelled on the same input keeps the
    earlier record's result: what that run made (its outputs) is still there, and still a true
    picture of the input, so the folder's records go on listing it; a later redo that succeeds
    replaces it (and whatever removes outputs no record lists knows them). Without it the new
    record replaced the earlier one in the ledger, and no record listed those outputs any more.
    An input that changed (another source or identity) keeps nothing: its earlier outputs show
    what is gone; nor does one a stage withdrew (:class:`~pipeline.Withdraw`)."""
    earlier = record.earlier
    if (
        earlier is not None
        and not record.withdrawn
        and earlier.value is not None
        and record.value is None
        and record.status in (Status.FAILED, Status.SKIPPED, Status.CANCELLED)
        and record.same_input(earlier)
    ):
        record.value = earlier.value


def _since(born: float) -> float | None:
    return time.perf_counter() - born if born else None


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
