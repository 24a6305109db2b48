"""The default run of ``sample(model, nfe=N)`` (diffsolve/defaults.py): the rule, and that the call
runs exactly the configuration the rule names, on every schedule family."""
import pytest
import torch

import diffsolve as ds
from diffsolve.defaults import (DENOISE_ABOVE, FLOW_ANALYTIC_UP_TO, SMALL_BUDGET, TINY_BUDGET, DefaultRun,
                                default_run)
from diffsolve.grids import make_grid

F64 = torch.float64
SCHEDULES = {"ddpm": "eps", "cosine": "eps", "edm": "x0", "flow": "velocity", "vp": "eps", "ve": "eps"}


def _rule(n, family):
    if family == "edm" and TINY_BUDGET < n <= DENOISE_ABOVE:
        return DefaultRun("deis", "karras", True)
    if n <= TINY_BUDGET:
        return DefaultRun("dpmpp_2m:lower_order_final=false", "log_snr", False, True)
    return DefaultRun("deis" if n <= SMALL_BUDGET else "unipc:order=3", "log_snr", n > DENOISE_ABOVE,
                      family == "flow" and n <= FLOW_ANALYTIC_UP_TO)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_the_rule_by_budget_and_family(name):
    sch = ds.make_schedule(name)
    for n in range(1, 60):
        assert default_run(n, sch) == _rule(n, name), (name, n)
    assert default_run(10) == _rule(10, None)  # no schedule: the rule of every family but EDM's and flow's


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
    torch.testing.assert_close(r.t, make_grid(den.schedule, 9, "log_snr"), rtol=0, atol=0)
    r = ds.sample(den, seeds="0-3", nfe=10, denoise_final=False)
    assert r.nfe == 10 and len(r.t) == 11
    torch.testing.assert_close(r.t, make_grid(den.schedule, 10, "karras"), rtol=0, atol=0)
    # a solver by name: its own defaults (log_snr, the final denoise by budget alone)
    r = ds.sample(den, seeds="0-3", nfe=10, solver="deis")
    torch.testing.assert_close(r.t, make_grid(den.schedule, 10, "log_snr"), rtol=0, atol=0)


def test_state_dtype_of_a_plain_function_follows_x():
    """A network of unknown dtype (a plain function without net_dtype) is taken to run in the dtype of
    the x it is given; drawn by the library, the state is float64; a declared dtype wins."""
    sch = ds.make_schedule("ddpm")
    plain = ds.Denoiser(lambda x, t: 0.1 * x, sch, prediction="eps")
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    assert ds.sample(plain, x, nfe=4).x.dtype == torch.float32
    assert ds.sample(plain, x.double(), nfe=4).x.dtype == F64
    assert ds.sample(plain, shape=(3, 2), seeds="0-2", nfe=4).x.dtype == F64
    declared = ds.Denoiser(lambda x, t: 0.1 * x, sch, prediction="eps", net_dtype=F64)
    assert ds.sample(declared, x, nfe=4).x.dtype == F64
