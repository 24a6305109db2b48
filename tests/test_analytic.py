"""The analytic Gaussian mixture (docs/math.md §6): p_t = Σ_k w_k N(α_t μ_k, α_t² Σ_k + σ_t² I).

Every closed form is checked against something computed another way: the score against autograd
of log p_t, x0 against the dense-matrix posterior mean and Tweedie's formula with that autograd
score, log p_t against torch.distributions and against numerical integration, samples against
mean()/covariance() within computed standard errors.
"""
import math

import pytest
import torch

from diffsolve.analytic import GaussianMixture
from diffsolve.schedules import EDMSchedule, FlowSchedule, VPSchedule

F64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    # small linear algebra: one thread is ~100x faster than two on a loaded 2-core machine
    torch.set_num_threads(1)


VP, EDM, FLOW = VPSchedule(), EDMSchedule(), FlowSchedule()


def _full_mixture():
    g = torch.Generator().manual_seed(5)
    a = torch.randn(3, 3, 3, dtype=F64, generator=g)
    covs = a @ a.transpose(1, 2) + 0.1 * torch.eye(3, dtype=F64)
    return GaussianMixture([0.2, 0.5, 0.3], torch.randn(3, 3, dtype=F64, generator=g), covs)


MIXTURES = {
    "full_3d": _full_mixture,
    "diag_ring": GaussianMixture.ring,
    "random_64d": lambda: GaussianMixture.random(d=64, n_modes=8, seed=1),
}


def _autograd_score(gm, x, t, s):
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(gm.log_prob(x, t, s).sum(), x)
    return g


def _times(s):
    return [s.t_min, 0.05 * s.t_max + 0.95 * s.t_min, 0.5 * (s.t_min + s.t_max), s.t_max]


@pytest.mark.parametrize("mix", list(MIXTURES))
@pytest.mark.parametrize("s", [VP, EDM, FLOW], ids=["vp", "edm", "flow"])
def test_score_is_gradient_of_log_prob(mix, s):
    """score(x, t) = ∇_x log p_t(x) (docs/math.md §6) by autograd, scalar and per-sample t, points drawn
    from p_t itself and from far outside it."""
    gm = MIXTURES[mix]()
    g = torch.Generator().manual_seed(6)
    for t in _times(s) + [torch.tensor(_times(s), dtype=F64)]:
        n = 4
        x = gm.sample(n, t, s, generator=g)
        x = torch.cat([x, 3 * x + 1])
        tt = torch.cat([t, t]) if isinstance(t, torch.Tensor) else t
        got, ref = gm.score(x, tt, s), _autograd_score(gm, x, tt, s)
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9 * float(ref.abs().max()))


def _dense_posterior_mean(gm, x, t, s):
    """E[x0 | x_t = x] = Σ_k r_k (μ_k + α Σ_k C_k⁻¹ (x − α μ_k)), C_k = α² Σ_k + σ² I, with
    dense matrices and torch.distributions for the responsibilities r_k."""
    a, sg = float(s.alpha(t)), float(s.sigma(t))
    eye = torch.eye(gm.d, dtype=F64)
    covs = [gm.eigvecs[k] @ torch.diag(gm.eigvals[k]) @ gm.eigvecs[k].T if gm.eigvecs is not None
            else torch.diag(gm.eigvals[k]) for k in range(gm.K)]
    logr, means = [], []
    for k in range(gm.K):
        c = a * a * covs[k] + sg * sg * eye
        mvn = torch.distributions.MultivariateNormal(a * gm.means[k], covariance_matrix=c)
        logr.append(gm.log_weights[k] + mvn.log_prob(x))
        means.append(gm.means[k] + a * torch.linalg.solve(c, (x - a * gm.means[k]).T).T @ covs[k])
    r = torch.softmax(torch.stack(logr, -1), -1)
    return sum(r[:, k, None] * means[k] for k in range(gm.K)), torch.logsumexp(torch.stack(logr, -1), -1)


@pytest.mark.parametrize("mix", list(MIXTURES))
def test_x0_is_posterior_mean_and_tweedie(mix):
    """x0(x, t) = E[x0 | x_t = x] computed with dense matrices; = Tweedie (x + σ² ∇log p_t)/α with
    the autograd score; and log_prob matches torch.distributions (docs/math.md §6)."""
    gm = MIXTURES[mix]()
    g = torch.Generator().manual_seed(7)
    for s in (VP, EDM):
        for t in _times(s):
            x = gm.sample(5, t, s, generator=g)
            ref, ref_logp = _dense_posterior_mean(gm, x, t, s)
            got = gm.x0(x, t, s)
            torch.testing.assert_close(got, ref, rtol=1e-8, atol=1e-8)
            a, sg = float(s.alpha(t)), float(s.sigma(t))
            tweedie = (x + sg * sg * _autograd_score(gm, x, t, s)) / a
            torch.testing.assert_close(got, tweedie, rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(gm.log_prob(x, t, s), ref_logp, rtol=1e-10, atol=1e-9)


def _z_scores(samples, mean, cov):
    """z-scores of the sample mean and sample second moments against the exact ones, each with
    its own standard error estimated from the samples."""
    n = samples.shape[0]
    z_mean = (samples.mean(0) - mean) / (samples.var(0) / n).sqrt()
    c = samples - mean
    prod = c[:, :, None] * c[:, None, :]
    z_cov = (prod.mean(0) - cov) / (prod.var(0) / n).sqrt()
    return z_mean, z_cov


@pytest.mark.parametrize("mix", ["full_3d", "diag_ring"])
def test_sample_moments(mix):
    """sample(n) has mean() and covariance(), and sample(n, t) has α·mean and α²Σ + σ²I, each
    within 5 standard errors; mean()/covariance() agree with the law of total variance."""
    gm = MIXTURES[mix]()
    g = torch.Generator().manual_seed(8)
    n = 100_000
    mean, cov = gm.mean(), gm.covariance()
    z_m, z_c = _z_scores(gm.sample(n, generator=g), mean, cov)
    assert float(z_m.abs().max()) < 5 and float(z_c.abs().max()) < 5, (z_m, z_c)
    for t in (0.3, 0.8):
        a, sg = float(VP.alpha(t)), float(VP.sigma(t))
        z_m, z_c = _z_scores(gm.sample(n, t, VP, generator=g), a * mean, a * a * cov + sg * sg * torch.eye(gm.d, dtype=F64))
        assert float(z_m.abs().max()) < 5 and float(z_c.abs().max()) < 5, (t, z_m, z_c)
    # a biased covariance (e.g. the within-component part only) would be detected
    w = gm.log_weights.exp()
    assert float(((gm.covariance() - sum(w[k] * _cov_k(gm, k) for k in range(gm.K))).abs()).max()) > 0.1


def _cov_k(gm, k):
    if gm.eigvecs is None:
        return torch.diag(gm.eigvals[k])
    return gm.eigvecs[k] @ torch.diag(gm.eigvals[k]) @ gm.eigvecs[k].T


def test_ring_moments_closed_form():
    """Ring of 8 modes of radius r, std s: mean 0, covariance (r²/2 + s²) I."""
    gm = GaussianMixture.ring(n_modes=8, radius=2.0, std=0.1)
    torch.testing.assert_close(gm.mean(), torch.zeros(2, dtype=F64), rtol=0, atol=1e-15)
    torch.testing.assert_close(gm.covariance(), (2.0 + 0.01) * torch.eye(2, dtype=F64), rtol=1e-14, atol=1e-15)


def test_per_sample_time_sampling():
    """sample(n, t) with per-sample t (n,): sample i is from p_{t_i}."""
    gm = GaussianMixture([1.0], [[2.0]], [[0.25]])
    n = 40_000
    t = torch.where(torch.arange(n) % 2 == 0, torch.tensor(0.2, dtype=F64), torch.tensor(0.9, dtype=F64))
    x = gm.sample(n, t, VP, generator=torch.Generator().manual_seed(9))[:, 0]
    for tv, xs in ((0.2, x[0::2]), (0.9, x[1::2])):
        a, sg = float(VP.alpha(tv)), float(VP.sigma(tv))
        assert abs(float(xs.mean()) - 2 * a) < 5 * math.sqrt((0.25 * a * a + sg * sg) / len(xs))
        var = 0.25 * a * a + sg * sg
        assert abs(float(xs.var()) - var) < 5 * var * math.sqrt(2 / len(xs))


@pytest.mark.parametrize("t", [None, 1e-3, 0.3, 1.0])
def test_log_prob_1d_integrates_to_one(t):
    """∫ p_t(x) dx = 1 (trapezoid on a fine grid) and log p_t equals the 1-D mixture formula."""
    gm = GaussianMixture([0.3, 0.7, 1.0], [[-2.0], [0.5], [3.0]], [[0.04], [1.0], [0.01]])
    x = torch.linspace(-12, 12, 240_001, dtype=F64)[:, None]
    logp = gm.log_prob(x, t, VP if t is not None else None)
    assert abs(float(torch.trapezoid(logp.exp(), x[:, 0])) - 1.0) < 1e-9
    a, sg = (1.0, 0.0) if t is None else (float(VP.alpha(t)), float(VP.sigma(t)))
    w = torch.tensor([0.3, 0.7, 1.0], dtype=F64) / 2.0
    mu = torch.tensor([-2.0, 0.5, 3.0], dtype=F64)
    var = a * a * torch.tensor([0.04, 1.0, 0.01], dtype=F64) + sg * sg
    ref = torch.logsumexp(torch.log(w) - 0.5 * (x - a * mu) ** 2 / var - 0.5 * torch.log(2 * math.pi * var), -1)
    torch.testing.assert_close(logp, ref, rtol=1e-12, atol=1e-12)


def test_log_prob_2d_integrates_to_one():
    """The ring's p_t integrates to 1 on a 2-D grid at several t (docs/math.md §6)."""
    gm = GaussianMixture.ring()
    for t, half, n in ((None, 3.0, 601), (0.05, 4.0, 601), (0.5, 7.0, 281)):
        u = torch.linspace(-half, half, n, dtype=F64)
        xy = torch.stack(torch.meshgrid(u, u, indexing="ij"), -1).reshape(-1, 2)
        p = gm.log_prob(xy, t, VP if t is not None else None).exp().reshape(n, n)
        assert abs(float(torch.trapezoid(torch.trapezoid(p, u), u)) - 1.0) < 1e-6, t


def test_image_gaussian_3072d_stable():
    """3×32×32 Gaussian with a power-law spectrum: no NaN/Inf anywhere in the range, and score,
    x0 and log p_t equal the diagonal-Gaussian closed forms; samples have the right variance."""
    gm = GaussianMixture.image_gaussian((3, 32, 32))
    assert gm.d == 3072
    var, mu = gm.eigvals[0], gm.means[0]
    g = torch.Generator().manual_seed(10)
    for s in (VP, EDM):
        for t in _times(s):
            x = gm.sample(3, t, s, generator=g)
            assert x.shape == (3, 3, 32, 32)
            a, sg = float(s.alpha(t)), float(s.sigma(t))
            c = a * a * var + sg * sg
            xf = x.reshape(3, -1)
            for out in (gm.score(x, t, s), gm.x0(x, t, s), gm.log_prob(x, t, s)):
                assert bool(torch.isfinite(out).all())
            torch.testing.assert_close(gm.score(x, t, s).reshape(3, -1), -(xf - a * mu) / c, rtol=1e-12, atol=0)
            ref = -0.5 * (((xf - a * mu) ** 2 / c) + torch.log(2 * math.pi * c)).sum(-1)
            torch.testing.assert_close(gm.log_prob(x, t, s), ref, rtol=1e-12, atol=0)
    x = gm.sample(2000, generator=g).reshape(2000, -1)
    z = (x.var(0) - var) / (var * math.sqrt(2 / 2000))
    assert abs(float(z.mean())) * math.sqrt(3072) < 6  # the mean of 3072 nearly independent z-scores


def test_3072d_two_component_mixture_responsibilities():
    """Two far-apart components in 3072-D: component log-densities of order −1e4, yet x0 and
    score are finite and equal those of the component the point came from (log-sum-exp)."""
    d = 3072
    means = torch.stack([torch.full((d,), 1.0, dtype=F64), torch.full((d,), -1.0, dtype=F64)])
    gm = GaussianMixture([0.5, 0.5], means, torch.full((2, d), 0.05, dtype=F64), shape=(3, 32, 32))
    one = GaussianMixture([1.0], means[:1], torch.full((1, d), 0.05, dtype=F64), shape=(3, 32, 32))
    g = torch.Generator().manual_seed(11)
    x = one.sample(2, 0.2, VP, generator=g) + 0.5
    for f in ("x0", "score"):
        got, ref = getattr(gm, f)(x, 0.2, VP), getattr(one, f)(x, 0.2, VP)
        assert bool(torch.isfinite(got).all())
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    lp = gm.log_prob(x, 0.2, VP)
    assert bool(torch.isfinite(lp).all()) and float(lp.max()) < -1000
    torch.testing.assert_close(lp, one.log_prob(x, 0.2, VP) + math.log(0.5), rtol=1e-12, atol=0)


def test_denoiser_shape_and_sample_shape():
    gm = GaussianMixture.image_gaussian((1, 4, 4))
    d = gm.denoiser(VP, "v")
    assert d.shape == (1, 4, 4) and d.prediction == "v"
    x = gm.sample(2, 0.5, VP)
    assert d.v(x, 0.5).shape == (2, 1, 4, 4)


# --- bad input ----------------------------------------------------------------------------

def test_mismatched_parameters():
    m = torch.zeros(2, 3, dtype=F64)
    with pytest.raises(ValueError, match=r"weights must have shape \(2,\)"):
        GaussianMixture([1.0, 1.0, 1.0], m, 1.0)
    with pytest.raises(ValueError, match="positive"):
        GaussianMixture([1.0, -1.0], m, 1.0)
    with pytest.raises(ValueError, match=r"means must have shape \(K, d\)"):
        GaussianMixture([1.0], torch.zeros(1, 2, 2), 1.0)
    with pytest.raises(ValueError, match=r"covs must have shape \(2, 3, 3\), \(2, 3\)"):
        GaussianMixture([1.0, 1.0], m, torch.ones(2, 2))
    with pytest.raises(ValueError, match="diagonal variances must be positive"):
        GaussianMixture([1.0, 1.0], m, torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]))
    nonsym = torch.eye(3, dtype=F64).repeat(2, 1, 1)
    nonsym[0, 0, 1] = 0.5
    with pytest.raises(ValueError, match="symmetric"):
        GaussianMixture([1.0, 1.0], m, nonsym)
    indefinite = torch.eye(3, dtype=F64).repeat(2, 1, 1)
    indefinite[1, 0, 1] = indefinite[1, 1, 0] = 2.0  # eigenvalues 3, −1, 1
    with pytest.raises(ValueError, match="positive definite"):
        GaussianMixture([1.0, 1.0], m, indefinite)
    with pytest.raises(ValueError, match="does not have 3 elements"):
        GaussianMixture([1.0, 1.0], m, 1.0, shape=(2, 2))
    gm = GaussianMixture([1.0, 1.0], m, 1.0)
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 3\)"):
        gm.log_prob(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="needs a schedule"):
        gm.log_prob(torch.zeros(4, 3), 0.5)
    with pytest.raises(ValueError, match="valid range"):
        gm.score(torch.zeros(4, 3), 2.0, VP)


def test_bad_mixtures_are_refused_where_they_are_made():
    """A mixture with no mode, a negative spread or non-finite parameters is an error at construction (they
    were accepted, and sampling then blamed "the network"); zero samples is an empty batch."""
    bad = [lambda: GaussianMixture.ring(n_modes=0), lambda: GaussianMixture.ring(std=-1.0),
           lambda: GaussianMixture(torch.ones(1), torch.tensor([[float("nan"), 0.0]]), 1.0),
           lambda: GaussianMixture(torch.ones(1), torch.zeros(1, 2), float("inf")),
           lambda: GaussianMixture.ring().sample(-1)]
    for make in bad:
        with pytest.raises(ValueError):
            make()
    assert GaussianMixture.ring().sample(0).shape == (0, 2)
