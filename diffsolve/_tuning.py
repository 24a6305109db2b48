"""The tuners' machinery: the pilot set (seeds, reference solves, counted error solves, the result
with its fresh-seed judgement and cost), the input checks, the progress line, and the grid search
behind :func:`diffsolve.tune.tune_steps` (which :func:`diffsolve.solver_fit.tune_solver` also runs
for ``grid="auto"``).

**Screened pilots.** At small budgets the RMS error over the prior is carried by a few start points,
those near a decision between modes: on a 64-D mixture, 32 of 1024 start points carry 98 % of the
squared difference between the default call at NFE 10 and at NFE 30 (``benchmarks/defaults_sweep.py
--tune-peers``, "top-32 share"). A plain set of 64 pilots rarely holds them, and a grid tuned on it
is tuned for the easy points only. With ``screen=M`` (``tune_steps``' default: 16 per pilot;
``tune_solver``'s: none) the tuner runs the default call at the budget N and at 3N from M candidate
start points (4N evaluations each, no reference solve; every evaluation by the network, without the
default call's analytic first step at small N, as when the screening was measured) and draws the P
pilots from the candidates with probability proportional to a size that mixes that proxy error e_i =
‖x_N − x_3N‖² with an even share (πps sampling, :func:`pps_sample`): the candidates that would be
drawn for sure enter with weight 1, the others with weight 1/π_i, their inclusion probability. The
weighted mean of the pilots' squared errors (docs/math.md (18.4)) then estimates the mean over all M
candidates without bias from the selection, whatever the proxy's quality; the proxy decides how much
of the variance goes (``benchmarks/defaults.md``, "tune_steps' defaults": against the former
stratified sample, half the largest e_i and half uniform, it lowered the tuned grid's error 0.92× in
the geometric mean over two problems made for the comparison, three draws each, and 0.93× over five
others).
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from functools import partial
from typing import NamedTuple

import torch
from torch import Tensor

from ._text import StatusLine, count
from ._version import __version__
from .checks import check_int, check_tuning, is_integer
from .denoiser import Denoiser
from .grids import make_grid, validate_grid
from .loop import integrate
from .noise import NoiseSource, seed_list
from .processes import NoiseLevel
from .reference import ode_reference, reference_tolerances
from .solvers import get_solver, parse_solver_spec
from .tuned import TunedGrid

FIXED_GRIDS = ("log_snr", "karras", "time", "quadratic")  # the starting grids tune_steps scores


def screening_proxy(denoiser, x: Tensor, nfe: int) -> Tensor:
    """The screening's proxy error of each start point in ``x``: ‖x_N − x_3N‖² between the default call
    at ``nfe`` and at 3·``nfe`` evaluations (module docstring), float64 on the CPU, shape (B,)."""
    from .sample import sample  # the default call (sample imports the tuned-grid reader, not this module)
    with torch.no_grad():  # every evaluation by the network: the proxy the screening was measured with
        a, b = (sample(denoiser, x, nfe=n, analytic_first_step=False).x for n in (nfe, 3 * nfe))
    return ((a - b) ** 2).flatten(1).sum(1).to("cpu", torch.float64)


DEFENSIVE = 0.5  # the share of the sampling sizes spread evenly over the candidates (module docstring)


def pps_sample(proxy: Tensor, keep: int, generator: torch.Generator) -> list[tuple[int, float]]:
    """A sample of ``keep`` distinct indices of ``proxy`` (M,) with probability proportional to the size
    a_i = (1 − δ) e_i / Σ e + δ / M (δ = :data:`DEFENSIVE`), and their weights (docs/math.md (18.4)).

    Indices whose inclusion probability keep·a_i / Σ a would reach 1 are taken with certainty (weight
    1), largest first, and the probabilities of the others recomputed for the slots left; those are
    filled by systematic sampling (one uniform offset, points u, u + 1, … on the cumulative
    probabilities in order of size), which takes each index at most once, with weight 1/π_i.
    Σ_i w_i f_i is then an unbiased estimate of Σ_{all M} f for any f. Returns (index, weight) pairs.
    """
    M = proxy.shape[0]
    if keep >= M:
        return [(i, 1.0) for i in range(M)]
    e = proxy.to(torch.float64).clamp(min=0)
    total = float(e.sum())
    size = (1 - DEFENSIVE) * e / total + DEFENSIVE / M if total > 0 and math.isfinite(total) \
        else torch.full((M,), 1.0 / M, dtype=torch.float64)
    order = size.argsort(descending=True, stable=True)
    size = size[order]
    certain, slots = 0, keep
    while slots > 0 and float(size[certain]) * slots >= float(size[certain:].sum()):
        certain, slots = certain + 1, slots - 1
    out = [(i, 1.0) for i in order[:certain].tolist()]
    if slots:
        pi = slots * size[certain:] / size[certain:].sum()
        u = float(torch.rand(1, generator=generator, dtype=torch.float64))
        points = u + torch.arange(slots, dtype=torch.float64)
        picks = torch.searchsorted(pi.cumsum(0), points, right=True).clamp(max=M - certain - 1).tolist()
        out += [(int(order[certain + j]), 1.0 / float(pi[j])) for j in picks]
    return out


@contextmanager
def tuning(denoiser):
    """What both tuners run inside: the library draws their start points, so a network of unknown
    dtype runs in torch's default dtype (:meth:`~diffsolve.Denoiser.calling_in`), and no gradient
    reaches the network (``torch.no_grad``: a network that differentiates inside, e.g. a score
    from an energy, enables it itself with ``torch.enable_grad()``)."""
    with denoiser.calling_in(None), torch.no_grad():
        yield


class _Pilots:
    """What both tuners share: the seeds, their start points x_T and reference solutions (the ODE to
    t_min, then the exact x̂0), solves of the ODE, and the result judged on the fresh seeds."""

    def __init__(self, denoiser, checked: tuple, rtol, atol, nfe: int, progress: StatusLine):
        self.progress = progress
        self.shape, self.pilot_seeds, self.fresh_seeds, device, candidates = checked
        self.denoiser, self.device = denoiser, device
        self.rtol, self.atol = reference_tolerances(denoiser, rtol, atol)
        self.level = NoiseLevel(denoiser.schedule, eta=0.0)
        self.nfe_start, self.start_time, self.solves = denoiser.nfe, time.perf_counter(), 0
        self.weights, self.screened = None, 0
        if candidates:
            self.pilot_seeds, self.weights = self._screen(candidates, len(self.pilot_seeds), int(nfe))
            self.screened = len(candidates)
        self.x, self.ref = self.targets(self.pilot_seeds)

    def _screen(self, candidates: list, keep: int, nfe: int) -> tuple[list, Tensor]:
        """The πps pilot set of ``keep`` seeds from ``candidates`` and their weights (module docstring)."""
        self.progress(f"screening {count(len(candidates), 'candidate start point')} (default call at NFE {nfe} "
                      f"and {3 * nfe})", force=True)
        proxy = torch.cat([screening_proxy(self.denoiser, self.start_points(candidates[i:i + 256]), nfe)
                           for i in range(0, len(candidates), 256)])
        chosen = sorted((candidates[i], w) for i, w in pps_sample(proxy, keep, torch.Generator().manual_seed(0)))
        return [s for s, _ in chosen], torch.tensor([w for _, w in chosen], dtype=torch.float64)

    def start_points(self, seeds) -> Tensor:
        """The start points x_T of ``seeds`` (drawn on the CPU: the same x_T on every device)."""
        sch = self.denoiser.schedule
        return (float(sch.sigma(sch.t_max)) * NoiseSource(len(seeds), self.shape, seeds=seeds).randn()).to(self.device)

    def targets(self, seeds) -> tuple[Tensor, Tensor]:
        """The start points x_T of ``seeds`` and their reference solutions."""
        self.progress(f"reference solves of {count(len(seeds), 'seed')} (rtol {self.rtol:g})", force=True)
        sch = self.denoiser.schedule
        x = self.start_points(seeds)
        return x, ode_reference(self.denoiser, x, sch.t_max, sch.t_min, rtol=self.rtol, atol=self.atol,
                                denoise_final=True)

    def error(self, sol, denoise_final: bool, t: Tensor, x=None, ref=None, weights=None) -> float:
        """RMS error per coordinate of a solve from ``x`` against ``ref`` (samples weighted by ``weights``),
        inf if not finite (``solves`` counts them); without ``x``: on the pilots, with their weights."""
        self.solves += 1
        x, ref, w = (self.x, self.ref, self.weights) if x is None else (x, ref, weights)
        out = integrate(sol, self.denoiser, x, t, level=self.level, denoise_final=denoise_final).x
        e = float(self.mean_square(out, ref, w).sqrt())
        return e if math.isfinite(e) else math.inf

    @staticmethod
    def mean_square(out: Tensor, ref: Tensor, weights: Tensor | None) -> Tensor:
        """Mean squared error per coordinate of ``out`` against ``ref``, over the samples weighted by
        ``weights`` (the pilots' screening weights; None: equal)."""
        per_sample = ((out - ref) ** 2).flatten(1).mean(1)
        if weights is None:
            return per_sample.mean()
        w = weights.to(per_sample.device, per_sample.dtype)
        return (w * per_sample).sum() / w.sum()

    def result(self, error, judged: tuple, **fields) -> TunedGrid:
        """The :class:`TunedGrid` of ``fields``, schedule, seeds, version, the fresh-seed errors of the start
        and the result (``judged``; ``error(which, x, ref)``) and the tuning cost; resets the counter."""
        sch = self.denoiser.schedule
        lam = sch.log_snr(torch.tensor(fields["t"], dtype=torch.float64)).tolist()  # the schedule, for the checks
        result = TunedGrid(schedule=repr(sch), log_snr=lam, pilot_seeds=self.pilot_seeds, screened=self.screened,
                           pilot_weights=[] if self.weights is None else self.weights.tolist(),
                           fresh_seeds=self.fresh_seeds, version=__version__, **fields)
        if self.fresh_seeds:
            x, ref = self.targets(self.fresh_seeds)
            result.init_fresh_error, result.fresh_error = (error(which, x, ref) for which in judged)
        result.tuning_nfe = self.denoiser.nfe - self.nfe_start  # (the denoiser's counter keeps every call)
        result.tuning_seconds = time.perf_counter() - self.start_time
        self.progress.close()
        return result


SCREEN_PER_PILOT = 16  # candidate start points screened per pilot by default (module docstring)


def model_name(denoiser, model: str | None) -> str:
    """The name a tuned grid records for its model: ``model``, else the name :func:`diffsolve.zoo.load` loaded
    it by (a bundled name or a file path, as ``diffsolve tune --model`` records it), else none (``""``)."""
    if model is not None and not isinstance(model, str):
        raise TypeError(f"model must be a name (a str), got {type(model).__name__}")
    return model or str(getattr(denoiser, "model_name", "") or "")


def _check(denoiser, nfe, pilot, fresh, shape, max_evals, rtol, atol, device, screen, min_pilot: int = 1) -> tuple:
    """What both tuners are given, checked once: (sample shape, pilot seeds, fresh seeds, device, the
    candidate seeds to screen the pilots from or None). ``screen``: None (default) screens
    :data:`SCREEN_PER_PILOT` candidates per pilot when ``pilot`` is a number and none for explicit pilot
    seeds; a number: that many candidates, seeds 0..screen−1 (0, or no more than the pilots: none).
    The fresh seeds follow the candidates."""
    shape, device = check_tuning(denoiser, nfe, shape, max_evals, rtol, atol, device)
    explicit = not is_integer(pilot) or isinstance(pilot, bool)
    pilots = seed_list(pilot, "pilot", min_pilot)
    if screen is None:
        screen = 0 if explicit else SCREEN_PER_PILOT * len(pilots)
    check_int("screen", screen, 0, " (candidate start points the pilots are chosen from; 0: none)")
    candidates = None
    if screen > len(pilots):
        if explicit:
            raise ValueError(f"screen={screen} chooses the pilot seeds among seeds 0..{screen - 1}, but pilot seeds "
                             f"were given ({pilot!r}); give the number of pilots, or leave screen out")
        candidates = list(range(screen))
    drawn = candidates or pilots
    fresh = seed_list(fresh, "fresh", first=max(drawn) + 1)  # a number of fresh seeds: those after the pilots
    if set(fresh) & set(drawn):
        raise ValueError("fresh seeds must differ from the pilot seeds" + (" and the screened candidates (seeds "
                         f"0..{screen - 1})" if candidates else "") + " (the point is to judge on unseen samples)")
    return shape, pilots, fresh, device, candidates


def tunable_solver(solver, solver_options: dict | None):
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
    if sol.draws_noise:
        raise ValueError(f"tune_steps fits a grid to the probability-flow ODE's solution, and {solver!r} draws noise "
                         f"on it (a Langevin corrector or churn), so its error against that solution is not a function "
                         f"of the grid; tune a deterministic solver (e.g. 'unipc', 'dpmpp_2m', 'heun' without churn)")
    return sol, {**spec_options, **(solver_options or {})}


class _GridSearch:
    """The search of :func:`tune_steps`: the starting grid, then Nelder–Mead from there; the best grid
    on the pilots is ``best_t`` (``best_err``); ``error(t, x, ref)`` is the solver's with grid ``t``."""

    max_evals = 0  # the search's budget of solves (set by run; shown by the progress)

    def __init__(self, pilots: _Pilots, sol, denoise_final: bool, tune_end: bool):
        self.pilots, self.sol, self.tune_end = pilots, sol, tune_end
        self.error = partial(pilots.error, sol, denoise_final)  # (t[, x, ref]) -> RMS error (on the pilots)
        self.schedule = sch = pilots.denoiser.schedule
        self.lam0, self.lam_max = float(sch.log_snr(sch.t_max)), float(sch.log_snr(sch.t_min))

    def choose_start(self, init, steps: int, nfe: int) -> tuple[str, Tensor, float, dict]:
        """Score the starting grids (``"auto"``: :data:`FIXED_GRIDS`): the best's name, grid, error; all scores."""
        if isinstance(init, str):
            candidates = {k: make_grid(self.schedule, steps, k) for k in (FIXED_GRIDS if init == "auto" else [init])}
        else:
            candidates = {"user": validate_grid(self.schedule, init)}
            if len(candidates["user"]) - 1 != steps:
                raise ValueError(f"init grid has {count(len(candidates['user']) - 1, 'step')}; {self.sol.name} at "
                                 f"nfe={nfe} needs {steps}")
        scores = {k: self.error(t) for k, t in candidates.items()}
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
        e = self.error(t)
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
    """:func:`tune_steps` on checked arguments: the pilots screened and solved once, the grid searched
    with and without the final denoise for ``"auto"`` (the better kept, charged with both), the result
    judged on the fresh seeds."""
    pilots = _Pilots(denoiser, checked, rtol, atol, nfe, StatusLine(progress, f"tune_steps {solver} nfe={nfe}"))
    found = _search_grid(pilots, solver, nfe, denoise_final=denoise_final, init=init, tune_end=tune_end,
                         max_evals=max_evals, solver_options=solver_options, verbose=verbose)
    result = pilots.result(partial(pilots.error, found.sol, found.fields["denoise_final"]), found.judged,
                           model=model, **found.fields)
    if verbose:
        print(f"tune_steps: pilot {result.init_error:.4g} ({result.init_grid}) -> {result.pilot_error:.4g}; "
              f"{result.fresh_summary()}; {result.evaluations} solves, {result.tuning_seconds:.1f} s")
    return result


class _Found(NamedTuple):
    """A grid search's result: the solver, the starting and the best grid (``judged``, for the fresh
    seeds) and the fields of its :class:`TunedGrid`."""
    sol: object
    judged: tuple
    fields: dict


def _search_grid(pilots: _Pilots, solver, nfe: int, *, denoise_final, init, tune_end, max_evals: int,
                 solver_options, verbose: bool) -> _Found:
    """The best grid for ``solver`` on the pilots; ``denoise_final="auto"`` searches both ends with
    ``max_evals`` solves each and keeps the better (charged with both)."""
    if isinstance(denoise_final, str):  # "auto": both ends that fit the budget (and an init array), the better kept
        fits, refused = [], []
        for d in (True, False):
            try:
                steps = tunable_solver(solver, solver_options)[0].steps_for_nfe(nfe, d)
                if not isinstance(init, str) and len(init) - 1 != steps:
                    raise ValueError(f"an init array of {len(init)} times has {len(init) - 1} steps; NFE {nfe} "
                                     f"{'with' if d else 'without'} the final denoise takes {steps}")
                fits.append(d)
            except ValueError as e:
                refused.append(str(e))
        if not fits:
            raise ValueError("; ".join(refused))
        runs = [_search_grid(pilots, solver, nfe, denoise_final=d, init=init, tune_end=tune_end if d else None,
                             max_evals=max_evals, solver_options=solver_options, verbose=verbose)
                for d in fits]
        best = min(runs, key=lambda r: r.fields["pilot_error"])
        best.fields["evaluations"] = sum(r.fields["evaluations"] for r in runs)
        return best
    sol, solver_options = tunable_solver(solver, solver_options)
    steps = sol.steps_for_nfe(nfe, denoise_final)
    tune_end = denoise_final if tune_end is None else bool(tune_end)
    if tune_end and not denoise_final:
        raise ValueError("tune_end needs denoise_final=True (without it the end time is the data time t_min)")
    solves = pilots.solves
    search = _GridSearch(pilots, sol, denoise_final, tune_end)
    init_name, init_t, init_err, scores = search.choose_start(init, steps, nfe)
    if verbose:
        pilots.progress.close()
        print(f"tune_steps: {sol.name} nfe={nfe} steps={steps}{' + x̂0' if denoise_final else ''}; fixed grids: "
              + ", ".join(f"{k}={v:.4g}" for k, v in scores.items()))
    search.run(solves + max_evals)
    return _Found(sol, (init_t, search.best_t), dict(
        t=search.best_t.tolist(), solver=sol.name, nfe=int(nfe), denoise_final=denoise_final,
        solver_options=dict(solver_options), init_grid=init_name, init_error=init_err, pilot_error=search.best_err,
        evaluations=pilots.solves - solves))
