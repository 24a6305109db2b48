r"""Noise schedules: the pair (α_t, σ_t) of every Gaussian diffusion (docs/math.md §1).

    x_t = α_t x_0 + σ_t ε,        ε ~ N(0, I)                               (docs/math.md (1.1))
    λ_t = log(α_t / σ_t)          half log-SNR, strictly decreasing in t
    f_t = d log α_t / dt,   g_t² = dσ_t²/dt − 2 f_t σ_t² = −2 σ_t² dλ_t/dt     (docs/math.md (1.3))

Every schedule works in float64 and in closed form: a subclass gives ``log_alpha``,
``log_sigma`` and their time derivatives, and the exact inverse ``t_of_log_snr``. All methods
accept a Python number or a tensor of times (any shape) and return float64 tensors of the same
shape. Times outside ``[t_min, t_max]`` raise ``ValueError`` (checked for CPU tensors only, so a
per-sample time on an accelerator never forces a host synchronisation).
"""
from __future__ import annotations

import math
import weakref
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "Schedule",
    "VPSchedule",
    "CosineSchedule",
    "DDPMSchedule",
    "SubVPSchedule",
    "VESchedule",
    "EDMSchedule",
    "FlowSchedule",
    "SCHEDULES",
    "make_schedule",
    "GridTable",
]

_F64 = torch.float64


def _time(t, device=None) -> Tensor:
    if isinstance(t, Tensor):
        return t.to(dtype=_F64)
    return torch.as_tensor(t, dtype=_F64, device=device)


class GridTable(NamedTuple):
    """A schedule tabulated on a grid of times: float64 CPU tensors of the grid's shape."""

    t: Tensor
    log_alpha: Tensor
    log_sigma: Tensor
    d_log_alpha: Tensor
    d_log_sigma: Tensor

    @property
    def log_snr(self) -> Tensor:
        return self.log_alpha - self.log_sigma


_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class Schedule:
    """Base class. Subclasses implement ``log_alpha``, ``log_sigma``, ``d_log_alpha``,
    ``d_log_sigma`` and ``t_of_log_snr``; everything else derives from them.

    Attributes:
        t_min, t_max: the valid time range; samplers integrate from ``t_max`` down to ``t_min``.
    """

    t_min: float
    t_max: float
    name: str = "schedule"

    # --- to be implemented -------------------------------------------------------------
    def _log_alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def _log_sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def _d_log_alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def _d_log_sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def _t_of_log_snr(self, lam: Tensor) -> Tensor:
        raise NotImplementedError

    def _log_snr(self, t: Tensor) -> Tensor:
        return self._log_alpha(t) - self._log_sigma(t)

    def _table(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(log α, log σ, d log α/dt, d log σ/dt) at t; subclasses may share intermediate work."""
        return self._log_alpha(t), self._log_sigma(t), self._d_log_alpha(t), self._d_log_sigma(t)

    # --- public API ----------------------------------------------------------------------
    def check_time(self, t) -> Tensor:
        """Return ``t`` as float64; raise if a (CPU) time lies outside ``[t_min, t_max]``."""
        t = _time(t)
        if t.device.type == "cpu" and t.numel() > 0:
            tol = 1e-12 * max(1.0, abs(self.t_max))
            lo, hi = float(t.detach().min()), float(t.detach().max())
            if lo < self.t_min - tol or hi > self.t_max + tol or math.isnan(lo) or math.isnan(hi):
                raise ValueError(
                    f"time outside the range of {self!r}: got t in [{lo:.6g}, {hi:.6g}], valid "
                    f"range is [{self.t_min:.6g}, {self.t_max:.6g}]; clip your grid or build the "
                    f"schedule with a wider range"
                )
        return t

    def tabulate(self, t: Tensor) -> GridTable:
        """log α, log σ and their time derivatives at the times of a 1-D float64 CPU grid ``t``.

        Memoised per (schedule, grid): samplers reuse one grid call after call, and for tabulated
        schedules (``DDPMSchedule``) this is most of a short run's set-up. Treat the result as
        read-only.
        """
        t = torch.as_tensor(t, dtype=_F64).detach().cpu()
        memo = _TABLES.setdefault(self, {})
        key = (t.shape, t.numpy().tobytes())
        hit = memo.get(key)
        if hit is None:
            t = self.check_time(t.clone())
            hit = GridTable(t, *self._table(t))
            if len(memo) >= 256:
                memo.clear()
            memo[key] = hit
        return hit

    def log_alpha(self, t) -> Tensor:
        return self._log_alpha(self.check_time(t))

    def log_sigma(self, t) -> Tensor:
        return self._log_sigma(self.check_time(t))

    def alpha(self, t) -> Tensor:
        return self.log_alpha(t).exp()

    def sigma(self, t) -> Tensor:
        return self.log_sigma(t).exp()

    def log_snr(self, t) -> Tensor:
        """λ_t = log(α_t/σ_t), the half log signal-to-noise ratio."""
        return self._log_snr(self.check_time(t))

    def t_of_log_snr(self, lam) -> Tensor:
        """Exact inverse of ``log_snr``. λ beyond the range is clamped to the range's ends."""
        lam = _time(lam)
        t = self._t_of_log_snr(lam)
        return t.clamp(self.t_min, self.t_max)

    def d_log_alpha(self, t) -> Tensor:
        return self._d_log_alpha(self.check_time(t))

    def d_log_sigma(self, t) -> Tensor:
        return self._d_log_sigma(self.check_time(t))

    def d_log_snr(self, t) -> Tensor:
        """dλ/dt (negative)."""
        t = self.check_time(t)
        return self._d_log_alpha(t) - self._d_log_sigma(t)

    def f(self, t) -> Tensor:
        """Drift coefficient of the forward SDE (docs/math.md (1.2)): f_t = d log α_t / dt."""
        return self.d_log_alpha(t)

    def g2(self, t) -> Tensor:
        """Squared diffusion coefficient (docs/math.md (1.3)): g_t² = −2 σ_t² dλ_t/dt."""
        t = self.check_time(t)
        return 2.0 * torch.exp(2.0 * self._log_sigma(t)) * (self._d_log_sigma(t) - self._d_log_alpha(t))

    def g(self, t) -> Tensor:
        return self.g2(t).sqrt()

    def alpha_sigma(self, t) -> tuple[Tensor, Tensor]:
        t = self.check_time(t)
        return self._log_alpha(t).exp(), self._log_sigma(t).exp()

    def time_label(self, t) -> Tensor:
        """The time input a network trained on this schedule expects by default (here: t)."""
        return _time(t)

    @property
    def lambda_min(self) -> float:
        return float(self.log_snr(self.t_max))

    @property
    def lambda_max(self) -> float:
        return float(self.log_snr(self.t_min))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(t_min={self.t_min:g}, t_max={self.t_max:g})"


class _VarPreserving(Schedule):
    """σ_t² = 1 − α_t²: only log α and its derivative are needed."""

    @staticmethod
    def _log_sigma_of_log_alpha(la):
        return 0.5 * torch.log(-torch.expm1(2.0 * la))

    @staticmethod
    def _d_log_sigma_of(la, dla):
        # d/dt ½ log(1 − α²) = −α²/(1 − α²) · d log α
        return dla * torch.exp(2.0 * la) / torch.expm1(2.0 * la)

    def _log_sigma(self, t):
        return self._log_sigma_of_log_alpha(self._log_alpha(t))

    def _d_log_sigma(self, t):
        return self._d_log_sigma_of(self._log_alpha(t), self._d_log_alpha(t))

    @staticmethod
    def _log_alpha_of_log_snr(lam):
        # α²/(1 − α²) = e^{2λ}  ⇒  log α = −½ softplus(−2λ)
        return -0.5 * torch.nn.functional.softplus(-2.0 * lam)


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


class _PiecewiseLinear:
    """f(x) interpolated linearly between knots (xp increasing, float64), extrapolated linearly
    beyond them; exact at the knots. ``slope(x)`` is left-continuous: at a knot, the slope of the
    segment below it."""

    def __init__(self, xp: Tensor, fp: Tensor):
        slopes = (fp[1:] - fp[:-1]) / (xp[1:] - xp[:-1])
        # slope j belongs to the segment starting at knot j; the last knot extrapolates with the last one
        self.xp, self.fp, self.slopes = xp, fp, torch.cat([slopes, slopes[-1:]])
        self._last = len(xp) - 1
        self._on = {}  # copies on other devices

    def _arrays(self, device):
        if device.type == "cpu":
            return self.xp, self.fp, self.slopes
        key = str(device)
        if key not in self._on:
            self._on[key] = tuple(a.to(device) for a in (self.xp, self.fp, self.slopes))
        return self._on[key]

    def _segment(self, x, xp, right):
        return (torch.searchsorted(xp, x.contiguous(), right=right) - 1).clamp_(0, self._last)

    def __call__(self, x: Tensor) -> Tensor:
        xp, fp, slopes = self._arrays(x.device)
        j = self._segment(x, xp, right=True)  # at a knot: the segment starting there (exact value)
        return fp[j] + slopes[j] * (x - xp[j])

    def slope(self, x: Tensor) -> Tensor:
        xp, _, slopes = self._arrays(x.device)
        return slopes[self._segment(x, xp, right=False)]


class DDPMSchedule(_VarPreserving):
    """Discrete-time DDPM schedule made continuous as DPM-Solver does: t_n = n/N for
    n = 1..N carries ᾱ_n (``alphas_cumprod[n-1]``) and log α is interpolated piecewise-linearly
    in t. The network's own label for time t is the (fractional) integer timestep t·N − 1, so
    at grid points it receives exactly the timestep it was trained with.

    Args:
        betas: (N,) β_n, or
        alphas_cumprod: (N,) ᾱ_n (exactly one of the two).
        Default: the DDPM linear schedule, β from 1e-4 to 2e-2 over N = 1000 steps.

    References:
        Denoising Diffusion Probabilistic Models, Ho, Jain, Abbeel, arXiv:2006.11239;
        DPM-Solver, Lu et al., arXiv:2206.00927 (discrete-to-continuous mapping).
    """

    name = "ddpm"

    def __init__(self, betas=None, alphas_cumprod=None, num_train_timesteps: int = 1000,
                 beta_start: float = 1e-4, beta_end: float = 2e-2):
        if betas is not None and alphas_cumprod is not None:
            raise ValueError("give either betas or alphas_cumprod, not both")
        if alphas_cumprod is None:
            if betas is None:
                betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=_F64)
            betas = torch.as_tensor(betas, dtype=_F64).flatten()
            if (betas <= 0).any() or (betas >= 1).any():
                raise ValueError("betas must lie in (0, 1)")
            log_ac = torch.cumsum(torch.log1p(-betas), 0)
            ac = log_ac.exp()
        else:
            ac = torch.as_tensor(alphas_cumprod, dtype=_F64).flatten().clone()
            if (ac <= 0).any() or (ac >= 1).any():
                raise ValueError("alphas_cumprod must lie in (0, 1)")
            log_ac = torch.log(ac)
        if len(log_ac) < 2 or not bool((log_ac[1:] < log_ac[:-1]).all()):
            raise ValueError("alphas_cumprod must be strictly decreasing with at least 2 entries")
        n = len(log_ac)
        self.num_train_timesteps = n
        self.alphas_cumprod = ac  # as given (exp(log ᾱ) may differ from ᾱ in the last bit)
        knots, la = torch.arange(1, n + 1, dtype=_F64) / n, 0.5 * log_ac
        self._la_of_t = _PiecewiseLinear(knots, la)
        self._t_of_neg_la = _PiecewiseLinear(-la, knots)  # the exact inverse (−log α increases)
        self.t_min, self.t_max = 1.0 / n, 1.0

    def _log_alpha(self, t):
        return self._la_of_t(t)

    def _d_log_alpha(self, t):
        # left-continuous slope of the piecewise-linear log α: at a knot, the segment below it,
        # which is the one a step towards the data integrates over
        return self._la_of_t.slope(t)

    def _t_of_log_snr(self, lam):
        return self._t_of_neg_la(-self._log_alpha_of_log_snr(lam))

    # one interpolation where the generic forms would repeat it
    def _log_snr(self, t):
        la = self._log_alpha(t)
        return la - self._log_sigma_of_log_alpha(la)

    def _table(self, t):
        la, dla = self._log_alpha(t), self._d_log_alpha(t)
        return la, self._log_sigma_of_log_alpha(la), dla, self._d_log_sigma_of(la, dla)

    def time_label(self, t) -> Tensor:
        return _time(t) * self.num_train_timesteps - 1.0

    def t_of_timestep(self, timestep) -> Tensor:
        """Continuous time of an integer training timestep k ∈ {0..N−1}: t = (k + 1)/N."""
        return (_time(timestep) + 1.0) / self.num_train_timesteps


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


SCHEDULES = {
    "vp": VPSchedule,
    "cosine": CosineSchedule,
    "ddpm": DDPMSchedule,
    "subvp": SubVPSchedule,
    "ve": VESchedule,
    "edm": EDMSchedule,
    "flow": FlowSchedule,
}


def make_schedule(schedule) -> Schedule:
    """A :class:`Schedule` from an instance or a name in ``SCHEDULES``."""
    if isinstance(schedule, Schedule):
        return schedule
    if isinstance(schedule, str) and schedule in SCHEDULES:
        return SCHEDULES[schedule]()
    raise ValueError(f"unknown schedule {schedule!r}; valid names: {', '.join(SCHEDULES)}")
