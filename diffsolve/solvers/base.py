r"""The solver interface: what a solver declares, what a step sees.

A solver is a small object with declared properties and two methods (diffrax's design):

    state = solver.init(ctx, x)                    # before the first step
    x, state = solver.step(ctx, i, x, state)       # from ctx.t[i] to ctx.t[i + 1]

``ctx`` (:class:`StepContext`) holds *what is solved* (the denoiser, schedule and noise level ν_t),
*which steps* (the float64 grid with α, σ, λ precomputed at every point, on the host, so per-step
coefficients are plain Python floats and never synchronise an accelerator) and the random source.
Multistep history lives in ``state``. A solver never asks which prediction type the network has:
it calls ``ctx.denoiser.x0``, ``.eps`` or ``.score``.

A solver that chooses its own steps (``adaptive = True``, :mod:`diffsolve.solvers.adaptive`)
implements ``solve(ctx, x) -> (x, info)`` instead, over ``ctx``'s first and last time. The one
loop, :func:`diffsolve.loop.integrate`, runs both kinds; the registry of names is
:mod:`diffsolve.solvers.registry`.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..defaults import DEFAULT_NFE, budget_of, default_denoise_final
from ..denoiser import Denoiser
from ..grids import make_grid, validate_grid
from ..noise import NoiseSource
from ..processes import NoiseLevel
from ..schedules import Schedule, make_schedule

__all__ = ["Solver", "StepContext", "lincomb", "bcast", "expm1_ratio", "DEFAULT_NFE"]



@dataclass
class StepContext:
    """Everything a step needs besides the state. Grid quantities are float64 host values.

    Attributes:
        denoiser: the network wrapper (counts NFE).
        level: the noise level ν_t of the reverse family (``level.is_zero`` for the ODE).
        t: (n+1,) float64 CPU tensor of times, strictly decreasing; ``times``: the same as floats.
        alpha, sigma, lam: lists of Python floats at each grid point.
        source: the random source z ~ N(0, I) of stochastic steps (``None`` for deterministic
            solves; not to be confused with the noise *level* ν_t).
        denoise_final: whether the loop ends with x̂0(x, t_n) after the last step (solvers that
            lower their order towards the end take it into account).
    """

    denoiser: Denoiser
    level: NoiseLevel
    t: Tensor
    source: NoiseSource | None = None
    denoise_final: bool = False
    times: list = field(init=False)
    alpha: list = field(init=False)
    sigma: list = field(init=False)
    lam: list = field(init=False)

    def __post_init__(self):
        table = self.schedule.tabulate(self.t)
        self.alpha = table.log_alpha.exp().tolist()
        self.sigma = table.log_sigma.exp().tolist()
        self.lam = table.log_snr.tolist()
        self.times = self.t.tolist()

    @property
    def schedule(self) -> Schedule:
        return self.denoiser.schedule

    @property
    def process(self):
        """The reverse-family process (docs/math.md (3.2)) with this context's noise level."""
        from ..processes import ReverseSDE

        return ReverseSDE(self.denoiser, eta=self.level.eta, noise=self.level.noise)

    @property
    def steps(self) -> int:
        return len(self.t) - 1

    def time(self, i: int) -> float:
        """t_i as a Python float (what solvers pass to the denoiser: no tensor indexing per step)."""
        return self.times[i]

    def h(self, i: int) -> float:
        """Step size in λ from grid point i to i + 1 (positive)."""
        return self.lam[i + 1] - self.lam[i]

    def eta2_integral(self, i: int) -> float:
        r"""H_i = ∫ η(λ)² dλ over step i, with η = ν/g (exactly η² h for a constant η).

        Exponential integrators use e^{−H} where the constant-η formula (docs/math.md (4.1)) has
        e^{−η² h}; for a time-varying ν_t this is evaluated by 8-point Gauss–Legendre quadrature in λ.
        """
        if self.level.noise is None:
            return self.level.eta ** 2 * self.h(i)
        nodes, weights = _gauss_legendre(8)
        l0, l1 = self.lam[i], self.lam[i + 1]
        lam = torch.tensor([0.5 * (l0 + l1) + 0.5 * (l1 - l0) * n for n in nodes], dtype=torch.float64)
        eta = self.level.eta_at(self.schedule.t_of_log_snr(lam))
        return float(0.5 * (l1 - l0) * (torch.tensor(weights, dtype=torch.float64) * eta**2).sum())

    def randn(self) -> Tensor:
        if self.source is None:
            raise RuntimeError("this solver draws noise but no random source was given")
        return self.source.randn()


def _gauss_legendre(n: int):
    import numpy as np

    x, w = np.polynomial.legendre.leggauss(n)
    return x.tolist(), w.tolist()


class Solver:
    """Base class of solvers.

    Class attributes:
        name: registry name.
        declared_order: the convergence order the solver claims as configured (global order for
            ODE solvers; weak order for SDE solvers), which the tests measure. It differs from the
            constructor option ``order`` of the multistep solvers, the degree of the method's
            polynomial (``dpmpp_2m(order=3)``, ``unipc(order=2)``, as the papers and diffusers name
            it): UniPC-p with its corrector declares p + 1. (``solver.order``, its former name,
            still reads it, with a DeprecationWarning.)
        ode_order: (optional) order on the probability-flow ODE (η = 0) where it differs from
            ``declared_order``.
        stochastic: True if the solver integrates a member of the ν_t family with ν > 0 and draws noise.
        draws_noise: True if it draws noise even on the probability-flow ODE (η = 0).
        default_eta: the noise level η a run takes when the call names none (``eta``/``noise``): 1 for
            the solvers that exist to sample the reverse SDE (``ancestral``, ``dpmpp_2m_sde``,
            ``dpmpp_3m_sde``, ``torchsde``), as k-diffusion's and diffusers' samplers of those names
            run them; 0 (the probability-flow ODE) for the others.
        adaptive: True if it chooses its own steps (then ``solve`` replaces ``init``/``step``).
        nfe_per_step: network evaluations per step (0: not known in advance).
        min_steps: fewest steps the method accepts.
    """

    name: str = "solver"
    declared_order: float = 1.0
    stochastic: bool = False
    draws_noise: bool = False  # draws noise even at η = 0 (pc's Langevin corrector, EDM churn)
    default_eta: float = 0.0  # η of a run that names no noise level: 1 for the solvers made to sample the SDE
    adaptive: bool = False
    nfe_per_step: int = 1
    min_steps: int = 1

    @property
    def order(self) -> float:
        """Deprecated: :attr:`declared_order` (the constructor's ``order`` is another thing)."""
        warnings.warn("Solver.order is deprecated: read Solver.declared_order (the constructor option 'order' "
                      "of multistep solvers is the method's polynomial order)", DeprecationWarning, stacklevel=2)
        return self.declared_order

    def init(self, ctx: StepContext, x: Tensor) -> Any:
        return None

    def step(self, ctx: StepContext, i: int, x: Tensor, state: Any) -> tuple[Tensor, Any]:
        raise NotImplementedError

    def restarted(self, begin: int) -> "Solver":
        """The solver of a run restarted at grid point ``begin`` of a longer one (a diffusers
        pipeline's img2img start, :meth:`diffsolve.DiffsolveScheduler.set_begin_index`): itself, as a
        fresh start, but for a solver whose steps follow the parity of the grid index."""
        return self

    def nfe(self, steps: int) -> int:
        """Network evaluations for ``steps`` steps (excluding an optional final denoise)."""
        return steps * self.nfe_per_step

    def default_denoise_final(self, nfe: int | None, steps: int | None, stochastic: bool) -> bool:
        """Whether a run that does not say ends with the final denoise: by its budget (``nfe``, else
        the evaluations of ``steps`` steps), as measured (:func:`diffsolve.defaults.default_denoise_final`)."""
        return default_denoise_final(budget_of(nfe, None if steps is None else self.nfe(steps)), stochastic)

    def steps_for_nfe(self, nfe: int, denoise_final: bool = False) -> int:
        """The largest number of steps whose cost is at most ``nfe`` evaluations, of which one goes
        to the final denoise when ``denoise_final``."""
        budget = int(nfe) - int(denoise_final)
        steps = max(budget // self.nfe_per_step, 0)
        while steps > 0 and self.nfe(steps) > budget:
            steps -= 1
        while self.nfe(steps + 1) <= budget:
            steps += 1
        if steps < self.min_steps:
            need = self.nfe(self.min_steps) + int(denoise_final)
            raise ValueError(f"NFE {nfe} is too small for solver {self.name!r}: it needs at least {self.min_steps} "
                             f"step{'s' * (self.min_steps != 1)}, i.e. {need} evaluations"
                             f"{' with the final denoise (without it, one fewer)' if denoise_final else ''}")
        return steps

    def grid_for(self, schedule: Schedule, *, steps: int | None = None, nfe: int | None = None, grid=None,
              denoise_final: bool = False, t_start: float | None = None) -> Tensor:
        """The float64 grid this solver runs on: ``steps`` steps, or as many as the budget ``nfe``
        allows (default :data:`DEFAULT_NFE`), on a grid kind (default :meth:`default_grid`) from ``t_start``
        (default the schedule's ``t_max``); or an explicit decreasing array ``grid`` (which fixes the
        steps). At most one of the three sizes the run. An explicit grid of one time is taken with
        ``denoise_final`` (a run that is the final denoise alone: a diffusers plan of one evaluation)."""
        explicit = grid is not None and not isinstance(grid, str)
        if explicit and (steps is not None or nfe is not None):
            raise ValueError("an explicit grid of times fixes the number of steps; drop steps/nfe")
        if explicit:
            return validate_grid(make_schedule(schedule), grid, single=denoise_final)
        if steps is not None and nfe is not None:
            raise ValueError("give one of steps (solver steps) or nfe (a budget of evaluations), not both")
        if steps is None and nfe is None:
            nfe = DEFAULT_NFE
        if nfe is not None:
            steps = self.steps_for_nfe(nfe, denoise_final)
        return make_grid(schedule, steps, self.default_grid(make_schedule(schedule)) if grid is None else grid,
                         t_start=t_start)

    def default_grid(self, schedule: Schedule) -> str:
        """The grid kind of a run that names none: ``"log_snr"``, but for a solver made on another grid."""
        return "log_snr"

    def check(self, ctx: StepContext):
        """Validate the configuration against the grid before the first step."""
        self.check_steps(ctx.steps)

    def check_steps(self, steps: int):
        """Validate the configuration against a grid of ``steps`` steps (also where a grid is read from a file)."""
        if steps < self.min_steps:
            raise ValueError(f"solver {self.name!r} needs at least {self.min_steps} step{'s' * (self.min_steps != 1)}, "
                             f"got {steps}")

    def __repr__(self):
        opts = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({opts})"


def lincomb(x: Tensor, a: float, terms, coefs) -> Tensor:
    """a·x + Σ_k c_k T_k with Python-float coefficients: one multiply and one in-place add per term
    (no temporaries per term; every solver update is such a combination)."""
    out = x * a
    for c, T in zip(coefs, terms):
        if c != 0.0:
            out.add_(T, alpha=c)
    return out


def bcast(c, x: Tensor) -> Tensor:
    """A scalar or per-sample (B,) coefficient shaped to broadcast against x."""
    if isinstance(c, (int, float)):
        return c
    c = torch.as_tensor(c, dtype=x.dtype, device=x.device)
    return c.reshape(-1, *([1] * (x.dim() - 1))) if c.dim() == 1 else c


def expm1_ratio(h: float) -> float:
    """(e^h − 1)/h, accurate for small h."""
    return math.expm1(h) / h if h != 0 else 1.0
