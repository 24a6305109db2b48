r"""The folder of a ``diffsolve sample --outdir`` run (:mod:`diffsolve.generate`): where each sample
goes, which seeds are already there, and the files written whole (:func:`diffsolve.runfiles.write_atomic`).

- png: ``{seed // 1000 * 1000:06d}/{seed:06d}.png`` per seed (:func:`png_path`), and with class
  labels EDM's ``dataset.json``;
- npz: ``samples-{first:06d}-{last:06d}.npz`` per block (:func:`shard_name`), keys ``seeds``, ``x``
  and ``labels``, zip entries with a fixed date so the bytes depend on the samples only;
- ``diffsolve-sample.json``: the run's settings, compared by a resumed run.
"""
from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path

import numpy as np

from .images import natural_order, save_png
from .runfiles import settings_diff, write_atomic, write_json

__all__ = ["SETTINGS", "LABELS", "LOCK", "png_path", "shard_name", "check_folder", "seeds_todo", "write_png",
           "write_shard", "write_png_labels"]

SETTINGS = "diffsolve-sample.json"
LABELS = "dataset.json"
LOCK = ".diffsolve-sample.lock"
_SHARD = re.compile(r"samples-\d+-\d+\.npz")
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def png_path(outdir, seed: int) -> Path:
    """Where the PNG of ``seed`` goes: ``outdir/{seed // 1000 * 1000:06d}/{seed:06d}.png``."""
    return Path(outdir) / f"{seed // 1000 * 1000:06d}" / f"{seed:06d}.png"


def shard_name(first_seed: int, last_seed: int) -> str:
    """The name of an npz shard holding ``first_seed`` … ``last_seed`` (in seed-list order)."""
    return f"samples-{first_seed:06d}-{last_seed:06d}.npz"


def _has_samples(outdir: Path) -> bool:
    """Whether ``outdir`` holds samples of ours (a shard, or a PNG in a seed folder)."""
    for entry in os.scandir(outdir):
        if entry.is_file() and _SHARD.fullmatch(entry.name):
            return True
        if entry.is_dir() and entry.name.isdigit() and any(
                f.name.endswith(".png") and not f.name.startswith(".") for f in os.scandir(entry.path)):
            return True
    return False


def check_folder(outdir: Path, settings: dict, resume: bool) -> bool:
    """Refuse a folder with samples unless resuming the same settings; True if the settings file must
    be written (a new run)."""
    if not _has_samples(outdir):
        return True
    where = f"{str(outdir)!r} already holds samples"
    if not resume:
        raise ValueError(f"{where}; finish that run with --resume (resume=True), or give another --outdir "
                         f"(nothing is overwritten)")
    path = outdir / SETTINGS
    if not path.exists():
        raise ValueError(f"{where} but no {SETTINGS}: not a run of diffsolve sample --outdir, which --resume "
                         f"could finish; give another --outdir")
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {path}: {e}; give another --outdir") from None
    diff = settings_diff(old, settings)
    if diff:
        raise ValueError(f"--resume: {str(outdir)!r} was written with other settings ({diff}); resume with the "
                         f"same options, or give another --outdir")
    return False


def _shard_seeds(outdir: Path, labelled: bool) -> set:
    """The seeds already in the folder's shards (each shard checked to be of this run)."""
    found: set = set()
    for entry in sorted(os.scandir(outdir), key=lambda e: e.name):
        if not (entry.is_file() and _SHARD.fullmatch(entry.name)):
            continue
        try:
            with np.load(entry.path) as z:
                keys = set(z.keys())
                seeds = z["seeds"] if "seeds" in keys else None
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            raise ValueError(f"cannot read the shard {entry.path} ({type(e).__name__}: {e}); remove it and resume "
                             f"(its seeds are drawn again)") from None
        if seeds is None or "x" not in keys or (("labels" in keys) != labelled):
            raise ValueError(f"{entry.path} is not a shard of this run (keys {', '.join(sorted(keys))})")
        for s in seeds.tolist():
            if s in found:
                raise ValueError(f"seed {s} is in more than one shard of {outdir}; the folder mixes runs")
            found.add(s)
    return found


def seeds_todo(outdir: Path, seeds: list, blocks, fmt: str, labelled: bool, resume: bool) -> tuple[list, int]:
    """This rank's blocks still to draw, as (start, end, the positions to draw or None for all of them),
    and the number of its seeds already written (``resume``)."""
    if not resume:
        return [(s, e, None) for s, e in blocks], 0
    done = _shard_seeds(outdir, labelled) if fmt == "npz" else None
    out, skipped = [], 0
    for s, e in blocks:
        if done is None:
            todo = [i for i in range(s, e) if not png_path(outdir, seeds[i]).exists()]
        else:
            todo = [i for i in range(s, e) if seeds[i] not in done]
        skipped += (e - s) - len(todo)
        if todo:
            out.append((s, e, None if len(todo) == e - s else todo))
    return out, skipped


def write_png(outdir: Path, seed: int, image) -> None:
    path = png_path(outdir, seed)
    path.parent.mkdir(exist_ok=True)
    write_atomic(path, lambda tmp: save_png(tmp, image))


def _save_npz(path: Path, arrays: dict) -> None:
    """An uncompressed .npz (what numpy.load reads) whose zip entries carry a fixed date: the same arrays
    give the same bytes (numpy.savez stamps the current time)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for key, a in arrays.items():
            with zf.open(zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_DATE), "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(a), allow_pickle=False)


def write_shard(outdir: Path, arrays: dict) -> None:
    """One block's shard (``arrays["seeds"]`` names it)."""
    seeds = arrays["seeds"]
    write_atomic(outdir / shard_name(int(seeds[0]), int(seeds[-1])), lambda tmp: _save_npz(tmp, arrays))


def write_png_labels(path: Path, seed_labels) -> None:
    """EDM's dataset.json: ``{"labels": [[relative path, class], ...]}`` for every (seed, label) of
    ``seed_labels`` (an iterable), earlier entries kept."""
    entries = {}
    if path.exists():
        try:
            entries = dict(json.loads(path.read_text()).get("labels") or [])
        except (OSError, ValueError, TypeError, AttributeError):
            entries = {}
    for seed, label in seed_labels:
        entries[png_path("", seed).as_posix()] = label
    write_json(path, {"labels": sorted(([k, v] for k, v in entries.items()), key=lambda kv: natural_order(kv[0]))},
               indent=None)
