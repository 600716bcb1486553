"""Resume: whether an input's earlier record settles it, or it is processed (again).

Done means: an ``ok`` or ``reused`` record made with the same options (fingerprint) from the
same input (source, or another path of the same file, or the same content moved; and identity,
when the source gives one), whose outputs are still there (``is_done``), under the names this run
gives them (``outdated``). A done input is recorded ``reused``: the earlier result (outputs,
statistics), options and identity carried over, so the new record is done in its turn. A redone
input's new record carries the one it replaces (``Record.earlier``, for the collectors). A
stage's earlier skip of the same input (same options and identity: a file that is not an image)
settles it too, ``skipped`` again with the same reason. ``retry_failed`` redoes only failures;
``force`` redoes everything. The feeder asks :meth:`ResumePolicy.decide` for every input of a
run with a ledger. (Older ledgers said ``skipped`` / ``already done`` for ``reused``: they are
read as ``reused``, see :func:`pipeline.records.upgrade`.)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from .config import RunOptions
from .names import shown
from .records import Item, Record, Status, same_identity

__all__ = ["NOT_RETRIED", "ResumePolicy", "reused"]

NOT_RETRIED = "not retried: no earlier failure (--retry-failed)"


class ResumePolicy:
    """The resume options of a run, applied to one input and its earlier record at a time."""

    def __init__(
        self, opts: RunOptions, fingerprint: Callable[[str, Item | None], str | None]
    ) -> None:
        self.opts = opts
        self.fingerprint = fingerprint
        #: whether :meth:`decide` may look at the file system (``is_done``, ``outdated``): the
        #: feeder then asks from a helper thread
        self.looks_at_outputs = opts.is_done is not None or opts.outdated is not None

    def decide(self, item: Item, prev: Record | None) -> Record | None:
        """None to process the item (``item.redo`` says why, when it has a record), or the
        record that settles it without work."""
        opts = self.opts
        if prev is None:
            if opts.retry_failed and not opts.force:
                return skipped(item, NOT_RETRIED)
            return None
        if opts.force:
            item.redo = "force"
            return None
        stale = self.stale(item, prev)
        if stale is None:
            if declined(prev):  # a stage declined this very input before: it would again
                return skipped(item, prev.reason or "declined by the stage", prev, stage=prev.stage)
            return reused(item, prev)
        if opts.retry_failed and prev.status is not Status.FAILED:
            # not redone, whatever changed: only failures are; "reused" only when it is done
            return skipped(item, NOT_RETRIED if not done(prev) else f"not retried: {stale}", prev)
        item.redo = stale
        return None

    @staticmethod
    def _same_input(prev: Record, item: Item) -> bool:
        """Whether ``item``, from another source than ``prev``'s, is the same input all the
        same: another path of the same file, or a file whose content proves it (its folder
        renamed, a drive mounted elsewhere, with ``--verify-content``: the same SHA-256, size
        and ``mtime_ns``). Size and ``mtime_ns`` alone prove nothing across paths: files
        unpacked from archives share made-up times, and arrays of one shape share sizes."""
        if same_file(prev.source, item.source):
            return True
        earlier = prev.identity
        return earlier is not None and "sha256" in earlier and earlier == item.identity

    def _kept(self, prev: Record) -> bool:
        """Whether a stage's earlier skip of an input without an identity left something that
        is still there (``is_done``: a training set's row, in its shard as a skipped row):
        it settles the input, as an ``ok`` record of such an input does. Else such a skip is
        redone: the input may have changed."""
        return self.opts.is_done is not None and self.opts.is_done(prev)

    def stale(self, item: Item, prev: Record) -> str | None:
        """Why the earlier record ``prev`` does not settle ``item`` (None: it is done)."""
        opts = self.opts
        if declined(prev) and item.identity is None and not self._kept(prev):
            return "earlier record skipped"  # without an identity, the input may have changed
        if not (done(prev) or declined(prev)):
            what = f" ({prev.error_type})" if prev.status is Status.FAILED else ""
            return f"earlier record {prev.status}{what}"
        if not opts.resume:
            return "resume off"
        fingerprint = self.fingerprint(item.key, item)
        if fingerprint is not None and prev.fingerprint != fingerprint:
            return "options changed"
        if item.identity is not None:
            if prev.source != item.source and not self._same_input(prev, item):
                return f"another input under this key (was {shown(prev.source)})"
            if not same_identity(prev.identity, item.identity):
                return changed(prev.identity, item.identity)
        if declined(prev):  # (kept without an identity: asked whether it is outdated too)
            if item.identity is None and opts.outdated is not None:
                return opts.outdated(item, prev)
            return None
        if opts.outdated is not None:
            why = opts.outdated(item, prev)
            if why is not None:
                return why
        if opts.is_done is not None and not opts.is_done(prev):
            return "earlier outputs missing or changed"
        return None


def skipped(
    item: Item, reason: str, prev: Record | None = None, *, stage: str | None = None
) -> Record:
    """``item`` settled without work; an earlier record's result, options and input kept, and
    its meta under the item's (a training set's skipped row: where its shard row is)."""
    return Record(
        key=item.key,
        status=Status.SKIPPED,
        source=item.source,
        stage=stage,
        reason=reason,
        value=prev.value if prev is not None else None,
        meta={**prev.meta, **item.meta} if prev is not None else item.meta,
        fingerprint=prev.fingerprint if prev is not None else None,
        identity=prev.identity if prev is not None else None,
    )


def reused(item: Item, prev: Record) -> Record:
    """``item`` done by an earlier run (``prev``, ``ok`` or ``reused``) and unchanged: its result,
    options and input identity carried over."""
    return Record(
        key=item.key,
        status=Status.REUSED,
        source=item.source,
        value=prev.value,
        meta=item.meta or prev.meta,
        fingerprint=prev.fingerprint,
        identity=_known(prev.identity, item.identity),
    )


def _known(before: dict[str, Any] | None, now: dict[str, Any] | None) -> dict[str, Any] | None:
    """A reused record's identity: all that is known of the unchanged input (a SHA-256 taken
    by this run or an earlier one is kept for the next that compares content)."""
    if before is None or now is None:
        return before if now is None else now
    return before if now.keys() <= before.keys() else {**before, **now}


def done(prev: Record) -> bool:
    """An earlier record that says the item was made: ``ok`` or ``reused``."""
    return prev.status in (Status.OK, Status.REUSED)


def declined(prev: Record) -> bool:
    """An earlier record of a stage that declined the input (raised :class:`Skip`)."""
    return prev.status is Status.SKIPPED and prev.stage is not None


def same_file(a: str, b: str) -> bool:
    """Whether the sources ``a`` and ``b`` are two paths of one file: the input folder given
    through a symlink to it (``/data`` and ``/mnt/disk1/data``), or spelled another way. Two
    ``stat`` calls, made only for sources that differ; False for anything that is not a local
    file there now (a URL, an object in storage, a file gone)."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):  # ValueError: a NUL in a string that is no path
        return False


def changed(before: dict[str, Any] | None, now: dict[str, Any]) -> str:
    """The record's ``redo`` for an input whose identity changed: which fields did."""
    if before is None:
        return "input changed (no identity in the earlier record)"
    fields = sorted(k for k in {*before, *now} if before.get(k) != now.get(k))
    return f"input changed ({', '.join(fields)})"
