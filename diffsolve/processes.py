r"""The Fokker–Planck family of processes with the marginals p_t of a schedule (docs/math.md §3, seed 001).

For any noise level ν_t ≥ 0,

    forward family   dx = [f_t x − ½(g_t² − ν_t²) ∇log p_t(x)] dt + ν_t dw         (docs/math.md (3.1))
    reverse family   dx = [f_t x − ½(g_t² + ν_t²) ∇log p_t(x)] dt + ν_t dw̄        (docs/math.md (3.2))

all share the marginals p_t of x_t = α_t x_0 + σ_t ε (docs/math.md (1.1)), with f_t = d log α_t/dt
and g_t² = dσ_t²/dt − 2 f_t σ_t² (docs/math.md (1.3)). ν = g gives the forward SDE (docs/math.md
(1.2)) and Anderson's reverse SDE; ν = 0 the probability-flow ODE (docs/math.md (3.3)). ν_t is
given as ``eta`` (ν_t = η g_t) or as any callable t ↦ ν_t ≥ 0. The network's score ŝ replaces
∇log p_t; in terms of ε̂ (ŝ = −ε̂/σ) the reverse drift is f_t x − (1 + η_t²) σ_t λ'_t ε̂
(docs/math.md (9.1)).

Each process has ``drift(x, t)`` and ``diffusion(t)`` in the process's own time t, and adapters
for torchdiffeq (``torchdiffeq_func(shape)``) and torchsde (``torchsde(shape)``: ``f``, ``g`` in
increasing time τ = t_max − t for the reverse family, or in a grid index, docs/math.md (9.6), on a
flattened ``(batch, dim)`` state, diagonal noise).

References:
    Song, Sohl-Dickstein, Kingma, Kumar, Ermon, Poole, Score-Based Generative Modeling through
    Stochastic Differential Equations, arXiv:2011.13456 (forward and reverse SDEs, probability-flow
    ODE); Anderson, Reverse-time diffusion equation models, Stochastic Processes and their
    Applications 12(3) (1982) 313–326 (time reversal); Su, 生成扩散模型漫谈(六) (2022),
    https://spaces.ac.cn/archives/9228 (seed 001: the family of (3.1)/(3.2)); Karras et al.,
    arXiv:2206.00364, eq. 6 (the same family in VE coordinates).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .denoiser import Denoiser, _scalar_time
from .schedules import Schedule, make_schedule

__all__ = ["NoiseLevel", "ForwardSDE", "ReverseSDE", "bcast_time"]


class NoiseLevel:
    """ν_t of the Fokker–Planck family: ``eta`` (ν_t = η g_t, η ≥ 0) or a callable ``noise(t)``.

    ν_t is the diffusion coefficient of the family's members (docs/math.md (3.1), (3.2); notation
    of docs/math.md §0): ν = 0 is the probability-flow ODE, ν = g (η = 1) the forward SDE and
    Anderson's reverse SDE. It depends on t only, so it is shared by every sample of a batch.

    ``nu(t)`` and ``nu2(t)`` return float64 tensors shaped like ``t`` (a float, a 0-dim or a (B,)
    tensor of times; 0-dim if a callable returns one value for all); a negative value raises
    ``ValueError``. ``noise`` is called on a tensor of times; one that only takes a single time is
    called once per time. ``eta_at(t)`` = ν_t / g_t, the local ratio that exponential integrators
    use (its square integrated over a step in λ is the H of docs/math.md (11.3)). ``is_zero``:
    ν ≡ 0 given as ``eta=0``.

    References: Song et al., arXiv:2011.13456; Su (2022, seed 001; docs/math.md §3).
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
        nu = [self._one(s) for s in t.reshape(-1)]
        if any(v.numel() != 1 for v in nu):
            raise ValueError(f"noise(t) must return one value ν_t per time t; for a single time it returned "
                             f"shape {tuple(next(v for v in nu if v.numel() != 1).shape)}")
        return torch.stack([v.reshape(()) for v in nu]).reshape(t.shape)

    def _one(self, t: Tensor) -> Tensor:
        """``noise(t)`` at one time, as a float64 tensor; a value that is no number is named."""
        value = self.noise(t)
        try:
            return torch.as_tensor(value, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"noise(t) must return the noise level ν_t, a number or a tensor of numbers; at "
                            f"t={float(t):.6g} it returned {type(value).__name__} {value!r:.60}") from None

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


def _affine_drift(denoiser, x: Tensor, t, f, c) -> Tensor:
    """f·x + c·ŝ(x, t). For one time of the batch it is formed as one affine combination of x and the
    network's own output, its two coefficients summed in float64 (:meth:`Denoiser.combine`): where f·x
    and c·ŝ are each large and nearly cancel (a flow schedule near σ = 1: f = −1/(1 − t) ≈ −10⁹, while
    the drift of an x0 or velocity network stays O(1)), summing them in a float32 state would lose the
    drift; per-row times take the two terms apart."""
    scalar = _scalar_time(t)
    if scalar is not None:
        return denoiser.combine(x, scalar, float(f), float(c), "score")
    return bcast_time(f, x) * x + bcast_time(c, x) * denoiser.score(x, t)


class ForwardSDE(_Process):
    """Forward family (docs/math.md (3.1)) from data (t_min) to noise (t_max), t increasing.

        drift(x, t) = f_t x − ½(g_t² − ν_t²) ŝ(x, t),    diffusion(t) = ν_t

    With the default ν = g (``eta=1``) this is the forward SDE dx = f x dt + g dw (docs/math.md
    (1.2)) and no score is needed; any other ν needs a ``denoiser`` for the score term.

    Shapes: x and ``drift(x, t)`` are (B, *shape); t is a float, a 0-dim or a per-row (B,) float64
    tensor (coefficients broadcast per row); f, g², ν are float64 and depend on t only.

    References: Song et al., Score-Based Generative Modeling through Stochastic Differential
    Equations, arXiv:2011.13456 (ν = g); Su (2022, seed 001; docs/math.md §3) for ν ≠ g.
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
        if self._needs_score:
            return _affine_drift(self.denoiser, x, t, sch.f(t), -0.5 * (sch.g2(t) - self.level.nu2(t)))
        return bcast_time(sch.f(t), x) * x

    def torchsde(self, shape):
        """torchsde SDE object in the same (increasing) time t; state flattened to (batch, dim)."""
        return _TorchSDE(self, shape, reverse=False)


class ReverseSDE(_Process):
    """Reverse family (docs/math.md (3.2)), integrated from t_max down to t_min (dt < 0).

        drift(x, t) = f_t x − ½(g_t² + ν_t²) ŝ(x, t) = f_t x − (1 + η_t²) σ_t λ'_t ε̂(x, t),
        diffusion(t) = ν_t                                                  (docs/math.md (9.1))

    with Brownian increments in reversed time (a step of length |Δt| draws ν_t √|Δt| z).

    Args:
        denoiser: the network as a :class:`~diffsolve.Denoiser`.
        eta: ν_t = η g_t (η = 1, the default: Anderson's reverse SDE; η = 0: the probability-flow ODE).
        noise: a callable t ↦ ν_t ≥ 0 instead of ``eta``.

    Shapes: x and ``drift(x, t)`` are (B, *shape); t is a float, a 0-dim or a per-row (B,) float64
    tensor (coefficients broadcast per row); f, g², ν are float64 and depend on t only.

    References: Anderson, Reverse-time diffusion equation models, Stochastic Processes and their
    Applications 12(3) (1982) 313–326; Song et al., arXiv:2011.13456 (the reverse SDE with a
    learned score); Su (2022, seed 001; docs/math.md §3) for ν ≠ g.
    """

    def __init__(self, denoiser: Denoiser, eta: float | None = None, noise: Callable | None = None):
        self.denoiser = denoiser
        self.schedule = denoiser.schedule
        self.level = NoiseLevel(self.schedule, 1.0 if eta is None and noise is None else eta, noise)

    def drift(self, x, t):
        """f_t x − ½(g_t² + ν_t²) ŝ(x, t): the velocity dx/dt in (decreasing) process time."""
        sch = self.schedule
        return _affine_drift(self.denoiser, x, t, sch.f(t), -0.5 * (sch.g2(t) + self.level.nu2(t)))

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
