"""Checks of what users pass in, shared by the functions that take it (likelihood, encode/decode)."""
from __future__ import annotations

import torch
from torch import Tensor

from .denoiser import Denoiser

__all__ = ["check_data", "data_end_time"]


def check_data(denoiser: Denoiser, x, allow_int: bool = False):
    """``x`` is a (B, *shape) tensor of finite floats (or integer levels when ``allow_int``) whose
    sample shape is the denoiser's, for a :class:`~diffsolve.Denoiser`."""
    if not isinstance(denoiser, Denoiser):
        raise TypeError(f"denoiser must be a diffsolve.Denoiser, got {type(denoiser).__name__}; "
                        f"wrap your network with Denoiser(net, schedule, prediction=...)")
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape (batch, *sample_shape), got {type(x).__name__}")
    if not x.is_floating_point() and not (allow_int and x.dtype in
                                           (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)):
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}"
                        + ("" if allow_int else "; integer data need dequantize=dict(levels=K, range=(a, b))"))
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"x must have shape (batch, *sample_shape) with batch >= 1, got {tuple(x.shape)}")
    if denoiser.shape is not None and tuple(x.shape[1:]) != denoiser.shape:
        raise ValueError(f"x has sample shape {tuple(x.shape[1:])} but the denoiser expects {denoiser.shape}")
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        bad = (~torch.isfinite(x.reshape(x.shape[0], -1))).any(1).nonzero().flatten().tolist()
        raise ValueError(f"x contains NaN or Inf (samples {bad[:10]}{'...' if len(bad) > 10 else ''})")


def data_end_time(schedule, t_end) -> float:
    """The data-side end time of a probability-flow solve: ``t_end`` in [t_min, t_max), default t_min."""
    t_end = schedule.t_min if t_end is None else float(t_end)
    if not (schedule.t_min - 1e-12 <= t_end < schedule.t_max):
        raise ValueError(f"t_end must lie in [t_min, t_max) = [{schedule.t_min:g}, {schedule.t_max:g}), got {t_end}")
    return max(t_end, schedule.t_min)
