r"""Data conventions of the bundled models (the same functions train and evaluate them).

Digits (scikit-learn's 8×8 digits, 1797 images, pixel levels k ∈ {0..16}, K = 17 levels):

- split: the first 1500 images are the training set, the last 297 the held-out test set;
- model space: uniform dequantization onto [−1, 1] (docs/math.md §5, a = −1, b = 1, K = 17),

      x = −1 + 2 (k + u) / 17,   u ~ U[0, 1)^64,

  so a density on [−1, 1]^64 gives bits/dim = −E_u[log p_X(x)]/(64 ln 2) − log2(2/17) per pixel;
- back to pixels: k = clamp(floor((x + 1) · 17/2), 0, 16).

Two moons: 20 000 points of ``sklearn.datasets.make_moons(noise=0.05, random_state=0)``,
standardised with the fixed affine map x ↦ (x − (0.5, 0.25)) / (0.87, 0.5) (roughly unit variance).
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["DIGITS_LEVELS", "DIGITS_TRAIN", "digits", "digits_to_model", "digits_to_pixels",
           "two_moons", "MOONS_SHIFT", "MOONS_SCALE"]

DIGITS_LEVELS = 17
DIGITS_TRAIN = 1500
MOONS_SHIFT = (0.5, 0.25)
MOONS_SCALE = (0.87, 0.5)


def _sklearn_datasets():
    from ..checks import require

    return require("sklearn.datasets", "the digits and two-moons data come from scikit-learn (pip install "
                                       "scikit-learn, or pip install 'diffsolve[bench]')")


def digits(split: str = "train") -> tuple[Tensor, Tensor]:
    """(pixels, labels) of the digits split: pixels (N, 1, 8, 8) int64 in 0..16, labels (N,) int64."""
    load_digits = _sklearn_datasets().load_digits

    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    d = load_digits()
    k = torch.as_tensor(d.images, dtype=torch.int64).reshape(-1, 1, 8, 8)
    y = torch.as_tensor(d.target, dtype=torch.int64)
    if split == "train":
        return k[:DIGITS_TRAIN], y[:DIGITS_TRAIN]
    if split == "test":
        return k[DIGITS_TRAIN:], y[DIGITS_TRAIN:]
    return k, y


def digits_to_model(k: Tensor, u: Tensor | float = 0.5) -> Tensor:
    """Pixel levels k (0..16) and dequantization offsets u ∈ [0, 1) → model space [−1, 1].

    ``u = 0.5`` (default) gives the bin centres.
    """
    return -1.0 + 2.0 * (k.to(torch.float64) + u) / DIGITS_LEVELS


def digits_to_pixels(x: Tensor) -> Tensor:
    """Model-space samples → integer pixel levels 0..16 (the bin each value falls in)."""
    return torch.floor((x.to(torch.float64) + 1.0) * (DIGITS_LEVELS / 2.0)).clamp(0, DIGITS_LEVELS - 1).long()


def two_moons(n: int = 20000, seed: int = 0) -> Tensor:
    """(n, 2) float64 standardised two-moons points (fixed by ``seed``)."""
    make_moons = _sklearn_datasets().make_moons

    pts, _ = make_moons(n_samples=n, noise=0.05, random_state=seed)
    pts = torch.as_tensor(pts, dtype=torch.float64)
    return (pts - torch.tensor(MOONS_SHIFT, dtype=torch.float64)) / torch.tensor(MOONS_SCALE, dtype=torch.float64)
