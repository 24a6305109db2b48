r"""Images and datasets on disk: the 8-bit map, PNG files, and one reader for every kind of dataset.

**The 8-bit map** (docs/math.md (26.1)). A model's data range [lo, hi] (default [−1, 1], the range of
DDPM, EDM and Stable Diffusion's decoders) maps to the 256 levels of a byte by

    k = clamp(⌊(x − lo)·255/(hi − lo) + 1/2⌋, 0, 255),    x = lo + (hi − lo)·k/255,

rounding to the nearest level (for [−1, 1]: k = ⌊127.5 x + 128⌋, EDM's ``generate.py``);
:func:`from_uint8` is its inverse on the levels.

**Datasets.** :func:`open_dataset` reads, without loading more than a batch of images at a time:

- a folder of images (``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.webp``; searched recursively,
  sorted by path) → uint8 (N, C, H, W); Pillow reads them;
- a folder of ``.npz`` shards written by ``diffsolve sample --format npz`` (keys ``seeds``, ``x``)
  → the samples in seed order, as they were written;
- a ``.npy`` file (memory-mapped), a ``.pt`` file (one tensor), or a ``.npz`` file whose samples
  are under ``x``, ``arr_0`` (ADM's reference batches) or its only key. uint8 arrays of shape
  (N, H, W, 1 | 3) (channels last, as ADM stores them) are read as (N, C, H, W).

uint8 data are images (levels 0–255); floating-point data are samples in model space.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["DATA_RANGE", "IMAGE_SUFFIXES", "to_uint8", "from_uint8", "save_png", "load_image", "Dataset",
           "open_dataset", "as_dataset", "check_data_range"]

DATA_RANGE = (-1.0, 1.0)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_ARRAY_KEYS = ("x", "arr_0")


def check_data_range(data_range) -> tuple[float, float]:
    """(lo, hi) as floats with lo < hi, both finite (a clear error otherwise)."""
    try:
        lo, hi = (float(v) for v in data_range)
    except (TypeError, ValueError):
        raise ValueError(f"a data range is two numbers (lo, hi), got {data_range!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"a data range needs finite lo < hi, got ({lo:g}, {hi:g})")
    return lo, hi


def to_uint8(x: Tensor, data_range=DATA_RANGE) -> Tensor:
    """Samples in ``data_range`` → uint8 levels by the 8-bit map (module docstring); uint8 passes through."""
    if x.dtype == torch.uint8:
        return x
    lo, hi = check_data_range(data_range)
    return ((x.double() - lo) * (255.0 / (hi - lo)) + 0.5).floor().clamp(0, 255).to(torch.uint8)


def from_uint8(k: Tensor, data_range=DATA_RANGE, dtype: torch.dtype = torch.float64) -> Tensor:
    """uint8 levels → the values lo + (hi − lo)·k/255 in ``data_range`` (the inverse of :func:`to_uint8`)."""
    lo, hi = check_data_range(data_range)
    return lo + (hi - lo) / 255.0 * k.to(dtype)


def _pil():
    from .checks import require

    return require("PIL.Image", "reading and writing images needs Pillow, a dependency of diffsolve (pip install "
                                "pillow)")


def save_png(path, image: Tensor) -> None:
    """Write one uint8 image (C, H, W), C = 1 (grey) or 3 (RGB), as a PNG file."""
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"a PNG is written from a uint8 image (1 or 3, H, W), got {image.dtype} of shape "
                         f"{tuple(image.shape)}")
    a = image.detach().cpu().permute(1, 2, 0).numpy()
    _pil().fromarray(np.ascontiguousarray(a[:, :, 0] if a.shape[2] == 1 else a)).save(path)


# PIL modes of more than 8 bits per channel: converting them to RGB saturates (a 16-bit 1000 becomes 255)
_WIDE_MODES = ("I", "F", "I;16", "I;16L", "I;16B", "I;16N")


def image_header(path) -> tuple:
    """(C, H, W) of the uint8 image :func:`load_image` makes of ``path``, read from its header alone (no
    pixels decoded); an unreadable file or one of more than 8 bits per channel is a ValueError naming it."""
    try:
        with _pil().open(path) as im:
            mode, (w, h) = im.mode, im.size
    except (OSError, SyntaxError) as e:  # PIL.UnidentifiedImageError is an OSError
        raise ValueError(f"cannot read {path} as an image: {e}") from None
    if mode in _WIDE_MODES:
        raise ValueError(f"{path} is a {mode} image (more than 8 bits per channel): a dataset of images is read as "
                         f"8-bit levels; save it as 8-bit PNGs, or give the samples as a .npy/.pt file of floats")
    return (1 if mode == "L" else 3, h, w)


def load_image(path) -> Tensor:
    """One image file → uint8 (C, H, W): grey stays 1 channel, anything else becomes RGB (:func:`image_header`
    refuses images of more than 8 bits per channel, which that would saturate)."""
    image_header(path)
    with _pil().open(path) as im:
        im = im if im.mode in ("L", "RGB") else im.convert("RGB")
        a = np.asarray(im, dtype=np.uint8)
    return torch.from_numpy(a.copy()).unsqueeze(0) if a.ndim == 2 else torch.from_numpy(a.copy()).permute(2, 0, 1)


class Dataset:
    """N samples of one shape, read a batch at a time: ``len(ds)``, ``ds.shape`` (one sample's),
    ``ds.is_image`` (uint8 levels, else model-space floats) and ``ds[start:end]`` → a tensor."""

    def __init__(self, path: Path, n: int, shape: tuple, is_image: bool, read):
        self.path, self.n, self.shape, self.is_image, self._read = path, n, tuple(shape), is_image, read

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, s: slice) -> Tensor:
        if not isinstance(s, slice) or s.step not in (None, 1):
            raise TypeError("a Dataset is read by contiguous slices, ds[start:end]")
        start, stop, _ = s.indices(self.n)
        return self._read(start, max(start, stop))

    def batches(self, batch_size: int):
        """(start, batch) for consecutive batches of ``batch_size`` (the last one shorter)."""
        for s in range(0, self.n, batch_size):
            yield s, self[s:s + batch_size]

    def __repr__(self):
        kind = "uint8 images" if self.is_image else "samples"
        return f"Dataset({str(self.path)!r}: {self.n} {kind} of shape {self.shape})"


def _array_dataset(path: Path, a) -> Dataset:
    """A dataset over an array-like (numpy, memmap or tensor) (N, ...)."""
    t = a if isinstance(a, Tensor) else None
    dtype = t.dtype if t is not None else a.dtype
    is_image = dtype in (torch.uint8, np.uint8)
    if not is_image and not (t.is_floating_point() if t is not None else np.issubdtype(dtype, np.floating)):
        raise ValueError(f"{path}: expected uint8 images or floating-point samples, got dtype {dtype}")
    if len(a.shape) < 2 or a.shape[0] < 1:
        raise ValueError(f"{path}: expected an array (N, ...) with N >= 1 samples, got shape {tuple(a.shape)}")
    nhwc = is_image and len(a.shape) == 4 and a.shape[3] in (1, 3) and a.shape[1] not in (1, 3)
    shape = (a.shape[3], a.shape[1], a.shape[2]) if nhwc else tuple(a.shape[1:])

    def read(s, e):
        b = a[s:e] if t is not None else torch.from_numpy(np.array(a[s:e]))
        return b.permute(0, 3, 1, 2).contiguous() if nhwc else b
    return Dataset(path, int(a.shape[0]), shape, is_image, read)


def _npz_array(path: Path):
    with np.load(path) as z:
        keys = list(z.keys())
        if "mu" in keys and "sigma" in keys:
            raise ValueError(f"{path} holds feature statistics (mu, sigma), not samples; give it as the "
                             f"reference of a metric, not as data")
        key = next((k for k in _ARRAY_KEYS if k in keys), keys[0] if len(keys) == 1 else None)
        if key is None:
            raise ValueError(f"{path}: no samples under 'x' or 'arr_0' and more than one key ({', '.join(keys)})")
        return z[key]


def _image_folder(path: Path, files: list[Path]) -> Dataset:
    first = load_image(files[0])
    for f in files[1:]:  # every header before any work: a late odd image stopped a run midway
        if image_header(f) != tuple(first.shape):
            raise ValueError(f"{f} has shape {image_header(f)}, {files[0]} has {tuple(first.shape)}: the images of "
                             f"a dataset must share one size and channel count")

    def read(s, e):
        ims = [load_image(f) for f in files[s:e]]
        for f, im in zip(files[s:e], ims):
            if im.shape != first.shape:
                raise ValueError(f"{f} has shape {tuple(im.shape)}, {files[0]} has {tuple(first.shape)}: the "
                                 f"images of a dataset must share one size and channel count")
        return torch.stack(ims) if ims else first.new_empty((0, *first.shape))
    return Dataset(path, len(files), tuple(first.shape), True, read)


def _shard_folder(path: Path, files: list[Path]) -> Dataset:
    """``.npz`` shards with ``seeds`` and ``x``, concatenated in seed order (one shard open at a time)."""
    index = []  # (seed, file, row)
    for f in files:
        with np.load(f) as z:
            if "seeds" not in z or "x" not in z:
                raise ValueError(f"{f}: a folder of .npz files is read as sample shards with keys 'seeds' and "
                                 f"'x' (from `diffsolve sample --format npz`); this one has {', '.join(z.keys())}")
            index += [(int(s), f, r) for r, s in enumerate(z["seeds"])]
            shape, dtype = z["x"].shape[1:], z["x"].dtype
    index.sort(key=lambda item: item[0])
    if len({s for s, _, _ in index}) != len(index):
        raise ValueError(f"{path}: a seed appears in more than one shard; the folder mixes runs")
    cache: dict = {}

    def read(s, e):
        rows = []
        for _, f, r in index[s:e]:
            if f not in cache:
                cache.clear()
                with np.load(f) as z:
                    cache[f] = z["x"]
            rows.append(torch.from_numpy(np.ascontiguousarray(cache[f][r])))
        return torch.stack(rows) if rows else torch.empty((0, *shape))
    ds = Dataset(path, len(index), tuple(shape), dtype == np.uint8, read)
    ds.seeds = [s for s, _, _ in index]
    return ds


def as_dataset(data, name: str = "data") -> Dataset:
    """``data`` as a :class:`Dataset`: a Dataset as it is, a tensor or array (N, ...) held in memory
    (uint8 images or floating-point samples; ``name`` labels it), or a path :func:`open_dataset` reads."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, (Tensor, np.ndarray)):
        return _array_dataset(Path(name), data.detach().cpu() if isinstance(data, Tensor) else data)
    return open_dataset(data)


def natural_order(path) -> tuple:
    """A path's sort key with its runs of digits compared as numbers: seed 1000000's PNG after seed 999999's
    (``generate``'s folders), as in its .npz shards."""
    return tuple((0, int(tok), "") if tok.isdigit() else (1, 0, tok) for tok in re.split(r"(\d+)", str(path)) if tok)


def open_dataset(path) -> Dataset:
    """The dataset at ``path`` (module docstring); a clear error for a missing, empty or unknown source."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"a dataset is a path (a folder or a .npy/.npz/.pt file), got {type(path).__name__}")
    p = Path(os.fspath(path)).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"no such file or folder: {p}")
    if p.is_dir():
        files = sorted((f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")), key=natural_order)
        images = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
        shards = [f for f in files if f.suffix == ".npz"]
        if images and shards:
            raise ValueError(f"{p} holds both images and .npz shards; give one kind of dataset per folder")
        if images:
            return _image_folder(p, images)
        if shards:
            return _shard_folder(p, shards)
        raise ValueError(f"{p} holds no images ({', '.join(IMAGE_SUFFIXES)}) and no .npz sample shards")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        return _array_dataset(p, np.load(p, mmap_mode="r"))
    if suffix == ".npz":
        return _array_dataset(p, _npz_array(p))
    if suffix == ".pt":
        from .files import load_tensor_file

        return _array_dataset(p, load_tensor_file(p, "dataset file", images=True))
    if suffix in IMAGE_SUFFIXES:
        return _image_folder(p, [p])
    raise ValueError(f"{p}: a dataset is a folder of images or .npz shards, or a .npy, .npz or .pt file")
