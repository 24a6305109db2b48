r"""Classifier-free guidance as a denoiser that wraps a denoiser (azula's design), so it composes
with every solver, grid, noise level and with ``log_likelihood``.

A conditional network ``net(x, label, cond)`` (or ``net(x, label, **conditions)`` when the
condition is a dict of keyword arguments, e.g. ``encoder_hidden_states``, ``pooled_projections``,
``added_cond_kwargs``) is evaluated with the condition c and with the null condition ∅ in ONE
batched call (rows [x; x], every per-row tensor of the conditions as [c; ∅]); the guided output is

    ε̃ = ε̂(x, t, ∅) + w (ε̂(x, t, c) − ε̂(x, t, ∅))                                        (CFG)

with guidance scale w (w = 0: unconditional, w = 1: conditional, w > 1: guided; Ho & Salimans
write (1 + w')ε̂_c − w'ε̂_∅, i.e. w' = w − 1). The combination is applied to the network's own
output, whatever its prediction type: every prediction type is y = A_t x + B_t x̂0 at fixed
(x, t) (docs/math.md (8.1), :mod:`diffsolve.denoiser`; the guided prediction is (8.5)) and the
weights (1 − w, w) sum to one, so guiding ε̂, x̂0, v or the score gives exactly the same x̂0 —
guidance "in ε" and "in x0" are the same thing.

Cost: ``nfe`` counts evaluations (one batched call = 1 NFE, as for an unguided model); the
attribute ``rows`` counts evaluated rows (2 per sample per call for 0 < w ≠ 1, one when w ∈ {0, 1},
where the unneeded branch is skipped). When the two conditions cannot share one call (keyword
conditions whose tensors differ in dtype or in shape beyond the batch dimension, e.g. prompt
embeddings of different lengths, or non-tensor entries that differ), the two branches are two
network calls within the one evaluation; ``calls`` counts network calls.

Thresholding: a threshold of the wrapped denoiser (:mod:`diffsolve.thresholding`) is kept and acts
on the guided x̂0, as a diffusers pipeline that guides before its scheduler thresholds.

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

import math
import numbers

import torch
from torch import Tensor

from .denoiser import Denoiser, calling_dtype, take_rows

__all__ = ["CFGDenoiser"]


def _is_int(t: Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


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
    hint = ("; a condition without a batch dimension (e.g. FLUX's img_ids) belongs to the network's fixed "
            "conditions (from_diffusers(..., conditions=...))" if "[" in what else "")
    raise ValueError(f"{what} has {c.shape[0]} rows but the batch has {batch}; give one row per "
                     f"sample, a single row, or a scalar{hint} (tune_steps and tune_solver draw their own "
                     f"batch of start points: tune with a single row or a scalar)")


def _keyword_rows(c, batch: int, what: str):
    """Every tensor of a keyword condition (nested dicts allowed) broadcast to ``batch`` rows."""
    if isinstance(c, dict):
        return {k: _keyword_rows(v, batch, f"{what}[{k!r}]") for k, v in c.items()}
    return _rows(c, batch, what) if isinstance(c, Tensor) else c


def _check_keys(c: dict, u: dict, what: str = "cond"):
    if set(c) != set(u):
        only_c, only_u = sorted(set(c) - set(u)), sorted(set(u) - set(c))
        raise ValueError(f"cond and uncond must give the same keywords; {what} has {only_c or 'nothing'} "
                         f"that uncond lacks and uncond has {only_u or 'nothing'} that cond lacks")
    for k in c:
        if isinstance(c[k], dict) != isinstance(u[k], dict):
            raise ValueError(f"{what}[{k!r}] is a dict in one of cond/uncond and not in the other")
        if isinstance(c[k], dict):
            _check_keys(c[k], u[k], f"{what}[{k!r}]")


def _batchable(c, u) -> bool:
    """Whether the two (row-broadcast) conditions can be stacked into one call."""
    if isinstance(c, dict):
        return all(_batchable(c[k], u[k]) for k in c)
    if isinstance(c, Tensor) or isinstance(u, Tensor):
        return (isinstance(c, Tensor) and isinstance(u, Tensor) and c.dtype == u.dtype
                and c.shape[1:] == u.shape[1:])
    return c is u or (type(c) is type(u) and _equal(c, u))


def _equal(a, b) -> bool:
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 -- objects without a truth value are not equal here
        return False


def _stack(c, u):
    if isinstance(c, dict):
        return {k: _stack(c[k], u[k]) for k in c}
    return torch.cat([c, u]) if isinstance(c, Tensor) else c


def _to(c, device):
    if isinstance(c, dict):
        return {k: _to(v, device) for k, v in c.items()}
    return c.to(device) if isinstance(c, Tensor) else c


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
        self.calls = 0
        self.run_rows = None  # (index, batch) of the rows x holds (Denoiser.at_rows)

    @property
    def calling_dtype(self) -> torch.dtype | None:
        """The dtype the wrapped network asks to be called in (:attr:`diffsolve.adapters.EDMPrecond.calling_dtype`
        through an adapter), else None: the guided network runs as the unguided one does."""
        return calling_dtype(self.inner)

    def _call(self, x, label, c, twice: bool = False):
        """The network on x (both branches stacked when ``twice``); a network holding per-sample conditions
        of its own (an adapter's, with ``run_rows``) is told which samples x's rows are."""
        self.calls += 1
        sync = hasattr(self.inner, "run_rows")
        if sync:
            n = x.shape[0] // (2 if twice else 1)
            index, batch = self.run_rows or (torch.arange(n), n)
            outer, self.inner.run_rows = self.inner.run_rows, (index.repeat(2) if twice else index, batch)
        try:
            if isinstance(c, dict):
                return self.inner(x, label, **_to(c, x.device))
            c = c.to(x.device) if isinstance(c, Tensor) else c
            if self.cond_key is None:
                return self.inner(x, label, c)
            return self.inner(x, label, **{self.cond_key: c})
        finally:
            if sync:
                self.inner.run_rows = outer

    def _branch(self, which, batch: int):
        c = take_rows(self.cond if which == "cond" else self.uncond, self.run_rows)
        return _keyword_rows(c, batch, which) if isinstance(c, dict) else _rows(c, batch, which)

    def forward(self, x: Tensor, label: Tensor) -> Tensor:
        batch = x.shape[0]
        c = self._branch("cond", batch)
        w = self.scale
        if not isinstance(w, Tensor) and w in (0, 1):  # only one branch is needed
            self.rows += batch
            return self._call(x, label, c if w == 1 else self._branch("uncond", batch))
        u = self._branch("uncond", batch)
        if isinstance(c, dict):
            out_c, out_u = self._keyword_branches(x, label, c, u)
        else:
            if c.dtype != u.dtype or c.shape[1:] != u.shape[1:]:
                raise ValueError(f"cond and uncond must have the same dtype and row shape, got "
                                 f"{c.dtype} {tuple(c.shape[1:])} and {u.dtype} {tuple(u.shape[1:])}")
            out = self._call(torch.cat([x, x]), torch.cat([label, label]), torch.cat([c, u]), twice=True)
            self._check_rows(out, 2 * batch)
            out_c, out_u = out[:batch], out[batch:]
        self.rows += 2 * batch
        if isinstance(w, Tensor):
            w = take_rows(w, self.run_rows)
            if w.dim() == 1 and w.shape[0] not in (1, batch):
                raise ValueError(f"scale has {w.shape[0]} entries but the batch has {batch}; give one scale per "
                                 f"sample, or a float")
            w = w.to(device=out_c.device, dtype=torch.float64).reshape(-1, *([1] * (out_c.dim() - 1)))
        # combined in at least float32 (a half-precision network's outputs upcast, as the Denoiser upcasts them
        # after): in bfloat16 a scale of 7.3 was 7.3125 and the difference of the two branches rounded
        wide = torch.promote_types(out_c.dtype, torch.float32)
        out_c, out_u = out_c.to(wide), out_u.to(wide)
        return out_u + (w.to(wide) if isinstance(w, Tensor) else w) * (out_c - out_u)

    def _keyword_branches(self, x, label, c: dict, u: dict):
        batch = x.shape[0]
        if _batchable(c, u):
            out = self._call(torch.cat([x, x]), torch.cat([label, label]), _stack(c, u), twice=True)
            self._check_rows(out, 2 * batch)
            return out[:batch], out[batch:]
        return self._call(x, label, c), self._call(x, label, u)

    @staticmethod
    def _check_rows(out, rows: int):
        if not isinstance(out, Tensor) or out.shape[0] != rows:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"the conditional network returned {got} for a batch of {rows} rows")


class CFGDenoiser(Denoiser):
    r"""A :class:`~diffsolve.Denoiser` applying classifier-free guidance to a conditional network.

    Args:
        denoiser_or_net: a :class:`~diffsolve.Denoiser` whose network takes a condition (schedule,
            prediction type, time label, dtype and shape are taken from it), or a bare network
            ``net(x, label, cond)`` (then give ``schedule`` and ``prediction``).
        scale: guidance scale w (float, or a (B,) tensor for one scale per sample); see (CFG).
        cond: the condition: a scalar, or a tensor with one row per sample (B, ...) or a single row
            (1, ...), e.g. (B,) integer class labels; or a dict of keyword conditions
            (``{"encoder_hidden_states": E, "pooled_projections": P}``, nested dicts such as
            ``added_cond_kwargs`` allowed), passed to the network as keywords: each tensor in it
            has one row per sample, a single row, or is a scalar; other entries (None, numbers)
            are passed as they are.
        uncond: the null condition, same conventions (a dict with the same keys for a dict
            ``cond``); default ``net.null_class`` when the network defines it (the bundled
            class-conditional models do).
        cond_key: pass a tensor condition as this keyword (e.g. ``"class_labels"``) instead of as
            the third positional argument (not with a dict condition).
        schedule, prediction, time_label, shape, threshold: for a bare network (as for
            ``Denoiser``); a wrapped denoiser's own are kept.

    Attributes:
        nfe: evaluations (one per evaluation, like an unguided denoiser).
        rows: network rows evaluated (2 per sample per call for guided evaluations).
        calls: network calls (one per evaluation, two where the conditions cannot be batched).
    """

    _returned = ("the guided output x̂_u + w (x̂_c − x̂_u) (the network's two outputs, or their combination at a "
                 "scale w large enough to overflow the network's dtype) was")

    def __init__(self, denoiser_or_net, scale, cond, uncond=None, *, cond_key: str | None = None,
                 schedule=None, prediction: str | None = None, time_label="default", shape=None,
                 threshold=None):
        if isinstance(denoiser_or_net, Denoiser):
            base = denoiser_or_net
            if isinstance(base.net, _GuidedNet):
                raise TypeError("this denoiser is already guided; wrap the unguided denoiser instead")
            net, schedule, prediction = base.net, base.schedule, base.prediction
            # as declared, else None: the guided denoiser then reads its module's weights when used (net.double())
            # the label as given (a name follows a later change of schedule, as on the base)
            time_label, net_dtype = base._label_spec, base._declared_dtype
            shape = base.shape if shape is None else shape
            threshold = base.threshold if threshold is None else threshold
            self_meta = getattr(base, "metadata", None)
        else:
            net, net_dtype, self_meta = denoiser_or_net, None, None
            if schedule is None or prediction is None:
                raise TypeError("with a bare network give schedule= and prediction= (or pass a Denoiser)")
        if not callable(net):
            raise TypeError(f"the network must be callable, got {type(net).__name__}")
        if cond is None:
            raise ValueError("give cond= (the condition to guide towards: class labels, one per sample or one for "
                             "all, or a dict of keyword conditions)")
        null_label = uncond is None and not isinstance(cond, dict)  # the network's null class: cond are its labels
        if uncond is None:
            uncond = None if isinstance(cond, dict) else getattr(net, "null_class", None)
            if uncond is None:
                raise ValueError("give uncond= (the null condition): this network defines no null_class")
        if isinstance(scale, Tensor):
            scale = scale.detach()
            if scale.dim() > 1:
                raise ValueError(f"scale must be a float or a (B,) tensor, got shape {tuple(scale.shape)}")
            if not bool(torch.isfinite(scale).all()):
                raise ValueError("scale has NaN or Inf entries; give finite guidance scales")
        elif not isinstance(scale, numbers.Real) or isinstance(scale, bool):  # numpy scalars too
            raise TypeError(f"scale must be a float or a (B,) tensor, got {type(scale).__name__}")
        elif not math.isfinite(scale):
            raise ValueError(f"scale must be finite, got {scale!r}")
        else:
            scale = float(scale)
        if isinstance(cond, dict) or isinstance(uncond, dict):
            if not (isinstance(cond, dict) and isinstance(uncond, dict)):
                raise TypeError("give cond and uncond both as dicts of keyword conditions, or both as tensors")
            if cond_key is not None:
                raise TypeError("a dict condition is passed as keywords; drop cond_key")
            _check_keys(cond, uncond)
        else:
            cond = cond if isinstance(cond, Tensor) else torch.as_tensor(cond)
            uncond = uncond if isinstance(uncond, Tensor) else torch.as_tensor(uncond)
            if null_label:  # class labels beside the network's null class: integers, in the labels' own dtype
                if cond.is_floating_point() or cond.is_complex() or cond.dtype == torch.bool:
                    raise TypeError(f"class labels must be integers (this network's null class is {uncond.item()!r}), "
                                    f"got {cond.dtype}: cast them, e.g. labels.long()")
                uncond = uncond.to(cond.dtype)
            elif _is_int(cond) and _is_int(uncond) and uncond.dtype != cond.dtype:  # uncond=10 beside int32 labels
                uncond = uncond.to(cond.dtype)
        guided = _GuidedNet(net, scale, cond, uncond, cond_key)
        super().__init__(guided, schedule, prediction, time_label=time_label, net_dtype=net_dtype, shape=shape,
                         threshold=threshold)
        if self_meta is not None:
            self.metadata = self_meta

    def reset_nfe(self) -> int:
        """Set ``nfe``, ``rows`` and ``calls`` back to 0; returns the evaluations counted before."""
        self.net.rows = self.net.calls = 0
        return super().reset_nfe()

    @property
    def rows(self) -> int:
        """Network rows evaluated so far (a guided evaluation of B samples is 2B rows)."""
        return self.net.rows

    @property
    def calls(self) -> int:
        """Network calls so far (one per evaluation; two where the conditions cannot be batched)."""
        return self.net.calls

    @property
    def scale(self):
        return self.net.scale

    def extra_repr(self) -> str:
        return super().extra_repr() + f", scale={self.net.scale!r}"
