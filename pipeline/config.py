"""Run options: a frozen, keyword-only dataclass validated on creation.

The CLI maps its flags onto :class:`RunOptions` (and, for the ``process`` command, onto the
stages' own option objects); a TOML file supplies the same names, flags override the file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .records import Item, Record

if TYPE_CHECKING:
    from .backends import Backend

__all__ = ["Fingerprint", "RunOptions", "load_toml"]

#: The ``fingerprint`` option: one hash for the whole run, or a function of the key.
Fingerprint = str | Callable[[str], str | None] | None


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """How a run treats its output folder, its workers and the terminal: the one place the
    options are documented. ``Pipeline.run``, ``run_async`` and ``iter`` take them as keyword
    arguments of the same names.

    ``output``: the folder of the ledger (``manifest.jsonl``, ``summary.json``); None: no
    ledger, the records are only returned.
    ``resume``: do not process again keys whose earlier record is ``ok`` or ``reused``, whose
    ``fingerprint`` matches, whose input is the same (``source``, ``identity``) and for which
    ``is_done(record)`` holds (e.g. the outputs exist): they are recorded ``reused``, with the
    earlier result. Every terminal record has one status: ``ok`` (processed), ``failed``,
    ``skipped`` (not processed, ``reason`` says why), ``reused`` (done earlier, counts as done)
    or ``cancelled`` (in flight when the run stopped).
    ``retry_failed``: redo only keys whose earlier record is ``failed``; done ones are
    ``reused``, everything else is recorded ``skipped``. ``force``: redo everything.
    ``progress``: progress bars on stderr (None: when stderr is a terminal).
    ``crash_budget``: worker crashes tolerated before the run stops with exit 3.
    ``grace``: seconds in-flight items get to finish after Ctrl-C before they are cancelled.
    ``fingerprint`` is a string for the whole run, or a function of the key when inputs of
    different kinds depend on different options (changing an image option redoes images only).
    ``is_done(record)``: whether an earlier ``ok`` record's outputs are still there; asked too
    of a stage's earlier skip of an input without an identity (a URL): True settles it,
    skipped again (a training set's row that its shard holds), else it is redone.
    ``outdated(item, record)``: why an earlier done ``record`` does not settle ``item`` although
    the tests above pass (say its outputs are named otherwise than this run names them), or
    None; the item is redone, and its new record says why (``redo``).
    ``handle_signals``: ``Pipeline.run`` in the main thread owns SIGINT (Ctrl-C, above),
    SIGTERM (the same, exit 143) and SIGHUP (the same, exit 129; output to the terminal that
    hung up goes to ``/dev/null``: :mod:`pipeline.terminal`).
    ``stop_helpers``: ``Pipeline.run`` stops the process workers' forkserver and
    multiprocessing's resource tracker (:func:`pipeline.forkserver.shutdown`) once the run's
    workers are gone, before its end-of-run work (the collectors' results, the summary): their
    memory is freed that much sooner. They are told to exit and not waited for: the next
    ``shutdown()`` reaps them (``python -m pipeline`` calls it at its exit). For a program that
    runs one pipeline (``python -m pipeline``); a later run in the process starts new ones.
    Local backend only (a Dask cluster's processes may share the resource tracker).
    ``backend``: where the stage functions run (see :mod:`pipeline.backends`); None: this
    machine (:class:`~pipeline.backends.local.LocalBackend`).
    ``autoscale``: ``--workers auto``: every stage starts small and grows from measurements
    up to its ``workers`` (:mod:`pipeline.autoscale`).
    ``revisit``: after a run that saw all its inputs (not interrupted, no fatal error), called
    with every record in the folder's ledger that this run did not write (inputs it did not
    see); a record it returns replaces the old one (e.g. ``skipped``, reason "input gone").
    """

    output: Path | None = None
    resume: bool = True
    retry_failed: bool = False
    force: bool = False
    progress: bool | None = None
    crash_budget: int = 10
    grace: float = 2.0
    fingerprint: Fingerprint = None
    is_done: Callable[[Record], bool] | None = None
    outdated: Callable[[Item, Record], str | None] | None = None
    handle_signals: bool = True
    stop_helpers: bool = False
    backend: Backend | None = None
    autoscale: bool = False
    revisit: Callable[[Record], Record | None] | None = None

    def __post_init__(self) -> None:
        if self.retry_failed and self.force:
            raise ConfigError("retry_failed and force exclude each other")
        if self.crash_budget < 0:
            raise ConfigError("crash_budget must be >= 0")
        if self.grace < 0:
            raise ConfigError("grace must be >= 0 seconds")
        if self.retry_failed and self.output is None:
            raise ConfigError("retry_failed needs an output folder with a ledger")


def load_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a TOML config file into a plain dict; errors name the file."""
    import tomllib  # here: only a run with a config file pays for it (~4 ms at start-up)

    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path} is not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:  # TOML is UTF-8 (a file saved as UTF-16, Latin-1)
        raise ConfigError(f"config {path} is not valid TOML: not UTF-8 ({exc.reason})") from exc
    return data
