r"""``tune_solver``: per-step solver weights fitted on a grid (S4S-style; docs/math.md §17).

The ``learned`` solver (:class:`~diffsolve.solvers.learned.LearnedMultistep`) takes its predictor and
corrector weights as data; ``tune_solver`` fits them to a model, a grid and a budget by gradient
descent through the run against reference solves of the pilot set, keeps the best weights on
held-out pilots and judges them on fresh seeds. Re-exported by :mod:`diffsolve.tune`.
"""
from __future__ import annotations

import math

import torch

from ._text import StatusLine, count
from ._tuning import _check, _Pilots, _search_grid, model_name, tuning
from .checks import (
    check_flag,
    check_grid_values,
    check_int,
    check_number,
    check_tuned_schedule,
)
from .denoiser import Denoiser
from .grids import make_grid
from .loop import integrate
from .solvers import get_solver
from .solvers.learned import LearnedMultistep, default_predictor, weights_of
from .tuned import TunedGrid, load_grid

__all__ = ["tune_solver"]


def _fixed_grid(schedule, nfe: int, grid, history: int, denoise_final: bool):
    """The grid of :func:`tune_solver` (times, denoise_final, name, TunedGrid or None), checked to cost ``nfe``."""
    tuned = load_grid(grid)
    if tuned is not None:
        check_tuned_schedule(tuned, schedule, f"the tuned grid{f' {grid}' if isinstance(grid, str) else ''}")
        if denoise_final and not tuned.denoise_final:  # (False is the default: a grid with it keeps it)
            raise ValueError("the tuned grid was tuned without the final denoise, and its own setting is used; "
                             "drop denoise_final=True, or tune a grid with it")
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
        self.x, self.ref, w = pilots.x, pilots.ref, pilots.weights
        self.x_train, self.ref_train = self.x[:-n_val], self.ref[:-n_val]
        self.x_val, self.ref_val = self.x[-n_val:], self.ref[-n_val:]
        self.w_train, self.w_val = (None, None) if w is None else (w[:-n_val], w[-n_val:])

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

    def error(self, weights, x=None, ref=None, sample_weights=None) -> float:
        """The RMS error of the solver with ``weights`` from ``x`` (default: all pilots, with their weights)."""
        with torch.no_grad():
            return self.pilots.error(self.solver(weights), self.denoise_final, self.t, x, ref, sample_weights)

    def fit(self, starts: dict, base: str, iterations: int, lr: float, check_every: int, verbose: bool):
        """Adam from every start; ``init``: start ``base`` (the point of ``init_*``), ``init_val_error``."""
        d0 = torch.zeros(len(self.t) - 1, dtype=torch.float64)
        self.init = (*starts[base], d0)
        self.init_val_error = self.error(self.init, self.x_val, self.ref_val, self.w_val)
        self.best = {"err": self.init_val_error, "weights": self.init, "iteration": 0, "start": base}
        for name, (p, c) in starts.items():
            self._descend(name, (p, c, d0), iterations, lr, check_every, verbose)

    def _keep_if_better(self, weights, it: int, start: str) -> float:
        err = self.error(weights, self.x_val, self.ref_val, self.w_val)
        if err < self.best["err"]:
            self.best.update(err=err, weights=tuple(w.detach().clone() for w in weights), iteration=it, start=start)
        return err

    def _descend(self, name: str, init, iterations: int, lr: float, check_every: int, verbose: bool):
        self._keep_if_better(init, 0, name)
        self.pilots.progress(f"Adam from start {name}", force=True)
        P, C, D = (w.clone().requires_grad_(g) for w, g in zip(init, (True, True, self.shifts)))
        params = [P, C, D] if self.shifts else [P, C]
        opt = torch.optim.Adam(params, lr=lr)
        for it in range(1, iterations + 1):
            opt.zero_grad()
            with torch.enable_grad():
                out = integrate(self.solver((P, C, D)), self.pilots.denoiser, self.x_train, self.t,
                                level=self.pilots.level, denoise_final=self.denoise_final).x
                loss = self.pilots.mean_square(out, self.ref_train, self.w_train)
                if not torch.isfinite(loss) or not loss.requires_grad:
                    break  # diverged, or no weight reaches the output: keep the best iterate so far
                # the weights' gradients only (a weight no step uses gets none): the network's own
                # parameters keep their .grad untouched
                for w, g in zip(params, torch.autograd.grad(loss, params, allow_unused=True)):
                    w.grad = g
            opt.step()
            self.pilots.progress(f"start {name}, iteration {it}/{iterations}, best held-out error "
                                 f"{self.best['err']:.4g}")
            if it % check_every == 0 or it == iterations:
                e = self._keep_if_better((P.detach(), C.detach(), D.detach()), it, name)
                if verbose:
                    print(f"tune_solver: start {name}, iteration {it}: train {math.sqrt(float(loss)):.4g}, "
                          f"held out {e:.4g}")


def tune_solver(denoiser: Denoiser, nfe: int = 5, *, grid="auto", grid_solver: str = "unipc", history: int = 3,
                shifts: bool = True, pilot=1024, screen: int | None = 0, fresh=1024, validation: float = 0.25,
                iterations: int = 300, lr: float = 0.01, check_every: int = 10, shape=None, denoise_final: bool = False,
                max_evals: int = 300, model: str | None = None, rtol: float = 1e-8, atol: float = 1e-8, device=None,
                verbose: bool = False, progress: bool | None = None) -> TunedGrid:
    r"""Fit the per-step weights of :class:`~diffsolve.solvers.learned.LearnedMultistep` to a model,
    a grid and a budget (the solver's predictor and corrector weights and, with ``shifts``, the
    λ-shifts of the times the network is told; the grid stays fixed).

    The pilot seeds are split into a training part and a held-out part (``validation``). Adam
    minimises the mean squared error of the run against the reference solves on the training
    part, differentiating through the solver and the network (so the network must be
    differentiable in x, and with ``shifts`` in its time input: any torch module); every ``check_every``
    iterations the held-out error is
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
        pilot, screen, fresh, shape, rtol, atol, device, model: as in :func:`tune_steps`, but by
            default 1024 pilots, not screened (``screen=0``). 256 pilots screened from 4096 tie with
            that over ten cells (geometric mean 1.03×, at half the tuning time) and lost on the 32-D
            mixture whose result decided (0.55× / 0.51× the best peer at NFE 5 / 10 against
            0.45× / 0.07×; ``benchmarks/defaults.md``, "tune_steps' defaults").
        validation: fraction of the pilot seeds held out to choose the iterate.
        iterations, lr: Adam iterations per start (one solve of the training pilots each), step size.
        progress: as in :func:`tune_steps` (the grid's tuning, then each start's iterations).

    Runs as :func:`tune_steps` does (``torch.no_grad()`` but for its own weights, which it
    differentiates alone: the network's parameters get no ``.grad``).

    Returns:
        :class:`TunedGrid` with ``solver="learned"`` and the weights in ``solver_options``;
        ``sample(denoiser, steps=result)`` runs it.
    """
    checked = _check(denoiser, nfe, pilot, fresh, shape, max_evals, rtol, atol, device, screen, min_pilot=2)
    check_number("validation", validation, positive=True, maximum=1.0)
    check_int("iterations", iterations, 0)
    check_int("check_every", check_every)
    check_int("history", history, 2, " (evaluations a step combines; the 2M start takes two)")
    check_number("lr", lr, positive=True)
    check_flag("shifts", shifts)
    check_flag("denoise_final", denoise_final)
    with tuning(denoiser):
        return _tune_solver(denoiser, nfe, checked, grid=grid, grid_solver=grid_solver, history=history, shifts=shifts,
                            validation=validation, iterations=iterations, lr=lr, check_every=check_every,
                            denoise_final=denoise_final, max_evals=max_evals, model=model_name(denoiser, model),
                            rtol=rtol, atol=atol, verbose=verbose, progress=progress)


def _tune_solver(denoiser: Denoiser, nfe: int, checked: tuple, *, grid, grid_solver: str, history: int, shifts: bool,
                 validation: float, iterations: int, lr: float, check_every: int, denoise_final: bool, max_evals: int,
                 model: str, rtol: float, atol: float, verbose: bool, progress: bool | None) -> TunedGrid:
    """:func:`tune_solver` on checked arguments, inside :func:`diffsolve._tuning.tuning`."""
    pilots = _Pilots(denoiser, checked, rtol, atol, nfe, StatusLine(progress, f"tune_solver nfe={nfe}"))
    n_val = max(1, round(validation * len(pilots.pilot_seeds)))
    if len(pilots.pilot_seeds) - n_val < 1:
        raise ValueError(f"{len(pilots.pilot_seeds)} pilot seeds leave nothing to train on; use more pilots")
    grid_name = None
    if isinstance(grid, str) and grid == "auto":  # a grid tuned for grid_solver on the same pilots
        found = _search_grid(pilots, grid_solver, nfe, denoise_final=denoise_final, init="auto", tune_end=None,
                             max_evals=max_evals, solver_options=None, verbose=verbose)
        grid, grid_name = TunedGrid(model=model, **found.fields), f"tuned for {grid_solver}"
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
    result = pilots.result(fit.error, (fit.init, best["weights"]), t=t.tolist(),
                           solver=LearnedMultistep.name, nfe=int(nfe), denoise_final=denoise_final, model=model,
                           solver_options=options, init_grid=init_grid, init_error=fit.error(fit.init),
                           pilot_error=fit.error(best["weights"]), validation_error=best["err"],
                           evaluations=len(starts) * iterations)
    if verbose:
        print(f"tune_solver: pilot {result.init_error:.4g} -> {result.pilot_error:.4g} (held out "
              f"{fit.init_val_error:.4g} -> {best['err']:.4g}, start {best['start']}, iteration "
              f"{best['iteration']}); {result.fresh_summary()}; {result.tuning_seconds:.1f} s")
    return result
