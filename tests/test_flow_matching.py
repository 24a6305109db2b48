"""Flow matching as SD3 / FLUX use it (docs/math.md §25): the shift and the dynamic shift against
diffusers' formulas, the velocity sign, the start at σ = 1, diffusers' σ spacing bit for bit, and
DiffsolveScheduler(solver="euler", grid="diffusers") = FlowMatchEulerDiscreteScheduler step for step on a tiny random
SD3 transformer in float64 (shift 1, 3, dynamic exponential and linear)."""
import math

import numpy as np
import pytest
import torch

import diffsolve
from diffsolve import Denoiser, FlowSchedule
from diffsolve.analytic import GaussianMixture
from diffsolve.schedules.continuous import calculate_shift, shift_of_mu, shift_sigma, unshift_sigma

F64 = torch.float64
SIG = torch.linspace(0.001, 0.999, 201, dtype=F64)


# --- the shift --------------------------------------------------------------------------------
@pytest.mark.parametrize("s", [0.5, 1.0, 3.0, 7.3])
def test_shift_formula_inverse_and_log_snr_translation(s):
    shifted = shift_sigma(SIG, s)
    torch.testing.assert_close(shifted, s * SIG / (1 + (s - 1) * SIG), rtol=1e-15, atol=0)
    torch.testing.assert_close(unshift_sigma(shifted, s), SIG, rtol=1e-14, atol=0)
    assert float(shift_sigma(0.0, s)) == 0.0 and float(shift_sigma(1.0, s)) == 1.0
    lam = torch.log((1 - SIG) / SIG)
    torch.testing.assert_close(torch.log((1 - shifted) / shifted), lam - math.log(s), rtol=0, atol=1e-12)


def test_dynamic_shift_is_the_shift_of_e_mu_or_mu():
    diffusers = pytest.importorskip("diffusers")
    for kind, mu in (("exponential", 0.73), ("exponential", -0.2), ("linear", 2.5)):
        sched = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, time_shift_type=kind)
        ref = sched.time_shift(mu, 1.0, SIG)
        torch.testing.assert_close(shift_sigma(SIG, shift_of_mu(mu, kind)), ref, rtol=1e-14, atol=0)
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift as flux_calculate_shift

    for L in (256, 1024, 4096, 777):
        assert calculate_shift(L) == pytest.approx(flux_calculate_shift(L), rel=1e-15)
        assert calculate_shift(L, 128, 2048, 0.3, 1.5) == pytest.approx(flux_calculate_shift(L, 128, 2048, 0.3, 1.5))


def test_flow_schedule_grid_and_labels():
    sch = FlowSchedule(t_min=1e-3, t_max=1 - 1e-9, shift=3.0, num_train_timesteps=1000)
    assert sch.starts_at_one
    g = sch.grid(10)
    assert g[0] == sch.t_max and g[-1] == sch.t_min and bool((g[1:] < g[:-1]).all())
    u = unshift_sigma(g[1:-1], 3.0)  # uniform in the unshifted σ
    torch.testing.assert_close(u[1:] - u[:-1], torch.full((8,), float(u[1] - u[0]), dtype=F64), rtol=1e-10, atol=0)
    gm = sch.grid(10, mu=math.log(3.0))  # μ = log 3 (exponential) is the shift 3
    torch.testing.assert_close(gm, g, rtol=1e-13, atol=0)
    # σ = 1 is t_max, and the network's label there is that of σ = 1 exactly
    assert float(sch.t_of_timestep(1000.0)) == sch.t_max
    assert float(sch.time_label(torch.tensor(sch.t_max, dtype=F64))) == 1000.0
    torch.testing.assert_close(sch.time_label(torch.tensor([0.25, 0.5], dtype=F64)),
                               torch.tensor([250.0, 500.0], dtype=F64))
    torch.testing.assert_close(sch.t_of_timestep(torch.tensor([250.0])), torch.tensor([0.25], dtype=F64))
    # the default FlowSchedule is unchanged: label t, no σ = 1 stand-in
    d = FlowSchedule()
    assert not d.starts_at_one and d.num_train_timesteps is None and repr(d) == "FlowSchedule(t_min=0.001, t_max=0.999)"
    assert float(d.time_label(torch.tensor(0.3))) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="num_train_timesteps"):
        d.t_of_timestep(10)


def test_errors():
    with pytest.raises(ValueError, match="shift"):
        FlowSchedule(shift=0.0)
    with pytest.raises(ValueError, match="time_shift_type"):
        FlowSchedule(time_shift_type="cubic")
    with pytest.raises(ValueError, match="num_train_timesteps"):
        FlowSchedule(num_train_timesteps=2.5)
    with pytest.raises(ValueError, match="mu"):
        shift_of_mu(float("nan"))
    with pytest.raises(ValueError, match="steps"):
        FlowSchedule().grid(0)


# --- the velocity convention and the start at σ = 1 ----------------------------------------------
MIX = GaussianMixture([0.3, 0.7], torch.tensor([[1.5, -1.0], [-0.5, 2.0]], dtype=F64), 0.4)


def test_velocity_is_eps_minus_x0():
    """diffsolve's ``velocity`` (dx/dt with t = σ) is diffusers' flow output ε − x_0: x0 = x − σ v."""
    sch = FlowSchedule(t_max=1 - 1e-9, num_train_timesteps=1000)
    den = MIX.denoiser(sch, "eps")
    x = torch.randn(5, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    for t in (0.9, 0.4, 0.05):
        v = den.velocity(x, t)
        torch.testing.assert_close(v, den.eps(x, t) - den.x0(x, t), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(x - t * v, den.x0(x, t), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("solver", ["euler", "ddim"])
def test_start_at_sigma_one(solver):
    """From x = ε at σ = 1, one Euler step to σ_1 is x + (σ_1 − 1)(x − E[x_0]) (x̂0 = E[x_0] at α = 0);
    starting from t_max = 1 − 10⁻⁹ instead changes it by less than 1e-6 (docs/math.md (25.8))."""
    sch = FlowSchedule(t_min=1e-3, t_max=1 - 1e-9, num_train_timesteps=1000)
    den = MIX.denoiser(sch, "velocity")
    x = torch.randn(64, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    s1 = 0.83
    res = diffsolve.sample(den, x, solver=solver, grid=torch.tensor([sch.t_max, s1], dtype=F64), denoise_final=False)
    mean = (MIX.log_weights.exp()[:, None] * MIX.means).sum(0)
    exact = x + (s1 - 1.0) * (x - mean)
    assert float((res.x - exact).abs().max() / exact.abs().max()) < 1e-6


# --- diffusers' σ spacing and FlowMatchEulerDiscreteScheduler ----------------------------------------
diffusers = pytest.importorskip("diffusers")
CONFIGS = {"shift1": (dict(shift=1.0), {}), "shift3": (dict(shift=3.0), {}),
           "dynamic": (dict(use_dynamic_shifting=True), dict(mu=calculate_shift(1024))),
           "linear": (dict(use_dynamic_shifting=True, time_shift_type="linear"), dict(mu=2.0))}


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("how", ["steps", "sigmas"])
def test_flow_sigmas_are_diffusers_bit_for_bit(name, how):
    from diffsolve.adapters import flow_sigmas_from_diffusers

    cfg, kw = CONFIGS[name]
    sched = diffusers.FlowMatchEulerDiscreteScheduler(**cfg)
    for n in (1, 4, 28, 50):
        if how == "steps":
            sched.set_timesteps(n, **kw)
            ours = flow_sigmas_from_diffusers(sched, n, **kw)
        else:
            sig = np.linspace(1.0, 1 / n, n)
            sched.set_timesteps(sigmas=sig, **kw)
            ours = flow_sigmas_from_diffusers(sched.config, sigmas=sig, **kw)
        assert torch.equal(ours, sched.sigmas[:-1].double())


def test_flow_config_errors():
    from diffsolve.adapters import flow_sigmas_from_diffusers
    from diffsolve.scheduler import DiffsolveScheduler

    with pytest.raises(ValueError, match="mu"):
        flow_sigmas_from_diffusers({"use_dynamic_shifting": True, "shift": 1.0}, 10)
    with pytest.raises(ValueError, match="use_karras_sigmas"):
        flow_sigmas_from_diffusers({"shift": 1.0, "use_karras_sigmas": True}, 10)
    with pytest.raises(ValueError, match="stochastic_sampling"):
        DiffsolveScheduler.from_config(diffusers.FlowMatchEulerDiscreteScheduler(stochastic_sampling=True).config)
    with pytest.raises(ValueError, match="sigmas"):
        flow_sigmas_from_diffusers({"shift": 1.0}, sigmas=[1.0, 1.5])
    ddpm = DiffsolveScheduler.from_config(diffusers.DDIMScheduler().config)
    with pytest.raises(ValueError, match="flow-matching"):
        ddpm.set_timesteps(sigmas=[1.0, 0.5])
    ds = DiffsolveScheduler.from_config(diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True).config)
    with pytest.raises(ValueError, match="mu"):
        ds.set_timesteps(10)
    with pytest.raises(ValueError, match="sigmas"):
        ds.set_timesteps(5, sigmas=[1.0, 0.5], mu=0.5)


@pytest.fixture(scope="module")
def sd3():
    torch.manual_seed(0)
    tr = diffusers.SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=16,
        pos_embed_max_size=16)
    tr = tr.double().eval().requires_grad_(False)
    g = torch.Generator().manual_seed(5)
    cond = dict(encoder_hidden_states=torch.randn(2, 5, 16, dtype=F64, generator=g),
                pooled_projections=torch.randn(2, 16, dtype=F64, generator=g))
    return tr, cond


def _x_T():
    return torch.randn(2, 4, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(1))


def _run(sched, tr, cond, x):
    states = []
    for t in sched.timesteps:
        x = sched.step(tr(x, timestep=t.reshape(1).expand(x.shape[0]), **cond).sample, t, x).prev_sample
        states.append(x)
    return states


def _rel(a, b):
    return max(float((x - y).abs().max() / y.abs().max()) for x, y in zip(a, b))


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("solver", ["euler", "ddim"])
def test_scheduler_reproduces_flow_match_euler(sd3, name, solver):
    from diffsolve.adapters import from_diffusers
    from diffsolve.scheduler import DiffsolveScheduler

    tr, cond = sd3
    cfg, kw = CONFIGS[name]
    ref_sched = diffusers.FlowMatchEulerDiscreteScheduler(**cfg)
    ds = DiffsolveScheduler.from_config(ref_sched.config, solver=solver, grid="diffusers")
    assert isinstance(ds.schedule, FlowSchedule) and ds.prediction == "velocity" and ds.config.grid == "diffusers"
    for setup in (dict(num_inference_steps=12), dict(sigmas=np.linspace(1.0, 1 / 9, 9))):
        ref_sched.set_timesteps(**setup, **kw)
        ds.set_timesteps(**setup, **kw)
        # the same network inputs: timesteps 1000·σ equal diffusers' (float32) ones, the first is 1000
        assert ds.timesteps[0] == 1000.0 and torch.equal(ds.timesteps.float(), ref_sched.timesteps)
        ref = _run(ref_sched, tr, cond, _x_T())
        ours = _run(ds, tr, cond, _x_T())
        # diffusers' step casts the sample to float32: its rounding, 1e-7, is most of the difference
        assert _rel(ours, ref) < 1e-6
        # in float64 throughout, Euler in σ from σ = 1: the start at 1 − 1e-9 costs ~6e-10 with DDIM (the
        # O(δ) shift of docs/math.md (25.8)); raw-time Euler forms f x − ½g²ŝ with f ≈ −1e9 there: ~1e-8
        sig = torch.cat([ref_sched.sigmas.double()])
        x, exact = _x_T(), []
        for i, t in enumerate(ref_sched.timesteps):
            v = tr(x, timestep=t.reshape(1).expand(2), **cond).sample
            x = x + (sig[i + 1] - sig[i]) * v
            exact.append(x)
        assert _rel(ours, exact) < (5e-8 if solver == "euler" else 2e-9)
    # diffsolve.sample with the adapter's denoiser on the scheduler's grid: the same result
    den = from_diffusers(tr, ref_sched, conditions=cond)
    assert den.prediction == "velocity" and den.shape == (4, 8, 8)
    res = diffsolve.sample(den, _x_T(), solver=solver, grid=ds.plan.t, denoise_final=True)
    torch.testing.assert_close(res.x, ours[-1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shifts", [(3.0, 5.0), (3.0, 0.5), (0.5, 0.5), (1.0, 0.4)])
def test_set_shift_is_flow_match_eulers(sd3, shifts):
    """set_shift changes the shift set_timesteps applies, not diffusers' σ_min (fixed by the config's shift
    at construction): the same timesteps, σ and states as FlowMatchEulerDiscreteScheduler.set_shift; shifts
    below 1, whose last σ lies under the shifted 1/N, included."""
    from diffsolve.adapters import flow_sigmas_from_diffusers
    from diffsolve.scheduler import DiffsolveScheduler

    tr, cond = sd3
    s0, s1 = shifts
    ref_sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=s0)
    ds = DiffsolveScheduler.from_config(ref_sched.config, solver="euler", grid="diffusers")
    ref_sched.set_shift(s1)
    ds.set_shift(s1)
    assert ds.shift == ref_sched.shift == s1 and ds.config.shift == ref_sched.config.shift == s0
    for n in (4, 12):
        ref_sched.set_timesteps(n)
        ds.set_timesteps(n)
        assert torch.equal(ds.sigmas, ref_sched.sigmas)
        assert torch.equal(flow_sigmas_from_diffusers(ref_sched, n), ref_sched.sigmas[:-1].double())
        torch.testing.assert_close(ds.timesteps.float(), ref_sched.timesteps, rtol=1e-6, atol=0)
        assert _rel(_run(ds, tr, cond, _x_T()), _run(ref_sched, tr, cond, _x_T())) < 1e-6
    # the default grid (flow_dpm) and solver follow the new shift too
    moved, kept = (DiffsolveScheduler.from_config(diffusers.FlowMatchEulerDiscreteScheduler(shift=s0).config)
                   for _ in range(2))
    moved.set_shift(s1)
    moved.set_timesteps(8)
    kept.set_timesteps(8)
    assert (s1 == s0) == torch.equal(moved.sigmas, kept.sigmas)


def test_a_set_shift_is_read_from_the_scheduler_and_nothing_else_warns():
    """flow_sigmas_from_diffusers / schedule_from_diffusers read FlowMatchEulerDiscreteScheduler's current shift
    (set_shift); a scheduler whose `shift` is only a config field is read from its config, without diffusers'
    deprecation warning for config attributes."""
    import warnings

    from diffsolve.adapters import flow_sigmas_from_diffusers, schedule_from_diffusers

    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_shift(0.5)
    sched.set_timesteps(6)
    assert torch.equal(flow_sigmas_from_diffusers(sched, 6), sched.sigmas[:-1].double())
    assert schedule_from_diffusers(sched)[0].shift == 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        heun = diffusers.FlowMatchHeunDiscreteScheduler(shift=3.0)
        assert schedule_from_diffusers(heun)[0].shift == 3.0


def test_set_shift_refuses_what_it_cannot_shift():
    from diffsolve.scheduler import DiffsolveScheduler

    with pytest.raises(ValueError, match="flow-matching"):
        DiffsolveScheduler.from_config(diffusers.DDIMScheduler().config).set_shift(3.0)
    flow = DiffsolveScheduler.from_config(diffusers.FlowMatchEulerDiscreteScheduler().config)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="shift must be > 0"):
            flow.set_shift(bad)
    with pytest.raises(TypeError, match="shift must be a number"):
        flow.set_shift("3")
    assert flow.shift == 1.0


def test_scheduler_flow_img2img_and_other_grids(sd3):
    """scale_noise (img2img), a start inside the grid, and non-diffusers grids on a flow config."""
    from diffsolve.scheduler import DiffsolveScheduler

    tr, cond = sd3
    ds = DiffsolveScheduler.from_config(diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0).config, solver="euler",
                                        grid="diffusers")
    ref = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    ds.set_timesteps(10)
    ref.set_timesteps(10)
    x0, noise = _x_T(), torch.randn(2, 4, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(9))
    t = ds.timesteps[4:5]
    ref.set_begin_index(4)
    torch.testing.assert_close(ds.scale_noise(x0, t, noise), ref.scale_noise(x0, ref.timesteps[4:5], noise),
                               rtol=1e-6, atol=1e-6)
    ds.set_begin_index(4)
    x = ds.scale_noise(x0, t, noise)
    states = []
    for k in ds.timesteps[4:]:
        x = ds.step(tr(x, timestep=k.reshape(1).expand(2), **cond).sample, k, x).prev_sample
        states.append(x)
    xr = ref.scale_noise(x0, ref.timesteps[4:5], noise)
    ref_states = []
    for k in ref.timesteps[4:]:
        xr = ref.step(tr(xr, timestep=k.reshape(1).expand(2), **cond).sample, k, xr).prev_sample
        ref_states.append(xr)
    assert _rel(states, ref_states) < 1e-6
    # other grid kinds run too (the shift is a property of the diffusers grid, not of the schedule)
    for grid, solver in (("time", "dpmpp_2s"), ("log_snr", "dpmpp_2m")):
        other = DiffsolveScheduler.from_config(diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0).config,
                                               solver=solver, grid=grid)
        other.set_timesteps(8)
        assert 6 <= len(other.timesteps) <= 8  # dpmpp_2s: 3 steps of 2 and the final denoise
        x = _x_T()
        for k in other.timesteps:
            x = other.step(tr(x, timestep=k.reshape(1).expand(2), **cond).sample, k, x).prev_sample
        assert torch.isfinite(x).all()


# --- inside diffusers' own pipelines (prompt embeddings given, no text encoders) ------------------------
def _vae():
    return diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8,),
                                   down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
                                   norm_num_groups=8, sample_size=8)


def _pipeline_latents(pipe, scheduler, **kw):
    pipe.scheduler = scheduler
    return pipe(output_type="latent", generator=torch.Generator().manual_seed(1), **kw).images


def test_sd3_and_flux_pipelines_with_diffsolve_scheduler():
    """StableDiffusion3Pipeline (shift 3, CFG) and FluxPipeline (dynamic shift μ from the image size,
    sigmas given by the pipeline, distilled guidance) with DiffsolveScheduler(solver="euler"): the
    latents of FlowMatchEulerDiscreteScheduler (float32)."""
    pytest.importorskip("transformers")
    from diffsolve.scheduler import DiffsolveScheduler

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    sd3 = diffusers.SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=16,
        pos_embed_max_size=16)
    none = dict.fromkeys(["text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "text_encoder_3", "tokenizer_3"])
    pipe = diffusers.StableDiffusion3Pipeline(transformer=sd3, scheduler=_flow_sched(shift=3.0), vae=_vae(), **none)
    pipe.set_progress_bar_config(disable=True)
    kw = dict(prompt_embeds=torch.randn(1, 5, 16, generator=g), pooled_prompt_embeds=torch.randn(1, 16, generator=g),
              negative_prompt_embeds=torch.zeros(1, 5, 16), negative_pooled_prompt_embeds=torch.zeros(1, 16),
              guidance_scale=3.0, num_inference_steps=8, height=8, width=8)
    want = _pipeline_latents(pipe, _flow_sched(shift=3.0), **kw)
    got = _pipeline_latents(pipe, DiffsolveScheduler.from_config(_flow_sched(shift=3.0).config, solver="euler",
                                                                 grid="diffusers"), **kw)
    assert float((got - want).norm() / want.norm()) < 1e-5

    flux = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=12, pooled_projection_dim=10, guidance_embeds=True, axes_dims_rope=(4, 4, 8))
    flux_cfg = dict(shift=3.0, use_dynamic_shifting=True)
    none = dict.fromkeys(["text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"])
    pipe = diffusers.FluxPipeline(transformer=flux, scheduler=_flow_sched(**flux_cfg), vae=_vae(), **none)
    pipe.set_progress_bar_config(disable=True)
    kw = dict(prompt_embeds=torch.randn(1, 3, 12, generator=g), pooled_prompt_embeds=torch.randn(1, 10, generator=g),
              guidance_scale=3.5, num_inference_steps=6, height=16, width=16)
    want = _pipeline_latents(pipe, _flow_sched(**flux_cfg), **kw)
    ds = DiffsolveScheduler.from_config(_flow_sched(**flux_cfg).config, solver="euler", grid="diffusers")
    got = _pipeline_latents(pipe, ds, **kw)
    assert ds.timesteps[0] == 1000.0 and len(ds.timesteps) == 6
    assert float((got - want).norm() / want.norm()) < 1e-5


def _flow_sched(**cfg):
    return diffusers.FlowMatchEulerDiscreteScheduler(**cfg)


def test_heun_refuses_a_start_at_sigma_one_in_s_only(sd3):
    """EDM's Heun averages slopes in s = σ/α; from σ = 1 (s ~ 1e9) that is meaningless: refused. On a flow
    schedule heun steps in t by default (FlowMatchHeun's form), which starts at σ = 1."""
    from diffsolve.scheduler import DiffsolveScheduler

    cfg = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0).config
    sched = DiffsolveScheduler.from_config(cfg, solver="heun:variable=s", grid="diffusers")
    with pytest.raises(ValueError, match="steps in s = σ/α.*heun:variable=t"):
        sched.set_timesteps(9)
    sched = DiffsolveScheduler.from_config(cfg, solver="heun", grid="diffusers")
    sched.set_timesteps(9)
    assert float(sched.timesteps[0]) == 1000.0


def test_heun_churn_on_a_flow_schedule_needs_variable_s():
    """heun steps in t on a flow schedule; EDM's churn lives in s = σ/α, so asking for it there says which
    variable to give (and in s, from α > 0, it runs)."""
    den = GaussianMixture.ring().denoiser(FlowSchedule(), "velocity")
    with pytest.raises(ValueError, match="give variable='s' to churn"):
        diffsolve.sample(den, seeds="0-3", solver="heun:S_churn=1", nfe=9)
    out = diffsolve.sample(den, seeds="0-3", solver="heun:S_churn=1:variable=s", nfe=9)
    assert out.solver.variable == "s" and bool(torch.isfinite(out.x).all())


@pytest.mark.parametrize("n", [2, 4, 8])
def test_heun_in_t_is_flow_match_heun_step_for_step(n):
    """heun on a flow schedule (variable "auto" -> "t") on FlowMatchHeunDiscreteScheduler's σ, ending with
    x̂0 (its Euler step to σ = 0), against diffusers' own loop on the same exact velocity: float32 round-off."""
    sch = FlowSchedule(t_max=1 - 1e-9)
    den = GaussianMixture.ring().denoiser(sch, "velocity")
    x0 = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = diffusers.FlowMatchHeunDiscreteScheduler(shift=3.0)
    ref.set_timesteps(n)
    x = x0.float()
    for t in ref.timesteps:
        x = ref.step(den.velocity(x.double(), min(float(t) / 1000, sch.t_max)).float(), t, x).prev_sample
    grid = torch.unique_consecutive(ref.sigmas.double())[:-1].clamp(max=sch.t_max)
    out = diffsolve.sample(den, x0, solver="heun", grid=grid, denoise_final=True)
    assert out.nfe == len(ref.timesteps) == 2 * n - 1
    assert float((out.x - x.double()).abs().max()) < 3e-5  # diffusers steps in float32


def test_default_flow_grid_is_diffusers_flow_dpm_spacing():
    """Flow configs default to the σ of diffusers' flow DPM-Solver (grid "flow_dpm"): below
    σ = 1 and even enough in λ for multistep solvers (the shifted Euler grid from σ = 1 broke them)."""
    from diffsolve.scheduler import DiffsolveScheduler

    ours = DiffsolveScheduler.from_config(diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0).config, solver="unipc")
    ours.set_timesteps(8)
    dpm = diffusers.DPMSolverMultistepScheduler(use_flow_sigmas=True, flow_shift=3.0, prediction_type="flow_prediction")
    dpm.set_timesteps(8)
    want = dpm.sigmas[:-1].double()
    got = torch.as_tensor(ours.plan.t, dtype=torch.float64)
    assert len(ours.timesteps) == 8 and float(got[0]) < 1.0
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
