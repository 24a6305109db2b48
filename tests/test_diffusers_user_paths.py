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
    with pytest.warns(UserWarning, match=r"clip_sample=True.*threshold='config'"):
        from_diffusers(unet, diffusers.DDPMScheduler().config)
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
