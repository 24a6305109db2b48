"""Faults a benchmark run survives, each counted: no row lost, none duplicated.

1. a network that raises (or returns NaN) on one row: the row is a failed record with the reason,
   the other rows go on, the exit status is 3, ``--resume`` runs that row again;
2. a full disk while rows are written: one ``error: disk full while writing …`` line, every row
   before it intact, ``--resume`` after space is freed finishes the run;
3. one of two torchrun processes killed mid-run (either rank), then ``--resume`` with two processes;
   and a network that raises on one rank only: both processes give the row up together;
4. a results file whose last line is torn (a kill while writing it).
"""
import errno
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from diffsolve.bench import FAILED_FIELDS, ROW_FIELDS, BenchConfig, is_failed, read_rows, run_bench
from diffsolve.cli import main

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--n-samples", "16", "--reference-tol", "1e-6", "--projections", "32"]

# a user model (package.module:factory) whose network raises, or returns NaN, on one call: which
# call and on which torchrun rank comes from module globals (in-process) or the environment
FAULTY_NET = '''
import os

import torch

from diffsolve.analytic import GaussianMixture

CALLS = 0
FAIL_AT = int(os.environ["FAULTYNET_FAIL_AT"]) if os.environ.get("FAULTYNET_FAIL_AT") else None
FAIL_RANK = os.environ.get("FAULTYNET_RANK", "0")
HOW = "raise"

if os.environ.get("FAULTYNET_COUNT_DIR"):  # each process records how many calls its network had
    import atexit

    def _record():
        path = os.path.join(os.environ["FAULTYNET_COUNT_DIR"], "calls-rank" + os.environ.get("RANK", "0"))
        with open(path, "w") as f:
            f.write(str(CALLS))

    atexit.register(_record)


def factory():
    den = GaussianMixture.ring().denoiser("ddpm", "eps")
    inner = den.net

    def net(x, label):
        global CALLS
        CALLS += 1
        if CALLS == FAIL_AT and os.environ.get("RANK", "0") == FAIL_RANK:
            if HOW == "nan":
                return torch.full_like(x, float("nan"))
            raise RuntimeError(f"simulated network fault on call {CALLS}")
        return inner(x, label)

    den.net = net
    return den
'''


def _counts(rows, planned):
    """(lost, duplicated) rows of ``rows`` against the planned keys."""
    keys = [r["key"] for r in rows]
    return len(set(planned) - set(keys)), len(keys) - len(set(keys))


def _keys(problem, solver_nfes, schedule="ddpm"):
    return [f"{problem}|{schedule}|{s}|eta=0|nfe={n}" for s, nfes in solver_nfes for n in nfes]


@pytest.fixture
def faultynet(tmp_path, monkeypatch):
    (tmp_path / "faultynet.py").write_text(FAULTY_NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "faultynet", raising=False)
    import faultynet

    yield faultynet
    sys.modules.pop("faultynet", None)


# --- 1. a network that raises on one row ---------------------------------------------------------------
@pytest.mark.parametrize("how,reason", [("raise", "RuntimeError: simulated network fault on call"),
                                        ("nan", "NonFiniteError: the network returned NaN or Inf")])
def test_a_row_whose_network_fails_is_recorded_and_retried_on_resume(tmp_path, capsys, faultynet, how, reason):
    args = ["bench", "--problems", "faultynet:factory", "--solvers", "ddim,euler", "--nfe", "4,6,8", *SMALL, "--quiet"]
    planned = _keys("faultynet:factory", [("ddim", (4, 6, 8)), ("euler", (4, 6, 8))])
    assert main(args + ["--no-plot", "--out", str(tmp_path / "clean")]) == 0
    clean = read_rows(tmp_path / "clean" / "results.jsonl")
    # the calls, in order: warm-up ddim (4), ddim@4 (4), the reference solve, ddim@6, ddim@8, warm-up euler (4),
    # euler@4, euler@6, euler@8: the 3rd call of euler@6's sampling is 8 + 6 - 3 calls before the end
    faultynet.FAIL_AT, faultynet.CALLS, faultynet.HOW = faultynet.CALLS - 8 - 6 + 3, 0, how
    capsys.readouterr()
    out = tmp_path / "run"
    res = out / "results.jsonl"
    assert main(args + ["--out", str(out)]) == 3  # finished, some rows failed
    stdout, stderr = capsys.readouterr()
    bad = "faultynet:factory|ddpm|euler|eta=0|nfe=6"
    assert re.search(rf"^euler\s+0\s+6\s+5\s+failed: {re.escape(reason)}", stdout, re.M), stdout
    assert "6 rows in" in stdout and "(1 failed: rerun with --resume to run it again)" in stdout
    assert f"error: 1 of 6 rows failed ({bad}: {reason}" in stderr
    records = read_rows(res, failed=True)
    assert [r["key"] for r in records] == planned  # the other rows went on, after the failed one too
    (failed,) = [r for r in records if is_failed(r)]
    assert failed["key"] == bad and tuple(failed) == FAILED_FIELDS and failed["error"].startswith(reason)
    assert "metrics" not in failed and failed["nfe_budget"] == 6 and failed["steps"] == 5
    finished = read_rows(res)  # what readers of finished rows see: no failed record
    assert len(finished) == 5 and all(tuple(r) == ROW_FIELDS for r in finished)
    if importlib.util.find_spec("matplotlib"):  # the plot is drawn from the finished rows
        assert (out / "quality_vs_nfe.png").stat().st_size > 1000

    faultynet.FAIL_AT = None  # the fault is gone: resume runs the failed row again, and only it
    assert main(args + ["--out", str(out), "--resume"]) == 0
    stdout, stderr = capsys.readouterr()
    assert "running 1 failed row again" not in stderr  # --quiet
    records = read_rows(res, failed=True)
    assert _counts(records, planned) == (0, 0) and len(records) == 6
    assert not [r for r in records if is_failed(r)]
    assert [r["key"] for r in records] == [k for k in planned if k != bad] + [bad]
    by_key = {r["key"]: r for r in clean}
    for r in records:  # the same rows as the run that never failed
        assert r["metrics"] == pytest.approx(by_key[r["key"]]["metrics"], rel=1e-12)
    # resuming again runs nothing
    before = res.read_bytes()
    assert main(args + ["--out", str(out), "--resume"]) == 0
    assert res.read_bytes() == before


def test_failed_rows_in_the_api(tmp_path, capsys, faultynet):
    """run_bench returns failed records beside the rows; the note says a resumed run retries them."""
    cfg = dict(problems=["faultynet:factory"], solvers=["ddim"], nfe=[4, 6], n_samples=8, out=str(tmp_path),
               plot=True, quiet=True, print_table=False, reference_tol=1e-6, n_projections=16, warmup=False)
    faultynet.FAIL_AT = 1  # the first call of the first row
    rows = run_bench(BenchConfig(**cfg))
    assert [r.get("status") for r in rows] == ["failed", None]
    faultynet.FAIL_AT = None
    capsys.readouterr()
    rows = run_bench(BenchConfig(**{**cfg, "resume": True, "quiet": False}))
    assert [r["key"] for r in rows] == ["faultynet:factory|ddpm|ddim|eta=0|nfe=4"]
    assert "note: running 1 failed row again" in capsys.readouterr().err
    assert _counts(read_rows(tmp_path / "results.jsonl", failed=True), _keys("faultynet:factory",
                                                                            [("ddim", (4, 6))])) == (0, 0)


# --- 2. a full disk ------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["write", "fsync"])
def test_disk_full_while_writing_rows(tmp_path, capsys, monkeypatch, where):
    args = ["bench", "--problems", "ring2d", "--solvers", "ddim,euler", "--nfe", "4,6,8", *SMALL, "--no-plot",
            "--quiet"]
    planned = _keys("ring2d", [("ddim", (4, 6, 8)), ("euler", (4, 6, 8))])
    assert main(args + ["--out", str(tmp_path / "clean")]) == 0
    clean = read_rows(tmp_path / "clean" / "results.jsonl")
    out = tmp_path / "run"
    res = out / "results.jsonl"
    real_write, real_fsync = os.write, os.fsync
    rows_ok = 3  # the disk fills up while the 4th row is written

    def is_results(fd):
        try:
            return res.exists() and os.path.samestat(os.fstat(fd), res.stat())
        except OSError:
            return False

    def full():
        return len(res.read_bytes().splitlines()) >= rows_ok and res.read_bytes().endswith(b"\n")

    def write(fd, data):
        if where == "write" and is_results(fd) and full():
            real_write(fd, bytes(data)[: len(data) // 2])  # part of the row, then no space
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    def fsync(fd):
        if where == "fsync" and is_results(fd) and len(res.read_bytes().splitlines()) > rows_ok:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # written, but not durable
        return real_fsync(fd)

    capsys.readouterr()
    with monkeypatch.context() as m:
        m.setattr(os, "write", write)
        m.setattr(os, "fsync", fsync)
        code = main(args + ["--out", str(out)])
    stdout, stderr = capsys.readouterr()
    assert code == 1
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: disk full while writing {res}: No space left on device"), \
        stderr
    assert "--resume" in lines[0]
    kept = read_rows(res)
    assert [r["key"] for r in kept] == planned[:rows_ok]  # every row before it intact and readable
    assert res.read_bytes().endswith(b"\n") and len(res.read_bytes().splitlines()) == rows_ok  # no torn line
    assert stdout.count("\nddim ") == rows_ok

    assert main(args + ["--out", str(out), "--resume"]) == 0  # space freed
    rows = read_rows(res, failed=True)
    assert _counts(rows, planned) == (0, 0) and [r["key"] for r in rows] == planned
    for a, b in zip(rows, clean):
        assert a["metrics"] == pytest.approx(b["metrics"], rel=1e-12)


@pytest.mark.parametrize("short_write", [False, True])
def test_disk_full_while_saving_samples(short_write, tmp_path, capsys, monkeypatch):
    """torch.save of a row's samples runs out of space: same one-line error, nothing half-recorded. torch.save
    may say so as a short write (a RuntimeError) without the code: then the free space tells (it printed the
    RuntimeError, status 1)."""
    import shutil
    from collections import namedtuple

    import torch

    args = ["bench", "--problems", "ring2d", "--solvers", "ddim", "--nfe", "4,6", *SMALL, "--no-plot", "--quiet",
            "--save-samples", "--out", str(tmp_path)]
    real_save, saved = torch.save, []

    def save(obj, f, *a, **kw):
        if saved:
            if short_write:
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        saved.append(f)
        return real_save(obj, f, *a, **kw)

    with monkeypatch.context() as m:
        m.setattr(torch, "save", save)
        if short_write:
            m.setattr(shutil, "disk_usage", lambda p: namedtuple("usage", "total used free")(10, 10, 0))
        assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: disk full while writing {tmp_path / 'samples'}") and err.count("\n") == 1
    assert len(read_rows(tmp_path / "results.jsonl")) == 1
    assert main(args + ["--resume"]) == 0
    rows = read_rows(tmp_path / "results.jsonl", failed=True)
    assert _counts(rows, _keys("ring2d", [("ddim", (4, 6))])) == (0, 0) and len(rows) == 2
    assert len(list((tmp_path / "samples").glob("*.pt"))) == 2


# --- 3. torchrun: one of two processes killed ------------------------------------------------------------
def _env(**extra):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _workers(launcher_pid: int) -> dict[int, int]:
    """{rank: pid} of torchrun's worker processes (its children with RANK in their environment)."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int(re.search(r"^PPid:\s+(\d+)", (d / "status").read_text(), re.M).group(1))
            env = dict(v.split("=", 1) for v in (d / "environ").read_bytes().decode(errors="replace").split("\0")
                       if "=" in v)
        except (OSError, AttributeError):
            continue
        if ppid == launcher_pid and "RANK" in env:
            out[int(env["RANK"])] = int(d.name)
    return out


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "diffsolve",
            "bench"]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="finds torchrun's workers through /proc")
@pytest.mark.parametrize("victim", [1, 0])
def test_one_of_two_torchrun_processes_killed_then_resumed(tmp_path, victim):
    nfes = range(4, 41)
    planned = _keys("ring2d", [("ddim", nfes)])
    args = TORCHRUN + ["--problems", "ring2d", "--solvers", "ddim", "--nfe", ",".join(map(str, nfes)), *SMALL,
                       "--no-plot", "--quiet", "--out", str(tmp_path)]
    res = tmp_path / "results.jsonl"
    launcher = subprocess.Popen(args, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True)
    try:
        deadline = time.time() + 90
        while time.time() < deadline and launcher.poll() is None:
            if res.exists() and res.read_bytes().count(b"\n") >= 2:
                break
            time.sleep(0.05)
        workers = _workers(launcher.pid)
        assert sorted(workers) == [0, 1], (workers, launcher.poll())
        os.kill(workers[victim], signal.SIGKILL)
        launcher.wait(timeout=120)  # torchrun stops the other process and fails
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
    assert launcher.returncode != 0
    before = read_rows(res)
    lost, dup = _counts(before, planned[: len(before)])
    assert 2 <= len(before) < len(planned) and (lost, dup) == (0, 0)
    assert [r["key"] for r in before] == planned[: len(before)]
    done = subprocess.run(args + ["--resume"], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = read_rows(res, failed=True)
    assert _counts(rows, planned) == (0, 0) and [r["key"] for r in rows] == planned  # every row exactly once
    assert all(r["world_size"] == 2 for r in rows)


def test_a_network_failing_on_one_torchrun_rank_fails_the_row_on_both(tmp_path):
    """Rank 1's network raises during row 2: both processes give the row up (no hang), the next row runs."""
    (tmp_path / "faultynet.py").write_text(FAULTY_NET)
    planned = _keys("faultynet:factory", [("ddim", (4, 6, 8))])
    args = TORCHRUN + ["--problems", "faultynet:factory", "--solvers", "ddim", "--nfe", "4,6,8", *SMALL, "--no-plot",
                       "--quiet", "--out", str(tmp_path / "clean")]
    env = _env(PYTHONPATH=f"{ROOT}{os.pathsep}{tmp_path}")
    clean = subprocess.run(args, cwd=ROOT, env={**env, "FAULTYNET_COUNT_DIR": str(tmp_path)}, capture_output=True,
                           text=True, timeout=180)
    assert clean.returncode == 0, clean.stderr[-3000:]
    # rank 1's calls: warm-up (4), ddim@4 (4), the reference solve, ddim@6 (6), ddim@8 (8): fail on ddim@6's 2nd
    fail_at = int((tmp_path / "calls-rank1").read_text()) - 8 - 6 + 2
    out = tmp_path / "run"
    args[args.index("--out") + 1] = str(out)
    run = subprocess.run(args, cwd=ROOT, env={**env, "FAULTYNET_FAIL_AT": str(fail_at), "FAULTYNET_RANK": "1"},
                         capture_output=True, text=True, timeout=180)
    assert run.returncode != 0
    assert "error: 1 of 3 rows failed (faultynet:factory|ddpm|ddim|eta=0|nfe=6: rank 1: RuntimeError: simulated " \
           "network fault" in run.stderr, run.stderr[-3000:]
    records = read_rows(out / "results.jsonl", failed=True)
    assert [r["key"] for r in records] == planned
    assert [r.get("status") for r in records] == [None, "failed", None]
    done = subprocess.run(args + ["--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = read_rows(out / "results.jsonl", failed=True)
    assert _counts(rows, planned) == (0, 0) and len(rows) == 3 and not any(r.get("status") for r in rows)
    for a, b in zip(sorted(rows, key=lambda r: r["key"]), sorted(read_rows(tmp_path / "clean" / "results.jsonl"),
                                                                  key=lambda r: r["key"])):
        assert a["metrics"] == pytest.approx(b["metrics"], rel=1e-9)


# --- 4. a torn last line ---------------------------------------------------------------------------------
@pytest.mark.parametrize("tear", ["mid-line", "no-newline"])
def test_a_torn_last_line_is_dropped_and_its_row_run_again(tmp_path, tear):
    cfg = dict(problems=["ring2d"], solvers=["ddim", "euler"], nfe=[4, 8], n_samples=16, plot=False, quiet=True,
               print_table=False, reference_tol=1e-6, n_projections=32, warmup=False)
    planned = _keys("ring2d", [("ddim", (4, 8)), ("euler", (4, 8))])
    full = run_bench(BenchConfig(out=str(tmp_path / "full"), **cfg))
    lines = (tmp_path / "full" / "results.jsonl").read_text().splitlines(keepends=True)
    res = tmp_path / "torn" / "results.jsonl"
    res.parent.mkdir()
    last = lines[2][: len(lines[2]) // 2] if tear == "mid-line" else lines[2].rstrip("\n")
    res.write_text("".join(lines[:2]) + last)  # killed while writing row 3
    kept = read_rows(res)
    assert len(kept) == (2 if tear == "mid-line" else 3)
    new = run_bench(BenchConfig(out=str(res.parent), resume=True, **cfg))
    assert [r["key"] for r in new] == planned[len(kept):]
    rows = read_rows(res, failed=True)
    assert _counts(rows, planned) == (0, 0) and [r["key"] for r in rows] == planned
    assert all(json.loads(line) for line in res.read_text().splitlines())  # every line whole
    for a, b in zip(rows, full):
        assert a["metrics"] == pytest.approx(b["metrics"], rel=1e-12)
