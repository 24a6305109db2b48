r"""High-accuracy reference solutions of the probability-flow ODE (docs/math.md (3.3)).

Used to measure a sampler's error "against the exact ODE solution from the same x_T": with an
analytic denoiser (docs/math.md §6) the drift is exact, so a tight-tolerance adaptive solve is the exact
solution up to its tolerance. The ODE is integrated for the data-scale state y = x/α in
λ = log(α/σ), where it reads (an exact change of variables of docs/math.md (3.3))

    dy/dλ = x̂0(α_t y, t) − y,     t = t(λ),

smooth and non-stiff over the whole range, with dopri5 and per-sample error control
(:meth:`diffsolve.ode.ProbabilityFlowODE.solve`), so each sample's reference does not depend on its batch.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .denoiser import Denoiser
from .ode import ProbabilityFlowODE

__all__ = ["ode_reference"]


def ode_reference(denoiser: Denoiser, x: Tensor, t_start: float, t_end: float, *, rtol: float = 1e-9,
                  atol: float = 1e-9, denoise_final: bool = False, method: str = "dopri5") -> Tensor:
    """Solve the probability-flow ODE from ``x`` at ``t_start`` to ``t_end`` in float64.

    Args:
        denoiser: the model (its evaluations are counted in ``denoiser.nfe`` as usual).
        x: (B, *shape) state at ``t_start``.
        t_start, t_end: times (t_start > t_end for sampling; either direction works).
        rtol, atol: tolerances of the per-sample error control (on y = x/α).
        denoise_final: also apply x̂0(x, t_end), as ``sample(..., denoise_final=True)`` does.
        method: a tableau of :mod:`diffsolve.rk` (dopri5, tsit5, bosh3, …).

    Returns:
        (B, *shape) float64 tensor.
    """
    ode = ProbabilityFlowODE(denoiser, "log_snr", scale="alpha")  # dy/dλ = x̂0 − y = −(σ/α) ε̂, y = x/α
    out = ode.solve(x.to(torch.float64), float(t_start), float(t_end), method=method, rtol=rtol, atol=atol,
                    per_sample=True, max_steps=100000).x
    if denoise_final:
        out = denoiser.x0(out, float(t_end))
    return out
