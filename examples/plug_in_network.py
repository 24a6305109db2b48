"""Plug a network into diffsolve: a plain callable, an EDM-style denoiser, a diffusers UNet, and
classifier-free guidance — each is just a diffsolve.Denoiser, so every solver works on it.

    python examples/plug_in_network.py [--fast]

1. The bundled digits network used as a bare callable ``net(x, log_snr)`` predicting ε.
2. The same network rewritten as an EDM denoiser D(y; s) (VE coordinates, s = σ/α) and plugged
   back through ``adapters.from_edm`` on the EDM schedule: DDIM on the same log-SNR grid is the same
   map in VE coordinates, so the samples agree to float32 round-off (docs/math.md §2, last row).
3. A diffusers UNet2DModel (random weights here, just to show the call) through
   ``adapters.from_diffusers`` with its scheduler.
4. Class-conditional digits with classifier-free guidance (``CFGDenoiser``).
"""
from __future__ import annotations

import argparse

import torch

import diffsolve
from diffsolve import CFGDenoiser, Denoiser, adapters, zoo
from diffsolve.schedules import CosineSchedule, EDMSchedule
from diffsolve.zoo.data import digits_to_pixels


def show(pixels: torch.Tensor) -> str:
    """ASCII picture of a row of 8×8 digits (levels 0..16)."""
    chars = " .:-=+*#%@"
    rows = []
    for r in range(8):
        rows.append("  ".join("".join(chars[min(int(v) * len(chars) // 17, len(chars) - 1)] for v in img[0, r])
                              for img in pixels))
    return "\n".join(rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fast", action="store_true", help="fewer samples and steps")
    args = p.parse_args(argv)
    n, steps = (4, 8) if args.fast else (8, 25)
    torch.set_num_threads(1)

    # 1. a bare callable: net(x, label, cond=None) -> ε̂, label = λ_t
    net = zoo.load("digits").net
    cosine = CosineSchedule()
    den = Denoiser(net, cosine, prediction="eps", time_label="log_snr", shape=(1, 8, 8))
    out = diffsolve.sample(den, seeds=range(n), solver="ddim", steps=steps)
    print(f"1. bare callable, DDIM {steps} steps, {out.nfe} NFE:")
    print(show(digits_to_pixels(out.x)))

    # 2. as an EDM denoiser D(y; s): y = x/α, s = σ/α, x̂0 = y − s ε̂(y α, λ = −ln s) with α = 1/√(1 + s²)
    def D(y, s):
        s = s.to(y.dtype)
        alpha = (1 + s * s).rsqrt().reshape(-1, 1, 1, 1)
        return y - s.reshape(-1, 1, 1, 1) * net(y * alpha, -torch.log(s))

    edm = EDMSchedule(sigma_min=float(torch.exp(-cosine.log_snr(cosine.t_min))),
                      sigma_max=float(torch.exp(-cosine.log_snr(cosine.t_max))))
    den_edm = adapters.from_edm(D, edm, shape=(1, 8, 8), net_dtype=torch.float32)  # D runs in float32
    grid_cos = diffsolve.make_grid(cosine, steps, "log_snr")
    grid_edm = edm.t_of_log_snr(cosine.log_snr(grid_cos))
    grid_edm[0], grid_edm[-1] = edm.t_max, edm.t_min
    z = torch.randn(n, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    a = diffsolve.sample(den, float(cosine.sigma(cosine.t_max)) * z, solver="ddim", grid=grid_cos)
    b = diffsolve.sample(den_edm, float(edm.sigma(edm.t_max)) * z, solver="ddim", grid=grid_edm)
    diff = float((a.x - b.x).abs().max())
    print(f"2. EDM form on the EDM schedule: max |x_cosine − x_edm| = {diff:.2e} (float32 network)")
    if diff > 1e-3:
        raise SystemExit("the EDM form should reproduce the cosine-schedule samples")

    # 3. a diffusers UNet (random weights) with its scheduler
    try:
        import diffusers
    except ImportError:
        print("3. diffusers not installed (pip install 'diffsolve[diffusers]'): skipped")
    else:
        torch.manual_seed(0)
        unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                                     block_out_channels=(8, 16), norm_num_groups=4,
                                     down_block_types=("DownBlock2D", "DownBlock2D"),
                                     up_block_types=("UpBlock2D", "UpBlock2D")).eval()
        den_hf = adapters.from_diffusers(unet, diffusers.DDPMScheduler(prediction_type="v_prediction"))
        out = diffsolve.sample(den_hf, seeds=range(2), solver="ddim", steps=steps, grid="trailing")
        print(f"3. diffusers UNet2DModel: {den_hf.prediction}-prediction, {type(den_hf.schedule).__name__} "
              f"with {den_hf.schedule.num_train_timesteps} steps, sample shape {tuple(out.x.shape)}")

    # 4. classifier-free guidance: one batched call per evaluation (2 rows per sample)
    labels = torch.arange(n) % 10
    guided = CFGDenoiser(zoo.load("digits"), scale=3.0, cond=labels)
    out = diffsolve.sample(guided, seeds=range(n), solver="ddim", steps=steps)
    print(f"4. guided (w = 3) digits {labels.tolist()}: {out.nfe} NFE, {guided.rows} network rows")
    print(show(digits_to_pixels(out.x)))


if __name__ == "__main__":
    main()
