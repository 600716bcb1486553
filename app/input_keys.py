"""The inputs an output folder's runs knew and their keys: ``.pipeline/inputs.json``.

A file's key is its path below its input folder, prefixed by the folder's name when the command
line names several inputs (:mod:`stages.sources`). Taken from the command line alone, the keys
of the same files would change with the inputs beside them: ``process a -o out`` keys ``a``'s
files ``x.jpg``, a later ``process a b -o out`` would key them ``a/x.jpg``, process every one
of them again and write its outputs a second time (``out/256/a/x.jpg`` beside
``out/256/x.jpg``). So each run into a folder remembers its inputs (real paths, or URLs) and
their keys here, and the next run gives an input it knew the same key
(:func:`stages.sources.plan_inputs`, which says what a new input beside them is keyed by).
The file is written before the walk starts, whole or not at all
(:func:`pipeline.atomic_write_text`); the folder lock is held (one run at a time).

Delete the file to have the next run key its inputs from its command line alone (with a new
layout, every file is processed again).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline import LedgerError, atomic_write_text, shown
from stages.sources import InputKey, InputPlan

__all__ = ["INPUTS_FILE", "earlier_inputs", "remember_inputs"]

log = logging.getLogger("app")

#: Where a folder keeps its runs' inputs, below the output folder.
INPUTS_FILE = Path(".pipeline") / "inputs.json"

_VERSION = 1


def earlier_inputs(folder: Path) -> list[InputKey]:
    """The inputs the earlier runs into ``folder`` knew (none for a new folder).

    :class:`~pipeline.LedgerError` when the file is there but cannot be read as one: keying the
    inputs afresh could process every file a second time, so the run does not guess."""
    path = folder / INPUTS_FILE
    try:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise LedgerError(f"cannot read {path}: {exc}") from exc
    try:
        doc = json.loads(text)
        version = doc.get("version")
        if version != _VERSION:
            raise ValueError(f"version {version!r}, this program reads version {_VERSION}")
        return [_entry(e) for e in doc["inputs"]]
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise LedgerError(
            f"{path} cannot be read ({type(exc).__name__}: {exc}): it says which key each earlier "
            "input's files have in this folder; delete it to key the inputs from this command "
            "line alone (files whose key changes are processed again)"
        ) from exc


def _entry(e: Any) -> InputKey:
    real, folder, key = e["real"], e["folder"], e["key"]
    if not (isinstance(real, str) and isinstance(folder, bool) and isinstance(key, str)):
        raise TypeError(f"not an input: {e!r}")
    return InputKey(real, folder, key)


def remember_inputs(folder: Path, plan: InputPlan, earlier: Sequence[InputKey]) -> None:
    """Write what ``plan`` says the folder knows, when that is not ``earlier`` (what it knew),
    and then say which input keeps (or takes) another key than its command line alone gives."""
    if set(plan.known) == set(earlier):
        return
    knew = {k.real: k.key for k in earlier}
    for root, key, alone in plan.changed:
        had = knew.get(root.real)
        if had is not None and had != key:
            continue  # keyed anew: said below
        keeps = had is not None
        log.warning(
            "input %s %s %s in this output folder (this command line alone would give %s): a "
            "folder's inputs keep their keys from run to run; see README, 'Keys'",
            shown(root.path),
            "keeps the key" if keeps else "takes the key",
            _shown_key(key) + (" it has" if keeps else ""),
            _shown_key(alone),
        )
    for root in plan.roots:
        had = knew.get(root.real)
        if had is not None and had != root.prefix:
            log.warning(
                "input %s takes the key %s instead of its %s: another input folder now holds "
                "an entry of that name, whose files' keys its files had; its files are "
                "processed again under the new key",
                shown(root.path),
                _shown_key(root.prefix),
                _shown_key(had),
            )
    entries = [{"real": k.real, "folder": k.folder, "key": k.key} for k in plan.known]
    text = json.dumps({"version": _VERSION, "inputs": entries}, indent=1) + "\n"
    # ensure_ascii (json's default) writes an undecodable byte of a name as its \udcXX escape
    atomic_write_text(folder / INPUTS_FILE, text)


def _shown_key(key: str) -> str:
    """A folder's prefix (``a/...``, ``no prefix``) or a file's key, for people."""
    if not key:
        return "prefix '' (no prefix)"
    return f"prefix {shown(key)!r}" if key.endswith("/") else repr(shown(key))
