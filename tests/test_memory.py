"""Memory stays bounded: a million tiny items through async -> thread -> process.

Peak RSS (ru_maxrss of a fresh interpreter) for 1,000,000 items must stay within 10% of the
peak for 10,000: nothing in the engine may grow with the number of inputs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _peak(n: int) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.engine", "engine", str(n)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        check=True,
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_peak_rss_does_not_grow_with_the_number_of_items() -> None:
    small = _peak(10_000)
    big = _peak(1_000_000)
    assert big["rss_mb"] <= small["rss_mb"] * 1.10, (small, big)
