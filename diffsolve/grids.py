r"""Step grids: the times t_0 = t_max > t_1 > … > t_n = t_min a fixed-step solver visits (docs/math.md §4).

Kinds (``make_grid(schedule, steps, kind)``):

- ``"time"``      uniform in t;
- ``"log_snr"``   uniform in λ (DPM-Solver's ``logSNR``);
- ``"karras"``    uniform in s^{1/ρ}, s = σ/α = e^{−λ} (EDM, ρ = 7 by default);
- ``"quadratic"`` uniform in √t (DPM-Solver's ``time_quadratic``, for t > 0);
- ``"leading"``, ``"trailing"``, ``"linspace"``: the discrete-timestep spacings of diffusers'
  schedulers (``DDPMSchedule`` only), followed by the end point t_min; every grid point is
  an exact training timestep;
- a user array (or tensor) of times, validated.

All grids are float64 CPU tensors, strictly decreasing, inside the schedule's range.
"""
from __future__ import annotations

import math
import weakref

import torch
from torch import Tensor

from .schedules import DDPMSchedule, Schedule

__all__ = ["make_grid", "validate_grid", "GRIDS"]

_F64 = torch.float64
_GRIDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
GRIDS = ("time", "log_snr", "karras", "quadratic", "leading", "trailing", "linspace")


def validate_grid(schedule: Schedule | None, t) -> Tensor:
    """Check a user grid: 1-D, at least 2 points, finite, strictly decreasing, inside the range
    (``schedule=None``: all but the range, for a grid whose schedule is not known yet)."""
    t = torch.as_tensor(t, dtype=_F64).detach().cpu()
    if t.dim() != 1 or len(t) < 2:
        raise ValueError(f"a time grid must be 1-D with at least 2 points (start and end), got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError("the time grid contains NaN or Inf")
    d = t[1:] - t[:-1]
    if bool((d >= 0).any()):
        k = int((d >= 0).nonzero()[0])
        what = "a repeated time (zero-size step)" if d[k] == 0 else "an increase"
        raise ValueError(f"the time grid must be strictly decreasing (from noise to data); it has {what} "
                         f"at index {k}: t[{k}]={float(t[k]):.8g}, t[{k + 1}]={float(t[k + 1]):.8g}")
    if schedule is None:
        return t
    lam = schedule.tabulate(t).log_snr  # checks the range (memoised: a grid seen before is valid)
    if bool((lam[1:] <= lam[:-1]).any()):
        raise ValueError("the grid has steps of zero size in log-SNR (times closer than the schedule resolves)")
    return t


def _from_log_snr(schedule: Schedule, lam: Tensor) -> Tensor:
    t = schedule.t_of_log_snr(lam)
    t[0], t[-1] = schedule.t_max, schedule.t_min  # exact end points despite round-off
    return t


def make_grid(schedule: Schedule, steps: int | None = None, kind="log_snr", *, rho: float = 7.0,
              t_start: float | None = None, t_end: float | None = None) -> Tensor:
    """A grid of ``steps`` steps (``steps + 1`` times) of the given ``kind``, or a validated user array.

    ``t_start`` / ``t_end`` default to the schedule's ``t_max`` / ``t_min``.
    """
    if not isinstance(kind, str):
        return validate_grid(schedule, kind)
    memo = _GRIDS.setdefault(schedule, {})
    key = (steps, kind, rho, t_start, t_end)
    if key not in memo:  # the same grid is asked for call after call: build and validate it once
        if len(memo) >= 256:
            memo.clear()
        memo[key] = _make_grid(schedule, steps, kind, rho, t_start, t_end)
    return memo[key].clone()


def _make_grid(schedule, steps, kind, rho, t_start, t_end) -> Tensor:
    if kind not in GRIDS:
        raise ValueError(f"unknown grid {kind!r}; valid grids: {', '.join(GRIDS)}, or an array of times")
    if steps is None or int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    steps = int(steps)
    T = schedule.t_max if t_start is None else float(t_start)
    t0 = schedule.t_min if t_end is None else float(t_end)
    schedule.check_time(torch.tensor([t0, T], dtype=_F64))
    if not t0 < T:
        raise ValueError(f"need t_end < t_start, got {t0} and {T}")
    u = torch.linspace(0.0, 1.0, steps + 1, dtype=_F64)
    if kind == "time":
        t = T + (t0 - T) * u
    elif kind == "quadratic":
        if t0 < 0:
            raise ValueError("the quadratic grid needs t >= 0")
        t = (math.sqrt(T) + (math.sqrt(t0) - math.sqrt(T)) * u) ** 2
    elif kind == "log_snr":
        lo, hi = schedule.log_snr(torch.tensor([T, t0], dtype=_F64)).tolist()
        t = schedule.t_of_log_snr(lo + (hi - lo) * u)
    elif kind == "karras":
        s_max, s_min = torch.exp(-schedule.log_snr(torch.tensor([T, t0], dtype=_F64))).tolist()
        s = (s_max ** (1 / rho) + u * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
        t = schedule.t_of_log_snr(-torch.log(s))
    else:
        t = _discrete(schedule, steps, kind, T, t0)
        return validate_grid(schedule, t)
    t[0], t[-1] = T, t0
    return validate_grid(schedule, t)


def _discrete(schedule: Schedule, steps: int, kind: str, T: float, t0: float) -> Tensor:
    """diffusers' timestep spacings: ``steps`` training timesteps, then the end point t0."""
    if not isinstance(schedule, DDPMSchedule):
        raise ValueError(f"the {kind!r} spacing needs a discrete DDPMSchedule; use 'time', 'log_snr' or 'karras'")
    N = schedule.num_train_timesteps
    if steps > N - 1:
        raise ValueError(f"at most {N - 1} steps with a discrete spacing over {N} training timesteps")
    if kind == "leading":
        ratio = N // steps
        k = torch.arange(steps, dtype=_F64).flip(0) * ratio + 1  # steps_offset=1, as Stable Diffusion
        k = k.clamp(max=N - 1)
    elif kind == "trailing":
        k = torch.round(torch.arange(N, 0, -N / steps, dtype=_F64)) - 1
    else:  # linspace
        k = torch.round(torch.linspace(0, N - 1, steps + 1, dtype=_F64)).flip(0)[:-1]
    t = schedule.t_of_timestep(k)
    t = t[t > t0]
    return torch.cat([t, torch.tensor([t0], dtype=_F64)])
