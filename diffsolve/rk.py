r"""Embedded Runge–Kutta methods as data, and one engine that runs them with error control.

An explicit s-stage method with an embedded error estimate is a Butcher tableau
(c, A, b, b̂). One step from (t, y) with step h:

    k_i   = F(t + c_i h, y + h Σ_{j<i} a_ij k_j),        i = 1..s
    y⁺    = y + h Σ_i b_i k_i                          (order p)
    e     = h Σ_i (b_i − b̂_i) k_i                      (local error estimate, O(h^{q+1}), q = min(p, p̂))

The step is accepted when the scaled error r = ‖e / (atol + rtol·max(|y|, |y⁺|))‖ ≤ 1; the next
step is h·clip(safety · r^{−α} · r_prev^{β}, 0.2, 10) (Hairer's PI controller, α = 1/(q+1) − 0.75β,
β = 0.04; a rejection uses the I part only and never grows h). FSAL tableaus (first stage = last
stage of the previous accepted step) cost s − 1 evaluations per step.

``rk_solve(per_sample=False)`` controls one step size for the whole batch with the norm taken
over every element (like torchdiffeq). ``per_sample=True`` gives each row its own time, step size
and error control; each iteration evaluates ``func`` on the unfinished rows only.

References:
    Hairer, Nørsett, Wanner, Solving Ordinary Differential Equations I, 2nd ed. (1993), §II.4
    (error control, starting step size) and §II.5 (Dormand–Prince); Kidger, On Neural Differential
    Equations, arXiv:2202.02435 (tableaus as data, diffrax).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ._numbers import is_integer
from .tableaus import TABLEAUS, ButcherTableau, get_tableau

__all__ = ["ButcherTableau", "TABLEAUS", "rk_solve", "check_settings", "get_tableau"]


def _row_norm(v: Tensor, kind: str) -> Tensor:
    """(B, ...) -> (B,) RMS or max norm per row."""
    v = v.reshape(v.shape[0], -1)
    return v.pow(2).mean(1).sqrt() if kind == "rms" else v.abs().amax(1)


def _bc(c: Tensor, y: Tensor) -> Tensor:
    return c.reshape(-1, *([1] * (y.dim() - 1)))


def check_settings(method="dopri5", rtol: float = 1e-5, atol: float = 1e-5, norm: str = "rms",
                   steps: int | None = None, max_steps: int = 10000) -> ButcherTableau:
    """The one validation of the engine's settings (every caller's settings reach it): returns the
    tableau. rtol and atol must be finite and > 0 (an absolute part keeps the scaled error defined
    where a component is 0, e.g. a likelihood's Δ at the start); norm ``"rms"`` or ``"max"``;
    ``steps`` (fixed-step mode) and ``max_steps`` positive integers."""
    tab = get_tableau(method)
    for name, v in (("rtol", rtol), ("atol", atol)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v > 0) or not math.isfinite(v):
            raise ValueError(f"{name} must be a positive finite number, got {v!r}")
    if norm not in ("rms", "max"):
        raise ValueError(f"norm must be 'rms' or 'max', got {norm!r}")
    for name, v in (("steps", steps), ("max_steps", max_steps)):
        if v is not None and (not is_integer(v) or v < 1):
            raise ValueError(f"{name} must be a positive integer{' or None' if name == 'steps' else ''}, got {v!r}")
    return tab


def rk_solve(func: Callable[..., Tensor], y0: Tensor, t0: float, t1: float, *,
             method="dopri5", rtol: float = 1e-5, atol: float = 1e-5, per_sample: bool = False,
             h0: float | None = None, max_steps: int = 10000, norm: str = "rms",
             steps: int | None = None, safety: float = 0.9,
             error_mask: Tensor | None = None, rows: bool = False) -> tuple[Tensor, dict]:
    r"""Integrate dy/dt = func(t, y) from t0 to t1 (either direction) with an embedded RK pair.

    Args:
        func: ``func(t, y) -> dy/dt``. With ``per_sample=False`` ``t`` is a 0-dim float64 tensor and
            ``y`` the whole (B, ...) batch; with ``per_sample=True`` ``t`` is an (n,) float64 tensor
            of per-row times and ``y`` the (n, ...) unfinished rows, so ``func`` must treat rows
            independently. With ``rows=True`` it is called ``func(t, y, rows, stage)``, ``rows`` the
            (n,) int64 indices (on y0's device) of y's rows in y0 and ``stage`` the index i of the
            tableau's stage being evaluated (0 for a step's first stage, None for the starting-step
            probe of :func:`_initial_step`, whose value no step uses).
        y0: (B, ...) initial state (float64 recommended).
        t0, t1: Python floats; integration from t0 to t1.
        method: a name in :data:`TABLEAUS` (``euler_heun``, ``bosh3``, ``dopri5``, ``tsit5``,
            ``dop853``) or a :class:`ButcherTableau`.
        rtol, atol: tolerances (> 0) of the scaled error (see module docstring; :func:`check_settings`).
        per_sample: one step size per row with the norm per row, instead of one shared step size
            with the norm over the whole batch.
        h0: initial |step|; default Hairer's heuristic (one extra evaluation).
        max_steps: limit on step attempts per row (accepted + rejected); exceeding it raises.
        norm: ``"rms"`` or ``"max"`` over the elements of a row (or of the batch when shared).
        steps: fixed-step mode: exactly ``steps`` equal steps, no error control.
        safety: safety factor of the controller.
        error_mask: optional bool tensor of a row's shape (``y0.shape[1:]``): only the elements where
            it is True enter the error norms (step acceptance, step size, starting step). Components
            left out still integrate with the method's weights but never steer the steps — for a
            quadrature riding along whose integrand is random (fresh Hutchinson probes per call),
            so that the steps, hence the estimate's weights, do not depend on the randomness.
        rows: pass the row indices and the stage to ``func`` (above).

    Returns:
        ``(y1, stats)``: y1 of y0's shape at t1; stats = {``nfe``: calls of func, ``row_evals``:
        rows evaluated summed over calls, ``accepted``, ``rejected``: (B,) int64 per-row step
        counts, ``t``: final time ((B,) tensor, or 0-dim when shared), ``method``}.

    Host synchronisation: one per iteration (the termination test; in per-sample mode the same
    ``nonzero`` also selects the active rows). Step sizes, times and controller state stay on
    y0's device.
    """
    tab = check_settings(method, rtol, atol, norm, steps, max_steps)
    if not isinstance(y0, Tensor) or y0.dim() < 1 or y0.shape[0] == 0:
        raise ValueError("y0 must be a tensor of shape (B, ...) with B >= 1")
    run = _Run(tab, func, y0, per_sample, norm, _mask_indices(error_mask, y0), rows)
    t0, t1 = float(t0), float(t1)
    if t0 == t1:
        return y0.clone(), run.stats(torch.full((run.G,), t0, **run.f64))
    if steps is not None:
        return run.fixed(y0, t0, t1, steps)
    return run.adaptive(y0, t0, t1, rtol, atol, h0, max_steps, safety)


def _mask_indices(error_mask: Tensor | None, y0: Tensor) -> Tensor | None:
    if error_mask is None:
        return None
    if error_mask.dtype != torch.bool or tuple(error_mask.shape) != tuple(y0.shape[1:]) \
            or not bool(error_mask.any()):
        raise ValueError(f"error_mask must be a bool tensor of shape {tuple(y0.shape[1:])} (a row of y0) "
                         f"with at least one True element")
    return error_mask.reshape(-1).nonzero().squeeze(1).to(y0.device)  # indices: no sync per step


class _Run:
    """One call of :func:`rk_solve`: the counted right-hand side, the norms of its control groups
    (one group for the batch, or one per row) and the per-row step counters."""

    def __init__(self, tab, func, y0, per_sample, norm, mask, rows):
        self.tab, self.func, self.per_sample, self.norm, self.mask, self.rows = tab, func, per_sample, norm, mask, rows
        self.dev, self.B = y0.device, y0.shape[0]
        self.f64 = dict(dtype=torch.float64, device=self.dev)
        self.G = self.B if per_sample else 1  # number of independently controlled groups
        self.all_rows = torch.arange(self.B, device=self.dev)
        self.accepted = torch.zeros(self.B, dtype=torch.int64, device=self.dev)
        self.rejected = torch.zeros(self.B, dtype=torch.int64, device=self.dev)
        self.nfe = self.row_evals = 0

    def call(self, t, y, idx=None, stage=0):
        self.nfe += 1
        self.row_evals += y.shape[0]
        t = t if self.per_sample else t.reshape(())
        if self.rows:
            out = self.func(t, y, self.all_rows if idx is None else idx, stage)
        else:
            out = self.func(t, y)
        if out.shape != y.shape:
            raise ValueError(f"func returned shape {tuple(out.shape)} for a state of shape {tuple(y.shape)}")
        return out

    def group_norm(self, v):  # (n, ...) -> (n,) per row, or (1,) over the batch
        if self.mask is not None:
            v = v.reshape(v.shape[0], -1).index_select(1, self.mask)
        return _row_norm(v if self.per_sample else v.reshape(1, -1), self.norm)

    def gbc(self, c, y):  # per-group quantity broadcast to the rows of y
        return _bc(c, y) if self.per_sample else c.reshape([1] * y.dim())

    def stats(self, t):
        return {"nfe": self.nfe, "row_evals": self.row_evals, "method": self.tab.name, "accepted": self.accepted,
                "rejected": self.rejected, "t": t if self.per_sample else t[0]}

    def fixed(self, y, t0, t1, steps):
        """Exactly ``steps`` equal steps, no error control."""
        direction, span = (1.0 if t1 > t0 else -1.0), abs(t1 - t0)
        t = torch.full((self.G,), t0, **self.f64)
        h = torch.full((self.G,), direction * span / steps, **self.f64)
        k1 = self.call(t, y)
        for n in range(int(steps)):
            t_next = torch.full((self.G,), t1 if n == steps - 1 else t0 + (n + 1) * direction * span / steps,
                                **self.f64)
            y, _, k_last, _ = _attempt(self.tab, self.call, t, t_next, h, y, k1, self.gbc)
            t = t_next
            k1 = k_last if self.tab.fsal else (self.call(t, y) if n < steps - 1 else None)
        self.accepted += int(steps)
        return y, self.stats(t)

    def adaptive(self, y0, t0, t1, rtol, atol, h0, max_steps, safety):
        """Error-controlled steps until every group reaches t1 (module docstring)."""
        tab, G, f64 = self.tab, self.G, self.f64
        direction, span = (1.0 if t1 > t0 else -1.0), abs(t1 - t0)
        t, y = torch.full((G,), t0, **f64), y0.clone()
        k1 = self.call(t, y)
        k = tab.error_order + 1
        h = _initial_step(self.call, t, y, k1, direction, span, rtol, atol, k, self.group_norm, self.gbc) \
            if h0 is None else torch.full((G,), abs(float(h0)), **f64)
        ctl = _Controller(rtol, atol, k, safety, direction, torch.full((G,), t1, **f64))
        carry = [t, h.clamp(max=span), torch.full((G,), 1e-4, **f64), y, k1]  # t, h, r_prev, y, first stage
        done = torch.zeros(G, dtype=torch.bool, device=self.dev)
        for iters in itertools.count(1):
            idx = (~done).nonzero().squeeze(1) if self.per_sample else None  # the one host sync per iteration
            if bool(done[0]) if idx is None else idx.numel() == 0:
                break
            if iters > max_steps:
                raise RuntimeError(f"rk_solve({tab.name}) exceeded max_steps={max_steps} step attempts "
                                   f"(rtol={rtol}, atol={atol}); loosen the tolerances or raise max_steps")
            full = idx is None or idx.numel() == G
            active = carry if full else [v.index_select(0, idx) for v in carry]
            new, fin, row_ok = self._attempt_active(ctl, active, iters, None if full else idx)
            done = self._commit(carry, new, fin, row_ok, done, None if full else idx)
        return carry[3], self.stats(carry[0])

    def _attempt_active(self, ctl, active, iters, idx):
        """One step attempt of the active groups; returns their new carry, finished flags and
        per-row acceptance."""
        t_a, h_a, rp_a, y_a, k1_a = active
        if not self.tab.fsal and iters > 1:  # first stage of a non-FSAL step (reused from init at iteration 1)
            k1_a = self.call(t_a, y_a, idx)
        call = self.call if idx is None else (lambda t, y, stage=0: self.call(t, y, idx, stage))
        remaining = (ctl.t1[: t_a.shape[0]] - t_a).abs()
        last = h_a >= remaining
        step = torch.where(last, remaining, h_a)
        t_next = torch.where(last, ctl.t1[: t_a.shape[0]], t_a + ctl.direction * step)
        y_new, err, k_last, err3 = _attempt(self.tab, call, t_a, t_next, ctl.direction * step, y_a, k1_a, self.gbc)
        ok, h_new, rp_new = ctl.judge(self.group_norm, y_a, y_new, err, err3, step, rp_a)
        okb = self.gbc(ok, y_a)
        new = [torch.where(ok, t_next, t_a), h_new, rp_new, torch.where(okb, y_new, y_a),
               torch.where(okb, k_last, k1_a) if self.tab.fsal else k1_a]
        return new, ok & last, (ok.long() if self.per_sample else ok.long().expand(self.B))

    def _commit(self, carry, new, fin, row_ok, done, idx):
        """Write the active groups' results back (in place in ``carry``); returns the done flags."""
        if idx is None:
            carry[:] = new
            self.accepted += row_ok
            self.rejected += 1 - row_ok
            return fin
        for j, v in enumerate(new):
            carry[j] = carry[j].index_copy(0, idx, v)
        self.accepted = self.accepted.index_add(0, idx, row_ok)
        self.rejected = self.rejected.index_add(0, idx, 1 - row_ok)
        return done.index_copy(0, idx, fin)


@dataclass
class _Controller:
    """Step acceptance and Hairer's PI step-size controller (module docstring)."""

    rtol: float
    atol: float
    k: int  # error order + 1
    safety: float
    direction: float
    t1: Tensor
    beta: float = 0.04

    def judge(self, group_norm, y, y_new, err, err3, step, r_prev):
        """(accepted?, next |step|, r_prev for the next step) per group."""
        scale = self.atol + self.rtol * torch.maximum(y.abs(), y_new.abs())
        r = group_norm(err / scale)
        if err3 is not None:  # DOP853's combined estimate (module docstring)
            r3 = group_norm(err3 / scale)
            den = (r * r + 0.01 * r3 * r3).sqrt()  # both estimates 0 (in float32 1e-300 was 0 too): error 0
            r = torch.where(den > 0, r * r / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(r))
        r = torch.where(torch.isfinite(r), r, torch.full_like(r, math.inf))
        ok = r <= 1.0
        alpha = 1.0 / self.k - 0.75 * self.beta
        fac_acc = (self.safety * r.clamp(min=1e-10).pow(-alpha) * r_prev.pow(self.beta)).clamp(0.2, 10.0)
        fac_rej = (self.safety * r.clamp(min=1e-10).pow(-1.0 / self.k)).clamp(0.2, 1.0)
        # the step sizes are the controller's choice, not functions of the state to differentiate: a gradient
        # through them (enable_grad) is not the solution's, and it was 60 off at rtol 1e-10 on the ring
        step = (step * torch.where(ok, fac_acc, fac_rej)).detach()
        return ok, step, torch.where(ok, r.clamp(min=1e-4), r_prev).detach()


def _attempt(tab, call, t, t_next, h, y, k1, gbc):
    """One RK step from (t, y) with signed step h per group; returns (y⁺, error estimate, last stage,
    second error estimate or None)."""
    hb = gbc(h, y).to(y.dtype)  # times stay float64; the state keeps its dtype
    ks = [k1]
    for i in range(1, tab.stages):
        yi = y
        for j, a in enumerate(tab.a[i]):
            if a != 0.0:
                yi = yi + (hb * a) * ks[j]
        ti = t_next if tab.c[i] == 1.0 else t + tab.c[i] * h
        if tab.fsal and i == tab.stages - 1:
            ks.append(call(ti, yi, stage=i))
            y_new = yi  # the FSAL row of A equals b
            break
        ks.append(call(ti, yi, stage=i))
    else:
        y_new = y
        for bi, ki in zip(tab.b, ks):
            if bi != 0.0:
                y_new = y_new + (hb * bi) * ki
    return y_new, _combine(tab.b_err, ks, hb), ks[-1], (_combine(tab.b_err3, ks, hb) if tab.b_err3 else None)


def _combine(weights, ks, hb):
    """h Σ_i w_i k_i (an error estimate)."""
    err = None
    for ei, ki in zip(weights, ks):
        if ei != 0.0:
            err = (hb * ei) * ki if err is None else err + (hb * ei) * ki
    return err


def _initial_step(call, t, y, f0, direction, span, rtol, atol, k, group_norm, gbc):
    """Hairer, Nørsett & Wanner (1993) §II.4 starting step size, per group; one extra evaluation."""
    scale = atol + rtol * y.abs()
    d0, d1 = group_norm(y / scale), group_norm(f0 / scale)
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1.clamp(min=1e-300))
    h0 = h0.clamp(max=span)
    f1 = call(t + direction * h0, y + gbc(direction * h0, y) * f0, stage=None)
    d2 = group_norm((f1 - f0) / scale) / h0
    dmax = torch.maximum(d1, d2)
    h1 = torch.where(dmax <= 1e-15, (h0 * 1e-3).clamp(min=1e-6), (0.01 / dmax.clamp(min=1e-300)).pow(1.0 / k))
    return torch.minimum(100 * h0, h1).detach()  # a choice, not differentiated (as _Controller.judge's)
