"""``diffsolve likelihood``: exact log-likelihoods by the probability-flow ODE
(:func:`diffsolve.log_likelihood`), of given samples or of a problem's exact data."""
from __future__ import annotations

import json
import math
import sys
import time

from .._text import count
from ._common import (CLIError, add_device_options, add_model_options, check_device_dtype, checked_denoiser,
                      positive_int, problem_from_args)


def add_parser(subparsers):
    lk = subparsers.add_parser("likelihood", help="exact log-likelihood by the probability-flow ODE")
    add_model_options(lk)
    lk.add_argument("--data", help=".npy or .pt file of samples (default: exact data of the problem)")
    lk.add_argument("--n", type=positive_int, default=64, help="number of exact data points (default 64)")
    lk.add_argument("--seed", type=int, default=0, help="seed of the exact data and the probes (default 0)")
    lk.add_argument("--divergence", help="hutchinson or exact (default: the library's, hutchinson)")
    lk.add_argument("--probes", type=positive_int, help="Hutchinson probes per sample (default: the library's, 1)")
    lk.add_argument("--fresh-probes", action="store_true",
                    help="draw new Hutchinson probes at every network call instead of holding them fixed "
                         "(same cost, unbiased, smaller variance; benchmarks/likelihood.md)")
    lk.add_argument("--rtol", type=float, help="relative tolerance of the ODE solve (default: the library's)")
    lk.add_argument("--atol", type=float, help="absolute tolerance of the ODE solve (default: the library's)")
    lk.add_argument("--json", action="store_true", help="print the result as JSON")
    add_device_options(lk)
    lk.set_defaults(run=run)
    return lk


def _points(args, problem, den):
    """The points to evaluate: ``--data``, or the problem's exact data."""
    if args.data:  # the file, then its samples against the model (before the run is announced)
        from ..checks import check_data
        from ..files import load_tensor_file

        x = load_tensor_file(args.data, "--data file")
        check_data(den, x, name=f"--data {args.data}")
        return x
    if problem.exact:
        return problem.exact_samples(args.n, args.seed)
    if problem.heldout is not None and problem.name == "digits":
        raise CLIError("for the digits model give --data (model-space samples), e.g. from `diffsolve sample`")
    raise CLIError(f"{problem.name} has no exact data; give --data FILE (.npy or .pt)")


def _summary(problem, den, res, seconds: float) -> dict:
    import torch

    lp = res.log_prob.detach().cpu().to(torch.float64)
    out = {"problem": problem.name, "schedule": problem.schedule_name, "n": int(lp.shape[0]),
           "mean_log_prob": float(lp.mean()),
           "stderr_mean": float(lp.std() / math.sqrt(len(lp))) if len(lp) > 1 else None,
           "bits_per_dim": float(res.bits_per_dim.mean()), "mean_nfe": float(res.nfe.to(torch.float64).mean()),
           "wall_time_s": seconds}
    if problem.exact:
        sch = den.schedule
        exact = problem.mixture.log_prob(res.x.detach().cpu().to(torch.float64), float(sch.t_min), sch)
        out["exact_mean_log_prob"] = float(exact.mean())
        out["max_abs_error"] = float((lp - exact).abs().max())
    return out


def run(args) -> int:
    from ..checks import check_seed

    check_seed(args.seed, " (--seed)")
    device, dtype = check_device_dtype(args)
    try:
        from ..likelihood import log_likelihood
    except ImportError as e:
        raise CLIError(f"log-likelihoods need diffsolve.likelihood, which is not available: {e}") from None
    problem = problem_from_args(args, device)
    den = checked_denoiser(problem, device)
    x = _points(args, problem, den)
    if not args.quiet:
        print(f"log-likelihood of {count(x.shape[0], 'point')} under {problem.name} ({args.divergence or 'default'} "
              f"divergence) ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    given = {k: getattr(args, k) for k in ("divergence", "probes", "rtol", "atol") if getattr(args, k) is not None}
    res = log_likelihood(den, x.to(device), fresh_probes=args.fresh_probes, dtype=dtype,
                         seeds=range(args.seed, args.seed + x.shape[0]), **given)
    out = _summary(problem, den, res, time.perf_counter() - t0)
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:>20}: {v:.6g}" if isinstance(v, float) else f"{k:>20}: {v}")
    return 0
