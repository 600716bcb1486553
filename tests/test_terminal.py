"""pipeline.terminal: the output that went to a terminal that hung up goes to /dev/null."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# In a process of its own: the function moves file descriptors 1 and 2. The report goes out
# through a copy of the original standard error.
_PROGRAM = r"""
import json, os, pty, sys, tempfile
from pipeline.terminal import let_go_of_lost_terminal

report = {}
out = os.dup(2)
master, slave = pty.openpty()
os.dup2(slave, 1)
os.dup2(slave, 2)
report["live terminal"] = let_go_of_lost_terminal()
os.close(master)  # the hang-up: every write to the terminal fails from now on
try:
    os.write(2, b"lost")
except OSError as exc:
    report["write after the hang-up"] = exc.errno
report["hung-up terminal"] = let_go_of_lost_terminal()
os.write(1, b"nobody reads this")
os.write(2, b"nor this")
with tempfile.TemporaryFile() as f:
    os.dup2(f.fileno(), 1)
    os.dup2(f.fileno(), 2)
    report["a file"] = let_go_of_lost_terminal()
r, w = os.pipe()
os.dup2(w, 1)
os.dup2(w, 2)
report["a pipe"] = let_go_of_lost_terminal()
os.write(out, json.dumps(report).encode())
"""


@pytest.mark.timeout(30)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pseudo-terminals as on Linux")
def test_only_a_terminal_that_hung_up_is_let_go() -> None:
    got = subprocess.run(
        [sys.executable, "-c", _PROGRAM],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=20,
        check=True,
    )
    report = json.loads(got.stderr)
    assert report == {
        "live terminal": [],
        "write after the hang-up": 5,  # EIO
        "hung-up terminal": [1, 2],
        "a file": [],
        "a pipe": [],
    }
