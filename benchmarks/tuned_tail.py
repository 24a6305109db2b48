"""The tail of a tuned grid on a trained network: per-sample errors over many start points.

Not a test: prints a markdown table (recorded in benchmarks/defaults.md, "The tail of a tuned grid").

    python benchmarks/tuned_tail.py                       # digits, NFE 5, seeds 5000-5511 (~1 min)
    python benchmarks/tuned_tail.py --learned             # also diffsolve tune's default at NFE 5 (~4 min more)
    python benchmarks/tuned_tail.py --candidates          # also the tuned grid on the tuner's own candidates

A tuner judges its grid on a few hundred fresh seeds by the RMS error; a start point whose exact
trajectory leaves the data's range can make one grid fail where others do not, and 256 seeds may
hold none of them. This script runs the bare ``tune_steps(model, nfe=N)`` (and, with
``--learned``, ``tune_solver(model, nfe=N)``), the default call and UniPC on fixed grids from the
same start points (seeds ``--seeds``) and prints the RMS error against the exact probability-flow
solution (``ode_reference`` at rtol 1e-8, then the exact x̂0), and each method's worst samples with
the reference's largest |x|.
"""
from __future__ import annotations

import argparse

import torch

import diffsolve as ds
from diffsolve.noise import parse_seeds
from diffsolve.reference import ode_reference


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="digits")
    ap.add_argument("--nfe", type=int, default=5)
    ap.add_argument("--seeds", default="5000-5511")
    ap.add_argument("--learned", action="store_true", help="also tune_solver (diffsolve tune's default at NFE <= 6)")
    ap.add_argument("--candidates", action="store_true",
                    help="also solve the tuner's screened candidates (seeds 0-1023) with the tuned grid: does a "
                         "check on them see the tail?")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = ds.zoo.load(args.model)
    sch, seeds = model.schedule, parse_seeds(args.seeds)
    shape = tuple(model.shape)
    x = float(sch.sigma(torch.tensor(sch.t_max, dtype=torch.float64))) * ds.NoiseSource(
        len(seeds), shape, seeds=seeds).randn()
    ref = ode_reference(model, x, sch.t_max, sch.t_min, rtol=1e-8, atol=1e-8, denoise_final=True)
    tuned = ds.tune_steps(model, nfe=args.nfe, fresh=0, progress=False)
    runs = {"tune_steps (bare call: 128 pilots from 2048)": dict(steps=tuned)}
    # the bare call until 2026-12-07, which failed on two of these start points at NFE 5
    runs["tune_steps, 64 pilots from 1024"] = dict(steps=ds.tune_steps(model, nfe=args.nfe, fresh=0, progress=False,
                                                                       pilot=64, screen=1024))
    if args.learned:
        runs["tune_solver (bare call)"] = dict(steps=ds.tune_solver(model, nfe=args.nfe, fresh=0, progress=False))
    runs["default call"] = dict(nfe=args.nfe)
    for grid in ("karras", "log_snr"):
        runs[f"unipc, {grid} grid"] = dict(solver="unipc", steps=args.nfe, grid=grid)
    print(f"\n{args.model}, NFE {args.nfe}, {len(seeds)} start points (seeds {args.seeds}); per-sample MSE "
          f"per coordinate; max |x| of the exact solution in brackets\n")
    print("| method | RMS | RMS without the 4 worst | 4 worst samples: seed MSE (max abs x*) |")
    print("|---|---:|---:|---|")
    for name, kw in runs.items():
        with torch.no_grad():
            out = ds.sample(model, x, **kw).x.to(torch.float64)
        mse = ((out - ref) ** 2).flatten(1).mean(1)
        worst = mse.argsort(descending=True)[:4].tolist()
        rest = mse[mse.argsort(descending=True)[4:]]
        cells = ", ".join(f"{seeds[j]}: {float(mse[j]):.3g} ({float(ref[j].abs().max()):.2f})" for j in worst)
        print(f"| {name} | {float(mse.mean().sqrt()):.3g} | {float(rest.mean().sqrt()):.3g} | {cells} |", flush=True)
    if args.candidates:
        candidates_check(model, tuned)


def candidates_check(model, tuned):
    """The tuned grid on the candidate start points its pilots were screened from (seeds 0..M−1): their
    per-sample MSE against the exact solution, the worst ones, and each one's rank by the screening's
    proxy ‖x_N − x_3N‖² (what a check on the candidates could flag without a reference solve)."""
    from diffsolve._tuning import screening_proxy

    sch, M = model.schedule, tuned.screened
    seeds = list(range(M))
    x = float(sch.sigma(torch.tensor(sch.t_max, dtype=torch.float64))) * ds.NoiseSource(
        M, tuple(model.shape), seeds=seeds).randn()
    ref = ode_reference(model, x, sch.t_max, sch.t_min, rtol=1e-8, atol=1e-8, denoise_final=True)
    with torch.no_grad():
        out = ds.sample(model, x, steps=tuned).x.to(torch.float64)
    mse = ((out - ref) ** 2).flatten(1).mean(1)
    rank = screening_proxy(model, x, tuned.nfe).argsort(descending=True).argsort()
    worst = mse.argsort(descending=True)[:6].tolist()
    print(f"\nThe tuned grid on its {M} screened candidates (seeds 0-{M - 1}): RMS {float(mse.mean().sqrt()):.3g}; "
          f"worst: " + ", ".join(f"seed {j}: MSE {float(mse[j]):.3g} (proxy rank {int(rank[j]) + 1})" for j in worst))


if __name__ == "__main__":
    main()
