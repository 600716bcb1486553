"""The engine's exception hierarchy.

Two families, kept apart on purpose, and :class:`Skip`, which is neither:

* **Item errors** describe what happened to *one* input. They never stop a run: the per-item
  boundary (:func:`pipeline.calls.run_chain`, and the async lane in :mod:`pipeline.lanes`)
  turns them, and any exception a stage function raises, into a failed outcome after the
  stage's retries, which the recorder (:mod:`pipeline.recorder`) writes as a ``failed``
  record.

      ItemError
      ├── WorkerCrashed      a process worker died while it held the item (SIGKILL, segfault, OOM)
      ├── ItemTimeout        the item ran past its stage's ``timeout``
      ├── Unpicklable        the item, its result or its exception could not cross processes
      ├── SplitError         a Split where none can be: a part that splits again
      └── RemoteError        stand-in for an exception from a worker that could not be unpickled

* :class:`Skip` is raised by a stage function that looks at an item and declines it (a file
  whose content is not an image, below a minimum size): the item's record is ``skipped`` with
  the message as its reason and the stage, never retried, and not counted as a failure. (A
  stage that takes some *types* only says so with ``stage(..., accepts=...)`` instead: the
  other values never reach it.)

* **Run errors** stop the whole run with a typed error and a non-zero exit code; the ledger and
  ``summary.json`` are still written.

      PipelineError
      ├── DefinitionError    a stage or pipeline is defined wrongly (exit 2)
      ├── ConfigError        bad options or config file (exit 2)
      │   └── FolderBusy     another live run holds the output folder (exit 2)
      └── FatalRunError      the run cannot go on (exit 3)
          ├── CrashBudgetExceeded   more worker crashes than the budget allows
          ├── LedgerError           the ledger cannot be read or written
          └── OutOfSpace            an item failed because a disk (or quota) is full

A run stopped by Ctrl-C is not an error: it returns its result with ``interrupted`` set
(exit 130) after the ledger has been written.

Every exception here takes only string/int arguments so it pickles both ways.
"""

from __future__ import annotations

import errno

__all__ = [
    "ConfigError",
    "CrashBudgetExceeded",
    "DefinitionError",
    "FatalRunError",
    "FolderBusy",
    "ItemError",
    "ItemTimeout",
    "LedgerError",
    "OutOfSpace",
    "PipelineError",
    "RemoteError",
    "Skip",
    "SplitError",
    "Unpicklable",
    "Withdraw",
    "WorkerCrashed",
    "if_full",
    "is_out_of_space",
]


class ItemError(Exception):
    """Something went wrong with one item; recorded as ``failed``, the run goes on."""


class Skip(Exception):
    """Raised by a stage function: it declines this item; ``str(exc)`` says why.

    The item's record is ``skipped`` with that reason (``stage`` names the stage that declined
    it). Never retried, whatever the stage's ``retry_on``.

    An input declined by a later run keeps what earlier runs made of it (its record goes on
    listing those outputs): still a true picture of the input. See :class:`Withdraw`.
    """


class Withdraw(Skip):
    """A :class:`Skip` that also takes back what earlier runs made of the item: the reason is
    about the input itself, not this attempt (a site that opts out of AI use, found out by a
    run that no longer ignores it). The record is ``skipped`` and lists no earlier outputs;
    whatever removes outputs no record lists removes them."""


class SplitError(ItemError):
    """A :class:`~pipeline.Split` used where it cannot be: a part that splits again."""


class WorkerCrashed(ItemError):
    """The process worker holding the item died (killed, segfault, ``os._exit``)."""


class ItemTimeout(ItemError):
    """The item ran past its stage's timeout; a process worker running it was killed."""


class Unpicklable(ItemError):
    """The item, its result or its exception could not be pickled across processes."""


class RemoteError(ItemError):
    """An exception raised in a worker that could not be sent back as itself.

    ``error_type`` keeps the original class name so the ledger still says what happened.
    """

    def __init__(self, error_type: str, message: str, traceback: str = "") -> None:
        super().__init__(error_type, message, traceback)
        self.error_type = error_type
        self.message = message
        self.traceback = traceback

    def __str__(self) -> str:
        return f"{self.error_type}: {self.message}"


class PipelineError(Exception):
    """Base of the errors that stop a run or refuse a definition."""

    exit_code = 3


class DefinitionError(PipelineError, TypeError):
    """A stage or pipeline is defined in a way that cannot run (bad kind, unpicklable function)."""

    exit_code = 2


class ConfigError(PipelineError, ValueError):
    """An option or config file value is invalid."""

    exit_code = 2


class FolderBusy(ConfigError):
    """The output folder is held by another run that is still alive (see pipeline.folderlock)."""


class FatalRunError(PipelineError):
    """The run cannot continue; the ledger and summary are still written."""

    exit_code = 3


class CrashBudgetExceeded(FatalRunError):
    """More process workers crashed than the run's crash budget allows."""


class LedgerError(FatalRunError):
    """The ledger (manifest, journal, summary) cannot be read or written."""


class OutOfSpace(FatalRunError):
    """An item failed because a disk or a quota is full (``ENOSPC``, ``EDQUOT``): every item
    after it would fail the same way, so the run stops at the first (its record says
    ``failed``). Once there is room again, the same command resumes where it stopped."""


_AGAIN = "run the same command again"
#: How a run that stopped goes on: the end of the messages that say what to do first.
RESUMES = f"{_AGAIN}: it resumes where this run stopped"
#: What to do about a full disk, for the messages that say one is.
FREE_SPACE = f"free some space and {RESUMES}"
#: The same, before a run has done anything (there is nothing of it to resume).
FREE_SPACE_FIRST = f"free some space and {_AGAIN}"

_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_SQLITE_FULL = 13  # sqlite3.SQLITE_FULL ("database or disk is full"), without importing sqlite3


def is_out_of_space(exc: object) -> bool:
    """Whether ``exc``, or an exception it was raised from, says a disk or quota is full."""
    for _ in range(8):  # a chain of causes, never a cycle
        if not isinstance(exc, BaseException):
            return False
        if isinstance(exc, OSError) and exc.errno in _FULL:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def if_full(exc: BaseException, *, started: bool = True) -> str:
    """``"; <what to do>"`` when ``exc`` says the disk is full (the system's error, or SQLite's
    own), else ``""``: for the messages of the errors that stop a run; ``started=False`` for
    those that stop it before it began (it has nothing to resume)."""
    full = getattr(exc, "sqlite_errorcode", None) == _SQLITE_FULL or is_out_of_space(exc)
    return f"; {FREE_SPACE if started else FREE_SPACE_FIRST}" if full else ""
