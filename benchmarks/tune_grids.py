"""Tuned step grids against the best fixed grids, at NFE 4-10, judged on fresh seeds.

For each problem, solver and budget, ``diffsolve.tune_steps`` starts from the best of the fixed grids
(uniform λ, Karras ρ=7, uniform t, quadratic) on the pilot seeds, tunes the grid there, and then both
grids are judged on fresh seeds: the table shows the fresh RMS error per coordinate against the exact
ODE solution (reference solve to t_min followed by the exact x̂0), the fresh error of every fixed grid,
and the tuning cost. Rows go to a JSONL file as they finish (``--resume`` skips them).
If ``benchmarks/results/peers_quality_<problem>.jsonl`` (from peers_quality.py) exists, the best peer
configuration at the same NFE is shown beside.

    python benchmarks/tune_grids.py                          # ring2d, mix64, digits; NFE 4,5,6,8,10
    python benchmarks/tune_grids.py --problems mix64 --solvers unipc --nfe 5,10 --pilot 256
    python benchmarks/tune_grids.py --problems mix64 --solvers learned --nfe 5,10 --pilot 4096 \
        --grids-from benchmarks/results/tune_grids_mix64_p4096.jsonl --out benchmarks/results/tune_learned.jsonl

Solver ``learned`` runs ``diffsolve.tune_solver``: per-step predictor/corrector weights fitted on a
fixed grid (the best tuned grid of ``--grids-from``, or one tuned for UniPC first).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from diffsolve.grids import make_grid
from diffsolve.noise import NoiseSource
from diffsolve.processes import NoiseLevel
from diffsolve.reference import ode_reference
from diffsolve.solvers import get_solver, parse_solver_spec
from diffsolve.loop import integrate
from diffsolve.tune import FIXED_GRIDS, TunedGrid, tune_solver, tune_steps

HERE = Path(__file__).parent
PEER_FILES = {"ring2d": "peers_quality_ring.jsonl", "mix64": "peers_quality_mix64.jsonl",
              "gauss3072": "peers_quality_gauss3072.jsonl"}


def problem(name):
    from diffsolve.bench.problems import get_model, get_problem

    if name in ("digits", "two_moons"):
        return get_model(name).denoiser()
    return get_problem(name).denoiser()


def fixed_errors(den, solver, nfe, seeds, denoise_final, options=None):
    """Fresh RMS error of every fixed grid (same target as tune_steps)."""
    sch = den.schedule
    sol = get_solver(solver, **(options or {}))
    x = float(sch.sigma(sch.t_max)) * NoiseSource(len(seeds), den.shape, seeds=seeds).randn()
    ref = ode_reference(den, x, sch.t_max, sch.t_min, rtol=1e-8, atol=1e-8, denoise_final=True)
    steps = sol.steps_for_nfe(nfe, denoise_final)
    out = {}
    for kind in FIXED_GRIDS:
        y = integrate(sol, den, x, make_grid(sch, steps, kind), level=NoiseLevel(sch, 0.0),
                         denoise_final=denoise_final).x
        out[kind] = float(((y - ref) ** 2).mean().sqrt())
    return out


def start_grid(path, prob, nfe):
    """The tuned grid with the lowest fresh error for (problem, NFE) in a tune_grids JSONL file."""
    rows = [json.loads(l) for l in Path(path).read_text().splitlines() if l.strip()]
    rows = [r for r in rows if r["problem"] == prob and r["nfe"] == nfe and r["solver"] != "learned"]
    if not rows:
        raise SystemExit(f"no tuned grid for {prob} at NFE {nfe} in {path}")
    r = min(rows, key=lambda r: r["tuned_fresh"])
    return TunedGrid(t=r["t"], solver=r["solver"], nfe=nfe, denoise_final=r["denoise_final"],
                     solver_options=r.get("options") or {})


def best_peer(prob, nfe):
    f = HERE / "results" / PEER_FILES.get(prob, "-")
    if not f.is_file():
        return None
    best = None
    for line in f.read_text().splitlines():
        r = json.loads(line)
        if r.get("side") in ("diffusers", "k-diffusion") and r.get("nfe") == nfe and r.get("rms") is not None \
                and math.isfinite(r["rms"]) and (best is None or r["rms"] < best["rms"]):
            best = r
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", default="ring2d,mix64,digits")
    ap.add_argument("--solvers", default="unipc,dpmpp_2m",
                    help="comma-separated; options after a colon, e.g. unipc:order=3 or deis:order=2:variable=rho")
    ap.add_argument("--nfe", default="4,5,6,8,10")
    ap.add_argument("--pilot", type=int, default=256)
    ap.add_argument("--fresh", type=int, default=1024)
    ap.add_argument("--max-evals", type=int, default=250)
    ap.add_argument("--grids-from", help="solver 'learned' (tune_solver: fitted weights on a fixed grid): take "
                                         "the best tuned grid per problem and NFE from this JSONL (default: "
                                         "tune one for unipc first)")
    ap.add_argument("--iterations", type=int, default=300, help="Adam iterations of tune_solver")
    ap.add_argument("--out", default=str(HERE / "results" / "tune_grids.jsonl"))
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if args.resume and out.exists():
        done = {json.loads(l)["key"] for l in out.read_text().splitlines() if l.strip()}
    elif out.exists():
        out.unlink()
    for prob in args.problems.split(","):
        den = problem(prob)
        for spec in args.solvers.split(","):
            solver, options = parse_solver_spec(spec)
            for nfe in map(int, args.nfe.split(",")):
                key = f"{prob}|{spec}|{nfe}"
                if key in done:
                    continue
                t0 = time.perf_counter()
                if solver == "learned":
                    grid = start_grid(args.grids_from, prob, nfe) if args.grids_from else "auto"
                    g = tune_solver(den, nfe, grid=grid, pilot=args.pilot, fresh=args.fresh,
                                    iterations=args.iterations, max_evals=args.max_evals, model=prob, **options)
                else:
                    g = tune_steps(den, solver, nfe, pilot=args.pilot, fresh=args.fresh, max_evals=args.max_evals,
                                   denoise_final="auto", model=prob, solver_options=options)
                fresh_seeds = g.fresh_seeds
                base = {} if solver == "learned" else options  # learned: default weights (2M) on the fixed grids
                fixed = {f"{k}{'+x0' if d else ''}": v for d in (True, False)
                         for k, v in fixed_errors(den, solver, nfe, fresh_seeds, d, base).items()}
                peer = best_peer(prob, nfe)
                row = {"key": key, "problem": prob, "solver": solver, "options": g.solver_options, "nfe": nfe, "tuned_fresh": g.fresh_error,
                       "tuned_pilot": g.pilot_error, "init_grid": g.init_grid, "init_fresh": g.init_fresh_error,
                       "denoise_final": g.denoise_final, "fixed_fresh": fixed,
                       "best_fixed": min(fixed.values()), "best_fixed_grid": min(fixed, key=fixed.get),
                       "peer": None if peer is None else {"config": peer["config"], "rms": peer["rms"]},
                       "tuning_nfe": g.tuning_nfe, "tuning_s": g.tuning_seconds, "t": g.t,
                       "pilot": args.pilot, "fresh": args.fresh, "wall_s": time.perf_counter() - t0}
                if solver == "learned":
                    row.update(validation=g.validation_error, init_pilot=g.init_error)
                with out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"{prob:8s} {spec:9s} nfe={nfe:2d}  tuned {g.fresh_error:.4f}  best fixed "
                      f"{row['best_fixed']:.4f} ({row['best_fixed_grid']})  peer "
                      f"{'-' if peer is None else format(peer['rms'], '.4f')}  [{g.tuning_nfe} calls, "
                      f"{g.tuning_seconds:.0f} s]", flush=True)


if __name__ == "__main__":
    main()
