r"""Uniform dequantization of discrete data: the variational bound behind bits/dim of 8-bit data
(docs/math.md §5).

References:
    Theis, van den Oord, Bethge, A note on the evaluation of generative models, arXiv:1511.01844.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ._numbers import is_integer

__all__ = ["Dequantization"]

_F64 = torch.float64


@dataclass(frozen=True)
class Dequantization:
    """Discrete data with ``levels`` = K values on the grid a + (b − a)·k/(K − 1), k = 0..K−1
    (e.g. uint8 images scaled to [0, 1] or [−1, 1]); integer tensors are read as k directly.

    The dequantized point is x = a + (b − a)(k + u)/K, u ~ U[0, 1)^d: an affine map of the
    level-unit variable y = k + u onto [a, b), so log p_Y(y) = log p_X(x) + d log((b − a)/K) and
    −E_u[log p_Y]/(d ln 2) upper-bounds the discrete model's bits/dim (docs/math.md §5).
    """

    levels: int
    range: tuple | None = None

    def __post_init__(self):
        K = self.levels
        if not is_integer(K) or K < 2:
            raise ValueError(f"dequantize levels must be an integer >= 2, got {K!r}")
        if self.range is None:  # no default: it sets the Jacobian d·log((b − a)/K), and models differ
            raise ValueError("dequantize needs the data range, range=(a, b): the interval the model's data lie in "
                             "((-1, 1) for diffusers-style image models and the bundled digits model, as "
                             "dataset_log_likelihood and `diffsolve likelihood` assume; (0, 1) for data scaled "
                             "to [0, 1]); it decides the level-unit Jacobian, so a wrong one shifts bits/dim")
        try:
            a, b = (float(v) for v in self.range)
        except (TypeError, ValueError):
            raise ValueError(f"dequantize range must be two numbers (a, b) with a < b, got {self.range!r}") from None
        if not (math.isfinite(a) and math.isfinite(b) and a < b):
            raise ValueError(f"dequantize range must be (a, b) with a < b, got {self.range!r}")
        object.__setattr__(self, "levels", int(K))
        object.__setattr__(self, "range", (a, b))

    @classmethod
    def make(cls, spec) -> "Dequantization | None":
        if spec is None or isinstance(spec, cls):
            return spec
        if isinstance(spec, dict):
            unknown = set(spec) - {"levels", "range"}
            if unknown or "levels" not in spec:
                raise ValueError(f"dequantize dict needs keys 'levels' (K) and 'range' ((a, b)); "
                                 f"got keys {sorted(spec)}")
            return cls(spec["levels"], spec.get("range"))
        if hasattr(spec, "levels"):
            return cls(spec.levels, getattr(spec, "range", None))
        raise TypeError("dequantize must be None, a dict(levels=K, range=(a, b)) or a Dequantization")

    def level_index(self, x: Tensor) -> Tensor:
        """k (float64) of data on the grid; raises if x is off the grid or outside [a, b]."""
        K, (a, b) = self.levels, self.range
        if not x.is_floating_point():
            k = x.to(_F64)
            if bool((k < 0).any() | (k > K - 1).any()):
                raise ValueError(f"integer data must be levels in 0..{K - 1}, got values in "
                                 f"[{int(x.min())}, {int(x.max())}]")
            return k
        step = (b - a) / (K - 1)
        # how far off the grid the data's own dtype may have rounded a grid value, in grid steps
        rounding = torch.finfo(x.dtype).eps / 2 * max(abs(a), abs(b)) / step
        if rounding > 0.25:
            raise ValueError(f"{x.dtype} data cannot tell the {K} levels of [{a:g}, {b:g}] apart (its rounding is "
                             f"{rounding:.2g} grid steps): give the data in float64, or as integer level indices")
        tol = max(1e-4, 4 * rounding)
        x = x.to(_F64)
        lo, hi = float(x.min()), float(x.max())
        if lo < a - tol * step or hi > b + tol * step:
            raise ValueError(f"data values lie in [{lo:.6g}, {hi:.6g}], outside the dequantization range "
                             f"[{a:g}, {b:g}]; set dequantize range to the data's range")
        k = (x - a) / step
        off = float((k - k.round()).abs().max())
        if off > tol:
            raise ValueError(f"data are not on the {K}-level grid a + (b - a)k/(K - 1) of [{a:g}, {b:g}] "
                             f"(max distance {off:.3g} grid steps); check levels and range")
        return k.round().clamp(0, K - 1)

    def grid_point(self, k: Tensor) -> Tensor:
        """The grid's value a + (b − a)k/(K − 1) of level indices k (float64; the inverse of :meth:`level_index`,
        which checks them)."""
        a, b = self.range
        return a + (b - a) * self.level_index(k) / (self.levels - 1)

    def apply(self, k: Tensor, u: Tensor) -> Tensor:
        a, b = self.range
        return a + (b - a) * (k + u) / self.levels

    def log_jacobian(self, d: int) -> float:
        a, b = self.range
        return d * math.log((b - a) / self.levels)


