"""Step grids (docs/math.md §4, last paragraph): uniform in t, in λ, Karras ρ = 7, quadratic, diffusers'
discrete spacings, user arrays."""
import math

import pytest
import torch

from diffsolve.grids import GRIDS, make_grid, validate_grid
from diffsolve.schedules import (CosineSchedule, DDPMSchedule, EDMSchedule, FlowSchedule, SubVPSchedule,
                                 VESchedule, VPSchedule)

F64 = torch.float64
CONTINUOUS = {"vp": VPSchedule(), "cosine": CosineSchedule(), "ddpm": DDPMSchedule(), "subvp": SubVPSchedule(),
              "ve": VESchedule(), "edm": EDMSchedule(), "flow": FlowSchedule()}
DDPM = CONTINUOUS["ddpm"]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.mark.parametrize("name", list(CONTINUOUS))
@pytest.mark.parametrize("kind", ["time", "log_snr", "karras", "quadratic"])
def test_grid_shape_ends_and_monotone(name, kind):
    """steps + 1 float64 times, strictly decreasing, exactly t_max first and t_min last."""
    s = CONTINUOUS[name]
    for steps in (1, 2, 7, 50):
        t = make_grid(s, steps, kind)
        assert t.dtype == F64 and t.device.type == "cpu" and t.shape == (steps + 1,)
        assert float(t[0]) == s.t_max and float(t[-1]) == s.t_min
        assert bool((t[1:] < t[:-1]).all())
        assert bool((s.log_snr(t)[1:] > s.log_snr(t)[:-1]).all())


@pytest.mark.parametrize("name", list(CONTINUOUS))
def test_grid_spacings(name):
    """time: uniform in t; log_snr: uniform in λ; quadratic: uniform in √t; karras: uniform in
    (σ/α)^{1/ρ} (docs/math.md §4)."""
    s = CONTINUOUS[name]
    n = 20

    def uniform(v, rtol):
        d = v[1:] - v[:-1]
        torch.testing.assert_close(d, d.mean().expand_as(d), rtol=rtol, atol=1e-13 * float(v.abs().max()))

    uniform(make_grid(s, n, "time"), 1e-12)
    uniform(s.log_snr(make_grid(s, n, "log_snr")), 1e-10)
    uniform(make_grid(s, n, "quadratic").sqrt(), 1e-12)
    uniform(torch.exp(-s.log_snr(make_grid(s, n, "karras"))) ** (1 / 7), 1e-9)


def test_karras_matches_edm_formula():
    """EDM: σ_i = (σ_max^{1/ρ} + i/n (σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, i = 0..n (Karras et al. 2022,
    eq. 5), for ρ = 7 and ρ = 3."""
    s = EDMSchedule(0.002, 80.0)
    for rho in (7.0, 3.0):
        for n in (1, 5, 18, 40):
            i = torch.arange(n + 1, dtype=F64)
            ref = (80.0 ** (1 / rho) + i / n * (0.002 ** (1 / rho) - 80.0 ** (1 / rho))) ** rho
            torch.testing.assert_close(make_grid(s, n, "karras", rho=rho), ref, rtol=1e-14, atol=0)


def test_t_start_t_end():
    s = CONTINUOUS["vp"]
    t = make_grid(s, 10, "log_snr", t_start=0.6, t_end=0.1)
    assert float(t[0]) == 0.6 and float(t[-1]) == 0.1 and len(t) == 11
    with pytest.raises(ValueError, match="need t_end < t_start"):
        make_grid(s, 10, "time", t_start=0.1, t_end=0.6)
    with pytest.raises(ValueError, match="valid range"):
        make_grid(s, 10, "time", t_start=1.5)


# --- discrete spacings (diffusers) ---------------------------------------------------------

def _diffusers_timesteps(kind, n):
    from diffusers import DDIMScheduler

    sch = DDIMScheduler(num_train_timesteps=1000, timestep_spacing=kind, steps_offset=1 if kind == "leading" else 0)
    sch.set_timesteps(n)
    return sch.timesteps.tolist()


@pytest.mark.parametrize("kind", ["leading", "trailing", "linspace"])
def test_discrete_spacings_match_diffusers(kind):
    """Every grid point is an exact training timestep k (its label t·N − 1 is the integer k), and
    the timesteps equal diffusers' DDIMScheduler.timesteps: for "leading" (steps_offset = 1, as
    Stable Diffusion) and "trailing" the grid is diffusers' n timesteps followed by t_min
    (timestep 0); diffusers' "linspace" with n + 1 timesteps already ends at timestep 0, so it is
    the grid of n steps."""
    for steps in (1, 2, 3, 7, 10, 20, 25, 50, 100, 250, 500):
        t = make_grid(DDPM, steps, kind)
        k = DDPM.time_label(t)
        assert torch.equal(k, k.round()) and float(t[-1]) == DDPM.t_min
        assert torch.equal(DDPM.t_of_timestep(k), t)
        ref = _diffusers_timesteps(kind, steps + 1 if kind == "linspace" else steps)
        ours = [int(v) for v in k.tolist()]
        assert ours == (ref if kind == "linspace" else ref + [0]), (kind, steps, ours[:5], ref[:5])
        assert len(t) == steps + 1
        assert bool((t[1:] < t[:-1]).all())


def test_discrete_spacing_errors():
    with pytest.raises(ValueError, match="needs a discrete DDPMSchedule"):
        make_grid(CONTINUOUS["vp"], 10, "leading")
    with pytest.raises(ValueError, match="at most 999 steps"):
        make_grid(DDPM, 1000, "trailing")


# --- user arrays ----------------------------------------------------------------------------

def test_user_array_accepted():
    s = CONTINUOUS["vp"]
    t = make_grid(s, None, [1.0, 0.5, 0.1, 0.001])
    assert t.dtype == F64 and t.tolist() == [1.0, 0.5, 0.1, 0.001]
    t32 = torch.tensor([0.9, 0.5, 0.25], dtype=torch.float32)
    assert validate_grid(s, t32).dtype == F64
    assert torch.equal(validate_grid(s, torch.tensor([0.9, 0.1], dtype=F64)), torch.tensor([0.9, 0.1], dtype=F64))


def test_user_array_errors():
    s = CONTINUOUS["vp"]
    with pytest.raises(ValueError, match=r"strictly decreasing.*an increase at index 1: t\[1\]=0\.3, t\[2\]=0\.5"):
        validate_grid(s, [0.9, 0.3, 0.5, 0.1])
    with pytest.raises(ValueError, match=r"a repeated time \(zero-size step\) at index 1"):
        validate_grid(s, [0.9, 0.5, 0.5, 0.1])
    with pytest.raises(ValueError, match=r"valid range is \[0\.001, 1\]"):
        validate_grid(s, [1.2, 0.5, 0.1])
    with pytest.raises(ValueError, match=r"ends at t = 0, below the schedule's t_min = 0.001 .*denoise_final=True"):
        validate_grid(s, [0.9, 0.5, 0.0])
    with pytest.raises(ValueError, match=r"got t in \[0.0009989, 0.9\]"):  # beyond float32 round-off: refused
        validate_grid(s, [0.9, 0.5, 0.0009989])

    with pytest.raises(ValueError, match="NaN or Inf"):
        validate_grid(s, [0.9, math.nan, 0.1])
    with pytest.raises(ValueError, match="1-D with at least 2 points"):
        validate_grid(s, [0.5])
    with pytest.raises(ValueError, match="1-D with at least 2 points"):
        validate_grid(s, [[0.9, 0.5], [0.4, 0.1]])
    edm = CONTINUOUS["edm"]
    below = math.nextafter(80.0, 0.0)  # adjacent floats: Δλ = Δσ/σ is below λ's resolution
    assert float(edm.log_snr(80.0)) == float(edm.log_snr(below))
    with pytest.raises(ValueError, match="zero size in log-SNR"):
        validate_grid(edm, [80.0, below, 1.0])


def test_user_grid_ends_within_float32_round_off_are_the_range_ends():
    """k-diffusion's float32 Karras sigmas end at 0.0019999996 for σ_min = 0.002: the grid takes them as
    the range's ends instead of refusing a point that prints as the limit itself."""
    edm = EDMSchedule()
    t = validate_grid(edm, torch.tensor([80.00001, 1.0, 0.0019999996293336153], dtype=torch.float64))
    assert t.tolist() == [80.0, 1.0, 0.002]
    t = validate_grid(edm, torch.tensor([80.0, 1.0, 0.0019999996293336153], dtype=torch.float32))
    assert float(t[0]) == 80.0 and float(t[-1]) == edm.t_min
    # each end on its own: a start far above t_max beside an end within round-off (k-diffusion's Karras sigmas
    # from σ_max = 100) was moved to 80 silently, and so was an end far below t_min beside such a start
    for bad in ([100.0, 1.0, 0.0019999996293336153], [80.00001, 1.0, 0.0005]):
        with pytest.raises(ValueError, match="outside"):
            validate_grid(edm, torch.tensor(bad, dtype=torch.float64))


def test_bad_kind_and_steps():
    s = CONTINUOUS["vp"]
    with pytest.raises(ValueError, match="valid grids: " + ", ".join(GRIDS)):
        make_grid(s, 10, "uniform")
    for bad in (0, -3, 2.5, None):
        with pytest.raises(ValueError, match="steps must be a positive integer"):
            make_grid(s, bad, "time")


@pytest.mark.parametrize("name", list(CONTINUOUS))
def test_memoised_grid_and_table(name):
    """make_grid and Schedule.tabulate are memoised per schedule: a repeated request returns the
    same values as a fresh schedule's first computation; the caller's copy of a grid can be
    modified without changing later grids; the table is the schedule's own functions at the grid."""
    s = CONTINUOUS[name]
    fresh = type(s)()
    for kind in ("log_snr", "karras", "time"):
        first = make_grid(s, 9, kind)
        first[3] = 0.7 * first[2] + 0.3 * first[4]  # the caller's copy
        again = make_grid(s, 9, kind)
        assert torch.equal(again, make_grid(fresh, 9, kind)) and not torch.equal(again, first)
        table = s.tabulate(again)
        assert table is s.tabulate(again.clone())  # keyed by the values, not the tensor
        for got, want in zip(table[1:], (s.log_alpha(again), s.log_sigma(again), s.d_log_alpha(again),
                                         s.d_log_sigma(again))):
            assert torch.equal(got, want)
        torch.testing.assert_close(table.log_snr, s.log_snr(again), rtol=0, atol=1e-14)
    with pytest.raises(ValueError, match="outside the range"):
        s.tabulate(torch.tensor([s.t_max + 1.0, s.t_min], dtype=F64))


def test_ddpm_interpolation_knots_and_slopes():
    """DDPM's piecewise-linear log α: exact at every knot (including the last), linear between
    knots, extrapolated with the end slopes; d log α/dt is the left-continuous segment slope."""
    s = DDPM
    N = s.num_train_timesteps
    k = torch.arange(1, N + 1, dtype=F64) / N
    la = s._la_of_t.fp
    assert torch.equal(s.log_alpha(k), la)
    mid = 0.5 * (k[1:] + k[:-1])
    torch.testing.assert_close(s.log_alpha(mid), 0.5 * (la[1:] + la[:-1]), rtol=0, atol=1e-15)
    seg = (la[1:] - la[:-1]) * N
    torch.testing.assert_close(s.d_log_alpha(k[1:]), seg, rtol=1e-12, atol=0)  # the segment below each knot
    torch.testing.assert_close(s.d_log_alpha(mid), seg, rtol=1e-12, atol=0)
    assert float(s.d_log_alpha(k[0])) == pytest.approx(float(seg[0]), rel=1e-12)
    # the inverse map hits the knots back
    torch.testing.assert_close(s.t_of_log_snr(s.log_snr(k)), k, rtol=1e-12, atol=0)
