r"""Shared machinery of the peer benchmarks: problems, exact references, metrics, and wrappers
that drive diffusers' schedulers, k-diffusion's samplers and diffsolve with the SAME exact model.

The model
---------
Every method evaluates one exact network: the posterior mean of a Gaussian mixture (docs/math.md §6)
under the DDPM linear schedule (``diffsolve.DDPMSchedule()``), exposed as an ε-prediction
``diffsolve.Denoiser`` (``gm.denoiser(schedule, "eps")``). Its ``nfe`` counter counts every real
network call of every method.

- diffusers calls ``model(x_vp, timestep)``; timestep k ↦ t = (k + 1)/N (DDPMSchedule's own
  mapping; fractional timesteps, as diffusers produces with Karras sigmas, are interpolated
  by the schedule exactly as for diffsolve).
- k-diffusion calls ``model(y, σ̃)`` in VE coordinates y = x/α, σ̃ = σ/α = e^{−λ}; the wrapper
  finds t with λ(t) = −log σ̃ (the schedule's exact inverse) and returns x̂0(α_t y, t): an ideal
  adapter, so k-diffusion is not charged for a time-mapping error.

The reference (the end-point convention)
----------------------------------------
Every method starts from ``c · z`` at its own first time (z ~ N(0, I) shared by all; c is the
method's own initial scale) and its output is taken as a data-space sample. In VE coordinates
y = x/α, s = σ/α the probability-flow ODE is dy/dλ = D(y, e^{−λ}) − y, and for a mixture the
exact denoiser D exists for every s > 0, below the DDPM schedule's smallest σ̃ ≈ 0.01 too. The
reference is the exact ODE solution from the method's start state and start time to s = 1e-6
(then x̂0 there, a change < 1e-10), i.e. the σ → 0 limit of the flow map, in float64 with
torchdiffeq dopri5 at rtol = atol = 1e-9 in λ (closed form for a single
diagonal Gaussian). This is one fixed target, the exact data-space
endpoint that maps p_T to p_0, for all methods: a method that stops at σ_min = 0.01 (diffsolve's
grids, diffusers' final_sigmas_type="sigma_min") or jumps to σ = 0 with a first-order step
(x̂0 at its last timestep) is charged for what that costs. ``floor`` rows record the error of
the *exact* "ODE to t_min, then x̂0(t_min)" map against the reference: no method that ends at
the DDPM schedule's t_min can do better than that.

Use
---
The helper module of peers_quality.py, confirm_quality.py and digits_peers.py, imported as a
sibling module (``import _peers as P``: ``python benchmarks/<script>.py`` puts benchmarks/ on
``sys.path``; no script imports another). Besides the problems, references, metrics and the three
libraries' runners, it holds the configuration lists and job builder of peers_quality.py
(``build_jobs``; confirm_quality.py re-runs the best of them) and the row helpers ``ranked``
and ``fmt`` both scripts' tables use.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
import types
from dataclasses import dataclass, field

import torch

import diffsolve as ds
from diffsolve.reference import ode_reference

F64 = torch.float64


# --------------------------------------------------------------------------------------------
# k-diffusion import (its package __init__ needs torchvision; the sampling module does not)
# --------------------------------------------------------------------------------------------
def k_sampling():
    """``k_diffusion.sampling`` with stub torchvision modules (benchmark only, never the library)."""
    if "k_diffusion.sampling" in sys.modules:
        return sys.modules["k_diffusion.sampling"]
    for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional"):
        if name not in sys.modules:
            m = types.ModuleType(name)
            m.__path__ = []
            sys.modules[name] = m
    sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]
    sys.modules["torchvision.transforms"].functional = sys.modules["torchvision.transforms.functional"]
    if "k_diffusion" not in sys.modules:
        spec = importlib.util.find_spec("k_diffusion")
        if spec is None:
            raise ImportError("k-diffusion is not installed")
        pkg = types.ModuleType("k_diffusion")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["k_diffusion"] = pkg
    import k_diffusion.sampling as ks

    return ks


# --------------------------------------------------------------------------------------------
# problems
# --------------------------------------------------------------------------------------------
@dataclass
class Problem:
    name: str
    gm: ds.GaussianMixture
    schedule: ds.DDPMSchedule
    den: ds.Denoiser
    z: torch.Tensor  # (B, *shape) shared standard normal start noise
    metric: str  # "sw2" or "frechet"
    proj: torch.Tensor | None = None  # (d, P) unit projections for SW2
    ref_q: torch.Tensor | None = None  # (B, P) reference quantiles of exact data samples
    _refs: dict = field(default_factory=dict)

    @property
    def d(self) -> int:
        return self.gm.d

    @property
    def batch(self) -> int:
        return self.z.shape[0]

    def s_of_t(self, t: float) -> float:
        """σ̃ = σ/α at time t (DDPMSchedule)."""
        return math.exp(-float(self.schedule.log_snr(torch.tensor(float(t), dtype=F64))))

    def t_of_s(self, s: float) -> float:
        t = float(self.schedule.t_of_log_snr(torch.tensor(-math.log(s), dtype=F64)))
        return min(max(t, self.schedule.t_min), self.schedule.t_max)


PROBLEMS = {
    "ring": dict(make=lambda: ds.GaussianMixture.ring(), batch=512, metric="sw2", proj=64),
    "mix64": dict(make=lambda: ds.GaussianMixture.random(d=64, n_modes=8, seed=0), batch=256, metric="sw2", proj=256),
    "gauss3072": dict(make=lambda: ds.GaussianMixture.image_gaussian((3, 32, 32)), batch=32, metric="frechet", proj=0),
    # the defaults' held-out 16-D mixture (benchmarks/defaults_sweep.py): no default was chosen on it
    "mix16": dict(make=lambda: ds.GaussianMixture.random(d=16, n_modes=5, seed=11), batch=512, metric="sw2", proj=64),
    # held out from the tuners' defaults (benchmarks/defaults_sweep.py --tune-peers): no default was chosen on it
    "mix32": dict(make=lambda: ds.GaussianMixture.random(d=32, n_modes=6, seed=23), batch=512, metric="sw2", proj=64),
    # made after the tuners' defaults were settled (mix32's result decided tune_solver's): judged only
    "mix48": dict(make=lambda: ds.GaussianMixture.random(d=48, n_modes=7, seed=37), batch=512, metric="sw2", proj=64),
    # made on 2026-12-06 before the screening's sampling was compared (stratified vs πps): judged only
    "mix24": dict(make=lambda: ds.GaussianMixture.random(d=24, n_modes=4, seed=53), batch=512, metric="sw2", proj=64),
    "mix40": dict(make=lambda: ds.GaussianMixture.random(d=40, n_modes=9, seed=71), batch=512, metric="sw2", proj=64),
    # made on 2026-12-06 before `diffsolve tune`'s budget rule (learned weights at few evaluations) was
    # chosen on mix24, mix40 and mix48: judged only
    "mix20": dict(make=lambda: ds.GaussianMixture.random(d=20, n_modes=6, seed=97), batch=512, metric="sw2", proj=64),
    "mix56": dict(make=lambda: ds.GaussianMixture.random(d=56, n_modes=5, seed=89), batch=512, metric="sw2", proj=64),
    # made on 2026-12-07 before tune_steps' pilot count was compared on mix24, mix40 and mix48: judged only
    "mix28": dict(make=lambda: ds.GaussianMixture.random(d=28, n_modes=7, seed=131), batch=512, metric="sw2", proj=64),
    "mix36": dict(make=lambda: ds.GaussianMixture.random(d=36, n_modes=5, seed=149), batch=512, metric="sw2", proj=64),
    "mix44": dict(make=lambda: ds.GaussianMixture.random(d=44, n_modes=6, seed=163), batch=512, metric="sw2", proj=64),
}


def make_problem(name: str, batch: int | None = None, seed: int = 1234) -> Problem:
    if name not in PROBLEMS:
        raise ValueError(f"unknown problem {name!r}; valid: {', '.join(PROBLEMS)}")
    spec = PROBLEMS[name]
    gm = spec["make"]()
    schedule = ds.DDPMSchedule()
    den = gm.denoiser(schedule, "eps")
    B = int(batch or spec["batch"])
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, *gm.shape, dtype=F64, generator=g)
    prob = Problem(name, gm, schedule, den, z, spec["metric"])
    if spec["metric"] == "sw2":
        P = spec["proj"]
        proj = torch.randn(gm.d, P, dtype=F64, generator=torch.Generator().manual_seed(seed + 1))
        prob.proj = proj / proj.norm(dim=0, keepdim=True)
        data = gm.sample(200_000, generator=torch.Generator().manual_seed(seed + 2)).reshape(-1, gm.d)
        srt = torch.sort(data @ prob.proj, dim=0).values
        idx = ((torch.arange(B, dtype=F64) + 0.5) / B * srt.shape[0]).long()
        prob.ref_q = srt[idx]
    return prob


# --------------------------------------------------------------------------------------------
# exact reference: the σ → 0 limit of the probability-flow ODE from a start state (VE coords)
# --------------------------------------------------------------------------------------------
S_END = 1e-6
REF_TOL = 1e-9  # rtol = atol; against 1e-10 the solution moves by 3e-9 RMS (ring, mix64)


def reference(prob: Problem, c: float, s0: float) -> torch.Tensor:
    """Exact ODE solution (data space) from y0 = c·z at VE noise level s0 to s = 1e-6, then x̂0.
    Cached per (c, s0). float64, dopri5, rtol = atol = REF_TOL, integrated in λ."""
    key = (round(c, 12), round(s0, 12))
    if key in prob._refs:
        return prob._refs[key]
    gm = prob.gm
    if gm.K == 1 and gm.eigvecs is None:
        # one diagonal Gaussian N(μ, diag v): closed form y(s) = μ + (y0 − μ)·√((v + s²)/(v + s0²));
        # agrees with the dopri5 solve below to 1e-10 RMS (checked on gauss3072)
        mu, v = gm.means[0], gm.eigvals[0]
        y0 = (c * prob.z).reshape(prob.batch, -1)
        prob._refs[key] = (mu + (y0 - mu) * torch.sqrt(v / (v + s0 * s0))).reshape(prob.z.shape)
    else:
        edm = ds.EDMSchedule(sigma_min=S_END, sigma_max=1e4)
        dve = prob.gm.denoiser(edm, "x0")
        y0 = c * prob.z
        prob._refs[key] = ode_reference(dve, y0, s0, S_END, rtol=REF_TOL, atol=REF_TOL, denoise_final=True)
    return prob._refs[key]


def floor_error(prob: Problem) -> float:
    """RMS error of the exact 'ODE to t_min, then x̂0(t_min)' map (from diffsolve's start) against
    the σ → 0 reference: the best any method ending at the DDPM schedule's t_min can reach."""
    sch = prob.schedule
    sT = float(sch.sigma(torch.tensor(sch.t_max, dtype=F64)))
    x_end = ode_reference(prob.den, sT * prob.z, sch.t_max, sch.t_min, rtol=REF_TOL, atol=REF_TOL, denoise_final=True)
    ref = reference(prob, prob.s_of_t(sch.t_max), prob.s_of_t(sch.t_max))
    return rms(x_end, ref)


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------
def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a.double() - b.double()) ** 2).mean().sqrt())


def distribution_error(prob: Problem, out: torch.Tensor) -> float:
    """ring/mix64: sliced Wasserstein-2 against 200k exact data samples (fixed projections, the
    batch's quantiles against the data's). gauss3072: the exact per-coordinate Fréchet distance
    √(FD/d) of the method's output law against p_0 — every method is an affine per-coordinate
    map of z on this diagonal Gaussian, out_j = b_j + a_j z_j, so the output law N(b, diag a²) is
    recovered exactly from the batch (the fit's residual is checked)."""
    x = out.reshape(out.shape[0], -1).double()
    if prob.metric == "sw2":
        a = torch.sort(x @ prob.proj, dim=0).values
        return float(((a - prob.ref_q) ** 2).mean().sqrt())
    z = prob.z.reshape(prob.batch, -1)
    zm, xm = z.mean(0), x.mean(0)
    a = ((z - zm) * (x - xm)).sum(0) / ((z - zm) ** 2).sum(0)
    b = xm - a * zm
    resid = float((x - (b + a * z)).abs().max())
    if resid > 1e-4 * (1 + float(x.abs().max())):
        return float("nan")  # not affine per coordinate: the exact FD is unavailable
    mu = prob.gm.means[0]
    var = prob.gm.eigvals[0]
    fd = ((b - mu) ** 2).sum() + ((a.abs() - var.sqrt()) ** 2).sum()
    return float((fd / prob.d).sqrt())


# --------------------------------------------------------------------------------------------
# diffsolve
# --------------------------------------------------------------------------------------------
def run_diffsolve(prob: Problem, solver: str, grid: str, denoise_final: bool, budget: int,
                  options: dict | None = None) -> dict:
    """One diffsolve run at an NFE budget (the final denoise counts). Returns the output and
    its start (VE scale c, s0) for the reference."""
    sol = ds.solvers.get_solver(solver, **(options or {}))
    steps = sol.steps_for_nfe(budget, denoise_final)
    t = ds.make_grid(prob.schedule, steps, grid)
    t0 = float(t[0])
    sig0 = float(prob.schedule.sigma(t[0]))
    x = sig0 * prob.z
    n0 = prob.den.nfe
    res = ds.sample(prob.den, x, solver=sol, nfe=budget, grid=grid, denoise_final=denoise_final)
    if float(res.t[0]) != t0:
        raise RuntimeError("grid start mismatch")
    s0 = prob.s_of_t(t0)
    return dict(out=res.x, nfe=prob.den.nfe - n0, steps=len(res.t) - 1, t0=t0, c=s0, s0=s0,
                t_last=float(res.t[-1]))


# --------------------------------------------------------------------------------------------
# diffusers
# --------------------------------------------------------------------------------------------
DDPM_BETAS = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")


def _diffusers_model(prob: Problem):
    N = prob.schedule.num_train_timesteps

    def model(x, timestep):
        k = float(timestep)
        k = min(max(k, 0.0), N - 1.0)
        t = (k + 1.0) / N
        return prob.den.eps(x.double(), t).to(x.dtype)

    return model


def diffusers_configs() -> list[tuple[str, str, dict, int]]:
    """(family label, scheduler class, config, model calls per inference step [1 or 2])."""
    out = []
    # 'leading' starts late (not ranked, see peers_quality.py): kept for DDIM only, to show its
    # distribution error; the other schedulers use trailing and linspace
    sp = ("trailing", "linspace")
    for spacing, off in (("leading", 0), ("leading", 1), ("trailing", 0), ("linspace", 0)):  # offset: leading only
        for one in (True, False):
            out.append(("diffusers DDIM", "DDIMScheduler",
                        dict(timestep_spacing=spacing, set_alpha_to_one=one, steps_offset=off, clip_sample=False), 1))
    for order in (2, 3):
        for spacing in sp:
            for karras in (False, True):
                for final in ("zero", "sigma_min"):
                    for lof in (True, False):
                        out.append((f"diffusers DPM-Solver++ {order}M", "DPMSolverMultistepScheduler",
                                    dict(solver_order=order, algorithm_type="dpmsolver++", timestep_spacing=spacing,
                                         use_karras_sigmas=karras, final_sigmas_type=final, lower_order_final=lof), 1))
        for spacing in sp:
            for karras in (False, True):
                for st in ("bh1", "bh2"):
                    for final in ("zero", "sigma_min"):
                        out.append((f"diffusers UniPC-{order}", "UniPCMultistepScheduler",
                                    dict(solver_order=order, solver_type=st, timestep_spacing=spacing,
                                         use_karras_sigmas=karras, final_sigmas_type=final), 1))
                        # noise-prediction UniPC (diffusers' predict_x0=False)
                        out.append((f"diffusers UniPC-{order} ε", "UniPCMultistepScheduler",
                                    dict(solver_order=order, solver_type=st, timestep_spacing=spacing,
                                         use_karras_sigmas=karras, final_sigmas_type=final, predict_x0=False), 1))
        for spacing in sp:
            for karras in (False, True):
                out.append((f"diffusers DEIS-{order}", "DEISMultistepScheduler",
                            dict(solver_order=order, timestep_spacing=spacing, use_karras_sigmas=karras), 1))
    for spacing in sp:
        for karras in (False, True):
            out.append(("diffusers Euler", "EulerDiscreteScheduler",
                        dict(timestep_spacing=spacing, use_karras_sigmas=karras), 1))
            out.append(("diffusers Heun", "HeunDiscreteScheduler",
                        dict(timestep_spacing=spacing, use_karras_sigmas=karras), 2))
    return out


def run_diffusers(prob: Problem, cls_name: str, config: dict, budget: int, per_step: int) -> dict:
    """scheduler.step in the standard Python loop, with the largest step count whose counted
    model calls fit the budget."""
    import diffusers

    cls = getattr(diffusers, cls_name)
    model = _diffusers_model(prob)
    n = budget if per_step == 1 else (budget + 1) // 2
    while n >= 1:
        sch = cls(**DDPM_BETAS, prediction_type="epsilon", **config)
        sch.set_timesteps(n)
        x = prob.z * float(sch.init_noise_sigma)
        ts = sch.timesteps
        t0 = ts[0]
        x_in0 = sch.scale_model_input(x, t0)
        n0 = prob.den.nfe
        for tt in ts:
            xin = sch.scale_model_input(x, tt)
            eps = model(xin, tt)
            x = sch.step(eps, tt, x).prev_sample
        nfe = prob.den.nfe - n0
        if nfe <= budget:
            break
        n -= 1
    else:
        raise RuntimeError("no step count fits the budget")
    # start state as the model sees it: VP x at timestep ts[0] → VE y = x/α, s0 = σ/α
    N = prob.schedule.num_train_timesteps
    tc = (min(max(float(t0), 0.0), N - 1.0) + 1.0) / N
    a0 = float(prob.schedule.alpha(torch.tensor(tc, dtype=F64)))
    scale = float((x_in0.reshape(-1)[0] / prob.z.reshape(-1)[0])) if float(prob.z.reshape(-1)[0]) != 0 else 1.0
    s0 = prob.s_of_t(tc)
    return dict(out=x, nfe=nfe, steps=n, t0=tc, c=scale / a0, s0=s0, t_last=None)


# --------------------------------------------------------------------------------------------
# k-diffusion
# --------------------------------------------------------------------------------------------
def _k_model(prob: Problem):
    sch = prob.schedule

    def model(y, sigma, **kw):
        s = float(sigma.reshape(-1)[0])
        t = prob.t_of_s(s)
        a = float(sch.alpha(torch.tensor(t, dtype=F64)))
        return prob.den.x0(a * y.double(), t).to(y.dtype)

    return model


K_SAMPLERS = {  # name: (function, model calls per step except a final step to σ = 0, extra kwargs)
    "euler": ("sample_euler", 1, {}),
    "heun": ("sample_heun", 2, {}),
    "dpm_2": ("sample_dpm_2", 2, {}),
    "lms": ("sample_lms", 1, {}),
    "dpmpp_2m": ("sample_dpmpp_2m", 1, {}),
    "dpmpp_3m_sde(eta=0)": ("sample_dpmpp_3m_sde", 1, {"eta": 0.0, "noise_sampler": lambda a, b: 0.0}),
}
K_SIGMAS = ("karras", "exponential", "discrete")


def k_sigmas(prob: Problem, kind: str, n: int) -> torch.Tensor:
    ks = k_sampling()
    sch = prob.schedule
    smin, smax = prob.s_of_t(sch.t_min), prob.s_of_t(sch.t_max)
    if kind == "karras":
        return ks.get_sigmas_karras(n, smin, smax, rho=7.0).double()
    if kind == "exponential":
        return ks.get_sigmas_exponential(n, smin, smax).double()
    if kind == "discrete":  # k-diffusion's DiscreteSchedule.get_sigmas: timesteps linspace(N-1, 0, n)
        N = sch.num_train_timesteps
        k = torch.linspace(N - 1, 0, n, dtype=F64)
        s = torch.exp(-sch.log_snr((k + 1) / N))
        return torch.cat([s, s.new_zeros(1)])
    raise ValueError(kind)


def run_kdiff(prob: Problem, sampler: str, sigmas_kind: str, budget: int) -> dict:
    ks = k_sampling()
    fn_name, per_step, extra = K_SAMPLERS[sampler]
    fn = getattr(ks, fn_name)
    model = _k_model(prob)
    n = budget if per_step == 1 else (budget + 1) // 2
    while n >= 1:
        sig = k_sigmas(prob, sigmas_kind, n)
        y = prob.z * float(sig[0])
        n0 = prob.den.nfe
        out = fn(model, y, sig, disable=True, **extra)
        nfe = prob.den.nfe - n0
        if nfe <= budget:
            break
        n -= 1
    s0 = float(sig[0])
    return dict(out=out, nfe=nfe, steps=n, t0=prob.t_of_s(s0), c=s0, s0=s0, t_last=None)


# --------------------------------------------------------------------------------------------
# the configurations and their rows (peers_quality.py runs them all; confirm_quality.py re-runs
# the best of its JSONL on a new batch)
# --------------------------------------------------------------------------------------------
QUALITY_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "peers_quality_{problem}.jsonl")


def read_jsonl(path) -> list[dict]:
    """The rows of a JSONL file in order; blank and torn lines (a run killed mid-write) are skipped,
    a missing file has none."""
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def quality_rows(problem: str) -> list[dict]:
    """The rows peers_quality.py wrote for ``problem`` (:data:`QUALITY_OUT`)."""
    return read_jsonl(QUALITY_OUT.format(problem=problem))

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
            a = run_diffsolve(prob, name, "log_snr", True, 10)["out"]
            b = run_diffsolve(prob, twin, "log_snr", True, 10)["out"]
        except Exception:
            continue
        if rms(a, b) <= 1e-12 * (1 + float(b.abs().max())):
            dup.append(name)
    return dup


def config_label(solver, opts, grid, df) -> str:
    o = "".join(f",{k}={v}" for k, v in opts.items())
    return f"{solver}{o} grid={grid} denoise_final={df}"


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
                             (lambda s=solver, o=opts, g=grid, d=df, b=b: run_diffsolve(prob, s, g, d, b, o))))
    if "peers" in which:
        for fam, cls, cfg, per in diffusers_configs():
            lab = f"{cls}(" + ",".join(f"{k}={v}" for k, v in cfg.items()) + ")"
            for b in budgets:
                jobs.append((f"{name}|diffusers|{lab}|{b}", "diffusers", fam, lab, b,
                             (lambda c=cls, g=cfg, p=per, b=b: run_diffusers(prob, c, g, b, p))))
        for smp in K_SAMPLERS:
            for kind in K_SIGMAS:
                lab = f"k-diffusion {smp} sigmas={kind}"
                for b in budgets:
                    jobs.append((f"{name}|k-diffusion|{lab}|{b}", "k-diffusion", f"k-diffusion {smp}", lab, b,
                                 (lambda s=smp, k=kind, b=b: run_kdiff(prob, s, k, b))))
    return jobs


def ranked(r) -> bool:
    """Whether a row is ranked: a full-start run with a finite rms and no error."""
    return r.get("rms") is not None and r.get("error") is None and math.isfinite(r["rms"]) and r.get("full_start", True)


def fmt(x) -> str:
    """A table cell: 3 significant digits, '—' for none, 'diverged' for inf/nan."""
    if x is None:
        return "—"
    if not math.isfinite(x):
        return "diverged"
    return f"{x:.3g}"
