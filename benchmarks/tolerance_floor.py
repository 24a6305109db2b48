"""Where a tighter tolerance stops paying: the adaptive dopri5 on the trained digits model against a tight
float64 solve, in a float32 state (the float32 network) and with the network in float16, by rtol. The evidence
for the warning of ``diffsolve.ode._check_precision`` (rtol below 1 % of the arithmetic's epsilon).

    python benchmarks/tolerance_floor.py          # ~1 min on two cores
"""
from __future__ import annotations

import time
import warnings

import torch

import diffsolve as ds
from diffsolve.reference import ode_reference


def main():
    torch.set_num_threads(2)
    warnings.simplefilter("ignore")  # the warning under study
    m = ds.zoo.load("digits")
    half = ds.zoo.load("digits")
    half.net.half()
    half = ds.Denoiser(half.net, half.schedule, half.prediction, time_label=half._label_spec,
                       net_dtype=torch.float16, shape=half.shape)
    for name, den, n, tols in (("float32 network, float32 state", m, 64, (1e-5, 1e-6, 1e-7, 3e-8, 1e-8)),
                               ("float16 network", half, 16, (1e-2, 1e-3, 1e-4, 1e-5, 3e-6))):
        start = ds.sample(m, seeds=range(n), nfe=10)
        ref = ode_reference(m, start.x_init.double(), float(start.t[0]), m.schedule.t_min, rtol=1e-8, atol=1e-8,
                            denoise_final=True)
        print(f"\n{name}, {n} start points: rtol, network evaluations, RMS error against the float32 network's "
              f"float64 solve, seconds")
        for tol in tols:
            t0 = time.perf_counter()
            r = ds.sample(den, start.x_init, solver=f"dopri5:rtol={tol}:atol={tol}")
            err = float((r.x.double() - ref).pow(2).mean().sqrt())
            print(f"  {tol:8.0e} {r.nfe:6d} {err:10.3g} {time.perf_counter() - t0:6.1f}", flush=True)


if __name__ == "__main__":
    main()
