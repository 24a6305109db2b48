"""Measured convergence orders of the DPM-Solver++ and UniPC solvers (docs/math.md §4).

Question: does each solver reach its declared order on the probability-flow ODE, and from how many
steps on? Error = RMS distance to the exact ODE solution from the same x_T (dopri5 in λ at
rtol = atol = 1e-11, analytic mixture denoiser, no final denoise), λ-uniform grids, VP schedule.
The order is the least-squares slope of log error vs log steps over the given step counts; the
local slopes between consecutive counts show whether the range is asymptotic.

SDE variants: exact variance error of the output law on 1-D Gaussian data (the sampler is affine
there; see tests/test_dpmpp_unipc.py::gaussian_variance_error), slope vs steps = measured weak order
on that problem.

    python benchmarks/solvers_order.py [--problem ring|random] [--steps 20,40,80,160,320] [--solvers deis]
        [--t-start 0.5]    # from exact samples of p_t at a moderate noise level: the multistep
                           # warm-up's first-order first step then caps order ≥ 3 at 2 (dpmpp module)
                           # unless corrected_start=True (rows with that option are in the table)
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import diffsolve as ds  # noqa: E402
from diffsolve.grids import make_grid  # noqa: E402
from diffsolve.noise import ImpulseNoise  # noqa: E402
from diffsolve.processes import NoiseLevel  # noqa: E402
from diffsolve.reference import ode_reference  # noqa: E402
from diffsolve.solvers import get_solver  # noqa: E402
from diffsolve.loop import integrate  # noqa: E402

F64 = torch.float64

ODE_SOLVERS = [
    ("ddim", {}),
    ("dpmpp_2m", {}),
    ("dpmpp_2m", {"solver_type": "taylor"}),
    ("dpmpp_3m", {}),
    ("dpmpp_3m", {"corrected_start": True}),
    ("dpmpp_3m", {"third_order": "dpm_solver"}),
    ("dpmpp_2s", {}),
    ("dpmpp_2s", {"solver_type": "taylor"}),
    ("unipc", {"order": 1}),
    ("unipc", {"order": 2}),
    ("unipc", {"order": 2, "variant": "bh1"}),
    ("unipc", {"order": 3}),
    ("unipc", {"order": 3, "corrector": False}),
    ("deis", {"order": 2}),
    ("deis", {"order": 3}),
    ("deis", {"order": 4}),
    ("deis", {"order": 3, "corrected_start": True}),
    ("deis", {"order": 4, "corrected_start": True}),
    ("deis", {"order": 3, "variable": "rho"}),
    ("deis", {"order": 4, "variable": "rho"}),
]
SDE_SOLVERS = [("ddim", {}), ("dpmpp_2m_sde", {}), ("dpmpp_2m_sde", {"solver_type": "taylor"}), ("dpmpp_3m_sde", {})]


def slope(ns, es):
    ln, le = [math.log(n) for n in ns], [math.log(e) for e in es]
    mn, me = sum(ln) / len(ln), sum(le) / len(le)
    return -sum((a - mn) * (b - me) for a, b in zip(ln, le)) / sum((a - mn) ** 2 for a in ln)


def problem(kind):
    if kind == "ring":
        return ds.GaussianMixture.ring(n_modes=4, radius=1.0, std=0.3)
    return ds.GaussianMixture.random(d=8, n_modes=4, seed=0, spread=0.5)


def ode_table(kind, steps, only=None, t_start=None):
    gm = problem(kind)
    sch = ds.VPSchedule()
    den = gm.denoiser(sch, "eps")
    g = torch.Generator().manual_seed(1)
    if t_start is None:  # x_T ~ N(0, σ_T² I)
        t_start = sch.t_max
        xT = torch.randn(16, gm.d, dtype=F64, generator=g) * float(sch.sigma(sch.t_max))
    else:  # exact samples of p_t at a moderate noise level (an img2img-like start)
        a, s = (float(c) for c in sch.alpha_sigma(torch.tensor(t_start, dtype=F64)))
        xT = a * gm.sample(16, generator=g).to(F64) + s * torch.randn(16, gm.d, dtype=F64, generator=g)
    ref = ode_reference(den, xT, t_start, sch.t_min, rtol=1e-11, atol=1e-11)
    print(f"ODE: {kind} mixture (d={gm.d}), VP, λ-uniform grid from t = {t_start:g}, steps {steps}")
    print(f"{'solver':44s} {'declared':>8s} {'measured':>8s}   local slopes            err@{steps[0]}  err@{steps[-1]}")
    for name, opts in ODE_SOLVERS:
        if only and name not in only:
            continue
        s = get_solver(name, **opts)
        es = []
        for n in steps:
            x = integrate(s, den, xT, make_grid(sch, n, "log_snr", t_start=t_start), level=NoiseLevel(sch, 0.0)).x
            es.append(float((x - ref).pow(2).mean().sqrt()))
        local = [-math.log(es[k + 1] / es[k]) / math.log(steps[k + 1] / steps[k]) for k in range(len(steps) - 1)]
        label = name + ("(" + ", ".join(f"{k}={v}" for k, v in opts.items()) + ")" if opts else "")
        print(f"{label:44s} {s.declared_order:8.1f} {slope(steps, es):8.2f}   {' '.join(f'{v:.2f}' for v in local):22s}"
              f"  {es[0]:.2e}  {es[-1]:.2e}")


def variance_error(name, opts, steps, eta):
    mu, v = 0.7, 0.04
    gm = ds.GaussianMixture(torch.ones(1), torch.tensor([[mu]]), torch.tensor([[v]]))
    sch = ds.VPSchedule()
    den = gm.denoiser(sch, "eps")
    x = torch.zeros(steps + 2, 1, dtype=F64)
    x[1] = 1.0
    out = integrate(get_solver(name, **opts), den, x, make_grid(sch, steps, "log_snr"),
                       level=NoiseLevel(sch, eta), source=ImpulseNoise(steps)).x
    c = out[0, 0]
    A, B = out[1, 0] - c, out[2:, 0] - c
    aT, sT = float(sch.alpha(sch.t_max)), float(sch.sigma(sch.t_max))
    a0, s0 = float(sch.alpha(sch.t_min)), float(sch.sigma(sch.t_min))
    return abs(float((aT * aT * v + sT * sT) * A**2 + (B**2).sum()) - (a0 * a0 * v + s0 * s0))


def sde_table(steps):
    print(f"\nSDE: exact variance error of the output law, 1-D Gaussian data, VP, steps {steps}")
    for eta in (1.0, 0.5):
        for name, opts in SDE_SOLVERS:
            es = [variance_error(name, opts, n, eta) for n in steps]
            label = f"{name}{opts if opts else ''} eta={eta}"
            print(f"{label:52s} declared(weak) {get_solver(name, **opts).declared_order:.1f}  measured {slope(steps, es):.2f}"
                  f"   err {' '.join(f'{e:.1e}' for e in es)}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--problem", choices=["ring", "random"], default="ring")
    p.add_argument("--steps", default="20,40,80,160,320")
    p.add_argument("--solvers", default=None, help="comma-separated names: only these ODE solvers, no SDE table")
    p.add_argument("--t-start", type=float, default=None,
                   help="start at this time from exact samples of p_t (default: t_max from N(0, σ_T² I))")
    a = p.parse_args()
    steps = [int(s) for s in a.steps.split(",")]
    t0 = time.time()
    ode_table(a.problem, steps, a.solvers.split(",") if a.solvers else None, a.t_start)
    if not a.solvers:
        sde_table([s for s in steps if s <= 160])
    print(f"\n({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
