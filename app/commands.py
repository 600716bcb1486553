"""The commands: ``process``, ``profile`` (a ``process`` run over a sample, stage figures only),
``failures`` (the failed inputs of an output folder, from its manifest) and ``demo`` (the engine
alone). :func:`add_commands` adds them to the parser of :mod:`app.cli`;
each command is a function of the parsed arguments that returns the exit code.

The options of ``process`` and ``profile`` are declared once, on
:class:`~app.config.ProcessConfig`; their flags come from there (:func:`app.options.add_arguments`).
Only what is not an option of a run is declared here: ``--config``, ``--verbose``, ``--sample``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import ProcessConfig, check_path, config_from_args
from .options import Integer, add_arguments
from .warmup import warm_up

__all__ = ["COMMANDS", "add_commands"]


def _process(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    warm_up(args.backend, args.config)
    from stages.storage import is_url

    from .console import print_summary
    from .process import run_process

    cfg = config_from_args(args)
    result = run_process(cfg, stop_helpers=True)  # one run in this process
    stored_at = cfg.output if is_url(cfg.output) else None
    print_summary(
        result, quiet=cfg.quiet, elapsed=time.perf_counter() - started, stored_at=stored_at
    )
    return result.exit_code


def _profile(args: argparse.Namespace) -> int:
    warm_up(args.backend, args.config)
    import dataclasses
    import tempfile

    from .console import print_profile
    from .process import run_process

    cfg = config_from_args(args)
    with tempfile.TemporaryDirectory(prefix="pixpipe-profile-") as tmp:
        cfg = dataclasses.replace(cfg, output=tmp, force=True, retry_failed=False)
        result = run_process(cfg, limit=args.sample, stop_helpers=True)
    print_profile(result)
    return 0 if result.error is None else 3


def _add_process(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "process",
        help="make thumbnails and statistics for every image in input folders",
        description="Walk INPUTS, write resized images under OUTPUT/<size>/ mirroring the input "
        "tree, and record one line per input in OUTPUT/manifest.jsonl. Re-running into the same "
        "OUTPUT resumes. Options may come from --config run.toml (keys: the flags' names, "
        "flags win).",
    )
    _add_options(p)
    p.set_defaults(func=_process)
    prof: argparse.ArgumentParser = sub.add_parser(
        "profile",
        help="run a short sample of the inputs and print only the stage profile and advice",
        description="Process the first --sample inputs into a temporary folder (discarded) and "
        "print each stage's figures, the bottleneck and a verdict per stage: I/O-bound, "
        "CPU-bound in Python (use processes), CPU-bound in C that releases the GIL (threads "
        "scale), contended (the workers waited for a core: the CPUs are busy), or starved — "
        "with the workers that would balance the line.",
    )
    _add_options(prof)
    prof.add_argument(
        "--sample", type=_count, default=100, metavar="N", help="inputs to run, >= 1 (default 100)"
    )
    prof.set_defaults(func=_profile)


def _add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=_a_path,
        metavar="FILE",
        help="TOML file with any of these options, keyed by the flags' names "
        '(size = ["512", "128x128"]); flags given as well win',
    )
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    add_arguments(p, ProcessConfig)


def _demo(args: argparse.Namespace) -> int:
    from stages import walk

    from .console import print_summary
    from .demo import demo_pipeline

    pipe = demo_pipeline(args.workers, args.delay)
    inputs = walk(*args.inputs, output=args.output)
    result = pipe.run(inputs, output=args.output, progress=False if args.quiet else None)
    print_summary(result, quiet=args.quiet)
    return result.exit_code


def _add_demo(sub: Any) -> None:
    demo = sub.add_parser("demo", help="engine demo: size and SHA-256 of every file in INPUTS")
    demo.add_argument("inputs", nargs="+", type=_a_path)
    demo.add_argument("--output", "-o", type=_a_path, default=Path("out/demo"))
    demo.add_argument("--workers", type=int, default=None)
    demo.add_argument("--delay", type=float, default=0.0, help="seconds of simulated work per file")
    demo.add_argument("--quiet", "-q", action="store_true")
    demo.set_defaults(func=_demo)


def _failures(args: argparse.Namespace) -> int:
    from .console import print_records

    return print_records(args.output, args.status)


def _add_failures(sub: Any) -> None:
    from .console import LISTED

    p: argparse.ArgumentParser = sub.add_parser(
        "failures",
        help="list the failed inputs of an output folder, with their errors",
        description="Print one line per input of OUTPUT/manifest.jsonl whose latest record is "
        "failed (KEY: ERROR_TYPE in STAGE: MESSAGE), or skipped / cancelled with --status "
        "(KEY: REASON); the count goes to stderr. Names are shown with undecodable bytes and "
        "control characters as \\xNN.",
    )
    p.add_argument(
        "output",
        type=_not_empty,
        metavar="OUTPUT",
        help="the output folder of a run, or its storage URL",
    )
    p.add_argument(
        "--status", choices=LISTED, default="failed", help="which records (default: failed)"
    )
    p.set_defaults(func=_failures)


#: command name -> function adding it to the CLI's sub-parsers
COMMANDS: dict[str, Callable[[Any], None]] = {
    "demo": _add_demo,
    "process": _add_process,  # adds "profile" too
    "failures": _add_failures,
}


def add_commands(sub: Any) -> None:
    for add in COMMANDS.values():
        add(sub)


def _not_empty(text: str) -> str:
    """A path argument that is not empty (:func:`~app.config.check_path`; argparse names the
    argument in its error, exit 2)."""
    try:
        check_path(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _a_path(text: str) -> Path:
    return Path(_not_empty(text))


def _count(text: str) -> int:
    """``--sample``: the options' own whole number >= 1 (argparse names the option in its
    error, exit 2)."""
    try:
        return Integer(low=1).from_text(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
