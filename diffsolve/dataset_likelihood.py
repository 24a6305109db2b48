r"""The log-likelihood of a dataset: log p and bits/dim of every item of a test set, batched, sharded
over processes (torchrun), resumable, written as rows as it goes — what score_sde and VDM report.

Every item goes through :func:`diffsolve.log_likelihood` (its options are passed through unchanged;
there is no ODE logic here). Item i uses the per-sample seed ``seed + i``: its dequantization noise
and its Hutchinson probes depend on i only, never on the batch, the process or a resume (the value
itself up to a float32 network's round-off, which differs between batch sizes; docs/math.md §26).

**8-bit images** (uint8 data, levels k ∈ {0..255}^d) are dequantized uniformly onto the model's data
range [a, b] (``data_range``, default [−1, 1]) with K = 256 cells (:class:`diffsolve.dequantize.
Dequantization`, docs/math.md §5 and (20.7)–(20.8)); u is drawn from item i's stream as Φ(ζ):

    x = a + (b − a)(k + u)/K,   u ~ U[0, 1)^d,
    log p_Y(k + u) = log p_X(x) + d log((b − a)/K),
    bits/dim_i = −log p_Y(k_i + u_i) / (d ln 2)

whose expectation over u bounds the discrete model's −log2 P(k_i)/d from above (Jensen; Theis et
al.). For [0, 1] this is score_sde's −log p_X/(d ln 2) + 8, for [−1, 1] it is −log p_X/(d ln 2) + 7.
Float data on a K-level grid a + (b − a)k/(K − 1) are dequantized the same way when ``levels=K`` is
given (e.g. the 17-level digits, the map the bundled model was trained on).

**Continuous data** (floats, no dequantization): bits/dim_i = −log p_X(x_i)/(d ln 2) is a density's,
not a code length: it is negative wherever p_X > 1, which is not an error (samples of a model
evaluated at its own narrow modes often are).

**Over the set** (docs/math.md (26.3)): with b_i the n items' bits/dim,

    mean = (1/n) Σ_i b_i,   SE = s/√n,   s² = Σ_i (b_i − mean)² / (n − 1),

and the same for log p (nats) and NFE. The items' dequantization noise and Hutchinson probes are
independent across items, so SE covers them along with the sampling of the test set.

**Files** (with ``out``): each process appends one JSON line per item (``index``, ``log_prob``
nats, ``bits_per_dim``, ``nfe``) to ``OUT/likelihood-rank{r}.jsonl`` once per finished batch,
flushed to disk; ``OUT/run.json`` holds the settings; rank 0 writes ``OUT/summary.json`` at the end.
Items are cut into fixed blocks of ``batch_size`` consecutive indices dealt to the ranks in turn
(:meth:`diffsolve.distributed.DistContext.blocks`), so 1 and N processes integrate the same batches
and write the same values (with ``per_sample=False`` a shared adaptive step couples the items of
one batch; the default per-sample steps keep them independent). ``resume=True`` skips the blocks
already complete in any rank file, with any number of processes; the rows of a block cut short by
a kill (and a torn last line) are dropped and the block runs again, so every item is written
exactly once. ``run.json`` records log_likelihood's solver settings as they resolve, defaults
included, the form of Δ and a fingerprint of the network's weights, so a run resumed under other
defaults or with another network (a retrained one under the same name) is refused, not mixed.

References:
    Song, Sohl-Dickstein, Kingma, Kumar, Ermon, Poole, Score-Based Generative Modeling through
    Stochastic Differential Equations, arXiv:2011.13456 (App. D.2: bits/dim with dequantization);
    Kingma, Salimans, Poole, Ho, Variational Diffusion Models, arXiv:2107.00630;
    Theis, van den Oord, Bethge, A note on the evaluation of generative models, arXiv:1511.01844.
"""
from __future__ import annotations

import hashlib
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ._numbers import is_integer
from ._text import count
from .checks import check_data, check_seed
from .denoiser import NonFiniteError, _add_note
from .dequantize import Dequantization
from .distributed import DistContext
from .files import load_tensor_file
from .images import (
    DATA_RANGE,
    Dataset,
    as_dataset,
    check_data_range,
    from_uint8,
)
from .likelihood_files import (
    ROW_FIELDS,
    ROWS_GLOB,
    RUN_NAME,
    SUMMARY_NAME,
    append_rows,
    check_out_dir,
    claim,
    open_out,
    read_rows,
    rows_path,
)
from .runfiles import WriteFailed, jsonable, weights_fingerprint, write_json

__all__ = ["CONTINUOUS_NOTE", "ROWS_GLOB", "ROW_FIELDS", "RUN_NAME", "SUMMARY_NAME", "DatasetLikelihood",
           "check_out_dir", "dataset_log_likelihood", "read_rows", "rows_path", "summarize"]

CONTINUOUS_NOTE = ("bits/dim of continuous data without dequantization: -log p(x)/(d ln 2) of a density, not a "
                   "code length; it is negative wherever p(x) > 1, which is not an error")
_FINGERPRINT_ITEMS = 16


@dataclass
class DatasetLikelihood:
    """What :func:`dataset_log_likelihood` returns (the same on every rank).

    Attributes:
        summary: n, d, bits_per_dim (mean) and bits_per_dim_stderr, mean_log_prob (nats) and
            log_prob_stderr, mean_nfe, what the bits/dim are of, the data and settings, wall time.
        rows: every item's row (``index``, ``log_prob``, ``bits_per_dim``, ``nfe``), by index.
        out: the output directory, or None.
    """

    summary: dict
    rows: list
    out: Path | None = None


# --- inputs ---------------------------------------------------------------------------------------
def _as_dataset(data, denoiser, name: str) -> Dataset:
    """A :class:`diffsolve.images.Dataset` from a Dataset, a tensor (N, ...) or a path open_dataset reads."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, Tensor):
        if data.dim() < 2 or data.shape[0] == 0 or not (data.is_floating_point() or data.dtype == torch.uint8):
            check_data(denoiser, data, name=name)  # the library's message for a bad shape or dtype
            raise TypeError(f"{name} must hold uint8 images or floating-point samples, got {data.dtype}")
        return as_dataset(data, name.removeprefix("--data "))
    if isinstance(data, (str, os.PathLike)):
        return as_dataset(data)
    raise TypeError(f"data must be a path, a diffsolve.images.Dataset or a tensor (N, ...), got {type(data).__name__}")


def _levels_on_grid(data, levels, data_range, name: str):
    """An integer tensor holds level indices k of ``levels`` (uint8 too when ``levels`` is given; without it,
    uint8 is 8-bit images): their points lo + (hi − lo)k/(K − 1) of the grid (float64), which the
    dequantization maps back to k exactly."""
    if not isinstance(data, Tensor) or data.is_floating_point() or data.is_complex() or data.dtype == torch.bool or (
            data.dtype == torch.uint8 and levels is None):
        return data
    if levels is None:
        raise ValueError(f"{name} holds integers ({data.dtype}): if they are level indices 0..K-1, give their number "
                         f"(levels=K, --levels K); if they are samples, convert them to floating point")
    try:
        return Dequantization(levels, data_range).grid_point(data)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None


def _dequantization(is_image: bool, dequantize, levels, data_range) -> Dequantization | None:
    """uint8 images: 256 levels unless ``dequantize=False``; floats: only with ``levels`` (never by default)."""
    if dequantize not in (None, True, False):
        raise TypeError(f"dequantize must be None (automatic), True or False, got {dequantize!r}")
    if is_image:
        if levels is not None:
            raise ValueError(f"levels={levels!r} is for float data on a K-level grid; uint8 images have 256 levels")
        return None if dequantize is False else Dequantization(256, data_range)
    if levels is None:
        if dequantize:
            raise ValueError("the data are floating-point samples (model space), not levels: dequantization needs "
                             "the number of levels K of their grid lo + (hi - lo)k/(K - 1) (levels=K, --levels K)")
        return None
    if dequantize is False:
        raise ValueError(f"levels={levels!r} asks for dequantization, dequantize=False refuses it: give one")
    return Dequantization(levels, data_range)


def _prepared(batch: Tensor, deq, data_range, device) -> Tensor:
    """What log_likelihood is given: uint8 levels k as they are (dequantized there), uint8 without
    dequantization as their values lo + (hi − lo)k/255, floats as they are."""
    if batch.dtype == torch.uint8 and deq is None:
        batch = from_uint8(batch, data_range)
    return batch.to(device)


def _check_all(ds: Dataset, n: int, batch_size: int, denoiser, deq, data_range, device, name: str):
    """The first batch against the model (shape, dtype, grid); float data in full (finite, on the grid):
    a bad item stops the run before any work."""
    for s in range(0, n, batch_size):
        e = min(s + batch_size, n)
        x = _prepared(ds[s:e], deq, data_range, device)
        where = name if (s, e) == (0, n) else f"{name}[{s}:{e}]"
        check_data(denoiser, x, allow_int=deq is not None, name=where)
        if deq is not None:
            try:
                deq.level_index(x)
            except ValueError as err:
                raise ValueError(f"{where}: {err} (data_range, --data-range; levels, --levels)") from None
        if ds.is_image:
            return  # images are levels by construction; reading them all twice would cost more than it checks


def _fingerprint(ds: Dataset, n: int) -> str:
    x = ds[0:min(n, _FINGERPRINT_ITEMS)].detach().cpu().contiguous()
    return hashlib.sha256(x.numpy().tobytes() + str((x.dtype, tuple(x.shape))).encode()).hexdigest()[:16]


# log_likelihood's options a run does not record: set per item here, or they change no row (memory, a cap on
# steps); every other option is recorded as it resolves, given or default, so that a run resumed under other
# defaults is refused instead of mixing rows computed two ways, and one given at its default is not
_UNRECORDED = ("seeds", "dequantize", "chunk_size", "max_steps")
# the form of the divergence integral Δ (the whole divergence f_t d + K_t ∇·ε̂ since 2026-12-06)
DELTA_FORM = "whole divergence"


def _settings(ds, n, denoiser, deq, data_range, batch_size, seed, model, resolved) -> dict:
    """What a resumed run must share with the rows already written (not the number of processes, nor
    the data's path: the data are recognised by their size, shape and first items); the options of
    log_likelihood are recorded as they resolve, defaults included (all but :data:`_UNRECORDED`), with the
    form of Δ (:data:`DELTA_FORM`)."""
    options = {k: v for k, v in resolved.items() if k not in _UNRECORDED}  # as they run (resolved_options)
    return {"n": n, "shape": list(ds.shape), "kind": "uint8" if ds.is_image else "float",
            "fingerprint": _fingerprint(ds, n), "model": model or type(denoiser.net).__name__,
            "weights": weights_fingerprint(denoiser.net),
            "schedule": type(denoiser.schedule).__name__, "dequantize": deq is not None,
            "levels": deq.levels if deq is not None else None, "data_range": list(data_range),
            "batch_size": batch_size, "seed": seed, "delta": DELTA_FORM,
            **{k: jsonable(v) for k, v in sorted(options.items())}}


# --- the run --------------------------------------------------------------------------------------
def summarize(rows: list[dict], d: int, deq: Dequantization | None = None) -> dict:
    """Means and standard errors (std with n − 1 over √n) over the items (module docstring, (26.3))."""
    def mean_se(key):
        v = np.array([r[key] for r in rows], dtype=np.float64)
        return float(v.mean()), (float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else None)

    bpd, bpd_se = mean_se("bits_per_dim")
    lp, lp_se = mean_se("log_prob")
    of = (f"discrete data: uniform dequantization of {deq.levels} levels, an upper bound on the model's bits/dim"
          if deq is not None else CONTINUOUS_NOTE)
    return {"n": len(rows), "d": d, "bits_per_dim": bpd, "bits_per_dim_stderr": bpd_se, "mean_log_prob": lp,
            "log_prob_stderr": lp_se, "mean_nfe": mean_se("nfe")[0], "dequantized": deq is not None,
            "levels": deq.levels if deq is not None else None, "bits_per_dim_of": of}


def _batch_rows(denoiser, ds, s, e, deq, data_range, device, seed, options) -> list[dict]:
    from .likelihood import log_likelihood

    batch = ds[s:e]
    try:
        with denoiser.calling_in(batch.dtype):  # 8-bit data: a plain function in torch's default dtype
            res = log_likelihood(denoiser, _prepared(batch, deq, data_range, device), seeds=range(seed + s, seed + e),
                                 dequantize=deq, **options)
    except (FloatingPointError, RuntimeError) as err:  # the network's NaN or its own error: say which items
        _add_note(err, f"diffsolve: in the log-likelihood of items {s}-{e - 1}")
        raise
    lp, bpd, nfe = (t.detach().cpu().tolist() for t in (res.log_prob, res.bits_per_dim, res.nfe))
    bad = [s + j for j, v in enumerate(lp) if not math.isfinite(v)]
    if bad:  # a row is never written with NaN (a resumed run would count it as done)
        raise NonFiniteError(f"the log-likelihood of item{'s' * (len(bad) > 1)} {', '.join(map(str, bad[:5]))} is "
                             f"{lp[bad[0] - s]}; nothing was written for items {s}-{e - 1}")
    return [{"index": s + j, "log_prob": lp[j], "bits_per_dim": bpd[j], "nfe": int(nfe[j])} for j in range(e - s)]


def _net_device(denoiser) -> str:
    """Where the network's weights are (the batches go there), cpu if it has none."""
    params = getattr(getattr(denoiser, "net", None), "parameters", None)
    first = next(iter(params()), None) if callable(params) else None
    return str(first.device) if first is not None and first.device.type != "meta" else "cpu"


def _announce(ds, n, deq, data_range, options, world_size, model) -> str:
    what = ("8-bit images" if ds.is_image else "samples") + f" of shape {tuple(ds.shape)}"
    lo, hi = data_range
    how = (f"dequantized onto [{lo:g}, {hi:g}] with {deq.levels} levels" if deq is not None else
           "no dequantization: bits/dim of a density, can be negative")
    return (f"log-likelihood of {count(n, 'item')} ({what}; {how}) under {model or 'the model'}, "
            f"{options.get('divergence', 'hutchinson')} divergence, {count(world_size, 'process', 'processes')} ...")


def _note(progress: bool, msg: str):
    if progress:
        print(msg, file=sys.stderr, flush=True)


def dataset_log_likelihood(denoiser, data, out=None, *, batch_size: int = 64, n: int | None = None,
                           data_range=DATA_RANGE, dequantize: bool | None = None, levels: int | None = None,
                           seed: int = 0, resume: bool = False, dist: DistContext | None = None, device=None,
                           model: str | None = None, progress: bool = False, data_name: str | None = None,
                           **options) -> DatasetLikelihood:
    """Log-likelihood and bits/dim of every item of a dataset, and their means with standard errors.

    Args:
        denoiser: a :class:`~diffsolve.Denoiser`.
        data: a path :func:`diffsolve.images.open_dataset` reads (image folder, ``.npz``/``.npy``/``.pt``
            file, folder of npz shards), a :class:`~diffsolve.images.Dataset` or a tensor (N, ...):
            uint8 = 8-bit images, floats = samples in model space, other integers = level indices
            0..K − 1 of ``levels`` (placed on its grid of ``data_range``).
        out: directory for the rows, ``run.json`` and ``summary.json`` (module docstring); None keeps
            everything in memory (one process only).
        batch_size: items per :func:`~diffsolve.log_likelihood` call, and the block dealt to a process.
        n: the first n items only (default all).
        data_range: (lo, hi) the model's data range, where the 8-bit levels (or ``levels``) are mapped.
        dequantize: None (default: on for uint8 images, off for floats), True or False.
        levels: K, for float data on the grid lo + (hi − lo)k/(K − 1) or integer levels k: dequantize
            with K cells.
        seed: item i uses seed + i (dequantization noise, then its probes).
        resume: continue the rows in ``out`` (same settings), running only unfinished blocks.
        dist: a :class:`~diffsolve.distributed.DistContext` (``diffsolve.distributed.init(device)``);
            default one process.
        device: where the batches go (default: the DistContext's device, else the network's).
        model: a name recorded in ``run.json`` (checked on resume, with the weights' fingerprint).
        progress: one line per finished batch on stderr (rank 0).
        data_name: how error messages name the data (default ``--data PATH`` or ``data``).
        **options: passed to :func:`diffsolve.log_likelihood` unchanged (divergence, probes, rtol, atol, ...).

    Returns:
        :class:`DatasetLikelihood` (the summary is also printed by ``diffsolve likelihood``).
    """
    device = torch.device(device if device is not None else dist.device if dist is not None else _net_device(denoiser))
    dist = dist or DistContext()
    for key in ("seeds", "dequantize"):
        if key in options:
            raise TypeError(f"{key}= is set per item here (seed + index, dequantize/levels); do not pass it")
    if not is_integer(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    name = data_name or (f"--data {data}" if isinstance(data, (str, os.PathLike)) else "data")
    data_range = check_data_range(data_range)
    suffix = Path(data).suffix.lower() if isinstance(data, (str, os.PathLike)) else None
    if levels is not None and suffix in (".npy", ".pt", ".npz") and Path(data).is_file():
        data = load_tensor_file(data, name, images=True, levels=True)  # integer level indices allowed
    ds = _as_dataset(_levels_on_grid(data, levels, data_range, name), denoiser, name)
    if n is None:
        n = len(ds)
    elif not is_integer(n) or not 1 <= n <= len(ds):
        raise ValueError(f"n must be an integer in 1..{len(ds)} (the dataset's size), got {n!r}")
    from .likelihood import resolved_options

    resolved = resolved_options(options, denoiser.schedule)  # every option checked before any folder or work
    check_seed(seed, " (seed)")
    check_seed(seed + n - 1, f" (seed + index of the last of {n} items)")
    deq = _dequantization(ds.is_image, dequantize, levels, data_range)
    _check_all(ds, n, batch_size, denoiser, deq, data_range, device, name)
    d = math.prod(ds.shape)
    banner = _announce(ds, n, deq, data_range, options, dist.world_size, model)
    if out is None:
        if dist.active:
            raise ValueError(f"{dist.world_size} processes write their rows to files: give out (--out DIR)")
        _note(progress, banner)
        return _in_memory(denoiser, ds, n, batch_size, deq, data_range, device, seed, options, d, progress)
    out = check_out_dir(out)
    settings = _settings(ds, n, denoiser, deq, data_range, batch_size, seed, model, resolved)
    with claim(out, dist.is_main):
        return _to_files(denoiser, ds, n, out, settings, resume, dist, deq, data_range, device, options, d, progress,
                         banner)


def _in_memory(denoiser, ds, n, batch_size, deq, data_range, device, seed, options, d, progress):
    t0, rows = time.perf_counter(), []
    for s in range(0, n, batch_size):
        rows += _batch_rows(denoiser, ds, s, min(s + batch_size, n), deq, data_range, device, seed, options)
        _note(progress, f"likelihood: {len(rows)}/{n} items, {time.perf_counter() - t0:.1f} s")
    summary = dict(summarize(rows, d, deq), computed=n, wall_time_s=time.perf_counter() - t0, data=str(ds.path))
    return DatasetLikelihood(summary, rows, None)


def _to_files(denoiser, ds, n, out, settings, resume, dist, deq, data_range, device, options, d, progress, banner):
    error, done = None, set()
    if dist.is_main:
        try:
            done = open_out(out, settings, resume, settings["batch_size"])
        except (ValueError, OSError) as e:  # (WriteFailed is an OSError)
            error = (str(e), isinstance(e, WriteFailed))
    error, done = dist.broadcast_object((error, done))
    if error is not None:  # the same error on every process: a refusal, or a write that failed
        raise WriteFailed(None, error[0]) if error[1] else ValueError(error[0])
    bs, seed = settings["batch_size"], settings["seed"]
    todo = [(s, e) for s, e in dist.blocks(n, bs) if s not in done]
    progress = progress and dist.is_main
    _note(progress, banner)  # after the checks of the folder: a refused resume prints only its reason
    if done:
        _note(progress, f"resuming {out}: {count(sum(min(bs, n - s) for s in done), 'item')} of {n} already done")
    path, t0, k = rows_path(out, dist.rank), time.perf_counter(), 0
    for j, (s, e) in enumerate(todo):
        try:
            rows = _batch_rows(denoiser, ds, s, e, deq, data_range, device, seed, options)
        except (FloatingPointError, RuntimeError) as err:
            kept = k + sum(min(bs, n - b) for b in done)
            if kept:
                _add_note(err, f"diffsolve: the rows of the {count(kept, 'item')} finished before are kept in {out}: "
                               f"rerun with resume (--resume) once the cause is fixed")
            raise
        append_rows(path, rows)
        k += e - s
        _note(progress, f"likelihood: batch {j + 1}/{len(todo)} of rank 0 (items {s}-{e - 1}) done, "
                        f"{time.perf_counter() - t0:.1f} s")
    computed = int(dist.reduce(k, "sum"))
    dist.barrier()
    rows = read_rows(out)
    if [r["index"] for r in rows] != list(range(n)):
        have = {r["index"] for r in rows}
        missing = [i for i in range(n) if i not in have]
        raise ValueError(f"{out} lacks rows for {count(len(missing), 'item')} (first {missing[:5]}) or holds some "
                         f"twice; rerun with --resume")
    summary = dict(summarize(rows, d, deq), computed=computed, wall_time_s=time.perf_counter() - t0,
                   world_size=dist.world_size, data=str(ds.path), out=str(out), settings=settings)
    if dist.is_main:
        write_json(out / SUMMARY_NAME, summary, kept=f"every row is in {out}: rerun with --resume to write it")
    dist.barrier()  # the summary is on disk before any process returns
    return DatasetLikelihood(summary, rows, out)
