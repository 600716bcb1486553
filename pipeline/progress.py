"""Progress bars with tqdm: one bar per stage (done, rate, inbox fill) plus a total bar.

Bars are off when stderr is not a terminal, or when asked (``--quiet``). Bar updates come from
the event loop only; a refresher task redraws the inbox fill twice a second.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, TextIO

from tqdm import tqdm

__all__ = ["Progress"]


class Progress:
    def __init__(
        self,
        names: Sequence[str],
        *,
        total: int | None,
        enabled: bool | None = None,
        file: TextIO | None = None,
    ) -> None:
        stream = file if file is not None else sys.stderr
        if enabled is None:
            enabled = stream.isatty()
        self.enabled = enabled
        self._bars: list[Any] = []
        if not enabled:
            return
        width = max([len(n) for n in names] + [5])
        self._bars.append(
            tqdm(
                total=total,
                desc=f"{'total':<{width}}",
                unit="it",
                position=0,
                dynamic_ncols=True,
                file=stream,
            )
        )
        for i, name in enumerate(names, 1):
            self._bars.append(
                tqdm(
                    total=total,
                    desc=f"{name:<{width}}",
                    unit="it",
                    position=i,
                    leave=True,
                    dynamic_ncols=True,
                    file=stream,
                )
            )

    def advance(self, index: int, n: int = 1) -> None:
        """Stage ``index`` (0-based) finished ``n`` items."""
        if self._bars:
            self._bars[index + 1].update(n)

    def finish_item(self, n: int = 1) -> None:
        if self._bars:
            self._bars[0].update(n)

    def set_fill(self, fills: Sequence[tuple[int, int]]) -> None:
        """Show each stage's inbox fill (size/capacity)."""
        for bar, (size, cap) in zip(self._bars[1:], fills, strict=False):
            bar.set_postfix_str(f"inbox {size}/{cap}", refresh=False)
            bar.refresh()

    def close(self) -> None:
        for bar in self._bars:
            bar.close()
        self._bars = []
