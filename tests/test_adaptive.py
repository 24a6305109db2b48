"""Adaptive solvers: the embedded RK engine (diffsolve.rk) and the solvers of
diffsolve/solvers/adaptive.py (dopri5 & co., torchdiffeq, torchsde) on analytic problems (docs/math.md §6).
"""
import math

import pytest
import torch

import diffsolve as ds
from diffsolve import GaussianMixture
from diffsolve.reference import ode_reference
from diffsolve.rk import TABLEAUS, rk_solve
from diffsolve.ode import TIME_VARIABLES

F64 = torch.float64


# --- the RK engine on ODEs with known solutions ------------------------------------------------
A = torch.tensor([[-0.5, 2.0], [-2.0, -0.5]], dtype=F64)


def _linear(t, y):  # dy/dt = A y + cos t, rows independent; t scalar or per row
    c = torch.cos(t)
    return y @ A.T + (c.reshape(-1, 1) if c.dim() else c)


def _linear_exact(y0, t0, t1):
    # y = e^{A(t−t0)}(y0 − y_p(t0)) + y_p(t) with the periodic particular solution
    # y_p = P cos t + Q sin t, Q = (I + A²)⁻¹ 1, P = −A Q
    one = torch.ones(2, dtype=F64)
    Q = torch.linalg.solve(torch.eye(2, dtype=F64) + A @ A, one)
    P = -A @ Q

    def yp(t):
        return P * math.cos(t) + Q * math.sin(t)

    return (y0 - yp(t0)) @ torch.linalg.matrix_exp(A * (t1 - t0)).T + yp(t1)


Y0 = torch.tensor([[1.0, 0.3], [0.2, -1.0], [-0.7, 0.5]], dtype=F64)


@pytest.mark.parametrize("name", list(TABLEAUS))
def test_tableau_consistent_and_fixed_step_order(name):
    tab = TABLEAUS[name]
    tab.check()
    exact = _linear_exact(Y0, 0.0, 2.0)
    ns = (4, 8, 16) if tab.order >= 7 else (16, 32, 64) if tab.order >= 3 else (32, 64, 128)
    errs = [float((rk_solve(_linear, Y0, 0.0, 2.0, method=name, steps=n)[0] - exact).abs().max()) for n in ns]
    slopes = [math.log2(errs[i] / errs[i + 1]) for i in range(len(ns) - 1)]
    assert abs(slopes[-1] - tab.order) < 0.6, (name, errs, slopes)


@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("name", ["bosh3", "dopri5", "tsit5", "dop853"])
def test_adaptive_error_scales_with_tolerance_both_directions(name, per_sample):
    for t0, t1 in ((0.0, 2.0), (2.0, 0.0)):
        exact = _linear_exact(Y0, t0, t1)
        prev_nfe, errs = 0, []
        for tol in (1e-4, 1e-7):
            y, st = rk_solve(_linear, Y0, t0, t1, method=name, rtol=tol, atol=tol, per_sample=per_sample)
            errs.append(float((y - exact).abs().max()))
            # local control: the global error is the sum over ~10-250 steps, amplified by e^{0.5·2}
            # backwards (measured up to 30·tol for bosh3, 2.5·tol for dopri5)
            assert errs[-1] < 50 * tol, (name, tol, errs[-1])
            assert st["nfe"] > prev_nfe
            prev_nfe = st["nfe"]
            assert torch.all(st["t"] == t1)
            assert st["accepted"].shape == (3,) and bool((st["accepted"] > 0).all())
        assert 100 < errs[0] / errs[1] < 1e4  # tolerance proportionality


def _hard_row_problem(B=32, hard=5):
    """Row b integrates y' = cos(ω_b t), exact sin(ω_b T)/ω_b; ω is carried in the state with zero
    derivative. One row oscillates 20x faster: all its local error is concentrated there."""
    w = torch.ones(B, dtype=F64)
    w[hard] = 20.0
    y0 = torch.stack([torch.zeros(B, dtype=F64), w], 1)

    def f(t, y):
        return torch.stack([torch.cos(y[:, 1] * t), torch.zeros_like(y[:, 1])], 1)

    return f, y0, w


def test_per_sample_control_bounds_every_row_while_shared_norm_dilutes_the_hard_row():
    f, y0, w = _hard_row_problem()
    T, tol, hard = 3.0, 1e-4, 5
    exact = torch.sin(w * T) / w
    y_sh, st_sh = rk_solve(f, y0, 0.0, T, rtol=tol, atol=tol, per_sample=False)
    y_ps, st_ps = rk_solve(f, y0, 0.0, T, rtol=tol, atol=tol, per_sample=True)
    e_sh, e_ps = (y_sh[:, 0] - exact).abs(), (y_ps[:, 0] - exact).abs()
    # per-sample: every row within the tolerance; shared RMS norm over 32 rows lets the hard row
    # carry ~√32 times the tolerance (measured: 2.6e-4 vs 2.1e-5)
    assert float(e_ps.max()) < tol
    assert float(e_sh[hard]) > 2 * tol
    # and the easy rows stop early: far fewer row evaluations (measured 940 vs 3520)
    assert st_ps["row_evals"] < 0.5 * st_sh["row_evals"]
    assert int(st_ps["accepted"][hard]) > 3 * int(st_ps["accepted"][0])
    assert bool((st_sh["accepted"] == st_sh["accepted"][0]).all())


def test_per_sample_calls_only_active_rows_with_row_times():
    f, y0, _ = _hard_row_problem(B=4, hard=2)
    seen = []

    def spy(t, y):
        assert t.shape == (y.shape[0],) and t.dtype == F64
        seen.append(y.shape[0])
        return f(t, y)

    _, st = rk_solve(spy, y0, 0.0, 3.0, rtol=1e-5, atol=1e-5, per_sample=True)
    assert min(seen) == 1 and st["row_evals"] == sum(seen) and st["nfe"] == len(seen)


@pytest.mark.parametrize("per_sample,fixed", [(False, None), (True, None), (False, 5)])
@pytest.mark.parametrize("method", ["dopri5", "bosh3", "dop853", "euler_heun"])
def test_rows_mode_passes_the_stage_of_each_evaluation(method, per_sample, fixed):
    """With rows=True func gets (t, y, rows, stage): stage 0 first, then the starting-step probe as
    None (adaptive only); after that every step attempt evaluates its stages in order, up to the
    last (s − 1), on one set of rows; its first stage (0) only where the tableau is not FSAL."""
    from diffsolve.tableaus import get_tableau

    tab = get_tableau(method)
    f, y0, _ = _hard_row_problem(B=4, hard=2)
    seen = []

    def spy(t, y, rows, stage):
        seen.append((stage, tuple(rows.tolist())))
        return f(t, y)

    kw = dict(steps=fixed) if fixed else dict(rtol=1e-4, atol=1e-4)
    rk_solve(spy, y0, 0.0, 3.0, method=method, per_sample=per_sample, rows=True, **kw)
    assert seen[0][0] == 0 and [s for s, _ in seen].count(None) == (0 if fixed else 1)
    rest = seen[1 if fixed else 2:]
    attempts = []
    for stage, rows in rest:  # an attempt starts where the stage index does not increase
        if attempts and stage > attempts[-1][-1][0]:
            attempts[-1].append((stage, rows))
        else:
            attempts.append([(stage, rows)])
    for k, att in enumerate(attempts):
        stages = [s for s, _ in att]
        first = 1 if tab.fsal or k == 0 else 0
        if not tab.fsal and fixed and k == len(attempts) - 1 and stages == [0]:
            continue  # (no trailing first stage after the last fixed step)
        assert stages == list(range(first, tab.stages)), (k, stages)
        assert len({r for _, r in att}) == 1


@pytest.mark.parametrize("per_sample", [False, True])
def test_error_mask_keeps_a_component_from_steering_the_steps(per_sample):
    """A third component with a wild right-hand side (± noise) is integrated with the method's weights
    but, left out of the norm by error_mask, does not change a single step of the other two."""
    gen = torch.Generator().manual_seed(0)

    def f3(t, y):
        wild = 1e3 * torch.randn(y.shape[0], 1, generator=gen, dtype=F64)
        return torch.cat([_linear(t, y[:, :2]), wild], 1)

    mask = torch.tensor([True, True, False])
    y3, st3 = rk_solve(f3, torch.cat([Y0, torch.zeros(3, 1, dtype=F64)], 1), 0.0, 2.0, rtol=1e-6, atol=1e-6,
                       per_sample=per_sample, error_mask=mask)
    y2, st2 = rk_solve(_linear, Y0, 0.0, 2.0, rtol=1e-6, atol=1e-6, per_sample=per_sample)
    assert torch.equal(y3[:, :2], y2) and torch.equal(st3["accepted"], st2["accepted"])
    assert torch.equal(st3["rejected"], st2["rejected"]) and bool((y3[:, 2].abs() > 0).all())
    with pytest.raises(ValueError, match="error_mask"):
        rk_solve(_linear, Y0, 0.0, 1.0, error_mask=torch.tensor([True, True, True]))
    with pytest.raises(ValueError, match="error_mask"):
        rk_solve(_linear, Y0, 0.0, 1.0, error_mask=torch.tensor([False, False]))


def test_rk_solve_bad_input():
    with pytest.raises(ValueError, match="rtol"):
        rk_solve(_linear, Y0, 0.0, 1.0, rtol=0.0)
    with pytest.raises(ValueError, match="dopri5"):
        rk_solve(_linear, Y0, 0.0, 1.0, method="rk45")
    with pytest.raises(ValueError, match="norm"):
        rk_solve(_linear, Y0, 0.0, 1.0, norm="l2")
    with pytest.raises(RuntimeError, match="max_steps"):
        rk_solve(_linear, Y0, 0.0, 1.0, rtol=1e-12, atol=1e-12, max_steps=5)


# --- the solvers on the probability-flow ODE ----------------------------------------------------
@pytest.fixture(scope="module")
def ring():
    sch = ds.make_schedule("vp")
    den = GaussianMixture.ring().denoiser(sch, "eps")
    x = float(sch.sigma(sch.t_max)) * torch.randn(6, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    ref = ode_reference(den, x, sch.t_max, sch.t_min, rtol=1e-9, atol=1e-9)
    return den, x, ref


def _rms_err(a, b):
    return float((a - b).pow(2).mean(1).sqrt().max())


@pytest.mark.parametrize("solver", ["dopri5", "tsit5", "dop853"])
def test_dopri5_matches_reference_within_tolerance_scale(ring, solver):
    den, x, ref = ring
    errs = []
    for tol in (1e-4, 1e-6):
        r = ds.sample(den, x, solver=solver, solver_options=dict(rtol=tol, atol=tol), denoise_final=False)
        assert r.nfe == r.info["calls"]  # every evaluation counted at the denoiser
        errs.append(_rms_err(r.x, ref))
        assert errs[-1] < 30 * tol, (tol, errs[-1])
    assert errs[1] < errs[0] / 10


def test_time_variables_agree(ring):
    den, x, ref = ring
    outs = {v: ds.sample(den, x, solver="dopri5", denoise_final=False,
                         solver_options=dict(rtol=1e-6, atol=1e-6, time_variable=v)).x for v in TIME_VARIABLES}
    for v, out in outs.items():
        assert _rms_err(out, ref) < 3e-5, v
    assert _rms_err(outs["t"], outs["sigma_over_alpha"]) < 5e-5


def test_torchdiffeq_agrees_with_rk_engine(ring):
    den, x, ref = ring
    tol = 1e-5
    ours = ds.sample(den, x, solver="dopri5", solver_options=dict(rtol=tol, atol=tol), denoise_final=True)
    theirs = ds.sample(den, x, solver="torchdiffeq", solver_options=dict(method="dopri5", rtol=tol, atol=tol),
                       denoise_final=True)
    assert _rms_err(ours.x, theirs.x) < 30 * tol
    # same method, same controller family: comparable work (measured 99 vs 117 on a 16-sample ring)
    assert 0.5 < ours.nfe / theirs.nfe < 2.0


@pytest.mark.parametrize("variable", TIME_VARIABLES)
def test_torchdiffeq_in_every_time_variable(ring, variable):
    """torchdiffeq's first trial step can pass the end: in σ/α it went below 0, whose log made t NaN
    (a "time outside the range ... clip your grid" error, no grid given). Past the end is the end now.
    (torchdiffeq's RMS norm gives 4e-6 – 8e-6 here; its error is not monotone in tol: 6e-4 in t at 1e-6.)"""
    den, x, ref = ring
    tol = 1e-7
    out = ds.sample(den, x, solver="torchdiffeq", denoise_final=False,
                    solver_options=dict(rtol=tol, atol=tol, time_variable=variable))
    assert out.info["time_variable"] == variable
    assert _rms_err(out.x, ref) < 1000 * tol


def test_per_sample_ode_solve_is_batch_independent(ring):
    den, x, _ = ring
    opts = dict(rtol=1e-4, atol=1e-4, per_sample=True)
    batch = ds.sample(den, x, solver="dopri5", solver_options=opts)
    alone = ds.sample(den, x[2:3], solver="dopri5", solver_options=opts)
    torch.testing.assert_close(batch.x[2:3], alone.x, rtol=1e-12, atol=1e-12)
    assert int(batch.info["accepted"][2]) == int(alone.info["accepted"][0])


# --- torchsde on the reverse SDE ------------------------------------------------------------------
def _gaussian():
    sch = ds.make_schedule("vp")
    mu, v = torch.tensor([0.5, -1.0], dtype=F64), torch.tensor([0.3, 2.0], dtype=F64)
    return sch, mu, v, GaussianMixture([1.0], mu[None], v[None]).denoiser(sch, "eps")


def _euler_maruyama_moments(sch, mu, v, eta, steps, grid="time"):
    """Exact mean and variance after `steps` Euler–Maruyama steps (on the grid of that kind) of the
    reverse SDE (docs/math.md (3.2)) for Gaussian data, where the drift is linear: b = a(t) x + c(t)."""
    t = ds.make_grid(sch, steps, grid)
    m = torch.zeros(2, dtype=F64)
    V = float(sch.sigma(sch.t_max)) ** 2 * torch.ones(2, dtype=F64)
    for i in range(steps):
        ti, dt = t[i], float(t[i + 1] - t[i])
        al, s = [float(z) for z in sch.alpha_sigma(ti)]
        g2 = float(sch.g2(ti))
        var_t = al * al * v + s * s
        k = 0.5 * (g2 + eta**2 * g2)
        a = float(sch.f(ti)) + k / var_t
        c = -k * al * mu / var_t
        m = m + (a * m + c) * dt
        V = (1 + a * dt) ** 2 * V + eta**2 * g2 * abs(dt)
    return m, V


@pytest.mark.parametrize("grid", ["time", "log_snr", "karras"])
def test_torchsde_euler_is_euler_maruyama_on_the_grid(grid):
    """torchsde runs in the grid index (one step per grid step, drift × Δt, ν × √Δt), so its Euler is
    Euler–Maruyama on the grid: the exact moments of that discrete process (Gaussian data)."""
    sch, mu, v, den = _gaussian()
    n, steps = 300, 30
    r = ds.sample(den, shape=(n, 2), seeds=f"0-{n - 1}", solver="torchsde", eta=1.0, denoise_final=False,
                  solver_options=dict(method="euler", steps=steps, grid=grid))
    m, V = _euler_maruyama_moments(sch, mu, v, 1.0, steps, grid)
    z_mean = (r.x.mean(0) - m) / (V / n).sqrt()
    z_var = (r.x.var(0) / V - 1) / math.sqrt(2 / (n - 1))
    assert bool((z_mean.abs() < 4).all()) and bool((z_var.abs() < 4).all()), (z_mean, z_var)
    assert steps <= r.nfe <= steps + 1


def test_torchsde_default_grid_on_edm():
    """On EDM (t = σ ∈ [0.002, 80]) equal steps in t leave the small-σ end almost unresolved
    (variance 7–80× the exact one at 100 steps, measured); the default log_snr grid does not."""
    sch = ds.make_schedule("edm")
    mu, v = torch.tensor([0.5, -1.0], dtype=F64), torch.tensor([0.3, 2.0], dtype=F64)
    den = GaussianMixture([1.0], mu[None], v[None]).denoiser(sch, "eps")
    n = 400
    r = ds.sample(den, shape=(n, 2), seeds=f"0-{n - 1}", solver="torchsde", eta=1.0, denoise_final=False,
                  solver_options=dict(steps=100))
    s = float(sch.sigma(sch.t_min))
    V = v + s * s  # exact p_{t_min} (α = 1 on EDM)
    assert bool(((r.x.mean(0) - mu).abs() < 5 * (V / n).sqrt()).all())
    assert bool(((r.x.var(0) / V - 1).abs() < 5 * math.sqrt(2 / n) + 0.1).all()), r.x.var(0) / V
    bad = ds.sample(den, shape=(n, 2), seeds=f"0-{n - 1}", solver="torchsde", eta=1.0, denoise_final=False,
                    solver_options=dict(steps=100, grid="time"))
    assert bool((bad.x.var(0) / V > 3).any())  # what the old default did


def test_torchsde_euler_milstein_and_fine_grid():
    sch, mu, v, den = _gaussian()
    steps = 30
    r = ds.sample(den, shape=(4, 2), seeds="0-3", solver="torchsde", eta=1.0, denoise_final=False,
                  solver_options=dict(method="euler", steps=steps))
    # the Euler–Maruyama moments approach the exact p_{t_min} moments (docs/math.md §6) as steps grow
    a, s = [float(z) for z in sch.alpha_sigma(sch.t_min)]
    m_fine, V_fine = _euler_maruyama_moments(sch, mu, v, 1.0, 2000)
    torch.testing.assert_close(m_fine, a * mu, rtol=0, atol=5e-3)
    torch.testing.assert_close(V_fine, a * a * v + s * s, rtol=1e-2, atol=0)
    assert steps <= r.nfe <= steps + 1  # torchsde's Euler makes one drift call per step (+1 at the start)
    # noise depends on t only: Milstein's correction g ∂g/∂x vanishes, so it is Euler–Maruyama exactly
    r2 = ds.sample(den, shape=(4, 2), seeds="0-3", solver="torchsde", eta=1.0, denoise_final=False,
                   solver_options=dict(method="milstein", steps=steps))
    torch.testing.assert_close(r2.x, r.x[:4], rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", ["euler", "srk", "heun"])
def test_torchsde_per_sample_reproducible_across_batch_sizes(method):
    _, _, _, den = _gaussian()
    opts = dict(method=method, steps=10)
    batch = ds.sample(den, shape=(3, 2), seeds=[7, 8, 9], solver="torchsde", eta=0.5, solver_options=opts)
    alone = ds.sample(den, shape=(1, 2), seeds=[8], solver="torchsde", eta=0.5, solver_options=opts)
    torch.testing.assert_close(batch.x[1:2], alone.x, rtol=0, atol=1e-12)
    other = ds.sample(den, shape=(1, 2), seeds=[10], solver="torchsde", eta=0.5, solver_options=opts)
    assert not torch.allclose(other.x, alone.x)


def test_torchsde_unstable_steps_are_refused_and_seeds_hold_across_dtypes():
    # Euler–Maruyama at eta=5 on 100 steps grows an error ~1e14× (the samples were finite garbage); reversible
    # Heun does not damp the dissipative reverse drift at all; the checked grids run, and a seed's Brownian path
    # is the same in a float32 and a float64 state (it was drawn in the state's dtype: another path)
    den = GaussianMixture.ring().denoiser("vp")
    for spec, eta in (("torchsde:steps=100", 5.0), ("torchsde:steps=100:method=heun", 5.0),
                      ("torchsde:steps=400:method=reversible_heun", 1.0)):
        with pytest.raises(ValueError, match="is unstable on this grid"):
            ds.sample(den, shape=(2, 2), seeds="0-1", solver=spec, eta=eta)
    x = [ds.sample(den, seeds="0-3", solver="torchsde:steps=50", dtype=dt).x.double() for dt in (torch.float32,
                                                                                                  torch.float64)]
    torch.testing.assert_close(x[0], x[1], rtol=0, atol=1e-5)


def test_torchsde_spends_no_call_on_its_shape_check():
    # torchsde calls the drift at (t0, y0) to check its shapes and again for the first step: one network call
    den = GaussianMixture.ring().denoiser("vp")
    r = ds.sample(den, shape=(2, 2), seeds="0-1", solver="torchsde:steps=10", eta=1.0, denoise_final=False)
    assert r.nfe == 10
    with torch.inference_mode():  # (its tensors keep no version counter: the memo steps aside)
        again = ds.sample(den, shape=(2, 2), seeds="0-1", solver="torchsde:steps=10", eta=1.0, denoise_final=False)
    torch.testing.assert_close(again.x, r.x, rtol=0, atol=0)


def test_torchsde_heun_and_srk_moments_close_to_exact():
    sch, mu, v, den = _gaussian()
    a, s = [float(z) for z in sch.alpha_sigma(sch.t_min)]
    n = 200
    for method, steps in (("heun", 40), ("srk", 10)):
        r = ds.sample(den, shape=(n, 2), seeds=f"0-{n - 1}", solver="torchsde", eta=1.0, denoise_final=False,
                      solver_options=dict(method=method, steps=steps))
        V = a * a * v + s * s
        assert bool(((r.x.mean(0) - a * mu).abs() < 5 * (V / n).sqrt() + 0.05).all()), method
        assert bool(((r.x.var(0) / V - 1).abs() < 5 * math.sqrt(2 / n) + 0.15).all()), method


# --- bad input ----------------------------------------------------------------------------------
def test_bad_input():
    sch, _, _, den = _gaussian()
    with pytest.raises(ValueError, match="rtol"):
        ds.sample(den, shape=(2, 2), solver="dopri5", solver_options=dict(rtol=0.0))
    with pytest.raises(ValueError, match="torchsde"):  # ODE-only method with eta > 0 names the SDE solvers
        ds.sample(den, shape=(2, 2), solver="dopri5", eta=1.0)
    with pytest.raises(ValueError, match="log_snr"):
        ds.sample(den, shape=(2, 2), solver="dopri5", solver_options=dict(time_variable="lambda"))
    with pytest.raises(ValueError, match="tolerances"):
        ds.sample(den, shape=(2, 2), solver="dopri5", steps=10)
    with pytest.raises(ValueError, match="grid kinds do not apply"):
        ds.sample(den, shape=(2, 2), solver="dopri5", grid="karras")
    with pytest.raises(ValueError, match=r"steps=N, grid=KIND"):
        ds.sample(den, shape=(2, 2), solver="torchsde", eta=1.0, nfe=10)
    with pytest.raises(ValueError, match="unknown grid 'kar' for torchsde"):
        ds.sample(den, shape=(2, 2), solver="torchsde", eta=1.0, solver_options=dict(grid="kar"))
    with pytest.raises(ValueError, match="reversible_heun"):
        ds.sample(den, shape=(2, 2), solver="torchsde", eta=1.0, solver_options=dict(method="rk4"))
    with pytest.raises(ValueError, match="dopri8"):
        ds.sample(den, shape=(2, 2), solver="torchdiffeq", solver_options=dict(method="rk45"))
    with pytest.raises(ValueError, match="step_size"):
        ds.sample(den, shape=(2, 2), solver="torchdiffeq", solver_options=dict(method="rk4"))


def test_torchsde_adaptive_steps_stop_at_max_steps():
    """torchsde's adaptive steps have no limit of their own: on a network whose SDE they cannot resolve the
    step size collapses and the run went on for ever; past max_steps it is an error naming the way out."""
    den = ds.Denoiser(lambda x, t: torch.tanh(x) * (1 + t[:, None]), "edm", "eps", net_dtype=torch.float32,
                      shape=(2,))
    with pytest.raises(RuntimeError, match="did not reach the end within the drift calls of max_steps=50 steps"):
        ds.sample(den, seeds=[5], solver="torchsde:adaptive=true:max_steps=50", dtype=torch.float32)
    assert den.nfe <= 3 * 4 * 50 + 4


def test_gradients_through_adaptive_steps_are_the_solutions():
    """``enable_grad=True`` through the adaptive engine differentiated the controller's step sizes too (the
    network's time is detached), so d(loss)/dx_T was wrong and grew as the tolerance tightened (3.2 at rtol
    1e-8 where the gradient's largest entry is 4.8; 58 at 1e-10). The step sizes are constants now: the
    gradient matches central differences of the same solves."""
    den = ds.GaussianMixture.ring().denoiser("vp", "eps")
    x0 = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def loss(x, **kw):
        out = ds.sample(den, x=x, solver="dopri5", solver_options=dict(rtol=1e-9, atol=1e-9, **kw),
                        denoise_final=False, **({"enable_grad": True} if x.requires_grad else {})).x
        return (out[:, 0] ** 2).sum() + out[:, 1].sum()

    for kw in ({}, {"per_sample": True}):
        x = x0.clone().requires_grad_(True)
        grad = torch.autograd.grad(loss(x, **kw), x)[0]
        fd = torch.zeros_like(x0)
        for i in range(3):
            for j in range(2):
                e = torch.zeros_like(x0)
                e[i, j] = 1e-5
                fd[i, j] = (float(loss(x0 + e, **kw)) - float(loss(x0 - e, **kw))) / 2e-5
        assert float((grad - fd).abs().max()) < 1e-3 * float(fd.abs().max()), (kw, grad, fd)


def test_torchdiffeq_explicit_adams_is_refused():
    """torchdiffeq's explicit_adams does not converge (dy/dt = -y over [0, 1], step 0.01: 0.735 for 0.368;
    on the ring its error grew from 1.1 to 2.4 as the step went from 0.1 to 0.001): refused, naming others."""
    den = ds.GaussianMixture.ring().denoiser("vp", "eps")
    with pytest.raises(ValueError, match="explicit_adams does not converge"):
        ds.sample(den, seeds="0-1", solver="torchdiffeq", solver_options=dict(method="explicit_adams",
                                                                              options=dict(step_size=0.01)))


def test_torchdiffeq_fixed_step_methods_take_a_number_of_steps(ring):
    """steps=N runs exactly N equal steps in the time variable (rk4: 4 calls a step, + the final denoise),
    from the command line's spec too; rk4's error falls ~16x per halving of the step."""
    den, x, ref = ring
    errs = []
    for n in (10, 20, 40):
        out = ds.sample(den, x, solver=f"torchdiffeq:method=rk4:steps={n}", denoise_final=False)
        assert out.nfe == 4 * n
        errs.append(_rms_err(out.x, ref))
    assert errs[0] / errs[1] > 8 and errs[1] / errs[2] > 8, errs


@pytest.mark.parametrize("spec, opts, match", [
    ("torchdiffeq:method=rk4", {}, "fixed-step: give steps=N"),
    ("torchdiffeq:steps=4", {}, "steps= is for torchdiffeq's fixed-step methods"),
    ("torchdiffeq:method=rk4:steps=0", {}, "steps must be an integer from 1 to 10"),
    ("torchdiffeq", dict(options="step_size=0.1"), "options must be a dict"),
    ("torchdiffeq", dict(method="rk4", options=dict(step_size=-0.1)), "step_size must be a positive finite"),
    ("torchdiffeq", dict(method="rk4", options=dict(step_size=float("nan"))), "step_size must be a positive finite"),
])
def test_torchdiffeq_options_are_checked_before_the_run(spec, opts, match):
    den = ds.GaussianMixture.ring().denoiser("vp", "eps")
    with pytest.raises(ValueError, match=match):
        ds.sample(den, seeds="0-1", solver=spec, solver_options=opts or None)


def test_torchdiffeq_step_limit_says_what_to_change():
    den = ds.GaussianMixture.ring().denoiser("vp", "eps")
    with pytest.raises(RuntimeError, match="torchdiffeq stopped: max_num_steps exceeded.*loosen rtol/atol"):
        ds.sample(den, seeds="0-1", solver="torchdiffeq", solver_options=dict(options=dict(max_num_steps=3)))


def test_a_tolerance_below_the_arithmetic_precision_warns():
    """rtol below 1 % of the epsilon of the coarser of the state's and the network's dtype: the step control
    chases round-off (diffsolve.ode._check_precision); above it, or in float64, nothing is said."""
    import warnings

    sch = ds.make_schedule("vp")
    den = GaussianMixture.ring().denoiser(sch, "eps")
    x = float(sch.sigma(sch.t_max)) * torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    plain = ds.Denoiser(lambda y, t: den.net(y.double(), t).to(y.dtype), sch, "eps")  # runs in the state's dtype
    with pytest.warns(UserWarning, match=r"rtol=1e-10 is below 1 % of the precision of the solver state \(float32"):
        ds.sample(plain, x, solver="dopri5:rtol=1e-10:atol=1e-10")
    half = ds.Denoiser(lambda y, t: den.net(y.double(), t).half(), sch, "eps", net_dtype=torch.float16)
    with pytest.warns(UserWarning, match=r"precision of the network's arithmetic \(float16"):
        ds.sample(half, x.double(), solver="dopri5:rtol=1e-6:atol=1e-6")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds.sample(plain, x.double(), solver="dopri5:rtol=1e-10:atol=1e-10")
        ds.sample(plain, x, solver="dopri5:rtol=1e-8:atol=1e-8")
        ds.sample(half, x.double(), solver="dopri5:rtol=1e-4:atol=1e-4")
        ode_reference(plain, x, sch.t_max, sch.t_min)  # rtol 1e-9 floored at a tenth of float32's epsilon


def test_adaptive_torchsde_converges_on_each_samples_own_path():
    """With adaptive steps each Brownian path depended on the times it was queried at, so the solution did
    not converge as the tolerance fell (VP ring, η = 1: most samples ended more than 0.1 apart at rtol 1e-2 and
    1e-3, in other modes). Each path is now a function of its seed alone."""
    den = ds.GaussianMixture.ring().denoiser("vp", "eps")
    outs = [ds.sample(den, seeds="0-7", solver=f"torchsde:adaptive=true:rtol={tol}:atol={tol}", eta=1.0).x
            for tol in (1e-2, 1e-3)]
    moved = (outs[0] - outs[1]).norm(dim=1)
    assert int((moved > 0.1).sum()) <= 1 and float(moved.median()) < 0.05, moved


def test_dop853_in_float32_takes_a_step_whose_error_estimates_are_zero():
    """DOP853's combined error r²/√(r² + 0.01 r3²) was 0/0 = NaN, so inf, when both estimates rounded to 0
    in a float32 state (its clamp at 1e-300 is 0 there): every step was rejected until max_steps."""
    from diffsolve._diffusers import schedule_from_diffusers

    sch, _ = schedule_from_diffusers({"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
                                      "rescale_betas_zero_snr": True})  # (its first step's estimates are 0)
    den = ds.GaussianMixture.ring(n_modes=4, radius=1.0, std=0.3).denoiser(sch, "eps")
    x = ds.sample(den, shape=(8, 2), seeds="0-7", solver="dop853", denoise_final=False).x
    x32 = ds.sample(den, shape=(8, 2), seeds="0-7", solver="dop853:max_steps=2000", dtype=torch.float32,
                    denoise_final=False).x
    assert float((x32.double() - x).abs().max()) < 1e-3
