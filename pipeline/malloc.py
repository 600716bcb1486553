"""glibc's malloc knobs for this process: ``mallopt`` unless the environment set it, and
``malloc_trim``. Nothing happens elsewhere (another C library, another OS).

The process workers keep their freed buffers (:func:`pipeline.worker.tune_malloc`); the
command's end-of-run tables give theirs back (``app.tables``). A setting given in the
environment (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``) is the user's: it wins.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from typing import Any

__all__ = ["M_MMAP_THRESHOLD", "M_TRIM_THRESHOLD", "glibc", "mallopt_unless_set", "trim"]

#: mallopt(3) parameters, from glibc's malloc.h, with the environment variable of each.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
_ENVIRONMENT = {
    M_TRIM_THRESHOLD: "MALLOC_TRIM_THRESHOLD_",
    M_MMAP_THRESHOLD: "MALLOC_MMAP_THRESHOLD_",
}


@functools.cache
def glibc() -> Any:
    """The C library when it is glibc (it has ``mallopt`` and ``malloc_trim``), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


def mallopt_unless_set(param: int, value: int) -> bool:
    """``mallopt(param, value)`` unless the environment sets ``param``; True when it was set."""
    libc = glibc()
    if libc is None or _ENVIRONMENT[param] in os.environ:
        return False
    return bool(libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)))


def trim() -> None:
    """Give the free memory at the top of the heap, and whole free pages in it, back
    (``malloc_trim(0)``)."""
    libc = glibc()
    if libc is not None:
        libc.malloc_trim(0)
