r"""A multistep predictor–corrector in data prediction whose weights are free, per step (docs/math.md §17).

Every data-prediction multistep method here (DDIM, DPM-Solver++ 2M/3M, UniPC) advances with the
exponential step of docs/math.md (4.1) applied to a combination D of the stored x̂0 values; they differ only
in the weights of that combination, which they derive from a polynomial model of x̂0(λ). Below ten
evaluations that model is poor, and the weights that minimise the error of the whole run are
different. This solver takes them as data, so they can be fitted to a model and a grid
(:func:`diffsolve.tune.tune_solver`; the idea of learning solver coefficients against a teacher solve
is S4S, Frankel et al., arXiv:2502.17423).

Step i from t_i to t_{i+1}, h_i = λ_{i+1} − λ_i, X_j = x̂0(x_j, t(λ_j + δ_j)) (x_j: the state where
X_j was evaluated; δ_j: an optional shift of the time the network is told, in λ — zero by default,
fitted like the weights; the idea of decoupling the network's time input from the grid is LD3's,
Tong et al., arXiv:2405.15506), k = ``history`` (docs/math.md (17.1), (17.2)):

    predictor:  D_i = X_i + Σ_{m=1}^{k−1} p_{i,m} (X_i − X_{i−m})
                x_{i+1} = (σ_{i+1}/σ_i) x_i + α_{i+1} (1 − e^{−h_i}) D_i

    corrector (steps i < n − 1; X_{i+1}, evaluated at the predicted x_{i+1}, is the next step's
    evaluation anyway):
                D_i ← D_i + c_{i,0} (X_{i+1} − X_i) + Σ_{m=1}^{k−1} c_{i,m} (X_i − X_{i−m})
                x_{i+1} ← (σ_{i+1}/σ_i) x_i + α_{i+1} (1 − e^{−h_i}) D_i

and the next step starts from the corrected x_{i+1} with X_{i+1} as evaluated (as UniPC does), so
the run costs one evaluation per step. Written with differences, the weights of each D sum to one
for any p, c: a constant x̂0 is integrated exactly (first-order consistency is built in).

Defaults (``predictor=None``, ``corrector=None``; docs/math.md (17.3)): p_{i,1} = h_i / (2 h_{i−1}),
every other weight 0 — DPM-Solver++(2M) (docs/math.md (12.3)) in its midpoint form without the
lower-order final step, a second-order method (the declared order). Fitted weights trade that order
for accuracy at one budget and one grid: a run with them is only defined on the grid they were
fitted on (its number of steps is checked).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import Solver, lincomb
from .registry import register

__all__ = ["LearnedMultistep", "weights_of", "default_predictor"]


def _table(values, steps: int, width: int, what: str):
    """``values`` as a (steps, width) nested list of floats, or a float64 tensor kept as it is (it
    may carry gradients: :func:`diffsolve.tune.tune_solver` differentiates through the run)."""
    if isinstance(values, Tensor):
        if values.shape != (steps, width):
            raise ValueError(f"{what} has shape {tuple(values.shape)}; this run needs ({steps}, {width}) "
                             f"(steps x weights per step)")
        return values if values.requires_grad else values.tolist()
    rows = [list(map(float, r)) for r in values]
    if len(rows) != steps or any(len(r) != width for r in rows):
        raise ValueError(f"{what} has {len(rows)} rows of lengths {sorted({len(r) for r in rows})}; this run "
                         f"needs {steps} rows of {width} (the weights were fitted to a grid of another size?)")
    if not all(math.isfinite(v) for r in rows for v in r):
        raise ValueError(f"{what} contains NaN or Inf")
    return rows


def default_predictor(lam: list, history: int) -> list:
    """DPM-Solver++(2M)'s predictor weights on a grid with log-SNR values ``lam``:
    p_{i,1} = h_i/(2 h_{i−1}) (midpoint form), all others 0."""
    n = len(lam) - 1
    p = [[0.0] * (history - 1) for _ in range(n)]
    for i in range(1, n):
        p[i][0] = (lam[i + 1] - lam[i]) / (2.0 * (lam[i] - lam[i - 1]))
    return p


def _combine(x: Tensor, a: float, terms: list, coefs: list) -> Tensor:
    """a·x + Σ c_k T_k: fused for float weights, plain autograd arithmetic for tensor weights."""
    if not any(isinstance(c, Tensor) for c in coefs):
        return lincomb(x, a, terms, coefs)
    out = x * a
    for c, T in zip(coefs, terms):
        out = out + c * T
    return out


@register
class LearnedMultistep(Solver):
    """Exponential multistep predictor–corrector with free per-step weights (fitted by ``tune_solver``).

    Step t_i → t_{i+1} (docs/math.md (17.1), (17.2)), h_i = λ_{i+1} − λ_i, k = ``history``,
    X_j = x̂0(x_j, t(λ_j + δ_j)) the j-th evaluation (x_j the point where it was made):

        D_i = X_i + Σ_{m=1}^{k−1} p_{i,m} (X_i − X_{i−m})
              [+ c_{i,0} (X_{i+1} − X_i) + Σ_{m=1}^{k−1} c_{i,m} (X_i − X_{i−m})   if corrected, i < n − 1]
        x_{i+1} = (σ_{i+1}/σ_i) x_i + α_{i+1} (1 − e^{−h_i}) D_i

    X_{i+1} is evaluated at the predicted x_{i+1} and reused by step i + 1; terms with m > i are
    skipped. Default weights: DPM-Solver++(2M), p_{i,1} = h_i/(2h_{i−1}) (docs/math.md (17.3));
    declared order 2 (fitted weights give up the order for accuracy on their grid). η = 0 only.

    Args:
        predictor: (steps, history − 1) weights p_{i,m} (nested lists or a float64 tensor); ``None``:
            DPM-Solver++(2M)'s p_{i,1} = h_i/(2h_{i−1}).
        corrector: (steps, history) weights c_{i,0..k−1}; ``None``: no correction. Row n − 1 is
            unused (the last step has no evaluation after it); weights reaching before the first
            evaluation (m > i) are ignored.
        history: k, the number of stored evaluations a step combines (2 or more).
        shift: (steps,) λ-shifts δ_j of the evaluation times (list or float64 tensor); ``None``: 0.

    Shapes: x and every X_j are (B, *shape); the weights, shifts and grid coefficients are shared by
    every sample (float64; tensors with gradients stay tensors, for :func:`~diffsolve.tune.tune_solver`).
    State: a dict with ``"p"``, ``"c"`` (the weight tables), ``"X"`` (the last ≤ k evaluations,
    oldest first) and ``"times"`` (the n times t(λ_j + δ_j) the network is told).

    References:
        Frankel et al., S4S: Solving for a Diffusion Model Solver, arXiv:2502.17423 (fitted weights);
        Tong et al., Learning to Discretize Denoising Diffusion ODEs (LD3), arXiv:2405.15506 (time
        shifts); Lu, Zhou, Bao, Chen, Li, Zhu, DPM-Solver++, arXiv:2211.01095 (the exponential
        data-prediction step and 2M); Zhao, Bai, Rao, Zhou, Lu, UniPC, arXiv:2302.04867 (the
        corrector that reuses the next evaluation).
    """

    name = "learned"
    declared_order = 2.0
    min_steps = 1

    def __init__(self, predictor=None, corrector=None, history: int = 3, shift=None):
        if int(history) != history or history < 2:
            raise ValueError(f"history must be an integer >= 2, got {history!r}")
        self.history = int(history)
        self.predictor = predictor
        self.corrector = corrector
        self.shift = shift

    def check_steps(self, steps: int):
        """The fitted tables have one row per step of the grid (``steps``)."""
        super().check_steps(steps)
        k, n = self.history, steps
        if self.predictor is not None:
            _table(self.predictor, n, k - 1, "predictor")
        if self.corrector is not None:
            _table(self.corrector, n, k, "corrector")
        if self.shift is not None:
            _table(self.shift.reshape(-1, 1) if isinstance(self.shift, Tensor) else [[v] for v in self.shift],
                   n, 1, "shift")

    def init(self, ctx, x):
        n, k = ctx.steps, self.history
        p = default_predictor(ctx.lam, k) if self.predictor is None else _table(self.predictor, n, k - 1, "predictor")
        c = None if self.corrector is None else _table(self.corrector, n, k, "corrector")
        times = list(ctx.times[:-1])  # where evaluation j is told it is
        if self.shift is not None:
            sch = ctx.schedule
            if isinstance(self.shift, Tensor) and self.shift.requires_grad:
                lam = torch.tensor(ctx.lam[:-1], dtype=torch.float64) + self.shift.reshape(-1)
                times = list(sch.t_of_log_snr(lam).unbind())  # 0-dim tensors carrying gradients
            else:
                shift = [float(v) for v in (self.shift.reshape(-1).tolist() if isinstance(self.shift, Tensor)
                                            else self.shift)]
                times = [ctx.times[j] if shift[j] == 0.0 else float(sch.t_of_log_snr(ctx.lam[j] + shift[j]))
                         for j in range(n)]
        return {"p": p, "c": c, "X": [], "times": times}

    def _weights(self, p_row, c_row, i: int, corrected: bool) -> list:
        """Weights of D_i on [X_{i−k+1}, …, X_i] (+ X_{i+1} when ``corrected``), summing to one."""
        k = self.history
        m_max = min(k - 1, i)
        w = [0.0] * m_max + [1.0]  # w[-1] belongs to X_i, w[-1 - m] to X_{i−m}
        for m in range(1, m_max + 1):
            w[-1] = w[-1] + p_row[m - 1]
            w[-1 - m] = w[-1 - m] - p_row[m - 1]
        if corrected:
            for m in range(1, m_max + 1):
                w[-1] = w[-1] + c_row[m]
                w[-1 - m] = w[-1 - m] - c_row[m]
            w[-1] = w[-1] - c_row[0]
            w.append(c_row[0])
        return w

    def step(self, ctx, i, x, state):
        X = state["X"]
        if i == 0:
            X.append(ctx.denoiser.x0(x, state["times"][0]))
        a = ctx.sigma[i + 1] / ctx.sigma[i]
        b = ctx.alpha[i + 1] * -math.expm1(-ctx.h(i))
        hist = X[-min(self.history, i + 1):]
        p_row = state["p"][i]
        w = self._weights(p_row, None, i, corrected=False)
        x_next = _combine(x, a, hist, [b * wj for wj in w])
        if i < ctx.steps - 1:  # the next step's evaluation, at the predicted point
            X_next = ctx.denoiser.x0(x_next, state["times"][i + 1])
            c_row = None if state["c"] is None else state["c"][i]
            if c_row is not None and any(isinstance(v, Tensor) or v != 0.0 for v in c_row):
                w = self._weights(p_row, c_row, i, corrected=True)
                x_next = _combine(x, a, hist + [X_next], [b * wj for wj in w])
            X.append(X_next)
            if len(X) > self.history:
                del X[0]
        return x_next, state


def weights_of(solver, schedule, t, history: int = 3) -> tuple[list, list]:
    """The (predictor, corrector) weights with which :class:`LearnedMultistep` reproduces another
    data-prediction multistep solver (DDIM, DPM-Solver++ 1–3M, UniPC) on the grid ``t`` (η = 0).

    Read off, not derived: the solver runs on a probe network in R^{n+1} whose j-th evaluation
    returns the unit vector e_{j+1} whatever its input, from x_T = e_0. Its states (and the points
    where it evaluates) are then exact combinations of the unit vectors, and a step's weights are
    the coordinates of (x_{i+1} − (σ_{i+1}/σ_i) x_i) / (α_{i+1}(1 − e^{−h_i})). The result is checked
    by running :class:`LearnedMultistep` with it on the same probe; a solver outside the family
    (one whose step is not of that form, e.g. DEIS in noise prediction, or that looks further back
    than ``history``) raises ``ValueError``.
    """
    from ..denoiser import Denoiser
    from ..processes import NoiseLevel
    from ..loop import integrate
    from .registry import get_solver

    solver = get_solver(solver)
    t = torch.as_tensor(t, dtype=torch.float64)
    n, k = len(t) - 1, history
    level = NoiseLevel(schedule, eta=0.0)
    x_T = torch.zeros(1, n + 1, dtype=torch.float64)
    x_T[0, 0] = 1.0

    def probe_run(sol):
        inputs = []

        def net(x, label):
            if len(inputs) >= n:
                raise ValueError(f"solver {sol.name!r} evaluates more than once per step")
            inputs.append(x.clone())
            out = torch.zeros_like(x)
            out[:, len(inputs)] = 1.0
            return out

        den = Denoiser(net, schedule, prediction="x0", net_dtype=torch.float64)
        traj = integrate(sol, den, x_T, t, level=level, trajectory=True).trajectory
        return [s[0] for s in traj], [s[0] for s in inputs]

    states, inputs = probe_run(solver)
    sig, alp = schedule.sigma(t).tolist(), schedule.alpha(t).tolist()
    lam = schedule.log_snr(t).tolist()
    P = [[0.0] * (k - 1) for _ in range(n)]
    C = [[0.0] * k for _ in range(n)]

    def weights(target, i):  # coordinates of target − a x_i in units of b, on e_1..e_n
        a, b = sig[i + 1] / sig[i], alp[i + 1] * -math.expm1(-(lam[i + 1] - lam[i]))
        return ((target - a * states[i]) / b).tolist()[1:]

    for i in range(n):
        wp = weights(inputs[i + 1] if i < n - 1 else states[i + 1], i)
        for m in range(1, min(k - 1, i) + 1):
            P[i][m - 1] = -wp[i - m]
        if i < n - 1:
            wc = weights(states[i + 1], i)
            C[i][0] = wc[i + 1]
            for m in range(1, min(k - 1, i) + 1):
                C[i][m] = -wc[i - m] - P[i][m - 1]
    again, _ = probe_run(LearnedMultistep(P, C, history=k))
    scale = max(float(s.abs().max()) for s in states)
    if max(float((a - b).abs().max()) for a, b in zip(again, states)) > 1e-9 * scale:
        raise ValueError(f"solver {solver.name!r} is not a data-prediction multistep method over the last "
                         f"{k} evaluations; LearnedMultistep cannot start from its weights")
    return P, C
