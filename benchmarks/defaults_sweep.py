r"""Which configuration should ``sample(model, nfe=N)`` run? A sweep over solvers, grids and the final
denoise on exact problems, chosen on one set of problems and judged on another.

For every (problem, schedule) the start points x_T = σ(t_0)·z are shared by all configurations, and
each output is compared with the same target: the σ → 0 limit of the exact probability-flow ODE
from x_T (the flow map onto the data, solved in VE coordinates with dopri5 at rtol = atol = 1e-9;
benchmarks/_peers.py uses the same target). A configuration that ends at t_min, with or without
the final denoise, is charged for what stopping there costs, so all of them are ranked on one
scale: RMS error per coordinate.

Problems (exact Gaussian mixtures, docs/math.md §6), each under four schedule families (``ddpm``:
discrete VP, ε-prediction; ``cosine``: VP, ε; ``edm``: VE σ ∈ [0.002, 80], x0-prediction;
``flow``: rectified flow, velocity):

- **choice set** (the rule is read off these): ``ring2d``, ``mix64``, ``gauss3072`` (the bench's
  problems);
- **held-out set** (never looked at while choosing): ``mix16`` (5 modes, 16-D, seed 11),
  ``mix256`` (6 modes, 256-D, seed 5), ``img256`` (one Gaussian with a steeper spectrum, 1×16×16,
  seed 3).

Besides the 80 configurations (10 solver variants × 4 grids × final denoise or not), seven solver
variants run with the analytic first step (docs/math.md §27; labels ``afs_...``: N network calls,
the steps of N + 1) on three grids up to 10 evaluations and two up to 20.

Usage:
    python benchmarks/defaults_sweep.py                      # everything (rows appended as they finish)
    python benchmarks/defaults_sweep.py --report --digits --peers --tune   # tables from the rows on disk, + checks
    python benchmarks/defaults_sweep.py --problems ring2d --schedules ddpm --nfe 5,10

Rows go to ``benchmarks/results/defaults_sweep.jsonl`` (one per problem × schedule × configuration ×
budget; a rerun skips the rows already there).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import defaultdict

import torch

import diffsolve as ds
from diffsolve.defaults import default_run
from diffsolve.reference import ode_reference
from diffsolve.solvers.registry import parse_solver_spec

F64 = torch.float64
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "defaults_sweep.jsonl")

CHOICE = ("ring2d", "mix64", "gauss3072")
HELD_OUT = ("mix16", "mix256", "img256")
MIXTURES = {
    "ring2d": (lambda: ds.GaussianMixture.ring(), 512),
    "mix64": (lambda: ds.GaussianMixture.random(d=64, n_modes=8, seed=0), 256),
    "gauss3072": (lambda: ds.GaussianMixture.image_gaussian((3, 32, 32)), 48),
    "mix16": (lambda: ds.GaussianMixture.random(d=16, n_modes=5, seed=11), 512),
    "mix256": (lambda: ds.GaussianMixture.random(d=256, n_modes=6, seed=5), 128),
    "img256": (lambda: ds.GaussianMixture.image_gaussian((1, 16, 16), exponent=3.0, seed=3), 128),
}
SCHEDULES = {"ddpm": "eps", "cosine": "eps", "edm": "x0", "flow": "velocity"}
BUDGETS = (4, 5, 6, 8, 10, 12, 15, 20, 30, 50)
SOLVERS = {  # label: (solver, options)
    "dpmpp_2m": ("dpmpp_2m", {}),
    "dpmpp_3m": ("dpmpp_3m", {}),
    "unipc": ("unipc", {}),
    "unipc3": ("unipc", {"order": 3}),
    "unipc3_bh1": ("unipc", {"order": 3, "variant": "bh1"}),
    "unipc_eps": ("unipc", {"predict_x0": False}),
    "unipc3_eps": ("unipc", {"order": 3, "predict_x0": False}),
    "deis3": ("deis", {}),
    "dpmpp_2m_nolof": ("dpmpp_2m", {"lower_order_final": False}),
    "unipc_nolof": ("unipc", {"lower_order_final": False}),
    # added 2026-12-07 (the peers' gauss3072 rows at NFE 10 put DEIS-4 with the corrected start first)
    "deis3_nolof": ("deis", {"lower_order_final": False}),
    "deis3_cs": ("deis", {"corrected_start": True}),
    "deis4_nolof_cs": ("deis", {"order": 4, "lower_order_final": False, "corrected_start": True}),
}
GRIDS = ("log_snr", "quadratic", "karras", "time")
# with the analytic first step (docs/math.md §27; label "afs_" + the solver's): N network calls buy
# the steps of N + 1; swept on the grids and budgets where it can matter
AFS_SOLVERS = ("dpmpp_2m", "dpmpp_3m", "unipc", "unipc3", "deis3", "dpmpp_2m_nolof", "unipc_nolof", "deis3_nolof",
               "deis3_cs", "deis4_nolof_cs")
AFS_GRIDS = {n: ("log_snr", "karras", "time") if n <= 10 else ("log_snr", "karras") for n in BUDGETS if n <= 20}
CURRENT_DEFAULT = ("dpmpp_2m", "log_snr", True)
REF_TOL = 1e-9
S_END = 1e-6


def _problem(name: str, schedule: str, seed: int = 1234):
    make, batch = MIXTURES[name]
    gm = make()
    sch = ds.make_schedule(schedule)
    den = gm.denoiser(sch, SCHEDULES[schedule])
    z = torch.randn(batch, *gm.shape, dtype=F64, generator=torch.Generator().manual_seed(seed))
    return gm, sch, den, z


def _reference(gm, sch, z, t0: float) -> torch.Tensor:
    """The σ → 0 limit of the PF-ODE from x_T = σ(t0) z at t0 (VE coordinates y = x/α, s = σ/α)."""
    t = torch.tensor(t0, dtype=F64)
    a0, s0 = float(sch.alpha(t)), float(sch.sigma(t))
    y0, sve = s0 / a0 * z, s0 / a0
    edm = ds.EDMSchedule(sigma_min=S_END, sigma_max=max(1e4, 2 * sve))
    # EDM's time is σ itself
    return ode_reference(gm.denoiser(edm, "x0"), y0, sve, S_END, rtol=REF_TOL, atol=REF_TOL, denoise_final=True)


def _rms(a, b) -> float:
    return float(((a.double() - b.double()) ** 2).mean().sqrt())


def _done(path: str) -> set:
    if not os.path.exists(path):
        return set()
    keys = set()
    with open(path) as f:
        for line in f:
            try:
                r = json.loads(line)
            except ValueError:
                continue
            keys.add((r["problem"], r["schedule"], r["config"], r["grid"], r["denoise_final"], r["nfe_budget"]))
    return keys


def run(problems, schedules, budgets, out: str):
    done = _done(out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    for pname in problems:
        for sname in schedules:
            gm, sch, den, z = _problem(pname, sname)
            refs: dict = {}
            t_start = time.perf_counter()
            configs = [(label, solver, opts, grid, df, nfe, False) for label, (solver, opts) in SOLVERS.items()
                       for grid in GRIDS for df in (True, False) for nfe in budgets]
            configs += [("afs_" + label, *SOLVERS[label], grid, df, nfe, True) for label in AFS_SOLVERS
                        for nfe in budgets for grid in AFS_GRIDS.get(nfe, ()) for df in (False, True)]
            with open(out, "a") as f:
                for label, solver, opts, grid, df, nfe, analytic in configs:
                    if (pname, sname, label, grid, df, nfe) in done:
                        continue
                    row = _row(gm, sch, den, z, refs, label, solver, opts, grid, df, nfe, analytic)
                    if row is None:
                        continue
                    row.update(problem=pname, schedule=sname)
                    f.write(json.dumps(row) + "\n")
                    f.flush()
            print(f"{pname}/{sname}: {time.perf_counter() - t_start:.0f} s", file=sys.stderr, flush=True)


def _row(gm, sch, den, z, refs, label, solver, opts, grid, df, nfe, analytic=False):
    try:
        sol = ds.solvers.get_solver(solver, **opts)
        t = sol.grid_for(sch, nfe=nfe + analytic, grid=grid, denoise_final=df)
    except ValueError:
        return None  # a budget too small for the solver
    t0 = float(t[0])
    if t0 not in refs:
        refs[t0] = _reference(gm, sch, z, t0)
    x = float(sch.sigma(torch.tensor(t0, dtype=F64))) * z
    with torch.no_grad():
        res = ds.sample(den, x, solver=sol, nfe=nfe, grid=grid, denoise_final=df, analytic_first_step=analytic)
    assert res.nfe <= nfe and len(res.t) == len(t), (label, nfe, res.nfe)
    err = _rms(res.x, refs[t0])
    return dict(config=label, solver=solver, options=opts, grid=grid, denoise_final=df, nfe_budget=nfe,
                nfe=int(res.nfe), analytic_first_step=analytic, rms=err if math.isfinite(err) else None)


# --- the report ---------------------------------------------------------------------------------------
def _load(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _table(rows):
    """{(problem, schedule, nfe): {(config, grid, df): rms}}"""
    t = defaultdict(dict)
    for r in rows:
        if r["rms"] is not None:
            t[(r["problem"], r["schedule"], r["nfe_budget"])][(r["config"], r["grid"], r["denoise_final"])] = r["rms"]
    return t


def _regret(cells: dict, which, problems, schedules, nfe) -> dict:
    """Geometric-mean ratio to the best configuration of each cell, per configuration, over the cells
    (problem ∈ problems, schedule ∈ schedules) at budget nfe; configurations missing a cell are out."""
    logs = defaultdict(list)
    n_cells = 0
    for p in problems:
        for s in schedules:
            cell = cells.get((p, s, nfe))
            if not cell:
                continue
            n_cells += 1
            best = min(cell.values())
            for cfg, v in cell.items():
                logs[cfg].append(math.log(max(v, 1e-300) / best))
    return {cfg: math.exp(sum(v) / len(v)) for cfg, v in logs.items() if len(v) == n_cells and n_cells}


def report(path: str, schedules=tuple(SCHEDULES)):
    rows = _load(path)
    cells = _table(rows)
    budgets = sorted({r["nfe_budget"] for r in rows})
    print("## Chosen on the choice set (geometric mean of error / best configuration, all four schedules)\n")
    print("| NFE | best configuration | regret | 2nd | regret | current default regret |")
    print("|---:|---|---:|---|---:|---:|")
    chosen = {}
    for n in budgets:
        reg = _regret(cells, None, CHOICE, schedules, n)
        if not reg:
            continue
        order = sorted(reg, key=reg.get)
        chosen[n] = order[0]
        cur = reg.get(CURRENT_DEFAULT)
        print(f"| {n} | {_fmt_cfg(order[0])} | {reg[order[0]]:.2f} | {_fmt_cfg(order[1])} | {reg[order[1]]:.2f} | "
              f"{cur:.2f} |" if cur else "")
    print("\n## Per schedule family on the choice set: the best configuration\n")
    for s in schedules:
        line = []
        for n in budgets:
            reg = _regret(cells, None, CHOICE, (s,), n)
            if reg:
                b = min(reg, key=reg.get)
                line.append(f"{n}: {_fmt_cfg(b)} ({reg[b]:.2f})")
        print(f"- **{s}**: " + "; ".join(line))
    return chosen, cells, budgets


def judge(cells, budgets, rule, schedules=tuple(SCHEDULES)):
    """The rule's configuration (``rule(n, schedule)``) on the held-out set: error / best configuration
    and / current default."""
    print("\n## The rule judged on the held-out set (error / best configuration of the cell; / current default)\n")
    print("| NFE | configuration | " + " | ".join(f"{p}/{s}" for p in HELD_OUT for s in schedules) + " | geo-mean |")
    print("|---:|---|" + "---:|" * (len(HELD_OUT) * len(schedules) + 1))
    for n in budgets:
        by_schedule = {s: rule(n, s) for s in schedules}
        common = max(by_schedule.values(), key=list(by_schedule.values()).count)
        label = "; ".join([_fmt_cfg(common)] + [f"{s}: {_fmt_cfg(c)}" for s, c in by_schedule.items() if c != common])
        vals, logs = [], []
        for p in HELD_OUT:
            for s in schedules:
                cfg, cell = by_schedule[s], cells.get((p, s, n), {})
                if cfg not in cell:
                    vals.append("-")
                    continue
                best, cur = min(cell.values()), cell.get(CURRENT_DEFAULT)
                r = cell[cfg] / best
                logs.append(math.log(r))
                vals.append(f"{r:.2f}" + (f" ({cell[cfg] / cur:.2f})" if cur else ""))
        g = math.exp(sum(logs) / len(logs)) if logs else float("nan")
        print(f"| {n} | {label} | " + " | ".join(vals) + f" | {g:.2f} |")


def library_default(n: int, family: str) -> tuple:
    """The sweep's configuration (solver label, grid, final denoise) that ``diffsolve.defaults.default_run``
    picks for ``n`` evaluations on the schedule family: the rule as the library implements it."""
    run = default_run(n, ds.make_schedule(family))
    name, options = parse_solver_spec(run.solver)
    label = next(k for k, v in SOLVERS.items() if v == (name, options))
    return ("afs_" if run.analytic_first_step else "") + label, run.grid, run.denoise_final


def _without_afs(cfg: tuple) -> tuple:
    return (cfg[0].removeprefix("afs_"), *cfg[1:])


def _with_afs(cfg: tuple) -> tuple:
    return ("afs_" + cfg[0].removeprefix("afs_"), *cfg[1:])


def _deis_up_to(k: int):
    """The rule of 2026-12-06 (:func:`_before_deis_karras`) with ``deis`` up to ``k`` evaluations and
    UniPC-3 above (EDM aside): k = 10 is the former threshold."""
    small = ds.defaults.SMALL_BUDGET

    def rule(n: int, s: str) -> tuple:
        cfg = _before_deis_karras(n, s)
        if s == "edm" or not min(k, small) < n <= max(k, small):
            return cfg
        return (cfg[0].replace("deis3", "unipc3") if n > k else cfg[0].replace("unipc3", "deis3"), *cfg[1:])
    return rule


def _before_karras_afs(n: int, s: str) -> tuple:
    """The default rule of 2026-12-07 before the analytic first step joined the Karras piece (at 7-9
    evaluations on the DDPM and cosine schedules, ``KARRAS_ANALYTIC_UP_TO``)."""
    cfg = library_default(n, s)
    return _without_afs(cfg) if cfg[0] == "afs_deis3_nolof" else cfg


def _karras_afs_to_12(n: int, s: str) -> tuple:
    """The first candidate, not adopted: the analytic first step with the Karras piece at 7-12 evaluations on
    the DDPM and cosine schedules."""
    cfg = _before_karras_afs(n, s)
    return _with_afs(cfg) if cfg[0] == "deis3_nolof" and s in ("ddpm", "cosine") else cfg


def _before_deis_karras(n: int, s: str) -> tuple:
    """The default rule until 2026-12-07: ``deis`` (its last steps of lower order) on ``log_snr`` at 7-12
    evaluations, and on EDM schedules at 7-20 on ``karras`` with the final denoise."""
    cfg = _before_karras_afs(n, s)
    if cfg[0] != "deis3_nolof":
        return cfg
    return ("deis3", "karras", True) if s == "edm" else ("deis3", "log_snr", False)


def _deis4_candidate(n: int, s: str) -> tuple:
    """A candidate tried on 2026-12-07 and not adopted (the digits model: 3.4x the error): DEIS-4 to the end
    with the corrected start on log_snr at 7-15 evaluations (with the analytic first step on flow
    schedules up to 20), EDM as the measured default."""
    cfg = library_default(n, s)
    if s == "edm" or not 6 < n <= 15:
        return cfg
    return ("afs_" if s == "flow" else "") + "deis4_nolof_cs", "log_snr", False


# simple rules (budget n, schedule s) -> configuration, compared on both sets; "measured default" is
# the one diffsolve.defaults implements (read from it, not restated)
RULES = {
    "former default: dpmpp_2m, log_snr, final denoise": lambda n, s: ("dpmpp_2m", "log_snr", True),
    "dpmpp_2m, log_snr, no final denoise": lambda n, s: ("dpmpp_2m", "log_snr", False),
    "deis3 everywhere": lambda n, s: ("deis3", "log_snr", False),
    "unipc3 everywhere": lambda n, s: ("unipc3", "log_snr", False),
    "deis3 <= 10 < unipc3": lambda n, s: ("deis3" if n <= 10 else "unipc3", "log_snr", False),
    "deis3 <= 10 < unipc3, final denoise > 20": lambda n, s: ("deis3" if n <= 10 else "unipc3", "log_snr", n > 20),
    "deis3 <= 10 < unipc3, final denoise > 20, EDM on karras": lambda n, s: ("deis3", "karras", False)
        if s == "edm" else ("deis3" if n <= 10 else "unipc3", "log_snr", n > 20),
    "unipc <= 10 < unipc3": lambda n, s: ("unipc" if n <= 10 else "unipc3", "log_snr", False),
    "unipc_nolof <= 6 < deis3 <= 10 < unipc3, final denoise > 20":
        lambda n, s: ("unipc_nolof" if n <= 6 else "deis3" if n <= 10 else "unipc3", "log_snr", n > 20),
    "dpmpp_2m_nolof <= 6 < deis3 <= 10 < unipc3, final denoise > 20":
        lambda n, s: ("dpmpp_2m_nolof" if n <= 6 else "deis3" if n <= 10 else "unipc3", "log_snr", n > 20),
    "the same, EDM deis3 karras +x̂0 for 7-20 (the default before the analytic first step)":
        lambda n, s: _without_afs(_deis_up_to(10)(n, s)),
    "the same with the analytic first step <= 6": lambda n, s: _deis_up_to(10)(n, s)
        if n <= 6 else _without_afs(_deis_up_to(10)(n, s)),
    "the same, and on flow schedules <= 20 (the default until deis3 went to 12)": _deis_up_to(10),
    "the same, deis3 <= 12 (the default until 2026-12-07)": lambda n, s: _before_deis_karras(n, s),
    "the same with the analytic first step <= 10": lambda n, s: _with_afs(_before_deis_karras(n, s))
        if n <= 10 else _before_deis_karras(n, s),
    "the same with the analytic first step <= 20": lambda n, s: _with_afs(_before_deis_karras(n, s))
        if n <= 20 else _before_deis_karras(n, s),
    "tried: deis4_nolof_cs log_snr <= 15 (flow: with the analytic first step), EDM deis3_nolof karras":
        lambda n, s: _deis4_candidate(n, s),
    "deis3_nolof karras at 7-12 (EDM 7-20), flow as before (the default until the analytic first step joined it)":
        lambda n, s: _before_karras_afs(n, s),
    "measured default: the same with the analytic first step at 7-9 on DDPM and cosine":
        lambda n, s: library_default(n, s),
    "deis3 <= 8 < unipc3": lambda n, s: ("deis3" if n <= 8 else "unipc3", "log_snr", False),
}


DEFAULT_RULE = "measured default: the same with the analytic first step at 7-9 on DDPM and cosine"


def _rule_regret(cells, rule, problems, schedules, budgets) -> float:
    logs = [math.log(cell[rule(n, s)] / min(cell.values()))
            for n in budgets for p in problems for s in schedules
            if (cell := cells.get((p, s, n))) and rule(n, s) in cell]
    return math.exp(sum(logs) / len(logs)) if logs else float("nan")


def rules_table(cells, budgets, schedules=tuple(SCHEDULES)):
    """Each simple rule's geometric-mean error over the best configuration of each cell."""
    low, high = [n for n in budgets if n <= 10], [n for n in budgets if n > 10]
    print("\n## Simple rules (geometric mean of error / best configuration of each cell)\n")
    print("| rule | choice set | held-out set | held-out, NFE <= 10 | held-out, NFE > 10 |")
    print("|---|---:|---:|---:|---:|")
    for name, rule in RULES.items():
        vals = [_rule_regret(cells, rule, CHOICE, schedules, budgets)] + [
            _rule_regret(cells, rule, HELD_OUT, schedules, b) for b in (budgets, low, high)]
        print(f"| {name} | " + " | ".join(f"{v:.2f}" for v in vals) + " |")


def family_table(cells, budgets, schedules=tuple(SCHEDULES)):
    """Per schedule family and budget range: the rule without the EDM exception against the
    exception's configuration (deis3 karras +x̂0), geometric mean of error / best configuration."""
    plain = RULES["dpmpp_2m_nolof <= 6 < deis3 <= 10 < unipc3, final denoise > 20"]
    exception = lambda n, s: ("deis3", "karras", True)  # noqa: E731
    ranges = {"7-10": [n for n in budgets if 6 < n <= 10], "11-20": [n for n in budgets if 10 < n <= 20]}
    ranges["7-20"] = ranges["7-10"] + ranges["11-20"]
    print("\n## Per family, 7-20 evaluations: the plain rule against deis3 karras +x̂0 "
          "(error / best configuration; choice set, held-out set)\n")
    print("| family | budgets | plain rule: choice | held out | deis3 karras +x̂0: choice | held out |")
    print("|---|---|---:|---:|---:|---:|")
    for s in schedules:
        for name, bs in ranges.items():
            vals = [_rule_regret(cells, rule, probs, (s,), bs)
                    for rule in (plain, exception) for probs in (CHOICE, HELD_OUT)]
            print(f"| {s} | {name} | " + " | ".join(f"{v:.2f}" for v in vals) + " |")


def afs_family_table(cells, schedules=tuple(SCHEDULES)):
    """Per schedule family and budget range above 6: the rule's configuration with the analytic first
    step against the same without it (geometric mean of error / best configuration of each cell)."""
    print("\n## Per family: the rule's configuration without and with the analytic first step "
          "(error / best configuration; choice set, held-out set)\n")
    print("| family | budgets | without: choice | held out | with: choice | held out |")
    print("|---|---|---:|---:|---:|---:|")
    for s in schedules:
        for budgets in ((8, 10), (12, 15, 20)):
            vals = [_rule_regret(cells, lambda n, f: change(library_default(n, f)), problems, (s,), budgets)
                    for change in (_without_afs, _with_afs) for problems in (CHOICE, HELD_OUT)]
            print(f"| {s} | {', '.join(map(str, budgets))} | " + " | ".join(f"{v:.2f}" for v in vals) + " |")


def _fmt_cfg(cfg) -> str:
    label, grid, df = cfg
    return f"{label} {grid}{' +x̂0' if df else ''}"


def digits_check(budgets=(4, 5, 6, 10, 20, 50), n: int = 256):
    """The trained digits model (never part of the sweep): today's default call (a float32 state for
    this float32 network) against the former default (dpmpp_2m with the final denoise, float64
    state), both against a tight float64 solve to t_min then x̂0 from the same start; and, where the
    default call takes the analytic first step, the same call without it."""
    m = ds.zoo.load("digits")
    seeds = list(range(1000, 1000 + n))
    print("\n## The bundled digits model (trained network, not in the sweep)\n")
    print("| NFE | default call | rms | former default | rms | ratio | without the analytic first step | rms |")
    print("|---:|---|---:|---|---:|---:|---|---:|")
    for nfe in budgets:
        new = ds.sample(m, seeds=seeds, nfe=nfe)
        old = ds.sample(m, seeds=seeds, nfe=nfe, solver="dpmpp_2m", denoise_final=True, dtype=F64)
        ref = ode_reference(m, old.x_init, float(old.t[0]), m.schedule.t_min, rtol=1e-7, atol=1e-7,
                            denoise_final=True)
        e_new, e_old = _rms(new.x, ref), _rms(old.x, ref)
        run = default_run(nfe, m.schedule)
        label = (f"{'analytic first step, ' if run.analytic_first_step else ''}{run.solver} {run.grid}"
                 f"{' +x̂0' if run.denoise_final else ''}")
        plain = "-"
        if run.analytic_first_step:
            plain = f"{_rms(ds.sample(m, seeds=seeds, nfe=nfe, analytic_first_step=False).x, ref):.3g}"
        print(f"| {nfe} | {label} | {e_new:.3g} | dpmpp_2m +x̂0 | {e_old:.3g} | {e_new / e_old:.2f} | "
              f"{'the same call, every evaluation by the network' if plain != '-' else '-'} | {plain} |")


FRESH = {  # problems no default was chosen or judged on, for --fresh
    "ring5": (lambda: ds.GaussianMixture.ring(n_modes=5, radius=3.0, std=0.2), 512),
    "mix32": (lambda: ds.GaussianMixture.random(d=32, n_modes=4, seed=99), 256),
    "img64": (lambda: ds.GaussianMixture.image_gaussian((1, 8, 8), exponent=2.5, seed=7), 256),
}


def fresh_check(budgets=(8, 10, 12, 15, 20), schedule="edm", seed=4321):
    """The bare call ``ds.sample(den, x, nfe=N)`` on an EDM schedule against the same budget under
    the rule without the EDM exception (deis ≤ 12 < unipc order 3, log_snr, no final denoise), on
    three problems that neither chose nor judged the rule, from fresh start points."""
    print(f"\n## Fresh problems under {schedule}: the default call against the rule without the EDM exception\n")
    print("| problem | NFE | default call | rms | without the exception | rms | ratio |")
    print("|---|---:|---|---:|---|---:|---:|")
    logs = []
    for name, (make, batch) in FRESH.items():
        gm = make()
        sch = ds.make_schedule(schedule)
        den = gm.denoiser(sch, SCHEDULES[schedule])
        z = torch.randn(batch, *gm.shape, dtype=F64, generator=torch.Generator().manual_seed(seed))
        x = float(sch.sigma(torch.tensor(sch.t_max, dtype=F64))) * z
        ref = _reference(gm, sch, z, sch.t_max)
        for n in budgets:
            with torch.no_grad():
                new = ds.sample(den, x, nfe=n)
                plain = "deis" if n <= ds.defaults.SMALL_BUDGET else "unipc:order=3"
                old = ds.sample(den, x, nfe=n, solver=plain, grid="log_snr", denoise_final=n > 20)
            e_new, e_old = _rms(new.x, ref), _rms(old.x, ref)
            logs.append(math.log(e_new / e_old))
            run = default_run(n, sch)
            label = f"{new.solver.name} {run.grid}{' +x̂0' if run.denoise_final else ''}"
            print(f"| {name} | {n} | {label} | {e_new:.3g} | "
                  f"{plain} log_snr | {e_old:.3g} | {e_new / e_old:.2f} |")
    print(f"\nGeometric mean of the ratio: {math.exp(sum(logs) / len(logs)):.2f}")


def _trained_targets(m):
    """A trained model's 256 start points at t_max (seeds 1000-1255) and their float64 solves to t_min then
    x̂0 at rtol = atol = 1e-7, the checks' reference on the digits models."""
    x = float(m.schedule.sigma(m.schedule.t_max)) * ds.NoiseSource(256, m.shape, seeds=range(1000, 1256)).randn()
    return x, ode_reference(m, x, m.schedule.t_max, m.schedule.t_min, rtol=1e-7, atol=1e-7, denoise_final=True)


# a sweep configuration (label, grid, final denoise) as sample()'s arguments
def _run_config(den, x, n: int, cfg: tuple):
    label, grid, df = cfg
    solver, opts = SOLVERS[label.removeprefix("afs_")]
    with torch.no_grad():
        return ds.sample(den, x, nfe=n, solver=ds.solvers.get_solver(solver, **opts), grid=grid, denoise_final=df,
                         analytic_first_step=label.startswith("afs_"))


def deis_karras_check(budgets=(7, 8, 9, 10, 11, 12, 14, 20), seed=4321):
    """The default of 2026-12-07 (``deis:lower_order_final=false`` on ``karras`` at 7-12 evaluations, on EDM
    schedules at 7-20 without the final denoise) and the candidate not adopted (:func:`_deis4_candidate`),
    each over the default before it (:func:`_before_deis_karras`): on the sweep, on the three fresh problems
    under the four families (their own start points; budgets off the sweep's among them) and on the trained
    digits model at 7-12 (seeds 1000-1255 against a tight float64 solve). The rule, written down before the
    fresh problems and the digits model ran: adopt if the fresh geometric mean is below 0.9 and the digits
    model's at most 1.0."""
    sweep = _table(_load(OUT))
    rules = {"default": library_default, "deis4 candidate": _deis4_candidate}
    print("\n## 7-20 evaluations on the sweep: error / best configuration of each cell (geometric mean)\n")
    print("| rule | budgets | choice set | held out |\n|---|---|---:|---:|")
    for name, rule in {"before": _before_deis_karras, **rules}.items():
        for bs in ((8, 10, 12), (15, 20)):
            vals = [_rule_regret(sweep, rule, probs, tuple(SCHEDULES), bs) for probs in (CHOICE, HELD_OUT)]
            print(f"| {name} | {', '.join(map(str, bs))} | " + " | ".join(f"{v:.2f}" for v in vals) + " |")
    for name, rule in rules.items():
        print(f"\n## {name} / the default before it: fresh problems\n")
        print("| problem/schedule | " + " | ".join(f"NFE {n}" for n in budgets) + " |")
        print("|---|" + "---:|" * len(budgets))
        logs = []
        for pname, (make, batch) in FRESH.items():
            gm = make()
            z = torch.randn(batch, *gm.shape, dtype=F64, generator=torch.Generator().manual_seed(seed))
            for sname, prediction in SCHEDULES.items():
                sch = ds.make_schedule(sname)
                den, x = gm.denoiser(sch, prediction), float(sch.sigma(torch.tensor(sch.t_max, dtype=F64))) * z
                ref = _reference(gm, sch, z, sch.t_max)
                r = [_rms(_run_config(den, x, n, rule(n, sname)).x, ref)
                     / _rms(_run_config(den, x, n, _before_deis_karras(n, sname)).x, ref) for n in budgets]
                logs += [math.log(v) for v in r]
                print(f"| {pname}/{sname} | " + " | ".join(f"{v:.2f}" for v in r) + " |", flush=True)
        print(f"| geometric mean, fresh | {math.exp(sum(logs) / len(logs)):.2f} |")
        m = ds.zoo.load("digits")
        x, ref = _trained_targets(m)
        r = [_rms(_run_config(m, x.float(), n, rule(n, "cosine")).x, ref)
             / _rms(_run_config(m, x.float(), n, _before_deis_karras(n, "cosine")).x, ref) for n in range(7, 13)]
        print("\n| digits (trained), NFE | " + " | ".join(map(str, range(7, 13))) + " | geometric mean |")
        print("|---|" + "---:|" * 7)
        print("| ratio | " + " | ".join(f"{v:.2f}" for v in r) + f" | {math.exp(sum(map(math.log, r)) / len(r)):.2f} |",
              flush=True)
    _deis_karras_off_sweep()
    _deis_karras_unseen()


def _deis_karras_unseen(budgets=(7, 9, 10, 12, 16), seed=98765):
    """The bare call over the default before 2026-12-07 on three problems made after the rule was adopted
    (in the final review), from start points of a seed no check had used, DDPM, cosine and EDM."""
    problems = {"mix12 (7 modes, seed 77)": ds.GaussianMixture.random(d=12, n_modes=7, seed=77),
                "mix96 (4 modes, seed 123)": ds.GaussianMixture.random(d=96, n_modes=4, seed=123),
                "img 2x8x8 (exponent 2, seed 21)": ds.GaussianMixture.image_gaussian((2, 8, 8), exponent=2.0, seed=21)}
    print("\n## The default call / the default before 2026-12-07 on problems made after the change\n")
    print("| problem | schedule | " + " | ".join(f"NFE {n}" for n in budgets) + " |")
    print("|---|---|" + "---:|" * len(budgets))
    logs = []
    for pname, gm in problems.items():
        z = torch.randn(200, *gm.shape, dtype=F64, generator=torch.Generator().manual_seed(seed))
        for sname in ("ddpm", "cosine", "edm"):
            sch = ds.make_schedule(sname)
            den, x = gm.denoiser(sch, SCHEDULES[sname]), float(sch.sigma(torch.tensor(sch.t_max, dtype=F64))) * z
            ref = _reference(gm, sch, z, sch.t_max)
            with torch.no_grad():
                r = [_rms(ds.sample(den, x, nfe=n).x, ref)
                     / _rms(_run_config(den, x, n, _before_deis_karras(n, sname)).x, ref) for n in budgets]
            logs += [math.log(v) for v in r]
            print(f"| {pname} | {sname} | " + " | ".join(f"{v:.2f}" for v in r) + " |", flush=True)
    print(f"| geometric mean | | {math.exp(sum(logs) / len(logs)):.2f} |" + " |" * (len(budgets) - 1))


def _deis_karras_off_sweep(budgets=(7, 8, 10, 12), seed=1234):
    """The default call over the default before 2026-12-07 (``deis`` on log_snr) on two VP schedules outside
    the sweep, the nine problems of the choice, held-out and fresh sets from the default call's start:
    Stable Diffusion's scaled-linear betas (α/σ = 0.068 at t_max) and the same rescaled to zero terminal SNR
    (started at α/σ = 0.001 by ``default_start``, below ``KARRAS_MIN_SIGNAL``: the former rule runs there)."""
    b = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=F64) ** 2
    schedules = {"SD betas": (ds.DDPMSchedule(betas=b), "eps"), "zero-SNR VP": _from_sigma_one()["zero-SNR VP"]}
    print("\n## The default call / the default before 2026-12-07 on VP schedules outside the sweep\n")
    print("| schedule | problem | " + " | ".join(f"NFE {n}" for n in budgets) + " |")
    print("|---|---|" + "---:|" * len(budgets))
    for sname, (sch, prediction) in schedules.items():
        t0 = ds.defaults.default_start(sch) or sch.t_max
        logs = []
        for pname, (make, batch) in {**{k: MIXTURES[k] for k in CHOICE + HELD_OUT}, **FRESH}.items():
            gm = make()
            den = gm.denoiser(sch, prediction)
            z = torch.randn(batch, *gm.shape, dtype=F64, generator=torch.Generator().manual_seed(seed))
            x, ref = float(sch.sigma(torch.tensor(t0, dtype=F64))) * z, _reference(gm, sch, z, t0)
            with torch.no_grad():
                r = [_rms(ds.sample(den, x, nfe=n).x, ref)
                     / _rms(ds.sample(den, x, nfe=n, solver="deis", grid="log_snr", denoise_final=False).x, ref)
                     for n in budgets]
            logs += [math.log(v) for v in r]
            print(f"| {sname} | {pname} | " + " | ".join(f"{v:.2f}" for v in r) + " |", flush=True)
        print(f"| {sname} | geometric mean | {math.exp(sum(logs) / len(logs)):.2f} |" + " |" * (len(budgets) - 1))


def _ratio_rows(problems: dict, seed: int, batch: int | None, budgets, rule, base, schedules=("ddpm", "cosine")):
    """Print one row per problem and schedule of error(rule) / error(base) at each budget, from ``batch`` start
    points of ``seed`` (a problem's own batch where None) against the σ → 0 reference; returns the ratios."""
    out = []
    for pname, made in problems.items():
        gm, rows = made if isinstance(made, tuple) else (made, batch)
        gm = gm() if callable(gm) else gm
        z = torch.randn(batch or rows, *gm.shape, dtype=F64, generator=torch.Generator().manual_seed(seed))
        for sname in schedules:
            sch = ds.make_schedule(sname)
            den, x = gm.denoiser(sch, SCHEDULES[sname]), float(sch.sigma(torch.tensor(sch.t_max, dtype=F64))) * z
            ref = _reference(gm, sch, z, sch.t_max)
            r = [_rms(_run_config(den, x, n, rule(n, sname)).x, ref)
                 / _rms(_run_config(den, x, n, base(n, sname)).x, ref) for n in budgets]
            out += r
            print(f"| {pname} | {sname} | " + " | ".join(f"{v:.2f}" for v in r) + " |", flush=True)
    return out


def _geo_worst(ratios) -> str:
    return f"geometric mean {math.exp(sum(map(math.log, ratios)) / len(ratios)):.2f}, worst cell {max(ratios):.2f}"


def karras_afs_check(seed=4321):
    """The analytic first step joined to the Karras piece on the DDPM and cosine schedules, over the default
    before it (:func:`_before_karras_afs`). First candidate, at 7-12 evaluations (:func:`_karras_afs_to_12`),
    judged by a rule written before it ran (fresh problems' geometric mean < 0.9 and no cell above 2.0, digits'
    at most 1.0 and no budget above 1.25, the problems of the final review < 1.0): it failed on the worst
    cell. The adopted one, at 7-9 (the library's default), judged by a rule written after the first's figures
    and before its own: on three problems made for it and a seed no check had used (55555), geometric mean
    < 0.9 and no cell above 1.5."""
    budgets = (7, 8, 9, 10, 11, 12)
    head = ("| problem | schedule | " + " | ".join(f"NFE {n}" for n in budgets) + " |\n|---|---|"
            + "---:|" * len(budgets))
    print("\n## The analytic first step with the Karras piece at 7-12 (not adopted) / the default before it\n")
    print(head)
    fresh = _ratio_rows(FRESH, seed, None, budgets, _karras_afs_to_12, _before_karras_afs)
    print(f"\nFresh problems: {_geo_worst(fresh)}")
    m = ds.zoo.load("digits")
    x, ref = _trained_targets(m)
    r = [_rms(_run_config(m, x.float(), n, _karras_afs_to_12(n, "cosine")).x, ref)
         / _rms(_run_config(m, x.float(), n, _before_karras_afs(n, "cosine")).x, ref) for n in budgets]
    print("\n" + head.replace("problem | schedule", "model | schedule"))
    print("| digits (trained) | cosine | " + " | ".join(f"{v:.2f}" for v in r) + f" |\n\nDigits: {_geo_worst(r)}\n")
    print(head)
    unseen = _ratio_rows({"mix12 (7 modes, seed 77)": ds.GaussianMixture.random(d=12, n_modes=7, seed=77),
                          "mix96 (4 modes, seed 123)": ds.GaussianMixture.random(d=96, n_modes=4, seed=123),
                          "img 2x8x8 (exponent 2, seed 21)": ds.GaussianMixture.image_gaussian((2, 8, 8), exponent=2.0,
                                                                                                seed=21)},
                         98765, 200, budgets, _karras_afs_to_12, _before_karras_afs)
    print(f"\nThe final review's problems (seed 98765): {_geo_worst(unseen)}")
    print("\n## The adopted default (the analytic first step with the Karras piece at 7-9) / the default before it\n")
    print(head.replace(" | NFE 10 | NFE 11 | NFE 12", "").replace("---:|" * len(budgets), "---:|" * 3))
    new = _ratio_rows({"mix24 (6 modes, seed 314)": ds.GaussianMixture.random(d=24, n_modes=6, seed=314),
                       "mix160 (3 modes, seed 2718)": ds.GaussianMixture.random(d=160, n_modes=3, seed=2718),
                       "img 3x6x6 (exponent 1.5, seed 55)": ds.GaussianMixture.image_gaussian((3, 6, 6), exponent=1.5,
                                                                                              seed=55)},
                      55555, 256, (7, 8, 9), library_default, _before_karras_afs)
    print(f"\nProblems made for this judgement (seed 55555): {_geo_worst(new)}")


# a trained rectified-flow network to judge flow-schedule defaults on (not bundled; 3.4 MB): made by
# python examples/train_digits.py --schedule flow --threads 1 --eval-n 500 --out benchmarks/results/models
FLOW_MODEL = os.path.join(os.path.dirname(OUT), "models", "digits_flow.safetensors")


def _flow_deis4(n: int, s: str) -> tuple:
    """A candidate for flow schedules (2026-12-07): DEIS-4 to the end with the corrected start and the
    analytic first step, on log_snr, at 7-20 evaluations (the choice set's flow winner at 8, 10, 12, 20)."""
    cfg = library_default(n, s)
    return ("afs_deis4_nolof_cs", "log_snr", False) if s == "flow" and 6 < n <= 20 else cfg


def flow_deis4_check(budgets=(7, 8, 9, 10, 11, 12, 14, 20), seed=4321):
    """The flow candidate (:func:`_flow_deis4`) over the default call's flow rule: on the sweep's flow cells,
    on the three fresh problems under the flow schedule and on a trained flow-matching network (the digits
    network trained as a rectified flow, :data:`FLOW_MODEL`; seeds 1000-1255 against a tight float64
    solve). Rule, written before the trained network ran: adopt if the held-out flow cells and the fresh
    problems gain (geometric mean below 0.9 on the fresh ones) and the trained network's geometric mean is
    at most 1.0."""
    sweep = _table(_load(OUT))
    print("\n## Flow schedules, 8-20 evaluations: error / best configuration of each cell (geometric mean)\n")
    print("| rule | choice set | held out |\n|---|---:|---:|")
    for name, rule in (("default", library_default), ("DEIS-4 candidate", _flow_deis4)):
        vals = [_rule_regret(sweep, rule, probs, ("flow",), (8, 10, 12, 15, 20)) for probs in (CHOICE, HELD_OUT)]
        print(f"| {name} | " + " | ".join(f"{v:.2f}" for v in vals) + " |")
    print("\n## DEIS-4 candidate / the default call, flow schedule\n")
    print("| problem | " + " | ".join(f"NFE {n}" for n in budgets) + " | geometric mean |")
    print("|---|" + "---:|" * (len(budgets) + 1))
    sch = ds.make_schedule("flow")
    logs = []
    for pname, (make, batch) in FRESH.items():
        gm = make()
        z = torch.randn(batch, *gm.shape, dtype=F64, generator=torch.Generator().manual_seed(seed))
        den, x = gm.denoiser(sch, "velocity"), float(sch.sigma(torch.tensor(sch.t_max, dtype=F64))) * z
        ref = _reference(gm, sch, z, sch.t_max)
        r = [_rms(_run_config(den, x, n, _flow_deis4(n, "flow")).x, ref)
             / _rms(_run_config(den, x, n, library_default(n, "flow")).x, ref) for n in budgets]
        logs += [math.log(v) for v in r]
        print(f"| {pname} | " + " | ".join(f"{v:.2f}" for v in r) + f" | {_geo(r):.2f} |", flush=True)
    print("| fresh, all | " + " | " * (len(budgets) - 1) + f" | {math.exp(sum(logs) / len(logs)):.2f} |")
    if not os.path.exists(FLOW_MODEL):
        print(f"\n(no trained flow model at {FLOW_MODEL}: make it with python examples/train_digits.py --schedule "
              f"flow --threads 1 --eval-n 500 --out {os.path.dirname(FLOW_MODEL)}, ~5 min)")
        return
    m = ds.zoo.load(FLOW_MODEL)
    x, ref = _trained_targets(m)
    err = {n: [_rms(_run_config(m, x.float(), n, rule(n, "flow")).x, ref) for rule in (library_default, _flow_deis4)]
           for n in budgets}
    r = [b / a for a, b in err.values()]
    print("| digits_flow (trained) | " + " | ".join(f"{v:.2f}" for v in r) + f" | {_geo(r):.2f} |")
    print("| digits_flow, default call rms | " + " | ".join(f"{a:.3g}" for a, _ in err.values()) + " | |", flush=True)
    # the analytic first step on flow schedules up to 20 evaluations was chosen without a trained flow network
    print("\n## digits_flow: the default call / the same without the analytic first step\n")
    afs_budgets = (4, 5, 6, 8, 10, 12, 15, 20)
    print("| NFE | " + " | ".join(map(str, afs_budgets)) + " | geometric mean |")
    print("|---|" + "---:|" * (len(afs_budgets) + 1))
    r = [_rms(ds.sample(m, x.float(), nfe=n).x, ref) / _rms(ds.sample(m, x.float(), nfe=n, analytic_first_step=False).x,
                                                            ref) for n in afs_budgets]
    print("| ratio | " + " | ".join(f"{v:.2f}" for v in r) + f" | {_geo(r):.2f} |", flush=True)
    # heun steps in t on flow schedules (variable="auto"), diffusers' FlowMatchHeun form, not in EDM's s = σ/α
    print("\n## digits_flow: heun in t / heun in s = σ/α, with the final denoise\n")
    heun_budgets = (7, 11, 15, 21)
    print("| grid | " + " | ".join(f"NFE {n}" for n in heun_budgets) + " |\n|---|" + "---:|" * len(heun_budgets))
    for grid in ("log_snr", "time", "karras"):
        r = [_rms(ds.sample(m, x.float(), solver="heun:variable=t", nfe=n, grid=grid, denoise_final=True).x, ref)
             / _rms(ds.sample(m, x.float(), solver="heun:variable=s", nfe=n, grid=grid, denoise_final=True).x, ref)
             for n in heun_budgets]
        print(f"| {grid} | " + " | ".join(f"{v:.2f}" for v in r) + " |", flush=True)


def small_budget_check(budgets=(10, 11, 12, 13, 14, 15), seed=4321):
    """Where ``deis`` should hand over to UniPC-3: the two on the default call's grid, end and first
    step (``deis`` / ``unipc:order=3``) at budgets around the threshold, on the three fresh problems
    (their own start points) under DDPM, cosine and flow, and on the trained digits model (256 seeds
    against a tight float64 solve); marked: the one the default call runs."""
    sweep = _table(_load(OUT))
    rules = {"deis3 <= 10 (former)": _deis_up_to(10), "deis3 <= 12 (default until 2026-12-07)": _before_deis_karras,
             "deis3 <= 15": _deis_up_to(15)}
    print("\n## The threshold on the sweep: the rule's error / best configuration of each cell at N = 12 and 15\n")
    print("| rule | choice set, 12 | held out, 12 | choice set, 15 | held out, 15 |")
    print("|---|---:|---:|---:|---:|")
    for name, rule in rules.items():
        vals = [_rule_regret(sweep, rule, probs, tuple(SCHEDULES), [n])
                for n in (12, 15) for probs in (CHOICE, HELD_OUT)]
        print(f"| {name} | " + " | ".join(f"{v:.2f}" for v in vals) + " |")
    print("\n## deis / unipc:order=3 around the threshold (fresh problems; digits; * = the default runs deis)\n")
    print("| problem/schedule | " + " | ".join(f"NFE {n}" for n in budgets) + " |")
    print("|---|" + "---:|" * len(budgets))
    logs = defaultdict(list)

    def ratio(den, x, ref, n):
        run = default_run(n, den.schedule)
        with torch.no_grad():
            e = [_rms(ds.sample(den, x, nfe=n, solver=solver, grid=run.grid, denoise_final=run.denoise_final,
                                analytic_first_step=run.analytic_first_step).x, ref)
                 for solver in ("deis", "unipc:order=3")]
        return e[0] / e[1], f"{e[0] / e[1]:.2f}{'*' if run.solver == 'deis' else ''}"

    for name, (make, batch) in FRESH.items():
        gm = make()
        z = torch.randn(batch, *gm.shape, dtype=F64, generator=torch.Generator().manual_seed(seed))
        for sname in ("ddpm", "cosine", "flow"):
            sch = ds.make_schedule(sname)
            den = gm.denoiser(sch, SCHEDULES[sname])
            x = float(sch.sigma(torch.tensor(sch.t_max, dtype=F64))) * z
            ref = _reference(gm, sch, z, sch.t_max)
            cells = []
            for n in budgets:
                r, cell = ratio(den, x, ref, n)
                logs[n].append(math.log(r))
                cells.append(cell)
            print(f"| {name}/{sname} | " + " | ".join(cells) + " |", flush=True)
    print("| geometric mean, fresh | " + " | ".join(f"{math.exp(sum(v) / len(v)):.2f}" for v in logs.values()) + " |")
    m = ds.zoo.load("digits")
    x, ref = _trained_targets(m)
    print("| digits (trained) | " + " | ".join(ratio(m, x.float(), ref, n)[1] for n in budgets) + " |", flush=True)


def fresh_afs_check(budgets=(4, 5, 6, 8, 10, 12, 15, 20), seed=4321):
    """Where does the analytic first step pay? On the three fresh problems (which neither chose nor
    judged it) under the four schedule families, from fresh start points: the default call's
    configuration with the analytic first step over the same without it, per budget."""
    print("\n## Fresh problems: the default call's configuration with the analytic first step / without it\n")
    print("| problem/schedule | " + " | ".join(f"NFE {n}" for n in budgets) + " |")
    print("|---|" + "---:|" * len(budgets))
    logs = defaultdict(list)
    for name, (make, batch) in FRESH.items():
        gm = make()
        z = torch.randn(batch, *gm.shape, dtype=F64, generator=torch.Generator().manual_seed(seed))
        for sname, prediction in SCHEDULES.items():
            sch = ds.make_schedule(sname)
            den = gm.denoiser(sch, prediction)
            x = float(sch.sigma(torch.tensor(sch.t_max, dtype=F64))) * z
            ref = _reference(gm, sch, z, sch.t_max)
            vals = []
            for n in budgets:
                with torch.no_grad():
                    e = [_rms(ds.sample(den, x, nfe=n, analytic_first_step=a).x, ref) for a in (True, False)]
                logs[n].append(math.log(e[0] / e[1]))
                vals.append(f"{e[0] / e[1]:.2f}")
            print(f"| {name}/{sname} | " + " | ".join(vals) + " |", flush=True)
    print("| geometric mean | " + " | ".join(f"{math.exp(sum(v) / len(v)):.2f}" for v in logs.values()) + " |")


def vp_karras_check(budgets=(8, 10, 12), seed=4321):
    """A candidate for 7-12 evaluations on the VP families (DDPM, cosine): ``deis`` on the ``karras`` grid
    with the final denoise and the analytic first step, over the default call, on the three fresh problems
    (their own start points) and the trained digits model (seeds 1000-1255 against a tight float64 solve).
    Its rule was written down before the run: adopt if the fresh geometric mean is below 0.9 and the
    digits model's at most 1.0."""
    sweep = _table(_load(OUT))
    print("\n## VP, 7-12 evaluations, on the sweep: error / best configuration of each cell (geometric mean)\n")
    print("| family | default: choice | held out | afs_deis3 karras +x̂0: choice | held out |")
    print("|---|---:|---:|---:|---:|")
    for s in ("ddpm", "cosine"):
        vals = [_rule_regret(sweep, rule, probs, (s,), budgets)
                for rule in (_before_deis_karras, lambda n, f: ("afs_deis3", "karras", True))
                for probs in (CHOICE, HELD_OUT)]
        print(f"| {s} | " + " | ".join(f"{v:.2f}" for v in vals) + " |")
    print("\n| problem/family | default | afs_deis3 karras +x̂0 |\n|---|---:|---:|")
    for prob in CHOICE + HELD_OUT:
        for s in ("ddpm", "cosine"):
            vals = [_rule_regret(sweep, rule, (prob,), (s,), budgets)
                    for rule in (_before_deis_karras, lambda n, f: ("afs_deis3", "karras", True))]
            print(f"| {prob}/{s} | " + " | ".join(f"{v:.2f}" for v in vals) + " |")
    print("\n## VP, 7-12 evaluations: deis karras +x̂0 with the analytic first step / the default call\n")
    print("| problem/schedule | " + " | ".join(f"NFE {n}" for n in budgets) + " |")
    print("|---|" + "---:|" * len(budgets))

    def ratios(den, x, ref):
        out = []
        for n in budgets:
            with torch.no_grad():
                cur = ds.sample(den, x, nfe=n, solver="deis", grid="log_snr", denoise_final=False)  # the default then
                cand = ds.sample(den, x, nfe=n, solver="deis", grid="karras", denoise_final=True,
                                 analytic_first_step=True)
            out.append(_rms(cand.x, ref) / _rms(cur.x, ref))
        return out

    logs = []
    for name, (make, batch) in FRESH.items():
        gm = make()
        z = torch.randn(batch, *gm.shape, dtype=F64, generator=torch.Generator().manual_seed(seed))
        for sname in ("ddpm", "cosine"):
            sch = ds.make_schedule(sname)
            x = float(sch.sigma(torch.tensor(sch.t_max, dtype=F64))) * z
            r = ratios(gm.denoiser(sch, SCHEDULES[sname]), x, _reference(gm, sch, z, sch.t_max))
            logs += [math.log(v) for v in r]
            print(f"| {name}/{sname} | " + " | ".join(f"{v:.2f}" for v in r) + " |", flush=True)
    print(f"| geometric mean, fresh | {math.exp(sum(logs) / len(logs)):.2f} | | |")
    m = ds.zoo.load("digits")
    x, ref = _trained_targets(m)
    r = ratios(m, x.float(), ref)
    print("| digits (trained) | " + " | ".join(f"{v:.2f}" for v in r) + " |")
    print(f"| geometric mean, digits | {math.exp(sum(map(math.log, r)) / len(r)):.2f} | | |", flush=True)


def afs_signal_check(budgets=(4, 5, 6), seed=1234):
    """Where the analytic first step applies: on Stable Diffusion's scaled-linear betas (α/σ = 0.068 at t_max,
    above the sweep's schedules), the default call's configuration at 4-6 evaluations with the analytic first
    step over the same without it, on the sweep's six problems (the rule keeps it only where the run starts
    at α/σ <= diffsolve.defaults.AFS_MAX_SIGNAL)."""
    b = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=F64) ** 2
    sch = ds.DDPMSchedule(betas=b)
    a, s = (float(v) for v in sch.alpha_sigma(sch.t_max))
    print(f"\n## The analytic first step on Stable Diffusion's betas (α/σ = {a / s:.3f} at t_max): with / without\n")
    print("| problem | " + " | ".join(f"NFE {n}" for n in budgets) + " |")
    print("|---|" + "---:|" * len(budgets))
    logs = []
    for name in CHOICE + HELD_OUT:
        make, batch = MIXTURES[name]
        gm = make()
        den = gm.denoiser(sch, "eps")
        z = torch.randn(batch, *gm.shape, dtype=F64, generator=torch.Generator().manual_seed(seed))
        ref = _reference(gm, sch, z, sch.t_max)
        r = []
        for n in budgets:
            with torch.no_grad():
                e = [_rms(ds.sample(den, s * z, nfe=n, solver="dpmpp_2m:lower_order_final=false", grid="log_snr",
                                    denoise_final=False, analytic_first_step=afs).x, ref) for afs in (True, False)]
            r.append(e[0] / e[1])
        logs += [math.log(v) for v in r]
        print(f"| {name} | " + " | ".join(f"{v:.2f}" for v in r) + " |", flush=True)
    print(f"| geometric mean | {math.exp(sum(logs) / len(logs)):.2f} | | |")


def _from_sigma_one():
    """The schedules that start at σ = 1 (or below START_LOG_SNR), with the prediction type to run them in:
    a flow schedule as a diffusers flow config gives it, and Stable Diffusion 2.x's betas rescaled to
    zero terminal SNR (diffusers computes the table; diffsolve starts it at ᾱ = 2^-24, as diffusers does)."""
    from diffsolve.adapters import schedule_from_diffusers

    zsnr, _ = schedule_from_diffusers(dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                           beta_schedule="scaled_linear", rescale_betas_zero_snr=True))
    return {"flow from σ = 1": (ds.FlowSchedule(t_max=1 - 1e-9), "velocity"), "zero-SNR VP": (zsnr, "v")}


def flow_start_check(budgets=(4, 5, 6, 8, 10, 15, 20, 30, 50), problems=CHOICE + HELD_OUT + tuple(FRESH)):
    """Schedules that start at σ = 1 (``_from_sigma_one``): the default call, whose grid starts at
    ``diffsolve.defaults.START_LOG_SNR`` after the exact flow of standard-normal data (docs/math.md
    (27.4)), against the same configuration on the same grid kind from t_max, both against the σ → 0
    limit of the exact ODE from t_max. The sweep's problems from its start points, and the fresh
    problems (``FRESH``) from theirs."""
    from diffsolve.grids import make_grid

    for label, (sch, prediction) in _from_sigma_one().items():
        print(f"\n## {label}: the default call / the same grid kind from t_max (RMS)\n")
        print("| problem | " + " | ".join(f"NFE {n}" for n in budgets) + " |")
        print("|---|" + "---:|" * len(budgets))
        logs = defaultdict(list)
        for name in problems:
            make, batch = {**MIXTURES, **FRESH}[name]
            gm = make()
            den = gm.denoiser(sch, prediction)
            seed = 4321 if name in FRESH else 1234
            z = torch.randn(batch, *gm.shape, dtype=F64, generator=torch.Generator().manual_seed(seed))
            x = float(sch.sigma(torch.tensor(sch.t_max, dtype=F64))) * z
            ref = _reference(gm, sch, z, sch.t_max)
            cells = []
            for n in budgets:
                run = default_run(n, sch)
                steps = ds.solvers.get_solver(run.solver).steps_for_nfe(n + run.analytic_first_step, run.denoise_final)
                with torch.no_grad():
                    new = ds.sample(den, x, nfe=n)
                    old = ds.sample(den, x, solver=run.solver, grid=make_grid(sch, steps, run.grid),
                                    denoise_final=run.denoise_final, analytic_first_step=run.analytic_first_step)
                assert new.nfe == old.nfe == n
                e_new, e_old = _rms(new.x, ref), _rms(old.x, ref)
                logs[n].append(math.log(e_new / e_old))
                cells.append(f"{e_new:.3g} / {e_old:.3g}")
            print(f"| {name}{' (fresh)' if name in FRESH else ''} | " + " | ".join(cells) + " |", flush=True)
        print("| geometric mean of the ratio | "
              + " | ".join(f"{math.exp(sum(v) / len(v)):.2f}" for v in logs.values()) + " |")


def tune_sigma_one_check(budgets=(5, 10), problems=tuple(FRESH), fresh=range(2000, 2256)):
    """``tune_steps``' bare call on the schedules that start at σ = 1 (``_from_sigma_one``), whose search
    starts at t_max (its grids are not moved to ``START_LOG_SNR``: the first step's length is one of the
    tuned parameters), against the bare ``sample`` call on the same fresh seeds and reference; the
    fresh problems (``FRESH``)."""
    print("\n## tune_steps on schedules from σ = 1: tuned grid / the default call (fresh seeds 2000-2255, RMS)\n")
    print("| schedule | problem | NFE | tuned grid (its start grid) | fresh rms | first step, σ | default call rms "
          "| tuned / default | s |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|")
    for label, (sch, prediction) in _from_sigma_one().items():
        for name in problems:
            gm = FRESH[name][0]()
            den = gm.denoiser(sch, prediction)
            for n in budgets:
                t0 = time.perf_counter()
                g = ds.tune_steps(den, nfe=n, progress=False, fresh=fresh, **PILOTS_OF_THEN)
                secs = time.perf_counter() - t0
                x = float(sch.sigma(torch.tensor(sch.t_max, dtype=F64))) * ds.NoiseSource(
                    len(fresh), gm.shape, seeds=list(fresh)).randn()
                ref = ode_reference(den, x, sch.t_max, sch.t_min, rtol=1e-8, atol=1e-8, denoise_final=True)
                with torch.no_grad():
                    d = ds.sample(den, x, nfe=n)
                e = _rms(d.x, ref)
                g_start = float(sch.sigma(torch.tensor(g.t[1], dtype=F64)))
                print(f"| {label} | {name} | {n} | {g.solver}{' +x̂0' if g.denoise_final else ''} ({g.init_grid}) | "
                      f"{g.fresh_error:.3g} | {g_start:.3g} | {e:.3g} | {g.fresh_error / e:.2f} | {secs:.0f} |",
                      flush=True)


def tune_check(budgets=(5, 10)):
    """tune_steps' bare call against its first defaults (dpmpp_2m with the final denoise, 64 plain pilots)
    on the digits model and on mix16 under DDPM: the error of the tuned grid on the same 256 fresh
    seeds (4096-4351, after the bare call's screened candidates) and the tuning time (one thread)."""
    import time

    models = {"digits": ds.zoo.load("digits"), "mix16/ddpm": _problem("mix16", "ddpm")[2]}
    print("\n## tune_steps: the bare call against the former defaults (fresh seeds)\n")
    print("| model | NFE | bare call | fresh rms | s | first defaults (dpmpp_2m + x̂0, plain pilots) | fresh rms | s "
          "| ratio |")
    print("|---|---:|---|---:|---:|---|---:|---:|---:|")
    for label, m in models.items():
        for nfe in budgets:
            cells = []
            for kw in ({}, dict(solver="dpmpp_2m", denoise_final=True, pilot=64, screen=0)):
                t0 = time.perf_counter()
                g = ds.tune_steps(m, nfe=nfe, progress=False, fresh=range(4096, 4352), **kw)
                cells.append((f"{g.solver}{' +x̂0' if g.denoise_final else ''}", g.fresh_error,
                              time.perf_counter() - t0))
            print(f"| {label} | {nfe} | " + " | ".join(f"{a} | {b:.3g} | {c:.0f}" for a, b, c in cells)
                  + f" | {cells[0][1] / cells[1][1]:.2f} |")


# tune_steps' pilots when the checks below were made (its default until 2026-12-07, then 128 pilots from 2048:
# --tune-pilots); they keep them so that their tables stay reproducible
PILOTS_OF_THEN = dict(pilot=64, screen=1024)
# the tuners' bare calls of 2026-12-06, their former defaults (before screened pilots) and a variant tried
TUNERS = [("tune_steps", "bare call (pilot=64, screen=1024)", PILOTS_OF_THEN),
          ("tune_steps", "former: pilot=64, screen=0", dict(pilot=64, screen=0)),
          ("tune_steps", "tried: pilot=64, screen=4096", dict(pilot=64, screen=4096)),
          ("tune_solver", "bare call (pilot=1024, screen=0)", {}),
          ("tune_solver", "tried: pilot=256, screen=4096", dict(pilot=256, screen=4096))]
# what each problem was for: ring and mix64 were looked at while the screening was built, mix16 too;
# mix32's result decided tune_solver's default (the tried variant lost there); mix48 only judges
TUNE_PROBLEMS = ("ring", "mix64", "mix16", "mix32", "mix48")


def _peer_cells(problem):
    """A peers' problem as the tuner checks see it: (problem, its start points x, their σ → 0
    reference, best(n) -> the best diffusers / k-diffusion row at NFE n)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import _peers as P

    prob = P.make_problem(problem)
    rows = P.quality_rows(problem)
    sch = prob.schedule
    s_T = prob.s_of_t(sch.t_max)
    x = float(sch.sigma(torch.tensor(sch.t_max, dtype=F64))) * prob.z

    def best(n):
        return min((r for r in rows if r.get("side") in ("diffusers", "k-diffusion") and r.get("budget") == n
                    and r.get("rms") is not None and r.get("full_start")), key=lambda r: r["rms"])

    return prob, x, P.reference(prob, s_T, s_T), best


def tune_peers_check(budgets=(5, 10), problems=TUNE_PROBLEMS):
    """The tuners' bare calls (their former defaults, a tried variant) against the best diffusers /
    k-diffusion configuration (DDPM schedule; peer rows from ``peers_quality.py --problems ...
    --which peers``): the tuned run starts from the peers' start points and is measured against the
    same σ → 0 reference (benchmarks/_peers.py). Also how concentrated the screening's proxy is: the
    share of ‖x_N − x_3N‖² that the worst 32 of the 1024 candidates a bare tune_steps screens carry."""
    from diffsolve._tuning import screening_proxy

    print("\n## The tuners' bare calls against the best peer configuration (DDPM, the peers' start points)\n")
    print("| problem | NFE | top-32 share | tuner | settings | rms | tuning s | best peer | rms | tuned / peer |")
    print("|---|---:|---:|---|---|---:|---:|---|---:|---:|")
    for problem in problems:
        prob, x, ref, best_peer = _peer_cells(problem)
        sch = prob.schedule
        candidates = float(sch.sigma(torch.tensor(sch.t_max, dtype=F64))) * ds.NoiseSource(
            1024, prob.gm.shape, seeds=range(1024)).randn()
        for n in budgets:
            proxy = screening_proxy(prob.den, candidates, n).sort(descending=True).values
            share = float(proxy[:32].sum() / proxy.sum())
            best = best_peer(n)
            for tuner, label, kw in TUNERS:
                t0 = time.perf_counter()
                g = getattr(ds, tuner)(prob.den, nfe=n, fresh=0, progress=False, **kw)
                secs = time.perf_counter() - t0
                with torch.no_grad():
                    res = ds.sample(prob.den, x, steps=g)
                assert float(res.t[0]) == sch.t_max and res.nfe == n
                e = _rms(res.x, ref)
                print(f"| {problem} | {n} | {share:.2f} | {tuner} | {label} | {e:.3g} | {secs:.0f} | "
                      f"{best['config'][:60]} | {best['rms']:.3g} | {e / best['rms']:.2f} |", flush=True)


def _stratified_sample(proxy, keep, generator):
    """The screening's first sampler (2026-12-06, replaced the same day): the keep/2 largest proxies
    whole (weight 1), the rest a uniform draw weighted by its inverse sampling fraction."""
    order = proxy.argsort(descending=True, stable=True).tolist()
    top, n_rand = keep // 2, keep - keep // 2
    rest = order[top:]
    drawn = torch.randperm(len(rest), generator=generator)[:n_rand].tolist()
    return [(i, 1.0) for i in order[:top]] + [(rest[j], (len(proxy) - top) / n_rand) for j in drawn]


# screening samplers compared; the problems: mix24 and mix40 were made for this comparison and only judge it
SAMPLERS = ("stratified", "pps")
SCREENING_PROBLEMS = ("ring", "mix64", "mix16", "mix32", "mix48", "mix24", "mix40")


def _geo(values):
    return math.exp(sum(map(math.log, values)) / len(values))


def _tuned_draws(prob, x, ref, best_rms, n, draws, sampler=None, **tune_kw):
    """``tune_steps(prob.den, nfe=n, **tune_kw)`` once per draw of the screening's pilots (the sampler,
    default the library's πps, with generator seeds 0..draws−1): each tuned grid's error on the peers'
    start points over the best peer's, and the mean tuning time."""
    import diffsolve._tuning as T

    library = T.pps_sample
    sampler = sampler or library
    ratios, secs = [], 0.0
    try:
        for draw in range(draws):
            T.pps_sample = lambda proxy, keep, _g, f=sampler, d=draw: f(proxy, keep, torch.Generator().manual_seed(d))
            t0 = time.perf_counter()
            g = ds.tune_steps(prob.den, nfe=n, fresh=0, progress=False, **tune_kw)
            secs += time.perf_counter() - t0
            with torch.no_grad():
                ratios.append(_rms(ds.sample(prob.den, x, steps=g).x, ref) / best_rms)
    finally:
        T.pps_sample = library
    return ratios, secs / draws


def tune_screening_check(budgets=(5, 10), problems=SCREENING_PROBLEMS, draws=3):
    """The bare ``tune_steps`` with the screening's pilots drawn by the former stratified sampler and
    by πps (the library's ``pps_sample``), each with ``draws`` draws (generator seeds 0..draws−1):
    the tuned grid's error on the peers' start points over the best peer configuration's."""
    print("\n## Screening samplers: tuned / best peer, one tune_steps per draw (DDPM, the peers' start points)\n")
    print("| problem | NFE | sampler | draws | geo-mean |")
    print("|---|---:|---|---|---:|")
    logs = defaultdict(list)
    for problem in problems:
        prob, x, ref, best_peer = _peer_cells(problem)
        for n in budgets:
            best = best_peer(n)
            for name in SAMPLERS:
                sampler = _stratified_sample if name == "stratified" else None
                ratios, _ = _tuned_draws(prob, x, ref, best["rms"], n, draws, sampler, **PILOTS_OF_THEN)
                geo = _geo(ratios)
                logs[(problem, n, name)] = geo
                print(f"| {problem} | {n} | {name} | {' / '.join(f'{r:.3f}' for r in ratios)} | {geo:.3f} |",
                      flush=True)
    for label, group in (("made for this comparison (mix24, mix40)", ("mix24", "mix40")),
                         ("the others", tuple(p for p in problems if p not in ("mix24", "mix40")))):
        r = [math.log(logs[(p, n, "pps")] / logs[(p, n, "stratified")]) for p in group for n in budgets
             if (p, n, "pps") in logs]
        if r:
            print(f"\npps / stratified, geometric mean over {label}: {math.exp(sum(r) / len(r)):.2f}")


TUNE_SOLVERS = ("unipc", "unipc:order=3", "unipc:predict_x0=false", "dpmpp_2m", "dpmpp_3m", "deis")


def tune_solvers_check(budgets=(5,), problems=("mix24", "mix32", "mix40", "mix48")):
    """``tune_steps(den, solver, nfe=n)`` with each solver of :data:`TUNE_SOLVERS` (the bare call's
    settings otherwise): the tuned grid's error on the peers' start points over the best peer's."""
    print("\n## tune_steps per solver: tuned / best peer (DDPM, the peers' start points)\n")
    print("| problem | NFE | " + " | ".join(TUNE_SOLVERS) + " |")
    print("|---|---:|" + "---:|" * len(TUNE_SOLVERS))
    for problem in problems:
        prob, x, ref, best_peer = _peer_cells(problem)
        for n in budgets:
            cells = []
            for solver in TUNE_SOLVERS:
                g = ds.tune_steps(prob.den, solver, nfe=n, fresh=0, progress=False, **PILOTS_OF_THEN)
                with torch.no_grad():
                    cells.append(_rms(ds.sample(prob.den, x, steps=g).x, ref) / best_peer(n)["rms"])
            print(f"| {problem} | {n} | " + " | ".join(f"{c:.2f}" for c in cells) + " |", flush=True)


# tune_steps' pilot count (2026-12-07): read off PILOT_CHOICE, then judged on PILOT_JUDGE (mix28, mix36 and mix44
# were made for it before it was run; mix20 and mix56 had judged `diffsolve tune`'s budget rule only)
PILOT_SETTINGS = ((64, 1024), (128, 2048), (256, 4096))
PILOT_CHOICE = (("mix24", (5, 10)), ("mix40", (5, 10)), ("mix48", (5, 10)))
PILOT_JUDGE = (("mix56", (10,)), ("mix20", (10,)), ("mix28", (5, 10)), ("mix36", (5, 10)), ("mix44", (5, 10)))
PILOT_OTHER = (("ring", (5, 10)), ("mix64", (5, 10)))  # the problems the screening was built on


def tune_pilots_check(draws=3):
    """The bare ``tune_steps`` with 64, 128 and 256 screened pilots (16 candidates per pilot), three draws of
    the screening's pilots each: the tuned grid's error on the peers' start points over the best peer's
    (the judging problems and the screening's own, ring and mix64, run the two smaller settings only)."""
    print("\n## tune_steps' pilot count: tuned / best peer, one tune_steps per draw (DDPM, the peers' start points)\n")
    print("| problem | NFE | pilots / candidates | draws | geo-mean | worst | mean s |")
    print("|---|---:|---|---|---:|---:|---:|")
    for role, cells in (("choice", PILOT_CHOICE), ("judge", PILOT_JUDGE), ("other", PILOT_OTHER)):
        for problem, budgets in cells:
            prob, x, ref, best_peer = _peer_cells(problem)
            for n in budgets:
                for pilot, screen in PILOT_SETTINGS[:3 if role == "choice" else 2]:
                    ratios, secs = _tuned_draws(prob, x, ref, best_peer(n)["rms"], n, draws, pilot=pilot,
                                                screen=screen)
                    print(f"| {problem}{'' if role == 'choice' else f' ({role})'} | {n} | {pilot} / {screen} | "
                          f"{' / '.join(f'{r:.3f}' for r in ratios)} | {_geo(ratios):.3f} | {max(ratios):.3f} | "
                          f"{secs:.0f} |", flush=True)


# `diffsolve tune`'s budget rule: chosen on RULE_CHOICE, then judged on RULE_JUDGE (made before the choice)
RULE_CHOICE = (("mix24", (5, 6, 8, 10)), ("mix40", (5, 6, 8, 10)), ("mix48", (5, 6, 8, 10)))
RULE_JUDGE = (("mix20", (5, 10)), ("mix56", (5, 10)))


def tune_rule_check(cells=RULE_CHOICE + RULE_JUDGE):
    """Both tuners' bare calls, ``tune_steps(den, nfe=n)`` (a UniPC grid) and ``tune_solver(den, nfe=n)``
    (fitted weights), per budget: the tuned result's error on the peers' start points over the best
    peer configuration's — the evidence for ``diffsolve.defaults.default_tuner`` (``diffsolve tune``)."""
    print("\n## tune_steps and tune_solver per budget: tuned / best peer (DDPM, the peers' start points)\n")
    print("| problem | NFE | tune_steps | s | tune_solver | s |")
    print("|---|---:|---:|---:|---:|---:|")
    for problem, budgets in cells:
        prob, x, ref, best_peer = _peer_cells(problem)
        for n in budgets:
            out = []
            for tuner, kw in ((ds.tune_steps, PILOTS_OF_THEN), (ds.tune_solver, {})):
                t0 = time.perf_counter()
                g = tuner(prob.den, nfe=n, fresh=0, progress=False, **kw)
                with torch.no_grad():
                    out += [_rms(ds.sample(prob.den, x, steps=g).x, ref) / best_peer(n)["rms"],
                            time.perf_counter() - t0]
            print(f"| {problem} | {n} | {out[0]:.3f} | {out[1]:.0f} | {out[2]:.3f} | {out[3]:.0f} |", flush=True)


# tune_steps in noise prediction (2026-12-07): the choice set (looked at before) and the judges
EPS_CHOICE = ("ring", "mix64", "mix16", "mix32", "mix24", "mix40", "mix48")
EPS_JUDGES = ("mix20", "mix28", "mix36", "mix44", "mix56", "gauss3072")
EPS_SOLVER = "unipc:predict_x0=false"


def _own_proxy(denoiser, x, nfe: int):
    """The screening's proxy from UniPC, the solver tune_steps tunes (on its own grid), instead of the default
    call: ‖x_N − x_3N‖² per start point (candidate C of :func:`tune_eps_check`)."""
    with torch.no_grad():
        a, b = (ds.sample(denoiser, x, solver="unipc", nfe=n).x for n in (nfe, 3 * nfe))
    return ((a - b) ** 2).flatten(1).sum(1).to("cpu", torch.float64)


def tune_eps_check(budgets=(5, 8, 10), draws=2, problems=EPS_CHOICE + EPS_JUDGES):
    """Three candidates for tune_steps, each against the bare call on the peers' start points (DDPM):
    (A) UniPC in noise prediction (``unipc:predict_x0=false``) instead of data prediction, ``draws`` pilot
    draws each (the ratio of geometric means over the draws); (B) ``"auto"``: tune both and keep the one with
    the lower fresh error (the default 256 fresh seeds; the library's own pilot draw), at NFE 8 and 10; (C) the
    screening's proxy from UniPC itself rather than the default call (``draws`` draws)."""
    import diffsolve._tuning as T

    print("\n## tune_steps in noise prediction: candidate / bare call (DDPM, the peers' start points)\n")
    print("| problem | NFE | A: eps / bare | bare: pilot / fresh / peers' points | eps: pilot / fresh / peers' "
          "points | B: picked / bare | C: own proxy / bare |")
    print("|---|---:|---:|---|---|---:|---:|")
    for problem in problems:
        prob, x, ref, _ = _peer_cells(problem)
        for n in budgets:
            bare, eps = (_geo(_tuned_draws(prob, x, ref, 1.0, n, draws, **kw)[0])
                         for kw in ({}, dict(solver=EPS_SOLVER)))
            library = T.screening_proxy
            T.screening_proxy = _own_proxy
            try:
                own = _geo(_tuned_draws(prob, x, ref, 1.0, n, draws)[0])
            finally:
                T.screening_proxy = library
            cells = [f"{eps / bare:.2f}", "", "", "", f"{own / bare:.2f}"]
            if n >= 8:
                tuned = [ds.tune_steps(prob.den, nfe=n, progress=False, **kw) for kw in ({}, dict(solver=EPS_SOLVER))]
                with torch.no_grad():
                    errors = [_rms(ds.sample(prob.den, x, steps=g).x, ref) for g in tuned]
                pick = min(range(2), key=lambda i: tuned[i].fresh_error)
                cells[1:4] = [f"{g.pilot_error:.3g} / {g.fresh_error:.3g} / {e:.3g}" for g, e in zip(tuned, errors)] \
                    + [f"{errors[pick] / errors[0]:.2f}"]
            print(f"| {problem} | {n} | " + " | ".join(cells) + " |", flush=True)


def peers_check(budgets=(5, 10, 20), problems=("ring", "mix64", "gauss3072", "mix16")):
    """The bare call ``ds.sample(model, x, nfe=N)`` against the best peer configuration of
    benchmarks/quality.md, run on the peers' own start points and scored against their reference
    (the σ → 0 end point of the exact ODE; mix16's peer rows come from ``peers_quality.py --problems
    mix16 --which peers``)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import _peers as P

    print("\n## The default call against the best peer configuration (benchmarks/quality.md's rows)\n")
    print("| problem | NFE | default call | rms | best peer | rms | default / peer |")
    print("|---|---:|---|---:|---|---:|---:|")
    for name in problems:
        prob, rows = P.make_problem(name), P.quality_rows(name)
        sch = prob.schedule
        s0 = prob.s_of_t(sch.t_max)
        x = float(sch.sigma(torch.tensor(sch.t_max, dtype=torch.float64))) * prob.z
        for n in budgets:
            best = min((r for r in rows if r.get("side") in ("diffusers", "k-diffusion") and r.get("budget") == n
                        and r.get("rms")), key=lambda r: r["rms"])
            res = ds.sample(prob.den, x, nfe=n)
            v = P.rms(res.x, P.reference(prob, s0, s0))
            run = ds.defaults.default_run(n, sch)
            cfg = (f"{'analytic first step, ' if run.analytic_first_step else ''}{run.solver} {run.grid}"
                   f"{' +x̂0' if run.denoise_final else ''}")
            print(f"| {name} | {n} | {cfg} | {v:.3g} | {best['config'][:60]} | {best['rms']:.3g} | "
                  f"{v / best['rms']:.2f} |", flush=True)


# the checks after the report, in the order they run: --flag-name -> (function, what it does)
CHECKS = {
    "digits": (digits_check, "check the default on the bundled digits model"),
    "peers": (peers_check, "compare with the best peer rows of quality.md"),
    "tune": (tune_check, "check tune_steps' defaults on the digits model (~1 min)"),
    "fresh": (fresh_check, "check the EDM exception on three fresh problems"),
    "fresh_afs": (fresh_afs_check, "check where the analytic first step pays, on the three fresh problems (~3 min)"),
    "flow_start": (flow_start_check, "the default call on schedules from σ = 1 against the grid from t_max (~4 min)"),
    "tune_sigma_one": (tune_sigma_one_check, "tune_steps' bare call on schedules from σ = 1 against the default "
                                             "call (~1 min)"),
    "small_budget": (small_budget_check, "deis against unipc:order=3 at 10-15 evaluations: fresh problems, "
                                         "digits (~3 min)"),
    "afs_signal": (afs_signal_check, "the analytic first step on Stable Diffusion's betas, with / without (~15 s)"),
    "deis_karras": (deis_karras_check, "the default of 2026-12-07 (deis to the end on karras at 7-12) and a "
                                       "DEIS-4 candidate against the default before: fresh problems, digits (~2 min)"),
    "karras_afs": (karras_afs_check, "the analytic first step with the Karras piece on DDPM and cosine schedules, "
                                     "at 7-12 and at 7-9 (adopted): fresh problems, digits, two sets of unseen "
                                     "problems (~6 min)"),
    "flow_deis4": (flow_deis4_check, "DEIS-4 to the end with the corrected start on flow schedules at 7-20, the "
                                     "analytic first step and heun in t: fresh problems, a trained flow network "
                                     "(benchmarks/results/models; ~1 min)"),
    "vp_karras": (vp_karras_check, "deis karras +x̂0 with the analytic first step at 7-12 on VP schedules: "
                                   "fresh problems, digits (~15 s)"),
    "tune_peers": (tune_peers_check, "run the tuners' bare calls against the peers on ring, mix64, mix16, mix32, "
                                     "mix48 (needs their peers_quality rows)"),
    "tune_screening": (tune_screening_check, "compare the screening's samplers, stratified and πps, three draws "
                                             "each (~6 min)"),
    "tune_solvers": (tune_solvers_check, "tune_steps with each of six solvers at NFE 5 on four mixtures (~1 min)"),
    "tune_pilots": (tune_pilots_check, "tune_steps with 64, 128 and 256 screened pilots, three draws each, on eight "
                                       "mixtures (~12 min)"),
    "tune_eps": (tune_eps_check, "tune_steps in noise prediction, picking it by the fresh error, and screening "
                                 "with UniPC's own proxy, against the bare call on thirteen problems (~1 h)"),
    "tune_rule": (tune_rule_check, "both tuners' bare calls at NFE 5-10 on five mixtures: diffsolve tune's "
                                   "budget rule (~25 min)"),
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--problems", default=",".join(CHOICE + HELD_OUT))
    ap.add_argument("--schedules", default=",".join(SCHEDULES))
    ap.add_argument("--nfe", default=",".join(map(str, BUDGETS)))
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--report", action="store_true", help="only print the tables from the rows on disk")
    for name, (_, help_) in CHECKS.items():
        ap.add_argument(f"--{name.replace('_', '-')}", action="store_true", help=f"also {help_}")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if not args.report:
        run(args.problems.split(","), args.schedules.split(","), [int(n) for n in args.nfe.split(",")], args.out)
    chosen, cells, budgets = report(args.out)
    judge(cells, budgets, lambda n, s: chosen[n])
    rules_table(cells, budgets)
    family_table(cells, budgets)
    afs_family_table(cells)
    judge(cells, budgets, RULES[DEFAULT_RULE])
    for flag, (check, _) in CHECKS.items():  # in this order, each if its flag was given
        if getattr(args, flag):
            check()


if __name__ == "__main__":
    main()
