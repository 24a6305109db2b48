"""``diffsolve bench``: solvers × NFE budgets on problems with exact ground truth and on models."""
from __future__ import annotations

import os
import sys

from ._common import (CLIError, add_device_options, add_schedule_option, add_seeds_option, check_device_dtype,
                      check_grid, check_schedule, check_solver, csv, positive_int)


def add_parser(subparsers):
    b = subparsers.add_parser("bench", help="benchmark solvers: quality vs NFE against exact ground truth",
                              description="Run solvers at fixed NFE budgets on problems with exact ground truth "
                                          "and on bundled models; write results.jsonl (one row per "
                                          "configuration, flushed as it finishes) and quality_vs_nfe.png. "
                                          "Exit status: 0 all rows done; 3 some rows failed (recorded with "
                                          "the reason; --resume runs them again); 1 the results could not be "
                                          "written (e.g. disk full; --resume continues), or the run stopped on "
                                          "an error raised by your own code (a model factory, a feature network) "
                                          "or the machine (out of memory); 2 bad input.")
    b.add_argument("--problems", type=csv(str, "problem"), help="comma-separated problems "
                   "(default: ring2d,mix64,gauss3072 and the digits model if bundled)")
    b.add_argument("--model", action="append", default=[], help="add a model (zoo name, package.module:factory or "
                   "file.py:factory); repeatable")
    sv = b.add_mutually_exclusive_group()
    sv.add_argument("--solvers", type=csv(str, "solver"), help="comma-separated solvers, each a name or "
                    "name:key=value:... with its options, e.g. dpmpp_2m,unipc:order=3:variant=bh1, or 'default' "
                    "(the default call sample(model, nfe=N): the solver, grid and final denoise the library picks "
                    "for the budget) (default: ddim,dpmpp_2m,dpmpp_3m,unipc,heun,euler, those registered; options: "
                    "`diffsolve list solvers`)")
    sv.add_argument("--defaults-only", action="store_true", help="only the default call, sample(model, nfe=N) "
                    "with nothing else, at each budget: what a user gets without choosing (--solvers default)")
    b.add_argument("--nfe", type=csv(int, "integer"), help="comma-separated NFE budgets, final denoise "
                   "included (default 5,10,20,50)")
    b.add_argument("--eta", type=csv(float, "number"), default=[0.0],
                   help="comma-separated noise levels ν = η g (default 0: the probability-flow ODE)")
    add_schedule_option(b)
    b.add_argument("--grid", default="log_snr", help="step grid kind (default log_snr; see `diffsolve list grids`), "
                   "or a tuned grid file (diffsolve tune), whose rows are judged as it was tuned: against the "
                   "data end point, x̂0 of the exact solution, with or without its own final denoise")
    sg = b.add_mutually_exclusive_group()
    add_seeds_option(sg, "seeds for every problem, e.g. 0-999 (default: 0..n-1 with a per-problem n)")
    sg.add_argument("--n-samples", type=positive_int, help="samples per problem (seeds 0..n-1)")
    b.add_argument("--no-denoise-final", action="store_true", help="end at t_min without the final x̂0 "
                   "evaluation (the budget buys one more step; the reference ends there too)")
    b.add_argument("--out", default="bench-results", help="output directory (default ./bench-results)")
    rg = b.add_mutually_exclusive_group()
    rg.add_argument("--resume", action="store_true", help="skip rows already in OUT/results.jsonl")
    rg.add_argument("--overwrite", action="store_true", help="start afresh: remove what a previous run wrote in OUT "
                    "(results.jsonl, quality_vs_nfe.png, samples/*.pt)")
    b.add_argument("--no-plot", action="store_true", help="do not draw quality_vs_nfe.png")
    b.add_argument("--save-samples", action="store_true", help="also save each row's samples to OUT/samples/*.pt")
    nt = b.add_mutually_exclusive_group()
    nt.add_argument("--net-time", dest="net_time", action="store_true", default=None,
                    help="time the network's calls (synchronises CUDA around each; default on for CPU)")
    nt.add_argument("--no-net-time", dest="net_time", action="store_false")
    b.add_argument("--threads", type=positive_int, help="CPU threads per process (default 1 on CPU unless "
                   "OMP_NUM_THREADS is set: the built-in problems are small)")
    b.add_argument("--reference-tol", type=float, help="rtol = atol of the reference ODE solve "
                   "(default 1e-8 for mixtures, 1e-5 for models; single Gaussians use the closed form)")
    b.add_argument("--projections", type=positive_int, default=512, help="sliced-Wasserstein projections (512)")
    fm = b.add_argument_group("feature metrics", "FID, KID, precision/recall and density/coverage of every row in a "
                              "feature space (docs/math.md §24), with bootstrap intervals")
    fm.add_argument("--metric", type=csv(str, "metric"), help="comma-separated: fid, kid, prdc (precision, recall, "
                    "density, coverage)")
    fm.add_argument("--features", help="feature space: pixels (default), inception[:weights path] "
                    "(a local file; nothing is downloaded), package.module:factory or file.py:factory")
    fm.add_argument("--reference", help="what samples are compared with: a folder of images, a .npz/.npy/.pt "
                    "dataset, a folder of `diffsolve sample --format npz` shards, or mu/sigma statistics (.npz, "
                    "fid only) (default: a bundled model's held-out data, an analytic problem's exact samples)")
    fm.add_argument("--data-range", type=csv(float, "number", distinct=False),
                    help="LO,HI: the model's data range, mapped to 8-bit images as PNGs are (default -1,1)")
    fm.add_argument("--bootstrap", type=int, help="bootstrap resamples of each interval (default 50; "
                    "0: none; each costs one covariance of the features for fid)")
    add_device_options(b)
    b.set_defaults(run=run)
    return b


def _default_problems() -> list[str]:
    try:
        from ..bench import default_problems
    except ImportError:  # not (yet) among diffsolve.bench's public names
        from ..bench.runner import default_problems
    return default_problems()


def _problems(args) -> list[str] | None:
    """``--problems`` plus the ``--model``s (added to the default problems when none are named)."""
    from ..bench.problems import get_model

    problems = list(args.problems or [])
    for m in args.model:
        get_model(m)  # a clear "unknown model" error before anything runs
    if args.model:
        problems = problems or _default_problems()
        problems += [m for m in args.model if m not in problems]
    return problems or None


def _feature_settings(args):
    """The feature-metric settings, or None without ``--metric`` (then the other options are refused)."""
    from ..bench import FeatureSettings

    if not args.metric:
        given = [o for o, v in (("--reference", args.reference), ("--features", args.features),
                                ("--bootstrap", args.bootstrap), ("--data-range", args.data_range)) if v is not None]
        if given:
            raise CLIError(f"{', '.join(given)} set{'s' if len(given) == 1 else ''} up feature metrics; "
                           f"name them with --metric fid,kid,prdc")
        return None
    if args.data_range is not None and len(args.data_range) != 2:
        raise CLIError(f"--data-range is LO,HI, got {len(args.data_range)} numbers")
    if args.reference is not None and not os.path.exists(args.reference):
        raise CLIError(f"--reference {args.reference}: no such file or folder")
    given = {k: v for k, v in (("features", args.features), ("bootstrap", args.bootstrap),
                               ("data_range", args.data_range and tuple(args.data_range))) if v is not None}
    return FeatureSettings(metrics=tuple(args.metric), reference=args.reference,
                           **given)  # (FeatureSettings' own defaults: pixels, 50, images.DATA_RANGE)


EXIT_ROWS_FAILED = 3  # the run finished, but some rows raised (failed records in results.jsonl)


def run(args) -> int:
    from ..bench import DEFAULT_NFE, BenchConfig, run_bench
    from ..bench.results import is_failed

    check_device_dtype(args)
    features = _feature_settings(args)
    check_schedule(args.schedule)
    check_grid(args.grid)
    for s in args.solvers or ():
        if s != "default":
            check_solver(s)
    if args.defaults_only and args.grid != "log_snr":
        raise CLIError("--defaults-only runs the library's own grid; drop --grid")
    if args.defaults_only and args.no_denoise_final:
        raise CLIError("--defaults-only runs sample(model, nfe=N) as it is, which decides its own final denoise; "
                       "drop --no-denoise-final")
    solvers = ["default"] if args.defaults_only else args.solvers
    cfg = BenchConfig(problems=_problems(args), solvers=solvers, nfe=list(args.nfe or DEFAULT_NFE),
                      eta=list(args.eta), schedule=args.schedule, grid=args.grid,
                      denoise_final=False if args.no_denoise_final else None, seeds=args.seeds,
                      n_samples=args.n_samples, device=args.device, dtype=args.dtype, out=args.out,
                      resume=args.resume, overwrite=args.overwrite, plot=not args.no_plot, quiet=args.quiet,
                      net_time=args.net_time, n_projections=args.projections,
                      save_samples=args.save_samples, reference_tol=args.reference_tol,
                      threads=args.threads, feature_metrics=features)
    rows = run_bench(cfg)  # a failed write of the results is WriteFailed: status 1 (run_command)
    failed = [r for r in rows if is_failed(r)]
    if not failed:
        return 0
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 says it
        why = "; ".join(f"{r['key']}: {r['error']}" for r in failed[:3]) + ("; ..." if len(failed) > 3 else "")
        print(f"error: {len(failed)} of {len(rows)} rows failed ({why}); they are recorded as failed in "
              f"{os.path.join(args.out, 'results.jsonl')} and --resume runs them again", file=sys.stderr)
    return EXIT_ROWS_FAILED
