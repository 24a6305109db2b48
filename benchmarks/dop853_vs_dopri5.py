r"""DOP853 against dopri5: likelihood error per NFE, and the cost of tight reference solves.

Part 1 (likelihood.md, "An 8th-order pair"): ``log_likelihood`` with the exact divergence and the
exact prior on the 2-D ring (VP, VE; 256 points) and the 64-D random mixture (VP; 64 points), for
each method, shared and per-sample step control, tolerances 1e-3, 1e-4, 1e-5: mean |error| per
dimension against the exact log p and mean NFE per sample.

Part 2: ``ode_reference`` (per-sample control, λ, y = x/α) from 64 noise draws on the ring and the
64-D mixture (VP) at tolerances 1e-6, 1e-8, 1e-10: batched network calls and max error against a
DOP853 solve at 1e-12.

    python benchmarks/dop853_vs_dopri5.py                 # both parts, both methods
    python benchmarks/dop853_vs_dopri5.py --part 2
"""
from __future__ import annotations

import argparse

import torch

import diffsolve as ds
from diffsolve.likelihood import log_likelihood
from diffsolve.reference import ode_reference


def part1(methods):
    cases = [("ring vp", ds.GaussianMixture.ring(), "vp", 256), ("ring ve", ds.GaussianMixture.ring(), "ve", 256),
             ("mix64 vp", ds.GaussianMixture.random(d=64, n_modes=8, seed=0), "vp", 64)]
    for name, gm, sch, n in cases:
        den = gm.denoiser(sch, "eps")
        S = den.schedule
        x = gm.sample(256, generator=torch.Generator().manual_seed(0)).reshape(256, -1)[:n]
        exact = gm.log_prob(x, S.t_min, S)

        def prior(z, gm=gm, S=S):
            return gm.log_prob(z, S.t_max, S)

        for method in methods:
            for per in (False, True):
                for tol in (1e-3, 1e-4, 1e-5):
                    r = log_likelihood(den, x, divergence="exact", method=method, rtol=tol, atol=tol,
                                       per_sample=per, prior=prior)
                    err = float((r.log_prob - exact).abs().mean()) / gm.d
                    print(f"{name:9s} {method:7s} {'per-sample' if per else 'shared':10s} tol {tol:.0e}  "
                          f"err/dim {err:.2e}  NFE {float(r.nfe.float().mean()):.0f}", flush=True)


def part2(methods):
    for name, gm in [("ring", ds.GaussianMixture.ring()), ("mix64", ds.GaussianMixture.random(d=64, n_modes=8, seed=0))]:
        den = gm.denoiser("vp", "eps")
        S = den.schedule
        x = float(S.sigma(S.t_max)) * torch.randn(64, gm.d, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        truth = ode_reference(den, x, S.t_max, S.t_min, rtol=1e-12, atol=1e-12, method="dop853")
        for m in methods:
            for tol in (1e-6, 1e-8, 1e-10):
                den.reset_nfe()
                y = ode_reference(den, x, S.t_max, S.t_min, rtol=tol, atol=tol, method=m)
                print(f"{name:6s} {m:7s} tol {tol:.0e}  calls {den.nfe:5d}  max err {float((y - truth).abs().max()):.1e}",
                      flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", type=int, choices=[1, 2], default=None)
    ap.add_argument("--methods", nargs="+", default=["dopri5", "dop853"])
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.part in (None, 1):
        part1(args.methods)
    if args.part in (None, 2):
        part2(args.methods)


if __name__ == "__main__":
    main()
