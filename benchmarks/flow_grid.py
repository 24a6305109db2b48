"""Which σ grid should DiffsolveScheduler use for flow-matching configs (SD3, FLUX)? Checked on an
exact problem the choice was not made on.

A 16-D Gaussian mixture (4 modes, seed 3) with the flow schedule, its exact velocity as the network,
run through ``DiffsolveScheduler`` from a FlowMatchEulerDiscreteScheduler(shift=3) config on two
grids: ``"flow_dpm"`` (the default: diffusers' flow DPM-Solver/UniPC σ, starting below σ = 1) and
``"diffusers"`` (FlowMatchEuler's σ from σ = 1). Error: RMS per coordinate against a tight ODE
solve (rtol 1e-10) over the same span followed by the exact x̂0, 256 start points.

    python benchmarks/flow_grid.py        # ~1 min
"""
from __future__ import annotations

import warnings

import torch

warnings.filterwarnings("ignore")

import diffusers  # noqa: E402
from diffusers.utils import logging as dlogging  # noqa: E402

from diffsolve import GaussianMixture  # noqa: E402
from diffsolve.adapters import DiffsolveScheduler  # noqa: E402
from diffsolve.reference import ode_reference  # noqa: E402

dlogging.set_verbosity_error()


def error(gm, spec: str, grid: str, nfe: int) -> float:
    s = DiffsolveScheduler.from_config(diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0).config, solver=spec,
                                       grid=grid)
    s.set_timesteps(nfe)
    den = gm.denoiser(s.schedule, "velocity")
    x = torch.randn(256, gm.d, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    t0, t1 = float(s.plan.t[0]), float(s.plan.t[-1])
    ref = den.x0(ode_reference(den, x, t0, t1, rtol=1e-10, atol=1e-10), t1)
    y = x.clone()
    for label, t in zip(s.timesteps, s.plan.times):
        y = s.step(den.velocity(y, t), label, y).prev_sample
    return float((y - ref).pow(2).mean().sqrt())


def main():
    gm = GaussianMixture.random(d=16, n_modes=4, seed=3)
    budgets = (5, 10, 20)
    print(f"{'grid':10s} {'solver':9s} " + " ".join(f"NFE {n:>3d}" for n in budgets))
    for grid in ("flow_dpm", "diffusers"):
        for spec in ("dpmpp_2m", "unipc", "dpmpp_3m"):
            print(f"{grid:10s} {spec:9s} " + " ".join(f"{error(gm, spec, grid, n):7.2e}" for n in budgets), flush=True)


if __name__ == "__main__":
    main()
