"""The schedule interface: closed-form α_t, σ_t, λ_t, f_t, g_t² in float64 (docs/math.md §1)."""
from __future__ import annotations

import functools
import math
import numbers
import weakref
from typing import NamedTuple

import torch
from torch import Tensor

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


_HOOKS = ("_log_alpha", "_log_sigma", "_d_log_alpha", "_d_log_sigma", "_t_of_log_snr")


class Schedule:
    """Base class. Subclasses implement the hooks ``_log_alpha(t)``, ``_log_sigma(t)``,
    ``_d_log_alpha(t)``, ``_d_log_sigma(t)`` (d/dt of the logs) and ``_t_of_log_snr(lam)`` (the inverse
    of λ = log α − log σ) on float64 tensors of times, and set ``t_min`` < ``t_max``; everything else
    derives from them (the public ``log_alpha``, ``alpha``, … check the time range, then call the
    hooks). A schedule is checked once made (and when first used): the hooks present, the range
    finite, λ finite at both ends and falling from t_min to t_max.

    Attributes:
        t_min, t_max: the valid time range; samplers integrate from ``t_max`` down to ``t_min``.
    """

    t_min: float
    t_max: float
    name: str = "schedule"

    # A schedule's parameters are fixed once it is made: grids, tables and the denoisers' coefficients are
    # memoised per schedule object, so a parameter changed in place would mix old values with new ones.
    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        init = cls.__dict__.get("__init__")
        if init is None:
            return

        @functools.wraps(init)
        def __init__(self, *args, __init=init, **kwargs):
            depth = self.__dict__.get("_init_depth", 0)
            self.__dict__["_init_depth"] = depth + 1
            try:
                __init(self, *args, **kwargs)
            finally:
                self.__dict__["_init_depth"] = depth
            if depth == 0:
                self.__dict__["_frozen"] = True
                self.validate()

        cls.__init__ = __init__

    def validate(self) -> "Schedule":
        """Check, once per schedule, that a subclass implements the hooks and has a usable range (class
        docstring); a clear error here instead of a bare NotImplementedError or a grid error later."""
        if self.__dict__.get("_valid"):
            return self
        cls = type(self)
        missing = [h for h in _HOOKS if getattr(cls, h) is getattr(Schedule, h)]
        if missing:
            public = [h[1:] for h in missing if getattr(cls, h[1:], None) is not getattr(Schedule, h[1:], None)]
            hint = (f" (it overrides {', '.join(public)}: those public methods check the time range and call "
                    f"the hooks, so implement the hooks instead)" if public else "")
            raise TypeError(f"schedule {cls.__name__} must implement {', '.join(missing)}{hint}: see the "
                            f"diffsolve.schedules.Schedule docstring")
        ends = [getattr(self, k, None) for k in ("t_min", "t_max")]
        if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in ends) \
                or not ends[0] < ends[1]:
            raise ValueError(f"schedule {cls.__name__} needs finite times t_min < t_max, got t_min={ends[0]!r}, "
                             f"t_max={ends[1]!r}")
        lam = self._log_snr(torch.tensor(ends, dtype=_F64)).to(_F64)
        if not bool(torch.isfinite(lam).all()) or not float(lam[0]) > float(lam[1]):
            raise ValueError(f"schedule {cls.__name__}: the log-SNR λ = log(α/σ) must be finite at t_min and t_max "
                             f"and fall from t_min to t_max; got λ(t_min={ends[0]:g}) = {float(lam[0]):.6g}, "
                             f"λ(t_max={ends[1]:g}) = {float(lam[1]):.6g} (σ = 0 or α = 0 at an end gives an "
                             f"infinite λ: move the range inside)")
        self.__dict__["_valid"] = True
        return self

    def __setattr__(self, name, value):
        if self.__dict__.get("_frozen") and not name.startswith("_"):
            raise AttributeError(f"{type(self).__name__}.{name} is fixed once the schedule is made (grids, tables and "
                                 f"coefficients are memoised per schedule): make a new {type(self).__name__} with "
                                 f"the value you want, and a new Denoiser on it")
        object.__setattr__(self, name, value)

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
                    f"time outside the range of {self!r}: got t in [{lo:.10g}, {hi:.10g}], valid "
                    f"range is [{self.t_min:.10g}, {self.t_max:.10g}]; clip your grid or build the "
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
            hit = GridTable(t, *(v.to(_F64) for v in self._table(t)))
            if len(memo) >= 256:
                memo.clear()
            memo[key] = hit
        return hit

    def log_alpha(self, t) -> Tensor:
        return self._log_alpha(self.check_time(t)).to(_F64)

    def log_sigma(self, t) -> Tensor:
        return self._log_sigma(self.check_time(t)).to(_F64)

    def alpha(self, t) -> Tensor:
        return self.log_alpha(t).exp()

    def sigma(self, t) -> Tensor:
        return self.log_sigma(t).exp()

    def log_snr(self, t) -> Tensor:
        """λ_t = log(α_t/σ_t), the half log signal-to-noise ratio."""
        return self._log_snr(self.check_time(t)).to(_F64)

    def t_of_log_snr(self, lam) -> Tensor:
        """Exact inverse of ``log_snr``. λ beyond the range is clamped to the range's ends (before the
        inversion, whose formulas can overflow far outside it: λ = −∞ on VP, −800 on sub-VP)."""
        lam = _time(lam)
        lo, hi = self.__dict__.get("_lam_range") or self.__dict__.setdefault(
            "_lam_range", (float(self._log_snr(_time(self.t_max))), float(self._log_snr(_time(self.t_min)))))
        t = self._t_of_log_snr(lam.clamp(lo, hi)).to(_F64).clamp(self.t_min, self.t_max)
        t = torch.where(lam < lo, self.t_max, t)  # the range's ends exactly, not their round trip
        return torch.where(lam > hi, self.t_min, t)

    def d_log_alpha(self, t) -> Tensor:
        return self._d_log_alpha(self.check_time(t)).to(_F64)

    def d_log_sigma(self, t) -> Tensor:
        return self._d_log_sigma(self.check_time(t)).to(_F64)

    def d_log_snr(self, t) -> Tensor:
        """dλ/dt (negative)."""
        t = self.check_time(t)
        return (self._d_log_alpha(t) - self._d_log_sigma(t)).to(_F64)

    def f(self, t) -> Tensor:
        """Drift coefficient of the forward SDE (docs/math.md (1.2)): f_t = d log α_t / dt."""
        return self.d_log_alpha(t)

    def g2(self, t) -> Tensor:
        """Squared diffusion coefficient (docs/math.md (1.3)): g_t² = −2 σ_t² dλ_t/dt."""
        t = self.check_time(t)
        return (2.0 * torch.exp(2.0 * self._log_sigma(t)) * (self._d_log_sigma(t) - self._d_log_alpha(t))).to(_F64)

    def g(self, t) -> Tensor:
        return self.g2(t).sqrt()

    def alpha_sigma(self, t) -> tuple[Tensor, Tensor]:
        t = self.check_time(t)
        return self._log_alpha(t).to(_F64).exp(), self._log_sigma(t).to(_F64).exp()

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
