r"""User files, checked: samples read from ``.pt``/``.npy`` (a corrupt or non-tensor file is a
one-line error that never advises unpickling it) and output paths (writable, checked before any
work starts). The companion of :mod:`diffsolve.checks`.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from .checks import _kind

__all__ = ["load_tensor_file", "check_writable"]


def load_tensor_file(path, what: str = "data file", images: bool = False, levels: bool = False) -> Tensor:
    """A real floating tensor saved with ``torch.save`` (``.pt``, loaded without unpickling code) or
    ``numpy.save`` (``.npy``, no pickled objects), or with ``images=True`` also a uint8 one (8-bit
    images), with ``levels=True`` any integer one (level indices); a bad file is one clear line."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in (".pt", ".npy") and not (levels and suffix == ".npz"):
        raise ValueError(f"{what} {str(path)!r} must be .npy (numpy.save) or .pt (torch.save)")
    if not p.exists():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist")
    if p.is_dir():
        raise ValueError(f"{what} {str(path)!r} is a directory; give a .npy or .pt file")
    if suffix == ".npz":  # (level indices: the one array of an archive, as images.open_dataset reads it)
        import numpy as np

        from .images import _npz_array

        x = torch.from_numpy(np.ascontiguousarray(_npz_array(p)))
    else:
        x = _load_npy(p, what) if suffix == ".npy" else _load_pt(p, what)
    if not x.is_floating_point() and not (images and x.dtype == torch.uint8) and not (levels and x.dtype != torch.bool):
        raise ValueError(f"{what} {str(path)!r} holds {x.dtype} values; the samples must be real floating-point "
                         f"numbers: save them converted, e.g. torch.save(x.double()) or "
                         f"numpy.save(path, x.astype(float))"
                         + ("; integer level indices 0..K-1 need their number (levels=K; on the command line "
                            "--levels K)" if images else ""))
    return x


def _load_npy(p: Path, what: str) -> Tensor:
    import numpy as np

    try:
        arr = np.load(p, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - any failure to parse is a bad file
        if "allow_pickle" in str(e):
            raise ValueError(f"cannot read {what} {str(p)!r}: it holds Python objects (a pickled array), which are "
                             f"not loaded from files (unsafe); save a numeric array with numpy.save") from None
        line = (str(e).strip().splitlines() or [""])[0][:160]
        raise ValueError(f"cannot read {what} {str(p)!r} as a .npy array ({type(e).__name__}: {line}); is it "
                         f"truncated, or not written by numpy.save?") from None
    if not isinstance(arr, np.ndarray):  # an .npz archive renamed .npy
        raise ValueError(f"{what} {str(p)!r} is not a single array (an .npz archive?); save one array with numpy.save")
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"{what} {str(p)!r} holds an array of dtype {arr.dtype}; expected real numbers (samples)")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("=")))


def _load_pt(p: Path, what: str) -> Tensor:
    import pickle

    try:
        x = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file fails in many ways
        if isinstance(e, pickle.UnpicklingError) and "global" in str(e).lower():  # classes, functions: objects
            raise ValueError(f"cannot read {what} {str(p)!r}: it holds Python objects other than tensors, which "
                             f"diffsolve does not unpickle from files (that could run code); save the samples "
                             f"themselves with torch.save(x) (x a tensor)") from None
        raise ValueError(f"cannot read {what} {str(p)!r}: not a file written by torch.save, or truncated / "
                         f"corrupt; save the samples with torch.save(x) (x a tensor)") from None
    if not isinstance(x, Tensor):
        keys = f" with keys {sorted(map(str, x))[:5]}" if isinstance(x, dict) else ""
        raise ValueError(f"{what} {str(p)!r} holds an object of type {_kind(x)}{keys}, expected a tensor saved by "
                         f"torch.save(x)")
    return x.detach()


def check_writable(path, suffixes=None) -> Path:
    """Refuse an output file we could not write, before any work. Nothing is made: a directory of the path
    that does not exist yet is checked at its nearest existing ancestor (the writer makes it, so a run
    refused later leaves no folder behind)."""
    path = Path(path)
    if suffixes is not None and path.suffix not in suffixes:
        raise ValueError(f"output file {str(path)!r} must end in {' or '.join(suffixes)}")
    if path.exists() and path.is_dir():
        raise ValueError(f"{str(path)!r} is a directory; give a file name"
                         + (f" ending in {' or '.join(suffixes)}" if suffixes else ""))
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        parent = next(p for p in parent.absolute().parents if p.exists())
    if not parent.is_dir():
        raise ValueError(f"cannot write {str(path)!r}: {str(parent)!r} is not a directory")
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"cannot write {str(path)!r}: the file exists and is read-only; remove it or give another "
                         f"name")
    try:  # permissions, read-only file systems, pseudo-file systems: try it
        with tempfile.NamedTemporaryFile(dir=parent, prefix=f".{path.name}.", suffix=".write-test"):
            pass
    except OSError as e:
        raise ValueError(f"cannot write {str(path)!r}: {e.strerror or e} in {str(parent)!r}; give a path in a "
                         f"writable directory") from None
    return path
