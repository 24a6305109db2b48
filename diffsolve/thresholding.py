r"""x̂0 clipping and dynamic thresholding as a property of the denoiser's x̂0 (docs/math.md §25).

A threshold T maps the clean-data estimate to a bounded one, row by row (one row = one sample):

    Clip(r):                    T(x̂0) = clamp(x̂0, −r, r)                                 (25.1)
    DynamicThreshold(p, s_max): s = clamp(Q_p(|x̂0|), 1, s_max),  T(x̂0) = clamp(x̂0, −s, s)/s   (25.2)

with Q_p the p-quantile of the absolute values of one row (linear interpolation between order
statistics, as ``torch.quantile``). A :class:`~diffsolve.Denoiser` built with ``threshold=T``
applies T to x̂0 and derives *every* other prediction from the thresholded x̂0 through the one
conversion table (docs/math.md (8.1), (25.3)):

    x̂0_T = T(x̂0),   y_q = A_q x + B_q x̂0_T      (ε̂, score, v, velocity alike)

so a solver that asks for ε̂ gets the ε̂ consistent with the thresholded x̂0, no solver branches on
the threshold, and it composes with every solver, grid, noise level and with guidance (the
threshold acts on the guided x̂0, as a diffusers pipeline that guides before ``scheduler.step``).

**Relation to diffusers** (``clip_sample``, ``clip_sample_range``, ``thresholding``,
``dynamic_thresholding_ratio``, ``sample_max_value``; :func:`threshold_from_config`):

- ``DDPMScheduler``: thresholds ``pred_original_sample`` and forms the posterior mean from it and
  x_t — the same as here (the mean is a function of (x_t, x̂0_T) only).
- ``DPMSolverMultistepScheduler``, ``DPMSolverSinglestepScheduler``, ``DEISMultistepScheduler``,
  ``UniPCMultistepScheduler`` with ``predict_x0=True``: threshold x̂0 in ``convert_model_output``
  and, in their noise-prediction forms (``dpmsolver``, ``deis``), recompute ε̂ from the
  thresholded x̂0 — the same as here. (UniPC with ``predict_x0=False`` ignores ``thresholding``;
  these schedulers have no ``clip_sample``.)
- ``DDIMScheduler``: clips/thresholds ``pred_original_sample`` but by default keeps ε̂ = the raw
  network ε̂ (``step(..., use_clipped_model_output=False)``), giving
  x_s = α_s x̂0_T + σ_s ε̂_raw, where x_t ≠ α_t x̂0_T + σ_t ε̂_raw. That pair is not one clean-data
  estimate: the x̂0 of the form (25.3) that reproduces it depends on the next time s (docs/math.md
  (25.4)), so no option of a denoiser can reproduce it. diffsolve's DDIM with a thresholded
  denoiser equals diffusers' DDIM with ``use_clipped_model_output=True``.
- diffusers applies ``thresholding`` when both it and ``clip_sample`` are set;
  :func:`threshold_from_config` does the same.

References:
    Saharia et al., Photorealistic Text-to-Image Diffusion Models with Deep Language Understanding
    (Imagen), arXiv:2205.11487, §2.3 (dynamic thresholding); Ho, Jain, Abbeel, arXiv:2006.11239
    (x̂0 clipped to the data range).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["Clip", "DynamicThreshold", "threshold_from_config"]


def _positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


class Clip:
    """x̂0 ↦ clamp(x̂0, −r, r), elementwise (docs/math.md (25.1); diffusers' ``clip_sample``).

    Args:
        limit: r > 0 (diffusers' ``clip_sample_range``, default 1: data in [−1, 1]).

    Call with x̂0 of shape (B, *shape); returns a new tensor of the same shape and dtype.
    """

    def __init__(self, limit: float = 1.0):
        self.limit = _positive("limit", limit)

    def __call__(self, x0: Tensor) -> Tensor:
        return x0.clamp(-self.limit, self.limit)

    def __repr__(self):
        return f"Clip(limit={self.limit:g})"


class DynamicThreshold:
    """Imagen's dynamic thresholding, per row (docs/math.md (25.2); diffusers' ``thresholding``).

    s = clamp(Q_p(|x̂0|), 1, s_max) over the entries of one sample, then x̂0 ↦ clamp(x̂0, −s, s)/s:
    rows whose p-quantile is at most 1 are clipped to [−1, 1]; others are clipped to [−s, s] and
    scaled back into [−1, 1].

    Args:
        ratio: the quantile p ∈ (0, 1] (diffusers' ``dynamic_thresholding_ratio``, default 0.995).
        max_value: s_max ≥ 1, the largest s (diffusers' ``sample_max_value``; 1 makes this
            :class:`Clip` (1)).

    Call with x̂0 of shape (B, *shape); returns a new tensor of the same shape and dtype. The
    quantile is computed in x̂0's dtype (float16/bfloat16 are upcast to float32 for it).
    """

    def __init__(self, ratio: float = 0.995, max_value: float = 1.0):
        ratio = _positive("ratio", ratio)
        if ratio > 1:
            raise ValueError(f"ratio is a quantile in (0, 1], got {ratio!r}")
        max_value = _positive("max_value", max_value)
        if max_value < 1:
            raise ValueError(f"max_value (diffusers' sample_max_value) must be >= 1, got {max_value!r}: "
                             f"the threshold s is never below 1")
        self.ratio, self.max_value = ratio, max_value

    def scale(self, x0: Tensor) -> Tensor:
        """s of every row: (B,), in the dtype the quantile is computed in."""
        rows = x0.reshape(x0.shape[0], -1)
        if rows.dtype not in (torch.float32, torch.float64):
            rows = rows.float()
        a = rows.abs()
        n = a.shape[1]
        pos = self.ratio * (n - 1)  # the linear-interpolation quantile between order statistics
        lo = min(math.floor(pos), n - 1)
        below = a.kthvalue(lo + 1, dim=1).values
        frac = pos - lo
        if frac > 0:
            above = a.kthvalue(min(lo + 2, n), dim=1).values
            below = torch.lerp(below, above, frac)
        return below.clamp(1.0, self.max_value)

    def __call__(self, x0: Tensor) -> Tensor:
        s = self.scale(x0).reshape(-1, *([1] * (x0.dim() - 1)))
        rows = x0 if x0.dtype in (torch.float32, torch.float64) else x0.float()
        return (torch.maximum(torch.minimum(rows, s), -s) / s).to(x0.dtype)

    def __repr__(self):
        return f"DynamicThreshold(ratio={self.ratio:g}, max_value={self.max_value:g})"


def threshold_from_config(config) -> Clip | DynamicThreshold | None:
    """The threshold a diffusers scheduler config asks for (a dict or an object with ``.config``),
    or None: ``thresholding`` → :class:`DynamicThreshold` (``dynamic_thresholding_ratio``,
    ``sample_max_value``), else ``clip_sample`` → :class:`Clip` (``clip_sample_range``); the
    diffusers defaults fill missing fields (0.995, 1.0, 1.0)."""
    config = dict(getattr(config, "config", config) or {})
    if config.get("thresholding", False):
        return DynamicThreshold(config.get("dynamic_thresholding_ratio", 0.995), config.get("sample_max_value", 1.0))
    if config.get("clip_sample", False):
        return Clip(config.get("clip_sample_range", 1.0))
    return None
