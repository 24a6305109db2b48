"""``diffsolve sample``: draw samples with :func:`diffsolve.sample` and save them (.pt or .npy).

What the user gave goes to :func:`diffsolve.sample` as given (no solver, budget or grid of our own):
the library picks the default solver, sizes the steps and refuses what does not go together (a
budget beside a tuned grid, a budget or grid kind for a solver that chooses its own steps), and
its message is the command's error.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from .._text import count
from ._common import (add_device_options, add_model_options, add_nfe_option, add_seeds_option,
                      check_device_dtype, check_grid, check_solver, check_writable, checked_denoiser, is_grid_file,
                      nonneg_float, positive_int, problem_from_args)

OUT_SUFFIXES = (".pt", ".npy")


def add_parser(subparsers):
    s = subparsers.add_parser("sample", help="draw samples and save them (.pt or .npy)")
    add_model_options(s)
    s.add_argument("--solver", help="solver name or name:key=value:... spec, e.g. unipc:order=3 "
                                    "(default: that of diffsolve.sample, or the solver a tuned --grid file was "
                                    "tuned for; `diffsolve list solvers`)")
    sn = s.add_mutually_exclusive_group()
    add_nfe_option(sn)
    sn.add_argument("--steps", type=positive_int, help="number of solver steps")
    s.add_argument("--eta", type=nonneg_float, default=0.0, help="noise level ν = η g (default 0)")
    s.add_argument("--grid", help="step grid kind (`diffsolve list grids`) or a tuned-grid .json file; adaptive "
                                  "solvers size their own steps (options in the spec, e.g. dopri5:rtol=1e-4, "
                                  "torchsde:steps=50:grid=karras)")
    add_seeds_option(s, "one seed per sample, e.g. 0-63 (default)", default="0-63")
    s.add_argument("--no-denoise-final", action="store_true", help="skip the final x̂0 evaluation")
    s.add_argument("--out", required=True, help="output file: .pt (torch.save) or .npy")
    add_device_options(s)
    s.set_defaults(run=run)
    return s


def _save(x, path: Path):
    if path.suffix == ".npy":
        import numpy as np

        np.save(path, x.detach().cpu().numpy())
    else:
        import torch

        torch.save(x.detach().cpu(), path)


def _announce(args, problem):
    """The line before sampling: what runs, as the user gave it."""
    tuned = is_grid_file(args.grid)
    solver = args.solver or ("the tuned solver" if tuned else "the default solver")
    sizing = [f"grid {args.grid}"] if args.grid else []
    sizing += [f"NFE {args.nfe}"] if args.nfe else [f"{args.steps} steps"] if args.steps else []
    print(f"sampling {problem.name} with {solver} ({', '.join(sizing + [f'eta={args.eta:g}'])}) "
          f"seeds {args.seeds} ...", file=sys.stderr, flush=True)


def _report(args, res, out: Path, seconds: float):
    """The line after sampling: what it made, and why it spent less than the budget if it did."""
    under = ""
    if args.nfe is not None and res.nfe < args.nfe:  # a step costs more than one evaluation
        name = args.solver or res.solver.name
        under = (f" (the budget was {args.nfe}; {name!r} spends {res.solver.nfe_per_step} per step, so "
                 f"{res.nfe} is the most it can use)")
    print(f"{count(res.x.shape[0], 'sample')} of shape {tuple(res.x.shape[1:])}, "
          f"{count(res.nfe, 'network evaluation')}{under}, {seconds:.1f} s -> {out}", file=sys.stderr)


def run(args) -> int:
    import torch

    from .. import sample

    out = check_writable(Path(args.out), OUT_SUFFIXES)  # first: a run must not end in an unwritable path
    device, dtype = check_device_dtype(args)
    if args.solver is not None:
        check_solver(args.solver)
    if args.grid is not None:
        check_grid(args.grid)
    problem = problem_from_args(args, device)
    den = checked_denoiser(problem, device)
    t0 = time.perf_counter()
    if not args.quiet:
        _announce(args, problem)
    with torch.no_grad():
        res = sample(den, seeds=args.seeds, solver=args.solver, nfe=args.nfe, steps=args.steps, eta=args.eta,
                     grid=args.grid, dtype=dtype, device=device, denoise_final=False if args.no_denoise_final else None)
    _save(res.x, out)
    if not args.quiet:
        _report(args, res, out, time.perf_counter() - t0)
    return 0
