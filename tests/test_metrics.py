"""Benchmark metrics against their exact values (docs/math.md §6)."""
import math

import numpy as np
import pytest
import scipy.linalg
import torch

from diffsolve import GaussianMixture, make_schedule
from diffsolve.bench import metrics as M

F64 = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_sliced_w2_of_a_shift_is_the_projected_shift():
    # y = x + δ: every 1-D projection is a shift by θ·δ, so W2² = (θ·δ)² exactly for each θ and
    # SW2² = mean_θ (θ·δ)², whose expectation over the sphere is |δ|²/d.
    d, n = 6, 300
    x = torch.randn(n, d, dtype=F64, generator=_gen(0))
    delta = torch.tensor([0.3, -1.0, 0.5, 0.0, 2.0, -0.7], dtype=F64)
    theta = M.projections(d, 4000, seed=5)
    exact_for_these = float(((theta @ delta) ** 2).mean().sqrt())
    sw = M.sliced_wasserstein(x, x + delta, n_projections=4000, seed=5)
    assert sw == pytest.approx(exact_for_these, rel=1e-10)
    # and the projection average converges to |δ|/√d (relative MC error ~ 0.5/√4000 ≈ 1%)
    assert sw == pytest.approx(float(delta.norm()) / math.sqrt(d), rel=0.03)


def test_sliced_w2_basic_properties():
    x = torch.randn(200, 3, dtype=F64, generator=_gen(1))
    y = torch.randn(200, 3, dtype=F64, generator=_gen(2)) * 2
    assert M.sliced_wasserstein(x, x) == 0.0
    assert M.sliced_wasserstein(x, y) == pytest.approx(M.sliced_wasserstein(y, x), rel=1e-12)
    # permutation invariance and unequal sizes: x against x repeated twice has identical quantiles
    perm = torch.randperm(200, generator=_gen(3))
    assert M.sliced_wasserstein(x[perm], x) == pytest.approx(0.0, abs=1e-12)
    assert M.sliced_wasserstein(torch.cat([x, x]), x) == pytest.approx(0.0, abs=1e-12)  # (it was 0.085 × …)
    # unequal sizes: each 1-D W₂² exactly, the step quantile functions integrated (here against a fine grid)
    a, b = (torch.randn(n, 1, dtype=F64, generator=_gen(n)).sort(0).values for n in (5, 7))
    u = (torch.arange(10**6, dtype=F64) + 0.5) / 10**6
    fine = ((a[(u * 5).long(), 0] - b[(u * 7).long(), 0]) ** 2).mean()
    assert float(M._w2_sorted(a, b)) == pytest.approx(float(fine), rel=1e-5)


def _with_exact_moments(n, mean, cov, seed):
    """n points whose empirical mean and (n−1)-normalised covariance equal mean, cov exactly."""
    d = len(mean)
    z = torch.randn(n, d, dtype=F64, generator=_gen(seed))
    z = z - z.mean(0)
    c = z.T @ z / (n - 1)
    z = z @ torch.linalg.inv(torch.linalg.cholesky(c)).T  # whitened: covariance exactly I
    return mean + z @ torch.linalg.cholesky(cov).T


def _scipy_frechet(m1, c1, m2, c2):
    covmean = scipy.linalg.sqrtm(c1 @ c2).real
    return float(((m1 - m2) ** 2).sum() + np.trace(c1 + c2 - 2 * covmean))


@pytest.mark.parametrize("diag_target", [False, True])
def test_frechet_matches_closed_form(diag_target):
    d = 5
    g = _gen(4)
    a = torch.randn(d, d, dtype=F64, generator=g)
    c1 = a @ a.T / d + 0.1 * torch.eye(d, dtype=F64)
    m1 = torch.randn(d, dtype=F64, generator=g)
    m2 = torch.randn(d, dtype=F64, generator=g)
    if diag_target:
        v2 = torch.rand(d, dtype=F64, generator=g) + 0.2
        target, c2 = M.GaussianTarget(m2, v2), torch.diag(v2)
    else:
        b = torch.randn(d, d, dtype=F64, generator=g)
        c2 = b @ b.T / d + 0.2 * torch.eye(d, dtype=F64)
        target = M.GaussianTarget(m2, c2)
    x = _with_exact_moments(50, m1, c1, seed=7)
    want = _scipy_frechet(m1.numpy(), c1.numpy(), m2.numpy(), c2.numpy())
    assert M.frechet_distance(x, target, diagonal=False) == pytest.approx(want, rel=1e-8)
    # n < d uses the n×n Gram matrix: same value as the d×d route
    x_small = torch.randn(4, d, dtype=F64, generator=g)
    xm = x_small.mean(0)
    c_small = torch.cov(x_small.T)
    want_small = _scipy_frechet(xm.numpy(), c_small.numpy(), m2.numpy(), c2.numpy())
    assert M.frechet_distance(x_small, target, diagonal=False) == pytest.approx(want_small, rel=1e-6, abs=1e-9)


def test_frechet_diagonal_fit_in_target_eigenbasis():
    # target N(0, U diag(v) Uᵀ); samples with covariance U diag(w) Uᵀ and mean m exactly:
    # the diagonal-in-eigenbasis Fréchet distance is |m|² + Σ(√w − √v)², the full one too.
    d = 4
    U, _ = torch.linalg.qr(torch.randn(d, d, dtype=F64, generator=_gen(8)))
    v = torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=F64)
    w = torch.tensor([0.4, 1.5, 2.0, 1.0], dtype=F64)
    m = torch.tensor([0.1, 0.0, -0.2, 0.3], dtype=F64)
    target = M.GaussianTarget(torch.zeros(d, dtype=F64), U @ torch.diag(v) @ U.T)
    x = _with_exact_moments(40, m, U @ torch.diag(w) @ U.T, seed=9)
    want = float((m**2).sum() + ((w.sqrt() - v.sqrt()) ** 2).sum())
    assert M.frechet_distance(x, target, diagonal=True) == pytest.approx(want, rel=1e-9)
    assert M.frechet_distance(x, target, diagonal=False) == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("problem", ["gauss", "mixture"])
def test_frechet_of_exact_samples_shrinks_like_its_floor(problem):
    # exact samples: the Fréchet distance is pure finite-sample bias, O(1/n): 4× the samples, ~¼ the value
    if problem == "gauss":
        gm = GaussianMixture.image_gaussian((1, 6, 6))
    else:
        gm = GaussianMixture.random(d=8, n_modes=3, seed=1)
    target = M.GaussianTarget.from_mixture(gm)

    def avg(n):
        return np.mean([M.frechet_distance(gm.sample(n, generator=_gen(100 + s)), target) for s in range(12)])

    small, large = avg(100), avg(400)
    assert 0.15 < large / small < 0.4, (small, large)
    assert large < small


def test_mean_log_prob_and_rms():
    gm = GaussianMixture.ring()
    x = gm.sample(50, generator=_gen(0))
    assert M.mean_log_prob(x, gm) == pytest.approx(float(gm.log_prob(x).mean()), rel=1e-14)
    assert M.rms_error(x, x + 0.25) == pytest.approx(0.25, rel=1e-12)
    with pytest.raises(ValueError, match="shapes differ"):
        M.rms_error(x, x[:3])


@pytest.mark.parametrize("schedule", ["ddpm"])
def test_gaussian_closed_form_equals_adaptive_reference(schedule):
    # Two independent routes to the exact ODE solution of a single Gaussian: the closed form in its
    # eigenbasis and the dopri5 solve in λ through the exact denoiser (docs/math.md (3.3)).
    d = 5
    g = _gen(11)
    a = torch.randn(d, d, dtype=F64, generator=g)
    gm = GaussianMixture(torch.ones(1), torch.randn(1, d, dtype=F64, generator=g),
                         (a @ a.T / d + 0.05 * torch.eye(d, dtype=F64))[None])
    sch = make_schedule(schedule)
    den = gm.denoiser(sch)
    x_T = float(sch.sigma(sch.t_max)) * torch.randn(6, d, dtype=F64, generator=g)
    closed = M.reference_solution(den, x_T, sch.t_max, sch.t_min, mixture=gm, denoise_final=True)
    numeric = M.reference_solution(den, x_T, sch.t_max, sch.t_min, tol=1e-9, denoise_final=True)
    scale = float(closed.abs().max())
    assert (closed - numeric).abs().max() < 1e-6 * scale


def test_reference_is_independent_of_the_batch():
    # per-sample error control: a sample's reference does not depend on which batch it is in
    gm = GaussianMixture.ring()
    sch = make_schedule("vp")
    den = gm.denoiser(sch)
    x_T = float(sch.sigma(sch.t_max)) * torch.randn(6, 2, dtype=F64, generator=_gen(3))
    full = M.reference_solution(den, x_T, sch.t_max, sch.t_min, tol=1e-6)
    half = torch.cat([M.reference_solution(den, x_T[:2], sch.t_max, sch.t_min, tol=1e-6),
                      M.reference_solution(den, x_T[2:], sch.t_max, sch.t_min, tol=1e-6)])
    torch.testing.assert_close(full, half, rtol=0, atol=1e-12)


def test_projections_are_not_the_problems_own_draws():
    """The sliced-W₂ directions come from a stream of their own: with the same seed as a problem's
    torch.randn, mix64's eight means were its first eight directions (SW₂ ~20 % high)."""
    import diffsolve as ds

    means = ds.GaussianMixture.random(d=64, n_modes=8, seed=0).means
    theta = M.projections(64, 512, 0)
    cos = (means / means.norm(dim=1, keepdim=True)) @ theta.T
    assert float(cos.abs().max()) < 0.7
