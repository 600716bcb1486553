"""The engine's modules import each other one way: no cycles, and no ``stages``.

Imports are read from the source (also those inside functions and under ``TYPE_CHECKING``),
so a cycle cannot hide behind a lazy import. ``pipeline/cli.py`` and ``pipeline/__main__.py``
are the application's entry into the engine and may import ``stages``; nothing else may.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APP_ENTRY = {"pipeline.cli", "pipeline.__main__"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(name: str, path: Path) -> set[str]:
    """Every module ``name`` imports, as absolute names."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {
        name: {dep for dep in _imports(name, path) if dep in modules and dep != name}
        - {"pipeline"}  # the package's lazy __init__ re-exports; it imports nothing eagerly
        for name, path in modules.items()
    }


def test_no_import_cycle_inside_the_engine() -> None:
    graph = _graph()
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycle = [*path[path.index(name) :], name]
            raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
        if name in done:
            return
        for dep in sorted(graph[name]):
            visit(dep, [*path, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])


def test_the_engine_imports_no_stages() -> None:
    for name, path in _modules().items():
        if name in APP_ENTRY:
            continue
        bad = {m for m in _imports(name, path) if m == "stages" or m.startswith("stages.")}
        assert not bad, f"{name} imports {sorted(bad)}"
