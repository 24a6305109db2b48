"""Wording helpers for messages and reports."""
from __future__ import annotations

import math
import sys
import time


def count(n, noun: str, plural: str | None = None) -> str:
    """``"1 sample"``, ``"2 samples"``: a number and the noun agreeing with it (``plural`` when
    adding an s is wrong)."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


class StatusLine:
    """A long run's progress on stderr: one line updated in place on a terminal (at most every 0.2 s),
    else a line every ``every`` seconds and whenever ``force``; ``on=None``: on only on a terminal.
    ``note`` writes a line that stays; ``close`` clears the status line."""

    def __init__(self, on: bool | None, label: str, every: float = 10.0):
        self.stream = sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.on = self.tty if on is None else bool(on)
        self.label, self.every, self.t0, self.last, self.dirty = label, every, time.perf_counter(), -math.inf, False

    def __call__(self, msg: str, force: bool = False):
        now = time.perf_counter()
        if not self.on or not (force or now - self.last >= (0.2 if self.tty else self.every)):
            return
        self.last, line = now, f"[{now - self.t0:6.1f}s] {self.label}: {msg}"
        self.stream.write("\r\033[K" + line if self.tty else line + "\n")
        self.stream.flush()
        self.dirty = self.tty

    def note(self, msg: str):
        """A line of its own (``note: msg``) when on, clearing the status line first."""
        if self.on:
            self.close()
            self.stream.write(f"note: {msg}\n")
            self.stream.flush()

    def close(self):
        if self.dirty:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.dirty = False
