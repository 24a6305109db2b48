"""Noise sources: per-sample seeds make sample i independent of the batch it is drawn in."""
import math

import pytest
import torch

import diffsolve
from diffsolve.analytic import GaussianMixture
from diffsolve.noise import NoiseSource, parse_seeds
from diffsolve.schedules import VPSchedule

F64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def test_per_sample_seed_same_alone_or_in_batch():
    """Row i of a batch drawn with seeds equals the draw of seeds[i] alone, at every draw, in any
    batch order, for float64 and float32."""
    for dtype in (F64, torch.float32):
        seeds = [11, 3, 2026, 0]
        batch = NoiseSource(4, (2, 3), seeds=seeds, dtype=dtype)
        alone = [NoiseSource(1, (2, 3), seeds=[s], dtype=dtype) for s in seeds]
        shuffled = NoiseSource(2, (2, 3), seeds=[0, 11], dtype=dtype)
        for _ in range(3):
            b, sh = batch.randn(), shuffled.randn()
            assert b.shape == (4, 2, 3) and b.dtype == dtype
            for i, src in enumerate(alone):
                assert torch.equal(b[i], src.randn()[0])
            assert torch.equal(sh[0], b[3]) and torch.equal(sh[1], b[0])
        assert batch.draws == 3


def test_sample_with_seeds_is_batch_independent():
    """Through diffsolve.sample with a stochastic solver (x_T and every step's noise): sample i
    with seeds[i] is the same alone or in a batch (to the last bit)."""
    gm = GaussianMixture.ring()
    den = gm.denoiser(VPSchedule(), "eps")
    kw = dict(solver="euler", steps=4, eta=1.0)
    batch = diffsolve.sample(den, seeds="3-5", **kw).x
    assert batch.shape == (3, 2)
    for i, s in enumerate((3, 4, 5)):
        assert torch.equal(diffsolve.sample(den, seeds=[s], **kw).x[0], batch[i])
    assert not torch.equal(batch[0], batch[1])


def test_generator_and_default():
    """A shared generator draws the batch at once (reproducible with the same seed); with neither
    seeds nor generator, a generator seeded 0."""
    a = NoiseSource(3, (4,), generator=torch.Generator().manual_seed(1)).randn()
    b = NoiseSource(3, (4,), generator=torch.Generator().manual_seed(1)).randn()
    c = NoiseSource(3, (4,), generator=torch.Generator().manual_seed(2)).randn()
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a, torch.randn(3, 4, generator=torch.Generator().manual_seed(1), dtype=F64))
    d0, d1 = NoiseSource(3, (4,)).randn(), NoiseSource(3, (4,)).randn()
    assert torch.equal(d0, d1) and d0.dtype == F64


def test_draws_are_standard_normal_and_independent_across_seeds():
    """Mean 0, variance 1 (within 5 standard errors), no correlation between neighbouring seeds."""
    n = 20_000
    x = NoiseSource(2, (n,), seeds=[0, 1]).randn()
    for row in x:
        assert abs(float(row.mean())) < 5 / math.sqrt(n)
        assert abs(float(row.var()) - 1) < 5 * math.sqrt(2 / n)
    assert abs(float((x[0] * x[1]).mean())) < 5 / math.sqrt(n)


def test_parse_seeds():
    assert parse_seeds("0-3,7") == [0, 1, 2, 3, 7]
    assert parse_seeds("0-63") == list(range(64))
    assert parse_seeds(" 1, 5 ,10-12") == [1, 5, 10, 11, 12]
    assert parse_seeds("4") == [4] and parse_seeds(9) == [9] and parse_seeds([3, 1]) == [3, 1]
    assert parse_seeds(range(2)) == [0, 1] and parse_seeds("5-5") == [5]
    assert parse_seeds("0" * 20 + "3," + "0" * 30 + "5-7") == [3, 5, 6, 7]  # leading zeros: not out of range


@pytest.mark.parametrize("bad", ["a", "3-1", "1-", "-1", "", "1,,2", "1.5", "0-3;7", "2-x"])
def test_parse_seeds_bad(bad):
    with pytest.raises(ValueError, match="seed"):
        parse_seeds(bad)


def test_bad_sources():
    with pytest.raises(ValueError, match="either seeds .* or a generator"):
        NoiseSource(2, (3,), seeds=[0, 1], generator=torch.Generator())
    with pytest.raises(ValueError, match="got 3 seeds for a batch of 2; give one seed per sample"):
        NoiseSource(2, (3,), seeds=[0, 1, 2])


def test_a_list_of_generators_one_per_sample():
    """A list of generators (as diffusers' pipelines pass them): row i from generator i, whatever the batch and
    the rows drawn; a list of one is the batch's generator (diffusers' randn_tensor reads it so); sample() takes
    the batch from the list's length."""
    import diffsolve as ds

    def gens(*seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    both = NoiseSource(2, (3,), generator=gens(5, 6)).randn()
    alone = NoiseSource(1, (3,), generator=gens(6)).randn()
    assert torch.equal(both[1:], alone)
    assert torch.equal(NoiseSource(2, (3,), generator=gens(5, 6)).randn(rows=[1]), alone)
    one = NoiseSource(4, (3,), generator=gens(7)).randn()
    assert torch.equal(one, NoiseSource(4, (3,), generator=torch.Generator().manual_seed(7)).randn())
    den = ds.GaussianMixture.ring().denoiser(ds.make_schedule("ddpm"), "eps")
    den.shape = (2,)
    out = ds.sample(den, generator=gens(1, 2, 3), solver="ddim", eta=1.0, nfe=4)
    assert out.x.shape == (3, 2)
