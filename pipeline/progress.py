"""Progress bars with tqdm: a total bar, then one bar per stage (done, rate, inbox fill).

* The **total** bar counts the inputs that have their terminal record. Its total is the number
  of inputs: known at once for a list, else counted while the source is walked (the feeder
  calls :meth:`Progress.fed` after every chunk, so the total grows, marked ``counting inputs``,
  until the source is exhausted, after which it is final). With a total it shows the
  percentage, the rate and the time left.
* A **stage** bar counts what the stage finished, with its rate and its inbox fill. It has no
  total: not every input goes through every stage (URLs only are downloaded, data files are not
  resized, a split file's parts are counted one by one).
* The bars are redrawn by the sampler (:mod:`pipeline.sampler`) every
  :data:`REFRESH_INTERVAL` seconds, also when no item finishes: the inbox fill, the elapsed
  time and the rate never go stale; the last redraw, at the end of the run, shows the inboxes
  empty.
* Size: the terminal's, followed as it changes. A terminal that reports no size (0 columns or
  0 rows: a CI runner's pseudo-terminal, a serial console, ``docker run -t``) gets
  :data:`FALLBACK_SIZE` instead of tqdm's blank lines (tqdm draws nothing at 0 columns, and
  hides every bar at 0 rows).

Bars are off when stderr is not a terminal (a log file, a pipe, ``nohup``), or when asked
(``--quiet``). Bar updates come from the event loop only.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

__all__ = ["FALLBACK_SIZE", "REFRESH_INTERVAL", "Progress"]

#: Seconds between two redraws of every bar (see the module docstring).
REFRESH_INTERVAL = 0.5
#: Columns and rows of the bars on a terminal that reports no size.
FALLBACK_SIZE = (80, 24)
#: The total bar's postfix while the source is still being walked.
COUNTING = "counting inputs"


def _sized(stream: TextIO) -> dict[str, Any]:
    """tqdm's size arguments: follow a terminal that reports its size, else a fixed size."""
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, OSError, ValueError):  # no file descriptor (a StringIO), not a tty
        size = os.terminal_size((0, 0))
    if size.columns > 0 and size.lines > 0:
        return {"dynamic_ncols": True}
    return {"ncols": size.columns or FALLBACK_SIZE[0], "nrows": size.lines or FALLBACK_SIZE[1]}


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
        self.final = total is not None  # the total will not change
        self._bars: list[Any] = []
        if not enabled:
            return
        # imported with the first bars: a run without them (--quiet, no terminal) never pays
        # for tqdm's import (tens of ms at start-up: it reads its package metadata)
        from tqdm import tqdm

        width = max([len(n) for n in names] + [5])
        sized = _sized(stream)
        self._bars.append(
            tqdm(
                total=total,
                desc=f"{'total':<{width}}",
                unit="it",
                position=0,
                file=stream,
                postfix=None if total is not None else COUNTING,
                **sized,
            )
        )
        for i, name in enumerate(names, 1):
            self._bars.append(
                tqdm(desc=f"{name:<{width}}", unit="it", position=i, file=stream, **sized)
            )

    def fed(self, n: int, *, final: bool = False) -> None:
        """The source has given ``n`` inputs so far (duplicates left out); ``final``: it is
        exhausted, ``n`` is the total."""
        if not self._bars or self.final:
            return
        bar = self._bars[0]
        bar.total = max(n, bar.n)
        if final:  # else the next redraw shows it: a fast walk feeds thousands of times a second
            self.final = True
            bar.set_postfix_str("", refresh=False)
            bar.refresh()

    def advance(self, index: int, n: int = 1) -> None:
        """Stage ``index`` (0-based) finished ``n`` items."""
        if self._bars:
            self._bars[index + 1].update(n)

    def finish_item(self, n: int = 1) -> None:
        """``n`` inputs have their terminal record."""
        if self._bars:
            self._bars[0].update(n)

    def set_fill(self, fills: Sequence[tuple[int, int]]) -> None:
        """Show each stage's inbox fill (size/capacity) and redraw every bar."""
        if not self._bars:
            return
        for bar, (size, cap) in zip(self._bars[1:], fills, strict=False):
            bar.set_postfix_str(f"inbox {size}/{cap}", refresh=False)
        for bar in self._bars:
            bar.refresh()

    def close(self) -> None:
        for bar in self._bars:
            bar.close()
        self._bars = []
