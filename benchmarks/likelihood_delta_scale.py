"""The divergence integral in the solver's state: Δ / d, the log-density per dimension (docs/math.md
(20.12)), against Δ itself, the rule before 2026-12-07.

Where Δ enters the error norm (the exact divergence, or probes held fixed), the norm weighs it against
atol + rtol·|Δ| like any coordinate of the state. Δ grows with the dimension while the figure users read,
nats or bits per dimension, does not; carrying Δ / d puts it in the units of that figure. Fresh probes
(the bare call's Hutchinson estimate) keep Δ out of the norm and are not affected.

Exact divergence, exact prior, the other settings ``log_likelihood``'s defaults; rtol = atol over nine
tolerances from 1e-2 to 1e-6; each arm's NFE at matched mean |error| per dimension 1e-3, 1e-4 and 1e-5 is
read off its lower envelope (log-log interpolation, as in peers_more.py).

The rule, written before the judging set ran (2026-12-07): Δ / d replaces Δ if the geometric mean of
NFE(Δ / d) / NFE(Δ) over all problems, families and levels is at most 0.95, no family's geometric mean is
above 1.02 and no problem-and-family cell's is above 1.10. The judging set was made for it: mixtures in
8, 32 and 96 dimensions (seeds 9101–9103) and a 2×8×8 image Gaussian (seed 9104, exponent 2.5), under VP,
cosine, EDM and flow schedules. It was first tried on the 2-D and 64-D problems of ``peers_more.py``
(scratch; they are not in this set).

    python benchmarks/likelihood_delta_scale.py      # the judging set (~5 min)
"""
from __future__ import annotations

import argparse
import math
import os
import sys

import torch

import diffsolve as ds
from diffsolve.ode import ProbabilityFlowODE

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from likelihood_vp_time import LEVELS, curve  # noqa: E402  (the same tolerances, levels and curve)
from peers_more import matched_nfe_cells  # noqa: E402

FAMILIES = {"vp": "eps", "cosine": "eps", "edm": "x0", "flow": "velocity"}
PROBLEMS = {  # name: (make, points)
    "mix 8-D (4 modes, seed 9101)": (lambda: ds.GaussianMixture.random(d=8, n_modes=4, seed=9101), 32),
    "mix 32-D (6 modes, seed 9102)": (lambda: ds.GaussianMixture.random(d=32, n_modes=6, seed=9102), 16),
    "mix 96-D (8 modes, seed 9103)": (lambda: ds.GaussianMixture.random(d=96, n_modes=8, seed=9103), 8),
    "img 2x8x8 (exponent 2.5, seed 9104)": (lambda: ds.GaussianMixture.image_gaussian((2, 8, 8), exponent=2.5,
                                                                                      seed=9104), 8),
}


class before:
    """Δ itself in the state, as before 2026-12-07."""

    def __enter__(self):
        self.saved = ProbabilityFlowODE._divergence_rate, ProbabilityFlowODE._unpack
        rate, unpack = self.saved

        def rate_before(ode, t, div, d):
            return rate(ode, t, div, d) * d

        def unpack_before(ode, y, t, divergence, shape):
            x, delta = unpack(ode, y, t, divergence, shape)
            return x, None if delta is None else delta / math.prod(shape[1:])

        ProbabilityFlowODE._divergence_rate, ProbabilityFlowODE._unpack = rate_before, unpack_before
        return self

    def __exit__(self, *exc):
        ProbabilityFlowODE._divergence_rate, ProbabilityFlowODE._unpack = self.saved


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--problems", default="", help="only the problems whose name contains this")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    print("| family | problem | " + " | ".join(f"NFE at {e:.0e}: Δ / Δ÷d / ratio" for e in LEVELS)
          + " | geometric mean |")
    print("|---|---|" + "---:|" * (len(LEVELS) + 1))
    every, worst_cell, fam_means = [], 0.0, {}
    for fam in args.families.split(","):
        sch, logs = ds.make_schedule(fam), []
        for pname, (make, n) in PROBLEMS.items():
            if args.problems not in pname:
                continue
            gm = make()
            x = gm.sample(n, generator=torch.Generator().manual_seed(9100))
            with before():
                old = curve(gm, sch, FAMILIES[fam], x, "auto")
            new = curve(gm, sch, FAMILIES[fam], x, "auto")
            cells, mine = matched_nfe_cells(old, new, LEVELS)
            g = math.exp(sum(mine) / len(mine)) if mine else float("nan")
            worst_cell = max(worst_cell, g) if mine else worst_cell
            logs += mine
            print(f"| {fam} | {pname} | " + " | ".join(cells) + f" | {g:.2f} |", flush=True)
        fam_means[fam] = math.exp(sum(logs) / len(logs)) if logs else float("nan")
        every += logs
    gmean = math.exp(sum(every) / len(every))
    worst_fam = max(fam_means.values())
    verdict = "adopt" if gmean <= 0.95 and worst_fam <= 1.02 and worst_cell <= 1.10 else "do not adopt"
    print("\nFamilies: " + ", ".join(f"{f} {g:.2f}" for f, g in fam_means.items()))
    print(f"Geometric mean {gmean:.2f}, worst family {worst_fam:.2f}, worst cell {worst_cell:.2f}: {verdict} "
          f"(rule: ≤ 0.95, no family > 1.02, no cell > 1.10)")


if __name__ == "__main__":
    main()
