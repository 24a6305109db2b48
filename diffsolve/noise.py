"""Noise sources with per-sample reproducibility.

With ``seeds``, sample i draws every random number (its starting point x_T and each step's noise)
from its own ``torch.Generator`` seeded with ``seeds[i]``, so it is the same whether it is drawn
alone or inside a batch of any size. With a single ``generator`` the whole batch is drawn at once
(faster, but sample i then depends on the batch size). With neither, a fresh generator seeded 0,
or torch's own generator where the caller asks it (``global_rng``: the diffusers scheduler without one).
"""
from __future__ import annotations

import bisect
import numbers
import re
import sys
from collections.abc import Sequence

import torch
from torch import Tensor

from ._text import count
from .checks import check_batch_memory, check_device, check_int, check_net_dtype, check_shape, check_seed, is_integer

__all__ = ["NoiseSource", "ImpulseNoise", "parse_seeds", "seed_list", "Seeds"]


class NoiseSource:
    """Draws standard normal tensors of shape ``(batch, *event_shape)``.

    Args:
        batch: number of samples.
        event_shape: shape of one sample.
        seeds: optional ``batch`` seeds (see :func:`parse_seeds`), one independent stream per sample.
        generator: optional ``torch.Generator`` shared by the whole batch (exclusive with seeds), or a
            list of ``batch`` generators, one per sample (as diffusers' pipelines pass them: row i is
            drawn from generator i, on that generator's device; a list of one is the batch's generator,
            as diffusers' ``randn_tensor`` reads it). With neither, a generator seeded 0 (a run is
            deterministic), or with ``global_rng`` torch's own generator of ``device``, which
            ``torch.manual_seed`` seeds (diffusers' schedulers draw from it when the pipeline passes no
            generator).
        device, dtype: of the tensors returned.
        draw_dtype: the dtype a generator, or a list of them, draws in (default float64, then rounded to ``dtype``:
            a seed gives the same noise in either state dtype); :class:`~diffsolve.DiffsolveScheduler`
            draws in the model's dtype, as diffusers' schedulers do, so that the same generator gives
            the same noise as theirs. Per-sample seeds always draw in float64.
        skip_start: the first draw of each stream is the start point x_T's, which the caller was given
            (``sample(x=...)``): it is drawn and dropped before the first draw returned, so that a run's noise
            is the same whether x_T was drawn from the stream or passed in (and never x_T's own draw).
    """

    def __init__(self, batch: int, event_shape, *, seeds: Sequence[int] | None = None,
                 generator: torch.Generator | Sequence[torch.Generator] | None = None, device=None,
                 dtype=torch.float64, draw_dtype: torch.dtype = torch.float64, global_rng: bool = False,
                 skip_start: bool = False):
        if seeds is not None and generator is not None:
            raise ValueError("give either seeds (one per sample) or a generator, not both")
        self.batch, self.event_shape = check_int("batch", batch), check_shape("event_shape", event_shape)
        if isinstance(generator, (list, tuple)) and len(generator) == 1 and self.batch != 1:
            generator = generator[0]  # one generator for the batch, as diffusers' randn_tensor reads a list of one
        row_gens = isinstance(generator, (list, tuple))
        if row_gens:
            bad = [type(g).__name__ for g in generator if not isinstance(g, torch.Generator)]
            if bad:
                raise TypeError(f"a list of generators must hold torch.Generator objects, got {bad[0]}")
            if len(generator) != self.batch:
                raise ValueError(f"got a list of {len(generator)} generators for a batch of {self.batch}; give one "
                                 f"generator per sample (or one torch.Generator for the whole batch)")
        elif generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator (e.g. torch.Generator().manual_seed(0)), got "
                            f"{type(generator).__name__}; for per-sample seeds use seeds=[...]")
        self.device = check_device(device, allow_meta=True) or torch.device("cpu")
        self.dtype = check_net_dtype(dtype, "dtype", allow_none=False)
        self.draw_dtype = check_net_dtype(draw_dtype, "draw_dtype", allow_none=False)
        self.draws = 0
        if seeds is not None:
            seeds = parse_seeds(seeds)  # a Seeds sequence (from parse_seeds) was checked when it was made
            if len(seeds) != self.batch:
                raise ValueError(f"got {count(len(seeds), 'seed')} for a batch of {self.batch}; give one seed per "
                                 f"sample")
            if self.device.type == "meta":
                raise ValueError("per-sample seeds draw on a device with data; the meta device has none")
        check_batch_memory(self.batch, self.event_shape, self.dtype, self.device, generators=seeds is not None)
        self._row_dtype = torch.float64  # per-sample seeds draw in float64
        if seeds is not None:
            self._gens = [torch.Generator(self.device).manual_seed(s) for s in seeds]
            self._gen = None
        elif row_gens:
            self._gens, self._gen, self._row_dtype = list(generator), None, self.draw_dtype
        else:
            self._gens = None
            self._gen = generator  # the default one is created at the first draw (deterministic runs never draw)
        self.seeds = seeds
        self.global_rng = bool(global_rng) and seeds is None and generator is None
        # the streams whose x_T draw is still to be dropped (skip_start): every row, or the batch's generator
        self._unskipped = set(range(self.batch)) if skip_start and self._gens is not None else None
        self._skip_batch = bool(skip_start) and self._gens is None

    def randn(self, rows: Sequence[int] | None = None, *, dtype: torch.dtype | None = None) -> Tensor:
        """One standard normal draw for the whole batch, in ``dtype`` (default the source's; drawn in
        ``draw_dtype``, float64 for per-sample seeds, then rounded).

        With ``rows`` (sample indices), a draw for those samples only, shape (len(rows), *event_shape):
        with per-sample seeds only their streams advance, so what sample i gets depends on how often
        *it* drew, never on the other samples (adaptive per-sample loops draw for the active rows).
        """
        self.draws += 1
        dtype = self.dtype if dtype is None else dtype
        # drawn in float64 (unless draw_dtype says otherwise) whatever the state's dtype, then rounded to it: a seed
        # gives the same noise, to rounding, in a float32 state as in a float64 one
        if self._gens is None:
            if self._skip_batch:  # x_T's draw, of the whole batch, as sample draws it
                self._skip_batch = False
                self._batch_draw(self.batch)
            z = self._batch_draw(self.batch if rows is None else len(rows))
            return z.to(device=self.device, dtype=dtype)
        rows = range(self.batch) if rows is None else [int(i) for i in rows]
        if self._unskipped:
            for i in [i for i in rows if i in self._unskipped]:  # x_T's draw of that row's own stream
                self._unskipped.discard(i)
                self._row_draw(self._gens[i])
        return torch.stack([self._row_draw(self._gens[i]) for i in rows]).to(device=self.device, dtype=dtype)

    def _batch_draw(self, n: int) -> Tensor:
        if self.global_rng:
            return torch.randn(n, *self.event_shape, device=self.device, dtype=self.draw_dtype)
        if self._gen is None:
            self._gen = torch.Generator(self.device).manual_seed(0)
        return torch.randn(n, *self.event_shape, generator=self._gen, device=self._gen.device, dtype=self.draw_dtype)

    def _row_draw(self, g: torch.Generator) -> Tensor:
        return torch.randn(self.event_shape, generator=g, device=g.device, dtype=self._row_dtype)


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


class Seeds(Sequence):
    """A lazy, checked sequence of seeds: what :func:`parse_seeds` returns.

    Made of parts, each a ``range`` or a tuple of ints, so ``"0-199999999"`` costs nothing until its
    seeds are used: ``len``, indexing (negative too), slicing (a ``Seeds`` again, still lazy),
    iteration, ``in`` and equality with lists, tuples and ranges work as for the list of its seeds.
    Every seed was checked (an integer in [0, 2⁶³)) when it was made; ``distinct`` says whether it
    was also checked for repeats.
    """

    __slots__ = ("_parts", "_ends", "distinct")

    def __init__(self, parts=(), distinct: bool = False):
        try:
            self._parts = tuple(p for p in parts if len(p))
        except OverflowError:  # a range longer than sys.maxsize
            raise ValueError("more than 2**63 seeds: give fewer (each seed is a sample)") from None
        ends, n = [], 0
        for p in self._parts:
            n += len(p)
            ends.append(n)
        if n > sys.maxsize:
            raise ValueError(f"{n} seeds are more than can be counted: give fewer (each seed is a sample)")
        self._ends = ends
        self.distinct = distinct

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self._slice(i)
        if not is_integer(i):
            raise TypeError(f"seed indices must be integers or slices, got {type(i).__name__}")
        n = len(self)
        j = i + n if i < 0 else i
        if not 0 <= j < n:
            raise IndexError(f"seed index {i} out of range for {n} seeds")
        k = bisect.bisect_right(self._ends, j)
        return self._parts[k][j - (self._ends[k - 1] if k else 0)]

    def _slice(self, sl: slice) -> "Seeds":
        idx = range(len(self))[sl]
        if len(self._parts) == 1:
            return Seeds((self._parts[0][sl],), self.distinct)
        if idx.step != 1:
            return Seeds((tuple(self[j] for j in idx),), self.distinct)
        parts, begin = [], 0
        for p, end in zip(self._parts, self._ends):
            lo, hi = max(idx.start - begin, 0), min(idx.stop - begin, len(p))
            if lo < hi:
                parts.append(p[lo:hi])
            begin = end
        return Seeds(parts, self.distinct)

    def __iter__(self):
        for p in self._parts:
            yield from p

    def __contains__(self, value) -> bool:
        return any(value in p for p in self._parts)

    def __eq__(self, other) -> bool:
        if not isinstance(other, (Seeds, list, tuple, range)):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other))

    __hash__ = None

    def tolist(self) -> list[int]:
        return list(self)

    @property
    def spec(self) -> str:
        """The compact text form: ``"0-63"``, ``"1,5,10-12"``."""
        out = []
        for p in self._parts:
            if isinstance(p, range) and p.step == 1 and len(p) > 1:
                out.append(f"{p.start}-{p[-1]}")
            else:
                out.extend(map(str, p))
        return ",".join(out)

    def __repr__(self) -> str:
        spec = self.spec
        return f"Seeds({spec if len(spec) <= 80 else spec[:77] + '...'!r})"


def parse_seeds(spec, distinct: bool = False) -> Seeds:
    """Seeds from an int, a sequence of ints (list, tuple, range, integer array or tensor) or an EDM-style
    string such as ``"0-63"`` or ``"1,5,10-12"``, as a lazy :class:`Seeds` sequence (a range of 10⁸
    seeds costs nothing until used). Every seed must be an integer (not a float, not a bool) in
    [0, 2⁶³).

    ``distinct``: refuse a seed given twice (where each seed defines one sample, a repeat only
    duplicates that sample); a range is distinct by construction, so only overlaps are looked for."""
    seeds = spec if isinstance(spec, Seeds) else _parse_seeds(spec)
    if distinct and not seeds.distinct:
        repeated = _repeats(seeds._parts)
        if repeated:
            where = f" in {spec!r}" if isinstance(spec, str) else ""
            many = len(repeated) > 1 or repeated[0][1] - repeated[0][0] > 1
            shown = ", ".join(str(a) if b - a == 1 else f"{a}-{b - 1}" for a, b in repeated[:10])
            raise ValueError(f"seed{'s' if many else ''} {shown}{', ...' if len(repeated) > 10 else ''} "
                             f"{'are' if many else 'is'} repeated{where}: each seed defines one sample, so a repeat "
                             f"only duplicates it; give each seed once, e.g. 0-63")
        seeds = Seeds(seeds._parts, distinct=True)
    return seeds


def seed_list(spec, name: str = "seeds", minimum: int = 0, first: int = 0) -> list[int]:
    """A number of seeds (``first``, ``first`` + 1, ...) or the seeds themselves (:func:`parse_seeds`), as a
    list of at least ``minimum`` distinct ints."""
    if is_integer(spec) or isinstance(spec, (bool, float)):
        return list(range(first, first + check_int(name, spec, minimum, " (a number of samples) or seeds ('0-63')")))
    seeds = list(parse_seeds(spec, distinct=True))
    if len(seeds) < minimum:
        raise ValueError(f"{name}: got {count(len(seeds), 'seed')}, need at least {minimum}")
    return seeds


def _repeats(parts) -> list[tuple[int, int]]:
    """The seeds that occur more than once, as sorted disjoint [a, b) intervals. Each part is distinct in
    itself when it is a range; intervals of consecutive seeds are swept, so a range costs O(1)."""
    if len(parts) == 1 and (isinstance(parts[0], range) or len(set(parts[0])) == len(parts[0])):
        return []  # one range, or one list without repeats (the common cases: no sort)
    spans = []
    for p in parts:
        if isinstance(p, range) and abs(p.step) == 1:
            spans.append((min(p[0], p[-1]), max(p[0], p[-1]) + 1))
        else:
            spans.extend((s, s + 1) for s in p)
    spans.sort()
    out, reach = [], -1
    for a, b in spans:
        if a < reach:
            lo, hi = a, min(b, reach)
            if out and lo <= out[-1][1]:
                out[-1] = (out[-1][0], max(out[-1][1], hi))
            else:
                out.append((lo, hi))
        reach = max(reach, b)
    return out


def _parse_seeds(spec) -> Seeds:
    if isinstance(spec, str):
        return _parse_text(spec)
    if isinstance(spec, range):
        if len(spec):
            for end in (spec[0], spec[-1]):
                check_seed(end, f" (in {spec!r})")
        return Seeds((spec,))
    if isinstance(spec, bool) or isinstance(spec, numbers.Number):
        return Seeds(((check_seed(spec),),))
    if isinstance(spec, (set, frozenset, dict, bytes, bytearray)) or not hasattr(spec, "__iter__"):
        unordered = " (unordered)" if isinstance(spec, (set, frozenset)) else ""
        raise TypeError(f"seeds must be an int, a list or range of ints, or a string such as '0-63' or "
                        f"'1,5,10-12'; got {type(spec).__name__}{unordered}")
    if isinstance(spec, Tensor) or type(spec).__module__ == "numpy":
        if spec.ndim > 1:
            raise ValueError(f"seeds must be one-dimensional, got an array of shape {tuple(spec.shape)}")
        spec = spec.tolist()
        spec = spec if isinstance(spec, list) else [spec]
    return Seeds((tuple(check_seed(s, f" at position {i}") for i, s in enumerate(spec)),))


def _parse_text(spec: str) -> Seeds:
    parts = []
    for part in spec.split(","):
        part = part.strip()
        m = re.fullmatch(r"([0-9]+)-([0-9]+)", part) or re.fullmatch(r"([0-9]+)", part)
        if not m:
            raise ValueError(f"bad seed specification {part!r}{f' in {spec!r}' if part != spec else ''}; use e.g. "
                             f"'0-63' or '1,5,10-12' (whole numbers >= 0)")
        digits = [g.lstrip("0") or "0" for g in m.groups()]  # (leading zeros are no part of the value)
        if any(len(g) > 19 for g in digits):  # beyond 2**63 (and int() of a huge string is slow)
            long = max(digits, key=len)
            raise ValueError(f"seed {long[:30]}{'...' if len(long) > 30 else ''} in {spec[:60]!r} is out of range: "
                             f"seeds are integers in [0, 2**63 - 1]")
        lo, hi = (check_seed(int(g), f" in {spec!r}") for g in (m.groups() * 2)[:2])
        if hi < lo:
            raise ValueError(f"bad seed range {part!r}: end before start; write it as {hi}-{lo}")
        parts.append(range(lo, hi + 1))
    return Seeds(parts)
