r"""Step grids: the times t_0 = t_max > t_1 > … > t_n = t_min a fixed-step solver visits (docs/math.md §10).

Kinds (``make_grid(schedule, steps, kind)``):

- ``"time"``      uniform in t;
- ``"log_snr"``   uniform in λ (DPM-Solver's ``logSNR``);
- ``"karras"``    uniform in s^{1/ρ}, s = σ/α = e^{−λ} (EDM, ρ = 7 by default);
- ``"quadratic"`` uniform in √t (DPM-Solver's ``time_quadratic``, for t > 0);
- ``"leading"``, ``"trailing"``, ``"linspace"``: the discrete-timestep spacings of diffusers'
  schedulers (``DDPMSchedule`` only), followed by the end point t_min; every grid point is
  an exact training timestep (below);
- a user array (or tensor) of times, validated.

All grids are float64 CPU tensors, strictly decreasing, inside the schedule's range.

**diffusers' spacings.** :func:`diffusers_timesteps` computes the timesteps of a diffusers
scheduler class exactly as its ``set_timesteps`` does (numpy, the same rounding); the classes
differ (N training timesteps, n timesteps asked for, ``r = N/n``):

==========  =======================================  =========================================
spacing     DDIM, DDPM, Euler, EulerAncestral, Heun  DPMSolverMultistep/Singlestep, DEIS, UniPC
==========  =======================================  =========================================
linspace    round(linspace(0, N−1, n)) (ends at 0;   round(linspace(0, N−1, n + 1)) without its
            Euler/Heun: not rounded, float32)        last point 0
leading     ⌊N/n⌋·(0..n−1) + steps_offset            ⌊N/(n+1)⌋·(1..n) + steps_offset
trailing    round(N − r·(0..n−1)) − 1                the same
==========  =======================================  =========================================

(DPMSolverSinglestep has linspace only.) diffusers computes trailing as ``arange(N, 0, −r)``,
which for some n (61, 103, 121, … at N = 1000) rounds into one extra timestep −1; the n
timesteps meant are returned here. :func:`diffusers_grid` turns them into a grid, and
``DiffsolveScheduler(grid="diffusers")`` uses it with the class of the config it was made from.

``make_grid``'s discrete kinds give ``steps`` steps: DDIM's timesteps for n = ``steps`` (leading
with steps_offset = 1, as Stable Diffusion; trailing) or n = ``steps`` + 1 (linspace, which ends
at timestep 0 = t_min), followed by t_min. Where DDIM's trailing timesteps for n = ``steps`` end at
timestep 0 already (N/n < 1.5), those for n = ``steps`` + 1 are taken, so the grid still has
``steps`` steps (it used to lose one).
"""
from __future__ import annotations

import math
import numbers
import weakref

import torch
from torch import Tensor

from ._numbers import check_number
from .schedules import DDPMSchedule, Schedule, make_schedule

__all__ = ["make_grid", "validate_grid", "GRIDS", "diffusers_timesteps", "diffusers_grid", "DIFFUSERS_SPACING"]

_F64 = torch.float64
_GRIDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
GRIDS = ("time", "log_snr", "karras", "quadratic", "leading", "trailing", "linspace")
GRID_SUMMARIES = {  # one line per kind (module docstring), for `diffsolve list grids`
    "time": "uniform in t",
    "log_snr": "uniform in the log-SNR λ (DPM-Solver's logSNR)",
    "karras": "uniform in s^(1/ρ), s = σ/α (EDM, ρ = 7)",
    "quadratic": "uniform in √t (DPM-Solver's time_quadratic)",
    "leading": "diffusers' leading timestep spacing, then t_min (DDPM schedules)",
    "trailing": "diffusers' trailing timestep spacing, then t_min (DDPM schedules)",
    "linspace": "diffusers' linspace timestep spacing, then t_min (DDPM schedules)",
}


def validate_grid(schedule: Schedule | None, t, *, single: bool = False) -> Tensor:
    """Check a user grid: 1-D, at least 2 points, finite, strictly decreasing, inside the range
    (``schedule=None``: all but the range, for a grid whose schedule is not known yet). ``single``:
    one time is a grid too (of a run that is the final denoise alone, x̂0(x, t_0))."""
    if isinstance(t, Tensor) and t.is_meta:
        raise ValueError("the time grid is a meta tensor, which has no values: give the times on the CPU")
    t = torch.as_tensor(t, dtype=_F64).detach().cpu()
    if t.dim() != 1 or len(t) < (1 if single else 2):
        least = "1 point" if single else "2 points (start and end)"
        raise ValueError(f"a time grid must be 1-D with at least {least}, got shape {tuple(t.shape)}")
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
    t = _snap_ends(schedule, t)
    lam = schedule.tabulate(t).log_snr  # checks the range (memoised: a grid seen before is valid)
    if bool((lam[1:] <= lam[:-1]).any()):
        raise ValueError("the grid has steps of zero size in log-SNR (times closer than the schedule resolves)")
    return t


END_ROUNDING = 1e-6  # relative: a grid end this close outside the range is the range's end (float32 round-off)


def _snap_ends(schedule: Schedule, t: Tensor) -> Tensor:
    """A user grid whose ends lie within float32 round-off outside [t_min, t_max] (k-diffusion's float32
    sigmas: 0.0019999996 for σ_min = 0.002) starts and ends exactly there; a grid ending at t = 0 below a
    positive t_min is refused with the fix (the step to σ = 0 is the final denoise)."""
    lo, hi = schedule.t_min, schedule.t_max
    if float(t[-1]) == 0.0 and lo > 0:
        raise ValueError(f"the time grid ends at t = 0, below the schedule's t_min = {lo:g} (k-diffusion's sigmas "
                         f"end with 0): drop that last point and pass denoise_final=True, which makes the step to "
                         f"σ = 0 as x̂0(x, t_min)")
    first, last = float(t[0]), float(t[-1])
    snap_first, snap_last = hi < first <= hi * (1 + END_ROUNDING), lo * (1 - END_ROUNDING) <= last < lo
    if snap_first or snap_last:  # each end on its own: an end further out is left for the range check to refuse
        t = t.clone()
        if snap_first:
            t[0] = hi
        if snap_last:
            t[-1] = lo
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
    schedule = make_schedule(schedule)  # a name ("vp") or an instance; anything else: a clear error
    if kind is None:
        raise TypeError(f"grid kind must be one of {', '.join(GRIDS)} or an array of times, got None")
    if not isinstance(kind, str):
        return validate_grid(schedule, kind)
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, numbers.Real)):
        raise TypeError(f"steps must be a positive integer, got {steps!r}")
    if kind == "karras":
        rho = check_number("rho (EDM: 7)", rho, positive=True)
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
    """diffusers' timestep spacings: ``steps`` steps over DDIM's training timesteps, then the end point t0."""
    if not isinstance(schedule, DDPMSchedule):
        raise ValueError(f"the {kind!r} spacing needs a discrete DDPMSchedule; use 'time', 'log_snr' or 'karras'")
    N = schedule.num_train_timesteps
    if steps > N - 1:
        raise ValueError(f"at most {N - 1} steps with a discrete spacing over {N} training timesteps")
    n = steps + 1 if kind == "linspace" else steps
    k = diffusers_timesteps(n, kind, num_train_timesteps=N, steps_offset=1 if kind == "leading" else 0)
    if kind == "trailing" and float(k[-1]) == 0.0:  # N/n < 1.5: the n timesteps end at t_min already
        k = diffusers_timesteps(n + 1, kind, num_train_timesteps=N)
    t = schedule.t_of_timestep(k)
    t = t[t > t0]
    return torch.cat([t, torch.tensor([t0], dtype=_F64)])


# --- diffusers' spacings, class by class ----------------------------------------------------------
_DDIM_STYLE = ("DDIMScheduler", "DDPMScheduler")
_EULER_STYLE = ("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler")
_DPM_STYLE = ("DPMSolverMultistepScheduler", "DEISMultistepScheduler", "UniPCMultistepScheduler")
_LINSPACE_ONLY = ("DPMSolverSinglestepScheduler",)
# class name -> which formulas its set_timesteps uses (module docstring)
DIFFUSERS_SPACING = {**{c: "ddim" for c in _DDIM_STYLE}, **{c: "euler" for c in _EULER_STYLE},
                     **{c: "dpmsolver" for c in _DPM_STYLE + _LINSPACE_ONLY}}
SPACINGS = ("leading", "trailing", "linspace")


def diffusers_timesteps(n: int, spacing: str = "linspace", *, num_train_timesteps: int = 1000,
                        steps_offset: int = 0, scheduler: str = "DDIMScheduler") -> Tensor:
    """The ``n`` timesteps (decreasing, float64) that diffusers' ``scheduler`` class chooses in
    ``set_timesteps(n)`` with this ``timestep_spacing`` and ``steps_offset`` (module docstring).
    Integers, except the Euler/Heun classes' linspace (fractional, float32 as there)."""
    import numpy as np

    style = DIFFUSERS_SPACING.get(scheduler)
    if style is None:
        raise ValueError(f"no timestep spacing known for diffusers class {scheduler!r}; known: "
                         f"{', '.join(sorted(DIFFUSERS_SPACING))} (DiffsolveScheduler: name the one whose timesteps to "
                         f"follow with diffusers_class=..., or use a diffsolve grid such as the default 'log_snr')")
    if spacing not in SPACINGS:
        raise ValueError(f"unknown timestep_spacing {spacing!r}; diffusers' spacings are {', '.join(SPACINGS)}")
    N, n = int(num_train_timesteps), int(n)
    if not 1 <= n <= N - (style == "dpmsolver"):
        raise ValueError(f"{scheduler} takes 1 to {N - (style == 'dpmsolver')} timesteps over {N} training "
                         f"timesteps, got {n}")
    if scheduler in _LINSPACE_ONLY:
        spacing = "linspace"  # it has no timestep_spacing option
    if spacing == "trailing":  # numpy's arange(N, 0, -N/n) as diffusers, without the round-off's extra point
        delta = (N - N / n) - N  # arange fills start + i·(second − start)
        k = np.round(N + np.arange(n) * delta) - 1
    elif spacing == "leading" and style == "dpmsolver":
        k = (np.arange(0, n + 1) * (N // (n + 1))).round()[::-1][:-1] + steps_offset
    elif spacing == "leading":
        k = (np.arange(0, n) * (N // n)).round()[::-1] + steps_offset
    elif style == "dpmsolver":
        k = np.linspace(0, N - 1, n + 1).round()[::-1][:-1]
    elif style == "euler":
        k = np.linspace(0, N - 1, n, dtype=np.float32)[::-1].astype(np.float64)
    else:
        k = np.linspace(0, N - 1, n).round()[::-1]
    k = torch.from_numpy(np.array(k, dtype=np.float64, copy=True))
    if float(k.min()) < 0 or float(k.max()) > N - 1 or bool((k[1:] >= k[:-1]).any()):
        raise ValueError(f"{scheduler}'s {spacing!r} spacing with steps_offset={steps_offset} gives timesteps "
                         f"outside 0..{N - 1} or repeated for n = {n}: {k.tolist()[:3]} ... {k.tolist()[-3:]}")
    return k


def diffusers_grid(schedule: Schedule, n: int, spacing: str = "linspace", *, steps_offset: int = 0,
                   scheduler: str = "DDIMScheduler", end_at_t_min: bool = False) -> Tensor:
    """The grid of a diffusers scheduler's ``n`` timesteps (:func:`diffusers_timesteps`) on a
    ``DDPMSchedule`` (t = (k + 1)/N), followed by t_min when ``end_at_t_min`` (unless the last
    timestep is 0 already). Without it, the last grid time is that of the last timestep: where the
    diffusers scheduler steps from there to σ = 0, diffsolve's ``denoise_final`` does (one timestep
    alone is then the grid of a run that is that evaluation)."""
    if not isinstance(schedule, DDPMSchedule):
        raise ValueError("diffusers' timestep spacings need a discrete DDPMSchedule")
    k = diffusers_timesteps(n, spacing, num_train_timesteps=schedule.num_train_timesteps,
                            steps_offset=steps_offset, scheduler=scheduler)
    t = schedule.t_of_timestep(k)
    if end_at_t_min and float(t[-1]) > schedule.t_min:
        t = torch.cat([t, torch.tensor([schedule.t_min], dtype=_F64)])
    if len(t) < 2 and end_at_t_min:
        raise ValueError(f"{n} timestep{'s' if n > 1 else ''} of {scheduler} make no step here: ask for more, or "
                         f"end at t_min")
    return validate_grid(schedule, t, single=True)
