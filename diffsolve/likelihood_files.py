r"""The files of a dataset likelihood run (:mod:`diffsolve.dataset_likelihood`): one rows file per
process, ``OUT/likelihood-rank{r}.jsonl``, one JSON line per item appended once per finished batch and
flushed to disk; ``OUT/run.json``, the settings a resumed run must share; ``OUT/summary.json``; and
``OUT/.likelihood.lock``, an advisory ``flock`` held by rank 0 while a run writes.

A kill can leave a torn last line or part of a batch: on resume both are dropped (the file is
rewritten atomically without them) and the block runs again, so every item ends up exactly once.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch

from ._text import count
from .runfiles import append_durable, hold, jsonable, output_dir, settings_diff, write_atomic, write_json

__all__ = [
    "ROWS_GLOB",
    "ROW_FIELDS",
    "RUN_NAME",
    "SUMMARY_NAME",
    "append_rows",
    "check_out_dir",
    "claim",
    "open_out",
    "read_rows",
    "rows_path",
]

RUN_NAME, SUMMARY_NAME, LOCK_NAME, ROWS_GLOB = "run.json", "summary.json", ".likelihood.lock", "likelihood-rank*.jsonl"
ROW_FIELDS = ("index", "log_prob", "bits_per_dim", "nfe")
FORMAT = "diffsolve-likelihood-rows/1"


def rows_path(out, rank: int) -> Path:
    return Path(out) / f"likelihood-rank{rank}.jsonl"


def check_out_dir(out, *, create: bool = True) -> Path:
    """The output directory, created (``create=False``: checked only) and tried with a write, before any work."""
    return output_dir(out, "out (--out)", create=create)


def _read_file(path: Path) -> tuple[list[dict], bool]:
    """(rows, torn): the whole rows of one rank file; a last line cut short by a kill is left out."""
    raw = path.read_bytes()
    lines, rows = raw.split(b"\n"), []
    for j, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if j == len(lines) - 1:  # only the unterminated last line may be cut short
                return rows, True
            raise ValueError(f"{path} is not a diffsolve likelihood rows file (bad JSON on line {j + 1}); "
                             f"choose another --out") from None
        if not isinstance(row, dict) or any(k not in row for k in ROW_FIELDS):
            raise ValueError(f"{path} is not a diffsolve likelihood rows file (line {j + 1} lacks "
                             f"{', '.join(ROW_FIELDS)}); choose another --out")
        rows.append(row)
    return rows, bool(raw) and not raw.endswith(b"\n")


def read_rows(out) -> list[dict]:
    """Every whole row in ``OUT/likelihood-rank*.jsonl``, sorted by index."""
    rows = [r for p in sorted(Path(out).glob(ROWS_GLOB)) for r in _read_file(p)[0]]
    return sorted(rows, key=lambda r: r["index"])


def append_rows(path: Path, rows: list[dict]):
    """One batch of rows, on disk (fsync) when this returns; a failed write is cut back out."""
    append_durable(path, "".join(json.dumps(r) + "\n" for r in rows),
                   "the batches finished before it are kept: fix the cause and rerun with --resume")


def _blocks_done(files: dict, n: int, batch_size: int) -> set:
    """Starts of the blocks whose every item has a row; an item twice or out of range is an error."""
    seen: dict = {}
    for path, rows in files.items():
        for r in rows:
            i = r["index"]
            if not isinstance(i, int) or not 0 <= i < n:
                raise ValueError(f"{path}: row index {i!r} outside 0..{n - 1}; choose another --out")
            if i in seen:
                raise ValueError(f"item {i} has rows in both {seen[i]} and {path}; choose another --out")
            seen[i] = path
    per_block: dict = {}
    for i in seen:
        per_block[i // batch_size] = per_block.get(i // batch_size, 0) + 1
    return {b * batch_size for b, c in per_block.items() if c == min(batch_size, n - b * batch_size)}


def open_out(out: Path, settings: dict, resume: bool, batch_size: int) -> set:
    """Rank 0, before any work: check or write ``run.json``; on resume drop torn lines and the rows
    of unfinished blocks; the starts of the blocks already done."""
    files = {p: _read_file(p) for p in sorted(out.glob(ROWS_GLOB))}
    n_rows = sum(len(rows) for rows, _ in files.values())
    if (n_rows or any(torn for _, torn in files.values())) and not resume:
        raise ValueError(f"{out} already holds {count(n_rows, 'row')} of an earlier run; pass --resume to "
                         f"continue it (with the same settings), or choose another --out")
    header = out / RUN_NAME
    if n_rows:
        if not header.exists():
            raise ValueError(f"cannot resume {out}: it holds rows but no {RUN_NAME}; choose another --out")
        try:
            recorded = json.loads(header.read_text())["settings"]
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"cannot resume {out}: {header} is not a diffsolve likelihood run file; choose another "
                             f"--out") from None
        what = settings_diff(recorded, jsonable(settings))
        if what:
            raise ValueError(f"cannot resume {out}: its rows were written with other settings ({what}); use the "
                             f"same settings or another --out")
    done = _blocks_done({p: rows for p, (rows, _) in files.items()}, settings["n"], batch_size)
    for p, (rows, torn) in files.items():
        keep = [r for r in rows if r["index"] - r["index"] % batch_size in done]
        if torn or len(keep) != len(rows):
            write_atomic(p, "".join(json.dumps(r) + "\n" for r in keep))
    from ._version import __version__

    write_json(header, {"format": FORMAT, "settings": settings, "diffsolve_version": __version__,
                        "torch_version": torch.__version__})
    with contextlib.suppress(FileNotFoundError):
        (out / SUMMARY_NAME).unlink()
    return done


def claim(out: Path, is_main: bool):
    """The run's hold on OUT (rank 0 only): an advisory ``flock`` on ``OUT/.likelihood.lock``."""
    return hold(out, LOCK_NAME, "diffsolve likelihood") if is_main else contextlib.nullcontext()
