r"""What every multistep solver shares: the history, the warm-up, the final-order ramp and the
corrected start (docs/math.md §4, (12.7), (12.8), (13.3)).

A multistep solver of order p keeps the last p network evaluations D_j (x̂0 or ε̂, whichever the
solver extrapolates) with their log-SNR λ_j in its state, newest last, and builds each step from
the polynomial through them.

**Warm-up** (docs/math.md (12.7)). Step i can use at most order i + 1 (only i + 1 evaluations exist).

**Final-order ramp** (``lower_order_final``): when enabled and ``steps + 1 < lower_order_below``
(``None``: for any number of steps), step i uses order ≤ steps + 1 − i, i.e. the last step is of
order ≤ 2, as if the final denoise x̂0(x, t_min) were a first-order step to σ = 0; a run without
the final denoise ramps one step earlier, so its last step (on DDPM-like grids the longest in λ)
is of order 1. This is diffusers' rule with ``final_sigmas_type="zero"`` (the step to σ = 0 there
is diffsolve's ``denoise_final``) and the DPM-Solver++ paper's advice for few steps (< 15) on
guided sampling.

**Global order and the warm-up.** The first step is first order (local error O(h²)) and is never
corrected, so the global error of an order-p method (p ≥ 3) has an O(h²) term from it, as in the
reference implementations (diffusers, k-diffusion). Its constant is the change of D over the
first step: negligible from σ_max ≫ data scale (full-range VP grid: ``python
benchmarks/solvers_order.py`` measures 2.92 for dpmpp_3m, 3.09 with ``--problem random``), not
from a moderate-noise start (img2img, a user grid from t = 0.5): there dpmpp_3m, ``deis`` of
order 3 or 4 and ``unipc(order=3, corrector=False)`` measure 2.1–2.2 over 32–512 steps and tend
to 2 (``python benchmarks/solvers_order.py --t-start 0.5 --steps 32,64,128,256,512``); UniPC's
corrector lifts the first step to second order, so UniPC keeps its orders up to 3.

**Corrected start** (``corrected_start=True``, solvers without a corrector of their own;
docs/math.md (12.8), (13.3)): once D
has been evaluated at the second grid point (D_1 at x_1, the first-order result), the first step
is redone with the line through (λ_0, D_0), (λ_1, D_1) instead of the constant D_0,

    x_1 ← x_1 + c (D_1 − D_0),    c = the weight of the newest node in the solver's two-point rule
                                      over step 0 (:meth:`Multistep.start_weight`),

before step 1 extrapolates from x_1. No extra evaluation; the first step's local error becomes
O(h³), so orders up to 3 are reached from any start (``--t-start 0.5`` above: dpmpp_3m 3.0,
``deis`` order 3 3.0, order 4 3.1–3.3). Off by default: with it the solvers no longer reproduce
diffusers and k-diffusion step for step, and on grids whose first step is very long (the quadratic
grid at NFE 5) the line through two far-apart evaluations can be worse than the constant. The
trajectory records the uncorrected x_1 (the state the solver had after step 0).
"""
from __future__ import annotations

from torch import Tensor

from .base import Solver, StepContext

__all__ = ["Multistep", "History"]


class History:
    """The last evaluations of a multistep solver, oldest first: ``lams[j]`` (a float) is the
    log-SNR λ where ``values[j]`` (x̂0 or ε̂, a (B, *shape) tensor) was evaluated.

    ``push(lam, value, keep)`` appends in place, keeps the newest ``keep`` entries (``keep`` = the
    solver's order p) and returns the history. In place, so that the evaluation leaving the window
    is freed before the step allocates its result: the loop still holds the state it passed in
    while the step runs, and an immutable history would keep that evaluation alive (one state-sized
    tensor more at the peak of every multistep solver; benchmarks/cost.md).
    """

    __slots__ = ("lams", "values")

    def __init__(self):
        self.lams: tuple = ()
        self.values: tuple = ()

    def push(self, lam: float, value: Tensor, keep: int) -> "History":
        self.lams, self.values = (self.lams + (lam,))[-keep:], (self.values + (value,))[-keep:]
        return self

    def trim(self, keep: int) -> "History":
        """Keep the newest ``keep`` entries (none for ``keep`` ≤ 0), in place."""
        self.lams, self.values = (self.lams[-keep:], self.values[-keep:]) if keep > 0 else ((), ())
        return self


class Multistep(Solver):
    """Base class of the multistep solvers (``dpmpp_*``, ``deis``, ``unipc``): the shared options.

    Step i from t_i to t_{i+1} (:meth:`step`): evaluate D_i (x̂0 or ε̂) at (x_i, t_i); on step 1
    apply the corrected start x_1 ← x_1 + c (D_1 − D_0) if enabled (docs/math.md (12.8), (13.3));
    push (λ_i, D_i) onto the :class:`History`; then ``update`` takes the subclass's step of order
    p_i = :meth:`step_order` (docs/math.md (12.7)) from the last p_i evaluations. The update rule
    itself is the subclass's (docs/math.md (12.2), (13.1), (14.2)); UniPC's own ``step`` also
    applies its corrector before the push.

    Shapes: x and every D_j are (B, *shape); λ, the step order and all weights are float64 scalars
    shared by the batch. State: the :class:`History` (subclasses may add to it).

    Args:
        order: the method's polynomial order p (1 … ``_max_order``). A run of fewer than p steps is
            all warm-up (orders 1, 2, …), as in diffusers' and k-diffusion's multistep samplers.
        lower_order_final, lower_order_below: the final-order ramp (module docstring).

    Subclasses implement ``evaluate(ctx, x, i)`` (the quantity they extrapolate) and
    ``update(ctx, i, x, history, p)`` (the step of order p from the newest evaluation); those with
    ``corrected_start`` also ``start_weight(ctx)``.

    References:
        Lu, Zhou, Bao, Chen, Li, Zhu, DPM-Solver++, arXiv:2211.01095 (multistep warm-up; lower
        order for the last steps); the final-order rule follows diffusers' multistep schedulers.
    """

    _max_order = 3
    corrected_start = False

    def __init__(self, order: int, lower_order_final: bool = True, lower_order_below: int | None = 15):
        if order not in range(1, self._max_order + 1):
            raise ValueError(f"{self.name}: order must be one of {list(range(1, self._max_order + 1))}, got {order!r}")
        self.solver_order = order
        self.declared_order = float(order)
        self.lower_order_final = bool(lower_order_final)
        self.lower_order_below = lower_order_below

    def step_order(self, ctx: StepContext, i: int) -> int:
        """Order used on step i: warm-up at the start, optional ramp-down at the end."""
        p = min(self.solver_order, i + 1)
        n = ctx.steps
        if self.lower_order_final and (self.lower_order_below is None or n + 1 < self.lower_order_below):
            # the final denoise counts as the last, first-order, step; without it step n-1 is the last
            p = min(p, n + 1 - i if ctx.denoise_final else n - i)
        return p

    def init(self, ctx: StepContext, x: Tensor):
        return History()

    def observe(self, ctx: StepContext, i: int, x: Tensor, history: History) -> tuple[Tensor, History]:
        """Evaluate at (x, t_i), apply the corrected start on step 1, and record the evaluation:
        returns (x, the history with it, newest last)."""
        history.trim(max(self.solver_order - 1, 1))  # step i reads at most p − 1 earlier ones: free the oldest first
        D = self.evaluate(ctx, x, i)
        if i == 1 and self.corrected_start:
            x = x + self.start_weight(ctx) * (D - history.values[-1])
        return x, history.push(ctx.lam[i], D, self.solver_order)

    def step(self, ctx: StepContext, i: int, x: Tensor, history: History):
        x, history = self.observe(ctx, i, x, history)
        return self.update(ctx, i, x, history, self.step_order(ctx, i)), history

    def evaluate(self, ctx: StepContext, x: Tensor, i: int) -> Tensor:
        raise NotImplementedError

    def update(self, ctx: StepContext, i: int, x: Tensor, history: History, p: int) -> Tensor:
        raise NotImplementedError

    def start_weight(self, ctx: StepContext) -> float:
        raise NotImplementedError
