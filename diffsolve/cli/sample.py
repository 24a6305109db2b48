"""``diffsolve sample``: draw samples with :func:`diffsolve.sample` and save them: ``--out FILE`` (.pt or
.npy, one batch), or ``--outdir DIR`` (many seeds, written block by block as PNG files or npz shards,
``--resume``, torchrun: :mod:`diffsolve.generate`, which holds the logic and documents the files).

What the user gave goes to :func:`diffsolve.sample` as given (no solver, budget or grid of our own):
the library picks the default solver, sizes the steps and refuses what does not go together (a
budget beside a tuned grid, a budget or grid kind for a solver that chooses its own steps), and
its message is the command's error.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

from .._text import count
from ._common import (
    CLIError,
    add_threads_option,
    one_process_only,
    apply_threads,
    add_device_options,
    add_model_options,
    add_nfe_option,
    add_seeds_option,
    check_device_dtype,
    check_grid,
    check_solver,
    check_writable,
    checked_denoiser,
    is_grid_file,
    note_grid_model,
    nonneg_float,
    positive_int,
    problem_from_args,
)

OUT_SUFFIXES = (".pt", ".npy")
BATCH_SIZE = 64
OUTDIR_ONLY = ("format", "batch_size", "resume", "data_range", "class_label", "num_classes", "guidance")


def data_range(text):
    """``LO,HI`` with LO < HI (finite)."""
    from ..images import check_data_range

    parts = str(text).split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        return check_data_range(float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI with finite LO < HI (e.g. --data-range=-1,1), got "
                                         f"{text!r}") from None


def class_label(text):
    """A class index N >= 0, or ``random``."""
    if text == "random" or (text.isdigit() and len(text) < 19):
        return text if text == "random" else int(text)
    raise argparse.ArgumentTypeError(f"expected a class index N >= 0 or 'random', got {text!r}")


def add_parser(subparsers):
    s = subparsers.add_parser("sample", help="draw samples: one .pt or .npy file (--out), or PNG images or npz "
                                             "shards, resumable (--outdir)")
    add_model_options(s)
    s.add_argument("--solver", help="solver name or name:key=value:... spec, e.g. unipc:order=3 "
                                    "(default: that of diffsolve.sample, or the solver a tuned --grid file was "
                                    "tuned for; `diffsolve list solvers`)")
    sn = s.add_mutually_exclusive_group()
    add_nfe_option(sn)
    sn.add_argument("--steps", type=positive_int, help="number of solver steps")
    s.add_argument("--eta", type=nonneg_float, help="noise level ν = η g (default: 1 for ancestral and the SDE "
                                                     "solvers, which exist to sample the reverse SDE; else 0)")
    s.add_argument("--grid", help="step grid kind (`diffsolve list grids`) or a tuned-grid .json file; adaptive "
                                  "solvers size their own steps (options in the spec, e.g. dopri5:rtol=1e-4, "
                                  "torchsde:steps=50:grid=karras)")
    add_seeds_option(s, "one seed per sample, e.g. 0-63 (default)", default="0-63")
    s.add_argument("--denoise-final", action=argparse.BooleanOptionalAction, default=None,
                   help="end with x̂0 at the last time (one evaluation of the budget); default: as "
                        "diffsolve.sample, by its measured rule (e.g. above 20 evaluations for a named ODE "
                        "solver, always with noise); bench ends every row with it unless --no-denoise-final")
    s.add_argument("--analytic-first-step", action=argparse.BooleanOptionalAction, default=None,
                   help="answer the first evaluation with the exact network of standard-normal data, so N "
                        "evaluations buy the steps of N + 1 (default: as diffsolve.sample, on with the default "
                        "solver up to 6 evaluations, 9 on DDPM and cosine schedules, 20 on flow schedules; "
                        "docs/math.md §27)")
    out = s.add_mutually_exclusive_group(required=True)
    out.add_argument("--out", help="output file: .pt (torch.save) or .npy (all samples in one array)")
    out.add_argument("--outdir", help="output folder: the samples written block by block (--format), "
                                      "resumable, torchrun shares the blocks (diffsolve.generate)")
    g = s.add_argument_group("--outdir options")
    g.add_argument("--format", choices=("png", "npz"), help="png: DIR/000000/000123.png per seed (images of "
                   "shape (1 or 3, H, W)); npz: DIR/samples-FIRST-LAST.npz per block, keys seeds, x (float32, "
                   "model space) [, labels] (default png)")
    g.add_argument("--batch-size", type=positive_int, help=f"seeds per block (default {BATCH_SIZE})")
    g.add_argument("--resume", action="store_true", help="skip the seeds already in --outdir (same settings)")
    g.add_argument("--data-range", type=data_range, metavar="LO,HI",
                   help="the model's data range for the 8-bit PNG map (default -1,1; write --data-range=-1,1)")
    g.add_argument("--class", dest="class_label", type=class_label, metavar="N|random",
                   help="class label of a class-conditional model: N for every sample, or random (drawn "
                        "from each sample's seed)")
    g.add_argument("--num-classes", type=positive_int, help="classes for --class random (default: the network's)")
    g.add_argument("--guidance", type=nonneg_float, help="classifier-free guidance scale w with --class "
                                                         "(default 1: the conditional model)")
    add_threads_option(s)
    add_device_options(s, dtype_default=None)
    s.set_defaults(run=run)
    return s


def _save(x, path: Path):
    """Write the samples whole or not at all (a temporary file renamed into place): a full disk leaves no
    truncated file, and is said in one line (exit status 1) rather than as the writer's own error."""
    import numpy as np
    import torch

    from ..runfiles import write_atomic, write_failed

    path.parent.mkdir(parents=True, exist_ok=True)  # checked writable at the start (check_writable), made now
    x = x.detach().cpu()

    def write(tmp: Path):
        with open(tmp, "wb") as f:
            if path.suffix == ".npy":
                np.save(f, x.numpy())
            else:
                torch.save(x, f)
            f.flush()

    kept = f"the samples take {x.numel() * x.element_size():,} bytes; nothing was written"
    try:
        write_atomic(path, write, kept)
    except RuntimeError as e:  # torch.save reports a short write as a RuntimeError
        raise write_failed(path, e, kept) from None




def _announce(args, problem):
    """The line before sampling: what runs, as the user gave it."""
    tuned = is_grid_file(args.grid)
    solver = args.solver or ("the tuned solver" if tuned else "the default solver")
    sizing = [f"grid {args.grid}"] if args.grid else []
    sizing += [f"NFE {args.nfe}"] if args.nfe else [f"{args.steps} steps"] if args.steps else []
    from ..solvers import default_eta

    # not given: a tuned grid's ODE (η = 0, what it was tuned on), else the solver's own
    eta = args.eta if args.eta is not None else 0.0 if tuned else default_eta(args.solver)
    print(f"sampling {problem.name} with {solver} ({', '.join(sizing + [f'eta={eta:g}'])}) "
          f"seeds {args.seeds} ...", file=sys.stderr, flush=True)


def _report(args, res, out: Path, seconds: float):
    """The line after sampling: what it made, and why it spent less than the budget if it did."""
    under = ""
    if args.nfe is not None and res.nfe < args.nfe:  # a step costs more than one evaluation
        name = args.solver or res.solver.name
        under = (f" (the budget was {args.nfe}; {name!r} spends {res.solver.nfe_per_step} per step, so "
                 f"{res.nfe} is the most it can use)")
    first = " (the first step's analytic: one evaluation free)" if res.analytic_first_step else ""
    print(f"{count(res.x.shape[0], 'sample')} of shape {tuple(res.x.shape[1:])}, "
          f"{count(res.nfe, 'network evaluation')}{under}{first}, {seconds:.1f} s -> {out}", file=sys.stderr)


def run(args) -> int:
    if args.outdir is not None:
        return _run_outdir(args)
    given = [f"--{k.replace('_label', '').replace('_', '-')}" for k in OUTDIR_ONLY if getattr(args, k) not in
             (None, False)]
    if given:
        raise CLIError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to --outdir DIR; --out FILE "
                       f"holds one batch as it is")
    import torch

    from .. import sample
    from ..sample import plan_run

    one_process_only("diffsolve sample --out FILE", "use --outdir DIR, which shares the seeds among the processes")
    out = check_writable(Path(args.out), OUT_SUFFIXES)  # first: a run must not end in an unwritable path
    device, dtype = check_device_dtype(args)
    if args.solver is not None:
        check_solver(args.solver)
    if args.grid is not None:
        check_grid(args.grid)
    apply_threads(args, device)
    problem = problem_from_args(args, device)
    note_grid_model(args.grid, problem)
    den = checked_denoiser(problem, device)
    run = dict(solver=args.solver, nfe=args.nfe, steps=args.steps, eta=args.eta, grid=args.grid,
               denoise_final=args.denoise_final, analytic_first_step=args.analytic_first_step)
    with warnings.catch_warnings():  # every option checked before the announcement (sample() warns itself)
        warnings.simplefilter("ignore")
        plan_run(den.schedule, **run)
    t0 = time.perf_counter()
    if not args.quiet:
        _announce(args, problem)
    with torch.no_grad():
        res = sample(den, seeds=args.seeds, dtype=dtype, device=device, **run)
    _save(res.x, out)
    if not args.quiet:
        _report(args, res, out, time.perf_counter() - t0)
    return 0


def _run_outdir(args) -> int:
    """``--outdir``: :func:`diffsolve.generate.generate` (every check before any sample is drawn)."""
    from ..distributed import init
    from ..generate import generate
    from ..runfiles import output_dir

    output_dir(args.outdir, "--outdir", create=False)  # first: a run must not end in an unwritable folder
    device, dtype = check_device_dtype(args)
    if args.solver is not None:
        check_solver(args.solver)
    if args.grid is not None:
        check_grid(args.grid)
    apply_threads(args, device)
    import torch

    dist = init(str(device))
    try:
        device = torch.device(dist.device)  # under torchrun with CUDA: cuda:LOCAL_RANK
        problem = problem_from_args(args, device)
        note_grid_model(args.grid, problem)
        den = checked_denoiser(problem, device)
        generate(den, args.seeds, args.outdir, format=args.format or "png", batch_size=args.batch_size or BATCH_SIZE,
                 data_range=args.data_range or (-1.0, 1.0), class_label=args.class_label,
                 num_classes=args.num_classes, guidance=args.guidance, resume=args.resume,
                 progress=not args.quiet, name=problem.name, dist=dist, solver=args.solver, nfe=args.nfe,
                 steps=args.steps, eta=args.eta, grid=args.grid, dtype=dtype, device=device,
                 denoise_final=args.denoise_final,
                 analytic_first_step=args.analytic_first_step)
    finally:
        dist.close()
    return 0
