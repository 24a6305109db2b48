r"""Exact log-likelihood through the probability-flow ODE (MATH §5).

Along a trajectory of the probability-flow ODE dx/dt = F_t(x) = f_t x − ½ g_t² ŝ(x, t) (MATH 3.3),

    d/dt log p_t(x_t) = −∇·F_t(x_t)                                               (MATH 5.1)
    log p_{t0}(x_{t0}) = log p_T(x_T) + ∫_{t0}^{T} ∇·F_t(x_t) dt                    (MATH 5.2)
    ∇·F_t = f_t d − ½ g_t² ∇·ŝ = f_t d − σ_t λ'_t ∇·ε̂                               (MATH 5.3)

using ∇·ŝ = −∇·ε̂/σ and g² = −2σ²λ' (MATH 1.3). The term f_t d does not depend on x, so it is
integrated in closed form, ∫ f_t d dt = d (log α_T − log α_{t0}); only the network term goes
through the ODE solver.

**Time variable and state.** Any monotone change of time u = u(t) leaves (5.2) exact and changes
only the solver's work (MATH §5). We integrate in u ∈ {``t``, ``log_snr`` (λ), ``sigma_over_alpha``
(s = σ/α = e^{−λ})} with the state y = x / c_t, c_t = 1 for ``t`` and ``log_snr`` and c_t = α_t for
``sigma_over_alpha`` (:data:`TIME_VARIABLES`; the scalings were chosen by measurement):

    dy/du = [(f_t − c'_t/c_t) y − (σ_t λ'_t / c_t) ε̂(c_t y, t)] dt/du
    dΔ/du = −σ_t λ'_t ∇_x·ε̂(x, t) dt/du

For ``sigma_over_alpha`` this is the ODE dy/ds = ε̂ in VE coordinates (EDM, k-diffusion). The
scaling c is a pure reparametrisation: log p_x is recovered exactly. The default (``auto``) is raw
t on variance-preserving schedules (α² + σ² = 1: VP, cosine, DDPM) and λ otherwise: the fewest NFE
at equal accuracy on the analytic mixtures in 2 and 64 dimensions, shared and per-sample steps
(benchmarks/likelihood.md: on VP, t needs 0.73–0.91× λ's NFE; on a flow schedule t needs about
twice λ's; on VE, t is λ up to an affine map). With per-row error control at loose tolerances
(1e-3) λ and t can miss the error made in the mode-switching region on some 2-D rows (the local
error estimate of a lone row); ``sigma_over_alpha`` keeps the error proportional to the tolerance
there, at more NFE.

**Divergence.** ``exact``: the trace of ∂ε̂/∂x by d vector–Jacobian products with the basis vectors
(batched with ``is_grads_batched``; fine for small d). ``hutchinson``: zᵀ(∂ε̂/∂x)z for k probes z
(Rademacher or Gaussian, E[zzᵀ] = I) held fixed along the trajectory (FFJORD); each probe's integral
Δ_j is carried separately, so the result's ``stderr`` is the standard error of their mean.
With ``fresh_probes=True`` every network evaluation draws new probes instead. Δ then leaves the
solver's error norm (``rk_solve(error_mask=...)``), so the steps, and with them the quadrature
weights w_e = h·b_i of the evaluations, depend on the trajectory of y only, never on the probes;
given that trajectory, Δ_j = Σ_e w_e z_eᵀ J_e z_e is an unbiased estimate of the same Runge–Kutta
quadrature of the exact divergence, with variance Σ_e w_e² Var(z_eᵀ J_e z_e) instead of
Var(zᵀ(Σ_e w_e J_e)z): the probe noise averages over the evaluations (1.4–2.3× smaller error on
the analytic mixtures at no extra network work; benchmarks/likelihood.md). The k
integrals Δ_j stay independent given the trajectory, so ``stderr`` keeps its meaning. The price:
Δ's own integration error is then controlled only through the steps the state takes, so it is
larger than with Δ in the norm — irrelevant while the probe noise dominates (always, for a few
probes), worth knowing when averaging very many probes.

**NFE.** ``nfe`` is the number of right-hand-side evaluations a sample took part in, i.e. of
*forward* network calls: each evaluates the network on k copies of the rows (Hutchinson; d copies
for the exact divergence, in chunks of 256) and makes one backward pass giving the k vector–
Jacobian products, so for k = 1 its cost is about that of 2–3 plain forward calls. (The
denoiser's own counter counts one call per chunk of copies.)

**Stopping at t_min.** The result is log p_{t_end}(x), the density of x read as a sample of the
slightly noised marginal at ``t_end`` (default ``schedule.t_min``), not of p_0: the schedules have
σ_{t_min} > 0 (VP 1e-3: σ ≈ 0.01; VE σ_min; EDM 0.002) and λ → ∞ at t = 0, so the ODE cannot be
started at 0. For data with a smooth density the difference is O(σ_{t_min}²) per dimension; for
discrete data it is what makes the density finite (use ``dequantize`` for a proper discrete bound).

References:
    Song, Sohl-Dickstein, Kingma, Kumar, Ermon, Poole, Score-Based Generative Modeling through
    Stochastic Differential Equations, arXiv:2011.13456 (§4.3, App. D.2);
    Grathwohl, Chen, Bettencourt, Sutskever, Duvenaud, FFJORD, arXiv:1810.01367 (Hutchinson trace);
    Karras, Aittala, Aila, Laine, EDM, arXiv:2206.00364 (VE coordinates);
    Theis, van den Oord, Bethge, A note on the evaluation of generative models, arXiv:1511.01844
    (uniform dequantization bound).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from .denoiser import Denoiser
from .noise import NoiseSource, parse_seeds
from .processes import PFODE, TIME_VARIABLES
from .rk import TABLEAUS, rk_solve

__all__ = ["log_likelihood", "LikelihoodResult", "Dequantization", "encode", "decode", "round_trip",
           "RoundTrip", "prior_gap", "gaussian_prior", "TIME_VARIABLES", "DIVERGENCES", "PROBES"]

_F64 = torch.float64
DIVERGENCES = ("hutchinson", "exact")
PROBES = ("rademacher", "gaussian")
_EXACT_CHUNK = 256  # basis vectors per batched VJP in the exact divergence
# The row index rides in the state (per-sample solves call func on a subset of rows) scaled by an
# exact power of two, so that it weighs nothing in the solver's norms (initial step, error).
_IDX_SCALE = 2.0 ** -100


# --- dequantization -------------------------------------------------------------------------
@dataclass(frozen=True)
class Dequantization:
    """Discrete data with ``levels`` = K values on the grid a + (b − a)·k/(K − 1), k = 0..K−1
    (e.g. uint8 images scaled to [0, 1] or [−1, 1]); integer tensors are read as k directly.

    The dequantized point is x = a + (b − a)(k + u)/K, u ~ U[0, 1)^d: an affine map of the
    level-unit variable y = k + u onto [a, b), so log p_Y(y) = log p_X(x) + d log((b − a)/K) and
    −E_u[log p_Y]/(d ln 2) upper-bounds the discrete model's bits/dim (MATH §5).
    """

    levels: int
    range: tuple = (0.0, 1.0)

    def __post_init__(self):
        K = self.levels
        if isinstance(K, bool) or not isinstance(K, int) or K < 2:
            raise ValueError(f"dequantize levels must be an integer >= 2, got {K!r}")
        a, b = (float(v) for v in self.range)
        if not (math.isfinite(a) and math.isfinite(b) and a < b):
            raise ValueError(f"dequantize range must be (a, b) with a < b, got {self.range!r}")
        object.__setattr__(self, "range", (a, b))

    @classmethod
    def make(cls, spec) -> "Dequantization | None":
        if spec is None or isinstance(spec, cls):
            return spec
        if isinstance(spec, dict):
            unknown = set(spec) - {"levels", "range"}
            if unknown or "levels" not in spec:
                raise ValueError(f"dequantize dict needs keys 'levels' (K) and optionally 'range' ((a, b)); "
                                 f"got keys {sorted(spec)}")
            return cls(spec["levels"], tuple(spec.get("range", (0.0, 1.0))))
        if hasattr(spec, "levels"):
            return cls(spec.levels, tuple(getattr(spec, "range", (0.0, 1.0))))
        raise TypeError("dequantize must be None, a dict(levels=K, range=(a, b)) or a Dequantization")

    def level_index(self, x: Tensor) -> Tensor:
        """k (float64) of data on the grid; raises if x is off the grid or outside [a, b]."""
        K, (a, b) = self.levels, self.range
        if not x.is_floating_point():
            k = x.to(_F64)
            if bool((k < 0).any() | (k > K - 1).any()):
                raise ValueError(f"integer data must be levels in 0..{K - 1}, got values in "
                                 f"[{int(x.min())}, {int(x.max())}]")
            return k
        x = x.to(_F64)
        lo, hi = float(x.min()), float(x.max())
        step = (b - a) / (K - 1)
        if lo < a - 1e-6 * step or hi > b + 1e-6 * step:
            raise ValueError(f"data values lie in [{lo:.6g}, {hi:.6g}], outside the dequantization range "
                             f"[{a:g}, {b:g}]; set dequantize range to the data's range")
        k = (x - a) / step
        off = float((k - k.round()).abs().max())
        if off > 1e-4:
            raise ValueError(f"data are not on the {K}-level grid a + (b - a)k/(K - 1) of [{a:g}, {b:g}] "
                             f"(max distance {off:.3g} grid steps); check levels and range")
        return k.round()

    def apply(self, k: Tensor, u: Tensor) -> Tensor:
        a, b = self.range
        return a + (b - a) * (k + u) / self.levels

    def log_jacobian(self, d: int) -> float:
        a, b = self.range
        return d * math.log((b - a) / self.levels)


# --- result -----------------------------------------------------------------------------------
@dataclass
class LikelihoodResult:
    """What :func:`log_likelihood` returns (all per-sample tensors have shape (B,)).

    Attributes:
        log_prob: log-density in nats of the input at ``t_end`` (of the dequantized point in level
            units, log p_Y, when ``dequantize`` is set).
        bits_per_dim: −log_prob / (d ln 2).
        stderr: Hutchinson standard error of log_prob across the k probes (NaN for k = 1); None for
            the exact divergence.
        nfe: (B,) int64, forward network calls each sample took part in (each with a backward).
        z: (B, *shape) latent at t_max.
        prior_log_prob: log p_T(z) under the prior.
        delta_log_prob: log_prob − prior_log_prob (the integral of MATH 5.2, plus the
            dequantization term).
        x: (B, *shape) the point whose density was computed (the dequantized data if any).
        info: settings and solver statistics.
    """

    log_prob: Tensor
    bits_per_dim: Tensor
    stderr: Tensor | None
    nfe: Tensor
    z: Tensor
    prior_log_prob: Tensor
    delta_log_prob: Tensor
    x: Tensor
    info: dict = field(default_factory=dict)

    def mean_bits_per_dim(self) -> tuple[float, float]:
        """(mean, standard error over the batch) of bits_per_dim."""
        b = self.bits_per_dim
        se = float(b.std() / math.sqrt(len(b))) if len(b) > 1 else float("nan")
        return float(b.mean()), se


def gaussian_prior(schedule, t: float | None = None) -> Callable[[Tensor], Tensor]:
    """log N(z; 0, σ_T² I), the default prior. Valid when α_T ≈ 0 (VP, cosine, flow) or when σ_T
    dwarfs the data (VE, EDM); its own error is :func:`prior_gap`."""
    t = schedule.t_max if t is None else t
    s2 = float(schedule.sigma(t)) ** 2

    def log_p(z: Tensor) -> Tensor:
        zf = z.reshape(z.shape[0], -1).to(_F64)
        d = zf.shape[1]
        return -0.5 * (zf * zf).sum(1) / s2 - 0.5 * d * math.log(2 * math.pi * s2)

    return log_p


def prior_gap(z: Tensor, exact_log_p_T: Callable[[Tensor], Tensor], prior="gaussian", schedule=None) -> Tensor:
    """The prior's own error at the latents ``z``: log p_T(z) − prior(z), per sample.

    Adding it to ``log_prob`` gives the estimate with the exact prior; its mean over z ~ p_T is
    KL(p_T ‖ prior) (MATH §5), so averaging it over the latents of data samples separates the
    prior's error from the solver's.
    """
    if prior == "gaussian":
        if schedule is None:
            raise ValueError("prior='gaussian' needs the schedule")
        prior = gaussian_prior(schedule)
    return exact_log_p_T(z).to(_F64) - prior(z).to(_F64)


# --- divergence -------------------------------------------------------------------------------
def _vjp_replicated(denoiser: Denoiser, x: Tensor, t: Tensor, vs: Tensor):
    """ε̂ at the m copies of x in one network call and vᵀ ∂ε̂/∂x for each v in vs (m, B, ...).

    Rows of a batch are independent, so replicating the batch m times and taking one backward
    pass with the m vectors as output gradients gives the m vector–Jacobian products at once (the
    network sees m·B rows in one call).
    """
    m, B = vs.shape[0], x.shape[0]
    xr = x.detach()[None].expand(m, *x.shape).reshape(m * B, *x.shape[1:]).requires_grad_(True)
    tr = t if t.dim() == 0 else t.repeat(m)
    with torch.enable_grad():
        e = denoiser.eps(xr, tr)
        if not e.requires_grad:
            raise ValueError("the log-likelihood needs ∂ε̂/∂x by autograd, but the network's output does not depend "
                             "on its input through autograd (does it run under torch.no_grad(), detach its "
                             "output, or go through numpy?)")
        g = torch.autograd.grad(e, xr, grad_outputs=vs.reshape(m * B, *x.shape[1:]).to(e.dtype))[0]
    return e[:B].detach(), g.reshape(m, B, -1).detach()


def _eps_and_divergence(denoiser: Denoiser, x: Tensor, t: Tensor, probes: Tensor | None):
    """ε̂(x, t) and (B, k) estimates of ∇_x·ε̂: exact (k = 1) when probes is None, else zᵀ(∂ε̂/∂x)z."""
    B, d = x.shape[0], x[0].numel()
    if probes is not None:
        e, g = _vjp_replicated(denoiser, x, t, probes)
        return e, (g * probes.reshape(g.shape)).sum(-1).T
    div = torch.zeros(B, dtype=x.dtype, device=x.device)
    e = None
    for i0 in range(0, d, _EXACT_CHUNK):
        n = min(_EXACT_CHUNK, d - i0)
        ar = torch.arange(n, device=x.device)
        basis = torch.zeros(n, B, d, dtype=x.dtype, device=x.device)
        basis[ar, :, i0 + ar] = 1.0
        e_i, g = _vjp_replicated(denoiser, x, t, basis)
        e = e_i if e is None else e
        div = div + g[ar, :, i0 + ar].sum(0)
    return e, div[:, None]


# --- the ODE ----------------------------------------------------------------------------------
class _LikelihoodODE:
    """Right-hand side on the flat state [y (d), Δ (k), row index (1)]; rows independent."""

    def __init__(self, denoiser, coords, shape, k, probes, with_divergence=True):
        # probes: None (exact divergence), a (k, B, *shape) tensor held fixed, or a callable
        # rows (n,) -> (k, n, *shape) drawing fresh probes for those rows at every evaluation
        self.den, self.co, self.shape = denoiser, coords, tuple(shape)
        self.d = math.prod(self.shape)
        self.k, self.probes, self.with_div = k, probes, with_divergence
        self.calls = None  # (B,) forward calls per row

    def __call__(self, u: Tensor, state: Tensor) -> Tensor:
        n, d, k, co = state.shape[0], self.d, self.k, self.co
        t = co.t_of(u)
        idx = (state[:, -1] / _IDX_SCALE).round().long()
        self.calls.index_add_(0, idx.cpu(), torch.ones(n, dtype=torch.int64))
        y = state[:, :d]
        x = co.from_state(y, t).reshape(n, *self.shape)
        if self.with_div:
            probes = self.probes
            if callable(probes):
                probes = probes(idx)
            elif probes is not None:
                probes = probes[:, idx.to(probes.device)]
            eps, div = _eps_and_divergence(self.den, x, t, probes)
        else:
            with torch.no_grad():
                eps, div = self.den.eps(x, t), None
        out = torch.zeros_like(state)
        out[:, :d] = co.rate(y, t, eps.reshape(n, d))
        if self.with_div:
            K = co.coefficients(t)[1]
            out[:, d:d + k] = (K if K.dim() == 0 else K[:, None]).to(state.dtype) * div.to(state.dtype)
        return out


def _check_tolerance(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v > 0) or not math.isfinite(v):
        raise ValueError(f"{name} must be a positive finite number, got {v!r}")
    return float(v)


def _check_x(denoiser, x, allow_int=False):
    if not isinstance(denoiser, Denoiser):
        raise TypeError(f"denoiser must be a diffsolve.Denoiser, got {type(denoiser).__name__}; "
                        f"wrap your network with Denoiser(net, schedule, prediction=...)")
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape (batch, *sample_shape), got {type(x).__name__}")
    if not x.is_floating_point() and not (allow_int and x.dtype in
                                           (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)):
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}"
                        + ("" if allow_int else "; integer data need dequantize=dict(levels=K, range=(a, b))"))
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"x must have shape (batch, *sample_shape) with batch >= 1, got {tuple(x.shape)}")
    if denoiser.shape is not None and tuple(x.shape[1:]) != denoiser.shape:
        raise ValueError(f"x has sample shape {tuple(x.shape[1:])} but the denoiser expects {denoiser.shape}")
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        bad = (~torch.isfinite(x.reshape(x.shape[0], -1))).any(1).nonzero().flatten().tolist()
        raise ValueError(f"x contains NaN or Inf (samples {bad[:10]}{'...' if len(bad) > 10 else ''})")


def _variance_preserving(schedule) -> bool:
    """α_t² + σ_t² = 1 on the schedule's range (VP, cosine, DDPM; not sub-VP, VE, EDM or flow)."""
    t = torch.linspace(schedule.t_min, schedule.t_max, 9, dtype=_F64)
    return bool(((schedule.alpha(t) ** 2 + schedule.sigma(t) ** 2 - 1).abs() < 1e-6).all())


def _time_variable(name, per_sample, schedule):
    if name == "auto":  # the measured choice (module docstring, benchmarks/likelihood.md)
        return "t" if _variance_preserving(schedule) else "log_snr"
    if name not in TIME_VARIABLES:
        raise ValueError(f"unknown time_variable {name!r}; valid: auto, {', '.join(TIME_VARIABLES)}")
    return name


def _solve_settings(method, rtol, atol, fixed_steps, norm):
    if method not in TABLEAUS:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(TABLEAUS)}")
    rtol, atol = _check_tolerance("rtol", rtol), _check_tolerance("atol", atol)
    if fixed_steps is not None and (isinstance(fixed_steps, bool) or not isinstance(fixed_steps, int)
                                    or fixed_steps < 1):
        raise ValueError(f"fixed_steps must be a positive integer or None, got {fixed_steps!r}")
    if norm not in ("rms", "max"):
        raise ValueError(f"norm must be 'rms' or 'max', got {norm!r}")
    return rtol, atol


def _t_end(schedule, t_end):
    t_end = schedule.t_min if t_end is None else float(t_end)
    if not (schedule.t_min - 1e-12 <= t_end < schedule.t_max):
        raise ValueError(f"t_end must lie in [t_min, t_max) = [{schedule.t_min:g}, {schedule.t_max:g}), got {t_end}")
    return max(t_end, schedule.t_min)


def _chunked(ode, state, u0, u1, chunk_size, *, method, rtol, atol, per_sample, fixed_steps, norm, max_steps,
             error_mask=None):
    """rk_solve over chunks of rows; the last state column is the global row index."""
    B = state.shape[0]
    ode.calls = torch.zeros(B, dtype=torch.int64)
    cs = chunk_size or B
    outs, stats = [], dict(row_evals=0, accepted=[], rejected=[])
    for i in range(0, B, cs):
        if fixed_steps is not None:
            out, st = rk_solve(ode, state[i:i + cs], u0, u1, method=method, steps=fixed_steps)
        else:
            out, st = rk_solve(ode, state[i:i + cs], u0, u1, method=method, rtol=rtol, atol=atol,
                               per_sample=per_sample, norm=norm, max_steps=max_steps, error_mask=error_mask)
        outs.append(out)
        stats["row_evals"] += st["row_evals"]
        stats["accepted"].append(st["accepted"])
        stats["rejected"].append(st["rejected"])
    stats["accepted"] = torch.cat(stats["accepted"])
    stats["rejected"] = torch.cat(stats["rejected"])
    return torch.cat(outs), stats


def log_likelihood(denoiser: Denoiser, x: Tensor, *, divergence: str = "hutchinson", probes: int = 1,
                   probe: str = "rademacher", fresh_probes: bool = False, rtol: float = 1e-4,
                   atol: float = 1e-4, method: str = "dopri5",
                   per_sample: bool = False, time_variable: str = "auto",
                   fixed_steps: int | None = None, prior="gaussian", t_end: float | None = None,
                   dequantize=None, seeds=None, chunk_size: int | None = None,
                   dtype: torch.dtype = torch.float64, norm: str = "max",
                   max_steps: int = 10000) -> LikelihoodResult:
    r"""Log-density of ``x`` under the model, by the probability-flow ODE (MATH 5.1–5.3).

    Integrates the ODE of the module docstring from ``t_end`` (data) to ``t_max`` (noise) together
    with the divergence integral Δ and returns log p_{t_end}(x) = log p_T(z) + d(log α_T − log α_{t_end})
    + Δ, with z the latent at t_max.

    Args:
        denoiser: a :class:`~diffsolve.Denoiser` (any prediction type; ε̂ is asked for).
        x: (B, *shape) data, float. With ``dequantize``, data on the K-level grid (or integer levels).
        divergence: ``"hutchinson"`` (k = ``probes`` VJPs per call) or ``"exact"`` (d VJPs per call).
        probes: k ≥ 1 Hutchinson probes per sample, fixed along the trajectory; k ≥ 2 gives a stderr.
        probe: ``"rademacher"`` or ``"gaussian"``.
        fresh_probes: draw new probes at every network evaluation instead of holding them fixed
            along the trajectory; Δ then leaves the error norm (module docstring). Same cost, the
            same expectation, a smaller variance; with per-sample seeds sample i's probes still
            depend on sample i only.
        rtol, atol: tolerances of the adaptive solver on the state [y, Δ] (> 0).
        method: a Runge–Kutta tableau of :mod:`diffsolve.rk` (``dopri5``, ``tsit5``, ``bosh3``,
            ``euler_heun``).
        per_sample: one step size and error control per sample (needed when samples differ in
            difficulty) instead of one shared step for the batch (or chunk).
        time_variable: ``"log_snr"`` (λ, state x), ``"sigma_over_alpha"`` (VE coordinates,
            dy/ds = ε̂), ``"t"`` (raw time, state x, score-SDE style) or ``"auto"`` (default):
            ``t`` on a variance-preserving schedule, ``log_snr`` otherwise — the choices that
            needed the fewest NFE at equal accuracy in benchmarks/likelihood.md.
        fixed_steps: instead of adaptive steps, exactly this many equal steps in the time variable
            (no error control): every sample and every process of a distributed job then makes the
            same number of network calls, 1 + 6·fixed_steps for dopri5/tsit5.
        prior: ``"gaussian"``, log N(z; 0, σ_T² I) (valid when α_T ≈ 0 or σ_T ≫ data scale), or a
            callable z (B, *shape) -> (B,) log p_T(z), e.g. an analytic mixture's exact log p_T.
        t_end: data-side end time (default ``schedule.t_min``); the result is log p_{t_end}(x).
        dequantize: None, ``dict(levels=K, range=(a, b))`` or a :class:`Dequantization`: x is
            dequantized uniformly and log_prob is log p_Y in level units (MATH §5).
        seeds: per-sample seeds (sequence of B ints or ``"0-63"``), so the probes and dequantization
            noise of sample i do not depend on the batch; or a ``torch.Generator`` for the batch;
            default a generator seeded 0.
        chunk_size: integrate at most this many samples at a time (memory).
        dtype: state dtype (float64 by default; the network runs in its own dtype).
        norm: error norm over a sample's state: ``"max"`` (default; Δ weighs as much as any
            coordinate) or ``"rms"``. With a shared step the norm spans the whole chunk.
        max_steps: step-attempt limit of the adaptive solver.

    Returns:
        :class:`LikelihoodResult`.
    """
    deq = Dequantization.make(dequantize)
    _check_x(denoiser, x, allow_int=deq is not None)
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; valid: {', '.join(DIVERGENCES)}")
    if probe not in PROBES:
        raise ValueError(f"unknown probe {probe!r}; valid: {', '.join(PROBES)}")
    if isinstance(probes, bool) or not isinstance(probes, int) or probes < 1:
        raise ValueError(f"probes must be a positive integer, got {probes!r}")
    if not isinstance(fresh_probes, bool):
        raise TypeError(f"fresh_probes must be True or False, got {fresh_probes!r}")
    if fresh_probes and divergence == "exact":
        raise ValueError("fresh_probes applies to divergence='hutchinson'; the exact divergence uses no probes")
    time_variable = _time_variable(time_variable, per_sample, denoiser.schedule)
    rtol, atol = _solve_settings(method, rtol, atol, fixed_steps, norm)
    if dtype not in (torch.float64, torch.float32):
        raise TypeError(f"dtype must be torch.float64 or torch.float32, got {dtype}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    sch = denoiser.schedule
    t_end = _t_end(sch, t_end)
    B, shape = x.shape[0], tuple(x.shape[1:])
    d = math.prod(shape)
    if prior == "gaussian":
        prior_fn = gaussian_prior(sch)
    elif callable(prior):
        prior_fn = prior
    else:
        raise ValueError(f"prior must be 'gaussian' or a callable z -> log p_T(z), got {prior!r}")

    # Randomness: dequantization noise first, then the k probes (per sample with seeds).
    if isinstance(seeds, torch.Generator):
        src = NoiseSource(B, shape, generator=seeds, device=x.device, dtype=_F64)
    else:
        src = NoiseSource(B, shape, seeds=parse_seeds(seeds) if seeds is not None else None,
                          device=x.device, dtype=_F64)
    if deq is not None:
        k_lv = deq.level_index(x)
        u = torch.special.ndtr(src.randn())  # U[0, 1) from a normal draw of the same stream
        x = deq.apply(k_lv, u)
    x = x.to(dtype)
    exact = divergence == "exact"
    k = 1 if exact else probes

    def draw(rows=None):  # (k, n, *shape) probes for the given rows (all when None)
        V = torch.stack([src.randn(rows) for _ in range(k)]).to(dtype)
        return torch.sign(V) if probe == "rademacher" else V

    V = None
    if not exact:
        V = (lambda idx: draw(idx.tolist())) if fresh_probes else draw()  # fixed: (k, B, *shape)

    co = PFODE(denoiser, time_variable)
    u0, u1 = float(co.u_of(t_end)), float(co.u_of(sch.t_max))
    t0_t, tT_t = torch.tensor(t_end, dtype=_F64), torch.tensor(sch.t_max, dtype=_F64)
    state = torch.zeros(B, d + k + 1, dtype=dtype, device=x.device)
    state[:, :d] = x.reshape(B, d) / float(co.c(t_end))
    state[:, -1] = torch.arange(B, dtype=dtype) * _IDX_SCALE
    ode = _LikelihoodODE(denoiser, co, shape, k, V, with_divergence=True)

    mask = None
    if fresh_probes:  # the random Δ must not steer the steps (module docstring)
        mask = torch.ones(d + k + 1, dtype=torch.bool)
        mask[d:d + k] = False
    out, stats = _chunked(ode, state, u0, u1, chunk_size, method=method, rtol=rtol, atol=atol,
                          per_sample=per_sample, fixed_steps=fixed_steps, norm=norm, max_steps=max_steps,
                          error_mask=mask)
    nfe = ode.calls
    denoiser.check_finite()

    z = (float(co.c(sch.t_max)) * out[:, :d]).to(_F64).reshape(B, *shape)
    deltas = out[:, d:d + k].to(_F64)  # (B, k) per-probe integrals
    linear = d * float(sch.log_alpha(tT_t) - sch.log_alpha(t0_t))
    prior_lp = prior_fn(z).to(_F64).reshape(-1)
    if prior_lp.shape != (B,):
        raise ValueError(f"prior returned shape {tuple(prior_lp.shape)}; it must return ({B},) log-densities")
    delta = deltas.mean(1) + linear + (deq.log_jacobian(d) if deq is not None else 0.0)
    log_prob = prior_lp + delta
    stderr = None
    if not exact:
        stderr = deltas.std(1) / math.sqrt(k) if k > 1 else torch.full((B,), float("nan"), dtype=_F64)
    info = dict(divergence=divergence, probes=k, probe=None if exact else probe, fresh_probes=fresh_probes,
                method=method, rtol=rtol, atol=atol, per_sample=per_sample, time_variable=time_variable,
                fixed_steps=fixed_steps, t_end=t_end, t_max=sch.t_max, dequantize=deq, row_evals=stats["row_evals"],
                accepted=stats["accepted"], rejected=stats["rejected"], norm=norm, per_probe_delta=deltas)
    return LikelihoodResult(log_prob=log_prob, bits_per_dim=-log_prob / (d * math.log(2)), stderr=stderr,
                            nfe=nfe, z=z, prior_log_prob=prior_lp, delta_log_prob=delta, x=x.to(_F64), info=info)


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


def _flow(denoiser, x, t_from, t_to, *, rtol, atol, method, per_sample, time_variable, fixed_steps,
          chunk_size, norm, max_steps):
    time_variable = _time_variable(time_variable, per_sample, denoiser.schedule)
    rtol, atol = _solve_settings(method, rtol, atol, fixed_steps, norm)
    co = PFODE(denoiser, time_variable)
    B, shape = x.shape[0], tuple(x.shape[1:])
    d = math.prod(shape)
    c_from, c_to = float(co.c(t_from)), float(co.c(t_to))
    state = torch.zeros(B, d + 1, dtype=_F64, device=x.device)
    state[:, :d] = x.reshape(B, d).to(_F64) / c_from
    state[:, -1] = torch.arange(B, dtype=_F64) * _IDX_SCALE
    ode = _LikelihoodODE(denoiser, co, shape, 0, None, with_divergence=False)
    u0, u1 = float(co.u_of(t_from)), float(co.u_of(t_to))
    out, _ = _chunked(ode, state, u0, u1, chunk_size, method=method, rtol=rtol, atol=atol, per_sample=per_sample,
                      fixed_steps=fixed_steps, norm=norm, max_steps=max_steps)
    denoiser.check_finite()
    return (c_to * out[:, :d]).reshape(B, *shape), ode.calls


def encode(denoiser: Denoiser, x: Tensor, *, t_end: float | None = None, rtol: float = 1e-4,
           atol: float = 1e-4, method: str = "dopri5", per_sample: bool = False,
           time_variable: str = "auto", fixed_steps: int | None = None, chunk_size: int | None = None,
           norm: str = "max", max_steps: int = 10000) -> tuple[Tensor, Tensor]:
    """Data x at ``t_end`` (default t_min) → latent z at t_max along the probability-flow ODE
    (MATH 3.3), without the divergence. Returns (z, nfe per sample); same settings as
    :func:`log_likelihood`."""
    _check_x(denoiser, x)
    t_end = _t_end(denoiser.schedule, t_end)
    return _flow(denoiser, x, t_end, denoiser.schedule.t_max, rtol=rtol, atol=atol, method=method,
                 per_sample=per_sample, time_variable=time_variable, fixed_steps=fixed_steps,
                 chunk_size=chunk_size, norm=norm, max_steps=max_steps)


def decode(denoiser: Denoiser, z: Tensor, *, t_end: float | None = None, rtol: float = 1e-4,
           atol: float = 1e-4, method: str = "dopri5", per_sample: bool = False,
           time_variable: str = "auto", fixed_steps: int | None = None, chunk_size: int | None = None,
           norm: str = "max", max_steps: int = 10000) -> tuple[Tensor, Tensor]:
    """Latent z at t_max → data at ``t_end`` (the inverse of :func:`encode`). Returns (x, nfe)."""
    _check_x(denoiser, z)
    t_end = _t_end(denoiser.schedule, t_end)
    return _flow(denoiser, z, denoiser.schedule.t_max, t_end, rtol=rtol, atol=atol, method=method,
                 per_sample=per_sample, time_variable=time_variable, fixed_steps=fixed_steps,
                 chunk_size=chunk_size, norm=norm, max_steps=max_steps)


def round_trip(denoiser: Denoiser, x: Tensor, **kwargs) -> RoundTrip:
    """Encode then decode ``x`` with the same settings (keyword arguments of :func:`encode`) and
    report the reconstruction error: a check that the solver inverts the flow at this tolerance."""
    z, n1 = encode(denoiser, x, **kwargs)
    x_rec, n2 = decode(denoiser, z, **kwargs)
    diff = (x_rec - x.to(_F64)).reshape(x.shape[0], -1)
    return RoundTrip(z=z, x_rec=x_rec, error=diff.abs().amax(1), rms_error=diff.pow(2).mean(1).sqrt(), nfe=n1 + n2)
