"""``diffsolve likelihood``: exact log-likelihoods by the probability-flow ODE
(:func:`diffsolve.log_likelihood`) of given data (8-bit images dequantized, or model-space samples) or
of a problem's exact data; with ``--out DIR`` rows written as they finish, sharded over torchrun
processes and resumable (:func:`diffsolve.dataset_likelihood.dataset_log_likelihood`)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .._text import count
from ._common import (
    CLIError,
    add_device_options,
    add_model_options,
    add_threads_option,
    apply_threads,
    check_device_dtype,
    checked_denoiser,
    csv,
    positive_int,
    problem_from_args,
)

DATA_HELP = ("data to score: a folder of images (8-bit), a folder of .npz sample shards, or a .npy/.npz/.pt file "
             "(uint8 = 8-bit images, floats = samples in model space); default: the problem's exact data")


def add_parser(subparsers):
    lk = subparsers.add_parser("likelihood", help="exact log-likelihood by the probability-flow ODE")
    add_model_options(lk)
    lk.add_argument("--data", help=DATA_HELP)
    lk.add_argument("--n", "--items", dest="n", type=positive_int,
                    help="the first N items of --data (default all), or N exact data points (default 64); "
                         "--items under torchrun, which reads --n as one of its own options")
    lk.add_argument("--seed", type=int, default=0, help="item i uses seed + i for its dequantization noise and "
                                                        "probes (and the exact data's seed; default 0)")
    lk.add_argument("--divergence", help="hutchinson or exact (default: the library's, hutchinson)")
    lk.add_argument("--probes", type=positive_int, help="Hutchinson probes per sample (default: the library's, 1)")
    fp = lk.add_mutually_exclusive_group()
    fp.add_argument("--fresh-probes", dest="fresh_probes", action="store_true", default=None,
                    help="draw new Hutchinson probes at every network call (the library's default for the "
                         "Hutchinson estimate: same cost, unbiased, smaller variance; benchmarks/likelihood.md)")
    fp.add_argument("--fixed-probes", dest="fresh_probes", action="store_false",
                    help="hold each Hutchinson probe fixed along the trajectory (FFJORD's estimator)")
    lk.add_argument("--rtol", type=float, help="relative tolerance of the ODE solve (default: the library's)")
    lk.add_argument("--atol", type=float, help="absolute tolerance of the ODE solve (default: the library's)")
    step = lk.add_mutually_exclusive_group()
    step.add_argument("--per-sample", dest="per_sample", action="store_true", default=None,
                      help="error control per item, so an item's value does not depend on its batch (the default)")
    step.add_argument("--shared-step", dest="per_sample", action="store_false",
                      help="one adaptive step for each batch, the error norm over all of it")
    lk.add_argument("--batch-size", type=positive_int, default=64,
                    help="items per ODE solve, and the block of consecutive items dealt to a process (default 64)")
    lk.add_argument("--out", help="directory for the rows (likelihood-rank{r}.jsonl, one JSON line per item, "
                                  "appended per batch), run.json and summary.json")
    lk.add_argument("--resume", action="store_true", help="continue the rows in --out (same settings): only "
                                                          "unfinished batches run")
    lk.add_argument("--data-range", type=csv(float, "number", distinct=False), default=None, metavar="LO,HI",
                    help="the model's data range, where 8-bit levels (or --levels) are mapped (default -1,1; "
                         "write --data-range=-1,1 when LO is negative)")
    lk.add_argument("--dequantize", action=argparse.BooleanOptionalAction, default=None,
                    help="uniform dequantization (default: on for uint8 images, off for float data; float data "
                         "need --levels)")
    lk.add_argument("--levels", type=positive_int, help="float data on the K-level grid LO + (HI - LO)k/(K - 1), or "
                    "integer level indices k (any integer dtype, uint8 too): dequantize them with K cells (e.g. 17 "
                    "for the digits)")
    lk.add_argument("--json", action="store_true", help="print the result as JSON")
    add_device_options(lk)
    add_threads_option(lk)
    lk.set_defaults(run=run)
    return lk


def _data_range(value) -> tuple[float, float]:
    from ..images import DATA_RANGE, check_data_range

    if value is None:
        return DATA_RANGE
    if len(value) != 2:
        raise CLIError(f"--data-range takes two numbers LO,HI, got {','.join(map(str, value))}")
    return check_data_range(value)


def _open_data(path: str, levels: bool = False):
    """--data as a tensor (.npy, .pt: read whole, with the file checks of diffsolve.files) or a
    Dataset read a batch at a time (folders, .npz, images)."""
    from ..files import load_tensor_file
    from ..images import IMAGE_SUFFIXES, open_dataset

    p = Path(path).expanduser()
    if p.suffix.lower() in (".npy", ".pt") or (levels and p.suffix.lower() == ".npz" and p.is_file()):
        return load_tensor_file(p, "--data file", images=True, levels=levels)
    if not p.exists():
        raise CLIError(f"--data {path!r} does not exist")
    if p.is_dir() or p.suffix.lower() in (".npz", *IMAGE_SUFFIXES):
        return open_dataset(p)
    raise CLIError(f"--data file {path!r} must be .npy (numpy.save), .npz or .pt (torch.save), an image, or a "
                   f"folder of images or .npz sample shards")


def _exact_data(args, problem):
    if problem.exact:
        return problem.exact_samples(args.n or 64, args.seed)
    if problem.heldout is not None and problem.name == "digits":
        raise CLIError("for the digits model give --data (images, or model-space samples from `diffsolve sample`)")
    raise CLIError(f"{problem.name} has no exact data; give --data (a .npy/.npz/.pt file or a folder)")


def _add_exact(out: dict, problem, den, data, rows):
    """The exact log p of the points of an analytic problem beside the estimate (float data only)."""
    import torch

    x = data[0:len(rows)]
    if not problem.exact or out["dequantized"] or not x.is_floating_point():
        return
    sch = den.schedule
    exact = problem.mixture.log_prob(x.detach().cpu().to(torch.float64), float(sch.t_min), sch)
    est = torch.tensor([r["log_prob"] for r in rows], dtype=torch.float64)
    out["exact_mean_log_prob"] = float(exact.mean())
    out["max_abs_error"] = float((est - exact).abs().max())


def _print(out: dict, as_json: bool):
    if as_json:
        print(json.dumps(out))
        return
    for k, v in out.items():
        if k == "settings":
            continue
        if k == "bits_per_dim" and out.get("bits_per_dim_stderr") is not None:
            v = f"{v:.6g} ± {out['bits_per_dim_stderr']:.3g} (standard error over {count(out['n'], 'item')})"
        print(f"{k:>20}: {v:.6g}" if isinstance(v, float) else f"{k:>20}: {v}")


def run(args) -> int:
    import torch

    from ..checks import check_seed
    from ..dataset_likelihood import check_out_dir, dataset_log_likelihood
    from ..distributed import init

    check_seed(args.seed, " (--seed)")
    device, dtype = check_device_dtype(args)
    data_range = _data_range(args.data_range)
    if args.resume and args.out is None:
        raise CLIError("--resume continues the rows in --out DIR; give --out")
    if args.out is not None:
        check_out_dir(args.out, create=False)  # before the model loads or any work
    data = _open_data(args.data, levels=args.levels is not None) if args.data else None
    dist = init(str(device))
    try:
        device = torch.device(dist.device)  # cuda:LOCAL_RANK under torchrun with --device cuda
        apply_threads(args, device)
        problem = problem_from_args(args, device)
        den = checked_denoiser(problem, device)
        if data is None:
            data = _exact_data(args, problem)
        n = args.n if args.data else None  # exact data are drawn n at a time
        if n is not None and n > len(data):
            raise CLIError(f"--n {n} is more than the {count(len(data), 'item')} of --data {args.data}")
        given = {k: getattr(args, k) for k in ("divergence", "probes", "rtol", "atol", "fresh_probes", "per_sample")
                 if getattr(args, k) is not None}
        res = dataset_log_likelihood(
            den, data, args.out, batch_size=args.batch_size, n=n, data_range=data_range, dequantize=args.dequantize,
            levels=args.levels, seed=args.seed, resume=args.resume, dist=dist, device=device,
            model=problem.name, progress=not args.quiet, dtype=dtype, **given,
            data_name=f"--data {args.data}" if args.data else f"{problem.name}'s exact samples")
    finally:
        dist.close()
    out = {"problem": problem.name, "schedule": problem.schedule_name, **res.summary}
    _add_exact(out, problem, den, data, res.rows)
    if dist.is_main:
        _print(out, args.json)
    return 0
