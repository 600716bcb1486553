"""``python -m pipeline`` and the ``pixpipe`` script: the thin entry to the application.

The command line itself is the application's (``app.cli``): this is the one engine module that
imports ``app`` (an import-linter contract in ``pyproject.toml`` names it as the exception).

First thing here (``-m`` has imported the package itself already), a ``process`` / ``profile``
run on the local backend starts the process workers' forkserver, a fork of this process
(``app.warmup.warm_up_argv``): it imports the worker modules on another core while this
process parses the command line and imports the rest. Before that, ``OPENBLAS_NUM_THREADS``
defaults to 1 and ``ARROW_DEFAULT_MEMORY_POOL`` to ``system`` (see below). Last thing, whatever
the exit (an error, Ctrl-C, ``SystemExit``), the forkserver and multiprocessing's resource
tracker (if one started: a ``process`` run starts none) are stopped and waited for
(:func:`pipeline.forkserver.shutdown`): no process of the run outlives it. A Ctrl-C while the
command is still starting (its imports: a tenth of a second) exits 130, as one during the run
does, without a traceback; a SIGTERM then, or during the end-of-run work, exits 143 so, and a
SIGHUP (the terminal hung up) 129.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys

from .terminal import let_go_of_lost_terminal, to_devnull


class _Terminated(BaseException):
    """SIGTERM or SIGHUP while no run owns them: the command starting, or its end-of-run work
    (tables, report). Like a Ctrl-C then (KeyboardInterrupt), it unwinds the command: the
    output folder is let go, the helpers are stopped, the exit code is 128 + the signal's
    number (``args[0]``)."""


def _on_stop_signal(signum: int, frame: object) -> None:
    import signal  # imported by run() before it set this handler

    if signum == signal.SIGHUP:  # the terminal hung up: nothing more can be shown on it
        let_go_of_lost_terminal()
    raise _Terminated(128 + signum)


def _warm_up(argv: list[str]) -> None:
    from app.warmup import warm_up_argv  # the standard library only, until it starts a server

    warm_up_argv(argv)


def _stop_helpers() -> None:
    """Stop the forkserver and the resource tracker, if any started, and wait for them."""
    import signal  # here: imported at the top, it would delay the warm-up by ~0.5 ms

    # A Ctrl-C, SIGTERM or SIGHUP now would only cut the wait short and leave them behind: the
    # exit code is decided already, and the wait is bounded (forkserver.SHUTDOWN_TIMEOUT).
    with contextlib.suppress(ValueError):  # ValueError: not the main thread
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
    if "multiprocessing" not in sys.modules:  # then nothing can have started them
        return
    from .forkserver import shutdown

    shutdown()


def run() -> None:
    """The command: ``python -m pipeline`` and the ``pixpipe`` script."""
    # One BLAS thread per process, unless the user says otherwise: the command's own numpy work
    # (statistics, the end-of-run exports) makes no BLAS calls, and process stages already have
    # a worker per core. Left at its default, OpenBLAS starts a thread per core in this process
    # and in the forkserver, and they spin on the cores the workers need (~3% of a 12 MP run's
    # wall time). Set before anything imports numpy; inherited by the forkserver and workers.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    # pyarrow's memory from the system allocator (glibc's malloc), unless the user says
    # otherwise: its default, mimalloc, takes ~8 MB more (measured) to write the few thousand
    # rows of stats.parquet at the end of a run, when this process holds pyarrow and numpy
    # alone and peaks (the tables already pass the system pool where pyarrow takes one, but
    # the Parquet writer allocates some of its buffers from the default pool). Read once,
    # when pyarrow first allocates; inherited by the workers (Parquet and CSV data files).
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    try:
        _warm_up(sys.argv[1:])
        import signal

        # a run owns SIGTERM and SIGHUP while it goes (pipeline.entry: its grace period, exit
        # 143 or 129); before and after it, this handler ends the command as cleanly. Unless
        # the command was told to ignore one (nohup: SIGHUP), which then stays ignored.
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) is not signal.SIG_IGN:
                signal.signal(sig, _on_stop_signal)
        # This process keeps glibc's malloc defaults (the process workers tune theirs, see
        # pipeline.worker.tune_malloc): it no longer reads local images whole (the workers
        # do), and with a 64 MB trim threshold each of its threads' arenas kept what it had
        # freed: ~20 MB more peak RSS on a run of 30,000 small images, growing with the run.
        from app.cli import main
        from app.warmup import the_commands_process

        the_commands_process()
        code = main()
        sys.stdout.flush()  # here, where a reader gone is caught, not at the interpreter's exit
    except KeyboardInterrupt:  # a Ctrl-C while the command starts (main() has its own)
        code = 130
    except _Terminated as stopped:
        code = stopped.args[0]
    except BrokenPipeError:  # the reader of our output is gone (`pixpipe failures out | head`)
        # what is still buffered for it goes nowhere, rather than fail again at the exit's flush
        with contextlib.suppress(OSError, ValueError):  # ValueError: no stdout at all
            to_devnull(sys.stdout.fileno())
        code = 128 + 13  # as if SIGPIPE had ended it, as it would a program in C
    finally:  # also on SystemExit (usage errors, --help)
        _stop_helpers()
    # Interpreter shutdown garbage-collects every object of the imported libraries (numpy,
    # pyarrow, asyncio, ...) several times: ~0.1 s. Frozen objects are skipped; only their
    # __del__ in reference cycles is not run, which Python never promises at exit anyway.
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    run()
