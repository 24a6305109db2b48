"""The likelihood's time variable: the clocks ``vp_time`` and ``flow_time`` (the time of a reference VP
or rectified-flow schedule at the same log-SNR, the state carried in its coordinates and Δ as the
divergence of that state's drift; docs/math.md (9.7)) against the rule before them (``t`` on every
schedule but a DDPM table, where ``log_snr``), on seven schedule families.

Exact divergence, exact prior, the other settings ``log_likelihood``'s defaults (per-sample steps,
max norm); rtol = atol over nine tolerances from 1e-2 to 1e-6; mean |log p − exact| per dimension
and mean NFE per sample. Each variable's NFE at matched error is read off its lower envelope
(log-log interpolation, as in peers_more.py) at 1e-3, 1e-4 and 1e-5 nats/dim.

How it was decided (2026-12-07). The reading set (the 2-D ring and the 64-D mixture of the peers'
comparisons) chose between the two clocks: ``flow_time`` needed fewer evaluations than ``vp_time`` on
every family and no more than the rule before on any (geometric means 0.63–1.01). The rule for the
judging set, written before it ran (three problems made for it: an 8-D 4-mode and a 32-D 6-mode
mixture, a 2×8×8 image Gaussian): ``flow_time`` becomes the likelihood's ``"auto"`` on every schedule
if its geometric mean ratio NFE(flow_time) / NFE(rule before) over all families and problems is below
0.95, no family's above 1.05 and no problem's above 1.15; otherwise on each family whose geometric
mean is below 0.95 with no problem above 1.15.

    python benchmarks/likelihood_vp_time.py --set read                          # both clocks (~12 min)
    python benchmarks/likelihood_vp_time.py --set judge --candidates flow_time  # (~6 min)
    python benchmarks/likelihood_vp_time.py --tolerance     # the bare call's tolerance, 3e-5 (~1 min)
"""
from __future__ import annotations

import argparse
import math
import os
import sys

import torch

import diffsolve as ds

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peers_more import matched_nfe_cells  # noqa: E402

F64 = torch.float64
FAMILIES = {"vp": "eps", "ddpm": "eps", "cosine": "eps", "subvp": "eps", "ve": "eps", "edm": "x0", "flow": "velocity"}
TOLS = (1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6)
LEVELS = (1e-3, 1e-4, 1e-5)
SETS = {
    "read": {"ring 2-D": (lambda: ds.GaussianMixture.ring(), 128),
             "mix64": (lambda: ds.GaussianMixture.random(d=64, n_modes=8, seed=0), 16)},
    "judge": {"mix8 (4 modes, seed 505)": (lambda: ds.GaussianMixture.random(d=8, n_modes=4, seed=505), 64),
              "mix32 (6 modes, seed 707)": (lambda: ds.GaussianMixture.random(d=32, n_modes=6, seed=707), 24),
              "img 2x8x8 (exponent 2.5, seed 9)": (lambda: ds.GaussianMixture.image_gaussian((2, 8, 8), exponent=2.5,
                                                                                             seed=9), 8)},
}


def before(schedule) -> str:
    """The likelihood's time variable before vp_time: t, but log_snr on a DDPM table."""
    return "log_snr" if isinstance(schedule, ds.DDPMSchedule) else "t"


def curve(gm, sch, prediction, x, variable):
    den = gm.denoiser(sch, prediction)
    exact = gm.log_prob(x, sch.t_min, sch)
    pts = []
    for tol in TOLS:
        r = ds.log_likelihood(den, x, divergence="exact", rtol=tol, atol=tol, time_variable=variable,
                              prior=lambda z: gm.log_prob(z, sch.t_max, sch))
        pts.append((float(r.nfe.double().mean()), float((r.log_prob - exact).abs().mean()) / gm.d))
    return pts


def tolerance_check():
    """The bare call ``log_likelihood(den, x)`` (Hutchinson, fresh probes; flow_time at rtol = atol = 3e-5)
    against the bare call before the clocks (t, λ on DDPM tables, at 1e-4) and against flow_time at 1e-4, on
    the judging problems under five families: mean |error| per dimension and NFE per sample, and the
    geometric means of the ratios to the former bare call."""
    fams = ("vp", "ddpm", "cosine", "edm", "flow")
    print("\n## The bare call before and after (Hutchinson, one fresh probe): err/dim / NFE\n")
    print("| family | problem | before: t (λ on DDPM) at 1e-4 | flow_time at 1e-4 | now: flow_time at 3e-5 | "
          "error ratio | NFE ratio |")
    print("|---|---|---:|---:|---:|---:|---:|")
    logs_e, logs_n = [], []
    for fam in fams:
        sch = ds.make_schedule(fam)
        for pname, (make, n) in SETS["judge"].items():
            gm = make()
            x = gm.sample(n, generator=torch.Generator().manual_seed(7))
            den, exact = gm.denoiser(sch, FAMILIES[fam]), gm.log_prob(x, sch.t_min, sch)
            runs = []
            for kw in (dict(time_variable=before(sch), rtol=1e-4, atol=1e-4), dict(rtol=1e-4, atol=1e-4), {}):
                r = ds.log_likelihood(den, x, prior=lambda z: gm.log_prob(z, sch.t_max, sch), seeds=range(n), **kw)
                runs.append((float((r.log_prob - exact).abs().mean()) / gm.d, float(r.nfe.double().mean())))
            (e0, n0), (e1, n1) = runs[0], runs[-1]
            logs_e.append(math.log(e1 / e0))
            logs_n.append(math.log(n1 / n0))
            print(f"| {fam} | {pname} | " + " | ".join(f"{e:.3g} / {m:.0f}" for e, m in runs)
                  + f" | {e1 / e0:.2f} | {n1 / n0:.2f} |", flush=True)
    print(f"\nGeometric means, now / before: error {math.exp(sum(logs_e) / len(logs_e)):.2f}, "
          f"NFE {math.exp(sum(logs_n) / len(logs_n)):.2f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--set", default="read,judge")
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--candidates", default="vp_time,flow_time")
    ap.add_argument("--tolerance", action="store_true", help="only the bare call before and after (~1 min)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.tolerance:
        return tolerance_check()
    cands = args.candidates.split(",")
    for set_name in args.set.split(","):
        print(f"\n## {set_name} set: NFE at matched error (exact divergence): the rule before, then each candidate "
              f"and its ratio to the rule before\n")
        print("| family | problem | candidate | " + " | ".join(f"at {e:.0e}" for e in LEVELS) + " | geometric mean |")
        print("|---|---|---|" + "---:|" * (len(LEVELS) + 1))
        for fam in args.families.split(","):
            sch = ds.make_schedule(fam)
            logs = {c: [] for c in cands}
            for pname, (make, n) in SETS[set_name].items():
                gm = make()
                x = gm.sample(n, generator=torch.Generator().manual_seed(2026))
                old = curve(gm, sch, FAMILIES[fam], x, before(sch))
                for cand in cands:
                    new = curve(gm, sch, FAMILIES[fam], x, cand)
                    cells, mine = matched_nfe_cells(old, new, LEVELS)
                    logs[cand] += mine
                    g = f"{math.exp(sum(mine) / len(mine)):.2f}" if mine else "–"
                    print(f"| {fam} | {pname} | {cand} | " + " | ".join(cells) + f" | {g} |", flush=True)
            for cand in cands:
                g = f"{math.exp(sum(logs[cand]) / len(logs[cand])):.2f}" if logs[cand] else "–"
                print(f"| {fam} | **all** | {cand} | | | | **{g}** |", flush=True)


if __name__ == "__main__":
    main()
