"""The rows of a benchmark run and the files it writes in its output directory.

Each row is appended to ``results.jsonl`` and flushed as soon as it is finished, so a killed run
loses at most the row in progress (a last line cut short is dropped, and removed on resume);
resuming skips the rows already there (matched on their ``key``) and refuses a file written with
different run settings (seeds, grid, dtype, …) or whose rows of a trained model were made with another
network under its name (each such row records its weights' fingerprint). A run holds its directory
with an advisory ``flock`` on ``.bench.lock`` so that a second run into it stops instead of
interleaving rows.

A row whose network (or metric) raised is written as a *failed record*: the row's identity
(:data:`FAILED_FIELDS`) with ``"status": "failed"`` and ``"error": "<Type>: <message>"`` and no
metrics. :func:`read_rows` leaves failed records out unless asked (``failed=True``), so readers
of finished rows never meet one; ``--resume`` removes them from the file and runs those rows
again. A write that fails (a full disk) is undone (the file is cut back to its last whole row)
and stops the run with :class:`~diffsolve.runfiles.WriteFailed`; ``--resume`` then goes on from there.
"""
from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import torch

from ..runfiles import WriteFailed, append_durable, hold, write_atomic, write_failed
from .problems import DEFAULT_SCHEDULE

__all__ = ["ROW_FIELDS", "FAILED_FIELDS", "RESULTS_NAME", "PLOT_NAME", "SAMPLES_DIR", "read_rows", "make_row",
           "make_failed_row", "is_failed", "ResultsFile", "ResultsWriteError"]

ROW_FIELDS = ("key", "problem", "weights", "schedule", "solver", "ran", "eta", "grid", "nfe_budget", "steps", "nfe",
              "n_samples", "seeds", "device", "dtype", "world_size", "threads", "metrics", "floors",
              "intervals", "reference", "wall_time_s", "samples_per_s", "net_time_share", "diffsolve_version",
              "torch_version", "run", "finished_at")
# a row that could not be measured: what it was, and why not (no metrics, floors, timings or counted NFE)
FAILED_FIELDS = ("key", "problem", "weights", "schedule", "solver", "ran", "eta", "grid", "nfe_budget",
                 "steps", "n_samples", "seeds", "device", "dtype", "world_size", "threads", "status", "error",
                 "diffsolve_version", "torch_version", "run", "finished_at")
# what a run writes in its output directory
RESULTS_NAME, PLOT_NAME, SAMPLES_DIR = "results.jsonl", "quality_vs_nfe.png", "samples"
LOCK_NAME = ".bench.lock"


def make_row(**fields) -> dict:
    """A results row: exactly the :data:`ROW_FIELDS`, in that order."""
    if set(fields) != set(ROW_FIELDS):
        raise TypeError(f"a row has the fields {ROW_FIELDS}, got {tuple(fields)}")
    return {k: fields[k] for k in ROW_FIELDS}


def make_failed_row(**fields) -> dict:
    """A failed record: exactly the :data:`FAILED_FIELDS`, in that order, with ``status="failed"``."""
    if set(fields) != set(FAILED_FIELDS) or fields["status"] != "failed":
        raise TypeError(f"a failed record has the fields {FAILED_FIELDS} and status 'failed', got {fields}")
    return {k: fields[k] for k in FAILED_FIELDS}


def is_failed(row: dict) -> bool:
    """Whether ``row`` is a failed record (a row that raised) rather than a measured row."""
    return row.get("status") == "failed"


ResultsWriteError = WriteFailed  # the error of a failed write of the results (its former name)


def read_rows(path, repair: bool = False, failed: bool = False) -> list[dict]:
    """The finished rows of a results file (with ``failed``, the failed records too, in file order).
    A last line cut short by a killed run is dropped (and, with ``repair``, removed from the file so
    appending continues cleanly)."""
    rows = _read_records(Path(path), repair)
    return rows if failed else [r for r in rows if not is_failed(r)]


def _read_records(path: Path, repair: bool) -> list[dict]:
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


def _json_values(v):
    """``v`` with every non-finite float as None: a row is standard JSON (null), which every reader parses
    (``NaN`` is Python's extension; JavaScript's JSON.parse, jq and others refuse it)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _json_values(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_values(x) for x in v]
    return v


# what a failed write of the results keeps, and how to go on
_KEPT = "the rows finished before it are in the results file: free the space (or fix the cause) and rerun with --resume"


def _drop_failed(path: Path):
    """Rewrite ``path`` without its failed records (byte for byte otherwise), whole or not at all
    (:func:`diffsolve.runfiles.write_atomic`)."""
    keep = [line for line in path.read_bytes().split(b"\n") if line.strip() and not is_failed(json.loads(line))]
    write_atomic(path, b"".join(line + b"\n" for line in keep), _KEPT)


@contextlib.contextmanager
def claim_output(out: Path, is_main: bool):
    """The output directory, created and held by this run (on rank 0) until it ends: a second run
    into the same directory stops with a message instead of interleaving its rows with this one's
    (:func:`diffsolve.runfiles.hold`: an advisory ``flock`` on ``OUT/.bench.lock``, released by the
    OS even if the process is killed)."""
    if not is_main:
        yield
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create the output directory {str(out)!r}: {e.strerror or e}") from None
    with hold(out, LOCK_NAME, "diffsolve bench", "--out directory"):
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


def _check_resumable(path: Path, rows: list[dict], run: dict, weights: dict):
    """Every row of the file was made with this run's settings (a setting a file predates reads as None),
    and a row of a trained model with the network this run has under that name (``weights``: problem name
    -> the fingerprint of its network's weights)."""
    for r in rows:
        if r.get("problem") in weights and r.get("weights") != weights[r["problem"]]:
            if r.get("weights") is None:
                raise ValueError(f"cannot resume {path}: its rows of {r['problem']} predate the record of the "
                                 f"network's weights (a fingerprint), so whether they were made with this network "
                                 f"cannot be told; use --overwrite or another --out")
            raise ValueError(f"cannot resume {path}: its rows of {r['problem']} were made with another network "
                             f"(weights fingerprint {r.get('weights')}, this run's {weights[r['problem']]}); use "
                             f"the same network, --overwrite, or another --out")
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
        self.retried: list[str] = []  # the keys of failed records a resumed run runs again

    def open(self, run: dict, resume: bool = False, overwrite: bool = False, weights: dict | None = None) -> set:
        """Make the file ready to append to; returns the keys of the rows already done (resume).
        ``overwrite`` first removes what a previous run wrote; without it or ``resume`` an existing
        file is an error. ``weights``: problem name -> its network's weights fingerprint (trained models),
        which the file's rows of that problem must share."""
        done: set = set()
        if overwrite:
            remove_outputs(self.out)
        elif self.check(run, resume, weights):
            rows = read_rows(self.path, repair=True, failed=True)
            done = {r["key"] for r in rows if not is_failed(r)}
            self.retried = sorted({r["key"] for r in rows if is_failed(r)} - done)
            if any(is_failed(r) for r in rows):  # failed records: removed here, their rows run again
                _drop_failed(self.path)
        try:
            with open(self.path, "a"):
                pass
        except OSError as e:
            raise ValueError(f"cannot write {self.path}: {e.strerror or e}") from None
        return done

    def check(self, run: dict, resume: bool = False, weights: dict | None = None) -> bool:
        """The refusals of :meth:`open` without its writes (a run checks before it computes a reference's
        features): whether the file holds rows, which ``resume`` continues when they share ``run`` and
        ``weights``, and which are an error without it."""
        if not (self.path.exists() and self.path.stat().st_size > 0):
            return False
        if not resume:
            raise ValueError(f"{self.path} already exists; pass --resume to continue it, --overwrite to "
                             f"replace it, or choose another --out directory")
        _check_resumable(self.path, read_rows(self.path, failed=True), run, weights or {})
        return True

    def append(self, row: dict, samples: torch.Tensor | None = None):
        """Write one finished row or failed record (and, if given, its samples as ``samples/<key>.pt``),
        on disk (fsync) when this returns. A write that fails is undone, the file cut back to its last
        whole row, and raised as :class:`~diffsolve.runfiles.WriteFailed` (its samples, if any, are rewritten on
        resume)."""
        if samples is not None:
            pt = self.out / SAMPLES_DIR / (_safe_name(row["key"]) + ".pt")
            try:
                pt.parent.mkdir(exist_ok=True)
                torch.save(samples, pt)
            except (OSError, RuntimeError) as e:  # torch.save reports a short write as a RuntimeError
                raise write_failed(pt, e, _KEPT) from None
        append_durable(self.path, json.dumps(_json_values(row), allow_nan=False) + "\n", _KEPT)
