"""The temporary files a run cut short leaves in its output folder, removed by the next run.

Every file is written to a temporary name (``.pp-XXXXXXXX.tmp``, :mod:`pipeline.atomic`) and
renamed into place, so a reader never sees half a file; a process killed mid-write leaves its
temporary file behind instead:

* the parent's (its tables, the ledger's export, the near-duplicate hashes) are at the top of
  the output folder: every run removes them when it starts (cheap: one folder);
* a worker's (a thumbnail) sits beside the thumbnail, anywhere below: the folder's whole tree is
  swept only when such a file can be there: at the end of a run in which a worker died (a
  crash, a timeout kill), was stopped (Ctrl-C) or the run failed, and at the start of a run
  after one that never finished (killed outright: its ``summary.json`` still says
  ``"finished": false``).

Both happen while the run holds the folder (:func:`pipeline.hold_folder`) and no worker of it
runs: no other writer can be using those names. Only regular files with that exact pattern are
removed; the ledger's own folder (``.pipeline``) is left alone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

from pipeline import RunResult
from pipeline.atomic import is_temp_name

__all__ = ["after_run", "remove_stale_temps", "unfinished"]

log = logging.getLogger("app")

#: The ledger's folder in an output folder: never swept.
LEDGER_FOLDER = ".pipeline"


def _is_temp(entry: os.DirEntry[str]) -> bool:
    return is_temp_name(entry.name) and entry.is_file(follow_symlinks=False)


def remove_stale_temps(folder: Path, *, below: bool = False) -> list[str]:
    """Remove the temporary files a run cut short left at the top of ``folder`` (and, with
    ``below``, in every folder under it); their paths relative to ``folder``. Call it while the
    folder is held and none of the run's workers runs."""
    removed: list[str] = []
    pending = [folder]
    while pending:
        current = pending.pop()
        try:
            entries = list(os.scandir(current))
        except (FileNotFoundError, NotADirectoryError):  # removed meanwhile: nothing to sweep
            continue
        for entry in entries:
            if _is_temp(entry):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed.append(os.path.relpath(entry.path, folder))
            elif below and entry.is_dir(follow_symlinks=False) and entry.name != LEDGER_FOLDER:
                pending.append(Path(entry.path))
    if removed:
        log.info("removed %d temporary file(s) of a run cut short in %s", len(removed), folder)
    return removed


def unfinished(folder: Path) -> bool:
    """Whether the last run into ``folder`` never finished: its ``summary.json``, written at its
    start, still says ``"finished": false`` (a run killed outright)."""
    try:
        summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):  # no run yet, or a summary cut short: nothing to go by
        return False
    return isinstance(summary, dict) and summary.get("finished") is False


def after_run(folder: Path, result: RunResult) -> list[str]:
    """Sweep ``folder``'s tree when a worker of the run that gave ``result`` may have been
    stopped mid-write (see the module docstring); else nothing."""
    if result.crashes or result.interrupted or result.error is not None:
        return remove_stale_temps(folder, below=True)
    return []
