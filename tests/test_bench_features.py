"""Feature metrics of benchmark rows (``diffsolve bench --metric fid,kid,prdc``; docs/math.md §24):
the row values against direct computations, FID falling with NFE on the digits model as the error
against the exact ODE solution does, references from files (cached) and from published statistics,
density / coverage against a hand computation and the authors' ``prdc`` package, the basic bootstrap
interval, torchrun, and clear errors."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import scipy.spatial
import torch

from diffsolve import features as F
from diffsolve.bench import BenchConfig, FeatureSettings, read_rows, run_bench
from diffsolve.bench.problems import get_model
from diffsolve.cli import main
from diffsolve.images import from_uint8, save_png, to_uint8

ROOT = Path(__file__).resolve().parents[1]

# a small random convolutional feature network (fixed weights), given to bench as file.py:factory
FEATURE_NET = '''
import torch

def factory():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.Tanh(), torch.nn.AvgPool2d(2),
                               torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 16)).double()
'''


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFSOLVE_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def feature_net(tmp_path):
    path = tmp_path / "featnet.py"
    path.write_text(FEATURE_NET)
    return f"{path}:factory"


def _run(tmp_path, name, **kw):
    cfg = dict(problems=["digits"], solvers=["euler"], nfe=[3, 5, 10], out=str(tmp_path / name), plot=False,
               quiet=True, print_table=False, n_samples=96, save_samples=True)
    cfg.update(kw)
    return run_bench(BenchConfig(**cfg))


def _fd_scipy(mu1, s1, mu2, s2):
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2)).real)


def test_fid_falls_with_nfe_as_the_exact_reference_distance_does(tmp_path, feature_net):
    rows = _run(tmp_path, "b", feature_metrics=FeatureSettings(metrics=("fid", "kid", "prdc"), features=feature_net,
                                                               bootstrap=20))
    fid = [r["metrics"]["fid"] for r in rows]
    err = [r["metrics"]["rms_error"] for r in rows]
    assert err[0] > err[1] > err[2] and fid[0] > fid[1] > fid[2], (fid, err)
    for r in rows:
        assert set(r["metrics"]) >= {"fid", "kid", "kid_std", "precision", "recall", "density", "coverage"}
        assert set(r["intervals"]) == {"fid", "precision", "density"} and r["n_samples"] == 96
        lo, hi = r["intervals"]["precision"]
        assert lo <= r["metrics"]["precision"] <= hi
        assert 0 <= r["intervals"]["fid"][0] < r["intervals"]["fid"][1]
        assert r["run"]["feature_metrics"]["features"] == feature_net


def test_row_metrics_equal_direct_computations(tmp_path):
    rows = _run(tmp_path, "b", nfe=[5], feature_metrics=FeatureSettings(metrics=("fid", "kid", "prdc"), bootstrap=0))
    r = rows[0]
    x = torch.load(tmp_path / "b" / "samples" / (r["key"].replace("|", "_") + ".pt"))
    p = get_model("digits")
    gen = p.quantize(x).reshape(len(x), -1).numpy()  # "pixels" on the digits' 17 levels
    ref = p.data().reshape(-1, 64).numpy()
    expected = _fd_scipy(gen.mean(0), np.cov(gen, rowvar=False), ref.mean(0), np.cov(ref, rowvar=False))
    assert r["metrics"]["fid"] == pytest.approx(expected, rel=1e-6)
    k = F.kid(ref.astype(np.float32), gen)
    assert r["metrics"]["kid"] == pytest.approx(k.mean, rel=1e-5) and r["intervals"] == {}
    pr, dc = F.precision_recall(ref.astype(np.float32), gen), F.density_coverage(ref.astype(np.float32), gen)
    assert (r["metrics"]["precision"], r["metrics"]["recall"]) == pytest.approx(tuple(pr), abs=1e-12)
    assert (r["metrics"]["density"], r["metrics"]["coverage"]) == pytest.approx(tuple(dc), abs=1e-12)


def test_density_coverage_by_hand_and_against_the_authors_package():
    rng = np.random.default_rng(0)
    real, fake = rng.standard_normal((120, 5)), rng.standard_normal((90, 5)) * 1.3 + 0.2
    k = 5
    radii = np.sort(scipy.spatial.distance.cdist(real, real), axis=1)[:, k]
    inside = scipy.spatial.distance.cdist(fake, real) <= radii[None, :]
    got = F.density_coverage(real, fake, k=k)
    assert got.density == pytest.approx(inside.sum() / (k * len(fake)), rel=1e-12)
    assert got.coverage == pytest.approx(inside.any(0).mean(), rel=1e-12)
    counts, covered = F.ball_hits(real, fake, k=k, batch_size=7)  # blocks smaller than the sets
    assert counts.numpy().tolist() == inside.sum(1).tolist() and covered.numpy().tolist() == inside.any(0).tolist()
    if importlib.util.find_spec("prdc") is None:
        pytest.skip("prdc (Naeem et al.'s package) is not installed: pip install prdc to compare")
    from prdc import compute_prdc

    theirs = compute_prdc(real_features=real, fake_features=fake, nearest_k=k)
    assert got.density == pytest.approx(theirs["density"], rel=1e-9)
    assert got.coverage == pytest.approx(theirs["coverage"], rel=1e-9)


def test_basic_bootstrap_interval_reflects_the_percentile_one():
    x = np.random.default_rng(1).standard_normal(200) ** 2
    p = F.bootstrap_interval(np.var, x, n_resamples=300, seed=3)
    b = F.bootstrap_interval(np.var, x, n_resamples=300, seed=3, method="basic")
    assert b.estimate == p.estimate
    assert (b.low, b.high) == pytest.approx((2 * p.estimate - p.high, 2 * p.estimate - p.low), rel=1e-12)
    with pytest.raises(ValueError, match="method"):
        F.bootstrap_interval(np.var, x, method="bca")


def _digits_as_pngs(folder: Path, n: int = 120) -> Path:
    data = get_model("digits").data()[:n]
    folder.mkdir()
    for i, img in enumerate(to_uint8(data)):
        save_png(folder / f"{i:04d}.png", img)
    return folder


def test_reference_folder_of_pngs_is_cached_and_quantizes_the_samples(tmp_path, feature_net):
    ref_dir = _digits_as_pngs(tmp_path / "ref")
    settings = FeatureSettings(metrics=("fid", "prdc"), features=feature_net, reference=str(ref_dir), bootstrap=0)
    rows = _run(tmp_path, "b", nfe=[5], feature_metrics=settings)
    assert len(list((tmp_path / "cache" / "features").glob("*.npz"))) == 1
    again = _run(tmp_path, "c", nfe=[5], feature_metrics=settings)  # from the cache: the same numbers
    assert again[0]["metrics"]["fid"] == rows[0]["metrics"]["fid"]
    # by hand: samples and reference both through the 8-bit map, features from the same network
    x = torch.load(tmp_path / "b" / "samples" / (rows[0]["key"].replace("|", "_") + ".pt"))
    net = F.features_from(feature_net)
    gen = net(from_uint8(to_uint8(x))).numpy()
    ref = net(from_uint8(to_uint8(get_model("digits").data()[:120]))).numpy()
    expected = _fd_scipy(gen.mean(0), np.cov(gen, rowvar=False), ref.mean(0), np.cov(ref, rowvar=False))
    assert rows[0]["metrics"]["fid"] == pytest.approx(expected, rel=1e-5)
    # a changed feature network is a new cache entry, not a stale hit
    Path(feature_net.rpartition(":")[0]).write_text(FEATURE_NET.replace("manual_seed(0)", "manual_seed(1)"))
    other = _run(tmp_path, "d", nfe=[5], feature_metrics=settings)
    assert len(list((tmp_path / "cache" / "features").glob("*.npz"))) == 2
    assert other[0]["metrics"]["fid"] != rows[0]["metrics"]["fid"]


def test_published_statistics_give_fid_only(tmp_path):
    data = get_model("digits").data().reshape(-1, 64)
    F.FeatureStats().update(data).save(tmp_path / "stats.npz")
    rows = _run(tmp_path, "b", nfe=[5], feature_metrics=FeatureSettings(metrics=("fid",), bootstrap=0,
                                                                        reference=str(tmp_path / "stats.npz")))
    assert rows[0]["metrics"]["fid"] > 0
    with pytest.raises(ValueError, match="kid needs reference samples"):
        _run(tmp_path, "c", nfe=[5], feature_metrics=FeatureSettings(metrics=("fid", "kid"),
                                                                     reference=str(tmp_path / "stats.npz")))
    assert not (tmp_path / "c").exists()  # refused before the output directory was claimed


def test_analytic_problem_has_exact_floors(tmp_path):
    rows = _run(tmp_path, "b", problems=["ring2d"], nfe=[10], n_samples=300,
                feature_metrics=FeatureSettings(metrics=("fid", "prdc"), bootstrap=0))
    r = rows[0]
    assert r["floors"]["fid"] is not None and 0 < r["floors"]["fid"] < r["metrics"]["fid"] * 10
    assert 0 < r["floors"]["precision"] <= 1


@pytest.mark.parametrize("argv, message", [
    (["--metric", "fid,lpips"], "unknown metric 'lpips'"),
    (["--reference", "x.npz"], "name them with --metric"),
    (["--data-range=0,1"], "--data-range sets up feature metrics"),  # was ignored without a word
    (["--metric", "fid", "--reference", "/no/such/file.npz"], "no such file"),
    (["--metric", "fid", "--data-range=0,1,2"], "LO,HI"),
    (["--metric", "fid", "--bootstrap", "-1"], "bootstrap"),
    (["--metric", "fid", "--features", "inception:/no/such/weights.pt"], "Not found"),
])
def test_cli_errors(tmp_path, capsys, argv, message):
    code = main(["bench", "--problems", "ring2d", "--solvers", "euler", "--nfe", "5", "--out", str(tmp_path / "o"),
                 *argv])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_reference_of_another_shape_is_refused(tmp_path, capsys):
    np.save(tmp_path / "ref.npy", np.zeros((10, 3, 4, 4), np.float32))
    code = main(["bench", "--problems", "ring2d", "--solvers", "euler", "--nfe", "5", "--out", str(tmp_path / "o"),
                 "--metric", "fid", "--reference", str(tmp_path / "ref.npy")])
    assert code == 2 and "holds samples of shape (3, 4, 4)" in capsys.readouterr().err


def test_two_processes_give_the_metrics_of_one(tmp_path):
    args = ["bench", "--problems", "digits", "--solvers", "euler", "--nfe", "5", "--n-samples", "40", "--metric",
            "fid,kid,prdc", "--bootstrap", "10", "--no-plot", "--quiet"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", DIFFSOLVE_CACHE=str(tmp_path / "cache"))
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "diffsolve", *args, "--out", str(tmp_path / "two")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    one, two = read_rows(tmp_path / "one" / "results.jsonl")[0], read_rows(tmp_path / "two" / "results.jsonl")[0]
    for k in ("fid", "kid", "precision", "recall", "density", "coverage"):
        assert two["metrics"][k] == pytest.approx(one["metrics"][k], rel=1e-9, abs=1e-12), k
    assert two["intervals"] == pytest.approx(one["intervals"], rel=1e-9)


def test_a_kid_at_or_below_zero_ranks_nothing():
    """The unbiased KID falls below zero where the rows are as close to the reference as its noise: the plot
    then shows the next metric and the run says why, instead of ranking rows by noise."""
    from diffsolve.bench.feature_metrics import kid_notes
    from diffsolve.bench.plot import _quality

    def row(problem, kid):
        return {"problem": problem, "metrics": {"kid": kid, "rms_error": 0.1}}

    noisy = [row("g", 5e-4), row("g", -3e-3)]
    clear = [row("m", 2e-2), row("m", 4e-3)]
    assert _quality(noisy) == "rms_error" and _quality(clear) == "kid"
    notes = kid_notes(noisy + clear)
    assert len(notes) == 1 and notes[0].startswith("kid: 1 of 2 rows of g are at or below 0")


def test_a_sample_of_the_reference_law_gets_an_ordered_interval_and_standard_json(tmp_path):
    """Samples measured against a saved batch of the same run (FID 0, as when solvers are compared with
    high-NFE samples of the same model): the basic bootstrap interval was [0.0, −0.004] (its upper end
    2θ̂ − q_lo below 0) and ``kid_std`` (one subset) was written as a bare NaN, which standard JSON readers
    refuse. Now the interval is cut at 0 at both ends and a non-finite value is null."""
    import json

    common = ["bench", "--problems", "ring2d", "--solvers", "euler", "--nfe", "10", "--n-samples", "200", "--quiet",
              "--no-plot"]
    assert main([*common, "--save-samples", "--out", str(tmp_path / "a")]) == 0
    saved = next((tmp_path / "a" / "samples").glob("*.pt"))
    assert main([*common, "--metric", "fid,kid", "--reference", str(saved), "--out", str(tmp_path / "b")]) == 0

    def refuse(constant):
        raise ValueError(f"{constant} is not standard JSON")

    for line in (tmp_path / "b" / "results.jsonl").read_text().splitlines():
        row = json.loads(line, parse_constant=refuse)
        lo, hi = row["intervals"]["fid"]
        assert 0.0 <= lo <= hi and row["metrics"]["fid"] == 0.0 and row["metrics"]["kid_std"] is None


def test_resume_against_a_changed_reference_is_refused(tmp_path, capsys):
    """Only the reference's path was recorded: a file replaced under the same name was resumed against, and the
    results file mixed rows measured against two references (FID 0.15 at NFE 5, 25 at NFE 10)."""
    ref = tmp_path / "ref.npy"
    np.save(ref, torch.randn(64, 2, generator=torch.Generator().manual_seed(0)).numpy())
    common = ["bench", "--problems", "ring2d", "--solvers", "euler", "--n-samples", "64", "--quiet", "--no-plot",
              "--metric", "fid", "--reference", str(ref), "--out", str(tmp_path / "b")]
    assert main([*common, "--nfe", "5"]) == 0
    assert main([*common, "--nfe", "5,6", "--resume"]) == 0  # the same reference: resumed
    np.save(ref, 3 + torch.randn(64, 2, generator=torch.Generator().manual_seed(1)).numpy())
    os.utime(ref, ns=(1, 1))  # (a new modification time even where the clock is coarse)
    capsys.readouterr()
    assert main([*common, "--nfe", "5,6,7", "--resume"]) == 2
    assert "reference_files" in capsys.readouterr().err


def test_a_refused_results_file_is_refused_before_the_reference_features(tmp_path, capsys, monkeypatch):
    """A results file the run may not continue (no --resume, or other settings) was refused only after the
    reference's features were computed (minutes with Inception on a large reference)."""
    import diffsolve.bench.runner as runner

    ref = tmp_path / "ref.npy"
    np.save(ref, torch.randn(64, 2, generator=torch.Generator().manual_seed(0)).numpy())
    common = ["bench", "--problems", "ring2d", "--solvers", "euler", "--nfe", "5", "--n-samples", "64", "--quiet",
              "--no-plot", "--metric", "fid", "--reference", str(ref), "--out", str(tmp_path / "b")]
    assert main(common) == 0

    def no_features(*a, **k):
        raise AssertionError("the reference's features were computed before the refusal")

    monkeypatch.setattr(runner, "FeatureMetrics", no_features)
    capsys.readouterr()
    assert main(common) == 2 and "already exists; pass --resume" in capsys.readouterr().err
    assert main([*common, "--resume", "--projections", "7"]) == 2 and "n_projections" in capsys.readouterr().err
