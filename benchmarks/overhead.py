r"""Per-step overhead of the sampling loop outside the network: diffsolve vs diffusers.

The network is near-free (``eps = 0.1·x``), so what is timed is the solver's own work: grid and
coefficient arithmetic, the prediction-type conversion, the update, Python overhead.
For every (batch, solver, state dtype):

    overhead per step = (time of the whole sampling call − time of the same number of bare
                         network calls on the same input) / steps

- diffsolve: ``diffsolve.sample(denoiser, x, solver=..., steps=n, grid="log_snr",
  denoise_final=False, dtype=...)`` (set-up included: grid, StepContext, solver init), with a
  float64 and a float32 state, and the default call: ``net`` given as a plain function without
  ``net_dtype``, no ``dtype``, once with float32 x (the state then follows x's dtype) and once
  without x, the library drawing x_T from a generator (the state then has torch's default dtype,
  float32); the time of that draw, which diffusers' loop is handed, is timed apart and subtracted.
- diffusers: ``scheduler.set_timesteps(n)`` then the standard loop
  ``for t in timesteps: x = scheduler.step(net(scale_model_input(x, t), t), t, x).prev_sample``
  (DDIMScheduler(clip_sample=False), DPMSolverMultistepScheduler(solver_order=2),
  UniPCMultistepScheduler(solver_order=2)), with the sample in float32 (the usual) or float64.

Timings are CPU time of this process (``time.process_time``, 1 torch thread), not wall time: on a
shared, oversubscribed machine wall time mostly measures the other processes. Repeats are
interleaved; the minimum over repeats and the median are printed.

Usage:
    python benchmarks/overhead.py                 # both batch sizes, 50 steps
    python benchmarks/overhead.py --steps 20 --repeats 9
    python benchmarks/overhead.py --steps 2 --batches "small (1, 2)" --warm   # one Denoiser reused
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

import diffsolve as ds
from diffsolve.noise import NoiseSource

PAIRS = [("ddim", "DDIMScheduler", dict(clip_sample=False, set_alpha_to_one=True)),
         ("dpmpp_2m", "DPMSolverMultistepScheduler", dict(solver_order=2, algorithm_type="dpmsolver++")),
         ("unipc", "UniPCMultistepScheduler", dict(solver_order=2))]
BATCHES = {"small (1, 2)": (1, 2), "large (64, 3, 64, 64)": (64, 3, 64, 64)}
DDPM = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")


def net(x, t):
    return x * 0.1


def time_net(x, n):
    lab = torch.full((x.shape[0],), 500.0, dtype=x.dtype)
    t0 = time.process_time()
    for _ in range(n):
        net(x, lab)
    return time.process_time() - t0


def run_diffsolve(solver, x, n, dtype, den=None, draw=False):
    """One timed sampling call; with ``den`` (warm mode) the same Denoiser and schedule every call.
    ``dtype=None``: the default call, the plain function ``net`` given without ``net_dtype`` (its
    state dtype then follows x's, ``diffsolve.defaults.default_state_dtype``); ``draw``: without x,
    the library draws x_T of x's shape from a generator (then torch's default dtype)."""
    den = den or ds.Denoiser(net, ds.DDPMSchedule(), prediction="eps", net_dtype=dtype)
    given = dict(shape=tuple(x.shape), generator=torch.Generator().manual_seed(0)) if draw else dict(x=x)
    t0 = time.process_time()
    ds.sample(den, solver=solver, steps=n, grid="log_snr", denoise_final=False, dtype=dtype, **given)
    return time.process_time() - t0


def time_draw(x):
    """The draw of x_T that ``sample`` makes without x (a generator, float64 rounded to x's dtype)."""
    t0 = time.process_time()
    NoiseSource(x.shape[0], x.shape[1:], generator=torch.Generator().manual_seed(0), dtype=x.dtype).randn()
    return time.process_time() - t0


def run_diffusers(cls_name, cfg, x, n):
    import diffusers

    sch = getattr(diffusers, cls_name)(**DDPM, **cfg)
    t0 = time.process_time()
    sch.set_timesteps(n)
    for t in sch.timesteps:
        xin = sch.scale_model_input(x, t)
        x = sch.step(net(xin, t), t, x).prev_sample
    return time.process_time() - t0


def measure(shape, n, repeats, warm=False):
    rows = []
    g = torch.Generator().manual_seed(0)
    x64 = torch.randn(*shape, dtype=torch.float64, generator=g)
    x32 = x64.float()
    cases = []
    for solver, cls, cfg in PAIRS:
        for dt, x, draw in ((torch.float64, x64, False), (torch.float32, x32, False), (None, x32, False),
                            (None, x32, True)):
            den = ds.Denoiser(net, ds.DDPMSchedule(), prediction="eps", net_dtype=dt) if warm else None
            label = str(dt).replace("torch.", "") if dt else "drawn" if draw else "default"
            cases.append((f"diffsolve {solver}", label, x,
                          lambda s=solver, x=x, dt=dt, den=den, d=draw: run_diffsolve(s, x, n, dt, den, d)))
        for dt, x in ((torch.float32, x32), (torch.float64, x64)):
            cases.append((f"diffusers {cls}", str(dt).replace("torch.", ""), x,
                          lambda c=cls, g=cfg, x=x: run_diffusers(c, g, x, n)))
    times = {i: [] for i in range(len(cases))}
    nets = {str(x64.dtype): [], str(x32.dtype): []}
    draws = []
    for fn in [c[3] for c in cases]:  # warm-up
        fn()
    for _ in range(repeats):  # interleaved, so machine load hits every case alike
        for i, c in enumerate(cases):
            times[i].append(c[3]())
        for x in (x64, x32):
            nets[str(x.dtype)].append(time_net(x, n))
        draws.append(time_draw(x32))
    for i, (name, dt, x, _) in enumerate(cases):
        tn = min(nets[str(x.dtype)]) + (min(draws) if dt == "drawn" else 0.0)
        tmin, tmed = min(times[i]), statistics.median(times[i])
        rows.append(dict(method=name, dtype=dt, min_us=(tmin - tn) / n * 1e6, med_us=(tmed - tn) / n * 1e6))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batches", nargs="+", default=list(BATCHES), choices=list(BATCHES))
    ap.add_argument("--warm", action="store_true", help="diffsolve reuses one Denoiser (and schedule) across "
                    "calls, as a user sampling batch after batch does: memoised grids, tables and caches")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    for b in args.batches:
        rows = measure(BATCHES[b], args.steps, args.repeats, args.warm)
        print(f"\n### batch {b}, {args.steps} steps{', diffsolve warm' if args.warm else ''}: "
              f"overhead per step outside the network (µs)\n")
        print("| solver | diffsolve f64 state | diffsolve f32 state | diffsolve default call, float32 x | "
              "diffsolve default call, x drawn | diffusers f32 | diffusers f64 | best diffsolve / diffusers f32 | "
              "default / diffusers f32 (float32 x, x drawn) |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        by = {(r["method"], r["dtype"]): r for r in rows}
        for solver, cls, _ in PAIRS:
            a = by[(f"diffsolve {solver}", "float64")]
            b32 = by[(f"diffsolve {solver}", "float32")]
            e = by[(f"diffsolve {solver}", "default")]
            g = by[(f"diffsolve {solver}", "drawn")]
            c = by[(f"diffusers {cls}", "float32")]
            d = by[(f"diffusers {cls}", "float64")]
            best = min(a["min_us"], b32["min_us"])

            def f(r):
                return f"{r['min_us']:.0f} ({r['med_us']:.0f})"
            print(f"| {solver} / {cls} | {f(a)} | {f(b32)} | {f(e)} | {f(g)} | {f(c)} | {f(d)} | "
                  f"{best / c['min_us']:.2f} | {e['min_us'] / c['min_us']:.2f}, {g['min_us'] / c['min_us']:.2f} |")
        print("\nmin over repeats (median in parentheses), network time subtracted")


if __name__ == "__main__":
    main()
