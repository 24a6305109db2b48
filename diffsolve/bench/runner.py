r"""Running the benchmark plan: problems × solvers × η × NFE budgets → one JSON row per configuration.

Per row: the counted NFE, wall time and samples/s (CUDA: after a warm-up, between
``torch.cuda.synchronize()`` calls), the share of time spent inside the network (its calls
timed, synchronised only when ``net_time`` is on), and the quality metrics of
:mod:`diffsolve.bench.metrics` with their floors (the same metric for an exact batch of the same size).

A row whose sampling, reference solve or metrics raise (the network fails, returns NaN, runs out
of memory) is written as a failed record with the reason and the run goes on with the next row;
under torchrun every process gives the row up together (:meth:`DistContext.first_error`).

The configuration and the plan are :mod:`.config`, the rows and the results file (append + flush
per row, resume, the output-directory lock) :mod:`.results`, the table and progress :mod:`.report`.
"""
from __future__ import annotations

import contextlib
import sys
import time

import torch
from torch import Tensor

from .._text import StatusLine, count
from .._version import __version__
from ..runfiles import weights_fingerprint
from ..sample import sample
from ..threads import set_threads
from ..tuned import load_grid
# names that lived here before the split stay importable from here (tests, benchmarks, the CLI)
from .config import (DEFAULT_CALL, DEFAULT_NFE, DEFAULT_SOLVERS, DTYPES, BenchConfig, _check_config, _device_kind,  # noqa: F401
                     _Item, _n_samples, _plan, _seed_spec, default_problems)
from ..distributed import DistContext, init as init_distributed
from .plot import plot_results
from .problems import Problem, get_problem
from .report import Table, format_row, summary  # noqa: F401
from .feature_metrics import FeatureMetrics, kid_notes
from .state import ProblemState, RowFailed, attempt, describe, sync_device
from .results import (PLOT_NAME, RESULTS_NAME, ROW_FIELDS, SAMPLES_DIR, ResultsFile, claim_output,  # noqa: F401
                      is_failed, make_failed_row, make_row, read_rows)

__all__ = ["BenchConfig", "run_bench", "DEFAULT_SOLVERS", "DEFAULT_NFE", "default_problems",
           "read_rows", "ROW_FIELDS"]


# --- the run --------------------------------------------------------------------------------------
def run_bench(cfg: BenchConfig) -> list[dict]:
    """Run the benchmark described by ``cfg``; returns the rows written by this run.

    Writes ``<out>/results.jsonl`` (append + flush per row) and ``<out>/quality_vs_nfe.png``, and
    holds ``<out>/.bench.lock`` while it runs, so that a second run into ``<out>`` stops instead of
    interleaving rows. Under torchrun every process runs this; rank 0 writes.
    """
    stream = cfg.stream or sys.stdout
    cfg = _check_config(cfg)
    _set_threads(cfg)
    dist = init_distributed(cfg.device)
    try:
        with contextlib.ExitStack() as hold:  # _run claims the output directory once its plan is valid
            return _run(cfg, dist, stream, __version__, hold)
    finally:
        dist.close()


def _set_threads(cfg: BenchConfig):
    """One thread per process by default on CPU (what torchrun does too), for torch and the BLAS
    libraries alike (:func:`diffsolve.threads.set_threads`): the problems' tensors are small, and on a
    loaded machine extra OpenMP threads spin instead of working."""
    if cfg.threads is not None and (isinstance(cfg.threads, bool) or not isinstance(cfg.threads, int)
                                    or cfg.threads < 1):
        raise ValueError(f"threads must be a positive integer, got {cfg.threads!r}")
    set_threads(cfg.threads, _device_kind(cfg.device) == "cpu")


def _problems(cfg: BenchConfig, dist: DistContext) -> list[Problem]:
    names = list(cfg.problems) if cfg.problems else default_problems()
    problems = [get_problem(n, schedule=cfg.schedule, device=dist.device) for n in names]
    if len({p.name for p in problems}) != len(problems):
        raise ValueError(f"a problem is listed twice: {', '.join(names)}")
    return problems


def _run(cfg: BenchConfig, dist: DistContext, stream, version: str, hold: contextlib.ExitStack) -> list[dict]:
    progress = StatusLine(dist.is_main and not cfg.quiet, "bench", every=5.0)
    notes: list[str] = []
    problems = _problems(cfg, dist)
    items = _plan(cfg, problems, notes)
    for p in problems:
        n = _n_samples(cfg, p)
        if n < dist.world_size:
            raise ValueError(f"{count(n, 'sample')} of {p.name} cannot be shared by {dist.world_size} processes")

    results = ResultsFile(cfg.out)
    run, weights = cfg.run_settings(), _weights(problems)
    if dist.is_main and not cfg.overwrite:  # a results file this run may not continue: refused before any work
        results.check(run, resume=cfg.resume, weights=weights)
    features = _feature_metrics(cfg, problems, dist, progress)
    hold.enter_context(claim_output(results.out, dist.is_main))  # the plan is valid: claim the directory
    done = results.open(run, resume=cfg.resume, overwrite=cfg.overwrite, weights=weights) if dist.is_main else set()
    done = dist.broadcast_object(done)

    todo = [it for it in items if it.key not in done]
    for msg in notes:
        progress.note(msg)
    if done and dist.is_main and not cfg.quiet:
        progress.note(f"resuming {results.path}: {len(items) - len(todo)} of {count(len(items), 'row')} already done")

    if results.retried and dist.is_main and not cfg.quiet:
        progress.note(f"running {count(len(results.retried), 'failed row')} again")

    t_start = time.perf_counter()
    written = _run_items(cfg, todo, problems, dist, version, run, progress, results, stream, features, weights)
    progress.close()
    if dist.is_main:
        if cfg.print_table:
            n_failed = sum(map(is_failed, written))
            earlier = len(read_rows(results.path)) - (len(written) - n_failed)  # the file's finished rows, all runs
            print(summary(len(written), time.perf_counter() - t_start, results.path, n_failed, earlier=earlier),
                  file=stream)
            for line in kid_notes(read_rows(results.path)):
                print(line, file=stream)
        if cfg.plot:
            _plot(results, cfg.print_table, progress, stream)
    return written


def _feature_metrics(cfg: BenchConfig, problems: list[Problem], dist: DistContext, progress: StatusLine) -> dict:
    """Each problem's :class:`.feature_metrics.FeatureMetrics` (rank 0 computes the metrics, so only it
    reads the reference); a reference that cannot be read stops every rank before any row."""
    if cfg.feature_metrics is None:
        return {}
    out, error = {}, None
    if dist.is_main:
        try:
            out = {p.name: FeatureMetrics(cfg.feature_metrics, p, dist.device, progress) for p in problems}
        except Exception as e:
            if not dist.active:
                raise
            error = describe(e)
    error = dist.first_error(error)
    if error is not None:
        raise ValueError(f"feature metrics: {error}")
    return out


def _run_items(cfg: BenchConfig, todo: list[_Item], problems: list[Problem], dist: DistContext, version: str,
               run: dict, progress: StatusLine, results: ResultsFile, stream, features: dict,
               weights: dict) -> list[dict]:
    """Run the rows ``todo``, problem by problem; rank 0 writes each row (or failed record) and its
    table line as it finishes."""
    written = []
    table = Table(stream, max([len(it.label) for it in todo], default=0), progress,
                  cfg.feature_metrics.row_metrics if cfg.feature_metrics else ())
    by_problem = {p.name: p for p in problems}
    for pname in dict.fromkeys(it.problem for it in todo):
        st = ProblemState(by_problem[pname], cfg, dist, progress, features.get(pname), weights.get(pname))
        for it in [it for it in todo if it.problem == pname]:
            progress(f"[{len(written) + 1}/{len(todo)}] {pname} {it.solver} eta={it.eta:g} nfe={it.nfe}")
            try:
                row, x = _run_row(st, it, dist, version, run, progress)
            except RowFailed as e:
                row, x = _failed_row(st, it, dist, version, run, str(e)), None
            if dist.is_main:
                results.append(row, x if cfg.save_samples and x is not None else None)
                if cfg.print_table:
                    table.add(row, st.problem, st.n)
                elif is_failed(row):
                    progress.note(f"row {row['key']} failed: {row['error']}")
            written.append(row)
    return written


def _plot(results: ResultsFile, say: bool, progress: StatusLine, stream):
    try:
        png = plot_results(results.path, results.out / PLOT_NAME)
        if say:
            print(f"plot -> {png}", file=stream)
    except (ImportError, ValueError, OSError) as e:  # no matplotlib, no finished row, no space: rows are on disk
        progress.note(f"no plot: {e}")


def _sample_row(st: ProblemState, it: _Item, dist: DistContext, kw: dict):
    """This rank's samples of one row, timed (after a warm-up per solver); (result, wall seconds)."""
    n_local = len(st.local_seeds)
    if st.cfg.warmup and it.solver not in st.warmed:
        w = st.local_seeds[: min(4, n_local)]
        attempt(dist, lambda: sample(st.den, shape=(len(w), *st.shape), seeds=w, **kw))
        st.warmed.add(it.solver)
    if st.timer is not None:
        st.timer.seconds = 0.0
    sync_device(st.device)
    dist.barrier()

    def timed():
        t0 = time.perf_counter()
        res = sample(st.den, shape=(n_local, *st.shape), seeds=st.local_seeds, **kw)
        sync_device(st.device)
        return res, time.perf_counter() - t0

    return attempt(dist, timed)


def _run_row(st: ProblemState, it: _Item, dist: DistContext, version: str, run: dict,
             progress: StatusLine) -> tuple[dict, Tensor]:
    """Sample one row's configuration (timed), measure its metrics; returns (row, gathered samples).
    Raises :class:`RowFailed` on every rank if the sampling, reference or metrics raised on one."""
    cfg, p = st.cfg, st.problem
    tuned = load_grid(cfg.grid) is not None  # a tuned grid fixes the budget (checked against it.nfe in config)
    kw = dict(solver=it.solver, nfe=None if tuned else it.nfe, eta=it.eta, grid=cfg.grid, dtype=st.dtype,
              device=st.device, denoise_final=cfg.denoise_final)
    if it.solver == DEFAULT_CALL:  # sample(model, nfe=N): the library picks solver, grid and final denoise
        kw.update(solver=None, grid=None, denoise_final=None)
    with torch.no_grad():
        res, wall_local = _sample_row(st, it, dist, kw)
    net_local = st.timer.seconds if st.timer is not None else None
    wall = dist.reduce(wall_local, "max")
    share = None
    if net_local is not None:
        share = dist.reduce(net_local, "sum") / max(dist.reduce(wall_local, "sum"), 1e-12)
    nfe = int(dist.reduce(res.nfe, "max"))
    x = dist.gather(res.x.to(torch.float64), st.n).cpu()
    # the error against the exact ODE solution means something only for a run that draws no noise
    # (pc's Langevin corrector and EDM churn draw noise even at eta = 0)
    deterministic = it.eta == 0 and not res.solver.draws_noise
    # a tuned grid is judged as it was tuned, against the data end point (x̂0 of the exact solution at its
    # last time) with or without its own final denoise: its row then reproduces the tune file's fresh_error
    denoised = True if tuned else cfg.denoise_final if it.default is None else it.default.denoise_final
    span = (float(res.t[0]), float(res.t[-1]), denoised) if deterministic else None
    if span is not None:
        st.reference(*span)  # collective: every rank takes part in the gather
    if dist.is_main:
        progress(f"{p.name} {it.solver} nfe={it.nfe}: metrics")
    metrics, floors, intervals = attempt(dist, lambda: st.metrics(x, span) if dist.is_main else ({}, {}, {}))
    dist.barrier()
    return make_row(
        key=it.key, problem=p.name, schedule=p.schedule_name, solver=it.solver, ran=_ran(it),
        weights=st.weights, eta=it.eta, grid=it.default.grid if it.default else cfg.grid, nfe_budget=it.nfe,
        steps=len(res.t) - 1, nfe=nfe, n_samples=st.n,
        seeds=_seed_spec(st.seeds), device=_row_device(st, dist),
        dtype=cfg.dtype, world_size=dist.world_size, threads=torch.get_num_threads(), metrics=metrics, floors=floors,
        intervals=intervals, reference=st.reference_name() if span is not None else None,
        wall_time_s=wall, samples_per_s=st.n / wall if wall > 0 else None, net_time_share=share,
        diffsolve_version=version, torch_version=torch.__version__, run=run, finished_at=_now(),
    ), x


def _failed_row(st: ProblemState, it: _Item, dist: DistContext, version: str, run: dict, error: str) -> dict:
    """The failed record of a row that raised ``error``: what the row is, and why it has no metrics."""
    return make_failed_row(
        key=it.key, problem=st.problem.name, schedule=st.problem.schedule_name, solver=it.solver,
        ran=_ran(it), weights=st.weights, eta=it.eta,
        grid=it.default.grid if it.default else st.cfg.grid, nfe_budget=it.nfe, steps=it.steps, n_samples=st.n,
        seeds=_seed_spec(st.seeds),
        device=_row_device(st, dist), dtype=st.cfg.dtype, world_size=dist.world_size,
        threads=torch.get_num_threads(), status="failed", error=error, diffsolve_version=version,
        torch_version=torch.__version__, run=run, finished_at=_now())


def _weights(problems: list[Problem]) -> dict:
    """Each trained model's weights fingerprint (a row records it; a resume with another network under the
    same name is refused); analytic problems are defined by their name and schedule."""
    return {p.name: weights_fingerprint(p.denoiser().net) for p in problems if p.kind == "model"}


def _ran(it: _Item) -> dict | None:
    """What the default call resolved to (solver spec, grid kind, final denoise, analytic first step), so a
    row of ``--defaults-only`` says what ran; None for a row that names its solver."""
    return None if it.default is None else it.default._asdict()


def _row_device(st: ProblemState, dist: DistContext) -> str:
    return str(st.device) if dist.world_size == 1 else _device_kind(st.device)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
