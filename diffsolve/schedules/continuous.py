"""Continuous-time schedules in closed form: VP, sub-VP, cosine, VE, EDM, flow (docs/math.md §1, §7, §25)."""
from __future__ import annotations

import math

import torch

from .._numbers import check_number
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
        beta_min, beta_max, t_min, t_max = (check_number(n, v) for n, v in (
            ("beta_min", beta_min), ("beta_max", beta_max), ("t_min", t_min), ("t_max", t_max)))
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
        s = check_number("the offset s (Nichol & Dhariwal: 0.008)", s, minimum=0.0)
        t_min, t_max = check_number("t_min", t_min), check_number("t_max", t_max)
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
        sigma_min, sigma_max, t_min, t_max = (check_number(n, v) for n, v in (
            ("sigma_min", sigma_min), ("sigma_max", sigma_max), ("t_min", t_min), ("t_max", t_max)))
        if not (0 < sigma_min < sigma_max):
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        if not (0 <= t_min < t_max):
            raise ValueError(f"need 0 <= t_min < t_max, got {t_min}, {t_max}")
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
        sigma_min, sigma_max = check_number("sigma_min", sigma_min), check_number("sigma_max", sigma_max)
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


def shift_sigma(sigma, shift: float):
    """σ ↦ s σ / (1 + (s − 1) σ), the timestep shift of SD3 / FLUX (docs/math.md (25.6)); float64.
    It maps [0, 1] onto itself, fixes 0 and 1, and translates the log-SNR: λ ↦ λ − log s."""
    shift = _shift_value(shift, "shift")
    sigma = torch.as_tensor(sigma, dtype=_F64)
    return shift * sigma / (1.0 + (shift - 1.0) * sigma)


def unshift_sigma(sigma, shift: float):
    """The inverse of :func:`shift_sigma`: σ' ↦ σ' / (s − (s − 1) σ')."""
    shift = _shift_value(shift, "shift")
    sigma = torch.as_tensor(sigma, dtype=_F64)
    return sigma / (shift - (shift - 1.0) * sigma)


def shift_of_mu(mu: float, time_shift_type: str = "exponential") -> float:
    """The shift s of a dynamic shift μ (docs/math.md (25.7)): s = e^μ (``"exponential"``, FLUX) or
    s = μ (``"linear"``); diffusers' e^μ/(e^μ + 1/σ − 1) and μ/(μ + 1/σ − 1) are (25.6) with this s."""
    if isinstance(mu, bool) or not isinstance(mu, (int, float)) or not math.isfinite(mu):
        raise ValueError(f"mu must be a finite number, got {mu!r}")
    if time_shift_type == "exponential":
        return math.exp(mu)
    if time_shift_type == "linear":
        return _shift_value(float(mu), "mu (linear time shift)")
    raise ValueError(f"unknown time_shift_type {time_shift_type!r}; valid: 'exponential', 'linear'")


def calculate_shift(image_seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096,
                    base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    """FLUX's dynamic shift μ for an image of ``image_seq_len`` latent tokens: linear in the sequence
    length through (base_seq_len, base_shift) and (max_seq_len, max_shift) (docs/math.md (25.7);
    diffusers' pipelines compute it from the scheduler config's ``base_image_seq_len``,
    ``max_image_seq_len``, ``base_shift``, ``max_shift``)."""
    if max_seq_len == base_seq_len:
        raise ValueError(f"max_seq_len and base_seq_len must differ, both are {base_seq_len}")
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return float(base_shift + slope * (image_seq_len - base_seq_len))


def _shift_value(shift, what: str) -> float:
    return check_number(what, shift, positive=True)


# σ = 1 (α = 0, λ = −∞) is represented by t_max = 1 − δ when 1 − t_max is at most this
_ONE_TOL = 1e-6


class FlowSchedule(Schedule):
    r"""Rectified flow / flow matching: α_t = 1 − t, σ_t = t, t ∈ [t_min, t_max] ⊂ (0, 1);
    λ_t = log((1 − t)/t), t(λ) = sigmoid(−λ) (docs/math.md §7, §25).

    The time is σ itself: x_σ = (1 − σ) x_0 + σ ε, and a ``velocity`` network predicts
    dx/dσ = ε − x_0, which is diffusers' flow-matching model output (docs/math.md (25.5)).

    **The timestep shift is a property of the grid, not of the schedule.** SD3 and FLUX sample on
    σ' = s σ/(1 + (s − 1) σ) (:func:`shift_sigma`, s = ``shift`` or s = e^μ from the dynamic
    shift μ of :func:`calculate_shift`). The shift leaves the marginals x_σ and the network's input
    (label 1000·σ) unchanged and only translates the log-SNR, λ ↦ λ − log s (docs/math.md
    (25.6)): it chooses *which* noise levels are visited. Making it a reparametrised time
    t ↦ σ_t would change what "Euler" means (Euler in t is not Euler in σ, which is what
    diffusers' ``FlowMatchEulerDiscreteScheduler`` does and what a straight flow favours), and μ
    depends on the image size, not on the model. So t stays σ, and ``shift`` / μ enter through
    :meth:`grid` (or diffusers' own spacing, :func:`diffsolve.adapters.flow_sigmas_from_diffusers`).
    Exponential integrators are unaffected either way (they see only λ, and a grid uniform in λ
    stays uniform under a shift).

    **σ = 1.** Flow models start from pure noise at σ = 1, where α = 0 and λ = −∞. A schedule
    built with 1 − t_max ≤ 1e-6 reads its t_max as σ = 1: solvers step from t_max = 1 − δ (α = δ,
    λ = log δ finite), which moves the state by O(δ) relative (docs/math.md (25.8)), while the
    network's label there is that of σ = 1 exactly (``time_label``, ``t_of_timestep`` map 1 to
    t_max). ``from_diffusers`` uses δ = 1e-9.

    Args:
        t_min, t_max: the time range, 0 < t_min < t_max < 1 (default 1e-3, 1 − 1e-3).
        shift: the model's static timestep shift s > 0 (SD3: 3.0), used by :meth:`grid` only:
            ``sample``'s grid kinds (``log_snr``, ``time``, …) do not depend on it, so to sample on the
            shifted spacing pass ``grid=schedule.grid(n)`` (:class:`~diffsolve.DiffsolveScheduler`'s
            ``grid="flow_dpm"`` is that spacing in a pipeline).
        time_shift_type: how a dynamic shift μ becomes s: ``"exponential"`` (s = e^μ, FLUX) or
            ``"linear"`` (s = μ).
        num_train_timesteps: N; when given the network's label is N·σ (diffusers' timestep,
            1000·σ) and :meth:`t_of_timestep` inverts it; default None: the label is t.

    References:
        Flow Straight and Fast, Liu, Gong, Liu, arXiv:2209.03003; Flow Matching for Generative
        Modeling, Lipman et al., arXiv:2210.02747; Scaling Rectified Flow Transformers for
        High-Resolution Image Synthesis (SD3), Esser et al., arXiv:2403.03206 (the shift, §5.3.2).
    """

    name = "flow"

    def __init__(self, t_min: float = 1e-3, t_max: float = 1 - 1e-3, *, shift: float = 1.0,
                 time_shift_type: str = "exponential", num_train_timesteps: int | None = None):
        t_min, t_max = check_number("t_min", t_min), check_number("t_max", t_max)
        if not (0 < t_min < t_max < 1):
            raise ValueError(f"need 0 < t_min < t_max < 1, got {t_min}, {t_max}")
        self.t_min, self.t_max = float(t_min), float(t_max)
        self.shift = _shift_value(shift, "shift")
        if time_shift_type not in ("exponential", "linear"):
            raise ValueError(f"unknown time_shift_type {time_shift_type!r}; valid: 'exponential', 'linear'")
        self.time_shift_type = time_shift_type
        if num_train_timesteps is not None and (isinstance(num_train_timesteps, bool) or
                                                int(num_train_timesteps) != num_train_timesteps or
                                                num_train_timesteps < 1):
            raise ValueError(f"num_train_timesteps must be a positive integer or None, got {num_train_timesteps!r}")
        self.num_train_timesteps = None if num_train_timesteps is None else int(num_train_timesteps)
        self.starts_at_one = 1.0 - self.t_max <= _ONE_TOL

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

    # --- σ, labels and grids ---------------------------------------------------------------
    def nominal_sigma(self, t) -> torch.Tensor:
        """The noise level t stands for: t, except t_max, which stands for σ = 1 when the schedule
        starts at one (``starts_at_one``)."""
        t = torch.as_tensor(t, dtype=_F64) if not isinstance(t, torch.Tensor) else t.to(_F64)
        if not self.starts_at_one:
            return t
        return torch.where(t >= self.t_max, torch.ones_like(t), t)

    def t_of_sigma(self, sigma) -> torch.Tensor:
        """The time of noise level σ: σ itself, with σ ∈ (t_max, 1] read as t_max when the schedule
        starts at one (float64)."""
        sigma = torch.as_tensor(sigma, dtype=_F64)
        if not self.starts_at_one:
            return sigma
        return torch.where((sigma > self.t_max) & (sigma <= 1.0), torch.full_like(sigma, self.t_max), sigma)

    def time_label(self, t) -> torch.Tensor:
        """N·σ (diffusers' timestep) when ``num_train_timesteps`` is set, else t."""
        if self.num_train_timesteps is None:
            return torch.as_tensor(t, dtype=_F64) if not isinstance(t, torch.Tensor) else t.to(_F64)
        return self.nominal_sigma(t) * self.num_train_timesteps

    def t_of_timestep(self, timestep) -> torch.Tensor:
        """Time of a network label k = N·σ: t = k/N (σ = 1 read as t_max when the schedule starts at one)."""
        if self.num_train_timesteps is None:
            raise ValueError("this FlowSchedule has no num_train_timesteps: its network label is t itself")
        return self.t_of_sigma(torch.as_tensor(timestep, dtype=_F64) / self.num_train_timesteps)

    def shifted(self, sigma, mu: float | None = None) -> torch.Tensor:
        """σ' of (25.6) with the schedule's ``shift``, or with s from the dynamic shift ``mu``
        (25.7) when given."""
        return shift_sigma(sigma, self.shift if mu is None else shift_of_mu(mu, self.time_shift_type))

    def grid(self, steps: int, *, mu: float | None = None) -> torch.Tensor:
        """``steps`` steps from t_max (σ = 1 for a schedule from pure noise) to t_min, uniform in the unshifted σ:
        σ_i = shifted(u_i), u uniform from shifted⁻¹(t_max) to shifted⁻¹(t_min) (docs/math.md (25.6)); a
        float64 grid to pass as ``grid=``. ``mu``: the dynamic shift instead of ``shift``."""
        if isinstance(steps, bool) or int(steps) != steps or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        s = self.shift if mu is None else shift_of_mu(mu, self.time_shift_type)
        u_start, u_end = float(unshift_sigma(self.t_max, s)), float(unshift_sigma(self.t_min, s))
        t = shift_sigma(torch.linspace(u_start, u_end, int(steps) + 1, dtype=_F64), s)
        t[0], t[-1] = self.t_max, self.t_min
        return t

    def __repr__(self) -> str:
        extra = f", shift={self.shift:g}" if self.shift != 1.0 else ""
        extra += f", num_train_timesteps={self.num_train_timesteps}" if self.num_train_timesteps else ""
        return f"FlowSchedule(t_min={self.t_min:.12g}, t_max={self.t_max:.12g}{extra})"
