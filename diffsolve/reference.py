r"""High-accuracy reference solutions of the probability-flow ODE (MATH 3.3).

Used to measure a sampler's error "against the exact ODE solution from the same x_T": with an
analytic denoiser (MATH §6) the drift is exact, so a tight-tolerance adaptive solve is the exact
solution up to its tolerance. The ODE is integrated in λ = log(α/σ) (smooth across the whole range,
unlike raw t near t_min):

    dx/dλ = (dx/dt) / (dλ/dt) = [f_t x − ½ g_t² ŝ(x, t)] / λ'(t),   t = t(λ).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .denoiser import Denoiser
from .processes import ProbabilityFlowODE

__all__ = ["ode_reference"]


def ode_reference(denoiser: Denoiser, x: Tensor, t_start: float, t_end: float, *, rtol: float = 1e-9,
                  atol: float = 1e-9, denoise_final: bool = False, method: str = "dopri5") -> Tensor:
    """Solve the probability-flow ODE from ``x`` at ``t_start`` to ``t_end`` in float64.

    Args:
        denoiser: the model (its evaluations are counted in ``denoiser.nfe`` as usual).
        x: (B, *shape) state at ``t_start``.
        t_start, t_end: times (t_start > t_end for sampling; either direction works).
        rtol, atol: torchdiffeq tolerances (float64 state).
        denoise_final: also apply x̂0(x, t_end), as ``sample(..., denoise_final=True)`` does.

    Returns:
        (B, *shape) float64 tensor.
    """
    import torchdiffeq

    sch = denoiser.schedule
    ode = ProbabilityFlowODE(denoiser)
    lam = sch.log_snr(torch.tensor([float(t_start), float(t_end)], dtype=torch.float64))

    def func(lam_now, y):
        t = sch.t_of_log_snr(lam_now.detach().cpu())
        return ode.drift(y, t) / float(sch.d_log_snr(t))

    x = x.to(torch.float64)
    out = torchdiffeq.odeint(func, x, lam.to(x.device), rtol=rtol, atol=atol, method=method)[-1]
    if denoise_final:
        out = denoiser.x0(out, float(t_end))
    return out
