r"""k-diffusion's samplers on the bundled digits model, on the fresh seeds tune_grids.py judged its
tuned grids on: the "best peer configuration" column that tuning.md lacked for the trained model.

The model is ``diffsolve.zoo.load("digits")`` (unconditional: null class), cosine VP schedule. k-diffusion
runs in VE coordinates, y = x/α and σ̃ = σ/α, so the wrapper is D(y; σ̃) = x̂0(α y, t(σ̃)), the same
network evaluated at the same noise level. Sigmas: Karras (ρ = 7) and exponential between the
schedule's σ̃ at t_min and t_max, so every sampler starts where diffsolve starts (from the same x_T)
and ends at σ = 0. (diffusers' schedulers are not run: their discrete cosine table starts at a
different noise level than the model's continuous schedule, so their start states differ.)

Error: RMS per coordinate against the reference tune_grids.py uses (dopri5 at 1e-8 to t_min, then
the exact x̂0). Each configuration uses the most steps whose counted network calls fit the budget.

    python benchmarks/digits_peers.py                     # NFE 4 5 6 8 10, fresh seeds 192..1215
"""
from __future__ import annotations

import argparse
import json
import os
import warnings

import torch

from diffsolve.bench.problems import get_model
from diffsolve.noise import NoiseSource
from diffsolve.reference import ode_reference

import _peers as P  # shared helpers: a sibling module (run as python benchmarks/<script>.py)

F64 = torch.float64
HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nfe", nargs="+", type=int, default=[4, 5, 6, 8, 10])
    ap.add_argument("--seeds", default="192-1215", help="the fresh seeds of tune_grids.py's digits rows (192 pilots, 1024 fresh)")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "digits_peers.jsonl"))
    ap.add_argument("--tuned", default=os.path.join(HERE, "results", "tune_grids.jsonl"),
                    help="tune_grids.py rows whose digits grids are re-evaluated here with this library version")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    ks = P.k_sampling()
    den = get_model("digits").denoiser()
    sch = den.schedule
    lo, hi = (int(v) for v in args.seeds.split("-"))
    seeds = list(range(lo, hi + 1))
    x = float(sch.sigma(sch.t_max)) * NoiseSource(len(seeds), den.shape, seeds=seeds).randn()
    ref = ode_reference(den, x, sch.t_max, sch.t_min, rtol=1e-8, atol=1e-8, denoise_final=True)

    def s_of_t(t):
        return float(torch.exp(-sch.log_snr(torch.tensor(float(t), dtype=F64))))

    def model(y, sigma, **kw):
        t = float(sch.t_of_log_snr(torch.tensor(-torch.log(sigma.reshape(-1)[0].double()).item(), dtype=F64)))
        t = min(max(t, sch.t_min), sch.t_max)
        return den.x0(float(sch.alpha(torch.tensor(t, dtype=F64))) * y.double(), t).to(y.dtype)

    smin, smax = s_of_t(sch.t_min), s_of_t(sch.t_max)
    y0 = x / float(sch.alpha(torch.tensor(sch.t_max, dtype=F64)))
    rows = []
    for budget in args.nfe:
        for name, (fn_name, per_step, extra) in P.K_SAMPLERS.items():
            for kind in ("karras", "exponential"):
                n = budget if per_step == 1 else (budget + 1) // 2
                while n >= 1:
                    sig = (ks.get_sigmas_karras(n, smin, smax, rho=7.0) if kind == "karras"
                           else ks.get_sigmas_exponential(n, smin, smax)).double()
                    n0 = den.nfe
                    out = getattr(ks, fn_name)(model, y0 * float(sig[0]) / smax, sig, disable=True, **extra)
                    nfe = den.nfe - n0
                    if nfe <= budget:
                        break
                    n -= 1
                err = float(((out.double() - ref) ** 2).mean().sqrt()) if bool(torch.isfinite(out).all()) else float("inf")
                row = dict(nfe_budget=budget, nfe=nfe, sampler=name, sigmas=kind, steps=n, rms=err, seeds=args.seeds)
                rows.append(row)
                print(f"{budget:3d} {name:22s} {kind:12s} nfe={nfe:2d}  rms {err:.4f}", flush=True)
    tuned = {}
    if os.path.exists(args.tuned):
        import diffsolve as ds

        for line in open(args.tuned):
            r = json.loads(line)
            if r["problem"] != "digits" or r["nfe"] not in args.nfe:
                continue
            n0 = den.nfe
            res = ds.sample(den, x, solver=r["solver"], grid=torch.tensor(r["t"], dtype=F64),
                            denoise_final=r["denoise_final"])
            err = float(((res.x - ref) ** 2).mean().sqrt())
            row = dict(nfe_budget=r["nfe"], nfe=den.nfe - n0, sampler=f"diffsolve {r['solver']} tuned grid",
                       sigmas="tuned", rms=err, seeds=args.seeds)
            rows.append(row)
            tuned[(r["solver"], r["nfe"])] = err
    with open(args.out, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    print("\n| NFE | best k-diffusion configuration | rms | diffsolve unipc tuned | dpmpp_2m tuned | "
          "best tuned / best k-diffusion |\n|---:|---|---:|---:|---:|---:|")
    for b in args.nfe:
        best = min((r for r in rows if r["nfe_budget"] == b and r["sigmas"] != "tuned"), key=lambda r: r["rms"])
        u, d = tuned.get(("unipc", b)), tuned.get(("dpmpp_2m", b))
        ratio = min(v for v in (u, d) if v is not None) / best["rms"] if (u or d) else None
        fmt = lambda v: "–" if v is None else f"{v:.4f}"  # noqa: E731
        print(f"| {b} | {best['sampler']} sigmas={best['sigmas']} | {best['rms']:.4f} | {fmt(u)} | {fmt(d)} | "
              f"{'–' if ratio is None else format(ratio, '.2f')} |")


if __name__ == "__main__":
    main()
