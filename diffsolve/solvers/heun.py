r"""Euler and Heun on the probability-flow ODE in VE coordinates (Heun also in t), with EDM's churn (docs/math.md §15).

With y = x/α and s = σ/α = e^{−λ} the probability-flow ODE (docs/math.md (3.3)) becomes

    dy/ds = (y − D(y; s))/s,      D(y; s) = x̂0(α_t y, t),   t = t(s),    (EDM eq. 3; docs/math.md (9.5))

so every schedule looks like EDM's α = 1, σ = s. A step from grid point i to i + 1 reads

    d_i = (y_i − D(y_i; s_i))/s_i,          ŷ = y_i + (s_{i+1} − s_i) d_i             (Euler, (15.1))
    y_{i+1} = y_i + (s_{i+1} − s_i)·½(d_i + (ŷ − D(ŷ; s_{i+1}))/s_{i+1})              (Heun, (15.2))

and the state returns to x = α_{i+1} y_{i+1}. ``euler_ve`` is k-diffusion's ``sample_euler``; it
equals DDIM(η = 0) step for step: x_{i+1} = (σ_{i+1}/σ_i) x_i + α_{i+1}(1 − e^{−h}) x̂0.

EDM's Algorithm 1 takes a plain Euler step on its last step because that step ends at s = 0,
where the Heun correction would divide by zero. diffsolve's grids end at t_min > 0 (s > 0), so
every step here is a Heun step (2 evaluations); EDM's final Euler step from s_min to 0 is
exactly ``y − s·(y − D)/s = D``, i.e. ``sample(..., denoise_final=True)``.

Churn (EDM Algorithm 2; docs/math.md (15.3), (15.4)). Before step i, if S_tmin ≤ s_i ≤ S_tmax,
raise the noise level to ŝ = s_i(1 + γ_i), γ_i = min(S_churn/N, √2 − 1), by adding fresh noise
(the forward process in y from s_i to ŝ), then take the ODE step from ŝ to s_{i+1}. N is EDM's
number of steps: the grid's steps, plus one for the final denoise (EDM's and k-diffusion's last step,
to σ = 0). That last step itself is not churned here: k-diffusion churns it too where
S_tmin ≤ σ_min (its default S_tmin = 0), which then differs (EDM's presets have S_tmin = 0.05):

    ŷ_i = y_i + S_noise √(ŝ² − s_i²) z.

This is an operator *splitting* (forward noise, then the ν = 0 ODE), not an integrator of the
reverse family (docs/math.md (3.2)) for a given ν_t. To first order in the step it injects the variance of
the ν = η g member with η_i² ≈ γ_i/h_i (h_i the step in λ): on a grid uniform in λ over a range
Δλ that is η² ≈ S_churn/Δλ while γ_i < √2 − 1, so the effective η depends on the grid (and on n
once γ is capped), and is zero outside [S_tmin, S_tmax]; with S_noise ≠ 1 the splitting does not
preserve the marginals at all.
Asking these solvers for ``eta > 0`` is therefore an error: use ``ancestral``, ``ddim``, ``euler``
or ``pc`` for the reverse family with a given ν_t. ŝ is capped at s(t_max), the largest noise
level the schedule (and the network) knows (EDM's and k-diffusion's code do not cap it; they
agree with this one step for step, same noise, whenever S_tmax < s(t_max)).
"""
from __future__ import annotations

import math

from torch import Tensor

from ..schedules import FlowSchedule
from .base import Solver
from .registry import register

__all__ = ["EulerVE", "Heun"]


class _VESolver(Solver):
    """Shared part: VE coordinates, D(y; s), and EDM's churn."""

    stochastic = False

    def __init__(self, S_churn: float = 0.0, S_tmin: float = 0.0, S_tmax: float = math.inf,
                 S_noise: float = 1.0):
        for k, v in (("S_churn", S_churn), ("S_tmin", S_tmin), ("S_noise", S_noise)):
            if not (float(v) >= 0.0 and math.isfinite(float(v))):
                raise ValueError(f"{k} must be a finite number >= 0, got {v!r}")
        if not float(S_tmax) >= float(S_tmin):
            raise ValueError(f"need S_tmax >= S_tmin, got S_tmin={S_tmin}, S_tmax={S_tmax}")
        self.S_churn, self.S_noise = float(S_churn), float(S_noise)
        self.S_tmin, self.S_tmax = float(S_tmin), float(S_tmax)

    @property
    def draws_noise(self) -> bool:
        """True when churn is on (noise is drawn even though ν = 0)."""
        return self.S_churn > 0.0

    def check(self, ctx):
        if not ctx.level.is_zero:
            from .registry import stochastic_solver_names

            raise ValueError(
                f"solver {self.name!r} integrates the probability-flow ODE (eta=0) only; for eta > 0 (or a noise "
                f"level) pick a stochastic solver: {', '.join(stochastic_solver_names())} (its churn option, "
                f"S_churn > 0, is EDM's noise-injection splitting, not the reverse SDE)")
        super().check(ctx)

    @staticmethod
    def _D(ctx, y: Tensor, t, a: float) -> Tensor:
        """D(y; s) = x̂0(α_t y, t)."""
        return ctx.denoiser.x0(a * y, t)

    def _churn(self, ctx, i: int, y: Tensor):
        """(y, s, t, α) at the start of step i, after EDM's optional noise injection."""
        s = math.exp(-ctx.lam[i])
        # one draw per step whenever churn is on, used or not, as EDM's and k-diffusion's code do:
        # the same seeds then give the same samples as those implementations
        z = ctx.randn() if self.S_churn > 0.0 else None
        # EDM's N counts its last step, to σ = 0, which the final denoise makes here
        n = ctx.steps + (1 if ctx.denoise_final else 0)
        gamma = min(self.S_churn / n, math.sqrt(2.0) - 1.0) if self.S_tmin <= s <= self.S_tmax else 0.0
        if gamma <= 0.0:
            return y, s, ctx.t[i], ctx.alpha[i]
        sch = ctx.schedule
        s_hat = min(s * (1.0 + gamma), math.exp(-sch.lambda_min))
        t_hat = sch.t_of_log_snr(-math.log(s_hat))
        y = y + (self.S_noise * math.sqrt(max(s_hat * s_hat - s * s, 0.0))) * z
        return y, s_hat, t_hat, float(sch.alpha(t_hat))


@register
class EulerVE(_VESolver):
    """Euler in VE coordinates (k-diffusion's ``euler``, EDM's Euler step); one evaluation per step; order 1.

    Step t_i → t_{i+1} (docs/math.md (15.1)), y = x/α, s = σ/α = e^{−λ}, D(y; s) = x̂0(α_t y, t):

        y_{i+1} = y_i + (s_{i+1} − s_i)(y_i − D(y_i; s_i))/s_i,    x_{i+1} = α_{i+1} y_{i+1}

    after the optional churn (docs/math.md (15.3): (y_i, s_i) replaced by (ŷ_i, ŝ)). Without churn
    it equals DDIM(η = 0) step for step.

    Shapes: x, y, D and the churn noise z are (B, *shape); s, α, γ are float64 scalars shared by the
    batch; z comes from the context's per-sample noise streams (one draw per step when
    ``S_churn > 0``). No state.

    Args:
        S_churn, S_tmin, S_tmax, S_noise: EDM's churn (module docstring); off by default.

    References:
        Karras, Aittala, Aila, Laine, Elucidating the Design Space of Diffusion-Based Generative
        Models, arXiv:2206.00364 (eq. 3, Algorithm 2); Crowson, k-diffusion (``sample_euler``).
    """

    name = "euler_ve"
    declared_order = 1.0
    nfe_per_step = 1

    def step(self, ctx, i, x, state):
        y, s, t, a = self._churn(ctx, i, x / ctx.alpha[i])
        s1 = math.exp(-ctx.lam[i + 1])
        d = (y - self._D(ctx, y, t, a)) / s
        return ctx.alpha[i + 1] * (y + (s1 - s) * d), state


@register
class Heun(_VESolver):
    """Heun's method (explicit trapezoidal rule) in VE coordinates, EDM Algorithms 1–2, or in raw time t; order 2.

    Two evaluations per step (every step: grids end at s_min > 0). Step t_i → t_{i+1}
    (docs/math.md (15.2)), y = x/α, s = σ/α = e^{−λ}, D(y; s) = x̂0(α_t y, t):

        d = (y_i − D(y_i; s_i))/s_i,   ŷ = y_i + (s_{i+1} − s_i) d,
        y_{i+1} = y_i + (s_{i+1} − s_i)·½(d + (ŷ − D(ŷ; s_{i+1}))/s_{i+1}),   x_{i+1} = α_{i+1} y_{i+1}

    after the optional churn (docs/math.md (15.3): (y_i, s_i) replaced by (ŷ_i, ŝ)). In t
    (``variable="t"``, and by default on a :class:`~diffsolve.schedules.FlowSchedule`) the same trapezoid
    on the probability-flow ODE in raw time, b(x, t) its drift
    (:meth:`diffsolve.processes.ReverseSDE.drift`, docs/math.md (3.3), (15.5)), Δ = t_{i+1} − t_i:

        x̂ = x_i + Δ b(x_i, t_i),   x_{i+1} = x_i + Δ·½(b(x_i, t_i) + b(x̂, t_{i+1})).

    On a rectified-flow schedule (t = σ, b = the velocity v̂) this is diffusers'
    ``FlowMatchHeunDiscreteScheduler`` step for step on its σ (its last, Euler step to σ = 0 gives x̂0:
    ``denoise_final=True``); unlike the VE form it can start at σ = 1, where α = 0. Measured on a trained
    flow network (the digits network as a rectified flow; 256 start points, final denoise; ``python
    benchmarks/defaults_sweep.py --report --flow-deis4``): t gives 0.09×, 0.31×, 0.75×, 1.03× the error
    of s at 7, 11, 15, 21 evaluations on the log-SNR grid, 0.01–0.08× on the uniform time grid, 0.20–0.76×
    on Karras's.

    Shapes: x, y, ŷ, D and the churn noise z are (B, *shape); s, α, γ are float64 scalars shared by
    the batch; z comes from the context's per-sample noise streams (one draw per step when
    ``S_churn > 0``). No state.

    Args:
        S_churn, S_tmin, S_tmax, S_noise: EDM's churn (module docstring); off by default; in s only.
        variable: ``"auto"`` (default: ``"t"`` on a flow schedule, else ``"s"``), ``"s"``
            (EDM's s = σ/α: EDM, k-diffusion) or ``"t"`` (the schedule's time: diffusers' flow matching).

    References:
        Karras, Aittala, Aila, Laine, Elucidating the Design Space of Diffusion-Based Generative
        Models, arXiv:2206.00364 (Algorithms 1 and 2); Esser et al., Scaling Rectified Flow
        Transformers for High-Resolution Image Synthesis, arXiv:2403.03206 (diffusers' flow-matching
        schedulers).
    """

    name = "heun"
    declared_order = 2.0
    nfe_per_step = 2

    def __init__(self, S_churn: float = 0.0, S_tmin: float = 0.0, S_tmax: float = math.inf, S_noise: float = 1.0,
                 variable: str = "auto"):
        super().__init__(S_churn, S_tmin, S_tmax, S_noise)
        if variable not in ("auto", "s", "t"):
            raise ValueError(f"unknown variable {variable!r} for heun; valid: 'auto', 's' (EDM's σ/α), 't' (raw time)")
        if variable == "t" and self.S_churn > 0.0:
            raise ValueError("heun's churn (S_churn > 0) is EDM's, defined in s = σ/α: use variable='s' with it")
        self.variable = variable

    def _in_t(self, ctx) -> bool:
        return self._t_on(ctx.schedule)

    def _t_on(self, schedule) -> bool:
        return self.variable == "t" or (self.variable == "auto" and isinstance(schedule, FlowSchedule))

    def default_grid(self, schedule) -> str:
        """EDM's Karras grid in s (as EDM and k-diffusion run it), the uniform time grid in t (as diffusers'
        ``FlowMatchHeunDiscreteScheduler``). ``python benchmarks/heun_grid.py`` (the ring and two mixtures,
        256 start points each): on the log-SNR grid the first step's s-ratio (about 35 at 4 evaluations from
        s = 160) over-weights the trapezoid's correction, RMS error 23–61 at 4 evaluations under DDPM, EDM and
        cosine schedules against 3.5–6.1 on Karras's, the two within 0.7–1.6× of each other at 10–20; the time
        grid is better still on DDPM at 6–10 (0.2–0.4× Karras's; 0.5–1.1× at 16–20) but 4–54× worse on EDM's σ
        range, so Karras's is the rule in s; in t on a flow schedule the time grid gives 0.1–1.0× the log-SNR
        grid's error at 6–20. On the trained digits model, which the rule was not read off (``--digits``),
        Karras's grid gives 0.06–0.7× the log-SNR grid's error at 4–20 evaluations."""
        return "time" if self._t_on(schedule) else "karras"

    def check(self, ctx):
        super().check(ctx)
        if self._in_t(ctx):
            if self.S_churn > 0.0:
                raise ValueError("heun steps in t on a flow schedule (diffusers' FlowMatchHeun form), and EDM's churn "
                                 "(S_churn > 0) is defined in s = σ/α: give variable='s' to churn there")
            return
        # the trapezoid in s = σ/α averages the slopes at both ends of a step; from α ≈ 0 (a
        # flow-matching start at σ = 1, s ~ 1e9) one step spans many orders of magnitude of s and
        # the average is meaningless (measured: errors of 1e6 on SD3-style pipelines)
        s0, s1 = math.exp(-ctx.lam[0]), math.exp(-ctx.lam[1])
        if s0 > 1e6 * s1:
            raise ValueError(f"solver 'heun' steps in s = σ/α (EDM's coordinates); this grid starts at s = {s0:.3g} "
                             f"(α ≈ 0, e.g. flow matching at σ = 1) and its first step ends at s = {s1:.3g}: use a "
                             f"solver in λ or t ({'' if self.S_churn > 0 else repr('heun:variable=t') + ', '}"
                             f"'euler', 'ddim', 'dpmpp_2m', 'unipc'), or start the grid where α > 0 (a pipeline that "
                             f"passes sigmas from 1, as Flux's and SD3's do, needs one of those)")

    def step(self, ctx, i, x, state):
        if self._in_t(ctx):
            t0, t1 = ctx.t[i], ctx.t[i + 1]
            dt = float(t1 - t0)
            b = ctx.process.drift(x, t0)
            b1 = ctx.process.drift(x + b * dt, t1)
            return x + (0.5 * dt) * (b + b1), state
        y, s, t, a = self._churn(ctx, i, x / ctx.alpha[i])
        s1, a1 = math.exp(-ctx.lam[i + 1]), ctx.alpha[i + 1]
        d = (y - self._D(ctx, y, t, a)) / s
        y_e = y + (s1 - s) * d
        d1 = (y_e - self._D(ctx, y_e, ctx.t[i + 1], a1)) / s1
        return a1 * (y + (s1 - s) * 0.5 * (d + d1)), state
