"""Fresh Hutchinson probes drawn without replacement from a Walsh frame (docs/math.md (20.10)) against
independent draws, the rule before 2026-12-07.

The bare call ``log_likelihood(den, x, prior=exact p_T, seeds=range(n))`` on exact mixtures; both arms
take the same steps (the probes never steer them; checked below), so they are compared at equal
evaluations: error = mean |log p − exact log p_{t_min}(x)| per dimension, and the ratio Walsh / before.
"before" is the library with its former probe stream (independent Rademacher draws at every
evaluation) and dopri5's former shared stages ({4}: the stage of weight 0 drew a probe of its own).

The rule, written before the judging set ran (2026-12-07): the Walsh probes replace independent draws if
the geometric mean of the ratios over all cells is at most 0.90 and no cell is above 1.10. The judging
set was made for this comparison: six mixtures ``GaussianMixture.random(d, modes, seed)`` with seeds
8101–8106 in 2 to 96 dimensions and a 2×8×8 image Gaussian (seed 8107), under VP, cosine, EDM and flow
schedules. The problems the change was first tried on (``likelihood_vs_peers.py --defaults``) are not
in it.

    python benchmarks/likelihood_probes.py            # the judging set (~30 s)
    python benchmarks/likelihood_probes.py --problems 96-D --points 512   # its 96-D cells, 512 points
    python benchmarks/likelihood_probes.py --trained  # the bundled trained models (not in the rule)
"""
from __future__ import annotations

import argparse
import math

import torch

import diffsolve as ds
import diffsolve.likelihood as L
from diffsolve.tableaus import ButcherTableau

FAMILIES = {"vp": "eps", "cosine": "eps", "edm": "x0", "flow": "velocity"}
PROBLEMS = {  # name: (make, points)
    "mix 2-D (4 modes, seed 8101)": (lambda: ds.GaussianMixture.random(d=2, n_modes=4, seed=8101), 256),
    "mix 6-D (5 modes, seed 8102)": (lambda: ds.GaussianMixture.random(d=6, n_modes=5, seed=8102), 256),
    "mix 12-D (6 modes, seed 8103)": (lambda: ds.GaussianMixture.random(d=12, n_modes=6, seed=8103), 128),
    "mix 24-D (8 modes, seed 8104)": (lambda: ds.GaussianMixture.random(d=24, n_modes=8, seed=8104), 128),
    "mix 48-D (8 modes, seed 8105)": (lambda: ds.GaussianMixture.random(d=48, n_modes=8, seed=8105), 64),
    "mix 96-D (10 modes, seed 8106)": (lambda: ds.GaussianMixture.random(d=96, n_modes=10, seed=8106), 64),
    "img 2x8x8 (seed 8107)": (lambda: ds.GaussianMixture.image_gaussian((2, 8, 8), seed=8107), 32),
}


class before:
    """The probe stream before the Walsh frame: independent draws, dopri5's stage 1 drawing its own."""

    def __enter__(self):
        self.saved = L._probes, ButcherTableau.shared_probe_stages
        shared = self.saved[1]

        def probes(src, k, probe, fresh, dtype):
            if not (fresh and probe == "rademacher"):
                return self.saved[0](src, k, probe, fresh, dtype)
            return lambda rows: torch.sign(torch.stack([src.randn(rows.tolist()) for _ in range(k)])).to(dtype)

        L._probes = probes
        ButcherTableau.shared_probe_stages = lambda tab, span=0.25: (
            frozenset({4}) if tab.name == "dopri5" else shared(tab, span))
        return self

    def __exit__(self, *exc):
        L._probes, ButcherTableau.shared_probe_stages = self.saved


def trained_check(n: int = 64):
    """The bundled trained networks: the digits model (8×8, cosine schedule, dequantized as in
    examples/digits_bits_per_dim.py) and the two-moons model (2-D, v-prediction, cosine schedule; points
    from a seed its training data did not use). Error against the exact divergence integrated at the same
    steps (the steps follow the state only, so the exact trace at those steps is what each Hutchinson
    estimate is unbiased for)."""
    from diffsolve import zoo
    from diffsolve.zoo.data import DIGITS_LEVELS, digits, two_moons

    cases = (("digits", digits("test")[0][:n], dict(dequantize=dict(levels=DIGITS_LEVELS, range=(-1.0, 1.0)))),
             ("two_moons", two_moons(n, seed=8108), {}))
    for name, x, extra in cases:
        den = zoo.load(name)
        kw = dict(extra, seeds=range(n))
        with before():
            old = ds.log_likelihood(den, x, **kw)
        new = ds.log_likelihood(den, x, **kw)
        saved = L._probes
        L._probes = lambda src, k, probe, fresh, dtype: None  # the exact divergence at the same steps
        try:
            exact = ds.log_likelihood(den, x, **kw)
        finally:
            L._probes = saved
        assert torch.equal(old.nfe, exact.nfe) and torch.equal(new.nfe, exact.nfe)
        d = x[0].numel()
        e0, e1 = (float((r.log_prob - exact.log_prob).abs().mean()) / d for r in (old, new))
        print(f"{name} model, {n} points, {float(exact.nfe.double().mean()):.0f} evaluations: |Hutchinson − exact at "
              f"the same steps| per dimension {e0:.3g} before, {e1:.3g} Walsh (ratio {e1 / e0:.2f})", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--problems", default="", help="only the problems whose name contains this")
    ap.add_argument("--points", type=int, default=None, help="points per problem instead of the set's")
    ap.add_argument("--trained", action="store_true",
                    help="only the bundled trained models, digits and two moons (not in the rule)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.trained:
        return trained_check(args.points or 64)
    print("| family | problem | points | NFE | before err/dim | Walsh err/dim | ratio |")
    print("|---|---|---:|---:|---:|---:|---:|")
    logs, worst = [], 0.0
    for fam in args.families.split(","):
        sch = ds.make_schedule(fam)
        for pname, (make, n) in PROBLEMS.items():
            if args.problems not in pname:
                continue
            n = args.points or n
            gm = make()
            x = gm.sample(n, generator=torch.Generator().manual_seed(8100))
            den, exact = gm.denoiser(sch, FAMILIES[fam]), gm.log_prob(x, sch.t_min, sch)
            prior = lambda z: gm.log_prob(z, sch.t_max, sch)  # noqa: E731
            with before():
                old = ds.log_likelihood(den, x, prior=prior, seeds=range(n))
            new = ds.log_likelihood(den, x, prior=prior, seeds=range(n))
            if not torch.equal(old.nfe, new.nfe):
                raise RuntimeError(f"{fam} {pname}: the probes changed the steps")
            d = x[0].numel()
            e0, e1 = (float((r.log_prob - exact).abs().mean()) / d for r in (old, new))
            logs.append(math.log(e1 / e0))
            worst = max(worst, e1 / e0)
            print(f"| {fam} | {pname} | {n} | {float(new.nfe.double().mean()):.0f} | {e0:.3g} | {e1:.3g} | "
                  f"{e1 / e0:.2f} |", flush=True)
    gmean = math.exp(sum(logs) / len(logs))
    verdict = "adopt" if gmean <= 0.90 and worst <= 1.10 else "do not adopt"
    print(f"\nGeometric mean ratio {gmean:.2f}, worst cell {worst:.2f}: {verdict} "
          f"(rule: geometric mean ≤ 0.90 and no cell > 1.10)")


if __name__ == "__main__":
    main()
