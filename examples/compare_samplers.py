"""Compare samplers on the bundled digits model at equal NFE.

    python examples/compare_samplers.py                          # table
    python examples/compare_samplers.py --png samplers.png       # plus a picture: a row per solver
    python examples/compare_samplers.py --readme-grid docs/digits_samples.png
    python examples/compare_samplers.py --fast                   # smoke run

For each solver and budget of network evaluations (NFE, final denoise included) it draws the same
samples (same seeds, so the same x_T) and reports

- ``err``: RMS distance (in [−1, 1] pixel units) to a reference solution of the probability-flow
  ODE from the same x_T (DPM-Solver++(2M) with 200 steps): for a deterministic solver its own
  discretisation error; a stochastic one (e.g. ``ancestral``) samples the reverse SDE, whose samples
  differ from the ODE's by design, so its ``err`` measures that difference, not an error;
- ``conf`` / ``classes``: mean top probability of a logistic-regression classifier trained on the
  real training digits, and how many of the 10 classes appear — sample quality as a person sees it.

``--readme-grid`` writes a 10 × 10 picture of class-conditional samples (one row per class,
classifier-free guidance w = 2, DPM-Solver++(2M), 20 NFE).
"""
from __future__ import annotations

import argparse
import time

import torch

import diffsolve
from diffsolve import zoo
from diffsolve.solvers import SOLVERS
from diffsolve.zoo.data import digits, digits_to_pixels

PREFERRED = ("ddim", "dpmpp_2m", "dpmpp_3m", "unipc", "heun", "euler")


def classifier():
    from sklearn.linear_model import LogisticRegression

    k, y = digits("train")
    return LogisticRegression(max_iter=3000, C=0.1).fit(k.reshape(len(k), -1).numpy(), y.numpy())


def save_grid(pixels: torch.Tensor, path, rows: int, labels=None):
    """Save (rows·cols, 1, 8, 8) pixel levels as a grey image grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = len(pixels) // rows
    img = torch.ones(rows * 9 + 1, cols * 9 + 1) * 16
    for i in range(rows):
        for j in range(cols):
            img[1 + 9 * i: 9 + 9 * i, 1 + 9 * j: 9 + 9 * j] = pixels[i * cols + j, 0].float()
    fig, ax = plt.subplots(figsize=(cols * 0.45 + (0.45 if labels else 0.2), rows * 0.45 + 0.2), dpi=100)
    ax.imshow(16 - img.numpy(), cmap="gray", vmin=0, vmax=16, interpolation="nearest")
    ax.set_xticks([])
    if labels:
        ax.set_yticks([5 + 9 * i for i in range(rows)], labels, fontsize=8)
    else:
        ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)
    fig.tight_layout(pad=0.1)
    fig.savefig(path)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200, help="samples per run")
    p.add_argument("--nfe", type=int, nargs="+", default=[6, 10, 20])
    p.add_argument("--solvers", nargs="+", default=None, help=f"default: those of {PREFERRED} registered")
    p.add_argument("--png", default=None, help="picture: a row of samples per solver at the smallest NFE")
    p.add_argument("--readme-grid", default=None, help="write the 10×10 class-conditional grid here")
    p.add_argument("--fast", action="store_true", help="16 samples, NFE 6 and 10, reference with 40 steps")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    ref_steps = 200
    if args.fast:
        args.n, args.nfe, ref_steps = 16, [6, 10], 40
    solvers = args.solvers or [s for s in PREFERRED if s in SOLVERS]
    den = zoo.load("digits")
    clf = classifier()
    seeds = range(args.n)

    if args.readme_grid:
        labels = torch.arange(10).repeat_interleave(10)
        solver = "dpmpp_2m" if "dpmpp_2m" in SOLVERS else "ddim"
        g = diffsolve.CFGDenoiser(den, 2.0, labels)
        out = diffsolve.sample(g, seeds=range(100), solver=solver, nfe=20)
        save_grid(digits_to_pixels(out.x), args.readme_grid, rows=10, labels=[str(c) for c in range(10)])
        print(f"wrote {args.readme_grid} ({solver}, {out.nfe} NFE, guidance w = 2)")

    ref_solver = "dpmpp_2m" if "dpmpp_2m" in SOLVERS else "ddim"
    ref = diffsolve.sample(den, seeds=seeds, solver=ref_solver, steps=ref_steps).x
    print(f"reference: {ref_solver}, {ref_steps} steps; {args.n} samples per run")
    print(f"{'solver':>10} {'NFE':>4} {'err':>8} {'conf':>6} {'classes':>7} {'time':>6}")
    picture = []
    for name in solvers:
        for nfe in args.nfe:
            den.reset_nfe()
            t0 = time.time()
            try:
                out = diffsolve.sample(den, seeds=seeds, solver=name, nfe=nfe)
            except ValueError as e:  # e.g. a budget below the solver's minimum
                print(f"{name:>10} {nfe:>4}  skipped: {e}")
                continue
            prob = clf.predict_proba(digits_to_pixels(out.x).reshape(args.n, -1).numpy())
            err = float((out.x - ref).pow(2).mean().sqrt())
            print(f"{name:>10} {out.nfe:>4} {err:8.4f} {prob.max(1).mean():6.3f} "
                  f"{len(set(prob.argmax(1).tolist())):>7} {time.time() - t0:5.1f}s")
            if nfe == min(args.nfe):
                picture.append((name, digits_to_pixels(out.x[:12])))
    if args.png and picture:
        save_grid(torch.cat([px for _, px in picture]), args.png, rows=len(picture),
                  labels=[f"{name} ({min(args.nfe)})" for name, _ in picture])
        print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
