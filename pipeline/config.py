"""Run options: a frozen, keyword-only dataclass validated on creation.

The CLI maps its flags onto :class:`RunOptions` (and, for the ``process`` command, onto the
stages' own option objects); a TOML file supplies the same names, flags override the file.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .records import Record

__all__ = ["RunOptions", "load_toml"]


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """How a run treats its output folder, its workers and the terminal.

    ``resume``: skip keys whose earlier record is ``ok`` (or skipped as already done), whose
    ``fingerprint`` matches and for which ``is_done(record)`` holds (e.g. the outputs exist).
    ``fingerprint`` is a string for the whole run, or a function of the key when inputs of
    different kinds depend on different options (changing an image option redoes images only).
    ``retry_failed``: redo only keys whose earlier record is ``failed``; everything else is
    recorded ``skipped``. ``force``: redo everything.
    ``crash_budget``: worker crashes tolerated before the run stops with exit 3.
    ``grace``: seconds in-flight items get to finish after Ctrl-C before they are cancelled.
    ``backend``: run the stage functions elsewhere (see :mod:`pipeline.backends`).
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
    fingerprint: str | Callable[[str], str | None] | None = None
    is_done: Callable[[Record], bool] | None = None
    handle_signals: bool = True
    backend: Any = None  # a pipeline.backends.Backend; None runs everything on this machine
    autoscale: bool = False  # --workers auto: start small, grow from measurements
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
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path} is not valid TOML: {exc}") from exc
    return data
