r"""``sample``: draw samples with any solver on any member of the ν_t family (docs/math.md §3–4)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor

from .denoiser import Denoiser
from .noise import NoiseSource, parse_seeds
from .loop import integrate
from .processes import NoiseLevel
from .solvers import Solver, get_solver
from .tuned import load_grid

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
           generator: torch.Generator | None = None, denoise_final: bool | None = None,
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
        steps: number of solver steps, or a tuned grid (:class:`~diffsolve.tuned.TunedGrid` or the
            path of its JSON file); or ``nfe``: a budget of network evaluations (including the
            final denoise), from which the number of steps is derived; neither: ``nfe``
            = :data:`DEFAULT_NFE` (20) for a fixed-step solver. A tuned grid fixes the times, the
            budget and ``denoise_final``: a budget, a number of steps or a ``denoise_final``
            other than the grid's beside it is refused.
        grid: a grid kind (see :mod:`diffsolve.grids`; default ``"log_snr"``) or an explicit decreasing
            array of times. An adaptive solver chooses its own steps: an array gives it only the start
            and end times, and a kind is refused (``torchsde`` takes ``grid`` in ``solver_options``).
        eta: ν_t = η g_t (0: probability-flow ODE, 1: reverse SDE); or ``noise``: a callable t ↦ ν_t.
        seeds: one seed per sample (int list or ``"0-63"``; each seed once): sample i then depends
            on seeds[i] only, whatever the batch. Or ``generator``: one generator for the batch.
        denoise_final: replace the final state by x̂0(x, t_min) (one more evaluation); default True
            (with a tuned grid: the grid's own setting).
        dtype: dtype of the solver state (float64 by default; the network runs in its own).
        trajectory: keep the state at every grid point.
        solver_options: keyword arguments for the solver's constructor when it is given by name.
    """
    if not isinstance(denoiser, Denoiser):
        raise TypeError(f"denoiser must be a diffsolve.Denoiser, got {type(denoiser).__name__}; "
                        f"wrap your network with Denoiser(net, schedule, prediction=...)")
    schedule = denoiser.schedule
    solver, solver_options, grid, steps, nfe, denoise_final = _tuned_grid(solver, solver_options, grid, steps, nfe,
                                                                         denoise_final)
    solver = get_solver("dpmpp_2m" if solver is None else solver, **(solver_options or {}))
    level = NoiseLevel(schedule, eta=eta, noise=noise)
    t = solver.grid_for(schedule, steps=steps, nfe=nfe, grid=grid, denoise_final=denoise_final)

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
    out, traj, info = integrate(solver, denoiser, x, t, level=level, source=source, denoise_final=denoise_final,
                                trajectory=trajectory)
    return SampleResult(x=out, nfe=denoiser.nfe - start, t=t, solver=solver, x_init=x_init,
                        trajectory=torch.stack(traj) if traj is not None else None, info=info)


def _tuned_grid(solver, solver_options, grid, steps, nfe, denoise_final):
    """A tuned grid given as ``steps=`` or ``grid=`` fixes the times, whether the run ends with x̂0
    and, unless another solver is named, the solver and its options. A budget or a number of
    steps beside it is refused: the grid fixes them."""
    for name, spec in (("steps", steps), ("grid", grid)):
        tuned = load_grid(spec)
        if tuned is None:
            continue
        other = {"steps": steps, "grid": grid, "nfe": nfe}
        other.pop(name)
        given = [k for k, v in other.items() if v is not None]
        if given:
            raise ValueError(f"the tuned grid given as {name}= fixes the times and the budget "
                             f"({tuned.nfe} evaluations for {tuned.solver!r}); drop {', '.join(given)}")
        if denoise_final not in (None, tuned.denoise_final):
            raise ValueError(f"the tuned grid given as {name}= was tuned {'with' if tuned.denoise_final else 'without'} "
                             f"the final denoise; drop denoise_final={denoise_final} (or tune a grid "
                             f"{'without' if tuned.denoise_final else 'with'} it)")
        if solver in (None, tuned.solver) and solver_options is None:  # the solver it was tuned for
            solver, solver_options = tuned.solver, tuned.solver_options
        return solver, solver_options, tuned.grid, None, None, tuned.denoise_final
    return solver, solver_options, grid, steps, nfe, True if denoise_final is None else denoise_final
