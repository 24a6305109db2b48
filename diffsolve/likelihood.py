r"""Exact log-likelihood through the probability-flow ODE (docs/math.md §5).

Along a trajectory of the probability-flow ODE dx/dt = F_t(x) = f_t x − ½ g_t² ŝ(x, t) (docs/math.md (3.3)),

    d/dt log p_t(x_t) = −∇·F_t(x_t)                                               (docs/math.md (5.1))
    log p_{t0}(x_{t0}) = log p_T(x_T) + ∫_{t0}^{T} ∇·F_t(x_t) dt                    (docs/math.md (5.2))
    ∇·F_t = f_t d − ½ g_t² ∇·ŝ = f_t d − σ_t λ'_t ∇·ε̂                               (docs/math.md (5.3))

using ∇·ŝ = −∇·ε̂/σ and g² = −2σ²λ' (docs/math.md (1.3)). The whole divergence (5.3) goes through the
ODE solver, the term f_t d with the network term. f_t d does not depend on x and has the closed
form ∫ f_t d dt = d (log α_T − log α_{t0}), but where α_t → 0 (cosine, flow: t → 1) f_t and
σ_t λ'_t ∇·ε̂ each grow like 1/α_t and only their sum stays bounded (∇·ε̂ → d there). Integrating the
network term alone in raw t cost 1.6–2.8× the NFE at the same tolerance, with 4–50× the error
(``python benchmarks/likelihood_split.py``: 2-D ring and 16-D mixture, rtol 1e-3 … 1e-5; ring on
flow 146–254 NFE against 68–134), which is what made raw t look slow on flow schedules; with the
sum, raw t is the cheapest variable there. On VP and EDM the two forms agree to within one or two
steps, and in λ they are within ±15 % of each other either way.

**Time variable and state.** Any monotone change of time u = u(t) leaves (5.2) exact and changes
only the solver's work (docs/math.md §5). We integrate in u ∈ {``t``, ``log_snr`` (λ), ``sigma_over_alpha``
(s = σ/α = e^{−λ}), ``flow_time``, ``vp_time``} with the state y = x / c_t, c_t = 1 for ``t`` and ``log_snr``,
c_t = α_t for ``sigma_over_alpha``, and the reference schedule's coordinates for the two clocks
(:data:`TIME_VARIABLES`; docs/math.md (9.7), where Δ is carried as the divergence of the state's own
drift and converted in closed form, (9.8)):

    dy/du = [(f_t − c'_t/c_t) y − (σ_t λ'_t / c_t) ε̂(c_t y, t)] dt/du
    dΔ/du = [f_t d − σ_t λ'_t ∇_x·ε̂(x, t)] dt/du,      log p_{t0}(x) = log p_T(z) + Δ

The solver carries Δ/d, the log-density per dimension (docs/math.md (20.12)), so that where Δ enters
the error norm (exact divergence, fixed probes) the tolerances bound it in the unit of the result:
0.94× the evaluations at matched error (``benchmarks/likelihood_delta_scale.py``).
For ``sigma_over_alpha`` this is the ODE dy/ds = ε̂ in VE coordinates (EDM, k-diffusion). The
scaling c is a pure reparametrisation: log p_x is recovered exactly. The default (``auto``) is
``flow_time``, the rectified flow's time at the same log-SNR, on every schedule (since 2026-12-07;
:mod:`diffsolve.ode`, ``benchmarks/likelihood_vp_time.py``); before, raw t on every schedule but a
DDPM table, where λ (the table's dλ/dt jumps at every timestep): with the whole divergence riding
along, t's error-against-NFE curve lies on or below λ's on VP, cosine, sub-VP, VE, EDM and flow
schedules in 2 and 16 dimensions (``benchmarks/likelihood_split.py``). With per-row error
control at loose tolerances (1e-3) λ and t can miss the error made in the mode-switching region on
some 2-D rows (the local error estimate of a lone row); ``sigma_over_alpha`` keeps the error
proportional to the tolerance there, at more NFE.

**Divergence.** ``exact``: the trace of ∂ε̂/∂x by d vector–Jacobian products with the basis vectors
(batched with ``is_grads_batched``; fine for small d). ``hutchinson``: zᵀ(∂ε̂/∂x)z for k probes z
(Rademacher or Gaussian, E[zzᵀ] = I) held fixed along the trajectory (FFJORD); each probe's integral
Δ_j is carried separately, so the result's ``stderr`` is the standard error of their mean.
With ``fresh_probes=True`` every network evaluation draws new probes instead. Δ then leaves the
solver's error norm (``ProbabilityFlowODE.solve(divergence_in_norm=False)``), so the steps, and with them the quadrature
weights w_e = h·b_i of the evaluations, depend on the trajectory of y only, never on the probes;
given that trajectory, Δ_j = Σ_e w_e z_eᵀ J_e z_e is an unbiased estimate of the same Runge–Kutta
quadrature of the exact divergence, with variance Σ_e w_e² Var(z_eᵀ J_e z_e) instead of
Var(zᵀ(Σ_e w_e J_e)z): the probe noise averages over the evaluations (1.4–2.3× smaller error on
the analytic mixtures at no extra network work; benchmarks/likelihood.md). Stages of one step
that lie close in time and carry weights of opposite sign share a probe (dopri5's stages 4 and 5,
b = 0.651 and −0.322): the expectation is unchanged and Σ_e w_e² per step falls from 0.755 h² to
0.335 h² (docs/math.md (20.9); 0.66–0.74× the error of independent probes at the same NFE). Fresh
Rademacher probes are drawn without replacement from a Walsh frame (:class:`_WalshProbes`, docs/math.md
(20.10)): each is a uniform ±1 vector, but the M = 2^⌈log₂ d⌉ probes of a cycle satisfy Σ z zᵀ = M I,
so evaluations that outnumber the dimensions cancel each other's noise (0.38–0.42× the error of
independent draws in 2-D, 0.71–0.86× in 6–48-D, 0.89–0.92× in 96-D at the same steps; 0.35× on the
trained two-moons model, 0.95× on the trained digits model; ``benchmarks/likelihood_probes.py``).
The k integrals Δ_j stay independent given the trajectory, so ``stderr`` keeps its meaning. The
price: Δ's own integration error is then controlled only through the steps the state takes, so it
is larger than with Δ in the norm — irrelevant while the probe noise dominates (always, for a few
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

import inspect
import math
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from ._numbers import is_integer
from .checks import caller_stacklevel, check_data, check_state_dtype, data_end_time
from .denoiser import Denoiser
from .dequantize import Dequantization
from .noise import NoiseSource, parse_seeds
from .ode import (TIME_VARIABLES, ProbabilityFlowODE, RoundTrip, check_settings, decode,
                  encode, resolve_time_variable, round_trip)

__all__ = ["log_likelihood", "LikelihoodResult", "Dequantization", "encode", "decode", "round_trip",
           "RoundTrip", "prior_gap", "gaussian_prior", "TIME_VARIABLES", "DIVERGENCES", "PROBES"]

_F64 = torch.float64
DIVERGENCES = ("hutchinson", "exact")
PROBES = ("rademacher", "gaussian")
_EXACT_CHUNK = 256  # basis vectors per batched VJP in the exact divergence


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
        delta_log_prob: log_prob − prior_log_prob (the integral of docs/math.md (5.2), plus the
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


PRIOR_MAX_SIGNAL = 0.1  # α_T/σ_T above which the Gaussian prior is warned of (_warn_signal_at_t_max)


def _warn_signal_at_t_max(schedule):
    """Warn where the Gaussian prior N(0, σ_T² I) cannot stand for p_T: α_T/σ_T above
    :data:`PRIOR_MAX_SIGNAL` (the built-in schedules: 0.001–0.02; Stable Diffusion's betas and
    k-diffusion's σ_max = 14.6: 0.068). p_T is the data's law scaled by α_T and blurred by σ_T, and the
    prior misses about ½ (α_T/σ_T)² |m|² nats of a data mean m alone (docs/math.md (20.6)): 0.005 |m|² per
    dimension at the threshold."""
    a, s = (float(v) for v in schedule.alpha_sigma(schedule.t_max))
    if a / s > PRIOR_MAX_SIGNAL:
        warnings.warn(f"the Gaussian prior N(0, σ_T² I) stands for p_T only where the signal is a small part of the "
                      f"state at t_max; here α_T/σ_T = {a / s:.3g} (t_max = {schedule.t_max:g}), so log p is off by "
                      f"about ½ (α_T/σ_T)² |m|² nats for data of mean m, and more: give prior= the exact log p_T, or "
                      f"a schedule whose t_max is pure noise", UserWarning, stacklevel=caller_stacklevel())


def prior_gap(z: Tensor, exact_log_p_T: Callable[[Tensor], Tensor], prior="gaussian", schedule=None) -> Tensor:
    """The prior's own error at the latents ``z``: log p_T(z) − prior(z), per sample.

    Adding it to ``log_prob`` gives the estimate with the exact prior; its mean over z ~ p_T is
    KL(p_T ‖ prior) (docs/math.md §5), so averaging it over the latents of data samples separates the
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
    index, batch = denoiser._rows or (torch.arange(B), B)  # the m copies are those rows again (at_rows)
    with torch.enable_grad(), denoiser.at_rows(index.repeat(m), batch):
        e = denoiser.eps(xr, tr)
        if not e.requires_grad:
            raise ValueError("the log-likelihood needs ∂ε̂/∂x by autograd, but the network's output does not depend "
                             "on its input through autograd (does it run under torch.no_grad(), detach its "
                             "output, or go through numpy?)")
        g = torch.autograd.grad(e, xr, grad_outputs=vs.reshape(m * B, *x.shape[1:]).to(e.dtype))[0]
    denoiser._check_finite(g, t, what="the network's Jacobian (vᵀ∂ε̂/∂x, of the divergence) has")
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


class _DivergenceEstimate:
    """ε̂ and k estimates of ∇_x·ε̂ per row from one network evaluation (the ``divergence`` of
    :meth:`diffsolve.ode.ProbabilityFlowODE.solve`). ``probes``: None (exact divergence), a
    (k, B, *shape) tensor held fixed, or a callable rows (n,) -> (k, n, *shape) drawing fresh probes
    for those rows at every evaluation — except where the solve asks to ``reuse`` the previous
    evaluation's (a stage that shares its predecessor's probes, docs/math.md (20.9))."""

    def __init__(self, denoiser: Denoiser, k: int, probes):
        self.denoiser, self.k, self.probes = denoiser, k, probes
        self.last = None  # the fresh probes of the previous evaluation

    def __call__(self, x: Tensor, t: Tensor, rows: Tensor, reuse: bool = False):
        probes = self.probes
        if callable(probes):
            if not (reuse and self.last is not None and self.last.shape[1] == rows.shape[0]):
                self.last = probes(rows)
            probes = self.last
        elif probes is not None:
            probes = probes[:, rows.to(probes.device)]
        return _eps_and_divergence(self.denoiser, x, t, probes)


def _check_estimator(divergence, probes, probe, fresh_probes, dtype, prior):
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; valid: {', '.join(DIVERGENCES)}")
    if probe not in PROBES:
        raise ValueError(f"unknown probe {probe!r}; valid: {', '.join(PROBES)}")
    if not is_integer(probes) or probes < 1:
        raise ValueError(f"probes must be a positive integer, got {probes!r}")
    if not isinstance(fresh_probes, bool):
        raise TypeError(f"fresh_probes must be True or False, got {fresh_probes!r}")
    if divergence == "exact" and (fresh_probes or probes != 1 or probe != "rademacher"):
        given = [s for s, on in (("fresh_probes=True", fresh_probes), (f"probes={probes}", probes != 1),
                                 (f"probe={probe!r}", probe != "rademacher")) if on]
        raise ValueError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to divergence='hutchinson'; "
                         f"the exact divergence uses no probes: drop {'it' if len(given) == 1 else 'them'}")
    check_state_dtype(dtype)
    if prior != "gaussian" and not callable(prior):
        raise ValueError(f"prior must be 'gaussian' or a callable z -> log p_T(z), got {prior!r}")


def _random_source(seeds, x: Tensor) -> NoiseSource:
    """Dequantization noise first, then the k probes (per sample with seeds)."""
    B, shape = x.shape[0], tuple(x.shape[1:])
    if isinstance(seeds, torch.Generator):
        return NoiseSource(B, shape, generator=seeds, device=x.device, dtype=_F64)
    return NoiseSource(B, shape, seeds=parse_seeds(seeds) if seeds is not None else None, device=x.device,
                       dtype=_F64)


def _probes(src: NoiseSource, k: int, probe: str, fresh: bool, dtype):
    """Hutchinson probes: (k, B, *shape) held fixed, or a callable drawing them per evaluation
    (Rademacher: :class:`_WalshProbes`, without replacement; Gaussian: independent draws)."""
    if fresh and probe == "rademacher":
        return _WalshProbes(src, k, dtype)

    def draw(rows=None):  # (k, n, *shape) probes for the given rows (all when None)
        V = torch.stack([src.randn(rows) for _ in range(k)]).to(dtype)
        return torch.sign(V) if probe == "rademacher" else V

    return (lambda rows: draw(rows.tolist())) if fresh else draw()


class _WalshProbes:
    """Fresh Rademacher probes drawn without replacement from a Walsh frame (docs/math.md (20.10)).

    With d = prod(shape) and M = 2^⌈log₂ d⌉, probe stream j of sample i goes through cycles of M
    evaluations; a cycle draws a sign vector s ∈ {±1}^d and a random order π of 0..M−1 from the
    sample's own stream, and its e-th probe is z = s ⊙ h_{π(e)}, h_m(c) = (−1)^{popcount(m AND c)}
    the Walsh functions on the coordinates c < d. Each z is uniform on {±1}^d (s alone makes it so,
    whatever π), so every term stays unbiased; over a whole cycle Σ z zᵀ = M I, so a cycle whose
    evaluations share one J and one weight returns the trace with no probe noise at all. Called with
    the (n,) rows being evaluated, it returns their (k, n, *shape) probes. Memory: k·B·(d + 4M) bytes
    (signs as int8, orders as int32), at most about a float64 copy of the batch."""

    def __init__(self, src: NoiseSource, k: int, dtype):
        self.src, self.k, self.dtype = src, k, dtype
        self.d = math.prod(src.event_shape)
        self.bits = (self.d - 1).bit_length()
        self.M = 1 << self.bits
        B, dev = src.batch, src.device
        self.used = torch.zeros(B, dtype=torch.int64)  # probes drawn so far, per sample
        self.signs = torch.ones(k, B, self.d, dtype=torch.int8, device=dev)
        self.order = torch.zeros(k, B, self.M, dtype=torch.int32, device=dev)
        self.coords = torch.arange(self.d, dtype=torch.int32, device=dev)

    def _new_cycle(self, rows: list):
        n = len(rows)
        for j in range(self.k):  # per sample and stream: the signs, then the order, from its own draws
            self.signs[j, rows] = torch.sign(self.src.randn(rows).reshape(n, self.d)).to(torch.int8)
            if self.M > 1:
                u = torch.cat([self.src.randn(rows).reshape(n, self.d) for _ in range(-(-self.M // self.d))], 1)
                self.order[j, rows] = u[:, :self.M].argsort(1).to(torch.int32)

    def __call__(self, rows: Tensor) -> Tensor:
        rows = rows.cpu()
        at = self.used[rows] % self.M  # each row's place in its cycle
        if bool((at == 0).any()):
            self._new_cycle(rows[at == 0].tolist())
        self.used[rows] += 1
        rows, at = rows.to(self.order.device), at.to(self.order.device)
        m = self.order[:, rows, at]  # (k, n) Walsh indices
        v = m[..., None] & self.coords  # popcount parity of m AND c by folding
        shift = 1
        while shift < self.bits:
            v = v ^ (v >> shift)
            shift *= 2
        walsh = 1 - 2 * (v & 1).to(self.dtype)
        return (self.signs[:, rows].to(self.dtype) * walsh).reshape(self.k, rows.shape[0], *self.src.event_shape)


def log_likelihood(denoiser: Denoiser, x: Tensor, *, divergence: str = "hutchinson", probes: int = 1,
                   probe: str = "rademacher", fresh_probes: bool | None = None, rtol: float = 3e-5,
                   atol: float = 3e-5, method: str = "dopri5",
                   per_sample: bool = True, time_variable: str = "auto",
                   fixed_steps: int | None = None, prior="gaussian", t_end: float | None = None,
                   dequantize=None, seeds=None, chunk_size: int | None = None,
                   dtype: torch.dtype = torch.float64, norm: str = "max",
                   max_steps: int = 10000) -> LikelihoodResult:
    r"""Log-density of ``x`` under the model, by the probability-flow ODE (docs/math.md (5.1)–(5.3)).

    Integrates the ODE of the module docstring from ``t_end`` (data) to ``t_max`` (noise) together
    with the divergence integral Δ of the whole drift, f_t d included (docs/math.md (5.3), (20.1)), and
    returns log p_{t_end}(x) = log p_T(z) + Δ, with z the latent at t_max.

    Args:
        denoiser: a :class:`~diffsolve.Denoiser` (any prediction type; ε̂ is asked for).
        x: (B, *shape) data, float. With ``dequantize``, data on the K-level grid (or integer levels).
        divergence: ``"hutchinson"`` (k = ``probes`` VJPs per call) or ``"exact"`` (d VJPs per call).
        probes: k ≥ 1 Hutchinson probes per sample (drawn afresh at each evaluation by default, else
            held fixed along the trajectory: ``fresh_probes``); k ≥ 2 gives a stderr.
        probe: ``"rademacher"`` (fresh ones from a Walsh frame without replacement, docs/math.md
            (20.10)) or ``"gaussian"`` (independent draws; Var 2‖J_s‖_F², (20.3)).
        fresh_probes: draw new probes at every network evaluation instead of holding them fixed
            along the trajectory; Δ then leaves the error norm (module docstring). Same cost, the
            same expectation, a smaller variance; with per-sample seeds sample i's probes still
            depend on sample i only. Default (None): fresh probes for the Hutchinson estimate —
            measured 1.4–3.2× less error at 0.76–0.9× the NFE of one fixed probe on the 2-D ring
            (VP, VE), a 64-D mixture and the trained digits model (benchmarks/likelihood.md),
            before stages began to share probes (docs/math.md (20.9): a further 0.66–0.74×) and
            Rademacher probes were drawn without replacement from a Walsh frame ((20.10): a further
            0.38–0.92× on mixtures, the most in low dimension; 0.35× on the two-moons model,
            0.95× on the digits model);
            ``False`` holds them fixed (FFJORD, k-diffusion, score_sde), which keeps Δ in the error
            norm: the choice when averaging very many probes.
        rtol, atol: tolerances of the adaptive solver on the state [y, Δ] (> 0). Default 3e-5, the
            tolerance at which the ``flow_time`` solve spends no more evaluations than the former default
            (1e-4 in t) did: on three mixtures made for the comparison under five families, 0.84× its
            evaluations for 0.51× its error (geometric means; benchmarks/likelihood.md, "The likelihood
            in the rectified flow's time").
        method: a Runge–Kutta tableau of :mod:`diffsolve.rk` (``dopri5``, ``tsit5``, ``bosh3``,
            ``euler_heun``).
        per_sample: one step size and error control per sample (default), so a sample's value
            does not depend on the batch it is computed in, and each takes the steps its own
            trajectory needs; ``False``: one shared step for the batch (or chunk), the norm over
            all of it. Measured (``benchmarks/peers_more.py --parts likelihood``, exact divergence,
            NFE at equal error from 3e-4 to 1e-6 nats/dim, VP and flow schedules): per-sample needs
            0.64–0.79× the shared step's NFE in 2-D and 0.83–0.96× in 64-D.
        time_variable: ``"flow_time"`` (the rectified flow's time u = s/(1 + s) at the same log-SNR,
            the state and Δ in its coordinates: docs/math.md (9.7), (9.8)), ``"vp_time"`` (the same with
            Song et al.'s VP schedule), ``"log_snr"`` (λ, state x), ``"sigma_over_alpha"`` (VE
            coordinates, dy/ds = ε̂), ``"t"`` (raw time, state x, score-SDE style; on a DDPM table its
            kinks stop the error from following the tolerance, which is warned) or ``"auto"``
            (default): ``flow_time`` on every schedule. In a clock the solve depends only on the
            log-SNR range, not on the family; exact divergence, NFE at matched error against the rule
            before it (``t``, λ on DDPM tables), on three problems made for the judgement: 0.55× on
            EDM, 0.58× on VE, 0.68× on DDPM tables, 0.90–0.91× on VP and sub-VP, 0.98× on cosine,
            1.00× on rectified flow, where it is t (``python benchmarks/likelihood_vp_time.py``);
            with ``fixed_steps``, the sampling rule: ``t`` on VP, cosine and flow, ``log_snr`` on EDM,
            VE, sub-VP and DDPM tables (equal steps in
            an EDM schedule's t, σ from 0.002 to 80, put almost none near the data: at 10 steps on a
            4-D mixture 0.42 nats/dim off in t, 2.6e-4 in λ;
            ``tests/test_likelihood.py::test_fixed_steps_take_the_sampling_time_variable``).
        fixed_steps: instead of adaptive steps, exactly this many equal steps in the time variable
            (no error control): every sample and every process of a distributed job then makes the
            same number of network calls, 1 + 6·fixed_steps for dopri5/tsit5.
        prior: ``"gaussian"``, log N(z; 0, σ_T² I) (valid when α_T ≈ 0 or σ_T ≫ data scale), or a
            callable z (B, *shape) -> (B,) log p_T(z), e.g. an analytic mixture's exact log p_T.
        t_end: data-side end time (default ``schedule.t_min``); the result is log p_{t_end}(x).
        dequantize: None, ``dict(levels=K, range=(a, b))`` or a :class:`Dequantization`: x is
            dequantized uniformly and log_prob is log p_Y in level units (docs/math.md §5). The range
            has no default: it is the interval the model's data lie in ((−1, 1) for diffusers-style
            image models, as :func:`~diffsolve.dataset_log_likelihood` assumes) and sets the Jacobian.
        seeds: per-sample seeds (sequence of B ints or ``"0-63"``), so the probes and dequantization
            noise of sample i do not depend on the batch; or a ``torch.Generator`` for the batch;
            default a generator seeded 0.
        chunk_size: integrate at most this many samples at a time (memory).
        dtype: state dtype (float64 by default; the network runs in its own dtype, a plain function
            without ``net_dtype`` in the dtype of the ``x`` given, e.g. float32 for float32 data:
            declare ``net_dtype=torch.float64`` for an exact float64 model given float32 data).
        norm: error norm over a sample's state: ``"max"`` (default; Δ weighs as much as any
            coordinate) or ``"rms"``. With a shared step the norm spans the whole chunk.
        max_steps: step-attempt limit of the adaptive solver.

    Returns:
        :class:`LikelihoodResult`, without an autograd graph: the divergence is itself taken by
        autograd and its value detached, so the result is not differentiable in ``x`` or the
        network's weights (a graph through the state alone would give a wrong gradient).
    """
    options = {k: v for k, v in locals().items() if k not in ("denoiser", "x")}  # (first: the arguments only)
    deq = Dequantization.make(dequantize)
    check_data(denoiser, x, allow_int=deq is not None,
               int_hint="integer data need dequantize=dict(levels=K, range=(a, b))")
    if torch.is_inference_mode_enabled():
        raise ValueError("log_likelihood differentiates the network (∂ε̂/∂x by autograd), which torch.inference_mode() "
                         "forbids; call it outside inference_mode (torch.no_grad() around it is fine)")
    x = x.detach()  # the result is not differentiable (Returns): no graph through the state
    sch = denoiser.schedule
    opts = resolved_options(options, sch)
    if prior == "gaussian":
        _warn_signal_at_t_max(sch)
    fresh_probes, t_end, time_variable = opts["fresh_probes"], opts["t_end"], opts["time_variable"]
    solve = {k: opts[k] for k in _SOLVE_OPTIONS}
    src = _random_source(seeds, x)
    call_dtype = x.dtype  # the caller's data: a network of unknown dtype is called in its dtype (Denoiser.calling_in)
    if deq is not None:
        u = torch.special.ndtr(src.randn())  # U[0, 1) from a normal draw of the same stream
        x = deq.apply(deq.level_index(x), u)
    x = x.to(dtype)
    exact = divergence == "exact"
    k = 1 if exact else probes
    estimate = _DivergenceEstimate(denoiser, k, None if exact else _probes(src, k, probe, fresh_probes, dtype))
    ode = ProbabilityFlowODE(denoiser, time_variable)
    # fresh probes: the random Δ must not steer the steps (module docstring)
    with denoiser.calling_in(call_dtype):
        sol = ode.solve(x, t_end, sch.t_max, divergence=estimate, divergence_in_norm=not fresh_probes, **solve)
    info = dict(divergence=divergence, probes=k, probe=None if exact else probe, fresh_probes=fresh_probes,
                method=method, rtol=rtol, atol=atol, per_sample=per_sample, time_variable=sol.time_variable,
                fixed_steps=fixed_steps, t_end=t_end, t_max=sch.t_max, dequantize=deq, row_evals=sol.row_evals,
                accepted=sol.accepted, rejected=sol.rejected, norm=norm)
    return _result(sol, x, sch, prior, deq, exact, info)


def resolved_options(options: dict, schedule) -> dict:
    """:func:`log_likelihood`'s keyword options (all but ``denoiser`` and ``x``), every one checked, with its
    defaults filled in and resolved for ``schedule``: ``fresh_probes`` (fresh for Hutchinson), ``t_end``
    (the schedule's t_min) and ``time_variable`` (``"auto"``, module docstring). The one validation of
    these options: :func:`log_likelihood` calls it, and so does a caller that must refuse bad options before
    any work (:func:`diffsolve.dataset_likelihood.dataset_log_likelihood`) and records them as they run."""
    params = {k: p for k, p in inspect.signature(log_likelihood).parameters.items() if p.kind is p.KEYWORD_ONLY}
    unknown = sorted(k for k in options if k not in params)
    if unknown:
        raise TypeError(f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} of log_likelihood; "
                        f"valid: {', '.join(params)}")
    a = {k: p.default for k, p in params.items()} | dict(options)
    if a["fresh_probes"] is None:
        a["fresh_probes"] = a["divergence"] == "hutchinson"
    _check_estimator(a["divergence"], a["probes"], a["probe"], a["fresh_probes"], a["dtype"], a["prior"])
    check_settings(time_variable=a["time_variable"], **{k: a[k] for k in _SOLVE_OPTIONS})
    a["t_end"] = data_end_time(schedule, a["t_end"])
    a["time_variable"] = resolve_time_variable(a["time_variable"], schedule, divergence=True,
                                               fixed_steps=a["fixed_steps"] is not None)
    return a


_SOLVE_OPTIONS = ("method", "rtol", "atol", "norm", "per_sample", "fixed_steps", "max_steps", "chunk_size")


def _shape_of(v) -> str:
    return f"shape {tuple(v.shape)}" if isinstance(v, Tensor) else f"an object of type {type(v).__name__}"


def _result(sol, x: Tensor, sch, prior, deq, exact: bool, info: dict) -> LikelihoodResult:
    """log p_{t_end}(x) = log p_T(z) + Δ (module docstring)."""
    B, d = x.shape[0], x[0].numel()
    z, deltas = sol.x.to(_F64), sol.delta.to(_F64)  # (B, k) per-probe integrals
    k = deltas.shape[1]
    prior_lp = (gaussian_prior(sch) if prior == "gaussian" else prior)(z)
    if not isinstance(prior_lp, Tensor) or prior_lp.numel() != B:
        raise ValueError(f"prior returned {_shape_of(prior_lp)}; it must return ({B},) log-densities")
    prior_lp = prior_lp.detach().to(_F64).reshape(-1)
    bad = (~torch.isfinite(prior_lp)).nonzero().flatten().tolist()
    if bad:
        more = " ..." if len(bad) > 8 else ""
        raise ValueError(f"prior returned NaN or Inf log-densities for samples {bad[:8]}{more}"
                         f" (latents z of norm {z.reshape(B, -1).norm(dim=1)[bad[:3]].tolist()}); check the prior "
                         f"at the schedule's t_max")
    delta = deltas.mean(1) + (deq.log_jacobian(d) if deq is not None else 0.0)
    log_prob = prior_lp + delta
    stderr = None
    if not exact:
        stderr = deltas.std(1) / math.sqrt(k) if k > 1 else torch.full((B,), float("nan"), dtype=_F64)
    return LikelihoodResult(log_prob=log_prob, bits_per_dim=-log_prob / (d * math.log(2)), stderr=stderr,
                            nfe=sol.calls.cpu(), z=z, prior_log_prob=prior_lp, delta_log_prob=delta, x=x.to(_F64),
                            info=dict(info, per_probe_delta=deltas))
