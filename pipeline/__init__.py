"""pipeline: the engine of a staged batch pipeline (see README.md and the module docstrings).

Stages of four kinds (async, thread, process, inline) joined by bounded channels, each item
routed through the stages that accept its type, a ledger that records exactly one terminal
outcome per input, per-stage metrics and progress bars; where the stage functions run is a
backend's choice (this machine, or a Dask cluster). The engine knows nothing about images:
those stages live in the ``stages`` package. How a run is organised: :mod:`pipeline.runner`.

The names below are imported on first use (PEP 562), so ``import pipeline`` costs nothing: a
process worker that needs only :class:`Split` and the worker loop never imports asyncio, the
ledger or tqdm, and ``python -m pipeline`` can start the workers' forkserver before the engine
is imported at all.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .atomic import AtomicFile, atomic_write_bytes, atomic_write_text
    from .channel import Channel, EndOfStream
    from .config import RunOptions
    from .core import Pipeline, run_stage
    from .errors import (
        ConfigError,
        CrashBudgetExceeded,
        DefinitionError,
        FatalRunError,
        FolderBusy,
        ItemError,
        ItemTimeout,
        LedgerError,
        OutOfSpace,
        PipelineError,
        RemoteError,
        Skip,
        SplitError,
        Unpicklable,
        Withdraw,
        WorkerCrashed,
    )
    from .folderlock import hold_folder
    from .forkserver import shutdown
    from .ledger import Ledger, read_manifest, read_manifest_at, scan_manifest
    from .metrics import StageSnapshot
    from .names import from_b64, printable, shown, text_safe
    from .records import Item, Record, Status
    from .result import Collector, RunResult
    from .split import Split
    from .summary import FolderCollector

# Eager: the submodule ``pipeline.stage`` would otherwise shadow the function ``stage`` (importing
# a submodule sets the package attribute of its name, and then __getattr__ is never asked).
from .stage import Kind, Stage, stage

__version__ = "0.1.0"

_WHERE = {
    "Channel": "channel",
    "EndOfStream": "channel",
    "RunOptions": "config",
    "Pipeline": "core",
    "run_stage": "core",
    "ConfigError": "errors",
    "CrashBudgetExceeded": "errors",
    "DefinitionError": "errors",
    "FatalRunError": "errors",
    "ItemError": "errors",
    "ItemTimeout": "errors",
    "LedgerError": "errors",
    "OutOfSpace": "errors",
    "PipelineError": "errors",
    "RemoteError": "errors",
    "Skip": "errors",
    "SplitError": "errors",
    "Unpicklable": "errors",
    "Withdraw": "errors",
    "WorkerCrashed": "errors",
    "FolderBusy": "errors",
    "hold_folder": "folderlock",
    "shutdown": "forkserver",
    "Ledger": "ledger",
    "read_manifest": "ledger",
    "read_manifest_at": "ledger",
    "scan_manifest": "ledger",
    "from_b64": "names",
    "shown": "names",
    "text_safe": "names",
    "printable": "names",
    "AtomicFile": "atomic",
    "atomic_write_bytes": "atomic",
    "atomic_write_text": "atomic",
    "StageSnapshot": "metrics",
    "Item": "records",
    "Record": "records",
    "Status": "records",
    "Collector": "result",
    "FolderCollector": "summary",
    "RunResult": "result",
    "Split": "split",
}

__all__ = [
    "AtomicFile",
    "Channel",
    "Collector",
    "ConfigError",
    "CrashBudgetExceeded",
    "DefinitionError",
    "EndOfStream",
    "FatalRunError",
    "FolderBusy",
    "FolderCollector",
    "Item",
    "ItemError",
    "ItemTimeout",
    "Kind",
    "Ledger",
    "LedgerError",
    "OutOfSpace",
    "Pipeline",
    "PipelineError",
    "Record",
    "RemoteError",
    "RunOptions",
    "RunResult",
    "Skip",
    "Split",
    "SplitError",
    "Stage",
    "StageSnapshot",
    "Status",
    "Unpicklable",
    "Withdraw",
    "WorkerCrashed",
    "__version__",
    "atomic_write_bytes",
    "atomic_write_text",
    "from_b64",
    "hold_folder",
    "printable",
    "read_manifest",
    "read_manifest_at",
    "run_stage",
    "scan_manifest",
    "shown",
    "shutdown",
    "stage",
    "text_safe",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # the next lookup is a plain module attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})
