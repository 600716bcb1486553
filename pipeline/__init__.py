"""pipeline: the engine of a staged batch pipeline (see README.md and the module docstrings).

Stages of four kinds (async, thread, process, inline) joined by bounded channels, a ledger that
records exactly one terminal outcome per input, per-stage metrics and progress bars. The engine
knows nothing about images: those stages live in the ``stages`` package.
"""

from __future__ import annotations

from .channel import Channel, EndOfStream
from .config import RunOptions
from .core import Pipeline, run_stage
from .errors import (
    ConfigError,
    CrashBudgetExceeded,
    DefinitionError,
    FatalRunError,
    ItemError,
    ItemTimeout,
    LedgerError,
    PipelineError,
    RemoteError,
    SplitError,
    Unpicklable,
    WorkerCrashed,
)
from .ledger import Ledger, atomic_write_bytes, atomic_write_text, read_manifest
from .metrics import StageSnapshot
from .records import Item, Record, Status
from .result import Collector, RunResult
from .split import Split
from .stage import Kind, Stage, stage

__version__ = "0.1.0"

__all__ = [
    "Channel",
    "Collector",
    "ConfigError",
    "CrashBudgetExceeded",
    "DefinitionError",
    "EndOfStream",
    "FatalRunError",
    "Item",
    "ItemError",
    "ItemTimeout",
    "Kind",
    "Ledger",
    "LedgerError",
    "Pipeline",
    "PipelineError",
    "Record",
    "RemoteError",
    "RunOptions",
    "RunResult",
    "Split",
    "SplitError",
    "Stage",
    "StageSnapshot",
    "Status",
    "Unpicklable",
    "WorkerCrashed",
    "__version__",
    "atomic_write_bytes",
    "atomic_write_text",
    "read_manifest",
    "run_stage",
    "stage",
]
