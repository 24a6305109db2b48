"""Every example runs as written (with its --fast flag), in-process to save start-up time."""
import importlib.util
import runpy
from pathlib import Path

import pytest

import diffsolve

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
pytest.importorskip("sklearn")


def run(name, *argv):
    main = runpy.run_path(str(EXAMPLES / name))["main"]
    return main(list(argv))


@pytest.mark.parametrize("script,model", [("train_digits.py", "digits"), ("train_2d.py", "two_moons")])
def test_training_scripts(tmp_path, capsys, script, model):
    run(script, "--fast", "--out", str(tmp_path))
    den = diffsolve.zoo.load(tmp_path / f"{model}.safetensors")  # strict load of what was written
    meta = den.metadata
    assert meta["training"]["steps"] == 60 and "metrics" in meta
    assert "--fast" in meta["training"]["command"]
    assert "saved" in capsys.readouterr().out


def test_training_digits_as_a_flow_model(tmp_path):
    """--schedule flow: the same network trained as a rectified flow (velocity v = ε − x0), saved as digits_flow."""
    run("train_digits.py", "--fast", "--schedule", "flow", "--eval-n", "10", "--out", str(tmp_path))
    den = diffsolve.zoo.load(tmp_path / "digits_flow.safetensors")
    assert isinstance(den.schedule, diffsolve.schedules.FlowSchedule) and den.prediction == "velocity"
    assert den.metadata["name"] == "digits_flow" and "--schedule flow" in den.metadata["training"]["command"]
    assert diffsolve.sample(den, seeds="0-3", nfe=8).x.shape == (4, 1, 8, 8)


def test_training_is_reproducible(tmp_path):
    """Same seed, same weights, bit for bit (the metadata records the weights' SHA-256)."""
    for sub in ("a", "b"):
        run("train_2d.py", "--fast", "--eval-n", "10", "--out", str(tmp_path / sub))
    sha = [diffsolve.zoo.metadata(tmp_path / s / "two_moons.safetensors")["sha256"] for s in ("a", "b")]
    assert sha[0] == sha[1]


def test_plug_in_network(capsys):
    run("plug_in_network.py", "--fast")
    out = capsys.readouterr().out
    assert "2. EDM form" in out and "4. guided" in out


def test_compare_samplers(tmp_path, capsys):
    run("compare_samplers.py", "--fast", "--png", str(tmp_path / "s.png"), "--readme-grid", str(tmp_path / "g.png"))
    assert (tmp_path / "s.png").stat().st_size > 1000 and (tmp_path / "g.png").stat().st_size > 1000
    assert "ddim" in capsys.readouterr().out


@pytest.mark.skipif(importlib.util.find_spec("diffsolve.likelihood") is None, reason="diffsolve.likelihood not written")
def test_digits_bits_per_dim(capsys):
    run("digits_bits_per_dim.py", "--fast")
    assert "held-out (4 images)" in capsys.readouterr().out


def test_diffusers_pipeline(capsys):
    pytest.importorskip("transformers")
    run("diffusers_pipeline.py")
    out = capsys.readouterr().out
    assert "1. unipc" in out and "10 network evaluations" in out
    assert float(out.split("diffusers' DDIM ")[1].split()[0]) < 1e-4
