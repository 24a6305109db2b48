"""Noise sources with per-sample reproducibility.

With ``seeds``, sample i draws every random number (its starting point x_T and each step's noise)
from its own ``torch.Generator`` seeded with ``seeds[i]``, so it is the same whether it is drawn
alone or inside a batch of any size. With a single ``generator`` the whole batch is drawn at once
(faster, but sample i then depends on the batch size). With neither, a fresh generator seeded 0.
"""
from __future__ import annotations

import re
from typing import Sequence

import torch
from torch import Tensor

from ._text import count

__all__ = ["NoiseSource", "ImpulseNoise", "parse_seeds"]


class NoiseSource:
    """Draws standard normal tensors of shape ``(batch, *event_shape)``.

    Args:
        batch: number of samples.
        event_shape: shape of one sample.
        seeds: optional sequence of ``batch`` integers, one independent stream per sample.
        generator: optional ``torch.Generator`` shared by the whole batch (exclusive with seeds).
        device, dtype: of the tensors returned.
    """

    def __init__(self, batch: int, event_shape, *, seeds: Sequence[int] | None = None,
                 generator: torch.Generator | None = None, device=None, dtype=torch.float64):
        if seeds is not None and generator is not None:
            raise ValueError("give either seeds (one per sample) or a generator, not both")
        self.batch, self.event_shape = int(batch), tuple(event_shape)
        self.device, self.dtype = torch.device(device or "cpu"), dtype
        self.draws = 0
        if seeds is not None:
            seeds = [int(s) for s in seeds]
            if len(seeds) != self.batch:
                raise ValueError(f"got {count(len(seeds), 'seed')} for a batch of {self.batch}; give one seed per "
                                 f"sample")
            self._gens = [torch.Generator(self.device).manual_seed(s) for s in seeds]
            self._gen = None
        else:
            self._gens = None
            self._gen = generator  # the default one is created at the first draw (deterministic runs never draw)
        self.seeds = seeds

    def randn(self, rows: Sequence[int] | None = None) -> Tensor:
        """One standard normal draw for the whole batch, float64 precision where requested.

        With ``rows`` (sample indices), a draw for those samples only, shape (len(rows), *event_shape):
        with per-sample seeds only their streams advance, so what sample i gets depends on how often
        *it* drew, never on the other samples (adaptive per-sample loops draw for the active rows).
        """
        self.draws += 1
        if self._gens is None:
            if self._gen is None:
                self._gen = torch.Generator(self.device).manual_seed(0)
            n = self.batch if rows is None else len(rows)
            return torch.randn(n, *self.event_shape, generator=self._gen,
                               device=self._gen.device, dtype=self.dtype).to(self.device)
        gens = self._gens if rows is None else [self._gens[int(i)] for i in rows]
        return torch.stack([torch.randn(self.event_shape, generator=g, device=self.device, dtype=self.dtype)
                            for g in gens])


class ImpulseNoise:
    """A noise source for the impulse-response trick: draw j returns zeros of shape
    ``(offset + draws, 1)`` with a one in row ``offset + j``.

    A sampler that is affine in its state and its noise (any solver on an affine denoiser, e.g. a
    Gaussian model) maps (x_T, z_0, …, z_{n−1}) to c + A x_T + Σ_j B_j z_j; run on a batch whose row
    0 starts at x_T = 0 and row 1 at x_T = 1 (the other rows at 0), row 0 gives c, row 1 gives
    c + A and row offset + j gives c + B_j: the exact law of the output from ``draws + offset``
    deterministic rows (used by the weak-order measurements).
    """

    def __init__(self, draws: int, offset: int = 2, dtype=torch.float64):
        self.draws, self.offset, self.dtype, self.j = int(draws), int(offset), dtype, 0

    def randn(self) -> Tensor:
        if self.j >= self.draws:
            raise RuntimeError(f"ImpulseNoise was built for {self.draws} draws")
        z = torch.zeros(self.offset + self.draws, 1, dtype=self.dtype)
        z[self.offset + self.j] = 1.0
        self.j += 1
        return z


def parse_seeds(spec, distinct: bool = False) -> list[int]:
    """Seeds from an int, a sequence, or an EDM-style string such as ``"0-63"`` or ``"1,5,10-12"``.

    ``distinct``: refuse a seed given twice (where each seed defines one sample, a repeat only
    duplicates that sample)."""
    seeds = _parse_seeds(spec)
    if distinct and len(set(seeds)) < len(seeds):
        seen, repeated = set(), {}
        for s in seeds:
            if s in seen:
                repeated[s] = None
            seen.add(s)
        where = f" in {spec!r}" if isinstance(spec, str) else ""
        raise ValueError(f"seed{'s' if len(repeated) > 1 else ''} {', '.join(map(str, repeated))} "
                         f"{'are' if len(repeated) > 1 else 'is'} repeated{where}: each seed defines one sample, "
                         f"so a repeat only duplicates it; give each seed once, e.g. 0-63")
    return seeds


def _parse_seeds(spec) -> list[int]:
    if isinstance(spec, int):
        return [spec]
    if isinstance(spec, str):
        out = []
        for part in spec.split(","):
            part = part.strip()
            m = re.fullmatch(r"(\d+)-(\d+)", part)
            if m:
                lo, hi = int(m.group(1)), int(m.group(2))
                if hi < lo:
                    raise ValueError(f"bad seed range {part!r}: end before start")
                out.extend(range(lo, hi + 1))
            elif re.fullmatch(r"\d+", part):
                out.append(int(part))
            else:
                raise ValueError(f"bad seed specification {part!r}; use e.g. '0-63' or '1,5,10-12'")
        return out
    return [int(s) for s in spec]
