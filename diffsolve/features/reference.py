r"""The reference side of a feature metric: statistics and feature rows of a dataset, cached.

A reference is either

- **samples**: any dataset :func:`diffsolve.images.open_dataset` reads (a folder of images, ``.npz``
  / ``.npy`` / ``.pt``, a folder of ``diffsolve sample --format npz`` shards) or a tensor in model
  space. Its features are computed once, a batch at a time, into :class:`~.stats.FeatureStats`
  (FID) and a float32 matrix of feature rows (KID, precision / recall, density / coverage), and
  cached in ``$DIFFSOLVE_CACHE/features`` (default ``~/.cache/diffsolve/features``) under a key made
  of the dataset's path, size and modification times, the feature spec, the data range and the
  features of its first rows (so a feature network whose weights changed gets a new entry);
- **statistics**: an ``.npz`` with ``mu`` and ``sigma`` in the format EDM and ADM publish. Only the
  Fréchet distance can be computed against it.

8-bit references (uint8 images) are read in model space through the 8-bit map
(docs/math.md (26.1)), and generated samples are put through the same map before their features
are taken (:meth:`FeatureReference.quantize`), as a PNG of them would be: both sides then hold the
same 256 levels.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..images import DATA_RANGE, check_data_range, from_uint8, open_dataset, to_uint8
from .stats import FeatureStats

__all__ = ["FeatureReference", "cache_dir", "files_identity"]

_FINGERPRINT_ROWS = 8
_CACHE_VERSION = 1


def cache_dir() -> Path:
    """Where reference features are cached: ``$DIFFSOLVE_CACHE/features`` (default ``~/.cache/diffsolve``)."""
    return Path(os.environ.get("DIFFSOLVE_CACHE", "~/.cache/diffsolve")).expanduser() / "features"


def _is_stats_file(p: Path) -> bool:
    if p.suffix != ".npz" or not p.is_file():
        return False
    with np.load(p, allow_pickle=False) as z:
        return {"mu", "sigma"} <= set(z.files)


def _listing(p: Path) -> list:
    """(relative path, size, mtime) of a file or of every file under a folder: what the cache key rests on."""
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
    return [(str(f.relative_to(p)) if f != p else f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]


def files_identity(path) -> str:
    """16 hex digits naming a reference file or folder as it is now: its resolved path and every file's
    relative path, size and modification time (what the cache key rests on). A run that resumes checks it, so
    that rows measured against other contents under the same path are not mixed with new ones."""
    p = Path(os.fspath(path)).expanduser().resolve()
    return hashlib.sha256(json.dumps([str(p), _listing(p)]).encode()).hexdigest()[:16]


class FeatureReference:
    """Reference statistics (``stats``: :class:`~.stats.FeatureStats`) and, unless built from
    published statistics, the reference feature rows (``features``: (N, D) float32 tensor)."""

    def __init__(self, stats: FeatureStats, features: Tensor | None, description: str, quantized: bool = False,
                 data_range=DATA_RANGE, shape: tuple | None = None):
        self.stats, self.features, self.description = stats, features, description
        if not (np.isfinite(stats.mean).all() and np.isfinite(stats.cov).all()):
            bad = "" if features is None else f" ({int((~torch.isfinite(features).all(1)).sum())} of " \
                                              f"{features.shape[0]} rows)"
            raise ValueError(f"the reference ({description}) has non-finite features{bad}: its data hold NaN or inf "
                             f"values, or the feature network returns them; remove those items")
        self.quantized, self.data_range = quantized, check_data_range(data_range)
        self.shape = None if shape is None else tuple(shape)  # one sample's (None: published statistics)

    def check_against(self, shape: tuple, extract: Callable[[Tensor], Tensor], what: str):
        """Refuse samples of ``shape`` whose features cannot be compared with the reference's."""
        if self.shape is not None and tuple(shape) != self.shape:
            raise ValueError(f"{what} draws samples of shape {tuple(shape)}, but the reference ({self.description}) "
                             f"holds samples of shape {self.shape}")
        d, d_ref = extract(torch.zeros(1, *shape)).shape[1], self.stats.mean.shape[0]
        if d != d_ref:
            raise ValueError(f"the features of {what}'s samples have dimension {d}, those of the reference "
                             f"({self.description}) {d_ref}: were they computed with other features?")

    @property
    def n(self) -> int | None:
        return self.stats.n if self.features is None else int(self.features.shape[0])

    def quantize(self, x: Tensor) -> Tensor:
        """Generated samples (model space) as the reference holds its data: through the 8-bit map and
        back when the reference is 8-bit images, unchanged otherwise."""
        return from_uint8(to_uint8(x, self.data_range), self.data_range, x.dtype) if self.quantized else x

    def require_rows(self, metric: str):
        if self.features is None:
            raise ValueError(f"{metric} needs reference samples; {self.description} holds only statistics "
                             f"(mu, sigma), which give the Fréchet distance (fid) alone")

    # --- construction ---------------------------------------------------------------------------
    @classmethod
    def from_samples(cls, x: Tensor, extract: Callable[[Tensor], Tensor], *, batch_size: int = 256,
                     description: str = "reference samples", quantized: bool = False,
                     data_range=DATA_RANGE) -> FeatureReference:
        """From samples in model space (N, ...) held in memory (no cache)."""
        stats, rows = _features(lambda s, e: x[s:e], x.shape[0], extract, batch_size)
        return cls(stats, rows, description, quantized, data_range, tuple(x.shape[1:]))

    @classmethod
    def from_path(cls, path, extract: Callable[[Tensor], Tensor], spec: str, *, data_range=DATA_RANGE,
                  batch_size: int = 256, cache: bool = True, progress: Callable[[str], None] | None = None
                  ) -> FeatureReference:
        """From a dataset or a statistics ``.npz`` (module docstring); ``spec`` names the features (the
        cache key). A dataset's features are computed once and cached unless ``cache=False``."""
        p = Path(os.fspath(path)).expanduser().resolve()
        if _is_stats_file(p):
            return cls(FeatureStats.load(p), None, f"the statistics {p}", False, data_range)
        data_range = check_data_range(data_range)
        ds = open_dataset(p)

        def read(s, e):
            b = ds[s:e]
            return from_uint8(b, data_range) if ds.is_image else b.to(torch.float64)
        desc = f"{ds.n} samples of {p}"
        first = extract(read(0, min(_FINGERPRINT_ROWS, ds.n))).detach().cpu().to(torch.float64).numpy()
        key = hashlib.sha256(json.dumps([_CACHE_VERSION, str(p), _listing(p), spec, list(data_range), ds.n,
                                         list(ds.shape)]).encode() + first.tobytes()).hexdigest()[:32]
        file = cache_dir() / f"{key}.npz"
        if cache and file.is_file():
            with np.load(file, allow_pickle=False) as z:
                stats = FeatureStats.load(file)
                return cls(stats, torch.from_numpy(z["features"]), desc, ds.is_image, data_range, ds.shape)
        if progress is not None:
            progress(f"features of the reference: {desc}")
        stats, rows = _features(read, ds.n, extract, batch_size)
        if cache:
            file.parent.mkdir(parents=True, exist_ok=True)
            tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                np.savez(f, mu=stats.mean, sigma=stats.cov, n=np.int64(stats.n), features=rows.numpy())
            os.replace(tmp, file)
        return cls(stats, rows, desc, ds.is_image, data_range, ds.shape)


def _features(read: Callable[[int, int], Tensor], n: int, extract, batch_size: int) -> tuple[FeatureStats, Tensor]:
    """One pass over n items: streaming statistics (float64) and the float32 feature rows."""
    stats, rows = FeatureStats(), []
    for s in range(0, n, batch_size):
        f = extract(read(s, min(s + batch_size, n))).detach()
        stats.update(f)
        rows.append(f.to(torch.float32).cpu())
    return stats, torch.cat(rows)
