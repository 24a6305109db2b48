"""Saving and strictly loading model files: ``NAME.safetensors`` + ``NAME.json`` side by side.

The JSON file holds everything needed to rebuild the network and its :class:`~diffsolve.Denoiser`
(architecture and its config, schedule, prediction type, time label, sample shape) plus the data
conventions and training record; it also holds the SHA-256 of the weights file. Loading checks, in
order, and raises a clear error for each failure (never a silent partial load):

1. both files exist (``FileNotFoundError``);
2. the JSON parses and names a known architecture (``ValueError``);
3. the weights file has the recorded SHA-256 (truncated or modified file → ``ValueError``);
4. the safetensors header parses (``ValueError``);
5. the tensor names and shapes are exactly those of the architecture (``ValueError`` listing
   missing, unexpected and mis-shaped tensors).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from .models import ARCHITECTURES

__all__ = ["save_model", "read_metadata", "build_network", "sha256"]


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_model(path, net: torch.nn.Module, metadata: dict) -> tuple[Path, Path]:
    """Write ``path`` (.safetensors, float32 state dict of ``net``) and the JSON beside it.

    ``metadata`` must contain ``architecture`` (a name in ``ARCHITECTURES``) and ``config`` (its
    constructor arguments); the SHA-256 of the weights is added.
    """
    from safetensors.torch import save_file

    path = Path(path).with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(path), metadata={"architecture": metadata["architecture"]})
    meta = dict(metadata)
    meta["weights"] = path.name
    meta["sha256"] = sha256(path)
    meta["num_parameters"] = int(sum(v.numel() for v in state.values()))
    json_path = path.with_suffix(".json")
    json_path.write_text(json.dumps(meta, indent=2, sort_keys=False) + "\n")
    return path, json_path


def read_metadata(path) -> dict:
    """The JSON metadata beside a weights file (``path`` may name either file)."""
    path = Path(path)
    json_path = path.with_suffix(".json")
    if not json_path.exists():
        py = path.with_suffix(".py")
        factory = (f"; {py} is a Python file: name the function in it that builds the model, {py}:make_model "
                   f"(a factory returning a diffsolve.Denoiser)") if py.exists() and not path.exists() else ""
        raise FileNotFoundError(f"model metadata {json_path} not found: a diffsolve model is a "
                                f".safetensors file with a .json of the same name beside it{factory}")
    try:
        meta = json.loads(json_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"model metadata {json_path} is not valid JSON: {e}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"model metadata {json_path} must hold a JSON object, got a JSON {type(meta).__name__}")
    for key in ("architecture", "config", "schedule", "prediction"):
        if key not in meta:
            raise ValueError(f"model metadata {json_path} lacks the field {key!r}")
    if not isinstance(meta["config"], dict) or not isinstance(meta["architecture"], str):
        raise ValueError(f"model metadata {json_path}: 'architecture' must be a name and 'config' an object of its "
                         f"constructor arguments, got {meta['architecture']!r} and {meta['config']!r}")
    if meta["architecture"] not in ARCHITECTURES:
        raise ValueError(f"model metadata {json_path} names unknown architecture {meta['architecture']!r}; "
                         f"known: {', '.join(ARCHITECTURES)}")
    return meta


def build_network(path, meta: dict | None = None, check_hash: bool = True) -> torch.nn.Module:
    """Rebuild the network described by the metadata and load its weights strictly (eval mode)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path).with_suffix(".safetensors")
    if meta is None:
        meta = read_metadata(path)
    if not path.exists():
        raise FileNotFoundError(f"model weights {path} not found (metadata {path.with_suffix('.json')} "
                                f"refers to it); re-install diffsolve or re-run the training script "
                                f"named in the metadata: {meta.get('training', {}).get('command', '?')}")
    if check_hash and "sha256" in meta:
        got = sha256(path)
        if got != meta["sha256"]:
            raise ValueError(f"model weights {path} do not match their metadata (SHA-256 {got[:12]}… "
                             f"!= recorded {meta['sha256'][:12]}…, size {path.stat().st_size} bytes): "
                             f"the file is truncated, modified or belongs to another model")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"cannot read model weights {path}: {e} (truncated or not a safetensors file)") from None
    try:
        net = ARCHITECTURES[meta["architecture"]](**meta["config"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"model metadata {path.with_suffix('.json')}: cannot build {meta['architecture']} from its "
                         f"config {meta['config']}: {e}") from None
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mis = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or mis:
        parts = []
        if missing:
            parts.append(f"missing tensors {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected tensors {_short(unexpected)}")
        if mis:
            parts.append("wrong shapes " + _short([f"{k}: file {tuple(state[k].shape)} vs "
                                                   f"model {tuple(expected[k].shape)}" for k in mis]))
        raise ValueError(f"model weights {path} do not fit architecture {meta['architecture']} "
                         f"with config {meta['config']}: " + "; ".join(parts))
    net.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)
    return net.eval().requires_grad_(False)


def _short(items, n: int = 4) -> str:
    items = list(items)
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return "[" + ", ".join(items[:n]) + "]" + more
