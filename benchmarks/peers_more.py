r"""Three more peers on the same exact models: azula's samplers, flow_matching's likelihood and
torchode's per-sample dopri5 (issue #18, part 2).

Not a test: prints markdown tables (recorded in benchmarks/peers_more.md) and writes its rows to
benchmarks/results/peers_more.jsonl (the rows of the parts that ran replace their old rows).

    pip install -e '.[peers]'                                   # azula, flow_matching, torchode
    python benchmarks/peers_more.py                             # all three parts (~15 min on 2 loaded cores)
    python benchmarks/peers_more.py --parts azula --nfe 5 10 20 50
    python benchmarks/peers_more.py --parts likelihood          # part 2 alone (~25 min)
    python benchmarks/peers_more.py --table                     # tables from the JSONL only

**Part 1, azula** (0.11: ``azula.sample``). The model is ``_peers.py``'s: the exact posterior mean of
the ring / mix64 / gauss3072 mixtures under the DDPM linear schedule, wrapped as an azula
``Denoiser`` (``forward(x_t, t) -> DiracPosterior(mean=x̂0)``) with an azula ``Schedule`` that maps
azula's time τ ∈ [0, 1] affinely onto the schedule's [t_min, t_max] (τ = 1: t_max, τ = 0: t_min, so
azula's own grid ``linspace(1, 0, steps + 1)`` is uniform in the DDPM time and ends at t_min, as
azula's schedules end at σ_min > 0). Every deterministic azula sampler is run: DDIM (η = 0), Euler,
Heun, zAB/vAB (Adams–Bashforth in σ/α and in σ/(α+σ)), zEAB/xEAB (exponential AB in noise / data
prediction: multistep DPM-Solver / DPM-Solver++) and REAB (DPM-Solver-v3 style), orders 2 and 3, on
  - ``azula``: azula's default grid, the budget's number of steps (Heun: half; its last step
    evaluates at t_min too);
  - ``log_snr``: diffsolve's default log-SNR grid with the same number of steps (no final x̂0);
  - ``log_snr+x0``: diffsolve's *own* grid at that budget (budget − 1 steps) and a final x̂0(t_min),
    i.e. exactly what ``ds.sample(model, x, nfe=N)`` evaluates, with azula's steps in between.
Twins (checked at run time): azula's xEAB order 2 is diffsolve's
``dpmpp_2m(lower_order_final=False, solver_type="taylor")`` and azula's DDIM on its own grid is
diffsolve's ``ddim`` on the ``time`` grid, to round-off. Error: RMS against the exact σ → 0 ODE
end point from the same start (``_peers.reference``), the metric of ``peers_quality.py``.
diffsolve's side: ``ds.sample(model, x, nfe=N)`` (the defaults), its options that matter here
(lower_order_final, solver_type, denoise_final), and the best diffsolve configuration of
``results/peers_quality_<problem>.jsonl`` at that budget, re-run.

**Part 2, flow_matching's likelihood** (1.0: ``ODESolver.compute_likelihood``: torchdiffeq dopri5
in the flow time τ ∈ [1, 0] on the tuple state (x, log-det), torchdiffeq's default norm for a tuple,
i.e. the max over the tuple's members of the RMS over the whole batch). Its velocity model is the
exact probability-flow velocity of a ``GaussianMixture`` under a flow (rectified, σ = t) or VP
schedule, with τ mapped affinely onto [t_min, t_max] (compute_likelihood insists on the grid
[1, 0]); its ``log_p0`` and diffsolve's ``prior`` are the exact log p_T; truth is the exact
log p_{t_min}(x). Both sides use the exact divergence (flow_matching: d autograd calls; diffsolve:
batched VJPs); NFE = forward calls of the velocity (per sample: both run one shared step here).
Tolerances rtol = atol are swept, four per decade from 1e-2 to 3e-8 (a coarser sweep reads a curve whose
NFE jumps between tolerances off two distant points); the NFE at matched errors 1e-3 … 1e-6 nats/dim
is read off each curve (log-log interpolation of the lower envelope), on 256 points in 2-D and 64
in 64-D. diffsolve is run at its defaults and with the options that might close a gap: ``norm="rms"``,
a shared step (``per_sample=False``), and in 2-D also the shared step with ``norm="rms"`` and
``time_variable="log_snr"``.

**Part 3, torchode** (1.0: ``torchode.Dopri5`` with an ``IntegralController``, one step size and
error control per sample, the RMS norm over each sample's coordinates). The sampling ODE
dx/dt = f_t x − ½ g_t² ŝ from t_max to t_min (no final x̂0) in raw t on the DDPM model of part 1,
for a batch holding one hard sample (the start point of the problem's batch with the largest
error of DPM-Solver++(2M) at 10 NFE), against diffsolve's adaptive ``dopri5`` solver
(``ds.sample(solver="dopri5")``) at its defaults and with ``per_sample`` / ``norm`` /
``time_variable``. Error: RMS over coordinates per sample against a per-sample dopri5 reference at
rtol = atol = 1e-10 in λ; work: forward calls and row evaluations (torchode evaluates every row at
every call until the last row is done; diffsolve per-sample only the unfinished rows).
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

import _peers as P  # shared helpers: a sibling module (run as python benchmarks/<script>.py)
import diffsolve as ds
from diffsolve.reference import ode_reference

F64 = torch.float64
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "results", "peers_more.jsonl")


def _git() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, text=True).strip()
    except Exception:
        return "?"


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "azula", "flow_matching", "torchode", "torchdiffeq"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def loglog_at(points, target):
    """NFE at which a method reaches error ``target``: log-log interpolation on the lower envelope
    of its (nfe, err) points (the least NFE with err ≤ target, interpolated between the cheapest
    point above and below the target); None if no point reaches it or none lies above it."""
    pts = sorted((n, e) for n, e in points if e is not None and math.isfinite(e) and e > 0)
    env, best = [], math.inf  # lower envelope: err decreasing with nfe
    for n, e in pts:
        if e < best:
            env.append((n, e))
            best = e
    for (n0, e0), (n1, e1) in zip(env, env[1:]):
        if e0 >= target >= e1:
            if e0 == e1:
                return float(n0)
            w = (math.log(e0) - math.log(target)) / (math.log(e0) - math.log(e1))
            return math.exp(math.log(n0) + w * (math.log(n1) - math.log(n0)))
    return None


def matched_nfe_cells(old, new, levels):
    """Two (nfe, err) curves read at each error level: table cells "NFE old / NFE new / ratio" and the
    logs of the ratios at the levels both curves reach."""
    cells, logs = [], []
    for e in levels:
        a, b = loglog_at(old, e), loglog_at(new, e)
        if a is None or b is None:
            cells.append(f"{a and round(a)} / {b and round(b)} / –")
            continue
        logs.append(math.log(b / a))
        cells.append(f"{a:.0f} / {b:.0f} / {b / a:.2f}")
    return cells, logs


# =============================================================================================
# part 1: azula
# =============================================================================================
AZULA_SAMPLERS = [  # (label, class name, kwargs, evaluations per step)
    ("DDIM", "DDIMSampler", {}, 1), ("Euler", "EulerSampler", {}, 1), ("Heun", "HeunSampler", {}, 2),
    ("zAB-2", "zABSampler", {"order": 2}, 1), ("zAB-3", "zABSampler", {"order": 3}, 1),
    ("vAB-2", "vABSampler", {"order": 2}, 1), ("vAB-3", "vABSampler", {"order": 3}, 1),
    ("zEAB-2", "zEABSampler", {"order": 2}, 1), ("zEAB-3", "zEABSampler", {"order": 3}, 1),
    ("xEAB-2", "xEABSampler", {"order": 2}, 1), ("xEAB-3", "xEABSampler", {"order": 3}, 1),
    ("REAB-2", "REABSampler", {"order": 2}, 1), ("REAB-3", "REABSampler", {"order": 3}, 1),
]
AZULA_GRIDS = ("azula", "log_snr", "log_snr+x0")
# diffsolve configurations run beside azula: (label, solver, options, grid, denoise_final)
DS_CONFIGS = [
    ("ds.sample defaults: dpmpp_2m, log_snr, x̂0", "dpmpp_2m", {}, "log_snr", True),
    ("dpmpp_2m lower_order_final=False, log_snr, x̂0", "dpmpp_2m", {"lower_order_final": False}, "log_snr", True),
    ("dpmpp_2m taylor, lower_order_final=False, log_snr, x̂0", "dpmpp_2m",
     {"lower_order_final": False, "solver_type": "taylor"}, "log_snr", True),
    ("dpmpp_2m, log_snr, no x̂0", "dpmpp_2m", {}, "log_snr", False),
    ("dpmpp_2m lower_order_final=False, log_snr, no x̂0", "dpmpp_2m", {"lower_order_final": False}, "log_snr", False),
    ("dpmpp_3m, log_snr, x̂0", "dpmpp_3m", {}, "log_snr", True),
    ("dpmpp_3m lower_order_final=False, log_snr, x̂0", "dpmpp_3m", {"lower_order_final": False}, "log_snr", True),
    ("unipc, log_snr, x̂0", "unipc", {}, "log_snr", True),
]


def azula_model(prob):
    """An azula Denoiser and Schedule around the problem's exact model (module docstring)."""
    from azula.denoise import Denoiser, DiracPosterior
    from azula.noise import Schedule

    sch = prob.schedule
    tmin, tmax = sch.t_min, sch.t_max

    def t_of(tau):
        return (tmin + tau.to(F64) * (tmax - tmin)).clamp(tmin, tmax)

    class ExactSchedule(Schedule):
        def __call__(self, tau):
            t = t_of(tau)
            return sch.alpha(t).to(tau.dtype), sch.sigma(t).to(tau.dtype)

    class ExactDenoiser(Denoiser):
        def __init__(self):
            super().__init__()
            self.schedule = ExactSchedule()

        def forward(self, x_t, tau, **kwargs):
            t = float(t_of(torch.as_tensor(tau)))
            return DiracPosterior(mean=prob.den.x0(x_t.to(F64), t).to(x_t.dtype))

    return ExactDenoiser()


def run_azula(prob, den, cls_name, kwargs, grid, budget, per_step):
    import azula.sample as AS

    cls = getattr(AS, cls_name)
    sch = prob.schedule
    tmin, tmax = sch.t_min, sch.t_max
    final_x0 = grid == "log_snr+x0"
    left = budget - (1 if final_x0 else 0)
    steps = left // per_step
    if steps < 1:
        raise ValueError("budget too small")
    if grid == "azula":
        sampler = cls(den, steps=steps, silent=True, dtype=F64, **kwargs)
    else:
        t = ds.make_grid(sch, steps, "log_snr")
        tau = ((t - tmin) / (tmax - tmin)).to(F64)
        tau[0], tau[-1] = 1.0, 0.0
        sub = type(cls.__name__ + "OnGrid", (cls,), {"timesteps": property(lambda self: tau)})
        sampler = sub(den, steps=steps, silent=True, dtype=F64, **kwargs)
    s0 = prob.s_of_t(tmax)
    x = float(sch.sigma(torch.tensor(tmax, dtype=F64))) * prob.z
    n0 = prob.den.nfe
    out = sampler(x)
    if final_x0:
        out = prob.den.x0(out, tmin)
    return dict(out=out, nfe=prob.den.nfe - n0, steps=steps, c=s0, s0=s0)


def best_diffsolve(problem, budget):
    """The best diffsolve row of results/peers_quality_<problem>.jsonl at this budget, as
    (solver, options, grid, denoise_final, label), or None."""
    rows = [r for r in P.quality_rows(problem)
            if r.get("side") == "diffsolve" and r.get("budget") == budget and P.ranked(r)]
    if not rows:
        return None
    lab = min(rows, key=lambda r: r["rms"])["config"]
    head, rest = lab.split(" grid=")
    grid, df = rest.split(" denoise_final=")
    solver, *opts = head.split(",")
    options = {}
    for o in opts:
        k, v = o.split("=", 1)
        options[k] = {"True": True, "False": False, "None": None}.get(v, int(v) if v.lstrip("-").isdigit() else v)
    return solver, options, grid, df == "True", lab


def part_azula(args, log):
    print("\n## Part 1: azula's samplers on the exact DDPM models (RMS error against the exact ODE end point)\n")
    for name in args.problems:
        t_start = time.time()
        prob = P.make_problem(name)
        s0 = prob.s_of_t(prob.schedule.t_max)
        ref = P.reference(prob, s0, s0)
        den = azula_model(prob)
        # twins: the adapter is exact
        tw = run_azula(prob, den, "xEABSampler", {"order": 2}, "log_snr", 10, 1)["out"]
        dtw = P.run_diffsolve(prob, "dpmpp_2m", "log_snr", False, 10,
                              {"lower_order_final": False, "solver_type": "taylor"})["out"]
        tw2 = run_azula(prob, den, "DDIMSampler", {}, "azula", 10, 1)["out"]
        dtw2 = P.run_diffsolve(prob, "ddim", "time", False, 10)["out"]
        twins = dict(xeab2_vs_dpmpp2m_taylor_nolof=P.rms(tw, dtw), ddim_azula_grid_vs_ds_ddim_time=P.rms(tw2, dtw2))
        print(f"[{name}] twin check (RMS difference, 10 NFE): azula xEAB-2 on log_snr vs diffsolve "
              f"dpmpp_2m(taylor, lower_order_final=False, no x̂0) {twins['xeab2_vs_dpmpp2m_taylor_nolof']:.1e}; "
              f"azula DDIM on its grid vs diffsolve ddim on 'time' {twins['ddim_azula_grid_vs_ds_ddim_time']:.1e}")
        log.append(dict(part="azula", problem=name, kind="twins", **twins))
        res = {}
        for lab, cls, kw, per in AZULA_SAMPLERS:
            for g in AZULA_GRIDS:
                for b in args.nfe:
                    try:
                        r = run_azula(prob, den, cls, kw, g, b, per)
                        err = P.rms(r["out"], ref) if bool(torch.isfinite(r["out"]).all()) else float("inf")
                        row = dict(nfe=r["nfe"], steps=r["steps"], rms=err)
                    except Exception as e:  # a sampler that cannot run a budget is a result too
                        row = dict(error=f"{type(e).__name__}: {str(e)[:160]}", rms=None, nfe=None)
                    res[(f"azula {lab}", g, b)] = row["rms"]
                    log.append(dict(part="azula", problem=name, side="azula", method=lab, grid=g, budget=b, **row))
        ds_rows = list(DS_CONFIGS)
        for b in args.nfe:
            best = best_diffsolve(name, b)
            if best is not None:
                ds_rows.append(("best diffsolve configuration (peers_quality.py)", best[0], best[1], best[2],
                                best[3], b, best[4]))
        for entry in ds_rows:
            lab, solver, opts, grid, df = entry[:5]
            budgets = [entry[5]] if len(entry) > 5 else args.nfe
            for b in budgets:
                lab_b = lab
                try:
                    if solver == "dpmpp_2m" and not opts and grid == "log_snr" and df:
                        x = float(prob.schedule.sigma(torch.tensor(prob.schedule.t_max, dtype=F64))) * prob.z
                        n0 = prob.den.nfe
                        out = ds.sample(prob.den, x, nfe=b).x  # the default call itself
                        r = dict(out=out, nfe=prob.den.nfe - n0)
                    else:
                        r = P.run_diffsolve(prob, solver, grid, df, b, opts)
                    err = P.rms(r["out"], ref)
                    row = dict(nfe=r["nfe"], rms=err)
                except Exception as e:
                    row = dict(error=f"{type(e).__name__}: {str(e)[:160]}", rms=None, nfe=None)
                res[(lab_b, "", b)] = row["rms"]
                log.append(dict(part="azula", problem=name, side="diffsolve", method=lab_b,
                                config=entry[6] if len(entry) > 6 else lab,
                                solver=solver, options=opts, grid=grid, denoise_final=df, budget=b, **row))
        print(f"[{name}] {time.time() - t_start:.0f} s")
    print_azula_tables([r for r in log if r.get("part") == "azula"], args.nfe)


def print_azula_tables(rows, budgets):
    for name in dict.fromkeys(r["problem"] for r in rows):
        rs = [r for r in rows if r["problem"] == name and r.get("kind") != "twins"]
        print(f"\n### {name}\n")
        print("| method | grid | " + " | ".join(f"NFE {b}" for b in budgets) + " |")
        print("|---|---|" + "---:|" * len(budgets))
        seen = {}
        for r in rs:
            key = (r.get("side"), r["method"], r.get("grid") if r.get("side") == "azula" else "")
            seen.setdefault(key, {})[r["budget"]] = r
        for (side, m, g), cells in seen.items():
            if side == "diffsolve" and m.startswith("best"):
                continue
            lab = f"azula {m}" if side == "azula" else f"diffsolve {m}"
            vals = []
            for b in budgets:
                c = cells.get(b)
                v = "—" if c is None or c.get("rms") is None else P.fmt(c["rms"])
                if c is not None and c.get("nfe") is not None and c["nfe"] != b:
                    v += f" ({c['nfe']})"
                vals.append(v)
            print(f"| {lab} | {g if side == 'azula' else ''} | " + " | ".join(vals) + " |")
        best = {r["budget"]: r for r in rs if r.get("side") == "diffsolve" and r["method"].startswith("best")}
        if best:
            print("| diffsolve best configuration (peers_quality.py), re-run | | " + " | ".join(
                P.fmt(best[b]["rms"]) if b in best else "—" for b in budgets) + " |")
            for b in budgets:
                if b in best:
                    print(f"\n(best at NFE {b}: `{best[b]['config']}`)", end="")
            print()
        # headline: best azula cell per grid vs the diffsolve default / its lof=False / best
        print("\n| NFE | best azula (azula grid) | best azula (log_snr) | best azula (log_snr+x̂0) | "
              "diffsolve default | default ÷ best azula on log_snr(+x̂0) | dpmpp_2m lof=False | best diffsolve |")
        print("|---:|---|---|---|---:|---:|---:|---:|")
        for b in budgets:
            cells = []
            bests = []
            for g in AZULA_GRIDS:
                cand = [(r["rms"], r["method"]) for r in rs if r.get("side") == "azula" and r.get("grid") == g
                        and r["budget"] == b and r.get("rms") is not None and math.isfinite(r["rms"])]
                if cand:
                    e, m = min(cand)
                    cells.append(f"{m} {P.fmt(e)}")
                    if g != "azula":
                        bests.append(e)
                else:
                    cells.append("—")
            dflt = next((r["rms"] for r in rs if r.get("side") == "diffsolve" and r["method"].startswith("ds.sample")
                         and r["budget"] == b), None)
            nolof = next((r["rms"] for r in rs if r.get("side") == "diffsolve" and r["budget"] == b
                          and r["method"] == "dpmpp_2m lower_order_final=False, log_snr, x̂0"), None)
            bst = best.get(b, {}).get("rms")
            ratio = f"{dflt / min(bests):.2f}" if dflt and bests else "—"
            print(f"| {b} | " + " | ".join(cells) + f" | {P.fmt(dflt)} | {ratio} | {P.fmt(nolof)} | {P.fmt(bst)} |")


# =============================================================================================
# part 2: flow_matching's likelihood
# =============================================================================================
LL_PROBLEMS = {
    "ring": lambda: ds.GaussianMixture.ring(),
    "mix64": lambda: ds.GaussianMixture.random(d=64, n_modes=8, seed=0),
    # held out: made after the likelihood's defaults were chosen (on ring and mix64), to judge them
    "mix2_61": lambda: ds.GaussianMixture.random(d=2, n_modes=5, seed=61),
    "mix24_67": lambda: ds.GaussianMixture.random(d=24, n_modes=5, seed=67),
}
LL_DS_CONFIGS = [  # label, log_likelihood options
    ("diffsolve defaults (auto time, max norm, per-sample)", {}),
    ("diffsolve norm=rms", {"norm": "rms"}),
    ("diffsolve shared step", {"per_sample": False}),
    ("diffsolve shared step, norm=rms", {"per_sample": False, "norm": "rms"}),
    ("diffsolve time_variable=log_snr", {"time_variable": "log_snr"}),
]
FM_LABEL = "flow_matching compute_likelihood (dopri5 in τ)"
# Four tolerances per decade: each curve is read off its lower envelope, and with a coarser sweep a
# method whose NFE jumps between tolerances (flow_matching's shared step over the batch) is read
# off two distant points, which moves the matched-NFE ratios by up to 30 % (peers_more.md, part 2).
LL_TOLS = [round(10 ** (-k / 4), 12) for k in range(8, 31)]


def fm_velocity(ode, sch, counter):
    """flow_matching's velocity model: u_τ(x) = dx/dτ with t = t_max − τ (t_max − t_min)."""
    tmin, tmax = sch.t_min, sch.t_max
    L = tmax - tmin

    def velocity(x, t, **extras):
        counter[0] += 1
        tt = (tmax - torch.as_tensor(t).to(F64) * L).clamp(tmin, tmax)  # torchdiffeq's probes may overshoot
        return ode.drift(x, tt) * (-L)

    return velocity


def ll_fm(gm, sch, den, x, tol, exact=True, seed=0):
    from flow_matching.solver import ODESolver

    ode = ds.ProbabilityFlowODE(den, "t")
    counter = [0]
    prior = lambda z: gm.log_prob(z, sch.t_max, sch)  # noqa: E731
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # its Hutchinson probe is built as (randn < 0) * 2.0 - 1.0, i.e. in the default dtype:
        # float32 probes fail against a float64 state, so the default dtype is float64 here
        dflt = torch.get_default_dtype()
        torch.set_default_dtype(F64)
        try:
            _, ll = ODESolver(fm_velocity(ode, sch, counter)).compute_likelihood(
                x, prior, step_size=None, method="dopri5", atol=tol, rtol=tol,
                time_grid=torch.tensor([1.0, 0.0], dtype=F64), exact_divergence=exact)
        finally:
            torch.set_default_dtype(dflt)
    return ll.detach(), counter[0], counter[0]  # nfe per sample, batched calls


def ll_ds(gm, sch, den, x, tol, opts, divergence="exact", seed=0, **extra):
    prior = lambda z: gm.log_prob(z, sch.t_max, sch)  # noqa: E731
    if divergence == "hutchinson":  # a fixed probe, as the peers', unless the row asks for fresh ones
        extra.setdefault("fresh_probes", False)
    r = ds.log_likelihood(den, x, divergence=divergence, rtol=tol, atol=tol, prior=prior, seeds=None,
                          **opts, **extra)
    return r.log_prob, float(r.nfe.double().mean()), int(r.nfe.max())


def part_likelihood(args, log):
    print("\n## Part 2: flow_matching's likelihood vs diffsolve (exact divergence, exact prior)\n")
    for name in args.ll_problems:
        gm = LL_PROBLEMS[name]()
        n = args.ll_n if gm.d <= 2 else args.ll_n64
        x = gm.sample(n, generator=torch.Generator().manual_seed(7)).reshape(n, -1).to(F64)
        d = x.shape[1]
        for sname in (args.ll_schedules if gm.d <= 2 else args.ll_schedules64):
            sch = ds.make_schedule(sname)
            den = gm.denoiser(sch, "eps")
            exact = gm.log_prob(x, sch.t_min, sch)
            t_start = time.time()
            curves = {}
            runs = [(FM_LABEL, None)] + [(lab, o) for lab, o in LL_DS_CONFIGS
                                         if gm.d <= 2 or lab in args.ll_ds64]
            for lab, opts in runs:
                pts = []
                for tol in args.ll_tols:
                    t0 = time.time()
                    if opts is None:
                        ll, nfe, calls = ll_fm(gm, sch, den, x, tol)
                    else:
                        ll, nfe, calls = ll_ds(gm, sch, den, x, tol, opts)
                    err = float((ll - exact).abs().mean()) / d
                    errmax = float((ll - exact).abs().max()) / d
                    pts.append((nfe, err))
                    log.append(dict(part="likelihood", problem=name, schedule=sname, n=n, method=lab,
                                    options=opts, tol=tol, err=err, err_max=errmax, nfe=nfe, calls=calls,
                                    wall_s=round(time.time() - t0, 2)))
                curves[lab] = pts
            print(f"[{name} {sname}] n={n}, {time.time() - t_start:.0f} s", flush=True)
            if name in args.ll_hutchinson:  # one probe (both peers' default) at one tolerance
                tol = 1e-5
                for lab, fn in ((FM_LABEL + ", Hutchinson", lambda: ll_fm(gm, sch, den, x, tol, exact=False)),
                                ("diffsolve hutchinson", lambda: ll_ds(gm, sch, den, x, tol, {}, "hutchinson")),
                                ("diffsolve hutchinson fresh_probes",
                                 lambda: ll_ds(gm, sch, den, x, tol, {}, "hutchinson", fresh_probes=True))):
                    ll, nfe, calls = fn()
                    log.append(dict(part="likelihood", problem=name, schedule=sname, n=n, method=lab, tol=tol,
                                    err=float((ll - exact).abs().mean()) / d, nfe=nfe, calls=calls, hutchinson=True))
    print_likelihood_tables([r for r in log if r.get("part") == "likelihood"])


TARGETS = (1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6)  # matched errors (nats/dim) the tables read off


def print_likelihood_tables(rows):
    keys = list(dict.fromkeys((r["problem"], r["schedule"]) for r in rows))
    for name, sname in keys:
        rs = [r for r in rows if r["problem"] == name and r["schedule"] == sname and not r.get("hutchinson")]
        if not rs:
            continue
        n = rs[0]["n"]
        print(f"\n### {name}, {sname} schedule ({n} points): mean |error| per dim / NFE per sample "
              "at each rtol = atol\n")
        tols = sorted({r["tol"] for r in rs}, reverse=True)
        methods = list(dict.fromkeys(r["method"] for r in rs))
        print("| rtol = atol | " + " | ".join(methods) + " |")
        print("|---:|" + "---|" * len(methods))
        for t in tols:
            cells = []
            for m in methods:
                r = next((r for r in rs if r["method"] == m and r["tol"] == t), None)
                cells.append("—" if r is None else f"{r['err']:.1e} / {r['nfe']:.0f}")
            print(f"| {t:.2g} | " + " | ".join(cells) + " |")
        print("\nNFE at matched error (nats/dim; log-log interpolation) and ratio flow_matching ÷ diffsolve:\n")
        print("| method | " + " | ".join(f"NFE at {e:.0e}" for e in TARGETS) + " | " +
              " | ".join(f"fm ÷ this at {e:.0e}" for e in TARGETS) + " |")
        print("|---|" + "---:|" * (2 * len(TARGETS)))
        curves = {m: [(r["nfe"], r["err"]) for r in rs if r["method"] == m] for m in methods}
        fm = {e: loglog_at(curves.get(FM_LABEL, []), e) for e in TARGETS}
        for m in methods:
            at = {e: loglog_at(curves[m], e) for e in TARGETS}
            ratio = [f"{fm[e] / at[e]:.2f}" if fm[e] and at[e] else "—" for e in TARGETS]
            print(f"| {m} | " + " | ".join("—" if at[e] is None else f"{at[e]:.0f}" for e in TARGETS) + " | "
                  + " | ".join(ratio) + " |")
    hut = [r for r in rows if r.get("hutchinson")]
    if hut:
        print("\nOne Rademacher probe, rtol = atol = 1e-5 (total error, probe noise included):\n")
        print("| problem | schedule | method | err/dim | NFE |")
        print("|---|---|---|---:|---:|")
        for r in hut:
            print(f"| {r['problem']} | {r['schedule']} | {r['method']} | {r['err']:.3g} | {r['nfe']:.0f} |")


# =============================================================================================
# part 3: torchode
# =============================================================================================
def hard_batch(prob, n):
    """n start points of the problem's batch: the one with the largest error of DPM-Solver++(2M)
    at 10 NFE against the σ → 0 reference first, then the first n − 1 others."""
    s0 = prob.s_of_t(prob.schedule.t_max)
    ref = P.reference(prob, s0, s0)
    out = P.run_diffsolve(prob, "dpmpp_2m", "log_snr", True, 10)["out"]
    err = ((out - ref) ** 2).reshape(prob.batch, -1).mean(1).sqrt()
    h = int(err.argmax())
    idx = [h] + [i for i in range(prob.batch) if i != h][: n - 1]
    return prob.z[idx], float(err[h]), float(err.median())


def run_torchode(prob, x, tol, controller="integral"):
    import torchode as to

    sch = prob.schedule
    ode = ds.ProbabilityFlowODE(prob.den, "t")
    B = x.shape[0]
    shape = x.shape[1:]

    def f(t, y):
        tt = t.to(F64).clamp(sch.t_min, sch.t_max)
        return ode.drift(y.reshape(B, *shape), tt).reshape(B, -1)

    term = to.ODETerm(f)
    step = to.Dopri5(term=term)
    if controller == "integral":
        ctl = to.IntegralController(atol=tol, rtol=tol, term=term)
    else:
        ctl = to.PIDController(atol=tol, rtol=tol, pcoeff=0.2, icoeff=0.5, dcoeff=0.0, term=term)
    solver = to.AutoDiffAdjoint(step, ctl, max_steps=100000)
    t_eval = torch.tensor([sch.t_max, sch.t_min], dtype=F64).repeat(B, 1)
    n0 = prob.den.nfe
    with torch.no_grad():
        sol = solver.solve(to.InitialValueProblem(y0=x.reshape(B, -1).clone(), t_eval=t_eval))
    calls = prob.den.nfe - n0
    return dict(out=sol.ys[:, -1].reshape(x.shape), calls=calls, row_evals=calls * B,
                steps=sol.stats["n_steps"].tolist() if "n_steps" in sol.stats else None)


def run_ds_adaptive(prob, x, tol, opts):
    sch = prob.schedule
    n0 = prob.den.nfe
    res = ds.sample(prob.den, x, solver="dopri5", solver_options=dict(rtol=tol, atol=tol, **opts),
                    grid=[sch.t_max, sch.t_min], denoise_final=False)
    return dict(out=res.x, calls=prob.den.nfe - n0, row_evals=res.info.get("row_evals"))


TO_CONFIGS = [  # label, runner kind, options
    ("torchode dopri5, IntegralController (per sample, RMS)", "torchode", {"controller": "integral"}),
    ("torchode dopri5, PIDController(0.2, 0.5) (per sample, RMS)", "torchode", {"controller": "pid"}),
    ("diffsolve dopri5 defaults (auto = λ on DDPM, shared, RMS)", "ds", {}),
    ("diffsolve dopri5 time_variable=t (shared, RMS)", "ds", {"time_variable": "t"}),
    ("diffsolve dopri5 norm=max (shared)", "ds", {"norm": "max"}),
    ("diffsolve dopri5 per_sample (RMS)", "ds", {"per_sample": True}),
    ("diffsolve dopri5 per_sample, norm=max", "ds", {"per_sample": True, "norm": "max"}),
    ("diffsolve dopri5 per_sample, time_variable=t", "ds", {"per_sample": True, "time_variable": "t"}),
]


def part_torchode(args, log):
    print("\n## Part 3: torchode vs diffsolve's adaptive dopri5 on the sampling ODE (raw t, DDPM model)\n")
    for name in args.ode_problems:
        prob = P.make_problem(name)
        n = args.ode_n
        x0, e_h, e_med = hard_batch(prob, n)
        sch = prob.schedule
        x = float(sch.sigma(torch.tensor(sch.t_max, dtype=F64))) * x0
        ref = ode_reference(prob.den, x, sch.t_max, sch.t_min, rtol=1e-10, atol=1e-10)
        print(f"[{name}] hard sample: DPM-Solver++(2M) 10-NFE error {e_h:.3g} (median of the batch {e_med:.3g})")
        for tol in args.ode_tols:
            for lab, kind, opts in TO_CONFIGS:
                t0 = time.time()
                r = run_torchode(prob, x, tol, **opts) if kind == "torchode" else run_ds_adaptive(prob, x, tol, opts)
                e = ((r["out"] - ref) ** 2).reshape(n, -1).mean(1).sqrt()
                log.append(dict(part="torchode", problem=name, n=n, method=lab, tol=tol, err_hard=float(e[0]),
                                err_others=float(e[1:].mean()), err_others_max=float(e[1:].max()),
                                calls=r["calls"], row_evals=r["row_evals"], wall_s=round(time.time() - t0, 2)))
    print_torchode_tables([r for r in log if r.get("part") == "torchode"])


def print_torchode_tables(rows):
    for name in dict.fromkeys(r["problem"] for r in rows):
        rs = [r for r in rows if r["problem"] == name]
        print(f"\n### {name} ({rs[0]['n']} start points, the first the hard one)\n")
        print("| rtol = atol | method | err hard | mean err others | max err others | calls | row evals |")
        print("|---:|---|---:|---:|---:|---:|---:|")
        for r in rs:
            print(f"| {r['tol']:.0e} | {r['method']} | {r['err_hard']:.2e} | {r['err_others']:.2e} | "
                  f"{r['err_others_max']:.2e} | {r['calls']} | {r['row_evals']} |")


# =============================================================================================
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", nargs="+", default=["azula", "likelihood", "torchode"],
                    choices=["azula", "likelihood", "torchode"])
    ap.add_argument("--problems", nargs="+", default=["ring", "mix64", "gauss3072"], choices=list(P.PROBLEMS))
    ap.add_argument("--nfe", nargs="+", type=int, default=[5, 10, 20])
    ap.add_argument("--ll-problems", nargs="+", default=["ring", "mix64"], choices=list(LL_PROBLEMS))
    ap.add_argument("--ll-schedules64", nargs="+", default=["flow", "vp"], help="schedules of the 64-D problem")
    ap.add_argument("--ll-schedules", nargs="+", default=["flow", "vp"])
    ap.add_argument("--ll-n", type=int, default=256, help="points of the 2-D likelihood problem")
    ap.add_argument("--ll-n64", type=int, default=64, help="points of the 64-D likelihood problem")
    ap.add_argument("--ll-tols", nargs="+", type=float, default=LL_TOLS,
                    help="rtol = atol of every likelihood run (default: four per decade, 1e-2 to 3e-8)")
    ap.add_argument("--ll-ds64", nargs="+", default=[LL_DS_CONFIGS[0][0], LL_DS_CONFIGS[1][0], LL_DS_CONFIGS[2][0]],
                    help="the diffsolve configurations run in 64-D (labels)")
    ap.add_argument("--ll-hutchinson", nargs="*", default=["ring"])
    ap.add_argument("--ode-problems", nargs="+", default=["ring"], choices=list(P.PROBLEMS))
    ap.add_argument("--ode-n", type=int, default=64)
    ap.add_argument("--ode-tols", nargs="+", type=float, default=[1e-3, 1e-4, 1e-5, 1e-6])
    ap.add_argument("--table", action="store_true", help="print the tables from the JSONL only")
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    old = []
    if os.path.exists(args.out):
        with open(args.out) as f:
            old = [json.loads(line) for line in f if line.strip()]
    if args.table:
        print_azula_tables([r for r in old if r.get("part") == "azula"],
                           sorted({r["budget"] for r in old if r.get("part") == "azula" and "budget" in r}))
        print_likelihood_tables([r for r in old if r.get("part") == "likelihood"])
        print_torchode_tables([r for r in old if r.get("part") == "torchode"])
        return
    print(f"versions: {_versions()}; git {_git()}")
    fns = {"azula": part_azula, "likelihood": part_likelihood, "torchode": part_torchode}
    stamp = dict(git=_git(), when=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), versions=_versions())
    for part in args.parts:
        new = []
        t0 = time.time()
        fns[part](args, new)
        for r in new:
            r.update(stamp)
        old = [r for r in old if r.get("part") != part] + new
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as f:
            for r in old:
                f.write(json.dumps(r) + "\n")
        print(f"\n[{part}: {time.time() - t0:.0f} s; rows in {os.path.relpath(args.out)}]", flush=True)


if __name__ == "__main__":
    sys.exit(main())
