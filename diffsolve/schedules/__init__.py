r"""Noise schedules: the pair (α_t, σ_t) of every Gaussian diffusion (docs/math.md §1).

    x_t = α_t x_0 + σ_t ε,        ε ~ N(0, I)                               (docs/math.md (1.1))
    λ_t = log(α_t / σ_t)          half log-SNR, strictly decreasing in t
    f_t = d log α_t / dt,   g_t² = dσ_t²/dt − 2 f_t σ_t² = −2 σ_t² dλ_t/dt     (docs/math.md (1.3))

Every schedule works in float64 and in closed form: a subclass implements the hooks ``_log_alpha``,
``_log_sigma``, their time derivatives ``_d_log_alpha`` and ``_d_log_sigma``, and the exact inverse
``_t_of_log_snr``, and sets ``t_min`` < ``t_max`` (:class:`Schedule`; checked once it is made). All methods
accept a Python number or a tensor of times (any shape) and return float64 tensors of the same
shape. Times outside ``[t_min, t_max]`` raise ``ValueError`` (checked for CPU tensors only, so a
per-sample time on an accelerator never forces a host synchronisation).
"""
from __future__ import annotations

from .base import GridTable, Schedule
from .continuous import CosineSchedule, EDMSchedule, FlowSchedule, SubVPSchedule, VESchedule, VPSchedule
from .ddpm import DDPMSchedule

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
        return schedule.validate()
    if isinstance(schedule, str) and schedule in SCHEDULES:
        return SCHEDULES[schedule]()
    raise ValueError(f"unknown schedule {schedule!r}; valid names: {', '.join(SCHEDULES)}")
