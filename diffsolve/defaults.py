r"""What :func:`diffsolve.sample` runs when the call does not say: chosen by measurement.

The rule (``benchmarks/defaults_sweep.py``, ``benchmarks/defaults.md``): for a budget of N network
evaluations on the probability-flow ODE,

- **solver**: ``dpmpp_2m:lower_order_final=false`` (DPM-Solver++(2M), its last step of order 2
  too) for N ≤ 6; ``deis:lower_order_final=false`` (:data:`DEIS_KARRAS`: DEIS / DPM-Solver in noise
  prediction, order 3 to the last step, steps in log ρ) on EDM's ``karras`` grid for 7 ≤ N ≤ 12
  (on a flow schedule ``deis`` with its lower-order last steps, on ``log_snr``); ``unipc:order=3``
  (UniPC-3 in data prediction) above;
- **analytic first step** (the first evaluation, at t_max, answered by the exact network of
  standard-normal data without a network call, docs/math.md §27: N network calls make N + 1
  steps): for N ≤ 6 on every schedule, for N ≤ 20 on a :class:`~diffsolve.schedules.FlowSchedule`
  (rectified flow), whose grid starts at α = 0.001 and whose α at the first grid point is several
  times smaller than a VP schedule's, and with it the error the formula leaves (docs/math.md (27.3)),
  and with the Karras piece (below) for N ≤ :data:`KARRAS_ANALYTIC_UP_TO` = 9 where the run starts at
  α/σ ≤ :data:`KARRAS_ANALYTIC_MAX_SIGNAL` = 0.01 (the DDPM and cosine schedules; not EDM's σ_max = 80,
  α/σ = 0.0125, where it lost 7–18× on the held-out 256-D mixture at 8–12 evaluations). On DDPM and
  cosine schedules (2026-12-07) it gives 0.66× the error on three problems and a seed made for that
  judgement (at most 1.04× in a cell) and 0.76–0.88× on the trained digits model at 7–9; up to 12 it had
  lost up to 3.4× on a fresh 32-D mixture at 11–12 evaluations, where the step's error, about α times
  the data's mean, outweighs the solver's (``benchmarks/defaults.md``, "The analytic first step with the
  Karras piece");
  only where the run starts at α/σ ≤ :data:`AFS_MAX_SIGNAL` = 0.03 (the sweep's schedules start at
  0.0064–0.0125; on Stable Diffusion's scaled-linear betas, α/σ = 0.068 at t_max, it made the default call
  at 4–6 evaluations 1.33× worse in the geometric mean over the sweep's six problems,
  ``benchmarks/defaults.md``, "Where the analytic first step applies"; on a VP schedule cut at t_max = 0.5,
  α/σ = 0.29, 2.8× worse at N = 5, ``tests/test_analytic_first_step.py``);
- **grid**: ``log_snr`` (uniform in λ), but ``karras`` (ρ = 7 in σ/α) with ``deis`` at 7–12 (above),
  where the run starts at α/σ ≥ :data:`KARRAS_MIN_SIGNAL` = 0.0025 (a zero-terminal-SNR table started
  at α/σ = 0.001 keeps ``deis`` on log_snr: there the Karras piece was 1.08× worse over nine problems,
  5.0–5.5× on the 2-D ring, as on the flow schedule's choice-set cells from the same start; on Stable
  Diffusion's betas it is 0.54×). That piece (2026-12-07) takes the held-out set's geometric mean at
  8–12 from 2.18 to 1.49 times the best configuration of each cell and three fresh problems' error to
  0.72× (0.56–0.79× per VP or EDM family); on the trained digits model it is 0.85–0.99× at 8–12
  evaluations and 1.46× at 7 (geometric mean 0.99×); on rectified flow the Karras grid lost on the
  choice set, so flow keeps its rule (``benchmarks/defaults.md``, "DEIS-3 to the end on the Karras
  grid");
- **final denoise**: only for N > 20 — below, the evaluation buys a solver step, which is worth
  more than replacing x(t_min) by x̂0(x, t_min); with ν > 0 (a stochastic run) always, since it
  also removes the noise of the last step;
- **one exception by schedule family**: on an :class:`~diffsolve.schedules.EDMSchedule` (EDM and
  k-diffusion denoisers, σ-parametrised) the ``deis`` piece on EDM's own grid runs up to N = 20 (to 12
  elsewhere). With the final denoise (until 2026-12-07) that family's held-out error over the best
  configuration of each cell fell from 2.2 to 1.2 over 8–20 evaluations (on the choice set from 2.6
  to 1.6; ``benchmarks/defaults.md``, "The EDM exception"); without it and with the third order to
  the last step it is lower again (1.40 → 1.19 at 8–20 on the held-out set, 1.88 → 1.60 on the choice set, against
  the sweep's cells of 2026-12-07); on EDM schedules the piece applies from any start (it was measured at
  σ_max = 80; :data:`KARRAS_MIN_SIGNAL` is not checked there). The flow family's gains from
  a Karras grid in σ/α up to 999 would not carry to SD3/FLUX ranges (α → 0), which stretch it.

- **start**: a grid kind on a schedule that starts below the log-SNR :data:`START_LOG_SNR` (a flow
  schedule from σ = 1, as a diffusers flow config gives it) starts there, the state carried from t_max
  by the exact flow of standard-normal data (:func:`default_start`, :func:`prior_flow_scale`;
  docs/math.md (27.4)): the regime the rule was measured in. On nine exact problems under a flow
  schedule from σ = 1 it gives 0.07–0.48× the error of the same grid kind from t_max, in the
  geometric mean at every budget from 4 to 50 (``benchmarks/defaults.md``, "Flow schedules from
  σ = 1").

- **state dtype**: float32 when the network runs in float32 or half precision (a trained network),
  float64 otherwise (exact models, float64 networks); for a network of unknown dtype (a plain
  function given without ``net_dtype``) the dtype of the ``x`` the caller passes decides it the same
  way, and when the library draws x, torch's default dtype (``torch.get_default_dtype()``: float32
  unless the caller's code set float64), the dtype the function's own tensors have. Measured in
  ``benchmarks/cost.md``: from 5 to 200 evaluations the float32 state's error is 0.98–1.01× the
  float64 state's on the ring, mix64 and gauss3072 (the two differ by 2e-7 to 4e-6 RMS, 100× below
  the discretisation error); at 1000 evaluations the float32 state stops improving near 1e-6 RMS,
  far below a trained network's own error. It halves the state's memory and its per-step cost on CPU
  (float64 costs 1–4× float32 there, more on GPUs with slow float64), so the default call's overhead
  stays that of a float32 loop.

Read off ten budgets (4–50) on three exact problems (ring2d, mix64, gauss3072) under four schedule
families (DDPM, cosine, EDM, rectified flow), among 104 configurations (thirteen solver variants × four
grids × final denoise or not) and ten solver variants with the analytic first step up to 20
evaluations, by the geometric mean of each configuration's error over the best configuration of its
cell; then judged on three problems the choice never saw (mix16, mix256, img256, same schedules):
there its geometric-mean error ratio to the best configuration of each cell is 1.71 (1.63 at
N ≤ 10, 1.80 above), where the former default (``dpmpp_2m``, log_snr, final denoise) has 5.7 (4.1
and 7.9), and the rule before 2026-12-07 (``deis`` with lower-order last steps on log_snr) 1.93
(``benchmarks/defaults.md``, "DEIS-3 to the end on the Karras grid", where a DEIS-4 rule that does
better on every exact set is shown 3–5× worse on the trained digits model). ``deis`` runs up to 12
evaluations since the choice set's cells at 12 were read again
(held out at 12: 2.12 → 1.49; ``benchmarks/defaults.md``, "deis up to 12 evaluations"). The
analytic first step's thresholds (6; 20 on flow schedules) were set after seeing the
held-out set (the choice set alone favours it up to 20 on every family) and judged again on three
fresh problems, where it pays up to 12 evaluations in the geometric mean and on the flow schedule
up to 20, and on the trained digits model (0.24–0.42× the error at 4–6 evaluations);
``benchmarks/defaults.md``, "The analytic first step". A tuned grid (:func:`diffsolve.tune_steps`)
does better still.
"""
from __future__ import annotations

import math
import weakref
from typing import NamedTuple

import torch

from .schedules import EDMSchedule, FlowSchedule

__all__ = ["DEFAULT_NFE", "TINY_BUDGET", "SMALL_BUDGET", "DEIS_KARRAS", "KARRAS_MIN_SIGNAL", "DENOISE_ABOVE",
           "FLOW_ANALYTIC_UP_TO", "KARRAS_ANALYTIC_UP_TO",
           "KARRAS_ANALYTIC_MAX_SIGNAL", "AFS_MAX_SIGNAL", "LEARNED_UP_TO",
           "START_LOG_SNR", "DefaultRun", "default_run", "default_start", "prior_flow_scale",
           "default_denoise_final", "budget_of", "default_state_dtype", "default_tuner"]

DEFAULT_NFE = 20  # the budget of a run that names none (sample(), diffsolve sample)
TINY_BUDGET = 6  # at most this many evaluations: the analytic first step, then second order to the end
SMALL_BUDGET = 12  # at most this many evaluations: third order in noise prediction
# DEIS-3 to the end (no lower-order last steps), on EDM's grid: 7..SMALL_BUDGET evaluations but on flow schedules, and
# 7..DENOISE_ABOVE on EDM schedules (module docstring)
DEIS_KARRAS = "deis:lower_order_final=false"
# ... where the run starts at α/σ at least this: between the sweep's VP starts (0.0064, where the Karras grid won)
# and the flow and zero-terminal-SNR starts (0.001, σ/α = 999, where it lost)
KARRAS_MIN_SIGNAL = 0.0025
DENOISE_ABOVE = 20  # more evaluations than this: end with the final denoise
FLOW_ANALYTIC_UP_TO = 20  # on a flow schedule, the analytic first step up to this many evaluations (else TINY_BUDGET)
# with the Karras piece, the analytic first step up to this many evaluations: above, its error (about α times the
# data's mean, docs/math.md (27.2)) shows once the solver's own error is small
KARRAS_ANALYTIC_UP_TO = 9
# ... where the run starts at α/σ at most this: above the VP starts where it paid (0.0064 DDPM, 0.0084 cosine), below
# EDM's σ_max = 80 (0.0125), where it lost (in VE coordinates the families differ by their start only)
KARRAS_ANALYTIC_MAX_SIGNAL = 0.01
# the analytic first step only where the run starts at α/σ at most this (its error is about α times the data's mean,
# docs/math.md (27.2)): between the sweep's schedules (0.0064 DDPM to 0.0125 EDM, where it pays) and Stable
# Diffusion's betas (0.068, where it costs 1.33×)
AFS_MAX_SIGNAL = 0.03


def budget_of(nfe: int | None, steps: int | None) -> int:
    """The budget a call asks for: ``nfe``, else the number of steps (one evaluation each for the
    default solvers), else :data:`DEFAULT_NFE`."""
    return int(nfe) if nfe is not None else int(steps) if steps is not None else DEFAULT_NFE


class DefaultRun(NamedTuple):
    """What a call that names no solver runs: the solver spec, the grid kind, the final denoise and
    whether the first evaluation is the analytic one (docs/math.md §27)."""

    solver: str
    grid: str
    denoise_final: bool
    analytic_first_step: bool = False


def default_run(budget: int, schedule=None, *, stochastic: bool = False, t_start: float | None = None,
                grid=None) -> DefaultRun:
    """The configuration for ``budget`` evaluations of the probability-flow ODE on ``schedule``
    (module docstring; ``schedule=None`` gives the rule of every family but EDM's and flow's), for a run
    that starts at ``t_start`` (default: where a grid kind starts, t_max or :func:`default_start`) on the
    ``grid`` the caller names, if any (a kind or times; the Karras piece's third order to the end was
    measured on the Karras grid only: on another grid ``deis`` keeps its lower-order last steps). A
    stochastic run (ν > 0) has no default: the default solvers integrate the ODE, so it is refused with the
    stochastic solvers named."""
    if stochastic:
        from .solvers import SOLVERS

        raise ValueError("eta > 0 (or a noise level) needs a stochastic solver, and the default solvers "
                         "integrate the probability-flow ODE; pick one: "
                         + ", ".join(n for n, c in sorted(SOLVERS.items()) if c.stochastic))
    flow = isinstance(schedule, FlowSchedule)
    edm = isinstance(schedule, EDMSchedule) and TINY_BUDGET < budget <= DENOISE_ABOVE
    signal = _start_signal(schedule, t_start)
    if budget <= TINY_BUDGET:
        return DefaultRun("dpmpp_2m:lower_order_final=false", "log_snr", False,
                          analytic_first_step=signal <= AFS_MAX_SIGNAL)
    if edm or (budget <= SMALL_BUDGET and not flow and signal >= KARRAS_MIN_SIGNAL):
        on_karras = grid is None or (isinstance(grid, str) and grid == "karras")
        analytic = on_karras and budget <= KARRAS_ANALYTIC_UP_TO and signal <= KARRAS_ANALYTIC_MAX_SIGNAL
        return DefaultRun(DEIS_KARRAS if on_karras else "deis", "karras", False, analytic_first_step=analytic)
    solver = "deis" if budget <= SMALL_BUDGET else "unipc:order=3"
    analytic = flow and budget <= FLOW_ANALYTIC_UP_TO and signal <= AFS_MAX_SIGNAL
    return DefaultRun(solver, "log_snr", default_denoise_final(budget, False), analytic_first_step=analytic)


def _start_signal(schedule, t_start: float | None = None) -> float:
    """α/σ where the run starts: at ``t_start``, by default at t_max or at :func:`default_start`
    (``schedule=None``: the sweep's families, whose starts lie between 0.0064 and 0.0125)."""
    if schedule is None:
        return 0.01
    if t_start is not None:
        lam0 = float(schedule.log_snr(torch.tensor(t_start, dtype=torch.float64)))
    else:
        lam0 = max(float(schedule.log_snr(torch.tensor(schedule.t_max, dtype=torch.float64))), START_LOG_SNR)
    return math.exp(lam0)  # λ = log(α/σ)


def default_denoise_final(budget: int, stochastic: bool) -> bool:
    """Whether to end with x̂0(x, t_min): for a stochastic run, or a budget above :data:`DENOISE_ABOVE`."""
    return bool(stochastic) or budget > DENOISE_ABOVE


LEARNED_UP_TO = 6  # `diffsolve tune` fits solver weights (tune_solver) up to this many evaluations


def default_tuner(nfe: int) -> str:
    """What ``diffsolve tune`` tunes when ``--solver`` is not given: ``"learned"`` (the per-step weights
    of :func:`diffsolve.tune_solver`, on a grid tuned for UniPC) for at most :data:`LEARNED_UP_TO`
    evaluations, where no tuned grid of a fixed solver gets to half the best peer configuration's
    error, and ``"unipc"`` (a grid tuned by :func:`diffsolve.tune_steps`) above, where the grid alone
    does as well at a tenth of the tuning time (``benchmarks/defaults.md``, "diffsolve tune's budget
    rule"; ``python benchmarks/defaults_sweep.py --report --tune-rule``)."""
    return "learned" if nfe <= LEARNED_UP_TO else "unipc"


# the log-SNR where a grid kind starts at the latest: that of the flow schedule's default start t = 0.999
# (α/σ = 1/999), the lowest start among the schedules the defaults were measured on (docs/math.md (27.4))
START_LOG_SNR = math.log(1e-3 / (1 - 1e-3))
_STARTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # schedule -> its default_start


def default_start(schedule) -> float | None:
    """The time a grid kind starts at when the schedule starts at a lower log-SNR than
    :data:`START_LOG_SNR` (a flow schedule from σ = 1, a zero-terminal-SNR schedule): the time of
    that log-SNR, reached from t_max by the exact flow of standard-normal data, without a network
    call (docs/math.md (27.4)); None when the schedule starts above it. Memoised per schedule."""
    if schedule not in _STARTS:
        lam0 = float(schedule.log_snr(torch.tensor(schedule.t_max, dtype=torch.float64)))
        _STARTS[schedule] = None if lam0 >= START_LOG_SNR else float(
            schedule.t_of_log_snr(torch.tensor(START_LOG_SNR, dtype=torch.float64)))
    return _STARTS[schedule]


def prior_flow_scale(schedule, t_from: float, t_to: float) -> float:
    """The factor the probability-flow ODE of standard-normal data multiplies the state by from
    ``t_from`` to ``t_to``: √((α² + σ²)(t_to) / (α² + σ²)(t_from)) (its marginals are
    N(0, (α² + σ²) I); docs/math.md (27.4))."""
    a = schedule.alpha(torch.tensor([t_from, t_to], dtype=torch.float64))
    s = schedule.sigma(torch.tensor([t_from, t_to], dtype=torch.float64))
    v = (a * a + s * s).tolist()
    return math.sqrt(v[1] / v[0])


_LOW_PRECISION = (torch.float32, torch.float16, torch.bfloat16)


def default_state_dtype(denoiser, x=None) -> torch.dtype:
    """float32 for a network that runs in float32 or half precision, float64 otherwise; a network of
    unknown dtype (``net_dtype`` None: a plain function) is taken to run in the dtype of ``x``, the
    caller's data, when it is given, and else in torch's default dtype, the dtype of the tensors
    the caller's own code makes (module docstring)."""
    net_dtype = getattr(denoiser, "net_dtype", None)
    if net_dtype is None:
        net_dtype = torch.get_default_dtype() if x is None else x.dtype
    return torch.float32 if net_dtype in _LOW_PRECISION else torch.float64
