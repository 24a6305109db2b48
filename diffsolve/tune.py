r"""Step grids tuned to a model, a solver and a budget of network evaluations.

Below about ten evaluations the choice of the time grid matters as much as the solver. ``tune_steps``
minimises the error of a deterministic solver's output against a high-accuracy reference solve of
the probability-flow ODE (docs/math.md (3.3); :func:`diffsolve.reference.ode_reference`) from the same
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

from ._tuning import FIXED_GRIDS, _check, _tune_steps, model_name, tunable_solver, tuning
from .checks import check_flag, check_grid_values, check_options
from .denoiser import Denoiser
from .solver_fit import tune_solver  # the other tuner, re-exported
from .tuned import TunedGrid, load_grid

__all__ = ["TunedGrid", "tune_steps", "tune_solver", "load_grid", "FIXED_GRIDS", "check_tunable"]


def check_tunable(solver, nfe: int, denoise_final: bool | str = "auto", solver_options: dict | None = None) -> None:
    """What :func:`tune_steps` checks of its solver before any work: a deterministic fixed-step solver given by
    name or spec (the tuned grid rebuilds it), with a budget of ``nfe`` evaluations it can spend (the final
    denoise counted when ``denoise_final is True``). For a caller that must refuse before its own output."""
    tunable_solver(solver, solver_options)[0].steps_for_nfe(nfe, denoise_final is True)


def tune_steps(denoiser: Denoiser, solver="unipc", nfe: int = 10, *, pilot=128, screen: int | None = None,
               fresh=256, shape=None, denoise_final: bool | str = "auto", init="auto", tune_end: bool | None = None,
               max_evals: int = 300, solver_options: dict | None = None, model: str | None = None,
               rtol: float = 1e-8, atol: float = 1e-8, device=None, verbose: bool = False,
               progress: bool | None = None) -> TunedGrid:
    r"""Optimise the time grid of ``solver`` at a budget of ``nfe`` evaluations for ``denoiser``.

    Args:
        denoiser: the model; the probability-flow ODE (η = 0) is tuned.
        solver: a deterministic fixed-step solver: its name or a ``"name:key=value"`` spec
            (:func:`~diffsolve.solvers.parse_solver_spec`); options can also go in ``solver_options``.
            Default ``"unipc"``: the best tuned solver on the 64-D mixture (benchmarks/tuning.md:
            fresh error 0.149 at NFE 5 against 0.158–0.180 for UniPC-3, DEIS and DPM-Solver++ 3M).
        nfe: total evaluations per sample, including the final denoise when ``denoise_final``.
        denoise_final: end with x̂0(x, t_n) (one evaluation of the budget), or not, or ``"auto"``
            (default): tune both and keep the better on the pilot set (at very small budgets the
            evaluation is often better spent on one more step). Either way the target is the data
            end point of the ODE (the reference solve to t_min followed by the exact x̂0 there).
            The defaults against the first ones (``"dpmpp_2m"``, the final denoise, 64 plain pilots)
            on the bundled digits model, 256 fresh seeds: 0.112 vs 0.177 at NFE 5, 0.018 vs 0.037 at
            NFE 10, for 1.6–2.7× the tuning time (21–38 s vs 13–14 s on one loaded CPU thread;
            ``python benchmarks/defaults_sweep.py --report --tune``).
        pilot: number of pilot samples (default 128), or an explicit seed list / ``"0-63"``. 128
            screened pilots rather than 64 cost 1.2–2× the tuning time and keep a draw of pilots
            from tuning a grid for the wrong points: at NFE 10 on five mixtures no default was chosen on,
            0.44× the best peer's error against 0.62× (geometric mean over three pilot draws each; the
            worst of 15 tunings 0.85× against 1.28×; the bare call alone 0.43× against 0.60×), though
            on the 64-D mixture the screening was built on 1.34× against 1.10× (the bare call 1.66×
            against 1.25×) (``python benchmarks/defaults_sweep.py --report --tune-pilots``).
        screen: candidate start points (seeds 0..screen−1) the ``pilot`` seeds are chosen from by the
            error of the default call (πps-sampled, weighted: :mod:`diffsolve._tuning`). Default (None):
            16 per pilot (2048) for a number of pilots, none for explicit pilot seeds; 0: seeds
            0..pilot−1. It costs 4·nfe evaluations per candidate and no reference solve, and it is what
            lets the pilots see the few start points that carry a small budget's error
            (``benchmarks/defaults.md``, "tune_steps' defaults").
        fresh: fresh samples to judge the grid on (seeds after the pilot or screened ones), or a seed
            list; 0 to skip. (On problems whose error sits in a few start points, a few hundred fresh
            seeds judge the grid loosely.)
        shape: shape of one sample; default ``denoiser.shape``.
        init: ``"auto"`` (the best of :data:`FIXED_GRIDS` on the pilot set), a grid kind, or an array.
        tune_end: let the final time move (only meaningful with ``denoise_final``; default: same).
        max_evals: budget of pilot-set solves of the search for each end treatment, the starting grids'
            included (``init="auto"`` solves each of :data:`FIXED_GRIDS` first, whatever this budget); the
            Nelder–Mead search runs only while more than the simplex's size is left of it.
        rtol, atol: tolerances of the reference solves, floored at a tenth of the machine epsilon of the
            dtype the network computes in (9.8e-5 for float16, 7.8e-4 for bfloat16, 1.2e-8 for float32):
            a tighter reference only chases the network's round-off with ever smaller steps.
        device: where the samples live (the network's device); default CPU.
        model: the model's name, recorded in the grid (a run of another named model is told the grid was
            fitted to this one); default the name :func:`diffsolve.zoo.load` loaded it by (a bundled name or a
            file path, as ``diffsolve tune --model`` records it), else none.
        progress: show progress on stderr (the reference solves, solves done and the best error so far);
            default: when stderr is a terminal (a tuning run can take minutes on a busy CPU).

    Runs under ``torch.no_grad()``, with a network of unknown dtype in torch's default dtype
    (:func:`diffsolve._tuning.tuning`).

    Returns:
        :class:`TunedGrid` (save it with ``.save(path)``; use it with ``sample(..., steps=grid)``).
    """
    checked = _check(denoiser, nfe, pilot, fresh, shape, max_evals, rtol, atol, device, screen)
    check_flag("denoise_final", denoise_final, choices=("auto",))
    check_flag("tune_end", tune_end, allow_none=True)
    check_options("solver_options", solver_options)
    check_grid_values("init", init)
    check_tunable(solver, nfe, denoise_final, solver_options)  # before the screening runs the default call at nfe
    with tuning(denoiser):
        return _tune_steps(denoiser, solver, nfe, checked, denoise_final=denoise_final, init=init, tune_end=tune_end,
                           max_evals=max_evals, solver_options=solver_options, model=model_name(denoiser, model),
                           rtol=rtol, atol=atol, verbose=verbose, progress=progress)
