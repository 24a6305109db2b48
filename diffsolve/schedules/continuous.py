"""Continuous-time schedules in closed form: VP, sub-VP, cosine, VE, EDM, flow (docs/math.md §1, §7)."""
from __future__ import annotations

import math

import torch

from .base import Schedule, _VarPreserving

_F64 = torch.float64


class VPSchedule(_VarPreserving):
    """Variance-preserving SDE with linear β (Song et al. 2021, score SDE):
    log α_t = −¼ t² (β₁ − β₀) − ½ t β₀,  σ_t = √(1 − α_t²),  f = −β_t/2, g² = β_t.

    References:
        Score-Based Generative Modeling through Stochastic Differential Equations,
        Song, Sohl-Dickstein, Kingma, Kumar, Ermon, Poole, arXiv:2011.13456.
    """

    name = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3, t_max: float = 1.0):
        if not (0 <= beta_min < beta_max):
            raise ValueError(f"need 0 <= beta_min < beta_max, got {beta_min}, {beta_max}")
        if not (0 < t_min < t_max):
            raise ValueError(f"need 0 < t_min < t_max, got {t_min}, {t_max}")
        self.b0, self.b1 = float(beta_min), float(beta_max)
        self.t_min, self.t_max = float(t_min), float(t_max)

    def _log_alpha(self, t):
        return -0.25 * t * t * (self.b1 - self.b0) - 0.5 * t * self.b0

    def _d_log_alpha(self, t):
        return -0.5 * (self.b0 + t * (self.b1 - self.b0))

    def _t_of_log_alpha(self, la):
        # ¼Δ t² + ½β₀ t + log α = 0, in the cancellation-free form t = −2 log α / (½β₀ + √(…))
        d = self.b1 - self.b0
        return -2.0 * la / (0.5 * self.b0 + torch.sqrt(0.25 * self.b0**2 - d * la))

    def _t_of_log_snr(self, lam):
        return self._t_of_log_alpha(self._log_alpha_of_log_snr(lam))


class SubVPSchedule(VPSchedule):
    """Sub-VP SDE (Song et al. 2021): α_t as in :class:`VPSchedule`, σ_t = 1 − α_t².

    References: arXiv:2011.13456, §3.4.
    """

    name = "subvp"

    def _log_sigma(self, t):
        return torch.log(-torch.expm1(2.0 * self._log_alpha(t)))

    def _d_log_sigma(self, t):
        la = self._log_alpha(t)
        return 2.0 * self._d_log_alpha(t) * torch.exp(2.0 * la) / torch.expm1(2.0 * la)

    def _t_of_log_snr(self, lam):
        # α/(1 − α²) = e^λ ⇒ 1/α = u + √(u² + 1), u = e^{−λ}/2, i.e. log α = −asinh(u): free of
        # the cancellation of λ + log 2 − log(1 + √(1 + 4e^{2λ})) near t_min (α → 1)
        return self._t_of_log_alpha(-torch.asinh(0.5 * torch.exp(-lam)))


class CosineSchedule(_VarPreserving):
    """Cosine schedule (Nichol & Dhariwal 2021): ᾱ(t) = cos²(φ_t)/cos²(φ_0),
    φ_t = π/2 · (t + s)/(1 + s), α_t = √ᾱ(t). ``t_max`` is clipped below 1 (α_1 = 0), by default
    at 0.9946 as DPM-Solver does.

    References:
        Improved Denoising Diffusion Probabilistic Models, Nichol, Dhariwal, arXiv:2102.09672.
    """

    name = "cosine"

    def __init__(self, s: float = 0.008, t_min: float = 1e-3, t_max: float = 0.9946):
        if not (0 < t_min < t_max < 1):
            raise ValueError(f"need 0 < t_min < t_max < 1, got {t_min}, {t_max}")
        self.s = float(s)
        self.t_min, self.t_max = float(t_min), float(t_max)
        self._log_cos0 = math.log(math.cos(math.pi / 2 * self.s / (1 + self.s)))

    def _phi(self, t):
        return (math.pi / 2) * (t + self.s) / (1 + self.s)

    # cos φ = sin(π/2 − φ), π/2 − φ = π/2 · (1 − t)/(1 + s): accurate near t_max, where φ → π/2
    def _log_alpha(self, t):
        return torch.log(torch.sin((math.pi / 2) * (1.0 - t) / (1 + self.s))) - self._log_cos0

    def _d_log_alpha(self, t):
        return -(math.pi / 2) / (1 + self.s) / torch.tan((math.pi / 2) * (1.0 - t) / (1 + self.s))

    # σ² = 1 − cos²φ/c₀² = sin(φ − φ₀) sin(φ + φ₀)/c₀²: no cancellation near t_min, where
    # −expm1(2 log α) loses ~1e-11 relative because cos φ ≈ 1
    def _log_sigma(self, t):
        phi, phi0 = self._phi(t), (math.pi / 2) * self.s / (1 + self.s)
        return 0.5 * (torch.log(torch.sin(phi - phi0)) + torch.log(torch.sin(phi + phi0))) - self._log_cos0

    def _d_log_sigma(self, t):
        phi, phi0 = self._phi(t), (math.pi / 2) * self.s / (1 + self.s)
        dphi = (math.pi / 2) / (1 + self.s)
        return 0.5 * dphi * (1.0 / torch.tan(phi - phi0) + 1.0 / torch.tan(phi + phi0))

    def _t_of_log_snr(self, lam):
        # cos φ = c₀α and sin φ = √(sin²φ₀ + c₀²σ²), with α² = sigmoid(2λ), σ² = sigmoid(−2λ):
        # atan2 stays well conditioned near t_min, where arccos(c₀α) loses ~1e-12 relative
        phi0 = (math.pi / 2) * self.s / (1 + self.s)
        c0, s0 = math.cos(phi0), math.sin(phi0)
        cos_phi = c0 * torch.sigmoid(2.0 * lam).sqrt()
        sin_phi = torch.sqrt(s0 * s0 + c0 * c0 * torch.sigmoid(-2.0 * lam))
        phi = torch.atan2(sin_phi, cos_phi)
        return phi * (2 * (1 + self.s) / math.pi) - self.s


class VESchedule(Schedule):
    """Variance-exploding SDE (SMLD): α_t = 1, σ_t = σ_min (σ_max/σ_min)^t, t ∈ [0, 1]; f = 0.

    References: arXiv:2011.13456 (Song et al. 2021).
    """

    name = "ve"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, t_min: float = 0.0, t_max: float = 1.0):
        if not (0 < sigma_min < sigma_max):
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self._rate = math.log(self.sigma_max / self.sigma_min)
        self.t_min, self.t_max = float(t_min), float(t_max)

    def _log_alpha(self, t):
        return torch.zeros_like(t)

    def _d_log_alpha(self, t):
        return torch.zeros_like(t)

    def _log_sigma(self, t):
        return math.log(self.sigma_min) + t * self._rate

    def _d_log_sigma(self, t):
        return torch.full_like(t, self._rate)

    def _t_of_log_snr(self, lam):
        return (-lam - math.log(self.sigma_min)) / self._rate


class EDMSchedule(Schedule):
    """EDM (Karras et al. 2022): α_t = 1, σ_t = t, t ∈ [σ_min, σ_max]; f = 0, g² = 2t.

    References:
        Elucidating the Design Space of Diffusion-Based Generative Models, Karras, Aittala,
        Aila, Laine, arXiv:2206.00364.
    """

    name = "edm"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        if not (0 < sigma_min < sigma_max):
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.t_min, self.t_max = float(sigma_min), float(sigma_max)

    def _log_alpha(self, t):
        return torch.zeros_like(t)

    def _d_log_alpha(self, t):
        return torch.zeros_like(t)

    def _log_sigma(self, t):
        return torch.log(t)

    def _d_log_sigma(self, t):
        return 1.0 / t

    def _t_of_log_snr(self, lam):
        return torch.exp(-lam)


class FlowSchedule(Schedule):
    """Rectified flow / flow matching: α_t = 1 − t, σ_t = t, t ∈ [t_min, t_max] ⊂ (0, 1);
    λ_t = log((1 − t)/t), t(λ) = sigmoid(−λ).

    References:
        Flow Straight and Fast, Liu, Gong, Liu, arXiv:2209.03003; Flow Matching for Generative
        Modeling, Lipman et al., arXiv:2210.02747.
    """

    name = "flow"

    def __init__(self, t_min: float = 1e-3, t_max: float = 1 - 1e-3):
        if not (0 < t_min < t_max < 1):
            raise ValueError(f"need 0 < t_min < t_max < 1, got {t_min}, {t_max}")
        self.t_min, self.t_max = float(t_min), float(t_max)

    def _log_alpha(self, t):
        return torch.log1p(-t)

    def _d_log_alpha(self, t):
        return -1.0 / (1.0 - t)

    def _log_sigma(self, t):
        return torch.log(t)

    def _d_log_sigma(self, t):
        return 1.0 / t

    def _t_of_log_snr(self, lam):
        return torch.sigmoid(-lam)
