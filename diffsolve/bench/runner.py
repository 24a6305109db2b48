r"""The benchmark runner: problems × solvers × η × NFE budgets → one JSON row per configuration.

Each row is appended to ``results.jsonl`` and flushed as soon as it is finished, so a killed run
loses at most the row in progress; ``resume=True`` skips the rows already there (matched on
their ``key``) and refuses a file written with different run settings (seeds, grid, dtype, …).

Per row: the counted NFE, wall time and samples/s (CUDA: after a warm-up, between
``torch.cuda.synchronize()`` calls), the share of time spent inside the network (its calls
timed, synchronised only when ``net_time`` is on), and the quality metrics of
:mod:`diffsolve.bench.metrics` with their floors (the same metric for an exact batch of the same size).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from .._text import count
from ..noise import parse_seeds
from ..sample import sample
from ..solvers.base import SOLVERS, get_solver, parse_solver_spec, solver_spec
from . import metrics as M
from .distributed import DistContext, init as init_distributed
from .problems import BUILTIN_PROBLEMS, DEFAULT_SCHEDULE, Problem, get_problem, zoo_models

__all__ = ["BenchConfig", "run_bench", "DEFAULT_SOLVERS", "DEFAULT_NFE", "default_problems",
           "read_rows", "ROW_FIELDS", "Progress"]

DEFAULT_SOLVERS = ("ddim", "dpmpp_2m", "dpmpp_3m", "unipc", "heun", "euler")
DEFAULT_NFE = (5, 10, 20, 50)
DTYPES = {"float64": torch.float64, "float32": torch.float32}
ROW_FIELDS = ("key", "problem", "schedule", "solver", "eta", "grid", "nfe_budget", "steps", "nfe",
              "n_samples", "seeds", "device", "dtype", "world_size", "threads", "metrics", "floors",
              "reference", "wall_time_s", "samples_per_s", "net_time_share", "diffsolve_version",
              "torch_version", "run", "finished_at")
# what a run writes in its output directory
RESULTS_NAME, PLOT_NAME, SAMPLES_DIR = "results.jsonl", "quality_vs_nfe.png", "samples"
_DATA_SEED_A, _DATA_SEED_B = 1_000_003, 1_000_033  # exact batches: metric target and floor


def default_problems() -> list[str]:
    """The analytic problems plus the bundled digits model when the zoo provides it."""
    out = list(BUILTIN_PROBLEMS)
    if "digits" in zoo_models():
        out.append("digits")
    return out


@dataclass
class BenchConfig:
    """What to run (lists) and how (run settings, recorded in every row as ``run``).

    ``solvers=None`` means :data:`DEFAULT_SOLVERS` restricted to the registered ones (missing
    names and infeasible budgets are skipped with a note); an explicit list is strict.
    ``seeds`` (e.g. ``"0-999"``) or ``n_samples`` override every problem's default sample count.
    """

    problems: Sequence[str] | None = None
    solvers: Sequence[str] | None = None
    nfe: Sequence[int] = DEFAULT_NFE
    eta: Sequence[float] = (0.0,)
    schedule: str | None = None
    grid: str = "log_snr"
    denoise_final: bool | None = None  # end every run with x̂0(x, t_min) (one evaluation of the budget);
    # None: True, or what a tuned grid was tuned with
    seeds: str | None = None
    n_samples: int | None = None
    device: str = "cpu"
    dtype: str = "float64"
    out: str = "bench-results"
    resume: bool = False
    overwrite: bool = False
    plot: bool = True
    quiet: bool = False  # no progress or notes on stderr
    print_table: bool = True  # the table on stdout (rank 0)
    net_time: bool | None = None  # default: on for CPU, off for CUDA (it synchronises)
    n_projections: int = 512
    warmup: bool = True
    threads: int | None = None  # CPU threads per process; default 1 on CPU unless OMP_NUM_THREADS is set
    reference_tol: float | None = None  # rtol = atol of the reference solve (default: per problem)
    save_samples: bool = False  # also write <out>/samples/<key>.pt (float64, in seed order)
    stream = None  # where the table goes (default sys.stdout)

    def run_settings(self) -> dict:
        """The settings every row of one results file must share."""
        return {"seeds": self.seeds, "n_samples": self.n_samples, "grid": self.grid,
                "grid_sha256": _file_digest(self.grid) if str(self.grid).endswith(".json") else None,
                "dtype": self.dtype,
                "device": _device_kind(self.device), "schedule": self.schedule or DEFAULT_SCHEDULE,
                "n_projections": self.n_projections, "reference_tol": self.reference_tol,
                "denoise_final": self.denoise_final}


def _file_digest(path) -> str | None:
    """SHA-256 of a tuned-grid file: a resumed run must not reuse rows made with other contents."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def _device_kind(device: str) -> str:
    return str(torch.device(device).type)


class Progress:
    """One updating status line on stderr (a plain line every few seconds when not a terminal)."""

    def __init__(self, quiet: bool = False, stream=None, every: float = 5.0):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every, self.last, self.t0 = every, -1e9, time.perf_counter()
        self.dirty = False

    def update(self, msg: str, force: bool = False):
        if self.quiet:
            return
        now = time.perf_counter()
        line = f"[{now - self.t0:6.1f}s] {msg}"
        if self.tty:
            self.stream.write("\r\033[K" + line)
            self.dirty = True
        elif force or now - self.last >= self.every:
            self.stream.write(line + "\n")
            self.last = now
        self.stream.flush()

    def clear(self):
        if self.tty and self.dirty and not self.quiet:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.dirty = False

    def note(self, msg: str):
        if not self.quiet:
            self.clear()
            self.stream.write(f"note: {msg}\n")
            self.stream.flush()


# --- results file -----------------------------------------------------------------------------
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


def _row_key(problem: str, schedule: str, solver: str, eta: float, nfe: int) -> str:
    return f"{problem}|{schedule}|{solver}|eta={float(eta):g}|nfe={int(nfe)}"


# --- planning -----------------------------------------------------------------------------------
@dataclass
class _Item:
    problem: str
    solver: str
    eta: float
    nfe: int
    steps: int
    key: str = ""


def _check_config(cfg: BenchConfig) -> BenchConfig:
    """Validate ``cfg``; returns it with ``denoise_final`` resolved (a tuned grid's own, else True)."""
    if not isinstance(cfg.nfe, (list, tuple)) or not cfg.nfe:
        raise ValueError("give at least one NFE budget, e.g. --nfe 5,10,20,50")
    if cfg.denoise_final is not None and not isinstance(cfg.denoise_final, bool):
        raise ValueError(f"denoise_final must be True, False or None, got {cfg.denoise_final!r}")
    tuned = None
    if str(cfg.grid).endswith(".json"):  # a tuned grid (diffsolve tune): fixes the solver, budget and end
        from ..tune import TunedGrid

        tuned = TunedGrid.load(cfg.grid)
        if cfg.denoise_final not in (None, tuned.denoise_final):
            raise ValueError(f"the tuned grid {cfg.grid} was tuned {'with' if tuned.denoise_final else 'without'} "
                             f"the final denoise; leave denoise_final to it")
    cfg = replace(cfg, denoise_final=tuned.denoise_final if tuned else cfg.denoise_final is not False)
    least = 1 + int(cfg.denoise_final)
    for n in cfg.nfe:
        if isinstance(n, bool) or not isinstance(n, int) or n < least:
            raise ValueError(f"NFE budgets must be integers >= {least} (one step"
                             f"{' plus the final denoise' if cfg.denoise_final else ''}), got {n!r}")
    for e in cfg.eta:
        if not (isinstance(e, (int, float)) and math.isfinite(e) and e >= 0):
            raise ValueError(f"eta must be a number >= 0, got {e!r}")
    if cfg.dtype not in DTYPES:
        raise ValueError(f"unknown dtype {cfg.dtype!r}; valid dtypes: {', '.join(DTYPES)}")
    try:
        dev = torch.device(cfg.device)
    except RuntimeError:
        raise ValueError(f"unknown device {cfg.device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {cfg.device!r} requested but CUDA is not available here; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {cfg.device!r}; use cpu or cuda")
    from ..grids import GRIDS

    if tuned is not None:
        given = [parse_solver_spec(s) for s in cfg.solvers or []]
        if (len(given) != 1 or given[0][0] != tuned.solver or given[0][1] not in ({}, tuned.solver_options)
                or list(cfg.nfe or []) != [tuned.nfe]):
            raise ValueError(f"the tuned grid {cfg.grid} is for solver {tuned.solver!r} at NFE {tuned.nfe}; "
                             f"run with --solvers {tuned.solver} --nfe {tuned.nfe}")
    elif cfg.grid not in GRIDS:
        raise ValueError(f"unknown grid {cfg.grid!r}; valid grids: {', '.join(GRIDS)} or a tuned-grid .json file")
    if cfg.n_samples is not None and (isinstance(cfg.n_samples, bool) or not isinstance(cfg.n_samples, int)
                                      or cfg.n_samples < 2):
        raise ValueError(f"n_samples must be an integer >= 2, got {cfg.n_samples!r}")
    if cfg.seeds is not None and cfg.n_samples is not None:
        raise ValueError("give either seeds or n_samples, not both")
    if cfg.seeds is not None and len(parse_seeds(cfg.seeds, distinct=True)) < 2:
        raise ValueError("give at least 2 seeds (metrics compare sample sets)")
    if cfg.reference_tol is not None and not (isinstance(cfg.reference_tol, float) and 0 < cfg.reference_tol < 1):
        raise ValueError(f"reference_tol must be a number in (0, 1), got {cfg.reference_tol!r}")
    if not (isinstance(cfg.n_projections, int) and cfg.n_projections >= 1):
        raise ValueError(f"n_projections must be a positive integer, got {cfg.n_projections!r}")
    return cfg


def _plan(cfg: BenchConfig, problems: list[Problem], notes: list[str]) -> list[_Item]:
    strict = cfg.solvers is not None
    if strict:
        specs = [parse_solver_spec(s) for s in cfg.solvers]
        unknown = [n for n, _ in specs if n not in SOLVERS]
        if unknown:
            raise ValueError(f"unknown solver{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                             f"valid solvers: {', '.join(sorted(SOLVERS))}")
        names = [solver_spec(n, o) for n, o in specs]  # canonical labels: the rows' "solver" field
        if len(set(names)) < len(names):
            raise ValueError(f"a solver is listed twice: {', '.join(cfg.solvers)}")
    else:
        names = [s for s in DEFAULT_SOLVERS if s in SOLVERS]
        missing = [s for s in DEFAULT_SOLVERS if s not in SOLVERS]
        if missing:
            notes.append(f"default solvers not registered (skipped): {', '.join(missing)}")
    items = []
    for p in problems:
        for name in names:
            solver = get_solver(name)
            if solver.nfe_per_step == 0:
                msg = f"solver {name!r} chooses its own steps (adaptive); bench runs fixed NFE budgets"
                if strict:
                    raise ValueError(msg + "; leave it out of --solvers")
                notes.append(msg + " (skipped)")
                continue
            for eta in dict.fromkeys(float(e) for e in cfg.eta):  # a value given twice runs once
                if eta > 0 and not solver.stochastic:
                    msg = (f"solver {name!r} integrates the ODE only (eta=0); eta={eta:g} needs a stochastic "
                           f"solver: {', '.join(n for n, c in sorted(SOLVERS.items()) if c.stochastic)}")
                    if strict:
                        raise ValueError(msg)
                    notes.append(msg + " (skipped)")
                    continue
                for nfe in dict.fromkeys(int(n) for n in cfg.nfe):
                    try:
                        steps = solver.steps_for_nfe(nfe, cfg.denoise_final)  # the final denoise costs 1
                    except ValueError as e:
                        msg = str(e)
                        if strict:
                            raise ValueError(msg + "; raise --nfe or drop the solver") from None
                        notes.append(msg + " (skipped)")
                        continue
                    key = _row_key(p.name, p.schedule_name, name, eta, nfe)
                    items.append(_Item(p.name, name, float(eta), int(nfe), steps, key))
    if not items:
        raise ValueError("nothing to run: no (problem, solver, eta, NFE) combination is feasible")
    return items


# --- timing -------------------------------------------------------------------------------------
class _NetTimer(torch.nn.Module):
    """Wraps a denoiser's network and accumulates the time spent in its calls."""

    def __init__(self, net, sync: bool):
        super().__init__()
        self.inner = net
        self.sync = sync
        self.enabled = True
        self.seconds = 0.0

    def forward(self, x, label):
        if not self.enabled:
            return self.inner(x, label)
        if self.sync:
            torch.cuda.synchronize(x.device)
        t0 = time.perf_counter()
        out = self.inner(x, label)
        if self.sync:
            torch.cuda.synchronize(x.device)
        self.seconds += time.perf_counter() - t0
        return out


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


# --- per-problem state --------------------------------------------------------------------------
class _ProblemState:
    """Seeds, shards, the denoiser, the reference solution and the metric targets of one problem."""

    def __init__(self, problem: Problem, cfg: BenchConfig, dist: DistContext, progress: Progress):
        self.problem, self.cfg, self.dist, self.progress = problem, cfg, dist, progress
        if cfg.seeds is not None:
            self.seeds = parse_seeds(cfg.seeds)
        else:
            self.seeds = list(range(cfg.n_samples or problem.n_samples))
        self.n = len(self.seeds)
        self.local_seeds = dist.shard(self.seeds)
        self.device = dist.device
        self.dtype = DTYPES[cfg.dtype]
        self.den = problem.denoiser()
        net_time = cfg.net_time if cfg.net_time is not None else torch.device(self.device).type == "cpu"
        if net_time:
            if not isinstance(self.den.net, _NetTimer):
                self.den.net = _NetTimer(self.den.net, sync=torch.device(self.device).type == "cuda")
            self.timer = self.den.net
        else:
            self.timer = None
        self.sch = self.den.schedule
        self._ref: dict = {}
        self._targets = None
        self.warmed = set()

    @property
    def shape(self):
        return tuple(self.problem.shape)

    def x_T(self, t_start: float) -> Tensor:
        """This rank's starting points at t_start, drawn exactly as ``sample`` draws them."""
        from ..noise import NoiseSource

        src = NoiseSource(len(self.local_seeds), self.shape, seeds=self.local_seeds, device=self.device,
                          dtype=self.dtype)
        return float(self.sch.sigma(t_start)) * src.randn()

    def reference(self, t_start: float, t_end: float) -> Tensor:
        """The exact ODE solution from every x_T (at t_start) to t_end, then the final denoise when
        the runs end with one (gathered on every rank; cached per time span)."""
        span = (float(t_start), float(t_end))
        if span not in self._ref:
            p = self.problem
            tol = self.cfg.reference_tol or p.reference_tol
            how = "closed form" if p.exact and p.mixture.K == 1 else f"dopri5, tol {tol:g}"
            self.progress.update(f"{p.name}: reference ODE solution for {self.n} samples ({how})", force=True)
            ref_den = p.denoiser()  # its own NFE counter; its timer (if shared) is paused below
            timer = ref_den.net if isinstance(ref_den.net, _NetTimer) else None
            if timer is not None:
                timer.enabled = False
            try:
                with torch.no_grad():
                    local = M.reference_solution(ref_den, self.x_T(span[0]), span[0], span[1],
                                                 denoise_final=self.cfg.denoise_final, tol=tol,
                                                 mixture=p.mixture)
            finally:
                if timer is not None:
                    timer.enabled = True
            self._ref[span] = self.dist.gather(local.to(torch.float64), self.n).cpu()
        return self._ref[span]

    def reference_name(self) -> str:
        p = self.problem
        if p.exact and p.mixture.K == 1:
            return "closed form"
        return f"dopri5 in log-SNR, per-sample rtol=atol={self.cfg.reference_tol or p.reference_tol:g}"

    def targets(self) -> dict:
        """Exact batches / held-out data and the Gaussian targets (rank 0 only)."""
        if self._targets is None:
            p, n = self.problem, self.n
            t = {}
            if p.exact:
                t["batch"] = p.exact_samples(n, _DATA_SEED_B)        # what samples are compared with
                t["batch_floor"] = p.exact_samples(n, _DATA_SEED_A)  # an exact batch in the sampler's place
                t["gauss"] = M.GaussianTarget.from_mixture(p.mixture)
            elif p.heldout is not None:
                held = p.heldout()
                t["batch"] = held
                t["gauss"] = M.GaussianTarget.from_samples(held)
                train = p.train() if p.train is not None else None
                if train is not None:
                    g = torch.Generator().manual_seed(_DATA_SEED_A)
                    idx = torch.randperm(train.shape[0], generator=g)[: min(n, train.shape[0])]
                    t["batch_floor"] = train[idx]
            self._targets = t
        return self._targets

    def metrics(self, x: Tensor, span: tuple | None) -> tuple[dict, dict]:
        """(metrics, floors) of the gathered samples x (float64, CPU); ``span`` = (t_start, t_end)
        of a deterministic run (its error against the exact ODE solution is measured), else None."""
        p = self.problem
        m, f = {}, {}
        if span is not None:
            m["rms_error"] = M.rms_error(x, self.reference(*span))
            f["rms_error"] = None
        t = self.targets()
        proj = self.cfg.n_projections
        if p.exact:
            m["sliced_w2"] = M.sliced_wasserstein(x, t["batch"], proj)
            f["sliced_w2"] = M.sliced_wasserstein(t["batch_floor"], t["batch"], proj)
            m["frechet"] = M.frechet_distance(x, t["gauss"])
            f["frechet"] = M.frechet_distance(t["batch_floor"], t["gauss"])
            m["log_p0"] = M.mean_log_prob(x, p.mixture)
            f["log_p0"] = M.mean_log_prob(t["batch_floor"], p.mixture)
        elif "batch" in t:
            xp = p.to_pixels(x)
            m["frechet_heldout"] = M.frechet_distance(xp, t["gauss"])
            m["sliced_w2_heldout"] = M.sliced_wasserstein(xp, t["batch"], proj)
            if "batch_floor" in t:
                f["frechet_heldout"] = M.frechet_distance(t["batch_floor"], t["gauss"])
                f["sliced_w2_heldout"] = M.sliced_wasserstein(t["batch_floor"], t["batch"], proj)
        return m, f


# --- the table ------------------------------------------------------------------------------------
_COLS = [("solver", 10, "s"), ("eta", 4, "g"), ("nfe", 4, "d"), ("steps", 5, "d"), ("rms_err", 9, "e"),
         ("sw2", 9, "e"), ("frechet", 9, "e"), ("log_p0", 9, "f"), ("wall_s", 7, "f"), ("samp/s", 8, "f"),
         ("net%", 5, "f")]


def _fmt(v, width, kind):
    if v is None:
        return "-".rjust(width)
    if kind == "s":
        return str(v).ljust(width)
    if kind == "d":
        return f"{int(v):>{width}d}"
    if kind == "g":
        return f"{float(v):>{width}g}"
    if kind == "e":
        return f"{float(v):>{width}.2e}"
    if kind == "f":
        v = float(v)
        digits = 3 if abs(v) < 10 else (1 if abs(v) < 1e4 else 0)
        return f"{v:>{width}.{digits}f}"[-width:] if len(f"{v:.{digits}f}") <= width else f"{v:>{width}.1e}"
    return str(v)


def _table_values(row: dict) -> list:
    m = row["metrics"]
    sw = m.get("sliced_w2", m.get("sliced_w2_heldout"))
    fd = m.get("frechet", m.get("frechet_heldout"))
    share = row.get("net_time_share")
    return [row["solver"], row["eta"], row["nfe"], row["steps"], m.get("rms_error"), sw, fd, m.get("log_p0"),
            row["wall_time_s"], row["samples_per_s"], None if share is None else 100 * share]


def _columns(solver_width: int = 10) -> list:
    """The table's columns, the solver column widened to ``solver_width`` (long option specs)."""
    return [("solver", max(solver_width, _COLS[0][1]), "s")] + _COLS[1:]


def _header(solver_width: int = 10) -> str:
    return "  ".join(name.rjust(w) if k != "s" else name.ljust(w) for name, w, k in _columns(solver_width))


def format_row(row: dict, solver_width: int = 10) -> str:
    return "  ".join(_fmt(v, w, k) for v, (_, w, k) in zip(_table_values(row), _columns(solver_width)))


def _problem_banner(st: _ProblemState, floors: dict, solver_width: int = 10) -> str:
    p = st.problem
    kind = "exact ground truth" if p.exact else ("held-out data" if p.heldout else "no ground truth")
    lines = [f"\n{p.name} ({p.description}; schedule {p.schedule_name}; {st.n} samples; {kind})",
             _header(solver_width)]
    fl = [None] * len(_COLS)
    fl[0] = "floor"
    for i, name in enumerate(("sliced_w2", "frechet", "log_p0"), start=5):
        for k in (name, name + "_heldout"):
            if floors.get(k) is not None:
                fl[i] = floors[k]
    lines.append("  ".join(_fmt(v, w, k) for v, (_, w, k) in zip(fl, _columns(solver_width))))
    return "\n".join(lines)


# --- the run --------------------------------------------------------------------------------------
def run_bench(cfg: BenchConfig) -> list[dict]:
    """Run the benchmark described by ``cfg``; returns the rows written by this run.

    Writes ``<out>/results.jsonl`` (append + flush per row) and ``<out>/quality_vs_nfe.png``, and
    holds ``<out>/.bench.lock`` while it runs, so that a second run into ``<out>`` stops instead of
    interleaving rows. Under torchrun every process runs this; rank 0 writes.
    """
    import diffsolve

    stream = cfg.stream or sys.stdout
    cfg = _check_config(cfg)
    _set_threads(cfg)
    dist = init_distributed(cfg.device)
    try:
        with contextlib.ExitStack() as hold:  # _run claims the output directory once its plan is valid
            return _run(cfg, dist, stream, diffsolve.__version__, hold)
    finally:
        dist.close()


@contextlib.contextmanager
def _claim_output(out: Path, is_main: bool):
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
        f = open(out / ".bench.lock", "a")
    except OSError as e:
        raise ValueError(f"cannot write in the output directory {str(out)!r}: {e.strerror or e}") from None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ValueError(f"another diffsolve bench run is writing to {str(out)!r}; wait for it to finish, "
                             f"or choose another --out directory") from None
        yield


def _set_threads(cfg: BenchConfig):
    """One intra-op thread per process by default on CPU (what torchrun does too): the problems'
    tensors are small, and on a loaded machine extra OpenMP threads spin instead of working."""
    if cfg.threads is not None:
        if isinstance(cfg.threads, bool) or not isinstance(cfg.threads, int) or cfg.threads < 1:
            raise ValueError(f"threads must be a positive integer, got {cfg.threads!r}")
        torch.set_num_threads(cfg.threads)
    elif _device_kind(cfg.device) == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)


def _run(cfg: BenchConfig, dist: DistContext, stream, version: str, hold: contextlib.ExitStack) -> list[dict]:
    progress = Progress(quiet=cfg.quiet or not dist.is_main)
    notes: list[str] = []
    names = list(cfg.problems) if cfg.problems else default_problems()
    problems = [get_problem(n, schedule=cfg.schedule, device=dist.device) for n in names]
    if len({p.name for p in problems}) != len(problems):
        raise ValueError(f"a problem is listed twice: {', '.join(names)}")
    items = _plan(cfg, problems, notes)
    for p in problems:
        n = len(parse_seeds(cfg.seeds)) if cfg.seeds is not None else (cfg.n_samples or p.n_samples)
        if n < dist.world_size:
            raise ValueError(f"{count(n, 'sample')} of {p.name} cannot be shared by {dist.world_size} processes")

    out = Path(cfg.out)
    results = out / RESULTS_NAME
    run = cfg.run_settings()
    done: set = set()
    hold.enter_context(_claim_output(out, dist.is_main))
    if dist.is_main:
        if cfg.overwrite:
            _remove_outputs(out)
        if results.exists() and results.stat().st_size > 0:
            if not cfg.resume:
                raise ValueError(f"{results} already exists; pass --resume to continue it, --overwrite to "
                                 f"replace it, or choose another --out directory")
            else:
                rows = read_rows(results, repair=True)
                for r in rows:  # a setting a file predates reads as None
                    recorded = dict(r.get("run", {}))
                    if recorded.get("schedule") is None:  # files recorded the default schedule as None
                        recorded["schedule"] = DEFAULT_SCHEDULE
                    diff = {k: (recorded.get(k), v) for k, v in run.items() if recorded.get(k) != v}
                    if diff:
                        what = "; ".join(f"{k}: file has {a!r}, this run {b!r}" for k, (a, b) in diff.items())
                        raise ValueError(f"cannot resume {results}: it was written with a different configuration "
                                         f"({what}); use the same settings, --overwrite, or another --out")
                done = {r["key"] for r in rows}
        try:
            with open(results, "a"):
                pass
        except OSError as e:
            raise ValueError(f"cannot write {results}: {e.strerror or e}") from None
    done = dist.broadcast_object(done)

    todo = [it for it in items if it.key not in done]
    for msg in notes:
        progress.note(msg)
    if done and dist.is_main and not cfg.quiet:
        progress.note(f"resuming {results}: {len(items) - len(todo)} of {count(len(items), 'row')} already done")

    written = []
    t_start = time.perf_counter()
    width = max([len(it.solver) for it in todo], default=0)
    by_problem = {p.name: p for p in problems}
    for pname in dict.fromkeys(it.problem for it in todo):
        st = _ProblemState(by_problem[pname], cfg, dist, progress)
        p_items = [it for it in todo if it.problem == pname]
        banner_done = False
        for it in p_items:
            k = len(written) + 1
            progress.update(f"[{k}/{len(todo)}] {pname} {it.solver} eta={it.eta:g} nfe={it.nfe}")
            row, x = _run_row(st, it, dist, version, run, progress)
            if dist.is_main:
                if cfg.save_samples:
                    (out / SAMPLES_DIR).mkdir(exist_ok=True)
                    torch.save(x, out / SAMPLES_DIR / (_safe_name(it.key) + ".pt"))
                with open(results, "a") as f:
                    f.write(json.dumps(row) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                if cfg.print_table:
                    progress.clear()
                    if not banner_done:
                        print(_problem_banner(st, row["floors"], width), file=stream)
                        banner_done = True
                    print(format_row(row, width), file=stream, flush=True)
            written.append(row)
    progress.clear()
    if dist.is_main:
        elapsed = time.perf_counter() - t_start
        if cfg.print_table:
            print(f"\n{count(len(written), 'row')} in {elapsed:.1f} s -> {results}", file=stream)
        if cfg.plot:
            from .plot import plot_results

            try:
                png = plot_results(results, out / PLOT_NAME)
                if cfg.print_table:
                    print(f"plot -> {png}", file=stream)
            except ImportError as e:
                progress.note(f"no plot: {e}")
    return written


def _remove_outputs(out: Path):
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


def _run_row(st: _ProblemState, it: _Item, dist: DistContext, version: str, run: dict,
             progress: Progress) -> dict:
    cfg, p = st.cfg, st.problem
    kw = dict(solver=it.solver, nfe=it.nfe, eta=it.eta, grid=cfg.grid, dtype=st.dtype, device=st.device,
              denoise_final=cfg.denoise_final)
    n_local = len(st.local_seeds)
    with torch.no_grad():
        if cfg.warmup and it.solver not in st.warmed:
            w = st.local_seeds[: min(4, n_local)]
            sample(st.den, shape=(len(w), *st.shape), seeds=w, **kw)
            st.warmed.add(it.solver)
        if st.timer is not None:
            st.timer.seconds = 0.0
        _sync(st.device)
        dist.barrier()
        t0 = time.perf_counter()
        res = sample(st.den, shape=(n_local, *st.shape), seeds=st.local_seeds, **kw)
        _sync(st.device)
        wall_local = time.perf_counter() - t0
    net_local = st.timer.seconds if st.timer is not None else None
    wall = dist.reduce(wall_local, "max")
    share = None
    if net_local is not None:
        share = dist.reduce(net_local, "sum") / max(dist.reduce(wall_local, "sum"), 1e-12)
    nfe = int(dist.reduce(res.nfe, "max"))
    x = dist.gather(res.x.to(torch.float64), st.n).cpu()
    # the error against the exact ODE solution means something only for a run that draws no noise
    # (pc's Langevin corrector and EDM churn draw noise even at eta = 0)
    deterministic = it.eta == 0 and not get_solver(it.solver).draws_noise
    span = (float(res.t[0]), float(res.t[-1])) if deterministic else None
    metrics, floors = ({}, {})
    if dist.is_main:
        progress.update(f"{p.name} {it.solver} nfe={it.nfe}: metrics")
        metrics, floors = st.metrics(x, span)
    elif span is not None:
        st.reference(*span)  # collective: every rank takes part in the gather
    dist.barrier()
    return {
        "key": it.key, "problem": p.name, "schedule": p.schedule_name, "solver": it.solver, "eta": it.eta,
        "grid": cfg.grid, "nfe_budget": it.nfe, "steps": len(res.t) - 1, "nfe": nfe, "n_samples": st.n,
        "seeds": _seed_spec(st.seeds), "device": str(st.device) if dist.world_size == 1 else _device_kind(st.device),
        "dtype": cfg.dtype, "world_size": dist.world_size, "threads": torch.get_num_threads(), "metrics": metrics, "floors": floors,
        "reference": st.reference_name() if span is not None else None,
        "wall_time_s": wall, "samples_per_s": st.n / wall if wall > 0 else None, "net_time_share": share,
        "diffsolve_version": version, "torch_version": torch.__version__, "run": run,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }, x


def _safe_name(key: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in key)


def _seed_spec(seeds: list[int]) -> str:
    """Compact EDM-style spec of a seed list ("0-999" or "1,5,10-12")."""
    parts, i = [], 0
    while i < len(seeds):
        j = i
        while j + 1 < len(seeds) and seeds[j + 1] == seeds[j] + 1:
            j += 1
        parts.append(str(seeds[i]) if i == j else f"{seeds[i]}-{seeds[j]}")
        i = j + 1
    return ",".join(parts)
