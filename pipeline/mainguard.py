"""A script that runs a pipeline with process stages does it under ``if __name__ == "__main__":``.

Each process worker starts by importing the script that started the program: multiprocessing's
forkserver does so, so that the stage functions the script defines can be found by name. A script
that runs its pipeline at its top level, unguarded, would run it again in every worker, where
multiprocessing refuses to start processes: each worker died printing a traceback, and the run
stopped on its crash budget after a screenful of them, interleaved. :func:`check_main_guard`
finds that mistake before any worker starts, from the script's own source: the line of
``__main__``'s top-level code that made the call, and whether it lies in an
``if __name__ == "__main__":`` block. Where it cannot tell (no script: ``python -c``, a notebook;
no source to read), it says nothing and the run goes as before.
"""

from __future__ import annotations

import ast
import functools
import sys
from types import FrameType, ModuleType

from .errors import DefinitionError
from .stage import Stage

__all__ = ["check_main_guard", "unguarded_call"]


def check_main_guard(stages: tuple[Stage, ...] | list[Stage], *, local: bool) -> None:
    """Refuse (:class:`DefinitionError`) a run with process stages on this machine (``local``)
    that the script makes outside its ``if __name__ == "__main__":`` block."""
    if not local or not any(s.kind == "process" for s in stages):
        return
    for st in stages:
        if st.kind == "process":
            _check_defined_above_guard(st)
    where = unguarded_call()
    if where is not None:
        raise DefinitionError(
            f"{where}: runs a pipeline with process stages at the top level of the script. "
            "Each worker process imports the script, and would run it again; put the run under "
            "`if __name__ == '__main__':` (or in a function called from there)"
        )


def _check_defined_above_guard(st: Stage) -> None:
    """Refuse a process stage whose function the script defines inside its ``if __name__ ==
    "__main__":`` block: a worker imports the script without running that block, and could
    not find it (each died with an AttributeError, until the crash budget)."""
    target = getattr(st.fn, "func", st.fn)  # functools.partial
    code = getattr(target, "__code__", None)
    if getattr(target, "__module__", None) != "__main__" or code is None:
        return
    guarded = _guarded_lines(code.co_filename)
    line = code.co_firstlineno
    if guarded and any(first <= line <= last for first, last in guarded):
        raise DefinitionError(
            f"{code.co_filename}, line {line}: process stage {st.name!r}: "
            f"{target.__qualname__} is defined under `if __name__ == '__main__':`, which each "
            "worker process skips when it imports the script, so it cannot find it; define it "
            "above that block, at the top level"
        )


def unguarded_call() -> str | None:
    """``"<script>, line N"`` when ``__main__``'s top-level code, at line N, is what calls this
    (through any depth of calls), outside an ``if __name__ == "__main__":`` block; else None."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or not isinstance(path, str):
        return None
    frame = _module_frame(main)
    if frame is None:  # not called from the script's top level (another thread, a callback)
        return None
    line = frame.f_lineno
    guarded = _guarded_lines(frame.f_code.co_filename)
    if line is None or guarded is None:
        return None
    if any(first <= line <= last for first, last in guarded):
        return None
    return f"{path}, line {line}"


@functools.lru_cache(maxsize=8)
def _guarded_lines(filename: str) -> tuple[tuple[int, int], ...] | None:
    """The line spans of the ``if __name__ == "__main__":`` blocks of the script ``filename``
    (read and parsed once: a script may run pipelines in a loop); None without a source (a
    ``.pyc``, a zip): then nobody can tell."""
    try:
        with open(filename, "rb") as fh:
            tree = ast.parse(fh.read())
    except (OSError, SyntaxError, ValueError):
        return None
    return tuple(
        (node.lineno, node.end_lineno or 0)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and _tests_main(node.test)
    )


def _module_frame(main: ModuleType) -> FrameType | None:
    """The frame of ``main``'s top-level code on this thread's stack, if it is there."""
    names = vars(main)
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "<module>" and frame.f_globals is names:
            return frame
        frame = frame.f_back
    return None


def _tests_main(test: ast.expr) -> bool:
    """Whether an ``if``'s test names both ``__name__`` and ``"__main__"`` (in any form)."""
    nodes = list(ast.walk(test))
    named = any(isinstance(n, ast.Name) and n.id == "__name__" for n in nodes)
    main = any(isinstance(n, ast.Constant) and n.value == "__main__" for n in nodes)
    return named and main
