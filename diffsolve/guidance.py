r"""Classifier-free guidance as a denoiser that wraps a denoiser (azula's design), so it composes
with every solver, grid, noise level and with ``log_likelihood``.

A conditional network ``net(x, label, cond)`` is evaluated with the condition c and with the null
condition ∅ in ONE batched call (rows [x; x], conditions [c; ∅]); the guided output is

    ε̃ = ε̂(x, t, ∅) + w (ε̂(x, t, c) − ε̂(x, t, ∅))                                        (CFG)

with guidance scale w (w = 0: unconditional, w = 1: conditional, w > 1: guided; Ho & Salimans
write (1 + w')ε̂_c − w'ε̂_∅, i.e. w' = w − 1). The combination is applied to the network's own
output, whatever its prediction type: every prediction type is y = A_t x + B_t x̂0 at fixed
(x, t) (docs/math.md §2, :mod:`diffsolve.denoiser`) and the weights (1 − w, w) sum to one, so guiding ε̂,
x̂0, v or the score gives exactly the same x̂0 — guidance "in ε" and "in x0" are the same thing.

Cost: ``nfe`` counts network calls (one batched call = 1 NFE, as for an unguided model); the
attribute ``rows`` counts evaluated rows (2 per sample per call for 0 < w ≠ 1, one when w ∈ {0, 1},
where the unneeded branch is skipped).

Likelihood: a guided model has no proper likelihood of the data. The guided vector field is not the
score of the marginals of any diffusion of a data distribution, so ``log_likelihood`` on a
:class:`CFGDenoiser` returns the exact density of the distribution produced by the *guided
probability-flow ODE* (change of variables through that flow), which differs from the guided SDE
sampler's distribution and from p(x | c); only w ∈ {0, 1} gives the model's likelihood
(unconditional / conditional).

References:
    Classifier-Free Diffusion Guidance, Ho, Salimans, arXiv:2207.12598.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .denoiser import Denoiser

__all__ = ["CFGDenoiser"]


def _rows(c, batch: int, what: str):
    """Broadcast a condition to ``batch`` rows (a scalar or a leading dimension of 1 or ``batch``)."""
    if not isinstance(c, Tensor):
        c = torch.as_tensor(c)
    if c.dim() == 0:
        return c.expand(batch)
    if c.shape[0] == batch:
        return c
    if c.shape[0] == 1:
        return c.expand(batch, *c.shape[1:])
    raise ValueError(f"{what} has {c.shape[0]} rows but the batch has {batch}; give one row per "
                     f"sample, a single row, or a scalar")


class _GuidedNet(torch.nn.Module):
    """``net(x, label) -> ε̃``: the batched conditional/unconditional call and the combination (CFG)."""

    def __init__(self, net, scale, cond, uncond, cond_key: str | None):
        super().__init__()
        self.inner = net
        self.scale = scale
        self.cond = cond
        self.uncond = uncond
        self.cond_key = cond_key
        self.rows = 0

    def _call(self, x, label, c):
        c = c.to(x.device) if isinstance(c, Tensor) else c
        if self.cond_key is None:
            return self.inner(x, label, c)
        return self.inner(x, label, **{self.cond_key: c})

    def forward(self, x: Tensor, label: Tensor) -> Tensor:
        batch = x.shape[0]
        c = _rows(self.cond, batch, "cond")
        w = self.scale
        if not isinstance(w, Tensor) and w in (0, 1):  # only one branch is needed
            self.rows += batch
            return self._call(x, label, c if w == 1 else _rows(self.uncond, batch, "uncond"))
        u = _rows(self.uncond, batch, "uncond")
        if c.dtype != u.dtype or c.shape[1:] != u.shape[1:]:
            raise ValueError(f"cond and uncond must have the same dtype and row shape, got "
                             f"{c.dtype} {tuple(c.shape[1:])} and {u.dtype} {tuple(u.shape[1:])}")
        out = self._call(torch.cat([x, x]), torch.cat([label, label]), torch.cat([c, u]))
        self.rows += 2 * batch
        if not isinstance(out, Tensor) or out.shape[0] != 2 * batch:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"the conditional network returned {got} for a batch of {2 * batch} rows")
        out_c, out_u = out[:batch], out[batch:]
        if isinstance(w, Tensor):
            w = w.to(device=out.device, dtype=out.dtype).reshape(-1, *([1] * (out.dim() - 1)))
        return out_u + w * (out_c - out_u)


class CFGDenoiser(Denoiser):
    r"""A :class:`~diffsolve.Denoiser` applying classifier-free guidance to a conditional network.

    Args:
        denoiser_or_net: a :class:`~diffsolve.Denoiser` whose network takes a condition (schedule,
            prediction type, time label, dtype and shape are taken from it), or a bare network
            ``net(x, label, cond)`` (then give ``schedule`` and ``prediction``).
        scale: guidance scale w (float, or a (B,) tensor for one scale per sample); see (CFG).
        cond: the condition: a scalar, or a tensor with one row per sample (B, ...) or a single row
            (1, ...), e.g. (B,) integer class labels.
        uncond: the null condition, same conventions; default ``net.null_class`` when the network
            defines it (the bundled class-conditional models do).
        cond_key: pass the condition as this keyword (e.g. ``"class_labels"``) instead of as the
            third positional argument.
        schedule, prediction, time_label, shape: for a bare network (as for ``Denoiser``).

    Attributes:
        nfe: batched network calls (one per evaluation, like an unguided denoiser).
        rows: network rows evaluated (2 per sample per call for guided evaluations).
    """

    def __init__(self, denoiser_or_net, scale, cond, uncond=None, *, cond_key: str | None = None,
                 schedule=None, prediction: str | None = None, time_label="default", shape=None):
        if isinstance(denoiser_or_net, Denoiser):
            base = denoiser_or_net
            if isinstance(base.net, _GuidedNet):
                raise TypeError("this denoiser is already guided; wrap the unguided denoiser instead")
            net, schedule, prediction = base.net, base.schedule, base.prediction
            time_label, net_dtype = base.time_label, base.net_dtype
            shape = base.shape if shape is None else shape
            self_meta = getattr(base, "metadata", None)
        else:
            net, net_dtype, self_meta = denoiser_or_net, None, None
            if schedule is None or prediction is None:
                raise TypeError("with a bare network give schedule= and prediction= (or pass a Denoiser)")
            if isinstance(net, torch.nn.Module):
                net_dtype = next((p.dtype for p in net.parameters() if p.is_floating_point()), None)
        if not callable(net):
            raise TypeError(f"the network must be callable, got {type(net).__name__}")
        if uncond is None:
            uncond = getattr(net, "null_class", None)
            if uncond is None:
                raise ValueError("give uncond= (the null condition): this network defines no null_class")
        if isinstance(scale, Tensor):
            scale = scale.detach()
            if scale.dim() > 1:
                raise ValueError(f"scale must be a float or a (B,) tensor, got shape {tuple(scale.shape)}")
        elif not isinstance(scale, (int, float)):
            raise TypeError(f"scale must be a float or a (B,) tensor, got {type(scale).__name__}")
        cond = cond if isinstance(cond, Tensor) else torch.as_tensor(cond)
        uncond = uncond if isinstance(uncond, Tensor) else torch.as_tensor(uncond)
        guided = _GuidedNet(net, scale, cond, uncond, cond_key)
        super().__init__(guided, schedule, prediction, time_label=time_label, net_dtype=net_dtype, shape=shape)
        if self_meta is not None:
            self.metadata = self_meta

    @property
    def rows(self) -> int:
        """Network rows evaluated so far (a guided evaluation of B samples is 2B rows)."""
        return self.net.rows

    @property
    def scale(self):
        return self.net.scale

    def extra_repr(self) -> str:
        return super().extra_repr() + f", scale={self.net.scale!r}"
