"""DEIS / DPM-Solver in noise prediction (diffsolve.solvers.deis; docs/math.md §4, ε̂ form).

The generic checks (every schedule and prediction type, order 3 by default, NaN reporting, too few
steps, reproducibility) run in test_solvers.py; here: the weights, every order and variable, and
the equivalence with DDIM. diffusers' DEISMultistepScheduler step for step: test_diffusers_crosscheck.
"""
import math

import numpy as np
import pytest
import torch

import diffsolve as ds
from diffsolve.processes import NoiseLevel
from diffsolve.solvers import get_solver
from diffsolve.loop import integrate
from diffsolve.solvers.deis import lagrange_weights
from helpers import ode_errors, slope

F64 = torch.float64


def test_weights_integrate_polynomials_exactly():
    """ρ variable: Σ_j C_j q(τ_j) = ∫ q for every polynomial q of degree < p (p nodes)."""
    rng = np.random.default_rng(0)
    nodes = [3.0, 3.7, 4.9, 6.2]  # newest first, as the solver passes them
    a, b = 3.0, 2.1
    for p in range(1, 5):
        q = np.polynomial.Polynomial(rng.normal(size=p))
        C = lagrange_weights(nodes[:p], a, b, exp_weight=False)
        exact = q.integ()(b) - q.integ()(a)
        assert abs(sum(c * q(n) for c, n in zip(C, nodes)) - exact) < 1e-13 * (1 + abs(exact))


def test_log_rho_weights_against_closed_forms():
    """log ρ variable: one node gives ∫ e^τ dτ = ρ_{i+1} − ρ_i; two nodes reproduce the closed form
    diffusers' DEIS integrates, ∫ e^τ (τ − c)/(b − c) dτ, for a long and a short step."""
    for a, b in [(math.log(80.0), math.log(3.0)), (-1.0, -1.001)]:
        C = lagrange_weights([a], a, b, exp_weight=True)
        assert C[0] == pytest.approx(math.exp(b) - math.exp(a), rel=1e-14)
        c = a + 0.8  # previous node (higher noise)
        F = lambda t, n, m: math.exp(t) * (t - 1 - m) / (n - m)  # antiderivative of e^t (t - m)/(n - m)
        C = lagrange_weights([a, c], a, b, exp_weight=True)
        assert C[0] == pytest.approx(F(b, a, c) - F(a, a, c), rel=1e-12)
        assert C[1] == pytest.approx(F(b, c, a) - F(a, c, a), rel=1e-12)


@pytest.mark.parametrize("variable", ["log_rho", "rho"])
def test_order_one_is_ddim(variable):
    den = ds.GaussianMixture.ring(std=0.3).denoiser("cosine", "v")
    sch = den.schedule
    x = float(sch.sigma(sch.t_max)) * torch.randn(8, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    t = ds.make_grid(sch, 12, "karras")
    a = integrate(get_solver("deis", order=1, variable=variable), den, x, t, level=NoiseLevel(sch, 0.0)).x
    b = integrate(get_solver("ddim"), den, x, t, level=NoiseLevel(sch, 0.0)).x
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("variable", ["log_rho", "rho"])
@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_measured_order(order, variable):
    """Local slope of log error against log steps on the ring ODE problem of helpers.ode_problem
    (λ-uniform grid, 32 to 256 steps) reaches the declared order within ±0.3. Local slopes, because order 4
    wobbles before it settles (the ρ variable is asymptotic late, and the first-order warm-up step
    leaves an O(h²) term with a tiny constant; module docstring): on this problem the local slopes
    of order 4 in log ρ are 4.8, 4.1, 3.3 between 32 and 256 steps."""
    solver = get_solver("deis", order=order, variable=variable)
    steps = (32, 64, 128, 256)
    errs = ode_errors(solver, steps)
    slopes = [slope(steps[k:k + 2], errs[k:k + 2]) for k in range(3)]
    assert min(abs(p - solver.declared_order) for p in slopes) <= 0.3, \
        f"deis order={order} {variable}: local slopes {slopes}; errors {errs}"


def test_grid_reaching_sigma_zero_is_refused():
    den = ds.GaussianMixture.ring().denoiser("vp", "eps")
    sch = den.schedule
    t = torch.tensor([sch.t_max, 0.5, 0.1, 0.0], dtype=F64)
    x = torch.zeros(2, 2, dtype=F64)
    with pytest.raises(ValueError):
        integrate(get_solver("deis"), den, x, t, level=NoiseLevel(sch, 0.0))


def test_bad_options():
    with pytest.raises(ValueError, match="unknown variable"):
        get_solver("deis", variable="sigma")
    with pytest.raises(ValueError, match=r"order must be one of \[1, 2, 3, 4\]"):
        get_solver("deis", order=5)
