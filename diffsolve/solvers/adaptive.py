r"""Adaptive solvers: diffsolve's embedded Runge–Kutta engine, torchdiffeq and torchsde.

An adaptive solver chooses its own steps: it has ``adaptive = True`` and, instead of
``init``/``step``, one method

    x, info = solver.solve(ctx, x)        # from ctx.t[0] to ctx.t[-1]

which the one loop (:func:`diffsolve.loop.integrate`) calls. ``ctx`` is the
:class:`~diffsolve.solvers.base.StepContext` of a two-point grid (the end points); ``info`` carries
the step counts (per sample when the solver knows them). Network evaluations are counted at the
denoiser, as everywhere.

**ODE solvers and the time variable.** The Runge–Kutta solvers integrate the probability-flow ODE
through its one solve, :meth:`diffsolve.ode.ProbabilityFlowODE.solve`, in a time variable chosen by
``time_variable`` (default ``"auto"``: ``t`` on continuous variance-preserving and flow schedules,
``log_snr`` otherwise, DDPM tables included; :mod:`diffsolve.ode`). With ŝ = −ε̂/σ and
g² = −2σ²λ', the ODE (docs/math.md (3.3)) reads dx/dt = f_t x − σ_t λ'_t ε̂ (docs/math.md (8.2));
a monotone change of variables changes only the solver's work (docs/math.md §9, (9.2)):

    ``"t"``                 τ = t,          y = x:     dy/dτ = f_t x − ½ g_t² ŝ(x, t)        (3.3)
    ``"log_snr"``           τ = λ,          y = x:     dy/dτ = (f_t x − ½ g_t² ŝ(x, t)) / λ'_t  (9.3)
    ``"sigma_over_alpha"``  τ = s = σ/α,    y = x/α:   dy/dτ = ε̂(α y, t)                  (9.5), EDM

The last one follows from d(x/α)/dt = −(σ/α) λ' ε̂ and ds/dt = −λ' s; it is the VE-coordinate
ODE dy/ds = (y − D(y; s))/s of Karras et al. (docs/math.md (9.5), §15). t(τ) uses the schedule's
exact inverse ``t_of_log_snr``. ``benchmarks/adaptive_time_variable.py`` measures the evaluations each needs at
equal error (dopri5, max per-sample error 1e-3 / 1e-4 against a tight reference): ``log_snr``
74/112 (ring, VP), 96/123 (64-d mixture, VP), 89/128 (ring, EDM), 85/131 (mixture, EDM); ``t``
74/113, 75/101, 133/201, 133/168; ``sigma_over_alpha`` 224/270, 153/186 on VP (many rejected
steps: the step must shrink geometrically in s) and the same as ``t`` on EDM (s = t there).
``log_snr`` is best or tied on three problems of four; ``t`` ties or beats it on VP. Hence ``auto``.

Shared control (``per_sample=False``, the default) evaluates the batch together: as few or fewer
network calls; ``per_sample=True`` spends 0–20 % fewer row evaluations on these mixtures (3.7x
fewer when one sample is much harder, with each sample's local error per step held to the tolerance,
where the shared RMS norm lets the hard sample's grow ~√B), and makes each sample independent of its
batch. The tolerances bound the local error of each step, not the global error at the end, which
accumulates over the steps and can be many times rtol at loose tolerances. A tolerance below 1 % of the
state's or the network's machine epsilon is warned about (:func:`diffsolve.ode.ProbabilityFlowODE.solve`).

**SDE solvers** (``torchsde``): the reverse family (docs/math.md (3.2)) in increasing time
τ = T − t, or in the grid index for fixed steps (docs/math.md (9.6)), with diagonal noise ν_t that
depends on t only. Stratonovich methods integrate the same drift: the Itô–Stratonovich correction
½ Σ_j g_j ∂g/∂x vanishes when g does not depend on x.

References:
    Dormand & Prince (1980); Tsitouras (2011); Chen et al., Neural Ordinary Differential
    Equations, arXiv:1806.07366 (torchdiffeq); Li et al., Scalable Gradients for Stochastic
    Differential Equations, arXiv:2001.01328 (torchsde); Kidger et al., Efficient and Accurate
    Gradients for Neural SDEs, arXiv:2105.13493 (BrownianInterval, reversible Heun); Song et al.,
    arXiv:2011.13456 (probability-flow ODE solved with RK45); Karras et al., arXiv:2206.00364.
"""
from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from ..grids import GRIDS, make_grid
from ..noise import NoiseSource
from .._numbers import is_integer
from ..ode import ProbabilityFlowODE, _check_precision, check_settings
from ..processes import ReverseSDE
from ..rk import TABLEAUS
from .base import Solver
from .registry import register

__all__ = ["AdaptiveSolver", "RungeKutta", "Dopri5", "Dop853", "Tsit5", "Bosh3", "AdaptiveHeun", "TorchDiffEq",
           "TorchSDE"]


class AdaptiveSolver(Solver):
    """Base class of solvers that choose their own steps (``adaptive = True``).

    Subclasses implement ``solve(ctx, x) -> (x, info)`` from ``ctx.times[0]`` to ``ctx.times[-1]``:
    ``x`` is (B, *shape) at the start and the result has the same shape at the end; ``info`` is a
    dict of step counts and settings. There is no per-step ``state``: the steps happen inside
    ``solve``. Update rule and references: those of each subclass.
    """

    adaptive = True
    name = "adaptive"
    nfe_per_step = 0
    sizing = ("its tolerances, solver_options=dict(rtol=..., atol=...) (on the command line the spec "
              "'NAME:rtol=...:atol=...')")  # how a user sets its work

    def solve(self, ctx, x: Tensor):
        raise NotImplementedError

    def nfe(self, steps):
        raise TypeError(f"solver {self.name!r} is adaptive: its evaluations are not known in advance")

    def default_denoise_final(self, nfe, steps, stochastic) -> bool:
        """No budget to weigh the final denoise against: the run ends with it."""
        return True

    def steps_for_nfe(self, nfe, denoise_final=False):
        raise ValueError(f"solver {self.name!r} chooses its own steps: size them with {self._sizing()} "
                         f"instead of steps or nfe")

    def _sizing(self) -> str:
        return self.sizing.replace("NAME", self.name)

    def grid_for(self, schedule, *, steps=None, nfe=None, grid=None, denoise_final=False) -> Tensor:
        """The end points only: a decreasing array ``grid`` gives its first and last time, else the
        schedule's whole range; a number of steps, a budget or a grid kind is refused."""
        explicit = grid is not None and not isinstance(grid, str)
        if steps is not None or nfe is not None or (grid is not None and not explicit):
            raise ValueError(f"solver {self.name!r} chooses its own steps, so steps/nfe/grid kinds do not apply: "
                             f"size its steps with {self._sizing()} (an array grid= sets the start and end times)")
        return make_grid(schedule, None, grid)[[0, -1]] if explicit else make_grid(schedule, 1, "time")

    def check(self, ctx):
        pass


class RungeKutta(AdaptiveSolver):
    """An embedded Runge–Kutta pair with error control on the probability-flow ODE (ν = 0).

    One attempted step from (u, y) with signed step h in the time variable u (docs/math.md (19.1)),
    F(u, y) = :meth:`~diffsolve.ode.ProbabilityFlowODE.func` (dy/du of docs/math.md (9.2)–(9.5)):

        k_j = F(u + c_j h, y + h Σ_{l<j} a_{jl} k_l),   y⁺ = y + h Σ_j b_j k_j,   e = h Σ_j (b_j − b̂_j) k_j,

    accepted when r = ‖e / (atol + rtol·max(|y|, |y⁺|))‖ ≤ 1 (docs/math.md (19.2); DOP853: (19.3));
    next step size from the PI controller (19.4), first step from (19.5).

    Shapes: x is (B, *shape); the ODE state y is x or x/α (by ``time_variable``), of the same shape.
    ``per_sample=False``: one time, step size and error norm for the batch; ``per_sample=True``: one
    per sample. ``info``: ``accepted``, ``rejected`` ((B,) step counts), ``calls`` (forward calls of
    the busiest row), ``row_evals``, ``method``, ``time_variable``.

    Options:
        rtol, atol: tolerances (> 0) of the scaled local error (see :func:`diffsolve.rk.rk_solve`).
        per_sample: one step size and error control per sample instead of one for the batch.
        time_variable: ``"auto"`` (default), ``"t"``, ``"log_snr"``, ``"sigma_over_alpha"``, ``"flow_time"`` or
            ``"vp_time"`` (module docstring; docs/math.md (9.7)).
        norm: ``"rms"`` or ``"max"``; max_steps: limit on step attempts.

    References: the tableau's paper (each subclass; ``diffsolve.rk.TABLEAUS[method].doc``);
    Hairer, Nørsett & Wanner, Solving Ordinary Differential Equations I (1993), §II.4 (error
    control, starting step).
    """

    method = "dopri5"

    def __init__(self, rtol: float = 1e-5, atol: float = 1e-5, per_sample: bool = False,
                 time_variable: str = "auto", norm: str = "rms", max_steps: int = 10000):
        check_settings(method=self.method, rtol=rtol, atol=atol, norm=norm, max_steps=max_steps,
                       time_variable=time_variable, per_sample=per_sample)
        self.rtol, self.atol, self.per_sample = float(rtol), float(atol), per_sample
        self.time_variable, self.norm, self.max_steps = time_variable, norm, max_steps

    def solve(self, ctx, x):
        ode = ProbabilityFlowODE(ctx.denoiser, self.time_variable)
        sol = ode.solve(x, ctx.times[0], ctx.times[-1], method=self.method, rtol=self.rtol, atol=self.atol,
                        per_sample=self.per_sample, max_steps=self.max_steps, norm=self.norm)
        return sol.x, {"accepted": sol.accepted, "rejected": sol.rejected, "calls": int(sol.calls.max()),
                       "row_evals": sol.row_evals, "method": self.method, "time_variable": sol.time_variable}


# The Runge–Kutta solvers, one per tableau: (solver name, class name, tableau, declared order, title, stages,
# FSAL, reference). Stages, FSAL and reference are those of diffsolve.rk.TABLEAUS[tableau] (its ``doc``),
# written out because reading the DOP853 entry would import scipy.integrate.
_RK_SOLVERS = (
    ("dopri5", "Dopri5", "dopri5", 5, "Dormand–Prince 5(4)", 7, True,
     ("Dormand & Prince, A family of embedded Runge–Kutta formulae,\n"
      "        J. Comput. Appl. Math. 6 (1980) 19–26")),
    ("tsit5", "Tsit5", "tsit5", 5, "Tsitouras 5(4)", 7, True,
     ("Tsitouras, Runge–Kutta pairs of order 5(4) satisfying only the first column simplifying\n"
      "        assumption, Comput. Math. Appl. 62 (2011) 770–775")),
    ("dop853", "Dop853", "dop853", 8, "Dormand–Prince 8(5,3)", 13, True,
     ("Prince & Dormand, High order embedded Runge–Kutta formulae, J. Comput. Appl. Math. 7 (1981)\n"
      "        67–75; Hairer, Nørsett & Wanner (1993), §II.10 (DOP853; error estimate docs/math.md (19.3))")),
    ("bosh3", "Bosh3", "bosh3", 3, "Bogacki–Shampine 3(2)", 4, True,
     "Bogacki & Shampine, A 3(2) pair of Runge–Kutta formulas, Appl. Math. Lett. 2 (1989) 321–325"),
    ("adaptive_heun", "AdaptiveHeun", "euler_heun", 2, "Heun 2(1) (Euler error estimate)", 2, False,
     "Hairer, Nørsett & Wanner (1993), §II.1 (Heun's method)"),
)
for _name, _cls, _method, _order, _title, _stages, _fsal, _ref in _RK_SOLVERS:
    assert _method in TABLEAUS
    _cost = (f"{_stages} stages, FSAL (the last stage is the next step's first):\n    {_stages - 1}" if _fsal
             else f"{_stages} stages, not FSAL:\n    {_stages}")
    globals()[_cls] = register(type(_cls, (RungeKutta,), {
        "name": _name, "method": _method, "declared_order": _order, "__module__": __name__,
        "__doc__": f"{_title}: embedded Runge–Kutta pair of order {_order}, error-controlled, on the "
                   f"probability-flow ODE.\n\n"
                   f"    Tableau ``diffsolve.rk.TABLEAUS[{_method!r}]``; {_cost} evaluations per accepted step.\n"
                   f"    Step, error control, options, shapes and ``info``: :class:`RungeKutta` (docs/math.md\n"
                   f"    (19.1)–(19.5)).\n\n"
                   f"    References:\n        {_ref};\n"
                   f"        Hairer, Nørsett & Wanner, Solving Ordinary Differential Equations I (1993), §II.4.\n"}))


_TORCHDIFFEQ_FIXED = ("euler", "midpoint", "rk4", "heun2", "heun3", "implicit_adams", "fixed_adams")


@register
class TorchDiffEq(AdaptiveSolver):
    """Any ``torchdiffeq.odeint`` method on the probability-flow ODE, in the chosen time variable.

    Update: torchdiffeq's step of ``method`` on dy/du = :meth:`~diffsolve.ode.ProbabilityFlowODE.func`
    (docs/math.md (9.2)–(9.5); u and y = x or x/α by ``time_variable``, module docstring), with
    torchdiffeq's error control (or its fixed step) shared by the whole batch. Declared order 5:
    that of the default ``dopri5``; another method has its own.

    Shapes: x and y are (B, *shape); one time and step size for the batch. ``info``: ``method``,
    ``time_variable``.

    Options: method (default ``"dopri5"``), rtol, atol, time_variable, steps, options (passed to
    odeint). A fixed-step method (``euler``, ``midpoint``, ``rk4``, ...) needs ``steps`` (that many equal
    steps in the time variable; on the command line ``torchdiffeq:method=rk4:steps=10``) or
    ``options=dict(step_size=...)`` in units of the time variable.

    References: Chen, Rubanova, Bettencourt, Duvenaud, Neural Ordinary Differential Equations,
    arXiv:1806.07366 (torchdiffeq); Dormand & Prince (1980) for the default method.
    """

    name = "torchdiffeq"
    declared_order = 5

    def __init__(self, method: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5,
                 time_variable: str = "auto", options: dict | None = None, steps: int | None = None):
        from torchdiffeq._impl.odeint import SOLVERS as TD

        if method not in TD:
            raise ValueError(f"unknown torchdiffeq method {method!r}; valid: {', '.join(TD)}")
        if method == "explicit_adams":  # torchdiffeq's own: odeint(-y, 0 -> 1, step 0.01) gives 0.735 for 0.368
            raise ValueError("torchdiffeq's explicit_adams does not converge (its error grows as the step shrinks: "
                             "odeint of dy/dt = -y over [0, 1] with step 0.01 gives 0.735 for e^-1 = 0.368); use "
                             "another method, e.g. rk4 or dopri5")
        if options is not None and not isinstance(options, dict):
            raise ValueError(f"torchdiffeq options must be a dict (passed to odeint), got {options!r}")
        options = dict(options or {})
        fixed = method in _TORCHDIFFEQ_FIXED
        if steps is not None:
            if not fixed:
                raise ValueError(f"steps= is for torchdiffeq's fixed-step methods ({', '.join(_TORCHDIFFEQ_FIXED)}); "
                                 f"{method!r} chooses its own steps from rtol and atol")
            if ("step_size" in options or "grid_constructor" in options or not is_integer(steps)
                    or not 1 <= steps <= 10**7):
                raise ValueError(f"steps must be an integer from 1 to 10**7, without options' step_size or "
                                 f"grid_constructor; got steps={steps!r}")
        elif fixed and "step_size" not in options:
            raise ValueError(f"torchdiffeq method {method!r} is fixed-step: give steps=N (equal steps in the time "
                             f"variable; on the command line 'torchdiffeq:method={method}:steps=N') or "
                             f"options=dict(step_size=...)")
        if "step_size" in options:
            h = options["step_size"]
            if isinstance(h, bool) or not isinstance(h, (int, float)) or not math.isfinite(h) or h <= 0:
                raise ValueError(f"options' step_size must be a positive finite number (in units of the time "
                                 f"variable), got {h!r}")
        check_settings(rtol=rtol, atol=atol, time_variable=time_variable)
        self.method, self.rtol, self.atol = method, float(rtol), float(atol)
        self.time_variable, self.options, self.steps = time_variable, options, None if steps is None else int(steps)

    def solve(self, ctx, x):
        import torchdiffeq

        ode = ProbabilityFlowODE(ctx.denoiser, self.time_variable)
        t_start, t_end = ctx.times[0], ctx.times[-1]
        taus = torch.stack([ode.u_of(t_start), ode.u_of(t_end)]).to(x.device)
        options = dict(self.options)
        if self.method not in _TORCHDIFFEQ_FIXED:
            _check_precision(ctx.denoiser, x.dtype, self.rtol)
        if self.steps is not None:  # exactly `steps` equal steps (a step_size of span/steps can round to one more)
            options["grid_constructor"] = lambda func, y0, t: torch.linspace(
                float(t[0]), float(t[-1]), self.steps + 1, dtype=t.dtype, device=t.device)
        try:
            y = torchdiffeq.odeint(ode.func, ode.to_state(x, t_start), taus, method=self.method,
                                   rtol=self.rtol, atol=self.atol, options=options or None)[-1]
        except AssertionError as e:  # torchdiffeq's step limit: "max_num_steps exceeded (...)"
            if not str(e).startswith("max_num_steps exceeded"):
                raise
            raise RuntimeError(f"torchdiffeq stopped: {e}; loosen rtol/atol or raise options' max_num_steps "
                               f"(or use diffsolve's own dopri5, whose error control is per sample)") from None
        return ode.from_state(y, t_end), {"method": self.method, "time_variable": ode.variable}


# --- torchsde ------------------------------------------------------------------------------
# method -> (SDE type it integrates, Lévy-area approximation it needs)
_SDE_CALLS = 4  # drift calls per step of the costliest method (srk), for torchsde's step limit
_SDE_METHODS = {
    "euler": ("ito", "none"),
    "milstein": ("ito", "none"),
    "srk": ("ito", "space-time"),
    "reversible_heun": ("stratonovich", "none"),
    "heun": ("stratonovich", "none"),
    "midpoint": ("stratonovich", "none"),
    "euler_heun": ("stratonovich", "none"),
}


class _AsRun(torch.nn.Module):
    """The SDE as torchsde runs it: read as Itô or as Stratonovich (the same drift either way, exact here since
    ν_t does not depend on x), with at most ``max_calls`` drift calls when not None (torchsde's adaptive steps
    have no limit of their own: a collapsing step size would run for ever). A drift call at the time and
    state of the call before it (torchsde's shape check at the start, srk's stages) reuses that call's value
    instead of calling the network again."""

    noise_type = "diagonal"

    def __init__(self, sde, sde_type: str, max_calls: int | None, max_steps: int):
        super().__init__()
        self.sde, self.sde_type, self.max_calls, self.max_steps, self.calls = sde, sde_type, max_calls, max_steps, 0
        self._last = None  # (key, state, drift) of the last call; the state held so its memory is not reused

    def f(self, t, y):
        # (an inference-mode tensor keeps no version counter: no memo for it)
        key = None if y.is_inference() else (float(t), y.data_ptr(), y._version, tuple(y.shape), y.stride(),
                                             y.dtype, y.device)
        if key is not None and self._last is not None and self._last[0] == key:  # the same tensor, unchanged
            return self._last[2].clone()
        self.calls += 1
        if self.max_calls is not None and self.calls > self.max_calls:
            raise RuntimeError(f"torchsde's adaptive steps did not reach the end within the drift calls of "
                               f"max_steps={self.max_steps} steps (at τ = {float(t):.6g}): the step size collapsed. "
                               f"Loosen rtol/atol, raise "
                               f"max_steps, or use fixed steps (solver_options=dict(steps=N))")
        out = self.sde.f(t, y)
        self._last = None if key is None else (key, y, out.clone())  # a copy: torchsde may update the drift in place
        return out

    def g(self, t, y):
        return self.sde.g(t, y)


BROWNIAN_RESOLUTION = 1e-6  # of an adaptive run's Brownian paths, relative to their span (_per_sample_brownian)


def _per_sample_brownian(t0, t1, entropies, dim, dtype, device, levy_area, dt):
    """A batched Brownian motion made of one ``BrownianInterval`` per sample, each seeded by its own
    entropy, so sample i's path does not depend on the batch (for the same query times). The paths are
    drawn in float64 and rounded to ``dtype``, so a seed gives the same path in either state dtype.

    ``dt=None`` (adaptive steps): each path is a function of its entropy alone (torchsde's
    ``halfway_tree``, resolved to :data:`BROWNIAN_RESOLUTION` of the span), whatever times the steps query
    it at; else the path depends on where and in what order it is queried, and the adaptive solution did
    not converge as the tolerance fell (on the 2-D ring under VP at η = 1, all 8 samples of
    ``tests/test_adaptive.py::test_adaptive_torchsde_converges_on_each_samples_own_path`` ended more than
    0.1 apart at rtol 1e-2 and 1e-3; with it at most 1). The tree's queries cost time per sample and
    call: several times the wall time of a run whose network is as cheap as that analytic one."""
    tree = {"dt": dt} if dt is not None else {"dt": None, "halfway_tree": True, "tol": BROWNIAN_RESOLUTION * (t1 - t0)}
    from torchsde import BrownianInterval
    from torchsde._brownian.brownian_base import BaseBrownian

    class PerSampleBrownian(BaseBrownian):
        def __init__(self):
            self.bms = [BrownianInterval(t0=t0, t1=t1, size=(1, dim), dtype=torch.float64, device=device, entropy=e,
                                         levy_area_approximation=levy_area, **tree) for e in entropies]

        def __call__(self, ta, tb=None, return_U=False, return_A=False):
            if dt is None and tb is not None:  # a halfway tree splits down to its query times: they must lie on its
                ta, tb = (self._on_grid(float(v)) for v in (ta, tb))  # rounded grid (a step under it: no increment)
            outs = [bm(ta, tb, return_U=return_U, return_A=return_A) for bm in self.bms]
            if isinstance(outs[0], tuple):
                return tuple(torch.cat(parts, 0).to(dtype) for parts in zip(*outs))
            return torch.cat(outs, 0).to(dtype)

        def _on_grid(self, v: float) -> float:
            """``v`` on the grid the tree's midpoints are rounded to (torchsde's own rounding), in [t0, t1]."""
            return v if v in (t0, t1) else min(max(self.bms[0]._round(v), t0), t1)

        def __repr__(self):
            return f"PerSampleBrownian(batch={len(self.bms)}, dim={dim})"

        dtype = property(lambda self: dtype)
        device = property(lambda self: torch.device(device))
        shape = property(lambda self: torch.Size((len(self.bms), dim)))
        levy_area_approximation = property(lambda self: levy_area)

    return PerSampleBrownian()


@register
class TorchSDE(AdaptiveSolver):
    """``torchsde.sdeint`` on the reverse family (docs/math.md (3.2)) with per-sample Brownian motions.

    Update: torchsde's ``method`` on the reverse family written in an increasing clock u
    (docs/math.md (9.6)), b the reverse-family drift (docs/math.md (9.1)):

        dx = −b(x, t(u)) c_k du + ν_{t(u)} √c_k dW_u

    with fixed steps, u is the grid index (t linear on [k, k + 1], c_k = |t_{k+1} − t_k|, du = 1 per
    grid step; Euler is then Euler–Maruyama, docs/math.md (11.1), on the grid); with
    ``adaptive=True``, u = τ = t_max − t and c_k = 1.

    Shapes: x is (B, *shape), flattened to (B, d) for torchsde; ν_t is a scalar shared by the batch
    (diagonal noise); each sample has its own Brownian path. ``info``: ``method``, ``adaptive``,
    ``grid``, ``steps``.

    Options:
        method: one of euler, milstein, srk (Itô) or reversible_heun, heun, midpoint, euler_heun
            (Stratonovich; same drift, see module docstring).
        steps, grid: fixed steps (the default): ``steps`` steps (default 100) on a grid of that
            kind (:mod:`diffsolve.grids`; default ``"log_snr"`` as for every fixed-step solver,
            ``"time"`` for equal steps in t) between the start and end times. torchsde runs in the
            grid index u (one step du = 1 per grid step; ``processes._TorchSDE``), so Euler here is
            Euler–Maruyama on the grid. Or
        adaptive=True with rtol, atol: torchsde's step-doubling error control in τ = t_max − t
            (initial step 1/``steps`` of the range; ``grid`` unused: in the grid index the
            coefficients jump at every grid point, which step-doubling control pays for with
            rejected steps). Sample i is
            identical alone or in a batch with fixed steps; adaptive steps are chosen for the whole
            batch. ``max_steps`` (default 10000) bounds the run, counted in drift calls (3 × 4 per
            step attempt, the most the costliest method needs; methods with fewer calls per step get up
            to 4× more attempts): an error past it, where torchsde itself has no limit.

    Each sample's Brownian path is a ``torchsde.BrownianInterval`` seeded from one draw of that
    sample's noise stream (``seeds=`` in ``sample``), drawn in float64 whatever the state dtype. torchsde's
    Euler makes one drift call per step: a call at the time and state of the call before it (torchsde's
    shape check at the start, srk's stages) reuses that value. ``milstein`` equals ``euler`` here since
    ∂ν/∂x = 0. Fixed steps on which the method is unstable are refused (:meth:`check`); that refuses
    ``reversible_heun`` at η > 0 on the grids tried: its steps do not damp the dissipative reverse drift.
    ``t`` of the
    result is the span (start and end); the fixed steps' grid is ``make_grid(schedule, steps, grid,
    t_start, t_end)``.

    References:
        Li, Wong, Chen, Duvenaud, Scalable Gradients for Stochastic Differential Equations,
        arXiv:2001.01328 (torchsde); Kidger, Foster, Li, Lyons, Efficient and Accurate Gradients for
        Neural SDEs, arXiv:2105.13493 (BrownianInterval, reversible Heun); Kloeden & Platen,
        Numerical Solution of Stochastic Differential Equations (1992).
    """

    name = "torchsde"
    declared_order = 1.0
    stochastic = True
    default_eta = 1.0  # an SDE integrator: the reverse SDE unless a noise level is named
    sizing = ("solver_options=dict(steps=N, grid=KIND) for fixed steps, or dict(adaptive=True, rtol=..., atol=...) "
              "(on the command line the spec 'torchsde:steps=N:grid=KIND')")

    def __init__(self, method: str = "euler", steps: int = 100, adaptive: bool = False,
                 rtol: float = 1e-3, atol: float = 1e-3, grid: str = "log_snr", max_steps: int = 10000):
        if method not in _SDE_METHODS:
            raise ValueError(f"unknown torchsde method {method!r}; valid: {', '.join(_SDE_METHODS)}")
        if int(steps) != steps or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        if grid not in GRIDS:
            raise ValueError(f"unknown grid {grid!r} for torchsde; valid: {', '.join(GRIDS)}")
        check_settings(rtol=rtol, atol=atol, max_steps=max_steps)
        self.max_steps = int(max_steps)
        self.method, self.steps, self.grid, self.adaptive_steps = method, int(steps), grid, bool(adaptive)
        self.rtol, self.atol = float(rtol), float(atol)

    def _grid(self, ctx) -> Tensor:
        """The fixed steps' grid between the run's start and end times."""
        return make_grid(ctx.denoiser.schedule, self.steps, self.grid, t_start=ctx.times[0], t_end=ctx.times[-1])

    def check(self, ctx):
        """Refuse fixed steps on which the method is unstable (docs/math.md (11.1a)), as ``euler`` refuses
        Euler–Maruyama: the factor by which each of the method's steps multiplies a perturbation of the
        drift's linear part is measured by running the method itself on that linear part (scalar, without
        noise), and an error made at some step must not grow more than 100× by the end."""
        if self.adaptive_steps or ctx.level.is_zero:
            return
        import torchsde

        from .euler import MAX_GROWTH

        grid = self._grid(ctx)
        sch, level = ctx.denoiser.schedule, ctx.level
        where = ReverseSDE(ctx.denoiser, eta=level.eta, noise=level.noise).torchsde((1,), grid=grid)

        class Linear(torch.nn.Module):  # dy/du = −κ(t(u)) c_k y, the reverse drift's part linear in x
            noise_type, sde_type = "diagonal", _SDE_METHODS[self.method][0]

            def f(self, u, y):
                t, speed = where._t(u)
                kappa = sch.f(t) + 0.5 * (sch.g2(t) + level.nu2(t)) / sch.sigma(t) ** 2
                return -float(kappa * speed) * y

            def g(self, u, y):
                return torch.zeros_like(y)

        n = len(grid) - 1
        u = torch.arange(n + 1, dtype=torch.float64)
        with torch.no_grad():
            y = torchsde.sdeint(Linear(), torch.ones(1, 1, dtype=torch.float64), u, method=self.method, dt=1.0,
                                options={"grad_free": True} if self.method == "milstein" else None)
        y = y.reshape(-1).abs()
        log_factor = (y[1:].clamp(min=1e-300).log() - y[:-1].clamp(min=1e-300).log()).nan_to_num(posinf=1e300)
        growth = float(log_factor.flip(0).cumsum(0).max().clamp(max=700).exp())
        if growth > MAX_GROWTH:
            eta = f"eta={level.eta:g}" if level.eta is not None else "this noise level"
            why = ("; reversible Heun does not damp a dissipative drift (its stability region is a segment of the "
                   "imaginary axis): more steps help it little, use method=heun or midpoint"
                   if self.method == "reversible_heun" else "")
            raise ValueError(f"torchsde's {self.method} with {eta} is unstable on this grid of {n} steps: an error "
                             f"made in its steps grows by up to {growth:.2g}× before the end (stable: at most 1), "
                             f"so the samples would diverge{why}. Take more steps (torchsde:steps=N), a smaller eta, "
                             f"or a solver that takes any eta exactly (ancestral, dpmpp_2m_sde)")

    def solve(self, ctx, x):
        import torchsde

        denoiser, level, noise = ctx.denoiser, ctx.level, ctx.source
        t_start, t_end = ctx.times[0], ctx.times[-1]
        B, event = x.shape[0], tuple(x.shape[1:])
        dim = math.prod(event)
        if self.adaptive_steps:  # in τ = t_max − t: a smooth time, as step-size control needs
            grid, T = None, denoiser.schedule.t_max
            u0, u1 = T - float(t_start), T - float(t_end)
        else:  # in the grid index
            grid = self._grid(ctx)
            u0, u1 = 0.0, float(len(grid) - 1)
        sde = ReverseSDE(denoiser, eta=level.eta, noise=level.noise).torchsde(event, grid=grid)
        sde_type, levy = _SDE_METHODS[self.method]
        # (each step attempt: a step and its two halves, of up to _SDE_CALLS drift calls each)
        sde = _AsRun(sde, sde_type, 3 * _SDE_CALLS * self.max_steps if self.adaptive_steps else None, self.max_steps)
        ts = torch.tensor([u0, u1], dtype=x.dtype, device=x.device)
        u0, u1 = float(ts[0]), float(ts[1])  # the Brownian paths span exactly the times torchsde asks for
        dt = (u1 - u0) / self.steps if self.adaptive_steps else 1.0  # the first step of an adaptive run
        if noise is None:
            noise = NoiseSource(B, event, device=x.device)
        # one draw of each sample's own stream seeds its Brownian path (its float64 bits, whatever the state dtype)
        bits = noise.randn(dtype=torch.float64).reshape(B, -1)[:, 0].to(device="cpu").view(torch.int64)
        entropies = [abs(int(b)) % (2**63 - 1) for b in bits]
        # adaptive: paths of their entropy alone, whatever times the steps query (_per_sample_brownian)
        bm = _per_sample_brownian(u0, u1, entropies, dim, x.dtype, x.device, levy, None if self.adaptive_steps else dt)
        opts = {"grad_free": True} if self.method == "milstein" else None
        with warnings.catch_warnings():  # ν_t does not depend on x: the noise is additive, which torchsde's
            # check for adaptive Euler–Maruyama cannot see in a diagonal-noise SDE
            warnings.filterwarnings("ignore", message="Numerical solution is not guaranteed to converge")
            ys = torchsde.sdeint(sde, x.reshape(B, dim), ts, bm=bm, method=self.method, dt=dt,
                                 adaptive=self.adaptive_steps, rtol=self.rtol, atol=self.atol, options=opts)
        return ys[-1].reshape(x.shape), {"method": self.method, "adaptive": self.adaptive_steps,
                                         "grid": None if self.adaptive_steps else self.grid,
                                         "steps": None if self.adaptive_steps else self.steps}
