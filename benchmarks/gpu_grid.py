"""GPU benchmark grid: quality vs NFE and throughput of the key solvers on CUDA.

Question: on one GPU, how many samples/s does each solver reach at NFE 5–50, what share of the time
is the network, and does the GPU run reproduce the CPU's quality numbers (same seeds → same
metrics up to float round-off)?

    python benchmarks/gpu_grid.py                          # one GPU
    python benchmarks/gpu_grid.py --quick                  # a 1-minute smoke run
    torchrun --nproc-per-node 8 benchmarks/gpu_grid.py     # seeds sharded over 8 GPUs

Writes ``gpu-results/results.jsonl`` (+ ``quality_vs_nfe.png``) through :func:`diffsolve.bench.run_bench`
with ``device="cuda"`` (warm-up per solver, ``torch.cuda.synchronize()`` around timed regions),
then prints throughput per solver, the network-time overhead check (one configuration timed with
and without per-call synchronisation) and a CPU-vs-GPU agreement check on a small batch.
Needs a CUDA machine; not run in CI (the CI machines have no GPU).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffsolve.bench import BenchConfig, read_rows, run_bench  # noqa: E402
from diffsolve.bench.runner import default_problems  # noqa: E402
from diffsolve.solvers import SOLVERS  # noqa: E402

SOLVERS_WANTED = ["ddim", "dpmpp_2m", "dpmpp_3m", "unipc", "heun", "euler", "dpmpp_2s", "dpmpp_2m_sde", "ancestral"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="gpu-results")
    ap.add_argument("--quick", action="store_true", help="small grid (about a minute)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("error: this benchmark needs CUDA (torch.cuda.is_available() is False)")
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:  # one process group (nccl) for every run_bench call below; they do not tear it down
        from diffsolve.distributed import init

        init("cuda")
    solvers = [s for s in SOLVERS_WANTED if s in SOLVERS]
    det = [s for s in solvers if not SOLVERS[s].stochastic or s in ("ddim", "euler")]
    sto = [s for s in solvers if SOLVERS[s].stochastic]
    n = 512 if args.quick else 4096
    nfe = [10, 20] if args.quick else [5, 10, 20, 50, 100]
    common = dict(device="cuda", dtype=args.dtype, n_samples=n, quiet=rank != 0, overwrite=True)
    out = Path(args.out)

    t0 = time.perf_counter()
    # 1. ODE solvers (eta = 0): error against the exact ODE solution, distribution metrics, throughput
    run_bench(BenchConfig(problems=default_problems(), solvers=det, nfe=nfe, out=str(out / "ode"),
                          net_time=True, **common))
    # 2. SDE solvers (eta = 1): distribution metrics only
    if sto:
        run_bench(BenchConfig(problems=["ring2d", "mix64"], solvers=sto, eta=[1.0], nfe=nfe,
                              out=str(out / "sde"), net_time=True, **common))
    # 3. cost of timing the network (per-call synchronisation) on the largest problem
    for flag in (False, True):
        run_bench(BenchConfig(problems=["gauss3072"], solvers=["dpmpp_2m"], nfe=[20], plot=False,
                              out=str(out / f"sync_{flag}"), net_time=flag, **common))
    if rank != 0:
        return
    wall = time.perf_counter() - t0

    print(f"\n=== throughput (samples/s) on {torch.cuda.get_device_name()}, {args.dtype}, n={n} ===")
    rows = read_rows(out / "ode" / "results.jsonl")
    for p in dict.fromkeys(r["problem"] for r in rows):
        print(f"\n{p}")
        print("solver".ljust(12) + "".join(f"NFE {k:>4}".rjust(12) for k in nfe) + "   net share")
        for s in det:
            rs = {r["nfe_budget"]: r for r in rows if r["problem"] == p and r["solver"] == s}
            if rs:
                share = max((r["net_time_share"] or 0) for r in rs.values())
                print(s.ljust(12) + "".join(f"{rs[k]['samples_per_s']:12.0f}" if k in rs else " " * 12 for k in nfe)
                      + f"   {100 * share:5.1f}%")
    t_off = read_rows(out / "sync_False" / "results.jsonl")[0]["wall_time_s"]
    t_on = read_rows(out / "sync_True" / "results.jsonl")[0]["wall_time_s"]
    print(f"\nper-call network timing overhead (gauss3072, dpmpp_2m, NFE 20): {t_off:.4f} s -> {t_on:.4f} s")

    if world > 1:  # the CPU comparison below is a single-process check
        print(f"\ntotal wall time {wall:.0f} s; results under {out}/")
        return
    # 4. GPU reproduces CPU quality numbers for the same seeds (float64 both sides)
    small = dict(problems=["ring2d", "mix64"], solvers=["dpmpp_2m"], nfe=[10], n_samples=64, quiet=True,
                 overwrite=True, plot=False, dtype="float64")
    gpu = run_bench(BenchConfig(device="cuda", out=str(out / "agree_gpu"), **small))
    cpu = run_bench(BenchConfig(device="cpu", out=str(out / "agree_cpu"), **small))
    print("\nCPU vs GPU (float64, 64 samples, dpmpp_2m NFE 10): relative metric differences")
    for a, b in zip(cpu, gpu):
        diffs = {k: abs(a["metrics"][k] - b["metrics"][k]) / max(abs(a["metrics"][k]), 1e-300) for k in a["metrics"]}
        print(f"  {a['problem']:<8} " + json.dumps({k: float(f"{v:.2e}") for k, v in diffs.items()}))
    print(f"\ntotal wall time {wall:.0f} s; results under {out}/")


if __name__ == "__main__":
    main()
