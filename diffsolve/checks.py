r"""The checks of what users give diffsolve, in one place.

The entry points (:func:`~diffsolve.sample`, :func:`~diffsolve.log_likelihood`, ``encode``/``decode``,
the tuners, :class:`~diffsolve.NoiseSource`, :func:`~diffsolve.parse_seeds`, :func:`diffsolve.zoo.load`,
the command line) call these once, before any work: the denoiser (type, sample shape, network dtype,
a network on the data-less ``meta`` device), the data ``x`` (a finite real floating tensor of the
denoiser's sample shape; bad samples named by index), the solver state's dtype (float32/float64: the
network may run in half precision, the state may not), seeds (integers in [0, 2⁶³), no floats or
bools), counts and budgets (integers, no floats or bools), numbers, flags, devices, shapes, grids
given as values, a batch too large for the machine, a tuned grid against the model's schedule.
Files of samples and output paths are checked by :mod:`diffsolve.files`. The network's output is checked where it is made, in :meth:`diffsolve.Denoiser.raw`.

Each raises ``TypeError`` (a value of the wrong kind) or ``ValueError`` (out of range, a mismatch;
``FileNotFoundError`` for a missing file) saying what is wrong and how to fix it. This module
imports only the denoiser and the schedules: every other module may import it.
"""
from __future__ import annotations

import math
import numbers
import os
import sys
import warnings
import weakref

import torch
from torch import Tensor

from ._numbers import _kind, _show, check_int, check_number, is_integer
from .denoiser import Denoiser, check_net_dtype
from .schedules import SCHEDULES

__all__ = ["check_data", "data_end_time", "check_denoiser", "check_state_dtype", "check_net_dtype", "check_seed",
           "check_int", "check_number", "check_flag", "check_options", "check_device", "check_shape",
           "check_sample_shape", "check_grid_values", "check_tuning",
           "check_batch_memory", "check_tuned_schedule", "SEED_LIMIT", "STATE_DTYPES"]

SEED_LIMIT = 2 ** 63  # seeds are integers in [0, SEED_LIMIT)
STATE_DTYPES = (torch.float64, torch.float32)
_GENERATOR_BYTES = 2700  # host memory of one CPU torch.Generator (Mersenne Twister state), measured


def check_flag(name: str, value, allow_none: bool = False, choices: tuple = ()) -> bool | None:
    """``value`` is True or False (or None when ``allow_none``, or one of the strings ``choices``)."""
    if (value is None and allow_none) or isinstance(value, bool):
        return value
    also = "".join(f" or {c!r}" for c in choices) + (" (or None)" if allow_none else "")
    if isinstance(value, str) and choices:
        if value in choices:
            return value
        raise ValueError(f"{name} must be True, False{also}, got {value!r}")
    raise TypeError(f"{name} must be True or False{also}, got {_show(value)}")


def check_options(name: str, value) -> dict | None:
    """Keyword options: a dict with string keys, or None."""
    if value is not None and (not isinstance(value, dict) or not all(isinstance(k, str) for k in value)):
        raise TypeError(f"{name} must be a dict of options by name (e.g. dict(order=3)), got {_show(value)}")
    return value


def check_seed(value, where: str = "") -> int:
    """One seed: an integer (not a float, not a bool) in [0, 2⁶³). ``where``: e.g. " at position 3"."""
    if not is_integer(value):
        what = "a bool" if isinstance(value, bool) else f"a {_kind(value)}"
        raise TypeError(f"seed {_show(value)}{where} is not an integer ({what}); seeds are whole numbers in "
                        f"[0, 2**63), e.g. seeds=[0, 1, 2] or seeds='0-63'")
    if not 0 <= value < SEED_LIMIT:
        raise ValueError(f"seed {value}{where} is out of range: seeds are integers in [0, 2**63 - 1]"
                         + (" (no negative seeds)" if value < 0 else ""))
    return int(value)


# --- dtypes, devices, shapes ----------------------------------------------------------------------
def check_state_dtype(dtype, name: str = "dtype") -> torch.dtype:
    """The dtype of a solver state: torch.float64 or torch.float32."""
    if dtype in STATE_DTYPES:
        return dtype
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        raise TypeError(f"{name}={dtype} is the dtype of the solver state, which must be torch.float64 or "
                         f"torch.float32: the steps lose their accuracy in half precision. The network may run in "
                         f"half precision: convert it (net.to({dtype})) or give Denoiser(..., net_dtype={dtype}), "
                         f"and keep {name}=torch.float32 or torch.float64")
    raise TypeError(f"{name} must be torch.float64 or torch.float32 (the solver state's dtype), got {_show(dtype)}")


def check_device(device, name: str = "device", allow_meta: bool = False) -> torch.device | None:
    """A torch.device from ``device`` (None stays None): cpu, or cuda where CUDA is available; ``meta``
    (shapes only, no data) only when ``allow_meta``."""
    if device is None:
        return None
    if isinstance(device, bool) or not isinstance(device, (str, torch.device, numbers.Integral)):
        raise TypeError(f"{name} must be a device name such as 'cpu' or 'cuda:0', got {_show(device)}")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        if is_integer(device) and not torch.cuda.is_available():
            raise ValueError(f"{name}={device} names CUDA device {device}, but CUDA is not available here; "
                             f"use device='cpu'") from None
        raise ValueError(f"unknown or unsupported {name} {_show(device)}; use 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "meta" and not allow_meta:
        raise ValueError(f"{name} 'meta' holds shapes but no data: nothing could be computed there; use 'cpu' or "
                         f"'cuda' (a dry run on meta tensors takes x on the meta device)")
    if dev.type not in ("cpu", "cuda", "meta"):
        raise ValueError(f"unsupported {name} {str(dev)!r}; use 'cpu' or 'cuda'")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name} {str(dev)!r} requested but CUDA is not available here; use 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{name} {str(dev)!r}: there are only {torch.cuda.device_count()} CUDA devices here")
    return dev


def check_shape(name: str, shape, batch: bool = False) -> tuple[int, ...]:
    """A shape: a sequence of positive integers (with ``batch``: at least two, (batch, *sample_shape))."""
    try:
        if isinstance(shape, (str, bytes, dict, set)):
            raise TypeError
        items = list(shape.tolist() if isinstance(shape, Tensor) else shape)
    except (TypeError, RuntimeError):
        raise TypeError(f"{name} must be a tuple of positive integers, e.g. "
                        f"{'(16, 2)' if batch else '(2,)'}, got {_show(shape)}") from None
    if not all(is_integer(s) for s in items):
        raise TypeError(f"{name} must be a tuple of positive integers, got {_show(shape)}")
    if any(s < 1 for s in items):
        raise ValueError(f"{name} must have positive sizes, got {tuple(items)}")
    if batch and len(items) < 2:
        raise ValueError(f"{name} must be (batch, *sample_shape) with at least two sizes, got {tuple(items)}; "
                         f"e.g. (16, 2) for 16 samples of shape (2,)")
    return tuple(int(s) for s in items)


def check_grid_values(name: str, grid):
    """A grid given as values (a name or None passes): a 1-D array-like of real numbers (its order and range
    are checked against the schedule by :func:`diffsolve.grids.validate_grid`)."""
    if grid is None or isinstance(grid, str):
        return
    try:
        ok = not isinstance(grid, (bytes, dict, set)) and torch.as_tensor(grid).dtype not in (
            torch.bool, torch.complex64, torch.complex128)
    except (TypeError, ValueError, RuntimeError):
        ok = False
    if not ok:
        raise TypeError(f"{name} must be a grid kind (a name, see diffsolve.grids.GRIDS) or a decreasing 1-D array "
                        f"of times, got {_show(grid)}")


def check_sample_shape(denoiser, shape) -> tuple:
    """The shape of one sample: ``shape`` (it must agree with the denoiser's, if known) or the denoiser's."""
    if shape is not None:
        shape = check_shape("shape", shape)
        if denoiser.shape is not None and shape != denoiser.shape:
            batched = " (here shape is one sample's, without sample()'s batch axis)" \
                if shape[1:] == tuple(denoiser.shape) else ""
            raise ValueError(f"shape={shape}, but the denoiser's samples have shape {denoiser.shape}{batched}; "
                             "leave shape out")
    shape = shape if shape is not None else denoiser.shape
    if shape is None:
        raise ValueError("give shape=(...) of one sample; the denoiser does not know it (Denoiser(..., shape=...))")
    return shape


def check_batch_memory(batch: int, event_shape, dtype: torch.dtype, device: torch.device, generators: bool):
    """Refuse a batch whose state (and one random generator per seed) alone exceeds the memory of the
    machine (or of the CUDA device): it could only fail later, after a long wait."""
    if device.type == "cpu":
        try:
            total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):  # pragma: no cover - no sysconf on this platform
            return
    elif device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
    else:
        return
    state = batch * math.prod(event_shape) * (torch.finfo(dtype).bits // 8)
    gens = batch * _GENERATOR_BYTES if generators and device.type == "cpu" else 0
    if state + gens > total:
        raise ValueError(f"{batch} samples of shape {tuple(event_shape)} need at least {(state + gens) / 2**30:.3g} "
                         f"GiB for the state{' and one random generator per seed' if gens else ''}, more than the "
                         f"{total / 2**30:.3g} GiB of {device.type} memory here; draw them in batches (with seeds "
                         f"each sample is the same in any batch: seeds '0-99999', then '100000-199999', ...)")


# --- the denoiser and its data ----------------------------------------------------
def _on_meta(net) -> bool:
    """Whether a network module holds parameters or buffers on the meta device (shapes, no data). A module
    whose weights are loaded on the fly (accelerate's offloading hooks) is not."""
    if not isinstance(net, torch.nn.Module):
        return False
    modules = list(net.modules())
    if any(hasattr(m, "_hf_hook") for m in modules):
        return False
    return any(t.is_meta for m in modules for t in (*m.parameters(recurse=False), *m.buffers(recurse=False)))


_WARNED_TRAINING: "weakref.WeakSet" = weakref.WeakSet()


def _warn_training(net):
    """Warn (once per network) where a module in training mode makes the network depend on the batch
    (batch normalisation) or on chance (dropout): a solver's evaluations and the likelihood's replicated
    rows assume one function of (x, t) per row."""
    if not isinstance(net, torch.nn.Module) or net in _WARNED_TRAINING:
        return
    batch_norm, dropout = torch.nn.modules.batchnorm._BatchNorm, torch.nn.modules.dropout._DropoutNd
    odd = {type(m).__name__ for m in net.modules() if m.training and (
        isinstance(m, batch_norm) or isinstance(m, dropout) and m.p > 0)}
    always = {type(m).__name__ for m in net.modules() if isinstance(m, batch_norm) and not m.track_running_stats}
    if odd or always:
        _WARNED_TRAINING.add(net)
        why = [f"it is in training mode, where its {', '.join(sorted(odd))} make{'s' * (len(odd) == 1)} each "
               f"output depend on the rest of the batch or on chance (call net.eval() before sampling or scoring)"
               ] if odd else []
        why += [f"its {', '.join(sorted(always))} keep{'s' * (len(always) == 1)} no running statistics "
                f"(track_running_stats=False): each output depends on the rest of the batch even in eval mode"
                ] if always else []
        warnings.warn(f"the network {type(net).__name__}: {'; and '.join(why)}", UserWarning,
                      stacklevel=caller_stacklevel())


def caller_stacklevel() -> int:
    """The ``stacklevel`` of the first frame outside diffsolve, for a warning issued by its caller."""
    here, frame, level = os.path.dirname(os.path.abspath(__file__)), sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(here + os.sep):
        frame, level = frame.f_back, level + 1
    return level


def check_denoiser(denoiser, device: torch.device | None = None) -> Denoiser:
    """A :class:`~diffsolve.Denoiser` with a valid ``shape`` and ``net_dtype``, whose network is not on the meta
    device when the run has data (``device``: where the state lives, if known)."""
    if not isinstance(denoiser, Denoiser):
        hint = ("; it is a bare network: wrap it" if callable(denoiser) else "; wrap your network")
        raise TypeError(f"denoiser must be a diffsolve.Denoiser, got {_kind(denoiser)}{hint} with "
                        f"Denoiser(net, schedule, prediction=...) (or an adapter in diffsolve.adapters)")
    if denoiser.shape is not None:
        check_shape("the denoiser's shape (of one sample)", denoiser.shape)
    check_net_dtype(denoiser.net_dtype, "the denoiser's net_dtype")
    if (device is None or device.type != "meta") and _on_meta(denoiser.net):
        raise ValueError(f"the network {type(denoiser.net).__name__} is on the meta device: it has shapes but no "
                         f"weights, so it cannot compute anything; load its weights (e.g. net.to_empty(device='cpu') "
                         f"then net.load_state_dict(...), or build it on 'cpu'/'cuda')")
    _warn_training(denoiser.net)
    return denoiser


def check_data(denoiser: Denoiser, x, allow_int: bool = False, name: str = "x", int_hint: str = "",
               allow_meta: bool = False):
    """``x`` is a (B, *shape) tensor of finite real floats (or integer levels when ``allow_int``) whose
    sample shape is the denoiser's, for a :class:`~diffsolve.Denoiser` (checked too: :func:`check_denoiser`).
    ``int_hint``: what to do with integer data where the caller has a use for them; ``allow_meta``: accept x on
    the meta device (shapes, no data: a dry run of a fixed-step sampler)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (batch, *sample_shape), got {_kind(x)}; convert "
                        f"it with torch.as_tensor({name}, dtype=torch.float64)")
    check_denoiser(denoiser, x.device)
    if x.is_meta and not allow_meta:
        raise ValueError(f"{name} is on the meta device: it has a shape but no data to compute with; give {name} on "
                         f"'cpu' or 'cuda'")
    ints = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
    if not x.is_floating_point() and not (allow_int and x.dtype in ints):
        what = "complex" if x.is_complex() else "boolean" if x.dtype == torch.bool else "integer"
        fix = f"; {int_hint}" if int_hint and what == "integer" else f"; convert it, e.g. {name}.to(torch.float64)"
        raise TypeError(f"{name} must be a real floating-point tensor, got {what} dtype {x.dtype}"
                        + (fix if what != "complex" else f"; pass {name}.real if its imaginary part is zero"))
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must have shape (batch, *sample_shape) with batch >= 1, got {tuple(x.shape)}"
                         + (f"; for one sample use {name}[None]" if x.dim() == 1 and name.isidentifier() else ""))
    if denoiser.shape is not None and tuple(x.shape[1:]) != denoiser.shape:
        raise ValueError(f"{name} has sample shape {tuple(x.shape[1:])} (shape {tuple(x.shape)}), but the denoiser "
                         f"expects samples of shape {denoiser.shape}: give {name} of shape "
                         f"(batch, {', '.join(map(str, denoiser.shape))})")
    if x.is_floating_point() and not x.is_meta and not bool(torch.isfinite(x).all()):
        bad = (~torch.isfinite(x.reshape(x.shape[0], -1))).any(1).nonzero().flatten().tolist()
        nan = bool(torch.isnan(x[bad[0]]).any())
        raise ValueError(f"{name} contains NaN or Inf (samples {bad[:10]}{'...' if len(bad) > 10 else ''}): "
                         f"sample {bad[0]} has {'NaN' if nan else 'Inf'}; every sample must be finite: fix or drop "
                         f"{'that sample' if len(bad) == 1 else f'those {len(bad)} samples'}")


def data_end_time(schedule, t_end) -> float:
    """The data-side end time of a probability-flow solve: ``t_end`` in [t_min, t_max), default t_min."""
    t_end = schedule.t_min if t_end is None else check_number("t_end", t_end)
    if not (schedule.t_min - 1e-12 <= t_end < schedule.t_max):
        raise ValueError(f"t_end must lie in [t_min, t_max) = [{schedule.t_min:g}, {schedule.t_max:g}), got {t_end}")
    return max(t_end, schedule.t_min)


def check_tuning(denoiser, nfe, shape, max_evals, rtol, atol, device) -> tuple:
    """What both tuners (:mod:`diffsolve.tune`) are given besides their seeds: (shape of a sample, device)."""
    device = check_device(device)
    check_denoiser(denoiser, device)
    for name, value in (("nfe", nfe), ("max_evals", max_evals)):
        check_int(name, value)
    for name, value in (("rtol", rtol), ("atol", atol)):
        check_number(name, value, positive=True)
    return check_sample_shape(denoiser, shape), device


# --- tuned grids ------------------------------------------------------------------------------------------
def check_tuned_schedule(tuned, schedule, where: str = "the tuned grid"):
    """A tuned grid (:class:`~diffsolve.tuned.TunedGrid`) runs on the schedule it was tuned on: the same
    schedule (class and range, from its recorded ``schedule``) with the same parameters (its recorded
    log-SNR at the grid's times); a file without those records is checked for its range only."""
    t = torch.tensor(tuned.t, dtype=torch.float64)
    redo = "tune a grid for this model (diffsolve.tune_steps, or `diffsolve tune`)"
    name = SCHEDULES[tuned.schedule].__name__ if tuned.schedule in SCHEDULES else tuned.schedule  # a name or a repr
    if name and name not in (repr(schedule), type(schedule).__name__) and \
            name.partition("(")[0] in {c.__name__ for c in SCHEDULES.values()}:
        raise ValueError(f"{where} was tuned on the schedule {tuned.schedule}, but this model's schedule is "
                         f"{schedule!r}; run it on that schedule (an analytic problem: --schedule), or {redo}")
    lo, hi = float(t.min()), float(t.max())
    if lo < schedule.t_min - 1e-12 * max(1.0, abs(schedule.t_max)) or hi > schedule.t_max * (1 + 1e-12) + 1e-12:
        raise ValueError(f"{where} spans t in [{lo:.6g}, {hi:.6g}], outside this model's schedule {schedule!r} "
                         f"(t in [{schedule.t_min:.6g}, {schedule.t_max:.6g}]): it was tuned on another schedule; "
                         f"{redo}")
    recorded = getattr(tuned, "log_snr", None)
    if recorded:
        lam = schedule.log_snr(t)
        ref = torch.tensor(recorded, dtype=torch.float64)
        if ref.shape != lam.shape or not bool(torch.isclose(lam, ref, rtol=1e-9, atol=1e-9).all()):
            same = not name or name.partition("(")[0] == type(schedule).__name__
            what = f"a {type(schedule).__name__} with other parameters" if same else \
                f"another schedule ({name}; this model's is a {type(schedule).__name__})"
            raise ValueError(f"{where} was tuned on {what}: its log-SNR at the grid's times differs from this "
                             f"model's; {redo}")


# --- files ------------------------------------------------------------------------------------------------


# --- optional packages --------------------------------------------------------------------------------------
def require(module: str, why: str):
    """``module`` imported, or an ImportError that says ``why`` it is needed and how to install it (``why``
    ends with the pip command) and how importing it failed."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{why}; importing it failed: {e}") from e
