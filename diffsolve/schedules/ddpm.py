"""Discrete-time DDPM schedules (betas or ᾱ, integer timesteps), read as a continuous schedule (docs/math.md §7)."""
from __future__ import annotations

import torch
from torch import Tensor

from .._numbers import check_int, check_number
from .base import _VarPreserving, _time

_F64 = torch.float64
# the hint of a table with zero terminal SNR (diffusers' rescale_betas_zero_snr): its last ᾱ is 0, β 1
_ZERO_SNR = ("; the last value makes a zero terminal SNR (ᾱ_N = 0, e.g. rescale_betas_zero_snr), where the "
             "log-SNR is infinite: put a tiny ᾱ_N > 0 there, as diffusers' Euler, DPM-Solver and UniPC schedulers "
             "do (2**-24), or build the schedule from the diffusers config (diffsolve.adapters.from_diffusers / "
             "DiffsolveScheduler), which does")


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


def _table_values(name: str, values) -> Tensor:
    """A β or ᾱ table as a finite 1-D float64 tensor."""
    try:
        t = torch.as_tensor(values, dtype=_F64)
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(f"{name} must be a 1-D sequence of numbers, got {type(values).__name__}: {e}") from None
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D (one value per training timestep), got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite; entry {int((~torch.isfinite(t)).nonzero()[0])} is "
                         f"{float(t[~torch.isfinite(t)][0])}")
    return t


class DDPMSchedule(_VarPreserving):
    """Discrete-time DDPM schedule made continuous as DPM-Solver does: t_n = n/N for
    n = 1..N carries ᾱ_n (``alphas_cumprod[n-1]``) and log α is interpolated piecewise-linearly
    in t. The network's own label for time t is the (fractional) integer timestep t·N − 1, so
    at grid points it receives exactly the timestep it was trained with.

    Args:
        betas: (N,) β_n in (0, 1), or
        alphas_cumprod: (N,) ᾱ_n in (0, 1), strictly decreasing (at most one of the two).
        num_train_timesteps, beta_start, beta_end: without either table, the linear β from
            ``beta_start`` to ``beta_end`` over N = ``num_train_timesteps`` steps (DDPM's: 1e-4 to 2e-2
            over 1000); with a table, N is its length (a ``num_train_timesteps`` given must equal it).

    References:
        Denoising Diffusion Probabilistic Models, Ho, Jain, Abbeel, arXiv:2006.11239;
        DPM-Solver, Lu et al., arXiv:2206.00927 (discrete-to-continuous mapping).
    """

    name = "ddpm"

    def __init__(self, betas=None, alphas_cumprod=None, num_train_timesteps: int | None = None,
                 beta_start: float = 1e-4, beta_end: float = 2e-2):
        if betas is not None and alphas_cumprod is not None:
            raise ValueError("give either betas or alphas_cumprod, not both")
        if num_train_timesteps is not None:
            num_train_timesteps = check_int("num_train_timesteps", num_train_timesteps, minimum=2)
        if alphas_cumprod is None:
            if betas is None:
                betas = torch.linspace(check_number("beta_start", beta_start), check_number("beta_end", beta_end),
                                       int(num_train_timesteps or 1000), dtype=_F64)
            betas = _table_values("betas", betas)
            if (betas <= 0).any() or (betas >= 1).any():
                raise ValueError("betas must lie in (0, 1)" + (_ZERO_SNR if bool(betas[-1] >= 1) else ""))
            log_ac = torch.cumsum(torch.log1p(-betas), 0)
            ac = log_ac.exp()
        else:
            ac = _table_values("alphas_cumprod", alphas_cumprod).clone()
            if (ac <= 0).any() or (ac >= 1).any():
                raise ValueError("alphas_cumprod must lie in (0, 1)" + (_ZERO_SNR if bool(ac[-1] <= 0) else ""))
            log_ac = torch.log(ac)
        if num_train_timesteps is not None and len(log_ac) != num_train_timesteps:
            raise ValueError(f"num_train_timesteps={num_train_timesteps} but the table has {len(log_ac)} entries; "
                             f"leave it out (a table sets it)")
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
