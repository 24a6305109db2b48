"""Wording helpers for messages and reports."""
from __future__ import annotations


def count(n, noun: str, plural: str | None = None) -> str:
    """``"1 sample"``, ``"2 samples"``: a number and the noun agreeing with it (``plural`` when
    adding an s is wrong)."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
