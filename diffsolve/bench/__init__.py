"""``diffsolve bench``: solvers × NFE budgets on problems with exact ground truth and on trained models.

    >>> from diffsolve.bench import BenchConfig, run_bench
    >>> rows = run_bench(BenchConfig(problems=["ring2d"], solvers=["ddim"], nfe=[10], out="bench-results"))

or from the shell: ``diffsolve bench`` (see ``diffsolve bench --help``). Modules: :mod:`.problems`
(the problems), :mod:`.metrics` (quality metrics and reference solutions), :mod:`.config` (what to
run: the configuration, its validation, the plan), :mod:`.results` (rows, the results file, resume,
the output-directory lock), :mod:`.report` (the table and progress), :mod:`.state` (one problem's
state: reference solution, metrics), :mod:`.feature_metrics` (FID, KID, precision / recall, density /
coverage in a feature space), :mod:`.runner` (running the plan), :mod:`.plot`; torchrun sharding is
:mod:`diffsolve.distributed`.
"""
from .config import DEFAULT_NFE, DEFAULT_SOLVERS, BenchConfig
from .feature_metrics import FEATURE_METRICS, FeatureSettings
from .metrics import (GaussianTarget, frechet_distance, gaussian_ode_solution, mean_log_prob, reference_solution,
                      rms_error, sliced_wasserstein)
from .problems import BUILTIN_PROBLEMS, Problem, get_problem, list_problems
from .results import FAILED_FIELDS, ROW_FIELDS, is_failed, read_rows
from .runner import run_bench

__all__ = ["BenchConfig", "run_bench", "read_rows", "ROW_FIELDS", "FAILED_FIELDS", "is_failed", "DEFAULT_SOLVERS",
           "DEFAULT_NFE", "FeatureSettings", "FEATURE_METRICS",
           "Problem", "get_problem", "list_problems", "BUILTIN_PROBLEMS", "rms_error", "sliced_wasserstein",
           "frechet_distance", "GaussianTarget", "mean_log_prob", "gaussian_ode_solution", "reference_solution",
           "plot_results"]


def plot_results(results, png=None):
    """See :func:`diffsolve.bench.plot.plot_results` (imports matplotlib only when called)."""
    from .plot import plot_results as _plot

    return _plot(results, png)
