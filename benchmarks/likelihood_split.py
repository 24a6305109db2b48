"""The likelihood's divergence integral: the whole divergence of the drift through the solver, or
the network term alone with f_t d in closed form? Error per dimension against the exact log p and
NFE per sample, exact divergence, exact prior, shared steps, rtol = atol.

    python benchmarks/likelihood_split.py              # ring and a 16-D mixture, four schedules (~20 s)
    python benchmarks/likelihood_split.py --schedules subvp,ve,edm

Since 2026-12-06 ``diffsolve.log_likelihood`` integrates the whole divergence
dΔ/du = (f_t d − σ_t λ'_t ∇·ε̂) dt/du ("whole"). The former form ("split") integrated only
−σ_t λ'_t ∇·ε̂ and added d (log α_T − log α_{t_end}) afterwards; this script rebuilds it by
replacing :meth:`ProbabilityFlowODE._divergence_rate` for the duration of a call. Where α_t → 0
(cosine and flow at t → 1) the two halves of the divergence each grow like 1/α_t and cancel only
in their sum, which the split form leaves to the closed form; in raw t the solver then chases a
steep integrand.
"""
from __future__ import annotations

import argparse
import contextlib

import torch

import diffsolve as ds
from diffsolve.ode import ProbabilityFlowODE

F64 = torch.float64
TOLS = (1e-3, 1e-4, 1e-5)
PROBLEMS = {"ring": (lambda: ds.GaussianMixture.ring(), 32),
            "mix16": (lambda: ds.GaussianMixture.random(d=16, n_modes=5, seed=11), 8)}


@contextlib.contextmanager
def split_form():
    """The former Δ: the network term only (its closed-form remainder is added by ``run``)."""
    whole = ProbabilityFlowODE._divergence_rate

    def network_term(self, t, div, d):
        return whole(self, t, div, d) - whole(self, t, torch.zeros_like(div), d)

    ProbabilityFlowODE._divergence_rate = network_term
    try:
        yield
    finally:
        ProbabilityFlowODE._divergence_rate = whole


def run(gm, sch, x0, variable, form, tol):
    den = gm.denoiser(sch, "eps")
    exact = gm.log_prob(x0, sch.t_min, sch)
    kw = dict(divergence="exact", rtol=tol, atol=tol, time_variable=variable, per_sample=False,
              prior=lambda z: gm.log_prob(z, sch.t_max, sch))
    with split_form() if form == "split" else contextlib.nullcontext():
        r = ds.log_likelihood(den, x0, **kw)
    lp = r.log_prob
    if form == "split":
        ends = torch.tensor([sch.t_max, sch.t_min], dtype=F64)
        la = sch.log_alpha(ends)
        lp = lp + gm.d * float(la[0] - la[1])
    return float((lp - exact).abs().mean()) / gm.d, float(r.nfe.double().mean())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--schedules", default="flow,cosine,vp,edm")
    ap.add_argument("--problems", default="ring,mix16")
    args = ap.parse_args()
    torch.set_num_threads(2)
    head = " | ".join(f"rtol {t:.0e}: err/dim, NFE" for t in TOLS)
    print(f"| problem | schedule | time variable | Δ | {head} |")
    print("|---|---|---|---|" + "---|" * len(TOLS))
    for pname in args.problems.split(","):
        make, batch = PROBLEMS[pname]
        gm = make()
        x0 = gm.sample(batch, generator=torch.Generator().manual_seed(5))
        for sname in args.schedules.split(","):
            sch = ds.make_schedule(sname)
            for variable in ("t", "log_snr"):
                for form in ("whole", "split"):
                    cells = [run(gm, sch, x0, variable, form, tol) for tol in TOLS]
                    print(f"| {pname} | {sname} | {variable} | {form} | "
                          + " | ".join(f"{e:.1e}, {n:.0f}" for e, n in cells) + " |", flush=True)


if __name__ == "__main__":
    main()
