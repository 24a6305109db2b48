r"""The ``diffsolve`` command line: ``bench``, ``sample``, ``likelihood``, ``tune``, ``list``.

    diffsolve bench                                   # default: key solvers × NFE 5,10,20,50
    diffsolve bench --problems mix64 --solvers ddim,dpmpp_2m --nfe 10,20 --seeds 0-499
    torchrun --nproc-per-node 4 -m diffsolve bench --device cuda   # seeds sharded over processes
    diffsolve sample --problem ring2d --solver dpmpp_2m --nfe 20 --seeds 0-63 --out x.npy
    diffsolve sample --model digits --solver unipc --nfe 10 --seeds 0-15 --out digits.pt
    diffsolve likelihood --problem ring2d --n 64       # vs the exact log p
    diffsolve tune --problem mix64 --solver unipc --nfe 10 --out grid.json
    diffsolve sample --problem mix64 --solver unipc --grid grid.json --seeds 0-63 --out x.npy
    diffsolve list solvers --json

Bad input (unknown names, impossible budgets, unwritable paths) prints ``error: …`` and exits
with status 2, never a traceback (set ``DIFFSOLVE_DEBUG=1`` to see one).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

from ._text import count

__all__ = ["main", "build_parser"]

EXIT_USAGE = 2


class CLIError(ValueError):
    """A user error detected by the command line itself."""


# --- option parsing helpers -----------------------------------------------------------------------
def _csv(kind=str, what="value"):
    def parse(text):
        items = [s.strip() for s in str(text).split(",") if s.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {what}s, got {text!r}")
        try:
            return [kind(s) for s in items]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {what}s, got {text!r}") from None
    return parse


def _positive_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _nonneg_float(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not (math.isfinite(v) and v >= 0):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return v


def _seeds(text):
    from .noise import parse_seeds

    try:
        seeds = parse_seeds(text, distinct=True)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if not seeds:
        raise argparse.ArgumentTypeError(f"no seeds in {text!r}; use e.g. 0-63")
    return text


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: same "error:" style, exit 2
        self.print_usage(sys.stderr)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(EXIT_USAGE)


def _choices_msg(kind, value, valid):
    return f"unknown {kind} {value!r}; valid {kind}s: {', '.join(valid)}"


def _add_common(p, dtype_default="float64"):
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--dtype", default=dtype_default, help="solver state dtype: float64 or float32 "
                   f"(default {dtype_default}; the network runs in its own dtype)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress or notes on stderr")


def _add_model_choice(p):
    g = p.add_mutually_exclusive_group()
    g.add_argument("--problem", help="built-in problem with exact ground truth (see `diffsolve list problems`)")
    g.add_argument("--model", help="a bundled model (see `diffsolve list models`) or package.module:factory")
    p.add_argument("--schedule", help="schedule of an analytic problem (default ddpm; see `diffsolve list schedules`)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="diffsolve", description="Numerical ODE/SDE solvers for diffusion models.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")

    b = sub.add_parser("bench", help="benchmark solvers: quality vs NFE against exact ground truth",
                       description="Run solvers at fixed NFE budgets on problems with exact ground truth and "
                                   "on bundled models; write results.jsonl (one row per configuration, "
                                   "flushed as it finishes) and quality_vs_nfe.png.")
    b.add_argument("--problems", type=_csv(str, "problem"), help="comma-separated problems "
                   "(default: ring2d,mix64,gauss3072 and the digits model if bundled)")
    b.add_argument("--model", action="append", default=[], help="add a model (zoo name or package.module:factory); "
                   "repeatable")
    b.add_argument("--solvers", type=_csv(str, "solver"), help="comma-separated solvers, each a name or "
                   "name:key=value:... with its options, e.g. dpmpp_2m,unipc:order=3:variant=bh1 (default: "
                   "ddim,dpmpp_2m,dpmpp_3m,unipc,heun,euler, those registered; options: `diffsolve list solvers`)")
    b.add_argument("--nfe", type=_csv(int, "integer"), help="comma-separated NFE budgets, final denoise "
                   "included (default 5,10,20,50)")
    b.add_argument("--eta", type=_csv(float, "number"), default=[0.0],
                   help="comma-separated noise levels ν = η g (default 0: the probability-flow ODE)")
    b.add_argument("--schedule", help="schedule of the analytic problems (default ddpm)")
    b.add_argument("--grid", default="log_snr", help="step grid kind (default log_snr; see `diffsolve list grids`)")
    sg = b.add_mutually_exclusive_group()
    sg.add_argument("--seeds", type=_seeds, help="seeds for every problem, e.g. 0-999 (default: 0..n-1 with a "
                    "per-problem n)")
    sg.add_argument("--n-samples", type=_positive_int, help="samples per problem (seeds 0..n-1)")
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
    b.add_argument("--threads", type=_positive_int, help="CPU threads per process (default 1 on CPU unless "
                   "OMP_NUM_THREADS is set: the built-in problems are small)")
    b.add_argument("--reference-tol", type=float, help="rtol = atol of the reference ODE solve "
                   "(default 1e-8 for mixtures, 1e-5 for models; single Gaussians use the closed form)")
    b.add_argument("--projections", type=_positive_int, default=512, help="sliced-Wasserstein projections (512)")
    _add_common(b)

    s = sub.add_parser("sample", help="draw samples and save them (.pt or .npy)")
    _add_model_choice(s)
    s.add_argument("--solver", help="solver name or name:key=value:... spec, e.g. unipc:order=3 "
                                    "(default dpmpp_2m, or the solver a tuned --grid file was tuned for; "
                                    "`diffsolve list solvers`)")
    sn = s.add_mutually_exclusive_group()
    sn.add_argument("--nfe", type=_positive_int, help="budget of network evaluations (final denoise included)")
    sn.add_argument("--steps", type=_positive_int, help="number of solver steps")
    s.add_argument("--eta", type=_nonneg_float, default=0.0, help="noise level ν = η g (default 0)")
    s.add_argument("--grid", help="step grid kind (default log_snr) or a tuned-grid .json file; adaptive "
                                  "solvers size their own steps (options in the spec, e.g. dopri5:rtol=1e-4, "
                                  "torchsde:steps=50:grid=karras)")
    s.add_argument("--seeds", type=_seeds, default="0-63", help="one seed per sample, e.g. 0-63 (default)")
    s.add_argument("--no-denoise-final", action="store_true", help="skip the final x̂0 evaluation")
    s.add_argument("--out", required=True, help="output file: .pt (torch.save) or .npy")
    _add_common(s)

    lk = sub.add_parser("likelihood", help="exact log-likelihood by the probability-flow ODE")
    _add_model_choice(lk)
    lk.add_argument("--data", help=".npy or .pt file of samples (default: exact data of the problem)")
    lk.add_argument("--n", type=_positive_int, default=64, help="number of exact data points (default 64)")
    lk.add_argument("--seed", type=int, default=0, help="seed of the exact data and the probes (default 0)")
    lk.add_argument("--divergence", default="hutchinson", help="hutchinson (default) or exact")
    lk.add_argument("--probes", type=_positive_int, default=1, help="Hutchinson probes per sample (default 1)")
    lk.add_argument("--fresh-probes", action="store_true",
                    help="draw new Hutchinson probes at every network call instead of holding them fixed "
                         "(same cost, unbiased, smaller variance; benchmarks/likelihood.md)")
    lk.add_argument("--rtol", type=float, default=1e-5)
    lk.add_argument("--atol", type=float, default=1e-5)
    lk.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_common(lk)

    tn = sub.add_parser("tune", help="tune a step grid to a model, a solver and an NFE budget",
                        description="Optimise the time grid of a deterministic solver at a fixed NFE against a "
                                    "high-accuracy reference solve on pilot seeds, judge it on fresh seeds, and "
                                    "save it as JSON for `sample --grid FILE` / `bench --grid FILE`.")
    _add_model_choice(tn)
    tn.add_argument("--solver", default="unipc", help="fixed-step deterministic solver, a name or "
                    "name:key=value:... spec (default unipc); "
                    "'learned': fit the per-step weights of the learned multistep solver on a grid tuned "
                    "for UniPC (tune_solver; the network must be differentiable)")
    tn.add_argument("--nfe", type=_positive_int, required=True, help="budget of network evaluations (final denoise included)")
    tn.add_argument("--pilot", type=_positive_int, default=256, help="pilot samples, seeds 0..N-1 (default 256)")
    tn.add_argument("--fresh", type=int, default=1024, help="fresh samples to judge the grid on (default 1024; 0 skips)")
    tn.add_argument("--max-evals", type=_positive_int, default=300, help="solves the search may spend (default 300)")
    tn.add_argument("--init", default="auto", help="starting grid kind, or auto (best fixed grid; default)")
    tn.add_argument("--denoise-final", default="yes", choices=("yes", "no", "auto"),
                    help="end with the x̂0 evaluation (yes, default), without (no), or tune both and keep the better (auto)")
    tn.add_argument("--iterations", type=_positive_int, default=300,
                    help="--solver learned: Adam iterations fitting the weights (default 300)")
    tn.add_argument("--out", required=True, help="output .json file")
    _add_common(tn)

    ls = sub.add_parser("list", help="list solvers, schedules, problems, models, grids")
    ls.add_argument("what", nargs="?", default="all",
                    help="solvers, schedules, problems, models, grids or all (default)")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


# --- shared pieces ----------------------------------------------------------------------------------
_DTYPES = ("float64", "float32")


def _check_device_dtype(args):
    import torch

    if args.dtype not in _DTYPES:
        raise CLIError(_choices_msg("dtype", args.dtype, _DTYPES))
    try:
        dev = torch.device(args.device)
    except RuntimeError:
        raise CLIError(f"unknown device {args.device!r}; use cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise CLIError(f"unsupported device {args.device!r}; use cpu or cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"device {args.device!r} requested but CUDA is not available here; use --device cpu")
    return dev, getattr(torch, args.dtype)


def _check_schedule(name):
    from .schedules import SCHEDULES

    if name is not None and name not in SCHEDULES:
        raise CLIError(_choices_msg("schedule", name, list(SCHEDULES)))


def _check_solver(spec):
    """A solver name or ``name:key=value:...`` spec (the options are checked by building it)."""
    from .solvers import SOLVERS, get_solver, parse_solver_spec

    name = parse_solver_spec(spec)[0]
    if name not in SOLVERS:
        raise CLIError(_choices_msg("solver", name, sorted(SOLVERS)))
    get_solver(spec)
    return name


def _check_grid(name):
    from .grids import GRIDS

    if name.endswith(".json"):  # a grid saved by `diffsolve tune`
        from .tune import TunedGrid

        TunedGrid.load(name)
    elif name not in GRIDS:
        raise CLIError(_choices_msg("grid", name, GRIDS) + ", or a tuned-grid .json file from `diffsolve tune`")


def _problem_from_args(args, device):
    from .bench.problems import get_model, get_problem

    if args.problem is None and args.model is None:
        raise CLIError("give --problem NAME (exact ground truth) or --model NAME; see `diffsolve list`")
    _check_schedule(args.schedule)
    if args.model is not None and args.schedule is not None:
        raise CLIError("--schedule applies to analytic problems; a model keeps the schedule it was trained with")
    if args.model is not None:
        return get_model(args.model, device=device)
    return get_problem(args.problem, schedule=args.schedule, device=device)


def _check_writable(path: Path, suffixes):
    if path.suffix not in suffixes:
        raise CLIError(f"output file {str(path)!r} must end in {' or '.join(suffixes)}")
    if path.exists() and path.is_dir():
        raise CLIError(f"{str(path)!r} is a directory; give a file name ending in {' or '.join(suffixes)}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CLIError(f"cannot create directory {str(parent)!r} for {str(path)!r}: {e.strerror or e}") from None
    if not parent.is_dir():
        raise CLIError(f"cannot write {str(path)!r}: {str(parent)!r} is not a directory")


def _save(x, path: Path):
    if path.suffix == ".npy":
        import numpy as np

        np.save(path, x.detach().cpu().numpy())
    else:
        import torch

        torch.save(x.detach().cpu(), path)


def _load_data(path: str):
    import torch

    p = Path(path)
    if not p.exists():
        raise CLIError(f"data file {path!r} does not exist")
    if p.suffix == ".npy":
        import numpy as np

        try:
            return torch.from_numpy(np.load(p, allow_pickle=False))
        except (ValueError, OSError) as e:
            raise CLIError(f"cannot read {path!r} as a .npy array: {e}") from None
    if p.suffix == ".pt":
        try:
            x = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
            raise CLIError(f"cannot read {path!r} as a tensor saved by torch.save: {e}") from None
        if not isinstance(x, torch.Tensor):
            raise CLIError(f"{path!r} holds an object of type {type(x).__name__}, expected a tensor saved by "
                           f"torch.save")
        return x
    raise CLIError(f"data file {path!r} must be .npy or .pt")


# --- commands ---------------------------------------------------------------------------------------
def cmd_bench(args) -> int:
    from .bench.runner import DEFAULT_NFE, BenchConfig, run_bench

    _check_device_dtype(args)
    _check_schedule(args.schedule)
    _check_grid(args.grid)
    if args.solvers:
        for s in args.solvers:
            _check_solver(s)
    problems = list(args.problems or [])
    from .bench.problems import get_model

    for m in args.model:
        get_model(m)  # a clear "unknown model" error before anything runs
    if args.model:
        if not problems:
            from .bench.runner import default_problems

            problems = default_problems()
        problems += [m for m in args.model if m not in problems]
    cfg = BenchConfig(problems=problems or None, solvers=args.solvers, nfe=list(args.nfe or DEFAULT_NFE),
                      eta=list(args.eta), schedule=args.schedule, grid=args.grid,
                      denoise_final=False if args.no_denoise_final else None, seeds=args.seeds,
                      n_samples=args.n_samples, device=args.device, dtype=args.dtype, out=args.out,
                      resume=args.resume, overwrite=args.overwrite, plot=not args.no_plot, quiet=args.quiet,
                      net_time=args.net_time, n_projections=args.projections,
                      save_samples=args.save_samples, reference_tol=args.reference_tol,
                      threads=args.threads)
    run_bench(cfg)
    return 0


def cmd_sample(args) -> int:
    import torch

    from .sample import sample

    device, dtype = _check_device_dtype(args)
    tuned = args.grid is not None and args.grid.endswith(".json")
    if args.solver is None and not tuned:
        args.solver = "dpmpp_2m"
    adaptive = False
    if args.solver is not None:
        from .solvers import SOLVERS

        adaptive = getattr(SOLVERS[_check_solver(args.solver)], "adaptive", False)
    if adaptive and (args.nfe is not None or args.steps is not None or args.grid is not None):
        raise CLIError(f"solver {args.solver!r} chooses its own steps: drop --nfe/--steps/--grid and give its "
                       f"options in the spec instead, e.g. dopri5:rtol=1e-4:atol=1e-4 or "
                       f"torchsde:method=srk:steps=50:grid=karras (`diffsolve list solvers`)")
    if args.grid is not None:
        _check_grid(args.grid)
    out = Path(args.out)
    _check_writable(out, (".pt", ".npy"))
    problem = _problem_from_args(args, device)
    den = problem.denoiser()
    if tuned and (args.nfe is not None or args.steps is not None):
        raise CLIError("a tuned grid fixes the number of steps; drop --nfe/--steps")
    if tuned and args.no_denoise_final:
        from .tune import TunedGrid

        if TunedGrid.load(args.grid).denoise_final:
            raise CLIError(f"{args.grid} was tuned with the final denoise, which it keeps; drop --no-denoise-final "
                           f"or tune a grid with --denoise-final no")
    if args.nfe is None and args.steps is None and not tuned and not adaptive:
        args.nfe = 20
    t0 = time.perf_counter()
    if not args.quiet:
        print(f"sampling {problem.name} with {args.solver or 'the tuned solver'} "
              f"({'grid ' + args.grid if tuned else 'NFE ' + str(args.nfe) if args.nfe else str(args.steps) + ' steps' if args.steps else 'steps sized by the solver'}, "
              f"eta={args.eta:g}) "
              f"seeds {args.seeds} ...", file=sys.stderr, flush=True)
    with torch.no_grad():
        res = sample(den, seeds=args.seeds, solver=args.solver, nfe=args.nfe, steps=args.steps, eta=args.eta,
                     grid=args.grid, dtype=dtype, device=device, denoise_final=not args.no_denoise_final)
    _save(res.x, out)
    if not args.quiet:
        under = ""
        if args.nfe is not None and res.nfe < args.nfe:  # a step costs more than one evaluation
            from .solvers import get_solver

            per = get_solver(args.solver).nfe_per_step
            under = (f" (the budget was {args.nfe}; {args.solver!r} spends {per} per step, so "
                     f"{res.nfe} is the most it can use)")
        print(f"{count(res.x.shape[0], 'sample')} of shape {tuple(res.x.shape[1:])}, "
              f"{count(res.nfe, 'network evaluation')}{under}, {time.perf_counter() - t0:.1f} s -> {out}",
              file=sys.stderr)
    return 0


def cmd_likelihood(args) -> int:
    import torch

    device, dtype = _check_device_dtype(args)
    try:
        from .likelihood import log_likelihood
    except ImportError as e:
        raise CLIError(f"log-likelihoods need diffsolve.likelihood, which is not available: {e}") from None
    problem = _problem_from_args(args, device)
    den = problem.denoiser()
    if args.data:
        x = _load_data(args.data).to(torch.float64)
        if tuple(x.shape[1:]) != tuple(problem.shape):
            raise CLIError(f"data of shape {tuple(x.shape)} do not match the problem's sample shape "
                           f"(N, {', '.join(map(str, problem.shape))})")
    elif problem.exact:
        x = problem.exact_samples(args.n, args.seed)
    elif problem.heldout is not None and problem.name == "digits":
        raise CLIError("for the digits model give --data (model-space samples), e.g. from `diffsolve sample`")
    else:
        raise CLIError(f"{problem.name} has no exact data; give --data FILE (.npy or .pt)")
    if not args.quiet:
        print(f"log-likelihood of {count(x.shape[0], 'point')} under {problem.name} ({args.divergence} "
              f"divergence) ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    res = log_likelihood(den, x.to(device), divergence=args.divergence, probes=args.probes,
                         fresh_probes=args.fresh_probes, rtol=args.rtol, atol=args.atol, dtype=dtype,
                         seeds=list(range(args.seed, args.seed + x.shape[0])))
    lp = res.log_prob.detach().cpu().to(torch.float64)
    out = {"problem": problem.name, "schedule": problem.schedule_name, "n": int(x.shape[0]),
           "mean_log_prob": float(lp.mean()),
           "stderr_mean": float(lp.std() / math.sqrt(len(lp))) if len(lp) > 1 else None,
           "bits_per_dim": float(res.bits_per_dim.mean()), "mean_nfe": float(res.nfe.to(torch.float64).mean()),
           "wall_time_s": time.perf_counter() - t0}
    if problem.exact:
        sch = den.schedule
        t_end = float(sch.t_min)
        exact = problem.mixture.log_prob(res.x.detach().cpu().to(torch.float64), t_end, sch)
        out["exact_mean_log_prob"] = float(exact.mean())
        out["max_abs_error"] = float((lp - exact).abs().max())
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:>20}: {v:.6g}" if isinstance(v, float) else f"{k:>20}: {v}")
    return 0


def _listing() -> dict:
    from .bench.problems import list_problems, zoo_models
    from .grids import GRIDS
    from .schedules import SCHEDULES
    from .solvers import list_solvers

    return {
        "solvers": list_solvers(),
        "schedules": [{"name": k, "summary": (v.__doc__ or "").strip().splitlines()[0] if v.__doc__ else ""}
                      for k, v in SCHEDULES.items()],
        "problems": list_problems(),
        "models": [{"name": k, "description": v} for k, v in zoo_models().items()],
        "grids": [{"name": g} for g in GRIDS],
    }


def cmd_list(args) -> int:
    kinds = ("solvers", "schedules", "problems", "models", "grids")
    if args.what != "all" and args.what not in kinds:
        raise CLIError(_choices_msg("list", args.what, kinds + ("all",)).replace("lists", "choices"))
    data = _listing()
    if args.what != "all":
        data = {args.what: data[args.what]}
    if args.json:
        print(json.dumps(data if args.what == "all" else data[args.what], indent=None))
        return 0
    for kind, items in data.items():
        print(f"{kind}:")
        if not items:
            print("  (none)")
        for it in items:
            if kind == "solvers":
                cost = "adaptive steps" if it.get("adaptive") else f"{it['nfe_per_step']} NFE/step"
                extra = f"order {it['order']:g}, {'SDE' if it['stochastic'] else 'ODE'}, {cost}"
                print(f"  {it['name']:<14} {extra:<32} {it['summary']}")
                if it["options"]:
                    print(f"  {'':<14} options: {it['options']}")
            elif kind == "problems":
                shape = "x".join(map(str, it["shape"])) if it["shape"] else "-"
                print(f"  {it['name']:<14} {it['kind']:<9} {shape:<9} {it['description']}")
            else:
                print(f"  {it['name']:<14} {it.get('summary') or it.get('description') or ''}")
    return 0


def cmd_tune(args) -> int:
    import torch

    from .tune import tune_solver, tune_steps

    device, dtype = _check_device_dtype(args)
    name = _check_solver(args.solver)
    if name == "learned" and args.solver != name:
        raise CLIError("--solver learned takes no options: tune fits its weights")
    if args.init != "auto":
        _check_grid(args.init)
        if args.init.endswith(".json") and name != "learned":
            raise CLIError(f"--init {args.init}: a tuned-grid file is a starting grid only for --solver learned "
                           f"(which keeps it); for {args.solver!r} give a grid kind (e.g. log_snr or karras; "
                           f"`diffsolve list grids`) or auto")
    out = Path(args.out)
    _check_writable(out, (".json",))
    if args.fresh < 0:
        raise CLIError(f"--fresh must be >= 0, got {args.fresh}")
    problem = _problem_from_args(args, device)
    den = problem.denoiser()
    if not args.quiet:
        print(f"tuning {args.solver} at NFE {args.nfe} on {problem.name}: {count(args.pilot, 'pilot seed')}, "
              f"{f'{args.fresh} fresh' if args.fresh else 'no fresh check'}, up to {count(args.max_evals, 'solve')} "
              f"...", file=sys.stderr, flush=True)
    denoise_final = {"yes": True, "no": False, "auto": "auto"}[args.denoise_final]
    if name == "learned":
        if denoise_final == "auto":
            raise CLIError("--solver learned needs --denoise-final yes or no")
        res = tune_solver(den, args.nfe, grid=args.init, pilot=args.pilot, fresh=args.fresh, iterations=args.iterations,
                          max_evals=args.max_evals, denoise_final=denoise_final, model=problem.name,
                          device=device, verbose=not args.quiet)
    else:
        with torch.no_grad():
            res = tune_steps(den, args.solver, args.nfe, pilot=args.pilot, fresh=args.fresh, init=args.init,
                             max_evals=args.max_evals, denoise_final=denoise_final, model=problem.name,
                             device=device, verbose=not args.quiet)
    res.save(out)
    print(f"{args.solver} NFE {res.nfe}: pilot RMS error {res.init_error:.4g} ({res.init_grid}) -> {res.pilot_error:.4g}; "
          f"{res.fresh_summary()}; tuning cost {count(res.tuning_nfe, 'network call')}, "
          f"{res.tuning_seconds:.1f} s -> {out}")
    return 0


COMMANDS = {"bench": cmd_bench, "sample": cmd_sample, "likelihood": cmd_likelihood, "tune": cmd_tune,
            "list": cmd_list}


def main(argv=None) -> int:
    """Entry point of the ``diffsolve`` console script (and ``python -m diffsolve``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from . import __version__

        print(f"diffsolve {__version__}")
        return 0
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return COMMANDS[args.command](args)
    except (ValueError, TypeError, ImportError, FloatingPointError) as e:
        # CLIError, the library's validation errors, a missing optional package, a network returning NaN
        if os.environ.get("DIFFSOLVE_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"error: {e.strerror or e}{where}", file=sys.stderr)
        return EXIT_USAGE
    except (RuntimeError, SyntaxError) as e:  # raised by the user's network or factory file, e.g. out of memory
        if os.environ.get("DIFFSOLVE_DEBUG"):
            raise
        print(f"error: {type(e).__name__}: {e}\n(set DIFFSOLVE_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted (rows finished so far are in the results file; rerun with --resume)",
              file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
