"""Progress bars (also the real CLI on a pseudo-terminal, with a size and without one), and the
CLI's exit codes for fatal run errors."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.progress import FALLBACK_SIZE, Progress
from tests.conftest import read_manifest
from tests.ptys import run_in_pty

ROOT = Path(__file__).resolve().parents[1]


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_per_stage_with_rate_and_inbox_fill() -> None:
    out = _Tty()
    bars = Progress(["read", "resize"], total=4, file=out)
    assert bars.enabled
    for _ in range(4):
        bars.advance(0)
        bars.advance(1)
        bars.finish_item()
    bars.set_fill([(3, 8), (1, 4)])
    bars.close()
    text = out.getvalue()
    for label in ("total", "read", "resize", "4/4", "inbox 3/8", "inbox 1/4"):
        assert label in text, label


def test_bars_are_off_when_stderr_is_not_a_terminal() -> None:
    out = io.StringIO()
    bars = Progress(["read"], total=None, file=out)
    bars.advance(0)
    bars.close()
    assert not bars.enabled
    assert out.getvalue() == ""


@pytest.mark.parametrize("below", ["", "sub/folder"])
def test_an_output_that_is_a_file_is_refused_before_anything_starts(
    tmp_path: Path, below: str
) -> None:
    """A file where the output folder should be (or above it) is a usage error, exit 2, which
    says so, not the ledger's "cannot lock the output folder: Not a directory" (exit 3)."""
    blocker = tmp_path / "out"
    blocker.write_text("a file where the output folder should be")
    output = blocker / below if below else blocker
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "process",
            str(ROOT / "sample_data" / "images"),
            "--output",
            str(output),
            "--quiet",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    said = "is not a folder" if not below else f"is below a file ({str(blocker)!r})"
    assert f"ConfigError: --output {str(output)!r} {said}" in done.stderr
    assert "Traceback" not in done.stderr
    assert blocker.read_text() == "a file where the output folder should be"


# --------------------------------------------------------------------------- on a real terminal

IMAGES = ROOT / "sample_data" / "images"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
RATE = re.compile(r"\d+\.\d+it/s")
ETA = re.compile(r"\[\d\d:\d\d<\d\d:\d\d")  # elapsed < remaining
BAR = re.compile(r"(total|read|resize|crunch|write) *: ")  # a bar: its name padded, a colon


def _process(out: Path, *flags: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", "process", str(IMAGES), "-o", str(out), *flags]


def _lines(terminal: str) -> list[str]:
    """The terminal's text as lines (cursor moves gone; each redraw of a bar a line)."""
    return [line for line in re.split(r"[\r\n]+", ANSI.sub("", terminal)) if line]


@pytest.mark.parametrize(("rows", "cols"), [(30, 100), (0, 0)])
def test_the_cli_on_a_terminal_shows_total_percentage_rate_eta_and_the_end(
    tmp_path: Path, rows: int, cols: int
) -> None:
    out = tmp_path / "out"
    run = run_in_pty(_process(out), rows=rows, cols=cols)
    assert run.returncode == 0, run.terminal
    n = len(read_manifest(out))
    lines = _lines(run.terminal)
    bars = [line for line in lines if BAR.match(line)]
    totals = [line for line in bars if line.startswith("total")]
    assert any(re.search(rf"\d+%\|.*\| \d+/{n} \[", line) for line in totals), totals
    assert any("100%|" in line and f" {n}/{n} [" in line for line in totals), totals
    assert any(ETA.search(line) for line in totals), totals
    assert any(RATE.search(line) for line in totals), totals
    stages = [line for line in bars if not line.startswith("total")]
    assert any(RATE.search(line) and "inbox 0/" in line for line in stages), stages
    # every bar fits the terminal; one without a size (0x0) gets 80 columns, not blank lines
    width = cols or FALLBACK_SIZE[0]
    assert all(len(line) <= width for line in bars), [len(line) for line in bars]
    assert "done: " in run.terminal  # the summary follows the bars


def test_no_bars_when_stderr_is_not_a_terminal_or_with_quiet(tmp_path: Path) -> None:
    logged = run_in_pty(_process(tmp_path / "a"), rows=30, cols=100, stderr_tty=False)
    assert logged.returncode == 0, logged.stderr
    assert "done: " in logged.stderr  # the summary, without bars
    for text in (logged.stderr, logged.terminal):
        assert "it/s" not in text
        assert "%|" not in text
    quiet = run_in_pty(_process(tmp_path / "b", "--quiet"), rows=30, cols=100)
    assert quiet.returncode == 0, quiet.terminal
    assert "it/s" not in quiet.terminal
    assert "%|" not in quiet.terminal


#: A run over a lazy source of 100 inputs that stops after its first 64 until a line is typed.
GROWING = """
import sys
from pipeline import Pipeline, stage

def inputs():
    yield from ((f"k{i}", i) for i in range(64))
    sys.stdin.readline()
    yield from ((f"k{i}", i) for i in range(64, 100))

result = Pipeline([stage(abs, kind="inline")]).run(inputs(), progress=True)
print("ok", result.counts["ok"], flush=True)
"""


def test_the_total_grows_while_the_source_is_walked_then_is_final(tmp_path: Path) -> None:
    # the source waits after 64 inputs: the bar must show 64 as the total so far, marked as
    # still counting, before the test lets the source go on
    waiting = r"/64 \[[^\]]*counting inputs\]"
    run = run_in_pty([sys.executable, "-c", GROWING], rows=30, cols=120, replies={waiting: "go on"})
    assert run.returncode == 0, run.terminal
    assert "ok 100" in run.terminal
    totals = [line for line in _lines(run.terminal) if line.startswith("total")]
    assert "100%|" in totals[-1]
    assert " 100/100 [" in totals[-1]
    assert "counting" not in totals[-1]


#: A stage whose first item waits for a line typed on the terminal: nothing finishes meanwhile.
#: The run's timeline samples as rarely as a long run's does (its interval doubles every 400
#: samples): the bars must be redrawn anyway.
STUCK = """
import sys
from pipeline import Pipeline, stage
from pipeline.metrics import Timeline

Timeline.__init__.__kwdefaults__["interval"] = 1000.0

def first_waits(x):
    if x == 0:
        sys.stdin.readline()
    return x

stuck = stage(first_waits, kind="thread", name="stuck", workers=1, capacity=4)
result = Pipeline([stuck]).run(list(range(20)), progress=True)
print("ok", result.counts["ok"], flush=True)
"""


def test_bars_are_redrawn_while_nothing_finishes(tmp_path: Path) -> None:
    # no item finishes until the test types a line, and the timeline takes no sample: only the
    # bars' own redraw can show the inbox filling up (it is empty when they are first drawn)
    full = r"stuck: 0it \[[^\]]*inbox 4/4\]"
    run = run_in_pty([sys.executable, "-c", STUCK], rows=30, cols=120, replies={full: ""})
    assert run.returncode == 0, run.terminal
    assert "ok 20" in run.terminal
    last = [line for line in _lines(run.terminal) if line.startswith("stuck")][-1]
    assert "20it" in last
    assert "inbox 0/4" in last
