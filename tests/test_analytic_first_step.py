"""The analytic first step (docs/math.md §27): the run's first evaluation, at t[0], answered by the
exact network of standard-normal data instead of a network call."""
import pytest
import torch

import diffsolve as ds

F64 = torch.float64
PREDICTIONS = ("eps", "x0", "v", "velocity", "score")


def _standard_normal(d=3):
    return ds.GaussianMixture([1.0], torch.zeros(1, d), 1.0)


class _Counting:
    """A network that records the time labels it is called at."""

    def __init__(self, den):
        self.den, self.labels = den, []

    def __call__(self, x, label):
        self.labels.append(float(label[0]))
        return self.den.net(x, label)


@pytest.mark.parametrize("schedule", ["ddpm", "edm", "flow"])
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_prior_output_is_the_standard_normal_posterior_mean(schedule, prediction):
    """In every prediction type, prior_output converts back to x̂0 = α x / (α² + σ²), and for
    standard-normal data it is the exact network's own output."""
    sch = ds.make_schedule(schedule)
    den = _standard_normal().denoiser(sch, prediction)
    x = torch.randn(4, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    for t in (sch.t_max, 0.5 * (sch.t_max + sch.t_min)):
        tt = torch.tensor(t, dtype=F64)
        a, s = float(sch.alpha(tt)), float(sch.sigma(tt))
        y = den.prior_output(x, t)
        torch.testing.assert_close(den.convert(y, x, tt, prediction, "x0"), x * a / (a * a + s * s))
        torch.testing.assert_close(y, den.raw(x, tt))


@pytest.mark.parametrize("schedule,prediction", [("ddpm", "eps"), ("edm", "x0"), ("flow", "velocity")])
@pytest.mark.parametrize("solver", ["ddim", "dpmpp_2m", "unipc:order=3", "deis", "heun", "dpmpp_3m"])
def test_exact_for_standard_normal_data_with_one_call_fewer(schedule, prediction, solver):
    """Where the prior is the exact network, the run with the analytic first step is the run
    without it on the same grid, and the network is called once fewer, never at t[0]."""
    sch = ds.make_schedule(schedule)
    den = _standard_normal().denoiser(sch, prediction)
    net = _Counting(den)
    counted = ds.Denoiser(net, sch, prediction, time_label=den.time_label)
    t = ds.grids.make_grid(sch, 6, "log_snr")
    x = float(sch.sigma(t[0])) * torch.randn(5, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    plain = ds.sample(den, x, solver=solver, grid=t, denoise_final=False)
    fast = ds.sample(counted, x, solver=solver, grid=t, denoise_final=False, analytic_first_step=True)
    assert fast.nfe == plain.nfe - 1 == len(net.labels)
    assert float(counted.time_label(t[:1])[0]) not in net.labels
    torch.testing.assert_close(fast.x, plain.x, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("solver,per_step", [("dpmpp_2m", 1), ("unipc", 1), ("heun", 2)])
def test_a_budget_of_n_calls_buys_the_steps_of_n_plus_one(solver, per_step):
    gm = ds.GaussianMixture.ring()
    den = gm.denoiser(ds.make_schedule("ddpm"), "eps")
    for nfe in (4, 5, 6, 9):
        plain = ds.sample(den, seeds="0-3", nfe=nfe, solver=solver, denoise_final=False)
        fast = ds.sample(den, seeds="0-3", nfe=nfe, solver=solver, denoise_final=False, analytic_first_step=True)
        assert fast.nfe <= nfe and plain.nfe <= nfe
        want = ds.solvers.get_solver(solver).steps_for_nfe(nfe + 1)
        assert len(fast.t) - 1 == want >= len(plain.t) - 1
        kind = ds.solvers.get_solver(solver).default_grid(den.schedule)  # heun's own: EDM's Karras grid
        torch.testing.assert_close(fast.t, ds.grids.make_grid(den.schedule, want, kind), rtol=0, atol=0)


def test_error_is_the_data_mean_carried_by_the_first_step():
    """For data N(μ, I) the prior's x̂0 misses the posterior mean by about μ; the first step
    (data prediction, h = λ_1 − λ_0) carries it into x(t_1) with weight α_1 (1 − e^{−h}), so the
    error after that step is about α_1 (1 − e^{−h}) |μ| and grows linearly with μ."""
    sch = ds.make_schedule("ddpm")
    t = ds.grids.make_grid(sch, 4, "log_snr")
    lam = sch.log_snr(t)
    a1 = float(sch.alpha(t[1]))
    weight = a1 * (1 - float(torch.exp(-(lam[1] - lam[0]))))
    x = float(sch.sigma(t[0])) * torch.randn(64, 2, dtype=F64, generator=torch.Generator().manual_seed(2))
    errs = []
    for mu in (0.5, 1.0, 2.0):
        den = ds.GaussianMixture([1.0], torch.full((1, 2), mu), 1.0).denoiser(sch, "eps")
        first = ds.sample(den, x, solver="ddim", grid=t[:2], denoise_final=False, analytic_first_step=True).x
        exact = ds.sample(den, x, solver="ddim", grid=t[:2], denoise_final=False).x
        errs.append(float((first - exact).abs().mean()))
        assert errs[-1] == pytest.approx(weight * mu, rel=0.05)
    assert errs[1] == pytest.approx(2 * errs[0], rel=0.05) and errs[2] == pytest.approx(2 * errs[1], rel=0.05)


def test_the_default_call_uses_it_up_to_six_evaluations_and_to_nine_with_the_karras_piece():
    for name, prediction, up_to in (("ddpm", "eps", ds.defaults.KARRAS_ANALYTIC_UP_TO),
                                    ("edm", "x0", ds.defaults.TINY_BUDGET)):
        den = ds.GaussianMixture.ring().denoiser(ds.make_schedule(name), prediction)
        for nfe in (3, 5, 6, 7, 9, 10):
            r = ds.sample(den, seeds="0-3", nfe=nfe)
            assert r.nfe == nfe and len(r.t) - 1 == nfe + (nfe <= up_to), (name, nfe)
    den = ds.GaussianMixture.ring().denoiser(ds.make_schedule("ddpm"), "eps")
    off = ds.sample(den, seeds="0-3", nfe=5, analytic_first_step=False)
    assert off.nfe == 5 and len(off.t) - 1 == 5


def test_reproducible_across_batches():
    den = ds.GaussianMixture.ring().denoiser(ds.make_schedule("ddpm"), "eps")
    whole = ds.sample(den, seeds="0-7", nfe=5).x
    part = ds.sample(den, seeds="4-7", nfe=5).x
    torch.testing.assert_close(part, whole[4:], rtol=0, atol=0)


def test_refused_for_adaptive_solvers_and_non_flags():
    den = ds.GaussianMixture.ring().denoiser(ds.make_schedule("ddpm"), "eps")
    with pytest.raises(ValueError, match="chooses its own steps.*analytic_first_step=False"):
        ds.sample(den, seeds="0-3", solver="dopri5", analytic_first_step=True)
    with pytest.raises(TypeError, match="analytic_first_step"):
        ds.sample(den, seeds="0-3", nfe=5, analytic_first_step="yes")


def test_a_stochastic_solver_takes_it_too():
    den = ds.GaussianMixture.ring().denoiser(ds.make_schedule("ddpm"), "eps")
    r = ds.sample(den, seeds="0-3", nfe=6, solver="ddim", eta=1.0, analytic_first_step=True)
    assert r.nfe == 6 and len(r.t) - 1 == 6  # 6 steps and the final denoise: one evaluation free
    assert torch.isfinite(r.x).all()



def test_a_schedule_from_sigma_one_starts_where_the_defaults_were_measured():
    """A grid kind on a flow schedule from σ = 1 starts at START_LOG_SNR, the state carried there from
    t_max by the exact flow of standard-normal data (docs/math.md (27.4)): the same run as on the
    flow schedule that starts there, from the scaled state."""
    from diffsolve.defaults import START_LOG_SNR, default_start, prior_flow_scale

    gm = ds.GaussianMixture.ring()
    sch = ds.FlowSchedule(t_max=1 - 1e-9)
    den = gm.denoiser(sch, "velocity")
    x = torch.randn(16, 2, dtype=F64, generator=torch.Generator().manual_seed(3))
    ts = default_start(sch)
    assert float(sch.log_snr(torch.tensor(ts, dtype=F64))) == pytest.approx(START_LOG_SNR, abs=1e-9)
    for nfe, solver in ((5, None), (12, None), (8, "unipc")):
        r = ds.sample(den, x, nfe=nfe, solver=solver)
        assert float(r.t[0]) == pytest.approx(ts, abs=1e-12) and r.nfe == nfe
        c = prior_flow_scale(sch, sch.t_max, ts)
        torch.testing.assert_close(r.x_init, x * c, rtol=0, atol=0)
        there = gm.denoiser(ds.FlowSchedule(t_max=ts), "velocity")
        want = ds.sample(there, x * c, nfe=nfe, solver=solver)
        torch.testing.assert_close(r.t, want.t, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(r.x, want.x, rtol=1e-9, atol=1e-9)
    # for standard-normal data the scaling is the exact flow: same end point as from t_max
    std = _standard_normal(2).denoiser(sch, "velocity")
    exact = ds.sample(std, x, solver="dopri5", solver_options=dict(rtol=1e-10, atol=1e-10),
                      grid=torch.tensor([sch.t_max, ts], dtype=F64), denoise_final=False).x
    torch.testing.assert_close(exact, x * prior_flow_scale(sch, sch.t_max, ts), rtol=1e-7, atol=1e-7)
    # an explicit grid, and a schedule that starts above START_LOG_SNR, are left as they are
    t = ds.grids.make_grid(sch, 5, "log_snr")
    assert float(ds.sample(den, x, solver="ddim", grid=t).t[0]) == sch.t_max
    assert default_start(ds.make_schedule("ddpm")) is None and default_start(ds.make_schedule("flow")) is None
    assert float(ds.sample(gm.denoiser(ds.make_schedule("ddpm"), "eps"), x, nfe=5).t[0]) == 1.0


def test_the_default_call_leaves_it_out_where_the_signal_is_not_small():
    """The default call's analytic first step only where the run starts at α/σ ≤ AFS_MAX_SIGNAL: on a VP
    schedule cut at t_max = 0.5 (α/σ = 0.29) its error, about α times the data's mean (docs/math.md
    (27.2)), made the default call at 5 evaluations 2.8× worse than the same call without it."""
    from diffsolve.defaults import default_run
    from diffsolve.reference import ode_reference

    for name in ("ddpm", "cosine", "edm", "flow"):  # the schedules it was measured on keep it
        assert default_run(5, ds.make_schedule(name)).analytic_first_step
    gm = ds.GaussianMixture.random(d=8, n_modes=3, seed=1)
    sch = ds.VPSchedule(t_max=0.5)
    den = gm.denoiser(sch)
    assert not default_run(5, sch).analytic_first_step
    g = torch.Generator().manual_seed(0)
    a, s = (float(v) for v in sch.alpha_sigma(torch.tensor(0.5, dtype=F64)))
    x = a * gm.sample(64, generator=g).to(F64) + s * torch.randn(64, 8, dtype=F64, generator=g)
    ref = ode_reference(den, x, 0.5, sch.t_min, rtol=1e-10, atol=1e-10)
    err = [float((ds.sample(den, x, nfe=5, analytic_first_step=a).x - ref).pow(2).mean().sqrt()) for a in (None, True)]
    assert err[1] / err[0] == pytest.approx(2.8, abs=0.1)
    # judged where the run starts: an explicit grid that starts late on a flow schedule (SDEdit-like) has none
    flow = ds.make_schedule("flow")
    t = ds.make_grid(flow, 6, "log_snr")
    assert ds.sample(gm.denoiser(flow), seeds="0-1", nfe=6).analytic_first_step
    assert not ds.sample(gm.denoiser(flow), seeds="0-1", grid=t[2:]).analytic_first_step
    assert ds.sample(gm.denoiser(flow), seeds="0-1", grid=t).analytic_first_step


def test_never_the_runs_only_evaluation():
    """``sample(model, steps=1)`` took its one step with the analytic evaluation: no network call, the same
    "sample" for every model. By default a run of one evaluation now asks the network (asked for explicitly,
    the analytic step alone is what the caller measures, as the test above does)."""
    import diffsolve as ds

    zero = ds.Denoiser(lambda x, t: 0 * x, "vp", prediction="eps", shape=(3,))
    other = ds.Denoiser(lambda x, t: 100 + x, "vp", prediction="eps", shape=(3,))
    a, b = ds.sample(zero, seeds=[0, 1], steps=1), ds.sample(other, seeds=[0, 1], steps=1)
    assert a.nfe == b.nfe == 1 and not a.analytic_first_step and not torch.equal(a.x, b.x)
    assert ds.sample(zero, seeds=[0, 1], steps=2).analytic_first_step  # two steps: one of them by the network
    assert ds.sample(zero, seeds=[0, 1], steps=1, analytic_first_step=True).nfe == 0


def test_heun_runs_on_its_own_grid_by_default():
    """heun named without a grid ran on the log-SNR grid, whose first step from s = 160 over-weights the
    trapezoid's correction: RMS error 28 on the ring at 4 evaluations (DDPM). It now runs on EDM's Karras grid
    in s (6.1 there), and on the uniform time grid in t on a flow schedule (diffusers' FlowMatchHeun's)."""
    from diffsolve.reference import ode_reference

    gm = ds.GaussianMixture.ring()
    sch = ds.make_schedule("ddpm")
    den = gm.denoiser(sch, "eps")
    x = float(sch.sigma(torch.tensor(sch.t_max, dtype=F64))) * torch.randn(
        256, 2, dtype=F64, generator=torch.Generator().manual_seed(5))
    ref = den.x0(ode_reference(den, x, sch.t_max, sch.t_min, rtol=1e-9, atol=1e-9), sch.t_min)

    def rms(grid=None):
        out = ds.sample(den, x, solver="heun", nfe=4, grid=grid)
        return float((out.x - ref).pow(2).mean().sqrt()), out.t

    own, t = rms()
    torch.testing.assert_close(t, ds.grids.make_grid(sch, len(t) - 1, "karras"), rtol=0, atol=0)
    assert own < rms("log_snr")[0] / 3
    flow = gm.denoiser(ds.make_schedule("flow"), "velocity")
    t = ds.sample(flow, seeds="0-1", solver="heun", nfe=6).t
    torch.testing.assert_close(t, ds.grids.make_grid(flow.schedule, len(t) - 1, "time"), rtol=0, atol=0)
