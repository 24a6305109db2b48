r"""Any network is a denoiser: one conversion table between prediction types (docs/math.md (8.1)).

Every prediction type is an affine function of the state x and the clean-data estimate x̂0,

    y = A_t x + B_t x̂0,

with scalar coefficients given by the schedule (α, σ and their time derivatives α', σ'):

    =========  ======================  =============================
    type       A_t                     B_t
    =========  ======================  =============================
    eps        1/σ                     −α/σ
    x0         0                       1
    score      −1/σ²                   α/σ²
    v          α/σ                     −(α² + σ²)/σ
    velocity   σ'/σ                    α' − σ'α/σ
    =========  ======================  =============================

so converting from type p to type q is x̂0 = (y_p − A_p x)/B_p followed by y_q = A_q x + B_q x̂0.
B_t never vanishes inside the schedule's range (for ``velocity``, B_t = α dλ/dt < 0), so each
type converts to every other exactly. This table is the only place in diffsolve where the
prediction type matters; solvers ask for ``x0``, ``eps`` or ``score`` and never branch on it.

A denoiser may carry a ``threshold`` T (x̂0 clipping or dynamic thresholding,
:mod:`diffsolve.thresholding`): its x̂0 is T(x̂0) and every other prediction comes from T(x̂0)
through the same table (docs/math.md (25.3)), so solvers do not branch on that either.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable

import torch
from torch import Tensor

from ._numbers import _show, is_integer
from .schedules import Schedule, make_schedule

__all__ = ["Denoiser", "PREDICTIONS", "TIME_LABELS", "NonFiniteError"]


def _table(a, s, da, ds):
    return {
        "eps": (1.0 / s, -a / s),
        "x0": (torch.zeros_like(a), torch.ones_like(a)),
        "score": (-1.0 / (s * s), a / (s * s)),
        "v": (a / s, -(a * a + s * s) / s),
        "velocity": (ds / s, da - ds * a / s),
    }


PREDICTIONS = ("eps", "x0", "score", "v", "velocity")
_ALIASES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v", "flow": "velocity", "x_0": "x0"}


def _canonical(kind: str) -> str:
    k = _ALIASES.get(kind, kind)
    if k not in PREDICTIONS:
        raise ValueError(
            f"unknown prediction type {kind!r}; valid types: {', '.join(PREDICTIONS)} "
            f"(aliases: {', '.join(f'{a}={b}' for a, b in _ALIASES.items())})"
        )
    return k


def _label_sigma_over_alpha(schedule):
    return lambda t: (schedule.log_sigma(t) - schedule.log_alpha(t)).exp()


# The network's own time input, as a function of solver time t (float64).
TIME_LABELS: dict[str, Callable[[Schedule], Callable[[Tensor], Tensor]]] = {
    "default": lambda sch: sch.time_label,  # t, or the integer timestep for DDPMSchedule
    "t": lambda sch: (lambda t: t),
    "1000t": lambda sch: (lambda t: 1000.0 * t),
    "sigma": lambda sch: sch.sigma,
    "sigma_over_alpha": _label_sigma_over_alpha,  # EDM's σ̃ = σ/α = e^{−λ}
    "c_noise": lambda sch: (lambda t: 0.25 * torch.log(_label_sigma_over_alpha(sch)(t))),  # EDM ¼ log σ̃
    "log_snr": lambda sch: sch.log_snr,
    # a network that looks its time embedding up by index: the training timestep as int64 where it is whole, a
    # time between trained timesteps refused ("whole"); or the nearest whole timestep, an approximation ("index")
    "whole": lambda sch: (lambda t: _whole_timestep(sch.time_label(t))),
    "index": lambda sch: (lambda t: torch.round(sch.time_label(t)).to(torch.int64)),
}


def _whole_timestep(label: Tensor) -> Tensor:
    """``label`` as int64 where every entry is a whole training timestep; else a ValueError naming the way out."""
    whole = torch.round(label)
    if bool(((label - whole).abs() > 1e-6 * whole.abs().clamp(min=1.0)).any()):
        k = label[(label - whole).abs().argmax()] if label.dim() else label
        raise ValueError(f"this network looks its time embedding up by index (whole training timesteps), and the "
                         f"run evaluates it at timestep {float(k):.6g}, between two: sample on whole timesteps (a grid "
                         f"of the scheduler's own, e.g. grid=den.schedule.t_of_timestep(timesteps), or "
                         f"DiffsolveScheduler(grid='diffusers') in a pipeline), or give time_label='index' to round "
                         f"each time to the nearest timestep (an approximation)")
    return whole.to(torch.int64)


class NonFiniteError(FloatingPointError):
    """The network returned NaN or Inf."""


def _is_dtype_mismatch(e: BaseException) -> bool:
    """Whether torch's error ``e`` reads as a dtype mismatch ("... same dtype", "expected scalar type
    ...", "Input type (double) and bias type (float) ..."), not a device mismatch."""
    msg = str(e).lower()
    if "device" in msg or "cuda" in msg or "mps" in msg:  # e.g. "Input type (torch.FloatTensor) and weight type
        return False                                       # (torch.cuda.FloatTensor) should be the same"
    return any(w in msg for w in ("dtype", "scalar type", "input type ("))


def check_net_dtype(dtype, name: str = "net_dtype", allow_none: bool = True) -> torch.dtype | None:
    """The dtype a network runs in: any real floating torch.dtype (half precision included)."""
    if dtype is None and allow_none:
        return None
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating torch.dtype (torch.float32, torch.float16, torch.bfloat16, "
                        f"torch.float64), got {_show(dtype)}")
    return dtype


def _first_weight(net: torch.nn.Module) -> tuple:
    """(net, the module holding its first floating parameter, that parameter's name, the parameter); the
    last three None when it has none."""
    for module in net.modules():
        for name, p in module._parameters.items():
            if p is not None and p.is_floating_point():
                return net, module, name, p
    return net, torch.nn.Module(), None, None  # (an owner whose lookup of None gives None: cached as is)


def _add_note(e: BaseException, note: str):
    """``e.add_note(note)`` (Python 3.11+); on 3.10 the note is appended to the message."""
    if hasattr(e, "add_note"):
        e.add_note(note)
    elif e.args and isinstance(e.args[0], str):
        e.args = (f"{e.args[0]}\n{note}",) + e.args[1:]


class Denoiser(torch.nn.Module):
    r"""Wrap a network ``net(x, label) -> y`` whose output ``y`` is one of :data:`PREDICTIONS`.

    Args:
        net: callable taking ``x`` of shape ``(B, *shape)`` in its own dtype and a time label of
            shape ``(B,)``; it must return a tensor of the same shape as ``x``.
        schedule: a :class:`~diffsolve.schedules.Schedule` (or its name).
        prediction: ``"eps"``, ``"x0"``, ``"score"``, ``"v"`` or ``"velocity"``.
        time_label: how solver time t becomes the network's time input: a name in
            :data:`TIME_LABELS` or a callable ``t -> label`` (t: a float64 scalar or (B,) tensor; the
            label: a scalar or (B,), float, or integer for a network that looks timesteps up by
            index). The network gets a (B,) label: integer labels as they are, floating ones in
            float64 for a float64 network and float32 otherwise (half-precision networks included, as
            diffusers passes timesteps: cast it inside the network if it must match x).
        net_dtype: dtype the network runs in; defaults to a module's ``calling_dtype`` where it has
            one (:class:`~diffsolve.adapters.EDMPrecond`), else the dtype of its first floating
            parameter (read when used, so ``net.double()`` after wrapping is followed), or for a
            callable without parameters to the dtype of the caller's ``x``
            (when the library draws x, the run's ``dtype=``, else torch's default dtype;
            :meth:`calling_in`), whatever the
            solver state's. Arithmetic around the network (the conversions) stays in the state's
            dtype.
        shape: optional shape of one sample (without batch), used by ``sample`` when no
            shape is given.
        threshold: optional map x̂0 ↦ T(x̂0) applied to the network's x̂0 before any other
            prediction is derived from it (docs/math.md (25.3)): a
            :class:`~diffsolve.thresholding.Clip`, a :class:`~diffsolve.thresholding.DynamicThreshold`
            or any callable keeping the shape; ``None`` (default): none. Settable later
            (``denoiser.threshold = ...``).

    Methods ``eps``, ``x0``, ``score``, ``v``, ``velocity`` take ``x`` of shape ``(B, *shape)`` and
    ``t`` a scalar or a ``(B,)`` tensor; each makes one network call, counted in ``nfe``. So does
    ``combine(x, t, a, b, kind)``, a·x + b·(prediction ``kind``), the whole of a first-order step.
    """

    # how a non-finite output is named in its error (a guided denoiser's output is a combination of two)
    _returned = "the network returned"
    _nfe_mark = 0  # (a Denoiser pickled before one_run existed has no instance value)

    @property
    def net_dtype(self) -> torch.dtype | None:
        """The dtype the network runs in: as declared, else the module's ``calling_dtype`` where it has one,
        else its first floating parameter's (now), else None."""
        if self._declared_dtype is not None or not isinstance(self.net, torch.nn.Module):
            return self._declared_dtype
        calling = calling_dtype(self.net)
        if calling is not None:
            return calling
        # the first floating weight and where it sits: net.double() / .to() convert it in place; a weight
        # replaced (load_state_dict(assign=True), a new Parameter) is found again
        first = self.__dict__.get("_first_weight")
        if first is None or first[0] is not self.net or first[1]._parameters.get(first[2]) is not first[3]:
            first = self.__dict__["_first_weight"] = _first_weight(self.net)
        return None if first[3] is None else first[3].dtype

    @net_dtype.setter
    def net_dtype(self, dtype: torch.dtype | None):
        self._declared_dtype = check_net_dtype(dtype)

    # schedule, prediction and time label fix the memoised coefficients and labels: setting one clears them
    # (and a named time label follows a new schedule)
    @property
    def schedule(self) -> Schedule:
        return self._schedule

    @schedule.setter
    def schedule(self, schedule):
        schedule = self.__dict__["_schedule"] = make_schedule(schedule)
        follow = getattr(getattr(self, "net", None), "follow_schedule", None)
        if follow is not None:  # a network written in another parametrisation (adapters.VECoordinates)
            follow(schedule)
        if "_label_spec" in self.__dict__:
            self.time_label = self._label_spec

    @property
    def prediction(self) -> str:
        """What the network predicts: one of :data:`PREDICTIONS` (an alias given is stored canonical)."""
        return self._prediction

    @prediction.setter
    def prediction(self, kind: str):
        self.__dict__["_prediction"] = _canonical(kind)
        self._clear_caches()

    @property
    def time_label(self) -> Callable[[Tensor], Tensor]:
        """The map from solver time t (float64) to the network's time input."""
        return self._time_label

    @time_label.setter
    def time_label(self, spec):
        if callable(spec):
            fn = spec
        elif isinstance(spec, str) and spec in TIME_LABELS:
            fn = TIME_LABELS[spec](self.schedule)
        else:
            raise ValueError(f"unknown time_label {spec!r}; valid: {', '.join(TIME_LABELS)} or a callable")
        self.__dict__["_label_spec"], self.__dict__["_time_label"] = spec, fn
        self._modules.pop("time_label", None)
        if isinstance(fn, torch.nn.Module):  # a label with weights is a submodule: .to(), state_dict, parameters
            self._modules["time_label"] = fn
        self._clear_caches()

    def __setattr__(self, name, value):
        if name in ("schedule", "prediction", "time_label"):  # through the properties, whatever the value
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def _clear_caches(self):
        self.__dict__["_coef_cache"], self.__dict__["_label_cache"] = {}, {}

    def __init__(self, net, schedule, prediction: str = "eps", time_label="default",
                 net_dtype: torch.dtype | None = None, shape=None, threshold=None):
        super().__init__()
        if not callable(net):
            raise TypeError(f"net must be callable, got {type(net).__name__}")
        if threshold is not None and not callable(threshold):
            raise TypeError(f"threshold must be a callable x0 -> x0 (diffsolve.thresholding.Clip or "
                            f"DynamicThreshold) or None, got {type(threshold).__name__}")
        self.threshold = threshold
        self.net = net
        self.schedule = schedule
        self.prediction = prediction
        self.time_label = time_label
        self.net_dtype = net_dtype  # None: a module's is read from its parameters at each use (property)
        if shape is not None and (not isinstance(shape, (tuple, list, torch.Size))
                                  or not all(is_integer(n) and n > 0 for n in shape)):  # numpy integers too
            raise TypeError(f"shape must be the shape of one sample, a tuple of positive integers such as (3, 32, 32), "
                            f"got {shape!r}")
        self.shape = tuple(int(n) for n in shape) if shape is not None else None
        self.nfe = 0
        self._nfe_mark = 0  # nfe when the current run began (one_run): error messages number its calls from 1
        # where the integration loop is, for error messages: a string, or the loop's cheap
        # (solver name, step index, number of steps, host times) tuple, formatted only when needed
        self._where: list = [""]
        self._pending: list[tuple[Tensor, str]] = []
        # the time of an evaluation to answer with prior_output instead of a network call, once
        # (armed by the loop for the analytic first step, docs/math.md §27)
        self._analytic_at: float | None = None
        # the dtype a network of unknown dtype (net_dtype None) is called in during a run, set by the
        # entry points from the caller's data (calling_in); None: the state's dtype
        self._call_dtype: torch.dtype | None = None
        # (index (n,), batch) while a solve evaluates the rows ``index`` of its batch (at_rows)
        self._rows: tuple[Tensor, int] | None = None

    # --- coefficients ------------------------------------------------------------------
    def coefficients(self, t, kind: str, like: Tensor):
        """(A_t, B_t) of prediction type ``kind`` at time(s) t: Python floats (float64 arithmetic)
        for one host-scalar t, else tensors shaped to broadcast with ``like``."""
        kind = _canonical(kind)
        scalar = _scalar_time(t)
        if scalar is not None:
            # scalar times repeat (every solver stage, every sample batch): memoise them
            hit = self._coef_cache.get((kind, scalar))
            if hit is None:
                t = self.schedule.check_time(t)
                hit = tuple(float(c) for c in self._coefficients(t, kind))
                if len(self._coef_cache) > 4096:
                    self._coef_cache.clear()
                self._coef_cache[(kind, scalar)] = hit
            return hit
        t = self.schedule.check_time(t)
        if t.dim() > 0:
            t = t.to(like.device).reshape(-1, *([1] * (like.dim() - 1)))
        A, B = self._coefficients(t, kind)
        return A.to(like.dtype), B.to(like.dtype)

    def prime(self, t: Tensor, like: Tensor):
        """Fill the memo caches (conversion coefficients, time labels) for every time of a grid in
        one vectorised pass, so the loop over the grid only looks them up. ``like``: the state
        (its batch size, dtype and device key the caches). The values are those a per-call
        computation gives, up to the last bit of vectorised arithmetic."""
        t = self.schedule.check_time(torch.as_tensor(t, dtype=torch.float64).detach().cpu().reshape(-1))
        times = t.tolist()
        batch = like.shape[0]
        net_dtype, label_dtype = self._dtypes(like.dtype)
        if all((s, batch, like.device, label_dtype) in self._label_cache
               and (self.prediction, s) in self._coef_cache for s in times):
            return  # a grid seen before (e.g. the next batch)
        if len(self._label_cache) + len(times) > 4096:
            self._label_cache.clear()
        try:  # a user's label function may not take a vector: then labels are built per call (and checked)
            raw = self.time_label(t)
            # one label for a vector of times: the function reduced its input (a max, a float()) -> per call
            labels = None if torch.as_tensor(raw).dim() == 0 and len(times) > 1 else _as_label(
                raw, like.device, label_dtype, len(times))
        except Exception:
            labels = None
        if labels is not None:
            for s, lab in zip(times, labels):
                self._label_cache[(s, batch, like.device, label_dtype)] = lab.expand(batch)
        if len(self._coef_cache) + 4 * len(times) > 4096:
            self._coef_cache.clear()
        table = self._coefficients(t, tabulated=self.schedule.tabulate(t))
        for kind in dict.fromkeys((self.prediction, "x0", "eps", "score")):
            A, B = (c.expand(len(times)).tolist() for c in table[kind])
            self._coef_cache.update(((kind, s), (a, b)) for s, a, b in zip(times, A, B))

    def _coefficients(self, t: Tensor, kind: str | None = None, tabulated=None):
        """(A, B) of ``kind`` at t, or the table of every kind (``kind=None``); ``tabulated``: the
        schedule's :class:`~diffsolve.schedules.GridTable` at t when the caller has it."""
        _, la, ls, dla, dls = tabulated if tabulated is not None else (t, *self.schedule._table(t))
        a, s = la.exp(), ls.exp()
        table = _table(a, s, a * dla, s * dls)
        return table if kind is None else table[kind]

    def convert(self, y: Tensor, x: Tensor, t, source: str, target: str) -> Tensor:
        """Convert a prediction ``y`` of type ``source`` at (x, t) into type ``target`` (docs/math.md (8.1))."""
        source, target = _canonical(source), _canonical(target)
        if source == target:
            return y
        A_p, B_p = self.coefficients(t, source, x)
        if isinstance(A_p, float):  # one host-scalar time: fused passes over the data
            # (in place only on tensors created here: y may be referenced by the caller)
            if B_p != 1.0:
                x0 = y * (1.0 / B_p)
                if A_p != 0.0:
                    x0.add_(x, alpha=-A_p / B_p)
            else:
                x0 = y if A_p == 0.0 else torch.add(y, x, alpha=-A_p)
            if target == "x0":
                return x0
            A_q, B_q = self.coefficients(t, target, x)
            out = x0 * B_q
            return out.add_(x, alpha=A_q) if A_q != 0.0 else out
        x0 = (y - A_p * x) / B_p
        if target == "x0":
            return x0
        A_q, B_q = self.coefficients(t, target, x)
        return A_q * x + B_q * x0

    # --- network call ------------------------------------------------------------------
    def raw(self, x: Tensor, t) -> Tensor:
        """The network's own output at (x, t), in x's dtype. One counted evaluation."""
        batch = x.shape[0]
        net_dtype, label_dtype = self._dtypes(x.dtype)
        scalar = _scalar_time(t)
        if self._analytic_at is not None and scalar == self._analytic_at:  # the analytic first step: no call
            self._analytic_at = None
            return self.prior_output(x, scalar)
        key = (scalar, batch, x.device, label_dtype)
        label = self._label_cache.get(key) if scalar is not None else None
        if label is None:  # validate and build the label; scalar times are memoised (fixed grids repeat them)
            t = self.schedule.check_time(t)
            if t.dim() > 1 or (t.dim() == 1 and t.shape[0] != batch):
                raise ValueError(f"t must be a scalar or have shape ({batch},), got {tuple(t.shape)}")
            label = _as_label(self.time_label(t), x.device, label_dtype, batch)
            if scalar is not None:
                if len(self._label_cache) > 4096:
                    self._label_cache.clear()
                self._label_cache[key] = label
        # the network gets the solver's state itself when it computes in the state's dtype: its version counter
        # tells whether the network wrote into it (x *= c), which would corrupt the state (inference tensors
        # keep no counter)
        version = None if x.dtype != net_dtype or x.is_inference() else x._version
        try:
            out = self.net(x if x.dtype == net_dtype else x.to(net_dtype), label)
        except Exception as e:
            _add_note(e, f"diffsolve: raised by the network at {self._here(t, ahead=1)}, "
                         f"called as net(x, label) with x of shape {tuple(x.shape)} and dtype {net_dtype}")
            if "in-place" in str(e) or "inplace" in str(e):
                _add_note(e, f"diffsolve: {_IN_PLACE}")
            index = "indices" in str(e) and ("Long" in str(e) or "Int" in str(e))  # an embedding looked up by t
            mismatch = not index and _is_dtype_mismatch(e)
            if label.dtype != net_dtype and label.is_floating_point() and mismatch:
                _add_note(e, f"diffsolve: the time label is {label.dtype} (a half-precision network gets float32 "
                             f"labels, as diffusers passes timesteps; labels keep the precision of the time): "
                             f"cast it inside the network, e.g. label.to(x.dtype)")
            inferred = (self._declared_dtype is None and isinstance(self.net, torch.nn.Module)
                        and calling_dtype(self.net) is None and self.__dict__.get("_first_weight") is not None)
            if self.net_dtype is not None and inferred and mismatch:
                _, owner, pname, _ = self.__dict__["_first_weight"]
                _add_note(e, f"diffsolve: the network's dtype, {net_dtype}, was read off its first floating "
                             f"parameter ({type(owner).__name__}.{pname}); if its weights are mostly in another "
                             f"dtype (a float32 norm layer first in a bfloat16 network), declare it: "
                             f"Denoiser(..., net_dtype=torch.bfloat16), for instance")
            if self.net_dtype is None and mismatch:
                # a half dtype torch names beside this one, else the other full precision
                named = [d for word, d in (("BFloat16", torch.bfloat16), ("Half", torch.float16))
                         if word in str(e) and d != net_dtype]
                other = named[0] if named else torch.float64 if net_dtype == torch.float32 else torch.float32
                how = ("that of the x given, or torch's default dtype when the library drew x"
                       if self._call_dtype is not None else "that of the solver state")
                _add_note(e, f"diffsolve: its dtype is not declared (a plain function), so it was taken to be "
                             f"{how}. Declare the dtype it computes in (Denoiser(..., net_dtype={other}), for "
                             f"instance), or pass x in that dtype")
            if index:
                _add_note(e, f"diffsolve: the network looks its time embedding up by index, so it takes whole "
                             f"training timesteps, and this label is {label.dtype} "
                             f"({'fractional' if bool((label != label.round()).any()) else 'whole'}): give it a "
                             f"time_label that rounds to int64 (time_label='index', an approximation), or in a "
                             f"pipeline DiffsolveScheduler(grid='diffusers') (whole timesteps, int64)")
            raise
        self.__dict__["nfe"] += 1  # (nn.Module.__setattr__ costs more than the increment)
        if version is not None and x._version != version:
            raise RuntimeError(f"the network changed its input x in place at {self._here(t)}; "
                               f"{_IN_PLACE}")
        if not isinstance(out, Tensor):
            raise TypeError(f"the network returned {_what(out)}, not a tensor; {_unwrap_hint(out)}")
        if out.shape != x.shape or not out.is_floating_point():
            got = tuple(out.shape)
            if got == tuple(x.shape):  # complex, integer or boolean values (a real float is the only prediction)
                name = type(self.net).__name__ if isinstance(self.net, torch.nn.Module) else getattr(
                    self.net, "__qualname__", type(self.net).__name__)
                raise TypeError(f"the network {name} returned {out.dtype} values for input of dtype {x.dtype}; a "
                                f"denoiser's output must be real floating point: return a float tensor"
                                f"{' (out.real if the imaginary part is zero)' if out.is_complex() else ''}")
            raise ValueError(f"the network returned shape {got} for input of shape {tuple(x.shape)}; "
                             f"a denoiser's output must have the shape of its input")
        self._check_finite(out, t, self._returned)
        return out if out.dtype == x.dtype else out.to(x.dtype)

    def _dtypes(self, state_dtype: torch.dtype) -> tuple[torch.dtype, torch.dtype]:
        """The dtype the network is called in and that of its time label, for a state of ``state_dtype``."""
        net_dtype = self.net_dtype or self._call_dtype or state_dtype
        return net_dtype, net_dtype if net_dtype in (torch.float32, torch.float64) else torch.float32

    @contextmanager
    def calling_in(self, dtype: torch.dtype | None):
        """Within the block, a network of unknown dtype (``net_dtype`` None: a plain function) is called
        in ``dtype`` — the entry points pass the dtype of the caller's data — or in torch's default
        dtype (None: the library draws x, or dequantizes integer data), whatever the dtype of the
        solver state; a declared ``net_dtype`` is unaffected. Outside such a block the network is
        called in the state's dtype. The outermost block decides: an entry point run inside another
        (the tuners' screening runs :func:`~diffsolve.sample` on float64 start points;
        :func:`~diffsolve.dataset_log_likelihood` runs :func:`~diffsolve.log_likelihood` on the
        float64 values of 8-bit data) keeps the dtype of the call the user made. (Like its ``nfe``
        counter, this makes a Denoiser an object for one thread at a time.)"""
        if self.net_dtype is not None or self._call_dtype is not None:
            yield self
            return
        floating = dtype is not None and dtype.is_floating_point
        self._call_dtype = dtype if floating else torch.get_default_dtype()
        try:
            yield self
        finally:
            self._call_dtype = None

    def _here(self, t, ahead: int = 0) -> str:
        """Where the network is called, for an error message: the call of this run (``ahead`` calls on), the
        loop's position, the time."""
        return _location(self.nfe + ahead - self._nfe_mark, self._where[0], t)

    @contextmanager
    def one_run(self):
        """Within the block a run (one solve) calls the network: the call numbers of error messages
        count from its start, not over the denoiser's life. ``nfe`` keeps counting every call."""
        outer, self._nfe_mark = self._nfe_mark, self.nfe
        try:
            yield self
        finally:
            self._nfe_mark = outer

    @contextmanager
    def at_rows(self, index: Tensor, batch: int):
        """Within the block the x given to the network holds the rows ``index`` (n,) of the run's batch
        of ``batch`` rows — per-sample step control evaluates the unfinished rows only, the likelihood
        copies rows for its probes — so a network that holds per-sample conditions (its ``run_rows``
        attribute: :class:`~diffsolve.CFGDenoiser`'s labels and scales, the fixed ``conditions`` of
        :func:`~diffsolve.adapters.from_diffusers`) takes the same rows of them (:func:`take_rows`)."""
        outer, self._rows = self._rows, (index, int(batch))
        sync = hasattr(self.net, "run_rows")
        if sync:
            self.net.run_rows = self._rows
        try:
            yield self
        finally:
            self._rows = outer
            if sync:
                self.net.run_rows = outer

    @property
    def where(self) -> str:
        return _format_where(self._where[0])

    @where.setter
    def where(self, value):
        self._where[0] = value

    def prior_output(self, x: Tensor, t: float) -> Tensor:
        r"""What the exact network of standard-normal data would return at (x, t), as this network's
        prediction type, in x's dtype; no network call, not counted in ``nfe``.

        For x0 ~ N(0, I) the posterior mean is x̂0 = α x / (α² + σ²) (docs/math.md (27.1)); near
        t_max, where α ≪ σ, every data distribution with mean near 0 and a bounded covariance is
        that close to it (the error is the data's mean plus O(α), (27.2)). The loop answers the first
        evaluation of a run with it when ``analytic_first_step`` is on.
        """
        tt = torch.tensor(float(t), dtype=torch.float64)
        a, s = float(self.schedule.alpha(tt)), float(self.schedule.sigma(tt))
        return self.convert(x * (a / (a * a + s * s)), x, tt, "x0", self.prediction)

    def _check_finite(self, out: Tensor, t: Tensor, what: str = "the network returned"):
        # NaN and ±Inf propagate through a sum: one pass over the output instead of isfinite().all()'s
        # several. On the host, a non-finite sum of finite values (overflow) is told apart by the
        # full check; on accelerators the sum accumulates in float64 and the check is deferred.
        # The location (call number, loop position, t) is formatted only for an error message.
        if out.device.type == "cpu":
            if not math.isfinite(float(out.detach().sum())) and not bool(torch.isfinite(out).all()):
                raise NonFiniteError(f"{what} NaN or Inf at {self._here(t)}")
        else:  # defer: one synchronisation in check_finite() instead of one per call
            where = (what, self.nfe - self._nfe_mark, self._where[0], t)  # this run's call number
            self._pending.append((torch.isfinite(out.sum(dtype=torch.float64)), where))

    def check_finite(self):
        """Raise for the first deferred non-finite network output (accelerators only)."""
        if self._pending and self._pending[0][0].device.type == "meta":  # data-less tensors: nothing to read
            self._pending = []
        if not self._pending:
            return
        flags = torch.stack([f for f, _ in self._pending]).cpu()
        locs = [m for _, m in self._pending]
        self._pending = []
        bad = (~flags).nonzero()
        if len(bad):
            what, *where = locs[int(bad[0])]
            raise NonFiniteError(f"{what} NaN or Inf at {_location(*where)}")

    def predict(self, x: Tensor, t, kind: str) -> Tensor:
        return self.from_output(self.raw(x, t), x, t, kind)

    def from_output(self, y: Tensor, x: Tensor, t, kind: str) -> Tensor:
        """The prediction of type ``kind`` at (x, t) given the network's own output ``y`` there: the
        conversion table, through the thresholded x̂0 when the denoiser has a ``threshold``
        (docs/math.md (8.1), (25.3)). No network call."""
        if self.threshold is None:
            return self.convert(y, x, t, self.prediction, kind)
        x0 = self.threshold(self.convert(y, x, t, self.prediction, "x0"))
        return self.convert(x0, x, t, "x0", kind)

    def eps(self, x, t):
        return self.predict(x, t, "eps")

    def x0(self, x, t):
        return self.predict(x, t, "x0")

    def score(self, x, t):
        return self.predict(x, t, "score")

    def combine(self, x: Tensor, t, a: float, b: float, kind: str = "x0") -> Tensor:
        """a·x + b·(the prediction ``kind`` at (x, t)), from one counted network call.

        The conversions are affine in (x, y), y the network's output (docs/math.md (8.1)): the
        prediction is P·x + Q·y with P = A_q − B_q A_p / B_p, Q = B_q / B_p (p the network's type,
        q = ``kind``), so for one host-scalar t and no ``threshold`` the result is
        (a + bP)·x + (bQ)·y in two passes over the data instead of four (a first-order step such
        as DDIM, x⁺ = a·x + b·x̂0). Otherwise it is formed from the prediction itself. ``a``, ``b``:
        Python floats.
        """
        y = self.raw(x, t)
        if self.threshold is None and _scalar_time(t) is not None:
            source, target = self.prediction, _canonical(kind)
            P, Q = 0.0, 1.0
            if source != target:
                A_p, B_p = self.coefficients(t, source, x)
                A_q, B_q = self.coefficients(t, target, x) if target != "x0" else (0.0, 1.0)
                P, Q = A_q - B_q * A_p / B_p, B_q / B_p
            out = y * (b * Q)
            c = a + b * P
            return out.add_(x, alpha=c) if c != 0.0 else out
        return self.from_output(y, x, t, kind).mul(b).add_(x, alpha=a)

    def v(self, x, t):
        return self.predict(x, t, "v")

    def velocity(self, x, t):
        return self.predict(x, t, "velocity")

    def forward(self, x, t):
        return self.x0(x, t)

    def reset_nfe(self) -> int:
        n, self.nfe = self.nfe, 0
        return n

    def extra_repr(self) -> str:
        extra = f", threshold={self.threshold!r}" if self.threshold is not None else ""
        return f"prediction={self.prediction!r}, schedule={self.schedule!r}" + extra


def _as_label(value, device, dtype: torch.dtype, batch: int) -> Tensor:
    """A time label function's output as the network's label: a (batch,) tensor on ``device``, floating labels
    in ``dtype``, integer ones (whole training timesteps for an index embedding) kept integer."""
    label = value if isinstance(value, Tensor) else torch.as_tensor(value)
    if label.is_complex() or label.dtype == torch.bool:
        raise TypeError(f"the time label function returned {label.dtype} values; it must return real numbers "
                        f"(floating, or integer training timesteps)")
    label = label.to(device=device, dtype=dtype if label.is_floating_point() else label.dtype)
    if label.dim() == 0:
        return label.expand(batch)
    if tuple(label.shape) != (batch,):
        raise ValueError(f"the time label function returned shape {tuple(label.shape)} for {batch} times; it must "
                         f"return one label per time (shape ({batch},)) or one for all (a scalar)")
    return label


_IN_PLACE = ("x is the solver's state, which a network must not write into (x *= c, x.add_(...), x[...] = ...): "
             "make those operations out of place (x = x * c), or wrap the network to pass it a copy, "
             "Denoiser(lambda x, t: net(x.clone(), t), ...)")


def _scalar_time(t) -> float | None:
    """t as a Python float if it is one host scalar (a memoisation key), else None."""
    if isinstance(t, (int, float)):
        return float(t)
    if isinstance(t, Tensor) and t.dim() == 0 and t.device.type == "cpu" and not t.requires_grad:
        return float(t)
    return None


def _format_where(w) -> str:
    if isinstance(w, tuple):
        name, i, n, times = w
        if i >= n:
            return f"final denoise at t={times[n]:.6g}"
        return f"step {i + 1}/{n} of {name}, from t={times[i]:.6g} to t={times[i + 1]:.6g}"
    return w


def calling_dtype(net) -> torch.dtype | None:
    """The dtype a module says it is called in (:attr:`diffsolve.adapters.EDMPrecond.calling_dtype`,
    passed on by the adapters and guidance), else None; a class attribute, cheap to look for."""
    return net.calling_dtype if hasattr(type(net), "calling_dtype") else None


def take_rows(c, run_rows: tuple[Tensor, int] | None):
    """The rows of a per-sample condition that x holds (:meth:`Denoiser.at_rows`): a tensor whose
    leading dimension is the run's batch is indexed by the rows, a dict condition entry by entry;
    anything else (a scalar, one row for all rows of a larger batch, a fixed tensor of another length) is
    returned as is."""
    if run_rows is None:
        return c
    index, batch = run_rows
    if isinstance(c, dict):
        return {k: take_rows(v, run_rows) for k, v in c.items()}
    if isinstance(c, Tensor) and c.dim() >= 1 and c.shape[0] == batch:
        if batch == 1:  # every row is that sample's (replicated for the likelihood's probes): a view, no copies
            return c.expand(len(index), *c.shape[1:])
        return c[index.to(c.device)]
    return c


@contextmanager
def rows_noted(conditions: dict, rows: int):
    """Within the block an adapter calls its network with keyword ``conditions`` on an x of ``rows`` rows; an
    error raised there gets a note naming every tensor condition whose rows are neither ``rows`` nor 1 (a
    per-sample condition for another batch). Not refused up front: a fixed tensor without a batch dimension
    (FLUX's ``img_ids``) is a legitimate condition of another length."""
    try:
        yield
    except Exception as e:
        odd = [f"{k} ({v.shape[0]} rows)" for k, v in _tensor_items(conditions)
               if v.dim() >= 1 and v.shape[0] not in (1, rows)]
        if odd:
            _add_note(e, f"diffsolve: the condition{'s' * (len(odd) > 1)} {', '.join(odd)} "
                         f"{'have' if len(odd) > 1 else 'has'} another number of rows than this call's x ({rows}): "
                         f"a per-sample condition needs one row per sample of the batch sampled (or one row for "
                         f"all samples)")
        raise


def _tensor_items(c, prefix: str = ""):
    """(name, tensor) of every tensor in a (nested) dict of conditions."""
    for k, v in c.items():
        name = f"{prefix}[{k!r}]" if prefix else str(k)
        if isinstance(v, dict):
            yield from _tensor_items(v, name)
        elif isinstance(v, Tensor):
            yield name, v


def call_conditions(fixed: dict, run_rows, cond, cond_key: str | None, per_call: dict) -> tuple[tuple, dict]:
    """(positional, keyword) conditions of one network call through an adapter: its ``fixed`` keyword
    conditions (the rows x holds, :func:`take_rows`), a positional ``cond`` (passed as keyword ``cond_key``,
    or positionally without one) and the ``per_call`` keywords (guidance's); a keyword given both as fixed
    and per call is an error."""
    kwargs = dict(take_rows(fixed, run_rows)) if fixed else {}
    args = ()
    if cond is not None:
        if cond_key is None:
            args = (cond,)
        else:
            per_call = {cond_key: cond, **per_call}
    clash = sorted(set(per_call) & set(kwargs))
    if clash:
        raise ValueError(f"condition(s) {', '.join(clash)} given both as fixed conditions of the adapter and "
                         f"per call (guidance); give each in one place")
    kwargs.update(per_call)
    return args, kwargs


def _what(out) -> str:
    name = type(out).__name__
    return f"a {name} of {len(out)}" if isinstance(out, (tuple, list)) else f"an object of type {name}"


def _unwrap_hint(out) -> str:
    """How to make the network return its prediction tensor, by what it returned."""
    if hasattr(out, "sample") and isinstance(getattr(out, "sample"), Tensor):
        return "a diffusers model returns an output object: wrap it, lambda x, t: model(x, t).sample " \
               "(diffsolve.adapters.from_diffusers does this)"
    if isinstance(out, (tuple, list)):
        return "return the prediction itself (e.g. lambda x, t: net(x, t)[0])"
    if type(out).__module__ == "numpy":
        return "return a torch tensor (torch.from_numpy), on x's device"
    return "return the prediction as a tensor of x's shape"


def _location(nfe: int, w, t) -> str:
    return f"network call {nfe}" + (f" ({_format_where(w)})" if w else "") + f", t={_fmt_t(t)}"


def _fmt_t(t) -> str:
    t = torch.as_tensor(t, dtype=torch.float64)
    if t.dim() == 0:
        return f"{float(t):.6g}"
    if t.device.type != "cpu":
        return f"<{t.shape[0]} per-sample times>"
    return f"[{float(t.min()):.6g} .. {float(t.max()):.6g}]"
