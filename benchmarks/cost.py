r"""How the sampling loop's cost grows: per-step overhead and peak memory against batch size and
sample size, diffsolve vs diffusers' scheduler loop; how it grows with the number of steps; and
where a float32 state loses accuracy against float64 (issue #18, part 3).

Network: ``eps = 0.1·x`` (near free). Methods (columns):

- ``default``: diffsolve's default call ``ds.sample(den, x, nfe=N)`` (``diffsolve.defaults``: at
  N = 20 UniPC of order 3 on the log-SNR grid, no final denoise) with the network in float32, as a
  float32 ``nn.Module`` runs (``Denoiser(net_dtype=torch.float32)``), hence a float32 state
  (``diffsolve.defaults.default_state_dtype``); x is given in float32;
- ``ddim``, ``dpmpp_2m``, ``unipc`` with a float64 (default) and a float32 state:
  ``ds.sample(den, x, solver=..., steps=N, grid="log_snr", denoise_final=False, dtype=...)``, the
  network in the state's dtype, as in ``overhead.py``;
- diffusers' DDIMScheduler(clip_sample=False) / DPMSolverMultistepScheduler(solver_order=2) /
  UniPCMultistepScheduler(solver_order=2), ``set_timesteps(N)`` and the standard
  ``x = sch.step(net(sch.scale_model_input(x, t), t), t, x).prev_sample`` loop, float32 sample.

Every method makes N network calls. A new
``Denoiser`` per call (cold caches, set-up included), as ``overhead.py``.

Time: CPU time of the process (``time.process_time``, 1 torch thread), repeats interleaved, min
over repeats; overhead per network call = (min time of the call − min time of N bare network
calls on the same input in the network's dtype) / N, also per element (ns/element/step). The
order of the methods rotates from one repeat to the next. Page faults of fresh allocations are
system CPU time of the process and are counted.

Memory: peak extra bytes allocated through torch's CPU allocator during the call, above the level
at entry, from the allocator's own allocation/free records (``torch.profiler`` with
``profile_memory=True``: every c10 CPU allocation and free, in order; Python objects and the
allocator's slack are not counted). Given as MB and as a multiple of one state tensor
(B·numel·itemsize of the method's state dtype: 8 bytes per element for the float64 state, 4 for
float32). The input x (existing before the call) is not counted; the output, the network's
outputs and every temporary are. ``--rss-check`` cross-checks one large cell against the peak RSS
of a fresh subprocess.

Usage:
    python benchmarks/cost.py                                  # all sections, cells up to 4.2M elements (~6 min)
    python benchmarks/cost.py --sections grid --max-elements 0 # every cell, 67M-element ones too (~20 min)
    python benchmarks/cost.py --sections dtype --dtype-solvers dpmpp_2m unipc ddim --nfe 5 10 20 50 200 1000
    python benchmarks/cost.py --sections grid --batches 1 64 --sizes 3x32x32 --steps 50
    python benchmarks/cost.py --sections steps                 # overhead and memory vs number of steps
    python benchmarks/cost.py --sections dtype                 # float32 vs float64 state accuracy
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import time
import warnings

import torch

import diffsolve as ds

SIZES = {"2": (2,), "64": (64,), "3x32x32": (3, 32, 32), "4x64x64": (4, 64, 64), "4x128x128": (4, 128, 128)}
SIZE_NAMES = {"2": "2-D points", "64": "64-D", "3x32x32": "3×32×32", "4x64x64": "4×64×64 latents",
              "4x128x128": "4×128×128 latents"}
BATCHES = (1, 4, 16, 64, 256, 1024)
DDPM = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
PAIRS = {"ddim": ("DDIMScheduler", dict(clip_sample=False, set_alpha_to_one=True)),
         "dpmpp_2m": ("DPMSolverMultistepScheduler", dict(solver_order=2, algorithm_type="dpmsolver++")),
         "unipc": ("UniPCMultistepScheduler", dict(solver_order=2))}
F32, F64 = torch.float32, torch.float64
# column key: (label, state dtype); the network runs in the state's dtype (``default``: a float32
# network, and so the float32 state diffsolve.defaults.default_state_dtype gives it)
METHODS = [("default", F32), ("ddim f64", F64), ("ddim f32", F32), ("dpmpp_2m f64", F64), ("dpmpp_2m f32", F32),
           ("unipc f64", F64), ("unipc f32", F32), ("diffusers DDIM", F32), ("diffusers DPM++2M", F32),
           ("diffusers UniPC", F32)]
DIFFUSERS = {"diffusers DDIM": "ddim", "diffusers DPM++2M": "dpmpp_2m", "diffusers UniPC": "unipc"}


def net(x, t):
    return x * 0.1


# --------------------------------------------------------------------------------------------
# the calls
# --------------------------------------------------------------------------------------------
def call(method: str, x32: torch.Tensor, x64: torch.Tensor, n: int):
    """One sampling call of ``method`` with n network calls; returns the output."""
    if method == "default":
        den = ds.Denoiser(net, ds.DDPMSchedule(), prediction="eps", net_dtype=F32)
        return ds.sample(den, x32, nfe=n).x
    if method in DIFFUSERS:
        import diffusers

        cls, cfg = PAIRS[DIFFUSERS[method]]
        sch = getattr(diffusers, cls)(**DDPM, **cfg)
        sch.set_timesteps(n)
        x = x32
        for t in sch.timesteps:
            x = sch.step(net(sch.scale_model_input(x, t), t), t, x).prev_sample
        return x
    solver, dt = method.split()
    dtype = F64 if dt == "f64" else F32
    den = ds.Denoiser(net, ds.DDPMSchedule(), prediction="eps", net_dtype=dtype)
    x = x64 if dtype == F64 else x32
    return ds.sample(den, x, solver=solver, steps=n, grid="log_snr", denoise_final=False, dtype=dtype).x


def net_dtype(method: str) -> torch.dtype:
    return dict(METHODS)[method]


def time_call(method, x32, x64, n) -> float:
    t0 = time.process_time()
    call(method, x32, x64, n)
    return time.process_time() - t0


def time_net(x, n) -> float:
    lab = torch.full((x.shape[0],), 500.0, dtype=x.dtype)
    t0 = time.process_time()
    for _ in range(n):
        net(x, lab)
    return time.process_time() - t0


def peak_bytes(fn) -> int:
    """Peak extra bytes held by torch's CPU allocator while ``fn()`` runs (its allocation and free
    records, in order, summed), above the level at entry. The profiler adds no tensors of its own."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    del out
    level = peak = 0
    for e in prof.profiler.kineto_results.events():
        if e.name() == "[memory]":
            level += e.nbytes()
            peak = max(peak, level)
    return peak


# --------------------------------------------------------------------------------------------
# section 1: the grid (batch × sample size)
# --------------------------------------------------------------------------------------------
def measure_cell(batch, size, n, repeats, methods, memory=True):
    numel = math.prod(size)
    g = torch.Generator().manual_seed(0)
    x32 = torch.randn(batch, *size, generator=g)
    x64 = x32.double()
    rows = {}
    for m in methods:  # warm-up (and the memory measurement: one profiled call each)
        if memory:
            rows[m] = dict(peak=peak_bytes(lambda m=m: call(m, x32, x64, n)))
        else:
            call(m, x32, x64, n)
            rows[m] = dict(peak=float("nan"))
    times = {m: [] for m in methods}
    nets = {F32: [], F64: []}
    for r in range(repeats):  # interleaved, and rotated: no method always runs first in a round
        for m in methods[r % len(methods):] + methods[:r % len(methods)]:
            times[m].append(time_call(m, x32, x64, n))
        for x in (x32, x64):
            nets[x.dtype].append(time_net(x, n))
    for m in methods:
        dt = net_dtype(m)
        tn = min(nets[dt])
        over = (min(times[m]) - tn) / n
        unit = batch * numel * (8 if dict(METHODS)[m] == F64 else 4)
        rows[m].update(us=over * 1e6, med_us=(statistics.median(times[m]) - tn) / n * 1e6,
                       ns_el=over * 1e9 / (batch * numel), mult=rows[m]["peak"] / unit, net_us=tn / n * 1e6)
    return rows


def section_grid(args):
    methods = [m for m, _ in METHODS if m in args.methods]
    cells, skipped = [], []
    for s in args.sizes:
        for b in args.batches:
            el = b * math.prod(SIZES[s])
            (skipped if args.max_elements and el > args.max_elements else cells).append((b, s))
    for m in methods:  # imports, first-use set-up
        call(m, torch.zeros(1, 2), torch.zeros(1, 2, dtype=F64), 3)
    results = {}
    t_start = time.time()
    for b, s in cells:
        reps = args.repeats if b * math.prod(SIZES[s]) <= 2 ** 20 else args.big_repeats
        results[(b, s)] = measure_cell(b, SIZES[s], args.steps, reps, methods, memory=not args.no_memory)
        r = results[(b, s)]
        print(f"  [{time.time() - t_start:5.0f} s] batch {b:5d} × {s:10s}: "
              + "  ".join(f"{m} {r[m]['us']:.0f}" for m in methods), file=sys.stderr, flush=True)
    print(f"\n## Overhead per step and peak memory against batch and sample size ({args.steps} network calls "
          "per run)\n")
    if skipped:
        print("Not measured (above --max-elements " + f"{args.max_elements}): "
              + ", ".join(f"{b}×{s}" for b, s in skipped) + "\n")
    tables = [("overhead per step outside the network, µs (min over repeats)", "us", "{:.0f}"),
              ("overhead per step per element, ns/element/step", "ns_el", "{:.3g}"),
              ("peak extra memory, multiple of one state tensor (the method's state dtype)", "mult", "{:.1f}")]
    for title, key, fmt in tables:
        print(f"### {title}\n")
        print("| batch × size | elements | " + " | ".join(methods) + " |")
        print("|---|---:|" + "---:|" * len(methods))
        for b, s in cells:
            r = results[(b, s)]
            print(f"| {b} × {s} | {b * math.prod(SIZES[s])} | " + " | ".join(fmt.format(r[m][key]) for m in methods)
                  + " |")
        print()
    print("### peak extra memory, MB\n")
    print("| batch × size | one f32 state, MB | " + " | ".join(methods) + " |")
    print("|---|---:|" + "---:|" * len(methods))
    for b, s in cells:
        r = results[(b, s)]
        print(f"| {b} × {s} | {b * math.prod(SIZES[s]) * 4 / 1e6:.3g} | "
              + " | ".join(f"{r[m]['peak'] / 1e6:.3g}" for m in methods) + " |")
    print()
    if "default" in methods and "diffusers DPM++2M" in methods and "diffusers UniPC" in methods:
        print("### ratios\n")
        print("| batch × size | default / diffusers DPM++2M | default / diffusers UniPC | dpmpp_2m f64 / f32 state |")
        print("|---|---:|---:|---:|")
        for b, s in cells:
            r = results[(b, s)]
            d, a, c = r["default"]["us"], r.get("dpmpp_2m f64", {}).get("us"), r.get("dpmpp_2m f32", {}).get("us")
            print(f"| {b} × {s} | {d / r['diffusers DPM++2M']['us']:.2f} | {d / r['diffusers UniPC']['us']:.2f} | "
                  + (f"{a / c:.2f}" if a and c else "") + " |")
        print()
    return results


# --------------------------------------------------------------------------------------------
# section 2: growth with the number of steps
# --------------------------------------------------------------------------------------------
def section_steps(args):
    methods = ["default", "dpmpp_2m f64", "unipc f64", "unipc f32", "diffusers DPM++2M", "diffusers UniPC"]
    shapes = [("1 × 2", (1, 2)), ("16 × 3x32x32", (16, 3, 32, 32))]
    print("\n## Growth with the number of steps\n")
    print("Overhead per network call (µs) and peak extra memory (multiple of one state tensor) at "
          f"{', '.join(map(str, args.step_counts))} network calls per run.\n")
    for label, shape in shapes:
        res = {}
        for n in args.step_counts:
            reps = max(2, args.repeats if n <= 100 else 2)
            r = measure_cell(shape[0], shape[1:], n, reps, methods)
            res[n] = r
            print(f"  [steps] {label} n={n}: " + "  ".join(f"{m} {r[m]['us']:.0f}" for m in methods),
                  file=sys.stderr, flush=True)
        print(f"### {label}\n")
        print("| method | " + " | ".join(f"{n} calls: µs/step" for n in args.step_counts) + " | "
              + " | ".join(f"{n}: memory ×" for n in args.step_counts) + " |")
        print("|---|" + "---:|" * (2 * len(args.step_counts)))
        for m in methods:
            print(f"| {m} | " + " | ".join(f"{res[n][m]['us']:.0f}" for n in args.step_counts) + " | "
                  + " | ".join(f"{res[n][m]['mult']:.1f}" for n in args.step_counts) + " |")
        print()


# --------------------------------------------------------------------------------------------
# section 3: float32 vs float64 state accuracy on exact problems
# --------------------------------------------------------------------------------------------
def _problems(names):
    out = {}
    for name in names:
        if name == "ring":
            gm, B = ds.GaussianMixture.ring(), 512
        elif name == "mix64":
            gm, B = ds.GaussianMixture.random(d=64, n_modes=8, seed=0), 256
        elif name == "gauss3072":
            gm, B = ds.GaussianMixture.image_gaussian((3, 32, 32)), 32
        else:
            raise ValueError(name)
        out[name] = (gm, B)
    return out


def _f32_net(den64: ds.Denoiser) -> ds.Denoiser:
    """The exact network run as a float32 network: it gets x in float32 and its output is rounded
    to float32 (computed in float64 in between: the best a float32 network can be)."""
    inner = den64.net

    def net32(x, t):
        return inner(x.double(), t).float()

    return ds.Denoiser(net32, den64.schedule, prediction=den64.prediction, time_label=lambda t: t,
                       net_dtype=F32, shape=den64.shape)


def section_dtype(args):
    from diffsolve.reference import ode_reference

    print("\n## Where does a float32 state lose accuracy?\n")
    print(f"RMS error per coordinate against the exact probability-flow map (x_T → ODE to t_min → x̂0(t_min), "
          f"dopri5 rtol = atol = {args.ref_tol:g} in float64), for `sample(den, x_T, solver=..., nfe=N)` "
          "(log-SNR grid, final denoise) with a float64 and a float32 state; `|f32 − f64|`: RMS difference "
          "of the two outputs (the rounding the float32 state adds). `net f32`: the exact network run in "
          "float32 (input cast to float32, output rounded to float32).\n")
    for sched_name in args.schedules:
        for name, (gm, B) in _problems(args.problems).items():
            schedule = ds.DDPMSchedule() if sched_name == "ddpm" else ds.EDMSchedule()
            den64 = gm.denoiser(schedule, "eps")
            den32 = _f32_net(den64)
            g = torch.Generator().manual_seed(1234)
            t_max, t_min = schedule.t_max, schedule.t_min
            sT = float(schedule.sigma(torch.tensor(t_max, dtype=F64)))
            # float32-representable start: both states start from the same values, so what differs is
            # the rounding of the state along the way
            xT = (sT * torch.randn(B, *gm.shape, dtype=F64, generator=g)).float().double()
            t0 = time.time()
            ref = ode_reference(den64, xT, t_max, t_min, rtol=args.ref_tol, atol=args.ref_tol, denoise_final=True)
            scale = float(ref.pow(2).mean().sqrt())
            print(f"### {name} ({sched_name} schedule, batch {B}; RMS of the reference {scale:.3g}; "
                  f"reference {time.time() - t0:.0f} s)\n")
            print("| solver | NFE | f64 state, f64 net | f32 state, f64 net | f32/f64 error | \\|f32 − f64\\| | "
                  "f64 state, net f32 | f32 state, net f32 | f32/f64 error (net f32) |")
            print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
            for solver in args.dtype_solvers:
                for n in args.nfe:
                    e = {}
                    outs = {}
                    for netk, den in (("n64", den64), ("n32", den32)):
                        for dt in (F64, F32):
                            out = ds.sample(den, xT.to(dt), solver=solver, nfe=n, dtype=dt).x.double()
                            outs[(netk, dt)] = out
                            e[(netk, dt)] = float((out - ref).pow(2).mean().sqrt())
                    diff = float((outs[("n64", F32)] - outs[("n64", F64)]).pow(2).mean().sqrt())
                    print(f"| {solver} | {n} | {e[('n64', F64)]:.2e} | {e[('n64', F32)]:.2e} | "
                          f"{e[('n64', F32)] / e[('n64', F64)]:.2f} | {diff:.1e} | {e[('n32', F64)]:.2e} | "
                          f"{e[('n32', F32)]:.2e} | {e[('n32', F32)] / e[('n32', F64)]:.2f} |", flush=True)
            print()


# --------------------------------------------------------------------------------------------
# cross-check of the allocator measurement: peak RSS of a fresh process
# --------------------------------------------------------------------------------------------
_RSS_CHILD = r"""
import resource, sys, torch
sys.path.insert(0, {here!r})
import cost
torch.set_num_threads(1)
b, s, n, m = {b}, {s!r}, {n}, {m!r}
x32 = torch.randn(b, *cost.SIZES[s]); x64 = x32.double()
cost.call(m, torch.zeros(1, 2), torch.zeros(1, 2, dtype=torch.float64), 3)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
cost.call(m, x32, x64, n)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024)
"""


def rss_check(args, batch=64, size="4x64x64"):
    print(f"\n## Cross-check: peak RSS growth of a fresh process vs the allocator records ({batch} × {size})\n")
    print("| method | allocator peak, MB | RSS growth, MB |")
    print("|---|---:|---:|")
    x32 = torch.randn(batch, *SIZES[size])
    x64 = x32.double()
    here = os.path.dirname(os.path.abspath(__file__))
    for m, _ in METHODS:
        if m not in args.methods:
            continue
        pk = peak_bytes(lambda m=m: call(m, x32, x64, args.steps))
        code = _RSS_CHILD.format(here=here, b=batch, s=size, n=args.steps, m=m)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        rss = int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else float("nan")
        print(f"| {m} | {pk / 1e6:.0f} | {rss / 1e6:.0f} |")
    print()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", nargs="+", default=["grid", "steps", "dtype"], choices=["grid", "steps", "dtype"])
    ap.add_argument("--steps", type=int, default=20, help="network calls per run in the grid (default 20)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--big-repeats", type=int, default=3, help="repeats of cells above 2^20 elements")
    ap.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--max-elements", type=int, default=2 ** 22,
                    help="skip cells with more elements (default 2^22 = 4.2M: each 16.8M-element cell takes ~4 min "
                         "on the loaded 2-core machine, the 67M one longer); 0: no limit")
    ap.add_argument("--methods", nargs="+", default=[m for m, _ in METHODS], choices=[m for m, _ in METHODS])
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--step-counts", type=int, nargs="+", default=[10, 50, 200, 1000])
    ap.add_argument("--problems", nargs="+", default=["ring", "mix64", "gauss3072"])
    ap.add_argument("--schedules", nargs="+", default=["ddpm"], choices=["ddpm", "edm"])
    ap.add_argument("--dtype-solvers", nargs="+", default=["dpmpp_2m", "unipc"])
    ap.add_argument("--nfe", type=int, nargs="+", default=[5, 20, 50, 200, 1000])
    ap.add_argument("--ref-tol", type=float, default=1e-11)
    ap.add_argument("--rss-check", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    print(f"# cost.py: torch {torch.__version__}, {args.threads} thread(s), "
          f"commit {_git()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    if "grid" in args.sections:
        section_grid(args)
    if "steps" in args.sections:
        section_steps(args)
    if "dtype" in args.sections:
        section_dtype(args)
    if args.rss_check:
        rss_check(args)


def _git() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True,
                                       cwd=os.path.dirname(os.path.abspath(__file__))).strip()
    except Exception:
        return "?"


if __name__ == "__main__":
    main()
