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

import math
import time
from functools import partial

import torch
from torch import Tensor

from ._text import count
from ._version import __version__
from .checks import (check_flag, check_grid_values, check_int, check_number, check_options, check_tuned_schedule,
                     check_tuning)
from .denoiser import Denoiser
from .grids import make_grid, validate_grid
from .loop import integrate
from .noise import NoiseSource, seed_list
from .processes import NoiseLevel
from .reference import ode_reference
from .solvers import get_solver, parse_solver_spec
from .solvers.learned import LearnedMultistep, default_predictor, weights_of
from .tuned import TunedGrid, load_grid  # the file format; re-exported here, where it was first defined

__all__ = ["TunedGrid", "tune_steps", "tune_solver", "load_grid", "FIXED_GRIDS"]

FIXED_GRIDS = ("log_snr", "karras", "time", "quadratic")


class _Progress:
    """A tuning run's progress on stderr (``progress=``): one line updated in place on a terminal, else
    a line at each phase and restart and every ``every`` seconds; ``None``: on only on a terminal."""

    def __init__(self, on: bool | None, label: str, every: float = 10.0):
        import sys

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

    def close(self):
        if self.dirty:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.dirty = False


class _Pilots:
    """What both tuners share: the seeds, their start points x_T and reference solutions (the ODE to
    t_min, then the exact x̂0), solves of the ODE, and the result judged on the fresh seeds."""

    progress = _Progress(False, "")  # the tuner's, set once it is made

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


def tune_steps(denoiser: Denoiser, solver="dpmpp_2m", nfe: int = 10, *, pilot=64, fresh=256,
               shape=None, denoise_final: bool | str = True, init="auto", tune_end: bool | None = None,
               max_evals: int = 300, solver_options: dict | None = None, model: str = "",
               rtol: float = 1e-8, atol: float = 1e-8, device=None, verbose: bool = False,
               progress: bool | None = None) -> TunedGrid:
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
        progress: show progress on stderr (the reference solves, solves done and the best error so far);
            default: when stderr is a terminal (a tuning run can take minutes on a busy CPU).

    Returns:
        :class:`TunedGrid` (save it with ``.save(path)``; use it with ``sample(..., steps=grid)``).
    """
    checked = _check(denoiser, nfe, pilot, fresh, shape, max_evals, rtol, atol, device)
    check_flag("denoise_final", denoise_final, choices=("auto",))
    check_flag("tune_end", tune_end, allow_none=True)
    check_options("solver_options", solver_options)
    check_grid_values("init", init)
    return _tune_steps(denoiser, solver, nfe, checked, denoise_final=denoise_final, init=init, tune_end=tune_end,
                       max_evals=max_evals, solver_options=solver_options, model=model, rtol=rtol, atol=atol,
                       verbose=verbose, progress=progress)


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
    pilots.progress = _Progress(progress, f"tune_steps {sol.name} nfe={nfe}")
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


def _fixed_grid(schedule, nfe: int, grid, history: int, denoise_final: bool):
    """The grid of :func:`tune_solver` (times, denoise_final, name, TunedGrid or None), checked to cost ``nfe``."""
    tuned = load_grid(grid)
    if tuned is not None:
        check_tuned_schedule(tuned, schedule, f"the tuned grid{f' {grid}' if isinstance(grid, str) else ''}")
        t, denoise_final, name = tuned.grid, tuned.denoise_final, f"tuned for {tuned.solver}"
    else:
        check_grid_values("grid", grid)
        t = make_grid(schedule, LearnedMultistep(history=history).steps_for_nfe(nfe, denoise_final), grid)
        name = grid if isinstance(grid, str) else "user"
    steps, extra = len(t) - 1, int(denoise_final)
    if steps + extra != int(nfe):
        raise ValueError(f"the grid has {count(steps, 'step')}{' + the final x̂0' if extra else ''}, "
                         f"not a budget of {nfe} evaluations; the learned solver takes one evaluation per step, "
                         f"so tune it at NFE {steps + extra} on this grid or give a grid for NFE {nfe}")
    return t, denoise_final, name, tuned


class _WeightFit:
    """The fit of :func:`tune_solver`: runs of the learned solver with weights (predictor, corrector,
    shift) on grid ``t``; Adam from each start; the lowest held-out error (``best``), starts included."""

    def __init__(self, pilots: _Pilots, t, denoise_final, tuned, history: int, shifts: bool, n_val: int):
        self.pilots, self.t, self.denoise_final, self.tuned = pilots, t, denoise_final, tuned
        self.history, self.shifts = history, shifts
        self.x, self.ref = pilots.targets(pilots.pilot_seeds)
        self.x_train, self.ref_train = self.x[:-n_val], self.ref[:-n_val]
        self.x_val, self.ref_val = self.x[-n_val:], self.ref[-n_val:]

    def starts(self, verbose: bool) -> dict:
        """Starting (predictor, corrector) by name: DPM-Solver++(2M) ("2m"); its predictor choosing where to
        evaluate while the corrector advances the state with X_i alone (c_{i,m} = −p_{i,m}, c_{i,0} = 0: a
        DDIM step; "2m+ddim"); the weights of the solver a tuned grid was tuned for, if in the family."""
        t, tuned, sch, history = self.t, self.tuned, self.pilots.denoiser.schedule, self.history
        p0 = torch.tensor(default_predictor(sch.log_snr(t).tolist(), history), dtype=torch.float64)
        c0, c1 = torch.zeros(2, len(t) - 1, history, dtype=torch.float64)
        c1[:-1, 1:] = -p0[:-1]
        starts = {"2m": (p0, c0), "2m+ddim": (p0, c1)}
        if tuned is not None:
            try:
                own = weights_of(get_solver(tuned.solver, **tuned.solver_options), sch, t, history)
                starts[tuned.solver] = tuple(torch.tensor(w, dtype=torch.float64) for w in own)
            except ValueError as e:
                if verbose:
                    print(f"tune_solver: no start from {tuned.solver}: {e}")
        return starts

    def solver(self, weights) -> LearnedMultistep:
        p, c, d = weights
        return LearnedMultistep(predictor=p, corrector=c, history=self.history, shift=d if self.shifts else None)

    def error(self, weights, x, ref) -> float:
        with torch.no_grad():
            return self.pilots.error(self.solver(weights), self.denoise_final, self.t, x, ref)

    def fit(self, starts: dict, base: str, iterations: int, lr: float, check_every: int, verbose: bool):
        """Adam from every start; ``init``: start ``base`` (the point of ``init_*``), ``init_val_error``."""
        d0 = torch.zeros(len(self.t) - 1, dtype=torch.float64)
        self.init = (*starts[base], d0)
        self.init_val_error = self.error(self.init, self.x_val, self.ref_val)
        self.best = {"err": self.init_val_error, "weights": self.init, "iteration": 0, "start": base}
        for name, (p, c) in starts.items():
            self._descend(name, (p, c, d0), iterations, lr, check_every, verbose)

    def _keep_if_better(self, weights, it: int, start: str) -> float:
        err = self.error(weights, self.x_val, self.ref_val)
        if err < self.best["err"]:
            self.best.update(err=err, weights=tuple(w.detach().clone() for w in weights), iteration=it, start=start)
        return err

    def _descend(self, name: str, init, iterations: int, lr: float, check_every: int, verbose: bool):
        self._keep_if_better(init, 0, name)
        self.pilots.progress(f"Adam from start {name}", force=True)
        P, C, D = (w.clone().requires_grad_(g) for w, g in zip(init, (True, True, self.shifts)))
        opt = torch.optim.Adam([P, C, D] if self.shifts else [P, C], lr=lr)
        for it in range(1, iterations + 1):
            opt.zero_grad()
            with torch.enable_grad():
                out = integrate(self.solver((P, C, D)), self.pilots.denoiser, self.x_train, self.t,
                                level=self.pilots.level, denoise_final=self.denoise_final).x
                loss = ((out - self.ref_train) ** 2).mean()
                if not torch.isfinite(loss):
                    break  # diverged: keep the best iterate so far
                loss.backward()
            opt.step()
            self.pilots.progress(f"start {name}, iteration {it}/{iterations}, best held-out error "
                                 f"{self.best['err']:.4g}")
            if it % check_every == 0 or it == iterations:
                e = self._keep_if_better((P.detach(), C.detach(), D.detach()), it, name)
                if verbose:
                    print(f"tune_solver: start {name}, iteration {it}: train {math.sqrt(float(loss)):.4g}, "
                          f"held out {e:.4g}")


def tune_solver(denoiser: Denoiser, nfe: int = 5, *, grid="auto", grid_solver: str = "unipc", history: int = 3,
                shifts: bool = True, pilot=1024, fresh=1024, validation: float = 0.25, iterations: int = 300,
                lr: float = 0.01, check_every: int = 10, shape=None, denoise_final: bool = False,
                max_evals: int = 300, model: str = "", rtol: float = 1e-8, atol: float = 1e-8, device=None,
                verbose: bool = False, progress: bool | None = None) -> TunedGrid:
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
        progress: as in :func:`tune_steps` (the grid's tuning, then each start's iterations).

    Returns:
        :class:`TunedGrid` with ``solver="learned"`` and the weights in ``solver_options``;
        ``sample(denoiser, steps=result)`` runs it.
    """
    checked = _check(denoiser, nfe, pilot, fresh, shape, max_evals, rtol, atol, device, min_pilot=2)
    check_number("validation", validation, positive=True, maximum=1.0)
    check_int("iterations", iterations, 0)
    check_int("check_every", check_every)
    check_int("history", history, 2, " (evaluations a step combines; the 2M start takes two)")
    check_number("lr", lr, positive=True)
    check_flag("shifts", shifts)
    check_flag("denoise_final", denoise_final)
    pilots = _Pilots(denoiser, checked, rtol, atol)
    pilots.progress = _Progress(progress, f"tune_solver nfe={nfe}")
    n_val = max(1, round(validation * len(pilots.pilot_seeds)))
    if len(pilots.pilot_seeds) - n_val < 1:
        raise ValueError(f"{len(pilots.pilot_seeds)} pilot seeds leave nothing to train on; use more pilots")
    grid_nfe, grid_name = 0, None
    if isinstance(grid, str) and grid == "auto":  # a grid tuned for grid_solver on the same pilots
        grid = _tune_steps(denoiser, grid_solver, nfe, (*checked[:2], [], checked[3]), denoise_final=denoise_final,
                           init="auto", tune_end=None, max_evals=max_evals, solver_options=None, model=model, rtol=rtol,
                           atol=atol, verbose=verbose, progress=progress)
        grid_nfe, grid_name = grid.tuning_nfe, f"tuned for {grid_solver}"
    t, denoise_final, name, tuned = _fixed_grid(denoiser.schedule, nfe, grid, history, denoise_final)
    fit = _WeightFit(pilots, t, denoise_final, tuned, history, shifts, n_val)
    starts = fit.starts(verbose)
    base = tuned.solver if tuned is not None and tuned.solver in starts else "2m"
    fit.fit(starts, base, iterations, lr, check_every, verbose)
    best = fit.best
    p, c, d = best["weights"]
    options = {"predictor": p.tolist(), "corrector": c.tolist(), "history": history,
               **({"shift": d.tolist()} if shifts else {})}
    init_grid = f"{grid_name or name}; weights from start {best['start']} (init_*: {base} weights)"
    result = pilots.result(fit.error, (fit.init, best["weights"]), extra_nfe=grid_nfe, t=t.tolist(),
                           solver=LearnedMultistep.name, nfe=int(nfe), denoise_final=denoise_final, model=model,
                           solver_options=options, init_grid=init_grid, init_error=fit.error(fit.init, fit.x, fit.ref),
                           pilot_error=fit.error(best["weights"], fit.x, fit.ref), validation_error=best["err"],
                           evaluations=len(starts) * iterations)
    if verbose:
        print(f"tune_solver: pilot {result.init_error:.4g} -> {result.pilot_error:.4g} (held out "
              f"{fit.init_val_error:.4g} -> {best['err']:.4g}, start {best['start']}, iteration {best['iteration']}); "
              f"{result.fresh_summary()}; {result.tuning_seconds:.1f} s")
    return result
