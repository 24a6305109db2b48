r"""DEIS: multistep exponential integrators in noise prediction (docs/math.md §13).

In y = x/α and ρ = σ/α = e^{−λ} the probability-flow ODE (docs/math.md (3.3)) is dy/dρ = ε̂(x, t) exactly,
whatever the schedule. Over step i (ρ_i → ρ_{i+1} < ρ_i), replacing ε̂ by the polynomial through
the last p evaluations (τ_{i−j}, ε̂_{i−j}), j = 0..p−1, in a variable τ of ρ, and integrating it
exactly (docs/math.md (13.1)):

    x_{i+1} = (α_{i+1}/α_i) x_i + α_{i+1} Σ_j C_{ij} ε̂_{i−j},   C_{ij} = ∫_{ρ_i}^{ρ_{i+1}} ℓ_j(τ(ρ)) dρ,

ℓ_j the Lagrange basis polynomial of node τ_{i−j}. Two choices of τ (docs/math.md (13.2)):

- ``variable="log_rho"`` (default; DEIS's "logρ", diffusers' ``DEISMultistepScheduler``):
  τ = log ρ = −λ, C_{ij} = ∫ e^{τ} ℓ_j(τ) dτ. This is DPM-Solver's multistep method in noise
  prediction (the same polynomial in λ, integrated against the same exponential weight), the ε̂
  twin of DPM-Solver++ (:mod:`diffsolve.solvers.dpmpp`).
- ``variable="rho"`` (DEIS's ρAB, the variable-step form of iPNDM): τ = ρ, plain Adams–Bashforth
  in ρ.

The weights C_{ij} of the whole grid are computed once, in float64, before the first step
(Gauss–Legendre quadrature: exact for ``"rho"``; for ``"log_rho"``, 24 nodes integrate e^{τ}·poly
to round-off for any step shorter than ~15 in λ, far beyond a usable grid). Order 1 in either
variable is DDIM (docs/math.md (4.1) with η = 0). Warm-up and the final-order ramp (``lower_order_final``,
``lower_order_below``) are those of every multistep solver (:mod:`diffsolve.solvers.multistep`;
docs/math.md (12.7)); the corrected start is docs/math.md (13.3).

Order: p, with a pre-asymptotic wobble for order 4. The warm-up (step j of order j + 1, as in every
multistep solver here and in the references) leaves a global O(h²) term from the first,
Euler-like step, with a tiny constant when the solve starts at high noise (ε̂ barely changes
there); from a moderate-noise start it dominates: for orders 3 and 4 the local slopes over 32–512
steps from t = 0.5 fall towards 2 (log ρ 2.4 → 2.0, ρ 2.9 → 2.1; ``python benchmarks/solvers_order.py
--t-start 0.5 --steps 32,64,128,256,512 --solvers deis``; :mod:`diffsolve.solvers.multistep`, "Global
order and the warm-up"); ``corrected_start=True`` restores order 3 there (3.0 for order 3, 3.1–3.3
for order 4). From t_max, measured by
``python benchmarks/solvers_order.py --steps 32,64,128,256,512,1024 --solvers deis`` (VP ring,
reference at 1e-11): local slopes of order 4 are 4.50, 3.20, 3.58, 3.90, 3.77 (log ρ) and 3.28,
3.65, 3.83, 3.91, 3.92 (ρ); order 3: 2.89–3.03 (log ρ), 2.59–2.97 (ρ).

Why a noise-prediction integrator beside DPM-Solver++: on a data direction of variance s, along
the exact path ε̂ = c ρ/√(s + ρ²) and x̂0 = c s/√(s + ρ²). Where ρ ≫ √s (the high-noise part of
every low-variance direction, e.g. fine image detail) ε̂ is nearly constant while x̂0 ∝ e^{λ}; a
polynomial extrapolation of ε̂ is then nearly exact and one of x̂0 is not. Which form wins depends
on the data spectrum and the grid; ``benchmarks/quality.md`` measures it.
"""
from __future__ import annotations

import math

import numpy as np

from .base import lincomb
from .multistep import History, Multistep
from .registry import register

__all__ = ["DEIS"]

_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(24)


def lagrange_weights(nodes, a: float, b: float, exp_weight: bool) -> list:
    r"""∫_a^b w(τ) ℓ_j(τ) dτ for the Lagrange basis ℓ_j of ``nodes`` (newest first),
    w = e^{τ} (``exp_weight``) or 1; Gauss–Legendre on [a, b] (signed: b < a is allowed)."""
    tau = 0.5 * (a + b) + 0.5 * (b - a) * _GL_NODES
    w = 0.5 * (b - a) * _GL_WEIGHTS
    if exp_weight:
        w = w * np.exp(tau)
    nodes = np.asarray(nodes, dtype=np.float64)
    out = []
    for j, nj in enumerate(nodes):
        ell = np.ones_like(tau)
        for k, nk in enumerate(nodes):
            if k != j:
                ell *= (tau - nk) / (nj - nk)
        out.append(float(w @ ell))
    return out


@register
class DEIS(Multistep):
    r"""DEIS / DPM-Solver in noise prediction: multistep exponential integrator, orders 1–4; 1 evaluation per step.

    Step t_i → t_{i+1} of order p = p_i (docs/math.md (13.1), (12.7)), ρ = σ/α = e^{−λ},
    ε̂_k = ε̂(x_k, t_k):

        x_{i+1} = (α_{i+1}/α_i) x_i + α_{i+1} Σ_{j<p} C_{ij} ε̂_{i−j},   C_{ij} = ∫_{ρ_i}^{ρ_{i+1}} ℓ_j dρ

    with ℓ_j the Lagrange basis of the nodes τ_i, …, τ_{i−p+1} in τ = log ρ = −λ
    (``variable="log_rho"``, default) or τ = ρ (``"rho"``) (docs/math.md (13.2)).
    Global order p on the probability-flow ODE (docs/math.md (3.3)). Order 1 is DDIM(η = 0).

    Args:
        order: p ∈ {1, 2, 3, 4} (default 3). At least p steps are required.
        variable: ``"log_rho"`` (default) or ``"rho"``.
        lower_order_final, lower_order_below: final-order ramp (see :mod:`diffsolve.solvers.multistep`).
        corrected_start: redo the first step with the line through ε̂_0, ε̂_1 once ε̂_1 is known,
            x_1 += α_1 C (ε̂_1 − ε̂_0) with C the two-point weight of ε̂_1 over step 0 (docs/math.md
            (13.3); no extra evaluation; see :mod:`diffsolve.solvers.multistep`, "Corrected
            start"); default False.

    Shapes: x and every ε̂_k are (B, *shape); the weights C_{ij} are float64 scalars shared by the
    batch. State: ``(C, history)``: the grid's weights C (a list of per-step lists, newest node
    first, computed in ``init``) and a :class:`~diffsolve.solvers.multistep.History` of the last p
    (λ, ε̂) pairs, oldest first.

    References:
        Zhang & Chen, Fast Sampling of Diffusion Models with Exponential Integrator, arXiv:2204.13902
        (tAB-DEIS in ρ and log ρ; iPNDM);
        Lu, Zhou, Bao, Chen, Li, Zhu, DPM-Solver, arXiv:2206.00927 (noise-prediction multistep).
    """

    name = "deis"
    declared_order = 3.0
    _max_order = 4

    def __init__(self, order: int = 3, variable: str = "log_rho", lower_order_final: bool = True,
                 lower_order_below: int | None = 15, corrected_start: bool = False):
        if variable not in ("log_rho", "rho"):
            raise ValueError(f"deis: unknown variable {variable!r}; valid: 'log_rho', 'rho'")
        super().__init__(order, lower_order_final=lower_order_final, lower_order_below=lower_order_below)
        self.variable = variable
        self.corrected_start = bool(corrected_start)

    def _tau(self, ctx) -> list[float]:
        return [-lam for lam in ctx.lam] if self.variable == "log_rho" else [math.exp(-lam) for lam in ctx.lam]

    def start_weight(self, ctx) -> float:
        """c of the corrected first step, x_1 += c (ε̂_1 − ε̂_0): α_1 C_{0,0} of the two-point rule
        through (τ_1, τ_0) over step 0 (its weights sum to C of the one-point rule)."""
        tau = self._tau(ctx)
        return ctx.alpha[1] * lagrange_weights(tau[1::-1], tau[0], tau[1], self.variable == "log_rho")[0]

    def weights(self, ctx) -> list[list[float]]:
        """C_{ij} for every step i of the grid (newest evaluation first), float64 host values."""
        log_rho = self.variable == "log_rho"
        tau = self._tau(ctx)
        if not all(math.isfinite(v) for v in tau):
            raise ValueError("deis: the grid reaches σ = 0 or α = 0 (ρ = σ/α is not finite and positive "
                             "there); end the grid at t_min > 0 and use denoise_final for the last jump")
        out = []
        for i in range(ctx.steps):
            p = self.step_order(ctx, i)
            out.append(lagrange_weights(tau[i::-1][:p], tau[i], tau[i + 1], log_rho))
        return out

    def init(self, ctx, x):
        return self.weights(ctx), History()  # the grid's C_{ij}, computed once, and the history

    def evaluate(self, ctx, x, i):
        return ctx.denoiser.eps(x, ctx.time(i))

    def step(self, ctx, i, x, state):
        C, history = state
        x, history = self.observe(ctx, i, x, history)
        a = ctx.alpha[i + 1]
        newest_first = history.values[::-1]  # the order of C's rows
        return lincomb(x, a / ctx.alpha[i], newest_first, [a * c for c in C[i]]), (C, history)
