r"""Ancestral sampling with the σ_down / σ_up split (k-diffusion's ``euler_ancestral``), docs/math.md (11.6).

In VE coordinates y = x/α, s = σ/α = e^{−λ}, a step from s_i to s_{i+1} (h = λ_{i+1} − λ_i)
splits the target noise level into a deterministic part and fresh noise (docs/math.md (11.6)),

    s_up   = min(s_{i+1}, η s_{i+1} √(1 − e^{−2h})),     s_down = √(s_{i+1}² − s_up²),
    y_{i+1} = D + (s_down/s_i)(y_i − D) + s_up z,        D = x̂0(x_i, t_i),  z ~ N(0, I),

i.e. an Euler step of dy/ds = (y − D)/s down to s_down, then noise back up to s_{i+1}.

Relation to DDIM: in x = α y this is x_{i+1} = α_{i+1} x̂0 + √(σ_{i+1}² − c²) ε̂ + c z with
c = α_{i+1} s_up = η σ_{i+1} √(1 − e^{−2h}), which is DDIM(η) as published (docs/math.md (11.4);
``ddim`` with ``variant="published"``) for every η ≤ 1 (the min binds only beyond). At η = 1, c²
is the DDPM posterior variance β̃ (for VP schedules σ_s²/σ_t²·(1 − α_t²/α_s²); docs/math.md
(11.5)) and the step is Ho et al.'s ancestral sampling, equal to the exact step (docs/math.md
(4.1)) and so to ``ddim`` with η = 1 — a test. At η = 0 it is ``euler_ve`` = DDIM (docs/math.md
(15.1)). A time-varying ν_t enters through the step's effective η = √(H/h), H = ∫ η² dλ
(docs/math.md (11.3)), as in DDIM. As an integrator of the reverse family (docs/math.md (3.2))
with ν = η g it has weak order 1.
"""
from __future__ import annotations

import math

from .base import Solver
from .registry import register

__all__ = ["Ancestral"]


@register
class Ancestral(Solver):
    """Ancestral sampling (σ_down/σ_up split) of the reverse family; one evaluation per step; weak order 1.

    Step t_i → t_{i+1} (docs/math.md (11.6)), s_k = σ_k/α_k = e^{−λ_k}, h = λ_{i+1} − λ_i,
    η = √(H/h) with H from docs/math.md (11.3), D = x̂0(x_i, t_i), z ~ N(0, I):

        s_up = min(s_{i+1}, η s_{i+1} √(1 − e^{−2h})),   s_down = √(s_{i+1}² − s_up²),
        x_{i+1} = α_{i+1} [D + (s_down/s_i)(x_i/α_i − D) + s_up z]

    Shapes: x, D and z are (B, *shape); s, α, λ, η are float64 scalars shared by the batch; z comes
    from the context's per-sample noise streams (none is drawn when s_up = 0, e.g. η = 0). No state.
    The noise level comes from ``sample(..., eta=... or noise=...)`` (η = 1: DDPM ancestral
    sampling of the reverse SDE).

    References:
        Ho, Jain, Abbeel, Denoising Diffusion Probabilistic Models, arXiv:2006.11239 (Algorithm 2);
        Song, Meng, Ermon, Denoising Diffusion Implicit Models, arXiv:2010.02502 (eq. 12);
        Karras, Aittala, Aila, Laine, Elucidating the Design Space of Diffusion-Based Generative
        Models, arXiv:2206.00364, and Crowson, k-diffusion (``sample_euler_ancestral``).
    """

    name = "ancestral"
    declared_order = 1.0
    stochastic = True
    default_eta = 1.0  # k-diffusion's sample_euler_ancestral, diffusers' EulerAncestralDiscreteScheduler

    def step(self, ctx, i, x, state):
        s0, s1, h = math.exp(-ctx.lam[i]), math.exp(-ctx.lam[i + 1]), ctx.h(i)
        D = ctx.denoiser.x0(x, ctx.time(i))
        eta = math.sqrt(ctx.eta2_integral(i) / h)
        s_up = min(s1, eta * s1 * math.sqrt(-math.expm1(-2.0 * h)))
        s_down = math.sqrt(max(s1 * s1 - s_up * s_up, 0.0))
        y = D + (s_down / s0) * (x / ctx.alpha[i] - D)
        if s_up > 0.0:
            y = y + s_up * ctx.randn()
        return ctx.alpha[i + 1] * y, state
