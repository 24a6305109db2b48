r"""``sample``: draw samples with any solver on any member of the ν_t family (docs/math.md §3–4)."""
from __future__ import annotations

import warnings

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import torch
from torch import Tensor

from .checks import (check_data, check_denoiser, check_device, check_flag, check_grid_values, check_int, check_number,
                     check_options, check_shape, check_state_dtype, check_tuned_schedule)
from .defaults import budget_of, default_run, default_start, default_state_dtype, prior_flow_scale
from .denoiser import Denoiser
from .noise import NoiseSource, parse_seeds
from .loop import integrate
from .processes import NoiseLevel
from .solvers import Solver, default_eta, get_solver
from .tuned import load_grid

__all__ = ["sample", "SampleResult", "plan_run", "RunPlan"]


@dataclass
class SampleResult:
    """What ``sample`` returns.

    Attributes:
        x: (B, *shape) final samples, in the state dtype (``dtype``).
        nfe: network evaluations actually made (counted at the denoiser).
        t: (n+1,) the float64 time grid used; an adaptive solver's (``torchsde`` included): its start
            and end only.
        trajectory: (n+1 [+1], B, *shape) states at every grid point (and after the final
            denoise), when requested; else None.
        x_init: the starting state at t[0] (docs/math.md (27.4) for a schedule from σ = 1).
        solver: the solver instance.
        info: what the solver reports of its run (adaptive solvers: accepted and rejected steps per
            sample, batched calls, row evaluations, method, time variable; torchsde: method, grid,
            steps); empty for the fixed-step solvers.
        analytic_first_step: whether the first evaluation was the analytic one (docs/math.md §27),
            made without a network call and so not in ``nfe``.
    """

    x: Tensor
    nfe: int
    t: Tensor
    solver: Solver
    x_init: Tensor
    trajectory: Tensor | None = None
    info: dict = field(default_factory=dict)
    analytic_first_step: bool = False


def sample(denoiser: Denoiser, x: Tensor | None = None, *, shape: Sequence[int] | None = None,
           solver=None, steps: int | None = None, nfe: int | None = None, grid=None,
           eta: float | None = None, noise: Callable | None = None, seeds=None,
           generator: torch.Generator | Sequence[torch.Generator] | None = None, denoise_final: bool | None = None,
           dtype: torch.dtype | None = None, device=None, trajectory: bool = False,
           solver_options: dict | None = None, analytic_first_step: bool | None = None,
           enable_grad: bool = False) -> SampleResult:
    r"""Integrate the reverse family from t[0] (noise) to t[-1] (data).

    Args:
        denoiser: a :class:`~diffsolve.Denoiser`.
        x: optional starting state, shape (B, *shape), at t[0] of an explicit grid or at the
            schedule's t_max with a grid kind; default x ~ N(0, σ² I) drawn from the noise source, σ
            that of the grid's first time (t_max for a grid kind, t[0] for an explicit grid or one
            starting later, e.g. "leading"). A grid kind on a schedule that starts below the log-SNR of
            :data:`~diffsolve.defaults.START_LOG_SNR` (α/σ = 10⁻³: a flow schedule from σ = 1, a
            zero-terminal-SNR table, VE with σ_max > 1000; named solvers' grid kinds too) starts at
            that log-SNR instead, the state carried there from t_max by the exact flow of
            standard-normal data, a scaling (docs/math.md (27.4)); ``t[0]`` and ``x_init`` are then
            that time and state. That scaling leaves an error of about 10⁻³ times the data's mean,
            which more steps do not remove: for a run that must converge below it, give an explicit
            grid from t_max, ``grid=make_grid(schedule, n, kind)``.
        shape: full batch shape (B, *event) when ``x`` is not given. With ``seeds`` and no shape,
            (len(seeds), *denoiser.shape).
        solver: a name in ``diffsolve.solvers.SOLVERS``, a spec ``"name:key=value:..."``
            (``"unipc:order=3:variant=bh1"``) or a :class:`Solver` instance; default: chosen by
            measurement for the budget and schedule (:func:`diffsolve.defaults.default_run`:
            ``dpmpp_2m`` to the end in second order up to 6 evaluations, ``deis`` up to 12 (in order
            3 to the end on the ``karras`` grid where the run starts at α/σ ≥ 0.0025, not on flow
            schedules), ``unipc`` order 3 above; on an EDM schedule the ``deis`` piece from 7 to 20; with
            an explicit grid of times, the rule for its number of steps), or with a tuned grid the solver
            (and options) it was tuned for.
        steps: number of solver steps, or a tuned grid (:class:`~diffsolve.tuned.TunedGrid` or the
            path of its JSON file); or ``nfe``: a budget of network evaluations (including the
            final denoise), from which the number of steps is derived; neither: ``nfe``
            = :data:`DEFAULT_NFE` (20) for a fixed-step solver. A tuned grid fixes the times, the
            budget and ``denoise_final``: a budget, a number of steps or a ``denoise_final``
            other than the grid's beside it is refused.
        grid: a grid kind (see :mod:`diffsolve.grids`; default the solver's
            (:meth:`~diffsolve.solvers.base.Solver.default_grid`: ``"log_snr"``; ``heun``: EDM's ``"karras"``,
            or ``"time"`` on a flow schedule), or the default run's grid when no solver is given) or an
            explicit decreasing array of times (one time with ``denoise_final=True``: the run is x̂0 there, one
            evaluation). An adaptive solver chooses its own steps: an array gives it only the start
            and end times, and a kind is refused (``torchsde`` takes ``grid`` in ``solver_options``).
        eta: ν_t = η g_t (0: probability-flow ODE, 1: reverse SDE); or ``noise``: a callable t ↦ ν_t.
            Default: the solver's ``default_eta``, 1 for the solvers made to sample the reverse SDE
            (``ancestral``, ``dpmpp_2m_sde``, ``dpmpp_3m_sde``, ``torchsde``; as k-diffusion's and
            diffusers' samplers of those names), else 0; with a tuned grid 0, the ODE it was tuned on.
        seeds: one seed per sample (int list or ``"0-63"``; each seed once): sample i then depends
            on seeds[i] only, whatever the batch. Or ``generator``: one generator for the batch, or a
            list of one per sample (sample i's noise from generator i, as diffusers' pipelines pass them).
            With neither, the run is deterministic all the same (a generator seeded 0;
            ``torch.manual_seed`` does not change it). Each stream's first draw is x_T, the steps' noise
            follows: with ``x`` given, that draw is skipped, so ``sample(x=r.x_init, seeds=...)`` repeats a
            run ``r`` drawn from the same seeds (on a grid that keeps x_init at t[0]), and the steps' noise is never
            x_T's own draw.
        denoise_final: replace the final state by x̂0(x, t_min) (one more evaluation); default:
            for budgets above 20 evaluations, stochastic runs and adaptive solvers, and as the
            default run says when no solver is given (measured: :mod:`diffsolve.defaults`); with a
            tuned grid, the grid's own setting.
        dtype: dtype of the solver state, torch.float64 or torch.float32; default float32 when the
            network runs in float32 or half precision, float64 otherwise, a network of unknown dtype
            (a plain function without ``net_dtype``) taken to run in the dtype of ``x`` when it is
            given and in ``torch.get_default_dtype()`` when the library draws x (measured:
            :func:`diffsolve.defaults.default_state_dtype`). The network runs in
            its own dtype (``Denoiser(net_dtype=...)``), half precision included; a plain function
            in the dtype of ``x`` (half too), else in ``dtype`` when given, else in torch's default
            dtype (:meth:`~diffsolve.Denoiser.calling_in`).
        trajectory: keep the state at every grid point.
        solver_options: keyword arguments for the solver's constructor when it is given by name.
        analytic_first_step: answer the run's first evaluation, at t[0], with the exact network of
            standard-normal data, x̂0 = α x / (α² + σ²) (:meth:`~diffsolve.Denoiser.prior_output`,
            docs/math.md §27; Zhou et al., arXiv:2312.00094) instead of a network call, so a budget of
            N evaluations buys the steps of N + 1 (fixed-step solvers; ``steps=n`` keeps n steps and
            makes one network call fewer; by default never a run's only evaluation). Default: as the
            default run says when no solver is given (up to 6 evaluations where the run starts at
            α/σ ≤ 0.03, up to 9 with the Karras piece where it starts at α/σ ≤ 0.01, up to 20 on a flow
            schedule: :func:`diffsolve.defaults.default_run`), else off.
        enable_grad: record the autograd graph of the run, to differentiate the sample with respect to
            x, the network's parameters or a solver's weights (as flow_matching's ``ODESolver.sample``
            takes it). Default False: the run is made under ``torch.no_grad()`` (a network's
            parameters usually require grad, and the graph of every step would be kept: memory
            grows with the number of steps). Inside the caller's own ``torch.no_grad()`` no graph
            is recorded either way.
    """
    check_flag("enable_grad", enable_grad)
    if x is not None:  # the denoiser, then the data and the device they run on
        check_data(denoiser, x, allow_meta=True)
        device = x.device if device is None else check_device(device, allow_meta=x.is_meta)
        if x.is_meta != (device.type == "meta"):
            raise ValueError(f"x is on the {x.device} device and device={str(device)!r}: a meta tensor has no data to "
                             f"move; give x with data, or leave device out (a dry run on meta tensors)")
    else:
        device = check_device(device)
        check_denoiser(denoiser, device)
    schedule = denoiser.schedule
    # a network of unknown dtype is called in the dtype of the caller's x, else of an explicit dtype, else in
    # torch's default dtype (Denoiser.calling_in)
    call_dtype = x.dtype if x is not None else dtype
    dtype = default_state_dtype(denoiser, x) if dtype is None else check_state_dtype(dtype)
    check_flag("trajectory", trajectory)
    run = plan_run(schedule, solver=solver, steps=steps, nfe=nfe, grid=grid, eta=eta, noise=noise,
                   denoise_final=denoise_final, solver_options=solver_options,
                   analytic_first_step=analytic_first_step)
    solver, t, t_start, level, denoise_final, analytic = run

    seeds = parse_seeds(seeds, distinct=True) if seeds is not None else None
    if x is not None:
        if shape is not None and check_shape("shape", shape, batch=True) != tuple(x.shape):
            raise ValueError(f"shape={tuple(shape)} does not match x of shape {tuple(x.shape)}; give one of them")
        batch_shape = tuple(x.shape)
    else:
        batch_shape = _batch_shape(denoiser, shape, seeds, generator)
    source = NoiseSource(batch_shape[0], batch_shape[1:], seeds=seeds, generator=generator,
                         device=device, dtype=dtype, skip_start=x is not None)  # a given x_T: its draw skipped
    if x is None:
        x = float(schedule.sigma(schedule.t_max if t_start is not None else t[0])) * source.randn()
    if t_start is not None:  # x is the state at t_max: the exact flow of standard-normal data to t[0] (27.4)
        x = x * prior_flow_scale(schedule, schedule.t_max, float(t[0]))
    x = x.to(device=device, dtype=dtype)
    x_init = x

    start = denoiser.nfe
    with denoiser.calling_in(call_dtype), torch.set_grad_enabled(enable_grad and torch.is_grad_enabled()):
        out, traj, info = integrate(solver, denoiser, x, t, level=level, source=source, denoise_final=denoise_final,
                                    trajectory=trajectory, analytic_first_step=analytic)
    return SampleResult(x=out, nfe=denoiser.nfe - start, t=t, solver=solver, x_init=x_init,
                        trajectory=torch.stack(traj) if traj is not None else None, info=info,
                        analytic_first_step=analytic)


class RunPlan(NamedTuple):
    """The run a call of :func:`sample` makes, resolved from its options (:func:`plan_run`)."""

    solver: Solver
    t: Tensor  # (n+1,) float64 grid
    t_start: float | None  # the start below t_max of a schedule from σ = 1 (docs/math.md (27.4)), else None
    level: NoiseLevel
    denoise_final: bool
    analytic_first_step: bool


def plan_run(schedule, *, solver=None, steps=None, nfe=None, grid=None, eta=None, noise=None, denoise_final=None,
             solver_options=None, analytic_first_step=None) -> RunPlan:
    """Every check of :func:`sample`'s solver, budget, grid and noise options, and the run they make on
    ``schedule`` (the measured defaults filled in; a tuned grid read and checked): callers that write
    files call it before any work (``diffsolve sample --outdir``), :func:`sample` at its start."""
    check_flag("denoise_final", denoise_final, allow_none=True)
    check_flag("analytic_first_step", analytic_first_step, allow_none=True)
    solver, solver_options, grid, steps, nfe, denoise_final, tuned = _tuned_grid(
        schedule, solver, solver_options, grid, steps, nfe, denoise_final, analytic_first_step)
    _check_sizes(steps, nfe, grid, solver_options, eta)
    if eta is None and noise is None:  # a solver made to sample the SDE samples it unless told otherwise; a
        eta = 0.0 if tuned is not None else default_eta(solver)  # tuned grid runs the ODE it was tuned on
    level = NoiseLevel(schedule, eta=eta, noise=noise)
    if tuned is not None and not level.is_zero:
        warnings.warn("the tuned grid was tuned on the probability-flow ODE (η = 0); running it with noise, as "
                      f"asked, {'with' if tuned.denoise_final else 'without'} the final denoise it was tuned "
                      f"{'with' if tuned.denoise_final else 'without'}", UserWarning, stacklevel=3)
    solver, grid, denoise_final, analytic = _defaults(schedule, solver, solver_options, grid, nfe, steps,
                                                      denoise_final, level, analytic_first_step)
    kind = not solver.adaptive and (grid is None or isinstance(grid, str))  # a grid kind, not given times
    if analytic and kind and steps is None:
        nfe = budget_of(nfe, None) + 1  # the first evaluation is free: the budget buys one more
    t_start = default_start(schedule) if kind else None  # from σ = 1: start where the defaults were measured
    at_start = {} if t_start is None else {"t_start": t_start}  # (adaptive solvers take their own range)
    t = solver.grid_for(schedule, steps=steps, nfe=nfe, grid=grid, denoise_final=denoise_final, **at_start)
    if analytic and analytic_first_step is None and solver.nfe(len(t) - 1) + int(denoise_final) <= 1:
        analytic = False  # by default never the run's only evaluation: a sample that would not ask the network
    return RunPlan(solver, t, t_start, level, denoise_final, analytic)


def _defaults(schedule, solver, solver_options, grid, nfe, steps, denoise_final, level, analytic):
    """The solver, grid, final denoise and analytic first step of the call: as given, else the
    measured defaults for its budget and schedule (:mod:`diffsolve.defaults`); a solver given by
    name weighs the final denoise against its budget itself, steps on its own default grid
    (:meth:`~diffsolve.solvers.base.Solver.default_grid`: ``log_snr``, EDM's ``karras`` for ``heun``) unless
    the call names one, and makes every evaluation with the network unless told otherwise."""
    if solver is None:  # the default solvers spend 1 evaluation per step
        times = None if grid is None or isinstance(grid, str) else torch.as_tensor(grid).reshape(-1)
        start = None if times is None else float(times[0])
        if times is not None and nfe is None and steps is None:
            steps = len(times) - 1  # given times fix the steps, so the budget whose rule applies
        run = default_run(budget_of(nfe, steps), schedule, stochastic=not level.is_zero, t_start=start, grid=grid)
        solver = run.solver
        grid = run.grid if grid is None else grid
        denoise_final = run.denoise_final if denoise_final is None else denoise_final
        analytic = run.analytic_first_step if analytic is None else analytic
    solver = get_solver(solver, **(solver_options or {}))
    if denoise_final is None:
        denoise_final = solver.default_denoise_final(nfe, steps, not level.is_zero)
    return solver, grid, denoise_final, bool(analytic)


MAX_STEPS = 10**7  # a fixed-step run of more would not finish (and its grid would not fit in memory)


def _check_sizes(steps, nfe, grid, solver_options, eta):
    """The budget (integers >= 1), the grid given as values, the solver's options and the noise level."""
    hint = " (a number of solver steps), or a tuned grid (TunedGrid or its .json path)"
    if steps is not None:
        check_int("steps", steps, hint=hint, maximum=MAX_STEPS)
    if nfe is not None:
        check_int("nfe", nfe, hint=" (a budget of network evaluations, the final denoise included; for a tighter "
                  "solve than that, an adaptive solver: solver='dopri5')", maximum=MAX_STEPS)
    check_grid_values("grid", grid)
    check_options("solver_options", solver_options)
    if eta is not None:  # (η² must be a float: beyond 1e150 it overflows)
        check_number("eta", eta, minimum=0.0, maximum=1e150)


def _batch_shape(denoiser: Denoiser, shape, seeds, generator=None) -> tuple:
    """(batch, *sample_shape) from ``shape``, or from the seeds (or a list of one generator per sample) and the
    denoiser's sample shape."""
    if seeds is not None and len(seeds) == 0:
        raise ValueError("seeds is empty; give one seed per sample, e.g. seeds='0-63'")
    per_sample = seeds if seeds is not None else generator if isinstance(generator, (list, tuple)) else None
    if shape is None:
        if not per_sample or denoiser.shape is None:
            raise ValueError("give x, or shape=(batch, ...), or seeds (or a list of generators, one per sample) "
                             "with a denoiser that knows its sample shape (Denoiser(..., shape=...))")
        return (len(per_sample), *denoiser.shape)
    batch_shape = check_shape("shape", shape, batch=True)
    if denoiser.shape is not None and batch_shape[1:] != denoiser.shape:
        raise ValueError(f"shape={batch_shape} gives samples of shape {batch_shape[1:]}, but the denoiser's samples "
                         f"have shape {denoiser.shape}; give shape=(batch, {', '.join(map(str, denoiser.shape))})")
    return batch_shape


def _tuned_grid(schedule, solver, solver_options, grid, steps, nfe, denoise_final, analytic_first_step):
    """A tuned grid given as ``steps=`` or ``grid=`` fixes the times, whether the run ends with x̂0
    and, unless another solver is named, the solver and its options (``solver_options`` alone change
    the options of the grid's own solver). A budget other than the grid's own, a number of steps or the
    analytic first step beside it is refused: the grid fixes the evaluations; so is a model with another
    schedule. Running another solver or options on its times is allowed with a warning (and so is a noise
    level ν > 0, :func:`plan_run`: the grid was tuned on the probability-flow ODE); the last item returned
    is the tuned grid, or None."""
    for name, spec in (("steps", steps), ("grid", grid)):
        tuned = load_grid(spec)
        if tuned is None:
            continue
        check_tuned_schedule(tuned, schedule, f"the tuned grid given as {name}="
                             + (f" ({spec})" if isinstance(spec, (str, Path)) else ""))
        other = {"steps": steps, "grid": grid, "nfe": None if nfe == tuned.nfe else nfe,
                 "analytic_first_step": analytic_first_step or None}
        other.pop(name)
        given = [k for k, v in other.items() if v is not None]
        if given:
            raise ValueError(f"the tuned grid given as {name}= fixes the times and the budget "
                             f"({tuned.nfe} evaluations for {tuned.solver!r}); drop "
                             + ", ".join(f"{k}= (--{k.replace('_', '-')})" for k in given))
        if denoise_final not in (None, tuned.denoise_final):
            was = "with" if tuned.denoise_final else "without"
            raise ValueError(f"the tuned grid given as {name}= was tuned {was} "
                             f"the final denoise; drop denoise_final={denoise_final} (or tune a grid "
                             f"{'without' if tuned.denoise_final else 'with'} it)")
        own = solver in (None, tuned.solver)
        asked = tuned.solver if solver is None else solver
        options = {**tuned.solver_options, **(solver_options or {})} if own else solver_options
        if not own or options != tuned.solver_options:
            warnings.warn(f"the tuned grid was tuned for solver {_spec(tuned.solver, tuned.solver_options)}; running "
                          f"{_spec(asked, solver_options)} on its times instead, as asked (its budget is that "
                          f"solver's evaluations on {len(tuned.t) - 1} steps)", UserWarning, stacklevel=4)
        return asked, options, tuned.grid, None, None, tuned.denoise_final, tuned
    return solver, solver_options, grid, steps, nfe, denoise_final, None


def _spec(solver, options) -> str:
    """A solver and its options for a message, long option values (fitted weights) cut short."""
    if not isinstance(solver, str):
        return repr(solver)
    shown = [f"{k}={v!r}" if len(repr(v)) <= 40 else f"{k}=<{type(v).__name__} of {len(v)}>" if hasattr(v, "__len__")
             else f"{k}=..." for k, v in (options or {}).items()]
    return repr(solver) + (f" with options {', '.join(shown)}" if shown else "")
