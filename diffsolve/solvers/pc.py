r"""Predictor–corrector sampling (Song et al. 2021, Algorithms 2–3): a reverse-family step, then Langevin.

Each step from t_i to t_{i+1} is (docs/math.md §16)

1. **predictor**: one step of the reverse family (docs/math.md (3.2)) with the sampler's noise level ν_t:
   ``"euler"`` (Euler–Maruyama, docs/math.md (11.1); at η = 1 the paper's reverse-diffusion
   predictor to first order) or ``"ddim"`` (the exact first-order step, docs/math.md (4.1), (11.2));
2. **corrector**: ``corrector_steps`` steps of unadjusted Langevin dynamics targeting p_{t_{i+1}}
   (docs/math.md (16.1)),

       x ← x + ε ŝ(x, t_{i+1}) + √(2ε) z,    ε = 2 a_i (snr ‖z‖ / ‖ŝ‖)²,   z ~ N(0, I),

   with the norms taken per sample (over all non-batch dimensions, on the device: no host
   synchronisation) and a_i = (α_{t_i}/α_{t_{i+1}})², the continuous-time analogue of the
   paper's α_i = 1 − β_i (1 for VE schedules).

Order. The predictor has weak order 1. The Langevin corrector with the paper's step-size rule
has a step ε ≈ 2 snr² Var_t that does not shrink with the grid, so it leaves a bias of relative
size O(snr²) in the marginals that more steps do not remove (for a Gaussian p_t = N(m, V) the
Langevin chain's stationary variance is V/(1 − ε/2V), docs/math.md (16.2)). ``order = 1``
describes the convergence for snr → 0 or in the range of steps where the predictor's error
dominates. The sampler draws noise in the corrector even for η = 0 (``eta=0`` gives a
probability-flow predictor).

Dimension. The rule was designed for images (d ~ 10³–10⁵), where ‖z‖ and ‖ŝ‖ concentrate. In a
few dimensions the per-sample ratio ‖z‖/‖ŝ‖ is heavy-tailed (ŝ ≈ 0 near a mode's centre or a
saddle of p_t) and the default snr = 0.16 throws a few samples far out (a 2-D ring loses tens of
nats of mean log-likelihood). A small snr helps but does not cure it: each corrector step can jump,
so more steps mean more jumps. A check on a 2-D mixture of three Gaussians (2026-12-06, a scratch
script, not in the repository) found snr = 0.01, the paper's VP value, still clearly short of the
exact samples' mean log p from 49 to 399 evaluations, and snr = 0.001 close to it: in low
dimensions use snr ≤ 0.001, or a solver without a corrector (``dpmpp_2m_sde``, ``euler`` with
η = 1). The reference code averages both norms over the batch instead, which ties each sample to
its batch.
"""
from __future__ import annotations

import math

from .base import Solver, bcast
from .registry import register
from .ddim import DDIM
from .euler import Euler, check_stable

__all__ = ["PredictorCorrector"]

_PREDICTORS = {"euler": lambda: Euler(), "ddim": lambda: DDIM(variant="exact")}


@register
class PredictorCorrector(Solver):
    """Predictor–corrector sampler: reverse-family predictor + Langevin corrector; weak order 1.

    1 + ``corrector_steps`` evaluations per step. Step t_i → t_{i+1} (docs/math.md §16):

        x ← the predictor's step from (x_i, t_i) to t_{i+1}: ``euler`` (docs/math.md (11.1)) or
            ``ddim`` with ``variant="exact"`` (docs/math.md (11.2)), with the sampler's ν_t;
        then ``corrector_steps`` times, with a fresh z ~ N(0, I) each (docs/math.md (16.1)):
            ε = 2 a_i (r ‖z‖ / ‖ŝ(x, t_{i+1})‖)²,   x ← x + ε ŝ(x, t_{i+1}) + √(2ε) z,
            a_i = (α_i/α_{i+1})²

    Shapes: x, ŝ and z are (B, *shape); the norms are per sample over all its entries, so ε is a
    (B, 1, …) tensor, one step size per sample; a_i is a float64 scalar shared by the batch; z
    comes from the context's per-sample noise streams (drawn even at η = 0). No state.

    Args:
        snr: the corrector's signal-to-noise ratio r (> 0; the paper uses 0.16 for VE and 0.01
            for VP models).
        corrector_steps: Langevin steps per step (≥ 0; 0 gives the bare predictor).
        predictor: ``"euler"`` or ``"ddim"``.

    References:
        Song, Sohl-Dickstein, Kingma, Kumar, Ermon, Poole, Score-Based Generative Modeling through
        Stochastic Differential Equations, arXiv:2011.13456 (Algorithms 2, 3, 4 and 5).
    """

    name = "pc"
    declared_order = 1.0
    stochastic = True
    draws_noise = True

    def __init__(self, snr: float = 0.16, corrector_steps: int = 1, predictor: str = "euler"):
        if not (float(snr) > 0.0 and math.isfinite(float(snr))):
            raise ValueError(f"snr must be a finite number > 0, got {snr!r}")
        if int(corrector_steps) != corrector_steps or corrector_steps < 0:
            raise ValueError(f"corrector_steps must be an integer >= 0, got {corrector_steps!r}")
        if predictor not in _PREDICTORS:
            raise ValueError(f"unknown predictor {predictor!r}; valid: {', '.join(_PREDICTORS)}")
        self.snr, self.corrector_steps, self.predictor = float(snr), int(corrector_steps), predictor
        self.nfe_per_step = 1 + self.corrector_steps
        self._predictor = _PREDICTORS[predictor]()

    def check(self, ctx):
        super().check(ctx)
        if self.predictor == "euler":
            check_stable(ctx, "pc (its euler predictor)", other=", or pc:predictor=ddim")

    def step(self, ctx, i, x, state):
        x, _ = self._predictor.step(ctx, i, x, None)
        t1 = ctx.t[i + 1]
        a = (ctx.alpha[i] / ctx.alpha[i + 1]) ** 2
        for _ in range(self.corrector_steps):
            z = ctx.randn()
            score = ctx.denoiser.score(x, t1)
            ratio = z.flatten(1).norm(dim=1) / score.flatten(1).norm(dim=1).clamp_min(1e-30)
            eps = bcast(2.0 * a * (self.snr * ratio) ** 2, x)
            x = x + eps * score + (2.0 * eps).sqrt() * z
        return x, state
