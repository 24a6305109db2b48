"""The likelihood of a dataset (diffsolve/dataset_likelihood.py, `diffsolve likelihood --out`): rows equal
direct log_likelihood calls on the same dequantized points, the bits/dim formula by hand against an exact
density, the summary against numpy, resume after a kill, 2 torchrun processes against 1, bad input."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import diffsolve as ds
from diffsolve import dataset_likelihood as dl
from diffsolve.cli import main
from diffsolve.dequantize import Dequantization
from diffsolve.images import save_png
from diffsolve.zoo.data import digits

ROOT = Path(__file__).resolve().parents[1]
N, BS = 24, 8  # 24 test digits, blocks of 8
OPTS = {"rtol": 1e-2, "atol": 1e-2}  # a cheap ODE: the tests compare like with like
CLI_OPTS = ["--rtol", "1e-2", "--atol", "1e-2", "--batch-size", str(BS), "--quiet"]


@pytest.fixture(scope="module")
def den():
    return ds.zoo.load("digits")


@pytest.fixture(scope="module")
def k8():
    """The first N held-out digits, 17 levels spread over 0..255 (uint8, (N, 1, 8, 8))."""
    k, _ = digits("test")
    return torch.round(k[:N].double() * 255 / 16).to(torch.uint8)


@pytest.fixture(scope="module")
def pngs(tmp_path_factory, k8):
    folder = tmp_path_factory.mktemp("digits-png")
    for i, im in enumerate(k8):
        save_png(folder / f"{i:03d}.png", im)
    return folder


@pytest.fixture(scope="module")
def reference(den, pngs):
    """One uninterrupted in-memory run over the PNG folder (one thread, as the tests' own calls run:
    a module fixture is set up before conftest's per-test thread setting, and the float32 network's
    round-off depends on the thread count)."""
    torch.set_num_threads(1)
    with torch.no_grad():
        return dl.dataset_log_likelihood(den, pngs, batch_size=BS, **OPTS)


def _uniform(seed: int, shape) -> torch.Tensor:
    """The dequantization offsets u of the item with this seed: Φ of its stream's first normal draw."""
    g = torch.Generator().manual_seed(seed)
    return torch.special.ndtr(torch.randn(shape, generator=g, dtype=torch.float64))


def test_rows_equal_direct_calls_on_the_same_points(den, k8, reference):
    rows = reference.rows
    assert [r["index"] for r in rows] == list(range(N)) and set(rows[0]) == set(dl.ROW_FIELDS)
    # block [8, 16) is one log_likelihood call with seeds 8..15 and the 256-level dequantization
    direct = ds.log_likelihood(den, k8[8:16], dequantize=Dequantization(256, (-1.0, 1.0)), seeds=range(8, 16), **OPTS)
    assert [r["log_prob"] for r in rows[8:16]] == direct.log_prob.tolist()
    assert [r["bits_per_dim"] for r in rows[8:16]] == direct.bits_per_dim.tolist()
    assert [r["nfe"] for r in rows[8:16]] == direct.nfe.tolist()
    # the dequantized points by hand, x = -1 + 2(k + u)/256, and log p_Y = log p_X(x) + d log(2/256)
    x = torch.stack([-1 + 2 * (k8[i].double() + _uniform(i, (1, 8, 8))) / 256 for i in range(8, 16)])
    torch.testing.assert_close(direct.x, x, rtol=0, atol=0)
    # two of those images as a tensor, first seed 8: the same points; their rows against log p_X(x) by hand
    rows8 = dl.dataset_log_likelihood(den, k8[8:10], seed=8, divergence="exact", **OPTS).rows
    lp_x = ds.log_likelihood(den, x[:2], divergence="exact", **OPTS).log_prob
    for r, lp in zip(rows8, lp_x.tolist()):
        assert r["log_prob"] == pytest.approx(lp + 64 * math.log(2 / 256), rel=1e-12)
        assert r["bits_per_dim"] == pytest.approx(-(lp / (64 * math.log(2))) + 7, rel=1e-12)  # [-1, 1]: +7 bits


def test_bits_per_dim_by_hand_on_a_tiny_case():
    """Three 2-D 'images' of uint8 levels under a Gaussian mixture whose density is known at every t:
    bits/dim = −(log p_X(x) + d log((b − a)/256))/(d ln 2) at x = a + (b − a)(k + u)/256 (docs/math.md
    (20.7)); the exact prior leaves only the ODE's error."""
    mix = ds.GaussianMixture.ring(n_modes=4, radius=1.0, std=0.5)
    sch = ds.VPSchedule()
    k = torch.tensor([[223, 128], [128, 223], [33, 100]], dtype=torch.uint8)
    res = dl.dataset_log_likelihood(mix.denoiser(sch), k, data_range=(-2, 2), seed=5, divergence="exact",
                                    prior=lambda z: mix.log_prob(z, float(sch.t_max), sch), rtol=1e-6, atol=1e-6)
    x = torch.stack([-2 + 4 * (k[i].double() + _uniform(5 + i, (2,))) / 256 for i in range(3)])
    want = -(mix.log_prob(x, float(sch.t_min), sch) + 2 * math.log(4 / 256)) / (2 * math.log(2))
    got = torch.tensor([r["bits_per_dim"] for r in res.rows], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert res.summary["dequantized"] and res.summary["levels"] == 256 and "upper bound" in res.summary["bits_per_dim_of"]


def test_summary_is_numpy_on_the_rows(reference, tmp_path, den, pngs):
    s, rows = reference.summary, reference.rows
    b = np.array([r["bits_per_dim"] for r in rows])
    lp = np.array([r["log_prob"] for r in rows])
    assert s["n"] == N and s["d"] == 64
    assert s["bits_per_dim"] == pytest.approx(b.mean(), rel=1e-14)
    assert s["bits_per_dim_stderr"] == pytest.approx(b.std(ddof=1) / np.sqrt(N), rel=1e-12)
    assert s["mean_log_prob"] == pytest.approx(lp.mean(), rel=1e-14)
    assert s["log_prob_stderr"] == pytest.approx(lp.std(ddof=1) / np.sqrt(N), rel=1e-12)
    assert s["mean_nfe"] == np.mean([r["nfe"] for r in rows])
    assert 4 < s["bits_per_dim"] < 8  # 17 levels on 256: log2(256/17) = 3.9 bits/dim above the 17-level ~2.5
    # the files: rows as written, and summary.json the returned summary
    res = dl.dataset_log_likelihood(den, pngs, tmp_path / "out", batch_size=BS, **OPTS)
    assert res.rows == rows == dl.read_rows(tmp_path / "out")
    assert json.loads((tmp_path / "out" / dl.SUMMARY_NAME).read_text()) == json.loads(json.dumps(res.summary))


def test_killed_and_resumed_gives_every_item_once(den, pngs, reference, tmp_path, monkeypatch, capsys):
    out, real, calls = tmp_path / "out", dl._batch_rows, []

    def dies_at_the_third_batch(*a, **kw):
        calls.append(a[2])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(dl, "_batch_rows", dies_at_the_third_batch)
    with pytest.raises(KeyboardInterrupt):
        dl.dataset_log_likelihood(den, pngs, out, batch_size=BS, **OPTS)
    monkeypatch.setattr(dl, "_batch_rows", real)
    path = dl.rows_path(out, 0)
    assert [r["index"] for r in dl.read_rows(out)] == list(range(16))
    # a kill in the middle of writing block [16, 24): three whole rows and a torn fourth line
    part = "".join(json.dumps(r) + "\n" for r in reference.rows[16:19])
    path.write_text(path.read_text() + part + '{"index": 19, "log_pr')
    with pytest.raises(ValueError, match=r"already holds 19 rows of an earlier run; pass --resume"):
        dl.dataset_log_likelihood(den, pngs, out, batch_size=BS, **OPTS)
    capsys.readouterr()
    with pytest.raises(ValueError, match=r"other settings \(rtol: 0.01 there, 0.001 now\)"):
        dl.dataset_log_likelihood(den, pngs, out, batch_size=BS, resume=True, rtol=1e-3, atol=1e-2, progress=True)
    assert capsys.readouterr().err == ""  # a refused resume prints its reason only, no banner of a run
    # the defaults as they resolve are recorded: the same call under other defaults is refused
    run_json = out / "run.json"
    header = json.loads(run_json.read_text())
    recorded = header["settings"]
    assert recorded["per_sample"] is True and recorded["time_variable"] == "flow_time"
    assert recorded["delta"] == dl.DELTA_FORM
    run_json.write_text(json.dumps(dict(header, settings=dict(recorded, per_sample=False))))
    with pytest.raises(ValueError, match=r"other settings \(per_sample: false there, true now\)"):
        dl.dataset_log_likelihood(den, pngs, out, batch_size=BS, resume=True, **OPTS)
    # another network under the same name (a retrained model) is refused by its weights' fingerprint
    other = ds.zoo.load("digits")
    with torch.no_grad():
        next(other.net.parameters()).add_(1e-3)
    run_json.write_text(json.dumps(header))
    with pytest.raises(ValueError, match=r"other settings \(weights: "):
        dl.dataset_log_likelihood(other, pngs, out, batch_size=BS, resume=True, **OPTS)
    calls.clear()
    monkeypatch.setattr(dl, "_batch_rows", lambda *a, **kw: calls.append(a[2]) or real(*a, **kw))
    # options given at their defaults are the defaults, and those that change no row (memory, a cap) may change
    at_defaults = dict(dtype=torch.float64, t_end=None, chunk_size=None, max_steps=20000)
    res = dl.dataset_log_likelihood(den, pngs, out, batch_size=BS, resume=True, **OPTS, **at_defaults)
    assert calls == [16]  # only the unfinished block ran, as a whole
    lines = path.read_text().splitlines()
    assert sorted(json.loads(line)["index"] for line in lines) == list(range(N))  # each item once, no torn line
    assert res.rows == reference.rows and res.summary["computed"] == BS
    assert res.summary["bits_per_dim"] == reference.summary["bits_per_dim"]


def test_two_processes_equal_one(tmp_path, pngs):
    one, two = tmp_path / "one", tmp_path / "two"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    argv = ["likelihood", "--model", "digits", "--data", str(pngs), *CLI_OPTS]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "diffsolve", *argv, "--out", str(two)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert main([*argv, "--out", str(one)]) == 0
    assert {p.name for p in two.glob(dl.ROWS_GLOB)} == {"likelihood-rank0.jsonl", "likelihood-rank1.jsonl"}
    r1, r2 = dl.read_rows(one), dl.read_rows(two)
    assert len(r1) == N and r1 == r2
    s1, s2 = (json.loads((d / dl.SUMMARY_NAME).read_text()) for d in (one, two))
    assert (s1["world_size"], s2["world_size"]) == (1, 2) and s2["computed"] == N
    for k in ("n", "bits_per_dim", "bits_per_dim_stderr", "mean_log_prob", "log_prob_stderr", "mean_nfe", "settings"):
        assert s1[k] == s2[k], k


def test_float_data_levels_and_the_continuous_note(den, tmp_path, capsys):
    k, _ = digits("test")
    np.save(tmp_path / "x17.npy", (-1 + 2 * k[:8].double() / 16).numpy())  # the 17 levels as model-space values
    assert main(["likelihood", "--model", "digits", "--data", str(tmp_path / "x17.npy"), "--levels", "17",
                 "--json", *CLI_OPTS]) == 0
    out = json.loads(capsys.readouterr().out)
    direct = ds.log_likelihood(den, k[:8], dequantize={"levels": 17, "range": (-1, 1)}, seeds=range(8), **OPTS)
    assert out["bits_per_dim"] == pytest.approx(float(direct.bits_per_dim.mean()), rel=1e-12)
    assert out["dequantized"] and out["levels"] == 17
    # float samples without dequantization: a density's bits/dim, said to be possibly negative
    assert main(["likelihood", "--model", "digits", "--data", str(tmp_path / "x17.npy"), *CLI_OPTS]) == 0
    text = capsys.readouterr().out
    assert "dequantized: False" in text and "negative wherever p(x) > 1, which is not an error" in text


@pytest.mark.parametrize("argv, needle", [  # "{t}": a folder of bad inputs, "{png}": the PNG folder
    (["--data", "{png}", "--resume"], "--resume continues the rows in --out DIR"),
    (["--data", "{t}/x17.npy", "--dequantize"], "dequantization needs the number of levels K"),
    (["--data", "{png}", "--levels", "17"], "uint8 images have 256 levels"),
    (["--data", "{t}/x17.npy", "--levels", "5"], "not on the 5-level grid"),
    (["--data", "{t}/x17.npy", "--levels", "17", "--no-dequantize"], "dequantize=False refuses it"),
    (["--data", "{png}", "--data-range", "1,0"], "finite lo < hi"),
    (["--data", "{png}", "--data-range", "0,1,2"], "--data-range takes two numbers"),
    (["--data", "{png}", "--n", "1000"], "--n 1000 is more than the 24 items"),
    (["--data", "{png}", "--out", "{t}/file"], "is a file; give a folder"),
    (["--data", "{png}", "--out", "{t}/garbage"], "is not a diffsolve likelihood rows file"),
    (["--data", "{t}/small.npz"], "sample shape (1, 4, 4)"),
    (["--data", "{t}/nan.pt", "--batch-size", "8"], "nan.pt[8:16] contains NaN or Inf (samples [5])"),
    (["--data", "{t}/empty"], "holds no images"),
    (["--data", "{t}/none"], "does not exist"),
    (["--data", "{png}", "--divergence", "skilling"], "valid: hutchinson, exact"),
])
def test_bad_input_is_one_clear_line(argv, needle, pngs, tmp_path, capsys):
    k, _ = digits("test")
    np.save(tmp_path / "x17.npy", (-1 + 2 * k[:8].double() / 16).numpy())
    np.savez(tmp_path / "small.npz", x=np.zeros((3, 1, 4, 4), dtype=np.uint8))
    nan = torch.zeros(20, 1, 8, 8, dtype=torch.float64)
    nan[13, 0, 2, 2] = float("nan")
    torch.save(nan, tmp_path / "nan.pt")
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("")
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "likelihood-rank0.jsonl").write_text("not json\n{}\n")
    argv = [a.format(t=tmp_path, png=pngs) for a in argv]
    code = main(["likelihood", "--model", "digits", *argv, "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and needle in err and "Traceback" not in err, err
    assert err.count("\n") == 1


def test_a_refused_run_leaves_no_folder(pngs, tmp_path, capsys):
    out = tmp_path / "new" / "run"
    code = main(["likelihood", "--model", "digits", "--data", str(pngs), "--n", "1000", "--out", str(out), "--quiet"])
    assert code == 2 and "--n 1000 is more than" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    with pytest.raises(ValueError, match="t_end must lie in"):  # log_likelihood's options, all checked first
        dl.dataset_log_likelihood(ds.zoo.load("digits"), torch.zeros(2, 1, 8, 8, dtype=torch.float64), out=out,
                                  t_end=5.0)
    assert not (tmp_path / "new").exists()


def test_library_refuses_what_it_sets_itself(den, k8):
    with pytest.raises(TypeError, match="seeds= is set per item"):
        dl.dataset_log_likelihood(den, k8, seeds=range(N))
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        dl.dataset_log_likelihood(den, k8, batch_size=0)
    with pytest.raises(ValueError, match=r"n must be an integer in 1\.\.24"):
        dl.dataset_log_likelihood(den, k8, n=0)
    with pytest.raises(ValueError, match="2 processes write their rows to files: give out"):
        dl.dataset_log_likelihood(den, k8, dist=dl.DistContext(world_size=2, rank=0))


def test_integer_levels_are_read_on_their_grid(den, tmp_path, capsys):
    """Integer data (not uint8) are level indices: with levels=K they give what log_likelihood gives the
    same integers with dequantize=dict(levels=K); without it the message names levels."""
    k, _ = digits("test")
    k = k[:6]
    res = dl.dataset_log_likelihood(den, k, levels=17, rtol=1e-2, atol=1e-2)
    want = ds.log_likelihood(den, k, dequantize=dict(levels=17, range=(-1, 1)), seeds=range(6), rtol=1e-2, atol=1e-2)
    got = torch.tensor([r["log_prob"] for r in res.rows], dtype=torch.float64)
    torch.testing.assert_close(got, want.log_prob, rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="give their number"):
        dl.dataset_log_likelihood(den, k)
    with pytest.raises(ValueError, match="levels in 0..7"):
        dl.dataset_log_likelihood(den, k, levels=8)
    np.save(tmp_path / "k.npy", k.numpy())
    from_path = dl.dataset_log_likelihood(den, tmp_path / "k.npy", levels=17, rtol=1e-2, atol=1e-2)
    assert [r["log_prob"] for r in from_path.rows] == [r["log_prob"] for r in res.rows]
    assert main(["likelihood", "--model", "digits", "--data", str(tmp_path / "k.npy"), "--levels", "17",
                 "--json", *CLI_OPTS]) == 0
    out = json.loads(capsys.readouterr().out)
    assert math.isclose(out["mean_log_prob"], float(want.log_prob.mean()), abs_tol=1e-6)


def test_a_failing_network_names_the_items_and_keeps_the_rows(den, tmp_path):
    x = torch.zeros(12, 1, 8, 8, dtype=torch.float64)
    calls = [0]

    def net(y, t):  # NaN from the third batch on (1 + 6 * 2 calls per batch of fixed_steps=2)
        calls[0] += 1
        e = den.net(y, t)
        return e * math.nan if calls[0] > 26 else e

    bad = ds.Denoiser(net, den.schedule, prediction=den.prediction, shape=den.shape, net_dtype=den.net_dtype)
    with pytest.raises(FloatingPointError, match="NaN") as info:
        dl.dataset_log_likelihood(bad, x, out=tmp_path / "rows", batch_size=4, fixed_steps=2)
    said = "\n".join(getattr(info.value, "__notes__", [str(info.value)]))
    assert "items 8-11" in said and "rows of the 8 items finished before are kept" in said, said
    assert [r["index"] for r in dl.read_rows(tmp_path / "rows")] == list(range(8))


def test_uint8_level_indices_with_levels_are_indices():
    """uint8 data with levels=K are level indices (as int64 ones), not 8-bit images."""
    den = ds.GaussianMixture.ring().denoiser("vp", "eps")
    k = torch.randint(0, 17, (4, 2), generator=torch.Generator().manual_seed(0))
    a = dl.dataset_log_likelihood(den, k.to(torch.uint8), levels=17, fixed_steps=3)
    b = dl.dataset_log_likelihood(den, k, levels=17, fixed_steps=3)
    assert a.summary["mean_log_prob"] == b.summary["mean_log_prob"] and a.summary["levels"] == 17


def test_level_indices_in_an_npz_file_as_in_npy(tmp_path):
    """Integer level indices in a .npz archive were refused ("expected uint8 images or floating-point samples";
    as uint8, "uint8 images have 256 levels") where the same array in .npy was read; now the same numbers, from
    the library and the command line."""
    import numpy as np

    from diffsolve.cli import main

    den = ds.GaussianMixture.ring().denoiser("vp", "eps")
    k = torch.randint(0, 17, (4, 2), generator=torch.Generator().manual_seed(0)).numpy()
    np.save(tmp_path / "k.npy", k)
    np.savez(tmp_path / "k.npz", x=k)
    np.savez(tmp_path / "k8.npz", x=k.astype(np.uint8))
    want = dl.dataset_log_likelihood(den, tmp_path / "k.npy", levels=17, fixed_steps=3).summary["mean_log_prob"]
    for f in ("k.npz", "k8.npz"):
        got = dl.dataset_log_likelihood(den, tmp_path / f, levels=17, fixed_steps=3).summary["mean_log_prob"]
        assert got == want, f
    assert main(["likelihood", "--problem", "ring2d", "--data", str(tmp_path / "k.npz"), "--levels", "17",
                 "--rtol", "1e-3", "--atol", "1e-3", "--quiet"]) == 0
