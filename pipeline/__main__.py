"""``python -m pipeline``: see ``pipeline.cli``.

First thing here (``-m`` has imported the package itself already), a ``process`` / ``profile``
run on the local backend starts the process workers' forkserver
(``stages.registry.warm_up_argv``): it imports the worker modules on another core while this
process parses the command line and imports the rest.
"""

from __future__ import annotations

import gc
import sys


def _warm_up(argv: list[str]) -> None:
    try:
        from stages.registry import warm_up_argv
    except ImportError:  # the engine alone: nothing to warm up
        return
    warm_up_argv(argv)


if __name__ == "__main__":
    _warm_up(sys.argv[1:])
    from .cli import main

    code = main()
    # Interpreter shutdown garbage-collects every object of the imported libraries (numpy,
    # pyarrow, asyncio, ...) several times: ~0.1 s. Frozen objects are skipped; only their
    # __del__ in reference cycles is not run, which Python never promises at exit anyway.
    gc.freeze()
    sys.exit(code)
