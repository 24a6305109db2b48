"""Parity with diffusers' schedulers, step for step, through the drop-in DiffsolveScheduler.

Every case of ``benchmarks/diffusers_parity.py`` (scheduler × config × prediction type × timestep
spacing): diffusers' own scheduler loop and the loop of its twin (``diffsolve.parity.diffusers_twin``)
run side by side on a small random float64 UNet2DModel from the same x_T and, for the stochastic
ones, the same noise (generators seeded alike). diffusers runs in float64 (its module sees float32 as
float64), so equality shows as round-off: asserted ≤ 1e-6 relative on the data-space output. The
twin's options, the new solver options (ddim's stride, dpmpp_2s's grid intermediate), diffusers'
spacings (grids.diffusers_timesteps) and the drop-in scheduler's errors are tested here too.
"""
import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffsolve.grids import DIFFUSERS_SPACING, diffusers_grid, diffusers_timesteps, make_grid  # noqa: E402
from diffsolve.loop import integrate  # noqa: E402
from diffsolve.parity import DIFFUSERS_EQUIVALENTS, diffusers_twin  # noqa: E402
from diffsolve.processes import NoiseLevel  # noqa: E402
from diffsolve.scheduler import DiffsolveScheduler  # noqa: E402
from diffsolve.schedules import DDPMSchedule  # noqa: E402
from diffsolve.solvers import get_solver  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "diffusers_parity.py"
_spec = importlib.util.spec_from_file_location("diffusers_parity", SCRIPT)
dp = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("diffusers_parity", dp)  # its dataclasses look their module up there
_spec.loader.exec_module(dp)

TOL = 1e-6


@pytest.fixture(scope="module")
def problem():
    return dp.make_net(), dp.make_x_T()


def _columns():
    out = []
    for case in dp.cases():
        for name, config in case.columns():
            out.append(pytest.param(case, config, id=f"{case.label}-{name}".replace(" ", "_")))
    return out


@pytest.mark.parametrize("case,config", _columns())
def test_twin_equals_diffusers(problem, case, config):
    """n = 7: the DDIM stride (7 does not divide 1000), odd singlestep pairs, fractional Euler linspace."""
    net, x_T = problem
    with torch.no_grad():
        diff, twin = dp.measure(case, config, net, x_T, 7)
    if twin.approximate:  # Euler/Heun linspace: σ interpolated differently (test_euler_linspace_...)
        assert diff < 1e-4, (diff, twin)
    else:
        assert diff <= TOL, (diff, twin.options)


# n at which a rule changes: DDIM's stride (n divides N or not), the even singlestep rule,
# diffusers' final-order ramp below 15 timesteps (with and without the final step to σ = 0)
SPECIAL = [("DDIMScheduler", dict(timestep_spacing="linspace", clip_sample=False), (10, 3)),
           ("DDIMScheduler", dict(timestep_spacing="trailing", clip_sample=False, set_alpha_to_one=False), (10, 3)),
           ("DDIMScheduler", dict(timestep_spacing="trailing", clip_sample=False, prediction_type="v_prediction"),
            (6, 30)),
           ("DPMSolverSinglestepScheduler", dict(final_sigmas_type="sigma_min", lower_order_final=True), (8, 9)),
           ("DPMSolverSinglestepScheduler", dict(final_sigmas_type="sigma_min"), (8,)),
           ("DPMSolverSinglestepScheduler", dict(solver_type="heun"), (8, 9)),
           ("DPMSolverMultistepScheduler", dict(solver_order=3, final_sigmas_type="sigma_min"), (14, 15, 16)),
           ("DPMSolverMultistepScheduler", dict(solver_order=3), (14, 15, 16)),
           ("DEISMultistepScheduler", dict(solver_order=3), (14, 15, 16)),
           ("UniPCMultistepScheduler", dict(solver_order=3), (14, 16)),
           ("EulerDiscreteScheduler", dict(timestep_spacing="linspace"), (10,)),
           ("HeunDiscreteScheduler", dict(timestep_spacing="linspace", prediction_type="v_prediction"), (10,))]


@pytest.mark.parametrize("cls,config,ns", SPECIAL, ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(SPECIAL)])
def test_twin_equals_diffusers_other_n(problem, cls, config, ns):
    net, x_T = problem
    for n in ns:
        with torch.no_grad():
            diff, twin = dp.compare(getattr(diffusers, cls), config, net, x_T, n)
        assert not twin.approximate and diff <= TOL, (n, diff, twin.options)


@pytest.mark.parametrize("cls,config,eta", [
    ("DDIMScheduler", dict(steps_offset=1, clip_sample=False), 0.0),
    ("DDIMScheduler", dict(timestep_spacing="linspace", clip_sample=False), 0.5),
    ("DDPMScheduler", dict(clip_sample=False), 0.0),
    ("DPMSolverMultistepScheduler", dict(solver_order=3), 0.0),
    ("DPMSolverSinglestepScheduler", {}, 0.0),
    ("DEISMultistepScheduler", dict(timestep_spacing="trailing"), 0.0),
    ("UniPCMultistepScheduler", dict(prediction_type="v_prediction"), 0.0),
    ("EulerDiscreteScheduler", dict(timestep_spacing="trailing"), 0.0),
    ("EulerAncestralDiscreteScheduler", dict(timestep_spacing="leading"), 0.0),
    ("HeunDiscreteScheduler", dict(timestep_spacing="trailing"), 0.0),
    ("EDMEulerScheduler", {}, 0.0),
    ("EDMDPMSolverMultistepScheduler", {}, 0.0)])
def test_twin_within_float32_pipeline_tolerance(problem, cls, config, eta):
    """diffusers as shipped (float32 σ tables; some steps in float32): within the 1e-4 a float32
    pipeline asks for; the float32 round-off shows (not float64's equality)."""
    net, x_T = problem
    with torch.no_grad():
        diff, _ = dp.compare(getattr(diffusers, cls), config, net, x_T, 10, eta=eta, float64=False)
    assert diff < 1e-4


def test_euler_linspace_difference_is_the_sigma_interpolation(problem):
    """Euler's fractional linspace timesteps (n = 7) are the only approximate case: diffusers
    interpolates σ linearly between training timesteps, DDPMSchedule log α. Given DDPMSchedule's σ
    at those timesteps, diffusers' Euler equals its twin to round-off."""
    net, x_T = problem
    cls = diffusers.EulerDiscreteScheduler
    ref = cls(timestep_spacing="linspace")
    twin = diffusers_twin(ref, 7)
    assert twin.approximate
    sch = DDPMSchedule(alphas_cumprod=ref.alphas_cumprod.double())
    with dp.float64_tables(cls), torch.no_grad():
        dp._to_float64(ref)
        ref.set_timesteps(7)
        assert not torch.equal(ref.timesteps, ref.timesteps.round())  # fractional
        a, s = sch.alpha_sigma(sch.t_of_timestep(ref.timesteps.double()))
        patched = ref.sigmas.clone()
        patched[:-1] = s / a
        set_timesteps = ref.set_timesteps
        ref.set_timesteps = lambda n: (set_timesteps(n), setattr(ref, "sigmas", patched))
        want = dp.run_diffusers(ref, net, x_T, 7)
    ours = DiffsolveScheduler.from_config(ref.config, **twin.options)
    with torch.no_grad():
        got = dp.run_twin(ours, net, x_T, 7)
    assert dp.max_rel_diff(got, want) <= TOL


# --- the twin's options --------------------------------------------------------------------------
def test_equivalents_cover_the_rules():
    """Every class the mapping names has a twin rule or an EDM route; the rules give a DiffsolveScheduler."""
    for cls in DIFFUSERS_EQUIVALENTS:
        ref = getattr(diffusers, cls)()
        if cls.startswith("EDM"):
            with pytest.raises(ValueError, match="preconditions the network"):
                diffusers_twin(ref, 10)
            with pytest.raises(ValueError, match="EDM-preconditioned"):
                DiffsolveScheduler.from_config(ref.config)
            continue
        twin = diffusers_twin(ref, 10)
        assert diffusers_twin(dict(ref.config, _class_name=cls), 10) == twin  # a saved config names its class
        s = DiffsolveScheduler.from_config(ref.config, **twin.options)
        s.set_timesteps(twin.budget(10))
        assert len(s.timesteps) == twin.budget(10) or (cls, twin.options["denoise_final"]) == ("DDIMScheduler", False)


def test_ddim_twin_options():
    config = diffusers.DDIMScheduler(timestep_spacing="linspace", set_alpha_to_one=True)
    assert diffusers_twin(config, 10).options["solver"] == "ddim:stride=0.1"
    assert diffusers_twin(config, 10, eta=0.3).options == dict(
        solver="ddim:variant=published:stride=0.1", grid="diffusers", denoise_final=True, eta=0.3,
        diffusers_class="DDIMScheduler")
    leading = diffusers.DDIMScheduler(steps_offset=1)
    assert diffusers_twin(leading, 10).options["solver"] == "ddim"  # leading: consecutive timesteps
    # trailing with n = 7: the last step goes from timestep 142 to timestep 0, not to σ = 0
    trailing = diffusers.DDIMScheduler(timestep_spacing="trailing")
    assert diffusers_twin(trailing, 7).options["denoise_final"] is False
    assert diffusers_twin(trailing, 10).options["denoise_final"] is True
    with pytest.raises(ValueError, match="give n"):
        diffusers_twin(config)


@pytest.mark.parametrize("cls,config,field", [
    ("DDPMScheduler", dict(variance_type="fixed_large"), "variance_type"),
    ("DDPMScheduler", dict(variance_type="learned_range"), "variance_type"),
    ("DPMSolverMultistepScheduler", dict(use_karras_sigmas=True), "use_karras_sigmas"),
    ("DPMSolverMultistepScheduler", dict(algorithm_type="dpmsolver"), "algorithm_type"),
    ("DPMSolverMultistepScheduler", dict(algorithm_type="sde-dpmsolver++", solver_order=3), "solver_order"),
    ("DPMSolverMultistepScheduler", dict(lambda_min_clipped=-5.1), "lambda_min_clipped"),
    ("DPMSolverMultistepScheduler", dict(final_sigmas_type="sigma_min", euler_at_final=True), "euler_at_final"),
    ("DPMSolverSinglestepScheduler", dict(solver_order=3), "solver_order"),
    ("UniPCMultistepScheduler", dict(disable_corrector=[0]), "disable_corrector"),
    ("EulerDiscreteScheduler", dict(use_exponential_sigmas=True), "use_exponential_sigmas"),
    ("EulerDiscreteScheduler", dict(interpolation_type="log_linear"), "interpolation_type"),
    ("HeunDiscreteScheduler", dict(use_beta_sigmas=True), "use_beta_sigmas")])
def test_twin_refuses_what_it_cannot_reproduce(cls, config, field):
    try:
        scheduler = getattr(diffusers, cls)(**config)
    except (ImportError, ValueError) as e:  # e.g. beta sigmas need scipy
        pytest.skip(f"diffusers cannot build it here: {e}")
    with pytest.raises(ValueError, match=field):
        diffusers_twin(scheduler, 10)


def test_approximate_twins_say_why():
    clipped = diffusers.DDIMScheduler(clip_sample=True)
    assert "use_clipped_model_output" in diffusers_twin(clipped, 10).approximate
    assert not diffusers_twin(clipped, 10, use_clipped_model_output=True).approximate
    assert "zero terminal SNR" in diffusers_twin(diffusers.DDIMScheduler(rescale_betas_zero_snr=True,
                                                                         clip_sample=False), 10).approximate
    assert "fractional" in diffusers_twin(diffusers.EulerDiscreteScheduler(), 7).approximate
    assert not diffusers_twin(diffusers.EulerDiscreteScheduler(timestep_spacing="trailing"), 7).approximate
    eps = diffusers_twin(diffusers.UniPCMultistepScheduler(predict_x0=False, thresholding=True), 10)
    assert eps.options["thresholding"] is False  # diffusers ignores it there


def test_sde_third_order_of_diffusers_is_not_third_order():
    """Why SDE-DPM-Solver++ of order 3 is refused: diffusers' D2 weight tends to −1 (an O(h²)
    term), where an order-3 update needs O(h) (its own ODE form: h/6)."""
    h = 1e-3
    sde = (1.0 - math.exp(-2.0 * h) - 2.0 * h) / (2.0 * h) ** 2 - 0.5
    ode = -((math.exp(-h) - 1.0 + h) / h ** 2 - 0.5)
    assert abs(sde + 1.0) < 1e-2 and abs(ode - h / 6) < 1e-6


# --- diffusers' spacings -------------------------------------------------------------------------
@pytest.mark.parametrize("cls", sorted(DIFFUSERS_SPACING))
def test_diffusers_timesteps_match_each_class(cls):
    C = getattr(diffusers, cls)
    for spacing, offset in dp.SPACINGS + (("leading", 2),):
        kwargs = {} if cls == "DPMSolverSinglestepScheduler" else dict(timestep_spacing=spacing, steps_offset=offset)
        s = C(**kwargs)
        for n in (1, 2, 3, 7, 10, 20, 25, 48, 50, 100, 333, 500, 700, 998):
            try:
                s.set_timesteps(n)
            except ValueError:
                continue
            ref = s.timesteps.double()
            if cls == "HeunDiscreteScheduler":
                ref = torch.cat([ref[:1], ref[1::2]])
            if float(ref.min()) < 0:  # diffusers' trailing arange rounds into an extra timestep -1 here
                assert spacing == "trailing" and len(ref) == n + 1
                ref = ref[:-1]
            if float(ref.max()) > 999:  # diffusers' leading with a steps_offset past the last timestep
                with pytest.raises(ValueError, match="outside 0..999"):
                    diffusers_timesteps(n, spacing, steps_offset=offset, scheduler=cls)
                continue
            assert torch.equal(diffusers_timesteps(n, spacing, steps_offset=offset, scheduler=cls), ref), (spacing, n)


def test_trailing_grid_keeps_its_steps():
    """make_grid's trailing kind for N/n < 1.5: DDIM's n timesteps end at timestep 0 = t_min; the grid
    takes n + 1 of them and still has ``steps`` steps (it used to lose one)."""
    sch = DDPMSchedule()
    for steps in (667, 700, 800, 998, 999):
        t = make_grid(sch, steps, "trailing")
        assert len(t) == steps + 1 and float(t[-1]) == sch.t_min
        k = sch.time_label(t)
        assert torch.equal(k, k.round())
    assert len(make_grid(sch, 500, "trailing")) == 501


def test_diffusers_grid_and_errors():
    sch = DDPMSchedule()
    t = diffusers_grid(sch, 10, "linspace", scheduler="DDIMScheduler", end_at_t_min=True)
    assert len(t) == 10 and float(t[-1]) == sch.t_min  # ends at timestep 0 already
    t = diffusers_grid(sch, 10, "linspace", scheduler="DPMSolverMultistepScheduler", end_at_t_min=True)
    assert len(t) == 11
    with pytest.raises(ValueError, match="no timestep spacing known"):
        diffusers_timesteps(10, scheduler="PNDMScheduler")
    with pytest.raises(ValueError, match="unknown timestep_spacing"):
        diffusers_timesteps(10, "uniform")
    with pytest.raises(ValueError, match="outside"):
        diffusers_timesteps(999, "leading", steps_offset=1, scheduler="DPMSolverMultistepScheduler")


# --- the solver options parity needs ----------------------------------------------------------------
def _solve(spec, t, x, eta=0.0, denoise_final=False, sch=None):
    from diffsolve.denoiser import Denoiser
    from diffsolve.noise import NoiseSource

    sch = sch or DDPMSchedule()
    den = Denoiser(lambda x, label: torch.tanh(x) * (1 + label[:, None] / 1000), sch, prediction="eps")
    source = NoiseSource(x.shape[0], x.shape[1:], seeds=range(x.shape[0]))
    return integrate(get_solver(spec), den, x, t, level=NoiseLevel(sch, eta), source=source,
                     denoise_final=denoise_final, trajectory=True)


def test_ddim_stride():
    sch = DDPMSchedule()
    x = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    leading = sch.t_of_timestep(torch.tensor([900.0, 800, 700, 600]))
    for eta, variant in ((0.0, "exact"), (0.6, "published")):
        plain = _solve(f"ddim:variant={variant}", leading, x, eta).x
        assert torch.equal(_solve(f"ddim:variant={variant}:stride=0.1", leading, x, eta).x, plain)
    # linspace-like: each step ends 100 timesteps down, then restarts from the next timestep
    t = sch.t_of_timestep(torch.tensor([999.0, 888, 777]))
    out = _solve("ddim:stride=0.1", t, x).trajectory
    ref = _solve("ddim", sch.t_of_timestep(torch.tensor([999.0, 899])), x).x
    assert torch.allclose(out[1], ref, rtol=1e-14, atol=0)
    ref2 = _solve("ddim", sch.t_of_timestep(torch.tensor([888.0, 788])), out[1]).x
    assert torch.allclose(out[2], ref2, rtol=1e-14, atol=0)
    assert not torch.allclose(_solve("ddim", t, x).x, out[2])
    with pytest.raises(ValueError, match="stride must be"):
        get_solver("ddim:stride=-1")
    with pytest.raises(ValueError, match="constant noise level"):
        from diffsolve.denoiser import Denoiser

        den = Denoiser(lambda x, label: x, sch, prediction="eps")
        integrate(get_solver("ddim:stride=0.1"), den, x, t, level=NoiseLevel(sch, noise=lambda s: 0.1 + 0 * s))


def test_dpmpp_2s_grid_intermediate():
    """A pair of grid steps t0 → t_u → t1 is one 2S step from t0 to t1 with r = (λ_u − λ_0)/h; a
    lone last step is DDIM; lower_order_final splits an even last pair into two DDIM steps."""
    sch = DDPMSchedule()
    x = torch.randn(2, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    t = sch.t_of_timestep(torch.tensor([999.0, 700, 400, 200, 50]))
    lam = sch.log_snr(t).tolist()
    for kind in ("midpoint", "taylor"):
        out = _solve(f"dpmpp_2s:intermediate=grid:solver_type={kind}", t, x).trajectory
        r = (lam[1] - lam[0]) / (lam[2] - lam[0])
        two = _solve(f"dpmpp_2s:r={r!r}:solver_type={kind}", t[[0, 2]], x).x
        assert torch.allclose(out[2], two, rtol=1e-12, atol=0)
        assert torch.allclose(out[1], _solve("ddim", t[:2], x).x, rtol=1e-14, atol=0)
    assert get_solver("dpmpp_2s:intermediate=grid").nfe(4) == 4 and get_solver("dpmpp_2s").nfe(4) == 8
    odd = _solve("dpmpp_2s:intermediate=grid", t[:4], x).trajectory  # 3 steps: a pair, then a lone DDIM step
    assert torch.allclose(odd[3], _solve("ddim", t[2:4], odd[2]).x, rtol=1e-14, atol=0)
    even = _solve("dpmpp_2s:intermediate=grid:lower_order_final=true", t, x).trajectory
    assert torch.allclose(even[4], _solve("ddim", t[3:5], even[3]).x, rtol=1e-14, atol=0)
    assert torch.allclose(even[3], _solve("ddim", t[2:4], even[2]).x, rtol=1e-14, atol=0)
    with pytest.raises(ValueError, match="unknown intermediate"):
        get_solver("dpmpp_2s:intermediate=middle")


# --- bad input through the drop-in scheduler ------------------------------------------------------
def _scheduler(**kw):
    return DiffsolveScheduler.from_config(diffusers.DDIMScheduler().config, **kw)


def test_step_before_set_timesteps():
    s = _scheduler()
    x = torch.zeros(1, 3, 8, 8)
    with pytest.raises(ValueError, match="before set_timesteps"):
        s.step(x, 999, x)


def test_step_with_out_of_order_timestep():
    s = _scheduler(solver="ddim")
    s.set_timesteps(5)
    x = torch.zeros(1, 3, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"timestep .* in order"):
        s.step(x, s.timesteps[1], x)


def test_budget_too_small():
    with pytest.raises(ValueError, match="too small for solver 'heun'"):
        _scheduler(solver="heun").set_timesteps(2)  # one step (2) and the final denoise (1)


@pytest.mark.parametrize("solver", ["dpmpp_3m", "unipc", "deis"])
def test_multistep_runs_at_two_evaluations(solver):
    """A multistep method runs its warm-up at any budget, as diffusers' do: two evaluations are a
    first-order step and the final denoise."""
    s = _scheduler(solver=solver)
    s.set_timesteps(2)
    assert len(s.timesteps) == 2 and s._final and len(s.plan.t) == 2


def test_a_budget_of_one_is_the_default_runs_step_to_t_min():
    s = _scheduler()  # the default run at one evaluation: one step to t_min, no final denoise
    s.set_timesteps(1)
    assert len(s.timesteps) == 1 and not s._final and float(s.plan.t[-1]) == s.schedule.t_min


@pytest.mark.parametrize("solver", ["ddim", "dpmpp_2m", "heun"])
def test_one_evaluation_with_the_final_denoise_is_that_evaluation(solver):
    s = _scheduler(solver=solver)  # a named solver ends on x̂0: at one evaluation, that is the run
    s.set_timesteps(1)
    assert s.plan.t.tolist() == [s.schedule.t_max] and len(s.timesteps) == 1
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    eps = torch.randn_like(x)
    out = s.step(eps, s.timesteps[0], x).prev_sample
    t_max = torch.tensor(s.schedule.t_max, dtype=torch.float64)
    a, sig = float(s.schedule.alpha(t_max)), float(s.schedule.sigma(t_max))
    torch.testing.assert_close(out, ((x - sig * eps) / a).clamp(-1, 1))  # DDIMScheduler clips x̂0 by default


def test_without_a_generator_the_noise_is_torchs_own(problem):
    """No generator and no seeds: the solver's noise comes from torch's generator, as diffusers'
    schedulers draw it, so torch.manual_seed decides the run (here the DDPM twin equals diffusers'
    DDPM drawn the same way), and two calls under different seeds differ."""
    net, x_T = problem
    base = diffusers.DDPMScheduler(clip_sample=False)
    ours = DiffsolveScheduler.from_config(base.config, **diffusers_twin(base, 6).options)

    def run(sch, seed):
        torch.manual_seed(seed)
        sch.set_timesteps(6)
        x = x_T.clone()
        for t in sch.timesteps:
            x = sch.step(net(x, t), t, x).prev_sample
        return x

    with torch.no_grad(), dp.float64_tables(diffusers.DDPMScheduler):
        ref = diffusers.DDPMScheduler(clip_sample=False)
        dp._to_float64(ref)
        want = run(ref, 5)
    got = run(ours, 5)
    assert dp.max_rel_diff(got, want) <= TOL
    assert torch.equal(run(ours, 5), got) and dp.max_rel_diff(run(ours, 6), got) > 0.1


def test_a_list_of_generators_draws_each_sample_from_its_own(problem):
    """diffusers' pipelines pass one generator per sample (``generator=[...]``); its schedulers draw
    sample i's noise from generator i (``randn_tensor``). The DDPM twin does the same and equals
    diffusers' DDPM run with the same list; a deterministic solver takes the list and draws nothing; a
    list of the wrong length is refused."""
    net, x_T = problem
    base = diffusers.DDPMScheduler(clip_sample=False)
    ours = DiffsolveScheduler.from_config(base.config, **diffusers_twin(base, 6).options)

    def run(sch, seeds, rows=None):
        sch.set_timesteps(6)
        x = x_T.clone() if rows is None else x_T[rows].clone()
        gens = [torch.Generator().manual_seed(s) for s in seeds]  # one list for the run, as a pipeline passes it
        for t in sch.timesteps:
            x = sch.step(net(x, t), t, x, generator=gens).prev_sample
        return x

    with torch.no_grad(), dp.float64_tables(diffusers.DDPMScheduler):
        ref = diffusers.DDPMScheduler(clip_sample=False)
        dp._to_float64(ref)
        want = run(ref, [3, 4])
    assert dp.max_rel_diff(run(ours, [3, 4]), want) <= TOL
    alone = run(ours, [4], rows=[1])  # a sample's noise is its generator's, whatever the batch
    assert dp.max_rel_diff(alone, want[1:]) <= TOL
    plain = DiffsolveScheduler.from_config(base.config)  # the default solver draws no noise
    torch.testing.assert_close(run(plain, [3, 4]), run(plain, [7, 8]), rtol=0, atol=0)
    with pytest.raises(ValueError, match="list of 3 generators for a batch of 2"):
        run(ours, [1, 2, 3])


@pytest.mark.parametrize("config", [{}, {"final_sigmas_type": "sigma_min", "lower_order_final": True}])
def test_singlestep_twin_img2img_keeps_diffusers_pairs(config):
    """img2img starts at t_start = n − int(n·strength). diffusers' DPMSolverSinglestepScheduler keeps the
    pairs of its order list: started on the second half of a pair it takes that step alone (order 1). The
    twin restarted its pairs at the start, 5e-3 – 8e-3 off at every odd start; now equal at each start."""
    net = lambda x, t: torch.tanh(x) * (1 + float(t) / 1000)  # noqa: E731
    x0, noise = (torch.randn(1, 4, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(s))
                 for s in (3, 4))

    def img2img(sch, n, start):  # what StableDiffusionImg2ImgPipeline does
        sch.set_timesteps(n)
        ts = sch.timesteps[start:]
        sch.set_begin_index(start)
        x = sch.add_noise(x0, noise, ts[:1])
        for t in ts:
            x = sch.step(net(x, t), t, x).prev_sample
        return x

    for n in (7, 10):
        ref = diffusers.DPMSolverSinglestepScheduler(**config)
        twin = DiffsolveScheduler.from_config(ref.config, **diffusers_twin(ref, n).options)
        for start in range(n - 1):
            assert dp.max_rel_diff(img2img(twin, n, start), img2img(ref, n, start)) <= TOL, (n, start)


def test_step_without_return_dict_gives_the_sample_and_x0():
    """``return_dict=False`` gave a 1-tuple: ``prev, x0 = step(..., return_dict=False)``, as DDIM's, DDPM's and
    Euler's callers write it, failed. Now the tuple of the output's two fields."""
    cfg = diffusers.DDIMScheduler(clip_sample=False).config
    a, b = DiffsolveScheduler.from_config(cfg), DiffsolveScheduler.from_config(cfg)
    a.set_timesteps(4)
    b.set_timesteps(4)
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    eps = torch.randn(2, 3, generator=torch.Generator().manual_seed(1))
    prev, x0 = a.step(eps, a.timesteps[0], x, return_dict=False)
    out = b.step(eps, b.timesteps[0], x)
    assert torch.equal(prev, out.prev_sample) and torch.equal(x0, out.pred_original_sample)


def test_unknown_and_adaptive_solvers():
    with pytest.raises(ValueError, match="unknown solver 'dpmpp_9m'"):
        _scheduler(solver="dpmpp_9m")
    with pytest.raises(ValueError, match="fixed-step solvers only.*'dopri5' chooses its own steps"):
        _scheduler(solver="dopri5")


def test_config_fields_it_cannot_express():
    with pytest.raises(ValueError, match="EDM-preconditioned.*sigma_data"):
        DiffsolveScheduler.from_config(diffusers.EDMEulerScheduler().config)
    with pytest.raises(ValueError, match="timestep_type='continuous'"):
        DiffsolveScheduler.from_config(diffusers.EulerDiscreteScheduler(prediction_type="v_prediction",
                                                                        timestep_type="continuous").config)


def test_from_config_keeps_the_source_schedule():
    """A config built with its class's defaults (HeunDiscrete: β from 0.00085 to 0.012) keeps them:
    diffusers' from_config would replace 'default' fields by DiffsolveScheduler's own."""
    ref = diffusers.HeunDiscreteScheduler()
    s = DiffsolveScheduler.from_config(ref.config)
    assert torch.equal(s.schedule.alphas_cumprod, ref.alphas_cumprod.double())
    saved = DiffsolveScheduler.from_config(dict(ref.config, _class_name="HeunDiscreteScheduler"))
    assert saved.config.diffusers_class == "HeunDiscreteScheduler"  # a saved config names its class


def test_grid_diffusers_follows_the_source_class():
    """grid='diffusers' gives the source class's timesteps (the class a saved config names): DDIM's
    and DPM-Solver's linspace differ."""
    for cls, want in (("DDIMScheduler", [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]),
                      ("DPMSolverMultistepScheduler", [999, 899, 799, 699, 599, 500, 400, 300, 200, 100])):
        ref = getattr(diffusers, cls)(timestep_spacing="linspace")
        ref.set_timesteps(10)
        saved = dict(ref.config, _class_name=cls)
        s = DiffsolveScheduler.from_config(saved, solver="ddim", grid="diffusers")
        s.set_timesteps(10)
        assert s.timesteps.tolist() == ref.timesteps.tolist() == want


@pytest.mark.parametrize("nfe", [5, 10, 30])
def test_bare_scheduler_runs_the_default_call(nfe):
    """DiffsolveScheduler without solver, grid or denoise_final runs what ``sample(model, nfe=N)``
    runs (diffsolve.defaults.default_run), step for step, on a pipeline-style loop; without the
    analytic first step, since the pipeline makes every network call itself."""
    from diffsolve import sample
    from diffsolve.defaults import default_run
    from diffsolve.denoiser import Denoiser

    s = _scheduler(clip_sample=False)  # DDIMScheduler's config clips x̂0 by default; sample() does not
    sch = s.schedule
    net = lambda x, label: torch.tanh(x) * (1 + label.reshape(-1, *[1] * (x.dim() - 1)) / 1000)  # noqa: E731
    den = Denoiser(net, sch, prediction="eps")
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(nfe))
    want = sample(den, x * float(sch.sigma(torch.tensor(sch.t_max, dtype=torch.float64))), nfe=nfe,
                  analytic_first_step=False)
    s.set_timesteps(nfe)
    run = default_run(nfe, sch)
    assert s.solver.name == get_solver(run.solver).name and len(s.timesteps) == nfe
    lat = x * float(sch.sigma(torch.tensor(sch.t_max, dtype=torch.float64)))
    for t in s.timesteps:
        lat = s.step(net(lat, torch.as_tensor(t).reshape(1).expand(lat.shape[0]).double()), t, lat).prev_sample
    torch.testing.assert_close(lat, want.x, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cls", ["DPMSolverMultistepScheduler", "UniPCMultistepScheduler", "EulerDiscreteScheduler"])
def test_zero_terminal_snr_twins_are_exact(problem, cls):
    """With rescale_betas_zero_snr these classes sample from ᾱ = 2^-24 at the last timestep; the twin takes
    the same terminal ᾱ, from the config or from a scheduler object that has already set it."""
    net, x_T = problem
    cfg = dict(rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="v_prediction",
               beta_schedule="scaled_linear")
    with torch.no_grad():
        diff, twin = dp.compare(getattr(diffusers, cls), cfg, net, x_T, 7)
    assert not twin.approximate and diff <= TOL, diff


def _first_columns():
    return [pytest.param(case, next(iter(case.columns()))[1], id=case.label.replace(" ", "_")) for case in dp.cases()]


@pytest.mark.parametrize("case,config", _first_columns())
def test_twin_equals_diffusers_at_one_and_two_timesteps(problem, case, config):
    """n = 1 (one evaluation: diffusers steps to σ = 0 or σ_min at once) and n = 2 (a multistep method
    is all warm-up). Where diffusers' one timestep is the last training timestep and its step ends at
    that same noise level (DDIM with set_alpha_to_one=False, Euler's sigma_min ending), it makes no step
    and the twin refuses the plan instead."""
    net, x_T = problem
    for n in (1, 2):
        try:
            with torch.no_grad():
                diff, twin = dp.measure(case, config, net, x_T, n)
        except ValueError as e:
            assert n == 1 and "make no step here" in str(e), (n, e)
            continue
        assert diff <= (1e-4 if twin.approximate else TOL), (n, diff, twin.options)


def test_a_config_built_in_memory_is_known_by_its_fields(tmp_path):
    """A scheduler built in memory has no _class_name: grid='diffusers' follows the class whose __init__
    takes the config's fields (DDIM's timesteps, not DPM-Solver's), and refuses what it cannot single out."""
    s = DiffsolveScheduler.from_config(diffusers.DDIMScheduler().config, solver="unipc", grid="diffusers")
    s.set_timesteps(5)
    ref = diffusers.DDIMScheduler()
    ref.set_timesteps(5)
    assert s.timesteps.tolist() == ref.timesteps.tolist()
    with pytest.raises(ValueError, match="another process"):
        DiffsolveScheduler.from_config(diffusers.IPNDMScheduler().config)
    with pytest.raises(ValueError, match=r"does not say which class.*diffusers_class="):
        DiffsolveScheduler.from_config(diffusers.LMSDiscreteScheduler().config, grid="diffusers")
    s = DiffsolveScheduler.from_config(diffusers.LMSDiscreteScheduler().config, grid="diffusers",
                                       diffusers_class="EulerDiscreteScheduler")
    s.set_timesteps(4)


def test_construction_checks_and_saved_seeds(tmp_path):
    with pytest.raises(ValueError, match="unknown grid 'nope'.*diffusers, flow_dpm"):
        DiffsolveScheduler(grid="nope")
    s = DiffsolveScheduler(solver="ancestral", seeds=range(3))  # saved as text, the same seeds when loaded
    s.save_pretrained(tmp_path)
    assert list(DiffsolveScheduler.from_pretrained(tmp_path).seeds) == [0, 1, 2]


def test_a_step_after_the_run_ended_says_so():
    s = _scheduler(solver="ddim")
    s.set_timesteps(3)
    x = torch.zeros(1, 3, 4, 4, dtype=torch.float64)
    for t in s.timesteps:
        x = s.step(torch.zeros_like(x), t, x).prev_sample
    with pytest.raises(ValueError, match="the run has ended"):
        s.step(torch.zeros_like(x), s.timesteps[-1], x)


def test_a_flow_config_made_directly_runs_on_the_flow_dpm_grid():
    direct = DiffsolveScheduler(prediction_type="flow_prediction", shift=3.0)
    loaded = DiffsolveScheduler.from_config(diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0).config)
    for s in (direct, loaded):
        s.set_timesteps(8)
    assert direct._grid_kind == "flow_dpm" and torch.equal(direct.timesteps, loaded.timesteps)


@pytest.mark.parametrize("spec", [dict(solver="ddim"), dict(solver="dpmpp_3m", grid="diffusers")])
def test_img2img_that_leaves_only_the_final_denoise(spec):
    """A strength that starts the run at its last evaluation (the final denoise) runs that evaluation alone."""
    s = _scheduler(**spec)
    s.set_timesteps(10)
    s.set_begin_index(len(s.timesteps) - 1)
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    t = s.timesteps[-1]
    eps = torch.randn_like(x)
    out = s.step(eps, t, x).prev_sample
    tt = s.schedule.t_of_timestep(torch.tensor([float(t)], dtype=torch.float64))
    a, sig = float(s.schedule.alpha(tt)), float(s.schedule.sigma(tt))
    torch.testing.assert_close(out, ((x - sig * eps) / a).clamp(-1, 1))


def test_a_twin_notes_a_pipelines_different_start():
    """Euler's init_noise_sigma is σ_0 on linspace/trailing: a pipeline starts the twin √(1 + 1/σ_0²) times as
    large, a factor 100 at one linspace timestep (timestep 0); leading spacing has no such gap."""
    one = diffusers_twin(diffusers.EulerDiscreteScheduler(), 1)
    assert not one.approximate and len(one.notes) == 1 and "99.99" in one.notes[0]
    assert diffusers_twin(diffusers.EulerDiscreteScheduler(timestep_spacing="leading"), 1).notes == []
    assert diffusers_twin(diffusers.EulerDiscreteScheduler(timestep_spacing="trailing"), 10).notes == []


@pytest.mark.parametrize("cls", ["FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler"])
@pytest.mark.parametrize("config,mu", [(dict(shift=3.0), None),
                                       (dict(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15), 0.8)])
def test_flow_match_euler_twin(problem, config, mu, cls):
    """FlowMatchEulerDiscreteScheduler's twin (euler on the diffusers grid, ending on x̂0 = x − σv) and
    FlowMatchHeunDiscreteScheduler's (heun in t, 2n − 1 evaluations) equal diffusers' own loops at one, two
    and five timesteps, static and dynamic shift."""
    net, x_T = problem
    kw = {} if mu is None else dict(mu=mu)
    if cls == "FlowMatchHeunDiscreteScheduler" and mu is not None:
        pytest.skip("FlowMatchHeunDiscreteScheduler has no dynamic shifting")
    for n in (1, 2, 5):
        ref = getattr(diffusers, cls)(**config)
        twin = diffusers_twin(ref, n)
        ours = DiffsolveScheduler.from_config(ref.config, **twin.options)
        outs = []
        for s, budget in ((ref, n), (ours, twin.budget(n))):
            s.set_timesteps(budget, **kw)
            x = x_T.clone()
            with torch.no_grad():
                for t in s.timesteps:
                    x = s.step(net(x, t), t, x).prev_sample
            outs.append(x)
        assert not twin.approximate and dp.max_rel_diff(outs[1], outs[0]) <= TOL, n


@pytest.mark.parametrize("cls,config", [("FlowMatchEulerDiscreteScheduler", dict(shift=3.0)),
                                        ("EulerDiscreteScheduler", dict(timestep_spacing="trailing")),
                                        ("DPMSolverMultistepScheduler", dict(timestep_spacing="trailing"))])
def test_sigmas_and_step_index_read_as_diffusers_reads_them(problem, cls, config):
    """Pipelines read ``scheduler.sigmas[i]`` as the noise level of ``timesteps[i]`` (Wan, CogView4) and
    ``scheduler.step_index`` as the index of the next evaluation: the twin's equal diffusers' own, entry by
    entry (the last, where the run ends, included) and step by step; the bare scheduler's sigmas follow its
    own timesteps, in the source's convention, and end at 0 after its final denoise."""
    net, x_T = problem
    n = 5
    ref = getattr(diffusers, cls)(**config)
    twin = diffusers_twin(ref, n)
    ours = DiffsolveScheduler.from_config(ref.config, **twin.options)
    indices = []
    for s, budget in ((ref, n), (ours, twin.budget(n))):
        s.set_timesteps(budget)
        assert s.step_index is None
        x, seen = x_T.clone(), []
        with torch.no_grad():
            for t in s.timesteps:
                x = s.step(net(x, t), t, x).prev_sample
                seen.append(s.step_index)
        indices.append(seen)
    assert indices[1] == indices[0] == list(range(1, len(ref.timesteps) + 1))
    assert ours.sigmas.dtype == torch.float32 and len(ours.sigmas) == len(ours.timesteps) + 1
    torch.testing.assert_close(ours.sigmas, ref.sigmas.float(), rtol=1e-5, atol=1e-6)

    bare = DiffsolveScheduler.from_config(ref.config)
    bare.set_timesteps(8)
    flow = cls.startswith("FlowMatch")
    t = bare.schedule.t_of_timestep(bare.timesteps.double())
    a, s = bare.schedule.alpha_sigma(t)
    torch.testing.assert_close(bare.sigmas[:-1], (s if flow else s / a).float())
    end = bare.schedule.alpha_sigma(torch.tensor(bare.schedule.t_min, dtype=torch.float64))
    assert float(bare.sigmas[-1]) == (0.0 if bare._final else pytest.approx(float(end[1] / (1 if flow else end[0]))))


def test_a_learned_variance_config_keeps_its_variance_type():
    """DeepFloyd IF's pipelines read ``scheduler.config.variance_type`` to decide whether ``step`` gets the
    variance channels too: the source's value is kept, and ``step`` takes either output."""
    src = diffusers.DDPMScheduler(variance_type="learned_range")
    ours = DiffsolveScheduler.from_config(src.config)
    assert ours.config.variance_type == "learned_range"
    assert DiffsolveScheduler.from_config(diffusers.DDPMScheduler().config).config.variance_type == "fixed_small"
    ours.set_timesteps(4)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    eps = 0.1 * x
    for t in ours.timesteps:
        a = ours.step(torch.cat([eps, torch.ones_like(x)], dim=1), t, x).prev_sample
        break
    ours.set_timesteps(4)
    torch.testing.assert_close(ours.step(eps, ours.timesteps[0], x).prev_sample, a)
