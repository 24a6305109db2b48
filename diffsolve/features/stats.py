r"""Feature-space sample-quality statistics computed as the papers do (docs/math.md §24).

- :class:`FeatureStats`: one-pass mean and unbiased covariance, float64, exact merge of shards,
  ``.npz`` with keys ``mu`` and ``sigma`` (the reference-statistics format of EDM and ADM);
- :func:`frechet_distance` (FID, arXiv:1706.08500), :func:`kid` (arXiv:1801.01401), :func:`precision_recall`
  (arXiv:1904.06991), :func:`density_coverage` (arXiv:2002.09797) and :func:`bootstrap_interval`
  (percentile, seeded).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

__all__ = ["FeatureStats", "sqrtm_psd", "frechet_distance", "frechet_distance_rows", "KID", "kid", "PrecisionRecall", "knn_radii",
           "precision_recall", "DensityCoverage", "density_coverage", "ball_hits", "Interval", "bootstrap_interval"]


def _matrix(x, name: str = "features") -> Tensor:
    """(N, D) float64 tensor (numpy arrays and tensors; a tensor stays on its device)."""
    if (t := x if isinstance(x, Tensor) else torch.from_numpy(np.asarray(x))).ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (N, D), got shape {tuple(t.shape)}")
    return t.detach().to(torch.float64)


def _pair(a, b, names=("features_a", "features_b")) -> tuple[Tensor, Tensor]:
    if (x := _matrix(a, names[0])).shape[1] != (y := _matrix(b, names[1])).shape[1]:
        raise ValueError(f"feature dimensions differ: {x.shape[1]} and {y.shape[1]}")
    return x, y.to(x.device)


# --- streaming statistics -------------------------------------------------------------------
class FeatureStats:
    r"""Streaming mean and covariance of features, memory O(D²) whatever the number of samples N.

    Each batch (B, D) is reduced in float64 to (B, its mean m_B, its centred scatter
    M_B = Σ_i (x_i − m_B)(x_i − m_B)ᵀ) and merged into the running (n, m, M) by Chan et al.'s rule
    (docs/math.md (24.1)); :meth:`merge` applies the same rule to another accumulator, so shards
    accumulated by separate processes combine exactly. ``cov`` = M/(n − 1) (unbiased, as ``np.cov``).

    :meth:`save` writes ``mu``, ``sigma`` (float64, the keys of EDM's and ADM's reference ``.npz``,
    Karras et al. arXiv:2206.00364) and ``n``; :meth:`load` reads any ``.npz`` with ``mu`` and ``sigma``
    (without pickles). Statistics loaded without ``n`` give distances but cannot be merged.
    """

    def __init__(self):
        self.n: int | None = 0  # None: loaded without a sample count
        self._mean = self._m2 = self._sigma = None  # _sigma: a covariance loaded without its count
        self._root = None  # (√w, V) of cov, kept until the statistics change (sqrt_eig)

    @property
    def nbytes(self) -> int:
        """Bytes held by the accumulator's arrays (constant in the number of samples)."""
        return sum(a.nbytes for a in (self._mean, self._m2, self._sigma) if a is not None)

    def update(self, features) -> FeatureStats:
        """Add a batch of features (B, D) (numpy or torch; reduced on its device in float64)."""
        x = _matrix(features)
        if x.shape[0]:
            mb = x.mean(0)
            xc = x - mb
            self._combine(x.shape[0], mb.cpu().numpy(), (xc.T @ xc).cpu().numpy())
        return self

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Add another accumulator's samples (in place; returns ``self``)."""
        if other.n != 0:
            self._combine(other.n, other._mean, other._m2)
        return self

    def _combine(self, nb: int | None, mb: np.ndarray, m2b: np.ndarray) -> None:
        if self.n is None or nb is None:
            raise ValueError("statistics loaded without their sample count (no 'n' in the .npz) cannot be merged")
        if self._mean is None:
            self._mean, self._m2 = np.zeros(mb.shape), np.zeros(m2b.shape)
        if mb.shape != self._mean.shape:
            raise ValueError(f"feature dimension {mb.shape[0]} does not match the accumulator's {self._mean.shape[0]}")
        na, n = self.n, self.n + nb
        self._root = None
        delta = mb - self._mean
        self._mean += delta * (nb / n)
        self._m2 += m2b
        self._m2 += np.outer(delta, delta * (na * nb / n))
        self.n = n

    @property
    def mean(self) -> np.ndarray:
        if self._mean is None or self.n == 0:
            raise ValueError("no samples accumulated")
        return self._mean.copy()

    @property
    def cov(self) -> np.ndarray:
        """Unbiased covariance M/(n − 1), symmetrised."""
        if self._sigma is not None:
            return self._sigma.copy()
        if self.n is None or self.n < 2:
            raise ValueError(f"a covariance needs at least 2 samples, have {self.n}")
        return (self._m2 + self._m2.T) / (2 * (self.n - 1))

    def frechet_distance(self, other: FeatureStats) -> float:
        """:func:`frechet_distance` between the two Gaussian fits."""
        return frechet_distance(self.mean, self.cov, other.mean, other.cov)

    def sqrt_eig(self) -> tuple[np.ndarray, np.ndarray]:
        """(√w, V) of the covariance (:func:`_sqrt_eig`), computed once for these statistics: a reference's,
        against which many sample sets are measured (:func:`frechet_distance_rows`)."""
        if self._root is None:
            self._root = _sqrt_eig(self.cov)
        return self._root

    def save(self, path) -> None:
        np.savez(path, mu=self.mean, sigma=self.cov, **({} if self.n is None else {"n": np.int64(self.n)}))

    @classmethod
    def load(cls, path) -> FeatureStats:
        with np.load(path, allow_pickle=False) as f:
            missing = {"mu", "sigma"} - set(f.files)
            if missing:
                raise KeyError(f"{path}: no {sorted(missing)} in the .npz (keys: {sorted(f.files)})")
            mu, sigma = np.asarray(f["mu"], np.float64), np.asarray(f["sigma"], np.float64)
            n = int(f["n"]) if "n" in f.files else None
        if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
            raise ValueError(f"{path}: mu {mu.shape} and sigma {sigma.shape} are not (D,) and (D, D)")
        out = cls()
        out.n, out._mean = n, mu
        out._sigma, out._m2 = (sigma, None) if n is None else (None, sigma * max(n - 1, 0))
        return out


# --- Fréchet distance -----------------------------------------------------------------------
def _sqrt_eig(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(√w, V) of the PSD (A + Aᵀ)/2 = V diag(w) Vᵀ; w ≤ D·ε·max|w| (rounding noise) set to 0."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    w[w <= a.shape[0] * np.finfo(np.float64).eps * np.abs(w).max(initial=0.0)] = 0.0
    return np.sqrt(w), v


def sqrtm_psd(a) -> np.ndarray:
    """Square root V diag(√w) Vᵀ of a symmetric positive semi-definite matrix (see :func:`_sqrt_eig`)."""
    s, v = _sqrt_eig(np.asarray(a, np.float64))
    return (v * s) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    r"""Fréchet distance between N(μ₁, Σ₁) and N(μ₂, Σ₂) (docs/math.md (24.2)); FID on Inception features:

        ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁^{½} Σ₂ Σ₁^{½})^{½}

    The last trace is the sum of the singular values of Σ₂^{½} Σ₁^{½} = V₂ S₂ (V₂ᵀ V₁) S₁ V₁ᵀ, from
    ``eigh`` of each covariance (float64, rounding-level eigenvalues set to 0) and an SVD: no
    product is squared, so rank-deficient covariances (fewer samples than dimensions) need no
    regularisation and lose no digits. Reference: Heusel et al. arXiv:1706.08500; Dowson & Landau (1982).
    """
    mu1, s1, mu2, s2 = (np.asarray(a, np.float64) for a in (mu1, sigma1, mu2, sigma2))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"expected means (D,) and covariances (D, D), got {mu1.shape}, {s1.shape}, "
                         f"{mu2.shape}, {s2.shape}")
    (r1, v1), (r2, v2) = _sqrt_eig(s1), _sqrt_eig(s2)
    tr_sqrt = np.linalg.svd(r2[:, None] * (v2.T @ v1) * r1[None, :], compute_uv=False).sum()
    diff = mu1 - mu2
    return max(float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt), 0.0)


def frechet_distance_rows(features, reference: FeatureStats) -> float:
    r""":func:`frechet_distance` between the Gaussian fit of the rows ``features`` (n, D) and ``reference``,
    the same number without forming the rows' D×D covariance: with X̃ = X − μ = U S Vᵀ (thin SVD, r =
    min(n, D) columns), Σ = V diag(S²/(n − 1)) Vᵀ, so Σ^{½} = V diag(S/√(n − 1)) Vᵀ and the trace term is
    the sum of the singular values of S_ref (V_refᵀ V) S/√(n − 1), a D×r matrix. The reference's square
    root is kept (:meth:`FeatureStats.sqrt_eig`): measuring many sample sets against one reference (a
    bootstrap) costs O(D² r) each instead of two D×D eigendecompositions and a D×D SVD."""
    x = _matrix(features).double().cpu().numpy()
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"a covariance needs at least 2 samples, have {n}")
    mu_ref = reference.mean
    if x.shape[1] != mu_ref.shape[0]:
        raise ValueError(f"feature dimension {x.shape[1]} does not match the reference's {mu_ref.shape[0]}")
    mu = x.mean(0)
    _, s, vt = np.linalg.svd(x - mu, full_matrices=False)
    r = s / math.sqrt(n - 1)
    r_ref, v_ref = reference.sqrt_eig()
    tr_sqrt = np.linalg.svd(r_ref[:, None] * (v_ref.T @ vt.T) * r[None, :], compute_uv=False).sum()
    diff = mu - mu_ref
    return max(float(diff @ diff + (r * r).sum() + r_ref @ r_ref - 2.0 * tr_sqrt), 0.0)


# --- KID --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KID:
    mean: float
    std: float  # population std (ddof 0) over subsets, as torch-fidelity reports it
    subset_size: int
    num_subsets: int
    values: np.ndarray = field(repr=False)


def _poly3(a: np.ndarray, b: np.ndarray, d: int) -> np.ndarray:
    """(a bᵀ/d + 1)³, in place (``**`` on a float array calls pow per element, 4x slower)."""
    k = a @ b.T
    k /= d
    k += 1.0
    cube = k * k
    cube *= k
    return cube


def _mmd2_poly(x: np.ndarray, y: np.ndarray) -> float:
    m, d = x.shape
    kxx, kyy, kxy = _poly3(x, x, d), _poly3(y, y, d), _poly3(x, y, d)
    off = kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)
    return float(off / (m * (m - 1)) - 2.0 * kxy.sum() / (m * m))


def kid(features_a, features_b, *, num_subsets: int = 100, subset_size: int = 1000, seed=0) -> KID:
    r"""Kernel Inception Distance: unbiased MMD² (docs/math.md (24.3)) with k(x, y) = (xᵀy/d + 1)³ on
    ``num_subsets`` pairs of subsets of m = min(subset_size, N_a, N_b) rows drawn without replacement;
    mean and std over the subsets. Reference: Bińkowski et al. arXiv:1801.01401.

    ``seed`` (an int, or a ``np.random.RandomState`` / ``Generator``) draws each pair as torch-fidelity
    does (``choice(N_a, m)`` then ``choice(N_b, m)``), so equal seeds select equal subsets.

    The std is the spread of the subsets' values, not a standard error: where m is both sets' size every
    subset is the whole of both (MMD² ignores order) and there is no spread to measure, so the std is NaN
    (torch-fidelity reports ~0 there); where m is one set's size it reflects the other's subsampling only.
    """
    x, y = (t.cpu().numpy() for t in _pair(features_a, features_b))
    m = min(subset_size, len(x), len(y))
    if m < 2 or num_subsets < 1:
        raise ValueError(f"KID needs subsets of at least 2 rows and at least 1 subset, got {m} and {num_subsets}")
    rng = seed if isinstance(seed, (np.random.RandomState, np.random.Generator)) else np.random.RandomState(seed)
    values = np.empty(num_subsets)
    for i in range(num_subsets):
        ix = rng.choice(len(x), m, replace=False)
        values[i] = _mmd2_poly(x[ix], y[rng.choice(len(y), m, replace=False)])
    spread = float(values.std()) if m < max(len(x), len(y)) else math.nan  # (docstring)
    return KID(float(values.mean()), spread, m, num_subsets, values)


# --- precision / recall ---------------------------------------------------------------------
class PrecisionRecall(NamedTuple):
    precision: float
    recall: float


def _sqdist(a: Tensor, a2: Tensor, b: Tensor, b2: Tensor) -> Tensor:
    return (a2[:, None] + b2[None, :] - 2.0 * (a @ b.T)).clamp_min_(0.0)


def _knn_radii2(x: Tensor, k: int, batch_size: int) -> Tensor:
    n = x.shape[0]
    if n <= k:
        raise ValueError(f"k-NN radii with k = {k} need more than {k} points, got {n}")
    sq = (x * x).sum(1)
    out = torch.empty(n, dtype=x.dtype, device=x.device)
    for i in range(0, n, batch_size):
        best = None  # the k + 1 smallest squared distances so far (the point itself included)
        for j in range(0, n, batch_size):
            rows, cols = slice(i, i + batch_size), slice(j, j + batch_size)
            d2 = _sqdist(x[rows], sq[rows], x[cols], sq[cols])
            cand = d2 if best is None else torch.cat([best, d2], 1)
            best = torch.topk(cand, min(k + 1, cand.shape[1]), dim=1, largest=False).values
        out[i:i + batch_size] = best[:, k]
    return out


def knn_radii(features, k: int = 3, batch_size: int = 1024) -> Tensor:
    """Distance of each row to its k-th nearest other row (float64), in blocks of ``batch_size`` rows
    against ``batch_size`` columns (memory O(batch_size²), never N²)."""
    return _knn_radii2(_matrix(features), k, batch_size).sqrt()


def _covered(points: Tensor, centers: Tensor, radii2: Tensor, batch_size: int) -> Tensor:
    """Per point: whether it lies in some ball ‖p − c_j‖ ≤ r_j."""
    p2, c2 = (points * points).sum(1), (centers * centers).sum(1)
    hit = torch.zeros(points.shape[0], dtype=torch.bool, device=points.device)
    for i in range(0, points.shape[0], batch_size):
        for j in range(0, centers.shape[0], batch_size):
            rows, cols = slice(i, i + batch_size), slice(j, j + batch_size)
            hit[rows] |= (_sqdist(points[rows], p2[rows], centers[cols], c2[cols]) <= radii2[None, cols]).any(1)
    return hit


def precision_recall(reference, generated, *, k: int = 3, batch_size: int = 1024) -> PrecisionRecall:
    r"""Improved precision and recall (docs/math.md (24.4)), Kynkäänniemi et al. arXiv:1904.06991.

    precision: fraction of generated rows inside the union of the reference rows' k-NN balls;
    recall: fraction of reference rows inside the union of the generated rows' k-NN balls. A ball
    around x has radius ‖x − NN_k(x)‖ within its own set (the point itself not counted); a point on a
    sphere counts as inside. Distances are computed blockwise in float64 on the inputs' device.
    """
    real, fake = _pair(reference, generated, ("reference", "generated"))
    precision = _covered(fake, real, _knn_radii2(real, k, batch_size), batch_size).double().mean()
    recall = _covered(real, fake, _knn_radii2(fake, k, batch_size), batch_size).double().mean()
    return PrecisionRecall(float(precision), float(recall))


class DensityCoverage(NamedTuple):
    density: float
    coverage: float


def _ball_hits(fake: Tensor, real: Tensor, radii2: Tensor, batch_size: int) -> tuple[Tensor, Tensor]:
    """(per generated row: how many reference balls hold it, per reference ball: whether any row is in it)."""
    r2, f2 = (real * real).sum(1), (fake * fake).sum(1)
    counts = torch.zeros(fake.shape[0], dtype=torch.int64, device=real.device)
    hit = torch.zeros(real.shape[0], dtype=torch.bool, device=real.device)
    for i in range(0, fake.shape[0], batch_size):
        for j in range(0, real.shape[0], batch_size):
            rows, cols = slice(i, i + batch_size), slice(j, j + batch_size)
            within = _sqdist(fake[rows], f2[rows], real[cols], r2[cols]) <= radii2[None, cols]
            counts[rows] += within.sum(1)
            hit[cols] |= within.any(0)
    return counts, hit


def ball_hits(reference, generated, *, k: int, batch_size: int = 1024) -> tuple[Tensor, Tensor]:
    """(counts, covered): for each generated row the number of reference rows whose k-NN ball holds
    it (int64, (M,)), and for each reference ball whether a generated row lies in it (bool, (N,)).
    Precision (k = 3) is the fraction of counts > 0, density (k = 5) Σ counts / (k M), coverage
    (k = 5) the fraction covered. The counts are per generated row, so a bootstrap over generated
    rows resamples them without recomputing a distance."""
    real, fake = _pair(reference, generated, ("reference", "generated"))
    return _ball_hits(fake, real, _knn_radii2(real, k, batch_size), batch_size)


def density_coverage(reference, generated, *, k: int = 5, batch_size: int = 1024) -> DensityCoverage:
    r"""Density and coverage (docs/math.md (24.6)), Naeem et al. arXiv:2002.09797, with the reference
    rows' k-NN balls B_i (radius as in :func:`precision_recall`; k = 5 as the paper recommends):

    density = (1/(k M)) Σ_j #{i : y_j ∈ B_i} over the M generated rows y_j (1 when the two sets
    have the same distribution, unbounded above); coverage = fraction of reference balls that hold
    at least one generated row.
    """
    real, fake = _pair(reference, generated, ("reference", "generated"))
    counts, hit = _ball_hits(fake, real, _knn_radii2(real, k, batch_size), batch_size)
    return DensityCoverage(float(counts.sum()) / (k * fake.shape[0]), float(hit.double().mean()))


# --- bootstrap --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    confidence: float
    n_resamples: int


def bootstrap_interval(statistic: Callable[..., float], *samples, n_resamples: int = 1000,
                       confidence: float = 0.95, seed: int = 0, method: str = "percentile") -> Interval:
    r"""Bootstrap interval (Efron 1979; docs/math.md (24.5)) of ``statistic(*samples)`` from
    ``n_resamples`` resamplings, each sample (rows, numpy or torch) drawn with replacement
    independently, from ``np.random.default_rng(seed)``; q_lo, q_hi the (1 ∓ confidence)/2 quantiles
    of the resampled statistic θ*:

    - ``"percentile"``: [q_lo, q_hi], for a statistic without a sample-size bias (a mean);
    - ``"basic"``: [2θ̂ − q_hi, 2θ̂ − q_lo], which carries the bias of θ* over θ̂ back to θ̂ over θ (the
      bootstrap principle): for a statistic biased in the sample size, such as the Fréchet distance
      (resamples repeat rows, so θ* > θ̂ nearly always), this is an interval for its infinite-sample
      value and can lie below the estimate θ̂."""
    if not samples or not 0.0 < confidence < 1.0 or n_resamples < 1 or method not in ("percentile", "basic"):
        raise ValueError(f"need a sample, 0 < confidence < 1, n_resamples ≥ 1 and method 'percentile' or 'basic', "
                         f"got {len(samples)} samples, {confidence}, {n_resamples}, {method!r}")
    rng = np.random.default_rng(seed)
    values = np.empty(n_resamples)
    for b in range(n_resamples):
        draws = [rng.integers(0, len(s), len(s)) for s in samples]
        values[b] = statistic(*(s[torch.from_numpy(i)] if isinstance(s, Tensor) else s[i]
                                for s, i in zip(samples, draws)))
    low, high = np.quantile(values, [(1.0 - confidence) / 2, (1.0 + confidence) / 2])
    estimate = float(statistic(*samples))
    if method == "basic":
        low, high = 2.0 * estimate - high, 2.0 * estimate - low
    return Interval(estimate, float(low), float(high), confidence, n_resamples)
