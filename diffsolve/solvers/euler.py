r"""Euler and Euler–Maruyama on the reverse family in raw time t (docs/math.md (3.2), (11.1)).

    x_{t_{i+1}} = x_{t_i} + b(x_{t_i}, t_i) Δ_i + ν_{t_i} √|Δ_i| z_i,   Δ_i = t_{i+1} − t_i < 0,

with b(x, t) = f_t x − ½(g_t² + ν_t²) ŝ(x, t) the reverse-family drift (docs/math.md (9.1)) and
z_i ~ N(0, I). With ν = 0 this is the explicit Euler method on the probability-flow ODE
(docs/math.md (3.3); global order 1); with ν > 0 it is Euler–Maruyama (strong order ½, weak order 1).
"""
from __future__ import annotations

import math

from .base import Solver, bcast
from .registry import register


@register
class Euler(Solver):
    """Euler (ν = 0) / Euler–Maruyama (ν > 0) in raw time t; one evaluation per step.

    Step t_i → t_{i+1} (docs/math.md (11.1)), Δ_i = t_{i+1} − t_i < 0, z ~ N(0, I):

        x_{i+1} = x_i + [f_{t_i} x_i − ½(g_{t_i}² + ν_{t_i}²) ŝ(x_i, t_i)] Δ_i + ν_{t_i} √|Δ_i| z

    (the bracket is :meth:`diffsolve.processes.ReverseSDE.drift`, docs/math.md (9.1)). Global
    order 1 at ν = 0; strong order ½, weak order 1 for ν > 0.

    Shapes: x, ŝ and z are (B, *shape); f, g², ν and Δ are float64 scalars shared by the batch; z
    comes from the context's per-sample noise streams (none is drawn for ``eta=0``). No state.

    References:
        Kloeden & Platen, Numerical Solution of Stochastic Differential Equations, Springer (1992);
        Song, Sohl-Dickstein, Kingma, Kumar, Ermon, Poole, Score-Based Generative Modeling through
        Stochastic Differential Equations, arXiv:2011.13456.
    """

    name = "euler"
    declared_order = 1.0
    stochastic = True

    def check(self, ctx):
        super().check(ctx)
        check_stable(ctx, self.name)

    def step(self, ctx, i, x, state):
        t, s = ctx.t[i], ctx.t[i + 1]
        dt = float(s - t)
        x = x + ctx.process.drift(x, t) * dt
        if not ctx.level.is_zero:
            x = x + bcast(float(ctx.level.nu(t)) * math.sqrt(-dt), x) * ctx.randn()
        return x, state


# the largest amplification an error receives over the rest of the run (the product of the per-step factors from
# the step it enters to the end) past which an Euler–Maruyama run is refused: its samples would be garbage
MAX_GROWTH = 100.0


def check_stable(ctx, name: str, other: str = ""):
    """Refuse a grid on which the Euler–Maruyama step is unstable (docs/math.md (11.1a)): on the part of the
    drift linear in x, f_t x + ½(g_t² + ν_t²)(x − α x̂0)/σ_t², one step multiplies a perturbation by
    |1 − |Δ_i| κ_i| with κ_i = f_{t_i} + (g² + ν²)_{t_i}/(2σ²_{t_i}); an error made at step i is multiplied by the
    product of the factors from i to the end, damping included. A large ν (η) or long steps where σ is small
    make that product grow geometrically. ``other``: the caller's own way out, named in the message."""
    sch, t = ctx.denoiser.schedule, ctx.t
    ti, h = t[:-1], t[:-1] - t[1:]
    k = sch.f(ti) + 0.5 * (sch.g2(ti) + ctx.level.nu2(ti)) / sch.sigma(ti) ** 2
    log_factor = (1 - h * k).abs().clamp(min=1e-300).log()
    # from step i to the end: suffix sums of the log factors
    growth = float(log_factor.flip(0).cumsum(0).max().exp())
    if growth > MAX_GROWTH:
        eta = f"eta={ctx.level.eta:g}" if ctx.level.eta is not None else "this noise level"
        raise ValueError(f"{name} with {eta} is unstable on this grid of {len(h)} steps: an error made in its "
                         f"Euler–Maruyama steps grows by up to {growth:.2g}× before the end (stable: at most 1; "
                         f"the largest step factor is {float(log_factor.max().exp()):.3g}), so the samples would "
                         f"diverge. Take more steps, a smaller eta, or a solver that takes any eta exactly "
                         f"(ancestral, dpmpp_2m_sde{other})")
