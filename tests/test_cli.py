"""The command line: validated options, clear errors (exit 2, no traceback), sample / likelihood / list."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import diffsolve
from diffsolve.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv, needle", [
    (["bench", "--solvers", "nope"], "unknown solver 'nope'; valid solvers: "),
    (["bench", "--problems", "nope"], "unknown problem 'nope'; valid problems: ring2d, mix64, gauss3072"),
    (["bench", "--model", "nope", "--problems", "ring2d"], "unknown model 'nope'"),
    (["bench", "--schedule", "nope"], "unknown schedule 'nope'; valid schedules: vp, cosine, ddpm"),
    (["bench", "--grid", "nope"], "unknown grid 'nope'; valid grids: time, log_snr"),
    (["bench", "--dtype", "float8"], "unknown dtype 'float8'; valid dtypes: float64, float32"),
    (["bench", "--device", "cuda:0"] if not torch.cuda.is_available() else ["bench", "--device", "tpu"],
     "cuda is not available" if not torch.cuda.is_available() else "unsupported device"),
    (["bench", "--problems", "ring2d", "--solvers", "ddim", "--nfe", "1"], "NFE budgets must be integers >= 2"),
    (["bench", "--problems", "ring2d", "--solvers", "unipc:ordr=3"], "bad options for solver 'unipc'"),
    (["bench", "--problems", "ring2d", "--solvers", "unipc:order"], "'order' is not key=value"),
    (["bench", "--problems", "ring2d", "--solvers", "unipc,unipc:order=2"], "are one configuration"),
    (["bench", "--problems", "ring2d", "--solvers", "ddim", "--eta", "0.5,0.5000001"], "are one in the rows' keys"),
    (["bench", "--problems", "ring2d", "--solvers", "ddim", "--nfe", "0", "--no-denoise-final"],
     "NFE budgets must be integers >= 1"),
    (["bench", "--problems", "ring2d", "--solvers", "ddim", "--nfe", "100000000"], "NFE budgets must be at most"),
    (["tune", "--problem", "ring2d", "--solver", "learned:history=2", "--nfe", "5", "--out", "g.json"],
     "takes no options"),
    (["bench", "--problems", "ring2d", "--solvers", "heun", "--nfe", "2"], "NFE 2 is too small for solver 'heun'"),
    (["bench", "--problems", "ring2d", "--solvers", "dpmpp_2m", "--eta", "1"], "integrates the ODE only"),
    (["sample", "--problem", "ring2d", "--out", "x.txt"], "must end in .pt or .npy"),
    (["sample", "--model", "nope", "--out", "x.pt"], "unknown model 'nope'"),
    (["sample", "--problem", "ring2d", "--solver", "nope", "--out", "x.pt"], "unknown solver 'nope'"),
    (["sample", "--problem", "ring2d", "--solver", "deis:order=9", "--out", "x.pt"], "order must be one of"),
    (["sample", "--out", "x.pt"], "give --problem NAME"),
    (["likelihood", "--problem", "ring2d", "--data", "missing.npy"], "does not exist"),
    (["likelihood", "--problem", "ring2d", "--divergence", "exact", "--fresh-probes", "--quiet"],
     "fresh_probes=True applies to divergence='hutchinson'"),
    (["list", "nope"], "valid choices: solvers, schedules, problems, models, grids, all"),
    # rules of sampling: diffsolve.sample's message, reported as the command's error
    # (refused once the model is loaded: --quiet leaves the error the only line)
    (["sample", "--problem", "ring2d", "--solver", "dopri5", "--nfe", "10", "--out", "x.pt", "-q"],
     "chooses its own steps"),
    (["sample", "--problem", "ring2d", "--solver", "dopri5", "--steps", "10", "--out", "x.pt", "-q"],
     "chooses its own steps"),
    (["sample", "--problem", "ring2d", "--solver", "dopri5", "--grid", "karras", "--out", "x.pt", "-q"],
     "chooses its own steps"),
])
def test_bad_input_is_a_clear_error(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(argv, capsys)
    assert code == 2
    assert needle.lower() in err.lower(), err
    assert "Traceback" not in err and err.startswith("error: ")


@pytest.mark.parametrize("argv", [["bench", "--seeds", "5-1"], ["bench", "--nfe", "5,x"],
                                  ["sample", "--problem", "ring2d", "--nfe", "0", "--out", "x.pt"],
                                  ["bench", "--eta", "-1"], ["frobnicate"],
                                  # the tuners solve in a float64 state: a --dtype would be ignored
                                  ["tune", "--problem", "ring2d", "--nfe", "5", "--out", "g.json", "--dtype",
                                   "float32"]])
def test_malformed_options_exit_2(argv, capsys):
    try:
        code = main(argv)  # caught by our validation ...
    except SystemExit as e:  # ... or by argparse's type checks
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err


@pytest.mark.parametrize("argv, needle", [
    (["--nfe", "5,5"], "5 is listed twice in '5,5'"),  # was run once, silently
    (["--eta", "0,0"], "0 is listed twice"),
    (["--solvers", "ddim,ddim"], "ddim is listed twice"),  # as the library says it
    (["--nfe", "5,,10"], "an empty item in '5,,10'"),  # was read as 5,10
    (["--problems", "ring2d,"], "an empty item"),
])
def test_comma_lists_refuse_empty_items_and_repeats_alike(argv, needle, capsys, tmp_path):
    """``--nfe 5,5`` and ``--nfe 5,,10`` were accepted (the repeat dropped, the empty item skipped) where
    ``--solvers ddim,ddim`` was refused: every list now refuses both, naming the item."""
    with pytest.raises(SystemExit) as e:
        main(["bench", *argv, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and needle in err, err
    assert not (tmp_path / "o").exists()


def test_an_unknown_option_names_its_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["tune", "--problem", "ring2d", "--nfe", "5", "--out", "g.json", "--dtype", "float32"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == ("diffsolve tune: error: unrecognized arguments: --dtype float32 "
                                               "(options: diffsolve tune --help)")


def test_unwritable_output_paths(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run(["bench", "--problems", "ring2d", "--solvers", "ddim", "--nfe", "4",
                        "--out", str(blocker / "sub")], capsys)
    assert code == 2 and "cannot create the output directory" in err
    code, _, err = run(["sample", "--problem", "ring2d", "--out", str(blocker / "x.npy")], capsys)
    assert code == 2 and "not a directory" in err or "cannot create directory" in err
    (tmp_path / "ro").mkdir()
    os.chmod(tmp_path / "ro", 0o500)
    try:
        if os.access(tmp_path / "ro", os.W_OK):  # running as root: permissions do not bind
            pytest.skip("directory permissions are not enforced for this user")
        code, _, err = run(["bench", "--problems", "ring2d", "--solvers", "ddim", "--nfe", "4",
                            "--out", str(tmp_path / "ro")], capsys)
        assert code == 2 and "cannot write" in err
    finally:
        os.chmod(tmp_path / "ro", 0o700)


def test_list(capsys):
    code, out, _ = run(["list", "--json"], capsys)
    assert code == 0
    data = json.loads(out)
    assert set(data) == {"solvers", "schedules", "problems", "models", "grids"}
    assert {s["name"] for s in data["solvers"]} == set(diffsolve.solvers.SOLVERS)
    assert [p["name"] for p in data["problems"]][:3] == ["ring2d", "mix64", "gauss3072"]
    code, out, _ = run(["list", "schedules"], capsys)
    assert code == 0 and "ddpm" in out and "edm" in out
    assert all(g.get("summary") for g in data["grids"])  # every grid kind says what it is
    assert all(not s["summary"].endswith(("al.", ":")) for s in data["schedules"]), data["schedules"]


@pytest.mark.parametrize("suffix", [".npy", ".pt"])
def test_sample_writes_what_sample_returns(suffix, capsys, tmp_path):
    path = tmp_path / f"x{suffix}"
    code, _, err = run(["sample", "--problem", "mix64", "--solver", "ddim", "--nfe", "6", "--seeds", "3-9",
                        "--schedule", "vp", "--out", str(path)], capsys)
    assert code == 0, err
    x = torch.from_numpy(np.load(path)) if suffix == ".npy" else torch.load(path)
    from diffsolve.bench.problems import get_problem

    want = diffsolve.sample(get_problem("mix64", schedule="vp").denoiser(), shape=(7, 64), seeds="3-9",
                            solver="ddim", nfe=6).x
    torch.testing.assert_close(x, want, rtol=0, atol=0)


def test_likelihood_matches_the_exact_density(capsys, tmp_path):
    pytest.importorskip("diffsolve.likelihood")
    x = diffsolve.GaussianMixture.ring().sample(6, generator=torch.Generator().manual_seed(0))
    np.save(tmp_path / "x.npy", x.numpy())
    code, out, err = run(["likelihood", "--problem", "ring2d", "--schedule", "vp", "--data", str(tmp_path / "x.npy"),
                          "--divergence", "exact", "--rtol", "1e-7", "--atol", "1e-7", "--json"], capsys)
    assert code == 0, err
    res = json.loads(out)
    assert res["n"] == 6
    assert res["mean_log_prob"] == pytest.approx(res["exact_mean_log_prob"], abs=2e-3)
    code, out, err = run(["likelihood", "--problem", "ring2d", "--schedule", "vp", "--data", str(tmp_path / "x.npy"),
                          "--probes", "4", "--fresh-probes", "--json", "--items", "5", "--threads", "1"], capsys)
    assert code == 0, err
    assert json.loads(out)["n"] == 5  # --items: --n's name under torchrun
    assert json.loads(out)["mean_log_prob"] == pytest.approx(res["exact_mean_log_prob"], abs=1.0)
    # per-sample steps by default (each value independent of its batch); --shared-step couples a batch
    rows = {}
    exact = ["likelihood", "--problem", "ring2d", "--schedule", "vp", "--data", str(tmp_path / "x.npy"),
             "--divergence", "exact", "--json"]
    for flag in ("--per-sample", "--shared-step"):
        code, out, err = run(exact + [flag], capsys)
        assert code == 0, err
        rows[flag] = json.loads(out)
    code, out, err = run(exact, capsys)
    assert json.loads(out)["mean_log_prob"] == rows["--per-sample"]["mean_log_prob"]
    assert rows["--shared-step"]["mean_log_prob"] != rows["--per-sample"]["mean_log_prob"]
    code, _, err = run(["likelihood", "--problem", "mix64", "--data", str(tmp_path / "x.npy")], capsys)
    assert code == 2 and err.startswith(f"error: --data {tmp_path / 'x.npy'} has sample shape (2,)") and "(batch, 64)" in err


def test_python_m_and_console_script_entry(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    ok = subprocess.run([sys.executable, "-m", "diffsolve", "list", "problems"], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "ring2d" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "diffsolve", "bench", "--solvers", "ddim,nope"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "error: unknown solver 'nope'" in bad.stderr and "Traceback" not in bad.stderr


def test_bench_prints_a_table(capsys, tmp_path):
    code, out, err = run(["bench", "--problems", "gauss3072", "--solvers", "ddim", "--nfe", "3,6",
                          "--n-samples", "8", "--out", str(tmp_path), "--no-plot"], capsys)
    assert code == 0, err
    assert "gauss3072" in out and "floor" in out and "rms_err" in out
    assert len([line for line in out.splitlines() if line.startswith("ddim")]) == 2
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 2


FACTORY = '''
import diffsolve


def make():
    """An exact 3-D Gaussian-mixture denoiser posing as a user model."""
    gm = diffsolve.GaussianMixture([1.0, 2.0], [[0.0, 1.0, 0.0], [1.0, -1.0, 0.5]], 0.2)
    return gm.denoiser("vp", prediction="v")
'''


def test_user_model_factory(capsys, tmp_path):
    pytest.importorskip("diffsolve.adapters")
    (tmp_path / "mymodel.py").write_text(FACTORY)
    spec = f"{tmp_path / 'mymodel.py'}:make"
    code, _, err = run(["sample", "--model", spec, "--solver", "dpmpp_2m", "--nfe", "8", "--seeds", "0-4",
                        "--out", str(tmp_path / "x.pt")], capsys)
    assert code == 0, err
    assert torch.load(tmp_path / "x.pt").shape == (5, 3)
    code, out, err = run(["bench", "--problems", spec, "--solvers", "ddim", "--nfe", "4,8", "--n-samples", "6",
                          "--reference-tol", "1e-6", "--out", str(tmp_path / "b"), "--no-plot"], capsys)
    assert code == 0, err
    from diffsolve.bench import read_rows

    rows = read_rows(tmp_path / "b" / "results.jsonl")
    assert [r["schedule"] for r in rows] == ["vp", "vp"] and set(rows[0]["metrics"]) == {"rms_error"}
    assert rows[1]["metrics"]["rms_error"] < rows[0]["metrics"]["rms_error"]
    code, _, err = run(["sample", "--model", f"{tmp_path / 'nofile.py'}:make", "--out", str(tmp_path / "y.pt")], capsys)
    assert code == 2 and "no such Python file" in err


def test_adaptive_solvers_sample_from_the_command_line(capsys, tmp_path):
    for spec, eta in (("dopri5:rtol=1e-4:atol=1e-4", "0"), ("torchsde:steps=20:grid=karras", "1")):
        code, _, err = run(["sample", "--problem", "ring2d", "--solver", spec, "--eta", eta, "--seeds", "0-3",
                            "--out", str(tmp_path / "x.pt")], capsys)
        assert code == 0, err
        assert torch.load(tmp_path / "x.pt").shape == (4, 2)


def test_tuned_grid_keeps_its_final_denoise(capsys, tmp_path):
    from diffsolve.bench.problems import get_problem

    grid = diffsolve.tune_steps(get_problem("ring2d").denoiser(), solver="ddim", nfe=4, pilot=8, fresh=0, max_evals=8,
                              denoise_final=True)
    grid.save(tmp_path / "g.json")
    code, _, err = run(["sample", "--problem", "ring2d", "--grid", str(tmp_path / "g.json"), "--no-denoise-final",
                        "--out", str(tmp_path / "x.pt")], capsys)
    assert code == 2 and "tuned with the final denoise" in err


def test_a_tuned_grid_row_reproduces_the_tune_file(capsys, tmp_path):
    """A grid tuned without the final denoise is judged in bench as it was tuned (against the data end
    point): the row's RMS error is the tune file's fresh_error; its options must be named in full; a
    tuned SDE solver's grid samples the ODE it was tuned on unless eta is given."""
    g, out = tmp_path / "g.json", tmp_path / "b"
    code, _, err = run(["tune", "--problem", "ring2d", "--solver", "unipc:order=3", "--nfe", "8", "--pilot", "8",
                        "--screen", "0", "--fresh", "16", "--max-evals", "10", "--denoise-final", "no",
                        "--out", str(g)], capsys)
    assert code == 0, err
    bench = ["bench", "--problems", "ring2d", "--nfe", "8", "--grid", str(g), "--seeds", "8-23", "--no-plot"]
    code, _, err = run(bench + ["--solvers", "unipc", "--out", str(out)], capsys)
    assert code == 2 and "run with --solvers unipc:order=3 --nfe 8" in err
    code, _, err = run(bench + ["--solvers", "unipc:order=3", "--out", str(out)], capsys)
    assert code == 0, err
    row = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    assert row["solver"] == "unipc:order=3"
    assert row["metrics"]["rms_error"] == pytest.approx(json.loads(g.read_text())["fresh_error"], rel=1e-9)
    code, _, err = run(["bench", "--problems", "ring2d", "--defaults-only", "--no-denoise-final", "--out",
                        str(tmp_path / "d")], capsys)
    assert code == 2 and "drop --no-denoise-final" in err
    code, _, err = run(["tune", "--problem", "ring2d", "--solver", "ancestral", "--nfe", "6", "--pilot", "8",
                        "--screen", "0", "--fresh", "0", "--max-evals", "6", "--out", str(tmp_path / "a.json")], capsys)
    assert code == 0, err
    for eta in ([], ["--eta", "0"]):
        code, _, err = run(["sample", "--problem", "ring2d", "--grid", str(tmp_path / "a.json"), "--seeds", "0-3",
                            *eta, "--out", str(tmp_path / f"a{len(eta)}.pt")], capsys)
        assert code == 0 and "eta=0" in err and "with noise" not in err, err
    assert torch.equal(torch.load(tmp_path / "a0.pt"), torch.load(tmp_path / "a2.pt"))


def test_sample_reproduces_a_bench_row_with_denoise_final(capsys, tmp_path):
    """bench ends every row with the final denoise; sample --denoise-final asks it below 21 evaluations."""
    code, _, err = run(["bench", "--problems", "ring2d", "--solvers", "unipc:order=3", "--nfe", "8", "--seeds", "5-9",
                        "--save-samples", "--no-plot", "--out", str(tmp_path / "b")], capsys)
    assert code == 0, err
    saved = torch.load(next((tmp_path / "b" / "samples").glob("*.pt")))
    for flag, same in (("--denoise-final", True), ("--no-denoise-final", False)):
        code, _, err = run(["sample", "--problem", "ring2d", "--solver", "unipc:order=3", "--nfe", "8", "--seeds",
                            "5-9", flag, "--out", str(tmp_path / "s.pt"), "-q"], capsys)
        assert code == 0 and torch.equal(torch.load(tmp_path / "s.pt"), saved) == same, err


def test_tuned_grid_refuses_a_budget(capsys, tmp_path):
    """The grid fixes the steps: diffsolve.sample refuses --nfe other than the grid's own or --steps
    beside it, and says so; its own budget said again runs."""
    from diffsolve.bench.problems import get_problem

    grid = diffsolve.tune_steps(get_problem("ring2d").denoiser(), solver="ddim", nfe=4, pilot=8, fresh=0, max_evals=8)
    grid.save(tmp_path / "g.json")
    code, _, err = run(["sample", "--problem", "ring2d", "--grid", str(tmp_path / "g.json"), "--nfe", "4",
                        "--seeds", "0-2", "--out", str(tmp_path / "own.pt"), "--quiet"], capsys)
    assert code == 0 and (tmp_path / "own.pt").exists(), err
    for budget in (["--nfe", "5"], ["--steps", "3"]):
        code, _, err = run(["sample", "--problem", "ring2d", "--grid", str(tmp_path / "g.json"), *budget,
                            "--out", str(tmp_path / "x.pt"), "--quiet"], capsys)
        assert code == 2 and err.startswith("error: ") and "Traceback" not in err, err
        assert "grid" in err and "fix" in err and budget[0][2:] in err, err
        assert not (tmp_path / "x.pt").exists()


@pytest.mark.parametrize("argv", [
    ["sample", "--problem", "ring2d", "--solver", "nope", "--out", "a/x.pt"],
    ["sample", "--problem", "ring2d", "--solver", "heun", "--nfe", "1", "--out", "a/x.pt"],
    ["sample", "--problem", "ring2d", "--solver", "heun", "--nfe", "1", "--outdir", "a/b", "--format", "npz"],
    ["tune", "--problem", "ring2d", "--solver", "nope", "--nfe", "4", "--out", "a/g.json"],
    ["likelihood", "--problem", "ring2d", "--divergence", "nope", "--out", "a/b"],
    ["likelihood", "--problem", "ring2d", "--rtol", "0", "--out", "a/b"],
    ["bench", "--solvers", "nope", "--out", "a/b"],
])
def test_a_refused_command_makes_no_folder(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(argv, capsys)
    assert code == 2 and err.startswith("error: "), err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("argv, kept", [
    (["bench"], "rows finished so far are in the results file; rerun with --resume"),
    (["sample", "--outdir", "d"], "what is finished is kept in d; rerun with --resume"),
    (["likelihood", "--out", "d"], "what is finished is kept in d; rerun with --resume"),
    (["sample", "--out", "x.pt"], None), (["tune"], None), (["likelihood"], None),
])
def test_an_interrupted_command_says_what_it_keeps(argv, kept, capsys):
    import argparse

    from diffsolve.cli._common import run_command

    def command(args):
        raise KeyboardInterrupt

    ns = argparse.Namespace(command=argv[0], out=None, outdir=None)
    if len(argv) > 1:
        setattr(ns, argv[1][2:], argv[2])
    assert run_command(command, ns) == 130
    err = capsys.readouterr().err.strip()
    assert err == "interrupted" + (f" ({kept})" if kept else ""), err


def test_feature_options_without_a_metric_are_refused(capsys, tmp_path):
    for extra in (["--features", "pixels"], ["--bootstrap", "50"]):
        code, _, err = run(["bench", *extra, "--out", str(tmp_path / "b")], capsys)
        assert code == 2 and "name them with --metric" in err, err


def test_sample_to_one_file_takes_threads(capsys, tmp_path):
    before = torch.get_num_threads()
    try:
        code, _, err = run(["sample", "--problem", "ring2d", "--nfe", "4", "--seeds", "0-3", "--threads", "2",
                            "--out", str(tmp_path / "x.pt"), "--quiet"], capsys)
        assert code == 0 and torch.get_num_threads() == 2, err
    finally:
        torch.set_num_threads(before)


def test_threads_bound_numpy_and_scipy_blas_too(capsys, tmp_path):
    """--threads reaches the BLAS pools numpy and scipy load (the feature metrics' linear algebra), not
    only torch's: with torch alone, --threads 1 ran on every core."""
    import scipy.linalg  # noqa: F401
    from threadpoolctl import ThreadpoolController

    controller = ThreadpoolController()
    before = [(p.filepath, p.num_threads) for p in controller.lib_controllers]
    torch_before = torch.get_num_threads()
    try:
        code, _, err = run(["sample", "--problem", "ring2d", "--nfe", "4", "--seeds", "0-3", "--threads", "1",
                            "--out", str(tmp_path / "x.pt"), "--quiet"], capsys)
        assert code == 0, err
        blas = [p for p in ThreadpoolController().lib_controllers if p.user_api == "blas"]
        assert blas and all(p.num_threads == 1 for p in blas), [(p.filepath, p.num_threads) for p in blas]
    finally:
        torch.set_num_threads(torch_before)
        for path, n in before:
            controller.select(filepath=path).limit(limits=n)


def test_an_output_file_under_new_folders_is_written(capsys, tmp_path):
    code, _, err = run(["sample", "--problem", "ring2d", "--nfe", "4", "--seeds", "0-3", "--out",
                        str(tmp_path / "a" / "b" / "x.pt"), "--quiet"], capsys)
    assert code == 0 and torch.load(tmp_path / "a" / "b" / "x.pt").shape == (4, 2), err
    (tmp_path / "f").write_text("")
    code, _, err = run(["sample", "--problem", "ring2d", "--out", str(tmp_path / "f" / "x.pt")], capsys)
    assert code == 2 and "is not a directory" in err


def test_a_grid_tuned_on_another_model_is_said(capsys, tmp_path):
    """A tuned grid records the model it was tuned on; sampling or benchmarking another model of the
    same schedule with it runs, with a warning line that names both."""
    from diffsolve.bench.problems import get_problem

    grid = diffsolve.tune_steps(get_problem("ring2d").denoiser(), solver="ddim", nfe=4, pilot=8, fresh=0, max_evals=8)
    grid.model = "ring2d"
    grid.save(tmp_path / "g.json")
    argv = ["--grid", str(tmp_path / "g.json"), "--seeds", "0-2", "--out", str(tmp_path / "x.pt"), "--quiet"]
    code, _, err = run(["sample", "--problem", "ring2d", *argv], capsys)
    assert code == 0 and "warning" not in err, err
    code, _, err = run(["sample", "--problem", "mix64", *argv], capsys)
    assert code == 0 and "warning: the tuned grid was tuned on 'ring2d' and this run samples 'mix64'" in err, err
    code, out, err = run(["bench", "--problems", "mix64", "--solvers", "ddim", "--nfe", "4", "--grid",
                          str(tmp_path / "g.json"), "--seeds", "0-3", "--out", str(tmp_path / "b")], capsys)
    assert code == 0 and "tuned on 'ring2d' and this run samples 'mix64'" in out + err, err
    code, out, err = run(["bench", "--problems", "ring2d,digits", "--solvers", "ddim", "--nfe", "4", "--grid",
                          str(tmp_path / "g.json"), "--seeds", "0-3", "--out", str(tmp_path / "c")], capsys)
    assert code == 2 and "(run on problem digits) was tuned on the schedule DDPMSchedule" in err, err
    assert not (tmp_path / "c").exists()


def test_sample_without_a_solver_runs_the_library_default(capsys, tmp_path):
    code, _, err = run(["sample", "--problem", "ring2d", "--nfe", "5", "--seeds", "0-2",
                        "--out", str(tmp_path / "x.pt")], capsys)
    assert code == 0, err
    from diffsolve.bench.problems import get_problem

    want = diffsolve.sample(get_problem("ring2d").denoiser(), seeds="0-2", nfe=5).x
    torch.testing.assert_close(torch.load(tmp_path / "x.pt"), want, rtol=0, atol=0)
    assert "5 network evaluations (the first step's analytic: one evaluation free)" in err
    # the analytic first step can be turned off (and on for a named solver)
    for flag, solver, on in (("--no-analytic-first-step", None, False), ("--analytic-first-step", "unipc", True)):
        code, _, err = run(["sample", "--problem", "ring2d", "--nfe", "5", "--seeds", "0-2", flag,
                            *(["--solver", solver] if solver else []), "--out", str(tmp_path / "y.pt")], capsys)
        assert code == 0, err
        want = diffsolve.sample(get_problem("ring2d").denoiser(), seeds="0-2", nfe=5, solver=solver,
                                analytic_first_step=on)
        assert want.nfe == 5 and len(want.t) - 1 == 5 + on
        torch.testing.assert_close(torch.load(tmp_path / "y.pt"), want.x, rtol=0, atol=0)


BROKEN = '''
import torch, diffsolve

def oom():
    def net(x, t):
        raise RuntimeError("CUDA out of memory (simulated)")
    return diffsolve.Denoiser(net, diffsolve.VPSchedule(), prediction="eps", shape=(2,))

def detached():
    return diffsolve.Denoiser(lambda x, t: torch.zeros_like(x), diffsolve.VPSchedule(), prediction="eps", shape=(2,))
'''


def test_network_errors_are_one_line(capsys, tmp_path):
    (tmp_path / "nets.py").write_text(BROKEN)
    code, _, err = run(["sample", "--model", f"{tmp_path / 'nets.py'}:oom", "--nfe", "4", "--seeds", "0-1",
                        "--out", str(tmp_path / "x.pt")], capsys)
    assert code == 1 and "RuntimeError: CUDA out of memory (simulated)" in err and "Traceback" not in err
    np.save(tmp_path / "d.npy", np.zeros((2, 2)))
    code, _, err = run(["likelihood", "--model", f"{tmp_path / 'nets.py'}:detached", "--data", str(tmp_path / "d.npy"),
                        "--quiet"], capsys)
    assert code == 2 and "needs ∂ε̂/∂x by autograd" in err


def _bench(out, *extra):
    return ["bench", "--problems", "ring2d", "--solvers", "ddim", "--nfe", "4", "--n-samples", "8",
            "--reference-tol", "1e-6", "--projections", "16", "--out", str(out), "--quiet", *extra]


def test_tune_init_file_is_checked_up_front(capsys, tmp_path):
    from diffsolve.bench.problems import get_problem
    from diffsolve.tune import TunedGrid

    sch = get_problem("ring2d").denoiser().schedule
    TunedGrid(t=diffsolve.make_grid(sch, 3, "log_snr").tolist(), solver="ddim", nfe=4,
              denoise_final=True).save(tmp_path / "g.json")
    code, _, err = run(["tune", "--problem", "ring2d", "--solver", "ddim", "--nfe", "4", "--init",
                        str(tmp_path / "g.json"), "--out", str(tmp_path / "h.json")], capsys)
    assert code == 2 and err.startswith("error: --init") and "only for --solver learned" in err
    assert "tuning" not in err and not (tmp_path / "h.json").exists()  # refused before any work


def test_tune_fresh_0_reports_not_measured_and_writes_valid_json(capsys, tmp_path):
    code, out, err = run(["tune", "--problem", "ring2d", "--solver", "ddim", "--nfe", "4", "--pilot", "4",
                          "--fresh", "0", "--max-evals", "6", "--out", str(tmp_path / "g.json")], capsys)
    assert code == 0, err
    assert "nan" not in out + err and "fresh: not measured" in out and "no fresh check" in err
    assert "fixed grids:" in err and "tune_steps:" not in out  # the search log goes to stderr, the result to stdout

    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    data = json.loads((tmp_path / "g.json").read_text(), parse_constant=refuse)  # strict JSON: no NaN
    assert data["fresh_error"] is None and data["init_fresh_error"] is None and data["fresh_seeds"] == []
    from diffsolve.tune import TunedGrid

    assert math.isnan(TunedGrid.load(tmp_path / "g.json").fresh_error)


def test_repeated_seeds_are_refused(capsys, tmp_path):
    for argv in (["sample", "--problem", "ring2d", "--seeds", "1,1,2", "--out", str(tmp_path / "x.pt")],
                 _bench(tmp_path / "b", "--seeds", "0-3,2")):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "is repeated" in err and "give each seed once" in err
    with pytest.raises(SystemExit):
        main(["sample", "--problem", "ring2d", "--seeds", "1,1,2,3,3", "--out", str(tmp_path / "x.pt")])
    assert "seeds 1, 3 are repeated in '1,1,2,3,3'" in capsys.readouterr().err
    from diffsolve.bench.problems import get_problem

    with pytest.raises(ValueError, match="seed 3 is repeated"):  # the Python API too
        diffsolve.sample(get_problem("ring2d").denoiser(), seeds=[3, 4, 3], solver="ddim", nfe=4)
    from diffsolve.bench import BenchConfig, run_bench

    with pytest.raises(ValueError, match="seed 2 is repeated"):
        run_bench(BenchConfig(problems=["ring2d"], solvers=["ddim"], nfe=[4], seeds="0-3,2", out=str(tmp_path / "c")))
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_overwrite_leaves_nothing_of_the_previous_run(capsys, tmp_path):
    out = tmp_path / "b"
    code, _, err = run(_bench(out, "--save-samples"), capsys)
    assert code == 0, err
    assert (out / "quality_vs_nfe.png").exists() and list((out / "samples").glob("*.pt"))
    (out / "notes.txt").write_text("mine")  # not written by the run: kept
    code, _, err = run(_bench(out, "--overwrite", "--no-plot"), capsys)
    assert code == 0, err
    # .bench.lock: the (empty) file a running bench holds so that a second run into OUT stops
    assert sorted(p.name for p in out.iterdir()) == [".bench.lock", "notes.txt", "results.jsonl"]
    assert len((out / "results.jsonl").read_text().splitlines()) == 1


def test_resume_with_the_default_schedule_named_or_not(capsys, tmp_path):
    out = tmp_path / "b"
    code, _, err = run(_bench(out), capsys)
    assert code == 0, err
    code, _, err = run(_bench(out, "--resume", "--schedule", "ddpm"), capsys)
    assert code == 0, err
    # a file from before the schedule was recorded resolved (None) resumes too, named or not
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["run"]["schedule"] for r in rows] == ["ddpm"]
    rows[0]["run"]["schedule"] = None
    (out / "results.jsonl").write_text(json.dumps(rows[0]) + "\n")
    for extra in ([], ["--schedule", "ddpm"]):
        code, _, err = run(_bench(out, "--resume", *extra), capsys)
        assert code == 0, err
    code, _, err = run(_bench(out, "--resume", "--schedule", "vp"), capsys)
    assert code == 2 and "schedule: file has 'ddpm', this run 'vp'" in err


def test_wording_singular_and_articles(capsys, tmp_path):
    code, _, err = run(["sample", "--problem", "ring2d", "--solver", "ddim", "--nfe", "2", "--seeds", "7",
                        "--out", str(tmp_path / "x.pt")], capsys)
    assert code == 0, err
    assert "1 sample of shape (2,), 2 network evaluations" in err
    torch.save(3, tmp_path / "three.pt")
    code, _, err = run(["likelihood", "--problem", "ring2d", "--data", str(tmp_path / "three.pt")], capsys)
    assert code == 2 and "holds an object of type int, expected a tensor" in err


def test_sample_says_when_it_spends_less_than_the_budget(capsys, tmp_path):
    argv = ["sample", "--problem", "ring2d", "--seeds", "0-3", "--out", str(tmp_path / "x.pt")]
    # at these budgets the run ends without the final denoise (diffsolve.defaults): 2 per step only
    code, _, err = run(argv + ["--solver", "dpmpp_2s", "--nfe", "11"], capsys)
    assert code == 0, err
    assert "10 network evaluations (the budget was 11; 'dpmpp_2s' spends 2 per step" in err
    code, _, err = run(argv + ["--solver", "dpmpp_2s", "--nfe", "10"], capsys)
    assert code == 0 and "10 network evaluations," in err and "budget" not in err


def test_a_closed_pipe_is_not_an_error(capsys):
    """`diffsolve list solvers --json | head -c 50`: the reader stops early; exit 0, no error line."""
    from diffsolve.cli._common import run_command

    def command(args):
        raise BrokenPipeError(32, "Broken pipe")

    assert run_command(command, None) == 0
    assert capsys.readouterr().err == ""


def test_dir_lists_the_lazy_names():
    lazy = {"CFGDenoiser", "log_likelihood", "tune_steps", "sample", "adapters", "DiffsolveScheduler"}
    assert lazy <= set(dir(diffsolve))
    pytest.importorskip("diffusers")
    from diffsolve.scheduler import DiffsolveScheduler

    assert diffsolve.DiffsolveScheduler is DiffsolveScheduler  # the docstrings' :class:`~diffsolve.DiffsolveScheduler`


def test_a_lazy_name_whose_package_is_missing_leaves_introspection_alone(monkeypatch):
    """Without diffusers, diffsolve.DiffsolveScheduler raised ImportError from hasattr, inspect.getmembers and
    help(); it is now an AttributeError naming the extra, and dir() leaves the name out."""
    import inspect

    monkeypatch.setitem(sys.modules, "diffusers", None)
    assert "DiffsolveScheduler" not in dir(diffsolve) and not hasattr(diffsolve, "DiffsolveScheduler")
    assert inspect.getmembers(diffsolve)
    with pytest.raises(AttributeError, match=r"needs diffusers: pip install 'diffsolve\[diffusers\]'"):
        diffsolve.DiffsolveScheduler


def test_one_process_commands_refuse_torchrun(capsys, tmp_path, monkeypatch):
    """sample --out FILE and tune run in one process: under torchrun every process did the whole job and wrote
    the same file; now they are refused before any work, naming what to use instead."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    code, _, err = run(["sample", "--problem", "ring2d", "--nfe", "4", "--seeds", "0-3", "--out",
                        str(tmp_path / "x.pt")], capsys)
    assert code == 2 and "use --outdir DIR" in err, err
    code, _, err = run(["tune", "--problem", "ring2d", "--nfe", "4", "--out", str(tmp_path / "g.json")], capsys)
    assert code == 2 and "run it without torchrun" in err, err
    assert not list(tmp_path.iterdir())


def test_a_model_file_path_is_a_model(capsys, tmp_path):
    """--model takes a model file (diffsolve.zoo.save_model's), as diffsolve.zoo.load does."""
    from diffsolve.zoo import _resolve

    outs = []
    for model in ("digits", str(_resolve("digits"))):
        out = tmp_path / f"{len(outs)}.pt"
        code, _, err = run(["sample", "--model", model, "--seeds", "0-2", "--nfe", "4", "--out", str(out), "-q"],
                           capsys)
        assert code == 0, err
        outs.append(torch.load(out))
    assert torch.equal(*outs)


@pytest.mark.parametrize("suffix", [".pt", ".npy"])
def test_sample_out_on_a_full_disk_leaves_no_file(suffix, capsys, tmp_path, monkeypatch):
    """On a full disk ``sample --out`` printed torch's or numpy's own error (``[enforce fail at
    inline_container.cc:672]``, exit 1; ``128000 requested and 16352 written``, exit 2) and left a truncated
    file. Now the file is written whole or not at all, and the error says the disk is full (exit 1)."""
    import errno
    import shutil
    from collections import namedtuple

    import numpy as np
    import torch

    def short_write(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    def short_npy(*a, **k):
        raise OSError("128000 requested and 16352 written")

    monkeypatch.setattr(torch, "save", short_write)
    monkeypatch.setattr(np, "save", short_npy)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: namedtuple("usage", "total used free")(10, 10, 0))
    out = tmp_path / f"x{suffix}"
    argv = ["sample", "--problem", "ring2d", "--nfe", "4", "--seeds", "0-3", "--out", str(out), "--quiet"]
    code, _, err = run(argv, capsys)
    assert code == 1 and f"disk full while writing {out}" in err and "nothing was written" in err, err
    assert not list(tmp_path.iterdir())
    # space enough by the numbers: a "no space" error code still says so (a quota), another error is named once
    roomy = namedtuple("usage", "total used free")(2**40, 0, 2**40)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: roomy)
    for error, said in ((OSError(errno.EDQUOT, "Disk quota exceeded"), f"disk full while writing {out}"),
                        (OSError(errno.EIO, "Input/output error"), f"cannot write {out}: Input/output error")):
        def failing(*a, **k):
            raise error

        monkeypatch.setattr(torch if suffix == ".pt" else np, "save", failing)
        code, _, err = run(argv, capsys)
        assert code == 1 and said in err and err.count(str(out)) == 1, err
        assert not list(tmp_path.iterdir())


def test_a_factory_file_without_its_function_is_named(capsys, tmp_path):
    """``--model fac.py`` (a factory file, its function not named) said that fac.json was not found, which did
    not tell how to fix it; now it names the form ``fac.py:make_model``."""
    fac = tmp_path / "fac.py"
    fac.write_text("def make_model():\n    pass\n")
    code, _, err = run(["sample", "--model", str(fac), "--nfe", "4", "--seeds", "0-1", "--out",
                        str(tmp_path / "x.pt")], capsys)
    assert code == 2 and f"{fac}:make_model" in err, err


@pytest.mark.parametrize("extra, needle", [
    (["--solver", "dopri5"], "needs a fixed-step solver"),
    (["--solver", "learned", "--denoise-final", "no", "--pilot", "1"], "pilot must be an integer >= 2"),
    (["--solver", "heun", "--denoise-final", "yes", "--nfe", "2"], "NFE 2 is too small for solver 'heun'"),
])
def test_tune_refuses_before_its_announcement(extra, needle, capsys, tmp_path):
    """These were refused after the 'tuning …' line, as if the work had begun; now before it."""
    code, _, err = run(["tune", "--problem", "ring2d", "--nfe", "5", *extra, "--out", str(tmp_path / "g.json")],
                       capsys)
    assert code == 2 and needle in err and "tuning" not in err, err


@pytest.mark.parametrize("command, full, kept", [
    (["tune", "--problem", "ring2d", "--nfe", "4", "--pilot", "8", "--screen", "0", "--fresh", "0", "--max-evals", "12",
      "--out", "{t}/g.json"], "g.json", None),
    (["likelihood", "--problem", "ring2d", "--data", "{t}/x.npy", "--rtol", "1e-3", "--atol", "1e-3", "--batch-size",
      "2", "--out", "{t}/lk"], "likelihood-rank0.jsonl", "the batches finished before it are kept"),
    (["likelihood", "--problem", "ring2d", "--data", "{t}/x.npy", "--rtol", "1e-3", "--atol", "1e-3", "--batch-size",
      "2", "--out", "{t}/lk"], "summary.json", "every row is in"),
])
def test_a_full_disk_is_said_once_with_status_1(command, full, kept, capsys, tmp_path, monkeypatch):
    """A full disk while tune wrote its grid, or likelihood its rows or summary, was a usage error (status 2:
    ``cannot write …``) or the OS's own line; now it is one ``disk full while writing PATH`` line, what is kept,
    status 1 (the input was good), and no part of a file is left."""
    import errno

    np.save(tmp_path / "x.npy", diffsolve.GaussianMixture.ring().sample(4, generator=torch.Generator().manual_seed(0))
            .numpy())
    real_fsync = os.fsync

    def fsync(fd):  # the disk fills up as the file named `full` (or its temporary twin) is made durable
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        if name == full or name.startswith(f".{Path(full).stem}.") and name.endswith(Path(full).suffix):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    if not os.path.exists("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd to tell the files apart")
    monkeypatch.setattr(os, "fsync", fsync)
    code, _, err = run([a.replace("{t}", str(tmp_path)) for a in command] + ["--quiet"], capsys)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: disk full while writing ") and \
        full in lines[0] and "No space left on device" in lines[0], err
    assert kept is None or kept in lines[0]
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".") and ".tmp" in p.name]  # no temporary left
    if full == "g.json":
        assert not (tmp_path / "g.json").exists()
    if full.endswith(".jsonl"):  # the first batch's rows were cut back out: the file ends with a whole line
        assert (tmp_path / "lk" / full).read_text() == ""
    if full == "summary.json":  # every row is kept, and --resume writes the summary without computing a row
        monkeypatch.setattr(os, "fsync", real_fsync)
        code, out, err = run([a.replace("{t}", str(tmp_path)) for a in command] + ["--quiet", "--resume", "--json"],
                             capsys)
        assert code == 0 and (tmp_path / "lk" / "summary.json").exists(), err
        assert json.loads(out)["n"] == 4 and json.loads(out)["computed"] == 0
