"""Solvers that must agree (docs/math.md §4) and members of the ν_t family that must share marginals (docs/math.md §3).

- step for step against k-diffusion (Crowson), same noise: ``heun`` (also with churn) =
  ``sample_heun``, ``euler_ve`` = ``sample_euler``, ``ancestral`` = ``sample_euler_ancestral``;
- step for step: DDIM(η=0) = DPM-Solver++ order 1 = Euler in VE coordinates (``euler_ve``);
  DDIM(η=1) = ancestral sampling with the same noise (docs/math.md (4.1), "η = 1 is DDPM ancestral");
  ancestral(η) = DDIM(η) as published for every η ≤ 1; DDIM's two variants coincide at η ∈ {0, 1};
  Heun with zero churn ignores the churn bounds; pc with no corrector step is its predictor;
- in distribution: DDIM "exact" and "published" at η = 0.5, and the η ∈ {0, 0.5, 1} members of the
  family, converge to the same p_{t_min}: exactly (moments of a Gaussian) and by the mean exact
  log-density of samples of the ring against its exact value, within standard error.
"""
from __future__ import annotations

import math

import pytest
import torch

import diffsolve as ds
from diffsolve.noise import NoiseSource
from diffsolve.processes import NoiseLevel
from diffsolve.solvers import SOLVERS
from diffsolve.loop import integrate

from helpers import k_diffusion_sampling, weak_errors

F64 = torch.float64
RING = ds.GaussianMixture.ring()


def run(solver, den, x, steps, eta=0.0, seeds=None, grid="log_snr"):
    """Integrate from x at t_max with per-sample seeds; returns the state at t_min."""
    t = ds.make_grid(den.schedule, steps, grid)
    seeds = list(range(len(x))) if seeds is None else seeds
    src = NoiseSource(len(x), tuple(x.shape[1:]), seeds=seeds)
    out = integrate(solver, den, x, t, level=NoiseLevel(den.schedule, eta), source=src).x
    return out


def x_T(den, n=8, seed=0):
    sch = den.schedule
    return float(sch.sigma(sch.t_max)) * torch.randn(n, 2, dtype=F64, generator=torch.Generator().manual_seed(seed))


# --- step for step -------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", ["vp", "edm", "flow"])
def test_ddim_eta0_equals_dpmpp1_and_euler_ve(schedule):
    den = RING.denoiser(schedule, "eps")
    x = x_T(den)
    ddim = run(SOLVERS["ddim"](), den, x, 12)
    torch.testing.assert_close(run(SOLVERS["euler_ve"](), den, x, 12), ddim, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(run(SOLVERS["ddim"](variant="published"), den, x, 12), ddim, rtol=1e-10, atol=1e-10)
    if "dpmpp_2m" in SOLVERS:
        torch.testing.assert_close(run(SOLVERS["dpmpp_2m"](order=1), den, x, 12), ddim, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("schedule", ["vp", "ve", "cosine"])
def test_ddim_eta1_equals_ancestral_same_noise(schedule):
    den = RING.denoiser(schedule, "x0")
    x = x_T(den)
    anc = run(SOLVERS["ancestral"](), den, x, 10, eta=1.0)
    torch.testing.assert_close(run(SOLVERS["ddim"](), den, x, 10, eta=1.0), anc, rtol=1e-9, atol=1e-9)
    published = run(SOLVERS["ddim"](variant="published"), den, x, 10, eta=1.0)
    torch.testing.assert_close(published, anc, rtol=1e-9, atol=1e-9)
    assert not torch.allclose(anc, run(SOLVERS["ddim"](), den, x, 10, eta=0.0))  # the noise matters


@pytest.mark.parametrize("eta", [0.3, 0.5, 0.8])
def test_ancestral_equals_published_ddim(eta):
    den = RING.denoiser("vp", "v")
    x = x_T(den)
    anc = run(SOLVERS["ancestral"](), den, x, 10, eta=eta)
    published = run(SOLVERS["ddim"](variant="published"), den, x, 10, eta=eta)
    torch.testing.assert_close(published, anc, rtol=1e-9, atol=1e-9)
    # the exact variant (docs/math.md (4.1)) differs at 0 < η < 1 (first order in h only)
    assert (run(SOLVERS["ddim"](), den, x, 10, eta=eta) - anc).abs().max() > 1e-4


def test_ancestral_time_varying_noise_uses_effective_eta():
    """ν_t given as a callable: ancestral and published DDIM both use η_eff = √(H/h) per step."""
    den = RING.denoiser("vp", "eps")
    sch = den.schedule
    noise = lambda t: 0.7 * sch.g(t) * (1.0 - 0.5 * sch.check_time(t))  # noqa: E731
    x = x_T(den)
    t = ds.make_grid(sch, 10, "log_snr")
    outs = []
    for solver in (SOLVERS["ancestral"](), SOLVERS["ddim"](variant="published")):
        src = NoiseSource(len(x), (2,), seeds=list(range(len(x))))
        outs.append(integrate(solver, den, x, t, level=NoiseLevel(sch, noise=noise), source=src).x)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-9, atol=1e-9)


def test_heun_zero_churn_and_out_of_range_churn_are_plain_heun():
    den = RING.denoiser("edm", "x0")
    x = x_T(den)
    plain = run(SOLVERS["heun"](), den, x, 8, grid="karras")
    out_of_range = run(SOLVERS["heun"](S_churn=40.0, S_tmin=1e6, S_tmax=1e7), den, x, 8, grid="karras")
    torch.testing.assert_close(out_of_range, plain)
    churned = run(SOLVERS["heun"](S_churn=40.0), den, x, 8, grid="karras")
    assert torch.isfinite(churned).all() and (churned - plain).abs().max() > 1e-3


def test_heun_with_churn_samples_the_data():
    """EDM's stochastic sampler (churn: noise up to ŝ, ODE step down) still samples p_0: its
    samples' mean exact log p_0 is within 0.4 nat of −H(p_0) (SE ≈ 0.06 with 256 samples; measured
    loss ≈ 0.1 at 32 steps, 0.3 at 16; a wrong noise scale S_noise = 1.5 or 0.5 is off by 2.3 or 0.6)."""
    den = RING.denoiser("edm", "x0")
    ref = float(RING.log_prob(RING.sample(20000, generator=torch.Generator().manual_seed(1))).mean())
    r = ds.sample(den, shape=(256, 2), solver="heun", steps=32, grid="karras", seeds="0-255",
                  solver_options={"S_churn": 10.0, "S_tmin": 0.05, "S_tmax": 50.0})
    assert abs(float(RING.log_prob(r.x).mean()) - ref) < 0.4


def test_pc_without_corrector_is_its_predictor():
    den = RING.denoiser("vp", "eps")
    x = x_T(den)
    for predictor, solver in (("euler", SOLVERS["euler"]()), ("ddim", SOLVERS["ddim"]())):
        pc = SOLVERS["pc"](corrector_steps=0, predictor=predictor)
        assert pc.nfe(10) == 10
        torch.testing.assert_close(run(pc, den, x, 10, eta=1.0), run(solver, den, x, 10, eta=1.0), rtol=0, atol=0)


def test_heun_matches_edm_algorithm_1_by_hand():
    """Two Heun steps on EDM (α = 1, σ = t) written out from Karras et al.'s Algorithm 1."""
    den = RING.denoiser("edm", "x0")
    x = x_T(den, n=4)
    t = torch.tensor([80.0, 3.0, 0.002], dtype=F64)
    out = integrate(SOLVERS["heun"](), den, x, t, level=NoiseLevel(den.schedule, 0.0)).x
    y = x.clone()
    for i in range(2):
        s0, s1 = float(t[i]), float(t[i + 1])
        d = (y - RING.x0(y, s0, "edm")) / s0
        y_e = y + (s1 - s0) * d
        d1 = (y_e - RING.x0(y_e, s1, "edm")) / s1
        y = y + (s1 - s0) * 0.5 * (d + d1)
    torch.testing.assert_close(out, y, rtol=1e-12, atol=1e-12)


# --- step for step against k-diffusion --------------------------------------------------------
K_3M = {"lower_order_final": False, "solver_type": "taylor", "third_order": "dpm_solver"}  # k-diffusion's 3M

@pytest.mark.parametrize("name,kname,options", [
    ("heun", "sample_heun", {}),
    ("euler_ve", "sample_euler", {}),
    ("ancestral", "sample_euler_ancestral", {"eta": 1.0}),
    ("ancestral", "sample_euler_ancestral", {"eta": 0.5}),
    ("heun", "sample_heun", {"s_churn": 10.0, "s_tmin": 0.01, "s_tmax": 50.0}),
    ("heun", "sample_heun", {"s_churn": 40.0, "s_tmin": 0.05, "s_tmax": 10.0, "s_noise": 1.003}),
])
def test_matches_k_diffusion(name, kname, options):
    """EDM schedule (α = 1, σ = t), Karras grid ending at σ_min > 0 (so k-diffusion's Heun takes
    Heun steps throughout), k-diffusion fed the same per-sample noise stream."""
    K = k_diffusion_sampling()
    den = RING.denoiser("edm", "x0")
    sch = den.schedule
    t = ds.make_grid(sch, 12, "karras")
    x = x_T(den, n=6)
    eta = options.get("eta", 0.0)
    churn = {k[0].upper() + k[1:]: v for k, v in options.items() if k.startswith("s_")}
    k_noise = NoiseSource(6, (2,), seeds=list(range(6)))
    kwargs = dict(options, disable=True)
    if name == "ancestral":
        kwargs["noise_sampler"] = lambda sigma, sigma_next: k_noise.randn()
    saved = torch.randn_like  # k-diffusion's churn draws with torch.randn_like
    torch.randn_like = lambda like, **kw: k_noise.randn()
    try:
        ref = getattr(K, kname)(lambda y, sigma: RING.x0(y, sigma, sch), x.clone(), t.clone(), **kwargs)
    finally:
        torch.randn_like = saved
    ours = integrate(SOLVERS[name](**churn), den, x, t, level=NoiseLevel(sch, eta),
                        source=NoiseSource(6, (2,), seeds=list(range(6)))).x
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


def test_churn_matches_k_diffusion_on_its_own_grid_ending_at_zero():
    """k-diffusion's sigmas end with 0 and its γ = S_churn / (len(sigmas) − 1) counts that last step, which
    diffsolve makes as the final denoise (grid = sigmas[:-1], denoise_final=True): γ was S_churn / (n − 1),
    0.14 off at S_churn = 1, 10 steps (the test above, without the 0, caps γ at √2 − 1 and never saw it).
    Churn off at σ_min (S_tmin above it, as in EDM's presets) and below σ_max (k-diffusion does not cap ŝ)."""
    K = k_diffusion_sampling()
    den = RING.denoiser("edm", "x0")
    sch = den.schedule
    t = ds.make_grid(sch, 9, "karras")
    sigmas = torch.cat([t, t.new_zeros(1)])
    x = x_T(den, n=6)
    k_noise = NoiseSource(6, (2,), seeds=list(range(6)))
    saved = torch.randn_like
    torch.randn_like = lambda like, **kw: k_noise.randn()
    try:
        ref = K.sample_heun(lambda y, sigma: RING.x0(y, sigma, sch), x.clone(), sigmas, s_churn=1.0, s_tmin=0.05,
                            s_tmax=50.0, disable=True)
    finally:
        torch.randn_like = saved
    ours = integrate(SOLVERS["heun"](S_churn=1.0, S_tmin=0.05, S_tmax=50.0), den, x, t, level=NoiseLevel(sch, 0.0),
                     source=NoiseSource(6, (2,), seeds=list(range(6))), denoise_final=True).x
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kname,k_eta,name,options,eta", [
    ("sample_dpmpp_3m_sde", 0.0, "dpmpp_3m", K_3M, 0.0),
    ("sample_dpmpp_3m_sde", 1.0, "dpmpp_3m_sde", K_3M, 1.0),
    ("sample_dpmpp_2m_sde", 0.5, "dpmpp_2m_sde", {}, 0.5 ** 0.5),
    ("sample_dpmpp_2m_sde", 0.5, "dpmpp_2m_sde", {"solver_type": "taylor"}, 0.5 ** 0.5),
])
def test_k_diffusion_multistep_sde_samplers_with_their_options_and_eta(kname, k_eta, name, options, eta):
    """What the dpmpp module docstring says reproduces k-diffusion: its 3M has the halved third-order term, a
    "taylor" second order and no lower-order last step (diffsolve's defaults differ: 0.36 apart at 10
    steps); its eta enters the noise as eta·h where ν = η g gives η² h, so its eta is η² here (0.5 → √0.5).
    On its own grid ending at 0 (grid = sigmas[:-1], denoise_final=True), the same noise."""
    K = k_diffusion_sampling()
    den = RING.denoiser("edm", "x0")
    sch = den.schedule
    t = ds.make_grid(sch, 9, "karras")
    x = x_T(den, n=6)
    k_noise = NoiseSource(6, (2,), seeds=list(range(6)))
    kw = {"solver_type": "heun"} if options.get("solver_type") == "taylor" and "2m" in kname else {}
    ref = getattr(K, kname)(lambda y, sigma: RING.x0(y, sigma, sch), x.clone(), torch.cat([t, t.new_zeros(1)]),
                            eta=k_eta, noise_sampler=lambda a, b: k_noise.randn(), disable=True, **kw)
    ours = integrate(SOLVERS[name](**options), den, x, t, level=NoiseLevel(sch, eta),
                     source=NoiseSource(6, (2,), seeds=list(range(6))), denoise_final=True).x
    torch.testing.assert_close(ours, ref, rtol=1e-11, atol=1e-11)


# --- in distribution: exact moments of a Gaussian ------------------------------------------------
def gaussian_moment_error(solver, eta, steps, schedule="vp"):
    """Exact weak error (mean and variance at t_min) on a Gaussian; see tests/helpers.py."""
    return weak_errors(solver, eta, schedule=schedule, steps=(steps,))[0]


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_nu_family_members_share_marginals_gaussian(eta):
    """Every member of the family, integrated by DDIM (exact and published), reaches p_{t_min}:
    the exact weak error (mean and variance; data variances 0.25 and 0.04) at 128 steps is below
    0.02 and at least 3× smaller than at 32 steps (first order: 4×); a second-order SDE solver,
    where registered, is below 0.002 at 64 steps."""
    for variant in ("exact", "published"):
        solver = SOLVERS["ddim"](variant=variant)
        e32, e128 = gaussian_moment_error(solver, eta, 32), gaussian_moment_error(solver, eta, 128)
        assert e128 < 2e-2 and e128 < e32 / 3, (variant, eta, e32, e128)
    if "dpmpp_2m_sde" in SOLVERS:
        e64 = gaussian_moment_error(SOLVERS["dpmpp_2m_sde"](), eta, 64)
        assert e64 < 2e-3, ("dpmpp_2m_sde", eta, e64)


# --- in distribution: the ring, by the mean exact log-density of samples -------------------------
_REF = {}


def ring_logp_reference(sch) -> float:
    """E[log p_{t_min}(x)] under p_{t_min} itself (−entropy), from 200000 exact samples."""
    if sch.name not in _REF:
        x = RING.sample(200000, sch.t_min, sch, generator=torch.Generator().manual_seed(99))
        _REF[sch.name] = float(RING.log_prob(x, sch.t_min, sch).mean())
    return _REF[sch.name]


def mean_logp(solver, eta, n=4000, steps=96):
    """Mean exact log p_{t_min} of n samples started from exact x_T ~ p_{t_max}, with its standard
    error (≈ 0.016). At 96 steps the bias of DDIM at η = 0.5 (weak order 1) is ≈ 0.005 nat
    (measured with 10⁴ samples); a DDIM whose noise is 15 % too large is off by ≈ −0.18 (10 SE)."""
    den = RING.denoiser("vp", "eps")
    sch = den.schedule
    x = RING.sample(n, sch.t_max, sch, generator=torch.Generator().manual_seed(10))
    t = ds.make_grid(sch, steps, "log_snr")
    src = NoiseSource(n, (2,), generator=torch.Generator().manual_seed(20))
    out = integrate(solver, den, x, t, level=NoiseLevel(sch, eta), source=src).x
    lp = RING.log_prob(out, sch.t_min, sch)
    return float(lp.mean()), float(lp.std()) / math.sqrt(n)


@pytest.mark.parametrize("variant", ["exact", "published"])
def test_ddim_variants_share_marginals_ring(variant):
    """DDIM "exact" (docs/math.md (4.1)) and "published" at η = 0.5 converge to p_{t_min}: the mean exact
    log-density of their samples matches −H(p_{t_min}) within 4 standard errors at 96 steps."""
    ref = ring_logp_reference(ds.make_schedule("vp"))
    est, se = mean_logp(SOLVERS["ddim"](variant=variant), 0.5, steps=96)
    assert abs(est - ref) < 4 * se, (variant, est, ref, se)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_nu_family_members_share_marginals_ring(eta):
    """The η ∈ {0, 0.5, 1} members reach the same p_{t_min} with a good solver (SDE-DPM-Solver++(2M)
    at 48 steps: measured bias ≤ 0.02 nat, below 2 SE; DDIM at η = 1 would still be 0.05 nat off at
    96 steps), judged by the mean exact log-density of the samples within 4 standard errors."""
    if "dpmpp_2m_sde" in SOLVERS:
        solver, steps = SOLVERS["dpmpp_2m_sde"](), 48
    else:
        solver, steps = SOLVERS["ddim"](), 384
    ref = ring_logp_reference(ds.make_schedule("vp"))
    est, se = mean_logp(solver, eta, steps=steps)
    assert abs(est - ref) < 4 * se, (solver.name, eta, est, ref, se)
