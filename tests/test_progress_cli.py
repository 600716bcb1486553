"""Progress bars, and the CLI's exit codes for fatal run errors."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

from pipeline.progress import Progress

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


def test_an_unwritable_output_folder_is_a_fatal_error_exit_3(tmp_path: Path) -> None:
    blocker = tmp_path / "out"
    blocker.write_text("a file where the output folder should be")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "process",
            str(ROOT / "sample_data" / "images"),
            "--output",
            str(blocker),
            "--quiet",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 3, done.stderr
    assert "LedgerError" in done.stderr
