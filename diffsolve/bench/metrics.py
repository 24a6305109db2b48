r"""Quality metrics of a sampler's output, with exact ground truth where it exists (docs/math.md §6).

- :func:`rms_error`: root-mean-square error per coordinate against the exact probability-flow ODE
  solution (docs/math.md (3.3)) from the same x_T (deterministic samplers only);
- :func:`sliced_wasserstein`: sliced 2-Wasserstein distance
  SW₂(P, Q)² = E_θ[W₂²(θ·P, θ·Q)], θ uniform on the unit sphere, each 1-D W₂ exact between
  empirical measures (sorted projections), fixed projection seed;
- :func:`frechet_distance`: ‖m₁ − m₂‖² + tr C₁ + tr C₂ − 2 tr (C₂^{½} C₁ C₂^{½})^{½} between the
  Gaussian fit of the samples and a Gaussian target (the exact Gaussian for a Gaussian problem,
  the exact first two moments of a mixture, or the fit of held-out data); with fewer samples than
  dimensions the fit is diagonal in the target's eigenbasis (exact for a single Gaussian, whose
  sampler dynamics decouple in that basis), so 3072-D is fast and not dominated by rank deficiency;
- :func:`mean_log_prob`: mean exact log p₀ of the samples.

Reference solutions: :func:`gaussian_ode_solution` (closed form for one Gaussian) and
:func:`reference_solution` (an adaptive dopri5 solve in λ with per-sample step control,
:func:`diffsolve.rk.rk_solve`, so every sample's reference is independent of its batch).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..analytic import GaussianMixture
from ..denoiser import Denoiser
from ..reference import ode_reference
from ..schedules import Schedule

__all__ = ["rms_error", "sliced_wasserstein", "projections", "GaussianTarget", "frechet_distance",
           "mean_log_prob", "gaussian_ode_solution", "reference_solution"]

_F64 = torch.float64


def _flat(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1).to(_F64)


def rms_error(x: Tensor, ref: Tensor) -> float:
    """sqrt(mean((x − ref)²)) over every coordinate of every sample."""
    if x.shape != ref.shape:
        raise ValueError(f"shapes differ: {tuple(x.shape)} vs {tuple(ref.shape)}")
    return float(((x.to(_F64) - ref.to(_F64)) ** 2).mean().sqrt())


# added to the seed: a stream apart from the problems' (torch.randn with seeds 0, 1, ...; torch's CPU generator
# seeds its Mersenne twister with the low 32 bits, so the offset lies there)
_PROJECTION_STREAM = 0x9E3779B9


def projections(d: int, n_projections: int, seed: int = 0, device=None) -> Tensor:
    """(n_projections, d) directions uniform on the unit sphere, from a fixed seed (float64). Drawn from a
    stream of their own: with the seed itself, the first eight of mix64's directions were its eight means
    (both ``torch.randn`` from seed 0), which raised its SW₂ by ~20 %."""
    g = torch.Generator().manual_seed(_PROJECTION_STREAM + int(seed))
    theta = torch.randn(n_projections, d, dtype=_F64, generator=g)
    return (theta / theta.norm(dim=1, keepdim=True)).to(device)


def _w2_sorted(px: Tensor, py: Tensor) -> Tensor:
    """W₂² between the empirical measures of each column of sorted px (n, P) and py (m, P), exactly:
    ∫₀¹ (F⁻¹(u) − G⁻¹(u))² du, both quantile functions constant between consecutive points of
    {i/n} ∪ {j/m} (counted on the common denominator n·m, in integers)."""
    n, m = px.shape[0], py.shape[0]
    if n == m:
        return ((px - py) ** 2).mean(0)
    dev = px.device
    ends = torch.unique(torch.cat([torch.arange(1, n + 1, device=dev) * m, torch.arange(1, m + 1, device=dev) * n]))
    starts = torch.cat([ends.new_zeros(1), ends[:-1]])
    weight = ((ends - starts).to(_F64) / (n * m)).unsqueeze(1)
    return (weight * (px[starts // m] - py[starts // n]) ** 2).sum(0)


def sliced_wasserstein(x: Tensor, y: Tensor, n_projections: int = 512, seed: int = 0) -> float:
    r"""SW₂ between the empirical measures of x (n, ...) and y (m, ...): sqrt(mean_θ W₂²(θ·x, θ·y)).

    Each 1-D W₂² is exact: mean((sort(θ·x) − sort(θ·y))²) for equal sizes, and for unequal sizes the
    integral of the squared difference of the two step quantile functions. For y = x + δ every projection is a shift by
    θ·δ, so SW₂² = mean_θ (θ·δ)² → |δ|²/d as the number of projections grows.
    """
    xf, yf = _flat(x), _flat(y)
    if xf.shape[1] != yf.shape[1]:
        raise ValueError(f"dimensions differ: {xf.shape[1]} vs {yf.shape[1]}")
    theta = projections(xf.shape[1], n_projections, seed, device=xf.device)
    px = (xf @ theta.T).sort(0).values
    py = (yf.to(xf.device) @ theta.T).sort(0).values
    return float(_w2_sorted(px, py).mean().sqrt())


class GaussianTarget:
    """A Gaussian N(mean, cov) prepared for Fréchet distances: mean, tr cov, cov^{½} and, when
    known, its eigenbasis (``basis`` (d, d) or None for the coordinate basis) and variances ``var``.

    ``cov_sqrt`` is a (d,) vector when the covariance is diagonal, else a symmetric (d, d) matrix.
    """

    def __init__(self, mean: Tensor, cov: Tensor):
        mean = torch.as_tensor(mean, dtype=_F64).flatten()
        cov = torch.as_tensor(cov, dtype=_F64)
        d = mean.shape[0]
        if cov.shape == (d,):
            if (cov < 0).any():
                raise ValueError("variances must be >= 0")
            self.cov_sqrt, self.trace = cov.sqrt(), float(cov.sum())
            self.basis, self.var = None, cov
        elif cov.shape == (d, d):
            evals, evecs = torch.linalg.eigh(0.5 * (cov + cov.T))
            evals = evals.clamp(min=0)
            self.cov_sqrt = (evecs * evals.sqrt()) @ evecs.T
            self.trace = float(evals.sum())
            self.basis, self.var = evecs, evals
        else:
            raise ValueError(f"cov must have shape ({d},) or ({d}, {d}), got {tuple(cov.shape)}")
        self.mean, self.d = mean, d

    @classmethod
    def from_mixture(cls, mixture: GaussianMixture) -> "GaussianTarget":
        """The exact first two moments of a mixture (the exact law for a single Gaussian)."""
        if mixture.K == 1 and mixture.eigvecs is None:
            return cls(mixture.means[0], mixture.eigvals[0])
        return cls(mixture.mean(), mixture.covariance())

    @classmethod
    def from_samples(cls, y: Tensor) -> "GaussianTarget":
        yf = _flat(y)
        return cls(yf.mean(0), torch.cov(yf.T).reshape(yf.shape[1], yf.shape[1]))


def frechet_distance(x: Tensor, target: GaussianTarget, diagonal: bool | None = None) -> float:
    r"""Fréchet distance between the Gaussian fit of x (n, ...) and ``target`` (no square root:
    the FID convention).

    Full fit: ‖m₁ − m₂‖² + tr C₁ + tr C₂ − 2 tr (S C₁ S)^{½}, S = C₂^{½}, with the trace from the
    eigenvalues of the smaller of A Aᵀ, AᵀA, A = X_c S / √(n − 1) (n×n when n < d: fast in 3072-D).

    ``diagonal=True`` fits only the variances v₁ in the target's eigenbasis U, giving
    ‖m₁ − m₂‖² + Σ (√v₁ − √v₂)². It is the right estimator when n ≤ d (a rank-(n−1) full fit is
    dominated by its own bias) and exact in expectation whenever the samples' covariance shares the
    target's eigenbasis — as for every sampler on a single Gaussian, whose ODE/SDE decouples in that
    basis. Default: diagonal when n ≤ d.
    """
    xf = _flat(x).to(target.mean.device)
    n, d = xf.shape
    if d != target.d:
        raise ValueError(f"samples have dimension {d}, the target {target.d}")
    if n < 2:
        raise ValueError("the Fréchet distance needs at least 2 samples")
    m = xf.mean(0)
    xc = (xf - m) / math.sqrt(n - 1)
    mean_term = ((m - target.mean) ** 2).sum()
    if diagonal is None:
        diagonal = n <= d
    if diagonal:
        z = xc if target.basis is None else xc @ target.basis
        v1 = (z * z).sum(0)
        return float(mean_term + ((v1.sqrt() - target.var.sqrt()) ** 2).sum())
    S = target.cov_sqrt
    a = xc * S if S.dim() == 1 else xc @ S
    gram = a @ a.T if n <= d else a.T @ a
    cross = torch.linalg.eigvalsh(gram).clamp(min=0).sqrt().sum()
    return float(mean_term + (xc**2).sum() + target.trace - 2 * cross)


def mean_log_prob(x: Tensor, mixture: GaussianMixture) -> float:
    """Mean exact log p₀ of the samples (higher means samples sit where the data is dense)."""
    return float(mixture.log_prob(x.to(_F64).cpu()).mean())


def gaussian_ode_solution(mixture: GaussianMixture, schedule: Schedule, x: Tensor, t_start: float,
                          t_end: float) -> Tensor:
    r"""Exact probability-flow ODE map for a single Gaussian N(μ, U diag(s) Uᵀ).

    In the eigenbasis z = Uᵀ(x − α_t μ) each coordinate evolves as dz/dt = ½ (d log v/dt) z with
    v_t = α_t² s + σ_t² (docs/math.md (3.3) with the exact score; the map is (21.5)), so z_t / √v_t is constant:
    x(t₁) = α₁ μ + U[√(v₁/v₀) ⊙ Uᵀ(x(t₀) − α₀ μ)].
    """
    if mixture.K != 1:
        raise ValueError("the closed-form ODE solution exists for a single Gaussian only")
    tt = torch.tensor([float(t_start), float(t_end)], dtype=_F64)
    a, s = schedule.alpha(tt).tolist(), schedule.sigma(tt).tolist()
    xf = _flat(x)
    dev = xf.device
    mu, ev = mixture.means[0].to(dev), mixture.eigvals[0].to(dev)
    scale = ((a[1] ** 2 * ev + s[1] ** 2) / (a[0] ** 2 * ev + s[0] ** 2)).sqrt()
    r = xf - a[0] * mu
    if mixture.eigvecs is None:
        z = r * scale
    else:
        U = mixture.eigvecs[0].to(dev)
        z = ((r @ U) * scale) @ U.T
    return (a[1] * mu + z).reshape(x.shape)


def reference_solution(denoiser: Denoiser, x: Tensor, t_start: float, t_end: float, *,
                       denoise_final: bool = True, tol: float = 1e-8,
                       mixture: GaussianMixture | None = None) -> Tensor:
    r"""The probability-flow ODE solution from x at ``t_start`` to ``t_end`` (float64), followed by
    the same final denoise x̂0(x, t_end) the sampler applied (when ``denoise_final``).

    A single-Gaussian ``mixture`` uses :func:`gaussian_ode_solution` (exact); otherwise
    :func:`diffsolve.reference.ode_reference` (dopri5 in λ with per-sample error control,
    rtol = atol = ``tol``).
    """
    x = x.to(_F64)
    if mixture is not None and mixture.K == 1:
        out = gaussian_ode_solution(mixture, denoiser.schedule, x, t_start, t_end)
    else:
        out = ode_reference(denoiser, x, t_start, t_end, rtol=tol, atol=tol)
    if denoise_final:
        out = denoiser.x0(out, float(t_end))
    return out
