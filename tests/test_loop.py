"""The one loop (diffsolve/loop.py): fixed-step and adaptive solvers through `integrate`, and the
same loop driven from outside one network evaluation at a time (`drive`)."""
from __future__ import annotations

import threading

import pytest
import torch

from diffsolve import GaussianMixture, NoiseLevel, NoiseSource, make_grid, sample
from diffsolve.loop import Evaluation, drive, integrate
from diffsolve.solvers import SOLVERS, get_solver

F64 = torch.float64


def _problem(schedule="vp", prediction="eps"):
    gm = GaussianMixture.ring(std=0.3)
    den = gm.denoiser(schedule, prediction)
    x = float(den.schedule.sigma(den.schedule.t_max)) * torch.randn(6, 2, dtype=F64,
                                                                     generator=torch.Generator().manual_seed(1))
    return den, x


def _run_driven(gen, net):
    """Drive a generator from `drive` with the network `net(x, label)`; return (solution, requests)."""
    requests = []
    try:
        request = next(gen)
        while True:
            assert isinstance(request, Evaluation) and request.index == len(requests)
            requests.append(request)
            request = gen.send(net(request.x, request.label))
    except StopIteration as stop:
        return stop.value, requests


# every fixed-step solver with its defaults, ODE and SDE members, and one adaptive solver
CASES = [(name, 0.0) for name, cls in sorted(SOLVERS.items()) if not cls.adaptive] + \
        [(name, 1.0) for name in ("ddim", "dpmpp_2m_sde", "euler", "ancestral")] + [("dopri5", 0.0)]


@pytest.mark.parametrize("name,eta", CASES)
def test_driven_loop_equals_integrate_bit_for_bit(name, eta):
    den, x = _problem()
    sch = den.schedule
    solver = get_solver(name)
    t = make_grid(sch, 12, "log_snr") if not solver.adaptive else make_grid(sch, 1, "time")
    level = NoiseLevel(sch, eta)
    seeds = list(range(10, 16))
    den.reset_nfe()
    want = integrate(solver, den, x, t, level=level, source=NoiseSource(6, (2,), seeds=seeds, dtype=F64),
                     denoise_final=True)
    calls = den.reset_nfe()
    gen = drive(solver, sch, x, t, prediction="eps", time_label="t", net_dtype=F64, level=level,
                source=NoiseSource(6, (2,), seeds=seeds, dtype=F64), denoise_final=True)
    got, requests = _run_driven(gen, den.net)
    assert len(requests) == calls  # one yield per network evaluation, no more
    assert torch.equal(got.x, want.x)


def test_driven_loop_closes_cleanly_and_checks_what_it_is_sent():
    den, x = _problem()
    t = make_grid(den.schedule, 8, "log_snr")
    before = threading.active_count()
    gen = drive(get_solver("unipc"), den.schedule, x, t, time_label="t", net_dtype=F64)
    request = next(gen)
    gen.send(den.net(request.x, request.label))
    gen.close()  # stop half-way: the worker must end
    assert threading.active_count() == before
    gen = drive(get_solver("unipc"), den.schedule, x, t, time_label="t", net_dtype=F64)
    next(gen)
    with pytest.raises(TypeError, match="network's output tensor"):
        gen.send(None)
    assert threading.active_count() == before


def test_driven_loop_reports_the_loops_own_errors():
    den, x = _problem()
    t = make_grid(den.schedule, 8, "log_snr")
    gen = drive(get_solver("dpmpp_2m"), den.schedule, x, t, time_label="t", net_dtype=F64)
    next(gen)
    with pytest.raises(ValueError, match="shape"):
        gen.send(torch.zeros(3, 3, dtype=F64))  # not the shape of the input
    gen = drive(get_solver("dpmpp_2m"), den.schedule, x, t, time_label="t", net_dtype=F64,
                level=NoiseLevel(den.schedule, 1.0))
    with pytest.raises(ValueError, match="probability-flow ODE only"):
        next(gen)


def test_adaptive_solvers_run_through_the_same_loop():
    """No caller branches on `adaptive`: sample() hands every solver to `integrate`, which returns
    the adaptive solver's statistics; steps/nfe/grid kinds and trajectories are refused with the
    solver's own message."""
    den, x = _problem()
    res = sample(den, x, solver="dopri5", solver_options=dict(rtol=1e-6, atol=1e-6))
    assert res.info["method"] == "dopri5" and res.nfe == res.info["calls"] + 1  # + the final denoise
    for kwargs in (dict(nfe=10), dict(steps=5), dict(grid="karras")):
        with pytest.raises(ValueError, match="chooses its own steps"):
            sample(den, x, solver="dopri5", **kwargs)
    with pytest.raises(ValueError, match="keeps no trajectory"):
        sample(den, x, solver="dopri5", trajectory=True)


def test_tuned_grid_refuses_a_budget_beside_it(tmp_path):
    """A tuned grid fixes the times and the budget: sample() refuses nfe/steps given with it (it
    used to drop them silently)."""
    from diffsolve.tuned import TunedGrid

    den, x = _problem()
    t = make_grid(den.schedule, 4, "log_snr")
    tuned = TunedGrid(solver="dpmpp_2m", nfe=5, t=t.tolist(), denoise_final=True, schedule="vp")
    path = tuned.save(tmp_path / "grid.json")
    assert sample(den, x, steps=str(path)).nfe == 5
    assert sample(den, x, steps=str(path), nfe=5).nfe == 5  # its own budget, said again
    for kwargs in (dict(grid=str(path), nfe=8), dict(steps=str(path), nfe=8), dict(grid=str(path), steps=3)):
        with pytest.raises(ValueError, match="fixes the times and the budget"):
            sample(den, x, **kwargs)


def test_renamed_spellings_still_work_with_a_warning():
    """One name for each thing (declared order vs the constructor's polynomial order; one class
    for the probability-flow ODE): the old spellings warn and give the same thing."""
    from diffsolve.ode import PFODE, ProbabilityFlowODE

    solver = get_solver("unipc", order=2)
    with pytest.warns(DeprecationWarning, match="declared_order"):
        assert solver.order == solver.declared_order == 3.0
    den, _ = _problem()
    with pytest.warns(DeprecationWarning, match="ProbabilityFlowODE"):
        old = PFODE(den, "log_snr")
    assert isinstance(old, ProbabilityFlowODE) and old.variable == "log_snr"


def test_tuned_grid_with_options_keeps_its_solver(tmp_path):
    """solver_options beside a tuned grid change the options of the grid's own solver (with a warning);
    the analytic first step is refused (the grid fixes the evaluations); a noise level is warned about."""
    import warnings

    from diffsolve.tuned import TunedGrid

    from diffsolve import make_schedule

    sch = make_schedule("vp")
    den = GaussianMixture.ring().denoiser(sch, "eps")
    x = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = make_grid(sch, 5, "log_snr")
    path = TunedGrid(solver="unipc", nfe=5, t=t.tolist(), denoise_final=False, schedule="vp").save(tmp_path / "g.json")
    with pytest.warns(UserWarning, match="tuned for solver 'unipc'; running 'unipc' with options variant='bh1'"):
        res = sample(den, x, steps=str(path), solver_options={"variant": "bh1"})
    assert res.solver.name == "unipc" and res.solver.variant == "bh1" and res.nfe == 5
    with pytest.raises(ValueError, match=r"fixes the times and the budget.*drop analytic_first_step= "
                                         r"\(--analytic-first-step\)"):
        sample(den, x, steps=str(path), analytic_first_step=True)
    with pytest.warns(UserWarning, match=r"tuned on the probability-flow ODE \(η = 0\)"):
        sample(den, x, steps=str(path), solver="ddim", eta=1.0, seeds="0-3")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sample(den, x, steps=str(path)).solver.name == "unipc"  # its own solver: no warning
