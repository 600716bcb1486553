"""The three layers hold: ``lint-imports`` keeps the contracts in ``pyproject.toml`` (app ->
stages -> pipeline, the one exception ``pipeline.__main__``, no cycles inside a layer, an engine
that imports no image, data or download library). ``make lint`` runs the same check; this test
makes CI (``make test``) run it too."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# lint-imports as its console script does it, with the interpreter running the tests
_LINT_IMPORTS = "import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())"


def test_import_contracts_are_kept() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _LINT_IMPORTS, "--no-cache", "--no-logo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout, done.stdout


def test_the_engine_entry_is_the_only_declared_exception() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (layers,) = [c for c in config["contracts"] if c["type"] == "layers"]
    assert layers["layers"] == ["app", "stages", "pipeline"]
    assert {i.partition(" -> ")[0] for i in layers["ignore_imports"]} == {"pipeline.__main__"}
    assert {c["type"] for c in config["contracts"]} >= {"layers", "forbidden", "acyclic_siblings"}
