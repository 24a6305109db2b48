r"""The probability-flow ODE and its one solve (docs/math.md (3.3), §5).

With ŝ = −ε̂/σ and g² = −2σ²λ' (docs/math.md (1.3)) the ODE reads dx/dt = f_t x − σ_t λ'_t ε̂. For a
monotone change of time u = u(t) and a state scaling y = x / c_t (docs/math.md (9.2)):

    dy/du = L_u y + (K_u / c_t) ε̂(c_t y, t),   L_u = (f_t − c'_t/c_t) dt/du,   K_u = −σ_t λ'_t dt/du

and the divergence of the x-drift per unit u is f_t d dt/du + K_u ∇_x·ε̂ (docs/math.md (5.3)). The
time variables (``time_variable``):

    ``"t"``                 u = t,          c = 1:   dx/dt = f_t x − σ_t λ'_t ε̂          (docs/math.md (8.2))
    ``"log_snr"``           u = λ,          c = 1:   dx/dλ = (f_t/λ'_t) x − σ_t ε̂        (docs/math.md (9.3))
    ``"sigma_over_alpha"``  u = s = σ/α,    c = α:   dy/ds = ε̂(α y, t)   (EDM's VE coordinates, (9.5))
    ``"flow_time"``         u = s/(1 + s),  c = α (1 + s): the rectified flow's time and coordinates at
                            the same λ (a clock, :data:`CLOCKS`, docs/math.md (9.7))
    ``"vp_time"``           u = τ(λ),       c = α √(1 + e^{−2λ}): Song et al.'s VP schedule's (9.7)
    ``"auto"``              sampling: ``t`` on a continuous variance-preserving schedule (α² + σ²
                            = 1: VP, cosine) and on a flow schedule, ``log_snr`` otherwise (EDM,
                            VE, sub-VP, DDPM tables); the likelihood (a solve that carries the
                            divergence): ``flow_time`` on every schedule; with fixed steps (no error
                            control) the sampling rule, since equal steps in an EDM schedule's t (σ
                            from 0.002 to 80) miss the data end

In a clock the state is carried in the reference schedule's coordinates and the likelihood's Δ as the
divergence of that state's drift (docs/math.md (9.8)), so a solve depends on the λ-range alone, not on
the schedule family. For the likelihood ``flow_time`` needed fewer evaluations at matched error than
the rule before it (``t``, λ on DDPM tables) on every family but flow, where it is t
(``benchmarks/likelihood_vp_time.py``: exact divergence, three problems made for the judgement,
0.55–0.98×; 0.63–1.01× on the ring and the 64-D mixture, where ``vp_time`` did 0.68–1.10×).

``"auto"`` is the default everywhere (sampling, the reference solve, encode/decode, the
likelihood): it needed the fewest evaluations at equal accuracy in both measurements, sampling
(``benchmarks/adaptive_time_variable.py``, evaluations for a worst-sample error of 1e-3/1e-4: on VP
``t`` ties λ on a 2-D ring, 74/113 against 74/112, and beats it on a 64-D mixture, 75/101 against
96/123; on cosine 68/104 against 77/100 and 55/73 against 88/133; on flow 55/72 against 79/104 and
38/64 against 84/112; on EDM λ needs 85–89/128–131 and ``t`` 133/168–201) and the likelihood
(``benchmarks/likelihood_split.py``: with the divergence riding along, t's error-against-NFE
curve lies on or below λ's on every continuous schedule, EDM, VE and sub-VP included, e.g. sub-VP
ring rtol 1e-4: 1.6e-5 nats/dim at 116 NFE against 3.7e-5 at 164). On VE, t is λ up to an affine
map. A
:class:`~diffsolve.schedules.DDPMSchedule` interpolates log α piecewise-linearly in t between its
table's timesteps, so dλ/dt jumps at every timestep: in raw t the right-hand side has a kink
every 1/N that the embedded error estimate does not see, and the error stops following the
tolerance (``benchmarks/adaptive_time_variable.py --ddpm``: on the DDPM ring, rtol 1e-5 / 1e-6
leave 1.4e-3 / 1.3e-3 worst-sample error after 128 / 740 calls in t, 4.9e-4 / 1.2e-4 after
128 / 188 in λ; the exact-divergence likelihood with a shared step at rtol 1e-4 / 1e-5 needs
212 / 668 NFE for 1.3e-3 / 1.3e-3 nats/dim in t, 110 / 170 for 5.5e-5 / 2.8e-5 in λ). In λ the
coefficients are functions of λ alone and the kinks reach only the network's time label. Only at a
loose 1e-3 does t do better there (sampling: worst sample 4.5e-3 against λ's 7.8e-2 at 56 calls each).

:meth:`ProbabilityFlowODE.solve` is the one place the ODE meets the Runge–Kutta engine
(:func:`diffsolve.rk.rk_solve`): adaptive sampling, reference solves, encode/decode and the
likelihood all call it, with the settings validated once (:func:`check_settings`). It integrates
batches in chunks of rows, passes each call the rows it evaluates (per-sample step control calls
the network on the unfinished rows only), counts forward calls per row, and, for the likelihood,
carries the divergence integral Δ along (``divergence=``).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, NamedTuple, Protocol

import torch
from torch import Tensor

from ._numbers import is_integer
from .checks import caller_stacklevel, check_data, data_end_time
from .denoiser import Denoiser
from .processes import ReverseSDE, bcast_time
from .rk import check_settings as _check_rk
from .rk import rk_solve
from .schedules import DDPMSchedule, FlowSchedule

__all__ = ["ProbabilityFlowODE", "PFODE", "ODESolution", "TIME_VARIABLES", "check_settings", "resolve_time_variable",
           "encode", "decode", "round_trip", "RoundTrip"]

_F64 = torch.float64
# time variable -> state scaling c_t (the pairs chosen by measurement: module docstring)
TIME_VARIABLES = {"t": "one", "log_snr": "one", "sigma_over_alpha": "alpha", "vp_time": "clock", "flow_time": "clock"}


class Clock(NamedTuple):
    """A reference schedule's time as a function of the log-SNR, for ``"vp_time"`` and ``"flow_time"``
    (docs/math.md (9.7)): u(λ), its inverse λ(u), dλ/du, and log α_ref(λ), d log α_ref/dλ of the reference
    schedule, whose state x α_ref/α the solve carries."""

    u: Callable[[Tensor], Tensor]
    log_snr: Callable[[Tensor], Tensor]
    d_log_snr: Callable[[Tensor], Tensor]
    log_alpha: Callable[[Tensor], Tensor]
    d_log_alpha: Callable[[Tensor], Tensor]


# the reference VP schedule: Song et al.'s VP SDE, β from 0.1 to 20 over τ ∈ [0, 1], −log ᾱ(τ) = a(τ) = ½ (β_max −
# β_min) τ² + β_min τ, ᾱ = sigmoid(2λ); near the data τ ≈ e^{−2λ}/β_min
VP_BETA_MIN, VP_BETA_MAX = 0.1, 20.0
_DB = VP_BETA_MAX - VP_BETA_MIN


def _vp_a(tau: Tensor) -> Tensor:
    return 0.5 * _DB * tau * tau + VP_BETA_MIN * tau


def _softplus(v: Tensor) -> Tensor:
    return torch.nn.functional.softplus(v)


CLOCKS = {
    "vp_time": Clock(
        u=lambda lam: 2.0 * _softplus(-2.0 * lam) / (VP_BETA_MIN + torch.sqrt(VP_BETA_MIN ** 2
                                                                             + 2.0 * _DB * _softplus(-2.0 * lam))),
        log_snr=lambda tau: -0.5 * torch.log(torch.expm1(_vp_a(tau))),
        d_log_snr=lambda tau: -0.5 * (_DB * tau + VP_BETA_MIN) / (-torch.expm1(-_vp_a(tau))),
        log_alpha=lambda lam: -0.5 * _softplus(-2.0 * lam),
        d_log_alpha=lambda lam: torch.sigmoid(-2.0 * lam)),
    # the rectified flow's time, u = σ = s/(1 + s) with s = e^{−λ}, α = 1 − u; near the data u ≈ e^{−λ}
    "flow_time": Clock(
        u=lambda lam: torch.sigmoid(-lam),
        log_snr=lambda u: torch.log1p(-u) - torch.log(u),
        d_log_snr=lambda u: -1.0 / (u * (1.0 - u)),
        log_alpha=lambda lam: -_softplus(-lam),
        d_log_alpha=lambda lam: torch.sigmoid(-lam)),
}


def variance_preserving(schedule) -> bool:
    """α_t² + σ_t² = 1 on the schedule's range (VP, cosine, DDPM; not sub-VP, VE, EDM or flow)."""
    t = torch.linspace(schedule.t_min, schedule.t_max, 9, dtype=_F64)
    return bool(((schedule.alpha(t) ** 2 + schedule.sigma(t) ** 2 - 1).abs() < 1e-6).all())


def resolve_time_variable(name: str, schedule, *, divergence: bool = False, fixed_steps: bool = False) -> str:
    """A name of :data:`TIME_VARIABLES`, with ``"auto"`` resolved for ``schedule`` and for a solve that
    carries the divergence integral (the likelihood) or not (module docstring). With ``fixed_steps``
    (equal steps, no error control) the likelihood takes the sampling rule: equal steps in raw t of a
    σ-parametrised schedule (EDM: σ from 0.002 to 80) put almost none near the data."""
    if name == "auto":
        if divergence and not fixed_steps:
            return "flow_time"
        if isinstance(schedule, DDPMSchedule):
            return "log_snr"
        if isinstance(schedule, FlowSchedule):
            return "t"
        return "t" if variance_preserving(schedule) else "log_snr"
    if name not in TIME_VARIABLES:
        raise ValueError(f"unknown time_variable {name!r}; valid: auto, {', '.join(TIME_VARIABLES)}")
    return name


def check_settings(*, method="dopri5", rtol=1e-5, atol=1e-5, norm="rms", fixed_steps=None, max_steps=10000,
                   time_variable="auto", chunk_size=None, per_sample=False) -> None:
    """The one validation of a probability-flow solve's settings (the defaults are those of
    :meth:`ProbabilityFlowODE.solve`); callers that do work before solving call it first."""
    _check_rk(method, rtol, atol, norm, None, max_steps)
    if fixed_steps is not None and (not is_integer(fixed_steps) or fixed_steps < 1):
        raise ValueError(f"fixed_steps must be a positive integer or None, got {fixed_steps!r}")
    if time_variable != "auto" and time_variable not in TIME_VARIABLES:
        raise ValueError(f"unknown time_variable {time_variable!r}; valid: auto, {', '.join(TIME_VARIABLES)}")
    if chunk_size is not None and (not is_integer(chunk_size) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    if not isinstance(per_sample, bool):
        raise TypeError(f"per_sample must be True or False, got {per_sample!r}")


class Divergence(Protocol):
    """What :meth:`ProbabilityFlowODE.solve` needs to carry Δ: ``k`` estimates per row and a call
    ``(x (n, *shape), t, rows (n,), reuse) -> (ε̂ (n, *shape), ∇·ε̂ estimates (n, k))`` made of one
    network evaluation. ``reuse``: the previous call was the preceding stage of the same step on
    the same rows, and the method's weights make it worth sharing its random probes
    (:meth:`~diffsolve.tableaus.ButcherTableau.shared_probe_stages`; an estimate without fresh
    probes ignores it)."""

    k: int

    def __call__(self, x: Tensor, t: Tensor, rows: Tensor, reuse: bool) -> tuple[Tensor, Tensor]: ...


@dataclass
class ODESolution:
    """What :meth:`ProbabilityFlowODE.solve` returns.

    Attributes:
        x: (B, *shape) state at ``t_end`` (the dtype of the input).
        delta: (B, k) the integrals Δ_j = ∫ (f_t d + K_t ∇·ε̂) dt from ``t_start`` to ``t_end``, one per
            divergence estimate (docs/math.md (20.1); ``divergence`` given), else None.
        calls: (B,) int64 forward calls each row took part in.
        accepted, rejected: (B,) int64 step counts per row; row_evals: rows evaluated in all.
        time_variable: the time variable used (``"auto"`` resolved).
    """

    x: Tensor
    delta: Tensor | None
    calls: Tensor
    accepted: Tensor
    rejected: Tensor
    row_evals: int
    time_variable: str


def arithmetic_eps(denoiser: Denoiser, state_dtype: torch.dtype) -> tuple[float, torch.dtype]:
    """The machine epsilon of the coarser of ``state_dtype`` and the dtype the network computes in, and
    that dtype: the precision below which an error estimate is round-off."""
    coarse = max((state_dtype, denoiser._dtypes(state_dtype)[0]), key=lambda d: torch.finfo(d).eps)
    return torch.finfo(coarse).eps, coarse


def _check_precision(denoiser: Denoiser, state_dtype: torch.dtype, rtol: float):
    """Warn when ``rtol`` is below 1 % of the machine epsilon of the coarser of the state's dtype and the
    dtype the network computes in: the local error estimates are then round-off, which the step control
    chases with ever smaller steps. Measured on the digits model (16–64 start points against a tight
    float64 solve): with a float16 network the error stops falling between rtol 1e-5 and 3e-6 (7.9e-4,
    9.1e-4 RMS) while the evaluations double (345, 735), and in a float32 state between 3e-8 and 1e-8
    (``python benchmarks/tolerance_floor.py``); a float16 network at 1e-8 took 34 000 evaluations for 8
    points (:func:`diffsolve.reference.reference_tolerances`)."""
    eps, coarse = arithmetic_eps(denoiser, state_dtype)
    if rtol < 0.01 * eps:
        what = "solver state" if coarse == state_dtype else "network's arithmetic"
        fix = " or a float64 state (dtype=torch.float64)" if coarse == state_dtype else ""
        warnings.warn(f"rtol={rtol:g} is below 1 % of the precision of the {what} "
                      f"({str(coarse).removeprefix('torch.')}, eps {eps:.2g}): the step control "
                      f"chases round-off there, with many more evaluations and no gain in accuracy; use rtol >= "
                      f"{0.01 * eps:.2g}{fix}", stacklevel=caller_stacklevel())


class ProbabilityFlowODE(ReverseSDE):
    r"""The probability-flow ODE dx/dt = f_t x − ½ g_t² ∇log p_t(x) (docs/math.md (3.3)): the member
    ν = 0 of the reverse family, in a time variable u with the state y = x / c_t (module docstring):

        dy/du = L_u y + (K_u/c_t) ε̂(c_t y, t),   L_u = (f_t − c'_t/c_t) dt/du,   K_u = −σ_t λ'_t dt/du

    (docs/math.md (9.2); (9.3)–(9.5) for the named time variables). It defines the right-hand side
    only; :meth:`solve` integrates it with the Runge–Kutta engine (docs/math.md §19) and returns an
    :class:`ODESolution`. No state is kept between calls.

    Args:
        denoiser: the network as a :class:`~diffsolve.Denoiser`.
        time_variable: ``"auto"`` (default), ``"t"``, ``"log_snr"`` or ``"sigma_over_alpha"``.
        scale: overrides c (``"one"``, ``"alpha"``): ``("log_snr", "alpha")`` is dy/dλ = x̂0 − y, the
            form the reference solves use.

    ``drift(x, t)`` is the velocity in t (any time variable); ``func(u, y)`` is dy/du, one network
    evaluation (torchdiffeq's ``func(t, y)``). t(u) uses the schedule's exact inverse
    ``t_of_log_snr``, clamped to [t_min, t_max] (a first trial step or the rounding of an end point
    may overshoot). Times may be 0-dim or per-row (B,) float64 tensors; coefficients broadcast
    against y of shape (B, *shape) or (B, d).

    References:
        Song et al., Score-Based Generative Modeling through Stochastic Differential Equations,
        arXiv:2011.13456 (the probability-flow ODE, solved with RK45);
        Karras et al., Elucidating the Design Space of Diffusion-Based Generative Models,
        arXiv:2206.00364 (VE coordinates).
    """

    def __init__(self, denoiser: Denoiser, time_variable: str = "auto", scale: str | None = None):
        super().__init__(denoiser, eta=0.0)
        if scale not in (None, "one", "alpha"):
            raise ValueError(f"unknown scale {scale!r}; valid: 'one', 'alpha'")
        self.variable = resolve_time_variable(time_variable, self.schedule)
        if self.variable == "t" and isinstance(self.schedule, DDPMSchedule):  # said once, where the ODE is made
            warnings.warn("time_variable='t' on a DDPM table: in raw t the right-hand side has a kink at every one "
                          "of its timesteps; adaptive steps do not see them, so the error stops following the "
                          "tolerance (a tighter rtol can give a larger error at many times the network calls), and "
                          "equal steps converge at first order (module docstring); 'auto' takes 'log_snr' there",
                          UserWarning, stacklevel=caller_stacklevel())
        self.scale = scale or TIME_VARIABLES[self.variable]

    # --- the change of variables ----------------------------------------------------------
    def u_of(self, t) -> Tensor:
        sch, t = self.schedule, torch.as_tensor(t, dtype=_F64)
        if self.variable == "t":
            return t
        lam = sch.log_snr(t)
        if self.variable in CLOCKS:
            return CLOCKS[self.variable].u(lam)
        return lam if self.variable == "log_snr" else torch.exp(-lam)

    def t_of(self, u: Tensor) -> Tensor:
        u, sch = torch.as_tensor(u, dtype=_F64), self.schedule
        if self.variable in CLOCKS:  # a reference time past 0 (a step beyond the end) is the end
            u = sch.t_of_log_snr(CLOCKS[self.variable].log_snr(u.clamp_min(0.0)))
        elif self.variable != "t":
            # σ/α past 0 (torchdiffeq steps beyond the end and interpolates back) is the end
            u = sch.t_of_log_snr(u if self.variable == "log_snr" else -torch.log(u.clamp_min(0.0)))
        return u.clamp(sch.t_min, sch.t_max)

    def dt_du(self, t: Tensor) -> Tensor:
        if self.variable == "t":
            return torch.ones_like(t)
        dlam = self.schedule.d_log_snr(t)
        if self.variable in CLOCKS:
            return CLOCKS[self.variable].d_log_snr(self.u_of(t)) / dlam
        return 1.0 / dlam if self.variable == "log_snr" else -torch.exp(self.schedule.log_snr(t)) / dlam

    def c(self, t) -> Tensor:
        t = torch.as_tensor(t, dtype=_F64)
        if self.scale == "clock":  # α_t / α_ref(λ_t): x carried in the reference schedule's coordinates
            return self.schedule.alpha(t) * torch.exp(-CLOCKS[self.variable].log_alpha(self.schedule.log_snr(t)))
        return torch.ones_like(t) if self.scale == "one" else self.schedule.alpha(t)

    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(L_u, K_u) at t (module docstring), float64, shaped like t."""
        sch = self.schedule
        dtdu = self.dt_du(t)
        if self.scale == "clock":  # f_t − (log c)' = (d log α_ref/dλ) λ'_t
            lin = CLOCKS[self.variable].d_log_alpha(sch.log_snr(t)) * sch.d_log_snr(t)
        else:
            lin = sch.d_log_alpha(t) if self.scale == "one" else torch.zeros_like(t)
        return lin * dtdu, -sch.sigma(t) * sch.d_log_snr(t) * dtdu

    def to_state(self, x: Tensor, t) -> Tensor:
        return x if self.scale == "one" else x / bcast_time(self.c(t), x)

    def from_state(self, y: Tensor, t) -> Tensor:
        return y if self.scale == "one" else y * bcast_time(self.c(t), y)

    def rate(self, y: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """dy/du given ε̂ at (c_t y, t)."""
        lin, k = self.coefficients(t)
        return bcast_time(lin, y) * y + bcast_time(k / self.c(t), y) * eps.to(y.dtype)

    def func(self, u: Tensor, y: Tensor) -> Tensor:
        """dy/du at (u, y): one network evaluation. u stays on its device (no host synchronisation)."""
        t = self.t_of(u.detach())
        return self.rate(y, t, self.denoiser.eps(self.from_state(y, t), t))

    # --- the solve ----------------------------------------------------------------------------
    def solve(self, x: Tensor, t_start: float, t_end: float, *, method: str = "dopri5", rtol: float = 1e-5,
              atol: float = 1e-5, norm: str = "rms", per_sample: bool = False, fixed_steps: int | None = None,
              max_steps: int = 10000, chunk_size: int | None = None, divergence: Divergence | None = None,
              divergence_in_norm: bool = True) -> ODESolution:
        """Integrate from ``x`` at ``t_start`` to ``t_end`` (either direction).

        Args:
            x: (B, *shape) state at ``t_start`` (its dtype is the solver state's).
            method, rtol, atol, norm, max_steps: the Runge–Kutta engine's settings
                (:func:`diffsolve.rk.rk_solve`); rtol, atol > 0.
            per_sample: one step size and error control per row instead of one for the batch (chunk).
            fixed_steps: exactly this many equal steps in u instead (no error control).
            chunk_size: integrate at most this many rows at a time (memory).
            divergence: carry Δ_j = ∫ (f_t d + K_t ∇·ε̂) dt, the divergence of the x-drift, for the k
                estimates of ∇·ε̂ it returns (the likelihood); its ε̂ replaces the plain network call.
                The state holds Δ_j / d, the log-density per dimension (docs/math.md (20.12)), so the
                error norm weighs it as one coordinate of the state; the solution's ``delta`` is Δ_j.
            divergence_in_norm: let Δ enter the error norm (False for random estimates: the steps
                must then depend on the trajectory only).
        """
        check_settings(method=method, rtol=rtol, atol=atol, norm=norm, fixed_steps=fixed_steps,
                       max_steps=max_steps, chunk_size=chunk_size, per_sample=per_sample)
        if fixed_steps is None:
            _check_precision(self.denoiser, x.dtype, rtol)
        B = x.shape[0]
        u0, u1 = float(self.u_of(float(t_start))), float(self.u_of(float(t_end)))
        y0 = self._pack(x, t_start, divergence)
        mask = None
        if divergence is not None and not divergence_in_norm:
            mask = torch.ones(y0.shape[1], dtype=torch.bool)
            mask[-divergence.k:] = False
        calls = torch.zeros(B, dtype=torch.int64, device=x.device)
        shared = _check_rk(method).shared_probe_stages()
        settings = dict(method=method, rtol=rtol, atol=atol, norm=norm, per_sample=per_sample, max_steps=max_steps,
                        error_mask=mask) if fixed_steps is None else dict(method=method, steps=fixed_steps)
        outs, accepted, rejected, row_evals = [], [], [], 0
        with self.denoiser.one_run():
            for start in range(0, B, chunk_size or B):
                rhs = self._rhs(divergence, calls, start, x.shape[1:], shared, B)
                try:
                    out, st = rk_solve(rhs, y0[start:start + (chunk_size or B)], u0, u1, rows=True, **settings)
                except Exception:  # a NaN the network made on an accelerator (checked once, after the solve)
                    self.denoiser.check_finite()  # is the cause to report, not the step control it then broke
                    raise
                outs.append(out)
                accepted.append(st["accepted"])
                rejected.append(st["rejected"])
                row_evals += st["row_evals"]
            self.denoiser.check_finite()
        y1 = torch.cat(outs)
        x1, delta = self._unpack(y1, t_end, divergence, x.shape)
        if delta is not None and self.scale == "clock":  # Δ_x = Δ_y + d (log c(t_end) − log c(t_start))
            delta = delta + x[0].numel() * float(torch.log(self.c(float(t_end)) / self.c(float(t_start))))
        return ODESolution(x1, delta, calls, torch.cat(accepted), torch.cat(rejected), row_evals, self.variable)

    def _pack(self, x: Tensor, t, divergence) -> Tensor:
        y = self.to_state(x, float(t))
        if divergence is None:
            return y
        return torch.cat([y.reshape(x.shape[0], -1), y.new_zeros(x.shape[0], divergence.k)], 1)

    def _unpack(self, y: Tensor, t, divergence, shape) -> tuple[Tensor, Tensor | None]:
        if divergence is None:
            return self.from_state(y, float(t)), None
        k = divergence.k
        return self.from_state(y[:, :-k].reshape(shape), float(t)), y[:, -k:] * math.prod(shape[1:])

    def _divergence_rate(self, t: Tensor, div: Tensor, d: int) -> Tensor:
        """dΔ_j/du / d: (f_t d + K_t ∇·ε̂_j) dt/du, the whole divergence of the x-drift (docs/math.md
        (20.1)), for the (n, k) estimates ``div`` of ∇·ε̂ at times t (scalar or (n,)); on a clock
        (:data:`CLOCKS`) L_u d + K_u ∇·ε̂_j, the divergence of the carried state's drift, whose difference
        d (log c)' dt/du integrates in closed form (added at the end of :meth:`solve`, docs/math.md (9.8));
        divided by d, the state's unit (docs/math.md (20.12))."""
        f, K = self.coefficients(t)  # the carried state's drift: x's for scale "one", y's on a clock
        if self.scale == "alpha":  # y = x/α carries x's divergence (its own was 1-6x worse, benchmarks/likelihood.md)
            f = self.schedule.d_log_alpha(t) * self.dt_du(t)
        if f.dim():
            f, K = f[:, None], K[:, None]
        return f + K * div.to(_F64) / d

    def _rhs(self, divergence, calls: Tensor, offset: int, event, shared: frozenset, batch: int) -> Callable:
        """The right-hand side on a chunk's state, counting each row's calls; ``shared``: the stages
        whose divergence estimate reuses the previous stage's probes; the network is told which rows
        of the ``batch`` it evaluates (:meth:`Denoiser.at_rows`)."""
        def rhs(u: Tensor, y: Tensor, rows: Tensor, stage) -> Tensor:
            rows = rows + offset
            calls.index_add_(0, rows, torch.ones_like(rows))
            if divergence is None:
                with self.denoiser.at_rows(rows, batch):
                    return self.func(u, y)
            t = self.t_of(u.detach())
            k, n = divergence.k, y.shape[0]
            x = self.from_state(y[:, :-k], t).reshape(n, *event)
            with self.denoiser.at_rows(rows, batch):
                eps, div = divergence(x, t, rows, stage in shared)
            rate = self._divergence_rate(t, div, x[0].numel())
            return torch.cat([self.rate(y[:, :-k], t, eps.reshape(n, -1)), rate.to(y.dtype)], 1)

        return rhs


class PFODE(ProbabilityFlowODE):
    """Deprecated name of :class:`ProbabilityFlowODE` (one class for the ODE); it warns."""

    def __init__(self, denoiser: Denoiser, time_variable: str = "log_snr", scale: str | None = None):
        import warnings

        warnings.warn("PFODE is deprecated: use diffsolve.ProbabilityFlowODE (same arguments; its default "
                      "time_variable is 'auto')", DeprecationWarning, stacklevel=2)
        super().__init__(denoiser, time_variable, scale)


# --- encode / decode --------------------------------------------------------------------------
@dataclass
class RoundTrip:
    """What :func:`round_trip` returns: latents ``z``, reconstructions ``x_rec`` and per-sample
    ``error`` (max |x_rec − x|) and ``rms_error``; ``nfe`` forward calls per sample (both ways)."""

    z: Tensor
    x_rec: Tensor
    error: Tensor
    rms_error: Tensor
    nfe: Tensor


def _flow(denoiser, x, t_from, t_to, **settings) -> tuple[Tensor, Tensor]:
    time_variable = settings.pop("time_variable")
    with denoiser.calling_in(x.dtype):  # as in log_likelihood: a plain function runs in the caller's dtype
        sol = ProbabilityFlowODE(denoiser, time_variable).solve(x.to(torch.float64), t_from, t_to, **settings)
    return sol.x, sol.calls.cpu()


def encode(denoiser: Denoiser, x: Tensor, *, t_end: float | None = None, rtol: float = 1e-4,
           atol: float = 1e-4, method: str = "dopri5", per_sample: bool = True,
           time_variable: str = "auto", fixed_steps: int | None = None, chunk_size: int | None = None,
           norm: str = "max", max_steps: int = 10000) -> tuple[Tensor, Tensor]:
    """Data x at ``t_end`` (default t_min) → latent z at t_max along the probability-flow ODE
    (docs/math.md (3.3)), without the divergence. Returns (z, nfe per sample); the settings of
    :func:`log_likelihood`, but ``time_variable="auto"`` resolves as for sampling (λ on EDM, VE
    and sub-VP, where the likelihood takes t): pass ``time_variable`` to follow a likelihood run
    step for step."""
    check_data(denoiser, x)
    t_end = data_end_time(denoiser.schedule, t_end)
    return _flow(denoiser, x, t_end, denoiser.schedule.t_max, rtol=rtol, atol=atol, method=method,
                 per_sample=per_sample, time_variable=time_variable, fixed_steps=fixed_steps,
                 chunk_size=chunk_size, norm=norm, max_steps=max_steps)


def decode(denoiser: Denoiser, z: Tensor, *, t_end: float | None = None, rtol: float = 1e-4,
           atol: float = 1e-4, method: str = "dopri5", per_sample: bool = True,
           time_variable: str = "auto", fixed_steps: int | None = None, chunk_size: int | None = None,
           norm: str = "max", max_steps: int = 10000) -> tuple[Tensor, Tensor]:
    """Latent z at t_max → data at ``t_end`` (the inverse of :func:`encode`). Returns (x, nfe)."""
    check_data(denoiser, z)
    t_end = data_end_time(denoiser.schedule, t_end)
    return _flow(denoiser, z, denoiser.schedule.t_max, t_end, rtol=rtol, atol=atol, method=method,
                 per_sample=per_sample, time_variable=time_variable, fixed_steps=fixed_steps,
                 chunk_size=chunk_size, norm=norm, max_steps=max_steps)


def round_trip(denoiser: Denoiser, x: Tensor, **kwargs) -> RoundTrip:
    """Encode then decode ``x`` with the same settings (keyword arguments of :func:`encode`) and
    report the reconstruction error: a check that the solver inverts the flow at this tolerance."""
    z, n1 = encode(denoiser, x, **kwargs)
    x_rec, n2 = decode(denoiser, z, **kwargs)
    diff = (x_rec - x.to(torch.float64)).reshape(x.shape[0], -1)
    return RoundTrip(z=z, x_rec=x_rec, error=diff.abs().amax(1), rms_error=diff.pow(2).mean(1).sqrt(), nfe=n1 + n2)
