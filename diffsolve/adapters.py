r"""Plug pretrained networks into diffsolve: each adapter returns a :class:`~diffsolve.Denoiser`.

Any network predicts one of the types of docs/math.md §2 from (x_t, its own time label); an adapter states
which type, which schedule (α_t, σ_t) and which time label, and nothing else changes:

=====================  =========================================  ============  ======================
source                 network call                               prediction    time label
=====================  =========================================  ============  ======================
diffusers UNet, DiT,   ``model(x, timestep=k, **conditions)``     eps/v/x0      integer timestep
PixArt (DDPM family)   with the scheduler's ᾱ_n (DDPMSchedule)    (config)      k = t·N − 1
diffusers SD3, FLUX    ``model(x, timestep=k, **conditions)``     velocity      k = 1000·σ (SD3),
(flow matching)        on FlowSchedule (x = (1 − σ) x_0 + σ ε)    (ε − x_0)     σ (FLUX)
EDM / k-diffusion      ``D(y, s)`` in VE coordinates              x0            s = σ/α = e^{−λ}
                       y = x/α (docs/math.md §2, last row)
azula                  ``D(x_t, t, **kw).mean``, t ∈ [0, 1] on    x0 (through   s = σ/α = e^{−λ}
                       its own schedule (α_t, σ_t)                VE coords)
score_sde              ``score(x, t)``                            score         t (or any)
Meta flow_matching     ``u(x, τ)`` = dx/dτ, τ = 0 noise, 1 data   velocity      τ = 1 − t
                       (x_τ = τ x_1 + (1 − τ) x_0): −u(x, 1 − t)  (FlowSchedule)
any callable           ``f(x, label)``                            any           any
=====================  =========================================  ============  ======================

For a diffusers model at a grid point t_n = (k + 1)/N the network receives exactly its training
timestep k (:meth:`DDPMSchedule.t_of_timestep`), so diffsolve's DDIM / DPM-Solver++ on the grid
``t_of_timestep(scheduler.timesteps)`` with a final denoise reproduce diffusers' own loops (tested
in ``tests/test_adapters.py``). The diffusers adapters (UNets and transformers, conditions by
keyword, learned-variance outputs, flow-matching configs and their σ spacing) live in
:mod:`diffsolve._diffusers` and are re-exported here.

:func:`load_factory` resolves ``"package.module:factory"`` (or ``"path/to/file.py:factory"``) for the
command line; the factory returns a ``Denoiser``.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import warnings
from pathlib import Path

import torch
from torch import Tensor

from ._diffusers import (flow_sigmas_from_diffusers, from_diffusers, from_pretrained, is_flow_config,
                         schedule_from_diffusers)
from ._numbers import check_number
from .checks import caller_stacklevel
from .denoiser import Denoiser, _add_note, call_conditions, rows_noted
from .schedules import EDMSchedule, Schedule, make_schedule

__all__ = ["from_diffusers", "from_pretrained", "schedule_from_diffusers", "flow_sigmas_from_diffusers",
           "is_flow_config", "from_edm", "from_k_diffusion", "EDMPrecond", "VECoordinates", "from_score_sde",
           "from_flow_matching", "from_azula", "from_callable", "load_factory"]


# --- EDM / k-diffusion -------------------------------------------------------------------------
class EDMPrecond(torch.nn.Module):
    r"""EDM preconditioning: D(y; s) = c_skip(s) y + c_out(s) F(c_in(s) y, c_noise(s)) with
    c_skip = σ_d²/(s² + σ_d²), c_out = s σ_d/√(s² + σ_d²), c_in = 1/√(s² + σ_d²), c_noise = ¼ ln s.

    The preconditioning runs in y's dtype raised to float32 at least, whatever F's precision: as in
    EDM's own code, only F's input is cast to F's dtype (that of its first floating weight, read at
    each call; for a function without weights, y's) and F's output back, so a half-precision F does
    not round the skip term c_skip y. A :class:`~diffsolve.Denoiser` calls it in
    :attr:`calling_dtype` (:func:`from_edm`).

    Args:
        F: the raw network ``F(x, c_noise, *cond)`` (shape in = shape out).
        sigma_data: σ_d > 0, the data standard deviation (0.5 in EDM).

    References: Karras et al., arXiv:2206.00364, Table 1.
    """

    def __init__(self, F, sigma_data: float = 0.5):
        super().__init__()
        if not callable(F):
            raise TypeError(f"F must be callable, got {type(F).__name__}")
        self.F = F
        self.sigma_data = check_number("sigma_data (EDM: 0.5)", sigma_data, positive=True)

    def _f_dtype(self) -> torch.dtype | None:
        if isinstance(self.F, torch.nn.Module):
            return next((p.dtype for p in self.F.parameters() if p.is_floating_point()), None)
        return None

    @property
    def calling_dtype(self) -> torch.dtype | None:
        """The dtype to call it in (a :class:`~diffsolve.Denoiser` reads it at each use, so ``net.double()``
        is followed): F's, raised to float32; None for F without weights (the caller's)."""
        f = self._f_dtype()
        return None if f is None else torch.promote_types(f, torch.float32)

    def forward(self, y: Tensor, s: Tensor, *cond, **kw) -> Tensor:
        f_dtype = self._f_dtype() or y.dtype
        y = y.to(torch.promote_types(y.dtype, torch.float32))
        s = s.to(y.dtype).reshape(-1, *([1] * (y.dim() - 1)))
        sd2 = self.sigma_data ** 2
        c_skip = sd2 / (s * s + sd2)
        c_out = s * self.sigma_data / (s * s + sd2).sqrt()
        c_in = 1.0 / (s * s + sd2).sqrt()
        out = self.F((c_in * y).to(f_dtype), 0.25 * s.log().reshape(-1), *cond, **kw)
        return c_skip * y + c_out * out.to(y.dtype)


class VECoordinates(torch.nn.Module):
    r"""``net'(x, s) = D(x/α, s)``: an EDM denoiser D(y; s) used at state x_t = α_t y with
    s = σ_t/α_t (docs/math.md §2, last row). α is recovered from s through the schedule:
    α = α(t(λ = −ln s)), in float64."""

    def __init__(self, D, schedule: Schedule, cond_key: str | None = None):
        super().__init__()
        self.D = D
        self.cond_key = cond_key
        self.follow_schedule(schedule)

    def follow_schedule(self, schedule: Schedule):
        """Use ``schedule`` from now on (the :class:`~diffsolve.Denoiser` calls it when its schedule is set)."""
        self.schedule = schedule
        self._unit_alpha = float(schedule.log_alpha(schedule.t_min)) == 0.0 == float(schedule.log_alpha(schedule.t_max))

    @property
    def calling_dtype(self) -> torch.dtype | None:
        """The dtype D asks to be called in (:attr:`EDMPrecond.calling_dtype`), else None."""
        return getattr(self.D, "calling_dtype", None)

    def forward(self, x: Tensor, s: Tensor, cond=None, **conditions) -> Tensor:
        if not self._unit_alpha:
            t = self.schedule.t_of_log_snr(-torch.log(s.to(torch.float64)))  # differentiable: tune_solver's shifts
            alpha = self.schedule.alpha(t).to(device=x.device, dtype=x.dtype)
            x = x / alpha.reshape(-1, *([1] * (x.dim() - 1)))
        args, kwargs = call_conditions({}, None, cond, self.cond_key, conditions)
        with rows_noted(kwargs, x.shape[0]):
            return self.D(x, s, *args, **kwargs)


def from_edm(D, schedule="edm", *, shape=None, cond_key: str | None = None, net_dtype=None) -> Denoiser:
    """A Denoiser for an EDM / k-diffusion denoiser ``D(y, sigma) -> x̂0`` (VE coordinates).

    With any schedule (α, σ), the network used is net'(x, t) = D(x/α_t, σ_t/α_t) with prediction
    x0 (docs/math.md §2). The default schedule is EDM's (α = 1, σ = t ∈ [0.002, 80]). A raw EDM network F
    can be wrapped first with :class:`EDMPrecond`. A condition reaches D as a third positional
    argument, or as the keyword ``cond_key``; keyword conditions (guidance's ``cond_key``, a dict
    condition) reach it as keywords.
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
    k-diffusion wrappers expose ``sigma_min`` / ``sigma_max``, which are used when present). With a
    ``schedule``, ``sigma_min`` / ``sigma_max`` are refused (the schedule fixes the range), and a
    schedule whose σ/α leaves the model's own range is warned of."""
    own = {k: getattr(model, k, None) for k in ("sigma_min", "sigma_max")}
    if schedule is None:
        lo = sigma_min if sigma_min is not None else own["sigma_min"] if own["sigma_min"] is not None else 0.002
        hi = sigma_max if sigma_max is not None else own["sigma_max"] if own["sigma_max"] is not None else 80.0
        try:
            schedule = EDMSchedule(float(lo), float(hi))
        except ValueError as e:
            read = [k for k, given in (("sigma_min", sigma_min), ("sigma_max", sigma_max)) if given is None
                    and own[k] is not None]
            if not read:
                raise
            raise ValueError(f"{e} ({' and '.join(f'model.{k} = {own[k]!r}' for k in read)}, read from the model, "
                             f"do not bound a schedule): pass sigma_min= and sigma_max= (EDM samples over 0.002 to "
                             f"80), or a schedule") from None
    else:
        if sigma_min is not None or sigma_max is not None:
            raise ValueError("sigma_min / sigma_max set the range of the EDMSchedule made when no schedule is given; "
                             "with schedule=..., the schedule fixes it: drop them, or drop the schedule")
        schedule = make_schedule(schedule)
        _warn_outside(schedule, own)
    return from_edm(model, schedule, shape=shape, cond_key=cond_key, net_dtype=net_dtype)


def _warn_outside(schedule: Schedule, own: dict):
    """Warn where the schedule's σ/α (the σ the model is called at) leaves the model's sigma_min/sigma_max
    (its σ/α range)."""
    t = torch.tensor([schedule.t_min, schedule.t_max], dtype=torch.float64)
    lo, hi = (float(v) for v in schedule.sigma(t) / schedule.alpha(t))
    out = [f"{lo:.4g} below sigma_min = {own['sigma_min']:g}" if own["sigma_min"] is not None
           and lo < float(own["sigma_min"]) * (1 - 1e-6) else "",
           f"{hi:.4g} above sigma_max = {own['sigma_max']:g}" if own["sigma_max"] is not None
           and hi > float(own["sigma_max"]) * (1 + 1e-6) else ""]
    out = [o for o in out if o]
    if out:
        warnings.warn(f"the schedule calls the model at σ from {lo:.4g} to {hi:.4g}, {' and '.join(out)} of the "
                      f"model: outside the range it was trained on; give a schedule inside it, or none (an "
                      f"EDMSchedule over the model's range)", UserWarning, stacklevel=caller_stacklevel())


# --- score networks and plain callables ------------------------------------------------------
def from_score_sde(score_fn, schedule="vp", *, time_label="t", shape=None, net_dtype=None) -> Denoiser:
    """A Denoiser for a score_sde-style score function ``s(x, t) ≈ ∇log p_t(x)`` (prediction
    ``score``), continuous time t by default (``time_label`` as in :class:`Denoiser`).

    References: Song et al., arXiv:2011.13456.
    """
    return Denoiser(score_fn, schedule, prediction="score", time_label=time_label, net_dtype=net_dtype, shape=shape)


class _FlowMatchingVelocity(torch.nn.Module):
    """``net(x, τ) = −u(x, τ, **extras)``: flow_matching's dx/dτ as diffsolve's dx/dt, t = 1 − τ (the
    label the Denoiser passes is τ)."""

    def __init__(self, u, extras: dict, cond_key: str | None = None):
        super().__init__()
        self.u, self.extras, self.cond_key = u, dict(extras), cond_key
        self.run_rows = None  # the rows x holds (Denoiser.at_rows): per-sample extras follow them

    def forward(self, x: Tensor, tau: Tensor, cond=None, **conditions) -> Tensor:
        if _one_time(tau):  # one time for every row: 0-d, as flow_matching's ODESolver passes it
            tau = tau.reshape(-1)[0]
        args, kwargs = call_conditions(self.extras, self.run_rows, cond, self.cond_key, conditions)
        with rows_noted(kwargs, x.shape[0]):
            out = self.u(x, tau, *args, **kwargs)
        return -out if isinstance(out, Tensor) else out  # anything else: the Denoiser names it


def from_flow_matching(velocity_model, *, shape=None, t_min: float = 1e-3, net_dtype=None,
                       cond_key: str | None = None, **model_extras) -> Denoiser:
    r"""A Denoiser for a velocity network in Meta's ``flow_matching`` convention: ``u(x, τ) = dx/dτ``
    along x_τ = τ x_1 + (1 − τ) x_0 with noise x_0 at τ = 0 and data x_1 at τ = 1 (its
    ``CondOTProbPath``, the ``velocity_model`` its ``ODESolver`` integrates from 0 to 1).

    diffsolve's flow time runs the other way, t = σ = 1 − τ (:class:`~diffsolve.FlowSchedule`, the
    diffusers convention), and its velocity is dx/dt = −u: the network used is
    net(x, t) = −u(x, 1 − t), with the time label τ = 1 − t. The schedule starts from pure noise
    (t_max = 1 − 10⁻⁹, τ = 10⁻⁹) and ends at ``t_min`` (τ = 1 − t_min; the final denoise, x̂0 at
    t_min, stands for the last stretch to τ = 1). ``model_extras`` are passed to every call
    (flow_matching's ``**model_extras``, e.g. a class label; a tensor with a row per sample follows the
    rows a call holds). A condition of guidance (:class:`~diffsolve.CFGDenoiser`) reaches ``u`` as a third
    positional argument, or as the keyword ``cond_key``, or as its own keywords. τ reaches ``u`` as a
    0-d tensor when the run gives every row one time (fixed steps, a shared adaptive step; as
    flow_matching's ``ODESolver`` passes it), and as a (B,) tensor under per-sample adaptive steps (the
    likelihood's default), whose rows' times part after the first step.
    Calling ``u(x, τ)`` directly as a diffsolve ``velocity`` network would integrate time backwards and
    give wrong samples without an error.

    References: Lipman et al., Flow Matching Guide and Code, arXiv:2412.06264.
    """
    if not callable(velocity_model):
        raise TypeError(f"velocity_model must be callable, got {type(velocity_model).__name__}")
    from .schedules import FlowSchedule

    schedule = FlowSchedule(t_min=t_min, t_max=1.0 - 1e-9)
    return Denoiser(_FlowMatchingVelocity(velocity_model, model_extras, cond_key), schedule, prediction="velocity",
                    time_label=lambda t: 1.0 - t, net_dtype=net_dtype, shape=shape)


class _AzulaVE(torch.nn.Module):
    r"""``D(y; s)`` of an azula denoiser: the mean of its posterior at x_t = α_t y, at the azula time t
    where σ_t/α_t = s (found by bisection in float64: azula's σ/α rises with t)."""

    _BISECTIONS = 64  # halves [0, 1] to below float64's resolution

    def __init__(self, denoiser):
        super().__init__()
        self.denoiser = denoiser

    @property
    def calling_dtype(self) -> torch.dtype | None:
        """The dtype to call it in: its weights', raised to float32, as azula's samplers call it (its
        denoisers cast the backbone's input themselves); None for one without weights (the caller's)."""
        if not isinstance(self.denoiser, torch.nn.Module):
            return None
        w = next((p.dtype for p in self.denoiser.parameters() if p.is_floating_point()), None)
        return None if w is None else torch.promote_types(w, torch.float32)

    def azula_time(self, s: Tensor) -> Tensor:
        """The azula times (float64, shape of s) where σ_t/α_t = s. Differentiable in s (the implicit
        function's derivative dt/d log s = 1 / (d log(σ/α)/dt), for tune_solver's time shifts): the value is
        the bisection's."""
        target = s.to(torch.float64).log()
        lo, hi = torch.zeros_like(target).detach(), torch.ones_like(target).detach()
        for _ in range(self._BISECTIONS):
            mid = (lo + hi) / 2
            a, sig = self.denoiser.schedule(mid)
            up = (sig / a).log() < target.detach()
            lo, hi = torch.where(up, mid, lo), torch.where(up, hi, mid)
        t = (lo + hi) / 2
        if not target.requires_grad:
            return t
        with torch.enable_grad():
            tt = t.clone().requires_grad_()
            a, sig = self.denoiser.schedule(tt)
            (slope,) = torch.autograd.grad((sig / a).log().sum(), tt)
        return t + (target - target.detach()) / slope.detach()

    def forward(self, y: Tensor, s: Tensor, *args, **kwargs) -> Tensor:
        one = _one_time(s)  # one time for every row: 0-d, as azula's samplers pass it
        t = self.azula_time(s.reshape(-1)[:1] if one else s.reshape(-1))
        alpha = self.denoiser.schedule(t)[0].to(device=y.device, dtype=y.dtype).reshape(-1, *([1] * (y.dim() - 1)))
        t = t.to(device=y.device, dtype=y.dtype)
        try:
            out = self.denoiser(alpha * y, t.reshape(()) if one else t, *args, **kwargs)
        except Exception as e:
            if not one:
                _add_note(e, "diffsolve: the rows were given their own times (per-sample adaptive steps); if "
                             "this azula denoiser takes one time for all rows (as its GaussianDenoiser), it needs "
                             "them shared: log_likelihood(..., per_sample=False) or a fixed-step solver")
            raise
        mean = None if isinstance(out, Tensor) else getattr(out, "mean", None)
        if not isinstance(mean, Tensor):
            raise TypeError(f"an azula denoiser returns a posterior whose .mean is x̂0 (azula.denoise.Denoiser); this "
                            f"one returned {type(out).__name__}: wrap a network that returns x̂0 itself, D(x_t/α, σ/α), "
                            f"with diffsolve.adapters.from_edm")
        return mean


def _one_time(t: Tensor) -> bool:
    """Whether a time tensor gives one time for every row (0-d, one element, or a broadcast row): read off its
    layout, not its values, so no network call waits on the device (per-sample adaptive steps give (B,)
    times even where they coincide)."""
    return t.dim() == 0 or t.numel() == 1 or (t.dim() == 1 and t.stride(0) == 0)


def from_azula(denoiser, schedule=None, *, shape=None, cond_key: str | None = None, net_dtype=None) -> Denoiser:
    r"""A Denoiser for an azula denoiser (``azula.denoise.Denoiser``: ``denoiser(x_t, t, **kwargs)``
    returns a posterior whose ``mean`` is x̂0, at azula's time t ∈ [0, 1], noise rising with t, on its
    ``denoiser.schedule`` t ↦ (α_t, σ_t)).

    azula's x̂0 at (x_t, t) depends on the state only through y = x_t/α_t and s = σ_t/α_t, so it is
    an EDM denoiser D(y; s) = mean(α_t y, t(s)) (:func:`from_edm`), with t(s) found by bisection on
    azula's own σ/α; it runs on any diffsolve ``schedule``, by default an :class:`EDMSchedule` over
    azula's s range at t = 0 and 1 (1e-3 to 1e3 for its default schedules). Conditions reach the
    denoiser as :func:`from_edm` passes them (azula takes keywords: ``cond_key`` or dict conditions).
    The time reaches the denoiser as a 0-d tensor where the run gives every row one time (fixed steps, a
    shared adaptive step; as azula's samplers pass it), else as (B,). A denoiser that takes one time for
    all rows only (azula's ``GaussianDenoiser``) runs where every row is at one time: fixed-step sampling
    and tuning, ``log_likelihood(..., per_sample=False)``; per-sample adaptive steps (the likelihood's
    default, ``tune_steps``' reference solves) give each row its own time, and its error then says so.
    t(s) is differentiable (the implicit function's derivative), so :func:`~diffsolve.tune_solver` fits
    its time shifts through it.

    References: azula (github.com/probabilists/azula); Karras et al., EDM, arXiv:2206.00364.
    """
    if not callable(denoiser) or not callable(getattr(denoiser, "schedule", None)):
        raise TypeError(f"denoiser must be an azula denoiser with a callable .schedule (t -> (alpha, sigma)), got "
                        f"{type(denoiser).__name__}")
    a, sig = denoiser.schedule(torch.tensor([0.0, 1.0], dtype=torch.float64))
    s_lo, s_hi = (float(v) for v in sig / a)
    if schedule is None:
        schedule = EDMSchedule(s_lo, s_hi)
    else:  # beyond azula's own range its time would stop at 0 or 1
        schedule = make_schedule(schedule)
        _warn_outside(schedule, {"sigma_min": s_lo, "sigma_max": s_hi})
    return from_edm(_AzulaVE(denoiser), schedule, shape=shape, cond_key=cond_key, net_dtype=net_dtype)


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
