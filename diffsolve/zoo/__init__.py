r"""Bundled, really trained denoisers that work offline.

    >>> import diffsolve
    >>> den = diffsolve.zoo.load("digits")          # a ready diffsolve.Denoiser (float32 net, eval mode)
    >>> out = diffsolve.sample(den, seeds="0-15", solver="ddim", steps=20)
    >>> pixels = diffsolve.zoo.data.digits_to_pixels(out.x)   # (16, 1, 8, 8) levels 0..16

Models (``available()`` lists them with a description):

- ``"digits"``: scikit-learn's 8×8 digits, class-conditional with a null class (label dropout),
  ε-prediction under the cosine VP schedule, time input λ = log(α/σ). Unconditional by default;
  use :class:`diffsolve.CFGDenoiser` for class-conditional / guided sampling.
- ``"two_moons"``: a 2-D two-moons density, v-prediction under the cosine VP schedule, for
  density and trajectory pictures.

Each model is ``weights/NAME.safetensors`` plus ``weights/NAME.json`` (architecture, schedule,
prediction type, time label, data range and levels, train/test split, training command, seed,
SHA-256, measured quality). Loading is strict: a missing, truncated, modified or mis-shaped file
raises a clear error (see :mod:`diffsolve.zoo._io`). ``load`` also accepts the path of any model file
written by :func:`save_model` (e.g. by ``examples/train_digits.py --out DIR``).
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..checks import check_device, check_net_dtype, check_shape
from ..denoiser import Denoiser
from ..schedules import SCHEDULES
from . import data
from ._io import build_network, read_metadata, save_model
from .models import ARCHITECTURES, ResidualMLP

__all__ = ["load", "available", "list", "metadata", "save_model", "schedule_from_metadata",
           "WEIGHTS_DIR", "ResidualMLP", "ARCHITECTURES", "data"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def _models() -> dict:
    return {p.stem: p for p in sorted(WEIGHTS_DIR.glob("*.json"))}


def available() -> dict[str, str]:
    """Names of the bundled models, each with a one-line description."""
    out = {}
    for name, path in _models().items():
        try:
            out[name] = read_metadata(path).get("description", "")
        except (ValueError, FileNotFoundError) as e:  # pragma: no cover - a broken install
            out[name] = f"(unreadable: {e})"
    return out


list = available  # noqa: A001 - ``diffsolve.zoo.list()`` reads naturally; the builtin is not used here


def _resolve(name) -> Path:
    models = _models()
    if not isinstance(name, (str, Path)):
        raise TypeError(f"a model is a bundled model's name ({', '.join(models) or 'none bundled'}) or the path of a "
                        f".safetensors file, got {type(name).__name__}")
    if isinstance(name, str) and name in models:
        return models[name].with_suffix(".safetensors")
    path = Path(name)
    if path.suffix in (".safetensors", ".json") or path.exists():
        return path.with_suffix(".safetensors")
    raise ValueError(f"unknown model {name!r}; bundled models: {', '.join(models) or '(none)'}; "
                     f"or give the path of a .safetensors file with its .json beside it")


def metadata(name) -> dict:
    """The metadata dictionary of a bundled model (or of a model file path)."""
    return read_metadata(_resolve(name))


def schedule_from_metadata(spec: dict):
    """Rebuild a schedule from ``{"name": ..., "kwargs": {...}}``."""
    if not isinstance(spec, dict) or spec.get("name") not in SCHEDULES or not isinstance(spec.get("kwargs", {}), dict):
        raise ValueError(f"unknown schedule in model metadata: {spec!r}; known: {', '.join(SCHEDULES)}")
    try:
        return SCHEDULES[spec["name"]](**spec.get("kwargs", {}))
    except (TypeError, ValueError) as e:
        raise ValueError(f"bad schedule in model metadata {spec!r}: {e}") from None


def load(name, *, device=None, dtype: torch.dtype = torch.float32) -> Denoiser:
    """A ready :class:`~diffsolve.Denoiser` for a bundled model name or a model file path.

    The network is in eval mode with gradients off, in ``dtype`` (float32 by default; any real float),
    on ``device`` (cpu or cuda; not ``meta``, which would drop the weights); ``.shape`` is the sample
    shape, ``.metadata`` the model's metadata, and ``.net.null_class`` the null label of
    class-conditional models (None otherwise).
    """
    device, dtype = check_device(device), check_net_dtype(dtype, "dtype", allow_none=False)  # before any work
    path = _resolve(name)
    meta = read_metadata(path)
    net = build_network(path, meta).to(device=device, dtype=dtype)
    den = Denoiser(net, schedule_from_metadata(meta["schedule"]), prediction=meta["prediction"],
                   time_label=meta.get("time_label", "default"),  # net_dtype: its weights' (net.double() too)
                   shape=None if meta.get("shape") is None else check_shape("the metadata's 'shape'", meta["shape"]))
    den.metadata = meta
    den.model_name = str(name)  # as loaded (a bundled name or a path), the name `diffsolve tune --model` records
    return den
