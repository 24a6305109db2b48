"""Exact likelihood through the probability-flow ODE (docs/math.md §5, equations 5.1–5.3).

Ground truth: analytic Gaussian mixtures (docs/math.md §6), whose log p_t is known in closed form.
"""
import math

import pytest
import torch
from scipy.stats import norm as normal

from diffsolve import EDMSchedule, GaussianMixture, make_schedule
from diffsolve.ode import ProbabilityFlowODE
from diffsolve.likelihood import (LikelihoodResult, decode, encode, gaussian_prior, log_likelihood, prior_gap,
                                  round_trip)

RING = GaussianMixture.ring()
RAND64 = GaussianMixture.random(d=64, n_modes=8, seed=0)


def _exact_prior(gm, sch):
    return lambda z: gm.log_prob(z, sch.t_max, sch)


@pytest.mark.parametrize("gm,n", [(RING, 8), (RAND64, 3)], ids=["ring2d", "random64d"])
@pytest.mark.parametrize("schedule", ["vp", "ve", "flow"])
def test_exact_divergence_matches_analytic_log_prob(gm, n, schedule):
    """docs/math.md (5.2) with the exact divergence and the exact prior: error ≤ 1e-3 nats/dim at defaults."""
    sch = make_schedule(schedule)
    den = gm.denoiser(sch, "eps")
    x = gm.sample(n, generator=torch.Generator().manual_seed(3))
    r = log_likelihood(den, x, divergence="exact", prior=_exact_prior(gm, sch))
    truth = gm.log_prob(x, sch.t_min, sch)
    err = (r.log_prob - truth).abs().mean() / gm.d
    assert err <= 1e-3, f"{schedule}: mean |error| {err:.2e} nats/dim"
    assert isinstance(r, LikelihoodResult) and r.stderr is None
    assert torch.allclose(r.bits_per_dim, -r.log_prob / (gm.d * math.log(2)))
    assert torch.allclose(r.log_prob, r.prior_log_prob + r.delta_log_prob)
    assert r.nfe.shape == (n,) and bool((r.nfe > 10).all())
    # per-sample steps (the default): a sample's value does not depend on its batch
    one = log_likelihood(den, x[1:2], divergence="exact", prior=_exact_prior(gm, sch))
    torch.testing.assert_close(one.log_prob, r.log_prob[1:2], rtol=0, atol=1e-12)
    assert int(one.nfe[0]) == int(r.nfe[1])


def test_prior_gap_and_t_end_and_prediction_types():
    """Gaussian prior + prior_gap = exact prior (same latent); other t_end and prediction types."""
    sch = make_schedule("vp")
    x = RING.sample(6, generator=torch.Generator().manual_seed(0))
    r_ex = log_likelihood(RING.denoiser(sch, "eps"), x, divergence="exact", prior=_exact_prior(RING, sch), t_end=0.05)
    r_g = log_likelihood(RING.denoiser(sch, "v"), x, divergence="exact", t_end=0.05)
    gap = prior_gap(r_g.z, _exact_prior(RING, sch), schedule=sch)
    assert torch.allclose(r_g.log_prob + gap, r_ex.log_prob, atol=1e-5)
    assert torch.allclose(r_g.prior_log_prob, gaussian_prior(sch)(r_g.z))
    truth = RING.log_prob(x, 0.05, sch)
    assert (r_ex.log_prob - truth).abs().max() / 2 < 1e-3
    # VP α_T ≈ 0.0066: the Gaussian prior's own error is small but not zero
    assert 0 < gap.abs().max() < 0.05


def test_time_variables_and_fixed_steps():
    sch = make_schedule("flow")
    den = RING.denoiser(sch, "velocity")
    x = RING.sample(4, generator=torch.Generator().manual_seed(1))
    truth = RING.log_prob(x, sch.t_min, sch)
    for tv in ["t", "log_snr", "sigma_over_alpha", "vp_time", "flow_time"]:
        r = log_likelihood(den, x, divergence="exact", prior=_exact_prior(RING, sch), time_variable=tv, rtol=1e-5,
                           atol=1e-5)
        assert (r.log_prob - truth).abs().max() / 2 < 1e-3, tv
    # fixed-NFE mode: the same number of network calls for every sample, whatever the data
    r = log_likelihood(den, x, divergence="exact", prior=_exact_prior(RING, sch), fixed_steps=40)
    assert bool((r.nfe == 1 + 6 * 40).all())
    assert (r.log_prob - truth).abs().max() / 2 < 1e-2


def test_fixed_steps_take_the_sampling_time_variable():
    """Equal steps in an EDM schedule's t (σ from 0.002 to 80) put almost none near the data: with
    fixed_steps, auto takes λ there (at 10 steps 0.42 nats/dim off in t, 2.6e-4 in λ, as the docstring
    of log_likelihood says; the scratch run that chose the rule: ring, 4-D and 16-D mixtures under seven
    schedules, 5-40 steps)."""
    gm = GaussianMixture.random(d=4, n_modes=3, seed=1)
    x = gm.sample(8, generator=torch.Generator().manual_seed(3)).to(torch.float64)
    for name, limit in (("edm", 2e-3), ("vp", 2e-3), ("flow", 2e-3)):
        sch = make_schedule(name)
        r = log_likelihood(gm.denoiser(sch, "eps"), x, divergence="exact", fixed_steps=10,
                           prior=_exact_prior(gm, sch))
        assert r.info["time_variable"] == ("log_snr" if name == "edm" else "t")
        assert float((r.log_prob - gm.log_prob(x, sch.t_min, sch)).abs().mean()) / 4 < limit, name
    sch = make_schedule("edm")
    raw_t = log_likelihood(gm.denoiser(sch, "eps"), x, divergence="exact", fixed_steps=10, time_variable="t",
                           prior=_exact_prior(gm, sch))
    assert float((raw_t.log_prob - gm.log_prob(x, sch.t_min, sch)).abs().mean()) / 4 > 0.3  # what auto avoids


def test_result_has_no_graph_through_x():
    """The divergence is taken by autograd and detached: a graph through the state alone would give a
    wrong gradient, so the result has none."""
    sch = make_schedule("vp")
    x = RING.sample(2, generator=torch.Generator().manual_seed(0)).clone().requires_grad_(True)
    r = log_likelihood(RING.denoiser(sch, "eps"), x, divergence="exact", rtol=1e-3, atol=1e-3)
    assert not r.log_prob.requires_grad and not r.z.requires_grad


@pytest.mark.parametrize("schedule,per_sample", [("vp", True), ("cosine", True), ("vp", False), ("flow", True),
                                                 ("flow", False), ("ve", True), ("subvp", False), ("edm", False),
                                                 ("ddpm", True), ("ddpm", False)])
def test_auto_time_variable(schedule, per_sample):
    """auto in the likelihood: the rectified flow's time on every schedule (the measured choice,
    benchmarks/likelihood_vp_time.py, diffsolve/ode.py); sampling keeps t on VP, cosine and flow, λ on EDM, VE,
    sub-VP and DDPM tables."""
    sch = make_schedule(schedule)
    x = RING.sample(2, generator=torch.Generator().manual_seed(0))
    r = log_likelihood(RING.denoiser(sch, "eps"), x, divergence="exact", per_sample=per_sample, rtol=1e-3, atol=1e-3)
    assert r.info["time_variable"] == "flow_time"
    sampling = "log_snr" if schedule in ("ve", "subvp", "edm", "ddpm") else "t"
    assert ProbabilityFlowODE(RING.denoiser(sch, "eps")).variable == sampling


def test_a_clock_solve_depends_on_the_log_snr_range_only():
    """In a clock (docs/math.md (9.7), (9.8)) the state lives in the reference schedule's coordinates and Δ is the
    divergence of its drift, so two families over the same λ-range make the same solve: a VP and an EDM
    schedule with EDM's σ range set to the VP schedule's σ/α range give the same steps and log p (up to
    round-off), where raw t makes different solves. On a flow schedule without shift flow_time is t itself."""
    vp = make_schedule("vp")
    ends = torch.tensor([vp.t_min, vp.t_max], dtype=torch.float64)
    s = (vp.sigma(ends) / vp.alpha(ends)).tolist()
    edm = EDMSchedule(sigma_min=s[0], sigma_max=s[1])
    x = RING.sample(4, generator=torch.Generator().manual_seed(5))
    runs = {}
    for name, sch in (("vp", vp), ("edm", edm)):
        a0 = float(sch.alpha(torch.tensor(sch.t_min, dtype=torch.float64)))
        for tv in ("flow_time", "vp_time", "t"):
            runs[name, tv] = log_likelihood(RING.denoiser(sch, "eps"), a0 * x, divergence="exact", time_variable=tv,
                                            prior=_exact_prior(RING, sch), rtol=1e-4, atol=1e-4)
    for tv in ("flow_time", "vp_time"):
        assert torch.equal(runs["vp", tv].nfe, runs["edm", tv].nfe), tv
        d = 2 * math.log(float(vp.alpha(torch.tensor(vp.t_min, dtype=torch.float64))))  # log p_x = log p_y − d log α
        torch.testing.assert_close(runs["vp", tv].log_prob, runs["edm", tv].log_prob - d, rtol=0, atol=1e-8)
    assert not torch.equal(runs["vp", "t"].nfe, runs["edm", "t"].nfe)
    flow = make_schedule("flow")
    x = RING.sample(3, generator=torch.Generator().manual_seed(6))
    a, b = (log_likelihood(RING.denoiser(flow, "velocity"), x, divergence="exact", time_variable=tv, rtol=1e-4,
                           atol=1e-4) for tv in ("flow_time", "t"))
    assert torch.equal(a.nfe, b.nfe)
    torch.testing.assert_close(a.log_prob, b.log_prob, rtol=0, atol=1e-9)


def _z_scores(gm, schedule, probe, R, seed, fresh=False):
    sch = make_schedule(schedule)
    den = gm.denoiser(sch, "eps")
    x0 = gm.sample(1, generator=torch.Generator().manual_seed(seed))
    exact = log_likelihood(den, x0, divergence="exact", rtol=1e-6, atol=1e-6)
    x = x0.expand(R, *x0.shape[1:]).clone()  # R independent repeats: one row each, per-sample seeds
    r = log_likelihood(den, x, probes=16, probe=probe, seeds=list(range(100, 100 + R)), rtol=1e-6, atol=1e-6,
                       fresh_probes=fresh)
    assert torch.allclose(r.z[0], exact.z[0], atol=1e-4)  # the latent does not depend on the estimator
    return (r.log_prob - exact.log_prob) / r.stderr, r, exact


@pytest.mark.parametrize("fresh", [False, True], ids=["fixed", "fresh"])
@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_unbiased(probe, fresh):
    """E[zᵀJz] = tr J (docs/math.md §5): the mean over all probes matches the exact divergence within its
    standard error — for probes held fixed and for fresh probes at every evaluation."""
    _, r, exact = _z_scores(RING, "vp", probe, 48, 2, fresh)
    per_probe = r.info["per_probe_delta"].flatten()
    est, se = float(per_probe.mean()), float(per_probe.std() / math.sqrt(per_probe.numel()))
    assert abs(est - float(exact.info["per_probe_delta"][0, 0])) < 4 * se
    assert 0 < se < 0.6  # per-probe spread is large in 2-D (≈ 12 nats for Gaussian probes)


@pytest.mark.parametrize("fresh", [False, True], ids=["fixed", "fresh"])
@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_stderr_calibrated(probe, fresh):
    """(estimate − exact)/stderr over independent repeats looks standard normal (t with 15 dof:
    variance 1.15). In 64-D: in 2-D a probe's estimate is a quadratic form in 2 variables (±c with
    one random sign for Rademacher, a skewed χ² mix for Gaussian), too far from normal for a
    t-statistic of 16 probes."""
    R = 32
    zs, _, _ = _z_scores(RAND64, "vp", probe, R, 2, fresh)
    assert abs(float(zs.mean())) < 4 / math.sqrt(R), zs
    assert 0.4 < float(zs.pow(2).mean()) < 2.0, zs


@pytest.mark.parametrize("fresh", [False, True], ids=["fixed", "fresh"])
def test_hutchinson_64d_and_per_sample_seeds(fresh):
    sch = make_schedule("ve")
    den = RAND64.denoiser(sch, "x0")
    x = RAND64.sample(3, generator=torch.Generator().manual_seed(4))
    kw = dict(probes=8, per_sample=True, fresh_probes=fresh)
    r = log_likelihood(den, x, seeds=[5, 6, 7], **kw)
    truth = RAND64.log_prob(x, sch.t_min, sch) + prior_gap(r.z, _exact_prior(RAND64, sch), schedule=sch)
    assert bool(((r.log_prob - truth).abs() < 5 * r.stderr + 0.05).all())
    assert r.info["fresh_probes"] is fresh
    # sample i does not depend on the batch it is in (per-sample seeds and step control)
    r1 = log_likelihood(den, x[1:2], seeds=[6], **kw)
    assert torch.allclose(r1.log_prob, r.log_prob[1:2], rtol=0, atol=1e-9)
    assert r1.nfe[0] == r.nfe[1]
    # chunking does not change per-sample results
    r2 = log_likelihood(den, x, seeds=[5, 6, 7], chunk_size=2, **kw)
    assert torch.allclose(r2.log_prob, r.log_prob, rtol=0, atol=1e-9)


def test_fresh_probes_same_steps_and_smaller_spread():
    """Fresh probes: the steps follow the state only (repeats of one point take the same steps to the
    same latent, whatever their probes), and with one Rademacher probe the error against the exact
    divergence is well below that of a probe held fixed (2-D ring: ≈ 0.4 nats/dim for a fixed one)."""
    sch = make_schedule("vp")
    den = RING.denoiser(sch, "eps")
    kw = dict(per_sample=True, rtol=1e-3, atol=1e-3)
    x = RING.sample(1, generator=torch.Generator().manual_seed(8)).expand(8, 2).clone()
    fresh = log_likelihood(den, x, fresh_probes=True, seeds=range(8), **kw)
    fixed = log_likelihood(den, x, fresh_probes=False, seeds=range(8), **kw)
    assert bool((fresh.nfe == fresh.nfe[0]).all()) and bool((fresh.z == fresh.z[0]).all())
    x = RING.sample(128, generator=torch.Generator().manual_seed(9))
    exact = log_likelihood(den, x, divergence="exact", **kw).log_prob
    fresh = log_likelihood(den, x, fresh_probes=True, seeds=range(128), **kw)
    fixed = log_likelihood(den, x, fresh_probes=False, seeds=range(128), **kw)
    assert float(fresh.nfe.float().mean()) < float(fixed.nfe.float().mean())  # Δ left the norm: fewer steps
    ratio = float((fresh.log_prob - exact).pow(2).mean().sqrt() / (fixed.log_prob - exact).pow(2).mean().sqrt())
    assert ratio < 0.7, ratio


@pytest.mark.parametrize("method,shared", [("dopri5", {2, 4}), ("tsit5", {4, 5}), ("bosh3", set()),
                                           ("euler_heun", set())])
def test_shared_probe_stages_lower_the_weight_sum_of_squares(method, shared):
    """The stages sharing their predecessor's probe (docs/math.md (20.9)): the runs of consecutive
    stages that lower Σ_G (Σ_{i∈G} b_i)², never the FSAL stage of the next step."""
    from diffsolve.tableaus import get_tableau

    tab = get_tableau(method)
    got = tab.shared_probe_stages()
    assert got == shared
    last = tab.stages - 1 if tab.fsal else tab.stages
    groups, cost, indep = [[0]], 0.0, sum(b * b for b in tab.b[:last])
    for i in range(1, last):
        groups[-1].append(i) if i in got else groups.append([i])
    cost = sum(sum(tab.b[i] for i in g) ** 2 for g in groups)
    assert cost <= indep and (not got or cost < 0.5 * indep), (cost, indep)
    figures = {"dopri5": (0.755, 0.335), "tsit5": (18.4, 0.411)}  # the docs' figures (docs/math.md (20.9))
    if method in figures:
        assert (round(indep, 3 if indep < 1 else 1), round(cost, 3)) == figures[method]


def test_shared_probes_cut_the_spread_at_the_same_steps(monkeypatch):
    """One point, 160 probe seeds: sharing dopri5's stage-4/5 probe leaves the steps (NFE) and the mean
    alone and shrinks the spread of the fresh-probe estimate (predicted √(0.335/0.755) ≈ 0.67)."""
    from diffsolve.tableaus import ButcherTableau

    sch = make_schedule("vp")
    gm = GaussianMixture.random(d=16, n_modes=5, seed=3)
    den = gm.denoiser(sch, "eps")
    x = gm.sample(1, generator=torch.Generator().manual_seed(4)).expand(160, 16).clone()
    shared = log_likelihood(den, x, seeds=range(160))
    monkeypatch.setattr(ButcherTableau, "shared_probe_stages", lambda self, span=0.25: frozenset())
    indep = log_likelihood(den, x, seeds=range(160))
    assert torch.equal(shared.nfe, indep.nfe)
    ratio = float(shared.log_prob.std() / indep.log_prob.std())
    assert ratio < 0.85, ratio
    se = float(indep.log_prob.std()) / math.sqrt(160)
    assert abs(float(shared.log_prob.mean() - indep.log_prob.mean())) < 4 * se


@pytest.mark.parametrize("shape", [(1,), (2,), (3,), (2, 3, 4), (64,)])
def test_walsh_probes_span_the_space_once_a_cycle(shape):
    """docs/math.md (20.10): every probe is a ±1 vector, a cycle of M = 2^⌈log₂ d⌉ of them sums to
    Σ z zᵀ = M I, and sample i's probes depend on its seed only, not on the batch it is drawn in."""
    from diffsolve.likelihood import _WalshProbes
    from diffsolve.noise import NoiseSource

    d = math.prod(shape)
    walsh = _WalshProbes(NoiseSource(3, shape, seeds=[5, 6, 7]), 2, torch.float64)
    M = walsh.M
    assert M >= d > M // 2 or M == d == 1
    Z = torch.stack([walsh(torch.tensor([0, 1, 2])) for _ in range(2 * M)]).reshape(2, M, 2, 3, d)
    assert bool((Z.abs() == 1).all())
    for cycle in Z:
        torch.testing.assert_close(torch.einsum("mkni,mknj->knij", cycle, cycle),
                                   M * torch.eye(d, dtype=torch.float64).expand(2, 3, d, d), rtol=0, atol=0)
    alone = _WalshProbes(NoiseSource(1, shape, seeds=[6]), 2, torch.float64)
    for m in range(2 * M):
        assert torch.equal(alone(torch.tensor([0]))[:, 0], Z[m // M, m % M, :, 1].reshape(2, *shape))


def test_walsh_probes_are_rademacher_one_at_a_time():
    """Unbiasedness needs E[z zᵀ] = I for each probe by itself: over 4000 seeds, the third probe of the
    first cycle (an arbitrary position) has the moments of a Rademacher vector."""
    from diffsolve.likelihood import _WalshProbes
    from diffsolve.noise import NoiseSource

    n = 4000
    walsh = _WalshProbes(NoiseSource(n, (5,), seeds=range(n)), 1, torch.float64)
    z = [walsh(torch.arange(n)) for _ in range(3)][-1][0]
    torch.testing.assert_close(z.T @ z / n, torch.eye(5, dtype=torch.float64), rtol=0, atol=4 / math.sqrt(n))
    assert float(z.mean(0).abs().max()) < 4 / math.sqrt(n)


@pytest.mark.parametrize("gm,spread", [(RING, 0.5), (GaussianMixture.random(d=8, n_modes=4, seed=3), 0.8)],
                         ids=["ring2d", "random8d"])
def test_walsh_probes_are_unbiased_and_cut_the_spread(monkeypatch, gm, spread):
    """One point, 240 probe seeds (docs/math.md (20.10)): the mean of the fresh-probe estimates is the
    exact divergence's quadrature at the same steps (the probes never steer them) to within 4 standard
    errors, and the spread is well below that of independent Rademacher draws (measured 0.32× in 2-D,
    0.65× in 8-D)."""
    import diffsolve.likelihood as L

    sch = make_schedule("vp")
    den = gm.denoiser(sch, "eps")
    n = 240
    x = gm.sample(1, generator=torch.Generator().manual_seed(4)).expand(n, gm.d).clone()
    walsh = log_likelihood(den, x, seeds=range(n))
    monkeypatch.setattr(L, "_probes", lambda src, k, probe, fresh, dtype: None)  # the exact divergence
    exact = log_likelihood(den, x[:1], seeds=range(1))
    monkeypatch.setattr(L, "_probes", lambda src, k, probe, fresh, dtype: lambda rows: torch.sign(
        torch.stack([src.randn(rows.tolist()) for _ in range(k)])).to(dtype))  # independent draws
    indep = log_likelihood(den, x, seeds=range(n))
    assert torch.equal(walsh.nfe, indep.nfe) and bool((walsh.nfe == exact.nfe[0]).all())
    se = float(walsh.log_prob.std()) / math.sqrt(n)
    assert abs(float(walsh.log_prob.mean() - exact.log_prob[0])) < 4 * se
    ratio = float(walsh.log_prob.std() / indep.log_prob.std())
    assert ratio < spread, ratio


def test_per_sample_saves_work_on_a_hard_sample():
    sch = make_schedule("vp")
    den = RING.denoiser(sch, "eps")
    x = RING.sample(12, generator=torch.Generator().manual_seed(5))
    x[0] = torch.tensor([0.05, 0.0], dtype=torch.float64)  # between the modes: a hard trajectory
    truth = RING.log_prob(x, sch.t_min, sch)
    shared = log_likelihood(den, x, divergence="exact", prior=_exact_prior(RING, sch), per_sample=False)
    ps = log_likelihood(den, x, divergence="exact", prior=_exact_prior(RING, sch))  # per-sample: the default
    assert ps.info["row_evals"] < shared.info["row_evals"]
    assert ps.nfe[0] > ps.nfe[1:].float().mean()
    for r in (ps, shared):
        err = (r.log_prob - truth).abs()
        assert err[1:].max() / 2 < 1e-3
        assert err[0] / truth[0].abs() < 2e-4  # log p ≈ −187 there: the tolerance is relative


def _cell_masses(levels, a, b, m, s):
    """Exact mass of the dequantization cells [a + (b−a)k/K, a + (b−a)(k+1)/K) under N(m, s²)."""
    edges = [a + (b - a) * k / levels for k in range(levels + 1)]
    cdf = normal.cdf(edges, loc=m, scale=s)
    return cdf[1:] - cdf[:-1], edges


def test_dequantized_bits_per_dim_bounds_the_discrete_model():
    """docs/math.md §5: −E_u log p_Y ≥ −log P(k), close to it for a smooth density on a coarse grid."""
    sch = make_schedule("vp")
    mu, var = torch.tensor([0.2, -0.3]), torch.tensor([0.16, 0.09])
    gm = GaussianMixture([1.0], mu[None], var[None])
    den = gm.denoiser(sch, "eps")
    K, (a, b) = 16, (-2.0, 2.0)
    # the model's own density at t_end = t_min is N(α μ, α² v + σ²) per coordinate
    al, si = float(sch.alpha(sch.t_min)), float(sch.sigma(sch.t_min))
    m_t, s_t = al * mu, (al**2 * var + si**2).sqrt()
    n = 96
    g = torch.Generator().manual_seed(7)
    levels = torch.empty(n, 2, dtype=torch.int64)
    true_bits, expected_bound = 0.0, 0.0
    for j in range(2):
        P, edges = _cell_masses(K, a, b, float(m_t[j]), float(s_t[j]))
        P = torch.tensor(P / P.sum())
        levels[:, j] = torch.multinomial(P, n, replacement=True, generator=g)
        true_bits += float(-(P * P.log()).sum()) / math.log(2) / 2
        # E_u[−log p_Y] per cell in closed form (Gaussian log-density is quadratic)
        lo, hi = torch.tensor(edges[:-1]), torch.tensor(edges[1:])
        m, s = float(m_t[j]), float(s_t[j])
        ex2 = ((hi - m) ** 3 - (lo - m) ** 3) / (3 * (hi - lo))
        nll = 0.5 * math.log(2 * math.pi * s * s) + ex2 / (2 * s * s) - math.log((b - a) / K)
        expected_bound += float((P * nll).sum()) / math.log(2) / 2
    x = a + (b - a) * levels.double() / (K - 1)  # data on the K-level grid of [a, b]
    r = log_likelihood(den, x, divergence="exact", prior=_exact_prior(gm, sch), dequantize=dict(levels=K, range=(a, b)),
                       seeds=torch.Generator().manual_seed(8))
    # per sample: log p_Y = log p_X(dequantized x) + d log((b − a)/K), exactly
    lp_x = gm.log_prob(r.x, sch.t_min, sch)
    assert (r.log_prob - (lp_x + 2 * math.log((b - a) / K))).abs().max() < 2e-3
    assert bool(((r.x >= a) & (r.x < b)).all())
    bpd, se = r.mean_bits_per_dim()
    # Jensen gap ≈ w²/(24 s²)/ln 2 ≈ 0.03 bits for cells of width w = 0.25, s ≈ 0.35
    assert expected_bound >= true_bits and expected_bound - true_bits < 0.05
    assert abs(bpd - expected_bound) < 4 * se
    # integer levels give the same result
    r_int = log_likelihood(den, levels, divergence="exact", prior=_exact_prior(gm, sch),
                           dequantize=dict(levels=K, range=(a, b)), seeds=torch.Generator().manual_seed(8))
    assert torch.allclose(r_int.log_prob, r.log_prob)


def test_round_trip():
    sch = make_schedule("vp")
    den = RAND64.denoiser(sch, "eps")
    x = RAND64.sample(4, generator=torch.Generator().manual_seed(9))
    rt = round_trip(den, x, rtol=1e-6, atol=1e-6)
    assert rt.error.max() < 1e-4 and rt.z.shape == x.shape
    r = log_likelihood(den, x, rtol=1e-6, atol=1e-6)
    assert torch.allclose(r.z, rt.z, atol=1e-4)
    z, _ = encode(den, x, rtol=1e-3, atol=1e-3)
    x_back, _ = decode(den, z, rtol=1e-3, atol=1e-3)
    assert (x_back - x).abs().max() < 0.05


def test_bad_input():
    sch = make_schedule("vp")
    den = RING.denoiser(sch, "eps")
    x = RING.sample(2, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="shape"):
        log_likelihood(den, torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="batch"):
        log_likelihood(den, torch.zeros(2, dtype=torch.float64))
    with pytest.raises(TypeError, match="floating-point"):
        log_likelihood(den, torch.zeros(2, 2, dtype=torch.int64))
    with pytest.raises(TypeError, match="Tensor"):
        log_likelihood(den, [[0.0, 1.0]])
    with pytest.raises(TypeError, match="Denoiser"):
        log_likelihood(lambda x, t: x, x)
    bad = x.clone()
    bad[1, 0] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or Inf \(samples \[1\]\)"):
        log_likelihood(den, bad)
    for kw, msg in [(dict(rtol=0.0), "rtol"), (dict(atol=-1e-3), "atol"), (dict(rtol=float("nan")), "rtol"),
                    (dict(divergence="skilling"), "valid: hutchinson, exact"),
                    (dict(probe="uniform"), "valid: rademacher, gaussian"), (dict(probes=0), "probes"),
                    (dict(time_variable="lambda"), "valid: auto, t, log_snr, sigma_over_alpha, vp_time, flow_time"),
                    (dict(method="rk99"), "valid methods"), (dict(fixed_steps=0), "fixed_steps"),
                    (dict(t_end=1.0), "t_end"), (dict(chunk_size=0), "chunk_size"), (dict(prior="laplace"), "prior"),
                    (dict(dequantize=dict(levels=1)), "levels"), (dict(dequantize=dict(levels=8, range=(1, 0))), "range"),
                    (dict(dequantize=dict(bins=8)), "levels")]:
        with pytest.raises(ValueError, match=msg):
            log_likelihood(den, x, **kw)
    with pytest.raises(TypeError, match="dtype"):
        log_likelihood(den, x, dtype=torch.float16)
    with pytest.raises(ValueError, match="fresh_probes=True applies to divergence='hutchinson'"):
        log_likelihood(den, x, divergence="exact", fresh_probes=True)
    with pytest.raises(ValueError, match="probes=4, probe='gaussian' apply to divergence='hutchinson'"):
        log_likelihood(den, x, divergence="exact", probes=4, probe="gaussian")
    with pytest.raises(ValueError, match=r"prior returned NaN or Inf log-densities for samples \[1\]"):
        log_likelihood(den, x, prior=lambda z: torch.tensor([0.0, math.nan], dtype=torch.float64))
    with pytest.raises(ValueError, match="prior returned an object of type list"):
        log_likelihood(den, x, prior=lambda z: [0.0, 0.0])
    with pytest.raises(ValueError, match="outside inference_mode"), torch.inference_mode():
        log_likelihood(den, x)
    with pytest.raises(TypeError, match="fresh_probes"):
        log_likelihood(den, x, fresh_probes="yes")
    grid = torch.tensor([[0.0, 1.0], [0.5, 0.25]], dtype=torch.float64)  # on the 5-level grid of [0, 1]
    with pytest.raises(ValueError, match="outside the dequantization range"):
        log_likelihood(den, grid * 2, dequantize=dict(levels=5, range=(0, 1)))
    with pytest.raises(ValueError, match="not on the 4-level grid"):
        log_likelihood(den, grid, dequantize=dict(levels=4, range=(0, 1)))
    with pytest.raises(ValueError, match="levels in 0..3"):
        log_likelihood(den, torch.tensor([[0, 4]]), dequantize=dict(levels=4, range=(0, 1)))
    with pytest.raises(ValueError, match="prior returned shape"):
        log_likelihood(den, x, prior=lambda z: z)


def test_a_non_finite_jacobian_is_an_error_on_every_path(monkeypatch):
    """A network whose output is finite but whose ∂ε̂/∂x is NaN (√|x|² at x = 0) is stopped with the
    reason, by the Hutchinson, exact, fixed-step and fixed-probe paths alike (it returned NaN or failed
    in the step-size control)."""
    from diffsolve import Denoiser, VPSchedule
    from diffsolve.denoiser import NonFiniteError

    inner = GaussianMixture.ring().denoiser("vp", "eps")

    def net(x, t):
        return inner.net(x, t) + 0.0 * torch.sqrt((x * x).sum(-1, keepdim=True))

    den = Denoiser(net, VPSchedule(), prediction="eps", time_label="t", net_dtype=torch.float64)
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    for kw in ({}, dict(divergence="exact"), dict(divergence="exact", fixed_steps=4), dict(fresh_probes=False)):
        with pytest.raises(NonFiniteError, match="Jacobian"):
            log_likelihood(den, x, **kw)

    def deferred(self, out, t, what="the network returned"):  # as on an accelerator: read once, after the solve
        self._pending.append((torch.isfinite(out.sum(dtype=torch.float64)), (what, self.nfe, self._where[0], t)))

    monkeypatch.setattr(Denoiser, "_check_finite", deferred)
    for kw in ({}, dict(divergence="exact")):  # the step control it breaks is not what is reported
        with pytest.raises(NonFiniteError, match="Jacobian"):
            log_likelihood(den, x, **kw)


def test_grid_data_in_a_narrow_dtype():
    """16-bit levels stored as float32 are on the grid up to float32's rounding (3e-4 grid steps): taken,
    as the same levels in float64; float16 cannot hold them apart: refused with the fix."""
    den = GaussianMixture.ring().denoiser("vp", "eps")
    K = 65536
    k = torch.tensor([[K - 2, K // 3], [1, K // 2 + 1]])
    x64 = -1 + 2 * k.double() / (K - 1)
    deq = dict(levels=K, range=(-1, 1))
    a = log_likelihood(den, x64.float(), dequantize=deq, seeds=[0, 1], fixed_steps=3).log_prob
    b = log_likelihood(den, x64, dequantize=deq, seeds=[0, 1], fixed_steps=3).log_prob
    torch.testing.assert_close(a, b, rtol=1e-9, atol=0)
    with pytest.raises(ValueError, match="float16 data cannot tell the 65536 levels"):
        log_likelihood(den, x64.half(), dequantize=deq)
    with pytest.raises(ValueError, match="not on the 65536-level grid"):
        log_likelihood(den, x64.float() + 0.3 * 2 / (K - 1), dequantize=deq)


def test_dequantization_needs_its_range_and_numpy_integers_are_integers():
    """``dequantize=dict(levels=256)`` took the range [0, 1] silently while dataset_log_likelihood and the CLI
    take [−1, 1]: the same uint8 digits read 10.9 against 5.9 bits/dim. The range has no default now. A
    malformed range raised Python's unpacking errors; numpy integers (levels = data.max() + 1) were refused
    with "must be an integer … got 8"."""
    import numpy as np

    den = GaussianMixture.ring().denoiser("vp", "eps")
    k = torch.tensor([[3, 5], [0, 7]])
    with pytest.raises(ValueError, match=r"needs the data range, range=\(a, b\)"):
        log_likelihood(den, k, dequantize=dict(levels=8))
    for bad in ((-1,), "(-1,1)"):
        with pytest.raises(ValueError, match="range must be two numbers"):
            log_likelihood(den, k, dequantize=dict(levels=8, range=bad))
    kw = dict(seeds=[0, 1], fixed_steps=3)
    want = log_likelihood(den, k, dequantize=dict(levels=8, range=(-1, 1)), probes=2, chunk_size=1, **kw).log_prob
    got = log_likelihood(den, k, dequantize=dict(levels=np.int64(8), range=(-1, 1)), probes=np.int64(2),
                         chunk_size=np.int32(1), seeds=[0, 1], fixed_steps=np.int64(3)).log_prob
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_raw_time_on_a_ddpm_table_is_warned():
    """In raw t a DDPM table's kinks stop the error from following the tolerance (rtol 1e-4 → 1e-6: 4.5e-3 →
    8.1e-3 nats at 20× the calls on a 16-D mixture, exact divergence; equal steps are first order): naming it
    is warned; 'auto' is λ there."""
    import warnings

    from diffsolve import DDPMSchedule

    den = GaussianMixture.ring().denoiser(DDPMSchedule(), "eps")
    x = torch.tensor([[1.9, 0.1], [0.0, -2.1]], dtype=torch.float64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        log_likelihood(den, x, divergence="exact", time_variable="t", rtol=1e-3, atol=1e-3)
    said = [w for w in caught if "kink at every one of its timesteps" in str(w.message)]
    assert len(said) == 1 and said[0].filename == __file__  # once per call, at the caller's line
    with pytest.warns(UserWarning, match="equal steps converge at first order"):
        log_likelihood(den, x, divergence="exact", time_variable="t", fixed_steps=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        log_likelihood(den, x, divergence="exact", rtol=1e-3, atol=1e-3)


def test_the_gaussian_prior_is_warned_of_where_t_max_holds_signal():
    import warnings

    from diffsolve import VPSchedule

    # a VP schedule cut at t_max = 0.5 (α/σ = 0.29): N(0, σ_T²) is not p_T there (log p was ~1 nat off, silently)
    gm = GaussianMixture.random(d=8, n_modes=3, seed=1)
    x = gm.sample(2, generator=torch.Generator().manual_seed(0)).double()
    den = gm.denoiser(VPSchedule(t_max=0.5))
    with pytest.warns(UserWarning, match=r"α_T/σ_T = 0.293 .*give prior= the exact log p_T"):
        log_likelihood(den, x, rtol=1e-3, atol=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exact = log_likelihood(den, x, divergence="exact", prior=lambda z: gm.log_prob(z, 0.5, den.schedule))
    torch.testing.assert_close(exact.log_prob, gm.log_prob(x, den.schedule.t_min, den.schedule), rtol=0, atol=1e-2)
