"""DPM-Solver++ (2M/3M/2S, SDE 2M/3M) and UniPC: measured orders, equivalences, every schedule and
prediction type, the SDE variants' exact output law on Gaussian data, bad input.

Errors are measured against the exact probability-flow ODE solution from the same x_T (docs/math.md (3.3), §6;
a dopri5 solve in λ at rtol = atol = 1e-11 with the analytic mixture's exact denoiser).
"""
import math

import pytest
import torch

import diffsolve as ds
from diffsolve.grids import make_grid
from diffsolve.noise import ImpulseNoise
from diffsolve.processes import NoiseLevel
from diffsolve.reference import ode_reference
from diffsolve.solvers import get_solver
from diffsolve.loop import integrate

F64 = torch.float64


def solve(solver, den, x, steps, eta=0.0, noise=None, grid="log_snr", noise_source=None, **options):
    sch = den.schedule
    s = get_solver(solver, **options)
    t = make_grid(sch, steps, grid)
    out = integrate(s, den, x, t, level=NoiseLevel(sch, eta=None if noise is not None else eta, noise=noise),
                       source=noise_source).x
    return out


# --- measured convergence order (docs/math.md (4.2)) ------------------------------------------------------
@pytest.fixture(scope="module")
def ring_problem():
    """Well-conditioned 2-D ring (4 modes, std 0.3), VP schedule, λ-uniform grids, no final denoise."""
    gm = ds.GaussianMixture.ring(n_modes=4, radius=1.0, std=0.3)
    sch = ds.VPSchedule()
    den = gm.denoiser(sch, "eps")
    g = torch.Generator().manual_seed(1)
    xT = torch.randn(8, 2, dtype=F64, generator=g) * float(sch.sigma(sch.t_max))
    ref = ode_reference(den, xT, sch.t_max, sch.t_min, rtol=1e-11, atol=1e-11)
    return den, xT, ref


def measured_order(den, xT, ref, solver, steps, **options):
    errs = [float((solve(solver, den, xT, n, **options) - ref).pow(2).mean().sqrt()) for n in steps]
    logn, loge = [math.log(n) for n in steps], [math.log(e) for e in errs]
    mn, me = sum(logn) / len(logn), sum(loge) / len(loge)
    slope = -sum((a - mn) * (b - me) for a, b in zip(logn, loge)) / sum((a - mn) ** 2 for a in logn)
    local = [-(loge[k + 1] - loge[k]) / (logn[k + 1] - logn[k]) for k in range(len(steps) - 1)]
    return slope, local, errs


ORDER_CASES = [  # (solver, options, declared order, step counts in the asymptotic regime)
    ("dpmpp_2m", {"order": 1}, 1, (20, 40, 80, 160)),
    ("dpmpp_2m", {}, 2, (20, 40, 80, 160)),
    ("dpmpp_3m", {}, 3, (20, 40, 80, 160)),
    ("dpmpp_3m", {"third_order": "dpm_solver"}, 2, (20, 40, 80, 160)),  # the reference code's 3M
    ("dpmpp_2s", {}, 2, (10, 20, 40, 80)),
    ("unipc", {"order": 1}, 2, (20, 40, 80, 160)),
    ("unipc", {"order": 2}, 3, (20, 40, 80, 160)),
    ("unipc", {"order": 2, "variant": "bh1"}, 3, (20, 40, 80, 160)),
    ("unipc", {"order": 2, "corrector": False}, 2, (20, 40, 80, 160)),
    ("unipc", {"order": 2, "predict_x0": False}, 3, (20, 40, 80, 160)),
    ("unipc", {"order": 1, "predict_x0": False, "variant": "bh1"}, 2, (20, 40, 80, 160)),
    # UniPC-3's warm-up corrector is only third order; its (tiny, high-noise) contribution leaves
    # the fourth-order regime visible from ~100 steps on.
    ("unipc", {"order": 3}, 4, (113, 160, 226, 320)),
]


@pytest.mark.parametrize("solver,options,order,steps", ORDER_CASES,
                         ids=[f"{c[0]}-{'-'.join(f'{k}={v}' for k, v in c[1].items())}" for c in ORDER_CASES])
def test_measured_order(ring_problem, solver, options, order, steps):
    den, xT, ref = ring_problem
    assert get_solver(solver, **options).declared_order == order
    slope, local, errs = measured_order(den, xT, ref, solver, steps, **options)
    assert abs(slope - order) < 0.3, (slope, local, errs)
    assert all(abs(s - order) < 0.5 for s in local), (local, errs)  # asymptotic: no drift in the slope
    assert errs[-1] > 1e-9  # far above the reference's own error


# --- equivalences ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mixture():
    return ds.GaussianMixture.random(d=8, n_modes=4, seed=0, spread=0.7)


@pytest.mark.parametrize("schedule", ["vp", "edm", "flow"])
def test_order1_is_ddim(mixture, schedule):
    den = mixture.denoiser(schedule, "eps")
    sch = den.schedule
    x = float(sch.sigma(sch.t_max)) * torch.randn(4, 8, dtype=F64, generator=torch.Generator().manual_seed(0))
    ddim = solve("ddim", den, x, 12)
    for name, opts in [("dpmpp_2m", {"order": 1}), ("unipc", {"order": 1, "corrector": False}),
                       ("dpmpp_2m_sde", {"order": 1})]:
        assert float((solve(name, den, x, 12, **opts) - ddim).abs().max()) < 1e-12 * float(ddim.abs().max())


def test_unip_is_dpmpp(mixture):
    """UniP-2 (bh2) is DPM-Solver++(2M) (midpoint); UniP-3 is DPM-Solver++(3M) with the exact term."""
    den = mixture.denoiser("cosine", "v")
    x = torch.randn(4, 8, dtype=F64, generator=torch.Generator().manual_seed(1))
    for p, name in [(2, "dpmpp_2m"), (3, "dpmpp_3m")]:
        a = solve("unipc", den, x, 15, order=p, corrector=False)
        b = solve(name, den, x, 15)
        assert float((a - b).abs().max()) < 1e-10


def test_unipc1_corrector_is_dpmpp_2s_r1(mixture):
    """One UniPC-1 (bh2) step with its corrector = DPM-Solver++(2S) with r = 1 (Heun-like in λ)."""
    den = mixture.denoiser("vp", "eps")
    x = torch.randn(4, 8, dtype=F64, generator=torch.Generator().manual_seed(2))
    sch = den.schedule
    t = torch.tensor([sch.t_max, 0.3], dtype=F64)
    lvl = NoiseLevel(sch, 0.0)
    a = integrate(get_solver("unipc", order=1, final_corrector=True), den, x, t, level=lvl).x
    b = integrate(get_solver("dpmpp_2s", r=1.0), den, x, t, level=lvl).x
    assert float((a - b).abs().max()) < 1e-12
    assert get_solver("unipc", order=1, final_corrector=True).nfe(1) == 2


@pytest.mark.parametrize("sde,ode", [("dpmpp_2m_sde", "dpmpp_2m"), ("dpmpp_3m_sde", "dpmpp_3m")])
@pytest.mark.parametrize("solver_type", ["midpoint", "taylor"])
def test_sde_at_eta0_is_ode_solver(mixture, sde, ode, solver_type):
    den = mixture.denoiser("ddpm", "eps")
    x = torch.randn(4, 8, dtype=F64, generator=torch.Generator().manual_seed(3))
    a = solve(sde, den, x, 10, eta=0.0, solver_type=solver_type)
    b = solve(ode, den, x, 10, solver_type=solver_type)
    assert float((a - b).abs().max()) == 0.0


# --- every schedule, every prediction type -----------------------------------------------------
SOLVER_SET = [("dpmpp_2m", {}), ("dpmpp_3m", {}), ("dpmpp_2s", {}), ("unipc", {}), ("unipc", {"order": 3}),
              ("unipc", {"predict_x0": False})]
PREDICTION_SET = [("dpmpp_3m", {}), ("dpmpp_2s", {}), ("unipc", {"order": 3}),
                  ("unipc", {"order": 3, "predict_x0": False})]  # all code paths


@pytest.mark.parametrize("schedule", ["vp", "cosine", "ddpm", "subvp", "ve", "edm", "flow"])
def test_every_schedule_and_prediction(schedule):
    gm = ds.GaussianMixture.ring(n_modes=4, radius=1.0, std=0.3)
    den = gm.denoiser(schedule, "eps")
    sch = den.schedule
    xT = float(sch.sigma(sch.t_max)) * torch.randn(4, 2, dtype=F64, generator=torch.Generator().manual_seed(4))
    ref = ode_reference(den, xT, sch.t_max, sch.t_min, rtol=1e-8, atol=1e-8)
    scale = float(ref.abs().max())
    e_ddim = float((solve("ddim", den, xT, 25) - ref).abs().max()) / scale
    for name, opts in SOLVER_SET:
        err = float((solve(name, den, xT, 25, **opts) - ref).abs().max()) / scale
        assert err < 0.25 * e_ddim, (name, opts, err, e_ddim)  # higher order pays off at 25 steps
    for name, opts in PREDICTION_SET:
        # the prediction type changes nothing but round-off (docs/math.md §2: one conversion table)
        base = solve(name, gm.denoiser(schedule, "eps"), xT, 4, **opts)
        for pred in ("x0", "score", "v", "velocity"):
            other = solve(name, gm.denoiser(schedule, pred), xT, 4, **opts)
            assert float((other - base).abs().max()) < 1e-8 * max(1.0, float(base.abs().max())), (name, pred)
    # the SDE variants on this schedule: η = 0 is the ODE solver; η = 1 follows the same path in law
    sde0 = solve("dpmpp_3m_sde", gm.denoiser(schedule, "v"), xT, 8, eta=0.0)
    assert torch.equal(sde0, solve("dpmpp_3m", gm.denoiser(schedule, "v"), xT, 8))
    src = ds.NoiseSource(4, (2,), seeds=[0, 1, 2, 3], dtype=F64)
    sde1 = solve("dpmpp_2m_sde", gm.denoiser(schedule, "velocity"), xT, 8, eta=1.0, noise_source=src)
    assert bool(torch.isfinite(sde1).all()) and not torch.equal(sde1, sde0)


# --- SDE variants: exact output law on Gaussian data -------------------------------------------
def gaussian_variance_error(solver, steps, eta=None, noise=None, **options):
    """|Var(output) − Var(p_{t_min})| exactly, for data N(μ, v) in 1-D.

    The denoiser is affine, so the sampler is affine in (x_T, z_0..z_{n−1}): out = c + A x_T + Σ B_j z_j,
    read off from n + 2 deterministic runs in one batch; x_T ~ p_T exactly.
    """
    mu, v = 0.7, 0.04
    gm = ds.GaussianMixture(torch.ones(1), torch.tensor([[mu]]), torch.tensor([[v]]))
    sch = ds.VPSchedule()
    den = gm.denoiser(sch, "eps")
    x = torch.zeros(steps + 2, 1, dtype=F64)
    x[1] = 1.0
    out = solve(solver, den, x, steps, eta=eta, noise=noise, noise_source=ImpulseNoise(steps), **options)
    c = out[0, 0]
    A, B = out[1, 0] - c, out[2:, 0] - c
    (aT, sT), (a0, s0) = (float(sch.alpha(sch.t_max)), float(sch.sigma(sch.t_max))), \
        (float(sch.alpha(sch.t_min)), float(sch.sigma(sch.t_min)))
    var = (aT * aT * v + sT * sT) * A**2 + (B**2).sum()
    return abs(float(var) - (a0 * a0 * v + s0 * s0))


@pytest.mark.parametrize("solver,options", [("dpmpp_2m_sde", {}), ("dpmpp_3m_sde", {}),
                                            ("dpmpp_3m_sde", {"corrected_start": True})])
@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_sde_output_law(solver, options, eta):
    e = [gaussian_variance_error(solver, n, eta=eta, **options) for n in (20, 40, 80)]
    slopes = [math.log2(e[k] / e[k + 1]) for k in range(2)]
    assert all(1.5 < s < 3.5 for s in slopes), (e, slopes)  # weak order ≥ declared 1; ~2 measured here
    assert e[1] < 0.1 * gaussian_variance_error("ddim", 40, eta=eta)


def test_sde_time_varying_noise():
    """A callable ν_t enters through H = ∫η² dλ: ν = 0.5 g as a callable equals eta=0.5, and a truly
    time-varying ν_t still converges to the right law."""
    sch = ds.VPSchedule()
    a = gaussian_variance_error("dpmpp_2m_sde", 20, eta=0.5)
    b = gaussian_variance_error("dpmpp_2m_sde", 20, noise=lambda t: 0.5 * sch.g(t))
    assert abs(a - b) < 1e-12
    nu = lambda t: 2.0 * torch.as_tensor(t, dtype=F64) * sch.g(t)  # η = 2t
    e = [gaussian_variance_error("dpmpp_2m_sde", n, noise=nu) for n in (20, 40, 80)]
    assert e[2] < e[1] < e[0] and e[0] / e[2] > 8, e


def test_sde_sample_runs_with_seeds():
    gm = ds.GaussianMixture.ring()
    den = gm.denoiser("edm", "eps")
    r1 = ds.sample(den, shape=(3, 2), solver="dpmpp_2m_sde", steps=10, eta=1.0, seeds=[0, 1, 2])
    r2 = ds.sample(den, shape=(3, 2), solver="dpmpp_2m_sde", steps=10, eta=1.0, seeds=[0, 1, 2])
    assert torch.equal(r1.x, r2.x) and r1.nfe == 11


# --- NFE accounting and bad input -------------------------------------------------------------
def test_nfe():
    gm = ds.GaussianMixture.ring()
    den = gm.denoiser("vp", "eps")
    for name, opts, steps, nfe in [("dpmpp_2m", {}, 10, 10), ("dpmpp_3m", {}, 10, 10), ("dpmpp_2s", {}, 5, 10),
                                   ("unipc", {}, 10, 10), ("unipc", {"final_corrector": True}, 10, 11)]:
        r = ds.sample(den, shape=(2, 2), solver=name, steps=steps, seeds=[0, 1], denoise_final=False,
                      solver_options=opts)
        assert r.nfe == nfe == get_solver(name, **opts).nfe(steps)
    assert get_solver("dpmpp_2s").steps_for_nfe(9) == 4


def test_bad_input():
    gm = ds.GaussianMixture.ring()
    den = gm.denoiser("vp", "eps")
    x = torch.randn(2, 2, dtype=F64)
    for name in ("dpmpp_3m", "unipc", "deis"):  # fewer steps than the order: the warm-up alone, i.e. DDIM
        torch.testing.assert_close(solve(name, den, x, 1), solve("ddim", den, x, 1), rtol=1e-9, atol=1e-10)
    for name in ("dpmpp_2m", "dpmpp_3m", "dpmpp_2s", "unipc"):
        with pytest.raises(ValueError, match="probability-flow ODE only"):
            solve(name, den, x, 5, eta=0.5)
        with pytest.raises(ValueError, match="probability-flow ODE only"):
            solve(name, den, x, 5, noise=lambda t: 0.1 * torch.ones_like(torch.as_tensor(t)))
    with pytest.raises(ValueError, match="unknown variant 'bh3'"):
        get_solver("unipc", variant="bh3")
    with pytest.raises(TypeError, match="predict_x0"):
        get_solver("unipc", predict_x0="eps")
    with pytest.raises(ValueError, match=r"order must be one of \[1, 2, 3\]"):
        get_solver("dpmpp_2m", order=4)
    with pytest.raises(ValueError, match=r"order must be one of \[1, 2, 3\]"):
        get_solver("unipc", order=0)
    with pytest.raises(ValueError, match="unknown solver_type"):
        get_solver("dpmpp_2m", solver_type="heun2")
    with pytest.raises(ValueError, match="unknown third_order"):
        get_solver("dpmpp_3m", third_order="x")
    with pytest.raises(ValueError, match=r"r must lie in \(0, 1\]"):
        get_solver("dpmpp_2s", r=0.0)
    with pytest.raises(TypeError, match="bad options"):
        get_solver("dpmpp_2m", eta=1.0)


# --- corrected start (dpmpp module docstring, "Global order and the warm-up") ---------------------
def test_corrected_start_is_unic1_on_the_first_step(mixture):
    """With the midpoint weight the corrected first step is UniPC's bh2 corrector UniC-1: on two
    steps without the final-order ramp, DPM-Solver++(2M) with ``corrected_start`` is UniPC-2 (bh2)."""
    den = mixture.denoiser("vp", "v")
    x = torch.randn(4, 8, dtype=F64, generator=torch.Generator().manual_seed(3))
    a = solve("dpmpp_2m", den, x, 2, corrected_start=True, lower_order_final=False)
    b = solve("unipc", den, x, 2, order=2, variant="bh2", lower_order_final=False)
    assert float((a - b).abs().max()) < 1e-12 * float(b.abs().max())
    assert float((a - solve("dpmpp_2m", den, x, 2, lower_order_final=False)).abs().max()) > 1e-6


def test_deis_corrected_start_formula(mixture):
    """deis: x_1 += α_1 C (ε̂_1 − ε̂_0) with C = ∫ e^τ (τ − τ_0)/(τ_1 − τ_0) dτ over [τ_0, τ_1], τ = log ρ
    (closed form e^{τ_1} − (e^{τ_1} − e^{τ_0})/(τ_1 − τ_0)), then the two-point step from the corrected x_1."""
    den = mixture.denoiser("cosine", "eps")
    sch = den.schedule
    x0 = torch.randn(4, 8, dtype=F64, generator=torch.Generator().manual_seed(4))
    t = make_grid(sch, 2, "log_snr")
    lam = sch.log_snr(t).tolist()
    alpha = sch.alpha(t).tolist()
    tau = [-v for v in lam]
    e0 = den.eps(x0, t[0])
    x1 = alpha[1] / alpha[0] * x0 + alpha[1] * (math.exp(tau[1]) - math.exp(tau[0])) * e0
    e1 = den.eps(x1, t[1])
    C = math.exp(tau[1]) - (math.exp(tau[1]) - math.exp(tau[0])) / (tau[1] - tau[0])
    x1c = x1 + alpha[1] * C * (e1 - e0)
    # step 1 extrapolates the line through (τ_0, ε̂_0), (τ_1, ε̂_1) over [τ_1, τ_2]
    # (∫ e^τ (τ − τ_0) dτ = e^τ (τ − τ_0 − 1))
    w_new = (math.exp(tau[2]) * (tau[2] - tau[0] - 1) - math.exp(tau[1]) * (tau[1] - tau[0] - 1)) / (tau[1] - tau[0])
    w_old = (math.exp(tau[2]) - math.exp(tau[1])) - w_new
    x2 = alpha[2] / alpha[1] * x1c + alpha[2] * (w_new * e1 + w_old * e0)
    out = solve("deis", den, x0, 2, order=2, corrected_start=True, lower_order_final=False)
    assert float((out - x2).abs().max()) < 1e-10 * float(x2.abs().max())


@pytest.mark.parametrize("solver,options", [("dpmpp_3m", {}), ("deis", {"order": 3}), ("deis", {"order": 4})])
def test_corrected_start_keeps_order_3_from_a_moderate_noise_start(solver, options):
    """From exact samples of p_t at t = 0.5 the uncorrected warm-up caps these methods at order 2;
    the corrected start gives 3 (order 4 needs more than the free correction)."""
    gm = ds.GaussianMixture.ring(n_modes=4, radius=1.0, std=0.3)
    sch = ds.VPSchedule()
    den = gm.denoiser(sch, "eps")
    a, s = (float(c) for c in sch.alpha_sigma(torch.tensor(0.5, dtype=F64)))
    g = torch.Generator().manual_seed(5)
    xs = a * gm.sample(8, generator=g).to(F64) + s * torch.randn(8, 2, dtype=F64, generator=g)
    ref = ode_reference(den, xs, 0.5, sch.t_min, rtol=1e-11, atol=1e-11)
    steps = (32, 64, 128, 256)

    def errors(**extra):
        out = []
        for n in steps:
            t = make_grid(sch, n, "log_snr", t_start=0.5)
            y = integrate(get_solver(solver, **options, **extra), den, xs, t, level=NoiseLevel(sch, 0.0)).x
            out.append(float((y - ref).pow(2).mean().sqrt()))
        return out

    def slope(es):
        ln, le = [math.log(n) for n in steps], [math.log(e) for e in es]
        mn, me = sum(ln) / len(ln), sum(le) / len(le)
        return -sum((p - mn) * (q - me) for p, q in zip(ln, le)) / sum((p - mn) ** 2 for p in ln)

    plain, fixed = slope(errors()), slope(errors(corrected_start=True))
    assert plain < 2.5, plain
    assert abs(fixed - 3.0) < 0.35, fixed


@pytest.mark.parametrize("z", [0.0, 1e-13, -3e-9, 0.2, -0.45, 0.999999, -0.999999, 1.0, -1.0, 1.000001, 2.5, -4.0,
                               9.7, -12.0])
def test_phis_match_the_phi_functions_to_working_precision(z):
    """UniPC's coefficients use φ_1 … φ_m from one series and a downward recursion (|z| < 1) or an
    upward one from e^z: each must equal φ_k(z) = Σ_n z^n/(n + k)! to a few ulps, on both sides of
    the switch at |z| = 1 (the upward recursion loses up to ~30 ulps near |z| = 1 at k = 4)."""
    import mpmath

    from diffsolve.solvers.unipc import phis

    with mpmath.workdps(40):
        zz = mpmath.mpf(z)
        exact = [float(sum(zz ** n / mpmath.factorial(n + k) for n in range(150))) for k in range(1, 5)]
    for k, (value, ref) in enumerate(zip(phis(4, z), exact), start=1):
        assert abs(value - ref) <= 1e-14 * abs(ref), (k, z, value, ref)
