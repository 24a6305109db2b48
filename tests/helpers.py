"""Helpers shared by several test modules (imported as ``from helpers import ...``: pytest puts
``tests/`` on ``sys.path``, and so does ``python tests/<file>.py``). Not a test module itself.

- the fixed-step solver list and constructor used by the generic tests (``FIXED``, ``make``);
- order measurement: ``slope`` (least-squares slope of −log error against log steps), the pathwise
  ODE errors on the ring (``ode_errors``) and the exact weak errors on a Gaussian (``weak_errors``,
  through the affine probe ``weak_moments``);
- ``k_diffusion_sampling``: ``k_diffusion.sampling`` imported without its package ``__init__``;
- ``peak_bytes``: the allocator's peak during a call, as ``benchmarks/cost.py`` measures it.
"""
from __future__ import annotations

import importlib.util
import math
import os
import sys
import types

import pytest
import torch

import diffsolve as ds
from diffsolve.noise import NoiseSource
from diffsolve.processes import NoiseLevel
from diffsolve.reference import ode_reference
from diffsolve.solvers import SOLVERS, Solver
from diffsolve.loop import integrate

F64 = torch.float64
# Song et al.'s VP setting; at the default snr = 0.16 the per-sample norm ratio ‖z‖/‖ŝ‖ of a
# 2-D problem is heavy-tailed and a few samples are thrown far out (see diffsolve/solvers/pc.py).
OPTIONS = {"pc": {"snr": 0.01}}


# --- the registered fixed-step solvers ---------------------------------------------------------
def fixed_step_solvers() -> list[str]:
    """Names of registered solvers that run through the fixed-step loop (no adaptive ones)."""
    out = []
    for name, cls in sorted(SOLVERS.items()):
        if not (isinstance(cls, type) and issubclass(cls, Solver)) or getattr(cls, "adaptive", False):
            continue
        if getattr(cls, "step", Solver.step) is Solver.step:
            continue
        out.append(name)
    return out


FIXED = fixed_step_solvers()


def make(name: str) -> Solver:
    return SOLVERS[name](**OPTIONS.get(name, {}))


# --- measured convergence order ---------------------------------------------------------------
ORDER_STEPS = (16, 32, 64)  # ≥ 15: DPM-Solver++'s lower_order_final switch stays off


def slope(steps, errs) -> float:
    """Least-squares slope of −log error against log steps."""
    ls = torch.tensor([math.log(s) for s in steps], dtype=F64)
    le = torch.tensor([math.log(e) for e in errs], dtype=F64)
    ls = ls - ls.mean()
    return float(-(ls * (le - le.mean())).sum() / (ls * ls).sum())


_ODE = {}


def ode_problem():
    """Ring (std 0.5) on VP, 16 starting points x_T and their reference ODE solutions at t_min
    (dopri5 in λ, tol 1e-9; the smallest error measured is ~1e-5). With std 0.1, x̂0 turns sharply
    in λ where the modes separate and even Heun needs ~256 steps to show its order; with std 0.5,
    16–64 steps are asymptotic."""
    if not _ODE:
        den = ds.GaussianMixture.ring(std=0.5).denoiser("vp", "eps")
        sch = den.schedule
        xT = float(sch.sigma(sch.t_max)) * torch.randn(16, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
        _ODE["v"] = den, xT, ode_reference(den, xT, sch.t_max, sch.t_min, rtol=1e-9, atol=1e-9)
    return _ODE["v"]


def ode_errors(solver: Solver, steps=ORDER_STEPS) -> list[float]:
    den, xT, ref = ode_problem()
    errs = []
    for n in steps:
        t = ds.make_grid(den.schedule, n, "log_snr")
        x = integrate(solver, den, xT, t, level=NoiseLevel(den.schedule, 0.0)).x
        errs.append(float(((x - ref) ** 2).mean().sqrt()))
    return errs


# Weak order on a Gaussian: data N(μ, diag v). Every solver here is affine in (x_T, z_1, …, z_K)
# for affine x̂0, so the law of its output is Gaussian with mean b = out(mean x_T, z = 0) and
# variance a² + Σ_k c_k², found exactly by probing one input at a time (no Monte Carlo noise).
# A solver that is not affine (the Langevin corrector's per-sample step) is caught by a check
# row and measured by Monte Carlo instead.
WEAK_MEAN = torch.tensor([0.5, -0.3], dtype=F64)
WEAK_VAR = torch.tensor([0.25, 0.04], dtype=F64)


class ProbeNoise:
    """Noise for the affine probe: draw k is 1 in row 2 + k, random in the last row, 0 elsewhere."""

    def __init__(self, batch: int, d: int, seed: int = 0):
        self.batch, self.d, self.draws = batch, d, 0
        self.gen = torch.Generator().manual_seed(seed)
        self.check = []

    def randn(self):
        z = torch.zeros(self.batch, self.d, dtype=F64)
        if 2 + self.draws < self.batch - 1:
            z[2 + self.draws] = 1.0
        w = torch.randn(self.d, dtype=F64, generator=self.gen)
        self.check.append(w)
        z[-1] = w
        self.draws += 1
        return z


def weak_moments(solver: Solver, den, steps: int, eta: float, mc_samples: int = 2000, reps: int = 16):
    """(mean, variance) per coordinate of the solver's output at t_min from exact x_T ~ p_{t_max}."""
    sch = den.schedule
    t = ds.make_grid(sch, steps, "log_snr")
    level = NoiseLevel(sch, eta)
    aT, sT = float(sch.alpha(sch.t_max)), float(sch.sigma(sch.t_max))
    m_T, sd_T = aT * WEAK_MEAN, (aT * aT * WEAK_VAR + sT * sT).sqrt()
    u = torch.randn(2, dtype=F64, generator=torch.Generator().manual_seed(7))
    K = solver.nfe(steps) + 1  # a guess at the number of draws, corrected below if too small
    while True:
        x = m_T.expand(K + 3, 2).clone()
        x[1] += sd_T
        x[-1] += sd_T * u
        probe = ProbeNoise(K + 3, 2)
        out = integrate(solver, den, x, t, level=level, source=probe).x
        if probe.draws <= K:
            break
        K = probe.draws
    K = probe.draws
    b, a, c = out[0], out[1] - out[0], out[2:K + 2] - out[0]
    predicted = b + a * u + sum((c[k] * probe.check[k] for k in range(K)), torch.zeros(2, dtype=F64))
    if torch.allclose(out[-1], predicted, rtol=1e-9, atol=1e-9):
        return b, a * a + (c * c).sum(0)
    if not mc_samples:
        return None
    # not affine: Monte Carlo in d = 2·reps (coordinates pooled in two groups of equal law)
    gm = ds.GaussianMixture([1.0], WEAK_MEAN.repeat(reps)[None], WEAK_VAR.repeat(reps)[None])
    den = gm.denoiser(sch, "eps")
    g = torch.Generator().manual_seed(steps)
    xT = gm.sample(mc_samples, sch.t_max, sch, generator=g)
    out = integrate(solver, den, xT, t, level=level, source=NoiseSource(mc_samples, (2 * reps,), generator=g)).x
    out = out.reshape(mc_samples, reps, 2)
    return out.mean((0, 1)), out.var(0).mean(0)


def weak_errors(solver: Solver, eta: float, schedule="vp", steps=ORDER_STEPS) -> list[float]:
    gm = ds.GaussianMixture([1.0], WEAK_MEAN[None], WEAK_VAR[None])
    den = gm.denoiser(schedule, "eps")
    sch = den.schedule
    a, s = float(sch.alpha(sch.t_min)), float(sch.sigma(sch.t_min))
    m_ex, v_ex = a * WEAK_MEAN, a * a * WEAK_VAR + s * s
    errs = []
    for n in steps:
        m, v = weak_moments(solver, den, n, eta)
        errs.append(float(torch.cat([m - m_ex, v - v_ex]).norm()))
    return errs


# --- k-diffusion -------------------------------------------------------------------------------
def k_diffusion_sampling():
    """``k_diffusion.sampling`` without the package's ``__init__`` (which needs clip and torchvision).

    Its ``utils`` imports ``torchvision.transforms.functional`` at import time only; empty stand-in
    modules are placed in ``sys.modules`` for the import and removed right after, so no other test
    sees them. Skips the calling test when k-diffusion is not installed or does not import.
    """
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None:
        pytest.skip("k-diffusion is not installed")
    stubs = ["torchvision", "torchvision.transforms", "torchvision.transforms.functional"]
    before = set(sys.modules)
    try:
        for name in stubs:
            if name not in sys.modules:
                sys.modules[name] = types.ModuleType(name)
        sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]
        sys.modules["torchvision.transforms"].functional = sys.modules["torchvision.transforms.functional"]
        if "k_diffusion" not in sys.modules:
            pkg = types.ModuleType("k_diffusion")
            pkg.__path__ = [os.path.dirname(spec.origin)]
            sys.modules["k_diffusion"] = pkg
        import k_diffusion.sampling as K
    except ImportError as e:
        pytest.skip(f"k_diffusion.sampling does not import here: {e}")
    finally:
        for name in set(sys.modules) - before:
            if name.startswith(("torchvision", "k_diffusion")):
                del sys.modules[name]
    return K


def peak_bytes(fn) -> int:
    """``benchmarks/cost.py``'s ``peak_bytes(fn)`` (the one measurement of the CPU allocator's peak
    extra bytes during ``fn()``), loaded from the script so that tests and benchmark agree."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks", "cost.py")
    spec = importlib.util.spec_from_file_location("_benchmarks_cost", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.peak_bytes(fn)
