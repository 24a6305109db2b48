r"""Embedded explicit Runge–Kutta pairs as data: Butcher tableaus (c, A, b, b̂) that the engine
:func:`diffsolve.rk.rk_solve` runs (docs/math.md §19).

References:
    Hairer, Nørsett, Wanner, Solving Ordinary Differential Equations I, 2nd ed. (1993), §II.1–II.10;
    Kidger, On Neural Differential Equations, arXiv:2202.02435 (tableaus as data, diffrax).
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ButcherTableau", "TABLEAUS", "get_tableau"]


@dataclass(frozen=True)
class ButcherTableau:
    """An explicit embedded Runge–Kutta pair.

    Attributes:
        name: registry name.
        c: (s,) stage times; a: lower-triangular rows a[i] of length i; b: (s,) weights of the
            propagated solution (order ``order``); b_err: (s,) b − b̂, the weights of the error
            estimate; error_order: order q of the lower method (the error is O(h^{q+1})).
        fsal: the last stage is evaluated at (t + h, y⁺), so it is the next step's first stage.
        b_err3: optional second error weights (DOP853's 3rd-order estimate): the scaled error is
            then r = r₅² / √(r₅² + 0.01 r₃²) with r₅, r₃ the norms of the two estimates (Hairer,
            Nørsett & Wanner, §II.10), an estimate of order ``error_order`` + 1.
    """

    name: str
    c: tuple
    a: tuple
    b: tuple
    b_err: tuple
    order: int
    error_order: int
    fsal: bool
    doc: str = ""
    b_err3: tuple | None = None

    @property
    def stages(self) -> int:
        return len(self.c)

    def shared_probe_stages(self, span: float = 0.25) -> frozenset:
        """Stages that reuse the previous stage's Hutchinson probe when a random divergence rides
        along with fresh probes per evaluation (docs/math.md (20.9)).

        A quadrature Σ_i b_i zᵢᵀ J_i zᵢ over one step has probe variance ∝ Σ_G (Σ_{i∈G} b_i)² when
        the stages of each group G share one probe and J varies little across it; independent
        probes are the groups of one. The partition into runs of consecutive stages at most
        ``span`` apart in c that minimises it (ties: more shared stages, so a stage of weight 0,
        whose probe would count for nothing, shares its predecessor's and leaves the probe stream
        of docs/math.md (20.10) to the stages that count) is returned as the set of stages i ≥ 1
        whose probe is stage i − 1's. Unbiasedness does not depend on it: every probe is still a
        fresh draw independent of the trajectory. The last stage of an FSAL pair belongs to the
        next step and always draws its own. Stage indices count from 0 (the 4th and 5th stages of
        the docs are 3 and 4 here). dopri5: stages 3 and 4 (b = 0.651, −0.322; c = 0.8, 0.889)
        share, Σ 0.755 → 0.335, and stage 1 (b = 0) with stage 2, returned as {2, 4}; tsit5:
        stages 3–5, 18.4 → 0.41.
        """
        last = self.stages - 1 if self.fsal else self.stages
        best, cut = [0.0] + [float("inf")] * last, [0] * (last + 1)
        for i in range(1, last + 1):
            for j in range(i - 1, -1, -1):  # the singleton first; a longer run wins ties
                if max(self.c[j:i]) - min(self.c[j:i]) > span:
                    break
                cost = best[j] + sum(self.b[j:i]) ** 2
                if cost <= best[i] + 1e-12:
                    best[i], cut[i] = cost, j
        shared, i = set(), last
        while i > 0:
            shared.update(range(cut[i] + 1, i))
            i = cut[i]
        return frozenset(shared)

    def check(self, tol: float = 1e-12):
        """Consistency: Σ_j a_ij = c_i, Σ b = 1, Σ (b − b̂) = 0, FSAL rows."""
        for i, row in enumerate(self.a):
            assert len(row) == i and abs(sum(row) - self.c[i]) < tol, (self.name, i)
        assert abs(sum(self.b) - 1) < tol and abs(sum(self.b_err)) < tol, self.name
        if self.fsal:
            assert self.c[-1] == 1 and all(abs(x - y) < tol for x, y in zip(self.a[-1], self.b)), self.name


def _tab(name, c, a, b, b_hat, order, error_order, doc):
    fsal = c[-1] == 1 and len(a[-1]) == len(b) - 1 and list(a[-1]) == list(b[:-1]) and b[-1] == 0
    return ButcherTableau(name, tuple(map(float, c)), tuple(tuple(map(float, r)) for r in a),
                          tuple(map(float, b)), tuple(float(x) - float(y) for x, y in zip(b, b_hat)),
                          order, error_order, fsal, doc)


_EULER_HEUN = _tab(
    "euler_heun", [0, 1], [[], [1]], [0.5, 0.5], [1, 0], 2, 1,
    """Heun's method (explicit trapezoid, order 2) with explicit Euler (order 1) as error estimate;
    2 evaluations per step, not FSAL. References: Hairer, Nørsett & Wanner (1993), §II.1.""")

_BOSH3 = _tab(
    "bosh3", [0, 1 / 2, 3 / 4, 1],
    [[], [1 / 2], [0, 3 / 4], [2 / 9, 1 / 3, 4 / 9]],
    [2 / 9, 1 / 3, 4 / 9, 0], [7 / 24, 1 / 4, 1 / 3, 1 / 8], 3, 2,
    """Bogacki–Shampine 3(2), FSAL: 3 evaluations per accepted step (MATLAB ode23). References:
    Bogacki & Shampine, A 3(2) pair of Runge–Kutta formulas, Appl. Math. Lett. 2 (1989) 321–325.""")

_DOPRI5 = _tab(
    "dopri5", [0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1, 1],
    [[], [1 / 5], [3 / 40, 9 / 40], [44 / 45, -56 / 15, 32 / 9],
     [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
     [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
     [35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84]],
    [35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0],
    [5179 / 57600, 0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40], 5, 4,
    """Dormand–Prince 5(4), FSAL: 6 evaluations per accepted step (MATLAB ode45, torchdiffeq
    ``dopri5``). References: Dormand & Prince, A family of embedded Runge–Kutta formulae, J. Comput.
    Appl. Math. 6 (1980) 19–26.""")

def _dop853() -> ButcherTableau:
    """DOP853 with the coefficients scipy ships (scipy.integrate's DOP853 uses the same table)."""
    from scipy.integrate._ivp import dop853_coefficients as co

    s = co.N_STAGES  # 12 stages + the FSAL stage at (t + h, y⁺)
    c = [float(x) for x in co.C[:s]] + [1.0]
    a = [[float(x) for x in co.A[i, :i]] for i in range(s)] + [[float(x) for x in co.B]]
    b = [float(x) for x in co.B] + [0.0]
    return ButcherTableau(
        "dop853", tuple(c), tuple(tuple(r) for r in a), tuple(b), tuple(float(x) for x in co.E5),
        8, 7, True,
        """Dormand–Prince 8(5,3), FSAL: 12 evaluations per accepted step; the error estimate combines
        a 5th- and a 3rd-order embedded solution (module docstring). References: Hairer, Nørsett &
        Wanner (1993), §II.10 (DOP853); Prince & Dormand, High order embedded Runge–Kutta formulae,
        J. Comput. Appl. Math. 7 (1981) 67–75.""",
        tuple(float(x) for x in co.E3))


_TSIT5 = _tab(
    "tsit5", [0, 0.161, 0.327, 0.9, 0.9800255409045097, 1, 1],
    [[], [0.161], [-0.008480655492356989, 0.335480655492357],
     [2.897153057105493, -6.359448489975075, 4.3622954328695815],
     [5.325864828439257, -11.748883564062828, 7.4955393428898365, -0.09249506636175525],
     [5.86145544294642, -12.92096931784711, 8.159367898576159, -0.071584973281401, -0.028269050394068383],
     [0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742, -3.290069515436081,
      2.324710524099774]],
    [0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742, -3.290069515436081,
     2.324710524099774, 0],
    # b̂ = b − b_err with Tsitouras' error weights
    [0.09646076681806523 + 0.00178001105222577714, 0.01 + 0.0008164344596567469,
     0.4798896504144996 - 0.007880878010261995, 1.379008574103742 + 0.1447110071732629,
     -3.290069515436081 - 0.5823571654525552, 2.324710524099774 + 0.45808210592918697, -1 / 66], 5, 4,
    """Tsitouras 5(4), FSAL: 6 evaluations per accepted step; coefficients optimised for the
    principal error of the 5th-order solution (the default of DifferentialEquations.jl and diffrax).
    References: Tsitouras, Runge–Kutta pairs of order 5(4) satisfying only the first column
    simplifying assumption, Comput. Math. Appl. 62 (2011) 770–775.""")

class _Tableaus(dict):
    """name -> ButcherTableau; an entry may be a factory, built on first access (DOP853 reads its
    coefficients from scipy.integrate, whose import costs more than the rest of diffsolve's)."""

    def __getitem__(self, name):
        v = super().__getitem__(name)
        if not isinstance(v, ButcherTableau):
            v = v()
            self[name] = v
        return v


TABLEAUS: dict[str, ButcherTableau] = _Tableaus(
    {t.name: t for t in (_EULER_HEUN, _BOSH3, _DOPRI5, _TSIT5)}, dop853=_dop853)


def get_tableau(method) -> ButcherTableau:
    if isinstance(method, ButcherTableau):
        return method
    if method not in TABLEAUS:
        raise ValueError(f"unknown Runge–Kutta method {method!r}; valid methods: {', '.join(TABLEAUS)} "
                         f"(or a ButcherTableau)")
    return TABLEAUS[method]
