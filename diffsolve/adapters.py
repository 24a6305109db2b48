r"""Plug pretrained networks into diffsolve: each adapter returns a :class:`~diffsolve.Denoiser`.

Any network predicts one of the types of docs/math.md §2 from (x_t, its own time label); an adapter states
which type, which schedule (α_t, σ_t) and which time label, and nothing else changes:

=====================  =========================================  ============  ======================
source                 network call                               prediction    time label
=====================  =========================================  ============  ======================
diffusers UNet         ``unet(x, timestep, class_labels=c).sample``  eps/v/x0     integer timestep
                       with the scheduler's ᾱ_n (DDPMSchedule)    (config)      k = t·N − 1
EDM / k-diffusion      ``D(y, s)`` in VE coordinates              x0            s = σ/α = e^{−λ}
                       y = x/α (docs/math.md §2, last row)
score_sde              ``score(x, t)``                            score         t (or any)
any callable           ``f(x, label)``                            any           any
=====================  =========================================  ============  ======================

For a diffusers model at a grid point t_n = (k + 1)/N the network receives exactly its training
timestep k (:meth:`DDPMSchedule.t_of_timestep`), so diffsolve's DDIM / DPM-Solver++ on the grid
``t_of_timestep(scheduler.timesteps)`` with a final denoise reproduce diffusers' own loops (tested
in ``tests/test_adapters.py``).

:func:`load_factory` resolves ``"package.module:factory"`` (or ``"path/to/file.py:factory"``) for the
command line; the factory returns a ``Denoiser``.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path

import torch
from torch import Tensor

from .denoiser import Denoiser
from .schedules import DDPMSchedule, EDMSchedule, Schedule, make_schedule

__all__ = ["from_diffusers", "from_pretrained", "schedule_from_diffusers", "from_edm", "from_k_diffusion",
           "EDMPrecond", "VECoordinates", "from_score_sde", "from_callable", "load_factory"]

_DIFFUSERS_PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}


# --- diffusers -----------------------------------------------------------------------------
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
        return dict(config), scheduler_or_config
    if isinstance(scheduler_or_config, dict) or hasattr(scheduler_or_config, "keys"):
        return dict(scheduler_or_config), None
    raise TypeError(f"expected a diffusers scheduler, its config (a dict) or the path of "
                    f"scheduler_config.json, got {type(scheduler_or_config).__name__}")


def schedule_from_diffusers(scheduler_or_config) -> tuple[DDPMSchedule, str]:
    """(DDPMSchedule, diffsolve prediction type) of a diffusers scheduler or its config.

    ᾱ_n is taken from the scheduler's ``alphas_cumprod`` (exactly the values its sampling loop
    uses), or computed by diffusers' ``DDPMScheduler`` from the config (``beta_schedule``,
    ``trained_betas``, ...). A zero terminal ᾱ (``rescale_betas_zero_snr``) is replaced by 2⁻²⁴,
    as diffusers' own samplers do.
    """
    config, scheduler = _config_dict(scheduler_or_config)
    kind = config.get("prediction_type", "epsilon")
    if kind not in _DIFFUSERS_PREDICTIONS:
        raise ValueError(f"unsupported diffusers prediction_type {kind!r}; supported: "
                         f"{', '.join(_DIFFUSERS_PREDICTIONS)}")
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
    if ac[-1] == 0:  # zero terminal SNR: diffusers samples from 2^-24 instead
        ac[-1] = 2.0 ** -24
    return DDPMSchedule(alphas_cumprod=ac), _DIFFUSERS_PREDICTIONS[kind]


class _DiffusersNet(torch.nn.Module):
    """``net(x, label, cond)`` around a diffusers-style model returning ``.sample``."""

    def __init__(self, model, cond_key: str | None, out_channels: int | None):
        super().__init__()
        self.model = model
        self.cond_key = cond_key
        self.out_channels = out_channels

    def forward(self, x: Tensor, label: Tensor, cond=None) -> Tensor:
        kwargs = {}
        if cond is not None:
            if self.cond_key is None:
                raise ValueError("this adapter was built with cond_key=None; it takes no condition")
            kwargs[self.cond_key] = cond
        out = self.model(x, label, **kwargs)
        out = out.sample if hasattr(out, "sample") else (out[0] if isinstance(out, (tuple, list)) else out)
        if self.out_channels is not None and out.shape[1] != self.out_channels:
            out = out[:, : self.out_channels]  # learned variance: the mean prediction comes first
        return out


def from_diffusers(unet, scheduler_or_config, *, shape=None, cond_key: str | None = "class_labels",
                   net_dtype: torch.dtype | None = None) -> Denoiser:
    """A Denoiser for a diffusers ``UNet2DModel`` (or any module with its call signature
    ``model(x, timestep, **cond) -> output with .sample``) trained with the given scheduler.

    Args:
        unet: the network.
        scheduler_or_config: a diffusers scheduler, its config dict, or the path of its
            ``scheduler_config.json``; gives ᾱ_n and ``prediction_type`` (epsilon / v_prediction /
            sample).
        shape: one sample's shape; default (in_channels, sample_size, sample_size) from the
            model's config.
        cond_key: the keyword a condition is passed by (``class_labels`` for class-conditional
            UNet2DModel); used by :class:`~diffsolve.CFGDenoiser`.

    The network is fed the (fractional) timestep t·N − 1, exactly its integer training timestep at
    the grid points of :meth:`DDPMSchedule.t_of_timestep`. Models with learned variance
    (``out_channels = 2·in_channels``) keep the first half of their output.
    """
    if not callable(unet):
        raise TypeError(f"unet must be a callable module, got {type(unet).__name__}")
    schedule, prediction = schedule_from_diffusers(scheduler_or_config)
    cfg = getattr(unet, "config", None)
    in_ch = getattr(cfg, "in_channels", None) if cfg is not None else None
    if shape is None and cfg is not None and in_ch is not None and getattr(cfg, "sample_size", None) is not None:
        size = cfg.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        shape = (in_ch, *size)
    out_ch = getattr(cfg, "out_channels", None) if cfg is not None else None
    keep = in_ch if (in_ch is not None and out_ch == 2 * in_ch) else None
    net = _DiffusersNet(unet, cond_key, keep)
    return Denoiser(net, schedule, prediction=prediction, time_label="default", net_dtype=net_dtype, shape=shape)


def from_pretrained(path, *, scheduler=None, subfolder: str | None = None, torch_dtype=None,
                    cond_key: str | None = "class_labels", shape=None) -> Denoiser:
    """Load a diffusers model saved with ``save_pretrained`` (offline) and wrap it.

    ``path`` is a pipeline folder (``unet/`` and ``scheduler/`` inside), or a model folder (its
    ``config.json``) with the scheduler in ``scheduler`` (object, config dict or path; default
    ``path/scheduler_config.json`` or ``path/../scheduler``). The model class is the
    ``_class_name`` of its config. Missing, unused or mis-shaped weights are errors.
    """
    diffusers = _import_diffusers()
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"{root} does not exist")
    model_dir = root / subfolder if subfolder else root
    if subfolder is None and not (root / "config.json").exists() and (root / "unet" / "config.json").exists():
        model_dir = root / "unet"
    if not (model_dir / "config.json").exists():
        raise FileNotFoundError(f"no config.json in {model_dir}: expected a folder written by "
                                f"save_pretrained (a pipeline folder with unet/, or the model folder)")
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
    return from_diffusers(model.eval().requires_grad_(False), scheduler, cond_key=cond_key, shape=shape)


# --- EDM / k-diffusion -------------------------------------------------------------------------
class EDMPrecond(torch.nn.Module):
    r"""EDM preconditioning: D(y; s) = c_skip(s) y + c_out(s) F(c_in(s) y, c_noise(s)) with
    c_skip = σ_d²/(s² + σ_d²), c_out = s σ_d/√(s² + σ_d²), c_in = 1/√(s² + σ_d²), c_noise = ¼ ln s.

    Args:
        F: the raw network ``F(x, c_noise, *cond)`` (shape in = shape out).
        sigma_data: σ_d, the data standard deviation (0.5 in EDM).

    References: Karras et al., arXiv:2206.00364, Table 1.
    """

    def __init__(self, F, sigma_data: float = 0.5):
        super().__init__()
        self.F = F
        self.sigma_data = float(sigma_data)

    def forward(self, y: Tensor, s: Tensor, *cond, **kw) -> Tensor:
        s = s.to(y.dtype).reshape(-1, *([1] * (y.dim() - 1)))
        sd2 = self.sigma_data ** 2
        c_skip = sd2 / (s * s + sd2)
        c_out = s * self.sigma_data / (s * s + sd2).sqrt()
        c_in = 1.0 / (s * s + sd2).sqrt()
        return c_skip * y + c_out * self.F(c_in * y, 0.25 * s.log().reshape(-1), *cond, **kw)


class VECoordinates(torch.nn.Module):
    r"""``net'(x, s) = D(x/α, s)``: an EDM denoiser D(y; s) used at state x_t = α_t y with
    s = σ_t/α_t (docs/math.md §2, last row). α is recovered from s through the schedule:
    α = α(t(λ = −ln s)), in float64."""

    def __init__(self, D, schedule: Schedule, cond_key: str | None = None):
        super().__init__()
        self.D = D
        self.schedule = schedule
        self.cond_key = cond_key
        self._unit_alpha = float(schedule.log_alpha(schedule.t_min)) == 0.0 == float(schedule.log_alpha(schedule.t_max))

    def forward(self, x: Tensor, s: Tensor, cond=None) -> Tensor:
        if not self._unit_alpha:
            t = self.schedule.t_of_log_snr(-torch.log(s.detach().to(torch.float64)))
            alpha = self.schedule.alpha(t).to(device=x.device, dtype=x.dtype)
            x = x / alpha.reshape(-1, *([1] * (x.dim() - 1)))
        if cond is None:
            return self.D(x, s)
        if self.cond_key is None:
            return self.D(x, s, cond)
        return self.D(x, s, **{self.cond_key: cond})


def from_edm(D, schedule="edm", *, shape=None, cond_key: str | None = None, net_dtype=None) -> Denoiser:
    """A Denoiser for an EDM / k-diffusion denoiser ``D(y, sigma) -> x̂0`` (VE coordinates).

    With any schedule (α, σ), the network used is net'(x, t) = D(x/α_t, σ_t/α_t) with prediction
    x0 (docs/math.md §2). The default schedule is EDM's (α = 1, σ = t ∈ [0.002, 80]). A raw EDM network F
    can be wrapped first with :class:`EDMPrecond`. A condition reaches D as a third positional
    argument, or as the keyword ``cond_key``.
    """
    if not callable(D):
        raise TypeError(f"D must be callable, got {type(D).__name__}")
    schedule = make_schedule(schedule)
    return Denoiser(VECoordinates(D, schedule, cond_key), schedule, prediction="x0",
                    time_label="sigma_over_alpha", net_dtype=net_dtype, shape=shape)


def from_k_diffusion(model, schedule=None, *, sigma_min: float | None = None, sigma_max: float | None = None,
                     shape=None, cond_key: str | None = "cond", net_dtype=None) -> Denoiser:
    """A Denoiser for a k-diffusion denoiser ``model(x, sigma, **extra) -> x̂0`` (same convention as
    EDM). Without ``schedule``, an :class:`EDMSchedule` over [sigma_min, sigma_max] (default 0.002, 80;
    k-diffusion wrappers expose ``sigma_min`` / ``sigma_max``, which are used when present)."""
    if schedule is None:
        lo = sigma_min if sigma_min is not None else float(getattr(model, "sigma_min", 0.002))
        hi = sigma_max if sigma_max is not None else float(getattr(model, "sigma_max", 80.0))
        schedule = EDMSchedule(lo, hi)
    return from_edm(model, schedule, shape=shape, cond_key=cond_key, net_dtype=net_dtype)


# --- score networks and plain callables ------------------------------------------------------
def from_score_sde(score_fn, schedule="vp", *, time_label="t", shape=None, net_dtype=None) -> Denoiser:
    """A Denoiser for a score_sde-style score function ``s(x, t) ≈ ∇log p_t(x)`` (prediction
    ``score``), continuous time t by default (``time_label`` as in :class:`Denoiser`).

    References: Song et al., arXiv:2011.13456.
    """
    return Denoiser(score_fn, schedule, prediction="score", time_label=time_label, net_dtype=net_dtype, shape=shape)


def from_callable(fn, schedule, prediction: str, *, time_label="default", shape=None, net_dtype=None) -> Denoiser:
    """A Denoiser for any callable ``fn(x, label) -> prediction`` (see :class:`Denoiser`)."""
    return Denoiser(fn, schedule, prediction=prediction, time_label=time_label, net_dtype=net_dtype, shape=shape)


# --- command line: "package.module:factory" ---------------------------------------------------
def load_factory(spec: str, **kwargs) -> Denoiser:
    """Resolve ``"package.module:name"`` or ``"path/to/file.py:name"`` to a :class:`Denoiser`.

    ``name`` is a factory called with ``kwargs`` (returning a Denoiser) or a Denoiser instance.
    Bad specifications give a ``ValueError`` / ``TypeError`` saying what is wrong.
    """
    if not isinstance(spec, str) or spec.count(":") < 1:
        raise ValueError(f"expected 'package.module:factory' or 'path/to/file.py:factory', got {spec!r}")
    target, _, attr = spec.rpartition(":")
    if not target or not attr or not attr.replace(".", "_").isidentifier():
        raise ValueError(f"expected 'package.module:factory' or 'path/to/file.py:factory', got {spec!r}")
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target)
        if not path.is_file():
            raise ValueError(f"no such Python file {str(path)!r} (from {spec!r})")
        name = f"_diffsolve_factory_{abs(hash(str(path.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as e:
            if e.name and (target == e.name or target.startswith(e.name + ".")):
                raise ValueError(f"cannot import module {target!r} (from {spec!r}): no module named "
                                 f"{e.name!r}; is it installed or on PYTHONPATH?") from None
            raise
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = sorted(n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n)))
            raise ValueError(f"module {target!r} has no attribute {attr!r}; callables there: "
                             f"{', '.join(public[:20]) or '(none)'}")
        obj = getattr(obj, part)
    if isinstance(obj, Denoiser):
        if kwargs:
            raise TypeError(f"{spec!r} is a Denoiser instance; it takes no arguments")
        return obj
    if not callable(obj):
        raise TypeError(f"{spec!r} is an object of type {type(obj).__name__}, not a factory (callable) or a "
                        f"Denoiser")
    result = obj(**kwargs)
    if not isinstance(result, Denoiser):
        raise TypeError(f"factory {spec!r} returned {type(result).__name__}, not a diffsolve.Denoiser; "
                        f"wrap the network with diffsolve.Denoiser(net, schedule, prediction=...) or an "
                        f"adapter in diffsolve.adapters (from_diffusers, from_edm, from_score_sde)")
    return result


def __getattr__(name):
    if name in ("DiffsolveScheduler", "DiffsolveSchedulerOutput"):  # needs diffusers: imported on first use
        from . import scheduler

        return getattr(scheduler, name)
    raise AttributeError(f"module 'diffsolve.adapters' has no attribute {name!r}")
