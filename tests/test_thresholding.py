"""x̂0 clipping and dynamic thresholding as a property of the denoiser's x̂0 (docs/math.md §25):
the maps against hand computations and diffusers' own, every prediction derived from the
thresholded x̂0, guidance, and diffusers' DDIM / DPM-Solver++ with clip_sample / thresholding on a
tiny random float64 UNet (directly and through DiffsolveScheduler)."""
import pytest
import torch

import diffsolve
from diffsolve import CFGDenoiser, Denoiser
from diffsolve.analytic import GaussianMixture
from diffsolve.schedules import VPSchedule
from diffsolve.solvers import get_solver
from diffsolve.thresholding import Clip, DynamicThreshold, threshold_from_config

F64 = torch.float64


# --- the maps ---------------------------------------------------------------------------------
def test_clip_by_hand():
    x0 = torch.tensor([[-3.0, -1.0, 0.5, 2.0]], dtype=F64)
    torch.testing.assert_close(Clip(1.5)(x0), torch.tensor([[-1.5, -1.0, 0.5, 1.5]], dtype=F64), rtol=0, atol=0)
    assert Clip()(x0).abs().max() == 1.0


def test_dynamic_threshold_by_hand():
    # row 0: |x| = 0.5, 1, 2, 4, 8 → the 0.75-quantile is at position 0.75·4 = 3: s = 4, capped by max_value 3
    # row 1: |x| = 0.1 .. 0.5 → quantile 0.4 < 1: s = 1, plain clipping (nothing moves)
    # row 2: |x| = 1, 2, 3, 5, 9 → position 3 → 5 … with ratio 0.7 position 2.8: 3 + 0.8·(5 − 3) = 4.6
    x0 = torch.tensor([[0.5, -1.0, 2.0, -4.0, 8.0],
                       [0.1, -0.2, 0.3, 0.4, -0.5],
                       [1.0, -2.0, 3.0, 5.0, -9.0]], dtype=F64)
    th = DynamicThreshold(ratio=0.7, max_value=3.0)
    s = th.scale(x0)
    # row 0 at position 2.8: 2 + 0.8·(4 − 2) = 3.6 → capped at 3; row 1: 0.42 → 1; row 2: 4.6 → capped at 3
    torch.testing.assert_close(s, torch.tensor([3.0, 1.0, 3.0], dtype=F64), rtol=0, atol=0)
    th2 = DynamicThreshold(ratio=0.7, max_value=10.0)
    torch.testing.assert_close(th2.scale(x0), torch.tensor([3.6, 1.0, 4.6], dtype=F64), rtol=1e-15, atol=0)
    out = th2(x0)
    want = torch.stack([x0[0].clamp(-3.6, 3.6) / 3.6, x0[1], x0[2].clamp(-4.6, 4.6) / 4.6])
    torch.testing.assert_close(out, want, rtol=1e-15, atol=0)
    assert out.abs().max() <= 1.0


@pytest.mark.parametrize("shape", [(3, 4, 5, 5), (2, 7), (4, 1, 3)])
@pytest.mark.parametrize("ratio", [0.995, 0.9, 0.5, 1.0])
def test_dynamic_threshold_matches_torch_quantile_and_diffusers(shape, ratio):
    x0 = 3.0 * torch.randn(*shape, dtype=F64, generator=torch.Generator().manual_seed(0))
    th = DynamicThreshold(ratio, max_value=2.5)
    q = torch.quantile(x0.reshape(shape[0], -1).abs(), ratio, dim=1).clamp(1.0, 2.5)
    torch.testing.assert_close(th.scale(x0), q, rtol=1e-15, atol=0)
    diffusers = pytest.importorskip("diffusers")
    if len(shape) < 3:
        return  # diffusers' map expects (B, C, ...)
    ref = diffusers.DDPMScheduler(thresholding=True, dynamic_thresholding_ratio=ratio,
                                  sample_max_value=2.5)._threshold_sample(x0)
    torch.testing.assert_close(th(x0), ref, rtol=1e-15, atol=1e-15)


def test_threshold_in_low_precision_keeps_dtype():
    x0 = 3.0 * torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    out = DynamicThreshold(0.9, 2.0)(x0.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and out.shape == x0.shape
    torch.testing.assert_close(out.float(), DynamicThreshold(0.9, 2.0)(x0), rtol=1e-2, atol=1e-2)


def test_threshold_from_config():
    assert threshold_from_config({}) is None
    assert threshold_from_config({"clip_sample": False, "thresholding": False}) is None
    c = threshold_from_config({"clip_sample": True, "clip_sample_range": 2.0})
    assert isinstance(c, Clip) and c.limit == 2.0
    d = threshold_from_config({"clip_sample": True, "thresholding": True, "dynamic_thresholding_ratio": 0.9,
                               "sample_max_value": 3.0})
    assert isinstance(d, DynamicThreshold) and (d.ratio, d.max_value) == (0.9, 3.0)  # thresholding wins


def test_errors():
    with pytest.raises(ValueError, match="limit"):
        Clip(0.0)
    with pytest.raises(ValueError, match="ratio"):
        DynamicThreshold(1.5)
    with pytest.raises(ValueError, match="max_value"):
        DynamicThreshold(0.9, 0.5)
    with pytest.raises(TypeError, match="threshold"):
        Denoiser(lambda x, t: x, "vp", threshold=1.0)


# --- as a property of the denoiser ---------------------------------------------------------------
MIX = GaussianMixture([0.5, 0.5], torch.tensor([[2.5, -2.0, 0.0], [-1.0, 3.0, 1.0]], dtype=F64), 0.3)
SCH = VPSchedule()


@pytest.mark.parametrize("prediction", ["eps", "x0", "v", "score", "velocity"])
@pytest.mark.parametrize("threshold", [Clip(1.2), DynamicThreshold(0.7, 2.0)])
def test_every_prediction_derives_from_the_thresholded_x0(prediction, threshold):
    base = MIX.denoiser(SCH, prediction)
    den = Denoiser(base.net, SCH, prediction, time_label="t", threshold=threshold)
    x = 2.0 * torch.randn(6, 3, dtype=F64, generator=torch.Generator().manual_seed(2))
    t = 0.45
    a, s = (float(v) for v in SCH.alpha_sigma(t))
    x0 = threshold(base.x0(x, t))
    assert not torch.equal(x0, base.x0(x, t))  # the threshold acts here
    torch.testing.assert_close(den.x0(x, t), x0, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(den.eps(x, t), (x - a * x0) / s, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(den.score(x, t), -(x - a * x0) / s**2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(den(x, t), x0, rtol=1e-13, atol=1e-13)
    # per-sample times give the same
    tt = torch.full((6,), t, dtype=F64)
    torch.testing.assert_close(den.eps(x, tt), den.eps(x, t), rtol=1e-12, atol=1e-12)
    assert "threshold=" in repr(den)


def test_composes_with_solvers_and_guidance():
    th = DynamicThreshold(0.8, 1.5)
    den = Denoiser(MIX.denoiser(SCH, "eps").net, SCH, "eps", time_label="t", shape=(3,), threshold=th)
    for solver in ("ddim", "dpmpp_2m", "heun", "unipc"):
        res = diffsolve.sample(den, solver=solver, nfe=12, seeds=range(4), denoise_final=True)
        assert res.x.abs().max() <= 1.0 + 1e-12  # the final x̂0 is thresholded
    # guidance: the threshold of the wrapped denoiser acts on the guided x̂0
    net = lambda x, label, c: MIX.denoiser(SCH, "eps").net(x, label) * (1.0 + c.reshape(-1, 1))  # noqa: E731
    plain = Denoiser(lambda x, label: net(x, label, torch.ones(x.shape[0], dtype=F64)), SCH, "eps",
                     time_label="t", threshold=th)
    g = CFGDenoiser(Denoiser(net, SCH, "eps", time_label="t", threshold=th), 2.5, torch.tensor(1.0, dtype=F64),
                    uncond=torch.tensor(0.0, dtype=F64))
    assert g.threshold is th
    x = torch.randn(5, 3, dtype=F64, generator=torch.Generator().manual_seed(3))
    unguided = CFGDenoiser(Denoiser(net, SCH, "eps", time_label="t"), 2.5, torch.tensor(1.0, dtype=F64),
                           uncond=torch.tensor(0.0, dtype=F64))
    torch.testing.assert_close(g.x0(x, 0.3), th(unguided.x0(x, 0.3)), rtol=1e-13, atol=1e-13)
    g1 = CFGDenoiser(Denoiser(net, SCH, "eps", time_label="t", threshold=th), 1.0, torch.tensor(1.0, dtype=F64),
                     uncond=torch.tensor(0.0, dtype=F64))
    torch.testing.assert_close(g1.eps(x, 0.3), plain.eps(x, 0.3), rtol=1e-13, atol=1e-13)


# --- against diffusers' schedulers on a tiny random float64 UNet -------------------------------------
diffusers_mod = pytest.importorskip("diffusers")
BETAS = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    net = diffusers_mod.UNet2DModel(sample_size=8, in_channels=2, out_channels=2, layers_per_block=1,
                                    block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    with torch.no_grad():
        net.conv_out.weight.mul_(10.0)  # O(1) outputs: x̂0 far outside [-1, 1] at high noise
    return net.double().eval().requires_grad_(False)


def _x_T(seed=1):
    return torch.randn(3, 2, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(seed))


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def _diffusers_run(unet, sched, x, **step_kw):
    for t in sched.timesteps:
        x = sched.step(unet(x, t).sample, t, x, **step_kw).prev_sample
    return x


def _scheduler_run(unet, sched, x):
    for t in sched.timesteps:
        x = sched.step(unet(x, t).sample, t, x).prev_sample
    return x


DDIM_CASES = {"clip": dict(clip_sample=True, clip_sample_range=1.5),
              "dynamic": dict(clip_sample=False, thresholding=True, dynamic_thresholding_ratio=0.9,
                              sample_max_value=2.0)}


@pytest.mark.parametrize("case", sorted(DDIM_CASES))
def test_ddim_matches_diffusers_use_clipped_model_output(unet, case):
    from diffsolve.adapters import from_diffusers
    from diffsolve.scheduler import DiffsolveScheduler

    sched = diffusers_mod.DDIMScheduler(**BETAS, **DDIM_CASES[case])
    sched.set_timesteps(12)
    sched.alphas_cumprod = sched.alphas_cumprod.double()  # its float32 √ᾱ would cost 1e-7
    sched.final_alpha_cumprod = torch.tensor(1.0, dtype=F64)
    x_T = _x_T()
    ref = _diffusers_run(unet, sched, x_T.clone(), use_clipped_model_output=True)
    den = from_diffusers(unet, sched, threshold="config")
    assert isinstance(den.threshold, Clip if case == "clip" else DynamicThreshold)
    grid = den.schedule.t_of_timestep(sched.timesteps.double())
    res = diffsolve.sample(den, x_T, solver="ddim", grid=grid, denoise_final=True)
    assert _rel(res.x, ref) < 1e-10
    # diffusers' default (ε̂ not recomputed from the clipped x̂0) is another method (docs/math.md (25.4))
    sched.set_timesteps(12)
    other = _diffusers_run(unet, sched, x_T.clone(), use_clipped_model_output=False)
    assert _rel(other, ref) > 1e-3
    # the same config through DiffsolveScheduler: the same numbers as diffsolve.sample, bit for bit
    ds = DiffsolveScheduler.from_config(sched.config, solver="ddim")
    assert isinstance(ds._converter.threshold, type(den.threshold))
    sched.set_timesteps(12)
    ds.set_timesteps(timesteps=sched.timesteps)
    torch.testing.assert_close(_scheduler_run(unet, ds, x_T.clone()), res.x, rtol=0, atol=0)


def _float64_tables(sched):
    """diffusers keeps ᾱ and σ in float32; float64 copies make the comparison exact (as
    tests/test_diffusers_crosscheck.py does)."""
    ac = sched.alphas_cumprod.double()
    sched.alphas_cumprod = ac
    s = ((1 - ac) / ac).sqrt()
    tail = torch.zeros(1, dtype=F64) if sched.sigmas[-1] == 0 else s[:1]
    sched.sigmas = torch.cat([s[sched.timesteps], tail])


@pytest.mark.parametrize("kind", ["dpmpp_2m", "deis"])
def test_multistep_with_thresholding(unet, kind):
    """DPMSolverMultistepScheduler (dpmsolver++, x̂0 thresholded) and DEISMultistepScheduler (ε̂
    recomputed from the thresholded x̂0) = diffsolve's dpmpp_2m / deis with a thresholded denoiser."""
    from diffsolve.adapters import from_diffusers
    from diffsolve.scheduler import DiffsolveScheduler

    opts = dict(**BETAS, solver_order=2, thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=2.0)
    if kind == "dpmpp_2m":
        sched = diffusers_mod.DPMSolverMultistepScheduler(
            **opts, algorithm_type="dpmsolver++", final_sigmas_type="zero", lower_order_final=True,
            euler_at_final=False)
    else:
        sched = diffusers_mod.DEISMultistepScheduler(**opts)
    sched.set_timesteps(10)
    _float64_tables(sched)
    x_T = _x_T(2)
    ref = _diffusers_run(unet, sched, x_T.clone())
    den = from_diffusers(unet, sched, threshold="config")
    grid = den.schedule.t_of_timestep(sched.timesteps.double())
    final = kind == "dpmpp_2m"  # DEIS' last step goes to timestep 0's σ (t_min), DPM-Solver++'s to σ = 0
    spec = "dpmpp_2m" if final else "deis:order=2"
    if not final:
        grid = torch.cat([grid, torch.tensor([den.schedule.t_min], dtype=F64)])
    res = diffsolve.sample(den, x_T, solver=get_solver(spec), grid=grid, denoise_final=final)
    # DPMSolverMultistepScheduler.step casts the sample to float32 (as tests/test_diffusers_crosscheck.py notes)
    assert _rel(res.x, ref) < (1e-6 if kind == "dpmpp_2m" else 1e-10)
    unthresholded = diffsolve.sample(from_diffusers(unet, sched), x_T, solver=get_solver(spec), grid=grid,
                                     denoise_final=final)
    assert _rel(unthresholded.x, ref) > 1e-3  # the threshold matters here
    ds = DiffsolveScheduler.from_config(sched.config, solver=spec, denoise_final=final)
    ds.set_timesteps(timesteps=sched.timesteps)
    torch.testing.assert_close(_scheduler_run(unet, ds, x_T.clone()), res.x, rtol=1e-13, atol=1e-13)


def test_scheduler_accepts_ddpm_default_config(unet):
    """DDPMScheduler's own default (clip_sample=True) runs, with x̂0 clipped to [-1, 1]."""
    from diffsolve.scheduler import DiffsolveScheduler

    ds = DiffsolveScheduler.from_config(diffusers_mod.DDPMScheduler().config, solver="ddim")
    assert isinstance(ds._converter.threshold, Clip) and ds._converter.threshold.limit == 1.0
    ds.set_timesteps(6)
    x = _x_T(3)
    for t in ds.timesteps:
        out = ds.step(unet(x, t).sample, t, x)
        x = out.prev_sample
        assert out.pred_original_sample.abs().max() <= 1.0
    plain = DiffsolveScheduler.from_config(diffusers_mod.DDPMScheduler().config, solver="ddim", clip_sample=False)
    assert plain._converter.threshold is None
