"""LearnedMultistep (free per-step weights) and tune_solver (fitting them): the default weights are
DPM-Solver++(2M), any weights integrate a frozen x̂0 exactly (docs/math.md (4.1)), tensor and float weights
give the same run, and a fitted run is never worse than its start on the held-out pilots."""
import math

import pytest
import torch

import diffsolve as ds
from diffsolve.solvers.learned import LearnedMultistep
from diffsolve.tune import TunedGrid, tune_solver

F64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    return ds.GaussianMixture.ring().denoiser(ds.DDPMSchedule(), "eps")


def _random_weights(steps, history, seed):
    g = torch.Generator().manual_seed(seed)
    return (0.5 * torch.randn(steps, history - 1, generator=g, dtype=F64),
            0.5 * torch.randn(steps, history, generator=g, dtype=F64))


@pytest.mark.parametrize("steps", [2, 5, 11])
@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_default_weights_are_dpmpp_2m(model, steps, prediction):
    den = ds.GaussianMixture.ring().denoiser(ds.DDPMSchedule(), prediction)
    x = torch.randn(32, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    a = ds.sample(den, x, solver="learned", steps=steps, denoise_final=False)
    b = ds.sample(den, x, solver="dpmpp_2m", steps=steps, denoise_final=False,
                  solver_options=dict(lower_order_final=False))
    assert a.nfe == b.nfe == steps
    torch.testing.assert_close(a.x, b.x, rtol=0, atol=1e-12)


@pytest.mark.parametrize("history", [2, 3, 4])
def test_any_weights_integrate_a_constant_x0_exactly(history):
    """With x̂0 ≡ c the ODE solution is x_t = α_t c + (σ_t/σ_T)(x_T − α_T c) (docs/math.md (4.1) with frozen x̂0);
    the weights of every combination sum to one, so any predictor and corrector reproduce it."""
    sch = ds.VPSchedule()
    c = torch.tensor([0.7, -1.3], dtype=F64)
    den = ds.Denoiser(lambda x, t: c.expand_as(x).clone(), sch, prediction="x0")
    x = torch.randn(8, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    t = ds.make_grid(sch, 6, "log_snr")
    p, q = _random_weights(6, history, seed=history)
    out = ds.sample(den, x, solver=LearnedMultistep(p.tolist(), q.tolist(), history=history), grid=t,
                    denoise_final=False).x
    a_T, s_T, a_0, s_0 = (float(v) for v in (sch.alpha(t[0]), sch.sigma(t[0]), sch.alpha(t[-1]), sch.sigma(t[-1])))
    exact = a_0 * c + (s_0 / s_T) * (x - a_T * c)
    torch.testing.assert_close(out, exact, rtol=0, atol=1e-12)


def test_tensor_weights_match_float_weights_and_carry_gradients(model):
    x = torch.randn(16, 2, dtype=F64, generator=torch.Generator().manual_seed(2))
    p, q = _random_weights(5, 3, seed=7)
    d = torch.tensor([0.3, -0.2, 0.1, 0.0, 0.25], dtype=F64)
    a = ds.sample(model, x, solver=LearnedMultistep(p.tolist(), q.tolist(), shift=d.tolist()), steps=5,
                  denoise_final=False).x
    P, Q, D = (v.clone().requires_grad_(True) for v in (p, q, d))
    b = ds.sample(model, x, solver=LearnedMultistep(P, Q, shift=D), steps=5, denoise_final=False, enable_grad=True).x
    torch.testing.assert_close(a, b.detach(), rtol=0, atol=1e-12)
    b.square().sum().backward()
    assert P.grad is not None and bool(P.grad[1:, 0].ne(0).all()) and bool(P.grad[0].eq(0).all())
    assert bool(Q.grad[:4, 0].ne(0).all()) and bool(Q.grad[4].eq(0).all())  # the last step has no corrector
    assert bool(D.grad.ne(0).all())  # every evaluation's time input
    # a shift moves the time the network is told, nothing else: shift 0 is the unshifted run
    zero = ds.sample(model, x, solver=LearnedMultistep(p.tolist(), q.tolist(), shift=[0.0] * 5), steps=5,
                     denoise_final=False).x
    plain = ds.sample(model, x, solver=LearnedMultistep(p.tolist(), q.tolist()), steps=5, denoise_final=False).x
    assert torch.equal(zero, plain) and not torch.allclose(zero, a)


def test_weights_of_the_wrong_size_are_refused(model):
    with pytest.raises(ValueError, match="needs 5 rows of 2"):
        ds.sample(model, shape=(2, 2), solver=LearnedMultistep(predictor=[[0.0, 0.0]] * 4), steps=5)
    with pytest.raises(ValueError, match=r"needs \(5, 3\)"):
        ds.sample(model, shape=(2, 2), solver=LearnedMultistep(corrector=torch.zeros(5, 2, dtype=F64)), steps=5)
    with pytest.raises(ValueError, match="NaN"):
        ds.sample(model, shape=(2, 2), solver=LearnedMultistep(predictor=[[math.nan, 0.0]] * 5), steps=5)
    with pytest.raises(ValueError, match="shift has 4 rows"):
        ds.sample(model, shape=(2, 2), solver=LearnedMultistep(shift=[0.0] * 4), steps=5)
    with pytest.raises(ValueError, match="history"):
        LearnedMultistep(history=1)


@pytest.fixture(scope="module")
def fitted(model):
    grid = TunedGrid(t=ds.make_grid(model.schedule, 5, "quadratic").tolist(), solver="unipc", nfe=5,
                     denoise_final=False)
    return tune_solver(model, 5, grid=grid, pilot=64, screen=1024, fresh=64, iterations=40, check_every=5, lr=0.02)


def test_fitted_weights_never_worse_on_held_out_pilots_and_reproducible(model, fitted, tmp_path):
    from diffsolve.reference import ode_reference

    assert fitted.solver == "learned" and fitted.nfe == 5 and not fitted.denoise_final
    assert fitted.pilot_error < fitted.init_error  # 40 Adam steps improve a 2-D ring at NFE 5
    assert math.isfinite(fitted.fresh_error) and fitted.tuning_nfe > 0
    path = fitted.save(tmp_path / "w.json")
    sch = model.schedule
    x = float(sch.sigma(sch.t_max)) * ds.NoiseSource(64, (2,), seeds=fitted.pilot_seeds).randn()
    ref = ode_reference(model, x, sch.t_max, sch.t_min, rtol=1e-8, atol=1e-8, denoise_final=True)
    out = ds.sample(model, x, steps=str(path))  # the solver and its weights come with the file
    assert out.nfe == 5 and out.solver.name == "learned"
    # the pilots were screened from 16 candidates per pilot: their errors are weighted means
    assert fitted.screened == 1024 and len(fitted.pilot_weights) == 64
    w = torch.tensor(fitted.pilot_weights, dtype=F64)

    def rms(a, b, w):
        return float(((w * ((a - b) ** 2).mean(1)).sum() / w.sum()).sqrt())

    assert rms(out.x, ref, w) == pytest.approx(fitted.pilot_error, rel=1e-9)
    # held-out error of the start (2M weights on the grid) is an upper bound of the kept weights'
    start = ds.sample(model, x[-16:], solver="learned", steps=str(path), solver_options={}).x
    assert fitted.validation_error <= rms(start, ref[-16:], w[-16:]) + 1e-12
    # an explicit solver takes only the grid
    assert ds.sample(model, x, solver="dpmpp_2m", steps=str(path)).solver.name == "dpmpp_2m"


def test_tune_solver_bad_input(model):
    with pytest.raises(ValueError, match="validation"):
        tune_solver(model, 5, grid="log_snr", validation=1.5)
    with pytest.raises(ValueError, match="fresh seeds must differ"):
        tune_solver(model, 5, grid="log_snr", pilot="0-7", fresh="7-9")
    grid = TunedGrid(t=ds.make_grid(model.schedule, 5, "time").tolist(), solver="ddim", nfe=5, denoise_final=False)
    with pytest.raises(ValueError, match="not a budget of 6"):
        tune_solver(model, 6, grid=grid)


def test_cli_tune_learned_then_sample_and_bench(tmp_path):
    import json

    from diffsolve.cli import main

    w = tmp_path / "w.json"
    assert main(["tune", "--problem", "ring2d", "--solver", "learned", "--nfe", "4", "--pilot", "16", "--fresh", "8",
                 "--max-evals", "12", "--iterations", "10", "--denoise-final", "no", "--out", str(w), "--quiet"]) == 0
    tg = TunedGrid.load(w)
    assert tg.solver == "learned" and len(tg.solver_options["predictor"]) == 4
    assert math.isfinite(tg.fresh_error) and math.isfinite(tg.validation_error)
    assert main(["sample", "--problem", "ring2d", "--grid", str(w), "--seeds", "0-3", "--out", str(tmp_path / "x.pt"),
                 "--quiet"]) == 0
    assert torch.load(tmp_path / "x.pt").shape == (4, 2)
    assert main(["bench", "--problems", "ring2d", "--solvers", "learned", "--nfe", "4", "--grid", str(w),
                 "--n-samples", "16", "--out", str(tmp_path / "b"), "--no-plot", "--quiet"]) == 0
    row = json.loads((tmp_path / "b" / "results.jsonl").read_text().splitlines()[-1])
    assert row["nfe"] == 4 and row["steps"] == 4 and row["run"]["denoise_final"] is False  # as tuned
    assert main(["tune", "--problem", "ring2d", "--solver", "learned", "--nfe", "4", "--denoise-final", "auto",
                 "--out", str(tmp_path / "a.json"), "--quiet"]) == 2


@pytest.mark.parametrize("name,options,history", [("ddim", {}, 2), ("dpmpp_2m", {}, 2), ("dpmpp_3m", {}, 3),
                                                  ("unipc", {}, 3), ("unipc", {"variant": "bh1"}, 3),
                                                  ("unipc", {"order": 3}, 4)])
def test_weights_of_reproduces_data_prediction_multistep_solvers(model, name, options, history):
    """weights_of reads a solver's per-step weights off a probe network; LearnedMultistep with them
    is that solver (warm-up, lower-order final steps and UniPC's corrector included)."""
    from diffsolve.solvers import get_solver
    from diffsolve.solvers.learned import weights_of

    x = torch.randn(16, 2, dtype=F64, generator=torch.Generator().manual_seed(3))
    for steps, kind in ((5, "quadratic"), (9, "log_snr")):
        t = ds.make_grid(model.schedule, steps, kind)
        p, c = weights_of(get_solver(name, **options), model.schedule, t, history)
        a = ds.sample(model, x, solver=get_solver(name, **options), grid=t, denoise_final=False).x
        b = ds.sample(model, x, solver=LearnedMultistep(p, c, history=history), grid=t, denoise_final=False).x
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name,options", [("deis", {}), ("unipc", {"order": 3}),
                                          ("unipc", {"predict_x0": False})])
def test_weights_of_refuses_solvers_outside_the_family(model, name, options):
    from diffsolve.solvers import get_solver
    from diffsolve.solvers.learned import weights_of

    t = ds.make_grid(model.schedule, 6, "log_snr")
    with pytest.raises(ValueError, match="not a data-prediction multistep method"):
        weights_of(get_solver(name, **options), model.schedule, t, history=3)
