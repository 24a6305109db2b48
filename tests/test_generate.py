"""``diffsolve sample --outdir`` / :func:`diffsolve.generate.generate`: the files hold ``sample``'s samples
(PNG through the 8-bit map, docs/math.md (26.1); npz shards per block, (26.2)), ``open_dataset`` reads
them back, a killed run resumed writes every seed once and ends with the files of an uninterrupted run,
2 torchrun processes write the same bytes as 1, and bad input is one clear error."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import diffsolve as ds
import diffsolve.sample_files as sample_files
from diffsolve.cli import main
from diffsolve.generate import generate, png_path, random_labels, shard_name
from diffsolve.images import load_image, open_dataset, to_uint8

ROOT = Path(__file__).resolve().parents[1]
KW = {"nfe": 3, "solver": "dpmpp_2m"}


@pytest.fixture(scope="module")
def digits():
    return ds.zoo.load("digits")


def _blocks(seeds, size):
    return [seeds[i:i + size] for i in range(0, len(seeds), size)]


def _files(folder: Path) -> dict:
    """Every visible file under ``folder`` (relative path -> bytes)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


class TinyCond(torch.nn.Module):
    """A tiny class-conditional ε-network on (2,) samples (random weights), null class = num_classes."""

    num_classes = 3
    null_class = 3

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(4, 2)
        self.lin = torch.nn.Linear(3, 2)

    def forward(self, x, label, cond):
        h = torch.cat([x, label.to(x.dtype).reshape(-1, 1).expand(x.shape[0], 1)], dim=1)
        return self.lin(h) + self.emb(torch.as_tensor(cond, device=x.device).long())


def tiny_cond():
    return ds.Denoiser(TinyCond(), ds.VPSchedule(), prediction="eps", shape=(2,))


def test_png_files_are_the_8bit_images_of_sample(digits, tmp_path):
    seeds = list(range(995, 1005))  # across two seed folders (000000/, 001000/)
    res = generate(digits, seeds, tmp_path, format="png", batch_size=4, **KW)
    assert (res.total, res.written, res.skipped, res.nfe) == (10, 10, 0, 3)
    for block in _blocks(seeds, 4):  # the same batches as the run: the same values, bit for bit
        ref = to_uint8(ds.sample(digits, seeds=block, **KW).x)
        for seed, im in zip(block, ref):
            assert torch.equal(load_image(png_path(tmp_path, seed)), im), seed
    assert png_path(tmp_path, 1003) == tmp_path / "001000" / "001003.png"
    data = open_dataset(tmp_path)
    assert len(data) == 10 and data.is_image and data.shape == (1, 8, 8)
    x = ds.sample(digits, seeds=seeds, **KW).x  # one batch of 10: the float32 network rounds otherwise
    assert (data[0:10].int() - to_uint8(x).int()).abs().max() <= 1
    assert json.loads((tmp_path / sample_files.SETTINGS).read_text())["sample"] == {"dtype": "float32", **KW}


def test_a_data_range_changes_the_8bit_map(digits, tmp_path):
    generate(digits, "0-3", tmp_path, batch_size=4, data_range=(-2, 2), **KW)
    x = ds.sample(digits, seeds="0-3", **KW).x
    assert torch.equal(open_dataset(tmp_path)[0:4], to_uint8(x, (-2, 2)))
    assert not torch.equal(to_uint8(x, (-2, 2)), to_uint8(x))


def test_npz_shards_hold_the_samples_by_block(digits, tmp_path):
    seeds = [7, 3, 11, 5, 2, 9, 30]
    generate(digits, seeds, tmp_path, format="npz", batch_size=3, **KW)
    names = sorted(p.name for p in tmp_path.glob("*.npz"))
    assert names == sorted([shard_name(7, 11), shard_name(5, 9), shard_name(30, 30)])
    for block in _blocks(seeds, 3):
        with np.load(tmp_path / shard_name(block[0], block[-1])) as z:
            assert sorted(z.keys()) == ["seeds", "x"] and z["seeds"].dtype == np.int64 and z["x"].dtype == np.float32
            assert z["seeds"].tolist() == block
            assert np.array_equal(z["x"], ds.sample(digits, seeds=block, **KW).x.float().numpy())
    data = open_dataset(tmp_path)
    assert data.seeds == sorted(seeds) and not data.is_image and data.shape == (1, 8, 8)
    x = ds.sample(digits, seeds=sorted(seeds), **KW).x.float()
    torch.testing.assert_close(data[0:7], x, rtol=0, atol=1e-3)  # another batch: the float32 network's rounding


def test_labels_and_guidance_on_a_conditional_network(tmp_path):
    den = tiny_cond()
    res = generate(den, "0-9", tmp_path, format="npz", batch_size=4, class_label="random", guidance=2.5,
                   solver="ddim", nfe=4)
    assert res.written == 10 and res.nfe == 4
    labels = random_labels(range(10), 3)
    assert set(labels.tolist()) == {0, 1, 2}  # drawn from each seed, the same whatever the batch
    assert np.array_equal(random_labels([7, 3], 3), labels[[7, 3]])
    for block in _blocks(list(range(10)), 4):
        with np.load(tmp_path / shard_name(block[0], block[-1])) as z:
            assert z["labels"].dtype == np.int64 and z["labels"].tolist() == labels[block].tolist()
            guided = ds.CFGDenoiser(den, 2.5, torch.from_numpy(labels[block]))
            ref = ds.sample(guided, seeds=block, solver="ddim", nfe=4).x.detach().float().numpy()
            assert np.array_equal(z["x"], ref)
    # one class for every sample; w = 1 (the default): the conditional model alone
    generate(den, "0-3", tmp_path / "c1", format="npz", class_label=1, solver="ddim", nfe=4)
    with np.load(tmp_path / "c1" / shard_name(0, 3)) as z:
        assert z["labels"].tolist() == [1] * 4
        cond = ds.Denoiser(lambda x, t: den.net(x, t, torch.ones(x.shape[0])), ds.VPSchedule(), prediction="eps",
                            shape=(2,), net_dtype=torch.float32)
        ref = ds.sample(cond, seeds="0-3", solver="ddim", nfe=4).x.detach().float().numpy()
        assert np.allclose(z["x"], ref, atol=1e-6)


def test_png_labels_go_to_dataset_json(digits, tmp_path):
    assert main(["sample", "--model", "digits", "--nfe", "3", "--seeds", "0-5", "--outdir", str(tmp_path),
                 "--class", "random", "--guidance", "2", "--batch-size", "4", "-q"]) == 0
    entries = json.loads((tmp_path / "dataset.json").read_text())["labels"]
    assert entries == [[f"000000/{s:06d}.png", int(k)] for s, k in zip(range(6), random_labels(range(6), 10))]
    assert len(open_dataset(tmp_path)) == 6  # the JSON file is not part of the images


def test_an_interrupted_png_run_leaves_its_labels(digits, tmp_path, monkeypatch):
    # the labels depend on the seeds alone: they are written before the first image, so the images a
    # killed run leaves behind are labelled (EDM's reader looks up every png it finds in dataset.json)
    real, calls = sample_files.save_png, []

    def dies_on_seed_4(path, *a):  # the fifth image
        calls.append(path)
        if len(calls) == 5:
            raise Killed
        return real(path, *a)

    monkeypatch.setattr(sample_files, "save_png", dies_on_seed_4)
    assert main(["sample", "--model", "digits", "--nfe", "3", "--seeds", "0-9", "--outdir", str(tmp_path),
                 "--class", "random", "--guidance", "2", "--batch-size", "4", "-q"]) == 130
    labels = dict(json.loads((tmp_path / "dataset.json").read_text())["labels"])
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png"))
    assert len(written) == 4 and all(w in labels for w in written)
    assert labels == {f"000000/{s:06d}.png": int(k) for s, k in zip(range(10), random_labels(range(10), 10))}


class Killed(KeyboardInterrupt):
    """Raised by the patched writer: a run stopped in the middle of a file."""


@pytest.mark.parametrize("fmt, writer", [("npz", "_save_npz"), ("png", "save_png")])
def test_a_killed_run_resumed_writes_every_seed_once(digits, tmp_path, monkeypatch, fmt, writer):
    argv = ["sample", "--model", "digits", "--nfe", "3", "--seeds", "0-21", "--batch-size", "4", "--format", fmt, "-q"]
    assert main(argv + ["--outdir", str(tmp_path / "whole")]) == 0
    real, calls = getattr(sample_files, writer), []

    def dies_on_call_4(path, *a):
        calls.append(path)
        if len(calls) == 4:  # npz: the 4th block's shard; png: seed 3, the last of block 0
            Path(path).write_bytes(b"partial")  # a file cut short, under its temporary name
            raise Killed
        return real(path, *a)

    monkeypatch.setattr(sample_files, writer, dies_on_call_4)
    out = tmp_path / "resumed"
    assert main(argv + ["--outdir", str(out)]) == 130  # as Ctrl-C: "rerun with --resume"
    assert [p.name.startswith(".") for p in calls] == [True] * 4  # written under a hidden name, then renamed
    monkeypatch.setattr(sample_files, writer, real)
    partial = open_dataset(out)
    assert len(partial) == (12 if fmt == "npz" else 3)  # only whole files are visible
    code = main(argv + ["--outdir", str(out)])
    assert code == 2  # a folder with samples needs --resume
    calls.clear()
    monkeypatch.setattr(sample_files, writer, lambda path, *a: calls.append(path) or real(path, *a))
    assert main(argv + ["--outdir", str(out), "--resume"]) == 0
    assert len(calls) == (3 if fmt == "npz" else 19)  # only what was missing was written
    data = open_dataset(out)
    assert len(data) == 22 and (fmt == "png" or data.seeds == list(range(22)))
    assert _files(out) == _files(tmp_path / "whole")  # byte for byte an uninterrupted run's files
    assert main(argv + ["--outdir", str(out), "--resume"]) == 0  # nothing left: nothing written
    assert len(calls) == (3 if fmt == "npz" else 19)


def test_resume_extends_a_run_and_refuses_other_settings(digits, tmp_path, capsys):
    argv = ["sample", "--model", "digits", "--nfe", "3", "--format", "npz", "--outdir", str(tmp_path), "-q"]
    assert main(argv + ["--seeds", "0-9"]) == 0
    assert main(argv + ["--seeds", "0-19", "--resume"]) == 0
    assert open_dataset(tmp_path).seeds == list(range(20))
    capsys.readouterr()
    assert main(argv + ["--seeds", "0-29", "--resume", "--nfe", "4"]) == 2
    err = capsys.readouterr().err
    assert "was written with other settings" in err and '"nfe": 3} there' in err and '"nfe": 4} now' in err
    assert main(argv + ["--seeds", "0-29", "--resume", "--format", "png"]) == 2
    assert "format: \"npz\" there, \"png\" now" in capsys.readouterr().err


def test_two_processes_write_the_bytes_of_one(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    args = ["sample", "--model", "digits", "--nfe", "3", "--seeds", "0-21", "--batch-size", "4", "--format", "npz",
            "--class", "random", "--guidance", "1.5"]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "diffsolve", *args, "--outdir", str(tmp_path / "two")],
                         check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "wrote 22 samples of 22" in two.stderr and "by 2 processes" in two.stderr
    assert two.stderr.count("wrote 22 samples") == 1  # rank 0 reports, for both
    one = subprocess.run([sys.executable, "-m", "diffsolve", *args, "--outdir", str(tmp_path / "one"), "-q"],
                         check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert one.returncode == 0 and one.stderr == "", one.stderr[-3000:]
    files = _files(tmp_path / "one")
    assert len(files) == 7 and files == _files(tmp_path / "two")  # 6 shards + the settings


def _error(argv, capsys):
    """(exit status, stderr) of the command line; argparse's own errors exit through SystemExit."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("extra, needle", [
    (["--problem", "mix64"], r"shape \(64,\): use --format npz"),
    (["--problem", "mix64", "--format", "npz", "--class", "1"], r"defines no null_class: give it \(uncond=K"),
    (["--problem", "mix64", "--format", "npz", "--guidance", "2"], r"guidance needs class labels"),
    (["--model", "digits", "--class", "10"], r"class 10 is not a class of this model; valid classes: 0\.\.9"),
    (["--model", "digits", "--class", "random", "--num-classes", "11"], r"the network has 10 classes"),
    (["--model", "digits", "--num-classes", "3"], r"num_classes is for class_label='random'"),
    (["--model", "digits", "--class", "three"], r"expected a class index N >= 0 or 'random'"),
    (["--model", "digits", "--data-range=1,0"], r"expected LO,HI with finite LO < HI"),
    (["--model", "digits", "--data-range=-1,1,2"], r"expected LO,HI"),
    (["--model", "digits", "--data-range=0,inf"], r"expected LO,HI"),
    (["--model", "digits", "--batch-size", "0"], r"expected a positive integer"),
    (["--model", "digits", "--format", "jpg"], r"invalid choice: 'jpg'"),
    (["--model", "digits", "--solver", "nope"], r"unknown solver 'nope'"),
    (["--model", "digits", "--solver", "heun", "--nfe", "1"], r"NFE 1 is too small"),
    # the loop's own checks of the run, made before the folder (it was left with its settings and a lock)
    (["--model", "digits", "--solver", "unipc", "--eta", "1"], r"integrates the probability-flow ODE only"),
])
def test_bad_input_is_one_clear_error(tmp_path, capsys, extra, needle):
    out = tmp_path / "out" / "run"
    code, err = _error(["sample", "--nfe", "3", *extra, "--outdir", str(out), "-q"], capsys)
    assert code == 2 and re.search(needle, err), err
    assert "Traceback" not in err and err.rstrip().splitlines()[-1].count("error: ") == 1
    assert not (tmp_path / "out").exists()  # a refused run leaves no folder behind


def test_the_output_options_go_together(tmp_path, capsys):
    x, d = str(tmp_path / "x.pt"), str(tmp_path / "d")
    code, err = _error(["sample", "--problem", "ring2d", "--out", x, "--outdir", d], capsys)
    assert code == 2 and "not allowed with argument" in err
    code, err = _error(["sample", "--problem", "ring2d"], capsys)
    assert code == 2 and "one of the arguments --out --outdir is required" in err
    code, err = _error(["sample", "--problem", "ring2d", "--out", x, "--format", "npz", "--resume"], capsys)
    assert code == 2 and "--format, --resume apply to --outdir DIR" in err
    (tmp_path / "file").write_text("")
    code, err = _error(["sample", "--problem", "ring2d", "--outdir", str(tmp_path / "file"), "-q"], capsys)
    assert code == 2 and "is a file" in err


def test_a_folder_with_samples_needs_resume(digits, tmp_path, capsys):
    argv = ["sample", "--model", "digits", "--nfe", "3", "--seeds", "0-3", "--outdir", str(tmp_path), "-q"]
    assert main(argv) == 0
    code, err = _error(argv, capsys)
    assert code == 2 and "already holds samples; finish that run with --resume" in err
    (tmp_path / sample_files.SETTINGS).unlink()
    code, err = _error(argv + ["--resume"], capsys)
    assert code == 2 and "not a run of diffsolve sample --outdir" in err


def test_the_library_checks_its_arguments(digits, tmp_path):
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        generate(digits, "0-3", tmp_path, batch_size=0)
    with pytest.raises(ValueError, match="unknown format 'jpg'"):
        generate(digits, "0-3", tmp_path, format="jpg")
    with pytest.raises(TypeError, match="draws x from the seeds.*drop x, generator"):
        generate(digits, "0-3", tmp_path, x=torch.zeros(4, 1, 8, 8), generator=torch.Generator())
    with pytest.raises(ValueError, match="seed 1 is repeated"):
        generate(digits, [1, 1], tmp_path)
    with pytest.raises(ValueError, match="a data range needs finite lo < hi"):
        generate(digits, "0-3", tmp_path, data_range=(1, 1))
    # sample()'s own options are checked before the folder is made, not at the first block
    with pytest.raises(ValueError, match="NFE 1 is too small"):
        generate(digits, "0-3", tmp_path / "run", solver="heun", nfe=1)
    with pytest.raises(ValueError, match="eta"):
        generate(digits, "0-3", tmp_path / "run", eta=-1.0)
    with pytest.raises(TypeError, match="already guided"):
        generate(ds.CFGDenoiser(digits, 2.0, cond=3), "0-3", tmp_path / "run", class_label=3, guidance=2.0)
    with pytest.raises(TypeError, match="unknown option nfes of sample"):
        generate(digits, "0-3", tmp_path / "run", nfes=4)
    with pytest.raises(TypeError, match="dtype must be torch.float64 or torch.float32"):
        generate(digits, "0-3", tmp_path / "run", dtype=torch.int32)
    assert not any(tmp_path.iterdir())


def test_resume_checks_the_weights_and_a_tuned_grids_contents(tmp_path):
    """A name or a path does not pin down what ran: a resumed folder is refused when the network's weights
    or the tuned grid file's contents changed (it mixed samples of two runs)."""
    import diffsolve as ds
    from diffsolve.generate import generate

    generate(ds.zoo.load("digits"), "0-1", tmp_path / "w", nfe=4)
    changed = ds.zoo.load("digits")
    with torch.no_grad():
        next(changed.net.parameters()).add_(1e-3)
    with pytest.raises(ValueError, match="weights"):
        generate(changed, "0-3", tmp_path / "w", nfe=4, resume=True)
    generate(ds.zoo.load("digits"), "0-3", tmp_path / "w", nfe=4, resume=True)  # the same weights: resumed
    grid = ds.tune_steps(ds.zoo.load("digits"), solver="ddim", nfe=4, pilot=4, screen=0, fresh=0, max_evals=4)
    grid.save(tmp_path / "g.json")
    generate(ds.zoo.load("digits"), "0-1", tmp_path / "t", grid=str(tmp_path / "g.json"))
    grid.solver = "euler"  # the same file, the same times and budget: another solver on them
    grid.save(tmp_path / "g.json")
    with pytest.raises(ValueError, match=r"other settings \(sample: .*\"runs\""):
        generate(ds.zoo.load("digits"), "0-3", tmp_path / "t", grid=str(tmp_path / "g.json"), resume=True)


def test_resume_checks_an_already_guided_denoisers_scale_and_condition(digits, tmp_path):
    """A CFGDenoiser with one condition for every row is accepted; its scale and condition were not recorded,
    so a resume with another scale and class was accepted and mixed two models' samples in one folder."""
    out = tmp_path / "g"
    generate(ds.CFGDenoiser(digits, 2.0, 3), "0-3", out, format="npz", batch_size=4, **KW)
    generate(ds.CFGDenoiser(digits, 2.0, 3), "0-7", out, format="npz", batch_size=4, resume=True, **KW)
    for other in (ds.CFGDenoiser(digits, 7.0, 3), ds.CFGDenoiser(digits, 2.0, 5)):
        with pytest.raises(ValueError, match="other settings .*guided"):
            generate(other, "0-11", out, format="npz", batch_size=4, resume=True, **KW)


def test_generate_refuses_before_any_folder(tmp_path):
    """What cannot run is refused before the folder is made: a CFGDenoiser with a condition per row (it cannot
    follow the seeds), Euler–Maruyama unstable on the grid, class labels for an unconditional zoo model;
    guidance=0 (the unconditional model) is warned of, as its recorded labels do not condition the samples."""
    import diffsolve as ds
    from diffsolve.generate import generate

    m = ds.zoo.load("digits")
    per_row = ds.CFGDenoiser(m, 2.0, torch.arange(4), torch.full((4,), 10))
    cases = [(dict(denoiser=per_row, nfe=4), "a condition per row"),
             (dict(denoiser=m, solver="euler", eta=3.0, nfe=6), "unstable"),
             (dict(denoiser=ds.zoo.load("two_moons"), class_label=1, format="npz", nfe=4), "unconditional")]
    for i, (kw, match) in enumerate(cases):
        with pytest.raises((TypeError, ValueError), match=match):
            generate(kw.pop("denoiser"), "0-3", tmp_path / str(i), **kw)
        assert not (tmp_path / str(i)).exists()
    with pytest.warns(UserWarning, match="guidance=0 is the unconditional model"):
        generate(m, "0-1", tmp_path / "w0", nfe=4, class_label=3, guidance=0)


def test_a_missing_pillow_is_said_before_the_folder(digits, tmp_path, monkeypatch):
    """PNG output needs Pillow: without it the folder, its settings and a seed folder were made before the
    error. Now the error comes first (and Pillow is a dependency of the package)."""
    import diffsolve.images as images

    def missing():
        raise ImportError("reading and writing images needs Pillow (simulated)")

    monkeypatch.setattr(images, "_pil", missing)
    with pytest.raises(ImportError, match="needs Pillow"):
        generate(digits, "0-3", tmp_path / "out", nfe=4)
    assert not (tmp_path / "out").exists()
