"""Generic tests of every registered fixed-step solver (docs/math.md §3–4, ground truth of docs/math.md §6).

Each test iterates over ``diffsolve.solvers.SOLVERS`` (adaptive solvers excluded), so a solver added
later is covered without editing this file:

- it samples near the data on every schedule, with every prediction type, and counts its NFE;
- its samples do not depend on the network's prediction type (one conversion table, docs/math.md §2);
- measured convergence order (least-squares slope of log error against log steps, 16/32/64
  steps) = declared order ± 0.3: pathwise against a tight reference ODE solution from the same
  x_T for every solver that draws no noise at η = 0 (declared ``ode_order`` if the solver has
  one, else ``order``); weak order (exact law of the output on a Gaussian, Monte Carlo for a
  solver that is not affine in its inputs) at η ∈ {1, 0.5} for every stochastic solver;
- bad input through ``diffsolve.sample`` fails with a clear message, and a network that turns NaN
  is reported with the step and the time.

``python tests/test_solvers.py`` prints the table of measured orders.
"""
from __future__ import annotations

import re

import pytest
import torch

import diffsolve as ds
from diffsolve.denoiser import PREDICTIONS, NonFiniteError
from diffsolve.noise import NoiseSource
from diffsolve.processes import NoiseLevel
from diffsolve.solvers import SOLVERS
from diffsolve.loop import integrate

from helpers import (F64, FIXED, ORDER_STEPS, WEAK_MEAN, WEAK_VAR, make, ode_errors, peak_bytes, slope, weak_errors,
                     weak_moments)

SCHEDULES = ("vp", "cosine", "ddpm", "subvp", "ve", "edm", "flow")


class CountingNet:
    """Wraps a network and counts its calls independently of the Denoiser's own counter."""

    def __init__(self, net):
        self.net, self.calls = net, 0

    def __call__(self, x, t):
        self.calls += 1
        return self.net(x, t)


_DRAWS = {}


def draws_noise_at_eta0(name: str) -> bool:
    """Whether the solver draws noise when asked for the probability-flow ODE (η = 0)."""
    if name not in _DRAWS:
        gm = ds.GaussianMixture([1.0], [[0.3, -0.2]], [[0.5, 0.2]])
        den = gm.denoiser("vp", "x0")
        solver = make(name)
        src = NoiseSource(2, (2,), generator=torch.Generator().manual_seed(0))
        t = ds.make_grid(den.schedule, max(4, solver.min_steps), "log_snr")
        integrate(solver, den, torch.ones(2, 2, dtype=F64), t, level=NoiseLevel(den.schedule, 0.0), source=src)
        _DRAWS[name] = src.draws > 0
    return _DRAWS[name]


RING = ds.GaussianMixture.ring()
_RING_REF = {}


def ring_reference_logp() -> float:
    """E[log p_0(x)] over exact samples of the ring (−entropy), by Monte Carlo with 20000 samples."""
    if "v" not in _RING_REF:
        x = RING.sample(20000, generator=torch.Generator().manual_seed(123))
        _RING_REF["v"] = float(RING.log_prob(x).mean())
    return _RING_REF["v"]


def test_registry_has_the_classic_solvers():
    for name in ("euler", "ddim", "euler_ve", "heun", "ancestral", "pc"):
        assert name in FIXED, name
    assert not any(getattr(SOLVERS[n], "adaptive", False) for n in FIXED)


# --- runs on every schedule and prediction type, near the data, with the right NFE -------------
@pytest.mark.parametrize("name", FIXED)
@pytest.mark.parametrize("k", range(len(SCHEDULES)))
def test_samples_near_data_and_nfe(name, k):
    # the prediction type rotates with the schedule and the solver, so every solver sees every
    # prediction type and every schedule sees every prediction type (invariance is tested below)
    schedule = SCHEDULES[k]
    prediction = PREDICTIONS[(k + FIXED.index(name)) % len(PREDICTIONS)]
    den = RING.denoiser(schedule, prediction)
    den.net = counter = CountingNet(den.net)
    solver = make(name)
    eta = 1.0 if solver.stochastic else 0.0
    steps = solver.steps_for_nfe(30)
    r = ds.sample(den, shape=(128, 2), solver=solver, steps=steps, eta=eta, generator=torch.Generator().manual_seed(k))
    assert r.x.shape == (128, 2) and r.x.dtype == F64
    assert torch.isfinite(r.x).all()
    assert r.nfe == counter.calls == solver.nfe(steps) + 1
    logp = float(RING.log_prob(r.x).mean())
    ref = ring_reference_logp()
    # exact samples give ref (≈ −0.31, standard error of a 128-sample mean ≈ 0.09); 30 evaluations
    # of these solvers lose at most ≈ 0.7 nat (pc's 14-step Euler–Maruyama predictor, subvp), samples
    # off the ring lose tens of nats, samples collapsed onto the means gain ~1.5 nat
    assert abs(logp - ref) < 1.0, (name, schedule, prediction, logp, ref)


@pytest.mark.parametrize("name", FIXED)
def test_samples_do_not_depend_on_prediction_type(name):
    """The same seeds give the same samples whatever the network predicts (exact networks)."""
    schedule = SCHEDULES[FIXED.index(name) % len(SCHEDULES)]
    solver = make(name)
    eta = 1.0 if solver.stochastic else 0.0
    steps = max(6, solver.min_steps)
    outs = {}
    for prediction in PREDICTIONS:
        den = RING.denoiser(schedule, prediction)
        outs[prediction] = ds.sample(den, shape=(8, 2), solver=solver, steps=steps, eta=eta,
                                     generator=torch.Generator().manual_seed(5)).x
    for prediction in PREDICTIONS[1:]:
        torch.testing.assert_close(outs[prediction], outs["eps"], rtol=1e-7, atol=1e-7,
                                   msg=f"{name} {schedule} {prediction}")


# --- measured convergence order ---------------------------------------------------------------
# solvers whose error is asymptotic only from more steps (measured: DEIS-3 in log ρ has local slopes
# 2.5, 2.8, 3.0, 3.0 between 16, 32, …, 256 steps)
LATE_ORDER_STEPS = {"deis": (32, 64, 128)}


@pytest.mark.parametrize("name", FIXED)
def test_declared_draws_noise(name):
    """``draws_noise`` (read by the benchmark: no ODE error for such runs) matches what the solver does."""
    assert make(name).draws_noise == draws_noise_at_eta0(name)
    if name in ("heun", "euler_ve"):
        assert SOLVERS[name](S_churn=1.0).draws_noise


@pytest.mark.parametrize("name", FIXED)
def test_ode_convergence_order(name):
    """Pathwise order of every solver that integrates the probability-flow ODE at η = 0."""
    if draws_noise_at_eta0(name):
        pytest.skip(f"{name} draws noise even at eta=0 (tested for its weak order)")
    solver = make(name)
    steps = LATE_ORDER_STEPS.get(name, ORDER_STEPS)
    errs = ode_errors(solver, steps)
    p = slope(steps, errs)
    # ``order`` of a stochastic solver is its weak order; one whose order as an ODE solver (η = 0)
    # differs declares it as ``ode_order``
    declared = getattr(solver, "ode_order", solver.declared_order)
    assert abs(p - declared) <= 0.3, f"{name}: measured order {p:.2f}, declared {declared}; errors {errs}"


# Weak order on a Gaussian: exact moments by the affine probe (helpers.weak_moments; Monte Carlo
# for a solver that is not affine in its inputs).
_AFFINE = {}


def is_affine(name: str) -> bool:
    """Whether the solver's output is affine in (x_T, noise) on a Gaussian (probed at 8 steps)."""
    if name not in _AFFINE:
        den = ds.GaussianMixture([1.0], WEAK_MEAN[None], WEAK_VAR[None]).denoiser("vp", "eps")
        _AFFINE[name] = weak_moments(make(name), den, 8, 1.0, mc_samples=0) is not None
    return _AFFINE[name]


@pytest.mark.parametrize("name", [n for n in FIXED if SOLVERS[n].stochastic])
@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_weak_convergence_order(name, eta):
    """Weak order on a Gaussian, from p_{t_max} exactly, at t_min: declared ``order`` ± 0.3.

    On a Gaussian (affine x̂0, linear drift) a solver's moments may converge faster than its
    general weak order, up to its ODE order: the upper bound is max(order, ode_order) + 0.3.
    """
    solver = make(name)
    if eta != 1.0 and not is_affine(name):
        pytest.skip("Monte Carlo weak order (non-affine solver) measured at eta=1 only, to save time")
    errs = weak_errors(solver, eta)
    p = slope(ORDER_STEPS, errs)
    hi = max(solver.declared_order, getattr(solver, "ode_order", solver.declared_order)) + 0.3
    assert solver.declared_order - 0.3 <= p <= hi, \
        f"{name} eta={eta}: measured weak order {p:.2f}, declared {solver.declared_order} " \
        f"(at most {hi - 0.3} here); errors {errs}"


# --- bad input through diffsolve.sample ---------------------------------------------------------
@pytest.fixture(scope="module")
def den():
    return RING.denoiser("vp", "eps")


def test_unknown_solver_lists_valid_names(den):
    with pytest.raises(ValueError, match="unknown solver 'rk17'.*valid solvers:.*ddim.*heun"):
        ds.sample(den, shape=(2, 2), solver="rk17", steps=4)


@pytest.mark.parametrize("name", FIXED)
def test_too_few_steps(den, name):
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        ds.sample(den, shape=(2, 2), solver=make(name), steps=0)
    solver = make(name)
    need = solver.nfe(solver.min_steps)
    with pytest.raises(ValueError, match=rf"NFE {need} is too small.*i\.e\. {need + 1} evaluations with the final"):
        ds.sample(den, shape=(2, 2), solver=solver, nfe=need, denoise_final=True)
    assert ds.sample(den, shape=(2, 2), solver=solver, nfe=need, denoise_final=False).nfe == need


def test_grid_outside_range(den):
    with pytest.raises(ValueError, match="time outside the range.*valid range"):
        ds.sample(den, shape=(2, 2), solver="heun", grid=[1.5, 0.5, 0.01])
    with pytest.raises(ValueError, match="time outside the range"):
        ds.sample(den, shape=(2, 2), solver="ddim", grid=[0.9, 0.5, 1e-5])


def test_non_monotone_grid(den):
    with pytest.raises(ValueError, match="strictly decreasing.*increase at index 1"):
        ds.sample(den, shape=(2, 2), solver="ddim", grid=[1.0, 0.5, 0.7, 0.01])
    with pytest.raises(ValueError, match="repeated time"):
        ds.sample(den, shape=(2, 2), solver="ddim", grid=[1.0, 0.5, 0.5, 0.01])


def test_negative_eta(den):
    with pytest.raises(ValueError, match="eta must be >= 0"):
        ds.sample(den, shape=(2, 2), solver="ancestral", steps=4, eta=-0.5)


@pytest.mark.parametrize("name", ["heun", "euler_ve"])
def test_ode_only_solver_rejects_eta(den, name):
    with pytest.raises(ValueError, match=r"eta > 0 \(or a noise level\) pick a stochastic solver: ancestral, ddim"):
        ds.sample(den, shape=(2, 2), solver=name, steps=4, eta=1.0)


def test_bad_solver_options():
    with pytest.raises(ValueError, match="snr must be"):
        SOLVERS["pc"](snr=-1.0)
    with pytest.raises(ValueError, match="corrector_steps"):
        SOLVERS["pc"](corrector_steps=1.5)
    with pytest.raises(ValueError, match="unknown predictor"):
        SOLVERS["pc"](predictor="rk4")
    with pytest.raises(ValueError, match="S_churn"):
        SOLVERS["heun"](S_churn=-1)
    with pytest.raises(TypeError, match="bad options for solver 'heun'"):
        ds.sample(RING.denoiser("edm", "x0"), shape=(2, 2), solver="heun", steps=3, solver_options={"snr": 1})


@pytest.mark.parametrize("name", FIXED)
def test_network_going_nan_names_step_and_time(name):
    """A network that returns NaN (or Inf) below t = 0.3 is caught at the first such call, with step and t."""
    bad = float("nan") if FIXED.index(name) % 2 else float("inf")

    def net(x, t):
        out = RING.x0(x, t, "vp")
        return torch.where((t < 0.3)[:, None], torch.full_like(out, bad), out)

    den = ds.Denoiser(net, "vp", prediction="x0", time_label="t", net_dtype=F64)
    solver = make(name)
    steps = 10
    t = ds.make_grid(den.schedule, steps, "time")
    first_bad = int((t < 0.3).nonzero()[0])
    with pytest.raises(NonFiniteError, match=r"NaN or Inf at network call \d+ \(step (\d+)/10 of .*t=") as e:
        ds.sample(den, shape=(4, 2), solver=solver, steps=steps, grid="time", eta=1.0 if solver.stochastic else 0.0)
    msg = str(e.value)
    step = int(re.search(r"\(step (\d+)/", msg).group(1))
    t_bad = float(re.findall(r"t=([-+0-9.e]+)", msg)[-1])
    # the NaN appears on the first evaluation below t = 0.3: on the step that ends at (a
    # multi-stage solver) or starts from (a single-stage one) the first grid time below 0.3
    assert step in (first_bad, first_bad + 1), msg
    assert float(t[first_bad]) - 1e-6 <= t_bad < 0.3, msg


if __name__ == "__main__":  # python tests/test_solvers.py: the table of measured orders
    torch.set_num_threads(1)
    print(f"{'solver':14s} {'declared':>8s} {'ODE order':>9s} {'weak η=1':>8s} {'weak η=0.5':>10s}")
    for n in FIXED:
        s = make(n)
        ode = "-" if draws_noise_at_eta0(n) else f"{slope(ORDER_STEPS, ode_errors(s)):.2f}"
        weak = [f"{slope(ORDER_STEPS, weak_errors(s, eta)):.2f}" if s.stochastic else "-" for eta in (1.0, 0.5)]
        print(f"{n:14s} {s.declared_order:8.1f} {ode:>9s} {weak[0]:>8s} {weak[1]:>10s}", flush=True)


def test_solver_spec_strings():
    """'name:key=value:...' configures a solver wherever a name is accepted (sample, bench, tune, CLI)."""
    from diffsolve.solvers import parse_solver_spec, solver_spec

    assert parse_solver_spec("unipc: order=3 :variant=bh1:predict_x0=False:lower_order_below=null") == (
        "unipc", {"order": 3, "variant": "bh1", "predict_x0": False, "lower_order_below": None})
    assert parse_solver_spec("dpmpp_2m") == ("dpmpp_2m", {})
    assert solver_spec("unipc", {"variant": "bh1", "order": 3, "predict_x0": False}) == \
        "unipc:order=3:predict_x0=false:variant=bh1"
    name, opts = parse_solver_spec(solver_spec("deis", {"order": 2, "variable": "rho"}))
    assert (name, opts) == ("deis", {"order": 2, "variable": "rho"})
    sol = ds.solvers.get_solver("unipc:order=3:variant=bh1:predict_x0=false")
    assert (sol.solver_order, sol.variant, sol.predict_x0) == (3, "bh1", False)
    den = RING.denoiser("vp", "eps")
    a = ds.sample(den, shape=(3, 2), seeds=[1, 2, 3], solver="deis:order=2", nfe=6)
    b = ds.sample(den, shape=(3, 2), seeds=[1, 2, 3], solver="deis", solver_options={"order": 2}, nfe=6)
    c = ds.sample(den, shape=(3, 2), seeds=[1, 2, 3], solver="deis", nfe=6)
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
    with pytest.raises(ValueError, match="'order' is not key=value"):
        ds.solvers.get_solver("unipc:order")
    with pytest.raises(ValueError, match="given twice"):
        ds.solvers.get_solver("unipc:order=2:order=3")
    with pytest.raises(ValueError, match="given both in the spec"):
        ds.solvers.get_solver("unipc:order=2", order=3)
    with pytest.raises(TypeError, match=r"bad options for solver 'unipc'.*its options are order=2, variant='bh2'"):
        ds.solvers.get_solver("unipc:ordr=3")
    with pytest.raises(TypeError, match=r"bad options for solver 'euler'.*; it takes no options$"):
        ds.solvers.get_solver("euler:foo=1")
    with pytest.raises(ValueError, match="unknown solver 'nope'; valid solvers"):
        ds.solvers.get_solver("nope:order=3")


@pytest.mark.parametrize("spec,expected", [("ddim", 3), ("dpmpp_2m", 4), ("dpmpp_3m", 5), ("deis", 5),
                                           ("unipc", 6), ("unipc:order=3", 7)])
def test_peak_memory_in_state_units(spec, expected):
    """Peak bytes torch's CPU allocator holds during a 10-step float32 run, in units of one state:
    a multistep solver of order p keeps p − 1 earlier evaluations through the network call and p
    after it (the oldest is freed before the call, not when the step returns)."""
    den = ds.Denoiser(lambda x, t: 0.1 * x, ds.VPSchedule(), "eps", net_dtype=torch.float32)
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    run = lambda: ds.sample(den, x, solver=spec, steps=10, grid="log_snr", denoise_final=False,  # noqa: E731
                            dtype=torch.float32)
    run()  # warm caches
    units = peak_bytes(run) / (x.numel() * 4)
    assert units <= expected + 0.5, (spec, units)


def test_solvers_made_for_the_sde_sample_it_by_default():
    """ancestral, dpmpp_2m_sde, dpmpp_3m_sde and torchsde take η = 1 when no noise level is named (as
    k-diffusion's and diffusers' samplers of those names); the others integrate the ODE (η = 0)."""
    import diffsolve as ds
    from diffsolve.scheduler import DiffsolveScheduler

    den = ds.GaussianMixture.ring().denoiser(ds.make_schedule("vp"), "eps")
    for name in ("ancestral", "dpmpp_2m_sde", "dpmpp_3m_sde"):
        bare = ds.sample(den, solver=name, nfe=8, seeds="0-3")
        torch.testing.assert_close(bare.x, ds.sample(den, solver=name, nfe=8, seeds="0-3", eta=1.0).x)
        assert not torch.allclose(bare.x, ds.sample(den, solver=name, nfe=8, seeds="0-3", eta=0.0).x)
    for name in ("ddim", "euler", "dpmpp_2m"):
        torch.testing.assert_close(ds.sample(den, solver=name, nfe=8, seeds="0-3").x,
                                   ds.sample(den, solver=name, nfe=8, seeds="0-3", eta=0.0).x)
    diffusers = pytest.importorskip("diffusers")
    assert DiffsolveScheduler.from_config(diffusers.DDPMScheduler().config, solver="ancestral").level.eta == 1.0
    assert DiffsolveScheduler.from_config(diffusers.DDPMScheduler().config, solver="ddim").level.eta == 0.0


def test_euler_maruyama_refuses_a_grid_it_is_unstable_on():
    """A large noise level makes Euler–Maruyama's linear part amplify errors at every step: the samples came
    back finite and ~1e6 too large. The run is refused before any network call, naming the fix; the same
    eta with enough steps, and solvers that take any eta exactly, run."""
    den = ds.GaussianMixture.ring().denoiser("vp", "eps")
    for solver, name in (("euler", "euler with eta=3"), ("pc", "pc (its euler predictor) with eta=3")):
        with pytest.raises(ValueError, match=re.escape(name) + r" is unstable on this grid"):
            ds.sample(den, seeds="0-7", solver=solver, eta=3.0, nfe=20)
    assert den.nfe == 0
    for solver, nfe in (("euler", 50), ("ancestral", 20), ("dpmpp_2m_sde", 20)):
        x = ds.sample(den, seeds="0-63", solver=solver, eta=3.0, nfe=nfe).x
        assert float(x.norm(dim=1).mean()) == pytest.approx(2.0, abs=0.1)
    # one huge factor where the state is pure noise (a flow schedule from σ = 1), damped by the steps after it:
    # the rule follows an error to the end, so this fine run is not refused
    flow = ds.FlowSchedule(t_max=1 - 1e-9, shift=3.0, num_train_timesteps=1000)
    x = ds.sample(ds.GaussianMixture.ring().denoiser(flow, "eps"), seeds="0-63", solver="euler",
                  grid=flow.grid(1000), eta=1.0).x
    assert float(x.norm(dim=1).mean()) == pytest.approx(2.0, abs=0.05)
