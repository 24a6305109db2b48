"""Use a diffsolve solver as the scheduler of a diffusers pipeline (offline, on a tiny random pipeline).

With a real model the three lines are the same:

    pipe = StableDiffusionPipeline.from_pretrained("stable-diffusion-v1-5/stable-diffusion-v1-5")
    pipe.scheduler = DiffsolveScheduler.from_config(pipe.scheduler.config, solver="unipc")
    image = pipe("a photo of an astronaut", num_inference_steps=10).images[0]   # 10 network evaluations

Here the pipeline is built from configs with random weights (no download), so the "images" are
noise; the point is the mechanics: the swap, the budget counted in network evaluations, and that
the DDIM twin reproduces diffusers' own DDIM.

    python examples/diffusers_pipeline.py
"""
from __future__ import annotations

import argparse
import warnings

import torch


def tiny_pipeline():
    """A tiny Stable Diffusion pipeline with random weights and SD's DDIM config (the tests use it too)."""
    import diffusers

    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, norm_num_groups=8, attention_head_dim=4).eval()
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8,),
                                  down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
                                  norm_num_groups=8, sample_size=8)
    scheduler = diffusers.DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                                        timestep_spacing="leading")
    pipe = diffusers.StableDiffusionPipeline(vae=vae, text_encoder=None, tokenizer=None, unet=unet, scheduler=scheduler,
                                             safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def main(argv=None):
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    warnings.filterwarnings("ignore")
    from diffsolve.adapters import DiffsolveScheduler

    pipe = tiny_pipeline()
    prompt = torch.randn(1, 5, 16, generator=torch.Generator().manual_seed(0))  # stands in for a text encoding
    calls = []
    pipe.unet.register_forward_hook(lambda *a: calls.append(1))

    def latents(**kw):
        calls.clear()
        out = pipe(prompt_embeds=prompt, negative_prompt_embeds=torch.zeros_like(prompt), height=8, width=8,
                   guidance_scale=3.0, output_type="latent", generator=torch.Generator().manual_seed(1), **kw)
        return out.images, len(calls)

    ddim = pipe.scheduler
    reference, _ = latents(num_inference_steps=10)
    for spec in ("unipc", "dpmpp_3m", "heun"):
        pipe.scheduler = DiffsolveScheduler.from_config(ddim.config, solver=spec)
        x, nfe = latents(num_inference_steps=10)
        print(f"1. {spec:9s} in the pipeline: {nfe} network evaluations, latents {tuple(x.shape)}")
    ddim.set_timesteps(10)
    pipe.scheduler = DiffsolveScheduler.from_config(ddim.config, solver="ddim", denoise_final=False)
    x, nfe = latents(timesteps=ddim.timesteps.tolist())
    print(f"2. diffsolve's DDIM twin on diffusers' timesteps: relative difference to diffusers' DDIM "
          f"{float((x - reference).norm() / reference.norm()):.1e} ({nfe} evaluations each)")
    return 0


if __name__ == "__main__":
    main()
