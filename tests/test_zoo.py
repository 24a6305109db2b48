"""Bundled models: ready Denoisers, sample quality judged by a classifier trained on real digits,
held-out bits/dim, and clear errors for missing / truncated / foreign weight files."""
import importlib.util
import json
import math
import shutil

import pytest
import torch

import diffsolve
from diffsolve import zoo
from diffsolve.zoo.data import digits, digits_to_pixels, two_moons

sklearn = pytest.importorskip("sklearn")


def test_available_and_list():
    av = zoo.available()
    assert {"digits", "two_moons"} <= set(av)
    assert all(isinstance(v, str) and v for v in av.values())
    assert zoo.list() == av


@pytest.mark.parametrize("name", ["digits", "two_moons"])
def test_load_gives_ready_denoiser(name):
    den = zoo.load(name)
    assert isinstance(den, diffsolve.Denoiser)
    meta = den.metadata
    assert den.shape == tuple(meta["shape"])
    assert not den.net.training
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in den.net.parameters())
    for key in ("schedule", "prediction", "time_label", "data", "training", "sha256"):
        assert key in meta
    assert {"command", "seed", "time_s"} <= set(meta["training"])
    # the file is a few MB at most
    assert (zoo.WEIGHTS_DIR / f"{name}.safetensors").stat().st_size < 5e6
    # deterministic: two loads give identical outputs
    x = torch.randn(4, *den.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(den.eps(x, 0.5), zoo.load(name).eps(x, 0.5), rtol=0, atol=0)


@pytest.fixture(scope="module")
def clf():
    from sklearn.linear_model import LogisticRegression

    k, y = digits("train")
    return LogisticRegression(max_iter=3000, C=0.1).fit(k.reshape(len(k), -1).numpy(), y.numpy())


def _classify(clf, x):
    prob = clf.predict_proba(digits_to_pixels(x).reshape(len(x), -1).numpy())
    return torch.as_tensor(prob)


def test_digit_samples_are_recognised(clf):
    """Unconditional samples: confident predictions, every class present (classifier trained on the
    real training split; its confidence on real held-out digits is the reference)."""
    k_test, y_test = digits("test")
    ref = _classify(clf, k_test.double() * 2 / 17 - 1 + 1 / 17).max(1).values.mean()
    den = zoo.load("digits")
    n = 300
    out = diffsolve.sample(den, seeds=range(n), solver="ddim", steps=25)
    prob = _classify(clf, out.x)
    conf = prob.max(1).values
    counts = torch.bincount(prob.argmax(1), minlength=10)
    # measured: 0.92 (real held-out digits: 0.95)
    assert float(conf.mean()) > 0.9 * float(ref), (float(conf.mean()), float(ref))
    assert float((conf > 0.5).float().mean()) > 0.9
    assert int(counts.min()) >= 0.02 * n, counts.tolist()  # every class present, none starved


def test_class_conditional_and_guidance(clf):
    """Conditional samples (w = 1) are of the asked class; guidance (w = 3) makes them more so."""
    den = zoo.load("digits")
    labels = torch.arange(200) % 10
    acc = {}
    for w in (1.0, 3.0):
        guided = diffsolve.CFGDenoiser(den, w, labels)
        out = diffsolve.sample(guided, seeds=range(200), solver="ddim", steps=25)
        pred = _classify(clf, out.x).argmax(1)
        acc[w] = float((pred == labels).float().mean())
        assert guided.nfe == 26
    assert acc[1.0] > 0.95 and acc[3.0] > 0.97 and acc[3.0] >= acc[1.0], acc


def _sliced_w1(a, b, n_proj=128):
    theta = torch.rand(n_proj, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * math.pi
    dirs = torch.stack([theta.cos(), theta.sin()], 1)
    return float(((a.double() @ dirs.T).sort(0).values - (b.double() @ dirs.T).sort(0).values).abs().mean())


def test_two_moons_samples_match_data_distribution():
    den = zoo.load("two_moons")
    n = 2000
    out = diffsolve.sample(den, seeds=range(n), solver="ddim", steps=50)
    data, ref = two_moons(n, seed=1), two_moons(n, seed=2)
    w_model, w_data = _sliced_w1(out.x, data), _sliced_w1(ref, data)
    # measured: 0.014-0.023 with 4000 samples (100 DDIM steps) vs 0.006 between data sets
    assert w_model < 0.04 and w_model < 5 * w_data + 0.01, (w_model, w_data)
    assert float(out.x.norm(dim=1).max()) < 3.5  # no sample flies off from the tails of x_T
    # and far from a Gaussian with the data's mean and covariance
    g = torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    gauss = data.mean(0) + g @ torch.linalg.cholesky(torch.cov(data.T)).T
    assert w_model < 0.3 * _sliced_w1(gauss, data), (w_model, _sliced_w1(gauss, data))


@pytest.mark.skipif(importlib.util.find_spec("diffsolve.likelihood") is None, reason="diffsolve.likelihood not written")
def test_digits_bits_per_dim_held_out():
    """Held-out bits/dim (uniform dequantization, docs/math.md §5) beat the uniform 17-level code by a wide
    margin, and images with their pixels shuffled (same pixel histogram, no digit structure) score
    far worse."""
    den = zoo.load("digits")
    k, _ = digits("test")
    k = k[:12]
    deq = dict(levels=17, range=(-1.0, 1.0))
    res = diffsolve.log_likelihood(den, k, dequantize=deq, seeds=range(12), rtol=1e-3, atol=1e-3)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    shuffled = k.reshape(12, 64)[:, perm].reshape(12, 1, 8, 8)
    res_s = diffsolve.log_likelihood(den, shuffled, dequantize=deq, seeds=range(12), rtol=1e-3, atol=1e-3)
    bpd, bpd_s = float(res.bits_per_dim.mean()), float(res_s.bits_per_dim.mean())
    assert bpd < math.log2(17) - 1.2, bpd  # measured 2.57 on all 297 (uniform code: 4.09)
    assert bpd_s > bpd + 1.0, (bpd, bpd_s)


# --- strict loading ------------------------------------------------------------------------
@pytest.fixture
def model_copy(tmp_path):
    for ext in (".safetensors", ".json"):
        shutil.copy(zoo.WEIGHTS_DIR / f"digits{ext}", tmp_path / f"digits{ext}")
    return tmp_path / "digits.safetensors"


def test_load_copy_by_path(model_copy):
    den = zoo.load(model_copy)
    x = torch.zeros(2, 1, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(den.eps(x, 0.3), zoo.load("digits").eps(x, 0.3))


def test_unknown_name():
    with pytest.raises(ValueError, match="unknown model 'mnist'.*digits"):
        zoo.load("mnist")


def test_missing_files(model_copy):
    model_copy.unlink()
    with pytest.raises(FileNotFoundError, match="weights .* not found"):
        zoo.load(model_copy)
    model_copy.with_suffix(".json").unlink()
    with pytest.raises(FileNotFoundError, match="metadata .* not found"):
        zoo.load(model_copy)


def test_truncated_file(model_copy):
    data = model_copy.read_bytes()
    model_copy.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        zoo.load(model_copy)
    # without the recorded hash the safetensors reader still refuses it
    meta = json.loads(model_copy.with_suffix(".json").read_text())
    del meta["sha256"]
    model_copy.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="cannot read model weights"):
        zoo.load(model_copy)


def test_wrong_architecture(model_copy):
    """Weights of another model under this metadata: a clear error naming the mismatches."""
    shutil.copy(zoo.WEIGHTS_DIR / "two_moons.safetensors", model_copy)
    meta = json.loads(model_copy.with_suffix(".json").read_text())
    meta["sha256"] = zoo._io.sha256(model_copy)
    model_copy.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="do not fit architecture ResidualMLP.*(missing|wrong shapes)"):
        zoo.load(model_copy)
    meta["config"]["width"] = 7
    meta["sha256"] = zoo._io.sha256(zoo.WEIGHTS_DIR / "digits.safetensors")
    model_copy.with_suffix(".json").write_text(json.dumps(meta))
    shutil.copy(zoo.WEIGHTS_DIR / "digits.safetensors", model_copy)
    with pytest.raises(ValueError, match="wrong shapes"):
        zoo.load(model_copy)
    meta["architecture"] = "UNet9000"
    model_copy.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="unknown architecture 'UNet9000'"):
        zoo.load(model_copy)
    model_copy.with_suffix(".json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        zoo.load(model_copy)
