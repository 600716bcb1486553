"""The README's generated part: the table of the options of ``process`` and ``profile``.

``python -m app.readme [README.md]`` rewrites the text between :data:`BEGIN` and :data:`END`
from the options' declarations (:class:`app.config.ProcessConfig`); a test checks that the
README holds what this generates, so the table cannot drift from the options.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .config import ProcessConfig
from .options import Declared, declared

__all__ = ["BEGIN", "END", "option_table", "options_section", "updated"]

BEGIN = "<!-- options: generated from app/config.py by `python -m app.readme`; do not edit -->"
END = "<!-- options: end -->"
README = Path(__file__).resolve().parents[1] / "README.md"


def option_table(cls: type) -> str:
    """The README's table of the options of ``cls``, one table per group (Markdown)."""
    groups: dict[str, list[Declared]] = {}
    for d in declared(cls):
        groups.setdefault(d.option.group, []).append(d)
    lines: list[str] = []
    for group, items in groups.items():
        lines += [f"**{group}**", "", "| flag | file key | value | default | meaning |"]
        lines.append("|---|---|---|---|---|")
        for d in items:
            if d.option.positional:
                flag = f"`{d.where}` …"
            elif d.option.kind.arity == "flag":
                flag = f"`--[no-]{d.key}`"
            else:
                flag = f"`--{d.key}`" + (" (repeat)" if d.option.kind.arity == "list" else "")
            if d.option.short:
                flag += f", `{d.option.short}`"
            default = d.shown_default()
            if default and d.option.shown_default is None:
                default = f"`{default}`"
            cells = [flag, f"`{d.key}`", d.option.kind.what, default, d.meaning]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def options_section() -> str:
    """What goes between the markers."""
    return option_table(ProcessConfig)


def updated(text: str) -> str:
    """``text`` (the README) with its generated section as :func:`options_section` makes it."""
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[:start] + "\n\n" + options_section() + "\n" + text[end:]


def main(argv: list[str]) -> int:
    path = Path(argv[0]) if argv else README
    text = path.read_text(encoding="utf-8")
    new = updated(text)
    if new != text:
        path.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
