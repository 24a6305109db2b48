"""Adapters: diffusers (against diffusers' own scheduler loops), EDM / k-diffusion, score_sde,
plain callables and load_factory (docs/math.md §2)."""
import math
import types
import textwrap

import pytest
import torch

import diffsolve
from diffsolve import adapters
from diffsolve.analytic import GaussianMixture
from diffsolve.schedules import CosineSchedule, DDPMSchedule, EDMSchedule, VPSchedule
from diffsolve.solvers import SOLVERS

diffusers = pytest.importorskip("diffusers")


def _tiny_unet(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(sample_size=8, in_channels=2, out_channels=2, layers_per_block=1, block_out_channels=(8, 16),
               down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
               norm_num_groups=4)
    cfg.update(kw)
    unet = diffusers.UNet2DModel(**cfg).eval().requires_grad_(False)
    # random init leaves conv_out small; make the output O(1) so the comparison is meaningful
    with torch.no_grad():
        unet.conv_out.weight.mul_(10.0)
    return unet


@pytest.fixture(scope="module", params=["epsilon", "v_prediction"])
def saved_pipeline(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"unet_{request.param}")
    unet = _tiny_unet()
    unet.save_pretrained(tmp / "unet")
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                                    beta_end=0.012, prediction_type=request.param, clip_sample=False)
    sched.save_pretrained(tmp / "scheduler")
    return tmp, request.param


def _diffusers_loop(unet, sched, x):
    for t in sched.timesteps:
        out = unet(x, t).sample
        x = sched.step(out, t, x).prev_sample
    return x


def _x_T(seed=1):
    return torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(seed))


def _rel_err(a, b):
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def test_from_pretrained_builds_denoiser(saved_pipeline):
    path, pt = saved_pipeline
    den = adapters.from_pretrained(path)
    assert isinstance(den, diffsolve.Denoiser)
    assert isinstance(den.schedule, DDPMSchedule) and den.schedule.num_train_timesteps == 1000
    assert den.prediction == {"epsilon": "eps", "v_prediction": "v"}[pt]
    assert den.shape == (2, 8, 8)
    ref = diffusers.DDIMScheduler.from_pretrained(path / "scheduler").alphas_cumprod.double()
    torch.testing.assert_close(den.schedule.alphas_cumprod, ref, rtol=1e-12, atol=0)
    # at a grid point the network receives exactly its integer training timestep
    x = _x_T()
    k = 417
    t = den.schedule.t_of_timestep(k)
    torch.testing.assert_close(den.raw(x, t), den.net.model(x, torch.tensor(k)).sample, rtol=0, atol=0)


@pytest.mark.parametrize("steps", [10, 25])
def test_ddim_reproduces_diffusers(saved_pipeline, steps):
    path, _ = saved_pipeline
    den = adapters.from_pretrained(path)
    sched = diffusers.DDIMScheduler.from_pretrained(path / "scheduler")
    sched.set_timesteps(steps)
    x_T = _x_T()
    ref = _diffusers_loop(den.net.model, sched, x_T.clone())
    grid = den.schedule.t_of_timestep(sched.timesteps.double())  # last diffusers step (to ᾱ=1) = denoise_final
    res = diffsolve.sample(den, x_T.double(), solver="ddim", grid=grid, denoise_final=True)
    assert res.nfe == steps
    assert _rel_err(res.x, ref) < 1e-5


@pytest.mark.parametrize("steps", [8, 20])
def test_dpmpp_2m_reproduces_diffusers(saved_pipeline, steps):
    if "dpmpp_2m" not in SOLVERS:
        pytest.skip("solver dpmpp_2m is not registered yet")
    path, _ = saved_pipeline
    den = adapters.from_pretrained(path)
    sched = diffusers.DPMSolverMultistepScheduler.from_pretrained(
        path / "scheduler", algorithm_type="dpmsolver++", solver_order=2, final_sigmas_type="zero",
        lower_order_final=True, euler_at_final=False, use_karras_sigmas=False, thresholding=False)
    sched.set_timesteps(steps)
    x_T = _x_T(2)
    ref = _diffusers_loop(den.net.model, sched, x_T.clone())
    grid = den.schedule.t_of_timestep(sched.timesteps.double())
    res = diffsolve.sample(den, x_T.double(), solver="dpmpp_2m", grid=grid, denoise_final=True)
    assert res.nfe == steps
    assert _rel_err(res.x, ref) < 1e-5


def test_schedule_from_config_matches_scheduler():
    for cfg in [dict(beta_schedule="linear"), dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
                dict(beta_schedule="squaredcos_cap_v2"), dict(num_train_timesteps=100, beta_schedule="linear")]:
        sched = diffusers.DDIMScheduler(**cfg)
        s_obj, _ = adapters.schedule_from_diffusers(sched)
        s_cfg, pred = adapters.schedule_from_diffusers(dict(sched.config))
        torch.testing.assert_close(s_obj.alphas_cumprod, s_cfg.alphas_cumprod, rtol=1e-12, atol=0)
        assert pred == "eps"
    with pytest.raises(ValueError, match="prediction_type"):
        adapters.schedule_from_diffusers({"prediction_type": "unknown_prediction"})
    # flow matching: a FlowSchedule with a velocity network (tests/test_flow_matching.py)
    sch, pred = adapters.schedule_from_diffusers({"prediction_type": "flow_prediction"})
    assert isinstance(sch, diffsolve.FlowSchedule) and pred == "velocity"
    with pytest.raises(TypeError, match="scheduler"):
        adapters.schedule_from_diffusers(3.0)


def test_from_diffusers_learned_variance_and_conditioning():
    unet = _tiny_unet(out_channels=4, num_class_embeds=3)
    sched = diffusers.DDPMScheduler(variance_type="learned_range")
    den = adapters.from_diffusers(unet, sched)
    x = _x_T()
    t = den.schedule.t_of_timestep(500)
    cond = torch.tensor([0, 1, 2])
    out = den.net(x, torch.full((3,), 500.0), cond)
    assert out.shape == x.shape
    torch.testing.assert_close(out, unet(x, 500, class_labels=cond).sample[:, :2])
    with pytest.raises(ValueError):
        adapters.from_diffusers(unet, sched, cond_key=None).net(x, torch.full((3,), 500.0), cond)
    # through classifier-free guidance: one batched call with class labels [c; ∅]
    g = diffsolve.CFGDenoiser(den, 2.0, cond, uncond=torch.tensor([0]))
    u = unet(x, 500, class_labels=torch.zeros(3, dtype=torch.long)).sample[:, :2]
    c = unet(x, 500, class_labels=cond).sample[:, :2]
    torch.testing.assert_close(g.raw(x, t), u + 2.0 * (c - u), rtol=1e-5, atol=1e-5)
    assert g.nfe == 1 and g.rows == 6


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        adapters.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        adapters.from_pretrained(tmp_path / "empty")
    unet = _tiny_unet()
    unet.save_pretrained(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="scheduler"):
        adapters.from_pretrained(tmp_path / "m")
    # weights of a different architecture under this config: a clear error, no partial load
    _tiny_unet(block_out_channels=(8, 24)).save_pretrained(tmp_path / "other")
    (tmp_path / "m" / "diffusion_pytorch_model.safetensors").write_bytes(
        (tmp_path / "other" / "diffusion_pytorch_model.safetensors").read_bytes())
    with pytest.raises(Exception, match="(?i)size|shape|mismatch|fit"):
        adapters.from_pretrained(tmp_path / "m", scheduler=diffusers.DDIMScheduler())


# --- EDM / k-diffusion / score_sde ------------------------------------------------------------
@pytest.fixture(scope="module")
def mixture():
    return GaussianMixture.random(d=6, n_modes=3, seed=0)


@pytest.mark.parametrize("schedule", [CosineSchedule(), VPSchedule(), EDMSchedule()])
def test_edm_denoiser_in_any_schedule(mixture, schedule):
    """net'(x, t) = D(x/α, σ/α) with prediction x0 (docs/math.md §2, last row) gives the exact posterior mean."""
    edm = EDMSchedule(1e-4, 1e3)

    def D(y, s):  # exact EDM denoiser of the mixture: E[x0 | y = x0 + s ε]
        return mixture.x0(y, s, edm)

    den = adapters.from_edm(D, schedule)
    exact = mixture.denoiser(schedule, "x0")
    x = torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for t in torch.linspace(schedule.t_min, schedule.t_max, 7, dtype=torch.float64)[1:-1]:
        xt = float(schedule.alpha(t)) * mixture.sample(5, generator=torch.Generator().manual_seed(1)) + float(schedule.sigma(t)) * x
        torch.testing.assert_close(den.x0(xt, t), exact.x0(xt, t), rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(den.eps(xt, t), exact.eps(xt, t), rtol=1e-7, atol=1e-7)


def test_edm_precond_and_k_diffusion(mixture):
    """EDMPrecond(F) with F = (D − c_skip y)/c_out at c_in y is D again; k-diffusion uses the same D."""
    edm = EDMSchedule(1e-4, 1e3)
    sd = 0.7

    def F(z, c_noise):
        s = torch.exp(4 * c_noise).reshape(-1, 1)
        y = z * (s * s + sd * sd).sqrt()
        c_skip, c_out = sd**2 / (s * s + sd**2), s * sd / (s * s + sd**2).sqrt()
        return (mixture.x0(y, s.reshape(-1), edm) - c_skip * y) / c_out

    D = adapters.EDMPrecond(F, sigma_data=sd)
    y = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    s = torch.tensor([0.01, 0.3, 2.0, 40.0], dtype=torch.float64)
    torch.testing.assert_close(D(y, s), mixture.x0(y, s, edm), rtol=1e-9, atol=1e-9)

    class KModel(torch.nn.Module):
        sigma_min, sigma_max = 0.01, 50.0

        def forward(self, x, sigma, cond=None):
            return mixture.x0(x, sigma, edm)

    den = adapters.from_k_diffusion(KModel())
    assert (den.schedule.t_min, den.schedule.t_max) == (0.01, 50.0)
    res = diffsolve.sample(den, shape=(4, 6), solver="ddim", steps=30, grid="karras", seeds=range(4))
    assert torch.isfinite(res.x).all()


def test_edm_precond_keeps_the_skip_term_out_of_a_half_network(mixture):
    """As EDM's own code: a half-precision F gets its input in half, the preconditioning (c_skip y) runs in
    float32, so at small σ, where D ≈ y, the output is not y rounded to half (~5e-4 off)."""
    edm = EDMSchedule(1e-3, 80.0)
    sd = 0.5

    class HalfF(torch.nn.Module):  # the exact F, rounded to its own half precision
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros((), dtype=torch.float16))

        def forward(self, z, c_noise, cond=None):
            assert z.dtype == torch.float16
            s = torch.exp(4 * c_noise.double()).reshape(-1, 1)
            y = z.double() * (s * s + sd * sd).sqrt()
            c_skip, c_out = sd**2 / (s * s + sd**2), s * sd / (s * s + sd**2).sqrt()
            return ((mixture.x0(y, s.reshape(-1), edm) - c_skip * y) / c_out).half()

    D = adapters.EDMPrecond(HalfF(), sigma_data=sd)
    den = adapters.from_edm(D, edm)
    assert D.calling_dtype == torch.float32 and den.net_dtype == torch.float32
    y = mixture.sample(64, generator=torch.Generator().manual_seed(4)) + 0.01 * torch.randn(
        64, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    err = (den.x0(y.float(), 0.01).double() - mixture.x0(y, torch.full((64,), 0.01, dtype=torch.float64), edm)).abs()
    assert float(err.max()) < 1e-4, float(err.max())
    guided = diffsolve.CFGDenoiser(den, 1.0, cond=torch.zeros(64), uncond=torch.zeros(64))  # guidance keeps it so
    assert guided.net_dtype == torch.float32 and torch.equal(guided.x0(y.float(), 0.01), den.x0(y.float(), 0.01))
    with pytest.raises(ValueError, match=r"sigma_data \(EDM: 0.5\) must be > 0"):
        adapters.EDMPrecond(HalfF(), sigma_data=0.0)


def test_score_sde_and_callable(mixture):
    sch = VPSchedule()
    den = adapters.from_score_sde(lambda x, t: mixture.score(x, t, sch), sch)
    exact = mixture.denoiser(sch, "eps")
    x = torch.randn(3, 6, dtype=torch.float64)
    torch.testing.assert_close(den.eps(x, 0.5), exact.eps(x, 0.5))
    den2 = adapters.from_callable(lambda x, lam: mixture.x0(x, sch.t_of_log_snr(lam), sch), sch, "x0", time_label="log_snr")
    torch.testing.assert_close(den2.eps(x, 0.3), exact.eps(x, 0.3))


# --- load_factory ----------------------------------------------------------------------------
def test_load_factory(tmp_path, monkeypatch):
    src = textwrap.dedent("""
        import diffsolve
        from diffsolve.analytic import GaussianMixture
        def make(n_modes=8):
            return GaussianMixture.ring(n_modes=n_modes).denoiser("vp", "eps")
        INSTANCE = make()
        NOT_CALLABLE = 3
        def wrong():
            return "a string"
    """)
    (tmp_path / "my_models.py").write_text(src)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert isinstance(adapters.load_factory("my_models:make"), diffsolve.Denoiser)
    assert isinstance(adapters.load_factory("my_models:make", n_modes=4), diffsolve.Denoiser)
    assert isinstance(adapters.load_factory("my_models:INSTANCE"), diffsolve.Denoiser)
    assert isinstance(adapters.load_factory(f"{tmp_path / 'my_models.py'}:make"), diffsolve.Denoiser)
    with pytest.raises(ValueError, match="package.module:factory"):
        adapters.load_factory("my_models.make")
    with pytest.raises(ValueError, match="no module named"):
        adapters.load_factory("no_such_pkg_xyz.sub:make")
    with pytest.raises(ValueError, match="has no attribute 'nope'.*make"):
        adapters.load_factory("my_models:nope")
    with pytest.raises(TypeError, match="not a factory"):
        adapters.load_factory("my_models:NOT_CALLABLE")
    with pytest.raises(TypeError, match="not a diffsolve.Denoiser"):
        adapters.load_factory("my_models:wrong")
    with pytest.raises(ValueError, match="no such Python file"):
        adapters.load_factory(f"{tmp_path / 'missing.py'}:make")


def test_from_flow_matching_follows_metas_time_direction():
    """Meta flow_matching's u(x, τ) = dx/dτ (τ = 0 noise, 1 data) on Gaussian data N(μ, s² I), whose
    flow is x_τ = τ μ + √(τ² s² + (1 − τ)²) z: from_flow_matching samples it; passing u straight in as
    a diffsolve velocity network integrates time the wrong way."""
    from diffsolve.adapters import from_flow_matching

    F64 = torch.float64
    mu, s = torch.tensor([2.0, -1.0, 0.5, 3.0], dtype=F64), 0.3

    def u(x, tau, shift=0.0):
        tau = tau.reshape(-1, 1).to(x.dtype)
        v, dv = tau ** 2 * s ** 2 + (1 - tau) ** 2, 2 * tau * s ** 2 - 2 * (1 - tau)
        return mu + shift + (x - tau * (mu + shift)) * dv / (2 * v)

    z = torch.randn(64, 4, dtype=F64, generator=torch.Generator().manual_seed(0))
    den = from_flow_matching(u, shape=(4,), net_dtype=F64)
    tau = 1 - den.schedule.t_min
    exact = tau * mu + math.sqrt(tau ** 2 * s ** 2 + (1 - tau) ** 2) * z
    errors = [float((diffsolve.sample(den, z, nfe=n).x - exact).pow(2).mean().sqrt()) for n in (5, 10, 20)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 3e-3, errors
    final = diffsolve.sample(den, z, nfe=40).x  # with the final denoise: the data end, τ = 1
    assert float((final - (mu + s * z)).pow(2).mean().sqrt()) < 1e-3
    extra = from_flow_matching(u, shape=(4,), net_dtype=F64, shift=1.0)  # model_extras reach every call
    assert float((diffsolve.sample(extra, z, nfe=40).x - (mu + 1.0 + s * z)).pow(2).mean().sqrt()) < 1e-3
    wrong = diffsolve.Denoiser(u, diffsolve.FlowSchedule(), prediction="velocity", net_dtype=F64)
    assert float((diffsolve.sample(wrong, z, nfe=20).x - exact).pow(2).mean().sqrt()) > 1.0


def test_flow_matching_adapter_passes_a_scalar_time_and_names_a_bad_output():
    """flow_matching's ODESolver gives its model a 0-d t: so does the adapter when every row is at one time;
    a non-tensor output gets the Denoiser's message, not a failed negation."""
    import diffsolve as ds

    seen = set()

    def u(x, t):
        seen.add(tuple(t.shape))
        return x * t - x

    ds.sample(ds.adapters.from_flow_matching(u, shape=(2,)), seeds="0-3", nfe=5)
    assert seen == {()}
    with pytest.raises(TypeError, match="returned a tuple of 2, not a tensor"):
        ds.sample(ds.adapters.from_flow_matching(lambda x, t: (x, t)), torch.zeros(2, 2, dtype=torch.float64), nfe=5)


def test_from_edm_follows_a_new_schedule_and_a_new_dtype(mixture):
    """VECoordinates recovers α from the schedule: a Denoiser's schedule set later reaches it (x̂0 was off by up
    to 0.19 on flow); EDMPrecond's calling dtype is read when used, so .double() after wrapping is followed."""
    from diffsolve.schedules import FlowSchedule, SubVPSchedule

    edm = EDMSchedule(1e-4, 1e3)
    den = adapters.from_edm(lambda y, s: mixture.x0(y, s, edm), VPSchedule())
    y = torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for sch in (SubVPSchedule(), FlowSchedule()):
        den.schedule = sch
        fresh = adapters.from_edm(lambda y, s: mixture.x0(y, s, edm), sch)
        torch.testing.assert_close(den.x0(y, 0.3), fresh.x0(y, 0.3), rtol=1e-12, atol=1e-12)

    class F(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(6, 6)

        def forward(self, z, c_noise):
            return self.lin(z)

    wrapped = adapters.from_edm(adapters.EDMPrecond(F()), shape=(6,))
    assert wrapped.net_dtype == torch.float32
    assert wrapped.double().net_dtype == torch.float64 and wrapped.half().net_dtype == torch.float32


def _conditional_gaussian_velocity():
    """flow_matching's CondOT velocity of data | label ~ N(m[label], s² I), in closed form."""
    m, s = torch.tensor([[2.0, -1.0], [-3.0, 0.5]], dtype=torch.float64), 0.3

    def u(x, t, label):
        tau = torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1).expand(x.shape[0], 1)
        mu = m[label]
        assert mu.shape[0] == x.shape[0]
        v, dv = tau ** 2 * s ** 2 + (1 - tau) ** 2, 2 * tau * s ** 2 - 2 * (1 - tau)
        return mu + (x - tau * mu) * dv / (2 * v)

    return u, m, s


def test_flow_matching_conditions_follow_the_rows_and_reach_guidance():
    """Per-sample model_extras follow the rows of a call (per-sample adaptive steps, the likelihood's
    replicated rows); a guided condition reaches u positionally, by cond_key, or as keywords."""
    u, m, s = _conditional_gaussian_velocity()
    label = torch.tensor([0, 1, 1, 0])
    den = adapters.from_flow_matching(u, shape=(2,), net_dtype=torch.float64, label=label)
    x = m[label] + s * torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    whole = diffsolve.log_likelihood(den, x, divergence="exact", rtol=1e-7, atol=1e-7).log_prob
    for i in range(4):
        one = adapters.from_flow_matching(u, shape=(2,), net_dtype=torch.float64, label=label[i:i + 1])
        single = diffsolve.log_likelihood(one, x[i:i + 1], divergence="exact", rtol=1e-7, atol=1e-7).log_prob
        torch.testing.assert_close(whole[i:i + 1], single, rtol=0, atol=1e-9)
    x_T = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    want = diffsolve.sample(den, x_T, nfe=8).x
    null = torch.zeros(4, dtype=torch.long)
    for guided in (diffsolve.CFGDenoiser(adapters.from_flow_matching(u, shape=(2,), net_dtype=torch.float64), 1.0,
                                         label, null),
                   diffsolve.CFGDenoiser(adapters.from_flow_matching(u, shape=(2,), net_dtype=torch.float64,
                                                                     cond_key="label"), 1.0, label, null),
                   diffsolve.CFGDenoiser(adapters.from_flow_matching(u, shape=(2,), net_dtype=torch.float64), 1.0,
                                         {"label": label}, {"label": null})):
        torch.testing.assert_close(diffsolve.sample(guided, x_T, nfe=8).x, want, rtol=0, atol=1e-12)


def test_k_diffusion_keyword_conditions_reach_the_model(mixture):
    calls = []

    class KModel(torch.nn.Module):
        sigma_min, sigma_max = 0.002, 80.0

        def forward(self, x, sigma, class_cond=None, unet_cond=None):
            calls.append((class_cond is not None, unet_cond is not None))
            return mixture.x0(x, sigma, EDMSchedule(0.002, 80.0))

    den = adapters.from_k_diffusion(KModel(), shape=(6,))
    lab = torch.zeros(3)
    x = torch.randn(3, 6, dtype=torch.float64)
    want = den.x0(x, 1.0)
    for guided in (diffsolve.CFGDenoiser(den, 2.0, lab, lab, cond_key="class_cond"),
                   diffsolve.CFGDenoiser(den, 2.0, {"class_cond": lab, "unet_cond": lab},
                                         {"class_cond": lab, "unet_cond": lab})):
        calls.clear()
        torch.testing.assert_close(guided.x0(x, 1.0), want)
        assert calls and all(c[0] for c in calls)
    assert calls[-1] == (True, True)


def test_k_diffusion_range_checks():
    """With a schedule, sigma_min / sigma_max are refused (they were dropped silently) and a schedule leaving
    the model's own range is warned of; a model whose own range bounds no schedule (EDM's 0, inf) is named."""
    class M(torch.nn.Module):
        sigma_min, sigma_max = 0.0292, 14.6

        def forward(self, x, sigma):
            return x

    with pytest.raises(ValueError, match="the schedule fixes it"):
        adapters.from_k_diffusion(M(), "edm", sigma_max=14.6)
    with pytest.warns(UserWarning, match=r"above sigma_max = 14.6 of the model"):
        adapters.from_k_diffusion(M(), "vp")
    assert adapters.from_k_diffusion(M()).schedule.t_max == 14.6
    M.sigma_min, M.sigma_max = 0, float("inf")  # NVlabs EDM's EDMPrecond
    with pytest.raises(ValueError, match=r"model.sigma_max = inf, read from the model.*pass sigma_min= and sigma_max="):
        adapters.from_k_diffusion(M())
    assert adapters.from_k_diffusion(M(), sigma_min=0.002, sigma_max=80.0).schedule.t_max == 80.0


def test_guidance_keeps_an_adapters_per_sample_extras_on_their_rows():
    """CFG stacks both branches in one call: the adapter's own per-sample model_extras follow those rows
    (here u ignores the guided condition, so any scale gives the unguided result)."""
    u, m, s = _conditional_gaussian_velocity()
    label = torch.tensor([0, 1, 1])

    def u_cond(x, t, cond=None, *, label):
        return u(x, t, label)

    den = adapters.from_flow_matching(u_cond, shape=(2,), net_dtype=torch.float64, label=label)
    guided = diffsolve.CFGDenoiser(den, 2.0, torch.ones(3), torch.zeros(3))
    x_T = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(diffsolve.sample(guided, x_T, nfe=8).x, diffsolve.sample(den, x_T, nfe=8).x)
    x = m[label] + s * torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    kw = dict(divergence="exact", rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(diffsolve.log_likelihood(guided, x, **kw).log_prob,
                               diffsolve.log_likelihood(den, x, **kw).log_prob, rtol=0, atol=1e-6)  # round-off


class _AzulaStyle(torch.nn.Module):
    """A denoiser in azula's convention: ``(x_t, t) -> posterior`` with ``.mean`` = x̂0, t ∈ [0, 1] with noise
    rising, on its ``schedule`` t ↦ (α_t, σ_t) (here azula's VP: α = α_min^{t²}, σ = √(1 − α² + σ_min²)),
    answering with the exact x̂0 of a mixture."""

    def __init__(self, mixture):
        super().__init__()
        self.mixture = mixture

    @staticmethod
    def schedule(t):
        a = torch.exp(math.log(1e-3) * torch.as_tensor(t, dtype=torch.float64) ** 2)
        return a, torch.sqrt(1 - a ** 2 + 1e-6)

    def forward(self, x_t, t):
        a, s = self.schedule(t)
        s_over_a = (s / a).to(x_t.dtype).expand(x_t.shape[0])
        y = x_t / a.to(x_t.dtype).reshape(-1, *([1] * (x_t.dim() - 1)))
        return types.SimpleNamespace(mean=self.mixture.x0(y, s_over_a, EDMSchedule(1e-4, 1e4)))


def test_azula_denoiser_is_the_mixtures_exact_model(mixture):
    """from_azula finds azula's time of each σ/α by bisection and calls the denoiser at α_t y: the exact
    mixture's x̂0 on any diffsolve schedule; its default schedule spans azula's σ/α at t = 0 and 1."""
    den = adapters.from_azula(_AzulaStyle(mixture), shape=(6,))
    assert isinstance(den.schedule, EDMSchedule) and den.schedule.t_max == pytest.approx(1e3, rel=1e-6)
    x = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for sch in (VPSchedule(), CosineSchedule(), EDMSchedule()):
        d = adapters.from_azula(_AzulaStyle(mixture), sch, shape=(6,))
        for t in (0.05, 0.5):
            torch.testing.assert_close(d.x0(x, t), mixture.denoiser(sch, "x0").x0(x, t), rtol=1e-9, atol=1e-9)
    with pytest.raises(TypeError, match="azula denoiser with a callable .schedule"):
        adapters.from_azula(lambda x, t: x)
    with pytest.warns(UserWarning, match="above sigma_max = 1000 of the model"):  # azula's time stops at 1 there
        adapters.from_azula(_AzulaStyle(mixture), EDMSchedule(1e-3, 1e4))


def test_azula_ddim_step_for_step():
    """diffsolve's ddim on azula's own uniform grid (as σ/α) from azula's x_T equals azula's DDIMSampler."""
    azula = pytest.importorskip("azula")
    from azula.denoise import GaussianDenoiser
    from azula.linalg.covariance import DiagonalCovariance
    from azula.noise import RectifiedSchedule, VPSchedule as AzulaVP
    from azula.sample import DDIMSampler

    for sched in (AzulaVP(), RectifiedSchedule()):
        az = GaussianDenoiser(torch.tensor([1.0, -2.0], dtype=torch.float64),
                              DiagonalCovariance(torch.tensor([0.3, 0.5], dtype=torch.float64)), sched)
        sampler = DDIMSampler(az, steps=12, silent=True, dtype=torch.float64)
        x_T = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        a, s = sched(sampler.timesteps)
        got = diffsolve.sample(adapters.from_azula(az, shape=(2,)), x_T / a[0], solver="ddim", grid=(s / a).tolist())
        torch.testing.assert_close(got.x * a[-1], sampler(x_T), rtol=0, atol=1e-12)
        assert azula is not None and got.nfe == 12


def test_azula_half_precision_backbone_is_called_as_azula_calls_it():
    """A bfloat16 backbone: from_azula called azula's denoiser in bfloat16 (the state and azula's time rounded
    there, 7e-3 off azula's own DDIM); azula's samplers call it in float32 and its denoiser casts the backbone's
    input. Now the same: within float32 round-off of DDIMSampler."""
    pytest.importorskip("azula")
    from azula.denoise import KarrasDenoiser
    from azula.noise import VPSchedule as AzulaVP
    from azula.sample import DDIMSampler

    class Backbone(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(5, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))

        def forward(self, x, t, **kw):
            t = t.expand(x.shape[0]) if t.dim() == 0 else t
            return self.net(torch.cat([x, t[:, None] / 5], 1))

    torch.manual_seed(0)
    az = KarrasDenoiser(Backbone().to(torch.bfloat16), AzulaVP())
    seen = []
    az.register_forward_pre_hook(lambda mod, args: seen.append(args[0].dtype))
    sampler = DDIMSampler(az, steps=8, silent=True)
    x = sampler.init((3, 4))
    want = sampler(x)
    a, s = az.schedule(sampler.timesteps)
    got = diffsolve.sample(adapters.from_azula(az, shape=(4,)), x / a[0], solver="ddim", grid=(s / a).double(),
                           denoise_final=False)
    assert set(seen) == {torch.float32}
    torch.testing.assert_close(got.x * a[-1], want, rtol=0, atol=1e-5)


def _time_gradient(den, x, t=0.3):
    t = torch.tensor(t, dtype=torch.float64, requires_grad=True)
    with torch.enable_grad():
        return torch.autograd.grad(den.x0(x, t).sum(), t)[0]


def test_time_gradient_through_the_ve_adapters(mixture):
    """tune_solver differentiates x̂0 with respect to the time the network is told (its shifts): through
    from_edm and from_azula on a schedule with α ≠ 1 (α(t(s)) carries t too; azula's time is found by
    bisection, its derivative by the implicit function) it equals the plain model's."""
    x = torch.randn(3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    D = lambda y, s: mixture.x0(y, s, EDMSchedule(1e-6, 1e10))  # noqa: E731
    for sch in (VPSchedule(), CosineSchedule()):
        ref = _time_gradient(mixture.denoiser(sch, "x0"), x)
        for den in (adapters.from_edm(D, sch, shape=(6,)), adapters.from_azula(_AzulaStyle(mixture), sch, shape=(6,))):
            torch.testing.assert_close(_time_gradient(den, x), ref, rtol=1e-7, atol=1e-9)


class _OneTimeAzula(_AzulaStyle):
    """An azula denoiser that takes one time for all rows (as azula's GaussianDenoiser)."""

    def forward(self, x_t, t):
        if t.dim() != 0:
            raise RuntimeError(f"The size of tensor a ({x_t.shape[0]}) must match the size of tensor b (6)")
        return super().forward(x_t, t)


def test_one_time_azula_denoisers_get_one_time_and_a_note_where_rows_part(mixture):
    den = adapters.from_azula(_OneTimeAzula(mixture), VPSchedule(), shape=(6,))
    x = mixture.sample(3, generator=torch.Generator().manual_seed(2)).to(torch.float64)
    shared = diffsolve.log_likelihood(den, x, divergence="exact", per_sample=False)  # every row at one time
    assert torch.isfinite(shared.log_prob).all()
    with pytest.raises(RuntimeError) as e:  # per-sample steps part the rows' times after the first step
        diffsolve.log_likelihood(den, x, divergence="exact")
    assert "per_sample=False" in "".join(getattr(e.value, "__notes__", [])) + str(e.value)


def test_flow_matching_conditions_of_another_batch_are_named():
    taus = []

    def u(x, tau, label):
        taus.append(tau.dim())
        return x * label[:, None]

    fm = adapters.from_flow_matching(u, shape=(8,), net_dtype=torch.float64, label=torch.tensor([1.0, 2.0, 0.0, 1.0]))
    with pytest.raises(RuntimeError) as e:
        diffsolve.sample(fm, torch.randn(3, 8, dtype=torch.float64), nfe=4)
    assert "label (4 rows)" in "".join(getattr(e.value, "__notes__", [])) + str(e.value)
    # τ is 0-d where the run gives every row one time (fixed steps, a shared adaptive step), (B,) per sample
    fm = adapters.from_flow_matching(u, shape=(8,), net_dtype=torch.float64, label=torch.ones(3))
    taus.clear()
    diffsolve.sample(fm, torch.randn(3, 8, dtype=torch.float64), nfe=4)
    diffsolve.log_likelihood(fm, torch.randn(3, 8, dtype=torch.float64), divergence="exact", rtol=1e-3, atol=1e-3,
                             per_sample=False)
    assert set(taus) == {0}


def test_an_index_time_embedding_gets_whole_timesteps():
    """A UNet with ``time_embedding_type="learned"`` looks its time up by index: from_diffusers gave it float
    labels, so it failed even on diffusers' own whole timesteps (an embedding error, with a note that blamed the
    dtype). It now gives whole timesteps as int64 (time_label 'whole'): diffusers' DDIM grid reproduces its loop,
    a time between timesteps is refused before the call, naming 'index' (rounding); with float labels the
    error's notes name the label, not the dtype."""
    unet = _tiny_unet(time_embedding_type="learned", num_train_timesteps=1000)
    cfg = dict(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon", clip_sample=False)
    sched = diffusers.DDIMScheduler(**cfg)
    sched.set_timesteps(10)
    x = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    want = x.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            want = sched.step(unet(want, t).sample, t, want).prev_sample
    den = adapters.from_diffusers(unet, cfg)
    grid = den.schedule.t_of_timestep(sched.timesteps.double())
    assert den.time_label(grid[:3]).dtype == torch.int64
    with pytest.raises(ValueError, match="between two.*time_label='index'"):
        diffsolve.sample(den, x, nfe=4)  # the default grid's times are not whole timesteps
    rounded = adapters.from_diffusers(unet, cfg, time_label="index")
    assert diffsolve.sample(rounded, x, nfe=4).nfe == 4
    got = diffsolve.sample(den, x, solver="ddim", grid=grid, denoise_final=True).x
    assert float((got - want).abs().max() / want.abs().max()) < 1e-5
    floats = adapters.from_diffusers(unet, cfg, time_label="default")
    with pytest.raises(RuntimeError) as e:
        floats.raw(x, 0.5)
    notes = "\n".join(getattr(e.value, "__notes__", []))
    assert "time_label='index'" in notes and "first floating parameter" not in notes, notes


def test_an_azula_style_denoiser_that_returns_a_tensor_is_named(mixture):
    """A denoiser returning x̂0 as a tensor (not azula's posterior) gave "the network returned an object of type
    builtin_function_or_method" (Tensor.mean, the method); a tuple, AttributeError. Both now say what azula's
    denoisers return and which adapter takes x̂0 itself."""
    for returned in (lambda x: 0.5 * x, lambda x: (x, x)):
        class Plain(_AzulaStyle):
            def forward(self, x_t, t, _r=returned):
                return _r(x_t)

        den = adapters.from_azula(Plain(mixture), shape=(6,))
        with pytest.raises(TypeError, match=r"returns a posterior whose \.mean is x̂0.*from_edm"):
            den.x0(torch.zeros(2, 6, dtype=torch.float64), 0.5)
