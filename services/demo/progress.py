"""A one-line progress bar on stderr (redrawn at most ten times a second)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

Progress = Callable[[int, int, str], None]
"""``progress(done, total, phase)``: called as the demo's operations complete."""


def no_progress(done: int, total: int, phase: str) -> None:
    """A ``Progress`` that shows nothing."""


class ProgressBar:
    """``[#####.....]  1,234/5,678 ops  210/s  ETA 21 s  day 1: casework``, redrawn in place on
    a terminal; elsewhere (a log file, CI) one plain line every ``every_s`` seconds."""

    def __init__(self, stream: TextIO = sys.stderr, width: int = 30,
                 every_s: float = 5.0) -> None:
        self.stream, self.width = stream, width
        self.started = time.monotonic()
        self._drawn = 0.0
        self.tty = stream.isatty()
        self.every_s = 0.1 if self.tty else every_s

    def __call__(self, done: int, total: int, phase: str) -> None:
        now = time.monotonic()
        if now - self._drawn < self.every_s and done < total:
            return
        self._drawn = now
        done = min(done, total)  # retries count as operations too: never past the end
        share = done / total if total else 1.0
        rate = done / max(now - self.started, 1e-9)
        eta = max((total - done) / rate, 0.0) if rate > 0 else 0.0
        if not self.tty:
            self.stream.write(f"{done:,}/{total:,} ops, {rate:,.0f}/s, ETA {eta:,.0f} s, "
                              f"{phase}\n")
            self.stream.flush()
            return
        bar = "#" * int(share * self.width)
        self.stream.write(f"\r[{bar:<{self.width}}] {done:>7,}/{total:,} ops {rate:6,.0f}/s "
                          f"ETA {eta:4,.0f} s  {phase:<28}")
        self.stream.flush()

    def finish(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
