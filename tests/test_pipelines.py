"""DiffsolveScheduler inside diffusers' own pipelines, offline: tiny randomly initialised pipelines
built from configs (no hub), driven by pre-computed prompt embeddings.

With ``DiffsolveScheduler`` set to the counterpart of diffusers' scheduler (same timesteps), the
pipeline's output latents equal those of diffusers' own scheduler (float32: relative 1e-4 asked,
~2e-7 measured); img2img with a strength works the same way; every other fixed-step solver runs
unchanged in the pipeline.
"""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")  # diffusers' Stable Diffusion pipelines import it
diffusers = pytest.importorskip("diffusers")

from diffsolve.adapters import DiffsolveScheduler  # noqa: E402

SD_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                    set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading")


@pytest.fixture(scope="module")
def sd():
    """The example's tiny text-conditional Stable Diffusion pipeline (latents 4×8×8, SD's DDIM
    config; examples/diffusers_pipeline.py builds it) and prompt embeddings."""
    import runpy
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "diffusers_pipeline.py"
    pipe = runpy.run_path(str(example))["tiny_pipeline"]()
    assert dict(pipe.scheduler.config).items() >= SD_SCHEDULER.items()
    g = torch.Generator().manual_seed(0)
    return pipe, torch.randn(2, 5, 16, generator=g), torch.zeros(2, 5, 16)


def _latents(pipe, embeds, scheduler, steps=None, timesteps=None, image=None, strength=0.6):
    """The pipeline's latents with ``scheduler`` swapped in; the fixture's own scheduler is put back after,
    so that every test's ``pipe.scheduler.config`` is SD's (a DiffsolveScheduler's config carries its eta)."""
    own, pipe.scheduler = pipe.scheduler, scheduler
    kw = dict(prompt_embeds=embeds[0], negative_prompt_embeds=embeds[1], guidance_scale=3.0, output_type="latent",
              generator=torch.Generator().manual_seed(1), num_inference_steps=steps, timesteps=timesteps)
    try:
        if image is None:
            return pipe(height=8, width=8, **kw).images
        img2img = diffusers.StableDiffusionImg2ImgPipeline(**pipe.components)
        img2img.set_progress_bar_config(disable=True)
        return img2img(image=image, strength=strength, **kw).images
    finally:
        pipe.scheduler = own


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def test_stable_diffusion_ddim_twin_equals_diffusers(sd):
    pipe, *embeds = sd
    ddim = diffusers.DDIMScheduler(**SD_SCHEDULER)
    want = _latents(pipe, embeds, ddim, steps=10)
    ddim.set_timesteps(10)
    ours = DiffsolveScheduler.from_config(ddim.config, solver="ddim", denoise_final=False)  # set_alpha_to_one=False
    got = _latents(pipe, embeds, ours, timesteps=ddim.timesteps.tolist())
    assert got.shape == want.shape and _rel(got, want) < 1e-4


def test_stable_diffusion_dpm_solver_twin_equals_diffusers(sd):
    pipe, *embeds = sd
    dpm = diffusers.DPMSolverMultistepScheduler.from_config(diffusers.DDIMScheduler(**SD_SCHEDULER).config)
    want = _latents(pipe, embeds, dpm, steps=8)
    dpm.set_timesteps(8)
    ours = DiffsolveScheduler.from_config(dpm.config, solver="dpmpp_2m:lower_order_below=null")
    got = _latents(pipe, embeds, ours, timesteps=dpm.timesteps.tolist())
    assert _rel(got, want) < 1e-4


def test_img2img_strength_ddim_twin_equals_diffusers(sd):
    pipe, *embeds = sd
    image = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    ddim = diffusers.DDIMScheduler(**SD_SCHEDULER)
    want = _latents(pipe, embeds, ddim, steps=10, image=image)
    ddim.set_timesteps(10)
    ours = DiffsolveScheduler.from_config(ddim.config, solver="ddim", denoise_final=False)
    got = _latents(pipe, embeds, ours, timesteps=ddim.timesteps.tolist(), image=image)
    assert _rel(got, want) < 1e-4


@pytest.mark.parametrize("spec,eta", [("unipc", 0.0), ("dpmpp_3m", 0.0), ("heun", 0.0), ("dpmpp_2s", 0.0),
                                      ("deis", 0.0), ("dpmpp_2m_sde", 1.0), ("ancestral", 1.0), ("pc", 0.0)])
def test_every_solver_runs_in_the_pipeline_at_its_budget(sd, spec, eta):
    """num_inference_steps is the budget of network evaluations: the pipeline calls the UNet
    exactly len(scheduler.timesteps) times (twice each with classifier-free guidance's batch), at
    most the budget, and the same seeds give the same latents."""
    pipe, *embeds = sd
    calls = []
    hook = pipe.unet.register_forward_hook(lambda *a: calls.append(1))
    try:
        ours = DiffsolveScheduler.from_config(pipe.scheduler.config, solver=spec, eta=eta, seeds=[3, 4])
        a = _latents(pipe, embeds, ours, steps=9)
        assert len(calls) == len(ours.timesteps) <= 9
        b = _latents(pipe, embeds, DiffsolveScheduler.from_config(pipe.scheduler.config, solver=spec, eta=eta,
                                                                  seeds=[3, 4]), steps=9)
    finally:
        hook.remove()
    assert torch.isfinite(a).all() and torch.equal(a, b)


def test_img2img_with_a_two_evaluation_solver(sd):
    """The strength starts the solve at evaluation n − int(n·strength); with two evaluations per
    step that must be a step boundary (even), else a clear error instead of a wrong start."""
    pipe, *embeds = sd
    image = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    heun = DiffsolveScheduler.from_config(pipe.scheduler.config, solver="heun")
    out = _latents(pipe, embeds, heun, steps=12, image=image, strength=0.5)  # starts at evaluation 6
    assert out.shape == (2, 4, 8, 8) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="spends 2 evaluations per step"):
        _latents(pipe, embeds, heun, steps=12, image=image, strength=0.6)  # evaluation 5: inside a step


def test_a_callable_noise_level_in_the_pipeline(sd):
    """ν_t as a callable (not JSON, so not a config field): set_noise_level, as sample(noise=...)."""
    pipe, *embeds = sd
    ours = DiffsolveScheduler.from_config(pipe.scheduler.config, solver="dpmpp_2m_sde", seeds=[3, 4])
    ours.set_noise_level(noise=lambda t: 0.5 * ours.schedule.g(t))
    half = _latents(pipe, embeds, ours, steps=8)
    eta = _latents(pipe, embeds, DiffsolveScheduler.from_config(pipe.scheduler.config, solver="dpmpp_2m_sde",
                                                                seeds=[3, 4], eta=0.5), steps=8)
    assert _rel(half, eta) < 1e-5  # ν = 0.5 g given either way


def test_class_conditional_dit_pipeline():
    """DiTPipeline (class labels, guidance on the ε half of a learned-σ output): the DDIM twin
    (diffsolve.parity) equals diffusers' DDIM, and every network call is one of
    DiffsolveScheduler's evaluations. (The model must be in eval mode: in training mode DiT drops
    class labels at random, so not even diffusers' own scheduler reproduces itself.)"""
    from diffsolve.parity import diffusers_twin

    torch.manual_seed(0)
    tr = diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                         num_layers=1, sample_size=8, patch_size=2, num_embeds_ada_norm=1000,
                                         norm_num_groups=2).eval()
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8,),
                                  down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
                                  norm_num_groups=8, sample_size=8).eval()
    ddim = diffusers.DDIMScheduler(clip_sample=False)
    pipe = diffusers.DiTPipeline(transformer=tr, vae=vae, scheduler=ddim)
    pipe.set_progress_bar_config(disable=True)
    calls = []
    tr.register_forward_hook(lambda *a: calls.append(1))

    def images(scheduler, steps):
        pipe.scheduler = scheduler
        calls.clear()
        return pipe(class_labels=[1, 3], guidance_scale=2.0, num_inference_steps=steps, output_type="pt",
                    generator=torch.Generator().manual_seed(0)).images

    want = images(ddim, 10)
    twin = diffusers_twin(ddim, 10)
    got = images(DiffsolveScheduler.from_config(ddim.config, **twin.options), twin.budget(10))
    assert _rel(got, want) < 1e-4
    images(DiffsolveScheduler.from_config(ddim.config, solver="unipc"), 7)
    assert len(calls) == len(pipe.scheduler.timesteps) == 7
