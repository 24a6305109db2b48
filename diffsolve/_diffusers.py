r"""The diffusers side of :mod:`diffsolve.adapters` (re-exported there): scheduler configs as
schedules, diffusers' flow-matching σ spacing, and UNets / transformers as denoisers.

**Schedulers.** A DDPM-family config (``beta_schedule``, ``trained_betas``, ``prediction_type``, ...)
is a :class:`~diffsolve.DDPMSchedule` with an ``eps`` / ``v`` / ``x0`` network; a flow-matching
config (``FlowMatchEulerDiscreteScheduler``: SD3, FLUX, ...; or ``prediction_type="flow_prediction"``)
is a :class:`~diffsolve.FlowSchedule` with a ``velocity`` network: x_σ = (1 − σ) x_0 + σ ε, the
network's output is dx/dσ = ε − x_0 (diffusers' ``x0 = sample − σ · model_output``; docs/math.md
(25.5)), its label is 1000·σ, and sampling starts at σ = 1, represented by t_max = 1 − 10⁻⁹
(docs/math.md (25.8)).

**Networks.** Any module called as ``model(x, timestep=label, **conditions)`` returning a tensor,
a tuple or an output with ``.sample``: ``UNet2DModel``, ``UNet2DConditionModel``,
``DiTTransformer2DModel``, ``Transformer2DModel``, ``PixArtTransformer2DModel``,
``SD3Transformer2DModel``, ``FluxTransformer2DModel``, ... Conditions travel by keyword: fixed ones
(``conditions=``, passed unchanged to every call: FLUX's ``img_ids`` / ``txt_ids``, PixArt's
``added_cond_kwargs``, an unguided model's prompt embeddings) and, through
:class:`~diffsolve.CFGDenoiser`, guided ones (cond / uncond dicts, batched in one call).
"""
from __future__ import annotations

import inspect
import json
import math
import warnings
from pathlib import Path

import torch
from torch import Tensor

from .denoiser import Denoiser, call_conditions, rows_noted
from .schedules import DDPMSchedule, FlowSchedule, Schedule
from .schedules.continuous import shift_sigma
from .thresholding import threshold_from_config

_DIFFUSERS_PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
# a flow-matching config without prediction_type is recognised by these fields
_FLOW_MARKERS = ("shift", "use_dynamic_shifting", "base_image_seq_len", "time_shift_type")
# FlowMatchEulerDiscreteScheduler options diffsolve does not reproduce, with their harmless value
FLOW_UNSUPPORTED = {"shift_terminal": None, "use_karras_sigmas": False, "use_exponential_sigmas": False,
                    "use_beta_sigmas": False, "invert_sigmas": False, "stochastic_sampling": False}
FLOW_DELTA = 1e-9  # σ = 1 is the time 1 − FLOW_DELTA (docs/math.md (25.8))
_SET_SHIFT = "_shift"  # a config key: the shift a scheduler's set_shift gave it, which its config does not hold
# diffusers config fields that change what the network is fed or the schedule it was trained on, beyond what
# diffsolve expresses: the values it runs, and what the others change
NETWORK_FIELDS = {"timestep_type": (("discrete",), "it changes the network's time input"),
                  "invert_sigmas": ((False,), "it changes the network's time input and output (Mochi's 1 − σ)"),
                  "snr_shift_scale": ((1.0, 1), "it rescales the SNR of the training schedule (CogVideoX)")}


def _import_diffusers():
    try:
        import diffusers
    except ImportError:
        raise ImportError("this adapter needs diffusers: pip install 'diffsolve[diffusers]'") from None
    return diffusers


def _config_dict(scheduler_or_config) -> tuple[dict, object | None]:
    """(config dict, scheduler object or None) from a scheduler, a config mapping or a JSON path."""
    if isinstance(scheduler_or_config, (str, Path)):
        path = Path(scheduler_or_config)
        if path.is_dir():
            path = path / "scheduler_config.json"
        if not path.exists():
            raise FileNotFoundError(f"scheduler config {path} not found")
        return json.loads(path.read_text()), None
    config = getattr(scheduler_or_config, "config", None)
    if config is not None:
        out = dict(config)
        # the shift of FlowMatchEulerDiscreteScheduler.set_shift, which its config does not record: a property of
        # the class (another scheduler's `shift` would be its config's, read through a deprecated attribute)
        if isinstance(getattr(type(scheduler_or_config), "shift", None), property):
            shift = scheduler_or_config.shift
            if isinstance(shift, (int, float)) and not isinstance(shift, bool):
                out[_SET_SHIFT] = float(shift)
        return out, scheduler_or_config
    if isinstance(scheduler_or_config, dict) or hasattr(scheduler_or_config, "keys"):
        return dict(scheduler_or_config), None
    raise TypeError(f"expected a diffusers scheduler, its config (a dict) or the path of "
                    f"scheduler_config.json, got {type(scheduler_or_config).__name__}")


def is_flow_config(config: dict) -> bool:
    """Whether a diffusers scheduler config describes a flow-matching model: ``prediction_type``
    ``"flow_prediction"``, or no ``prediction_type`` and a ``FlowMatch*`` class or its fields."""
    if "prediction_type" in config:
        return config["prediction_type"] == "flow_prediction"
    return str(config.get("_class_name", "")).startswith("FlowMatch") or any(k in config for k in _FLOW_MARKERS)


# the DDPM training-schedule fields, which a flow model's DPM-Solver / UniPC config (use_flow_sigmas) carries unused
_BETA_FIELDS = ("beta_start", "beta_end", "beta_schedule", "trained_betas", "rescale_betas_zero_snr")


def as_flow_config(config: dict) -> dict:
    """A DPM-Solver / UniPC config of a flow model (``use_flow_sigmas``: Sana) as a flow-matching config:
    ``shift`` = its ``flow_shift``, without the betas (they describe no training schedule there); any other
    config unchanged."""
    if not config.get("use_flow_sigmas") or config.get("prediction_type", "flow_prediction") != "flow_prediction":
        return config
    out = {k: v for k, v in config.items() if k not in _BETA_FIELDS}
    out["shift"] = float(config.get("flow_shift") or 1.0)
    return out


def refuse_network_fields(config: dict, what: str):
    """Raise ``ValueError`` naming a :data:`NETWORK_FIELDS` field set to a value diffsolve does not run."""
    for name, (harmless, why) in NETWORK_FIELDS.items():
        if name in config and config[name] not in harmless:
            raise ValueError(f"{what} cannot express the diffusers config field {name}={config[name]!r} ({why}); "
                             f"supported: {', '.join(map(repr, harmless[:1]))}")


def schedule_from_diffusers(scheduler_or_config) -> tuple[Schedule, str]:
    """(schedule, diffsolve prediction type) of a diffusers scheduler or its config.

    DDPM family: a :class:`DDPMSchedule` whose ᾱ_n is the scheduler's ``alphas_cumprod`` (exactly
    the values its sampling loop uses), or computed by diffusers' ``DDPMScheduler`` from the config
    (``beta_schedule``, ``trained_betas``, ...); a zero terminal ᾱ (``rescale_betas_zero_snr``) is
    replaced by 2⁻²⁴, as diffusers' Euler, DPM-Solver and UniPC schedulers do (its DDIM and DDPM keep
    0, where their first step from t_max differs by about 2⁻¹² relative: :mod:`diffsolve.parity` lists that
    as approximate), or, where the table is already below 2⁻²⁴ one timestep earlier (linear betas), by
    ᾱ_{N−2}²/ᾱ_{N−3}, so that ᾱ keeps decreasing. Prediction
    ``eps``, ``v`` or ``x0``.

    Flow matching (:func:`is_flow_config`): a :class:`FlowSchedule` with ``num_train_timesteps`` N
    (label N·σ), the config's static ``shift`` and ``time_shift_type``, t_max = 1 − 10⁻⁹ standing
    for σ = 1, and t_min = min(1/N, shifted 1/N) (the smallest σ diffusers' default spacing reaches
    is larger); prediction ``velocity``.
    """
    config, scheduler = _config_dict(scheduler_or_config)
    refuse_network_fields(config, "diffsolve")
    config = as_flow_config(config)
    if is_flow_config(config):
        return _flow_schedule(config), "velocity"
    kind = config.get("prediction_type", "epsilon")
    if kind not in _DIFFUSERS_PREDICTIONS:
        raise ValueError(f"unsupported diffusers prediction_type {kind!r}; supported: "
                         f"{', '.join(_DIFFUSERS_PREDICTIONS)}, flow_prediction")
    ac = getattr(scheduler, "alphas_cumprod", None) if scheduler is not None else None
    if ac is None:
        if "alphas_cumprod" in config:
            ac = config["alphas_cumprod"]
        else:
            diffusers = _import_diffusers()
            keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                    "rescale_betas_zero_snr")
            ac = diffusers.DDPMScheduler(**{k: config[k] for k in keys if k in config}).alphas_cumprod
    ac = torch.as_tensor(ac, dtype=torch.float64).detach().cpu().clone()
    if len(ac) > 1 and float(ac[-1]) in (0.0, 2.0 ** -24):  # zero terminal SNR (diffusers' Euler, DPM-Solver and
        # UniPC objects have already put 2^-24 there): 2^-24 as diffusers samples from it, unless the table is
        # under 2^-24 one timestep earlier (linear betas), where the geometric continuation of its last step
        # keeps ᾱ decreasing
        floor = 2.0 ** -24
        ac[-1] = floor if floor < float(ac[-2]) else (
            float(ac[-2] ** 2 / ac[-3]) if len(ac) > 2 else float(ac[-2]) / 2)
    return DDPMSchedule(alphas_cumprod=ac), _DIFFUSERS_PREDICTIONS[kind]


def _flow_shifts(config: dict) -> tuple[float, float]:
    """(the config's static shift, the shift ``set_timesteps`` applies): a scheduler's ``set_shift`` changes
    the second only (``_config_dict`` records it under ``_SET_SHIFT``); the first fixes diffusers' σ_min."""
    base = float(config.get("shift", 1.0) or 1.0)
    return base, float(config.get(_SET_SHIFT, base))


def _flow_schedule(config: dict) -> FlowSchedule:
    n = int(config.get("num_train_timesteps", 1000))
    base, shift = _flow_shifts(config)
    # the smallest σ diffusers reaches: its σ_min = s₀(1/N) (the config's s₀, fixed at construction) shifted
    # again by set_timesteps with the current s, or 1/N under dynamic shifting
    t_min = min(1.0 / n, float(shift_sigma(1.0 / n, shift)), float(shift_sigma(shift_sigma(1.0 / n, base), shift)))
    return FlowSchedule(t_min=t_min, t_max=1.0 - FLOW_DELTA, shift=shift, num_train_timesteps=n,
                        time_shift_type=config.get("time_shift_type", "exponential") or "exponential")


def refuse_flow_options(config: dict, what: str = "diffsolve"):
    """Raise ``ValueError`` naming each FlowMatchEulerDiscreteScheduler option set to a value that
    changes the σ spacing or the update in a way diffsolve does not reproduce."""
    bad = [f"{k}={config[k]!r}" for k, harmless in FLOW_UNSUPPORTED.items()
           if config.get(k, harmless) not in (harmless, None, False)]
    if bad:
        raise ValueError(f"{what} does not reproduce the flow-matching config fields {', '.join(bad)}; set them to "
                         f"their defaults ({', '.join(f'{k}={v!r}' for k, v in FLOW_UNSUPPORTED.items())}) or "
                         f"pass sigmas= explicitly")


def flow_sigmas_from_diffusers(scheduler_or_config, num_inference_steps: int | None = None, *, sigmas=None,
                               mu: float | None = None) -> Tensor:
    """The σ values at which ``FlowMatchEulerDiscreteScheduler.set_timesteps`` places its network
    evaluations (without the terminal 0), as float64 holding diffusers' float32 values.

    Either ``num_inference_steps``: the config's σ_min = s₀(1/N) (s₀ the config's ``shift``; 1/N with
    dynamic shifting) in float32, u = ``linspace(1, σ_min, n)`` in float64, then the shift; or
    ``sigmas``: the given values (float32), then the shift — diffusers shifts user sigmas too. The
    shift is the scheduler's current static shift s (``set_shift`` changes it and leaves σ_min and
    the config as they were; s = s₀ for a config), or with ``use_dynamic_shifting`` the dynamic
    shift ``mu`` (required; exponential: e^μ/(e^μ + 1/σ − 1), linear: μ/(μ + 1/σ − 1), which are
    (25.6) with s = e^μ or μ; docs/math.md (25.6)–(25.7)). Options that change the spacing otherwise
    are refused by name.
    """
    import numpy as np

    config, _ = _config_dict(scheduler_or_config)
    refuse_flow_options(config)
    n_train = int(config.get("num_train_timesteps", 1000))
    base, shift = _flow_shifts(config)
    dynamic = bool(config.get("use_dynamic_shifting", False))
    if dynamic and mu is None:
        raise ValueError("this flow-matching config has use_dynamic_shifting=True: pass mu= (e.g. "
                         "diffsolve.schedules.continuous.calculate_shift(image_seq_len, ...))")
    if sigmas is None:
        if num_inference_steps is None or isinstance(num_inference_steps, bool) or int(num_inference_steps) < 1:
            raise ValueError(f"give num_inference_steps >= 1 or sigmas, got {num_inference_steps!r}")
        low = torch.tensor([1.0], dtype=torch.float32) / n_train  # the training σ's smallest value
        if not dynamic:
            low = base * low / (1 + (base - 1) * low)
        u = np.linspace(1.0 * n_train, float(low) * n_train, int(num_inference_steps)) / n_train
    else:
        u = np.asarray(torch.as_tensor(sigmas, dtype=torch.float64).cpu().reshape(-1)).astype(np.float32)
        if u.size == 0 or not np.all(np.isfinite(u)) or np.any(u <= 0) or np.any(u > 1):
            raise ValueError(f"sigmas must be finite values in (0, 1], got {u.tolist()}")
    if not dynamic:
        out = shift * u / (1 + (shift - 1) * u)
    else:
        kind = config.get("time_shift_type", "exponential")
        if kind not in ("exponential", "linear"):
            raise ValueError(f"unknown time_shift_type {kind!r}; valid: 'exponential', 'linear'")
        s = math.exp(mu) if kind == "exponential" else float(mu)
        out = s / (s + (1 / u - 1))
    return torch.from_numpy(np.asarray(out)).to(torch.float32).to(torch.float64)


def flow_grid(config, schedule: FlowSchedule, solver, nfe: int | None = None, *, sigmas=None, mu=None,
              denoise_final: bool = True, spacing: str = "euler") -> Tensor:
    """The grid of a flow-matching run as diffusers places it (``DiffsolveScheduler``'s ``"diffusers"``
    grid): the σ of :func:`flow_sigmas_from_diffusers`, for the budget ``nfe`` (n = the solver's steps
    + 1 with ``denoise_final``, else its steps) or the given ``sigmas``, σ = 1 read as the schedule's
    t_max. With ``denoise_final`` the last σ is the final denoise's (where diffusers steps to σ = 0:
    x − σ v = x̂0 exactly), else a last step to t_min follows (docs/math.md §25).

    ``spacing="dpm"`` (``DiffsolveScheduler``'s ``"flow_dpm"`` grid, its default for flow configs): the
    σ of diffusers' flow DPM-Solver (``use_flow_sigmas``; UniPC's start at σ = 1) instead,
    u_k = (1 − 1/N)·k/n for k = n..1 shifted: it starts below σ = 1 and spreads the steps evenly
    enough in λ for multistep extrapolation (on the shifted Euler grid, which starts at σ = 1 and whose
    λ-steps vary by two orders of magnitude, dpmpp_3m does not converge;
    ``python benchmarks/diffusers_pipelines.py --only flow``)."""
    if sigmas is None and spacing == "dpm":  # u = (1 − 1/N)·k/n, k = n..1, then the shift
        n = plan_times(solver, nfe, denoise_final)
        n_train = int(dict(config).get("num_train_timesteps", 1000))
        u = (1.0 - 1.0 / n_train) * torch.arange(n, 0, -1, dtype=torch.float64) / n
        sig = flow_sigmas_from_diffusers(config, sigmas=u, mu=mu)
    elif sigmas is None:
        n = plan_times(solver, nfe, denoise_final)
        sig = flow_sigmas_from_diffusers(config, n, mu=mu)
    else:
        sig = flow_sigmas_from_diffusers(config, sigmas=sigmas, mu=mu)
    t = schedule.t_of_sigma(sig)
    if not denoise_final and float(t[-1]) > schedule.t_min:
        t = torch.cat([t, torch.tensor([schedule.t_min], dtype=torch.float64)])
    return solver.grid_for(schedule, grid=t, denoise_final=denoise_final)


def plan_times(solver, nfe: int, denoise_final: bool) -> int:
    """How many timesteps a diffusers plan of ``nfe`` evaluations has: the solver's steps, + 1 for the
    final denoise (the last timestep is its time). One evaluation with the final denoise is that
    evaluation alone, x̂0 at the first timestep, as diffusers' one-step run to σ = 0 is."""
    if denoise_final and int(nfe) == 1:
        return 1
    return solver.steps_for_nfe(nfe, denoise_final) + int(denoise_final)


# --- networks -----------------------------------------------------------------------------------
def _to(c, device):
    if isinstance(c, dict):
        return {k: _to(v, device) for k, v in c.items()}
    return c.to(device) if isinstance(c, Tensor) and c.device != device else c


def _uncompiled(model):
    """The module a ``torch.compile`` wrapper holds (the wrapper's ``forward`` takes ``*args, **kwargs`` and its
    class is ``OptimizedModule``), else the model: what its signature and class are read from."""
    return getattr(model, "_orig_mod", model)


def _takes_timestep_keyword(model) -> bool:
    model = _uncompiled(model)
    fn = getattr(model, "forward", model)
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "timestep" in params


class _DiffusersNet(torch.nn.Module):
    """``net(x, label, cond=None, **conditions)`` around a diffusers model: ``model(x,
    timestep=label, **fixed, **conditions)`` (timestep positional for a model whose signature has
    no ``timestep``), its ``.sample``, and the first ``out_channels`` channels of a learned-variance
    output."""

    def __init__(self, model, cond_key: str | None, out_channels: int | None, conditions: dict | None = None):
        super().__init__()
        self.model = model
        self.cond_key = cond_key
        self.out_channels = out_channels
        if conditions is not None and not isinstance(conditions, dict):
            raise TypeError(f"conditions must be a dict of keyword arguments, got {type(conditions).__name__}")
        self.conditions = dict(conditions or {})
        self._keyword = _takes_timestep_keyword(model)
        self.run_rows = None  # the rows x holds (Denoiser.at_rows): per-sample fixed conditions follow them

    def forward(self, x: Tensor, label: Tensor, cond=None, **conditions) -> Tensor:
        if cond is not None and self.cond_key is None:
            raise ValueError("this adapter was built with cond_key=None; it takes no positional condition "
                             "(give keyword conditions instead)")
        kwargs = _to(call_conditions(self.conditions, self.run_rows, cond, self.cond_key, conditions)[1], x.device)
        with rows_noted(kwargs, x.shape[0]):
            out = self.model(x, timestep=label, **kwargs) if self._keyword else self.model(x, label, **kwargs)
        out = out.sample if hasattr(out, "sample") else (out[0] if isinstance(out, (tuple, list)) else out)
        if self.out_channels is not None and out.dim() > 1 and out.shape[1] == 2 * self.out_channels:
            out = out[:, : self.out_channels]  # learned variance: the mean prediction comes first
        return out


def _model_config(model, key: str):
    """A field of a diffusers model's config (a dict or an object), None where absent."""
    cfg = getattr(model, "config", None)
    return cfg.get(key) if isinstance(cfg, dict) else getattr(cfg, key, None)


def _model_dims(model):
    """(in_channels, out_channels, sample_size) from a diffusers model's config (None where absent)."""
    in_ch = _model_config(model, "in_channels")
    out_ch = _model_config(model, "out_channels") or getattr(model, "out_channels", None)
    return in_ch, out_ch if isinstance(out_ch, int) else None, _model_config(model, "sample_size")


def from_diffusers(unet, scheduler_or_config, *, shape=None, cond_key: str | None = "class_labels",
                   net_dtype: torch.dtype | None = None, conditions: dict | None = None, time_label="auto",
                   threshold=None) -> Denoiser:
    """A Denoiser for a diffusers UNet or transformer trained with the given scheduler.

    Args:
        unet: the network, called as ``model(x, timestep=label, **conditions)`` (module docstring):
            ``UNet2DModel``, ``UNet2DConditionModel``, DiT, PixArt, SD3, FLUX, ...
        scheduler_or_config: a diffusers scheduler, its config dict, or the path of its
            ``scheduler_config.json``: a DDPM-family one (``prediction_type`` epsilon /
            v_prediction / sample) or a flow-matching one (:func:`schedule_from_diffusers`).
        shape: one sample's shape; default (in_channels, sample_size, sample_size) from the
            model's config when it has both (FLUX's packed (tokens, channels) latents: give it).
        cond_key: the keyword a positional condition is passed by (``class_labels`` for a
            class-conditional UNet2DModel / DiT); used by :class:`~diffsolve.CFGDenoiser` with a
            tensor condition. Dict conditions are keywords already.
        conditions: fixed keyword conditions passed unchanged to every call (e.g. FLUX's
            ``img_ids``, ``txt_ids``, ``guidance``; PixArt's ``added_cond_kwargs``; the
            ``encoder_hidden_states`` of an unguided text-conditional model, one row per sample).
        time_label: ``"auto"``: the integer timestep (DDPM family), 1000·σ (flow matching), σ for
            ``FluxTransformer2DModel`` (which multiplies its timestep by 1000 itself), the timestep as
            int64 for a model whose config has ``time_embedding_type="learned"`` (an index embedding:
            ``"whole"``, which refuses a time between trained timesteps; ``"index"`` rounds it); or any
            :class:`~diffsolve.Denoiser` time label.
        threshold: None (default), ``"config"`` (the scheduler config's ``clip_sample`` /
            ``thresholding``, :func:`~diffsolve.thresholding.threshold_from_config`), or a threshold
            (:mod:`diffsolve.thresholding`).

    DDPM family: the network is fed the (fractional) timestep t·N − 1, exactly its integer training
    timestep at the grid points of :meth:`DDPMSchedule.t_of_timestep`. Models with learned variance
    (``out_channels = 2·in_channels``: DiT, IF, PixArt-α variants) keep the first half of their
    output channels, as diffusers' pipelines do.
    """
    if not callable(unet):
        raise TypeError(f"unet must be a callable module, got {type(unet).__name__}")
    schedule, prediction = schedule_from_diffusers(scheduler_or_config)
    in_ch, out_ch, size = _model_dims(unet)
    if shape is None and in_ch is not None and size is not None:
        size = (size, size) if isinstance(size, int) else tuple(size)
        shape = (in_ch, *size)
    elif (shape is not None and in_ch is not None and size is not None and isinstance(shape, (tuple, list))
          and len(shape) == 3 and shape[0] != in_ch):
        raise ValueError(f"shape={tuple(shape)} has {shape[0]} channels, but the model takes in_channels={in_ch}: give "
                         f"shape=({in_ch}, H, W), or leave shape out for ({in_ch}, {size}, {size})")
    keep = in_ch if (in_ch is not None and out_ch == 2 * in_ch) else None
    if time_label == "auto":
        flux = isinstance(schedule, FlowSchedule) and type(_uncompiled(unet)).__name__.startswith("Flux")
        learned = _model_config(unet, "time_embedding_type") == "learned"  # an index embedding
        time_label = schedule.nominal_sigma if flux else "whole" if learned else "default"
    config = _config_dict(scheduler_or_config)[0]
    if isinstance(threshold, str):
        if threshold != "config":
            raise ValueError(f"threshold must be None, 'config' or a threshold object, got {threshold!r}")
        threshold = threshold_from_config(config)
    elif threshold is None and threshold_from_config(config) is not None:
        # where diffusers applies each to x̂0 (thresholding takes precedence over clip_sample where both are set)
        where = {"clip_sample": "its DDPM and DDIM schedulers",
                 "thresholding": "its DDPM, DDIM, DPM-Solver, DEIS and UniPC (data prediction) schedulers"}
        asked = "; ".join(f"{k}=True, which {w} apply to x̂0" for k, w in where.items() if config.get(k))
        warnings.warn(f"the scheduler config sets {asked} in diffusers; this Denoiser does not threshold (sample() "
                      f"integrates the ODE as it is): pass threshold='config' to apply it, as DiffsolveScheduler "
                      f"made from the same config does", UserWarning, stacklevel=2)
    net = _DiffusersNet(unet, cond_key, keep, conditions)
    return Denoiser(net, schedule, prediction=prediction, time_label=time_label, net_dtype=net_dtype, shape=shape,
                    threshold=threshold)


def from_pretrained(path, *, scheduler=None, subfolder: str | None = None, torch_dtype=None,
                    cond_key: str | None = "class_labels", shape=None, conditions: dict | None = None,
                    time_label="auto", threshold=None) -> Denoiser:
    """Load a diffusers model saved with ``save_pretrained`` (offline) and wrap it (:func:`from_diffusers`).

    ``path`` is a pipeline folder (``unet/`` or ``transformer/``, and ``scheduler/`` inside), or a
    model folder (its ``config.json``) with the scheduler in ``scheduler`` (object, config dict or
    path; default ``path/scheduler_config.json`` or ``path/../scheduler``). The model class is the
    ``_class_name`` of its config. Missing, unused or mis-shaped weights are errors.
    """
    diffusers = _import_diffusers()
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"{root} does not exist")
    model_dir = root / subfolder if subfolder else root
    if subfolder is None and not (root / "config.json").exists():
        model_dir = next((root / d for d in ("unet", "transformer") if (root / d / "config.json").exists()), root)
    if not (model_dir / "config.json").exists():
        raise FileNotFoundError(f"no config.json in {model_dir}: expected a folder written by save_pretrained "
                                f"(a pipeline folder with unet/ or transformer/, or the model folder)")
    if scheduler is None:
        for cand in (model_dir / "scheduler_config.json", root / "scheduler" / "scheduler_config.json",
                     model_dir.parent / "scheduler" / "scheduler_config.json"):
            if cand.exists():
                scheduler = cand
                break
        else:
            raise FileNotFoundError(f"no scheduler config found next to {model_dir}; pass scheduler= "
                                    f"(a diffusers scheduler, its config dict or scheduler_config.json)")
    class_name = json.loads((model_dir / "config.json").read_text()).get("_class_name")
    cls = getattr(diffusers, class_name, None) if class_name else None
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise ValueError(f"{model_dir / 'config.json'} names model class {class_name!r}, which diffusers "
                         f"{diffusers.__version__} does not provide")
    kwargs = {"local_files_only": True, "output_loading_info": True}
    if torch_dtype is not None:
        kwargs["torch_dtype"] = torch_dtype
    model, info = cls.from_pretrained(str(model_dir), **kwargs)
    bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")}
    if bad:
        raise ValueError(f"the weights in {model_dir} do not fit {class_name}: {bad}")
    return from_diffusers(model.eval().requires_grad_(False), scheduler, cond_key=cond_key, shape=shape,
                          conditions=conditions, time_label=time_label, threshold=threshold)
