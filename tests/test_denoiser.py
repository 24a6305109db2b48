"""The Denoiser's one conversion table between prediction types (docs/math.md §2).

Ground truth: draw (x0, ε), set x = α x0 + σ ε (docs/math.md (1.1)) and write every prediction from the
table of docs/math.md §2 directly (ε, x0, score = −ε/σ, v = αε − σx0, velocity = α'x0 + σ'ε); the
Denoiser's conversions must reproduce them and invert each other to float64 round-off.
"""
import math

import pytest
import torch

import diffsolve as ds
from diffsolve.analytic import GaussianMixture
from diffsolve.denoiser import PREDICTIONS, Denoiser, NonFiniteError
from diffsolve.thresholding import Clip
from diffsolve.schedules import (CosineSchedule, DDPMSchedule, EDMSchedule, FlowSchedule, SubVPSchedule,
                                 VESchedule, VPSchedule)

F64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    # small tensors: one thread is much faster than two on a loaded 2-core machine
    torch.set_num_threads(1)
SCHEDULES = {
    "vp": VPSchedule(), "cosine": CosineSchedule(), "ddpm": DDPMSchedule(),
    "ddpm_ac": DDPMSchedule(alphas_cumprod=torch.cumprod(1 - torch.linspace(1e-4, 0.02, 100, dtype=F64), 0)),
    "subvp": SubVPSchedule(), "ve": VESchedule(), "edm": EDMSchedule(), "flow": FlowSchedule(),
}


def _times(s):
    return [s.t_min, s.t_min + 1e-3 * (s.t_max - s.t_min), 0.5 * (s.t_min + s.t_max), s.t_max]


def _truth(s, x0, eps, t):
    """Every prediction at x = αx0 + σε from the docs/math.md §2 table; t scalar or (B,)."""
    t = torch.as_tensor(t, dtype=F64)
    shape = (-1,) + (1,) * (x0.dim() - 1) if t.dim() else ()
    a, sg = s.alpha(t).reshape(shape), s.sigma(t).reshape(shape)
    da, dsg = a * s.f(t).reshape(shape), sg * s.d_log_sigma(t).reshape(shape)
    x = a * x0 + sg * eps
    return x, {"eps": eps, "x0": x0, "score": -eps / sg, "v": a * eps - sg * x0, "velocity": da * x0 + dsg * eps}


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-300))


def _scale(d, x, x0, t, q):
    """|A_q||x| + |B_q||x̂0|: the size of the two terms of y_q = A_q x + B_q x̂0 (module
    docstring of diffsolve.denoiser). Round-off in y_q is relative to this, not to |y_q|: for
    the score at small σ the two terms cancel to O(1) from O(1/σ²)."""
    A, B = d.coefficients(t, q, x)
    return float((abs(A) * x.abs() + abs(B) * x0.abs()).max())


def _err(y, ref, scale):
    return float((y - ref).abs().max()) / scale


def _identity_denoiser(s):
    return Denoiser(lambda x, t: x, s, "eps", net_dtype=F64)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_every_type_converts_to_every_other_exactly(name):
    """convert(y_p → q) equals the docs/math.md §2 value of q, and q → p returns y_p, for all 25 pairs, at
    scalar t (both ends of the range and inside) and per-sample t: error ≤ 1e-12 relative to the
    size of the table's terms (see ``_scale``; plain relative error where they do not cancel)."""
    s = SCHEDULES[name]
    d = _identity_denoiser(s)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 3, 5, dtype=F64, generator=g)
    eps = torch.randn(4, 3, 5, dtype=F64, generator=g)
    per_sample = torch.tensor(_times(s), dtype=F64)
    for t in _times(s) + [per_sample]:
        x, truth = _truth(s, x0, eps, t)
        for p in PREDICTIONS:
            for q in PREDICTIONS:
                y_q = d.convert(truth[p], x, t, p, q)
                assert y_q.dtype == F64 and y_q.shape == x.shape
                e = _err(y_q, truth[q], _scale(d, x, x0, t, q))
                assert e < 1e-12, (name, t, p, q, e)
                back = d.convert(y_q, x, t, q, p)
                e = _err(back, truth[p], _scale(d, x, x0, t, p))
                assert e < 1e-12, (name, t, p, q, e)


def test_per_sample_times_match_scalar_times():
    """Sample i of a per-sample conversion equals the scalar-t conversion of sample i alone (to
    round-off: the scalar path folds the coefficients into fused passes, A/B as one float)."""
    s = SCHEDULES["cosine"]
    d = _identity_denoiser(s)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(2, 4, 3, 3, dtype=F64, generator=g)
    t = torch.tensor([0.9, 0.2, 0.5, 0.01], dtype=F64)
    out = d.convert(y, x, t, "v", "score")
    for i in range(4):
        xi, yi, ti = x[i:i + 1], y[i:i + 1], float(t[i])
        scale = _scale(d, xi, d.convert(yi, xi, ti, "v", "x0"), ti, "score")
        assert _err(out[i:i + 1], d.convert(yi, xi, ti, "v", "score"), scale) < 1e-14


@pytest.mark.parametrize("name", ["vp", "ddpm", "edm", "flow"])
def test_combine_is_the_linear_combination_with_the_prediction(name):
    """combine(x, t, a, b, q) = a·x + b·(prediction q) for every network type p and every q, at
    host-scalar times (the fused two-pass path), per-sample times and with a threshold (the
    general path); one counted network call each."""
    s = SCHEDULES[name]
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(4, 3, 5, dtype=F64, generator=g)
    eps = torch.randn(4, 3, 5, dtype=F64, generator=g)
    per_sample = torch.tensor(_times(s), dtype=F64)
    a, b = 0.7, -1.3
    for t in _times(s)[1:] + [per_sample]:
        x, truth = _truth(s, x0, eps, t)
        for p in PREDICTIONS:
            for q in PREDICTIONS:
                for threshold in (None, Clip(1e9)):
                    d = Denoiser(lambda xx, tt, p=p: truth[p], s, p, net_dtype=F64, threshold=threshold)
                    out = d.combine(x, t, a, b, q)
                    assert d.nfe == 1
                    ref = a * x + b * truth[q]
                    scale = abs(a) * float(x.abs().max()) + abs(b) * _scale(d, x, x0, t, q)
                    assert _err(out, ref, scale) < 1e-12, (name, t, p, q, threshold)


def test_aliases():
    """Aliases of diffusers / flow codebases map onto the five canonical types."""
    s = SCHEDULES["vp"]
    d = _identity_denoiser(s)
    x, y = torch.randn(2, 3, 2, dtype=F64)
    for alias, canon in [("epsilon", "eps"), ("sample", "x0"), ("v_prediction", "v"), ("flow", "velocity")]:
        assert torch.equal(d.convert(y, x, 0.3, alias, "score"), d.convert(y, x, 0.3, canon, "score"))
    assert Denoiser(lambda x, t: x, s, "v_prediction").prediction == "v"


@pytest.mark.parametrize("net_dtype", [torch.float16, torch.float32, torch.bfloat16])
def test_low_precision_output_converted_in_state_dtype(net_dtype):
    """The network runs in its dtype; its output is upcast and every conversion is done in the
    state's float64 (Denoiser docstring; STYLE 'numerics')."""
    s = SCHEDULES["vp"]
    seen = {}

    def net(x, label):
        seen["x"], seen["label"] = x.dtype, label.dtype
        return torch.sin(3 * x) + label[:, None]  # any function; computed in net_dtype

    d = Denoiser(net, s, "eps", net_dtype=net_dtype)
    x = torch.randn(8, 6, dtype=F64, generator=torch.Generator().manual_seed(2))
    t = torch.linspace(0.05, 0.95, 8, dtype=F64)
    raw = d.raw(x, t)
    assert seen["x"] == net_dtype and raw.dtype == F64
    assert seen["label"] == (net_dtype if net_dtype == torch.float32 else torch.float32)
    assert torch.equal(raw, net(x.to(net_dtype), t.to(seen["label"])).to(F64))
    a, sg = s.alpha(t)[:, None], s.sigma(t)[:, None]
    x0 = d.x0(x, t)
    assert x0.dtype == F64
    torch.testing.assert_close(x0, (x - sg * raw) / a, rtol=1e-14, atol=0)
    in_net_dtype = ((x.to(net_dtype) - sg.to(net_dtype) * raw.to(net_dtype)) / a.to(net_dtype)).to(F64)
    assert _rel(in_net_dtype, x0) > 1e-2 * torch.finfo(net_dtype).eps  # the test can tell them apart


def test_net_dtype_from_parameters():
    lin = torch.nn.Linear(3, 3).to(torch.float32)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = lin

        def forward(self, x, t):
            return self.lin(x)

    d = Denoiser(Net(), "vp", "x0")
    assert d.net_dtype == torch.float32
    out = d.eps(torch.randn(2, 3, dtype=F64), 0.5)
    assert out.dtype == F64


@pytest.mark.parametrize("name", ["vp", "cosine", "ddpm", "subvp", "ve", "edm", "flow"])
def test_exact_denoisers_of_every_type_agree(name):
    """The analytic mixture's exact network of each prediction type yields the same x0, eps,
    score, v and velocity as every other type, and x0/score equal the mixture's closed forms
    (docs/math.md §2, §6)."""
    s = SCHEDULES[name]
    gm = GaussianMixture.random(d=3, n_modes=3, seed=3)
    g = torch.Generator().manual_seed(4)
    t = torch.tensor([s.t_min, 0.3 * s.t_min + 0.7 * s.t_max, 0.5 * (s.t_min + s.t_max), s.t_max], dtype=F64)
    x = gm.sample(4, t, s, generator=g)
    outs = {}
    for p in PREDICTIONS:
        d = gm.denoiser(s, p)
        outs[p] = {q: getattr(d, q)(x, t) for q in PREDICTIONS}
        assert d.nfe == 5
    ref = outs["eps"]
    x0 = gm.x0(x, t, s)
    for q in PREDICTIONS:
        scale = _scale(d, x, x0, t, q)
        for p in PREDICTIONS:
            assert _err(outs[p][q], ref[q], scale) < 1e-12, (p, q, _err(outs[p][q], ref[q], scale))
        if q == "score":
            assert _err(ref[q], gm.score(x, t, s), scale) < 1e-12
        if q == "x0":
            assert _err(ref[q], x0, scale) < 1e-12


def test_time_labels():
    """The network's own time input (docs/math.md §2, last paragraph): DDPM's integer timestep at
    training knots, σ, EDM's ¼ log σ̃, 1000t, λ."""
    got = {}

    def net(x, label):
        got["label"] = label.double()
        return x

    ddpm = DDPMSchedule()
    t = ddpm.t_of_timestep(torch.tensor([0, 1, 500, 999]))
    Denoiser(net, ddpm, "eps", net_dtype=F64).raw(torch.zeros(4, 2, dtype=F64), t)
    assert got["label"].tolist() == [0.0, 1.0, 500.0, 999.0]
    vp = SCHEDULES["vp"]
    t = torch.tensor([0.1, 0.7], dtype=F64)
    for label, expect in [("t", t), ("1000t", 1000 * t), ("sigma", vp.sigma(t)), ("log_snr", vp.log_snr(t)),
                          ("sigma_over_alpha", vp.sigma(t) / vp.alpha(t)),
                          ("c_noise", 0.25 * torch.log(vp.sigma(t) / vp.alpha(t)))]:
        Denoiser(net, vp, "eps", time_label=label, net_dtype=F64).raw(torch.zeros(2, 2, dtype=F64), t)
        torch.testing.assert_close(got["label"], expect, rtol=1e-14, atol=1e-15)
    Denoiser(net, vp, "eps", time_label=lambda t: 7 * t, net_dtype=F64).raw(torch.zeros(2, 3, dtype=F64), 0.5)
    assert got["label"].tolist() == [3.5, 3.5]  # a scalar t is expanded to the batch


def test_nfe_counts_network_calls():
    s = SCHEDULES["vp"]
    d = Denoiser(lambda x, t: x, s, "v", net_dtype=F64)
    x = torch.randn(3, 2, dtype=F64)
    d.x0(x, 0.5), d.eps(x, 0.5), d.score(x, 0.5), d.convert(x, x, 0.5, "v", "eps")
    assert d.nfe == 3 and d.reset_nfe() == 3 and d.nfe == 0
    assert torch.equal(d(x, 0.5), d.x0(x, 0.5))


# --- bad input ----------------------------------------------------------------------------

def test_unknown_prediction_lists_valid_types():
    with pytest.raises(ValueError, match="valid types: eps, x0, score, v, velocity"):
        Denoiser(lambda x, t: x, "vp", "noise")
    d = _identity_denoiser(SCHEDULES["vp"])
    x = torch.zeros(1, 2, dtype=F64)
    with pytest.raises(ValueError, match="unknown prediction type 'mu'"):
        d.convert(x, x, 0.5, "eps", "mu")
    with pytest.raises(ValueError, match="unknown time_label"):
        Denoiser(lambda x, t: x, "vp", "eps", time_label="seconds")
    with pytest.raises(TypeError, match="net must be callable"):
        Denoiser(3, "vp", "eps")


def test_time_outside_range():
    d = _identity_denoiser(SCHEDULES["vp"])
    x = torch.zeros(2, 2, dtype=F64)
    with pytest.raises(ValueError, match=r"valid range is \[0\.001, 1\]"):
        d.x0(x, 1.5)
    with pytest.raises(ValueError, match=r"valid range"):
        d.x0(x, torch.tensor([0.5, 0.0], dtype=F64))
    with pytest.raises(ValueError, match=r"t must be a scalar or have shape \(2,\)"):
        d.x0(x, torch.tensor([0.5, 0.4, 0.3], dtype=F64))
    assert d.nfe == 0


def test_output_shape_mismatch():
    d = Denoiser(lambda x, t: x[:, :1], "vp", "eps", net_dtype=F64)
    with pytest.raises(ValueError, match=r"returned shape \(2, 1\) for input of shape \(2, 3\)"):
        d.eps(torch.zeros(2, 3, dtype=F64), 0.5)
    d = Denoiser(lambda x, t: x.tolist(), "vp", "eps", net_dtype=F64)
    with pytest.raises(TypeError, match=r"returned a list of 2, not a tensor; return the prediction itself"):
        d.eps(torch.zeros(2, 3, dtype=F64), 0.5)


def test_network_errors_carry_where_and_how_to_unwrap():
    """A network that raises keeps its own exception, with a note naming the call, the loop position
    and t; a diffusers-style output object or a NumPy array gets the fix in the message."""
    import traceback

    class Out:
        def __init__(self, sample):
            self.sample = sample

    d = Denoiser(lambda x, t: Out(x), "vp", "eps", net_dtype=F64)
    with pytest.raises(TypeError, match=r"returned an object of type Out, not a tensor; a diffusers model .*\.sample"):
        d.eps(torch.zeros(2, 3, dtype=F64), 0.5)
    d = Denoiser(lambda x, t: x.numpy(), "vp", "eps", net_dtype=F64)
    with pytest.raises(TypeError, match=r"returned an object of type ndarray, not a tensor; return a torch tensor"):
        d.eps(torch.zeros(2, 3, dtype=F64), 0.5)

    def broken(x, t):
        raise KeyError("conditioning")

    d = Denoiser(broken, "vp", "eps", net_dtype=F64)
    with pytest.raises(KeyError) as info:
        ds.sample(d, torch.zeros(2, 3, dtype=F64), solver="ddim", steps=3)
    text = "".join(traceback.format_exception(info.value))
    assert "raised by the network at network call 1" in text and "x of shape (2, 3)" in text and "t=" in text


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_output_names_call_and_time(bad):
    calls = []

    def net(x, t):
        calls.append(1)
        return x + (bad if len(calls) == 2 else 0.0)

    d = Denoiser(net, "vp", "eps", net_dtype=F64)
    x = torch.zeros(2, 3, dtype=F64)
    d.eps(x, 0.5)
    d.where = "step 2/10 of euler"
    with pytest.raises(NonFiniteError, match=r"network call 2 \(step 2/10 of euler\), t=0\.25"):
        d.eps(x, 0.25)
    with pytest.raises(FloatingPointError, match=r"t=\[0\.2 \.\. 0\.7\]"):
        calls.clear(), calls.append(1)
        d.x0(x, torch.tensor([0.7, 0.2], dtype=F64))
    d.check_finite()  # nothing deferred on the CPU


def test_error_messages_number_the_calls_of_the_run():
    """The call number of an error message counted over the denoiser's life ("network call 3" for the first
    call of a second run); now from the run's start, for sample and log_likelihood. ``nfe`` keeps counting."""
    import diffsolve as ds

    calls = [0]

    def net(x, t):
        calls[0] += 1
        return x * math.nan if calls[0] > 2 else 0.1 * x

    d = Denoiser(net, "vp", "eps", net_dtype=F64)
    ds.sample(d, torch.randn(2, 3, dtype=F64), nfe=2, solver="euler")
    with pytest.raises(NonFiniteError, match=r"network call 1 \(step 1/5 of euler"):
        ds.sample(d, torch.randn(2, 3, dtype=F64), nfe=5, solver="euler")
    assert d.nfe == 3
    calls[0] = 0
    d.eps(torch.zeros(2, 3, dtype=F64), 0.5)
    d.eps(torch.zeros(2, 3, dtype=F64), 0.5)
    with pytest.raises(NonFiniteError, match=r"network call 1\b"):
        ds.log_likelihood(d, torch.randn(2, 3, dtype=F64), divergence="exact")


def test_non_finite_output_on_device(device):
    """On the CPU a non-finite output raises at once; on an accelerator the check is deferred to
    ``check_finite()`` (one host synchronisation for the whole solve) and still names the call."""
    d = Denoiser(lambda x, t: x * (math.nan if float(t[0]) < 0.3 else 1.0), "vp", "eps", net_dtype=F64)
    x = torch.ones(2, 3, dtype=F64, device=device)
    d.eps(x, 0.5)
    if device.type == "cpu":
        with pytest.raises(NonFiniteError, match=r"network call 2, t=0\.25"):
            d.eps(x, 0.25)
    else:
        d.eps(x, 0.25)
        with pytest.raises(NonFiniteError, match=r"network call 2, t=0\.25"):
            d.check_finite()
    d.check_finite()  # nothing left pending


def test_prime_fills_caches_and_keeps_results():
    """Denoiser.prime (called by the loop) gives the same samples as per-call coefficients and
    labels, and a time-label function that only takes scalars still works (no priming of labels)."""
    gm = ds.GaussianMixture.ring(std=0.3)
    exact = gm.denoiser("ddpm", "eps")
    sch = exact.schedule
    calls = []

    def scalar_only_label(t):
        calls.append(1)
        return torch.tensor(float(t) * 999.0, dtype=F64)  # float(t) fails for a vector

    def net(x, lab):
        return exact.net(x, lab / 999.0)

    x = float(sch.sigma(sch.t_max)) * torch.randn(6, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    a = ds.sample(ds.Denoiser(net, sch, "eps", time_label=scalar_only_label), x, solver="unipc", steps=8).x
    n_scalar = len(calls)
    den = ds.Denoiser(net, sch, "eps", time_label=lambda t: t * 999.0)
    b = ds.sample(den, x, solver="unipc", steps=8).x
    assert n_scalar >= 8  # built per call
    assert len(den._label_cache) >= 9 and len(den._coef_cache) >= 9  # primed: the grid's points
    torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)


def test_net_dtype_follows_the_module_after_wrapping():
    """A module's dtype is read when used: net.double() after wrapping (or after zoo.load) is followed,
    and a declared net_dtype stays as declared."""
    import diffsolve as ds

    m = ds.zoo.load("digits")
    assert m.net_dtype == torch.float32
    m.net.double()
    assert m.net_dtype == torch.float64
    res = ds.sample(m, seeds="0-1", nfe=4)
    assert res.x.dtype == torch.float64 and torch.isfinite(res.x).all()
    net = torch.nn.Linear(2, 2)
    assert ds.Denoiser(lambda x, t: net(x), "vp", net_dtype=torch.float32).net_dtype == torch.float32
    den = ds.Denoiser(net, "vp")
    net.double()
    assert den.net_dtype == torch.float64
    net.load_state_dict({k: v.float() for k, v in net.state_dict().items()}, assign=True)  # weights replaced
    assert den.net_dtype == torch.float32
    guided = ds.CFGDenoiser(ds.Denoiser(lambda x, t: x, "vp", net_dtype=torch.float64), 2.0, cond=0, uncond=1)
    assert guided.net_dtype == torch.float64  # a declared dtype is kept
    inner = torch.nn.Linear(2, 2)
    guided = ds.CFGDenoiser(ds.Denoiser(inner, "vp"), 2.0, cond=0, uncond=1)
    inner.double()
    assert guided.net_dtype == torch.float64  # a module's is read from its weights, through the guidance


def test_changing_schedule_label_or_prediction_after_a_run_is_followed():
    """The memoised coefficients and labels belong to a schedule, a time label and a prediction type: setting
    any of them afterwards clears them (they were reused, giving silently wrong samples), and a named time
    label follows a new schedule."""
    gm = GaussianMixture.ring()
    x = torch.randn(6, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    seen = []

    def net(x, label):
        seen.append(float(label[0]))
        return 0.1 * x

    den = Denoiser(net, VPSchedule(0.5, 10), "eps")
    first = ds.sample(den, x, nfe=4, grid="time", denoise_final=False).x
    den.schedule = VPSchedule(0.1, 20)
    again = ds.sample(den, x, nfe=4, grid="time", denoise_final=False).x
    fresh = ds.sample(Denoiser(net, VPSchedule(0.1, 20), "eps"), x, nfe=4, grid="time", denoise_final=False).x
    assert not torch.equal(first, again)
    torch.testing.assert_close(again, fresh, rtol=0, atol=0)
    seen.clear()
    den.time_label = lambda t: 1000 * t
    ds.sample(den, x, nfe=4, grid="time", denoise_final=False)
    assert min(seen) > 1.0, seen  # the new labels, not the cached t
    den.prediction = "epsilon"  # an alias, stored canonical
    assert den.prediction == "eps"
    ddpm = Denoiser(net, DDPMSchedule(num_train_timesteps=1000), "eps")
    ddpm.schedule = DDPMSchedule(num_train_timesteps=100)  # the default label: timesteps of the new table
    seen.clear()
    ds.sample(ddpm, x, nfe=3, grid="time", denoise_final=False)
    assert max(seen) < 100, seen
    exact = gm.denoiser(VPSchedule(), "x0")
    with pytest.raises(ValueError, match="unknown prediction"):
        exact.prediction = "noise"


def test_time_labels_integer_float_or_wrong_shape():
    """Integer labels reach the network as integers (an index time embedding), a Python number is taken, a
    label of the wrong shape is an error naming the function, not a tensor passed on unchecked."""
    emb = torch.nn.Embedding(1000, 2).double()
    x = torch.randn(4, 2, dtype=F64, generator=torch.Generator().manual_seed(1))

    def index_net(x, label):
        assert label.dtype == torch.int64 and label.shape == (4,)
        return 0.1 * x + 0 * emb(label)

    rounds = Denoiser(index_net, "ddpm", "eps", time_label=lambda t: (999 * t).round().long().clamp(0, 999))
    assert ds.sample(rounds, x, nfe=5).x.shape == (4, 2)
    number = Denoiser(lambda x, label: 0.1 * x, "vp", "eps", time_label=lambda t: 1000 * float(t))
    assert ds.sample(number, x, nfe=5).x.shape == (4, 2)
    for bad in (lambda t: t.reshape(1, -1), lambda t: torch.zeros(13)):
        with pytest.raises(ValueError, match="time label function returned shape"):
            ds.sample(Denoiser(lambda x, label: 0.1 * x, "vp", "eps", time_label=bad), x, nfe=5)
    with pytest.raises(TypeError, match="net_dtype must be a floating torch.dtype"):
        Denoiser(lambda x, label: x, "vp", net_dtype="float16")
    with pytest.raises(TypeError, match="net_dtype must be a floating torch.dtype"):
        Denoiser(lambda x, label: x, "vp", net_dtype=torch.int32)


def test_a_label_module_stays_a_submodule_and_a_reducing_label_is_called_per_time():
    """A time label with weights moves with the denoiser (.double(), state_dict); a label function that reduces
    its input (one value for a vector of times) is called once per time, not broadcast."""
    class Emb(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, t):
            return self.w * t

    den = Denoiser(lambda x, label: 0.1 * x, "vp", time_label=Emb())
    assert list(den.state_dict()) == ["time_label.w"] and den.double().time_label.w.dtype == F64
    seen = []
    reducing = Denoiser(lambda x, label: (seen.append(float(label[0])), 0.1 * x)[1], "vp", shape=(2,),
                        time_label=lambda t: torch.as_tensor(t).max() * 1000)
    ds.sample(reducing, seeds="0-1", solver="ddim", nfe=4)
    assert len(set(seen)) == 4, seen


def test_a_network_in_training_mode_is_warned_of_once():
    """Batch normalisation or dropout in training mode makes an output depend on the batch or on chance:
    a warning naming them, pointing at the caller's line, once per network; none after net.eval()."""
    import warnings

    inner = ds.GaussianMixture.ring().denoiser("vp", "eps")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bn, self.drop = torch.nn.BatchNorm1d(2).double(), torch.nn.Dropout(0.1)

        def forward(self, x, t):
            return inner.net(x, t) + 0 * self.drop(self.bn(x))

    for train in (True, False):
        net = Net().train(train)
        den = ds.Denoiser(net, ds.VPSchedule(), prediction="eps", time_label="t", net_dtype=torch.float64)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds.sample(den, shape=(4, 2), nfe=4)
            ds.sample(den, shape=(4, 2), nfe=4)
        said = [w for w in caught if "training mode" in str(w.message)]
        assert len(said) == int(train)
        if train:
            assert "BatchNorm1d, Dropout" in str(said[0].message) and said[0].filename == __file__
    net = Net().eval()
    net.bn = torch.nn.BatchNorm1d(2, track_running_stats=False).double()  # batch statistics even in eval mode
    den = ds.Denoiser(net, ds.VPSchedule(), prediction="eps", time_label="t", net_dtype=torch.float64)
    with pytest.warns(UserWarning, match="keeps no running statistics"):
        ds.sample(den, shape=(4, 2), nfe=4)


def test_a_network_writing_into_its_input_is_stopped():
    """A network computing in the state's dtype gets the solver's state itself; one that wrote into it
    (``x *= c``) corrupted the run silently (6e3 off on the ring, every solver), while the same network in
    half precision, which gets a cast copy, was right. Now the first such call raises, saying how to fix it;
    under autograd (the likelihood's divergence) torch's own in-place error gets the same hint."""
    from diffsolve.bench.problems import get_problem

    exact = get_problem("ring2d").denoiser()

    def in_place(x, t):
        x *= 1.0 + 1e-3  # e.g. an input scaling written in place
        return exact.net(x / (1.0 + 1e-3), t)

    den = Denoiser(in_place, exact.schedule, prediction=exact.prediction, time_label="t",
                   net_dtype=torch.float64, shape=(2,))
    with pytest.raises(RuntimeError, match="changed its input x in place at network call 1"):
        ds.sample(den, seeds="0-3", nfe=5)
    x = exact.schedule.sigma(exact.schedule.t_max) * torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(RuntimeError) as err:
        ds.log_likelihood(den, x * 0.1)
    assert "must not write into" in "".join(getattr(err.value, "__notes__", [])) + str(err.value)
    half = Denoiser(in_place, exact.schedule, prediction=exact.prediction, time_label="t",
                    net_dtype=torch.float16, shape=(2,))  # a float32 state, cast for the network: harmless
    assert torch.isfinite(ds.sample(half, seeds="0-3", nfe=5).x).all()


def test_a_mistaken_network_dtype_is_explained_and_a_failed_runs_location_is_not_kept():
    """A bfloat16 network whose first parameter is a float32 norm layer is taken to be float32 (documented) and
    fails inside torch: the note now says where the dtype was read and how to declare it. A run that failed
    left its step's location to the next call's error (a likelihood reported "step 2/7 of dpmpp_2m")."""

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = torch.nn.GroupNorm(1, 2)  # float32, first
            self.lin = torch.nn.Linear(2, 2).to(torch.bfloat16)

        def forward(self, x, t):
            return self.lin(self.norm(x.unsqueeze(-1)).squeeze(-1))

    den = Denoiser(Net(), "vp", prediction="eps", shape=(2,))
    with pytest.raises(RuntimeError) as err:
        ds.sample(den, seeds="0-1", nfe=5)
    notes = "".join(getattr(err.value, "__notes__", []))
    assert "read off its first floating parameter (GroupNorm.weight)" in notes and "step" in notes
    with pytest.raises(RuntimeError) as err:
        ds.log_likelihood(den, torch.zeros(2, 2))
    assert "step" not in "".join(err.value.__notes__)
