r"""Confirm peers_quality.py's ranking on a larger, independent batch, with paired confidence intervals.

peers_quality.py ranks hundreds of configurations on one batch (256 start points for mix64). On the
mixtures the per-sample error is heavy-tailed (a few trajectories that choose between modes carry
most of the squared error), so a 256-point RMS is noisy and the minimum over hundreds of
configurations is biased low. This script takes, for each NFE, the ``--top`` best configurations of
each side (diffsolve; diffusers + k-diffusion) from the JSONL that peers_quality.py wrote, plus
optionally grids tuned by tune_grids.py, and runs them all again on ONE new batch (``--batch``
points, generator seed ``--seed``): every method sees the same start points, so the ratio of two
RMS errors has a paired bootstrap interval (resampling start points).

Rows (with each run's per-sample squared errors, 3 significant digits) go to
``results/confirm_<problem>.jsonl``; re-running resumes.

    python benchmarks/confirm_quality.py --problems mix64 --nfe 5 10 --batch 2048 \
        --tuned benchmarks/results/tune_grids_mix64_p1024.jsonl benchmarks/results/tune_grids_mix64_p4096.jsonl
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
import warnings

import torch

import diffsolve as ds

import _peers as P  # shared helpers: a sibling module (run as python benchmarks/<script>.py)

HERE = os.path.dirname(os.path.abspath(__file__))
TUNE_NAMES = {"ring": "ring2d", "mix64": "mix64", "gauss3072": "gauss3072"}  # peers_quality problem -> tune_grids problem
PEERS = ("diffusers", "k-diffusion")


def latest_rows(path):
    rows = {}
    if os.path.exists(path):
        for line in open(path):
            r = json.loads(line)
            rows[r["key"]] = r
    return rows


def top_keys(rows, budget, k):
    """The k best full-start keys per side group at ``budget`` (by the original batch's rms)."""
    out = set()
    for group in (("diffsolve",), PEERS):
        ok = [r for r in rows.values() if r["side"] in group and r["budget"] == budget and P.ranked(r)]
        out.update(r["key"] for r in sorted(ok, key=lambda r: r["rms"])[:k])
    return out


def tuned_jobs(prob, name, budgets, path):
    """(key, side, family, label, budget, fn) for every row of a tune_grids JSONL on this problem."""
    jobs = []
    for r in latest_rows(path).values():
        if r["problem"] != TUNE_NAMES.get(name) or r["nfe"] not in budgets:
            continue
        opts = r.get("options") or {}
        shown = {k: v for k, v in opts.items() if not isinstance(v, list)}  # fitted weights: not in the label
        lab = (f"{r['solver']}{''.join(f',{k}={v}' for k, v in shown.items())} tuned grid "
               f"({r.get('pilot', '?')} pilots) denoise_final={r['denoise_final']}")
        t = torch.tensor(r["t"], dtype=torch.float64)

        def fn(r=r, t=t, opts=opts):
            sol = ds.solvers.get_solver(r["solver"], **opts)
            sig0 = float(prob.schedule.sigma(t[0]))
            n0 = prob.den.nfe
            res = ds.sample(prob.den, sig0 * prob.z, solver=sol, grid=t, denoise_final=r["denoise_final"])
            s0 = prob.s_of_t(float(t[0]))
            return dict(out=res.x, nfe=prob.den.nfe - n0, steps=len(t) - 1, t0=float(t[0]), c=s0, s0=s0)

        jobs.append((f"{name}|diffsolve-tuned|{lab}|{r['nfe']}", "diffsolve-tuned", "diffsolve tuned", lab,
                     r["nfe"], fn))
    return jobs


def default_jobs(prob, name, budgets):
    """(key, side, family, label, budget, fn): the bare default call ``ds.sample(model, x, nfe=N)`` from the
    batch's start points at the schedule's t_max, for each budget."""
    sch = prob.schedule
    s0 = prob.s_of_t(sch.t_max)

    def job(b):
        def fn():
            n0 = prob.den.nfe
            res = ds.sample(prob.den, float(sch.sigma(torch.tensor(sch.t_max, dtype=torch.float64))) * prob.z, nfe=b)
            return dict(out=res.x, nfe=prob.den.nfe - n0, steps=len(res.t) - 1, t0=float(res.t[0]), c=s0, s0=s0)
        lab = f"sample(model, x, nfe={b})"
        return f"{name}|diffsolve-default|{lab}|{b}", "diffsolve-default", "diffsolve default", lab, b, fn

    return [job(b) for b in budgets]


def run(prob, fn):
    r = fn()
    out = r["out"].double()
    full = abs(r["s0"] / prob.s_of_t(prob.schedule.t_max) - 1.0) < 1e-5
    row = dict(nfe=r["nfe"], full_start=full)
    if full and bool(torch.isfinite(out).all()):
        ref = P.reference(prob, r["c"], r["s0"])
        se = ((out - ref) ** 2).reshape(out.shape[0], -1).mean(1)
        row.update(rms=float(se.mean().sqrt()), sq_err=[float(f"{v:.3g}") for v in se.tolist()])
    return row


def ratio_ci(a, b, reps=2000, level=0.9, seed=0):
    """rms(a)/rms(b) and its paired bootstrap interval (a, b: per-sample squared errors)."""
    a, b = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(a), (reps, len(a)), generator=g)
    r = (a[idx].mean(1) / b[idx].mean(1)).sqrt().sort().values
    lo, hi = r[int((1 - level) / 2 * reps)], r[int((1 + level) / 2 * reps) - 1]
    return math.sqrt(float(a.mean() / b.mean())), float(lo), float(hi)


def table(rows, name, budgets, original):
    lines = [f"\n### {name}\n",
             "| NFE | best diffsolve (fixed grid) | rms | best diffsolve tuned | rms | best peer | rms | "
             "fixed/peer [90% CI] | tuned/peer [90% CI] | default call rms | default/peer [90% CI] | "
             "peer rms on the original batch |",
             "|---:|---|---:|---|---:|---|---:|---|---|---:|---|---:|"]

    def best(side):
        ok = [r for r in rows if r["side"] in side and r["budget"] == b and r.get("rms") is not None]
        return min(ok, key=lambda r: r["rms"]) if ok else None

    for b in budgets:
        d, t, p, bare = best(("diffsolve",)), best(("diffsolve-tuned",)), best(PEERS), best(("diffsolve-default",))
        if p is None:
            continue
        cells = []
        for x in (d, t, bare):
            if x is None:
                cells.append("—")
            else:
                r, lo, hi = ratio_ci(x["sq_err"], p["sq_err"])
                cells.append(f"{r:.2f} [{lo:.2f}, {hi:.2f}]")
        orig = original.get(p["key"].split("|confirm")[0], {}).get("rms")
        lines.append(f"| {b} | {d['config'] if d else '—'} | {P.fmt(d and d['rms'])} | "
                     f"{t['config'] if t else '—'} | {P.fmt(t and t['rms'])} | {p['config']} | "
                     f"{P.fmt(p['rms'])} | {cells[0]} | {cells[1]} | {P.fmt(bare and bare['rms'])} | {cells[2]} | "
                     f"{P.fmt(orig)} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", nargs="+", default=["mix64"], choices=list(P.PROBLEMS))
    ap.add_argument("--nfe", nargs="+", type=int, default=[5, 10])
    ap.add_argument("--top", type=int, default=4, help="configurations per side and NFE")
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=777, help="generator seed of the new batch (peers_quality uses 1234)")
    ap.add_argument("--tuned", nargs="*", default=[], help="tune_grids.py JSONL files: their grids are confirmed too")
    ap.add_argument("--default", action="store_true", help="also the bare default call, sample(model, x, nfe=N)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    for name in args.problems:
        original = latest_rows(P.QUALITY_OUT.format(problem=name))
        want = set().union(*(top_keys(original, b, args.top) for b in args.nfe))
        out = os.path.join(HERE, "results", f"confirm_{name}.jsonl")
        done = latest_rows(out)
        prob = P.make_problem(name, batch=args.batch, seed=args.seed)
        jobs = [j for j in P.build_jobs(prob, name, args.nfe, ["diffsolve", "peers"]) if j[0] in want]
        for path in args.tuned:
            jobs += tuned_jobs(prob, name, args.nfe, path)
        if args.default:
            jobs += default_jobs(prob, name, args.nfe)
        tag = f"|confirm|{args.batch}|{args.seed}"
        todo = [j for j in jobs if j[0] + tag not in done]
        print(f"[{name}] {len(jobs)} configurations, {len(todo)} to run on {args.batch} new start points", flush=True)
        for key, side, fam, lab, b, fn in todo:
            t0 = time.time()
            try:
                row = run(prob, fn)
            except Exception as e:
                row = dict(error=f"{type(e).__name__}: {str(e)[:200]}")
            row.update(key=key + tag, problem=name, side=side, family=fam, config=lab, budget=b,
                       batch=args.batch, seed=args.seed, time_s=round(time.time() - t0, 2))
            with open(out, "a") as f:
                f.write(json.dumps(row) + "\n")
            done[row["key"]] = row
            print(f"  {b:3d} {lab[:90]:90s} {P.fmt(row.get('rms'))}", flush=True)
        print(table([r for r in done.values() if r["key"].endswith(tag)], name, args.nfe, original))


if __name__ == "__main__":
    main()
