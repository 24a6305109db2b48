"""diffsolve.features: streaming statistics, Fréchet distance, KID, precision/recall, feature
extractors and the bootstrap (docs/math.md §24), against direct computations, closed forms, scipy
and (when installed) torch-fidelity and clean-fid."""
import importlib
import importlib.abc
import importlib.util
import math
import pickle
import socket
import sys
import time
import types
import urllib.request
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch

from diffsolve import features as F
from diffsolve.features.extract import _to_uint8_rgb


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def _rel(a, b):
    return abs(a - b) / abs(b)


# --- FeatureStats ---------------------------------------------------------------------------
def test_stats_match_numpy_for_any_batching(rng):
    x = rng.standard_normal((1000, 16)) @ rng.standard_normal((16, 16)) + 3.0
    for sizes in ([1000], [1, 7, 992], [250] * 4):
        st = F.FeatureStats()
        for part in np.split(x, np.cumsum(sizes)[:-1]):
            st.update(torch.from_numpy(part).float() if len(part) == 7 else part)
        tol = 1e-6 if 7 in sizes else 1e-12  # one batch went through float32
        assert st.n == 1000
        np.testing.assert_allclose(st.mean, x.mean(0), rtol=tol, atol=tol)
        np.testing.assert_allclose(st.cov, np.cov(x, rowvar=False), rtol=tol, atol=tol)


def test_merge_of_shards_equals_one_pass(rng):
    x = rng.standard_normal((999, 8)) * np.arange(1, 9)
    whole = F.FeatureStats().update(x)
    shards = [F.FeatureStats().update(p) for p in np.array_split(x, 5)]
    merged = F.FeatureStats()
    for s in shards:
        merged.merge(s)
    merged.merge(F.FeatureStats())  # an empty shard changes nothing
    assert merged.n == whole.n == 999
    np.testing.assert_allclose(merged.mean, whole.mean, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(merged.cov, np.cov(x, rowvar=False), rtol=1e-12, atol=1e-14)


def test_stats_are_stable_under_a_large_offset(rng):
    # sum / sum-of-outer-products accumulation loses ~1e-2 relative here; the centred merge does not
    x = 1e6 + rng.standard_normal((10000, 8))
    st = F.FeatureStats()
    for part in np.array_split(x, 10):
        st.update(part)
    ref = np.cov(x - 1e6, rowvar=False)
    assert np.abs(st.cov - ref).max() / np.abs(ref).max() < 1e-9


def test_accumulator_memory_is_constant_in_n(rng):
    d = 64
    sizes = {}
    for n in (10_000, 50_000):
        st = F.FeatureStats()
        for _ in range(n // 1000):
            st.update(rng.standard_normal((1000, d)))
        assert st.n == n
        sizes[n] = (st.nbytes, len(pickle.dumps(st)))
    assert sizes[10_000] == sizes[50_000]
    assert sizes[10_000][0] == 8 * (d + d * d)


def test_npz_round_trip_and_edm_reference_format(tmp_path, rng):
    x = rng.standard_normal((50, 6))
    st = F.FeatureStats().update(x)
    st.save(tmp_path / "stats.npz")
    with np.load(tmp_path / "stats.npz") as f:  # EDM reads dict(np.load(f)) and uses 'mu', 'sigma'
        assert {"mu", "sigma"} <= set(f.files) and f["mu"].dtype == f["sigma"].dtype == np.float64
        np.testing.assert_array_equal(f["sigma"], st.cov)
    back = F.FeatureStats.load(tmp_path / "stats.npz")
    assert back.n == 50
    np.testing.assert_allclose(back.cov, st.cov, rtol=1e-15)
    back.merge(F.FeatureStats().update(x))  # with its count it still merges exactly
    np.testing.assert_allclose(back.cov, np.cov(np.vstack([x, x]), rowvar=False), rtol=1e-12)

    np.savez(tmp_path / "edm.npz", mu=x.mean(0), sigma=np.cov(x, rowvar=False))  # as EDM's `fid.py ref` writes
    ref = F.FeatureStats.load(tmp_path / "edm.npz")
    assert ref.n is None and ref.frechet_distance(st) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="sample count"):
        ref.merge(st)
    np.savez(tmp_path / "bad.npz", mean=x.mean(0))
    with pytest.raises(KeyError, match="mu"):
        F.FeatureStats.load(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="2 samples"):
        _ = F.FeatureStats().update(x[:1]).cov


# --- Fréchet distance -----------------------------------------------------------------------
def _spd(rng, d, cond=10.0):
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (q * np.geomspace(1.0, 1.0 / cond, d)) @ q.T


def _fd_scipy(mu1, s1, mu2, s2):
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


def test_sqrtm_psd_matches_scipy(rng):
    for d in (1, 3, 10, 40):
        a = _spd(rng, d, cond=1e4)
        r = F.sqrtm_psd(a)
        ref = scipy.linalg.sqrtm(a).real
        assert np.linalg.norm(r - ref) / np.linalg.norm(ref) < 1e-6
        np.testing.assert_allclose(r @ r, a, atol=1e-12)


def test_frechet_distance_matches_scipy_sqrtm_and_closed_forms(rng):
    for d in (2, 8, 32):
        mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
        s1, s2 = _spd(rng, d, 30.0), 2.0 * _spd(rng, d, 5.0)
        assert _rel(F.frechet_distance(mu1, s1, mu2, s2), _fd_scipy(mu1, s1, mu2, s2)) < 1e-6
    a, b = np.array([[4.0]]), np.array([[9.0]])
    assert F.frechet_distance([0.0], a, [0.0], b) == pytest.approx(1.0, rel=1e-14)  # (2 − 3)²
    va, vb = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
    mu = rng.standard_normal(5)
    assert F.frechet_distance(mu, np.diag(va), mu + 1, np.diag(vb)) == pytest.approx(
        5 + ((np.sqrt(va) - np.sqrt(vb)) ** 2).sum(), rel=1e-13)
    with pytest.raises(ValueError, match="covariances"):
        F.frechet_distance(mu, np.eye(5), mu, np.eye(4))


@pytest.mark.parametrize("n, d", [(20, 64), (50, 128)])
def test_frechet_distance_with_fewer_samples_than_dimensions(rng, n, d):
    x = rng.standard_normal((n, d)) * rng.uniform(0.5, 2, d)
    y = rng.standard_normal((4 * d, d)) @ rng.standard_normal((d, d)) / np.sqrt(d)
    sx, sy = F.FeatureStats().update(x), F.FeatureStats().update(y)
    # independent truth: tr (Σ₁^½ Σ₂ Σ₁^½)^½ = nuclear norm of Σ₂^½ X_cᵀ/√(n − 1)
    # (Σ₁ = X_cᵀX_c/(n − 1), rank n − 1)
    xc = (x - x.mean(0)) / np.sqrt(n - 1)
    nuclear = np.linalg.svd(scipy.linalg.sqrtm(sy.cov).real @ xc.T, compute_uv=False).sum()
    diff = sx.mean - sy.mean
    truth = diff @ diff + np.trace(sx.cov) + np.trace(sy.cov) - 2 * nuclear
    assert _rel(F.frechet_distance(sx.mean, sx.cov, sy.mean, sy.cov), truth) < 1e-9
    assert _rel(F.frechet_distance(sy.mean, sy.cov, sx.mean, sx.cov), truth) < 1e-9
    # a singular covariance against itself: 0 to rounding here; sqrtm of the singular product is not
    # (scipy 1.17: about −2e-6, with a warning; slow for larger D, so only checked for the small case)
    ours = F.frechet_distance(sx.mean, sx.cov, sx.mean, sx.cov)
    assert abs(ours) <= 1e-12 * np.trace(sx.cov)
    if d <= 64:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert abs(_fd_scipy(sx.mean, sx.cov, sx.mean, sx.cov)) > 1e-12 * np.trace(sx.cov)


# --- KID --------------------------------------------------------------------------------------
def _mmd2_loops(x, y):
    """Unbiased MMD² with k(a, b) = (a·b/d + 1)³, by explicit pairs."""
    m, d = x.shape
    k = lambda a, b: (float(a @ b) / d + 1.0) ** 3
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_matches_direct_computation(rng):
    x, y = rng.standard_normal((30, 5)), rng.standard_normal((40, 5)) + 0.5
    r = F.kid(x, y, num_subsets=1, subset_size=30)
    draws = np.random.RandomState(0)  # kid's default seed; x's draw is a permutation (MMD² ignores order)
    draws.choice(30, 30, replace=False)
    assert r.subset_size == 30 and _rel(r.mean, _mmd2_loops(x, y[draws.choice(40, 30, replace=False)])) < 1e-12
    r = F.kid(x, torch.from_numpy(y), num_subsets=5, subset_size=10, seed=7)
    draws = np.random.RandomState(7)
    direct = []
    for _ in range(5):
        ix = draws.choice(30, 10, replace=False)
        direct.append(_mmd2_loops(x[ix], y[draws.choice(40, 10, replace=False)]))
    np.testing.assert_allclose(r.values, direct, rtol=1e-12)
    assert r.mean == pytest.approx(np.mean(direct), rel=1e-12) and r.std == pytest.approx(np.std(direct), rel=1e-12)


def test_kid_is_near_zero_for_one_law_and_positive_for_two(rng):
    x, y = rng.standard_normal((600, 8)), rng.standard_normal((600, 8))
    same, shifted = F.kid(x, y, subset_size=200, num_subsets=20), F.kid(x, y + 1.0, subset_size=200, num_subsets=20)
    assert abs(same.mean) < 3 * same.std + 1e-3 and shifted.mean > 10 * shifted.std > 0
    whole = F.kid(x, y, num_subsets=3)
    assert whole.subset_size == 600 and math.isnan(whole.std)  # subsets of min(1000, N) rows: both sets whole
    with pytest.raises(ValueError, match="dimensions"):
        F.kid(x, y[:, :3])


# --- precision / recall ---------------------------------------------------------------------
def _pr_brute(real, fake, k):
    d = lambda a, b: np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1))
    r_real, r_fake = np.sort(d(real, real), 1)[:, k], np.sort(d(fake, fake), 1)[:, k]
    return (d(fake, real) <= r_real[None]).any(1).mean(), (d(real, fake) <= r_fake[None]).any(1).mean()


def test_knn_radii_and_precision_recall_match_brute_force_for_any_block(rng):
    real, fake = rng.standard_normal((300, 6)), 0.7 * rng.standard_normal((250, 6)) + 0.3
    brute = np.sort(np.sqrt(((real[:, None] - real[None]) ** 2).sum(-1)), 1)[:, 3]
    for bs in (7, 64, 1024):
        np.testing.assert_allclose(F.knn_radii(real, k=3, batch_size=bs).numpy(), brute, rtol=1e-10)
        assert F.precision_recall(real, fake, batch_size=bs) == pytest.approx(_pr_brute(real, fake, 3), abs=0)
    assert F.precision_recall(real, fake, k=5, batch_size=50) == pytest.approx(_pr_brute(real, fake, 5), abs=0)


def test_precision_recall_toy_distributions(rng):
    real = rng.standard_normal((2000, 8))
    assert F.precision_recall(real, real) == (1.0, 1.0)
    assert F.precision_recall(real, real + 100.0) == (0.0, 0.0)
    part = real[real[:, 0] < -0.5]  # a subset: every point is a reference point, a third of the law
    p, r = F.precision_recall(real, part)
    assert p == 1.0 and r < 0.7
    fresh = rng.standard_normal((6000, 8))
    p, r = F.precision_recall(real, fresh[fresh[:, 0] < -0.5][:700])  # fresh draws from that third
    assert p > 0.8 and r < 0.7
    p, r = F.precision_recall(real, fresh[:700])  # fresh draws from the whole law (k = 3 in 8-D: ~0.9)
    assert p > 0.85 and r > 0.8


# --- bootstrap --------------------------------------------------------------------------------
def test_bootstrap_interval(rng):
    x = rng.normal(2.0, 3.0, 400)
    iv = F.bootstrap_interval(np.mean, x, n_resamples=2000, seed=3)
    assert iv.estimate == pytest.approx(x.mean()) and iv.low < 2.0 < iv.high
    assert (iv.high - iv.low) == pytest.approx(2 * 1.96 * 3.0 / 20, rel=0.15)
    assert iv == F.bootstrap_interval(np.mean, x, n_resamples=2000, seed=3)
    assert iv != F.bootstrap_interval(np.mean, x, n_resamples=2000, seed=4)
    t = F.bootstrap_interval(lambda a, b: float(a.mean() - b.mean()), torch.from_numpy(x), torch.zeros(50),
                             n_resamples=200, confidence=0.9)
    assert t.confidence == 0.9 and t.low < t.estimate < t.high
    with pytest.raises(ValueError):
        F.bootstrap_interval(np.mean, x, confidence=1.5)


# --- feature extractors ---------------------------------------------------------------------
def test_pixels_and_factory_extractors(tmp_path, monkeypatch):
    x = torch.randn(4, 1, 3, 3)
    assert torch.equal(F.features_from("pixels")(x), x.reshape(4, 9))
    (tmp_path / "myfeats.py").write_text(
        "import torch\n\ndef make(scale=1.0):\n    return lambda x: scale * x.mean((2, 3))\n\n"
        "net = torch.nn.Flatten()\n\ndef broken():\n    return lambda x: x\n")
    assert torch.equal(F.features_from(f"{tmp_path}/myfeats.py:make", scale=2.0)(x), 2 * x.mean((2, 3)))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert torch.equal(F.features_from("myfeats:net")(x), x.reshape(4, 9))
    with pytest.raises(ValueError, match=r"returned \(4, 1, 3, 3\)"):
        F.features_from("myfeats:broken")(x)
    for bad, msg in [("nope", "expected 'pixels'"), ("no_such_module_xyz:f", "cannot import"),
                     ("myfeats:missing", "no attribute"), (f"{tmp_path}/none.py:f", "no such Python file")]:
        with pytest.raises(ValueError, match=msg):
            F.features_from(bad)


def _no_network(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("features_from tried the network")
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def test_inception_without_weights_says_where_to_put_them(tmp_path, monkeypatch):
    _no_network(monkeypatch)
    monkeypatch.delenv("DIFFSOLVE_INCEPTION", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    t0 = time.perf_counter()
    with pytest.raises(FileNotFoundError) as e:
        F.features_from("inception")
    msg = str(e.value)
    hub = str(tmp_path / "torch" / "hub" / "checkpoints")
    for part in ("never downloads", "inception-2015-12-05.pt", "weights-inception-2015-12-05-6726825d.pth",
                 "https://nvlabs-fi-cdn.nvidia.com/", "DIFFSOLVE_INCEPTION", hub, "diffsolve[metrics]"):
        assert part in msg
    with pytest.raises(FileNotFoundError, match="elsewhere.pt"):
        F.features_from(f"inception:{tmp_path}/elsewhere.pt")
    assert time.perf_counter() - t0 < 5


def test_torch_fidelity_weights_without_torch_fidelity_say_what_to_install(tmp_path):
    if importlib.util.find_spec("torch_fidelity") is not None:
        pytest.skip("torch-fidelity is installed (see test_inception_through_torch_fidelity)")
    (tmp_path / "weights.pth").write_bytes(b"")
    with pytest.raises(ImportError, match=r"pip install 'diffsolve\[metrics\]'"):
        F.features_from(f"inception:{tmp_path}/weights.pth")


class _Detector(torch.nn.Module):  # NVIDIA's detector signature: forward(x, return_features=False)
    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        assert x.dtype == torch.uint8
        return x.flatten(1).float() if return_features else x.float()


@pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")
def test_inception_torchscript_file_found_by_path_env_or_hub(tmp_path, monkeypatch):
    _no_network(monkeypatch)
    weights = tmp_path / "inception-2015-12-05.pt"
    torch.jit.save(torch.jit.script(_Detector()), str(weights))
    x = torch.tensor([-1.0, -0.999, 0.0, 1.0]).reshape(1, 1, 2, 2).repeat(2, 1, 1, 1)
    u8 = torch.tensor([0, 0, 128, 255], dtype=torch.float32).repeat(3)  # floor(127.5 x + 128), grey → RGB
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / weights.name).write_bytes(weights.read_bytes())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("DIFFSOLVE_INCEPTION", raising=False)
    for spec, env in ((f"inception:{weights}", None), ("inception", str(weights)), ("inception", None)):
        if env:
            monkeypatch.setenv("DIFFSOLVE_INCEPTION", env)
        else:
            monkeypatch.delenv("DIFFSOLVE_INCEPTION", raising=False)
        out = F.features_from(spec)(x)
        assert torch.equal(out, u8.expand(2, 12))
    x01 = (x + 1) / 2
    assert torch.equal(F.features_from(f"inception:{weights}", data_range=(0, 1))(x01), u8.expand(2, 12))
    with pytest.raises(ValueError, match="1 or 3"):
        F.features_from(f"inception:{weights}")(torch.zeros(1, 2, 4, 4))


# --- independent implementations: torch-fidelity, clean-fid -----------------------------------
class _StubClass(type):  # any attribute is another stand-in class (torchvision.models.inception.InceptionA)
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _StubClass(name, (), {})


class _StubModule(types.ModuleType):
    def __init__(self, name):
        super().__init__(name)
        self.__path__ = []

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _StubClass(name, (), {})


class _StubTorchvision(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Empty torchvision modules: the metric functions compared here never call torchvision, but the
    packages import it at load time (and a PyPI torchvision needs the matching CUDA torch)."""

    def find_spec(self, fullname, path, target=None):
        if fullname.partition(".")[0] == "torchvision":
            return importlib.util.spec_from_loader(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        return _StubModule(spec.name)

    def exec_module(self, module):
        pass


def _peer(name):
    top = name.partition(".")[0]
    if importlib.util.find_spec(top) is None:
        pytest.skip(f"{top} is not installed (pip install torch-fidelity clean-fid to compare)")
    try:
        return importlib.import_module(name)
    except Exception as e:  # noqa: BLE001 - torchvision missing or built for another torch: retry with stubs
        first_error = e
    for mod in [m for m in sys.modules if m.partition(".")[0] in (top, "torchvision")]:
        del sys.modules[mod]
    finder = _StubTorchvision()
    sys.meta_path.insert(0, finder)
    try:
        return importlib.import_module(name)
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"{name} does not import here: {first_error}; with torchvision stubbed: {e}")
    finally:
        sys.meta_path.remove(finder)
        for mod in [m for m in sys.modules if isinstance(sys.modules[m], _StubModule)]:
            del sys.modules[mod]


def _inception_like(rng, n, d, shift=0.0):
    return np.maximum(rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) / np.sqrt(d) + shift, 0.0)


def test_fid_and_kid_agree_with_torch_fidelity(rng):
    fid_mod, kid_mod = _peer("torch_fidelity.metric_fid"), _peer("torch_fidelity.metric_kid")
    a, b = _inception_like(rng, 700, 48), _inception_like(rng, 500, 48, shift=0.2)
    stats = [F.FeatureStats().update(np.array_split(f, 3)[i]) for f in (a, b) for i in range(3)]
    sa, sb = stats[0].merge(stats[1]).merge(stats[2]), stats[3].merge(stats[4]).merge(stats[5])
    ta, tb = (fid_mod.fid_features_to_statistics(torch.from_numpy(f)) for f in (a, b))
    np.testing.assert_allclose(sa.cov, ta["sigma"], rtol=1e-12, atol=1e-15)
    theirs = fid_mod.fid_statistics_to_metric(ta, tb, verbose=False)[fid_mod.KEY_METRIC_FID]
    assert _rel(sa.frechet_distance(sb), theirs) < 1e-6
    kw = {"kid_subsets": 20, "kid_subset_size": 300, "rng_seed": 5, "verbose": False}
    theirs = kid_mod.kid_features_to_metric(torch.from_numpy(a), torch.from_numpy(b), **kw)
    ours = F.kid(a, b, num_subsets=20, subset_size=300, seed=5)
    assert _rel(ours.mean, theirs[kid_mod.KEY_METRIC_KID_MEAN]) < 1e-6
    assert _rel(ours.std, theirs[kid_mod.KEY_METRIC_KID_STD]) < 1e-6


def test_precision_recall_agrees_with_torch_fidelity(rng):
    prc = _peer("torch_fidelity.metric_prc")
    real, fake = _inception_like(rng, 400, 32), _inception_like(rng, 300, 32, shift=0.1)
    theirs = prc.calculate_precision_recall_full(torch.from_numpy(fake), torch.from_numpy(real), 3, 128)
    assert F.precision_recall(real, fake, k=3) == pytest.approx(theirs, abs=1e-6)  # theirs: float32 means


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # clean-fid calls sqrtm(..., disp=False)
def test_fid_and_kid_agree_with_clean_fid(rng):
    cf = _peer("cleanfid.fid")
    a, b = _inception_like(rng, 600, 40), _inception_like(rng, 600, 40, shift=0.3)
    sa, sb = F.FeatureStats().update(a), F.FeatureStats().update(b)
    assert _rel(sa.frechet_distance(sb), cf.frechet_distance(sa.mean, sa.cov, sb.mean, sb.cov)) < 1e-6
    # one subset of all rows: independent of either side's random draws (MMD² is order-free)
    theirs = cf.kernel_distance(a, b, num_subsets=1, max_subset_size=600)
    assert _rel(F.kid(a, b, num_subsets=1).mean, theirs) < 1e-6


def test_inception_through_torch_fidelity(tmp_path, rng):
    mod = _peer("torch_fidelity.feature_extractor_inceptionv3")
    net_cls = mod.FeatureExtractorInceptionV3
    torch.manual_seed(0)
    patch = pytest.MonkeyPatch()
    with patch.context() as m:  # random weights: construct without loading, then save them
        m.setattr(net_cls, "load_state_dict", lambda self, sd: None)
        m.setattr(mod, "load_state_dict_from_url", lambda *a, **k: {})
        ref = net_cls("inception-v3-compat", ["2048"])
    torch.save(ref.state_dict(), tmp_path / "weights-inception-2015-12-05-6726825d.pth")
    ref = net_cls("inception-v3-compat", ["2048"],
                  feature_extractor_weights_path=str(tmp_path / "weights-inception-2015-12-05-6726825d.pth"))
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    out = F.features_from(f"inception:{tmp_path}/weights-inception-2015-12-05-6726825d.pth")(x)
    assert out.shape == (2, 2048) and torch.allclose(out, ref(_to_uint8_rgb(x, (-1.0, 1.0)))[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n, d", [(40, 12), (30, 200), (300, 25)])
def test_frechet_distance_from_rows_equals_the_covariance_route(n, d):
    """The rows' thin SVD gives the Fréchet distance of their Gaussian fit without a D×D covariance (fewer
    rows than dimensions included); the reference's square root is kept until its statistics change."""
    g = np.random.default_rng(3)
    a = g.standard_normal((n, d)) @ g.standard_normal((d, d)) * 0.3 + 0.5
    ref = F.FeatureStats().update(g.standard_normal((2 * n, d)))
    want = F.FeatureStats().update(a).frechet_distance(ref)
    assert F.frechet_distance_rows(a, ref) == pytest.approx(want, rel=1e-10)
    ref.update(g.standard_normal((n, d)) + 1.0)  # changed statistics: a new square root
    assert F.frechet_distance_rows(a, ref) == pytest.approx(F.FeatureStats().update(a).frechet_distance(ref),
                                                            rel=1e-10)
    with pytest.raises(ValueError, match="dimension"):
        F.frechet_distance_rows(a[:, :3], ref)
