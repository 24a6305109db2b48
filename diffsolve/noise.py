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

__all__ = ["NoiseSource", "parse_seeds"]


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
                raise ValueError(f"got {len(seeds)} seeds for a batch of {self.batch}; give one seed per sample")
            self._gens = [torch.Generator(self.device).manual_seed(s) for s in seeds]
            self._gen = None
        else:
            self._gens = None
            self._gen = generator  # the default one is created at the first draw (deterministic runs never draw)
        self.seeds = seeds

    def randn(self) -> Tensor:
        """One standard normal draw for the whole batch, float64 precision where requested."""
        self.draws += 1
        if self._gens is None:
            if self._gen is None:
                self._gen = torch.Generator(self.device).manual_seed(0)
            return torch.randn(self.batch, *self.event_shape, generator=self._gen,
                               device=self._gen.device, dtype=self.dtype).to(self.device)
        return torch.stack([torch.randn(self.event_shape, generator=g, device=self.device, dtype=self.dtype)
                            for g in self._gens])


def parse_seeds(spec) -> list[int]:
    """Seeds from an int, a sequence, or an EDM-style string such as ``"0-63"`` or ``"1,5,10-12"``."""
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
