"""The rows of a benchmark run and the files it writes in its output directory.

Each row is appended to ``results.jsonl`` and flushed as soon as it is finished, so a killed run
loses at most the row in progress (a last line cut short is dropped, and removed on resume);
resuming skips the rows already there (matched on their ``key``) and refuses a file written with
different run settings (seeds, grid, dtype, …). A run holds its directory with an advisory
``flock`` on ``.bench.lock`` so that a second run into it stops instead of interleaving rows.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import torch

from .problems import DEFAULT_SCHEDULE

__all__ = ["ROW_FIELDS", "RESULTS_NAME", "PLOT_NAME", "SAMPLES_DIR", "read_rows", "make_row", "ResultsFile"]

ROW_FIELDS = ("key", "problem", "schedule", "solver", "eta", "grid", "nfe_budget", "steps", "nfe",
              "n_samples", "seeds", "device", "dtype", "world_size", "threads", "metrics", "floors",
              "reference", "wall_time_s", "samples_per_s", "net_time_share", "diffsolve_version",
              "torch_version", "run", "finished_at")
# what a run writes in its output directory
RESULTS_NAME, PLOT_NAME, SAMPLES_DIR = "results.jsonl", "quality_vs_nfe.png", "samples"
LOCK_NAME = ".bench.lock"


def make_row(**fields) -> dict:
    """A results row: exactly the :data:`ROW_FIELDS`, in that order."""
    if set(fields) != set(ROW_FIELDS):
        raise TypeError(f"a row has the fields {ROW_FIELDS}, got {tuple(fields)}")
    return {k: fields[k] for k in ROW_FIELDS}


def read_rows(path, repair: bool = False) -> list[dict]:
    """The rows of a results file. A last line cut short by a killed run is dropped (and, with
    ``repair``, removed from the file so appending continues cleanly)."""
    path = Path(path)
    if not path.exists():
        return []
    raw = path.read_bytes()
    rows, good_end, pos = [], 0, 0
    for line in raw.split(b"\n"):
        end = pos + len(line) + 1
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                if end > len(raw):  # only the final, unterminated line may be cut short
                    break
                raise ValueError(f"{path} is not a diffsolve results file (bad JSON at byte {pos}); "
                                 f"choose another --out directory") from None
            if not isinstance(row, dict) or "key" not in row or "run" not in row:
                raise ValueError(f"{path} is not a diffsolve results file (a line without 'key'/'run'); "
                                 f"choose another --out directory")
            rows.append(row)
            good_end = min(end, len(raw))
        elif end <= len(raw):
            good_end = end
        pos = end
    if repair and good_end < len(raw):
        with open(path, "r+b") as f:
            f.truncate(good_end)
    if repair and good_end > 0 and raw[good_end - 1:good_end] != b"\n":
        with open(path, "ab") as f:  # a complete last row without its newline: terminate it
            f.write(b"\n")
    return rows


@contextlib.contextmanager
def claim_output(out: Path, is_main: bool):
    """The output directory, created and held by this run (on rank 0) until it ends: a second run
    into the same directory stops with a message instead of interleaving its rows with this one's.
    The hold is an advisory ``flock`` on ``OUT/.bench.lock``, released by the OS even if the
    process is killed (no stale locks); on systems without ``fcntl`` there is no hold."""
    if not is_main:
        yield
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create the output directory {str(out)!r}: {e.strerror or e}") from None
    try:
        import fcntl
    except ImportError:
        yield
        return
    try:
        f = open(out / LOCK_NAME, "a")
    except OSError as e:
        raise ValueError(f"cannot write in the output directory {str(out)!r}: {e.strerror or e}") from None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ValueError(f"another diffsolve bench run is writing to {str(out)!r}; wait for it to finish, "
                             f"or choose another --out directory") from None
        yield


def remove_outputs(out: Path):
    """What a run writes in ``out`` (results.jsonl, quality_vs_nfe.png, samples/*.pt), removed before an
    overwriting run so that nothing of the previous run is left; nothing else there is touched."""
    for f in (out / RESULTS_NAME, out / PLOT_NAME):
        if f.is_file() or f.is_symlink():
            f.unlink()
    samples = out / SAMPLES_DIR
    if samples.is_dir() and not samples.is_symlink():
        for f in samples.glob("*.pt"):
            if f.is_file() or f.is_symlink():
                f.unlink()
        if not any(samples.iterdir()):
            samples.rmdir()


def _check_resumable(path: Path, rows: list[dict], run: dict):
    """Every row of the file was made with this run's settings (a setting a file predates reads as None)."""
    for r in rows:
        recorded = dict(r.get("run", {}))
        if recorded.get("schedule") is None:  # files recorded the default schedule as None
            recorded["schedule"] = DEFAULT_SCHEDULE
        diff = {k: (recorded.get(k), v) for k, v in run.items() if recorded.get(k) != v}
        if diff:
            what = "; ".join(f"{k}: file has {a!r}, this run {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"cannot resume {path}: it was written with a different configuration "
                             f"({what}); use the same settings, --overwrite, or another --out")


def _safe_name(key: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in key)


class ResultsFile:
    """``OUT/results.jsonl`` (and ``OUT/samples/``) as one run writes them; used on rank 0 only,
    inside :func:`claim_output`."""

    def __init__(self, out):
        self.out = Path(out)
        self.path = self.out / RESULTS_NAME

    def open(self, run: dict, resume: bool = False, overwrite: bool = False) -> set:
        """Make the file ready to append to; returns the keys of the rows already done (resume).
        ``overwrite`` first removes what a previous run wrote; without it or ``resume`` an existing
        file is an error."""
        done: set = set()
        if overwrite:
            remove_outputs(self.out)
        if self.path.exists() and self.path.stat().st_size > 0:
            if not resume:
                raise ValueError(f"{self.path} already exists; pass --resume to continue it, --overwrite to "
                                 f"replace it, or choose another --out directory")
            rows = read_rows(self.path, repair=True)
            _check_resumable(self.path, rows, run)
            done = {r["key"] for r in rows}
        try:
            with open(self.path, "a"):
                pass
        except OSError as e:
            raise ValueError(f"cannot write {self.path}: {e.strerror or e}") from None
        return done

    def append(self, row: dict, samples: torch.Tensor | None = None):
        """Write one finished row (and, if given, its samples as ``samples/<key>.pt``), flushed to disk."""
        if samples is not None:
            (self.out / SAMPLES_DIR).mkdir(exist_ok=True)
            torch.save(samples, self.out / SAMPLES_DIR / (_safe_name(row["key"]) + ".pt"))
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
