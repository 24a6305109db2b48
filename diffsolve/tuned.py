"""The tuned-grid file: a time grid tuned to a model, a solver and a budget, and how it was obtained.

:class:`TunedGrid` is what :func:`diffsolve.tune.tune_steps` and :func:`diffsolve.tune.tune_solver`
return and what ``diffsolve tune`` writes (JSON); :func:`load_grid` reads it back for
:func:`diffsolve.sample`, the command line and the benchmarks. Loading checks the fields that decide
how the grid runs and names the file and the field in its messages.

This module is the file format only: it imports neither the tuners nor the sampler nor the package
root, so reading a grid costs no tuning machinery.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ._text import count
from .grids import validate_grid
from .runfiles import write_json
from .solvers import Solver, get_solver

__all__ = ["TunedGrid", "load_grid"]


@dataclass
class TunedGrid:
    """A tuned time grid and how it was obtained. ``t`` is strictly decreasing (float64).

    ``pilot_error`` / ``fresh_error``: RMS error per coordinate of the solver with this grid against
    the reference, on the pilot seeds and on fresh seeds; ``init_*``: the same for the starting grid.
    ``screened``: the candidate start points the pilots were chosen from (0: none), with the pilots'
    ``pilot_weights`` (empty: equal); the pilot errors are then weighted means (:mod:`diffsolve._tuning`).
    ``solver_options`` are passed to the solver (for :func:`~diffsolve.tune.tune_solver`: the fitted
    weights); ``validation_error``: the error on the held-out pilots that chose the fitted weights.
    ``tuning_nfe``: network evaluations spent by the search (batched calls; each call evaluates
    all pilot samples), ``tuning_seconds``: its wall time.

    ``schedule`` (the repr of the model's schedule) and ``log_snr`` (λ at each time of ``t`` under it)
    record the schedule the grid was tuned on: a run with another schedule, or the same kind with
    other parameters, is refused (:func:`diffsolve.checks.check_tuned_schedule`). Files written before
    ``log_snr`` was recorded load with an empty list (their range is still checked).
    """

    t: list
    solver: str
    nfe: int
    denoise_final: bool
    model: str = ""
    schedule: str = ""
    log_snr: list = field(default_factory=list)
    solver_options: dict = field(default_factory=dict)
    init_grid: str = ""
    init_error: float = math.nan
    pilot_error: float = math.nan
    init_fresh_error: float = math.nan
    fresh_error: float = math.nan
    validation_error: float = math.nan
    pilot_seeds: list = field(default_factory=list)
    pilot_weights: list = field(default_factory=list)
    screened: int = 0
    fresh_seeds: list = field(default_factory=list)
    evaluations: int = 0
    tuning_nfe: int = 0
    tuning_seconds: float = 0.0
    version: str = ""

    @property
    def grid(self) -> Tensor:
        return torch.tensor(self.t, dtype=torch.float64)

    def other_model(self, name: str | None) -> str | None:
        """A note when the grid was tuned on a model other than ``name`` (both named, as ``diffsolve
        tune`` records ``--model``/``--problem``), else None. Such a grid runs (its schedule is checked
        when it runs), but its times were fitted to the other model's trajectories."""
        if not self.model or not name or name == self.model:
            return None
        return (f"the tuned grid was tuned on {self.model!r} and this run samples {name!r}: its times were fitted "
                f"to the other model; tune a grid for {name!r} (`diffsolve tune`, or diffsolve.tune_steps)")

    def fresh_summary(self) -> str:
        """The fresh-seed judgement for reports: the errors of the start and of the result on the
        fresh seeds, or that there were none (``fresh=0``)."""
        if not self.fresh_seeds:
            return "fresh: not measured (no fresh seeds)"
        return f"fresh {self.init_fresh_error:.4g} -> {self.fresh_error:.4g}"

    @property
    def fingerprint(self) -> str:
        """16 hex digits of the SHA-256 of what the grid runs: solver, options, times, final denoise."""
        run = dict(solver=self.solver, solver_options=self.solver_options, t=list(self.t),
                   denoise_final=self.denoise_final)
        return hashlib.sha256(json.dumps(run, sort_keys=True, default=repr).encode()).hexdigest()[:16]

    def save(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = asdict(self)  # an error not measured (NaN, e.g. fresh=0) is written as null: valid JSON
        data.update({k: None for k in _ERRORS if isinstance(data[k], float) and not math.isfinite(data[k])})
        write_json(path, data)  # whole or not at all; a failure is WriteFailed
        return path

    @classmethod
    def load(cls, path) -> "TunedGrid":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no tuned grid file at {path}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not a tuned-grid JSON file: {e}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path} is not a tuned-grid file: it holds a JSON {type(data).__name__}, "
                             f"not an object; make one with `diffsolve tune`")
        missing = {"t", "solver", "nfe", "denoise_final"} - set(data)
        if missing:
            raise ValueError(f"{path} is not a tuned-grid file: missing {sorted(missing)}")
        known = set(cls.__dataclass_fields__)
        data = {k: v for k, v in data.items() if k in known}
        nullable = _ERRORS + ("tuning_seconds",)
        data.update({k: math.nan for k in nullable if k in data and data[k] is None})  # null: not measured
        _check_fields(path, data)
        return cls(**data)


_ERRORS = ("init_error", "pilot_error", "init_fresh_error", "fresh_error", "validation_error")


def _check_fields(path, data: dict):
    """The fields of a tuned-grid file that decide how it runs: a valid grid ``t`` (finite, strictly
    decreasing; its range is checked against the schedule when it runs), a JSON boolean
    ``denoise_final``, a solver that can be built, and the ``nfe`` that the grid costs that solver."""
    t, solver, nfe, denoise_final = data["t"], data["solver"], data["nfe"], data["denoise_final"]
    if not isinstance(denoise_final, bool):
        raise ValueError(f"{path}: 'denoise_final' must be true or false (a JSON boolean), got "
                         f"{json.dumps(denoise_final)}; write true if the run ends with the final x̂0 "
                         f"evaluation, else false")
    if not isinstance(t, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in t):
        raise ValueError(f"{path}: 't' must be a list of numbers (the times from noise to data), got "
                         f"{json.dumps(t)[:80]}; make the file with `diffsolve tune`")
    try:
        validate_grid(None, t)
    except ValueError as e:
        raise ValueError(f"{path}: 't' is not a valid time grid: {e}") from None
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise ValueError(f"{path}: 'nfe' must be a positive integer (network evaluations per sample), got "
                         f"{json.dumps(nfe)}")
    for key in _ERRORS + ("tuning_seconds",):
        v = data.get(key, math.nan)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"{path}: {key!r} must be a number (or null: not measured), got {json.dumps(v)[:40]}")
    for key in ("pilot_seeds", "fresh_seeds", "pilot_weights"):
        v = data.get(key, [])
        if not isinstance(v, list) or not all(isinstance(u, (int, float)) and not isinstance(u, bool) for u in v):
            raise ValueError(f"{path}: {key!r} must be a list of numbers, got {json.dumps(v)[:40]}")
    lam, sch = data.get("log_snr", []), data.get("schedule", "")
    if not isinstance(sch, str) or not isinstance(lam, list) or (lam and (len(lam) != len(t) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in lam))):
        raise ValueError(f"{path}: 'schedule' must be a string and 'log_snr' a list of finite numbers, one per time of "
                         f"'t' (or empty), got {json.dumps(sch)[:40]} and {json.dumps(lam)[:60]}; make the file "
                         f"with `diffsolve tune`")
    if not isinstance(solver, str) or not isinstance(data.get("solver_options", {}), dict):
        raise ValueError(f"{path}: 'solver' must be a solver name and 'solver_options' an object of its "
                         f"options, got {json.dumps(solver)} and {json.dumps(data.get('solver_options'))[:80]}")
    try:
        sol = get_solver(solver, **data.get("solver_options", {}))
        if not sol.adaptive:
            sol.check_steps(len(t) - 1)  # e.g. fitted weights: one row per step of 't'
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: cannot run its solver on its grid: {e}") from None
    _check_cost(path, sol, len(t) - 1, nfe, denoise_final)


def _check_cost(path, sol: Solver, steps: int, nfe: int, denoise_final: bool):
    """The file's ``nfe`` is what its grid of ``steps`` steps costs ``sol`` (with the final denoise
    when ``denoise_final``). A solver that chooses its own steps has no cost per grid (its ``nfe``
    raises TypeError): it cannot run a tuned grid."""
    extra = int(denoise_final)
    try:
        cost = sol.nfe(steps) + extra
    except TypeError:
        raise ValueError(f"{path}: solver {sol.name!r} chooses its own steps; a tuned grid is for a fixed-step "
                         f"solver (`diffsolve list solvers`)") from None
    try:
        fits = sol.steps_for_nfe(nfe, denoise_final) == steps
    except ValueError:  # the budget is below the solver's fewest steps
        fits = False
    if not fits:
        raise ValueError(f"{path}: 'nfe' is {nfe}, but its grid 't' has {count(steps, 'step')}, which "
                         f"{sol.name!r} runs in {cost} evaluations{' with the final denoise' if extra else ''}; "
                         f"set 'nfe' to {cost} or make the file again with `diffsolve tune`")


def load_grid(spec) -> TunedGrid | None:
    """A :class:`TunedGrid` from itself or from a tuned-grid JSON path; None for other specs."""
    if isinstance(spec, TunedGrid):
        return spec
    if isinstance(spec, (str, Path)) and str(spec).endswith(".json"):
        return TunedGrid.load(spec)
    return None
