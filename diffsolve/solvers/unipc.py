r"""UniPC: unified predictor–corrector exponential integrators in data or noise prediction (docs/math.md §14).

Step i goes from λ_i to λ_{i+1}, h = λ_{i+1} − λ_i, z = −h; D_k = x̂0 evaluated at λ_k;
r_k = (λ_{i−k} − λ_i)/h < 0 and ΔD_k = (D_{i−k} − D_i)/r_k for k = 1..p−1. With
φ_1(z) = (e^z − 1)/z, φ_{k+1}(z) = (φ_k(z) − 1/k!)/z and B(h) = −h (``"bh1"``) or e^{−h} − 1 (``"bh2"``)
(docs/math.md (14.1); B(h) = z or e^z − 1 there):

    UniP-p (predictor, order p; docs/math.md (14.2)):
        x̃_{i+1} = (σ_{i+1}/σ_i) x_i + α_{i+1}(1 − e^{−h}) D_i − α_{i+1} B(h) Σ_{k<p} a_k ΔD_k
    UniC-p (corrector, order p + 1; docs/math.md (14.3)), with D̃_{i+1} = x̂0(x̃_{i+1}, t_{i+1}) and r_p = 1:
        x_{i+1}  = (σ_{i+1}/σ_i) x_i + α_{i+1}(1 − e^{−h}) D_i
                   − α_{i+1} B(h) [Σ_{k<p} c_k ΔD_k + c_p (D̃_{i+1} − D_i)]

where (docs/math.md (14.4)) R c = g, R_{jk} = r_k^{j−1} (j, k = 1..p), g_j = z φ_{j+1}(z) j!/B(h); a
solves the leading (p−1)×(p−1) block (a = ½ for p = 2 and c = ½ for p = 1, as in the reference code;
both equal the solved values up to O(h), which keeps the order). The corrector reuses D̃_{i+1}, the
evaluation the next predictor needs anyway (it is stored in the history: later steps extrapolate
from values at the *predicted* points, as the paper and diffusers do), so UniPC costs one evaluation
per step. The last step has no evaluation after it, hence no corrector: the returned state is the
predictor's x̃_n (a following ``denoise_final`` evaluates x̂0(x̃_n, t_n), which is diffusers' final
step to σ = 0). ``final_corrector=True`` spends one more evaluation to correct x̃_n too.

Warm-up (step i uses p ≤ i + 1) and ``lower_order_final`` / ``lower_order_below`` are those of
every multistep solver (:mod:`diffsolve.solvers.multistep`).
diffusers' ``UniPCMultistepScheduler(lower_order_final=True)`` ramps for any number of steps: reproduce
it with ``lower_order_below=None``.

**Noise prediction** (``predict_x0=False``, diffusers' option of the same name; docs/math.md
(14.5)): the same formulas with D_k = ε̂ at λ_k, z = +h, and the roles of α and σ exchanged,

    x̃_{i+1} = (α_{i+1}/α_i) x_i − σ_{i+1}(e^{h} − 1) D_i − σ_{i+1} B(h) Σ_{k<p} a_k ΔD_k

(B(h) = h or e^{h} − 1), and likewise for the corrector. It extrapolates ε̂ in λ instead of x̂0,
which integrates the high-noise part of low-variance data directions almost exactly (ε̂ is nearly
constant there; see :mod:`diffsolve.solvers.deis`). The solver asks the denoiser for x̂0 or ε̂;
the network's own prediction type is converted in one place (:class:`~diffsolve.Denoiser`).
"""
from __future__ import annotations

import math

from .base import lincomb
from .multistep import History, Multistep
from .registry import register

__all__ = ["UniPC"]


def _phi_series(k: int, z: float) -> float:
    """φ_k(z) = Σ_n z^n/(n + k)! by its series, in float64 (for |z| < 1)."""
    term, total, n = 1.0 / math.factorial(k), 0.0, 0
    while abs(term) > 1e-18 * max(abs(total), 1e-300) and n < 60:
        total += term
        n += 1
        term *= z / (n + k)
    return total


def phis(m: int, z: float) -> list:
    """[φ_1(z), …, φ_m(z)], φ_k(z) = Σ_n z^n/(n + k)!, in float64 from one evaluation: for |z| < 1
    the series of φ_m, then the downward recursion φ_k = z φ_{k+1} + 1/k! (stable there: it
    multiplies errors by |z| < 1); elsewhere the upward recursion φ_{k+1} = (φ_k − 1/k!)/z from
    φ_0 = e^z."""
    if abs(z) < 1.0:
        out = [_phi_series(m, z)]
        for k in range(m - 1, 0, -1):
            out.append(z * out[-1] + 1.0 / math.factorial(k))
        return out[::-1]
    out, val = [], math.exp(z)
    for j in range(m):
        val = (val - 1.0 / math.factorial(j)) / z
        out.append(val)
    return out


def _solve(R: list, g: list) -> list:
    """Solve the (at most 3×3) system R c = g in float64 by Gaussian elimination with partial
    pivoting (plain Python: a torch or numpy call costs more than the arithmetic)."""
    n = len(g)
    M = [list(map(float, row)) + [float(b)] for row, b in zip(R, g)]
    for k in range(n):
        piv = max(range(k, n), key=lambda r: abs(M[r][k]))
        M[k], M[piv] = M[piv], M[k]
        for r in range(k + 1, n):
            f = M[r][k] / M[k][k]
            for c in range(k, n + 1):
                M[r][c] -= f * M[k][c]
    c = [0.0] * n
    for k in reversed(range(n)):
        c[k] = (M[k][n] - sum(M[k][j] * c[j] for j in range(k + 1, n))) / M[k][k]
    return c


@register
class UniPC(Multistep):
    r"""UniPC-p: multistep exponential integrator, UniP-p predictor + UniC-p corrector; 1 evaluation per step.

    Step t_i → t_{i+1} in data prediction (docs/math.md (14.1)–(14.3)), h = λ_{i+1} − λ_i,
    D_k = x̂0 at λ_k, r_k = (λ_{i−k} − λ_i)/h, ΔD_k = (D_{i−k} − D_i)/r_k, B(h) = e^{−h} − 1 (bh2)
    or −h (bh1), a and c from docs/math.md (14.4):

        x̃_{i+1} = (σ_{i+1}/σ_i) x_i + α_{i+1}(1 − e^{−h}) D_i − α_{i+1} B(h) Σ_{k<p} a_k ΔD_k     (UniP)
        x_{i+1} = (σ_{i+1}/σ_i) x_i + α_{i+1}(1 − e^{−h}) D_i
                  − α_{i+1} B(h) [Σ_{k<p} c_k ΔD_k + c_p (D̃_{i+1} − D_i)]                  (UniC)

    with D̃_{i+1} = x̂0(x̃_{i+1}, t_{i+1}), step i + 1's one evaluation: the corrector runs at the
    start of step i + 1 (from the stored x_i) and D̃_{i+1} enters the history as D_{i+1}. The last
    step is left uncorrected unless ``final_corrector``. ``predict_x0=False``: D_k = ε̂ and α, σ
    exchange roles (docs/math.md (14.5)). Step i's order p_i: docs/math.md (12.7).

    Global order p + 1 with the corrector (p without it) on the probability-flow ODE. The warm-up's
    first corrector is UniC-1 (local error O(h³)), so for p = 3 an O(h³) term with a tiny constant
    (it stems from the high-noise end) remains: fourth order shows from ~100 λ-uniform steps on
    (``tests/test_dpmpp_unipc.py``, ``benchmarks/solvers_order.py``). UniP-1 is DDIM, UniP-2
    (bh2) is DPM-Solver++(2M), UniP-3 is DPM-Solver++(3M) with ``third_order="exact"``; one UniPC-1
    (bh2) step with its corrector is DPM-Solver++(2S) with r = 1.

    Args:
        order: predictor order p ∈ {1, 2, 3} (default 2). At least p steps are required.
        variant: ``"bh2"`` (default, B(h) = e^{−h} − 1) or ``"bh1"`` (B(h) = −h).
        corrector: apply UniC (default True); False gives the plain UniP-p multistep predictor.
        final_corrector: also correct the last state (one extra evaluation; default False).
        predict_x0: integrate in data prediction (default True) or, False, in noise prediction
            (module docstring).
        lower_order_final, lower_order_below: final-order ramp (see :mod:`diffsolve.solvers.multistep`).

    Shapes: x, x̃ and every D_k are (B, *shape); λ, r_k, B(h), a, c are float64 scalars shared by
    the batch. State: ``(history, x_i, p_i)``: a :class:`~diffsolve.solvers.multistep.History` of
    the last p (λ, x̂0 or ε̂) pairs (oldest first), the start x_i of the last step (what the
    corrector redoes it from) and that step's order.

    References:
        Zhao, Bai, Rao, Zhou, Lu, UniPC: A Unified Predictor-Corrector Framework for Fast Sampling
        of Diffusion Models, arXiv:2302.04867;
        Lu, Zhou, Bao, Chen, Li, Zhu, DPM-Solver++, arXiv:2211.01095 (data prediction).
    """

    name = "unipc"
    declared_order = 3.0

    def __init__(self, order: int = 2, variant: str = "bh2", corrector: bool = True,
                 final_corrector: bool = False, predict_x0: bool = True, lower_order_final: bool = True,
                 lower_order_below: int | None = 15):
        if variant not in ("bh1", "bh2"):
            raise ValueError(f"unipc: unknown variant {variant!r}; valid: 'bh1', 'bh2'")
        super().__init__(order, lower_order_final=lower_order_final, lower_order_below=lower_order_below)
        self.variant = variant
        self.corrector = bool(corrector)
        self.final_corrector = bool(final_corrector)
        if not isinstance(predict_x0, bool):
            raise TypeError(f"unipc: predict_x0 must be True or False, got {predict_x0!r}")
        self.predict_x0 = predict_x0
        self.declared_order = float(order + 1 if corrector else order)

    def nfe(self, steps: int) -> int:
        return steps + (1 if self.final_corrector and self.corrector and steps > 0 else 0)

    def update(self, ctx, j, x, history, p, D_new=None):
        """Predictor (D_new None) or corrector from grid point j to j + 1; history newest last at λ_j.
        Written out as one linear combination of x, the stored x̂0 (or ε̂) values and D_new (float64
        weights, one fused pass per term)."""
        h = ctx.h(j)
        if self.predict_x0:
            z, a, ratio = -h, ctx.alpha[j + 1], ctx.sigma[j + 1] / ctx.sigma[j]
        else:
            z, a, ratio = h, ctx.sigma[j + 1], ctx.alpha[j + 1] / ctx.alpha[j]
            if not math.isfinite(ratio):
                raise ValueError("unipc(predict_x0=False): the grid starts at α = 0 (ε̂-form steps divide by "
                                 "α); start it at t < t_max or use predict_x0=True")
        B = z if self.variant == "bh1" else math.expm1(z)
        lams, Ds = history.lams, history.values
        rks = [(lams[-1 - k] - lams[-1]) / h for k in range(1, p)]
        ph = phis(p + 1, z)  # φ_1 … φ_{p+1}
        g = [z * ph[n] * math.factorial(n) / B for n in range(1, p + 1)]
        R = [[r ** (n - 1) for r in rks + [1.0]] for n in range(1, p + 1)]
        if D_new is None:
            coef = [] if p == 1 else [0.5] if p == 2 else _solve([row[:-1] for row in R[:-1]], g[:-1])
        else:
            coef = [0.5] if p == 1 else _solve(R, g)
        # out = ratio·x − a(e^z − 1) m0 − a B [Σ_k c_k (D_{−1−k} − m0)/r_k + c_p (D_new − m0)]
        w = [-a * B * c / r for c, r in zip(coef, rks)]  # on Ds[-2], Ds[-3], ...
        w_new = -a * B * coef[-1] if D_new is not None else 0.0
        w_m0 = -a * math.expm1(z) - sum(w) - w_new
        terms = [Ds[-1]] + [Ds[-1 - k] for k in range(1, p)] + ([D_new] if D_new is not None else [])
        coefs = [w_m0] + w + ([w_new] if D_new is not None else [])
        return lincomb(x, ratio, terms, coefs)

    def evaluate(self, ctx, x, i):
        return (ctx.denoiser.x0 if self.predict_x0 else ctx.denoiser.eps)(x, ctx.time(i))

    def init(self, ctx, x):
        return (History(), None, 0)

    def step(self, ctx, i, x, state):
        history, x_prev, p_prev = state
        D = self.evaluate(ctx, x, i)
        if self.corrector and i > 0:
            x = self.update(ctx, i - 1, x_prev, history, p_prev, D_new=D)
        history = history.push(ctx.lam[i], D, self.solver_order)
        p = self.step_order(ctx, i)
        x_next = self.update(ctx, i, x, history, p)
        if self.final_corrector and self.corrector and i == ctx.steps - 1:
            D_last = self.evaluate(ctx, x_next, i + 1)
            x_next = self.update(ctx, i, x, history, p, D_new=D_last)
        return x_next, (history, x, p)
