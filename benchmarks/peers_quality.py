r"""Sampling quality per NFE: diffsolve against diffusers' schedulers and k-diffusion's samplers,
all driven by the SAME exact model (a Gaussian mixture's posterior mean, DDPM linear schedule).

Problems: ``ring`` (2-D ring of 8 modes), ``mix64`` (64-D mixture of 8 full-covariance Gaussians),
``gauss3072`` (one 3×32×32 Gaussian with an image-like spectrum).

Metrics (see ``_peers.py`` for the end-point convention):
- ``rms``: RMS error per coordinate against the exact probability-flow ODE solution (σ → 0 limit)
  from the method's own start state and start time;
- ``dist``: sliced Wasserstein-2 against 200k exact data samples (ring, mix64; it has a finite-
  batch floor, printed), or the exact per-coordinate Fréchet distance (gauss3072).

Every real network call is counted; a configuration is run with the largest step count whose
counted calls fit the budget (a Heun step costs 2, diffsolve's final denoise costs 1).
Configurations that start later than the schedule's t_max (diffusers' and diffsolve's
``leading`` spacing starts at timestep ≈ (1 − 1/n)·N) are recorded with their distribution error
only and are not ranked: from z ~ N(0, I) they solve a different, shorter problem.

Rows go to a JSONL file as they are produced; re-running resumes (``--fresh`` starts over).

Usage:
    python benchmarks/peers_quality.py                       # all problems, NFE 5 10 20 50
    python benchmarks/peers_quality.py --problems ring --nfe 5 10
    python benchmarks/peers_quality.py --table                # tables from the JSONL only
    python benchmarks/peers_quality.py --option-effect corrected_start=True   # one option's effect
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import time
import warnings

import torch

import _peers as P  # shared helpers: a sibling module (run as python benchmarks/<script>.py)

HERE = os.path.dirname(os.path.abspath(__file__))


def _git() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, text=True).strip()
    except Exception:
        return "?"


class Log:
    def __init__(self, path, fresh, redo=()):
        self.path = path
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if fresh and os.path.exists(path):
            os.remove(path)
        self.done = set()
        self.rows = []
        for r in P.read_jsonl(path):
            if r.get("side") in redo or (r.get("side") != "floor" and "peers" in redo
                                          and r.get("side") in ("diffusers", "k-diffusion")):
                continue
            self.rows.append(r)
            self.done.add(r["key"])
            if redo:  # rewrite without the rows to redo
                with open(path, "w") as f:
                    for r in self.rows:
                        f.write(json.dumps(r) + "\n")
        self.git = _git()

    def write(self, row):
        row["git"] = self.git
        row["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        self.rows.append(row)
        self.done.add(row["key"])


def _measure(prob, fn):
    t = time.time()
    try:
        r = fn()
    except Exception as e:  # record the failure: a method that cannot run a budget is a result too
        return dict(error=f"{type(e).__name__}: {str(e)[:200]}"), time.time() - t
    out = r["out"].double()
    finite = bool(torch.isfinite(out).all())
    # full start: the method starts at the schedule's largest noise level (float32 round-off allowed)
    full = abs(r["s0"] / prob.s_of_t(prob.schedule.t_max) - 1.0) < 1e-5
    row = dict(nfe=r["nfe"], steps=r["steps"], t0=r["t0"], s0=r["s0"], full_start=full,
               dist=P.distribution_error(prob, out) if finite else float("inf"))
    if full:  # late starts are not ranked: skip their (costly) reference solve
        row["rms"] = P.rms(out, P.reference(prob, r["c"], r["s0"])) if finite else float("inf")
    return row, time.time() - t


def run_problem(name, budgets, log, which, batch=None, grids=None):
    prob = P.make_problem(name, batch=batch)
    key0 = f"{name}|floor"
    if key0 not in log.done:
        sch = prob.schedule
        s0 = prob.s_of_t(sch.t_max)
        ref = P.reference(prob, s0, s0)
        log.write(dict(key=key0, problem=name, side="floor", family="floor", config="exact ODE to t_min + x̂0",
                       budget=0, rms=P.floor_error(prob), dist=P.distribution_error(prob, ref),
                       full_start=True, nfe=0))
    jobs = P.build_jobs(prob, name, budgets, which, grids)
    todo = [j for j in jobs if j[0] not in log.done]
    print(f"[{name}] {len(jobs)} runs, {len(todo)} to do", flush=True)
    t_start = time.time()
    for i, (key, side, fam, lab, b, fn) in enumerate(todo):
        row, dt = _measure(prob, fn)
        row.update(key=key, problem=name, side=side, family=fam, config=lab, budget=b, time_s=round(dt, 3))
        log.write(row)
        if (i + 1) % 50 == 0:
            print(f"  {i + 1}/{len(todo)} ({time.time() - t_start:.0f}s)", flush=True)


# --------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------
def _best(rows):
    rows = [r for r in rows if P.ranked(r)]
    return min(rows, key=lambda r: r["rms"]) if rows else None


def tables(log, problems, budgets):
    rows = [r for r in log.rows if r["problem"] in problems]
    latest = {}
    for r in rows:  # last row per key wins
        latest[r["key"]] = r
    rows = list(latest.values())
    lines = []
    for name in problems:
        pr = [r for r in rows if r["problem"] == name]
        if not pr:
            continue
        floor = next((r for r in pr if r["side"] == "floor"), None)
        lines.append(f"\n### {name}\n")
        if floor:
            lines.append(f"Floor (exact ODE to t_min then x̂0, vs the σ→0 reference): rms {floor['rms']:.2g}; "
                         f"distribution error of the exact ODE outputs (finite-batch floor): {floor['dist']:.3g}\n")
        lines.append("| NFE | best diffsolve | rms | dist | best peer | rms | dist | diffsolve/peer |")
        lines.append("|---:|---|---:|---:|---|---:|---:|---:|")
        for b in budgets:
            d = _best([r for r in pr if r["side"] == "diffsolve" and r["budget"] == b])
            p = _best([r for r in pr if r["side"] in ("diffusers", "k-diffusion") and r["budget"] == b])
            ratio = d["rms"] / p["rms"] if d and p else None
            lines.append(f"| {b} | {d['config'] if d else '—'} | {P.fmt(d and d['rms'])} | {P.fmt(d and d['dist'])} | "
                         f"{p['config'] if p else '—'} | {P.fmt(p and p['rms'])} | {P.fmt(p and p['dist'])} | "
                         f"{P.fmt(ratio)} |")
        # per family
        fams = sorted({r["family"] for r in pr if r["side"] != "floor"},
                      key=lambda f: (not f.startswith("diffsolve"), f))
        lines.append("\nBest configuration per family (rms; full-start configurations only):\n")
        lines.append("| family | " + " | ".join(f"NFE {b}" for b in budgets) + " | best config at the largest NFE |")
        lines.append("|---|" + "---:|" * len(budgets) + "---|")
        for f in fams:
            cells, last = [], None
            for b in budgets:
                r = _best([r for r in pr if r["family"] == f and r["budget"] == b])
                cells.append(P.fmt(r and r["rms"]))
                last = r or last
            lines.append(f"| {f} | " + " | ".join(cells) + f" | {last['config'] if last else '—'} |")
        # monotonicity of every diffsolve configuration
        by_cfg = {}
        for r in pr:
            if r["side"] == "diffsolve" and r.get("error") is None and r.get("full_start", True):
                by_cfg.setdefault(r["config"], {})[r["budget"]] = r["rms"]
        bad = []
        for cfg, m in sorted(by_cfg.items()):
            seq = [m.get(b) for b in budgets if b in m]
            if any(not math.isfinite(x) for x in seq) or any(seq[i + 1] > seq[i] for i in range(len(seq) - 1)):
                bad.append(f"- {cfg}: " + ", ".join(f"{b}→{P.fmt(m[b])}" for b in budgets if b in m))
        lines.append(f"\ndiffsolve configurations whose rms is not monotone decreasing in NFE "
                     f"({len(bad)} of {len(by_cfg)}):\n")
        lines.extend(bad or ["- none"])
        errs = [r for r in pr if r.get("error")]
        if errs:
            seen = {}
            for r in errs:
                seen.setdefault((r["config"].split(" grid=")[0], r["error"][:90]), []).append(r["budget"])
            lines.append(f"\nRuns that raised ({len(errs)}):\n")
            for (c, e), bs in sorted(seen.items()):
                lines.append(f"- {c} (budgets {sorted(set(bs))}): {e}")
    return "\n".join(lines)


def option_effect(log, name, option, budgets) -> str:
    """For every diffsolve configuration that also ran with ``option`` (e.g. ``corrected_start=True``)
    added: rms with the option / rms without, summarised per option set and budget over grids and
    end treatments (from the JSONL rows only)."""
    rms = {r["config"]: {} for r in log.rows if r.get("side") == "diffsolve"}
    for r in log.rows:
        if r.get("side") == "diffsolve" and r.get("full_start") and r.get("rms") is not None:
            rms[r["config"]][r["budget"]] = r["rms"]
    pairs = {}  # (options without the option, budget) -> [(ratio, grid and end)]
    for cfg, by_budget in rms.items():
        head, _, rest = cfg.partition(" grid=")
        if "," + option not in head:
            continue
        base = f"{head.replace(',' + option, '')} grid={rest}"
        for b in budgets:
            if b in by_budget and b in rms.get(base, {}):
                pairs.setdefault((head.replace("," + option, ""), b), []).append((by_budget[b] / rms[base][b], rest))
    lines = [f"\n### {name}: rms with {option} / rms without (same configuration)\n",
             "| configuration | NFE | lower with it | smallest ratio | largest ratio |", "|---|---:|---:|---|---|"]
    for (head, b), v in sorted(pairs.items()):
        v.sort()
        lines.append(f"| {head} | {b} | {sum(r < 1 for r, _ in v)} of {len(v)} | {v[0][0]:.2f} ({v[0][1]}) "
                     f"| {v[-1][0]:.2f} ({v[-1][1]}) |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", nargs="+", default=list(P.PROBLEMS), choices=list(P.PROBLEMS))
    ap.add_argument("--nfe", nargs="+", type=int, default=[5, 10, 20, 50])
    ap.add_argument("--which", nargs="+", default=["diffsolve", "peers"], choices=["diffsolve", "peers"])
    ap.add_argument("--grids", nargs="+", default=None, help="diffsolve grids (default: all)")
    ap.add_argument("--batch", type=int, default=None, help="override the problem's batch size")
    ap.add_argument("--out", default=P.QUALITY_OUT, help="JSONL file per problem ({problem} is replaced); appended, resumed")
    ap.add_argument("--fresh", action="store_true", help="delete the JSONL file first")
    ap.add_argument("--redo", nargs="+", default=[], choices=["diffsolve", "peers"],
                    help="drop these rows from the JSONL file and run them again (e.g. after solver changes)")
    ap.add_argument("--table", action="store_true", help="only print tables from the JSONL file")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--option-effect", default=None, metavar="KEY=VALUE",
                    help="only print, from the JSONL file, the ratio of rms with this solver option to without it")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    out = []
    for name in args.problems:
        if args.option_effect:
            out.append(option_effect(Log(args.out.format(problem=name), False), name, args.option_effect, args.nfe))
            continue
        log = Log(args.out.format(problem=name), args.fresh and not args.table, () if args.table else tuple(args.redo))
        if not args.table:
            run_problem(name, args.nfe, log, args.which, batch=args.batch, grids=args.grids)
        out.append(tables(log, [name], args.nfe))
    print("\n".join(out))


if __name__ == "__main__":
    main()
