"""The default run of ``sample(model, nfe=N)`` (diffsolve/defaults.py): the rule, and that the call
runs exactly the configuration the rule names, on every schedule family."""
import math
import traceback

import pytest
import torch

import diffsolve as ds
from diffsolve.defaults import (DENOISE_ABOVE, FLOW_ANALYTIC_UP_TO, KARRAS_ANALYTIC_UP_TO, SMALL_BUDGET, TINY_BUDGET,
                                DefaultRun, default_run)
from diffsolve.grids import make_grid

F64 = torch.float64
SCHEDULES = {"ddpm": "eps", "cosine": "eps", "edm": "x0", "flow": "velocity", "vp": "eps", "ve": "eps"}


def _rule(n, family):
    if family == "edm" and TINY_BUDGET < n <= DENOISE_ABOVE:
        return DefaultRun("deis:lower_order_final=false", "karras", False)
    if n <= TINY_BUDGET:
        return DefaultRun("dpmpp_2m:lower_order_final=false", "log_snr", False, True)
    if n <= SMALL_BUDGET and family != "flow":
        return DefaultRun("deis:lower_order_final=false", "karras", False,
                          n <= KARRAS_ANALYTIC_UP_TO and family in ("ddpm", "cosine", "vp", None))
    return DefaultRun("deis" if n <= SMALL_BUDGET else "unipc:order=3", "log_snr", n > DENOISE_ABOVE,
                      family == "flow" and n <= FLOW_ANALYTIC_UP_TO)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_the_rule_by_budget_and_family(name):
    sch = ds.make_schedule(name)
    for n in range(1, 60):
        assert default_run(n, sch) == _rule(n, name), (name, n)
    assert default_run(10) == _rule(10, None)  # no schedule: the rule of every family but EDM's and flow's


def test_the_karras_piece_needs_a_start_with_some_signal():
    """deis on the Karras grid at 7-12 evaluations only where the run starts at α/σ >= KARRAS_MIN_SIGNAL: a VP
    table rescaled to zero terminal SNR, started at α/σ = 0.001 by default_start, keeps deis with its
    lower-order last steps on log_snr (as a flow schedule does); started later, at α/σ = 0.005, it runs the
    Karras piece."""
    from diffsolve.adapters import schedule_from_diffusers
    from diffsolve.defaults import KARRAS_MIN_SIGNAL

    zero_snr, _ = schedule_from_diffusers(dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                               beta_schedule="scaled_linear", rescale_betas_zero_snr=True))
    assert ds.defaults.default_start(zero_snr) is not None
    assert default_run(10, zero_snr) == DefaultRun("deis", "log_snr", False, False)
    assert default_run(5, zero_snr).analytic_first_step
    later = float(zero_snr.t_of_log_snr(torch.tensor(math.log(2 * KARRAS_MIN_SIGNAL), dtype=F64)))
    assert default_run(10, zero_snr, t_start=later) == DefaultRun("deis:lower_order_final=false", "karras", False)
    assert default_run(8, zero_snr, t_start=later).analytic_first_step  # α/σ = 0.005 <= AFS_MAX_SIGNAL
    r = ds.sample(ds.GaussianMixture.ring().denoiser(zero_snr, "v"), seeds="0-3", nfe=10)
    assert r.solver.name == "deis" and r.solver.lower_order_final


@pytest.mark.parametrize("name", ["ddpm", "edm"])
def test_on_a_grid_the_call_names_deis_keeps_its_lower_order_last_steps(name):
    """The Karras piece's third order to the last step was chosen on the Karras grid: a call that names
    another grid (a kind or times) gets deis with its lower-order last steps there; on Karras, the piece."""
    sch = ds.make_schedule(name)
    den = ds.GaussianMixture.ring().denoiser(sch, SCHEDULES[name])
    for grid, lof in (("time", True), ("log_snr", True), (make_grid(sch, 10, "quadratic"), True), ("karras", False)):
        assert default_run(10, sch, grid=grid).solver == ("deis" if lof else "deis:lower_order_final=false")
        if isinstance(grid, str):
            assert ds.sample(den, seeds="0-3", nfe=10, grid=grid).solver.lower_order_final is lof


def test_given_times_pick_the_rule_of_their_number_of_steps():
    """A grid of times fixes the steps, so the default solver is the rule's for that many (it was the rule's
    for the default budget of 20 whatever the grid's length)."""
    sch = ds.make_schedule("ddpm")
    den = ds.GaussianMixture.ring().denoiser(sch, "eps")
    for n in (5, 10, 30):
        grid = make_grid(sch, n, "quadratic")
        want = default_run(n, sch, t_start=float(grid[0]), grid=grid)
        got = ds.sample(den, seeds="0-3", grid=grid)
        assert got.solver.name == want.solver.split(":")[0], n
        torch.testing.assert_close(got.t[: n + 1], grid, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["ddpm", "edm", "flow"])
@pytest.mark.parametrize("nfe", [4, 8, 10, 15, 20, 30])
def test_the_bare_call_runs_the_rule(name, nfe):
    gm = ds.GaussianMixture.ring()
    sch = ds.make_schedule(name)
    den = gm.denoiser(sch, SCHEDULES[name])
    run = default_run(nfe, sch)
    got = ds.sample(den, seeds="0-5", nfe=nfe)
    want = ds.sample(den, seeds="0-5", nfe=nfe, solver=run.solver, grid=run.grid, denoise_final=run.denoise_final,
                     analytic_first_step=run.analytic_first_step)
    assert got.nfe == want.nfe == nfe
    torch.testing.assert_close(got.t, want.t, rtol=0, atol=0)
    torch.testing.assert_close(got.x, want.x, rtol=0, atol=0)
    steps = nfe - int(run.denoise_final) + int(run.analytic_first_step)
    torch.testing.assert_close(got.t, make_grid(sch, steps, run.grid), rtol=0, atol=0)


def test_what_the_call_names_wins_over_the_default_run():
    den = ds.GaussianMixture.ring().denoiser(ds.make_schedule("edm"), "x0")
    # a grid, a final denoise: only that part of the default run is replaced
    r = ds.sample(den, seeds="0-3", nfe=10, grid="log_snr")
    torch.testing.assert_close(r.t, make_grid(den.schedule, 10, "log_snr"), rtol=0, atol=0)
    r = ds.sample(den, seeds="0-3", nfe=10, denoise_final=True)
    assert r.nfe == 10 and len(r.t) == 10
    torch.testing.assert_close(r.t, make_grid(den.schedule, 9, "karras"), rtol=0, atol=0)
    # a solver by name: its own defaults (log_snr, the final denoise by budget alone)
    r = ds.sample(den, seeds="0-3", nfe=10, solver="deis")
    torch.testing.assert_close(r.t, make_grid(den.schedule, 10, "log_snr"), rtol=0, atol=0)


def test_state_dtype_of_a_plain_function_follows_x():
    """A network of unknown dtype (a plain function without net_dtype) is taken to run in the dtype of
    the x it is given; drawn by the library, in torch's default dtype; a declared dtype wins."""
    sch = ds.make_schedule("ddpm")
    plain = ds.Denoiser(lambda x, t: 0.1 * x, sch, prediction="eps")
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    assert ds.sample(plain, x, nfe=4).x.dtype == torch.float32
    assert ds.sample(plain, x.double(), nfe=4).x.dtype == F64
    drawn = ds.sample(plain, shape=(3, 2), seeds="0-2", nfe=4).x
    assert drawn.dtype == torch.float32
    old = torch.get_default_dtype()
    try:
        torch.set_default_dtype(F64)
        drawn64 = ds.sample(plain, shape=(3, 2), seeds="0-2", nfe=4).x
    finally:
        torch.set_default_dtype(old)
    assert drawn64.dtype == F64  # the same seeds, the same start point, either dtype
    torch.testing.assert_close(drawn, drawn64.float(), rtol=1e-5, atol=1e-6)
    declared = ds.Denoiser(lambda x, t: 0.1 * x, sch, prediction="eps", net_dtype=F64)
    assert ds.sample(declared, x, nfe=4).x.dtype == F64
    assert ds.sample(declared, shape=(3, 2), seeds="0-2", nfe=4).x.dtype == F64


def test_plain_function_around_a_float32_module_samples_from_seeds():
    """The usual wrapper, a lambda around a float32 module, runs from seeds without declaring a dtype;
    a plain function that computes in another dtype gets the hint to declare it."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(2, 2)
    sch = ds.make_schedule("ddpm")
    res = ds.sample(ds.Denoiser(lambda x, t: lin(x), sch, prediction="eps"), shape=(3, 2), seeds="0-2", nfe=4)
    assert res.x.dtype == torch.float32 and res.nfe == 4 and torch.isfinite(res.x).all()
    a64 = torch.eye(2, dtype=F64)
    wrong = ds.Denoiser(lambda x, t: x @ a64, sch, prediction="eps")
    with pytest.raises(RuntimeError) as info:
        ds.sample(wrong, shape=(3, 2), seeds="0-2", nfe=4)
    assert "net_dtype=torch.float64" in "".join(traceback.format_exception(info.value))
    declared = ds.Denoiser(lambda x, t: x @ a64, sch, prediction="eps", net_dtype=F64)
    assert ds.sample(declared, shape=(3, 2), seeds="0-2", nfe=4).x.dtype == F64


def test_plain_function_runs_in_the_callers_dtype_in_likelihood_and_tuning():
    """log_likelihood keeps a float64 state but calls a network of unknown dtype in the dtype of the x
    given; the tuners, which draw their own start points, in torch's default dtype: a lambda around a
    float32 module runs in both, and matches the same network with its dtype declared."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(2, 2).requires_grad_(False)
    sch = ds.make_schedule("ddpm")
    plain = ds.Denoiser(lambda x, t: 0.1 * lin(x), sch, prediction="eps", shape=(2,))
    declared = ds.Denoiser(lambda x, t: 0.1 * lin(x), sch, prediction="eps", shape=(2,), net_dtype=torch.float32)
    x = torch.randn(3, 2)
    a, b = ds.log_likelihood(plain, x, seeds="0-2"), ds.log_likelihood(declared, x, seeds="0-2")
    assert a.log_prob.dtype == F64
    torch.testing.assert_close(a.log_prob, b.log_prob, rtol=0, atol=0)
    kw = dict(nfe=4, pilot=8, screen=32, fresh=4, max_evals=6, progress=False)  # screened: sample() inside
    assert ds.tune_steps(plain, **kw).t == ds.tune_steps(declared, **kw).t
    levels = torch.randint(0, 256, (3, 2), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for deq in (True, False):  # 8-bit data: the library makes the values, so torch's default dtype
        a, b = (ds.dataset_log_likelihood(d, levels, batch_size=3, dequantize=deq).rows for d in (plain, declared))
        assert [r["log_prob"] for r in a] == [r["log_prob"] for r in b]


def test_tuners_leave_the_networks_parameters_alone():
    """No graph through the network's parameters: tune_steps searches without gradients and
    tune_solver differentiates its weights only, so a module's .grad is never written."""
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)

        def forward(self, x, t):
            return 0.1 * self.lin(x)

    torch.manual_seed(0)
    net = Net()
    den = ds.Denoiser(net, ds.make_schedule("ddpm"), prediction="eps", shape=(2,))
    g = ds.tune_solver(den, nfe=4, pilot=8, fresh=4, iterations=2, check_every=1, max_evals=6, progress=False)
    ds.tune_steps(den, nfe=4, pilot=8, screen=0, fresh=4, max_evals=6, progress=False)
    assert all(p.grad is None for p in net.parameters())
    assert math.isfinite(g.fresh_error)


def test_plain_function_call_dtype_follows_an_explicit_dtype_and_encode():
    """Without x an explicit state dtype is also the call dtype of a plain function; encode calls it in
    the dtype of the x given, as log_likelihood does; a half x is passed on in half precision."""
    sch = ds.make_schedule("ddpm")
    seen = []

    def f(x, t):
        seen.append(x.dtype)
        return 0.1 * x

    plain = ds.Denoiser(f, sch, prediction="eps", shape=(2,))
    ds.sample(plain, seeds="0-2", nfe=3, dtype=F64)
    assert set(seen) == {F64}
    seen.clear()
    from diffsolve.likelihood import encode

    z, _ = encode(plain, torch.randn(3, 2))
    assert z.dtype == F64 and set(seen) == {torch.float32}
    seen.clear()
    assert ds.sample(plain, torch.randn(3, 2).half(), nfe=3).x.dtype == torch.float32
    assert set(seen) == {torch.float16}


def test_dtype_note_suggests_the_other_dtype():
    """The note on a plain function's dtype mismatch names a dtype that differs from the one it got."""
    lin = torch.nn.Linear(2, 2)
    den = ds.Denoiser(lambda x, t: lin(x), ds.make_schedule("ddpm"), prediction="eps")
    with pytest.raises(RuntimeError) as info:
        ds.sample(den, torch.randn(3, 2).half(), nfe=3)
    text = "".join(traceback.format_exception(info.value))
    assert "and dtype torch.float16" in text and "net_dtype=torch.float32" in text


def test_tune_solver_with_unused_weights():
    """One evaluation on the log-SNR grid: no weight reaches the output, and the fit stops cleanly."""
    den = ds.GaussianMixture.ring().denoiser(ds.make_schedule("ddpm"), "eps")
    g = ds.tune_solver(den, nfe=1, grid="log_snr", pilot=8, fresh=4, iterations=2, check_every=1, progress=False)
    assert g.nfe == 1 and math.isfinite(g.fresh_error)
