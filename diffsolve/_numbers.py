"""The checks of numbers (counts, budgets, real parameters), below everything else: the schedules, the
grids and :mod:`diffsolve.checks` (which re-exports them) all use these."""
from __future__ import annotations

import math
import numbers


def _show(value, limit: int = 60) -> str:
    """A short repr of a user's value for a message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind(value) -> str:
    return type(value).__name__


def is_integer(value) -> bool:
    """An integer that is not a bool (Python and numpy integers)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


# --- numbers ---------------------------------------------------------------------------------------
def check_int(name: str, value, minimum: int = 1, hint: str = "", maximum: int | None = None) -> int:
    """``value`` as an int: an integer (not a float, not a bool) ``>= minimum`` (and ``<= maximum``)."""
    need = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    if not is_integer(value):
        what = "a bool" if isinstance(value, bool) else f"a {_kind(value)}"
        raise TypeError(f"{name} must be {need}{hint}, got {_show(value)} ({what})"
                        + ("; give a whole number, e.g. 10" if isinstance(value, (float, str)) else ""))
    if value < minimum:
        raise ValueError(f"{name} must be {need}{hint}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be at most {maximum:,}{hint}, got {value:,}")
    return int(value)


def check_number(name: str, value, minimum: float | None = None, positive: bool = False,
                 maximum: float | None = None) -> float:
    """``value`` as a finite float (a real number, not a bool or a string); ``> 0`` when ``positive``,
    else ``>= minimum`` when given; ``< maximum`` when given."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {_show(value)} ({_kind(value)})")
    v = float(value)
    bound = "> 0" if positive else f">= {minimum:g}" if minimum is not None else ""
    bound += (" and " if bound else "") + f"< {maximum:g}" if maximum is not None else ""
    if not math.isfinite(v) or (positive and not v > 0) or (minimum is not None and v < minimum) or \
            (maximum is not None and not v < maximum):
        need = f"{bound} (a finite number)" if bound else "a finite number"
        raise ValueError(f"{name} must be {need}, got {value!r}")
    return v
