"""Records of inputs a run did not see (``revisit``, after a run that saw all its inputs):
the file gone, an array its ``.npz`` no longer holds, a list's bad line mended. Each becomes
``skipped`` with its reason, its earlier result kept (its outputs stay listed), so that the
folder's records say what is there; any other record stays as it is (an input excluded, or
not given this time).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable

from pipeline import Record, Status
from stages.storage import is_url
from stages.thumbs import without_outputs

__all__ = ["BAD_ENTRY_ERRORS", "REASON_GONE", "REASON_MEMBER_GONE", "mark_gone"]


#: The ``skipped`` reason of a key whose input file is no longer there.
REASON_GONE = "input gone: the file no longer exists (its outputs are kept)"
#: The ``skipped`` reason of an array of an ``.npz`` that no longer holds it.
REASON_MEMBER_GONE = "input gone: its .npz changed and no longer holds it (its figures are kept)"


def mark_gone(
    rec: Record,
    taken: Callable[[str], bool] | None = None,
    lists: frozenset[str] = frozenset(),
) -> Record | None:
    """For keys a run did not see: a record whose input file is gone becomes ``skipped`` with
    :data:`REASON_GONE` (its earlier result kept, so its outputs stay listed); others stay.
    ``taken(path)``: whether a current input's output now has that name (or one that differs
    only in case: :meth:`app.stale.StaleOutputs.taken`): the gone record stops listing it.
    ``lists``: this run's ``--urls``, read whole: the failure of a bad entry of one of them
    that the run did not see (the line mended, or gone) is no longer a failure."""
    if rec.identity is None:  # not a file (a URL; a list's bad entry)
        return _mended_entry(rec, lists)
    reason = rec.reason
    known = reason in (REASON_GONE, REASON_MEMBER_GONE)
    if not known:
        if not _input_exists(rec.source):
            reason = REASON_GONE
        elif _member_gone(rec):
            reason = REASON_MEMBER_GONE
        else:
            return None
    value = rec.value if taken is None else without_outputs(rec.value, taken)
    if known and value is rec.value:
        return None
    return Record(
        key=rec.key,
        status=Status.SKIPPED,
        source=rec.source,
        reason=reason,
        value=value,
        meta=rec.meta,
        fingerprint=rec.fingerprint,
        identity=rec.identity,
    )


#: The errors of a list's or a table's bad entry (:mod:`stages.fetching`, :mod:`stages.samples`),
#: keyed ``LIST#lineN`` / ``TABLE#rowN``.
BAD_ENTRY_ERRORS = ("BadUrlListEntry", "BadTableRow")


def _mended_entry(rec: Record, lists: frozenset[str]) -> Record | None:
    """A bad entry's failure, of a list this run read whole without finding it bad there
    again: ``skipped``, with the reason (``failures`` no longer lists it)."""
    if rec.status is not Status.FAILED or rec.error_type not in BAD_ENTRY_ERRORS:
        return None
    where, _, entry = rec.key.rpartition("#")
    if where not in lists:
        return None
    return Record(
        key=rec.key,
        status=Status.SKIPPED,
        source=rec.source,
        reason=f"bad entry gone: {where} has no bad entry at {entry} any more",
        meta=rec.meta,
    )


def _member_gone(rec: Record) -> bool:
    """Whether ``rec`` is an array of an ``.npz`` (key ``FILE:NAME``) that changed since: the
    run, which did not see the key, read the file's arrays anew (or found it unreadable)."""
    file_key, colon, _ = rec.key.rpartition(":")
    source = rec.source
    if not colon or not source.lower().endswith(".npz") or not source.endswith(file_key):
        return False
    if is_url(source):
        return False
    try:
        st = os.stat(source)
    except OSError:
        return False
    had = rec.identity or {}
    return (had.get("size"), had.get("mtime_ns")) != (st.st_size, st.st_mtime_ns)


def _input_exists(source: str) -> bool:
    if is_url(source):  # an object at a storage URL (stages.storage)
        from stages.storage import object_size

        return object_size(source) is not None
    try:  # a folder by the name of the input file it was: the file is gone
        return not stat.S_ISDIR(os.lstat(source).st_mode)
    except OSError:  # not there, or a folder on its path is a file now
        return False
