"""Transformers and conditions through the diffusers adapter (tiny random models built from
configs, float64, no hub): DiT (learned σ, class labels), Transformer2DModel, PixArt (fixed
added_cond_kwargs), UNet2DConditionModel (encoder_hidden_states by keyword), SD3 and FLUX (flow
matching; FLUX's σ label, img_ids / txt_ids, guidance). For each: the output shape, that the
conditions reach the network, and classifier-free guidance with keyword conditions (scale 1 = the
conditional model; cond and uncond batched in one call where they can be)."""
import pytest
import torch

import diffsolve
from diffsolve import CFGDenoiser, FlowSchedule
from diffsolve.adapters import from_diffusers, from_pretrained

diffusers = pytest.importorskip("diffusers")
F64 = torch.float64
B = 2


def _g(seed):
    return torch.Generator().manual_seed(seed)


def _randn(*shape, seed=0):
    return torch.randn(*shape, dtype=F64, generator=_g(seed))


def _ddpm():
    return diffusers.DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                   clip_sample=False, variance_type="learned_range")


def _flow():
    return diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)


def _tiny(cls, **cfg):
    torch.manual_seed(0)
    return cls(**cfg).double().eval().requires_grad_(False)


def _check_cfg(den, cond, uncond, x, t, direct):
    """CFG: scale 1 = the conditional network exactly; scale 3 = u + 3(c − u), in one call."""
    g1 = CFGDenoiser(den, 1.0, cond, uncond)
    torch.testing.assert_close(g1.raw(x, t), direct(cond), rtol=0, atol=0)
    assert g1.calls == 1 and g1.rows == B
    g3 = CFGDenoiser(den, 3.0, cond, uncond)
    c, u = direct(cond), direct(uncond)
    out = g3.raw(x, t)
    assert out.shape == x.shape and g3.calls == 1 and g3.rows == 2 * B and g3.nfe == 1
    torch.testing.assert_close(out, u + 3.0 * (c - u), rtol=1e-9, atol=1e-9)
    return g3


# --- DDPM family ----------------------------------------------------------------------------------
def test_dit_learned_sigma_and_class_labels():
    dit = _tiny(diffusers.DiTTransformer2DModel, num_attention_heads=2, attention_head_dim=8, in_channels=4,
                out_channels=8, num_layers=1, sample_size=8, patch_size=2, num_embeds_ada_norm=10,
                norm_num_groups=4)
    den = from_diffusers(dit, _ddpm())
    assert den.shape == (4, 8, 8) and den.prediction == "eps"
    x, t = _randn(B, 4, 8, 8), den.schedule.t_of_timestep(417)
    label = torch.full((B,), 417.0, dtype=F64)
    labels = torch.tensor([1, 7])

    def direct(c):
        return dit(x, timestep=label, **c).sample[:, :4]  # learned σ: the first C channels, as DiTPipeline

    cond, uncond = {"class_labels": labels}, {"class_labels": torch.tensor([10])}  # 10: DiT's null class
    g = _check_cfg(den, cond, uncond, x, t, direct)
    assert not torch.allclose(direct(cond), direct({"class_labels": torch.tensor([3, 3])}))
    # the tensor API with cond_key (class_labels by default) gives the same
    gt = CFGDenoiser(den, 3.0, labels, torch.tensor([10]))
    torch.testing.assert_close(gt.raw(x, t), g.raw(x, t), rtol=1e-12, atol=1e-12)
    res = diffsolve.sample(g, _randn(B, 4, 8, 8, seed=3), solver="dpmpp_2m", nfe=4)
    assert res.x.shape == (B, 4, 8, 8) and torch.isfinite(res.x).all()


def test_transformer2d_with_encoder_hidden_states():
    tr = _tiny(diffusers.Transformer2DModel, num_attention_heads=2, attention_head_dim=8, in_channels=4,
               out_channels=4, num_layers=1, sample_size=8, cross_attention_dim=12, norm_num_groups=4)
    den = from_diffusers(tr, _ddpm())
    x, t = _randn(B, 4, 8, 8), den.schedule.t_of_timestep(300)
    label = torch.full((B,), 300.0, dtype=F64)
    cond = {"encoder_hidden_states": _randn(B, 3, 12, seed=1)}
    uncond = {"encoder_hidden_states": _randn(1, 3, 12, seed=2)}  # a single row broadcasts

    def direct(c):
        e = c["encoder_hidden_states"].expand(B, -1, -1)
        return tr(x, timestep=label, encoder_hidden_states=e).sample

    _check_cfg(den, cond, uncond, x, t, direct)
    assert not torch.allclose(direct(cond), direct(uncond))


def test_pixart_fixed_and_guided_conditions():
    pix = _tiny(diffusers.PixArtTransformer2DModel, num_attention_heads=2, attention_head_dim=8, in_channels=4,
                out_channels=8, num_layers=1, sample_size=8, patch_size=2, cross_attention_dim=16,
                caption_channels=12, norm_num_groups=4)
    fixed = {"added_cond_kwargs": {"resolution": None, "aspect_ratio": None}}
    den = from_diffusers(pix, _ddpm(), conditions=fixed)
    assert den.shape == (4, 8, 8)
    x, t = _randn(B, 4, 8, 8), den.schedule.t_of_timestep(600)
    label = torch.full((B,), 600.0, dtype=F64)
    mask = torch.ones(B, 3)
    cond = {"encoder_hidden_states": _randn(B, 3, 12, seed=1), "encoder_attention_mask": mask}
    uncond = {"encoder_hidden_states": _randn(B, 3, 12, seed=2), "encoder_attention_mask": mask}

    def direct(c):
        return pix(x, timestep=label, **fixed, **c).sample[:, :4]

    _check_cfg(den, cond, uncond, x, t, direct)
    assert not torch.allclose(direct(cond), direct(uncond))
    with pytest.raises(ValueError, match="added_cond_kwargs"):  # one place per condition
        CFGDenoiser(den, 2.0, {**cond, **fixed}, {**uncond, **fixed}).raw(x, t)


def test_unet2d_condition_model_and_unbatchable_conditions():
    unet = _tiny(diffusers.UNet2DConditionModel, sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                 block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=12, norm_num_groups=4,
                 attention_head_dim=4)
    sched = diffusers.DDIMScheduler(prediction_type="v_prediction")
    den = from_diffusers(unet, sched)
    assert den.prediction == "v" and den.shape == (4, 8, 8)
    x, t = _randn(B, 4, 8, 8), den.schedule.t_of_timestep(250)
    label = torch.full((B,), 250.0, dtype=F64)
    cond = {"encoder_hidden_states": _randn(B, 5, 12, seed=1)}
    uncond = {"encoder_hidden_states": _randn(B, 5, 12, seed=2)}

    def direct(c):
        return unet(x, timestep=label, encoder_hidden_states=c["encoder_hidden_states"]).sample

    _check_cfg(den, cond, uncond, x, t, direct)
    assert not torch.allclose(direct(cond), direct(uncond))
    # prompt embeddings of different lengths cannot share a call: two calls, the same combination
    short = {"encoder_hidden_states": _randn(B, 2, 12, seed=3)}
    g = CFGDenoiser(den, 3.0, cond, short)
    out = g.raw(x, t)
    assert g.calls == 2 and g.rows == 2 * B and g.nfe == 1
    torch.testing.assert_close(out, direct(short) + 3.0 * (direct(cond) - direct(short)), rtol=1e-12, atol=1e-12)


# --- flow matching ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sd3():
    return _tiny(diffusers.SD3Transformer2DModel, sample_size=8, patch_size=2, in_channels=4, out_channels=4,
                 num_layers=1, attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                 caption_projection_dim=16, pooled_projection_dim=16, pos_embed_max_size=16)


def _sd3_conditions(seed):
    return {"encoder_hidden_states": _randn(B, 5, 16, seed=seed), "pooled_projections": _randn(B, 16, seed=seed + 1)}


def test_sd3_velocity_label_and_guidance(sd3):
    den = from_diffusers(sd3, _flow())
    assert isinstance(den.schedule, FlowSchedule) and den.prediction == "velocity" and den.shape == (4, 8, 8)
    x, t = _randn(B, 4, 8, 8), 0.37
    cond, uncond = _sd3_conditions(1), _sd3_conditions(5)

    def direct(c):  # the SD3 pipeline's call: timestep = 1000·σ
        return sd3(x, timestep=torch.full((B,), 370.0, dtype=F64), **c).sample

    _check_cfg(den, cond, uncond, x, t, direct)
    assert not torch.allclose(direct(cond), direct({**cond, "pooled_projections": uncond["pooled_projections"]}))
    # an unguided conditional model: fixed conditions
    plain = from_diffusers(sd3, _flow(), conditions=cond)
    torch.testing.assert_close(plain.raw(x, t), direct(cond), rtol=0, atol=0)
    g = CFGDenoiser(den, 4.0, cond, uncond)
    res = diffsolve.sample(g, _randn(B, 4, 8, 8, seed=9), solver="euler", grid=den.schedule.grid(4),
                           denoise_final=True)
    assert res.nfe == 5 and g.calls == 5 and torch.isfinite(res.x).all()


def test_flux_sigma_label_ids_and_guidance():
    flux = _tiny(diffusers.FluxTransformer2DModel, patch_size=1, in_channels=8, num_layers=1, num_single_layers=1,
                 attention_head_dim=16, num_attention_heads=2, joint_attention_dim=12, pooled_projection_dim=10,
                 guidance_embeds=True, axes_dims_rope=(4, 4, 8))
    img_ids = torch.zeros(16, 3, dtype=F64)
    img_ids[:, 1], img_ids[:, 2] = torch.arange(16) // 4, torch.arange(16) % 4
    fixed = {"img_ids": img_ids, "txt_ids": torch.zeros(3, 3, dtype=F64)}
    sched = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    den = from_diffusers(flux, sched, conditions=fixed, shape=(16, 8))  # packed latents: (tokens, channels)
    assert den.shape == (16, 8) and den.prediction == "velocity"
    x, t = _randn(B, 16, 8), 0.62
    guidance = torch.full((B,), 3.5, dtype=F64)

    def cond_of(seed):
        return {"encoder_hidden_states": _randn(B, 3, 12, seed=seed), "pooled_projections": _randn(B, 10, seed=seed + 1),
                "guidance": guidance}

    cond, uncond = cond_of(1), cond_of(4)

    def direct(c):  # the FLUX pipeline's call: timestep = σ (the transformer multiplies by 1000 itself)
        return flux(x, timestep=torch.full((B,), 0.62, dtype=F64), **fixed, **c).sample

    _check_cfg(den, cond, uncond, x, t, direct)
    assert not torch.allclose(direct(cond), direct({**cond, "guidance": torch.full((B,), 1.0, dtype=F64)}))
    # σ = 1 reaches the network as exactly 1
    seen = []
    hook = flux.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["timestep"].clone()), with_kwargs=True)
    try:
        CFGDenoiser(den, 1.0, cond, uncond).raw(x, den.schedule.t_max)
    finally:
        hook.remove()
    assert torch.equal(seen[0], torch.ones(B, dtype=F64))
    # a condition without a batch dimension given per row: an error naming it
    with pytest.raises(ValueError, match="img_ids"):
        CFGDenoiser(from_diffusers(flux, sched, shape=(16, 8)), 2.0, {**cond, "img_ids": img_ids},
                    {**uncond, "img_ids": img_ids}).raw(x, t)


def test_a_compiled_model_is_read_as_the_model_it_wraps():
    """torch.compile's OptimizedModule has ``forward(*args, **kwargs)`` and its own class name: from_diffusers
    passed the label positionally (FLUX: "got multiple values for argument 'encoder_hidden_states'") and gave a
    compiled FLUX the label 1000·σ instead of σ. Both are now read off the wrapped module (nothing is compiled
    here: the wrapper compiles at its first call)."""
    from diffsolve._diffusers import _takes_timestep_keyword

    flux = _tiny(diffusers.FluxTransformer2DModel, patch_size=1, in_channels=8, num_layers=1, num_single_layers=1,
                 attention_head_dim=16, num_attention_heads=2, joint_attention_dim=12, pooled_projection_dim=10,
                 guidance_embeds=False, axes_dims_rope=(4, 4, 8))
    compiled = torch.compile(flux)
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    assert type(compiled).__name__ != type(flux).__name__ and _takes_timestep_keyword(compiled)
    t = torch.tensor(0.5, dtype=F64)
    label = from_diffusers(compiled, sched, shape=(16, 8)).time_label(t)
    assert float(label) == float(from_diffusers(flux, sched, shape=(16, 8)).time_label(t)) == 0.5


def test_from_pretrained_transformer_pipeline_folder(sd3, tmp_path):
    sd3.save_pretrained(tmp_path / "transformer")
    _flow().save_pretrained(tmp_path / "scheduler")
    cond = _sd3_conditions(1)
    den = from_pretrained(tmp_path, conditions=cond, torch_dtype=F64)
    assert isinstance(den.schedule, FlowSchedule) and den.prediction == "velocity"
    x = _randn(B, 4, 8, 8)
    torch.testing.assert_close(den.raw(x, 0.5), from_diffusers(sd3, _flow(), conditions=cond).raw(x, 0.5),
                               rtol=1e-12, atol=1e-12)


# --- conditions: errors ------------------------------------------------------------------------------
def test_condition_errors(sd3):
    den = from_diffusers(sd3, _flow())
    cond = _sd3_conditions(1)
    with pytest.raises(ValueError, match="pooled_projections"):
        CFGDenoiser(den, 2.0, cond, {"encoder_hidden_states": cond["encoder_hidden_states"]})
    with pytest.raises(TypeError, match="cond_key"):
        CFGDenoiser(den, 2.0, cond, cond, cond_key="encoder_hidden_states")
    with pytest.raises(TypeError, match="dicts"):
        CFGDenoiser(den, 2.0, cond, torch.zeros(1))
    with pytest.raises(ValueError, match="uncond"):
        CFGDenoiser(den, 2.0, cond)
    bad = {**cond, "pooled_projections": _randn(3, 16)}
    with pytest.raises(ValueError, match=r"cond\['pooled_projections'\] has 3 rows"):
        CFGDenoiser(den, 2.0, bad, bad).raw(_randn(B, 4, 8, 8), 0.5)
    with pytest.raises(TypeError, match="conditions"):
        from_diffusers(sd3, _flow(), conditions=[1, 2])
    with pytest.raises(ValueError, match="threshold"):
        from_diffusers(sd3, _flow(), threshold="dynamic")
