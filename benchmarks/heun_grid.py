"""heun's default grid: RMS error of ``sample(model, x, solver="heun", nfe=N, grid=kind)`` against the
probability-flow ODE's σ → 0 solution (a reference solve at rtol = atol = 1e-9, then x̂0 at t_min), for the
grid kinds log_snr, karras and time, on the ring and two mixtures under four schedules, 256 start points each.

    python benchmarks/heun_grid.py                       # ddpm, edm, cosine, flow (~3 min on one thread)
    python benchmarks/heun_grid.py --schedules flow
    python benchmarks/heun_grid.py --digits              # the trained digits model, conditional, 64 fresh seeds


This is the measurement behind :meth:`diffsolve.solvers.heun.Heun.default_grid` (EDM's Karras grid in s,
the uniform time grid in t on a flow schedule): each cell prints log_snr / karras / time.
"""
from __future__ import annotations

import argparse

import torch

import diffsolve as ds
from diffsolve.reference import ode_reference

PROBLEMS = {"ring": lambda: ds.GaussianMixture.ring(),
            "mix64": lambda: ds.GaussianMixture.random(d=64, n_modes=8, seed=0),
            "mix16": lambda: ds.GaussianMixture.random(d=16, n_modes=5, seed=11)}
PREDICTION = {"ddpm": "eps", "cosine": "eps", "edm": "x0", "flow": "velocity", "vp": "eps"}
GRIDS = ("log_snr", "karras", "time")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--schedules", nargs="+", default=["ddpm", "edm", "cosine", "flow"])
    ap.add_argument("--nfe", nargs="+", type=int, default=[4, 6, 8, 10, 16, 20])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--digits", action="store_true", help="the trained digits model (a check on a model the rule "
                    "was not read off): classes 0-9 in turn, start points of seed 999")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.digits:
        return digits(args.nfe)
    print(f"RMS error of heun, grid {' / '.join(GRIDS)}")
    for name in args.schedules:
        sch = ds.make_schedule(name)
        for problem, make in PROBLEMS.items():
            gm = make()
            den = gm.denoiser(sch, PREDICTION[name])
            z = torch.randn(args.batch, *gm.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
            x = float(sch.sigma(torch.tensor(sch.t_max, dtype=torch.float64))) * z
            ref = den.x0(ode_reference(den, x, sch.t_max, sch.t_min, rtol=1e-9, atol=1e-9), sch.t_min)
            cells = []
            for nfe in args.nfe:
                errs = [float((ds.sample(den, x, solver="heun", nfe=nfe, grid=g).x - ref).pow(2).mean().sqrt())
                        for g in GRIDS]
                cells.append(f"{nfe}: " + "/".join(f"{e:.3g}" for e in errs))
            print(f"{name} {problem} | " + " | ".join(cells), flush=True)


def digits(budgets):
    den = ds.zoo.load("digits", dtype=torch.float64)
    sch = den.schedule
    g = ds.CFGDenoiser(den, 1.0, torch.arange(64) % 10)  # the conditional model, one class per sample
    x = float(sch.sigma(torch.tensor(sch.t_max, dtype=torch.float64))) * torch.randn(
        64, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(999))
    ref = g.x0(ode_reference(g, x, sch.t_max, sch.t_min, rtol=1e-8, atol=1e-8), sch.t_min)
    print(f"digits (cosine VP), RMS error of heun, grid {' / '.join(GRIDS)}")
    for nfe in budgets:
        errs = [float((ds.sample(g, x, solver="heun", nfe=nfe, grid=k).x - ref).pow(2).mean().sqrt()) for k in GRIDS]
        print(f"{nfe}: " + " / ".join(f"{e:.3g}" for e in errs), flush=True)


if __name__ == "__main__":
    main()
