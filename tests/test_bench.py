"""The benchmark runner: row schema, append-and-flush, resume, configuration checks, plot."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import diffsolve
from diffsolve.bench import ROW_FIELDS, BenchConfig, read_rows, run_bench
from diffsolve.bench import metrics as M
from diffsolve.bench.problems import get_problem

ROOT = Path(__file__).resolve().parents[1]


def _cfg(out, **kw):
    base = dict(problems=["ring2d"], solvers=["ddim", "euler"], nfe=[4, 8], n_samples=24, out=str(out),
                plot=False, quiet=True, reference_tol=1e-7, n_projections=64, warmup=False)
    base.update(kw)
    return BenchConfig(**base)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    rows = run_bench(_cfg(out, save_samples=True))
    return out, rows


def test_row_schema(full_run):
    out, rows = full_run
    stored = read_rows(out / "results.jsonl")
    assert stored == json.loads(json.dumps(rows))  # what was returned is what was written
    assert [r["key"] for r in stored] == [f"ring2d|ddpm|{s}|eta=0|nfe={n}" for s in ("ddim", "euler") for n in (4, 8)]
    for r in stored:
        assert set(r) == set(ROW_FIELDS)
        assert r["nfe"] == r["nfe_budget"]  # 1 evaluation per step + the final denoise
        assert r["steps"] == r["nfe"] - 1
        assert r["n_samples"] == 24 and r["seeds"] == "0-23" and r["world_size"] == 1
        assert r["device"] == "cpu" and r["dtype"] == "float64" and r["diffsolve_version"] == diffsolve.__version__
        assert set(r["metrics"]) == {"rms_error", "sliced_w2", "frechet", "log_p0"}
        assert set(r["floors"]) == set(r["metrics"])
        assert all(isinstance(v, float) for v in r["metrics"].values())
        assert r["floors"]["rms_error"] is None and r["floors"]["sliced_w2"] > 0
        assert r["wall_time_s"] > 0 and r["samples_per_s"] == pytest.approx(24 / r["wall_time_s"])
        assert 0 < r["net_time_share"] <= 1
        assert r["reference"].startswith("dopri5")


def test_row_metrics_are_the_metrics_of_the_samples(full_run):
    # recompute one row's metrics from its saved samples and an independent sample() call
    out, rows = full_run
    r = rows[1]
    x = torch.load(out / "samples" / "ring2d_ddpm_ddim_eta=0_nfe=8.pt")
    p = get_problem("ring2d")
    again = diffsolve.sample(p.denoiser(), shape=(24, 2), seeds="0-23", solver="ddim", nfe=8, denoise_final=True)
    torch.testing.assert_close(x, again.x, rtol=0, atol=0)
    ref = M.reference_solution(p.denoiser(), again.x_init, float(again.t[0]), float(again.t[-1]), tol=1e-7)
    assert r["metrics"]["rms_error"] == pytest.approx(M.rms_error(x, ref), rel=1e-9)
    assert r["metrics"]["log_p0"] == pytest.approx(M.mean_log_prob(x, p.mixture), rel=1e-12)
    # more steps, smaller error (first order: roughly halves from NFE 4 to 8)
    assert rows[1]["metrics"]["rms_error"] < 0.75 * rows[0]["metrics"]["rms_error"]


def test_solver_specs_and_no_final_denoise(tmp_path):
    # a solver with options ("name:key=value") is labelled by its canonical spec; without the final
    # denoise the budget buys one more step and the reference ends at t_min too
    rows = run_bench(_cfg(tmp_path, solvers=["unipc:variant=bh1:order=3", "ddim"], nfe=[6], denoise_final=False,
                          save_samples=True))
    assert [r["solver"] for r in rows] == ["unipc:order=3:variant=bh1", "ddim"]
    assert rows[0]["key"] == "ring2d|ddpm|unipc:order=3:variant=bh1|eta=0|nfe=6"
    assert all(r["steps"] == r["nfe"] == 6 and r["run"]["denoise_final"] is False for r in rows)
    p = get_problem("ring2d")
    again = diffsolve.sample(p.denoiser(), shape=(24, 2), seeds="0-23", solver="unipc:order=3:variant=bh1", nfe=6,
                             denoise_final=False)
    x = torch.load(tmp_path / "samples" / "ring2d_ddpm_unipc_order=3_variant=bh1_eta=0_nfe=6.pt")
    torch.testing.assert_close(x, again.x, rtol=0, atol=0)
    ref = M.reference_solution(p.denoiser(), again.x_init, float(again.t[0]), float(again.t[-1]), tol=1e-7,
                               denoise_final=False)
    assert rows[0]["metrics"]["rms_error"] == pytest.approx(M.rms_error(x, ref), rel=1e-9)
    with pytest.raises(ValueError, match="different configuration.*denoise_final: file has False, this run True"):
        run_bench(_cfg(tmp_path, solvers=["ddim"], nfe=[6], resume=True))


def test_resume_after_truncation_loses_nothing_and_duplicates_nothing(full_run, tmp_path):
    out, rows = full_run
    lines = (out / "results.jsonl").read_text().splitlines(keepends=True)
    res = tmp_path / "results.jsonl"
    res.write_text("".join(lines[:2]) + lines[2][: len(lines[2]) // 2])  # killed while writing row 3
    new = run_bench(_cfg(tmp_path, resume=True))
    assert [r["key"] for r in new] == [r["key"] for r in rows[2:]]
    stored = read_rows(res)
    keys = [r["key"] for r in stored]
    assert keys == [r["key"] for r in rows] and len(set(keys)) == len(keys)
    for a, b in zip(stored, rows):  # deterministic: same metrics as the uninterrupted run
        assert a["metrics"] == pytest.approx(b["metrics"], rel=1e-12)
    # resuming a complete file runs nothing and changes nothing
    before = res.read_text()
    assert run_bench(_cfg(tmp_path, resume=True)) == []
    assert res.read_text() == before


def test_resume_refuses_a_different_configuration(full_run, tmp_path):
    out, _ = full_run
    (tmp_path / "results.jsonl").write_text((out / "results.jsonl").read_text())
    with pytest.raises(ValueError, match=r"different configuration.*n_samples: file has 24, this run 16"):
        run_bench(_cfg(tmp_path, resume=True, n_samples=16))
    with pytest.raises(ValueError, match="already exists; pass --resume"):
        run_bench(_cfg(tmp_path))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "results.jsonl").write_text('{"a": 1}\n')
    with pytest.raises(ValueError, match="not a diffsolve results file"):
        run_bench(_cfg(tmp_path / "junk", resume=True))


def test_resume_refuses_a_changed_tuned_grid_and_a_foreign_one_line_file(tmp_path):
    from diffsolve.tune import tune_steps

    den = get_problem("ring2d").denoiser()
    grid = tune_steps(den, solver="ddim", nfe=4, pilot=8, fresh=0, max_evals=8)
    path = tmp_path / "g.json"
    grid.save(path)
    cfg = dict(solvers=["ddim"], nfe=[4], grid=str(path))
    run_bench(_cfg(tmp_path / "o", **cfg))
    data = json.loads(path.read_text())
    data["t"][1] = 0.5 * (data["t"][1] + data["t"][2])  # the same file name, other contents
    data["log_snr"][1] = float(den.schedule.log_snr(torch.tensor(data["t"][1], dtype=torch.float64)))
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="grid_sha256"):
        run_bench(_cfg(tmp_path / "o", resume=True, **cfg))
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "results.jsonl").write_text("hello\n")  # terminated: not a cut-short row
    with pytest.raises(ValueError, match="not a diffsolve results file"):
        run_bench(_cfg(tmp_path / "f", resume=True))
    assert (tmp_path / "f" / "results.jsonl").read_text() == "hello\n"


def test_repeated_budgets_run_once_and_noisy_solvers_have_no_ode_error(tmp_path):
    rows = run_bench(_cfg(tmp_path, solvers=["ddim", "pc"], nfe=[6, 6], eta=[0.0, 0]))
    assert [r["key"] for r in rows] == ["ring2d|ddpm|ddim|eta=0|nfe=6", "ring2d|ddpm|pc|eta=0|nfe=6"]
    # pc's Langevin corrector draws noise at eta = 0: no error against the ODE solution
    assert "rms_error" in rows[0]["metrics"] and "rms_error" not in rows[1]["metrics"]


@pytest.mark.skipif(sys.platform == "win32", reason="the output directory is held with fcntl.flock")
def test_a_second_run_into_a_held_directory_stops_and_a_bad_plan_creates_nothing(tmp_path):
    """Two runs writing one results.jsonl would interleave rows: the second stops before writing;
    once the first is over the directory is free again. A plan that fails creates no directory."""
    import fcntl

    out = tmp_path / "run"
    out.mkdir()
    with open(out / ".bench.lock", "a") as held:  # what a running bench holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ValueError, match="another diffsolve bench run is writing to"):
            run_bench(_cfg(out, solvers=["ddim"], nfe=[4]))
    assert not (out / "results.jsonl").exists()
    assert len(run_bench(_cfg(out, solvers=["ddim"], nfe=[4]))) == 1
    with pytest.raises(ValueError, match="too small"):
        run_bench(_cfg(tmp_path / "never", solvers=["heun"], nfe=[2]))
    assert not (tmp_path / "never").exists()


def test_killed_run_resumes(tmp_path):
    # a real kill: SIGKILL the process after its first row is on disk, then resume
    args = [sys.executable, "-m", "diffsolve", "bench", "--problems", "ring2d", "--solvers", "ddim",
            "--nfe", ",".join(str(n) for n in range(4, 41)), "--n-samples", "16", "--reference-tol", "1e-6",
            "--projections", "32", "--no-plot", "--quiet", "--out", str(tmp_path)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    res = tmp_path / "results.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if res.exists() and res.read_text().count("\n") >= 1:
            break
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    n_before = len(read_rows(res))
    assert 1 <= n_before < 37
    done = subprocess.run(args + ["--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    keys = [r["key"] for r in read_rows(res)]
    assert keys == [f"ring2d|ddpm|ddim|eta=0|nfe={n}" for n in range(4, 41)]


def test_stochastic_rows_have_no_ode_error_and_plot(tmp_path):
    rows = run_bench(_cfg(tmp_path, solvers=["ddim"], eta=[1.0], nfe=[6], plot=True))
    (r,) = rows
    assert r["eta"] == 1.0 and "rms_error" not in r["metrics"] and r["reference"] is None
    assert (tmp_path / "quality_vs_nfe.png").stat().st_size > 1000


def test_a_panel_of_ode_and_sde_rows_plots_a_metric_of_both():
    """Only the ODE rows have the error against the exact ODE solution: a panel with both is drawn in the
    first metric every row has, so no row is left out of the figure."""
    from diffsolve.bench.plot import _quality

    ode = {"metrics": {"rms_error": 0.1, "frechet": 0.2}}
    sde = {"metrics": {"frechet": 0.3}}
    assert _quality([ode, sde]) == "frechet" and _quality([ode]) == "rms_error"
    assert _quality([ode, {"metrics": {}}]) == "rms_error"  # no metric shared by all: the first some have


def test_plot_without_matplotlib_says_so(full_run, monkeypatch):
    out, _ = full_run
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    from diffsolve.bench.plot import plot_results

    with pytest.raises(ImportError, match="matplotlib is not installed"):
        plot_results(out / "results.jsonl")


def test_default_plan_skips_what_cannot_run(tmp_path):
    # default solvers: unregistered ones and infeasible budgets are skipped with a note, not an error
    from diffsolve.bench.runner import DEFAULT_SOLVERS, _check_config, _plan
    from diffsolve.solvers import SOLVERS

    notes = []
    items = _plan(_check_config(BenchConfig(nfe=[2, 5])), [get_problem("ring2d")], notes)
    ran = {it.solver for it in items}
    assert ran == {s for s in DEFAULT_SOLVERS if s in SOLVERS}
    # heun's one step and the final denoise take 3 evaluations; a multistep method's warm-up fits any budget
    assert any("NFE 2 is too small for solver 'heun'" in n for n in notes)
    assert all(it.nfe == 5 for it in items if it.solver == "heun")
    assert {it.nfe for it in items if it.solver == "dpmpp_3m"} == {2, 5}
    with pytest.raises(ValueError, match="too small"):
        _plan(_check_config(BenchConfig(solvers=["heun"], nfe=[2])), [get_problem("ring2d")], [])
    with pytest.raises(ValueError, match="a solver is listed twice"):  # from Python (the CLI's lists say it first)
        _plan(_check_config(BenchConfig(solvers=["unipc:order=2", "unipc:order=2"])), [get_problem("ring2d")], [])


def test_model_problem_rows(tmp_path):
    models = diffsolve.zoo.available() if hasattr(diffsolve, "zoo") else {}
    if "digits" not in models:
        pytest.skip("the digits model is not bundled")
    (r,) = run_bench(_cfg(tmp_path, problems=["digits"], solvers=["ddim"], nfe=[10], n_samples=32))
    assert {"rms_error", "frechet_heldout", "sliced_w2_heldout"} <= set(r["metrics"])
    assert r["floors"]["frechet_heldout"] > 0 and r["schedule"] == "cosine"


def test_resume_refuses_another_network_under_the_same_name(tmp_path):
    # a model file retrained in place (same path, other weights): its rows are not mixed with the new ones
    if "digits" not in diffsolve.zoo.available():
        pytest.skip("the digits model is not bundled")
    den = diffsolve.zoo.load("digits")
    path = tmp_path / "m.safetensors"
    diffsolve.zoo.save_model(path, den.net, den.metadata)
    cfg = dict(problems=[str(path)], solvers=["ddim"], n_samples=8, reference_tol=1e-4)
    (r,) = run_bench(_cfg(tmp_path / "out", nfe=[4], **cfg))
    assert r["weights"] == diffsolve.runfiles.weights_fingerprint(den.net)
    assert run_bench(_cfg(tmp_path / "out", nfe=[4, 5], resume=True, **cfg))[0]["weights"] == r["weights"]
    with torch.no_grad():
        next(den.net.parameters()).add_(1e-3)
    diffsolve.zoo.save_model(path, den.net, den.metadata)
    with pytest.raises(ValueError, match=r"cannot resume .* were made with another network"):
        run_bench(_cfg(tmp_path / "out", nfe=[4, 5, 6], resume=True, **cfg))
    # a file from before the record: said so, not blamed on another network
    rows = (tmp_path / "out" / "results.jsonl").read_text().splitlines()
    (tmp_path / "out" / "results.jsonl").write_text("".join(
        json.dumps({k: v for k, v in json.loads(r).items() if k != "weights"}) + "\n" for r in rows))
    with pytest.raises(ValueError, match=r"predate the record of the network's weights"):
        run_bench(_cfg(tmp_path / "out", nfe=[4, 5, 6], resume=True, **cfg))


def test_default_call_rows_are_the_default_call(tmp_path, capsys):
    # `--defaults-only` (solver "default"): each row is sample(model, nfe=N) with nothing else, and its
    # error is measured against the exact solution ending as that call ends (with or without x̂0)
    from diffsolve.cli import main

    rows = run_bench(_cfg(tmp_path / "d", solvers=["default"], nfe=[5, 10, 30], eta=[0.0, 1.0], save_samples=True))
    assert [r["solver"] for r in rows] == ["default"] * 3 and all(r["eta"] == 0 for r in rows)
    p = get_problem("ring2d")
    from diffsolve.defaults import default_run

    # each row records what the default call resolved to, and the table names it
    assert [r["ran"] for r in rows] == [default_run(n, p.schedule)._asdict() for n in (5, 10, 30)]
    assert [r["ran"]["solver"] for r in rows] == ["dpmpp_2m:lower_order_final=false", "deis:lower_order_final=false",
                                                  "unipc:order=3"]
    from diffsolve.bench.report import format_row

    assert format_row(rows[1]).startswith("default (deis:lower_order_final=false) ")
    for r in rows:
        x = torch.load(tmp_path / "d" / "samples" / (r["key"].replace("|", "_") + ".pt"))
        again = diffsolve.sample(p.denoiser(), shape=(24, 2), seeds="0-23", nfe=r["nfe_budget"], dtype=torch.float64)
        torch.testing.assert_close(x, again.x, rtol=0, atol=0)
        assert r["nfe"] == again.nfe == r["nfe_budget"] and r["steps"] == len(again.t) - 1
        df = again.nfe > len(again.t) - 1  # above 20 evaluations the default call ends with x̂0
        assert df == (r["nfe_budget"] > 20)
        ref = M.reference_solution(p.denoiser(), again.x_init, float(again.t[0]), float(again.t[-1]), tol=1e-7,
                                   denoise_final=df, mixture=p.mixture)
        assert r["metrics"]["rms_error"] == pytest.approx(M.rms_error(again.x, ref), rel=1e-6)
    assert main(["bench", "--problems", "ring2d", "--defaults-only", "--nfe", "5", "--n-samples", "8", "--out",
                 str(tmp_path / "cli"), "--no-plot", "--quiet"]) == 0
    assert read_rows(tmp_path / "cli" / "results.jsonl")[0]["solver"] == "default"
    assert main(["bench", "--defaults-only", "--grid", "karras", "--out", str(tmp_path / "x")]) == 2
    assert "drop --grid" in capsys.readouterr().err
    # on an EDM schedule the default run has its own grid and final denoise (diffsolve.defaults.default_run)
    (r,) = run_bench(_cfg(tmp_path / "e", solvers=["default"], nfe=[10], schedule="edm", save_samples=True))
    again = diffsolve.sample(get_problem("ring2d", schedule="edm").denoiser(), shape=(24, 2), seeds="0-23", nfe=10,
                             dtype=torch.float64)
    x = torch.load(tmp_path / "e" / "samples" / (r["key"].replace("|", "_") + ".pt"))
    torch.testing.assert_close(x, again.x, rtol=0, atol=0)
    assert r["nfe"] == 10 and r["steps"] == len(again.t) - 1 == 10 and r["grid"] == "karras"


def test_summary_of_a_resumed_run_counts_the_file():
    from diffsolve.bench.report import summary

    assert summary(2, 1.0, "out/results.jsonl").strip() == "2 rows in 1.0 s -> out/results.jsonl"
    line = summary(49, 3.0, "out/results.jsonl", earlier=47)
    assert line.strip().endswith("(with the 47 rows of earlier runs: 96 finished in the file)")


def test_resumed_run_on_a_smaller_grid_counts_the_whole_file(tmp_path, capsys):
    """The closing line's total is the file's, not the resumed grid's (8 rows there, a grid of 3 resumed)."""
    run_bench(_cfg(tmp_path, solvers=["ddim", "unipc"], nfe=[4, 6, 8, 10], print_table=True))
    capsys.readouterr()
    run_bench(_cfg(tmp_path, solvers=["ddim"], nfe=[4, 6, 12], resume=True, print_table=True))
    assert "(with the 8 rows of earlier runs: 9 finished in the file)" in capsys.readouterr().out
