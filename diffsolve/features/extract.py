r"""Feature extractors: a batch of samples → features (B, D) (docs/math.md §24).

:func:`features_from` builds one from ``"pixels"``, ``"inception[:path]"`` or
``"package.module:factory"`` / ``"file.py:factory"``. Inception weights are never downloaded: a
missing file raises ``FileNotFoundError`` naming it and where to put it.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from ..images import to_uint8

__all__ = ["features_from", "INCEPTION_WEIGHTS"]

#: file name → where to fetch it (on a machine with internet access; diffsolve never downloads)
INCEPTION_WEIGHTS = {
    "inception-2015-12-05.pt":  # TorchScript by NVIDIA (StyleGAN2-ADA, EDM, clean-fid); no extra package
        "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt",
    "weights-inception-2015-12-05-6726825d.pth":  # torch-fidelity's state dict; needs diffsolve[metrics]
        "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
}


def _import_object(spec: str):
    """The object named by ``"package.module:attr"`` or ``"path/to/file.py:attr"`` (attr may be dotted)."""
    target, _, attr = spec.rpartition(":")
    if not target or not attr or not attr.replace(".", "_").isidentifier():
        raise ValueError(f"expected 'pixels', 'inception[:weights path]', 'package.module:factory' or "
                         f"'path/to/file.py:factory', got {spec!r}")
    if target.endswith(".py") or "/" in target or "\\" in target:
        if not Path(target).is_file():
            raise ValueError(f"no such Python file {target!r} (from {spec!r})")
        name = f"_diffsolve_features_{abs(hash(str(Path(target).resolve())))}"
        module_spec = importlib.util.spec_from_file_location(name, target)
        module = sys.modules[name] = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    elif importlib.util.find_spec(target.partition(".")[0]) is None:
        raise ValueError(f"cannot import module {target!r} (from {spec!r}); is it installed or on PYTHONPATH?")
    else:
        module = importlib.import_module(target)
    try:
        return functools.reduce(getattr, attr.split("."), module)
    except AttributeError:
        raise ValueError(f"module {target!r} has no attribute {attr!r}") from None


def _inception_weights(path: str | None) -> Path:
    hub, given = Path(torch.hub.get_dir()) / "checkpoints", path or os.environ.get("DIFFSOLVE_INCEPTION")
    candidates = [Path(given).expanduser()] if given else [hub / name for name in INCEPTION_WEIGHTS]
    for c in candidates:
        if c.is_file():
            return c
    fetch = "\n".join(f"  {name}\n    from {url}" for name, url in INCEPTION_WEIGHTS.items())
    raise FileNotFoundError(
        "Inception features need a local weights file; diffsolve never downloads one. Not found: "
        + ", ".join(str(c) for c in candidates) + f".\nOn a machine with internet access fetch one of\n{fetch}\n"
        "(the .pt is NVIDIA's TorchScript network used by StyleGAN2-ADA, EDM and clean-fid and needs no other "
        "package; the .pth needs torch-fidelity: pip install 'diffsolve[metrics]'), then pass "
        f"'inception:/path/to/file', set DIFFSOLVE_INCEPTION=/path/to/file, or copy it into {hub}/")


def _inception(path: str | None, device) -> Callable[[Tensor], Tensor]:
    weights = _inception_weights(path)
    if weights.suffix != ".pth":  # NVIDIA's TorchScript detector: uint8 NCHW in, 2048 pool features out
        net = torch.jit.load(str(weights), map_location=device or "cpu").eval()
        return lambda u8: net(u8, return_features=True)
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except Exception as e:  # ImportError, or torchvision built for another torch
        raise ImportError(f"{weights.name} holds torch-fidelity's weights, which need torch-fidelity "
                          f"(pip install 'diffsolve[metrics]'); importing it failed: {e}. The TorchScript "
                          f"file inception-2015-12-05.pt needs no extra package.") from e
    net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                      feature_extractor_weights_path=str(weights)).to(device or "cpu")
    return lambda u8: net(u8)[0]


def _to_uint8_rgb(x: Tensor, data_range: tuple[float, float]) -> Tensor:
    """Images (B, C, H, W) in ``data_range`` → uint8 (B, 3, H, W), quantised as PNGs are written
    (the 8-bit map of :mod:`diffsolve.images`)."""
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"Inception takes images (B, 1 or 3, H, W), got shape {tuple(x.shape)}")
    x = to_uint8(x, data_range)
    return x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x


def features_from(spec: str, *, device=None, data_range: tuple[float, float] = (-1.0, 1.0),
                  **kwargs) -> Callable[[Tensor], Tensor]:
    """A callable images (B, C, H, W) → features (B, D), run without gradients on ``device``.

    - ``"pixels"``: the flattened images (D = C·H·W);
    - ``"inception[:/path/to/weights]"``: Inception-v3 pool features (D = 2048) of the images quantised
      to uint8 from ``data_range`` (grey repeated to RGB). Weights: the path, else ``$DIFFSOLVE_INCEPTION``,
      else torch.hub's checkpoint folder (torch-fidelity's cache); a ``.pth`` goes through torch-fidelity
      (extra ``diffsolve[metrics]``), other files load as TorchScript. Nothing is downloaded: missing
      weights raise ``FileNotFoundError`` naming the file, where to fetch it and where to put it;
    - ``"package.module:factory"`` / ``"path/to/file.py:factory"``: ``factory(**kwargs)`` returns the
      extractor (an ``nn.Module`` instance is used as it is); a module is given floating inputs in
      the dtype of its parameters.
    """
    if spec == "pixels":
        fn = torch.nn.Flatten()
    elif spec == "inception" or spec.startswith("inception:"):
        net = _inception(spec.partition(":")[2] or None, device)
        fn = lambda x: net(_to_uint8_rgb(x, data_range))
    else:
        obj = _import_object(spec)
        fn = obj if isinstance(obj, torch.nn.Module) else obj(**kwargs)
        if not callable(fn):
            raise TypeError(f"{spec!r} gave a {type(fn).__name__}, not a callable batch → features")
        if isinstance(fn, torch.nn.Module):
            fn = fn.to(device).eval() if device is not None else fn.eval()

    # a network is given its own floating dtype (samples come in float64)
    params = [t for t in fn.parameters() if t.is_floating_point()] if isinstance(fn, torch.nn.Module) else []
    dtype = params[0].dtype if params else None

    @torch.no_grad()
    def extract(x: Tensor) -> Tensor:
        x = torch.as_tensor(x)
        out = fn(x.to(device=device, dtype=dtype if x.is_floating_point() else None))
        if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != x.shape[0]:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"feature extractor {spec!r} returned {got}, expected ({x.shape[0]}, D)")
        return out
    return extract
