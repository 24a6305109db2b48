r"""Step grids tuned to a model, a solver and a budget of network evaluations.

Below about ten evaluations the choice of the time grid matters as much as the solver. ``tune_steps``
minimises the error of a deterministic solver's output against a high-accuracy reference solve of
the probability-flow ODE (MATH 3.3; :func:`diffsolve.reference.ode_reference`) from the same
starting points, over a set of pilot samples:

    minimise_θ  log RMS( solve(x_T; grid(θ)) − x*(x_T) ),

with the grid parametrised in λ = log(α/σ) so that every θ gives a valid grid:

    λ_0 = λ(t_max),   λ_k = λ_0 + (λ_end − λ_0) · Σ_{j<k} softmax(θ)_j,   t_k = t(λ_k),

and, when the run ends with the final denoise x̂0(x, t_n), the end point λ_end itself is free
in (λ_0, λ(t_min)] (a larger final noise level is often better at very small budgets).
The search is derivative-free (Nelder–Mead on θ with restarts, started from the best fixed grid), so it works
for any solver and any network without differentiating through either, and it keeps the best grid
seen: the result is never worse than its starting grid on the pilot set. The tuned grid is then
judged on fresh seeds, which the result reports beside the pilot error.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ._text import count
from .denoiser import Denoiser
from .grids import make_grid, validate_grid
from .noise import NoiseSource, parse_seeds
from .processes import NoiseLevel
from .reference import ode_reference
from .solvers.base import get_solver, integrate, parse_solver_spec

__all__ = ["TunedGrid", "tune_steps", "tune_solver", "load_grid", "FIXED_GRIDS"]

FIXED_GRIDS = ("log_snr", "karras", "time", "quadratic")


@dataclass
class TunedGrid:
    """A tuned time grid and how it was obtained. ``t`` is strictly decreasing (float64).

    ``pilot_error`` / ``fresh_error``: RMS error per coordinate of the solver with this grid against
    the reference, on the pilot seeds and on fresh seeds; ``init_*``: the same for the starting grid.
    ``solver_options`` are passed to the solver (for :func:`tune_solver`: the fitted weights);
    ``validation_error``: the error on the held-out pilots that chose the fitted weights.
    ``tuning_nfe``: network evaluations spent by the search (batched calls; each call evaluates
    all pilot samples), ``tuning_seconds``: its wall time.
    """

    t: list
    solver: str
    nfe: int
    denoise_final: bool
    model: str = ""
    schedule: str = ""
    solver_options: dict = field(default_factory=dict)
    init_grid: str = ""
    init_error: float = math.nan
    pilot_error: float = math.nan
    init_fresh_error: float = math.nan
    fresh_error: float = math.nan
    validation_error: float = math.nan
    pilot_seeds: list = field(default_factory=list)
    fresh_seeds: list = field(default_factory=list)
    evaluations: int = 0
    tuning_nfe: int = 0
    tuning_seconds: float = 0.0
    version: str = ""

    @property
    def grid(self) -> Tensor:
        return torch.tensor(self.t, dtype=torch.float64)

    def fresh_summary(self) -> str:
        """The fresh-seed judgement for reports: the errors of the start and of the result on the
        fresh seeds, or that there were none (``fresh=0``)."""
        if not self.fresh_seeds:
            return "fresh: not measured (no fresh seeds)"
        return f"fresh {self.init_fresh_error:.4g} -> {self.fresh_error:.4g}"

    def save(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = asdict(self)  # an error not measured (NaN, e.g. fresh=0) is written as null: valid JSON
        data.update({k: None for k in _ERRORS if isinstance(data[k], float) and not math.isfinite(data[k])})
        path.write_text(json.dumps(data, indent=1))
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
        data.update({k: math.nan for k in _ERRORS if k in data and data[k] is None})  # null: not measured
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
    if not isinstance(solver, str) or not isinstance(data.get("solver_options", {}), dict):
        raise ValueError(f"{path}: 'solver' must be a solver name and 'solver_options' an object of its "
                         f"options, got {json.dumps(solver)} and {json.dumps(data.get('solver_options'))[:80]}")
    try:
        sol = get_solver(solver, **data.get("solver_options", {}))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: cannot build its solver: {e}") from None
    if getattr(sol, "adaptive", False):
        raise ValueError(f"{path}: solver {sol.name!r} chooses its own steps; a tuned grid is for a fixed-step "
                         f"solver (`diffsolve list solvers`)")
    steps, extra = len(t) - 1, int(denoise_final)
    try:
        fits = sol.steps_for_nfe(nfe, denoise_final) == steps
    except ValueError:
        fits = False
    if not fits:
        cost = sol.nfe(steps) + extra
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


def _grid_from_params(schedule, lam0: float, lam_max: float, theta: Tensor, end: float | None) -> Tensor:
    lam_end = lam_max if end is None else lam0 + (lam_max - lam0) * (1.0 / (1.0 + math.exp(-end)))
    w = torch.softmax(theta, 0)
    lam = lam0 + (lam_end - lam0) * torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(w, 0)])
    t = schedule.t_of_log_snr(lam)
    t[0] = schedule.t_max
    if end is None:
        t[-1] = schedule.t_min
    return t


def _params_from_grid(schedule, t: Tensor, tune_end: bool):
    lam = schedule.log_snr(t)
    lam0, lam_max = float(schedule.log_snr(schedule.t_max)), float(schedule.log_snr(schedule.t_min))
    inc = (lam[1:] - lam[:-1]).clamp_min(1e-12)
    theta = torch.log(inc / inc.sum())
    end = None
    if tune_end:
        frac = min(max((float(lam[-1]) - lam0) / (lam_max - lam0), 1e-6), 1 - 1e-6)
        end = math.log(frac / (1 - frac))
    return theta, end


class _Pilots:
    """Pilot and fresh seeds, their start points x_T and reference solutions (the tuning target:
    the probability-flow ODE to t_min followed by the exact x̂0), and the closing judgement on the
    fresh seeds with the tuning cost; shared by both tuners."""

    def __init__(self, denoiser, shape, pilot, fresh, rtol, atol, device):
        self.shape = tuple(shape) if shape is not None else denoiser.shape
        if self.shape is None:
            raise ValueError("give shape=(...) of one sample; the denoiser does not know it")
        self.pilot_seeds = list(range(pilot)) if isinstance(pilot, int) else parse_seeds(pilot)
        if isinstance(fresh, int):
            first = max(self.pilot_seeds) + 1
            self.fresh_seeds = list(range(first, first + fresh)) if fresh else []
        else:
            self.fresh_seeds = parse_seeds(fresh)
        if set(self.fresh_seeds) & set(self.pilot_seeds):
            raise ValueError("fresh seeds must differ from pilot seeds (the point is to judge on unseen samples)")
        self.denoiser, self.rtol, self.atol, self.device = denoiser, rtol, atol, device
        self.nfe_start, self.start_time = denoiser.nfe, time.perf_counter()

    def start(self, seeds) -> Tensor:
        sch = self.denoiser.schedule
        src = NoiseSource(len(seeds), self.shape, seeds=seeds)  # drawn on the CPU: same x_T on every device
        return (float(sch.sigma(sch.t_max)) * src.randn()).to(self.device)

    def reference(self, x) -> Tensor:
        sch = self.denoiser.schedule
        return ode_reference(self.denoiser, x, sch.t_max, sch.t_min, rtol=self.rtol, atol=self.atol,
                             denoise_final=True)

    def finish(self, result, init_error, best_error, extra_nfe: int = 0):
        """Judge the starting point and the result on the fresh seeds (``init_error``, ``best_error``:
        (x_T, reference) -> RMS error), record the tuning cost (network calls since construction
        plus ``extra_nfe``, wall time) and restore the denoiser's call counter."""
        if self.fresh_seeds:
            x = self.start(self.fresh_seeds)
            ref = self.reference(x)
            result.init_fresh_error, result.fresh_error = init_error(x, ref), best_error(x, ref)
        result.tuning_nfe = self.denoiser.nfe - self.nfe_start + extra_nfe
        self.denoiser.nfe = self.nfe_start
        result.tuning_seconds = time.perf_counter() - self.start_time
        return result


def tune_steps(denoiser: Denoiser, solver="dpmpp_2m", nfe: int = 10, *, pilot=64, fresh=256,
               shape=None, denoise_final: bool | str = True, init="auto", tune_end: bool | None = None,
               max_evals: int = 300, solver_options: dict | None = None, model: str = "",
               rtol: float = 1e-8, atol: float = 1e-8, device=None, verbose: bool = False) -> TunedGrid:
    r"""Optimise the time grid of ``solver`` at a budget of ``nfe`` evaluations for ``denoiser``.

    Args:
        denoiser: the model; the probability-flow ODE (η = 0) is tuned.
        solver: a deterministic fixed-step solver: its name or a ``"name:key=value"`` spec
            (:func:`~diffsolve.solvers.parse_solver_spec`); options can also go in ``solver_options``.
        nfe: total evaluations per sample, including the final denoise when ``denoise_final``.
        denoise_final: end with x̂0(x, t_n) (one evaluation of the budget), or not, or ``"auto"``:
            tune both and keep the better on the pilot set (at very small budgets the evaluation is
            often better spent on one more step). Either way the target is the data end point of the
            ODE (the reference solve to t_min followed by the exact x̂0 there).
        pilot: number of pilot samples (seeds 0..pilot−1) or an explicit seed list / ``"0-63"``.
        fresh: fresh samples to judge the grid on (seeds after the pilot ones), or a seed list; 0 to skip.
        shape: shape of one sample; default ``denoiser.shape``.
        init: ``"auto"`` (the best of :data:`FIXED_GRIDS` on the pilot set), a grid kind, or an array.
        tune_end: let the final time move (only meaningful with ``denoise_final``; default: same).
        max_evals: budget of objective evaluations for the search.
        rtol, atol: tolerances of the reference solves.
        device: where the samples live (the network's device); default CPU.

    Returns:
        :class:`TunedGrid` (save it with ``.save(path)``; use it with ``sample(..., steps=grid)``).
    """
    import scipy.optimize

    from . import __version__

    if denoise_final == "auto":
        kw = dict(pilot=pilot, fresh=fresh, shape=shape, init=init, max_evals=max_evals, solver_options=solver_options,
                  model=model, rtol=rtol, atol=atol, device=device, verbose=verbose)
        runs = [tune_steps(denoiser, solver, nfe, denoise_final=d, tune_end=tune_end if d else None, **kw)
                for d in (True, False)]
        best = min(runs, key=lambda r: r.pilot_error)
        best.tuning_nfe = sum(r.tuning_nfe for r in runs)
        best.tuning_seconds = sum(r.tuning_seconds for r in runs)
        best.evaluations = sum(r.evaluations for r in runs)
        return best
    if not isinstance(denoise_final, bool):
        raise ValueError(f"denoise_final must be True, False or 'auto', got {denoise_final!r}")
    if not isinstance(solver, str):  # the result records the solver by name and options
        raise TypeError(f"tune_steps takes the solver by name or spec ('unipc', 'unipc:order=3:variant=bh1') "
                        f"and its options in solver_options, so that the tuned grid can rebuild it; "
                        f"got {type(solver).__name__}")
    spec_options = parse_solver_spec(solver)[1]
    sol = get_solver(solver, **(solver_options or {}))
    solver_options = {**spec_options, **(solver_options or {})}
    if getattr(sol, "adaptive", False) or not hasattr(sol, "step"):
        raise ValueError(f"tune_steps needs a fixed-step solver; {sol.name!r} chooses its own steps")
    schedule = denoiser.schedule
    steps = sol.steps_for_nfe(nfe, denoise_final)
    tune_end = denoise_final if tune_end is None else bool(tune_end)
    if tune_end and not denoise_final:
        raise ValueError("tune_end needs denoise_final=True (without it the end time is the data time t_min)")
    pilots = _Pilots(denoiser, shape, pilot, fresh, rtol, atol, device)
    pilot_seeds, fresh_seeds, start, reference = pilots.pilot_seeds, pilots.fresh_seeds, pilots.start, pilots.reference
    level = NoiseLevel(schedule, eta=0.0)

    x_pilot = start(pilot_seeds)
    ref_pilot = reference(x_pilot)
    evaluations = 0

    def error(t: Tensor, x, ref) -> float:
        nonlocal evaluations
        evaluations += 1
        out, _ = integrate(sol, denoiser, x, t, level=level, denoise_final=denoise_final)
        e = float(((out - ref) ** 2).mean().sqrt())
        return e if math.isfinite(e) else math.inf

    # starting grid
    if isinstance(init, str) and init == "auto":
        candidates = {k: make_grid(schedule, steps, k) for k in FIXED_GRIDS}
    elif isinstance(init, str):
        candidates = {init: make_grid(schedule, steps, init)}
    else:
        t_init = validate_grid(schedule, init)
        if len(t_init) - 1 != steps:
            raise ValueError(f"init grid has {count(len(t_init) - 1, 'step')}; {sol.name} at nfe={nfe} needs {steps}")
        candidates = {"user": t_init}
    scores = {k: error(t, x_pilot, ref_pilot) for k, t in candidates.items()}
    init_name = min(scores, key=scores.get)
    init_t, init_err = candidates[init_name], scores[init_name]
    if verbose:
        print(f"tune_steps: {sol.name} nfe={nfe} steps={steps}; fixed grids: "
              + ", ".join(f"{k}={v:.4g}" for k, v in scores.items()))

    lam0 = float(schedule.log_snr(schedule.t_max))
    lam_max = float(schedule.log_snr(schedule.t_min))
    theta0, end0 = _params_from_grid(schedule, init_t, tune_end)
    p0 = torch.cat([theta0, torch.tensor([end0], dtype=torch.float64)]) if tune_end else theta0
    best = {"err": init_err, "t": init_t}

    def objective(p):
        p = torch.as_tensor(p, dtype=torch.float64)
        theta, end = (p[:-1], float(p[-1])) if tune_end else (p, None)
        try:
            t = validate_grid(schedule, _grid_from_params(schedule, lam0, lam_max, theta, end))
        except ValueError:
            return 1e6
        e = error(t, x_pilot, ref_pilot)
        if e < best["err"]:
            best.update(err=e, t=t)
        return math.log(e) if e > 0 else -1e6

    # Nelder–Mead, restarted from the best point with a fresh, smaller simplex whenever it
    # converges early (a restart escapes the simplex collapse that stalls it in 5-12 dimensions)
    scale, p = 0.5, p0
    while max_evals - evaluations > len(p0) + 1:
        simplex = [p.numpy()] + [(p + scale * torch.eye(len(p), dtype=torch.float64)[k]).numpy()
                                 for k in range(len(p))]
        res = scipy.optimize.minimize(objective, p.numpy(), method="Nelder-Mead",
                                      options={"maxfev": max_evals - evaluations, "initial_simplex": simplex,
                                               "xatol": 1e-4, "fatol": 1e-5})
        p = torch.as_tensor(res.x, dtype=torch.float64)
        scale *= 0.5
        if scale < 0.02:
            break

    result = TunedGrid(t=best["t"].tolist(), solver=sol.name, nfe=int(nfe), denoise_final=denoise_final,
                       model=model, schedule=repr(schedule), solver_options=dict(solver_options or {}),
                       init_grid=init_name, init_error=init_err, pilot_error=best["err"],
                       pilot_seeds=pilot_seeds, fresh_seeds=fresh_seeds, version=__version__)
    result.evaluations = evaluations
    pilots.finish(result, lambda x, ref: error(init_t, x, ref), lambda x, ref: error(best["t"], x, ref))
    if verbose:
        print(f"tune_steps: pilot {init_err:.4g} ({init_name}) -> {result.pilot_error:.4g}; "
              f"{result.fresh_summary()}; "
              f"{evaluations} solves, {result.tuning_seconds:.1f} s")
    return result


def tune_solver(denoiser: Denoiser, nfe: int = 5, *, grid="auto", grid_solver: str = "unipc", history: int = 3,
                shifts: bool = True, pilot=1024, fresh=1024, validation: float = 0.25, iterations: int = 300,
                lr: float = 0.01,
                check_every: int = 10, shape=None, denoise_final: bool = False, max_evals: int = 300,
                model: str = "", rtol: float = 1e-8, atol: float = 1e-8, device=None,
                verbose: bool = False) -> TunedGrid:
    r"""Fit the per-step weights of :class:`~diffsolve.solvers.learned.LearnedMultistep` to a model,
    a grid and a budget (the solver's predictor and corrector weights and, with ``shifts``, the
    λ-shifts of the times the network is told; the grid stays fixed).

    The pilot seeds are split into a training part and a held-out part (``validation``). Adam
    minimises the mean squared error of the run against the reference solves on the training
    part, differentiating through the solver and the network (so the network must be
    differentiable in x, and with ``shifts`` in its time input: any torch module); every ``check_every`` iterations the held-out error is
    measured, and the weights with the lowest held-out error are kept — the starting weights
    included, so the result is never worse than its starts there.
    The fit is not convex: it runs from up to three starts — 2M; 2M choosing the evaluation points
    while the state advances by DDIM steps; and, for a tuned grid, the weights of the solver it was
    tuned for when that solver is in the family (DPM-Solver++ 1–3M, UniPC; read off by
    :func:`~diffsolve.solvers.learned.weights_of`), so the result is then never worse than that
    solver on its own grid (held-out pilots) — ``iterations`` each, and keeps the best.
    Fresh seeds then judge it, as in :func:`tune_steps`.

    Args:
        grid: the fixed grid: ``"auto"`` (tune one for ``grid_solver`` with :func:`tune_steps` on the
            same pilots, ``max_evals`` solves), a :class:`TunedGrid` or its JSON path (its
            ``denoise_final`` is used), a grid kind, or an array of times.
        history: evaluations each step combines (k of the solver).
        shifts: also fit the evaluation-time shifts δ (start: 0).
        pilot, fresh, shape, rtol, atol, device, model: as in :func:`tune_steps`.
        validation: fraction of the pilot seeds held out to choose the iterate.
        iterations, lr: Adam iterations per start (one solve of the training pilots each), step size.

    Returns:
        :class:`TunedGrid` with ``solver="learned"`` and the weights in ``solver_options``;
        ``sample(denoiser, steps=result)`` runs it.
    """
    from . import __version__
    from .solvers.learned import LearnedMultistep, default_predictor, weights_of

    schedule = denoiser.schedule
    if not 0.0 < validation < 1.0:
        raise ValueError(f"validation must be a fraction in (0, 1), got {validation!r}")
    if iterations < 0 or check_every < 1 or not lr > 0:
        raise ValueError("need iterations >= 0, check_every >= 1 and lr > 0")
    pilots = _Pilots(denoiser, shape, pilot, fresh, rtol, atol, device)
    pilot_seeds, fresh_seeds, start, reference = pilots.pilot_seeds, pilots.fresh_seeds, pilots.start, pilots.reference
    n_val = max(1, round(validation * len(pilot_seeds)))
    if len(pilot_seeds) - n_val < 1:
        raise ValueError(f"{len(pilot_seeds)} pilot seeds leave nothing to train on; use more pilots")
    grid_nfe = 0
    tuned_grid, grid_name = load_grid(grid), None
    if tuned_grid is None and isinstance(grid, str) and grid == "auto":
        tuned_grid = tune_steps(denoiser, grid_solver, nfe, pilot=pilot, fresh=0, shape=shape,
                                denoise_final=denoise_final, max_evals=max_evals, model=model, rtol=rtol,
                                atol=atol, device=device, verbose=verbose)
        grid_name, grid_nfe = f"tuned for {grid_solver}", tuned_grid.tuning_nfe
    if tuned_grid is not None:
        t, denoise_final = tuned_grid.grid, tuned_grid.denoise_final
        grid_name = grid_name or f"tuned for {tuned_grid.solver}"
    else:
        base = LearnedMultistep(history=history)
        t = make_grid(schedule, base.steps_for_nfe(nfe, denoise_final), grid)
        grid_name = grid if isinstance(grid, str) else "user"
    steps = len(t) - 1
    if steps + int(denoise_final) != int(nfe):
        raise ValueError(f"the grid has {count(steps, 'step')}{' + the final x̂0' if denoise_final else ''}, "
                         f"not a budget of {nfe} evaluations; the learned solver takes one evaluation per step, "
                         f"so tune it at NFE {steps + int(denoise_final)} on this grid or give a grid for NFE {nfe}")
    level = NoiseLevel(schedule, eta=0.0)

    def run(p, c, d, x):
        sol = LearnedMultistep(predictor=p, corrector=c, history=history, shift=d if shifts else None)
        return integrate(sol, denoiser, x, t, level=level, denoise_final=denoise_final)[0]

    def rms(p, c, d, x, ref) -> float:
        with torch.no_grad():
            e = float(((run(p, c, d, x) - ref) ** 2).mean().sqrt())
        return e if math.isfinite(e) else math.inf

    x_pilot = start(pilot_seeds)
    ref_pilot = reference(x_pilot)
    x_train, ref_train = x_pilot[:-n_val], ref_pilot[:-n_val]
    x_val, ref_val = x_pilot[-n_val:], ref_pilot[-n_val:]

    # two starts, the better one kept by its held-out error: DPM-Solver++(2M) on this grid ("2m"), and
    # the same predictor choosing where the next evaluation happens while the corrector advances
    # the state with X_i alone (c_{i,m} = −p_{i,m}, c_{i,0} = 0: a DDIM step; "2m+ddim")
    p0 = torch.tensor(default_predictor(schedule.log_snr(t).tolist(), history), dtype=torch.float64)
    c0 = torch.zeros(steps, history, dtype=torch.float64)
    c1 = c0.clone()
    c1[:-1, 1:] = -p0[:-1]
    d0 = torch.zeros(steps, dtype=torch.float64)
    starts = {"2m": (p0, c0), "2m+ddim": (p0, c1)}
    if tuned_grid is not None:  # and the weights of the solver the grid was tuned for, where it is in the family
        try:
            own = weights_of(get_solver(tuned_grid.solver, **tuned_grid.solver_options), schedule, t, history)
            starts[tuned_grid.solver] = tuple(torch.tensor(w, dtype=torch.float64) for w in own)
        except ValueError as e:
            if verbose:
                print(f"tune_solver: no start from {tuned_grid.solver}: {e}")
    base = tuned_grid.solver if tuned_grid is not None and tuned_grid.solver in starts else "2m"
    pb, cb = starts[base]  # the reference point of init_*: the grid's own solver, or 2M
    init_err = rms(pb, cb, d0, x_val, ref_val)
    best = {"err": init_err, "p": pb, "c": cb, "d": d0, "iteration": 0, "start": base}
    for name, (p_init, c_init) in starts.items():
        P, C = p_init.clone().requires_grad_(True), c_init.clone().requires_grad_(True)
        D = d0.clone().requires_grad_(shifts)
        e = rms(p_init, c_init, d0, x_val, ref_val)
        if e < best["err"]:
            best.update(err=e, p=p_init, c=c_init, d=d0, iteration=0, start=name)
        opt = torch.optim.Adam([P, C, D] if shifts else [P, C], lr=lr)
        for it in range(1, iterations + 1):
            opt.zero_grad()
            with torch.enable_grad():
                loss = ((run(P, C, D, x_train) - ref_train) ** 2).mean()
                if not torch.isfinite(loss):
                    break  # diverged: keep the best iterate so far
                loss.backward()
            opt.step()
            if it % check_every == 0 or it == iterations:
                e = rms(P.detach(), C.detach(), D.detach(), x_val, ref_val)
                if e < best["err"]:
                    best.update(err=e, p=P.detach().clone(), c=C.detach().clone(), d=D.detach().clone(),
                                iteration=it, start=name)
                if verbose:
                    print(f"tune_solver: start {name}, iteration {it}: train {math.sqrt(float(loss)):.4g}, "
                          f"held out {e:.4g}")
    p_best, c_best, d_best = best["p"], best["c"], best["d"]
    options = {"predictor": p_best.tolist(), "corrector": c_best.tolist(), "history": history}
    if shifts:
        options["shift"] = d_best.tolist()
    result = TunedGrid(t=t.tolist(), solver=LearnedMultistep.name, nfe=int(nfe), denoise_final=denoise_final,
                       model=model, schedule=repr(schedule), solver_options=options,
                       init_grid=f"{grid_name}; weights from start {best['start']} (init_*: {base} weights)",
                       init_error=rms(pb, cb, d0, x_pilot, ref_pilot),
                       pilot_error=rms(p_best, c_best, d_best, x_pilot, ref_pilot),
                       validation_error=best["err"], pilot_seeds=pilot_seeds, fresh_seeds=fresh_seeds,
                       evaluations=len(starts) * iterations, version=__version__)
    pilots.finish(result, lambda x, ref: rms(pb, cb, d0, x, ref), lambda x, ref: rms(p_best, c_best, d_best, x, ref),
                  extra_nfe=grid_nfe)
    if verbose:
        print(f"tune_solver: pilot {result.init_error:.4g} -> {result.pilot_error:.4g} (held out "
              f"{init_err:.4g} -> {best['err']:.4g}, start {best['start']}, iteration {best['iteration']}); "
              f"{result.fresh_summary()}; {result.tuning_seconds:.1f} s")
    return result
