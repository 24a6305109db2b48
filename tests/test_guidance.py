"""Classifier-free guidance: the combination (CFG), its equivalence across prediction types, honest
NFE / row counts, composition with every registered solver (and the likelihood where present)."""
import importlib.util

import pytest
import torch

import diffsolve
from diffsolve import CFGDenoiser, Denoiser
from diffsolve.analytic import GaussianMixture
from diffsolve.schedules import CosineSchedule, VPSchedule
from diffsolve.solvers import SOLVERS

D = 4
SCH = VPSchedule()
# class 0, class 1, and the null class 2 = the two-class mixture (what label dropout learns)
_A = GaussianMixture([1.0], torch.full((1, D), 1.5), 0.2)
_B = GaussianMixture([1.0], torch.full((1, D), -1.0), 0.3)
_AB = GaussianMixture([0.5, 0.5], torch.stack([torch.full((D,), 1.5), torch.full((D,), -1.0)]),
                      torch.tensor([[0.2] * D, [0.3] * D]))


class CondNet(torch.nn.Module):
    """Exact conditional ε-network of three mixtures, ``net(x, t, cond)``; counts its rows."""

    null_class = 2

    def __init__(self, prediction="eps"):
        super().__init__()
        self.dens = [m.denoiser(SCH, prediction) for m in (_A, _B, _AB)]
        self.rows = 0

    def forward(self, x, t, cond):
        self.rows += x.shape[0]
        cond = cond.reshape(-1)
        outs = torch.stack([d.net(x, t) for d in self.dens])  # (3, B, D)
        return outs[cond, torch.arange(x.shape[0])]


def _x(n=5, seed=0):
    return torch.randn(n, D, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("prediction", ["eps", "x0", "v", "score"])
def test_guided_combination_and_equivalence(prediction):
    """ε̃ = ε_∅ + w(ε_c − ε_∅), whatever prediction type the network outputs."""
    net = CondNet(prediction)
    w = 3.0
    cond = torch.tensor([0, 1, 0, 1, 1])
    den = CFGDenoiser(net, w, cond, schedule=SCH, prediction=prediction, time_label="t")
    x, t = _x(), 0.37
    eps_c = Denoiser(lambda x_, l: net(x_, l, cond), SCH, prediction, time_label="t").eps(x, t)
    eps_u = Denoiser(lambda x_, l: net(x_, l, torch.full_like(cond, 2)), SCH, prediction, time_label="t").eps(x, t)
    torch.testing.assert_close(den.eps(x, t), eps_u + w * (eps_c - eps_u), rtol=1e-10, atol=1e-10)
    # the same combination in x0 (affine map with the same coefficients, weights summing to 1)
    x0_c = (x - float(SCH.sigma(t)) * eps_c) / float(SCH.alpha(t))
    x0_u = (x - float(SCH.sigma(t)) * eps_u) / float(SCH.alpha(t))
    torch.testing.assert_close(den.x0(x, t), x0_u + w * (x0_c - x0_u), rtol=1e-10, atol=1e-10)


def test_nfe_and_rows_counting():
    net = CondNet()
    cond = torch.tensor([0, 1, 1])
    den = CFGDenoiser(net, 2.5, cond, schedule=SCH, prediction="eps", time_label="t")
    res = diffsolve.sample(den, shape=(3, D), solver="ddim", steps=7, seeds=range(3), denoise_final=True)
    assert res.nfe == 8 and den.nfe == 8       # one batched call per evaluation
    assert den.rows == 2 * 3 * 8 == net.rows    # two rows per sample per call
    # w = 1 (conditional) and w = 0 (unconditional) skip the unneeded branch
    for w in (0.0, 1.0):
        net1 = CondNet()
        d1 = CFGDenoiser(net1, w, cond, schedule=SCH, prediction="eps", time_label="t")
        d1.eps(_x(3), 0.5)
        assert d1.rows == net1.rows == 3 and d1.nfe == 1


def test_scale_one_is_conditional_scale_zero_unconditional():
    net = CondNet()
    x, t = _x(), 0.6
    cond = torch.tensor(1)  # a scalar condition broadcasts to the batch
    c = CFGDenoiser(net, 1.0, cond, schedule=SCH, prediction="eps", time_label="t").eps(x, t)
    u = CFGDenoiser(net, 0.0, cond, schedule=SCH, prediction="eps", time_label="t").eps(x, t)
    torch.testing.assert_close(c, _B.denoiser(SCH, "eps").eps(x, t))
    torch.testing.assert_close(u, _AB.denoiser(SCH, "eps").eps(x, t))
    # per-sample scales
    w = torch.tensor([0.0, 1.0, 2.0, 0.5, 4.0])
    g = CFGDenoiser(net, w, cond, schedule=SCH, prediction="eps", time_label="t").eps(x, t)
    torch.testing.assert_close(g, u + w[:, None] * (c - u))


def test_wraps_a_denoiser_and_keeps_its_conventions():
    base = Denoiser(CondNet(), CosineSchedule(), "eps", time_label="t", shape=(D,))
    den = CFGDenoiser(base, 2.0, torch.tensor([0, 1]))  # uncond from net.null_class
    assert den.schedule is base.schedule and den.shape == (D,) and den.prediction == "eps"
    assert den.scale == 2.0
    with pytest.raises(TypeError, match="already guided"):
        CFGDenoiser(den, 2.0, 0)
    # a named label is kept as a name: it follows a schedule set on the guided denoiser, as on the base
    named = CFGDenoiser(Denoiser(CondNet(), VPSchedule(), "eps", time_label="sigma", shape=(D,)), 2.0,
                        torch.tensor([0, 1]))
    named.schedule = CosineSchedule()
    t = torch.tensor(0.5, dtype=torch.float64)
    assert float(named.time_label(t)) == float(CosineSchedule().sigma(t))


def test_errors():
    net = CondNet()
    den = CFGDenoiser(net, 2.0, torch.tensor([0, 1, 0]), schedule=SCH, prediction="eps", time_label="t")
    with pytest.raises(ValueError, match="rows"):
        den.eps(_x(5), 0.5)
    with pytest.raises(ValueError, match="uncond"):
        CFGDenoiser(lambda x, t, c: x, 2.0, 0, schedule=SCH, prediction="eps")
    with pytest.raises(TypeError, match="schedule"):
        CFGDenoiser(net, 2.0, 0)
    with pytest.raises(TypeError, match="scale"):
        CFGDenoiser(net, "big", 0, schedule=SCH, prediction="eps")


def _solvers():
    return sorted(SOLVERS)


@pytest.mark.parametrize("name", _solvers())
def test_composes_with_every_solver(name):
    """A CFGDenoiser is a Denoiser: with w = 1 every solver gives the conditional model's result
    exactly; with w = 3 it runs and counts NFE like the unguided model."""
    cls = SOLVERS[name]
    steps = max(getattr(cls, "min_steps", 1), 6)
    cond = torch.tensor([0, 1, 0, 1])
    base = Denoiser(lambda x, t: CondNet()(x, t, cond), SCH, "eps", time_label="t")
    adaptive = getattr(cls, "adaptive", False)  # chooses its own steps
    kw = dict(shape=(4, D), solver=name, seeds=range(4),
              **({"solver_options": {"rtol": 1e-3, "atol": 1e-3}} if adaptive else {"steps": steps}))
    try:
        ref = diffsolve.sample(base, **kw)
    except (ValueError, TypeError, NotImplementedError) as e:  # the solver needs options we do not know
        pytest.skip(f"solver {name!r} does not run with defaults: {e}")
    guided1 = CFGDenoiser(CondNet(), 1.0, cond, schedule=SCH, prediction="eps", time_label="t")
    res1 = diffsolve.sample(guided1, **kw)
    torch.testing.assert_close(res1.x, ref.x, rtol=1e-12, atol=1e-12)
    guided3 = CFGDenoiser(CondNet(), 3.0, cond, schedule=SCH, prediction="eps", time_label="t")
    res3 = diffsolve.sample(guided3, **kw)
    assert guided3.rows == 2 * 4 * res3.nfe
    if not adaptive:
        assert res3.nfe == ref.nfe
    assert torch.isfinite(res3.x).all()


@pytest.mark.skipif(importlib.util.find_spec("diffsolve.likelihood") is None, reason="diffsolve.likelihood not written yet")
def test_likelihood_of_guided_model_with_scale_one_is_conditional():
    """log_likelihood composes with CFGDenoiser; at w = 1 it is the conditional model's likelihood."""
    from diffsolve import log_likelihood

    cond = torch.tensor([0, 1])
    x = torch.stack([_A.sample(1, generator=torch.Generator().manual_seed(0))[0],
                     _B.sample(1, generator=torch.Generator().manual_seed(1))[0]])
    base = Denoiser(lambda x_, t: CondNet()(x_, t, cond), SCH, "eps", time_label="t")
    guided = CFGDenoiser(CondNet(), 1.0, cond, schedule=SCH, prediction="eps", time_label="t")
    # one step for the batch: the base network's condition is the whole batch's, so it must see every row
    a = log_likelihood(base, x, per_sample=False)
    b = log_likelihood(guided, x, per_sample=False)
    la = a.log_prob if hasattr(a, "log_prob") else a
    lb = b.log_prob if hasattr(b, "log_prob") else b
    torch.testing.assert_close(torch.as_tensor(lb), torch.as_tensor(la), rtol=1e-6, atol=1e-6)


def test_log_likelihood_with_per_sample_conditions_follows_the_rows():
    """log_likelihood evaluates subsets of the rows (per-sample steps) and copies of them (its probes):
    per-sample labels and scales follow the rows x holds, so each row equals its own run alone."""
    sch = diffsolve.make_schedule("vp")

    def net(x, t, label):
        return torch.tanh(x) * 0.3 + 0.2 * label.to(x.dtype)[:, None] * x.roll(1, 1)

    net.null_class = 3
    labels, scale = torch.tensor([0, 1, 2, 1, 0]), torch.tensor([1.0, 2.0, 0.5, 0.0, 1.5], dtype=torch.float64)
    x = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for kw in (dict(divergence="exact"), dict(probes=2)):
        both = diffsolve.log_likelihood(CFGDenoiser(net, scale, labels, schedule=sch, prediction="eps"), x,
                                 seeds="0-4", **kw).log_prob
        alone = torch.cat([diffsolve.log_likelihood(CFGDenoiser(net, float(scale[i]), int(labels[i]), schedule=sch,
                                                           prediction="eps"), x[i:i + 1], seeds=[i], **kw).log_prob
                           for i in range(5)])
        torch.testing.assert_close(both, alone, rtol=0, atol=1e-9)


def test_guidance_input_errors_name_the_fix():
    sch = diffsolve.make_schedule("vp")

    def net(x, t, label):
        return 0.1 * x

    net.null_class = 3
    with pytest.raises(ValueError, match=r"give cond="):
        CFGDenoiser(net, 2.0, None, schedule=sch, prediction="eps")
    with pytest.raises(ValueError, match=r"scale must be finite"):
        CFGDenoiser(net, float("nan"), 1, schedule=sch, prediction="eps")
    with pytest.raises(ValueError, match=r"scale has NaN or Inf"):
        CFGDenoiser(net, torch.tensor([1.0, float("inf")]), 1, schedule=sch, prediction="eps")
    g = CFGDenoiser(net, torch.ones(3), torch.zeros(8, dtype=torch.long), schedule=sch, prediction="eps")
    with pytest.raises(ValueError, match=r"scale has 3 entries but the batch has 8"):
        diffsolve.sample(g, shape=(8, 2), seeds="0-7", nfe=3)


def test_class_labels_beside_a_null_class_are_integers_in_their_own_dtype():
    """With the network's null class as uncond, int32 labels failed at 0 < w != 1 ("cond and uncond must have
    the same dtype", naming an uncond never given) and passed at w = 1; float labels were truncated by the
    network at w = 1 and refused at w = 2. int32 labels now guide as int64 ones; float labels are refused."""
    base = diffsolve.zoo.load("digits")
    labels = torch.tensor([2, 7])
    want = diffsolve.sample(diffsolve.CFGDenoiser(base, 2.0, labels), seeds="0-1", nfe=4).x
    got = diffsolve.sample(diffsolve.CFGDenoiser(base, 2.0, labels.int()), seeds="0-1", nfe=4).x
    assert torch.equal(got, want)
    for w in (1.0, 2.0):
        with pytest.raises(TypeError, match="class labels must be integers"):
            diffsolve.CFGDenoiser(base, w, torch.tensor([2.7, 2.0]))


def test_an_overflowing_guidance_scale_is_not_blamed_on_the_network():
    """w = 1e20 overflows float32 in x̂_u + w (x̂_c − x̂_u) while both outputs are finite: the error named the
    network; it names the guided combination and the scale now."""
    base = diffsolve.zoo.load("digits")
    with pytest.raises(diffsolve.NonFiniteError, match=r"guided output .* overflow the network's dtype\) was NaN"):
        diffsolve.sample(diffsolve.CFGDenoiser(base, 1e20, 3), seeds=[0], solver="dpmpp_2m", nfe=6)


def test_a_numpy_scale_an_int32_labels_uncond_and_reset_nfe():
    """Three small gaps: a numpy float32 scale was refused (np.float64 was not); an explicit integer uncond
    beside int32 labels failed at the first call ("must have the same dtype"), where the network's null class
    is cast; reset_nfe() reset nfe but left rows and calls running."""
    import numpy as np

    base = diffsolve.zoo.load("digits")
    g = CFGDenoiser(base, np.float32(2.0), torch.tensor([1, 2], dtype=torch.int32), uncond=10)
    assert g.scale == 2.0
    diffsolve.sample(g, seeds=range(2), steps=3, analytic_first_step=False)
    assert (g.nfe, g.rows, g.calls) == (3, 12, 3)
    assert g.reset_nfe() == 3 and (g.nfe, g.rows, g.calls) == (0, 0, 0)


def test_a_half_precision_network_is_guided_in_float32():
    """The branches of a bfloat16 network were combined in bfloat16: a per-sample scale 7.3 became 7.3125 and the
    difference of the branches was rounded (0.016 off the float scale's result). Now they are combined in
    float32: a scale as a tensor or a float gives the same result, the branches' own rounding apart."""
    class Half(torch.nn.Module):
        null_class = 2

        def __init__(self):
            super().__init__()
            self.net = CondNet()
            self.scale = torch.nn.Parameter(torch.ones((), dtype=torch.bfloat16))  # (the network's dtype)

        def forward(self, x, t, cond):
            return self.net(x.double(), t.double(), cond).to(torch.bfloat16)

    cond, x = torch.tensor([0, 1, 0, 1, 1]), _x()
    as_float = CFGDenoiser(Half(), 7.3, cond, schedule=SCH, prediction="eps", time_label="t").eps(x, 0.37)
    as_rows = CFGDenoiser(Half(), torch.full((5,), 7.3), cond, schedule=SCH, prediction="eps",
                          time_label="t").eps(x, 0.37)
    torch.testing.assert_close(as_rows, as_float, rtol=0, atol=1e-6)
    net = CondNet()
    xb, tf = x.to(torch.bfloat16).double(), torch.full((5,), 0.37, dtype=torch.float32).double()  # as it is called
    c, u = (net(xb, tf, k).to(torch.bfloat16).double() for k in (cond, torch.full_like(cond, 2)))
    torch.testing.assert_close(as_float, u + 7.3 * (c - u), rtol=0, atol=1e-5)  # in float32, of the bf16 branches
