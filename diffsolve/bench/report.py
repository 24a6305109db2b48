"""What a benchmark run prints: the table on stdout (the progress line and notes go to stderr through
:class:`~diffsolve._text.StatusLine`).

The table has one block per problem (a banner with the metric floors, then one line per row, each
printed as soon as its row is written; a failed row shows ``failed: <reason>`` in place of its
measurements) and a closing line naming the results file, the number of failed rows, and the plot.
"""
from __future__ import annotations


from .._text import StatusLine, count
from .problems import Problem

__all__ = ["Table", "format_row", "problem_banner", "summary"]


# --- the table ------------------------------------------------------------------------------------
_COLS = [("solver", 10, "s"), ("eta", 4, "g"), ("nfe", 4, "d"), ("steps", 5, "d"), ("rms_err", 9, "e"),
         ("sw2", 9, "e"), ("frechet", 9, "e"), ("log_p0", 9, "f"), ("wall_s", 7, "f"), ("samp/s", 8, "f"),
         ("net%", 5, "f")]


def _fmt(v, width, kind):
    if v is None:
        return "-".rjust(width)
    if kind == "s":
        return str(v).ljust(width)
    if kind == "d":
        return f"{int(v):>{width}d}"
    if kind == "g":
        return f"{float(v):>{width}g}"
    if kind == "e":
        return f"{float(v):>{width}.2e}"
    if kind == "f":
        v = float(v)
        digits = 3 if abs(v) < 10 else (1 if abs(v) < 1e4 else 0)
        return f"{v:>{width}.{digits}f}"[-width:] if len(f"{v:.{digits}f}") <= width else f"{v:>{width}.1e}"
    return str(v)


def solver_label(solver: str, resolved: str | None = None) -> str:
    """The solver column of a row: its solver spec, or for the default call the spec it resolved to."""
    return solver if not resolved else f"{solver} ({resolved})"


def _label(row: dict) -> str:
    return solver_label(row["solver"], (row.get("ran") or {}).get("solver"))  # (older rows have no "ran")


def _table_values(row: dict) -> list:
    m = row["metrics"]
    sw = m.get("sliced_w2", m.get("sliced_w2_heldout"))
    fd = m.get("frechet", m.get("frechet_heldout"))
    share = row.get("net_time_share")
    return [_label(row), row["eta"], row["nfe"], row["steps"], m.get("rms_error"), sw, fd, m.get("log_p0"),
            row["wall_time_s"], row["samples_per_s"], None if share is None else 100 * share]


def _columns(solver_width: int = 10, extra: tuple = ()) -> list:
    """The table's columns, the solver column widened to ``solver_width`` (long option specs), then
    the ``extra`` metrics (the feature metrics asked for)."""
    return [("solver", max(solver_width, _COLS[0][1]), "s")] + _COLS[1:] + [(m, 9, "e") for m in extra]


def _header(solver_width: int = 10, extra: tuple = ()) -> str:
    return "  ".join(name.rjust(w) if k != "s" else name.ljust(w) for name, w, k in _columns(solver_width, extra))


def format_row(row: dict, solver_width: int = 10, extra: tuple = ()) -> str:
    """A row's table line; a failed record's: solver, η, budget, steps, then ``failed: <reason>``."""
    if row.get("status") == "failed":
        values = [_label(row), row["eta"], row["nfe_budget"], row["steps"]]
        return "  ".join(_fmt(v, w, k) for v, (_, w, k) in zip(values, _columns(solver_width))) + \
            f"   failed: {row['error']}"
    values = _table_values(row) + [row["metrics"].get(m) for m in extra]
    return "  ".join(_fmt(v, w, k) for v, (_, w, k) in zip(values, _columns(solver_width, extra)))


def problem_banner(p: Problem, n: int, floors: dict, solver_width: int = 10, extra: tuple = ()) -> str:
    """The lines above a problem's rows: what it is, the column names, and the metrics' floors."""
    kind = "exact ground truth" if p.exact else ("held-out data" if p.heldout else "no ground truth")
    lines = [f"\n{p.name} ({p.description}; schedule {p.schedule_name}; {n} samples; {kind})",
             _header(solver_width, extra)]
    fl = [None] * len(_COLS) + [floors.get(m) for m in extra]
    fl[0] = "floor"
    for i, name in enumerate(("sliced_w2", "frechet", "log_p0"), start=5):
        for k in (name, name + "_heldout"):
            if floors.get(k) is not None:
                fl[i] = floors[k]
    lines.append("  ".join(_fmt(v, w, k) for v, (_, w, k) in zip(fl, _columns(solver_width, extra))))
    return "\n".join(lines)


class Table:
    """The table on ``stream``: a problem's banner before its first row, then one line per row."""

    def __init__(self, stream, solver_width: int, progress: StatusLine, extra: tuple = ()):
        self.stream, self.width, self.progress, self.extra = stream, solver_width, progress, tuple(extra)
        self._shown: set = set()  # the problems whose banner is out

    def add(self, row: dict, problem: Problem, n: int):
        """Print ``row`` (of ``problem``, ``n`` samples), after the problem's banner the first time."""
        self.progress.close()
        if problem.name not in self._shown:
            print(problem_banner(problem, n, row.get("floors", {}), self.width, self.extra), file=self.stream)
            self._shown.add(problem.name)
        print(format_row(row, self.width, self.extra), file=self.stream, flush=True)


def summary(n_rows: int, elapsed: float, results, n_failed: int = 0, earlier: int = 0) -> str:
    """The closing line: how many rows this run wrote (how many of them failed), in how long, and where;
    with ``earlier`` rows already there (a resumed run), the file's total too."""
    failed = (f" ({n_failed} failed: rerun with --resume to run {'it' if n_failed == 1 else 'them'} again)"
              if n_failed else "")
    total = n_rows - n_failed + earlier
    before = f" (with the {count(earlier, 'row')} of earlier runs: {total} finished in the file)" if earlier else ""
    return f"\n{count(n_rows, 'row')} in {elapsed:.1f} s{failed} -> {results}{before}"
