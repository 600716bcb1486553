"""Items that flow through a pipeline and the terminal records the ledger keeps.

An :class:`Item` is the envelope a stage receives: a stable ``key`` (what the ledger is indexed
by), a human ``source`` (a path or URL) and the ``value`` the stage functions transform. Stage
functions only ever see and return ``value``; the envelope is the engine's.

A :class:`Record` is the one terminal outcome of a key (:class:`Status`): ``ok``, ``failed``,
``skipped``, ``reused`` or ``cancelled``. ``Record.to_json()`` is the manifest line (format in the
README); :meth:`Record.from_json` and :func:`upgrade` read older lines as today's.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .names import from_b64, is_clean, text_safe, with_raw

__all__ = [
    "LEGACY_DONE",
    "Item",
    "Record",
    "Status",
    "as_item",
    "jsonable",
    "same_identity",
    "upgrade",
]


class Status(StrEnum):
    """The terminal statuses of a key; ``ok`` and ``reused`` count as done (exit code 0).

    * ``ok`` — processed by this run; ``result`` is what it made.
    * ``failed`` — processed and failed: ``stage``, ``error_type``, ``error``, ``attempts``.
    * ``skipped`` — not processed, and ``reason`` says why (not an image, a special file, declined
      by a stage, not retried, input gone).
    * ``reused`` — done by an earlier run and unchanged (resume): not processed again; the record
      keeps the earlier ``result`` (its outputs and statistics), options and input identity, so
      it is as good as the ``ok`` record it continues, for the tables and for the next resume.
    * ``cancelled`` — in flight when the run was stopped (``reason``).
    """

    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"
    REUSED = "reused"
    CANCELLED = "cancelled"


#: The ``reason`` of a ``skipped`` record that earlier versions wrote for a resumed, done key:
#: such a record is read as ``reused`` (:func:`upgrade`).
LEGACY_DONE = "already done"


def upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """A manifest record as today's version writes it: an older ``skipped`` record with reason
    ``already done`` (and no stage) becomes ``reused`` without a reason. Changed in place and
    returned; anything else is returned untouched."""
    if (
        data.get("status") == "skipped"
        and data.get("reason") == LEGACY_DONE
        and data.get("stage") is None
    ):
        data["status"] = "reused"
        del data["reason"]
    return data


@dataclass(slots=True)
class Item:
    """One input on its way through the stages.

    ``meta`` travels with the item into its record (for example the columns of a URL list);
    keep it small and JSON-serialisable. ``identity`` says which content the key stands for
    this time (for a file: its size and ``mtime_ns``, optionally a hash): resume redoes a key
    whose identity (or source) is not the one its earlier record names. None: not known (a URL
    before it is fetched), and resume goes by the key alone. ``fingerprint``: the hash of the
    options this item's result depends on, when the source knows it better than the run's
    ``fingerprint`` option (inputs of several kinds in one run). The parts of a split item are
    :class:`~pipeline.joins.Part` items.
    """

    key: str
    value: Any
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    identity: dict[str, Any] | None = None
    fingerprint: str | None = None
    redo: str | None = None  # why an item with an earlier record runs again (the record says)
    born: float = 0.0  # perf_counter when it left the source; for per-item durations
    attempts: int = 1  # the most attempts any stage needed so far
    bypassed: int = 0  # bit i set: stage i did not accept the value on the way (routing by type)


def as_item(obj: Any, index: int) -> Item:
    """Wrap a raw input in an :class:`Item` with a stable key.

    Strings and paths are their own key; an ``Item`` is kept; a ``(key, value)`` tuple gives its
    key; anything else is keyed by its position in the input (``#000000042``).
    """
    if isinstance(obj, Item):
        return obj
    if isinstance(obj, str):
        return Item(key=obj, value=obj, source=obj)
    if isinstance(obj, os.PathLike):
        path = os.fspath(obj)
        return Item(key=str(path), value=obj, source=str(path))
    if isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], str):
        return Item(key=obj[0], value=obj[1], source=obj[0])
    return Item(key=f"#{index:09d}", value=obj, source="")


#: What ``json.dumps`` takes (and subclasses); anything else it refuses outright.
_JSON_TYPES = (dict, list, tuple, str, int, float, type(None))


def jsonable(value: Any) -> Any:
    """Return ``value`` if it survives ``json.dumps`` (finite floats only), else ``None``."""
    if not isinstance(value, _JSON_TYPES):
        return None  # an object: refused outright, no need to try
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return None
    return value


@dataclass(slots=True)
class Record:
    """The terminal outcome of one input key; one line of ``manifest.jsonl``."""

    key: str
    status: Status
    source: str = ""
    stage: str | None = None
    error_type: str | None = None
    error: str | None = None
    attempts: int = 0
    value: Any = None
    reason: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    duration: float | None = None
    finished: float = field(default_factory=time.time)
    run: str = ""
    fingerprint: str | None = None
    identity: dict[str, Any] | None = None
    redo: str | None = None
    #: For a key this run redid: the earlier record it replaces, as the ledger held it (not in
    #: the manifest; for collectors, say to remove earlier outputs the new record does not list).
    earlier: Record | None = field(default=None, repr=False, compare=False)
    #: A skip that takes back what earlier runs made of the input (:class:`~pipeline.Withdraw`;
    #: not in the manifest: the earlier outputs go at the end of this run).
    withdrawn: bool = field(default=False, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    def same_input(self, earlier: Record) -> bool:
        """Whether this record's input is ``earlier``'s: the same source, and the same identity
        where both have one."""
        if self.source != earlier.source:
            return False
        if None in (self.identity, earlier.identity):
            return True
        assert self.identity is not None
        return same_identity(earlier.identity, self.identity)

    def to_line(self) -> str:
        """The manifest line as text, serialised once in the usual case.

        A result that is no JSON at all (an object) goes straight to the checked form, without
        it; only when the result or meta fails inside (NaN, an object in a list) is the record
        built again with those fields checked one by one, as :meth:`to_json` does.
        """
        line = None
        if isinstance(self.value, _JSON_TYPES):  # else no JSON at all (an object): not tried
            with contextlib.suppress(TypeError, ValueError):
                line = _dumps_line(self.to_json(checked=False))
        if line is None:
            line = _dumps_line(self.to_json())
        if is_clean(line):
            return line
        # a name from the file system that is not UTF-8, in a message or a result: shown
        # escaped (keys, sources and output paths carry their exact bytes in *_b64 fields)
        return json.dumps(text_safe(self.to_json()), ensure_ascii=False, allow_nan=False)

    def to_json(self, *, checked: bool = True) -> dict[str, Any]:
        """The manifest line: only fields that say something, plus ``result`` when JSON-able.

        ``checked=False`` skips the per-field JSON checks (:meth:`to_line` serialises once and
        falls back to the checked form when that fails).
        """
        out: dict[str, Any] = {}
        with_raw(out, "key", self.key)
        with_raw(out, "source", self.source)
        out["status"] = str(self.status)
        if self.status is Status.FAILED:
            out.update(
                stage=self.stage,
                error_type=self.error_type,
                error=self.error,
                attempts=self.attempts,
            )
        elif self.attempts > 1:  # retried, then succeeded
            out["attempts"] = self.attempts
        if self.status is Status.SKIPPED and self.stage is not None:  # declined by that stage
            out["stage"] = self.stage
        if self.reason is not None:
            out["reason"] = self.reason
        if self.redo is not None:
            out["redo"] = self.redo
        result = jsonable(self.value) if checked else self.value
        if result is not None:
            out["result"] = result
        if self.meta:
            meta = jsonable(self.meta) if checked else self.meta
            out["meta"] = meta or {k: str(v) for k, v in self.meta.items()}
        if self.duration is not None and math.isfinite(self.duration):
            out["duration"] = round(self.duration, 6)
        out["finished"] = round(self.finished, 3)
        if self.run:
            out["run"] = self.run
        if self.fingerprint is not None:
            out["fingerprint"] = self.fingerprint
        if self.identity is not None:
            out["identity"] = self.identity
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Record:
        """The record of a manifest line (an older one upgraded, see :func:`upgrade`)."""
        data = upgrade(dict(data))
        key_b64, source_b64 = data.get("key_b64"), data.get("source_b64")
        identity = data.get("identity")
        return cls(
            key=from_b64(key_b64) if isinstance(key_b64, str) else str(data["key"]),
            status=Status(data["status"]),
            source=from_b64(source_b64)
            if isinstance(source_b64, str)
            else str(data.get("source", "")),
            stage=data.get("stage"),
            error_type=data.get("error_type"),
            error=data.get("error"),
            attempts=int(data.get("attempts", 0)),
            value=data.get("result"),
            reason=data.get("reason"),
            meta=dict(data.get("meta") or {}),
            duration=data.get("duration"),
            finished=float(data.get("finished", 0.0)),
            run=str(data.get("run", "")),
            fingerprint=data.get("fingerprint"),
            identity=identity if isinstance(identity, dict) else None,
            redo=data.get("redo"),
        )


def _no_default(obj: Any) -> Any:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


#: ``json.dumps(obj, ensure_ascii=False, allow_nan=False)``'s encoder, made once rather than per
#: line (json.dumps with options builds a JSONEncoder and its C encoder on every call: ~20% of
#: a manifest line's serialisation). None where the C accelerator is missing.
_make_encoder: Callable[..., Callable[[Any, int], list[str]]] | None = getattr(
    json.encoder, "c_make_encoder", None
)
_LINE_ENCODER = (
    _make_encoder(
        None, _no_default, json.encoder.encode_basestring, None, ": ", ", ", False, False, False
    )
    if _make_encoder is not None
    else None
)


def _dumps_line(obj: dict[str, Any]) -> str:
    """``json.dumps(obj, ensure_ascii=False, allow_nan=False)``, the same text and errors
    (TypeError for what JSON cannot hold, ValueError for NaN, infinities and a circular
    reference), faster."""
    if _LINE_ENCODER is None:
        return json.dumps(obj, ensure_ascii=False, allow_nan=False)
    try:
        return "".join(_LINE_ENCODER(obj, 0))
    except RecursionError as exc:  # no markers (as check_circular=False): json.dumps says so
        raise ValueError("Circular reference detected") from exc


#: Identity fields that only some runs take (``--verify-content``'s SHA-256): compared only
#: when both sides have them.
OPTIONAL_IDENTITY = ("sha256",)


def same_identity(before: dict[str, Any] | None, now: dict[str, Any]) -> bool:
    """Whether an input's identity is unchanged: every field both have is equal, and the
    others are optional ones (an earlier run without ``--verify-content``, or this one)."""
    if before == now:
        return True
    if before is None:
        return False
    fields = {*before, *now}
    if any(k not in OPTIONAL_IDENTITY for k in fields if (k in before) != (k in now)):
        return False
    return all(before[k] == now[k] for k in fields if k in before and k in now)
