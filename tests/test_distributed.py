"""torchrun with two CPU processes (gloo) gives the samples and metrics of one process."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffsolve.bench import read_rows
from diffsolve.distributed import DistContext, shard_bounds

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--problems", "ring2d,mix64", "--solvers", "ddim,euler", "--eta", "0,1", "--nfe", "5",
        "--n-samples", "11", "--reference-tol", "1e-6", "--projections", "64", "--no-plot", "--save-samples"]


def test_shard_bounds_cover_everything_once():
    for n in (2, 7, 11, 64):
        for w in (1, 2, 3, 5):
            if n < w:
                continue
            b = shard_bounds(n, w)
            assert b[0][0] == 0 and b[-1][1] == n and all(b[i][1] == b[i + 1][0] for i in range(w - 1))
            assert max(e - s for s, e in b) - min(e - s for s, e in b) <= 1
    with pytest.raises(ValueError, match="at least one seed per process"):
        DistContext(world_size=4, rank=0).shard([1, 2, 3])


def test_two_processes_equal_one(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "diffsolve", "bench", *ARGS, "--out", str(two), "--quiet"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from diffsolve.cli import main

    assert main(["bench", *ARGS, "--out", str(one), "--quiet"]) == 0
    rows1, rows2 = read_rows(one / "results.jsonl"), read_rows(two / "results.jsonl")
    assert [r["key"] for r in rows1] == [r["key"] for r in rows2] and len(rows1) == 8  # 2 problems × (ddim, euler) × eta 0, 1
    for a, b in zip(rows1, rows2):
        assert a["world_size"] == 1 and b["world_size"] == 2
        assert a["nfe"] == b["nfe"] and a["n_samples"] == b["n_samples"] == 11
        assert set(a["metrics"]) == set(b["metrics"])
        for k in a["metrics"]:
            assert b["metrics"][k] == pytest.approx(a["metrics"][k], rel=1e-9, abs=1e-12), (a["key"], k)
            if a["floors"][k] is not None:
                assert b["floors"][k] == pytest.approx(a["floors"][k], rel=1e-12)
        name = a["key"].replace("|", "_") + ".pt"
        x1, x2 = torch.load(one / "samples" / name), torch.load(two / "samples" / name)
        torch.testing.assert_close(x2, x1, rtol=0, atol=1e-12)  # stochastic rows too: per-seed noise


def test_a_rank_outside_the_world_is_refused(monkeypatch):
    """RANK >= WORLD_SIZE waited for peers that never come (until torch's 30-minute timeout): refused at once."""
    from diffsolve.distributed import init

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(ValueError, match="RANK=5 is outside 0..1 for WORLD_SIZE=2"):
        init("cpu")
    for world in ("0", "-3"):  # ran as one process, silently
        monkeypatch.setenv("WORLD_SIZE", world)
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(ValueError, match=f"WORLD_SIZE={world}: the number of processes is at least 1"):
            init("cpu")
