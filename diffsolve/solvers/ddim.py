r"""DDIM with a noise level: the exact first-order step of the reverse family for a frozen x̂0.

From t to s < t, h = λ_s − λ_t > 0, x̂0 = x̂0(x_t, t), ε̂ = (x_t − α_t x̂0)/σ_t:

``variant="exact"`` (docs/math.md (4.1), exact for frozen x̂0, any ν_t through H = ∫ η² dλ, η = ν/g):

    x_s = (σ_s/σ_t) e^{−H} x_t + α_s (1 − e^{−h−H}) x̂0 + σ_s √(1 − e^{−2H}) z

``variant="published"`` (Song et al.'s DDIM(η), first-order accurate in h for every η):

    c = η σ_s √(1 − e^{−2h}),   x_s = α_s x̂0 + √(σ_s² − c²) ε̂ + c z

Both coincide at η ∈ {0, 1}; η = 0 is DDIM, η = 1 DDPM ancestral sampling. For a time-varying
ν_t the published form uses the step's effective η = √(H/h).
"""
from __future__ import annotations

import math

from .base import Solver
from .registry import register


@register
class DDIM(Solver):
    """DDIM(η): first-order exponential integrator in data prediction; one evaluation per step.

    Args:
        variant: ``"exact"`` (docs/math.md (4.1), default) or ``"published"`` (the DDIM paper's σ_t(η)).

    References:
        Denoising Diffusion Implicit Models, Song, Meng, Ermon, arXiv:2010.02502;
        DPM-Solver++, Lu et al., arXiv:2211.01095 (the data-prediction form).
    """

    name = "ddim"
    order = 1.0
    stochastic = True

    def __init__(self, variant: str = "exact"):
        if variant not in ("exact", "published"):
            raise ValueError(f"unknown DDIM variant {variant!r}; valid: 'exact', 'published'")
        self.variant = variant

    def step(self, ctx, i, x, state):
        x0 = ctx.denoiser.x0(x, ctx.time(i))
        a_s, s_t, s_s, h = ctx.alpha[i + 1], ctx.sigma[i], ctx.sigma[i + 1], ctx.h(i)
        H = ctx.eta2_integral(i)
        if self.variant == "exact":
            x = (x * ((s_s / s_t) * math.exp(-H))).add_(x0, alpha=-a_s * math.expm1(-h - H))
            c = s_s * math.sqrt(-math.expm1(-2.0 * H))
        else:
            eta = math.sqrt(H / h)
            c = eta * s_s * math.sqrt(-math.expm1(-2.0 * h))
            eps = (x - ctx.alpha[i] * x0) / s_t
            x = a_s * x0 + math.sqrt(max(s_s * s_s - c * c, 0.0)) * eps
        if c > 0:
            x = x + c * ctx.randn()
        return x, state
