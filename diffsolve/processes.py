r"""The Fokker–Planck family of processes with the marginals p_t of a schedule (docs/math.md §3, seed 001).

For any noise level ν_t ≥ 0,

    forward family   dx = [f_t x − ½(g_t² − ν_t²) ∇log p_t(x)] dt + ν_t dw         (docs/math.md (3.1))
    reverse family   dx = [f_t x − ½(g_t² + ν_t²) ∇log p_t(x)] dt + ν_t dw̄        (docs/math.md (3.2))

all share the marginals p_t. ν = g gives the forward SDE (1.2) and Anderson's reverse SDE; ν = 0
the probability-flow ODE (3.3). ν_t is given as ``eta`` (ν_t = η g_t) or as any callable
t ↦ ν_t ≥ 0. The network's score replaces ∇log p_t.

Each process has ``drift(x, t)`` and ``diffusion(t)`` in the process's own time t, and adapters
for torchdiffeq (``func(t, y)``) and torchsde (``f``, ``g`` in increasing time τ = T − t for the
reverse family, on a flattened ``(batch, dim)`` state, diagonal noise).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .denoiser import Denoiser
from .schedules import Schedule, make_schedule

__all__ = ["NoiseLevel", "ForwardSDE", "ReverseSDE", "bcast_time"]


class NoiseLevel:
    """ν_t of the Fokker–Planck family: ``eta`` (ν_t = η g_t, η ≥ 0) or a callable ``noise(t)``.

    ``nu(t)`` and ``nu2(t)`` return float64 tensors; a negative value raises ``ValueError``. ``noise``
    is called on a tensor of times; one that only takes a single time is called once per time.
    ``eta_at(t)`` = ν_t / g_t, the local ratio that exponential integrators use.
    """

    def __init__(self, schedule: Schedule, eta: float | None = None, noise: Callable | None = None):
        if eta is not None and noise is not None:
            raise ValueError("give either eta (ν = η g) or noise (a callable t -> ν_t), not both")
        if noise is not None and not callable(noise):
            raise TypeError("noise must be a callable t -> ν_t")
        eta = 0.0 if eta is None and noise is None else eta
        if eta is not None:
            eta = float(eta)
            if not eta >= 0.0:
                raise ValueError(f"eta must be >= 0 (ν_t = η g_t is a noise level), got {eta}")
        self.schedule, self.eta, self.noise = schedule, eta, noise

    @property
    def is_zero(self) -> bool:
        return self.noise is None and self.eta == 0.0

    def nu(self, t) -> Tensor:
        t = self.schedule.check_time(t)
        if self.noise is None:
            return self.eta * self.schedule.g(t)
        nu = self._call(t)
        if nu.device.type == "cpu" and bool((nu < 0).any() | nu.isnan().any()):
            raise ValueError(f"the noise level ν_t must be >= 0, but noise(t) returned {nu.min().item():.4g} "
                             f"at t in [{float(t.min()):.4g}, {float(t.max()):.4g}]")
        return nu

    def _call(self, t: Tensor) -> Tensor:
        """``noise(t)`` on a tensor of times; a callable written for one time at a time (``float(t)``,
        ``if t > 0.5``) is called once per time instead."""
        try:
            nu = torch.as_tensor(self.noise(t), dtype=torch.float64)
            if nu.dim() == 0 or nu.shape == t.shape:
                return nu
        except Exception:  # noqa: BLE001 -- a genuine error is raised again by the per-time calls
            if t.dim() == 0:
                raise
        nu = [torch.as_tensor(self.noise(s), dtype=torch.float64) for s in t.reshape(-1)]
        if any(v.numel() != 1 for v in nu):
            raise ValueError(f"noise(t) must return one value ν_t per time t; for a single time it returned "
                             f"shape {tuple(next(v for v in nu if v.numel() != 1).shape)}")
        return torch.stack([v.reshape(()) for v in nu]).reshape(t.shape)

    def nu2(self, t) -> Tensor:
        return self.nu(t) ** 2

    def eta_at(self, t) -> Tensor:
        if self.noise is None:
            return torch.full_like(self.schedule.check_time(t), self.eta)
        return self.nu(t) / self.schedule.g(t)

    def __repr__(self):
        return f"NoiseLevel(eta={self.eta})" if self.noise is None else f"NoiseLevel(noise={self.noise!r})"


def bcast_time(c: Tensor, x: Tensor) -> Tensor:
    """A float64 coefficient of the time(s), 0-dim or per row (B,), cast and shaped to broadcast
    against x of shape (B, ...)."""
    c = c.to(device=x.device, dtype=x.dtype)
    return c.reshape(-1, *([1] * (x.dim() - 1))) if c.dim() == 1 else c


class _Process:
    schedule: Schedule
    level: NoiseLevel

    def diffusion(self, t) -> Tensor:
        """ν_t (float64)."""
        return self.level.nu(t)

    def drift(self, x: Tensor, t) -> Tensor:
        raise NotImplementedError

    # --- torchdiffeq -----------------------------------------------------------------------
    def torchdiffeq_func(self, shape=None):
        """``func(t, y)`` for ``torchdiffeq.odeint`` in the process's own time (decreasing times
        are fine). ``y`` may be flattened to ``(batch, dim)``: pass the sample ``shape``."""
        if not self.level.is_zero:
            raise ValueError("torchdiffeq integrates ODEs only; this process has ν > 0")

        def func(t, y):
            x = y if shape is None else y.reshape(y.shape[0], *shape)
            return self.drift(x, t).reshape(y.shape)

        return func


class ForwardSDE(_Process):
    """Forward family (docs/math.md (3.1)) from data (t_min) to noise (t_max).

    With the default ν = g (``eta=1``) this is the forward SDE dx = f x dt + g dw (docs/math.md (1.2)) and no
    score is needed; any other ν needs a ``denoiser`` for the score term.
    """

    def __init__(self, schedule: Schedule | str | Denoiser, denoiser: Denoiser | None = None,
                 eta: float | None = None, noise: Callable | None = None):
        if isinstance(schedule, Denoiser):
            schedule, denoiser = schedule.schedule, schedule
        self.schedule = make_schedule(schedule)
        self.denoiser = denoiser
        self.level = NoiseLevel(self.schedule, 1.0 if eta is None and noise is None else eta, noise)
        self._needs_score = not (self.level.noise is None and self.level.eta == 1.0)
        if self._needs_score and denoiser is None:
            raise ValueError("a forward process with ν ≠ g needs a denoiser for its score term")

    def drift(self, x, t):
        sch = self.schedule
        out = bcast_time(sch.f(t), x) * x
        if self._needs_score:
            c = -0.5 * (sch.g2(t) - self.level.nu2(t))
            out = out + bcast_time(c, x) * self.denoiser.score(x, t)
        return out

    def torchsde(self, shape):
        """torchsde SDE object in the same (increasing) time t; state flattened to (batch, dim)."""
        return _TorchSDE(self, shape, reverse=False)


class ReverseSDE(_Process):
    """Reverse family (docs/math.md (3.2)), integrated from t_max down to t_min.

    Args:
        denoiser: the network as a :class:`~diffsolve.Denoiser`.
        eta: ν_t = η g_t (η = 1: Anderson's reverse SDE; η = 0: the probability-flow ODE).
        noise: a callable t ↦ ν_t ≥ 0 instead of ``eta``.
    """

    def __init__(self, denoiser: Denoiser, eta: float | None = None, noise: Callable | None = None):
        self.denoiser = denoiser
        self.schedule = denoiser.schedule
        self.level = NoiseLevel(self.schedule, 1.0 if eta is None and noise is None else eta, noise)

    def drift(self, x, t):
        """f_t x − ½(g_t² + ν_t²) ŝ(x, t): the velocity dx/dt in (decreasing) process time."""
        sch = self.schedule
        c = -0.5 * (sch.g2(t) + self.level.nu2(t))
        return bcast_time(sch.f(t), x) * x + bcast_time(c, x) * self.denoiser.score(x, t)

    def torchsde(self, shape, grid=None):
        """torchsde SDE object in increasing time τ = t_max − t; state flattened to (batch, dim).
        With a decreasing ``grid`` of times t_0 > … > t_n: in the grid index u ∈ [0, n] instead
        (class ``_TorchSDE``), so that a step du = 1 is one grid step."""
        return _TorchSDE(self, shape, reverse=True, grid=grid)


class _TorchSDE(torch.nn.Module):
    r"""torchsde adapter: Itô SDE with diagonal noise on a flattened (batch, dim) state.

    Time: τ = t (forward) or τ = t_max − t (reverse), increasing as torchsde needs. With a ``grid``
    t_0, …, t_n (the order the process runs through them): the grid index u ∈ [0, n], with t(u)
    linear on each [k, k + 1]. With c_k = |t_{k+1} − t_k| = dτ/du there, the drift is multiplied by
    c_k and ν by √c_k (a Brownian motion in u), so Euler–Maruyama with du = 1 is Euler–Maruyama on
    the grid; higher-order methods evaluate inside a step along the same linear t(u).
    """

    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(self, process: _Process, shape, reverse: bool, grid=None):
        super().__init__()
        self.process, self.shape, self.reverse = process, tuple(shape), reverse
        self.T = process.schedule.t_max
        self.grid = None if grid is None else torch.as_tensor(grid, dtype=torch.float64).cpu()

    def _t(self, tau):
        """(process time t, dτ/du) at the solver's time."""
        tau = torch.as_tensor(tau, dtype=torch.float64).cpu()
        sch = self.process.schedule
        if self.grid is None:
            speed = torch.ones((), dtype=torch.float64)
            t = self.T - tau if self.reverse else tau
        else:
            k = int(tau.clamp(0, len(self.grid) - 2).floor())  # torchsde's loop reads times on the host anyway
            t0, t1 = self.grid[k], self.grid[k + 1]
            t, speed = t0 + (tau - k) * (t1 - t0), (t1 - t0).abs()
        return t.clamp(sch.t_min, sch.t_max), speed

    def f(self, tau, y):
        x = y.reshape(y.shape[0], *self.shape)
        t, speed = self._t(tau)
        d = self.process.drift(x, t).reshape(y.shape) * float(speed)
        return -d if self.reverse else d

    def g(self, tau, y):
        t, speed = self._t(tau)
        return (self.process.diffusion(t) * speed.sqrt()).to(y.dtype).to(y.device).expand_as(y).clone()
