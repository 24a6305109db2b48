r"""Euler and Euler–Maruyama on the reverse family in raw time t (docs/math.md (3.2), 3.3).

    x_{t_{i+1}} = x_{t_i} + b(x_{t_i}, t_i) Δ_i + ν_{t_i} √|Δ_i| z_i,   Δ_i = t_{i+1} − t_i < 0,

with b(x, t) = f_t x − ½(g_t² + ν_t²) ŝ(x, t) the reverse-family drift and z_i ~ N(0, I). With ν = 0
this is the explicit Euler method on the probability-flow ODE (global order 1); with ν > 0 it is
Euler–Maruyama (strong order ½, weak order 1).
"""
from __future__ import annotations

import math

from .base import Solver, bcast
from .registry import register


@register
class Euler(Solver):
    """Euler (ν = 0) / Euler–Maruyama (ν > 0) in raw time t; one evaluation per step.

    State: none. Update: x ← x + b(x, t_i)(t_{i+1} − t_i) + ν_{t_i} √(t_i − t_{i+1}) z.

    References:
        Kloeden & Platen, Numerical Solution of Stochastic Differential Equations (1992);
        Song et al., Score-Based Generative Modeling through SDEs, arXiv:2011.13456.
    """

    name = "euler"
    order = 1.0
    stochastic = True

    def step(self, ctx, i, x, state):
        t, s = ctx.t[i], ctx.t[i + 1]
        dt = float(s - t)
        x = x + ctx.process.drift(x, t) * dt
        if not ctx.level.is_zero:
            x = x + bcast(float(ctx.level.nu(t)) * math.sqrt(-dt), x) * ctx.randn()
        return x, state
