"""The tuners' machinery: the pilot set (seeds, reference solves, counted error solves, the result
with its fresh-seed judgement and cost), the input checks, the progress line, and the grid search
behind :func:`diffsolve.tune.tune_steps` (which :func:`diffsolve.solver_fit.tune_solver` also runs
for ``grid="auto"``)."""
from __future__ import annotations

import math
import time
from functools import partial

import torch
from torch import Tensor

from ._text import StatusLine, count
from ._version import __version__
from .checks import check_tuning
from .denoiser import Denoiser
from .grids import make_grid, validate_grid
from .loop import integrate
from .noise import NoiseSource, seed_list
from .processes import NoiseLevel
from .reference import ode_reference
from .solvers import get_solver, parse_solver_spec
from .tuned import TunedGrid

FIXED_GRIDS = ("log_snr", "karras", "time", "quadratic")  # the starting grids tune_steps scores


class _Pilots:
    """What both tuners share: the seeds, their start points x_T and reference solutions (the ODE to
    t_min, then the exact x̂0), solves of the ODE, and the result judged on the fresh seeds."""

    progress = StatusLine(False, "")  # the tuner's, set once it is made

    def __init__(self, denoiser, checked: tuple, rtol, atol):
        self.shape, self.pilot_seeds, self.fresh_seeds, device = checked
        self.denoiser, self.rtol, self.atol, self.device = denoiser, rtol, atol, device
        self.level = NoiseLevel(denoiser.schedule, eta=0.0)
        self.nfe_start, self.start_time, self.solves = denoiser.nfe, time.perf_counter(), 0

    def targets(self, seeds) -> tuple[Tensor, Tensor]:
        """The start points x_T of ``seeds`` and their reference solutions."""
        self.progress(f"reference solves of {count(len(seeds), 'seed')} (rtol {self.rtol:g})", force=True)
        sch = self.denoiser.schedule
        src = NoiseSource(len(seeds), self.shape, seeds=seeds)  # drawn on the CPU: same x_T on every device
        x = (float(sch.sigma(sch.t_max)) * src.randn()).to(self.device)
        return x, ode_reference(self.denoiser, x, sch.t_max, sch.t_min, rtol=self.rtol, atol=self.atol,
                                denoise_final=True)

    def error(self, sol, denoise_final: bool, t: Tensor, x, ref) -> float:
        """RMS error per coordinate of a solve against ``ref``, inf if not finite (``solves`` counts them)."""
        self.solves += 1
        out = integrate(sol, self.denoiser, x, t, level=self.level, denoise_final=denoise_final).x
        e = float(((out - ref) ** 2).mean().sqrt())
        return e if math.isfinite(e) else math.inf

    def result(self, error, judged: tuple, extra_nfe: int = 0, **fields) -> TunedGrid:
        """The :class:`TunedGrid` of ``fields``, schedule, seeds, version, the fresh-seed errors of the start
        and the result (``judged``; ``error(which, x, ref)``) and the tuning cost; resets the counter."""
        sch = self.denoiser.schedule
        lam = sch.log_snr(torch.tensor(fields["t"], dtype=torch.float64)).tolist()  # the schedule, for the checks
        result = TunedGrid(schedule=repr(sch), log_snr=lam, pilot_seeds=self.pilot_seeds,
                           fresh_seeds=self.fresh_seeds, version=__version__, **fields)
        if self.fresh_seeds:
            x, ref = self.targets(self.fresh_seeds)
            result.init_fresh_error, result.fresh_error = (error(which, x, ref) for which in judged)
        result.tuning_nfe = self.denoiser.nfe - self.nfe_start + extra_nfe
        self.denoiser.nfe = self.nfe_start
        result.tuning_seconds = time.perf_counter() - self.start_time
        self.progress.close()
        return result


def _check(denoiser, nfe, pilot, fresh, shape, max_evals, rtol, atol, device, min_pilot: int = 1) -> tuple:
    """What both tuners are given, checked once: (sample shape, pilot seeds, fresh seeds, device)."""
    shape, device = check_tuning(denoiser, nfe, shape, max_evals, rtol, atol, device)
    pilots = seed_list(pilot, "pilot", min_pilot)
    fresh = seed_list(fresh, "fresh", first=max(pilots) + 1)  # a number of fresh seeds: those after the pilots
    if set(fresh) & set(pilots):
        raise ValueError("fresh seeds must differ from pilot seeds (the point is to judge on unseen samples)")
    return shape, pilots, fresh, device


def _fixed_step_solver(solver, solver_options: dict | None):
    """The solver to tune and all its options; one that chooses its own steps has no ``nfe`` (TypeError)."""
    if not isinstance(solver, str):  # the result records the solver by name and options
        raise TypeError(f"tune_steps takes the solver by name or spec ('unipc', 'unipc:order=3:variant=bh1') and "
                        f"its options in solver_options, so that the tuned grid can rebuild it; "
                        f"got {type(solver).__name__}")
    spec_options = parse_solver_spec(solver)[1]
    sol = get_solver(solver, **(solver_options or {}))
    try:
        sol.nfe(sol.min_steps)
    except TypeError:
        raise ValueError(f"tune_steps needs a fixed-step solver; {sol.name!r} chooses its own steps") from None
    return sol, {**spec_options, **(solver_options or {})}


class _GridSearch:
    """The search of :func:`tune_steps`: the starting grid, then Nelder–Mead from there; the best grid
    on the pilots is ``best_t`` (``best_err``); ``error(t, x, ref)`` is the solver's with grid ``t``."""

    max_evals = 0  # the search's budget of solves (set by run; shown by the progress)

    def __init__(self, pilots: _Pilots, sol, denoise_final: bool, tune_end: bool):
        self.pilots, self.sol, self.tune_end = pilots, sol, tune_end
        self.error = partial(pilots.error, sol, denoise_final)  # (t, x, ref) -> RMS error
        self.schedule = sch = pilots.denoiser.schedule
        self.lam0, self.lam_max = float(sch.log_snr(sch.t_max)), float(sch.log_snr(sch.t_min))
        self.x, self.ref = pilots.targets(pilots.pilot_seeds)

    def choose_start(self, init, steps: int, nfe: int) -> tuple[str, Tensor, float, dict]:
        """Score the starting grids (``"auto"``: :data:`FIXED_GRIDS`): the best's name, grid, error; all scores."""
        if isinstance(init, str):
            candidates = {k: make_grid(self.schedule, steps, k) for k in (FIXED_GRIDS if init == "auto" else [init])}
        else:
            candidates = {"user": validate_grid(self.schedule, init)}
            if len(candidates["user"]) - 1 != steps:
                raise ValueError(f"init grid has {count(len(candidates['user']) - 1, 'step')}; {self.sol.name} at "
                                 f"nfe={nfe} needs {steps}")
        scores = {k: self.error(t, self.x, self.ref) for k, t in candidates.items()}
        name = min(scores, key=scores.get)
        self.best_t, self.best_err = candidates[name], scores[name]
        return name, self.best_t, self.best_err, scores

    def grid(self, p) -> Tensor:
        """The grid of parameters ``p``: θ, and with ``tune_end`` the logit of λ_end's place in (λ_0, λ(t_min)]."""
        p = torch.as_tensor(p, dtype=torch.float64)
        theta, end = (p[:-1], float(p[-1])) if self.tune_end else (p, None)
        lam0, lam_max, sch = self.lam0, self.lam_max, self.schedule
        lam_end = lam_max if end is None else lam0 + (lam_max - lam0) * (1.0 / (1.0 + math.exp(-end)))
        t = sch.t_of_log_snr(lam0 + (lam_end - lam0) * torch.cat([torch.zeros(1, dtype=torch.float64),
                                                                    torch.cumsum(torch.softmax(theta, 0), 0)]))
        t[0] = sch.t_max
        if end is None:
            t[-1] = sch.t_min
        return t

    def params(self, t: Tensor) -> Tensor:
        """The parameters of the grid ``t`` (the inverse of :meth:`grid`)."""
        lam = self.schedule.log_snr(t)
        inc = (lam[1:] - lam[:-1]).clamp_min(1e-12)
        theta = torch.log(inc / inc.sum())
        if not self.tune_end:
            return theta
        frac = min(max((float(lam[-1]) - self.lam0) / (self.lam_max - self.lam0), 1e-6), 1 - 1e-6)
        return torch.cat([theta, torch.tensor([math.log(frac / (1 - frac))], dtype=torch.float64)])

    def __call__(self, p) -> float:  # the objective: the log pilot error of the grid of parameters p
        try:
            t = validate_grid(self.schedule, self.grid(p))
        except ValueError:
            return 1e6
        e = self.error(t, self.x, self.ref)
        if e < self.best_err:
            self.best_t, self.best_err = t, e
        self.pilots.progress(f"solve {self.pilots.solves}/{self.max_evals}, best pilot error {self.best_err:.4g}")
        return math.log(e) if e > 0 else -1e6

    def run(self, max_evals: int):
        """Nelder–Mead up to ``max_evals`` solves, restarted with a smaller simplex whenever it converges
        early (a restart escapes the simplex collapse that stalls it in 5-12 dimensions)."""
        import scipy.optimize
        scale, p, self.max_evals = 0.5, self.params(self.best_t), max_evals
        while max_evals - self.pilots.solves > len(p) + 1:
            self.pilots.progress(f"Nelder-Mead from solve {self.pilots.solves}/{max_evals} (simplex {scale:g}), "
                                 f"best pilot error {self.best_err:.4g}", force=True)
            simplex = [p.numpy()] + [(p + scale * torch.eye(len(p), dtype=torch.float64)[k]).numpy()
                                     for k in range(len(p))]
            res = scipy.optimize.minimize(self, p.numpy(), method="Nelder-Mead", options={
                "maxfev": max_evals - self.pilots.solves, "initial_simplex": simplex, "xatol": 1e-4, "fatol": 1e-5})
            p = torch.as_tensor(res.x, dtype=torch.float64)
            scale *= 0.5
            if scale < 0.02:
                break


def _tune_steps(denoiser: Denoiser, solver, nfe: int, checked: tuple, *, denoise_final, init, tune_end,
                max_evals: int, solver_options, model: str, rtol: float, atol: float, verbose: bool,
                progress: bool | None = None) -> TunedGrid:
    """:func:`tune_steps` on checked arguments."""
    if isinstance(denoise_final, str):  # "auto": both, the better one kept
        kw = dict(init=init, max_evals=max_evals, solver_options=solver_options, model=model, rtol=rtol, atol=atol,
                  verbose=verbose, progress=progress)
        runs = [_tune_steps(denoiser, solver, nfe, checked, denoise_final=d, tune_end=tune_end if d else None, **kw)
                for d in (True, False)]
        best = min(runs, key=lambda r: r.pilot_error)  # charged with the cost of both
        for k in ("tuning_nfe", "tuning_seconds", "evaluations"):
            setattr(best, k, sum(getattr(r, k) for r in runs))
        return best
    sol, solver_options = _fixed_step_solver(solver, solver_options)
    steps = sol.steps_for_nfe(nfe, denoise_final)
    tune_end = denoise_final if tune_end is None else bool(tune_end)
    if tune_end and not denoise_final:
        raise ValueError("tune_end needs denoise_final=True (without it the end time is the data time t_min)")
    pilots = _Pilots(denoiser, checked, rtol, atol)
    pilots.progress = StatusLine(progress, f"tune_steps {sol.name} nfe={nfe}")
    search = _GridSearch(pilots, sol, denoise_final, tune_end)
    init_name, init_t, init_err, scores = search.choose_start(init, steps, nfe)
    if verbose:
        pilots.progress.close()
        print(f"tune_steps: {sol.name} nfe={nfe} steps={steps}; fixed grids: "
              + ", ".join(f"{k}={v:.4g}" for k, v in scores.items()))
    search.run(max_evals)
    result = pilots.result(search.error, (init_t, search.best_t), t=search.best_t.tolist(), solver=sol.name,
                           nfe=int(nfe), denoise_final=denoise_final, model=model, solver_options=dict(solver_options),
                           init_grid=init_name, init_error=init_err, pilot_error=search.best_err,
                           evaluations=pilots.solves)
    if verbose:
        print(f"tune_steps: pilot {init_err:.4g} ({init_name}) -> {result.pilot_error:.4g}; "
              f"{result.fresh_summary()}; {pilots.solves} solves, {result.tuning_seconds:.1f} s")
    return result
