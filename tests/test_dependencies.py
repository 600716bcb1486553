"""Declared and imported dependencies stay the same: ``deptry`` (as ``make lint`` runs it) over
app/, pipeline/ and stages/ against ``[project]``; this test makes CI (``make test``) run it too.
Benchmark peers (pandas, pyvips) are never dependencies of the project."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_DEPTRY = "import sys; from deptry.cli import deptry; sys.exit(deptry())"


def test_declared_dependencies_are_the_imported_ones() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _DEPTRY, "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_benchmark_peers_are_not_project_dependencies() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [
        *project["dependencies"],
        *(d for ds in project["optional-dependencies"].values() for d in ds),
    ]
    names = {d.split(">")[0].split("[")[0].split("=")[0].strip().lower() for d in declared}
    assert not names & {"pandas", "pyvips", "img2dataset"}
