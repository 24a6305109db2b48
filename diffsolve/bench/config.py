"""What a benchmark run is asked to do: :class:`BenchConfig`, its validation, and the plan.

The plan is problems × solvers × η × NFE budgets, one :class:`_Item` per row to run, each with the
``key`` its row is stored (and resumed) under. :meth:`BenchConfig.run_settings` are the settings
every row of one results file shares (recorded in each row as ``run``).
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch

from ..noise import parse_seeds
from ..sample import MAX_STEPS
from ..solvers import SOLVERS, get_solver, parse_solver_spec, solver_spec
from .feature_metrics import PRDC_MIN_SAMPLES, FeatureSettings
from .problems import BUILTIN_PROBLEMS, DEFAULT_SCHEDULE, Problem, zoo_models
from .report import solver_label

if TYPE_CHECKING:
    from ..defaults import DefaultRun

__all__ = ["BenchConfig", "DEFAULT_CALL", "DEFAULT_SOLVERS", "DEFAULT_NFE", "DTYPES", "default_problems"]

DEFAULT_SOLVERS = ("ddim", "dpmpp_2m", "dpmpp_3m", "unipc", "heun", "euler")
# the row of the library's default call, sample(model, nfe=N) with nothing else (diffsolve.defaults):
# its solver, grid and final denoise are the ones measured for the budget, not the run's
DEFAULT_CALL = "default"
DEFAULT_NFE = (5, 10, 20, 50)
DTYPES = {"float64": torch.float64, "float32": torch.float32}
# a budget no fixed-step solver finds too small: a solver that refuses it takes no fixed budgets at all
_ANY_BUDGET = 1 << 20


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
    feature_metrics: FeatureSettings | None = None  # FID / KID / PRDC in a feature space (.feature_metrics)
    stream = None  # where the table goes (default sys.stdout)

    def run_settings(self) -> dict:
        """The settings every row of one results file must share."""
        return {"seeds": self.seeds, "n_samples": self.n_samples, "grid": self.grid,
                "grid_sha256": _file_digest(self.grid) if str(self.grid).endswith(".json") else None,
                "dtype": self.dtype,
                "device": _device_kind(self.device), "schedule": self.schedule or DEFAULT_SCHEDULE,
                "n_projections": self.n_projections, "reference_tol": self.reference_tol,
                "denoise_final": self.denoise_final,
                "feature_metrics": self.feature_metrics.run_settings() if self.feature_metrics else None}


def _file_digest(path) -> str | None:
    """SHA-256 of a tuned-grid file: a resumed run must not reuse rows made with other contents."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def _device_kind(device: str) -> str:
    return str(torch.device(device).type)


def _n_samples(cfg: BenchConfig, problem: Problem) -> int:
    """How many samples each row of ``problem`` draws."""
    return len(parse_seeds(cfg.seeds)) if cfg.seeds is not None else (cfg.n_samples or problem.n_samples)


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


def _row_key(problem: str, schedule: str, solver: str, eta: float, nfe: int) -> str:
    return f"{problem}|{schedule}|{solver}|eta={float(eta):g}|nfe={int(nfe)}"


# --- validation -----------------------------------------------------------------------------------
def _check_config(cfg: BenchConfig) -> BenchConfig:
    """Validate ``cfg``; returns it with ``denoise_final`` resolved (a tuned grid's own, else True)."""
    if not isinstance(cfg.nfe, (list, tuple)) or not cfg.nfe:
        raise ValueError("give at least one NFE budget, e.g. --nfe 5,10,20,50")
    if cfg.denoise_final is not None and not isinstance(cfg.denoise_final, bool):
        raise ValueError(f"denoise_final must be True, False or None, got {cfg.denoise_final!r}")
    tuned = _tuned_grid(cfg)
    cfg = replace(cfg, denoise_final=tuned.denoise_final if tuned else cfg.denoise_final is not False)
    least = 1 + int(cfg.denoise_final)
    for n in cfg.nfe:
        if isinstance(n, bool) or not isinstance(n, int) or n < least:
            raise ValueError(f"NFE budgets must be integers >= {least} (one step"
                             f"{' plus the final denoise' if cfg.denoise_final else ''}), got {n!r}")
        if n > MAX_STEPS:  # as sample() refuses it, before any row is written
            raise ValueError(f"NFE budgets must be at most {MAX_STEPS:,} (a fixed-step run of more would not "
                             f"finish), got {n:,}")
    for e in cfg.eta:
        if not (isinstance(e, (int, float)) and math.isfinite(e) and e >= 0):
            raise ValueError(f"eta must be a number >= 0, got {e!r}")
    if len({f"{float(e):g}" for e in cfg.eta}) < len({float(e) for e in cfg.eta}):  # as a row's key writes it
        raise ValueError(f"two noise levels of {', '.join(map(str, cfg.eta))} are one in the rows' keys (eta=... to "
                         f"6 significant digits): list each once")
    if cfg.dtype not in DTYPES:
        raise ValueError(f"unknown dtype {cfg.dtype!r}; valid dtypes: {', '.join(DTYPES)}")
    _check_device(cfg.device)
    _check_grid(cfg, tuned)
    _check_samples(cfg)
    return cfg


def _tuned_grid(cfg: BenchConfig):
    """The tuned grid (``diffsolve tune``) ``cfg.grid`` names, or None for a grid kind. A tuned grid
    fixes the solver, the budget and whether the run ends with the final denoise."""
    if not str(cfg.grid).endswith(".json"):
        return None
    from ..tune import TunedGrid

    tuned = TunedGrid.load(cfg.grid)
    if cfg.denoise_final not in (None, tuned.denoise_final):
        raise ValueError(f"the tuned grid {cfg.grid} was tuned {'with' if tuned.denoise_final else 'without'} "
                         f"the final denoise; leave denoise_final to it")
    return tuned


def _check_device(device: str):
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available here; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r}; use cpu or cuda")


def _check_grid(cfg: BenchConfig, tuned):
    from ..grids import GRIDS

    if tuned is not None:
        given = [parse_solver_spec(s) for s in cfg.solvers or []]
        # the row's label is the solver that runs: its options in full, unless they are fitted weights
        # (tune_solver's), which the grid file holds and the bare name stands for
        fitted = any(isinstance(v, (list, tuple, dict)) for v in tuned.solver_options.values())
        spec = tuned.solver if fitted else solver_spec(tuned.solver, tuned.solver_options)
        if (len(given) != 1 or given[0][0] != tuned.solver
                or given[0][1] not in (({}, tuned.solver_options) if fitted else (tuned.solver_options,))
                or list(cfg.nfe or []) != [tuned.nfe]):
            raise ValueError(f"the tuned grid {cfg.grid} is for solver {spec!r} at NFE {tuned.nfe}; "
                             f"run with --solvers {spec} --nfe {tuned.nfe}")
    elif cfg.grid not in GRIDS:
        raise ValueError(f"unknown grid {cfg.grid!r}; valid grids: {', '.join(GRIDS)} or a tuned-grid .json file")


def _check_samples(cfg: BenchConfig):
    """Seeds / sample count, and the metric settings."""
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
    if cfg.feature_metrics is not None and not isinstance(cfg.feature_metrics, FeatureSettings):
        raise TypeError(f"feature_metrics must be a diffsolve.bench.FeatureSettings, got "
                        f"{type(cfg.feature_metrics).__name__}")
    n = cfg.n_samples if cfg.seeds is None else len(parse_seeds(cfg.seeds))
    if cfg.feature_metrics is not None and "prdc" in cfg.feature_metrics.metrics and n is not None \
            and n < PRDC_MIN_SAMPLES:
        raise ValueError(f"prdc's k-nearest-neighbour radii (k = 3 and 5) need at least {PRDC_MIN_SAMPLES} samples "
                         f"per row (an analytic problem's exact reference has as many); got {n}")


# --- the plan -------------------------------------------------------------------------------------
@dataclass
class _Item:
    problem: str
    solver: str
    eta: float
    nfe: int
    steps: int
    key: str = ""
    default: DefaultRun | None = None  # what the default call resolves to; None: a row that names its solver

    @property
    def label(self) -> str:
        """The row's name in the table: the solver spec, or the default call with what it runs."""
        return solver_label(self.solver, self.default.solver if self.default is not None else None)


def _plan(cfg: BenchConfig, problems: list[Problem], notes: list[str]) -> list[_Item]:
    """The rows to run, in order. With an explicit solver list what cannot run is an error; with the
    default list it is skipped and said in ``notes``."""
    strict = cfg.solvers is not None
    names = _solver_names(cfg, notes)
    tuned = _tuned_grid(cfg)
    items = []
    for p in problems:
        if tuned is not None:  # its schedule before any row runs; another model of that schedule is a note
            from ..checks import check_tuned_schedule

            check_tuned_schedule(tuned, p.schedule, f"the tuned grid {cfg.grid} (run on problem {p.name})")
            note = tuned.other_model(p.name)
            if note:
                notes.append(note)
        for name in names:
            items += _solver_items(cfg, p, name, strict, notes)
    if not items:
        raise ValueError("nothing to run: no (problem, solver, eta, NFE) combination is feasible")
    return items


def _solver_names(cfg: BenchConfig, notes: list[str]) -> list[str]:
    """The solvers' canonical labels (the rows' ``solver`` field)."""
    if cfg.solvers is None:
        missing = [s for s in DEFAULT_SOLVERS if s not in SOLVERS]
        if missing:
            notes.append(f"default solvers not registered (skipped): {', '.join(missing)}")
        return [s for s in DEFAULT_SOLVERS if s in SOLVERS]
    specs = [(s, {}) if s == DEFAULT_CALL else parse_solver_spec(s) for s in cfg.solvers]
    unknown = [n for n, _ in specs if n not in SOLVERS and n != DEFAULT_CALL]
    if unknown:
        raise ValueError(f"unknown solver{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                         f"valid solvers: {', '.join(sorted(SOLVERS))}, or {DEFAULT_CALL!r} (the default call)")
    names = [n if n == DEFAULT_CALL else solver_spec(n, o) for n, o in specs]
    if len(set(names)) < len(names):
        raise ValueError(f"a solver is listed twice: {', '.join(cfg.solvers)}")
    # two specs of one configuration (unipc and unipc:order=2, its default) would run it twice under two labels
    built = {}
    for name, (n, o) in zip(names, specs):
        if n != DEFAULT_CALL:
            same = built.setdefault(repr(get_solver(n, **o)), name)
            if same != name:
                raise ValueError(f"{same} and {name} are one configuration (the options given are the solver's "
                                 f"defaults): list it once")
    return names


def _skip(msg: str, strict: bool, notes: list[str], strict_hint: str = ""):
    """An infeasible combination: an error for an explicit solver list, a note otherwise."""
    if strict:
        raise ValueError(msg + strict_hint) from None
    notes.append(msg + " (skipped)")


def _default_call_items(cfg: BenchConfig, p: Problem, strict: bool, notes: list[str]) -> list[_Item]:
    """The default call's rows on ``p``: one per budget, each with the solver and final denoise the
    library picks for it (:mod:`diffsolve.defaults`); the probability-flow ODE only."""
    from ..defaults import default_run

    if any(float(e) > 0 for e in cfg.eta):
        notes.append("the default call integrates the probability-flow ODE: its rows run at eta=0 only")
    items = []
    for nfe in dict.fromkeys(int(n) for n in cfg.nfe):
        run = default_run(nfe, p.schedule)
        try:
            steps = get_solver(run.solver).steps_for_nfe(nfe + run.analytic_first_step, run.denoise_final)
        except ValueError as e:
            _skip(str(e), strict, notes, "; raise --nfe")
            continue
        key = _row_key(p.name, p.schedule_name, DEFAULT_CALL, 0.0, nfe)
        items.append(_Item(p.name, DEFAULT_CALL, 0.0, nfe, steps, key, default=run))
    return items


def _solver_items(cfg: BenchConfig, p: Problem, name: str, strict: bool, notes: list[str]) -> list[_Item]:
    """One solver's rows on problem ``p``: every η it can run × every budget it fits."""
    if name == DEFAULT_CALL:
        return _default_call_items(cfg, p, strict, notes)
    solver = get_solver(name)
    try:  # a solver that chooses its own steps refuses every budget, and says how to size it instead
        solver.steps_for_nfe(_ANY_BUDGET, cfg.denoise_final)
    except ValueError as e:
        _skip(f"bench runs fixed NFE budgets; {e}", strict, notes, "; leave it out of --solvers")
        return []
    items = []
    for eta in dict.fromkeys(float(e) for e in cfg.eta):  # a value given twice runs once
        if eta > 0 and not solver.stochastic:
            _skip(f"solver {name!r} integrates the ODE only (eta=0); eta={eta:g} needs a stochastic "
                  f"solver: {', '.join(n for n, c in sorted(SOLVERS.items()) if c.stochastic)}", strict, notes)
            continue
        for nfe in dict.fromkeys(int(n) for n in cfg.nfe):
            try:
                steps = solver.steps_for_nfe(nfe, cfg.denoise_final)  # the final denoise costs 1
            except ValueError as e:
                _skip(str(e), strict, notes, "; raise --nfe or drop the solver")
                continue
            key = _row_key(p.name, p.schedule_name, name, eta, nfe)
            items.append(_Item(p.name, name, float(eta), int(nfe), steps, key))
    return items
