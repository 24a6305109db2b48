"""``diffsolve tune``: a step grid tuned to a model, a solver and an NFE budget
(:func:`diffsolve.tune_steps`), or the weights of the learned solver (:func:`diffsolve.tune_solver`),
saved as JSON for ``sample --grid FILE`` / ``bench --grid FILE``."""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from .._text import count
from ._common import (CLIError, add_device_options, add_model_options, add_nfe_option, add_threads_option,
                      apply_threads, check_device_dtype, check_grid, check_solver, check_writable, checked_denoiser,
                      is_grid_file, one_process_only, positive_int, problem_from_args)

DENOISE_FINAL = {"yes": True, "no": False, "auto": "auto"}


def add_parser(subparsers):
    tn = subparsers.add_parser("tune", help="tune a step grid to a model, a solver and an NFE budget",
                               description="Optimise the time grid of a deterministic solver at a fixed NFE "
                                           "against a high-accuracy reference solve on pilot seeds, judge it on "
                                           "fresh seeds, and save it as JSON for `sample --grid FILE` / "
                                           "`bench --grid FILE`.")
    add_model_options(tn)
    tn.add_argument("--solver", default="auto", help="fixed-step deterministic solver whose grid is tuned, a name "
                    "or name:key=value:... spec; 'learned': fit the per-step weights of the learned multistep "
                    "solver on a grid tuned for UniPC (tune_solver; the network must be differentiable); 'auto' "
                    "(default): learned up to 6 evaluations, unipc above (diffsolve.defaults.default_tuner)")
    add_nfe_option(tn, required=True)
    tn.add_argument("--pilot", type=positive_int, default=None,
                    help="pilot samples (default: the tuner's own, 128 for tune_steps, 1024 for --solver learned)")
    tn.add_argument("--screen", type=int, default=None,
                    help="candidate start points (seeds 0..N-1) the pilots are chosen from by the default call's "
                         "error, sampled in proportion and weighted (default: the tuner's own, 16 per pilot for "
                         "tune_steps, none for --solver learned; 0: seeds 0..pilot-1)")
    tn.add_argument("--fresh", type=int, default=1024,
                    help="fresh samples to judge the grid on (default 1024; 0 skips)")
    tn.add_argument("--max-evals", type=positive_int, default=300,
                    help="solves the search may spend on each end it tunes (twice that with --denoise-final auto, "
                         "which tunes both; default 300)")
    tn.add_argument("--init", default="auto", help="starting grid kind, or auto (best fixed grid; default)")
    tn.add_argument("--denoise-final", choices=tuple(DENOISE_FINAL),
                    help="end with the x̂0 evaluation (yes), without (no), or tune both and keep the better (auto; "
                         "tune_steps only). Default: the tuner's own, auto for tune_steps, no for --solver learned")
    tn.add_argument("--iterations", type=positive_int,
                    help="--solver learned: Adam iterations fitting the weights (default: tune_solver's, 300)")
    tn.add_argument("--out", required=True, help="output .json file")
    add_threads_option(tn)
    add_device_options(tn, dtype=False)  # the tuners solve in a float64 state, the network in its own dtype
    tn.set_defaults(run=run)
    return tn


def _check_args(args) -> str:
    """The checks of the options among themselves, before any work (the output path first); the solver's name."""
    check_writable(Path(args.out), (".json",))
    auto = args.solver == "auto"
    if auto:
        from ..defaults import default_tuner

        args.solver = default_tuner(args.nfe)
    name = check_solver(args.solver)
    if name == "learned" and args.solver != name:
        raise CLIError("--solver learned takes no options: tune fits its weights")
    if name != "learned":
        from ..tune import check_tunable

        check_tunable(args.solver, args.nfe, DENOISE_FINAL.get(args.denoise_final, "auto"))  # before the announcement
    elif args.pilot is not None:
        from ..noise import seed_list

        seed_list(args.pilot, "pilot", 2)  # tune_solver validates on some of its pilots: at least 2
    if args.init != "auto":
        check_grid(args.init)
        if is_grid_file(args.init) and name != "learned":
            raise CLIError(f"--init {args.init}: a tuned-grid file is a starting grid only for --solver learned "
                           f"(which keeps it); for {args.solver!r} give a grid kind (e.g. log_snr or karras; "
                           f"`diffsolve list grids`) or auto")
    if args.fresh < 0:
        raise CLIError(f"--fresh must be >= 0, got {args.fresh}")
    if args.screen is not None and args.screen < 0:
        raise CLIError(f"--screen must be >= 0, got {args.screen}")
    if args.iterations is not None and name != "learned":
        raise CLIError(f"--iterations applies to --solver learned (Adam fitting its weights); {args.solver!r} is "
                       f"tuned by a search over its grid (--max-evals)")
    if name == "learned" and args.denoise_final == "auto":
        raise CLIError(f"--solver {'auto picks learned at NFE ' + str(args.nfe) + ', which' if auto else 'learned'} "
                       f"needs --denoise-final yes or no (or none: no, the default); or pass --solver unipc")
    return name


def _tune(args, name, den, problem, device):
    from ..tune import tune_solver, tune_steps

    # what the command line leaves out, the tuner's own defaults decide
    given = {k: v for k, v in (("pilot", args.pilot), ("screen", args.screen), ("iterations", args.iterations),
                               ("denoise_final", DENOISE_FINAL.get(args.denoise_final))) if v is not None}
    with contextlib.redirect_stdout(sys.stderr):  # the search log goes with the progress, to stderr
        if name == "learned":
            return tune_solver(den, args.nfe, grid=args.init, fresh=args.fresh, **given,
                               max_evals=args.max_evals,
                               model=problem.name, device=device, verbose=not args.quiet,
                               progress=False if args.quiet else None)
        return tune_steps(den, args.solver, args.nfe, fresh=args.fresh, **given,
                          init=args.init, max_evals=args.max_evals, model=problem.name,
                          device=device, verbose=not args.quiet, progress=False if args.quiet else None)


def run(args) -> int:
    one_process_only("diffsolve tune", "run it without torchrun")
    name = _check_args(args)
    device, _ = check_device_dtype(args)
    apply_threads(args, device)
    out = Path(args.out)
    problem = problem_from_args(args, device)
    den = checked_denoiser(problem, device)
    if not args.quiet:
        pilots = count(args.pilot, "pilot seed") if args.pilot else "the tuner's default pilots"
        both = name != "learned" and args.denoise_final in (None, "auto")  # tune_steps' default: auto
        print(f"tuning {args.solver} at NFE {args.nfe} on {problem.name}: {pilots}, "
              f"{f'{args.fresh} fresh' if args.fresh else 'no fresh check'}, up to {count(args.max_evals, 'solve')}"
              f"{' per end (with and without the final denoise)' if both else ''} ...", file=sys.stderr, flush=True)
    res = _tune(args, name, den, problem, device)
    res.save(out)
    screened = f" (pilots screened from {res.screened} start points, weighted)" if res.screened else ""
    print(f"{args.solver} NFE {res.nfe}: pilot RMS error{screened} {res.init_error:.4g} ({res.init_grid}) -> "
          f"{res.pilot_error:.4g}; {res.fresh_summary()}; tuning cost {count(res.tuning_nfe, 'network call')}, "
          f"{res.tuning_seconds:.1f} s -> {out}")
    return 0
