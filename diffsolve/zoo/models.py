r"""Network definitions of the bundled models.

Every network here has the call signature diffsolve expects, ``net(x, label, cond=None)``:

- ``x``: (B, *shape) state in the network's dtype (float32);
- ``label``: (B,) the time input, here the half log-SNR λ_t = log(α_t/σ_t) (``time_label="log_snr"``),
  embedded by fixed Fourier features, so the network does not depend on how t is parametrised;
- ``cond``: optional (B,) integer class labels; ``None`` or the null class ``num_classes`` means
  unconditional (the networks are trained with label dropout, so classifier-free guidance works).

They return a prediction of the same shape as ``x``, of the type stored in the model's metadata
(``"eps"`` for digits, ``"v"`` for two_moons).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["LogSNREmbedding", "ResidualMLP", "ARCHITECTURES", "train_step"]


class LogSNREmbedding(nn.Module):
    """Fixed Fourier features of the half log-SNR λ, followed by a small MLP.

    Features: λ/8 and sin/cos(ω_k λ) for ``n_freq`` frequencies ω_k log-spaced in [1/16, 8].
    """

    def __init__(self, n_freq: int = 16, dim: int = 128):
        super().__init__()
        self.register_buffer("freqs", torch.logspace(math.log10(1 / 16), math.log10(8.0), n_freq),
                             persistent=False)
        self.mlp = nn.Sequential(nn.Linear(2 * n_freq + 1, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, lam: Tensor) -> Tensor:
        arg = lam[:, None] * self.freqs.to(lam.dtype)
        return self.mlp(torch.cat([lam[:, None] / 8.0, arg.sin(), arg.cos()], dim=1))


class _Block(nn.Module):
    """Pre-norm residual block with FiLM conditioning: h + W₂ SiLU(W₁ SiLU(LN(h)(1+a) + b))."""

    def __init__(self, width: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.film = nn.Linear(emb_dim, 2 * width)
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)
        self.drop = nn.Dropout(dropout)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        a, b = self.film(emb).chunk(2, dim=1)
        z = torch.nn.functional.silu(self.norm(h) * (1 + a) + b)
        z = self.drop(torch.nn.functional.silu(self.fc1(z)))
        return h + self.fc2(z)


class ResidualMLP(nn.Module):
    """Network on flattened samples: Linear → ``depth`` FiLM residual blocks → LayerNorm → Linear.

    Args:
        shape: shape of one sample, e.g. ``(1, 8, 8)`` or ``(2,)``.
        width: hidden width; depth: number of residual blocks; emb_dim: conditioning width.
        num_classes: number of classes for conditioning (0: unconditional network). The null
            class is index ``num_classes``.
        n_freq: Fourier frequencies of the log-SNR embedding; dropout: inside each block (training).
    """

    def __init__(self, shape, width: int = 256, depth: int = 4, emb_dim: int = 128,
                 num_classes: int = 0, n_freq: int = 16, dropout: float = 0.0):
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        self.num_classes = int(num_classes)
        self.config = dict(shape=list(self.shape), width=width, depth=depth, emb_dim=emb_dim,
                           num_classes=num_classes, n_freq=n_freq, dropout=dropout)
        d = math.prod(self.shape)
        self.time = LogSNREmbedding(n_freq, emb_dim)
        self.label = nn.Embedding(num_classes + 1, emb_dim) if num_classes > 0 else None
        self.inp = nn.Linear(d, width)
        self.blocks = nn.ModuleList(_Block(width, emb_dim, dropout) for _ in range(depth))
        self.out_norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, d)

    @property
    def null_class(self) -> int | None:
        """The label meaning "no class" (for classifier-free guidance), or None if unconditional."""
        return self.num_classes if self.num_classes > 0 else None

    def forward(self, x: Tensor, label: Tensor, cond: Tensor | None = None) -> Tensor:
        batch = x.shape[0]
        emb = self.time(label.to(x.dtype).reshape(-1).expand(batch))
        if self.label is not None:
            if cond is None:
                cond = torch.full((batch,), self.num_classes, dtype=torch.long, device=x.device)
            cond = torch.as_tensor(cond, device=x.device).long().reshape(-1).expand(batch)
            if bool(((cond < 0) | (cond > self.num_classes)).any()):
                raise ValueError(f"class labels must lie in 0..{self.num_classes} "
                                 f"({self.num_classes} = no class), got {cond.tolist()}")
            emb = emb + self.label(cond)
        elif cond is not None:
            raise ValueError("this network is unconditional; it takes no class labels")
        emb = torch.nn.functional.silu(emb)
        h = self.inp(x.reshape(batch, -1))
        for block in self.blocks:
            h = block(h, emb)
        return self.out(self.out_norm(h)).reshape(x.shape)


ARCHITECTURES = {"ResidualMLP": ResidualMLP}


def train_step(loss: Tensor, net: nn.Module, ema: nn.Module, opt, lr_schedule, step: int, ema_decay: float):
    """One optimiser step of the bundled models' training scripts: backward, gradient clipping at
    norm 1, optimiser and learning-rate step, then the EMA update with warm-up
    d = min(ema_decay, (1 + step)/(10 + step))."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    opt.step()
    lr_schedule.step()
    with torch.no_grad():
        d = min(ema_decay, (1 + step) / (10 + step))
        for pe, pn in zip(ema.parameters(), net.parameters()):
            pe.mul_(d).add_(pn, alpha=1 - d)
