"""The Fokker–Planck family (docs/math.md §3, seed 001), measured on an exact 2-D mixture.

Every member of the reverse family (docs/math.md (3.2)), integrated by a fine Euler–Maruyama loop from exact
samples of p_{t1}, must reach exact p_{t2}; so must the forward family (docs/math.md (3.1)) in increasing
time; the probability-flow ODE (docs/math.md (3.3)) run forward then backward returns its start. "Reach p_t"
is tested with statistics whose exact values are known (first and second moments of p_t, docs/math.md §6)
or estimated from exact samples (mean exact log p_t), each compared within a few standard errors
computed from the samples. Power: the same test flags a reverse drift with −½(g² − ν²) instead of
−½(g² + ν²) (|z| ≈ 40) and even a 20 % error in the ν² term (|z| ≈ 10).
"""
import math

import pytest
import torch

import diffsolve
from diffsolve.analytic import GaussianMixture
from diffsolve.grids import make_grid
from diffsolve.ode import CLOCKS, ProbabilityFlowODE
from diffsolve.processes import ForwardSDE, NoiseLevel, ReverseSDE
from diffsolve.schedules import EDMSchedule, VPSchedule

F64 = torch.float64
VP = VPSchedule()
T1, T2 = 0.6, 0.1          # reverse runs go T1 → T2, forward runs T2 → T1
N = 4000                   # samples per simulated member
N_REF = 100_000            # exact samples for the reference statistics
STEPS = 150                # Euler–Maruyama steps, uniform in log-SNR
Z_MAX = 4.5                # 6 statistics × ~8 members: a false alarm has probability < 1e-3


@pytest.fixture(autouse=True)
def _one_thread():
    # small tensors: one thread is much faster than two on a loaded 2-core machine
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def problem():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 2, 2, dtype=F64, generator=g)
    covs = 0.3 * a @ a.transpose(1, 2) + 0.02 * torch.eye(2, dtype=F64)
    means = torch.tensor([[-1.5, 0.5], [1.5, 1.0], [0.0, -1.5]], dtype=F64)
    gm = GaussianMixture([0.5, 0.3, 0.2], means, covs)
    ref = {t: _stats(gm, gm.sample(N_REF, t, VP, generator=g), t) for t in (T1, T2)}
    return gm, ref


def _stats(gm, x, t):
    """Per-sample statistics: exact log p_t(x), x₁, x₂, x₁², x₂², x₁x₂."""
    return torch.stack([gm.log_prob(x, t, VP), x[:, 0], x[:, 1], x[:, 0] ** 2, x[:, 1] ** 2, x[:, 0] * x[:, 1]], 1)


def _z(gm, ref, x, t):
    """z-scores of the statistics of x against exact samples of p_t (log p) and against the
    exact moments of p_t: α μ̄ and α²Σ̄ + σ²I + α²μ̄μ̄ᵀ (docs/math.md §6)."""
    st = _stats(gm, x, t)
    a, s = float(VP.alpha(t)), float(VP.sigma(t))
    m = a * gm.mean()
    second = a * a * gm.covariance() + s * s * torch.eye(2, dtype=F64) + torch.outer(m, m)
    exact = torch.stack([ref[t][:, 0].mean(), m[0], m[1], second[0, 0], second[1, 1], second[0, 1]])
    var = st.var(0) / len(st)
    var[0] += ref[t][:, 0].var() / len(ref[t])  # log p: the reference is itself an estimate
    return (st.mean(0) - exact) / var.sqrt()


def _nu_callable(t):
    """A time-varying ν_t not proportional to g_t."""
    return 0.5 + 2.0 * torch.as_tensor(t, dtype=F64)


MEMBERS = {"eta=0": dict(eta=0.0), "eta=0.5": dict(eta=0.5), "eta=1": dict(eta=1.0),
           "eta=2": dict(eta=2.0), "nu=0.5+2t": dict(noise=_nu_callable)}


@pytest.mark.parametrize("member", list(MEMBERS))
def test_reverse_family_reaches_exact_marginal(problem, member):
    """Reverse family (docs/math.md (3.2)) for ν ∈ {0, ½g, g, 2g, 0.5 + 2t}: Euler–Maruyama via
    ``diffsolve.sample(solver="euler")`` from exact samples of p_{0.6} to t = 0.1 matches exact
    p_{0.1} in mean log p and first and second moments (|z| < 4.5 each)."""
    gm, ref = problem
    g = torch.Generator().manual_seed(1)
    x1 = gm.sample(N, T1, VP, generator=g)
    grid = make_grid(VP, STEPS, "log_snr", t_start=T1, t_end=T2)
    out = diffsolve.sample(gm.denoiser(VP, "eps"), x=x1, solver="euler", grid=grid, generator=g,
                           denoise_final=False, **MEMBERS[member])
    assert out.nfe == STEPS and out.x.dtype == F64
    z = _z(gm, ref, out.x, T2)
    assert float(z.abs().max()) < Z_MAX, z.tolist()
    assert float(_z(gm, ref, x1, T1).abs().max()) < Z_MAX  # the start was exact p_{t1}


def _reverse_em(gm, x, grid, eta, nu2_drift, g):
    """Euler–Maruyama on dx = [f x + c_t ∇log p_t] dt + ν dw̄ with a chosen drift coefficient c_t."""
    for i in range(len(grid) - 1):
        t, dt = grid[i], float(grid[i + 1] - grid[i])
        g2 = float(VP.g2(t))
        c = nu2_drift(g2, eta * eta * g2)
        x = x + (float(VP.f(t)) * x + c * gm.score(x, t, VP)) * dt \
            + eta * math.sqrt(g2 * -dt) * torch.randn(x.shape, dtype=F64, generator=g)
    return x


def test_wrong_reverse_drift_is_detected(problem):
    """Power of the test above: the same statistics flag −½(g² − ν²) ∇log p (the forward-family
    coefficient) in a reverse run (η = ½ and 2), and a 20 % error in ν² at η = 1; the correct
    coefficient through the same hand-written loop passes."""
    gm, ref = problem
    g = torch.Generator().manual_seed(2)
    grid = make_grid(VP, STEPS, "log_snr", t_start=T1, t_end=T2)
    right = lambda g2, nu2: -0.5 * (g2 + nu2)  # noqa: E731  docs/math.md (3.2)
    wrong = lambda g2, nu2: -0.5 * (g2 - nu2)  # noqa: E731  docs/math.md (3.1)'s coefficient
    off = lambda g2, nu2: -0.5 * (g2 + 1.2 * nu2)  # noqa: E731
    z = _z(gm, ref, _reverse_em(gm, gm.sample(N, T1, VP, generator=g), grid, 1.0, right, g), T2)
    assert float(z.abs().max()) < Z_MAX, z.tolist()
    for eta, drift, least in ((0.5, wrong, 20.0), (2.0, wrong, 20.0), (1.0, off, 6.0)):
        z = _z(gm, ref, _reverse_em(gm, gm.sample(N, T1, VP, generator=g), grid, eta, drift, g), T2)
        assert float(z.abs().max()) > least, (eta, z.tolist())


def _forward_em(process, x, grid, g):
    """Euler–Maruyama in increasing t: x ← x + drift(x, t) Δt + ν_t √Δt z."""
    for i in range(len(grid) - 1):
        t, dt = grid[i], float(grid[i + 1] - grid[i])
        x = x + process.drift(x, t) * dt + float(process.diffusion(t)) * math.sqrt(dt) * \
            torch.randn(x.shape, dtype=F64, generator=g)
    return x


@pytest.mark.parametrize("kind", ["nu=g", "eta=0.5", "nu=0.5+2t"])
def test_forward_family_reaches_exact_marginal(problem, kind):
    """Forward family (docs/math.md (3.1)), Euler–Maruyama in increasing t to 0.6, matches exact p_{0.6}:
    ``ForwardSDE(schedule)`` (ν = g: the forward SDE 1.2, no score) from exact data samples (t_min
    = 1e-6), and ν = ½g, ν = 0.5 + 2t (with the score) from exact samples of p_{0.1}."""
    gm, ref = problem
    g = torch.Generator().manual_seed(3)
    den = gm.denoiser(VP, "x0")
    if kind == "nu=g":
        vp0 = VPSchedule(t_min=1e-6)  # same α, σ as VP; p_{1e-6} = p_0 to O(1e-6)
        proc, x, grid = ForwardSDE(vp0), gm.sample(N, generator=g), make_grid(vp0, 300, "log_snr", t_start=T1)
    else:
        proc = ForwardSDE(den, eta=0.5) if kind == "eta=0.5" else ForwardSDE(VP, den, noise=_nu_callable)
        x, grid = gm.sample(N, T2, VP, generator=g), make_grid(VP, STEPS, "log_snr", t_start=T1, t_end=T2)
    x = _forward_em(proc, x, grid.flip(0), g)
    z = _z(gm, ref, x, T1)
    assert float(z.abs().max()) < Z_MAX, z.tolist()
    assert den.nfe == (0 if kind == "nu=g" else STEPS)


def test_forward_sde_drift_without_score_is_wrong_at_half_noise(problem):
    """Power: ν = ½g with the score term dropped (dx = f x dt + ½g dw) misses p_{0.6}."""
    gm, ref = problem
    g = torch.Generator().manual_seed(4)

    class NoScore(ForwardSDE):
        def drift(self, x, t):
            return float(self.schedule.f(t)) * x

    proc = NoScore(gm.denoiser(VP, "eps"), eta=0.5)
    grid = make_grid(VP, 60, "log_snr", t_start=T1, t_end=T2).flip(0)
    z = _z(gm, ref, _forward_em(proc, gm.sample(N, T2, VP, generator=g), grid, g), T1)
    assert float(z.abs().max()) > 20, z.tolist()


def test_probability_flow_ode_forward_then_backward_returns_start(problem):
    """docs/math.md (3.3) is one ODE for both directions: dopri5 (rtol = atol = 1e-9) from exact samples of
    p_{0.1} up to t = 0.6 reaches exact p_{0.6} (same statistics as above), and integrating back
    down returns the start to 5e-7 (measured: 8e-8)."""
    from torchdiffeq import odeint

    gm, ref = problem
    g = torch.Generator().manual_seed(5)
    func = ProbabilityFlowODE(gm.denoiser(VP, "v")).torchdiffeq_func((2,))
    x0 = gm.sample(500, T2, VP, generator=g)
    ts = torch.tensor([T2, T1], dtype=F64)
    up = odeint(func, x0, ts, method="dopri5", rtol=1e-9, atol=1e-9)[-1]
    z = _z(gm, ref, up, T1)
    assert float(z.abs().max()) < Z_MAX, z.tolist()
    back = odeint(func, up, ts.flip(0), method="dopri5", rtol=1e-9, atol=1e-9)[-1]
    assert float((back - x0).abs().max()) < 5e-7
    assert float((up - x0).norm(dim=1).mean()) > 0.3  # it did move


def test_torchsde_adapter_reverse_sde_marginals():
    """``ReverseSDE(...).torchsde(shape)`` in increasing τ = T − t, integrated by torchsde.sdeint
    (Euler, dt = 4e-3) from exact p_T (T = 1) to t = 0.2, has the exact mean α_t μ and variance
    α_t² s² + σ_t² of a 1-component Gaussian (each within 4.5 standard errors)."""
    import torchsde

    mu, var0 = torch.tensor([1.5, -0.5], dtype=F64), torch.tensor([0.3, 0.05], dtype=F64)
    gm = GaussianMixture([1.0], mu[None], var0[None])
    n, t_end = 4000, 0.2
    g = torch.Generator().manual_seed(6)
    torch.manual_seed(6)  # torchsde's Brownian motion draws from the global generator
    sde = ReverseSDE(gm.denoiser(VP, "eps"), eta=1.0).torchsde((2,))
    xT = gm.sample(n, VP.t_max, VP, generator=g)
    ts = torch.tensor([0.0, VP.t_max - t_end], dtype=F64)
    x = torchsde.sdeint(sde, xT, ts, method="euler", dt=4e-3)[-1]
    a, s = float(VP.alpha(t_end)), float(VP.sigma(t_end))
    mean, var = a * mu, a * a * var0 + s * s
    z_mean = (x.mean(0) - mean) / (var / n).sqrt()
    z_var = (x.var(0) - var) / (var * math.sqrt(2 / n))
    assert float(z_mean.abs().max()) < Z_MAX and float(z_var.abs().max()) < Z_MAX, (z_mean, z_var)
    assert float((var0 - var).abs().min()) > 0.2  # p_{0.2} is far from p_T = N(0, σ_T²): a real test


def test_torchsde_forward_sde_marginals():
    """``ForwardSDE(schedule).torchsde(shape)`` (same time t) from exact data to t = 0.5."""
    import torchsde

    mu, var0 = torch.tensor([2.0], dtype=F64), torch.tensor([0.1], dtype=F64)
    n, t_end = 4000, 0.5
    torch.manual_seed(7)
    x0 = mu + var0.sqrt() * torch.randn(n, 1, dtype=F64, generator=torch.Generator().manual_seed(7))
    sde = ForwardSDE(VP).torchsde((1,))
    x = torchsde.sdeint(sde, x0, torch.tensor([VP.t_min, t_end], dtype=F64), method="euler", dt=2e-3)[-1]
    a, s = float(VP.alpha(t_end)), float(VP.sigma(t_end))
    mean, var = a * mu, a * a * var0 + s * s
    assert abs(float((x.mean(0) - mean) / (var / n).sqrt())) < Z_MAX
    assert abs(float((x.var(0) - var) / (var * math.sqrt(2 / n)))) < Z_MAX


def test_drifts_are_the_math_formulas(problem):
    """drift(x, t) equals docs/math.md (3.1) / 3.2 / 3.3 written out with the exact score, for scalar and
    per-sample t; the probability-flow ODE is the ν = 0 member of both families."""
    gm, _ = problem
    den = gm.denoiser(VP, "velocity")
    x = gm.sample(5, 0.4, VP, generator=torch.Generator().manual_seed(8))
    for t in (0.4, torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9], dtype=F64)):
        tt = torch.as_tensor(t, dtype=F64)
        col = (lambda c: c[:, None]) if tt.dim() else (lambda c: c)
        f, g2, score = col(VP.f(tt)), col(VP.g2(tt)), gm.score(x, t, VP)
        for eta in (0.0, 0.5, 2.0):
            nu2 = eta * eta * g2
            torch.testing.assert_close(ReverseSDE(den, eta=eta).drift(x, t), f * x - 0.5 * (g2 + nu2) * score,
                                       rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(ForwardSDE(den, eta=eta).drift(x, t), f * x - 0.5 * (g2 - nu2) * score,
                                       rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ProbabilityFlowODE(den).drift(x, t), f * x - 0.5 * g2 * score, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ForwardSDE(VP).drift(x, t), f * x, rtol=0, atol=0)
        nu = _nu_callable(tt)
        torch.testing.assert_close(ReverseSDE(den, noise=_nu_callable).drift(x, t),
                                   f * x - 0.5 * (g2 + col(nu * nu)) * score, rtol=1e-12, atol=1e-12)
    assert float(ReverseSDE(den, eta=2.0).diffusion(0.3)) == pytest.approx(2 * float(VP.g(0.3)), rel=1e-15)


def test_drift_keeps_a_float32_state_where_its_two_terms_cancel():
    """On a flow schedule from σ = 1 (t_max = 1 − 10⁻⁹, as ``from_diffusers`` builds it) f_t = −1/(1 − t) ≈ −10⁹
    and ½g_t² ŝ is as large, while the drift of a velocity network is O(1): summed term by term in a
    float32 state it was off by order 1 (one Euler step 5.5e-2 from the exact one). Formed as one affine
    combination of x and the network's output, with the coefficients summed in float64, the float32 drift
    is the float64 one to float32 round-off, and so is a whole Euler run on the explicit grid from t_max."""
    from diffsolve.schedules import FlowSchedule

    sch = FlowSchedule(t_max=1 - 1e-9)
    gm = GaussianMixture.ring()
    den = gm.denoiser(sch, "velocity")
    x = gm.sample(64, sch.t_max, sch, generator=torch.Generator().manual_seed(3))
    t = torch.tensor(sch.t_max, dtype=F64)
    for proc in (ReverseSDE(den, eta=0.0), ReverseSDE(den, eta=0.5), ForwardSDE(den, eta=0.5)):
        d64, d32 = proc.drift(x, t), proc.drift(x.float(), t)
        assert d32.dtype == torch.float32 and float((d32 - d64).norm() / d64.norm()) < 1e-6
    grid = torch.linspace(sch.t_max, 1e-3, 9, dtype=F64)
    r64 = diffsolve.sample(den, x, solver="euler", grid=grid).x
    r32 = diffsolve.sample(den, x.float(), solver="euler", grid=grid).x
    assert float((r32 - r64).norm() / r64.norm()) < 1e-6


def test_noise_level():
    """ν_t = η g_t or a callable; eta_at = ν/g (used by exponential integrators, docs/math.md (4.1))."""
    t = torch.tensor([0.2, 0.8], dtype=F64)
    lv = NoiseLevel(VP, eta=0.7)
    torch.testing.assert_close(lv.nu(t), 0.7 * VP.g(t), rtol=1e-15, atol=0)
    torch.testing.assert_close(lv.nu2(t), 0.49 * VP.g2(t), rtol=1e-14, atol=0)
    assert lv.eta_at(t).tolist() == [0.7, 0.7] and not lv.is_zero
    assert NoiseLevel(VP).is_zero and NoiseLevel(VP, eta=0).is_zero
    lv = NoiseLevel(VP, noise=_nu_callable)
    torch.testing.assert_close(lv.eta_at(t), _nu_callable(t) / VP.g(t), rtol=1e-15, atol=0)
    assert not lv.is_zero


def test_noise_callable_for_one_time_at_a_time():
    """A ν_t written for a single time (``float(t)``, ``if t > …``) gives the same samples as its
    vectorised twin with every solver that draws noise (some integrate ν over a step at several
    times at once)."""
    den = GaussianMixture.ring().denoiser(VP, "eps")
    pairs = [(lambda t: 0.5 * math.sqrt(float(t)), lambda t: 0.5 * torch.as_tensor(t, dtype=F64).sqrt()),
             (lambda t: 1.0 if t > 0.5 else 0.2, lambda t: 0.2 + 0.8 * (torch.as_tensor(t, dtype=F64) > 0.5).to(F64))]
    for scalar, vector in pairs:
        for name in ("euler", "ddim", "ancestral", "dpmpp_2m_sde", "dpmpp_3m_sde"):
            a = diffsolve.sample(den, shape=(3, 2), solver=name, steps=8, noise=scalar, seeds="0-2")
            b = diffsolve.sample(den, shape=(3, 2), solver=name, steps=8, noise=vector, seeds="0-2")
            torch.testing.assert_close(a.x, b.x, rtol=1e-13, atol=1e-13, msg=name)
    with pytest.raises(ValueError, match="one value ν_t per time"):
        NoiseLevel(VP, noise=lambda t: torch.ones(3)).nu(torch.tensor([0.1, 0.8], dtype=F64))


# --- bad input ----------------------------------------------------------------------------

def test_bad_noise_levels(problem):
    gm, _ = problem
    den = gm.denoiser(VP, "eps")
    for bad in (-0.1, float("nan")):
        with pytest.raises(ValueError, match="eta must be >= 0"):
            NoiseLevel(VP, eta=bad)
        with pytest.raises(ValueError, match="eta must be >= 0"):
            ReverseSDE(den, eta=bad)
    with pytest.raises(ValueError, match="eta must be >= 0"):
        diffsolve.sample(den, shape=(2, 2), solver="euler", steps=3, eta=-1.0)
    with pytest.raises(ValueError, match="either eta"):
        NoiseLevel(VP, eta=1.0, noise=_nu_callable)
    with pytest.raises(TypeError, match="callable"):
        NoiseLevel(VP, noise=0.5)
    negative = lambda t: 0.5 - 2.0 * torch.as_tensor(t)  # noqa: E731  negative for t > 0.25
    with pytest.raises(ValueError, match=r"ν_t must be >= 0.*returned -1\.1"):
        NoiseLevel(VP, noise=negative).nu(torch.tensor([0.1, 0.8], dtype=F64))
    with pytest.raises(ValueError, match="ν_t must be >= 0"):
        diffsolve.sample(den, shape=(2, 2), solver="euler", steps=3, noise=negative)
    with pytest.raises(ValueError, match="ν_t must be >= 0"):
        NoiseLevel(VP, noise=lambda t: float("nan")).nu(0.5)
    with pytest.raises(ValueError, match="needs a denoiser"):
        ForwardSDE(VP, eta=0.5)
    with pytest.raises(ValueError, match="ODEs only"):
        ReverseSDE(den, eta=1.0).torchdiffeq_func()
    with pytest.raises(ValueError, match="valid range"):
        ReverseSDE(den).drift(torch.zeros(2, 2, dtype=F64), 1.5)
    edm_den = GaussianMixture.ring().denoiser(EDMSchedule(), "x0")
    assert float(ReverseSDE(edm_den).diffusion(4.0)) == pytest.approx(math.sqrt(8.0), rel=1e-14)  # g² = 2t


@pytest.mark.parametrize("schedule", ["vp", "cosine", "ve", "edm", "flow"])
def test_pfode_change_of_variables(schedule):
    """ProbabilityFlowODE's changes of variables against the forms it claims (diffsolve.ode's
    docstring): raw t is the probability-flow drift (docs/math.md (3.3)); (λ, y = x/α) is dy/dλ = x̂0 − y;
    (σ/α, y = x/α) is dy/ds = ε̂; and u ↔ t round-trips."""
    gm = GaussianMixture.ring(std=0.4)
    den = gm.denoiser(schedule, "v")
    sch = den.schedule
    x = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    for tt in (0.3 * sch.t_min + 0.7 * sch.t_max, 0.5 * (sch.t_min + sch.t_max), 0.9 * sch.t_min + 0.1 * sch.t_max):
        t = torch.tensor(tt, dtype=torch.float64)
        a = float(sch.alpha(t))
        cases = {("t", None): ProbabilityFlowODE(den).drift(x, t),
                 ("log_snr", "alpha"): den.x0(x, t) - x / a,
                 ("sigma_over_alpha", None): den.eps(x, t)}
        for (var, scale), want in cases.items():
            ode = ProbabilityFlowODE(den, var, scale)
            u = ode.u_of(t)
            torch.testing.assert_close(ode.t_of(u), t, rtol=1e-12, atol=1e-12)
            y = ode.to_state(x, t)
            torch.testing.assert_close(ode.from_state(y, t), x, rtol=1e-14, atol=1e-14)
            torch.testing.assert_close(ode.func(u, y), want, rtol=1e-10, atol=1e-10)
        # the clocks (a reference schedule's time at the same log-SNR, the state x/c in its coordinates):
        # dy/du = (x'/c − x c'/c²) dt/du with x' the drift in t, c' and du/dt by central differences
        drift = ProbabilityFlowODE(den).drift(x, t)
        h = 1e-6 * (sch.t_max - sch.t_min)
        for var in CLOCKS:
            ode = ProbabilityFlowODE(den, var)
            u = ode.u_of(t)
            torch.testing.assert_close(ode.t_of(u), t, rtol=1e-10, atol=1e-12)
            c, dc = ode.c(t), (ode.c(t + h) - ode.c(t - h)) / (2 * h)
            dudt = (ode.u_of(t + h) - ode.u_of(t - h)) / (2 * h)
            torch.testing.assert_close(ode.dt_du(t), 1 / dudt, rtol=1e-6, atol=0)
            want = (drift / c - x * dc / c**2) / dudt
            y = ode.to_state(x, t)
            torch.testing.assert_close(ode.func(u, y), want, rtol=1e-6, atol=1e-9)
