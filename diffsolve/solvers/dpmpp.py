r"""DPM-Solver++ in data prediction: multistep (1M/2M/3M), singlestep 2S and SDE 2M/3M (docs/math.md §4, §12).

Variation of constants for the reverse family (docs/math.md (3.2)) with ν = η g, written in λ = log(α/σ):
over one step from t to s < t, h = λ_s − λ_t > 0, H = ∫ η² dλ over the step (η² h for a constant η),

    x_s = (σ_s/σ_t) e^{−H} x_t + α_s ∫_0^h w(u) x̂0(λ_s − u) du + σ_s √(1 − e^{−2H}) z,
    w(u) = (1 + η(λ_s − u)²) e^{−u − H(u)},  ∫_0^h w(u) du = 1 − e^{−h−H}                (docs/math.md §4)

(H(u) = ∫_{λ_s−u}^{λ_s} η² dλ). A frozen x̂0 = D0 gives docs/math.md (4.1) exactly. Replacing x̂0 by the
polynomial in λ through the last k evaluations, x̂0(λ_t + v) ≈ Σ_j v^j D^{(j)}/j!, gives the
order-k multistep methods:

    x_s = (σ_s/σ_t) e^{−H} x_t + α_s Σ_{j<k} W_j D^{(j)} + σ_s √(1 − e^{−2H}) z,
    W_j = ∫_0^h κ e^{−κu} (h − u)^j / j! du,  κ = (h + H)/h = 1 + η²:
    W_0 = 1 − e^{−κh},  W_1 = h − W_0/κ,  W_2 = h²/2 − h/κ + W_0/κ²          (docs/math.md (4.2))

(for a time-varying ν the step's effective κ = 1 + H/h is used: exact for a constant η, and W_j
is then correct to the order the step needs). With η = 0 (κ = 1), e.g. W_1 = h − 1 + e^{−h}.
The derivatives D^{(j)} are divided differences in λ of the stored x̂0 values (docs/math.md
(12.1)); the resulting update of order p is docs/math.md (12.2).

``solver_type`` chooses the second-order term: ``"midpoint"`` (the DPM-Solver++ paper's
Algorithm 2 and diffusers' default) uses W_0 · h/2 instead of W_1 (equal to O(h³)); ``"taylor"``
(diffusers' ``"heun"``) uses (4.2). For order 3, ``third_order="exact"`` (default) uses W_2 of
(4.2); ``"dpm_solver"`` halves it, as the DPM-Solver reference code and diffusers'
``DPMSolverMultistepScheduler`` do (that choice makes the third-order term wrong by a factor 2 and
the method only second order; it exists to reproduce those implementations step for step).

k-diffusion's samplers of these names, step for step on its own grid (``grid=sigmas[:-1],
denoise_final=True``; ``tests/test_solver_equivalences.py``): ``sample_dpmpp_2m`` is ``dpmpp_2m``;
``sample_dpmpp_3m_sde`` is ``dpmpp_3m`` / ``dpmpp_3m_sde`` with ``third_order="dpm_solver",
solver_type="taylor", lower_order_final=False`` (the defaults here differ: 0.36 apart at 10 steps on
a ring); its ``eta`` enters the noise as eta·h where the family's ν = η g gives η² h (docs/math.md
(11.3)), so k-diffusion's eta e is η = √e here (they coincide at 1, the SDE solvers' default), and
its ``solver_type="heun"`` is ``"taylor"``.

Warm-up, the final-order ramp (``lower_order_final``, ``lower_order_below``), the effect of the
first-order first step on the global order and ``corrected_start`` are shared by every multistep
solver: :mod:`diffsolve.solvers.multistep`. Here the corrected start's weight (docs/math.md (12.8))
is α_1 c_1/h_0, c_1 the second-order weight of (4.2) for step 0 (W_0 h/2 for ``"midpoint"``:
exactly UniPC's bh2 corrector UniC-1 on the first step; W_1 for ``"taylor"``).
"""
from __future__ import annotations

import copy
import math

from .base import Solver, lincomb
from .multistep import Multistep
from .registry import register

__all__ = ["DPMSolverPP2M", "DPMSolverPP3M", "DPMSolverPP2S", "SDEDPMSolverPP2M", "SDEDPMSolverPP3M"]


def weights(h: float, H: float = 0.0) -> tuple[float, float, float]:
    """(W_0, W_1, W_2) of (4.2) for λ-step h > 0 and noise integral H = ∫ η² dλ ≥ 0, in float64."""
    x = h + H  # κh
    w0 = -math.expm1(-x)
    if x < 0.5:  # series, free of the cancellation in h − W_0/κ and in W_2:
        # W_1/h = Σ_{n≥1} (−1)^{n+1} x^n/(n+1)!,  W_2/h² = Σ_{n≥1} (−1)^{n+1} x^n/(n+2)!
        s1 = s2 = 0.0
        term = 1.0  # (−1)^{n+1} x^n / n!
        for n in range(1, 30):
            term *= (x if n == 1 else -x) / n
            s1 += term / (n + 1)
            s2 += term / ((n + 1) * (n + 2))
        return w0, h * s1, h * h * s2
    k = x / h
    return w0, h - w0 / k, h * h / 2 - h / k + w0 / (k * k)


def derivatives(lams: list, Ds: list) -> list:
    """[D, D', D''] at lams[-1] of the polynomial in λ through the points (lams[j], Ds[j]), 1 to 3
    of them (true derivatives: D'' is twice the second divided difference)."""
    n = len(Ds)
    D0 = Ds[-1]
    if n == 1:
        return [D0]
    l0, l1 = lams[-1], lams[-2]
    d01 = (D0 - Ds[-2]) / (l0 - l1)
    if n == 2:
        return [D0, d01]
    l2 = lams[-3]
    d12 = (Ds[-2] - Ds[-3]) / (l1 - l2)
    d012 = (d01 - d12) / (l0 - l2)
    # p(λ) = D0 + d01 (λ − l0) + d012 (λ − l0)(λ − l1):  p'(l0) = d01 + d012 (l0 − l1), p'' = 2 d012
    return [D0, d01 + (l0 - l1) * d012, 2.0 * d012]


class _DPMSolverPP(Multistep):
    """DPM-Solver++ multistep in data prediction (ODE and SDE forms): the update (4.2) of order p
    from the stored x̂0 values, plus fresh noise when ν > 0."""

    def __init__(self, order: int, solver_type: str = "midpoint", third_order: str = "exact",
                 lower_order_final: bool = True, lower_order_below: int | None = 15,
                 corrected_start: bool = False):
        super().__init__(order, lower_order_final=lower_order_final, lower_order_below=lower_order_below)
        if solver_type not in ("midpoint", "taylor"):
            raise ValueError(f"{self.name}: unknown solver_type {solver_type!r}; valid: 'midpoint', 'taylor'")
        if third_order not in ("exact", "dpm_solver"):
            raise ValueError(f"{self.name}: unknown third_order {third_order!r}; valid: 'exact', 'dpm_solver'")
        # declared global order (SDE subclasses override it: weak order); DPM-Solver's halved
        # third-order term leaves a second-order method (measured in tests/test_dpmpp_unipc.py)
        self.declared_order = 2.0 if (order == 3 and third_order == "dpm_solver") else float(order)
        self.solver_type = solver_type
        self.third_order = third_order
        self.corrected_start = bool(corrected_start)

    def evaluate(self, ctx, x, i):
        return ctx.denoiser.x0(x, ctx.time(i))

    def start_weight(self, ctx) -> float:
        """c of the corrected first step, x_1 += c (D_1 − D_0): α_1 c_1/h_0 with c_1 the
        second-order weight of :meth:`update` over step 0."""
        h = ctx.h(0)
        w0, w1, _ = weights(h, ctx.eta2_integral(0) if self.stochastic else 0.0)
        return ctx.alpha[1] * (w0 * h / 2 if self.solver_type == "midpoint" else w1) / h

    def update(self, ctx, i, x, history, p):
        """x_{i+1} from x_i and the derivative estimates of order p (4.2), then the noise term. The
        update is linear in the stored x̂0 values: its weights are found in float64 by applying the
        divided differences to unit vectors, then applied in one fused combination."""
        H = ctx.eta2_integral(i) if self.stochastic else 0.0
        h = ctx.h(i)
        w0, w1, w2 = weights(h, H)
        c = [ctx.alpha[i + 1] * w0]
        if p >= 2:
            c.append(ctx.alpha[i + 1] * (w0 * h / 2 if (self.solver_type == "midpoint" and p == 2) else w1))
        if p >= 3:
            c.append(ctx.alpha[i + 1] * (w2 / 2 if self.third_order == "dpm_solver" else w2))
        lam = list(history.lams[-p:])
        coefs = [sum(ck * dk for ck, dk in zip(c, derivatives(lam, [float(k == j) for k in range(p)])))
                 for j in range(p)]
        x = lincomb(x, ctx.sigma[i + 1] / ctx.sigma[i] * math.exp(-H), history.values[-p:], coefs)
        if H > 0:
            x = x + (ctx.sigma[i + 1] * math.sqrt(-math.expm1(-2.0 * H))) * ctx.randn()
        return x


@register
class DPMSolverPP2M(_DPMSolverPP):
    r"""DPM-Solver++(2M): multistep exponential integrator in data prediction; 1 evaluation per step.

    Step t_i → t_{i+1} of order p = p_i (docs/math.md (12.2), (12.7)), h = λ_{i+1} − λ_i,
    D_k = x̂0(x_k, t_k), D, D', D'' the λ-derivatives at λ_i of the polynomial through the last p
    values (docs/math.md (12.1)), W_j from docs/math.md (4.2) at κ = 1:

        x_{i+1} = (σ_{i+1}/σ_i) x_i + α_{i+1} (c_0 D + c_1 D' + c_2 D''),   c_0 = W_0 = 1 − e^{−h},
        c_1 = W_0 h/2 (p = 2, ``"midpoint"``) or W_1,   c_2 = W_2 (``"exact"``) or W_2/2 (``"dpm_solver"``)

    For p = 2, midpoint, r = h_{i−1}/h (docs/math.md (12.3)):

        x_{i+1} = (σ_{i+1}/σ_i) x_i + α_{i+1}(1 − e^{−h}) [(1 + 1/(2r)) D_i − 1/(2r) D_{i−1}]

    ``order=1`` is DDIM(η=0) (docs/math.md (4.1)); ``order=3`` is DPM-Solver++(3M) (docs/math.md (12.4)).
    Global order ``order`` on the probability-flow ODE (docs/math.md (3.3)); for order 3 only when the first,
    first-order step starts at high noise (:mod:`diffsolve.solvers.multistep`, "Global order and the warm-up").

    Args:
        order: 1, 2 (default) or 3; fewer steps than the order are the warm-up alone.
        solver_type: ``"midpoint"`` (default, paper/diffusers) or ``"taylor"`` (diffusers' "heun").
        third_order: ``"exact"`` (default) or ``"dpm_solver"`` (reproduces the reference code).
        lower_order_final, lower_order_below: final-order ramp (module docstring; docs/math.md (12.7));
            default: with fewer than 14 steps the last steps ramp down, to order ≤ 2 before the final
            denoise, to order 1 without it (so orders 2 and 3 are both affected;
            :mod:`diffsolve.solvers.multistep`).
        corrected_start: redo the first step with the second evaluation (:mod:`diffsolve.solvers.multistep`,
            "Corrected start"; docs/math.md (12.8)); default False.

    Shapes: x and every D_k are (B, *shape); λ, h and the weights are float64 scalars shared by the
    batch. State: a :class:`~diffsolve.solvers.multistep.History` of the last ``order`` (λ, x̂0)
    pairs, oldest first.

    References:
        Lu, Zhou, Bao, Chen, Li, Zhu, DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic
        Model Sampling in Around 10 Steps, arXiv:2206.00927;
        Lu, Zhou, Bao, Chen, Li, Zhu, DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
        Probabilistic Models, arXiv:2211.01095 (Algorithm 2).
    """

    name = "dpmpp_2m"
    declared_order = 2.0

    def __init__(self, order: int = 2, **options):
        super().__init__(order, **options)


@register
class DPMSolverPP3M(DPMSolverPP2M):
    r"""DPM-Solver++(3M): third-order multistep exponential integrator in data prediction; 1 evaluation per step.

    Step of order 3 (docs/math.md (12.4); ``third_order="exact"``), h = λ_{i+1} − λ_i, D, D', D''
    the λ-derivatives at λ_i of the quadratic through (λ_{i−2..i}, D_{i−2..i}) (docs/math.md (12.1)):

        x_{i+1} = (σ_{i+1}/σ_i) x_i + α_{i+1}[(1 − e^{−h}) D + (h − 1 + e^{−h}) D' + (h²/2 − h + 1 − e^{−h}) D'']

    (``"dpm_solver"`` halves the D'' term). Warm-up and final steps use lower orders
    (docs/math.md (12.7)), as :class:`DPMSolverPP2M` with ``order=3``, whose options, shapes and
    state it shares (default ``order=3``).

    References: Lu et al., DPM-Solver, arXiv:2206.00927; Lu et al., DPM-Solver++, arXiv:2211.01095.
    """

    name = "dpmpp_3m"
    declared_order = 3.0

    def __init__(self, order: int = 3, **options):
        super().__init__(order, **options)


@register
class SDEDPMSolverPP2M(_DPMSolverPP):
    r"""SDE-DPM-Solver++(2M): multistep exponential integrator for the reverse family with ν > 0.

    Step t_i → t_{i+1} (docs/math.md (12.5); the order-2 case of (12.2)), H = H_i = ∫ η² dλ over
    the step (docs/math.md (11.3)), η = ν/g, κ = 1 + H/h, D_k = x̂0(x_k, t_k), z ~ N(0, I):

        x_{i+1} = (σ_{i+1}/σ_i) e^{−H} x_i + α_{i+1}(1 − e^{−h−H}) D_i
                  + α_{i+1} c_1 (D_i − D_{i−1})/h_{i−1} + σ_{i+1} √(1 − e^{−2H}) z,

    c_1 = (1 − e^{−h−H}) h/2 (``"midpoint"``) or h − (1 − e^{−h−H})/κ (``"taylor"``). η = 1 is the
    published SDE-DPM-Solver++(2M) (diffusers' ``algorithm_type="sde-dpmsolver++"``); η = 0 is
    exactly :class:`DPMSolverPP2M`. Any ν_t (``eta`` or a callable ``noise``) is supported through H.
    Declared ``order`` 1 (weak order, conservative): on Gaussian data the exact variance error of
    the output law falls as steps^−2 (``benchmarks/solvers_order.py``), but weak order 2 is not
    proven for general data. At η = 0 it is the order-2 ODE solver.

    Shapes and state: as :class:`DPMSolverPP2M`; z is (B, *shape), one draw per step from the
    context's per-sample noise streams (none when H = 0).

    References:
        Lu, Zhou, Bao, Chen, Li, Zhu, DPM-Solver++, arXiv:2211.01095 (SDE-DPM-Solver++(2M));
        Gonzalez et al., SEEDS: Exponential SDE Solvers for Fast High-Quality Sampling from
        Diffusion Models, arXiv:2305.14267.
    """

    name = "dpmpp_2m_sde"
    declared_order = 1.0
    stochastic = True
    default_eta = 1.0  # k-diffusion's sample_dpmpp_2m_sde, diffusers' sde-dpmsolver++

    def __init__(self, order: int = 2, **options):
        super().__init__(order, **options)
        self.ode_order = self.declared_order  # order at η = 0 (it is then exactly the ODE solver)
        self.declared_order = 1.0  # weak order claimed for η > 0; see docstring


@register
class SDEDPMSolverPP3M(SDEDPMSolverPP2M):
    r"""SDE-DPM-Solver++(3M): order-3 multistep exponential integrator for the reverse family with ν > 0.

    Step of order 3 (docs/math.md (12.2) with H = H_i, κ = 1 + H/h; D, D', D'' from the quadratic
    through the last three x̂0 values, docs/math.md (12.1)):

        x_{i+1} = (σ_{i+1}/σ_i) e^{−H} x_i + α_{i+1} (W_0 D + W_1 D' + W_2 D'') + σ_{i+1} √(1 − e^{−2H}) z,
        W_0 = 1 − e^{−κh},  W_1 = h − W_0/κ,  W_2 = h²/2 − h/κ + W_0/κ²

    (W_2 halved for ``third_order="dpm_solver"``); warm-up and final steps of lower order (the ramp of
    docs/math.md (12.7)) are those of :class:`SDEDPMSolverPP2M`. η = 0 is exactly :class:`DPMSolverPP3M`. Options, shapes and
    state as :class:`SDEDPMSolverPP2M` (default ``order=3``); declared weak order 1.

    References: Lu et al., DPM-Solver++, arXiv:2211.01095; Gonzalez et al., SEEDS, arXiv:2305.14267.
    """

    name = "dpmpp_3m_sde"

    def __init__(self, order: int = 3, **options):
        super().__init__(order, **options)


@register
class DPMSolverPP2S(Solver):
    r"""DPM-Solver++(2S): singlestep second-order exponential integrator; 2 evaluations per step.

    Step t_i → t_{i+1} (docs/math.md (12.6)), h = λ_{i+1} − λ_i, intermediate point λ_u = λ_i + r h
    (r = ½: the λ-midpoint), t_u = t(λ_u):

        D_i = x̂0(x_i, t_i),   u = (σ_u/σ_i) x_i + α_u (1 − e^{−rh}) D_i,   D_u = x̂0(u, t_u),
        x_{i+1} = (σ_{i+1}/σ_i) x_i + α_{i+1} [(1 − e^{−h}) D_i + (c_1/(rh)) (D_u − D_i)],

    c_1 = (1 − e^{−h}) h/2 (``"midpoint"``: the bracket is (1 − e^{−h})[(1 − 1/(2r)) D_i + 1/(2r) D_u])
    or h − 1 + e^{−h} (``"taylor"``). Global order 2 on the probability-flow ODE.

    **Intermediate points on the grid** (``intermediate="grid"``; diffusers'
    ``DPMSolverSinglestepScheduler`` of order 2): the grid lists the intermediate points too, and
    steps are taken in pairs. Step i opens a pair with the first-order (DDIM) step to t_{i+1},
    which is u (the state returned at t_{i+1}); step i + 1 evaluates D_u = x̂0(u, t_{i+1}) and
    closes the pair with the update above from (x_i, D_i) to t_{i+2}, h = λ_{i+2} − λ_i,
    r = (λ_{i+1} − λ_i)/h. One evaluation per grid step. A last step that has no partner is a
    lone DDIM step; with ``lower_order_final`` and no final denoise an even number of steps also
    ends with two DDIM steps instead of a pair (diffusers' order list for ``lower_order_final=True``
    with ``final_sigmas_type="sigma_min"``). Pairs open at even grid indices; a run restarted at an
    odd index of a longer grid (img2img, :meth:`restarted`: ``phase=1``) takes its first step alone
    and keeps the longer run's pairs, as diffusers' singlestep scheduler does when its order list asks
    for the second half of a pair whose first half it has not seen.

    Shapes: x, u, D_i and D_u are (B, *shape); λ, α, σ and the weights are float64 scalars shared by
    the batch. No state (``intermediate="grid"``: within a pair, (x_i, D_i, i) of its first step).

    Args:
        r: position of the intermediate point as a fraction of the λ-step, 0 < r ≤ 1 (r = 1 with
            ``"midpoint"`` is one step of UniPC-1 with bh2 and a final corrector); unused with
            ``intermediate="grid"``.
        solver_type: ``"midpoint"`` (Algorithm 1 of the paper) or ``"taylor"``.
        intermediate: ``"ratio"`` (default: at λ_i + r h, two evaluations per step) or ``"grid"``
            (the next grid point; above).
        lower_order_final: with ``intermediate="grid"``: the end rule above (default False).
        phase: with ``intermediate="grid"``: the parity of the first grid point's index in the run the
            pairs belong to (default 0; 1 for a run restarted at an odd index).

    References: Lu, Zhou, Bao, Chen, Li, Zhu, DPM-Solver++, arXiv:2211.01095 (Algorithm 1);
    Lu et al., DPM-Solver, arXiv:2206.00927; von Platen et al., Diffusers,
    github.com/huggingface/diffusers (``DPMSolverSinglestepScheduler``: ``intermediate="grid"``).
    """

    name = "dpmpp_2s"
    declared_order = 2.0
    nfe_per_step = 2

    def __init__(self, r: float = 0.5, solver_type: str = "midpoint", intermediate: str = "ratio",
                 lower_order_final: bool = False, phase: int = 0):
        if not 0.0 < r <= 1.0:
            raise ValueError(f"dpmpp_2s: r must lie in (0, 1], got {r!r}")
        if solver_type not in ("midpoint", "taylor"):
            raise ValueError(f"dpmpp_2s: unknown solver_type {solver_type!r}; valid: 'midpoint', 'taylor'")
        if intermediate not in ("ratio", "grid"):
            raise ValueError(f"dpmpp_2s: unknown intermediate {intermediate!r}; valid: 'ratio', 'grid'")
        if phase not in (0, 1) or isinstance(phase, bool):
            raise ValueError(f"dpmpp_2s: phase must be 0 or 1, got {phase!r}")
        if phase and intermediate != "grid":
            raise ValueError("dpmpp_2s: phase applies to intermediate='grid' (pairs of grid steps)")
        self.r, self.solver_type = float(r), solver_type
        self.intermediate, self.lower_order_final, self.phase = intermediate, bool(lower_order_final), int(phase)
        if intermediate == "grid":
            self.nfe_per_step = 1  # the intermediate point is a grid point: one evaluation per grid step

    def restarted(self, begin: int) -> "DPMSolverPP2S":
        if self.intermediate != "grid" or int(begin) % 2 == 0:
            return self
        other = copy.copy(self)
        other.phase = 1 - self.phase
        return other

    def _opens_pair(self, ctx, i: int) -> bool:
        j, n = i + self.phase, ctx.steps + self.phase  # the index and the length in the run the pairs belong to
        if j % 2 or j == n - 1:
            return False
        return not (self.lower_order_final and not ctx.denoise_final and n % 2 == 0 and j == n - 2)

    def _grid_step(self, ctx, i, x, state):
        """``intermediate="grid"``: open a pair (or take a lone DDIM step), or close the open pair."""
        D = ctx.denoiser.x0(x, ctx.time(i))
        if state is None:
            x_next = (ctx.sigma[i + 1] / ctx.sigma[i]) * x + (-ctx.alpha[i + 1] * math.expm1(-ctx.h(i))) * D
            return x_next, ((x, D, i) if self._opens_pair(ctx, i) else None)
        x_j, D_j, j = state
        h = ctx.lam[i + 1] - ctx.lam[j]
        r = (ctx.lam[i] - ctx.lam[j]) / h
        w0, w1, _ = weights(h)
        a = ctx.alpha[i + 1]
        c = a * (w0 * h / 2 if self.solver_type == "midpoint" else w1) / (r * h)
        return lincomb(x_j, ctx.sigma[i + 1] / ctx.sigma[j], [D_j, D], [a * w0 - c, c]), None

    def step(self, ctx, i, x, state):
        import torch

        if self.intermediate == "grid":
            return self._grid_step(ctx, i, x, state)
        h, r = ctx.h(i), self.r
        sch = ctx.schedule
        lam_u = ctx.lam[i] + r * h
        t_u = sch.t_of_log_snr(torch.tensor(lam_u, dtype=torch.float64))
        a_u, s_u = (float(v) for v in sch.alpha_sigma(t_u))
        D = ctx.denoiser.x0(x, ctx.time(i))
        u = (s_u / ctx.sigma[i]) * x + (-a_u * math.expm1(-r * h)) * D
        Du = ctx.denoiser.x0(u, t_u)
        w0, w1, _ = weights(h)
        a = ctx.alpha[i + 1]
        x = (ctx.sigma[i + 1] / ctx.sigma[i]) * x + (a * w0) * D
        c1 = w0 * h / 2 if self.solver_type == "midpoint" else w1
        x = x + (a * c1 / (r * h)) * (Du - D)
        return x, state
