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
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _peers as P  # noqa: E402

import diffsolve as ds  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "results", "peers_quality_{problem}.jsonl")

# solver options tried besides each solver's defaults (only those its constructor accepts)
SOLVER_OPTIONS = {
    "dpmpp_2m": [{"lower_order_final": False}, {"solver_type": "taylor"}],
    "dpmpp_3m": [{"lower_order_final": False}, {"third_order": "dpm_solver"}, {"lower_order_below": None},
                 {"corrected_start": True}],
    "dpmpp_2s": [{"solver_type": "taylor"}],
    "unipc": [{"variant": "bh1"}, {"order": 3}, {"order": 3, "variant": "bh1"}, {"lower_order_final": False},
              {"order": 3, "lower_order_final": False}, {"order": 3, "lower_order_below": None},
              {"final_corrector": True}, {"predict_x0": False}, {"order": 3, "predict_x0": False},
              {"order": 3, "variant": "bh1", "predict_x0": False},
              {"order": 3, "predict_x0": False, "lower_order_final": False}],
    "deis": [{"order": 2}, {"order": 4}, {"variable": "rho"}, {"order": 4, "variable": "rho"},
             {"lower_order_final": False}, {"order": 4, "lower_order_final": False},
             {"corrected_start": True}, {"order": 4, "lower_order_final": False, "corrected_start": True}],
}
# 'leading' starts late (unranked), so it is not run for diffsolve
DIFFSOLVE_GRIDS = tuple(g for g in ds.grids.GRIDS if g != "leading")
# at eta = 0 these reduce to another registered solver (checked at run time: if the outputs
# differ, the solver is benchmarked in full)
ETA0_DUPLICATES = {"dpmpp_2m_sde": "dpmpp_2m", "dpmpp_3m_sde": "dpmpp_3m", "ancestral": "ddim"}


def _git() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, text=True).strip()
    except Exception:
        return "?"


def diffsolve_configs(grids=None, skip=()) -> list[tuple[str, dict, str, bool]]:
    """(solver, options, grid, denoise_final) for every registered fixed-step solver that can run
    the probability-flow ODE without drawing noise (adaptive solvers and samplers that draw noise
    at eta = 0, like the Langevin predictor-corrector, are skipped; so are ``skip``)."""
    out = []
    grids = grids or DIFFSOLVE_GRIDS
    for name, cls in sorted(ds.solvers.SOLVERS.items()):
        if getattr(cls, "adaptive", False) or name in skip:
            continue
        try:
            if getattr(cls(), "draws_noise", False) is True:  # an instance: it may be a property
                continue
        except Exception:
            continue
        opts = [{}]
        for extra in SOLVER_OPTIONS.get(name, []):
            try:
                cls(**extra)
            except Exception:
                continue
            opts.append(extra)
        for o in opts:
            for g in grids:
                for df in (True, False):
                    out.append((name, o, g, df))
    return out


def eta0_duplicates(prob) -> list[str]:
    """The solvers of ETA0_DUPLICATES whose eta = 0 output equals their counterpart's (NFE 10)."""
    dup = []
    for name, twin in ETA0_DUPLICATES.items():
        if name not in ds.solvers.SOLVERS or twin not in ds.solvers.SOLVERS:
            continue
        try:
            a = P.run_diffsolve(prob, name, "log_snr", True, 10)["out"]
            b = P.run_diffsolve(prob, twin, "log_snr", True, 10)["out"]
        except Exception:
            continue
        if P.rms(a, b) <= 1e-12 * (1 + float(b.abs().max())):
            dup.append(name)
    return dup


def config_label(solver, opts, grid, df) -> str:
    o = "".join(f",{k}={v}" for k, v in opts.items())
    return f"{solver}{o} grid={grid} denoise_final={df}"


class Log:
    def __init__(self, path, fresh, redo=()):
        self.path = path
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if fresh and os.path.exists(path):
            os.remove(path)
        self.done = set()
        self.rows = []
        if os.path.exists(path):
            with open(path) as f:
                for line in f:
                    try:
                        r = json.loads(line)
                    except json.JSONDecodeError:
                        continue
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


def build_jobs(prob, name, budgets, which, grids=None) -> list[tuple]:
    """(key, side, family, label, budget, fn) of every configuration; ``fn()`` runs it on ``prob``."""
    jobs = []
    if "diffsolve" in which:
        dup = eta0_duplicates(prob)
        if dup:
            print(f"[{name}] at eta=0 identical to their ODE twins, not re-run: {', '.join(dup)}", flush=True)
        for solver, opts, grid, df in diffsolve_configs(grids, skip=dup):
            for b in budgets:
                lab = config_label(solver, opts, grid, df)
                jobs.append((f"{name}|diffsolve|{lab}|{b}", "diffsolve", f"diffsolve {solver}", lab, b,
                             (lambda s=solver, o=opts, g=grid, d=df, b=b: P.run_diffsolve(prob, s, g, d, b, o))))
    if "peers" in which:
        for fam, cls, cfg, per in P.diffusers_configs():
            lab = f"{cls}(" + ",".join(f"{k}={v}" for k, v in cfg.items()) + ")"
            for b in budgets:
                jobs.append((f"{name}|diffusers|{lab}|{b}", "diffusers", fam, lab, b,
                             (lambda c=cls, g=cfg, p=per, b=b: P.run_diffusers(prob, c, g, b, p))))
        for smp in P.K_SAMPLERS:
            for kind in P.K_SIGMAS:
                lab = f"k-diffusion {smp} sigmas={kind}"
                for b in budgets:
                    jobs.append((f"{name}|k-diffusion|{lab}|{b}", "k-diffusion", f"k-diffusion {smp}", lab, b,
                                 (lambda s=smp, k=kind, b=b: P.run_kdiff(prob, s, k, b))))
    return jobs


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
    jobs = build_jobs(prob, name, budgets, which, grids)
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
def _ok(r):
    return r.get("rms") is not None and r.get("error") is None and math.isfinite(r["rms"]) and r.get("full_start", True)


def _best(rows):
    rows = [r for r in rows if _ok(r)]
    return min(rows, key=lambda r: r["rms"]) if rows else None


def _fmt(x):
    if x is None:
        return "—"
    if not math.isfinite(x):
        return "diverged"
    return f"{x:.3g}"


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
            lines.append(f"| {b} | {d['config'] if d else '—'} | {_fmt(d and d['rms'])} | {_fmt(d and d['dist'])} | "
                         f"{p['config'] if p else '—'} | {_fmt(p and p['rms'])} | {_fmt(p and p['dist'])} | "
                         f"{_fmt(ratio)} |")
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
                cells.append(_fmt(r and r["rms"]))
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
                bad.append(f"- {cfg}: " + ", ".join(f"{b}→{_fmt(m[b])}" for b in budgets if b in m))
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
    ap.add_argument("--out", default=DEFAULT_OUT, help="JSONL file per problem ({problem} is replaced); appended, resumed")
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
