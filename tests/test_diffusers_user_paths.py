"""What a diffusers user does in the first hour, on a small random float32 UNet2DModel: a stochastic
twin with the pipeline's generator (noise drawn in the model's dtype, as diffusers does), DDIMPipeline's
extra step() arguments, a zero-terminal-SNR config with linear betas, from_diffusers' shape check and
its note on a config that thresholds, and sample() recording no graph unless asked."""
import warnings

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

import diffsolve as ds  # noqa: E402
from diffsolve.adapters import from_diffusers, schedule_from_diffusers  # noqa: E402
from diffsolve.parity import diffusers_twin  # noqa: E402
from diffsolve.scheduler import DiffsolveScheduler  # noqa: E402


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                 block_out_channels=(16, 32), down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8).eval()


def _loop(unet, scheduler, n):
    scheduler.set_timesteps(n)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 8, 8, generator=g) * scheduler.init_noise_sigma
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = unet(scheduler.scale_model_input(x, t), t).sample
            x = scheduler.step(out, t, x, generator=g).prev_sample
    return x


@pytest.mark.parametrize("cls,config", [("DDPMScheduler", dict(clip_sample=False)),
                                        ("DPMSolverMultistepScheduler", dict(algorithm_type="sde-dpmsolver++"))])
def test_stochastic_twin_in_float32_draws_diffusers_noise(unet, cls, config):
    base = getattr(diffusers, cls)(**config)
    twin = diffusers_twin(base, 10)
    ref = _loop(unet, base, 10)
    got = _loop(unet, DiffsolveScheduler.from_config(base.config, **twin.options), twin.budget(10))
    assert float((got - ref).norm() / ref.norm()) < 1e-5


def test_ddim_pipeline_runs_with_the_scheduler_swapped(unet):
    pipe = diffusers.DDIMPipeline(unet=unet, scheduler=diffusers.DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = DiffsolveScheduler.from_config(pipe.scheduler.config)
    img = pipe(batch_size=1, num_inference_steps=5, output_type="np").images
    assert img.shape == (1, 8, 8, 3)
    with pytest.raises(ValueError, match=r"passes eta=0.5 to step\(\).*from_config\(config, eta=0.5"):
        pipe(batch_size=1, num_inference_steps=5, eta=0.5, output_type="np")
    s = DiffsolveScheduler.from_config(pipe.scheduler.config)
    s.set_timesteps(5)
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match="variance_noise"):
        s.step(torch.zeros_like(x), s.timesteps[0], x, variance_noise=torch.zeros_like(x))


@pytest.mark.parametrize("betas", ["linear", "scaled_linear"])
def test_zero_terminal_snr_config_from_any_betas(betas):
    config = diffusers.DDPMScheduler(rescale_betas_zero_snr=True, beta_schedule=betas).config
    sch, _ = schedule_from_diffusers(config)
    ac = sch.alphas_cumprod
    assert bool((ac[1:] < ac[:-1]).all()) and 0 < float(ac[-1]) <= 2.0 ** -24
    s = DiffsolveScheduler.from_config(config)
    s.set_timesteps(10)
    assert len(s.timesteps) == 10


def test_from_diffusers_checks_the_channels_and_names_a_thresholding_config(unet):
    with pytest.raises(ValueError, match=r"shape=\(4, 8, 8\) has 4 channels, but the model takes in_channels=3"):
        from_diffusers(unet, diffusers.DDPMScheduler(clip_sample=False).config, shape=(4, 8, 8))
    with pytest.warns(UserWarning, match=r"clip_sample=True, which its DDPM and DDIM schedulers apply.*"
                                         r"threshold='config'"):
        from_diffusers(unet, diffusers.DDPMScheduler().config)
    # diffusers' DPM-Solver applies thresholding too (the warning said only DDPM/DDIM did, its ODE solvers not)
    with pytest.warns(UserWarning, match=r"thresholding=True, which its DDPM, DDIM, DPM-Solver, DEIS and UniPC"):
        from_diffusers(unet, diffusers.DPMSolverMultistepScheduler(thresholding=True).config)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from_diffusers(unet, diffusers.DDPMScheduler().config, threshold="config")
        from_diffusers(unet, diffusers.DDPMScheduler(clip_sample=False).config)


def test_sample_records_no_graph_unless_asked(unet):
    den = from_diffusers(unet, diffusers.DDPMScheduler(clip_sample=False).config)
    assert not ds.sample(den, seeds="0-1", nfe=3).x.requires_grad
    out = ds.sample(den, seeds="0-1", nfe=3, enable_grad=True).x
    assert out.requires_grad
    out.square().sum().backward()
    assert unet.conv_in.weight.grad is not None
    unet.zero_grad(set_to_none=True)
    with torch.no_grad():
        assert not ds.sample(den, seeds="0-1", nfe=3, enable_grad=True).x.requires_grad


def test_log_likelihood_with_per_sample_fixed_conditions():
    """from_diffusers' fixed conditions with one row per sample (an embedding per sample) follow the rows
    the likelihood evaluates, as CFGDenoiser's labels do: each row equals its own run alone."""
    class Net(torch.nn.Module):
        def forward(self, x, timestep, emb):
            return torch.tanh(x) * 0.3 + emb * x.roll(1, 1)

    config = diffusers.DDPMScheduler(clip_sample=False).config
    emb = torch.tensor([[0.1, -0.2], [0.3, 0.0], [-0.1, 0.2], [0.05, 0.05]], dtype=torch.float64)
    x = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    both = ds.log_likelihood(from_diffusers(Net(), config, shape=(2,), conditions={"emb": emb}), x, seeds="0-3",
                             divergence="exact").log_prob
    alone = torch.cat([ds.log_likelihood(from_diffusers(Net(), config, shape=(2,), conditions={"emb": emb[i:i + 1]}),
                                         x[i:i + 1], seeds=[i], divergence="exact").log_prob for i in range(4)])
    torch.testing.assert_close(both, alone, rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", ["EulerDiscreteScheduler", "UniPCMultistepScheduler", "FlowMatchEulerDiscreteScheduler",
                                  "DPMSolverMultistepScheduler", "DDIMScheduler", "HeunDiscreteScheduler"])
def test_swapping_a_scheduler_logs_no_ignored_config_attributes(name, monkeypatch):
    """Every field of the source config is either used, refused by name, or (a sampler setting diffsolve's
    solver replaces) dropped on purpose: diffusers' "config attributes ... will be ignored" never shows."""
    from diffusers import configuration_utils

    said = []
    monkeypatch.setattr(configuration_utils.logger, "warning", lambda msg, *a, **k: said.append(str(msg)))
    DiffsolveScheduler.from_config(getattr(diffusers, name)().config)
    assert not [m for m in said if "config attributes" in m], said
    with pytest.raises(ValueError, match="timestep_type='continuous'"):
        DiffsolveScheduler.from_config(diffusers.EulerDiscreteScheduler(timestep_type="continuous").config)


@pytest.mark.parametrize("beta_schedule", ["scaled_linear", "linear"])
def test_zero_snr_scheduler_object_or_config_give_one_schedule(beta_schedule):
    """A diffusers Euler/DPM/UniPC object with rescale_betas_zero_snr has already put 2^-24 at the last
    timestep: from it or from its config, the same decreasing table, ending at 2^-24 where that keeps ᾱ
    decreasing (scaled_linear, as diffusers samples) and below it where the table is lower (linear)."""
    sc = diffusers.EulerDiscreteScheduler(beta_schedule=beta_schedule, rescale_betas_zero_snr=True)
    (a, _), (b, _) = schedule_from_diffusers(sc), schedule_from_diffusers(sc.config)
    t = torch.tensor([0.5, 1.0], dtype=torch.float64)
    torch.testing.assert_close(a.alpha(t), b.alpha(t), rtol=0, atol=0)
    end = float(a.alpha(t[1:]) ** 2)
    if beta_schedule == "scaled_linear":
        assert abs(end / 2.0 ** -24 - 1) < 1e-12, end
    else:
        assert 0 < end < 2.0 ** -24


def test_whole_timesteps_for_a_time_embedding_by_index():
    """A UNet with a learned (index) time embedding: the 'diffusers' grid's whole timesteps come as int64
    and run; a fractional grid's error names the cause and the fix."""
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                 block_out_channels=(16, 32), down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8,
                                 time_embedding_type="learned", num_train_timesteps=1000)
    pipe = diffusers.DDIMPipeline(unet=unet, scheduler=diffusers.DDIMScheduler(clip_sample=False))
    pipe.scheduler = DiffsolveScheduler.from_config(pipe.scheduler.config, solver="ddim", grid="diffusers")
    pipe.scheduler.set_timesteps(5)
    assert pipe.scheduler.timesteps.dtype == torch.int64
    assert pipe(num_inference_steps=5, output_type="np").images.shape == (1, 8, 8, 3)
    den = from_diffusers(unet, diffusers.DDIMScheduler(clip_sample=False))
    with pytest.raises(ValueError, match="looks its time embedding up by index"):  # before the call ('whole')
        ds.sample(den, seeds="0-1", nfe=4)
    den = from_diffusers(unet, diffusers.DDIMScheduler(clip_sample=False), time_label="default")
    with pytest.raises(RuntimeError) as info:  # float labels: the network's own error, with a note naming the cause
        ds.sample(den, seeds="0-1", nfe=4)
    assert any("time embedding up by index" in n for n in getattr(info.value, "__notes__", [str(info.value)]))


def test_learned_variance_output_and_a_wrong_shape():
    """diffusers' learned variance doubles the UNet's channels: step() takes the first half, as DDPM does;
    another shape is one clear error."""
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=6, layers_per_block=1,
                                 block_out_channels=(16, 32), down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8)
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(variance_type="learned_range"))
    pipe.scheduler = DiffsolveScheduler.from_config(pipe.scheduler.config)
    assert pipe(num_inference_steps=5, output_type="np").images.shape == (1, 8, 8, 3)
    sch = DiffsolveScheduler.from_config(diffusers.DDPMScheduler().config)
    sch.set_timesteps(5)
    x = torch.zeros(1, 3, 8, 8)
    with pytest.raises(ValueError, match=r"model_output has shape \(1, 3, 4, 4\) for a sample of shape"):
        sch.step(torch.zeros(1, 3, 4, 4), sch.timesteps[0], x)


def _pipeline_error(config, n, **kw):
    """RMS error of the scheduler's loop on an exact 8-D mixture against the exact ODE from the same x_T,
    and of ds.sample's bare call (with its analytic first step off, which a pipeline cannot make)."""
    gm = ds.GaussianMixture.random(d=8, n_modes=4, seed=3)
    sch = DiffsolveScheduler.from_config(config, **kw)
    sch.set_timesteps(n)
    exact = gm.denoiser(sch.schedule, sch.prediction)
    x0 = torch.randn(128, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * sch.init_noise_sigma
    x = x0.clone()
    for i, t in enumerate(sch.timesteps):
        x = sch.step(exact.net(x, torch.full((128,), float(sch.plan.times[i]), dtype=torch.float64)), t, x).prev_sample
    ref = ds.sample(exact, x0, solver="dopri5:rtol=1e-9:atol=1e-9").x
    bare = ds.sample(exact, x0, nfe=n, analytic_first_step=False).x
    return float((x - ref).pow(2).mean().sqrt()), float((bare - ref).pow(2).mean().sqrt())


@pytest.mark.parametrize("config", [dict(beta_schedule="squaredcos_cap_v2"),
                                    dict(beta_schedule="scaled_linear", rescale_betas_zero_snr=True,
                                         prediction_type="v_prediction", timestep_spacing="trailing")])
def test_scheduler_starts_where_sample_starts(config):
    """On schedules that start below the default start log-SNR (cosine, zero terminal SNR) the scheduler's
    grid starts where ds.sample's does (the exact flow of standard-normal data leaves VP latents as they are),
    so it gives the bare call's result, not one with evaluations spent near t_max."""
    got, want = _pipeline_error(diffusers.DDPMScheduler(clip_sample=False, **config).config, 10)
    assert abs(got - want) < 1e-6 * max(1.0, want), (got, want)


def test_flow_config_default_ends_with_the_final_denoise():
    """diffusers' flow spacing puts the last evaluation where diffusers steps to σ = 0 (σ ≈ 0.17 at 16 steps,
    shift 3): the scheduler's default run ends there with the final denoise, and its error falls with the
    budget (it was 0.73 at 6 and 2.3 at 16, one step from that σ to t_min)."""
    cfg = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0).config
    errs = [_pipeline_error(cfg, n)[0] for n in (6, 10, 16)]
    assert errs[0] > errs[1] > errs[2] and errs[2] < 0.1, errs


@pytest.mark.parametrize("cls, kw, needle", [("ScoreSdeVeScheduler", {}, "describes"),
                                             ("DDPMWuerstchenScheduler", {}, "describes"),
                                             ("CogVideoXDDIMScheduler", {"snr_shift_scale": 3.0}, "snr_shift_scale")])
def test_configs_of_other_processes_are_refused(cls, kw, needle):
    with pytest.raises(ValueError, match=needle):
        DiffsolveScheduler.from_config(getattr(diffusers, cls)(**kw).config)
    DiffsolveScheduler.from_config({"prediction_type": "v_prediction", "timestep_spacing": "trailing"})  # partial: ok


def test_ddim_pipeline_default_with_clipping_is_said(unet):
    pipe = diffusers.DDIMPipeline(unet=unet, scheduler=diffusers.DDIMScheduler())  # clip_sample=True
    pipe.scheduler = DiffsolveScheduler.from_config(pipe.scheduler.config, solver="ddim")
    with pytest.warns(UserWarning, match="use_clipped_model_output=None"):
        pipe(num_inference_steps=3, output_type="np")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        pipe(num_inference_steps=3, output_type="np", use_clipped_model_output=True)


def test_img2img_start_on_another_spacing_is_said():
    """An img2img start indexes the grid: on diffsolve's log-SNR grid a strength is another noise level than
    on diffusers' spacing, which is said; grid='diffusers' keeps diffusers' meaning without a word."""
    sch = DiffsolveScheduler.from_config(diffusers.DDIMScheduler(clip_sample=False).config, solver="ddim")
    sch.set_timesteps(10)
    with pytest.warns(UserWarning, match="grid='diffusers' keeps diffusers' meaning"):
        sch.set_begin_index(7)
    same = DiffsolveScheduler.from_config(diffusers.DDIMScheduler(clip_sample=False).config, solver="ddim",
                                          grid="diffusers")
    same.set_timesteps(10)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        same.set_begin_index(7)


def test_flow_img2img_on_the_default_grid_is_said():
    """A flow config's default grid is DPM-Solver's flow spacing, not FlowMatchEuler's: a strength starts at
    another σ there (0.75 against diffusers' 0.60 at shift 3, 4 steps, strength 0.5), which was not said."""
    cfg = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0).config
    sch = DiffsolveScheduler.from_config(cfg)
    sch.set_timesteps(4)
    with pytest.warns(UserWarning, match="'flow_dpm' grid"):
        sch.set_begin_index(2)
    twin = DiffsolveScheduler.from_config(cfg, solver="euler", grid="diffusers")
    twin.set_timesteps(4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        twin.set_begin_index(2)


def test_sigmas_given_to_a_two_evaluation_solver_say_the_true_count():
    """Flux's pipeline passes sigmas (one per evaluation it budgets); a solver spending two evaluations per step
    then makes about twice as many: 7 for 4 (dpmpp_2s), said; a one-evaluation solver keeps the budget."""
    cfg = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0).config
    sigmas = [1.0, 0.75, 0.5, 0.25]
    two = DiffsolveScheduler.from_config(cfg, solver="dpmpp_2s")
    with pytest.warns(UserWarning, match="makes 7 network evaluations"):
        two.set_timesteps(4, sigmas=sigmas)
    assert len(two.timesteps) == 7
    one = DiffsolveScheduler.from_config(cfg, solver="dpmpp_2m")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        one.set_timesteps(4, sigmas=sigmas)
    assert len(one.timesteps) == 4


def test_from_diffusers_refuses_what_changes_the_networks_input_and_reads_a_flow_shift():
    """``invert_sigmas=True`` (Mochi) feeds the network 1 − σ and has it predict x0 − ε: from_diffusers ran it as
    an ordinary flow config (2.9 off on Gaussian data, silently), where DiffsolveScheduler refused it. A
    DPM-Solver config of a flow model (Sana) carries its shift as flow_shift: it was read as shift 1."""
    from diffsolve.adapters import from_diffusers

    net = lambda x, timestep: x  # noqa: E731
    with pytest.raises(ValueError, match="invert_sigmas=True"):
        from_diffusers(net, diffusers.FlowMatchEulerDiscreteScheduler(invert_sigmas=True), shape=(4, 8, 8))
    with pytest.raises(ValueError, match="timestep_type='continuous'"):
        from_diffusers(net, diffusers.EulerDiscreteScheduler(timestep_type="continuous"), shape=(4, 8, 8))
    sana = diffusers.DPMSolverMultistepScheduler(use_flow_sigmas=True, flow_shift=3.0,
                                                 prediction_type="flow_prediction")
    assert from_diffusers(net, sana, shape=(4, 8, 8)).schedule.shift == 3.0


def test_a_flow_dpm_solver_config_runs_on_its_own_spacing():
    """Sana's scheduler is DPMSolverMultistepScheduler(use_flow_sigmas=True, flow_shift=s): it was refused. It
    runs as a flow config with shift s, on its own σ (the flow_dpm grid), img2img without a word; UniPC's flow
    spacing starts at σ = 1, which no grid here reproduces: refused, naming the way to run it."""
    sana = diffusers.DPMSolverMultistepScheduler(use_flow_sigmas=True, flow_shift=3.0,
                                                 prediction_type="flow_prediction")
    sana.set_timesteps(10)
    for kw in ({}, {"solver": "dpmpp_2m"}, {"solver": "unipc", "grid": "diffusers"}):
        ours = DiffsolveScheduler.from_config(sana.config, **kw)
        ours.set_timesteps(10)
        assert ours.schedule.shift == 3.0 and len(ours.timesteps) == 10
        torch.testing.assert_close(ours.timesteps.double() / 1000, sana.sigmas[:-1].double(), rtol=0, atol=1e-6)
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            ours.set_begin_index(4)
    unipc = diffusers.UniPCMultistepScheduler(use_flow_sigmas=True, flow_shift=3.0, prediction_type="flow_prediction")
    with pytest.raises(ValueError, match="UniPCMultistepScheduler with use_flow_sigmas=True"):
        DiffsolveScheduler.from_config(unipc.config)


def test_pipeline_timesteps_are_checked_in_their_own_units_and_each_is_evaluated():
    """Bad timesteps were reported in diffsolve's time (t[1]=0.501, t in [0.001, 1.501]); now in the pipeline's
    timesteps. A list ending at timestep 0 (t_min) gave one evaluation fewer than timesteps: each one given is
    evaluated now, the last as the final x̂0."""
    from diffusers import DDIMScheduler

    from diffsolve.scheduler import DiffsolveScheduler

    s = DiffsolveScheduler.from_config(DDIMScheduler().config)
    for timesteps, needle in (([999, 500, 500, 0], r"timesteps\[1\] = 500 is followed by timesteps\[2\] = 500"),
                              ([1500, 500], r"training timesteps, \[0, 999\]; got 500 to 1500")):
        with pytest.raises(ValueError, match=needle):
            s.set_timesteps(timesteps=timesteps)
    with pytest.raises(ValueError, match="num_inference_steps must be a positive integer"):
        s.set_timesteps(num_inference_steps=0)
    s.set_timesteps(timesteps=[999, 500, 0])
    assert s.timesteps.tolist() == [999, 500, 0]
