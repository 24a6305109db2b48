"""tune_steps: tuned grids are valid, never worse than their start on the pilot set, reusable."""
import json
import math

import pytest
import torch

import diffsolve as ds
from diffsolve.tune import TunedGrid, tune_steps


@pytest.fixture(scope="module")
def model():
    return ds.GaussianMixture.ring().denoiser(ds.VPSchedule(), "eps")


@pytest.fixture(scope="module")
def tuned(model):
    # the grid file's checks below are written for a run ending with the final denoise; plain pilots
    return tune_steps(model, "dpmpp_2m", nfe=6, pilot=24, screen=0, fresh=24, max_evals=60, denoise_final=True)


def test_grid_is_valid(model, tuned):
    t = tuned.grid
    sch = model.schedule
    assert len(t) == tuned.nfe  # nfe-1 steps (+1 final denoise) -> nfe points
    assert float(t[0]) == sch.t_max and float(t[-1]) >= sch.t_min
    assert bool((t[1:] < t[:-1]).all())
    ds.grids.validate_grid(sch, t)


def test_never_worse_than_start_on_pilot(tuned):
    assert tuned.pilot_error <= tuned.init_error
    assert math.isfinite(tuned.fresh_error) and math.isfinite(tuned.init_fresh_error)
    assert tuned.tuning_nfe > 0 and tuned.evaluations > 0


def test_error_reported_is_reproducible(model, tuned):
    """The pilot error stored in the file is what sample() gives with the saved grid."""
    from diffsolve.reference import ode_reference

    x = model.schedule.sigma(model.schedule.t_max).item() * ds.NoiseSource(24, (2,), seeds=tuned.pilot_seeds).randn()
    ref = ode_reference(model, x, model.schedule.t_max, model.schedule.t_min, rtol=1e-8, atol=1e-8, denoise_final=True)
    out = ds.sample(model, x, solver="dpmpp_2m", steps=tuned)
    assert out.nfe == tuned.nfe
    err = float(((out.x - ref) ** 2).mean().sqrt())
    assert err == pytest.approx(tuned.pilot_error, rel=1e-6)


def test_pps_sample_is_unbiased_distinct_and_takes_the_dominant_candidates():
    """docs/math.md (18.4): P distinct indices; those whose inclusion probability would reach one
    with weight 1; Σ w_i f_i unbiased for Σ f over repeated draws; a flat proxy gives a plain sample
    with weights M/P."""
    from diffsolve._tuning import pps_sample

    g = torch.Generator().manual_seed(1)
    M, P = 1000, 64
    proxy = torch.cat([torch.tensor([100.0, 50.0, 30.0], dtype=torch.float64),
                       0.1 * torch.rand(M - 3, generator=g, dtype=torch.float64)])
    f = proxy + torch.rand(M, generator=g, dtype=torch.float64)
    est = []
    for k in range(2000):
        s = pps_sample(proxy, P, torch.Generator().manual_seed(k))
        assert len({i for i, _ in s}) == P and all(w >= 1.0 for _, w in s)
        assert {0, 1, 2} <= {i for i, w in s if w == 1.0}
        est.append(sum(w * float(f[i]) for i, w in s))
    est = torch.tensor(est, dtype=torch.float64)
    assert abs(float(est.mean()) - float(f.sum())) < 4 * float(est.std()) / math.sqrt(len(est))
    flat = pps_sample(torch.zeros(M, dtype=torch.float64), P, torch.Generator().manual_seed(0))
    assert len({i for i, _ in flat}) == P and all(w == pytest.approx(M / P) for _, w in flat)
    assert pps_sample(proxy[:10], 12, g) == [(i, 1.0) for i in range(10)]


def test_screened_pilots(model):
    """screen=M: the pilots are the πps sample of the M candidates by the default call's error (NFE n
    against 3n, every evaluation by the network) with its weights; the reported pilot error is that weighted mean; fresh seeds follow
    the candidates."""
    from diffsolve._tuning import pps_sample
    from diffsolve.reference import ode_reference

    sch, M, P = model.schedule, 96, 12
    g = tune_steps(model, "ddim", nfe=4, pilot=P, screen=M, fresh=8, max_evals=20)
    assert g.screened == M and len(g.pilot_seeds) == P and set(g.pilot_seeds) <= set(range(M))
    assert g.fresh_seeds == list(range(M, M + 8))
    x = sch.sigma(sch.t_max).item() * ds.NoiseSource(M, (2,), seeds=range(M)).randn()
    proxy = ((ds.sample(model, x, nfe=4, analytic_first_step=False).x
              - ds.sample(model, x, nfe=12, analytic_first_step=False).x) ** 2).sum(1)
    expect = dict(pps_sample(proxy.to(torch.float64), P, torch.Generator().manual_seed(0)))
    w = dict(zip(g.pilot_seeds, g.pilot_weights))
    assert set(w) == set(expect) and all(w[s] == pytest.approx(expect[s], rel=1e-9) for s in w)
    xp = x[g.pilot_seeds]
    ref = ode_reference(model, xp, sch.t_max, sch.t_min, rtol=1e-8, atol=1e-8, denoise_final=True)
    out = ds.sample(model, xp, steps=g).x
    wt = torch.tensor(g.pilot_weights, dtype=torch.float64)
    err = float(((wt * ((out - ref) ** 2).mean(1)).sum() / wt.sum()).sqrt())
    assert err == pytest.approx(g.pilot_error, rel=1e-6)
    # explicit pilot seeds are used as given; screening them is refused, not ignored
    assert tune_steps(model, "ddim", nfe=4, pilot="0-7", fresh=0, max_evals=8).screened == 0
    with pytest.raises(ValueError, match="pilot seeds were given"):
        tune_steps(model, "ddim", nfe=4, pilot="0-7", screen=64, fresh=0, max_evals=8)
    with pytest.raises(ValueError, match="screen"):
        tune_steps(model, "ddim", nfe=4, pilot=8, screen=-1)


def test_save_load_and_reuse(model, tuned, tmp_path):
    path = tuned.save(tmp_path / "grid.json")
    again = TunedGrid.load(path)
    assert again.t == tuned.t and again.solver == "dpmpp_2m"
    r = ds.sample(model, shape=(4, 2), solver="dpmpp_2m", steps=str(path))
    assert torch.equal(r.t, tuned.grid)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"t": [1.0]}))
    with pytest.raises(ValueError, match="missing"):
        TunedGrid.load(bad)
    with pytest.raises(FileNotFoundError):
        TunedGrid.load(tmp_path / "nope.json")


def test_bad_input(model):
    with pytest.raises(ValueError, match="fixed-step"):
        tune_steps(model, "dopri5", nfe=6)
    with pytest.raises(ValueError, match="fresh seeds must differ"):
        tune_steps(model, "ddim", nfe=4, pilot="0-3", fresh="3-5")
    with pytest.raises(ValueError, match="at least"):
        tune_steps(model, "heun", nfe=1)  # one heun step takes 2 evaluations


def test_cli_tune_then_sample_and_bench(tmp_path):
    from diffsolve.cli import main

    grid = tmp_path / "g.json"
    assert main(["tune", "--problem", "ring2d", "--solver", "ddim", "--nfe", "4", "--pilot", "8", "--fresh", "8",
                 "--max-evals", "12", "--out", str(grid), "--quiet"]) == 0
    tg = TunedGrid.load(grid)
    assert tg.solver == "ddim" and tg.nfe == 4 and tg.pilot_error <= tg.init_error
    assert main(["sample", "--problem", "ring2d", "--solver", "ddim", "--grid", str(grid), "--seeds", "0-3",
                 "--out", str(tmp_path / "x.pt"), "--quiet"]) == 0
    x = torch.load(tmp_path / "x.pt")
    assert x.shape == (4, 2)
    assert main(["bench", "--problems", "ring2d", "--solvers", "ddim", "--nfe", "4", "--grid", str(grid),
                 "--n-samples", "16", "--out", str(tmp_path / "b"), "--no-plot", "--quiet"]) == 0
    row = json.loads((tmp_path / "b" / "results.jsonl").read_text().splitlines()[-1])
    assert row["nfe"] == 4
    # a tuned grid is for one solver and one budget
    assert main(["bench", "--problems", "ring2d", "--solvers", "unipc", "--nfe", "4", "--grid", str(grid),
                 "--out", str(tmp_path / "c"), "--quiet"]) == 2
    assert main(["tune", "--problem", "ring2d", "--solver", "dopri5", "--nfe", "4", "--out", str(tmp_path / "d.json"),
                 "--quiet"]) == 2


def test_auto_denoise_keeps_the_better_and_sample_honours_it(model):
    g = tune_steps(model, "ddim", nfe=4, pilot=8, fresh=0, max_evals=10, denoise_final="auto")
    alone = [tune_steps(model, "ddim", nfe=4, pilot=8, fresh=0, max_evals=10, denoise_final=d) for d in (True, False)]
    assert g.pilot_error == min(a.pilot_error for a in alone)
    r = ds.sample(model, shape=(3, 2), solver="ddim", steps=g)
    assert r.nfe == 4 and len(r.t) == (4 if g.denoise_final else 5)
    with pytest.raises(ValueError, match="denoise_final"):
        tune_steps(model, "ddim", nfe=4, denoise_final="maybe")


def test_spec_options_are_recorded(model):
    # the tuned grid rebuilds the solver it was tuned for, options included
    g = tune_steps(model, "unipc:order=3", nfe=5, pilot=8, fresh=0, max_evals=8, solver_options={"variant": "bh1"})
    assert g.solver == "unipc" and g.solver_options == {"order": 3, "variant": "bh1"}
    r = ds.sample(model, shape=(3, 2), seeds=[0, 1, 2], steps=g)
    assert (r.solver.solver_order, r.solver.variant) == (3, "bh1")
    with pytest.raises(TypeError, match="by name or spec"):
        tune_steps(model, ds.solvers.get_solver("unipc", order=3), nfe=5)


def test_load_checks_the_fields_that_decide_the_run(tuned, tmp_path):
    path = tuned.save(tmp_path / "grid.json")
    assert TunedGrid.load(path).t == tuned.t  # a saved file loads unchanged
    good = json.loads(path.read_text())
    for change, needle in [
        ({"denoise_final": "no"}, "'denoise_final' must be true or false (a JSON boolean), got \"no\""),
        ({"denoise_final": 0}, "'denoise_final' must be true or false"),
        ({"nfe": tuned.nfe + 1}, (f"'nfe' is {tuned.nfe + 1}, but its grid 't' has {tuned.nfe - 1} steps, which "
                                  f"'dpmpp_2m' runs in {tuned.nfe} evaluations with the final denoise; set 'nfe' "
                                  f"to {tuned.nfe}")),
        ({"denoise_final": False}, f"set 'nfe' to {tuned.nfe - 1}"),  # the same grid without x̂0 costs one less
        ({"nfe": "6"}, "'nfe' must be a positive integer"),
        ({"t": tuned.t[:1] + tuned.t[2:3] + tuned.t[1:2] + tuned.t[3:]},
         "'t' is not a valid time grid: the time grid must be strictly decreasing"),
        ({"t": [float("nan")] + tuned.t[1:]}, "'t' is not a valid time grid: the time grid contains NaN"),
        ({"t": ["1.0"] + tuned.t[1:]}, "'t' must be a list of numbers"),
        ({"t": 1.0}, "'t' must be a list of numbers"),
        ({"solver": "dopri5"}, "chooses its own steps"),
    ]:
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps({**good, **change}))
        with pytest.raises(ValueError) as e:
            TunedGrid.load(bad)
        assert str(e.value).startswith(f"{bad}: ") and needle in str(e.value), str(e.value)
    # the command line reports it as a one-line error naming the file and the field
    from diffsolve.cli import main

    bad.write_text(json.dumps({**good, "denoise_final": "no"}))
    assert main(["sample", "--problem", "ring2d", "--grid", str(bad), "--out", str(tmp_path / "x.pt")]) == 2


def test_cli_leaves_pilots_and_screening_to_the_tuner(tmp_path, monkeypatch):
    """`diffsolve tune` without --pilot / --screen passes neither, so each tuner's own defaults hold
    (tune_steps: 128 pilots screened from 2048; tune_solver: 1024 plain pilots)."""
    import diffsolve.tune as tune_module
    from diffsolve.cli import main

    seen = {}

    def spy(name):
        def run(*args, **kw):
            seen[name] = kw
            raise SystemExit(0)
        return run

    for name in ("tune_steps", "tune_solver"):
        monkeypatch.setattr(tune_module, name, spy(name))
    for solver in ("unipc", "learned"):
        with pytest.raises(SystemExit):
            main(["tune", "--problem", "ring2d", "--solver", solver, "--nfe", "5", "--denoise-final", "no",
                  "--out", str(tmp_path / "g.json"), "--quiet"])
    assert not {"pilot", "screen"} & (set(seen["tune_steps"]) | set(seen["tune_solver"]))
    assert seen["tune_steps"]["denoise_final"] is False and seen["tune_solver"]["denoise_final"] is False
    for solver in ("unipc", "learned"):  # nor --denoise-final: each tuner's own default
        with pytest.raises(SystemExit):
            main(["tune", "--problem", "ring2d", "--solver", solver, "--nfe", "5",
                  "--out", str(tmp_path / "g.json"), "--quiet"])
    assert "denoise_final" not in set(seen["tune_steps"]) | set(seen["tune_solver"])
    with pytest.raises(SystemExit):
        main(["tune", "--problem", "ring2d", "--solver", "unipc", "--nfe", "5", "--pilot", "8", "--screen", "0",
              "--out", str(tmp_path / "g.json"), "--quiet"])
    assert seen["tune_steps"]["pilot"] == 8 and seen["tune_steps"]["screen"] == 0


def test_cli_solver_auto_follows_the_budget_rule(tmp_path, monkeypatch, capsys):
    """`diffsolve tune` without --solver runs default_tuner(nfe): tune_solver (fitted weights) up to
    LEARNED_UP_TO evaluations, tune_steps with UniPC above; --denoise-final auto is refused where it
    picks the learned solver, with the reason."""
    import diffsolve.tune as tune_module
    from diffsolve.cli import main
    from diffsolve.defaults import LEARNED_UP_TO, default_tuner

    seen = []

    def spy(name):
        def run(*args, **kw):
            seen.append((name, args))
            raise SystemExit(0)
        return run

    for name in ("tune_steps", "tune_solver"):
        monkeypatch.setattr(tune_module, name, spy(name))
    for nfe in (4, LEARNED_UP_TO, LEARNED_UP_TO + 1, 10):
        with pytest.raises(SystemExit):
            main(["tune", "--problem", "ring2d", "--nfe", str(nfe), "--out", str(tmp_path / "g.json"), "--quiet"])
        name, args = seen[-1]
        assert name == ("tune_solver" if default_tuner(nfe) == "learned" else "tune_steps")
        assert name == "tune_solver" if nfe <= LEARNED_UP_TO else args[1] == "unipc"
    assert main(["tune", "--problem", "ring2d", "--nfe", "4", "--denoise-final", "auto",
                 "--out", str(tmp_path / "g.json"), "--quiet"]) == 2
    assert "auto picks learned at NFE 4" in capsys.readouterr().err


def test_auto_ends_that_fit_and_a_grids_own_final_denoise():
    """denoise_final="auto" tunes the ends that fit the budget (and an init array): NFE 1 without the final
    denoise; a 3-step array at NFE 4 with it; an array fitting neither is refused naming both. tune_solver
    refuses denoise_final=True on a grid tuned without it (it was silently ignored)."""
    den = ds.GaussianMixture.ring().denoiser("vp", "eps")
    kw = dict(pilot=8, screen=0, fresh=0, max_evals=6)
    assert not ds.tune_steps(den, nfe=1, **kw).denoise_final
    g = ds.tune_steps(den, nfe=4, init=torch.linspace(1, 0.001, 4, dtype=torch.float64), **kw)
    assert g.denoise_final and len(g.t) == 4
    with pytest.raises(ValueError, match="with the final denoise takes 3.*without the final denoise takes 4"):
        ds.tune_steps(den, nfe=4, init=torch.linspace(1, 0.001, 8, dtype=torch.float64), **kw)
    plain = ds.tune_steps(den, nfe=5, denoise_final=False, **kw)
    with pytest.raises(ValueError, match="tuned without the final denoise"):
        ds.tune_solver(den, 5, grid=plain, denoise_final=True, pilot=8, fresh=0, iterations=1)


def test_a_half_precision_network_is_tuned_against_a_reference_it_can_reach():
    """The reference solves ran at rtol 1e-8 whatever the network: a float16 network's round-off made them
    chase noise (66 000 network calls, 73 s, for 8 pilots on the ring; bfloat16 did not finish in 400 s).
    They are now floored at a tenth of the network dtype's epsilon: a few hundred calls, the same error."""
    exact = ds.GaussianMixture.ring().denoiser(ds.VPSchedule(), "eps")

    class Half(torch.nn.Module):
        def __init__(self, dtype):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1, dtype=dtype))

        def forward(self, x, t):
            return exact.net(x.double(), t.double()).to(x.dtype)  # the exact ε̂, rounded to the net's dtype

    for dtype in (torch.float16, torch.bfloat16):
        den = ds.Denoiser(Half(dtype), exact.schedule, prediction="eps", time_label="t", shape=(2,))
        grid = tune_steps(den, nfe=5, pilot=8, screen=0, fresh=8, max_evals=20)
        assert grid.tuning_nfe < 3000 and math.isfinite(grid.fresh_error), (dtype, grid.tuning_nfe)


def test_the_denoisers_counter_keeps_the_tuning_calls():
    """tune_steps set the denoiser's ``nfe`` back to its value before tuning: hundreds of real network calls
    vanished from the counter. It now keeps them, and ``tuning_nfe`` is the real number of calls."""
    gm = ds.GaussianMixture.ring()
    inner = gm.denoiser(ds.make_schedule("vp"), "eps")
    calls = [0]

    def net(x, t):
        calls[0] += 1
        return inner.net(x, t)

    den = ds.Denoiser(net, inner.schedule, prediction="eps", net_dtype=torch.float64, shape=(2,))
    before = den.nfe
    grid = ds.tune_steps(den, solver="euler", nfe=2, pilot=4, screen=0, fresh=0, max_evals=5, progress=False)
    assert grid.tuning_nfe == calls[0] == den.nfe - before > 0


def test_a_bundled_models_grid_records_its_name():
    """A grid tuned from Python recorded no model (``model=''``), so a run of another model could not be told
    the grid was fitted to this one; a bundled model's grid now records the model's name."""
    m = ds.zoo.load("two_moons")
    quick = dict(nfe=3, pilot=4, screen=0, fresh=0, max_evals=4, progress=False)
    assert ds.tune_steps(m, **quick).model == "two_moons"
    assert ds.tune_steps(m, model="mine", **quick).model == "mine"
    assert "tuned on 'two_moons'" in ds.tune_steps(m, **quick).other_model("digits")
