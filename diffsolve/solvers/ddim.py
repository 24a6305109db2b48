r"""DDIM with a noise level: the exact first-order step of the reverse family for a frozen x̂0.

From t to s < t, h = λ_s − λ_t > 0, x̂0 = x̂0(x_t, t), ε̂ = (x_t − α_t x̂0)/σ_t, and H = ∫ η² dλ over
the step (η = ν/g; H = η² h for a constant η; docs/math.md (11.3)):

``variant="exact"`` (docs/math.md (4.1) and (11.2); exact for frozen x̂0, any ν_t):

    x_s = (σ_s/σ_t) e^{−H} x_t + α_s (1 − e^{−h−H}) x̂0 + σ_s √(1 − e^{−2H}) z

``variant="published"`` (Song et al.'s DDIM(η), docs/math.md (11.4); first-order accurate in h for
every η):

    c = η σ_s √(1 − e^{−2h}),   x_s = α_s x̂0 + √(σ_s² − c²) ε̂ + c z

Both coincide at η ∈ {0, 1}; η = 0 is DDIM, η = 1 DDPM ancestral sampling. For a time-varying
ν_t the published form uses the step's effective η = √(H/h); a step with c > σ_s, i.e.
η²(1 − e^{−2h}) > 1 (possible only for η > 1), would add more noise than the marginal at s holds (the
square root has no real value; diffusers' DDIM returns NaN there): such a run is refused (``check``),
naming ``variant="exact"``, which takes any η.
"""
from __future__ import annotations

import math

import torch

from .base import Solver
from .registry import register


@register
class DDIM(Solver):
    """DDIM(η): first-order exponential integrator in data prediction; one evaluation per step.

    Step t_i → t_{i+1} (h = λ_{i+1} − λ_i, H = H_i of docs/math.md (11.3), x̂0 = x̂0(x_i, t_i),
    ε̂ = (x_i − α_i x̂0)/σ_i, z ~ N(0, I)):

        exact:      x_{i+1} = (σ_{i+1}/σ_i) e^{−H} x_i + α_{i+1}(1 − e^{−h−H}) x̂0
                              + σ_{i+1} √(1 − e^{−2H}) z                        (docs/math.md (11.2))
        published:  x_{i+1} = α_{i+1} x̂0 + √(σ_{i+1}² − c²) ε̂ + c z,
                    c = η σ_{i+1} √(1 − e^{−2h}),  η = √(H/h)                   (docs/math.md (11.4))

    η = 0 (the probability-flow ODE, no noise drawn): both are x_{i+1} = α_{i+1} x̂0 + σ_{i+1} ε̂.
    Weak order 1 (global order 1 at η = 0).

    Shapes: x, x̂0, ε̂ and z are (B, *shape); α, σ, λ and H are float64 scalars shared by the batch;
    z comes from the context's per-sample noise streams. No state (``state`` is passed through).

    Args:
        variant: ``"exact"`` (docs/math.md (4.1), default) or ``"published"`` (the DDIM paper's σ_t(η)).
        stride: ``None`` (default): every step ends at the next grid time. A time δ > 0: step i
            ends at s_i = max(t_i − δ, t_{i+1}) instead, by the update above with s_i in place of
            t_{i+1} (α, σ, λ, H taken at s_i), and step i + 1 starts from that state as if it were
            the state at t_{i+1} (no evaluation is spent on the gap). This reproduces diffusers'
            ``DDIMScheduler``, whose step from timestep k goes to k − ⌊N/n⌋ (N training timesteps,
            n inference timesteps) whatever the next timestep is: on a DDPMSchedule δ = ⌊N/n⌋/N.
            For the ``leading`` spacing the two agree (the option changes nothing); for ``linspace``
            (and ``trailing`` when n does not divide N) the next timestep lies below k − ⌊N/n⌋ and
            diffusers' sampler is then inconsistent: its states never reach the noise level the
            network is told (an error that more steps do not remove). Only for a constant η.

    References:
        Song, Meng, Ermon, Denoising Diffusion Implicit Models, arXiv:2010.02502;
        Lu, Zhou, Bao, Chen, Li, Zhu, DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
        Probabilistic Models, arXiv:2211.01095 (the data-prediction exponential form);
        von Platen et al., Diffusers, github.com/huggingface/diffusers (``DDIMScheduler``: ``stride``).
    """

    name = "ddim"
    declared_order = 1.0
    stochastic = True

    def __init__(self, variant: str = "exact", stride: float | None = None):
        if variant not in ("exact", "published"):
            raise ValueError(f"unknown DDIM variant {variant!r}; valid: 'exact', 'published'")
        if stride is not None and not (isinstance(stride, (int, float)) and 0.0 < float(stride) < math.inf):
            raise ValueError(f"ddim: stride must be a time > 0 (or None), got {stride!r}")
        self.variant = variant
        self.stride = None if stride is None else float(stride)

    def check(self, ctx):
        if self.stride is not None and ctx.level.noise is not None:
            raise ValueError("ddim: stride needs a constant noise level eta (diffusers' DDIM), not a callable noise")
        super().check(ctx)
        if self.variant == "published" and not ctx.level.is_zero:
            for i in range(ctx.steps):
                _, _, h, H = self._end(ctx, i)
                if H / h * -math.expm1(-2.0 * h) > 1.0 + 1e-12:
                    raise ValueError(f"ddim:variant=published at this noise level adds more noise at step {i} than the "
                                     f"marginal holds (η²(1 − e^(−2h)) = {H / h * -math.expm1(-2.0 * h):.3g} > 1; the "
                                     f"DDIM paper's η is at most 1): give eta <= 1, or variant=exact, which takes "
                                     f"any eta")

    def _end(self, ctx, i: int) -> tuple[float, float, float, float]:
        """(α, σ, h, H) at the end of step i: the next grid time, or t_i − stride (``stride``)."""
        s = ctx.times[i] - self.stride if self.stride is not None else -math.inf
        if s <= ctx.times[i + 1] + 1e-12 * abs(ctx.times[i]):  # the next grid time, up to round-off
            return ctx.alpha[i + 1], ctx.sigma[i + 1], ctx.h(i), ctx.eta2_integral(i)
        a_s, s_s = (float(v) for v in ctx.schedule.alpha_sigma(torch.tensor(s, dtype=torch.float64)))
        h = math.log(a_s / s_s) - ctx.lam[i]
        return a_s, s_s, h, ctx.level.eta ** 2 * h

    def step(self, ctx, i, x, state):
        a_s, s_s, h, H = self._end(ctx, i)
        s_t = ctx.sigma[i]
        if self.variant == "exact":  # one network call, two passes over the data
            x = ctx.denoiser.combine(x, ctx.time(i), (s_s / s_t) * math.exp(-H), -a_s * math.expm1(-h - H))
            c = s_s * math.sqrt(-math.expm1(-2.0 * H))
        else:
            x0 = ctx.denoiser.x0(x, ctx.time(i))
            eta = math.sqrt(H / h)
            c = eta * s_s * math.sqrt(-math.expm1(-2.0 * h))
            eps = (x - ctx.alpha[i] * x0) / s_t
            x = a_s * x0 + math.sqrt(max(s_s * s_s - c * c, 0.0)) * eps  # ≥ 0 up to round-off (check)
        if c > 0:
            x = x + c * ctx.randn()
        return x, state
