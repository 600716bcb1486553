"""The command line: ``python -m pipeline {process,profile,failures,demo} ...`` (the ``pixpipe``
script is the same).

Exit codes: 0 all ok, 1 finished with item failures, 2 usage or definition error, 3 fatal run
error, 130 interrupted. The commands themselves live in :mod:`app.commands`; this module builds
the parser, sets up logging and turns the engine's typed errors into exit codes.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
from collections.abc import Sequence

from pipeline import PipelineError

from .commands import add_commands

__all__ = ["build_parser", "main"]

log = logging.getLogger("pipeline")


def setup_logging(quiet: bool, verbose: bool = False) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    # the storage clients' wire-level debug lines (signed request headers, with the access
    # key's id) are not pixpipe's to show, --verbose included: their warnings only
    for name in STORAGE_LOGGERS:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))


#: Loggers of the object storage clients (stages.storage): warnings and errors only.
STORAGE_LOGGERS = ("botocore", "aiobotocore", "s3fs", "fsspec", "gcsfs", "adlfs", "azure")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pixpipe" if os.path.basename(sys.argv[0]) == "pixpipe" else "python -m pipeline",
        description="A staged batch pipeline: downloads, reads, decode/resize/statistics in "
        "process workers, atomic writes, and a ledger that records every input.",
    )
    add_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # what stdout cannot encode (a name on an ASCII or Latin-1 terminal) is written as \uXXXX,
    # as stderr does: `failures` ended in a UnicodeEncodeError traceback
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="backslashreplace")
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(bool(getattr(args, "quiet", False)), bool(getattr(args, "verbose", False)))
    try:
        code: int = args.func(args)
    except PipelineError as exc:
        log.error("%s: %s", type(exc).__name__, exc)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return code
