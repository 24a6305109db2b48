r"""``generate``: draw many samples with :func:`diffsolve.sample` and write them to a folder as they
finish (``diffsolve sample --outdir``; EDM's ``generate.py`` layout).

**Blocks** (docs/math.md (26.2)). The seed list is cut into fixed blocks of ``batch_size``
consecutive positions; block k is one call of :func:`diffsolve.sample` and goes to rank
k mod world_size (:meth:`diffsolve.distributed.DistContext.blocks`). The boundaries do not depend on
the number of processes, so 1 and N processes (``torchrun --nproc-per-node N -m diffsolve sample
…``) draw the same batches and write byte-identical files, and each rank lists and writes only the
seeds of its own blocks. Sample i depends on seeds[i] only (:class:`diffsolve.NoiseSource`); the
solver, budget, grid, η, dtype and ``denoise_final`` are passed to :func:`diffsolve.sample` unchanged.

**What is written** in ``outdir``:

- ``format="png"``: one file per seed, ``{seed // 1000 * 1000:06d}/{seed:06d}.png`` (EDM's layout),
  the 8-bit image of the sample by the map of docs/math.md (26.1) (:func:`diffsolve.images.to_uint8`
  with ``data_range``). Only samples of shape (C, H, W) with C = 1 or 3 are images; any other shape
  is refused before any work (use ``"npz"``).
- ``format="npz"``: one shard per block, ``samples-{first_seed:06d}-{last_seed:06d}.npz`` (the first
  and last seed of the block's samples written in it; a seed is in one shard only, so names cannot
  collide), keys ``seeds`` (int64), ``x`` (the samples in model space, float32 by default) and,
  with class labels, ``labels`` (int64). The zip entries carry a fixed date, so the bytes depend on
  the samples only. :func:`diffsolve.images.open_dataset` reads the folder back in seed order.
- ``diffsolve-sample.json``: the settings of the run (format, batch size, sample shape, data range,
  labels, guidance, the model's name, a fingerprint of its weights, an already-guided denoiser's scale
  and a fingerprint of its conditions, everything passed to ``sample`` and a tuned grid file's contents
  by fingerprint); ``resume`` compares them.
- with class labels and ``format="png"``: ``dataset.json``, EDM's ``{"labels": [["000000/000003.png",
  7], …]}`` for every seed of the run, written by rank 0 before the first image (the labels depend only
  on the seeds, see below), so an interrupted run's images have their labels.

Every file is written under a temporary name starting with "." in the same folder and then renamed
(``os.replace``): a killed run leaves no partial file that :func:`~diffsolve.images.open_dataset`
reads (it skips dot-files), at most one hidden ``.….tmp.png``/``.….tmp.npz`` per process, which the
resumed run overwrites.

**Resume.** ``resume=True`` skips the seeds already written (png: the seed's file exists; npz: the
seed is in a shard) and draws each block for its missing seeds only, so every seed is written once;
the settings must be those of the folder's run (then the files equal an uninterrupted run's on the
same device, up to the network's round-off at the smaller batch a partial block is redrawn in: a
float32 network can move a pixel of an 8-bit PNG by one level in rare images), else it is refused. Without ``resume`` a folder that already holds samples is refused
(no overwrite: finish it with ``resume``, or give another folder). ``resume`` on an empty or new
folder just starts.

**Class labels** (a class-conditional network: its ``net.null_class`` is the null label, as for
:class:`diffsolve.CFGDenoiser`): ``class_label=k`` gives every sample class k; ``class_label="random"``
gives sample i the class ``numpy.random.default_rng([LABEL_STREAM, seeds[i]]).integers(num_classes)``,
a function of its seed only (a stream apart from the noise's). ``guidance=w`` applies classifier-free
guidance (:class:`diffsolve.CFGDenoiser`, (CFG) there; default 1: the conditional model alone).

Memory stays flat in the number of seeds: one block of samples is held at a time.
"""
from __future__ import annotations

import contextlib
import inspect
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import sample_files as files
from ._text import StatusLine, count
from .checks import check_int, check_number
from .defaults import default_state_dtype
from .images import DATA_RANGE, check_data_range, to_uint8
from .noise import parse_seeds
from .runfiles import fingerprint, hold, jsonable, output_dir, weights_fingerprint, write_json
from .sample_files import png_path, shard_name
from .tuned import load_grid

__all__ = ["FORMATS", "LABEL_STREAM", "GenerateResult", "generate", "png_path", "random_labels", "shard_name"]

FORMATS = ("png", "npz")
LABEL_STREAM = 0x6C61626C  # "labl": the labels' random stream, apart from the noise's (seeded by the seed alone)
NPZ_DTYPES = {"float32": np.float32, "float64": np.float64}
_NOT_SAMPLE_OPTIONS = ("x", "shape", "seeds", "generator", "trajectory")


@dataclass
class GenerateResult:
    """What :func:`generate` returns (totals over all processes).

    Attributes:
        outdir: the folder written.
        format: ``"png"`` or ``"npz"``.
        total: seeds asked for; written: samples drawn and written by this run; skipped: seeds already
            in ``outdir`` (``resume``).
        nfe: network evaluations per sample (the most over the blocks; 0 if nothing was drawn).
        seconds: wall time; world_size: processes.
        labels_file: ``dataset.json`` when png files with class labels were written, else None.
    """

    outdir: Path
    format: str
    total: int
    written: int
    skipped: int
    nfe: int
    seconds: float
    world_size: int = 1
    labels_file: Path | None = None


def random_labels(seeds, num_classes: int) -> np.ndarray:
    """The class of each seed for ``class_label="random"``: a function of the seed alone (int64)."""
    return np.array([np.random.default_rng([LABEL_STREAM, int(s)]).integers(num_classes) for s in seeds],
                    dtype=np.int64)


def generate(denoiser, seeds, outdir, *, format: str = "png", batch_size: int = 64, data_range=DATA_RANGE,
             class_label=None, num_classes: int | None = None, guidance: float | None = None, uncond=None,
             resume: bool = False, progress: bool = False, npz_dtype: str = "float32", name: str | None = None,
             dist=None, **sample_kwargs) -> GenerateResult:
    r"""Draw one sample per seed with :func:`diffsolve.sample` and write them to ``outdir`` (module docstring).

    Args:
        denoiser: a :class:`~diffsolve.Denoiser` that knows its sample shape (``Denoiser(..., shape=...)``).
        seeds: one seed per sample (``"0-49999"``, a list or a range; each seed once).
        outdir: the folder (created if needed).
        format: ``"png"`` (one image per seed) or ``"npz"`` (one shard per block).
        batch_size: seeds per block (one ``sample`` call; fixes the block boundaries).
        data_range: (lo, hi) of the model's data, for the 8-bit map of PNG files (default (−1, 1)).
        class_label: None (no labels), an int (every sample) or ``"random"`` (drawn from each seed).
        num_classes: classes for ``"random"`` (default ``net.num_classes``).
        guidance: classifier-free guidance scale w (needs ``class_label``; default 1: conditional).
        uncond: the null label (default ``net.null_class``).
        resume: skip the seeds already written (same settings), instead of refusing a folder with samples.
        progress: a progress line on stderr (rank 0 only) and a final line with the totals.
        npz_dtype: ``"float32"`` (default) or ``"float64"``, the dtype of ``x`` in npz shards.
        name: the model's name, recorded in the settings (checked on resume).
        dist: a :class:`~diffsolve.distributed.DistContext`; default :func:`diffsolve.distributed.init`
            (torchrun's processes, or this one alone), closed at the end if started here.
        **sample_kwargs: ``solver``, ``nfe``, ``steps``, ``grid``, ``eta``, ``noise``, ``denoise_final``,
            ``dtype``, ``device``, ``solver_options``: passed to :func:`diffsolve.sample` unchanged.
    """
    t0 = time.perf_counter()
    plan = _Plan(denoiser, seeds, outdir, format, batch_size, data_range, class_label, num_classes, guidance, uncond,
                 resume, npz_dtype, name, sample_kwargs)
    own = dist is None
    if own:
        from .distributed import init

        dist = init(str(sample_kwargs.get("device") or "cpu"))
    try:
        lock = hold(plan.outdir, files.LOCK, "diffsolve sample", "--outdir") if dist.is_main else None
        with lock or contextlib.nullcontext():
            return _run(plan, dist, bool(progress), t0)
    finally:
        if own:
            dist.close()


# --- the plan: every check before any work -------------------------------------------------------------------
class _Plan:
    """The checked arguments, the settings recorded in the folder, and the denoiser of each block."""

    def __init__(self, denoiser, seeds, outdir, fmt, batch_size, data_range, class_label, num_classes, guidance,
                 uncond, resume, npz_dtype, name, sample_kwargs):
        from .denoiser import Denoiser

        if not isinstance(denoiser, Denoiser):
            raise TypeError(f"denoiser must be a diffsolve.Denoiser, got {type(denoiser).__name__}")
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; valid formats: {', '.join(FORMATS)}")
        self.denoiser, self.format = denoiser, fmt
        self.batch_size = check_int("batch_size", batch_size)
        self.data_range = check_data_range(data_range)
        self.resume, self.name = bool(resume), name
        if npz_dtype not in NPZ_DTYPES:
            raise ValueError(f"npz_dtype must be one of {', '.join(NPZ_DTYPES)}, got {npz_dtype!r}")
        self.npz_dtype = npz_dtype
        bad = [k for k in _NOT_SAMPLE_OPTIONS if k in sample_kwargs]
        if bad:
            raise TypeError(f"generate draws x from the seeds, one block at a time; drop {', '.join(bad)}")
        self.sample_kwargs = _checked_sample_options(denoiser, sample_kwargs)
        self.seeds = parse_seeds(seeds, distinct=True)
        if len(self.seeds) == 0:
            raise ValueError("seeds is empty; give one seed per sample, e.g. seeds='0-49999'")
        self.shape = denoiser.shape
        if self.shape is None:
            raise ValueError("the denoiser has no sample shape; build it with Denoiser(..., shape=(C, H, W))")
        if fmt == "png" and not (len(self.shape) == 3 and self.shape[0] in (1, 3)):
            raise ValueError(f"PNG files hold images of shape (C, H, W) with C = 1 or 3; this model's samples have "
                             f"shape {tuple(self.shape)}: use --format npz (format='npz')")
        if fmt == "png":
            from .images import _pil

            _pil()  # a missing Pillow is said before the folder is made
        self._labels(class_label, num_classes, guidance, uncond)
        self.outdir = output_dir(outdir, "--outdir")
        self.settings = jsonable({
            "format": fmt, "batch_size": self.batch_size, "shape": list(self.shape),
            "data_range": list(self.data_range) if fmt == "png" else None,
            "npz_dtype": npz_dtype if fmt == "npz" else None, "model": name,
            "class": self.class_label, "num_classes": self.num_classes, "guidance": self.guidance,
            "sample": {"dtype": default_state_dtype(denoiser),
                       **{k: v for k, v in sorted(sample_kwargs.items()) if v is not None}},
        })
        self.settings["sample"].pop("device", None)  # a resumed run may use another device
        # what a name or a path does not pin down: the network's weights, and a tuned grid file's contents
        self.settings["weights"] = weights_fingerprint(denoiser.net)
        guided = _guided_record(denoiser)
        if guided is not None:  # an already-guided denoiser: its scale and conditions are not weights
            self.settings["guided"] = guided
        tuned = load_grid(sample_kwargs.get("grid"))
        if tuned is not None:
            self.settings["sample"]["grid"] = {"file": jsonable(sample_kwargs["grid"]), "runs": tuned.fingerprint}

    def _labels(self, class_label, num_classes, guidance, uncond):
        self.class_label, self.num_classes, self.guidance, self.uncond = None, None, None, None
        from .guidance import CFGDenoiser

        if isinstance(self.denoiser, CFGDenoiser) and not _one_condition(self.denoiser):
            raise TypeError("the denoiser is a CFGDenoiser with a condition per row, which cannot follow the seeds "
                            "block by block (nor be recorded for a resume): give the unguided denoiser with "
                            "class_label= and guidance=, which generate guides itself")
        if class_label is None:
            if guidance is not None:
                raise ValueError("guidance needs class labels: give a class (class_label=k or 'random'; "
                                 "--class N or --class random)")
            if num_classes is not None:
                raise ValueError("num_classes is for class_label='random' (--class random)")
            return
        if isinstance(self.denoiser, CFGDenoiser):
            raise TypeError("the denoiser is already guided (a CFGDenoiser): give the unguided denoiser with "
                            "class_label= and guidance=, which generate guides itself, block by block")
        net = self.denoiser.net
        self.uncond = getattr(net, "null_class", None) if uncond is None else uncond
        if self.uncond is None:
            meta = getattr(self.denoiser, "metadata", None)  # a zoo model's
            if uncond is None and meta is not None and not meta.get("num_classes"):
                raise ValueError("this model is unconditional (its metadata names no classes): sample it without "
                                 "class labels (drop --class / class_label= and --guidance)")
            raise ValueError("class labels need the model's label for 'no class' (used by classifier-free "
                             "guidance), and this network defines no null_class: give it (uncond=K; for a "
                             "diffusers UNet with num_class_embeds = K + 1 trained with a null class, usually its "
                             "last label K), or sample without --class/--guidance")
        known = getattr(net, "num_classes", None)
        if class_label == "random":
            k = num_classes if num_classes is not None else known
            if k is None:
                raise ValueError("class_label='random' needs num_classes (--num-classes K): the network does not "
                                 "say how many classes it has")
            self.num_classes = check_int("num_classes", k, minimum=1)
            if known is not None and self.num_classes > known:
                raise ValueError(f"num_classes={self.num_classes}, but the network has {known} classes")
        else:
            if num_classes is not None:
                raise ValueError("num_classes is for class_label='random' (--class random)")
            if isinstance(class_label, str) and class_label.isdigit():
                class_label = int(class_label)
            if isinstance(class_label, bool) or not isinstance(class_label, (int, np.integer)):
                raise ValueError(f"class_label must be a class index (an int) or 'random', got {class_label!r}")
            upper = known if known is not None else None
            if class_label < 0 or (upper is not None and class_label >= upper) or class_label == self.uncond:
                valid = f"0..{upper - 1}" if upper is not None else f"an index >= 0 other than {self.uncond}"
                raise ValueError(f"class {class_label} is not a class of this model; valid classes: {valid}")
        self.class_label = class_label if class_label == "random" else int(class_label)
        self.guidance = 1.0 if guidance is None else check_number("guidance", guidance, minimum=0.0, maximum=1e30)
        if self.guidance == 0:
            warnings.warn("guidance=0 is the unconditional model (x̂ = x̂_uncond + w (x̂_cond − x̂_uncond)): the "
                          "samples do not follow the class labels recorded with them; guidance=1 is the "
                          "conditional model", UserWarning, stacklevel=4)

    def labels(self, seeds) -> np.ndarray | None:
        if self.class_label is None:
            return None
        if self.class_label == "random":
            return random_labels(seeds, self.num_classes)
        return np.full(len(seeds), self.class_label, dtype=np.int64)

    def block_denoiser(self, labels):
        if labels is None:
            return self.denoiser
        from .guidance import CFGDenoiser

        return CFGDenoiser(self.denoiser, self.guidance, torch.from_numpy(labels), uncond=self.uncond)


# --- the run -------------------------------------------------------------------------------------------------
class _Progress:
    """``done/total samples, rate, time left`` as a :class:`~diffsolve._text.StatusLine` (the last one always)."""

    def __init__(self, on: bool, total: int, rank_note: str):
        self.line, self.total, self.note, self.done = StatusLine(on, "sample"), total, rank_note, 0

    def add(self, n: int):
        self.done += n
        rate = self.done / max(time.perf_counter() - self.line.t0, 1e-9)
        left = (self.total - self.done) / rate if rate > 0 else math.inf
        self.line(f"{self.done}/{self.total} samples{self.note} ({100 * self.done / max(self.total, 1):.0f}%), "
                  f"{rate:.1f}/s, {left:.0f} s left", force=self.done >= self.total)

    def close(self):
        self.line.close()


def _run(plan: _Plan, dist, progress: bool, t0: float) -> GenerateResult:
    n = len(plan.seeds)
    error, write_settings, todo_blocks, skipped = None, False, [], 0
    try:  # every rank checks the folder and lists its own blocks before any rank writes to it
        write_settings = files.check_folder(plan.outdir, plan.settings, plan.resume)
        todo_blocks, skipped = files.seeds_todo(plan.outdir, plan.seeds, dist.blocks(n, plan.batch_size), plan.format,
                                                plan.class_label is not None, plan.resume)
    except (ValueError, OSError) as e:
        error = str(e)
    error = dist.first_error(error)
    if error is not None:
        raise ValueError(error.split(": ", 1)[1] if error.startswith("rank ") else error)
    if write_settings and dist.is_main:
        write_json(plan.outdir / files.SETTINGS, plan.settings)
    labels_file = None
    if plan.format == "png" and plan.class_label is not None:
        # before any image: the labels depend on the seeds alone, so every png an interrupted run leaves has its
        # label (entries of seeds not drawn yet are harmless to EDM's reader, which looks up the files it finds)
        labels_file = plan.outdir / files.LABELS
        if dist.is_main:
            files.write_png_labels(labels_file, _seed_labels(plan))
    all_skipped = int(dist.reduce(skipped, "sum"))
    if progress and dist.is_main:
        procs = f", {dist.world_size} processes" if dist.active else ""
        there = f" ({all_skipped} already there)" if all_skipped else ""
        print(f"{plan.name + ': ' if plan.name else ''}{count(n - all_skipped, 'seed')} of {n} to draw{there} "
              f"-> {plan.outdir} ({plan.format}, blocks of {plan.batch_size}{procs})", file=sys.stderr, flush=True)

    written = nfe = 0
    error = None
    try:
        note = f" on rank 0 of {dist.world_size}" if dist.active else ""
        bar = _Progress(progress and dist.is_main, sum(e - s if t is None else len(t) for s, e, t in todo_blocks),
                        note)
        for s, e, todo in todo_blocks:
            rows = range(s, e) if todo is None else todo
            nfe = max(nfe, _draw_block(plan, rows))
            written += len(rows)
            bar.add(len(rows))
        bar.close()
    except (ValueError, TypeError, OSError, RuntimeError, FloatingPointError) as e:
        error = f"{type(e).__name__}: {e}" if isinstance(e, RuntimeError) else str(e)
        failure = e
    else:
        failure = None
    first = dist.first_error(error)  # every rank gets here: a rank that failed stops all of them
    if first is not None:
        if failure is not None:
            raise failure
        raise RuntimeError(f"another process failed: {first}")
    written, skipped = int(dist.reduce(written, "sum")), all_skipped
    nfe = int(dist.reduce(nfe, "max"))
    dist.barrier()
    seconds = time.perf_counter() - t0
    result = GenerateResult(outdir=plan.outdir, format=plan.format, total=n, written=written, skipped=skipped,
                            nfe=nfe, seconds=seconds, world_size=dist.world_size, labels_file=labels_file)
    if progress and dist.is_main:
        procs = f" by {dist.world_size} processes" if dist.active else ""
        skip = f" ({skipped} already there)" if skipped else ""
        print(f"wrote {count(written, 'sample')}{skip} of {n} to {plan.outdir} as {plan.format}{procs} in "
              f"{seconds:.1f} s ({written / max(seconds, 1e-9):.1f} samples/s), "
              f"{count(nfe, 'network evaluation')} per sample", file=sys.stderr, flush=True)
    return result


def _guided_record(denoiser) -> dict | None:
    """For a :class:`~diffsolve.CFGDenoiser` (one condition for every row), its scale and a fingerprint of its
    conditions, which a resume must find unchanged (its weights fingerprint covers the network only)."""
    from .guidance import CFGDenoiser

    if not isinstance(denoiser, CFGDenoiser):
        return None
    inner = denoiser.net

    def leaves(c):  # tensors and numbers as they are, anything else by its repr
        if isinstance(c, dict):
            return [leaf for key in sorted(c) for leaf in leaves(c[key])]
        if c is None:
            return []
        if isinstance(c, (torch.Tensor, int, float, bool)):
            return [torch.as_tensor(c)]
        return [torch.frombuffer(bytearray(repr(c).encode()), dtype=torch.uint8)]

    scale = inner.scale
    one = not isinstance(scale, torch.Tensor) or scale.numel() == 1
    return {"scale": float(scale) if one else fingerprint([scale]),
            "conditions": fingerprint(leaves(inner.cond) + leaves(inner.uncond))}


def _one_condition(guided) -> bool:
    """Whether a CFGDenoiser's conditions are one for every row (scalars, single rows, or dicts of those),
    so a block of any seeds gets the same ones."""
    def one(c):
        if isinstance(c, dict):
            return all(one(v) for v in c.values())
        return not isinstance(c, torch.Tensor) or c.dim() == 0 or c.shape[0] == 1

    inner = guided.net
    return one(inner.cond) and one(inner.uncond) and one(inner.scale)


def _checked_sample_options(denoiser, options: dict) -> dict:
    """``options`` checked as :func:`diffsolve.sample` checks them, before the folder is made: a run refused at
    its first block would leave a folder with its settings and no sample."""
    from .checks import check_device, check_state_dtype
    from .sample import plan_run, sample

    known, planned = inspect.signature(sample).parameters, inspect.signature(plan_run).parameters
    unknown = sorted(k for k in options if k not in known)
    if unknown:
        raise TypeError(f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} of sample(); "
                        f"valid: {', '.join(k for k in known if k not in ('denoiser', *_NOT_SAMPLE_OPTIONS))}")
    with warnings.catch_warnings():  # a check: sample() says what it warns about when it runs
        warnings.simplefilter("ignore")
        run = plan_run(denoiser.schedule, **{k: v for k, v in options.items() if k in planned})
    from .loop import check_run  # the loop's checks of the run (eta > 0 with an ODE solver, ...)
    from .solvers.base import StepContext

    check_run(run.solver, StepContext(denoiser, run.level, run.t, None, run.denoise_final), False,
              run.analytic_first_step)
    if options.get("dtype") is not None:
        check_state_dtype(options["dtype"])
    check_device(options.get("device"))
    return options


def _draw_block(plan: _Plan, rows) -> int:
    """Draw the samples of seed positions ``rows`` (one block, or its missing seeds) and write them."""
    from .sample import sample

    seeds = [plan.seeds[i] for i in rows]
    labels = plan.labels(seeds)
    with torch.no_grad():
        res = sample(plan.block_denoiser(labels), seeds=seeds, **plan.sample_kwargs)
    x = res.x.detach().cpu()
    if plan.format == "png":
        for seed, image in zip(seeds, to_uint8(x, plan.data_range)):
            files.write_png(plan.outdir, seed, image)
    else:
        arrays = {"seeds": np.asarray(seeds, dtype=np.int64), "x": x.numpy().astype(NPZ_DTYPES[plan.npz_dtype])}
        if labels is not None:
            arrays["labels"] = labels
        files.write_shard(plan.outdir, arrays)
    return res.nfe


def _seed_labels(plan: _Plan, chunk: int = 4096):
    """(seed, label) of every seed of the run, computed a chunk at a time."""
    for start in range(0, len(plan.seeds), chunk):
        seeds = plan.seeds[start:start + chunk]
        yield from zip(seeds, plan.labels(seeds).tolist())
