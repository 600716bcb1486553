"""Run a command attached to a pseudo-terminal of a given size, as a user's shell would.

:func:`run_in_pty` starts the command with stdin, stdout and stderr on the pty (or stderr on a
pipe, ``stderr_tty=False``: a log file, ``2> log``), collects what it writes until it exits,
and can answer it: ``replies`` maps a pattern (a regular expression) the command must print to
a line the test then types (the command waits for it: the test sees its output at that point
without any sleep).
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import subprocess
import termios
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class PtyRun:
    returncode: int
    terminal: str  # what the command wrote to the terminal (\r\n line ends, escapes and all)
    stderr: str  # with stderr_tty=False: what it wrote to stderr


def run_in_pty(
    argv: Sequence[str],
    *,
    rows: int,
    cols: int,
    stderr_tty: bool = True,
    replies: Mapping[str, str] | None = None,
    timeout: float = 90.0,
) -> PtyRun:
    """Run ``argv`` on a new pty of ``rows`` x ``cols`` (0 x 0: a terminal without a size)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["PYTHONPATH"] = str(ROOT)
    env["TERM"] = "xterm"
    stderr = slave if stderr_tty else subprocess.PIPE
    proc = subprocess.Popen(list(argv), stdin=slave, stdout=slave, stderr=stderr, cwd=ROOT, env=env)
    os.close(slave)
    pending = dict(replies or {})
    seen, err = bytearray(), bytearray()
    sources = {master: seen}
    if proc.stderr is not None:
        sources[proc.stderr.fileno()] = err
    deadline = time.monotonic() + timeout
    try:
        while sources:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{argv} still running after {timeout} s: {bytes(seen)!r}")
            ready, _, _ = select.select(list(sources), [], [], left)
            for fd in ready:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:  # EIO: every end of the pty's other side is closed
                    chunk = b""
                if not chunk:
                    del sources[fd]
                    continue
                sources[fd].extend(chunk)
            text = seen.decode(errors="replace")
            for wanted in [w for w in pending if re.search(w, text)]:
                os.write(master, pending.pop(wanted).encode() + b"\n")
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
        os.close(master)
    assert not pending, f"never printed {list(pending)}: {bytes(seen)!r}"
    return PtyRun(code, seen.decode(errors="replace"), err.decode(errors="replace"))
