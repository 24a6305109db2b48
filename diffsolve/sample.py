r"""``sample``: draw samples with any solver on any member of the ν_t family (MATH §3–4)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor

from .denoiser import Denoiser
from .grids import make_grid
from .noise import NoiseSource, parse_seeds
from .processes import NoiseLevel
from .solvers.base import Solver, get_solver, integrate
from .tune import load_grid

__all__ = ["sample", "SampleResult"]


@dataclass
class SampleResult:
    """What ``sample`` returns.

    Attributes:
        x: (B, *shape) final samples (float64 unless ``dtype`` says otherwise).
        nfe: network evaluations actually made (counted at the denoiser).
        t: (n+1,) the float64 time grid used.
        trajectory: (n+1 [+1], B, *shape) states at every grid point (and after the final
            denoise), when requested; else None.
        x_init: the starting state at t[0].
        solver: the solver instance.
    """

    x: Tensor
    nfe: int
    t: Tensor
    solver: Solver
    x_init: Tensor
    trajectory: Tensor | None = None
    info: dict = field(default_factory=dict)


def sample(denoiser: Denoiser, x: Tensor | None = None, *, shape: Sequence[int] | None = None,
           solver=None, steps: int | None = None, nfe: int | None = None, grid=None,
           eta: float | None = None, noise: Callable | None = None, seeds=None,
           generator: torch.Generator | None = None, denoise_final: bool = True,
           dtype: torch.dtype = torch.float64, device=None, trajectory: bool = False,
           solver_options: dict | None = None) -> SampleResult:
    r"""Integrate the reverse family from t[0] (noise) to t[-1] (data).

    Args:
        denoiser: a :class:`~diffsolve.Denoiser`.
        x: optional starting state at t[0], shape (B, *shape); default x_T ~ N(0, σ_{t0}² I) drawn
            from the noise source.
        shape: full batch shape (B, *event) when ``x`` is not given. With ``seeds`` and no shape,
            (len(seeds), *denoiser.shape).
        solver: a name in ``diffsolve.solvers.SOLVERS``, a spec ``"name:key=value:..."``
            (``"unipc:order=3:variant=bh1"``) or a :class:`Solver` instance; default
            ``"dpmpp_2m"``, or with a tuned grid the solver (and options) it was tuned for.
        steps: number of solver steps, or a tuned grid (:class:`~diffsolve.tune.TunedGrid` or the
            path of its JSON file); or ``nfe``: a budget of network evaluations (including the
            final denoise), from which the number of steps is derived. A tuned grid also fixes
            ``denoise_final`` to the value it was tuned with.
        grid: a grid kind (see :mod:`diffsolve.grids`; default ``"log_snr"``) or an explicit decreasing
            array of times. An adaptive solver chooses its own steps: an array gives it only the start
            and end times, and a kind is refused (``torchsde`` takes ``grid`` in ``solver_options``).
        eta: ν_t = η g_t (0: probability-flow ODE, 1: reverse SDE); or ``noise``: a callable t ↦ ν_t.
        seeds: one seed per sample (int list or ``"0-63"``; each seed once): sample i then depends
            on seeds[i] only, whatever the batch. Or ``generator``: one generator for the batch.
        denoise_final: replace the final state by x̂0(x, t_min) (one more evaluation).
        dtype: dtype of the solver state (float64 by default; the network runs in its own).
        trajectory: keep the state at every grid point.
        solver_options: keyword arguments for the solver's constructor when it is given by name.
    """
    if not isinstance(denoiser, Denoiser):
        raise TypeError(f"denoiser must be a diffsolve.Denoiser, got {type(denoiser).__name__}; "
                        f"wrap your network with Denoiser(net, schedule, prediction=...)")
    schedule = denoiser.schedule
    for spec in (steps, grid):  # a tuned grid (diffsolve.tune_steps) given as steps= or grid=
        tuned = load_grid(spec)
        if tuned is not None:  # it fixes the times and whether the run ends with x̂0
            grid, steps, nfe, denoise_final = tuned.grid, None, None, tuned.denoise_final
            if solver in (None, tuned.solver) and solver_options is None:  # and the solver it was tuned for
                solver, solver_options = tuned.solver, tuned.solver_options
    solver = get_solver("dpmpp_2m" if solver is None else solver, **(solver_options or {}))
    level = NoiseLevel(schedule, eta=eta, noise=noise)
    explicit = grid is not None and not isinstance(grid, str)  # an array of times (or a tuned grid): it fixes the steps
    if getattr(solver, "adaptive", False):  # it chooses its own steps: only the end points matter
        if steps is not None or nfe is not None or trajectory or (grid is not None and not explicit):
            what = "trajectory is not supported" if trajectory else f"size its steps with {solver.sizing}"
            raise ValueError(f"solver {solver.name!r} chooses its own steps, so steps/nfe/grid kinds do not "
                             f"apply: {what} (an array grid= sets the start and end times)")
        t = make_grid(schedule, None, grid)[[0, -1]] if explicit else make_grid(schedule, 1, "time")
    else:
        grid = "log_snr" if grid is None else grid
        if explicit and (steps is not None or nfe is not None):
            raise ValueError("an explicit grid of times fixes the number of steps; drop steps/nfe")
        if not explicit and (steps is None) == (nfe is None):
            raise ValueError("give exactly one of steps (solver steps) or nfe (a budget of evaluations), "
                             "or an explicit grid array")
        if nfe is not None:
            steps = solver.steps_for_nfe(nfe, denoise_final)
        t = make_grid(schedule, steps, grid)

    seeds = parse_seeds(seeds, distinct=True) if seeds is not None else None
    if x is not None:
        batch_shape = tuple(x.shape)
        device = x.device if device is None else torch.device(device)
    else:
        if shape is None:
            if seeds is None or denoiser.shape is None:
                raise ValueError("give x, or shape=(batch, ...), or seeds with a denoiser that knows its sample shape")
            shape = (len(seeds), *denoiser.shape)
        batch_shape = tuple(int(s) for s in shape)
    if len(batch_shape) < 2:
        raise ValueError(f"shape must be (batch, *sample_shape), got {batch_shape}")
    source = NoiseSource(batch_shape[0], batch_shape[1:], seeds=seeds, generator=generator,
                         device=device, dtype=dtype)
    if x is None:
        x = float(schedule.sigma(t[0])) * source.randn()
    x = x.to(device=device, dtype=dtype)
    x_init = x

    start = denoiser.nfe
    info = {}
    if getattr(solver, "adaptive", False):
        out, info = solver.solve(denoiser, x, float(t[0]), float(t[-1]), level=level, noise=source)
        out = denoiser.x0(out, t[-1]) if denoise_final else out
        traj = None
    else:
        out, traj = integrate(solver, denoiser, x, t, level=level, noise=source,
                              denoise_final=denoise_final, trajectory=trajectory)
    return SampleResult(x=out, nfe=denoiser.nfe - start, t=t, solver=solver, x_init=x_init,
                        trajectory=torch.stack(traj) if traj is not None else None, info=info)
