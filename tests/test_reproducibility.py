"""Per-sample reproducibility: with ``seeds``, sample i depends on seeds[i] only (diffsolve.noise).

For every registered fixed-step solver, deterministic and stochastic (η = 1 for the stochastic
ones, and EDM churn for Heun), sample i is bit-for-bit the same whether drawn alone or inside
batches of other sizes and orders, through ``diffsolve.sample(..., seeds=[...])``.
"""
from __future__ import annotations

import pytest
import torch

import diffsolve as ds
from diffsolve.solvers import SOLVERS

from helpers import FIXED, make

RING = ds.GaussianMixture.ring()
CASES = [(name, {}) for name in FIXED] + [("heun", {"S_churn": 10.0}), ("euler_ve", {"S_churn": 5.0})]


def draw(name, options, seeds, schedule="vp"):
    solver = SOLVERS[name](**options) if options else make(name)
    den = RING.denoiser(schedule, "eps")
    eta = 1.0 if solver.stochastic else 0.0
    return ds.sample(den, solver=solver, steps=max(5, solver.min_steps), eta=eta, seeds=seeds).x


@pytest.mark.parametrize("name,options", CASES, ids=[n + ("+churn" if o else "") for n, o in CASES])
def test_sample_independent_of_batch(name, options):
    batch = draw(name, options, [3, 7, 11, 19, 23])
    assert torch.isfinite(batch).all()
    alone = draw(name, options, [11])
    other = draw(name, options, [19, 11, 2])  # other size, other position, a new neighbour
    assert torch.equal(alone[0], batch[2]), (name, alone[0], batch[2])
    assert torch.equal(other[1], batch[2])
    assert torch.equal(other[0], batch[3])
    assert not torch.equal(batch[0], batch[1])  # different seeds, different samples


def test_seed_ranges_and_generator_are_reproducible():
    den = RING.denoiser("edm", "x0")
    a = ds.sample(den, solver="ancestral", steps=6, eta=1.0, seeds="0-3").x
    b = ds.sample(den, solver="ancestral", steps=6, eta=1.0, seeds=[0, 1, 2, 3]).x
    assert torch.equal(a, b)
    g1 = ds.sample(den, shape=(4, 2), solver="pc", steps=4, eta=1.0, generator=torch.Generator().manual_seed(5)).x
    g2 = ds.sample(den, shape=(4, 2), solver="pc", steps=4, eta=1.0, generator=torch.Generator().manual_seed(5)).x
    assert torch.equal(g1, g2)


@pytest.mark.parametrize("noise", ["seeds", "generators", "generator", "none"])
def test_a_given_start_repeats_the_run_drawn_from_the_same_streams(noise):
    """Each stream's first draw is x_T and the steps' noise follows. With x given, the first step's noise was
    that first draw: a start drawn from the same seeds (as the library draws it) made the first step's noise
    x_T/σ itself, and ``sample(x=r.x_init, seeds=...)`` did not repeat ``r``. Now the x_T draw is skipped."""
    from diffsolve.grids import make_grid

    den = RING.denoiser("vp", "eps")
    grid = make_grid(den.schedule, 6, "log_snr")

    def streams():
        return {"seeds": {"seeds": "0-3"}, "none": {},
                "generators": {"generator": [torch.Generator().manual_seed(s) for s in range(4)]},
                "generator": {"generator": torch.Generator().manual_seed(9)}}[noise]

    shape = {} if noise == "seeds" else {"shape": (4, 2)}
    for solver in ("ancestral", "pc", "dpmpp_2m_sde"):
        r = ds.sample(den, solver=solver, grid=grid, eta=1.0, **shape, **streams())
        again = ds.sample(den, x=r.x_init.clone(), solver=solver, grid=grid, eta=1.0, **streams())
        assert torch.equal(again.x, r.x), (solver, (again.x - r.x).abs().max())
    # per-sample streams: a row alone, from its own x_T, is the same row of the batch
    if noise in ("seeds", "generators"):
        r = ds.sample(den, solver="ancestral", grid=grid, eta=1.0, **shape, **streams())
        one = {"seeds": {"seeds": [2]}, "generators": {"generator": [torch.Generator().manual_seed(2)]}}[noise]
        alone = ds.sample(den, x=r.x_init[2:3].clone(), solver="ancestral", grid=grid, eta=1.0, **one)
        assert torch.equal(alone.x[0], r.x[2])
