r"""The solver interface and the one integration loop.

A solver is a small object with declared properties and two methods (diffrax's design):

    state = solver.init(ctx, x)                    # before the first step
    x, state = solver.step(ctx, i, x, state)       # from ctx.t[i] to ctx.t[i + 1]

``ctx`` (:class:`StepContext`) holds *what is solved* (the denoiser, schedule and noise level ν_t),
*which steps* (the float64 grid with α, σ, λ precomputed at every point, on the host, so per-step
coefficients are plain Python floats and never synchronise an accelerator) and the noise source.
Multistep history lives in ``state``. A solver never asks which prediction type the network has:
it calls ``ctx.denoiser.x0``, ``.eps`` or ``.score``.

:func:`integrate` is the loop every fixed-step solver runs through; ``sample`` and the benchmark
runner are thin layers on top of it.
"""
from __future__ import annotations

import inspect
import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from ..denoiser import Denoiser
from ..noise import NoiseSource
from ..processes import NoiseLevel
from ..schedules import Schedule

__all__ = ["Solver", "StepContext", "integrate", "SOLVERS", "register", "get_solver", "list_solvers",
           "parse_solver_spec", "solver_spec"]


@dataclass
class StepContext:
    """Everything a step needs besides the state. Grid quantities are float64 host values.

    Attributes:
        denoiser: the network wrapper (counts NFE).
        level: the noise level ν_t of the reverse family (``level.is_zero`` for the ODE).
        t: (n+1,) float64 CPU tensor of times, strictly decreasing; ``times``: the same as floats.
        alpha, sigma, lam: lists of Python floats at each grid point.
        noise: the noise source (``None`` for deterministic solves).
        denoise_final: whether the loop ends with x̂0(x, t_n) after the last step (solvers that
            lower their order towards the end take it into account).
    """

    denoiser: Denoiser
    level: NoiseLevel
    t: Tensor
    noise: NoiseSource | None = None
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
        """The reverse-family process (MATH 3.2) with this context's noise level."""
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

        Exponential integrators use e^{−H} where the constant-η formula (MATH 4.1) has e^{−η² h};
        for a time-varying ν_t this is evaluated by 8-point Gauss–Legendre quadrature in λ.
        """
        if self.level.noise is None:
            return self.level.eta ** 2 * self.h(i)
        nodes, weights = _gauss_legendre(8)
        l0, l1 = self.lam[i], self.lam[i + 1]
        lam = torch.tensor([0.5 * (l0 + l1) + 0.5 * (l1 - l0) * n for n in nodes], dtype=torch.float64)
        eta = self.level.eta_at(self.schedule.t_of_log_snr(lam))
        return float(0.5 * (l1 - l0) * (torch.tensor(weights, dtype=torch.float64) * eta**2).sum())

    def randn(self) -> Tensor:
        if self.noise is None:
            raise RuntimeError("this solver draws noise but no noise source was given")
        return self.noise.randn()


def _gauss_legendre(n: int):
    import numpy as np

    x, w = np.polynomial.legendre.leggauss(n)
    return x.tolist(), w.tolist()


class Solver:
    """Base class of fixed-step solvers.

    Class attributes:
        name: registry name.
        order: declared convergence order (global order for ODE solvers; weak order for SDE solvers).
        ode_order: (optional) order on the probability-flow ODE (η = 0) where it differs from ``order``.
        stochastic: True if the solver integrates a member of the ν_t family with ν > 0 and draws noise.
        draws_noise: True if it draws noise even on the probability-flow ODE (η = 0).
        nfe_per_step: network evaluations per step.
        min_steps: fewest steps the method accepts.
    """

    name: str = "solver"
    order: float = 1.0
    stochastic: bool = False
    draws_noise: bool = False  # draws noise even at η = 0 (pc's Langevin corrector, EDM churn)
    nfe_per_step: int = 1
    min_steps: int = 1

    def init(self, ctx: StepContext, x: Tensor) -> Any:
        return None

    def step(self, ctx: StepContext, i: int, x: Tensor, state: Any) -> tuple[Tensor, Any]:
        raise NotImplementedError

    def nfe(self, steps: int) -> int:
        """Network evaluations for ``steps`` steps (excluding an optional final denoise)."""
        return steps * self.nfe_per_step

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
                             f"steps, i.e. {need} evaluations"
                             f"{' with the final denoise (without it, one fewer)' if denoise_final else ''}")
        return steps

    def check(self, ctx: StepContext):
        """Validate the configuration against the problem before the first step."""
        if ctx.steps < self.min_steps:
            raise ValueError(f"solver {self.name!r} needs at least {self.min_steps} steps, got {ctx.steps}")
        if not self.stochastic and not ctx.level.is_zero:
            raise ValueError(f"solver {self.name!r} integrates the probability-flow ODE only (eta=0); "
                             f"for eta > 0 pick a stochastic solver: "
                             f"{', '.join(n for n, c in SOLVERS.items() if c.stochastic)}")

    def __repr__(self):
        opts = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({opts})"


def integrate(solver: Solver, denoiser: Denoiser, x: Tensor, t: Tensor, *, level: NoiseLevel,
              noise: NoiseSource | None = None, denoise_final: bool = False,
              trajectory: bool = False, callback: Callable | None = None):
    """Run ``solver`` over the grid ``t`` from state ``x`` (at t[0]). The one loop of diffsolve.

    Returns ``(x, traj)`` with ``traj`` the list of states at every grid point (``trajectory=True``)
    or ``None``. ``denoise_final`` replaces the last state by x̂0(x, t_n) (one more evaluation).
    """
    ctx = StepContext(denoiser, level, t, noise, denoise_final)
    solver.check(ctx)
    denoiser.prime(ctx.t, x)  # labels and conversion coefficients of the whole grid, vectorised
    traj = [x] if trajectory else None
    state = solver.init(ctx, x)
    n = ctx.steps
    where, times = denoiser._where, ctx.times  # location for error messages, formatted on demand
    for i in range(n):
        where[0] = (solver.name, i, n, times)
        x, state = solver.step(ctx, i, x, state)
        if traj is not None:
            traj.append(x)
        if callback is not None:
            callback(i, x)
    if denoise_final:
        where[0] = (solver.name, n, n, times)
        x = denoiser.x0(x, t[n])
        if traj is not None:
            traj.append(x)
    where[0] = ""
    denoiser.check_finite()
    return x, traj


# --- registry ------------------------------------------------------------------------------
SOLVERS: dict[str, type[Solver]] = {}


def register(cls: type[Solver]) -> type[Solver]:
    """Class decorator: add a solver to :data:`SOLVERS` under ``cls.name``."""
    if cls.name in SOLVERS and SOLVERS[cls.name] is not cls:
        raise ValueError(f"solver name {cls.name!r} registered twice")
    SOLVERS[cls.name] = cls
    return cls


def parse_solver_spec(spec: str) -> tuple[str, dict]:
    """``"name:key=value:key=value"`` → ``(name, {key: value})``, the command line's way to configure a
    solver (``"unipc:order=3:predict_x0=false"``). Values are read as JSON (``3``, ``1e-3``, ``true``,
    ``null``), Python's ``True``/``False``/``None``, or else kept as strings (``variant=bh1``)."""
    if not isinstance(spec, str):
        raise TypeError(f"a solver spec is a string 'name:key=value:...', got {type(spec).__name__}")
    name, *parts = spec.strip().split(":")
    options: dict = {}
    for part in parts:
        key, eq, text = part.partition("=")
        key = key.strip()
        if not eq or not key.isidentifier():
            raise ValueError(f"bad solver spec {spec!r}: {part!r} is not key=value; write e.g. "
                             f"'unipc:order=3:variant=bh1'")
        if key in options:
            raise ValueError(f"bad solver spec {spec!r}: option {key!r} given twice")
        text = text.strip()
        try:
            options[key] = json.loads(text)
        except json.JSONDecodeError:
            options[key] = {"True": True, "False": False, "None": None}.get(text, text)
    return name.strip(), options


def solver_spec(name: str, options: dict | None = None) -> str:
    """The canonical spec string of a solver name and options (keys sorted): inverse of
    :func:`parse_solver_spec`, used as the solver's label in benchmark rows."""
    def fmt(v):
        return v if isinstance(v, str) else json.dumps(v)

    return name + "".join(f":{k}={fmt(v)}" for k, v in sorted((options or {}).items()))


def solver_options_help(cls: type[Solver]) -> str:
    """``key=default`` for every constructor option of a solver class, including those a constructor
    passes on to its base class through ``**options``."""
    seen, out = set(), []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass is object:
            continue
        params = list(inspect.signature(klass.__init__).parameters.values())[1:]
        for p in params:
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in seen:
                seen.add(p.name)
                out.append(f"{p.name}={p.default!r}" if p.default is not p.empty else p.name)
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return ", ".join(out)


def get_solver(solver, **options) -> Solver:
    """A solver instance from an instance, a class, a registered name or a ``"name:key=value"`` spec
    (:func:`parse_solver_spec`); ``options`` go to the constructor."""
    if isinstance(solver, Solver):
        if options:
            raise ValueError("solver options go to the constructor when passing a name; got an instance and options")
        return solver
    if isinstance(solver, type) and issubclass(solver, Solver):
        return solver(**options)
    if isinstance(solver, str):
        name, spec_options = parse_solver_spec(solver)
        if name in SOLVERS:
            clash = sorted(set(spec_options) & set(options))
            if clash:
                raise ValueError(f"solver option{'s' if len(clash) > 1 else ''} {', '.join(clash)} given both in "
                                 f"the spec {solver!r} and as keyword arguments; give each once")
            try:
                return SOLVERS[name](**spec_options, **options)
            except TypeError as e:
                known = solver_options_help(SOLVERS[name])
                raise TypeError(f"bad options for solver {name!r}: {e}; "
                                + (f"its options are {known}" if known else "it takes no options")) from None
        solver = name
    raise ValueError(f"unknown solver {solver!r}; valid solvers: {', '.join(sorted(SOLVERS))}")


def list_solvers() -> list[dict]:
    """Name, order, stochasticity, first docstring line and constructor options of every registered
    solver; order and evaluations per step are those of its default options."""
    out = []
    for name, cls in sorted(SOLVERS.items()):
        doc = (cls.__doc__ or "").strip().splitlines()
        adaptive = bool(getattr(cls, "adaptive", False))
        default = cls()  # order and nfe_per_step may depend on the options (unipc's order, pc's corrector steps)
        out.append({"name": name, "order": default.order, "stochastic": cls.stochastic, "adaptive": adaptive,
                    "nfe_per_step": None if adaptive else default.nfe_per_step, "summary": doc[0] if doc else "",
                    "options": solver_options_help(cls)})
    return out


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
