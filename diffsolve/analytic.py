r"""Analytic ground truth: Gaussian mixtures under any schedule (docs/math.md §6).

Data p_0 = Σ_k w_k N(μ_k, Σ_k) gives, for x_t = α_t x_0 + σ_t ε,

    p_t = Σ_k w_k N(α_t μ_k, α_t² Σ_k + σ_t² I),

so the score, the posterior mean E[x_0 | x_t] (hence ε, v and the flow velocity), log p_t and
exact samples are known in closed form at every t. Each covariance is diagonalised once,
Σ_k = U_k diag(s_k) U_kᵀ, after which every time costs one projection per component:
C_k(t) = U_k diag(α² s_k + σ²) U_kᵀ. Responsibilities use log-sum-exp, so the class is stable in
thousands of dimensions. All arithmetic is float64.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ._numbers import check_int, check_number
from .denoiser import Denoiser
from .schedules import Schedule, make_schedule

__all__ = ["GaussianMixture"]

_F64 = torch.float64


class GaussianMixture:
    """Mixture of K Gaussians in d dimensions.

    Args:
        weights: (K,) positive, normalised internally.
        means: (K, d).
        covs: (K, d, d) full covariances, (K, d) diagonal variances, or a scalar variance shared
            by every component and coordinate. Must be symmetric positive definite.
        shape: optional event shape (product d) for samples, e.g. (3, 32, 32); default (d,).
    """

    def __init__(self, weights, means, covs, shape=None):
        means = torch.as_tensor(means, dtype=_F64)
        if means.dim() == 1:
            means = means[None]
        if means.dim() != 2:
            raise ValueError(f"means must have shape (K, d), got {tuple(means.shape)}")
        K, d = means.shape
        if K == 0 or d == 0:
            raise ValueError(f"a mixture needs at least one mode of at least one dimension: means have shape {(K, d)}")
        if not torch.isfinite(means).all():
            raise ValueError("the means must be finite")
        weights = torch.as_tensor(weights, dtype=_F64).flatten()
        if weights.shape != (K,):
            raise ValueError(f"weights must have shape ({K},) to match means {tuple(means.shape)}, got {tuple(weights.shape)}")
        if (weights <= 0).any() or not torch.isfinite(weights).all():
            raise ValueError("mixture weights must be positive and finite")
        covs = torch.as_tensor(covs, dtype=_F64)
        if not torch.isfinite(covs).all():
            raise ValueError("the covariances must be finite")
        if covs.dim() == 0:
            covs = covs.expand(K, d).clone()
        if covs.shape == (K, d):
            if (covs <= 0).any():
                raise ValueError("diagonal variances must be positive")
            self.eigvals, self.eigvecs = covs.clone(), None
        elif covs.shape == (K, d, d):
            if not torch.allclose(covs, covs.transpose(1, 2), atol=1e-10):
                raise ValueError("covariance matrices must be symmetric")
            evals, evecs = torch.linalg.eigh(covs)
            if (evals <= 0).any():
                raise ValueError("covariance matrices must be positive definite")
            self.eigvals, self.eigvecs = evals, evecs
        else:
            raise ValueError(f"covs must have shape ({K}, {d}, {d}), ({K}, {d}) or be a scalar, got {tuple(covs.shape)}")
        self.log_weights = torch.log(weights / weights.sum())
        self.means = means
        self.K, self.d = K, d
        self.shape = tuple(shape) if shape is not None else (d,)
        if math.prod(self.shape) != d:
            raise ValueError(f"shape {self.shape} does not have {d} elements")

    # --- helpers -----------------------------------------------------------------------
    def _flat(self, x) -> Tensor:
        x = torch.as_tensor(x)
        if tuple(x.shape[1:]) != self.shape and not (x.dim() == 2 and x.shape[1] == self.d):
            raise ValueError(f"x must have shape (batch, {', '.join(map(str, self.shape))}), got {tuple(x.shape)}")
        return x.reshape(x.shape[0], self.d).to(_F64)

    def _coeffs(self, x: Tensor, t, schedule):
        if t is None:
            a = s = None
            return torch.ones((), dtype=_F64), torch.zeros((), dtype=_F64)
        schedule = make_schedule(schedule) if schedule is not None else None
        if schedule is None:
            raise ValueError("a time t needs a schedule")
        t = schedule.check_time(t).to(x.device)
        a, s = schedule.alpha(t), schedule.sigma(t)
        if a.dim() == 1:
            a, s = a[:, None], s[:, None]
        return a, s

    def _components(self, x: Tensor, a, s):
        """All components at once: log N(x; α μ_k, C_k) as (n, K), and C_k^{-1}(x − α μ_k) as (K, n, d)."""
        dev = x.device
        lam = a * a * self.eigvals.to(dev)[:, None, :] + s * s  # (K, n or 1, d) variances in each eigenbasis
        r = x[None] - a * self.means.to(dev)[:, None, :]  # (K, n, d)
        if self.eigvecs is not None:
            U = self.eigvecs.to(dev)
            r = torch.bmm(r, U)
        maha = (r * r / lam).sum(-1)
        logdet = torch.log(lam).sum(-1)
        logps = -0.5 * (maha + logdet + self.d * math.log(2 * math.pi))  # (K, n)
        w = r / lam
        if self.eigvecs is not None:
            w = torch.bmm(w, U.transpose(1, 2))
        return logps.T, w

    # --- public API ----------------------------------------------------------------------
    def log_prob(self, x, t=None, schedule: Schedule | str | None = None) -> Tensor:
        """log p_t(x) (t=None: the data distribution p_0). x: (n, *shape) → (n,)."""
        xf = self._flat(x)
        a, s = self._coeffs(xf, t, schedule)
        logps, _ = self._components(xf, a, s)
        return torch.logsumexp(logps + self.log_weights.to(xf.device), -1)

    def score(self, x, t, schedule) -> Tensor:
        """∇ log p_t(x) = −Σ_k r_k(x) C_k^{-1}(x − α μ_k), r_k the posterior responsibilities."""
        xf = self._flat(x)
        a, s = self._coeffs(xf, t, schedule)
        logps, whitened = self._components(xf, a, s)
        r = torch.softmax(logps + self.log_weights.to(xf.device), -1)
        out = -torch.einsum("nk,knd->nd", r, whitened)
        return out.reshape(x.shape)

    def x0(self, x, t, schedule) -> Tensor:
        """E[x_0 | x_t = x] by Tweedie's formula: (x + σ² ∇log p_t(x)) / α."""
        xf = self._flat(x)
        a, s = self._coeffs(xf, t, schedule)
        sc = self.score(xf, t, schedule)
        return ((xf + s * s * sc) / a).reshape(x.shape)

    def sample(self, n: int, t=None, schedule=None, generator: torch.Generator | None = None,
               device=None) -> Tensor:
        """n exact samples of p_t (t=None: of p_0), shape (n, *shape), float64."""
        n = check_int("n (samples)", n, minimum=0)
        if n == 0:
            return torch.empty(0, *self.shape, dtype=_F64, device=device)
        g = generator
        comp = torch.multinomial(self.log_weights.exp(), n, replacement=True, generator=g)
        z = torch.randn(n, self.d, dtype=_F64, generator=g)
        x0 = torch.empty(n, self.d, dtype=_F64)
        for k in range(self.K):
            m = comp == k
            zk = z[m] * self.eigvals[k].sqrt()
            x0[m] = self.means[k] + (zk if self.eigvecs is None else zk @ self.eigvecs[k].T)
        if t is not None:
            sch = make_schedule(schedule)
            a, s = sch.alpha(t), sch.sigma(t)
            if a.dim() == 1:
                a, s = a[:, None], s[:, None]
            x0 = a * x0 + s * torch.randn(n, self.d, dtype=_F64, generator=g)
        return x0.reshape(n, *self.shape).to(device)

    def mean(self) -> Tensor:
        return (self.log_weights.exp()[:, None] * self.means).sum(0)

    def covariance(self) -> Tensor:
        """Covariance of p_0 (law of total variance), (d, d)."""
        w = self.log_weights.exp()
        mu = self.mean()
        cov = torch.zeros(self.d, self.d, dtype=_F64)
        for k in range(self.K):
            ck = torch.diag(self.eigvals[k]) if self.eigvecs is None else \
                self.eigvecs[k] @ torch.diag(self.eigvals[k]) @ self.eigvecs[k].T
            dm = self.means[k] - mu
            cov += w[k] * (ck + torch.outer(dm, dm))
        return cov

    def denoiser(self, schedule, prediction: str = "eps") -> Denoiser:
        """A :class:`Denoiser` whose network is exact: it outputs the true ``prediction`` at (x, t).

        The network receives solver time t itself (``time_label="t"``) and works in float64.
        """
        schedule = make_schedule(schedule)
        holder = {}

        def net(x, t):
            x0 = self.x0(x, t, schedule)
            return holder["d"].convert(x0, x, t, "x0", prediction)

        d = Denoiser(net, schedule, prediction=prediction, time_label="t", net_dtype=_F64, shape=self.shape)
        holder["d"] = d
        return d

    # --- built-in problems ---------------------------------------------------------------
    @classmethod
    def ring(cls, n_modes: int = 8, radius: float = 2.0, std: float = 0.1) -> "GaussianMixture":
        """2-D mixture of ``n_modes`` equal isotropic Gaussians on a circle."""
        n_modes = check_int("n_modes", n_modes)
        std, radius = check_number("std", std, positive=True), check_number("radius", radius)
        ang = torch.arange(n_modes, dtype=_F64) * (2 * math.pi / n_modes)
        means = radius * torch.stack([ang.cos(), ang.sin()], -1)
        return cls(torch.ones(n_modes), means, torch.full((n_modes, 2), std**2, dtype=_F64))

    @classmethod
    def random(cls, d: int = 64, n_modes: int = 8, seed: int = 0, spread: float = 1.0) -> "GaussianMixture":
        """Mixture with random means and random full covariances (eigenvalues in [0.01, 0.5])."""
        g = torch.Generator().manual_seed(seed)
        means = spread * torch.randn(n_modes, d, dtype=_F64, generator=g)
        q, _ = torch.linalg.qr(torch.randn(n_modes, d, d, dtype=_F64, generator=g))
        ev = 0.01 + 0.49 * torch.rand(n_modes, d, dtype=_F64, generator=g)
        covs = q @ torch.diag_embed(ev) @ q.transpose(1, 2)
        covs = 0.5 * (covs + covs.transpose(1, 2))
        w = 0.5 + torch.rand(n_modes, dtype=_F64, generator=g)
        return cls(w, means, covs)

    @classmethod
    def image_gaussian(cls, shape=(3, 32, 32), exponent: float = 2.0, seed: int = 0) -> "GaussianMixture":
        """One Gaussian with image-like variances: diagonal in the pixel basis, pixel (y, x) having
        variance ∝ (1 + |f|)^(−exponent) with f the FFT frequency index of its position, normalised to
        unit mean variance; mean 0.1·N(0, I) (docs/math.md §21)."""
        c, h, w = shape
        fy = torch.fft.fftfreq(h, dtype=_F64)[:, None] * h
        fx = torch.fft.fftfreq(w, dtype=_F64)[None, :] * w
        spec = (1.0 + (fy**2 + fx**2).sqrt()) ** (-exponent)
        var = spec.expand(c, h, w).reshape(-1)
        var = var / var.mean()
        g = torch.Generator().manual_seed(seed)
        mean = 0.1 * torch.randn(c * h * w, dtype=_F64, generator=g)
        return cls(torch.ones(1), mean[None], var[None], shape=shape)
