"""Error per network evaluation inside a diffusers pipeline: diffsolve's solvers through the
drop-in ``DiffsolveScheduler`` against every deterministic diffusers scheduler at its defaults.

A tiny randomly initialised Stable Diffusion pipeline (text-conditional UNet, latents 4×8×8,
classifier-free guidance 3.0, prompt embeddings drawn at random; built from configs, offline) is
run from the same initial noise at budgets of 5, 8, 10, 15 and 20 network evaluations. The error
is the relative L2 distance of the final latents to a reference: diffsolve's dpmpp_3m at 1000
evaluations through the same pipeline (its distance to diffusers' DDIM at 1000 steps is printed
too, as a check that both converge to the same ODE solution). diffusers' schedulers run with
Stable Diffusion's own spacing (``leading``, steps_offset 1: the first evaluation is below the
last training time, so they integrate from a lower noise level than the reference and their error
does not vanish with more steps) and with ``trailing`` (which starts at the last training time).
NFE is counted at the UNet (a
forward hook; each call evaluates the conditional and unconditional halves together), so a
two-evaluation scheduler (Heun, KDPM2) is run with about half the steps.

What a random network says: the ODE of a random UNet is smooth but has nothing of a trained
model's structure (no data manifold, no sharp x̂0 late in the trajectory), so the ranking here
shows how the solvers integrate *an* ODE through the real pipeline code, not how they rank on a
trained Stable Diffusion. Use the exact problems of ``benchmarks/quality.md`` for that.

    python benchmarks/diffusers_pipelines.py            # ~5 min on two idle CPU cores
"""
from __future__ import annotations

import argparse
import time
import warnings

import torch

warnings.filterwarnings("ignore")

import diffusers  # noqa: E402
from diffusers.utils import logging as dlogging  # noqa: E402

from diffsolve.adapters import DiffsolveScheduler  # noqa: E402

dlogging.set_verbosity_error()

# Stable Diffusion's training schedule; set_alpha_to_one=True so that DDIM and PNDM, like every other
# scheduler here, end with x̂0 at the last time (the step to σ = 0) instead of at ᾱ_0
SD_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                    set_alpha_to_one=True, steps_offset=1, timestep_spacing="leading")
PEERS = ("DDIMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler", "HeunDiscreteScheduler",
         "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "KDPM2DiscreteScheduler",
         "DEISMultistepScheduler", "UniPCMultistepScheduler")
OURS = ("dpmpp_2m", "dpmpp_3m", "unipc", "deis", "unipc:order=3", "heun", "ddim")
OURS_ON_TRAILING = ("dpmpp_2m", "unipc")  # the same solvers on diffusers' trailing spacing (grid vs solver)


def tiny_sd():
    """The example's tiny Stable Diffusion pipeline (examples/diffusers_pipeline.py), with
    ``SD_SCHEDULER`` as its scheduler."""
    import runpy
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "diffusers_pipeline.py"
    pipe = runpy.run_path(str(example))["tiny_pipeline"]()
    pipe.scheduler = diffusers.DDIMScheduler(**SD_SCHEDULER)
    return pipe


class Counter:
    def __init__(self, module):
        self.n = 0
        module.register_forward_hook(lambda *a: setattr(self, "n", self.n + 1))


def run(pipe, counter, scheduler, steps, embeds, batch_seed=1):
    pipe.scheduler = scheduler
    counter.n = 0
    with torch.no_grad():
        out = pipe(prompt_embeds=embeds[0], negative_prompt_embeds=embeds[1], guidance_scale=3.0, height=8, width=8,
                   num_inference_steps=steps, output_type="latent",
                   generator=torch.Generator().manual_seed(batch_seed)).images
    return out.double(), counter.n


def peer_steps(name, config, budget):
    """The most steps whose network calls stay within the budget (diffusers counts steps)."""
    best = None
    for steps in range(1, budget + 1):
        s = getattr(diffusers, name).from_config(config)
        try:
            s.set_timesteps(steps)
        except ValueError:  # too few steps for this scheduler (PNDM's Runge-Kutta warm-up)
            continue
        if len(s.timesteps) <= budget:
            best = steps
    return best


def tiny_sd3(seed: int = 0, shift: float = 3.0):
    torch.manual_seed(seed)
    tr = diffusers.SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=16,
        pos_embed_max_size=16).eval()
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8,),
                                  down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
                                  norm_num_groups=8, sample_size=8)
    none = dict.fromkeys(["text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "text_encoder_3", "tokenizer_3"])
    pipe = diffusers.StableDiffusion3Pipeline(transformer=tr, vae=vae, **none,
                                              scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=shift))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def flow_table(budgets, batch):
    """The same comparison on a tiny random SD3 (flow matching, shift 3) pipeline."""
    pipe = tiny_sd3()
    counter = Counter(pipe.transformer)
    g = torch.Generator().manual_seed(0)
    kw = dict(prompt_embeds=torch.randn(batch, 5, 16, generator=g), pooled_prompt_embeds=torch.randn(batch, 16, generator=g),
              negative_prompt_embeds=torch.zeros(batch, 5, 16), negative_pooled_prompt_embeds=torch.zeros(batch, 16),
              guidance_scale=3.0, height=8, width=8, output_type="latent")

    def go(scheduler, steps):
        pipe.scheduler = scheduler
        counter.n = 0
        with torch.no_grad():
            out = pipe(num_inference_steps=steps, generator=torch.Generator().manual_seed(1), **kw).images
        return out.double(), counter.n

    config = pipe.scheduler.config
    ref, n_ref = go(DiffsolveScheduler.from_config(config, solver="dpmpp_3m"), 1000)
    euler_ref, _ = go(diffusers.FlowMatchEulerDiscreteScheduler.from_config(config), 1000)
    print(f"\nSD3-style flow pipeline (shift 3). Reference: diffsolve dpmpp_3m at {n_ref} NFE; diffusers' flow Euler "
          f"at 1000 steps differs from it by {float((euler_ref - ref).norm() / ref.norm()):.2e}")
    peers = {"FlowMatchEulerDiscreteScheduler": lambda: diffusers.FlowMatchEulerDiscreteScheduler.from_config(config),
             "FlowMatchHeunDiscreteScheduler": lambda: diffusers.FlowMatchHeunDiscreteScheduler.from_config(config),
             "DPMSolverMultistepScheduler(flow)": lambda: diffusers.DPMSolverMultistepScheduler(
                 use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=3.0),
             "UniPCMultistepScheduler(flow)": lambda: diffusers.UniPCMultistepScheduler(
                 use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=3.0)}
    rows = []
    for name, make in peers.items():
        errs, spent = [], []
        for b in budgets:
            steps = max(s for s in range(1, b + 1) if _evals(make(), s) <= b)
            out, n = go(make(), steps)
            errs.append(float((out - ref).norm() / ref.norm()))
            spent.append(n)
        rows.append((f"diffusers {name}", errs, spent))
    # heun steps in t on flow schedules (FlowMatchHeun's form); on diffusers' grid it is that scheduler's twin
    for spec, grid in (("euler", None), ("ddim", None), ("dpmpp_2m", None), ("dpmpp_3m", None), ("unipc", None),
                       ("heun", None), ("heun", "diffusers")):
        errs, spent = [], []
        for b in budgets:
            out, n = go(DiffsolveScheduler.from_config(config, solver=spec, **({"grid": grid} if grid else {})), b)
            errs.append(float((out - ref).norm() / ref.norm()))
            spent.append(n)
        rows.append((f"diffsolve {spec}" + (f" grid={grid}" if grid else ""), errs, spent))
    return rows


def _evals(scheduler, steps):
    scheduler.set_timesteps(steps)
    return len(scheduler.timesteps)


def print_rows(rows, budgets):
    for label, errs, spent in rows:
        print(f"{label + ' (' + ','.join(map(str, spent)) + ')':56s} " + " ".join(f"{e:10.2e}" for e in errs))

    def best(prefix, j):
        return min(r[1][j] for r in rows if r[0].startswith(prefix) and r[1][j] == r[1][j])

    ratios = [best("diffsolve", j) / best("diffusers", j) for j in range(len(budgets))]
    print(f"{'best diffsolve / best diffusers':56s} " + " ".join(f"{r:10.2f}" for r in ratios))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nfe", default="5,8,10,15,20")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--only", choices=("sd", "flow"), help="run one of the two pipelines")
    args = ap.parse_args()
    budgets = [int(v) for v in args.nfe.split(",")]
    t0 = time.time()
    if args.only != "flow":
        sd_table(budgets, args.batch)
    if args.only != "sd":
        rows = flow_table(budgets, args.batch)
        print(f"{'scheduler (NFE actually spent at each budget)':56s} " + " ".join(f"{b:>10d}" for b in budgets))
        print_rows(rows, budgets)
    print(f"({time.time() - t0:.0f} s)")


def sd_table(budgets, batch):
    pipe = tiny_sd()
    counter = Counter(pipe.unet)
    g = torch.Generator().manual_seed(0)
    embeds = (torch.randn(batch, 5, 16, generator=g), torch.zeros(batch, 5, 16))
    config = pipe.scheduler.config
    ref, n_ref = run(pipe, counter, DiffsolveScheduler.from_config(config, solver="dpmpp_3m"), 1000, embeds)
    ddim_ref, _ = run(pipe, counter, diffusers.DDIMScheduler.from_config(config, timestep_spacing="trailing"), 999,
                      embeds)
    print(f"reference: diffsolve dpmpp_3m at {n_ref} NFE; diffusers DDIM at 999 steps differs from it by "
          f"{float((ddim_ref - ref).norm() / ref.norm()):.2e} (relative)")
    print(f"{'scheduler (NFE actually spent at each budget)':56s} " + " ".join(f"{b:>10d}" for b in budgets))
    rows = []
    for spacing in ("leading", "trailing"):  # SD's config; the spacing that starts at the last training time
        peer_config = dict(config, timestep_spacing=spacing)
        for name in PEERS:
            errs, spent = [], []
            for b in budgets:
                steps = peer_steps(name, peer_config, b)
                if steps is None:
                    errs.append(float("nan"))
                    spent.append(0)
                    continue
                out, n = run(pipe, counter, getattr(diffusers, name).from_config(peer_config), steps, embeds)
                errs.append(float((out - ref).norm() / ref.norm()))
                spent.append(n)
            rows.append((f"diffusers {name} {spacing}", errs, spent))
    for spec, grid in [(s, "log_snr") for s in OURS] + [(s, "trailing") for s in OURS_ON_TRAILING]:
        errs, spent = [], []
        for b in budgets:
            out, n = run(pipe, counter, DiffsolveScheduler.from_config(config, solver=spec, grid=grid), b, embeds)
            errs.append(float((out - ref).norm() / ref.norm()))
            spent.append(n)
        rows.append((f"diffsolve {spec}" + ("" if grid == "log_snr" else f" grid={grid}"), errs, spent))
    print_rows(rows, budgets)

if __name__ == "__main__":
    main()
