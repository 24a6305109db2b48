"""Schedules (docs/math.md §1): α, σ, λ, the inverse t(λ), f and g² of every schedule, in float64.

Property tests (hypothesis, derandomised) over every schedule of the table in docs/math.md §1, plus
high-precision references (mpmath, 40 digits) for the closed forms.
"""
import math

import mpmath
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from diffsolve.schedules import (SCHEDULES, CosineSchedule, DDPMSchedule, EDMSchedule, FlowSchedule, Schedule,
                                 SubVPSchedule, VESchedule, VPSchedule, make_schedule)

F64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    # small tensors: one thread is much faster than two on a loaded 2-core machine
    torch.set_num_threads(1)
PROPS = settings(max_examples=50, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])


def _scaled_linear_alphas_cumprod():
    # Stable Diffusion's discrete schedule ("scaled_linear"), in float32 as diffusers stores it
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, 0)


FACTORIES = {
    "vp": VPSchedule,
    "vp_1e-5": lambda: VPSchedule(t_min=1e-5),
    "cosine": CosineSchedule,
    "ddpm_betas": DDPMSchedule,
    "ddpm_alphas_cumprod": lambda: DDPMSchedule(alphas_cumprod=_scaled_linear_alphas_cumprod()),
    "subvp": SubVPSchedule,
    "ve": VESchedule,
    "edm": EDMSchedule,
    "flow": FlowSchedule,
}
_CACHE = {}


def sched(name):
    if name not in _CACHE:
        _CACHE[name] = FACTORIES[name]()
    return _CACHE[name]


NAMES = list(FACTORIES)
unit = st.floats(0.0, 1.0, allow_nan=False)


def _time(s, u):
    """Map u ∈ [0, 1] into [t_min, t_max] (endpoints included)."""
    t = s.t_min + u * (s.t_max - s.t_min)
    return min(max(t, s.t_min), s.t_max)


@pytest.mark.parametrize("name", NAMES)
@PROPS
@given(u=unit)
def test_alpha_sigma_positive_finite(name, u):
    """α_t > 0 and σ_t > 0, finite, at every t of the range (docs/math.md (1.1))."""
    s = sched(name)
    t = _time(s, u)
    a, sg = s.alpha_sigma(t)
    assert a.dtype == F64 and sg.dtype == F64
    assert 0 < float(a) < math.inf and 0 < float(sg) < math.inf
    assert math.isfinite(float(s.log_snr(t))) and math.isfinite(float(s.g2(t))) and float(s.g2(t)) > 0


@pytest.mark.parametrize("name", NAMES)
@PROPS
@given(u1=unit, u2=unit)
def test_log_snr_strictly_decreasing(name, u1, u2):
    """λ_t = log(α_t/σ_t) decreases strictly in t (docs/math.md §1)."""
    s = sched(name)
    t1, t2 = sorted((_time(s, u1), _time(s, u2)))
    assume(t2 - t1 > 1e-9 * (s.t_max - s.t_min))
    assert float(s.log_snr(t1)) > float(s.log_snr(t2))


@pytest.mark.parametrize("name", NAMES)
def test_log_snr_strictly_decreasing_dense(name):
    """λ strictly decreasing on a dense grid of 200 001 times, and dλ/dt < 0 there (docs/math.md §1)."""
    s = sched(name)
    t = torch.linspace(s.t_min, s.t_max, 200_001, dtype=F64)
    t[-1] = s.t_max
    lam = s.log_snr(t)
    assert bool((lam[1:] < lam[:-1]).all())
    assert bool((s.d_log_snr(t) < 0).all())
    assert s.lambda_max == float(lam[0]) and s.lambda_min == float(lam[-1])


@pytest.mark.parametrize("name", NAMES)
@PROPS
@given(u=unit)
def test_t_of_log_snr_inverts_log_snr(name, u):
    """t(λ(t)) = t to a few float64 ulps (docs/math.md §1: the exact inverse t(λ))."""
    s = sched(name)
    t = _time(s, u)
    back = float(s.t_of_log_snr(s.log_snr(t)))
    assert abs(back - t) <= 2e-14 * abs(t) + 4e-16 * abs(s.t_max), (t, back)


@pytest.mark.parametrize("name", NAMES)
@PROPS
@given(u=unit)
def test_log_snr_of_t_of_log_snr(name, u):
    """λ(t(λ)) = λ up to the conditioning |dλ/dt| · ulp(t) (docs/math.md §1)."""
    s = sched(name)
    lam = s.lambda_min + u * (s.lambda_max - s.lambda_min)
    t = s.t_of_log_snr(lam)
    back = float(s.log_snr(t))
    cond = abs(float(s.d_log_snr(t))) * 4e-16 * max(abs(float(t)), 1e-300)
    assert abs(back - lam) <= 1e-14 * max(1.0, abs(lam)) + 4 * cond, (lam, back)


@pytest.mark.parametrize("name", NAMES)
def test_t_of_log_snr_per_sample_and_clamped(name):
    """Any tensor shape; λ beyond the range maps to the range's ends."""
    s = sched(name)
    t = torch.linspace(s.t_min, s.t_max, 12, dtype=F64).reshape(3, 4)
    t[-1, -1] = s.t_max
    back = s.t_of_log_snr(s.log_snr(t))
    assert back.shape == (3, 4) and back.dtype == F64
    torch.testing.assert_close(back, t, rtol=2e-14, atol=4e-16 * s.t_max)
    ends = s.t_of_log_snr(torch.tensor([s.lambda_max + 5.0, s.lambda_min - 5.0], dtype=F64))
    assert ends.tolist() == [s.t_min, s.t_max]


def _grad(fn, t):
    tt = torch.tensor(t, dtype=F64, requires_grad=True)
    y = fn(tt)
    return torch.autograd.grad(y, tt)[0] if y.requires_grad else torch.zeros((), dtype=F64)  # constant


def _is_ddpm(s):
    return isinstance(s, DDPMSchedule)


@pytest.mark.parametrize("name", NAMES)
@PROPS
@given(u=unit)
def test_f_and_g2_are_the_derivatives(name, u):
    """f_t = d log α/dt and g_t² = dσ²/dt − 2 f_t σ_t² (docs/math.md (1.2), 1.3), derivatives by autograd
    of the schedule's own closed form (itself checked against mpmath below). Also
    d log σ/dt, and g² = −2σ² dλ/dt (the second form of docs/math.md (1.3))."""
    s = sched(name)
    t = _time(s, u)
    if _is_ddpm(s):  # piecewise linear: stay off the knots, where the derivative jumps
        k = t * s.num_train_timesteps
        assume(abs(k - round(k)) > 1e-6)
    dla, dls, ds2 = (_grad(fn, t) for fn in (s.log_alpha, s.log_sigma, lambda x: s.sigma(x) ** 2))
    sig2 = float(s.sigma(t)) ** 2
    f, g2 = float(s.f(t)), float(s.g2(t))
    assert f == pytest.approx(float(dla), rel=1e-12, abs=1e-14)
    assert float(s.d_log_sigma(t)) == pytest.approx(float(dls), rel=1e-12, abs=1e-14)
    assert g2 == pytest.approx(float(ds2) - 2 * f * sig2, rel=1e-11, abs=1e-14 * max(1.0, abs(float(ds2))))
    assert g2 == pytest.approx(-2 * sig2 * float(s.d_log_snr(t)), rel=1e-13)
    assert float(s.g(t)) ** 2 == pytest.approx(g2, rel=1e-14)


@pytest.mark.parametrize("name", ["vp", "cosine", "subvp", "ve", "flow"])
def test_derivatives_high_order_finite_differences(name):
    """Same identities by an 8th-order central difference, independent of autograd (docs/math.md (1.3))."""
    s = sched(name)
    h = 1e-4 * (s.t_max - s.t_min)
    c = [4 / 5, -1 / 5, 4 / 105, -1 / 280]
    t = torch.linspace(s.t_min + 5 * h, s.t_max - 0.05 * (s.t_max - s.t_min), 41, dtype=F64)

    def d(fn):
        return sum(ck * (fn(t + (k + 1) * h) - fn(t - (k + 1) * h)) for k, ck in enumerate(c)) / h

    torch.testing.assert_close(s.f(t), d(s.log_alpha), rtol=1e-8, atol=1e-9)
    s2 = lambda x: s.sigma(x) ** 2  # noqa: E731
    torch.testing.assert_close(s.g2(t), d(s2) - 2 * s.f(t) * s2(t), rtol=1e-8, atol=1e-9)


def test_vp_linear_closed_form_f_g2():
    """VP linear: f = −β_t/2 and g² = β_t, β_t = β₀ + t(β₁ − β₀) (docs/math.md §1 table)."""
    s = VPSchedule()
    t = torch.linspace(s.t_min, s.t_max, 101, dtype=F64)
    beta = 0.1 + t * 19.9
    torch.testing.assert_close(s.f(t), -beta / 2, rtol=1e-14, atol=0)
    torch.testing.assert_close(s.g2(t), beta, rtol=1e-12, atol=0)
    e = EDMSchedule()
    t = torch.linspace(e.t_min, e.t_max, 101, dtype=F64)
    torch.testing.assert_close(e.g2(t), 2 * t, rtol=1e-14, atol=0)
    assert bool((e.f(t) == 0).all()) and bool((VESchedule().f(t / 80) == 0).all())


def _mp_reference(name, s, t):
    t = mpmath.mpf(t)
    if name.startswith("vp") or name == "subvp":
        a = mpmath.e ** (-t * t * (s.b1 - s.b0) / 4 - t * s.b0 / 2)
        sg = mpmath.sqrt(1 - a * a) if name != "subvp" else 1 - a * a
    elif name == "cosine":
        phi = lambda u: mpmath.pi / 2 * (u + s.s) / (1 + s.s)  # noqa: E731
        a = mpmath.cos(phi(t)) / mpmath.cos(phi(0))
        sg = mpmath.sqrt(1 - a * a)
    elif name == "ve":
        a, sg = mpmath.mpf(1), s.sigma_min * (mpmath.mpf(s.sigma_max) / s.sigma_min) ** t
    elif name == "edm":
        a, sg = mpmath.mpf(1), t
    else:  # flow
        a, sg = 1 - t, t
    return a, sg


@pytest.mark.parametrize("name", ["vp", "vp_1e-5", "cosine", "subvp", "ve", "edm", "flow"])
def test_closed_forms_match_high_precision(name):
    """α, σ and λ against 40-digit mpmath evaluations of the docs/math.md §1 table: float64-accurate
    (relative error of α, σ ≤ 4e-15, absolute error of λ ≤ 4e-15) across the whole range."""
    s = sched(name)
    mpmath.mp.dps = 40
    ts = torch.linspace(s.t_min, s.t_max, 121, dtype=F64).tolist()
    ts[-1] = s.t_max
    for t in ts + [s.t_min * 1.5, s.t_max * (1 - 1e-4)]:
        a_ref, s_ref = _mp_reference(name, s, t)
        a, sg = s.alpha_sigma(t)
        assert abs(float(a) - a_ref) <= 4e-15 * a_ref, (t, float(a), a_ref)
        assert abs(float(sg) - s_ref) <= 4e-15 * s_ref, (t, float(sg), s_ref)
        assert abs(float(s.log_snr(t)) - mpmath.log(a_ref / s_ref)) <= 4e-15 * max(1, abs(float(s.log_snr(t))))


def test_table_identities():
    """Variance preserving: α² + σ² = 1; sub-VP: σ = 1 − α²; flow: α + σ = 1; EDM: σ = t (docs/math.md §1)."""
    for name in ["vp", "cosine", "ddpm_betas", "ddpm_alphas_cumprod"]:
        s = sched(name)
        t = torch.linspace(s.t_min, s.t_max, 501, dtype=F64)
        a, sg = s.alpha_sigma(t)
        torch.testing.assert_close(a * a + sg * sg, torch.ones_like(t), rtol=0, atol=8e-16)
    s = sched("subvp")
    t = torch.linspace(s.t_min, s.t_max, 501, dtype=F64)
    a, sg = s.alpha_sigma(t)
    torch.testing.assert_close(sg, 1 - a * a, rtol=0, atol=2e-16)  # 1 − α² cancels near t_min
    s = sched("flow")
    t = torch.linspace(s.t_min, s.t_max - 1e-12, 501, dtype=F64)
    a, sg = s.alpha_sigma(t)
    torch.testing.assert_close(a + sg, torch.ones_like(t), rtol=0, atol=4e-16)
    torch.testing.assert_close(sg, t, rtol=8e-16, atol=0)
    s = sched("edm")
    t = torch.linspace(s.t_min, s.t_max - 1e-9, 501, dtype=F64)
    torch.testing.assert_close(s.sigma(t), t, rtol=8e-16, atol=0)


# --- DDPM: discrete timesteps ---------------------------------------------------------------

@pytest.mark.parametrize("name", ["ddpm_betas", "ddpm_alphas_cumprod"])
def test_ddpm_timesteps_exact(name):
    """At t_k = (k+1)/N: the network label is exactly k, log α = ½ log ᾱ_k bit for bit, and
    α² = ᾱ_k to ≤ 4 ulp (α = exp(log α); bitwise equality is impossible for a float α, since
    even fl(√a)² ≠ a in general).
    A schedule built from ``alphas_cumprod`` returns them unchanged (docs/math.md §1 table, DDPM row)."""
    s = sched(name)
    N = s.num_train_timesteps
    k = torch.arange(N)
    t = s.t_of_timestep(k)
    assert torch.equal(s.time_label(t), k.to(F64))
    assert [float(s.time_label(s.t_of_timestep(int(i)))) for i in (0, 1, 499, N - 1)] == [0.0, 1.0, 499.0, N - 1.0]
    ac = s.alphas_cumprod
    assert torch.equal(s.log_alpha(t), s._la_of_t.fp)  # the stored ½ log ᾱ, bit for bit
    torch.testing.assert_close(s.log_alpha(t), 0.5 * torch.log(ac), rtol=0, atol=6e-17)
    ulp = torch.nextafter(ac, torch.full_like(ac, 2.0)) - ac
    assert bool(((s.alpha(t) ** 2 - ac).abs() <= 4 * ulp).all())
    assert s.t_min == float(t[0]) and s.t_max == float(t[-1]) == 1.0
    if name == "ddpm_alphas_cumprod":
        assert torch.equal(ac, _scaled_linear_alphas_cumprod().to(F64))
    else:
        betas = torch.linspace(1e-4, 2e-2, 1000, dtype=F64)
        torch.testing.assert_close(ac, torch.cumprod(1 - betas, 0), rtol=1e-13, atol=0)


def test_ddpm_between_knots_is_log_linear():
    """Between two training timesteps log α is linear in t (DPM-Solver's interpolation)."""
    s = sched("ddpm_betas")
    k = torch.tensor([0, 10, 500, 998])
    t0, t1 = s.t_of_timestep(k), s.t_of_timestep(k + 1)
    for w in (0.25, 0.5, 0.9):
        mid = s.log_alpha(t0 + w * (t1 - t0))
        lin = (1 - w) * s.log_alpha(t0) + w * s.log_alpha(t1)
        torch.testing.assert_close(mid, lin, rtol=1e-13, atol=1e-16)
    assert torch.allclose(s.time_label(0.5 * (t0 + t1)), k.to(F64) + 0.5, rtol=0, atol=1e-9)


# --- bad input ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_time_outside_range_names_the_range(name):
    s = sched(name)
    for bad in (s.t_max + 1e-6 * max(1, s.t_max), s.t_min - 1e-3, float("nan")):
        with pytest.raises(ValueError, match=r"valid range is \["):
            s.alpha(bad)
    with pytest.raises(ValueError, match=f"{s.t_min:.6g}"):
        s.sigma(torch.tensor([s.t_min, s.t_max + 1.0], dtype=F64))
    s.alpha(torch.tensor([s.t_min, s.t_max], dtype=F64))  # the ends themselves are fine


def test_bad_schedule_parameters():
    with pytest.raises(ValueError, match="beta_min < beta_max"):
        VPSchedule(beta_min=5, beta_max=1)
    with pytest.raises(ValueError, match="t_min < t_max"):
        VPSchedule(t_min=0.5, t_max=0.1)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        EDMSchedule(sigma_min=1, sigma_max=0.5)
    with pytest.raises(ValueError, match="t_min < t_max < 1"):
        FlowSchedule(t_max=1.0)
    with pytest.raises(ValueError, match="either betas or alphas_cumprod"):
        DDPMSchedule(betas=[0.1, 0.2], alphas_cumprod=[0.9, 0.7])
    with pytest.raises(ValueError, match=r"betas must lie in \(0, 1\)"):
        DDPMSchedule(betas=[0.1, 1.2])
    with pytest.raises(ValueError, match="strictly decreasing"):
        DDPMSchedule(alphas_cumprod=[0.9, 0.95, 0.5])
    with pytest.raises(ValueError, match="valid names: vp, cosine"):
        make_schedule("linear")
    assert isinstance(make_schedule("edm"), EDMSchedule) and set(SCHEDULES) >= {"vp", "flow", "ddpm"}


def test_a_schedule_is_fixed_once_made():
    """Grids, tables and coefficients are memoised per schedule object: a parameter changed in place mixed
    the old grid with new coefficients (samples off by 0.16 on the ring). Changing one is now an error;
    copies and pickles keep working."""
    import copy
    import pickle

    import diffsolve as ds

    s = ds.VPSchedule()
    ds.make_grid(s, 5)
    for name, value in (("b1", 10.0), ("t_min", 0.05)):
        with pytest.raises(AttributeError, match=f"VPSchedule.{name} is fixed once the schedule is made"):
            setattr(s, name, value)
    assert s.b1 == 20.0 and s.t_min == 1e-3
    for make in (ds.SubVPSchedule, ds.CosineSchedule, ds.EDMSchedule, ds.VESchedule, ds.FlowSchedule, ds.DDPMSchedule):
        sch = make()
        with pytest.raises(AttributeError):
            sch.t_max = 0.5
        assert repr(copy.deepcopy(sch)) == repr(sch) == repr(pickle.loads(pickle.dumps(sch)))


@pytest.mark.parametrize("shift", [1.0, 3.0, 100.0, 1e6])
def test_flow_grid_starts_at_t_max_whatever_it_is(shift):
    """FlowSchedule.grid ran u from 1 and then put t_max in front: with t_max < 1 (the default, 0.999) its
    second point could lie above the first (1000 steps, or a large shift), an invalid grid."""
    import diffsolve as ds

    for sch in (ds.FlowSchedule(shift=shift), ds.FlowSchedule(t_max=1 - 1e-9, shift=shift)):
        for n in (2, 10, 1000):
            t = sch.grid(n)
            assert t[0] == sch.t_max and t[-1] == sch.t_min and bool((t[:-1] > t[1:]).all()), (sch, n)


def test_schedule_and_grid_arguments_are_checked_where_they_are_given():
    """Infinite, NaN, negative or non-numeric parameters were accepted (failing later, blaming the network) or
    raised raw errors; a 2-D or NaN table, a table with another N, an out-of-range λ (NaN on VP), numpy
    step counts and Karras' rho."""
    import numpy as np

    import diffsolve as ds

    bad = [lambda: ds.VPSchedule(beta_max=math.inf), lambda: ds.VPSchedule(beta_min="0.1"),
           lambda: ds.EDMSchedule(sigma_max=math.inf), lambda: ds.VESchedule(t_min=0.9, t_max=0.1),
           lambda: ds.VESchedule(t_max=math.nan), lambda: ds.CosineSchedule(s=-0.5), lambda: ds.CosineSchedule(s=-1),
           lambda: ds.DDPMSchedule(num_train_timesteps=-5), lambda: ds.DDPMSchedule(num_train_timesteps=10.5),
           lambda: ds.DDPMSchedule(betas=torch.full((10, 10), 0.01)),
           lambda: ds.DDPMSchedule(betas=[0.01, math.nan, 0.02]),
           lambda: ds.DDPMSchedule(betas=torch.full((10,), 0.01), num_train_timesteps=100),
           lambda: ds.make_grid(ds.VPSchedule(), 5, "karras", rho=0),
           lambda: ds.make_grid(ds.VPSchedule(), 5, "karras", rho=-1)]
    for make in bad:
        with pytest.raises((ValueError, TypeError)):
            make()
    assert ds.DDPMSchedule(num_train_timesteps=100).num_train_timesteps == 100
    for sch in (VPSchedule(), SubVPSchedule(), EDMSchedule(), DDPMSchedule()):
        t = sch.t_of_log_snr(torch.tensor([-math.inf, -800.0, 800.0, math.inf], dtype=torch.float64))
        assert t.tolist() == [sch.t_max, sch.t_max, sch.t_min, sch.t_min]
    assert len(ds.make_grid(VPSchedule(), np.int64(9))) == 10


class _SigmoidLogSNR(Schedule):
    """A user's VP schedule, λ falling linearly from 5 to -5 on [0, 1] (the hooks the base class asks for)."""

    def __init__(self, t_min=0.0, t_max=1.0, hi=5.0, lo=-5.0, dtype=torch.float64):
        self.t_min, self.t_max, self.hi, self.lo, self.dtype = t_min, t_max, hi, lo, dtype

    def _lam(self, t):
        return (self.hi + (self.lo - self.hi) * t).to(self.dtype)

    def _log_alpha(self, t):
        return -0.5 * torch.nn.functional.softplus(-2 * self._lam(t))

    def _log_sigma(self, t):
        return -0.5 * torch.nn.functional.softplus(2 * self._lam(t))

    def _d_log_alpha(self, t):
        return (self.lo - self.hi) * torch.sigmoid(-2 * self._lam(t))

    def _d_log_sigma(self, t):
        return -(self.lo - self.hi) * torch.sigmoid(2 * self._lam(t))

    def _t_of_log_snr(self, lam):
        return ((lam - self.hi) / (self.lo - self.hi)).to(self.dtype)


def test_a_user_schedule_is_checked_when_made():
    import diffsolve as ds

    s = _SigmoidLogSNR()
    gm = ds.GaussianMixture.random(d=4, n_modes=2, seed=1)
    assert torch.isfinite(ds.sample(gm.denoiser(s), seeds="0-1", nfe=6).x).all()
    # the public names instead of the hooks: named, with the fix
    class Public(Schedule):
        t_min, t_max = 0.0, 1.0

        def log_alpha(self, t):
            return torch.zeros_like(torch.as_tensor(t, dtype=torch.float64))

    with pytest.raises(TypeError, match=r"must implement _log_alpha, .*it overrides log_alpha.*implement the hooks"):
        ds.make_schedule(Public())  # (no __init__ of its own: checked where it is first used)
    with pytest.raises(TypeError, match="must implement _t_of_log_snr"):
        type("NoInverse", (_SigmoidLogSNR,), {"_t_of_log_snr": Schedule._t_of_log_snr})()
    with pytest.raises(ValueError, match=r"λ = log\(α/σ\) must be finite at t_min and t_max and fall"):
        _SigmoidLogSNR(hi=-5.0, lo=5.0)  # rising λ
    with pytest.raises(ValueError, match="needs finite times t_min < t_max"):
        _SigmoidLogSNR(t_min=1.0, t_max=0.5)
    # hooks computing in float32: the public API answers in float64 all the same
    s32 = _SigmoidLogSNR(dtype=torch.float32)
    for method in ("log_alpha", "log_sigma", "alpha", "sigma", "log_snr", "d_log_alpha", "d_log_sigma", "d_log_snr",
                   "f", "g2", "g"):
        assert getattr(s32, method)(0.5).dtype == torch.float64, method
    assert s32.t_of_log_snr(0.0).dtype == torch.float64 and s32.alpha_sigma(0.5)[1].dtype == torch.float64
    assert s32.tabulate(torch.tensor([0.9, 0.1], dtype=torch.float64)).log_alpha.dtype == torch.float64
