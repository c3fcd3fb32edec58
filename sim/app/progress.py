"""The progress line of the commands whose steps can take seconds (``moesim cache``,
``moesim placement``, ``moesim trace stats``): ``PROG: done/total what, N s`` on stderr, at the start
and after a step whenever ``every_s`` seconds passed since the last line (so a small run prints
one line and a long one a line per step; stdout stays the result)."""

from __future__ import annotations

import sys
import time


class StepProgress:
    def __init__(self, prog: str, total: int, what: str, every_s: float = 2.0) -> None:
        self.prog, self.total, self.what, self.every_s = prog, total, what, every_s
        self.done = 0
        self.t0 = self.last = time.perf_counter()
        self._line("")

    def step(self, label: str = "") -> None:
        self.done += 1
        if time.perf_counter() - self.last >= self.every_s:
            self._line(label)

    def _line(self, label: str) -> None:
        self.last = time.perf_counter()
        pct = 100.0 * self.done / self.total if self.total else 100.0
        print(f"{self.prog}: {self.done}/{self.total} {self.what} ({pct:.0f} %)"
              + (f", last {label}" if label else "") + f", {self.last - self.t0:.0f} s",
              file=sys.stderr, flush=True)
