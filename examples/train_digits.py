"""Train the bundled "digits" model: a class-conditional ε-prediction MLP on sklearn's 8×8 digits.

    python examples/train_digits.py                      # writes diffsolve/zoo/weights/digits.*
    python examples/train_digits.py --fast --out /tmp/d  # a quick smoke run
    python examples/train_digits.py --schedule flow --steps 3000 --threads 2 --out DIR   # digits_flow.* in DIR

``--schedule flow`` trains the same network as a rectified-flow model instead (α = 1 − t, σ = t,
velocity prediction v = dx/dt = ε − x0, loss ‖v̂ − v‖²; name ``digits_flow``): a trained flow-matching
network for the benchmarks to judge flow-schedule defaults on (not bundled).

Recipe (all fixed by --seed, CPU, one thread so the run is reproducible bit for bit on one
machine): training split = first 1500 images; pixels dequantized uniformly onto [−1, 1]
(diffsolve.zoo.data); t ~ U[t_min, t_max] of the cosine VP schedule; loss ‖ε̂ − ε‖²; class label
replaced by the null class with probability 0.3 (for classifier-free guidance); AdamW with warm-up
and cosine decay; the weights saved are an exponential moving average (decay 0.999).
At the end it samples the model (DDIM, 50 steps) and measures sample quality with a logistic
regression classifier trained on the real training split; the numbers go into the metadata.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

import diffsolve
from diffsolve.schedules import CosineSchedule, FlowSchedule
from diffsolve.zoo import ResidualMLP, save_model
from diffsolve.zoo.models import train_step
from diffsolve.zoo.data import DIGITS_LEVELS, DIGITS_TRAIN, digits, digits_to_model, digits_to_pixels

DEFAULT_OUT = Path(diffsolve.__file__).resolve().parent / "zoo" / "weights"


def classifier(train_pixels, train_labels):
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=3000, C=0.1)
    clf.fit(train_pixels.reshape(len(train_pixels), -1).numpy(), train_labels.numpy())
    return clf


def quality(den, clf, n: int, steps: int, cond=None, seed0: int = 10_000) -> dict:
    """Sample n digits (DDIM, ``steps`` steps) and classify them; cond = class labels or None."""
    if cond is not None:
        from diffsolve.guidance import CFGDenoiser

        den = CFGDenoiser(den, scale=1.0, cond=cond)
    out = diffsolve.sample(den, seeds=range(seed0, seed0 + n), solver="ddim", steps=steps)
    pix = digits_to_pixels(out.x).reshape(n, -1).numpy()
    prob = clf.predict_proba(pix)
    pred = prob.argmax(1)
    res = {"n": n, "solver": f"ddim, {steps} steps", "mean_max_prob": float(prob.max(1).mean()),
           "frac_confident_0.9": float((prob.max(1) > 0.9).mean()),
           "class_counts": [int((pred == c).sum()) for c in range(10)]}
    if cond is not None:
        res["accuracy_vs_label"] = float((pred == cond.numpy()).mean())
    return res, out.x


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=9000, help="optimiser steps")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--p-uncond", type=float, default=0.3, help="label dropout probability")
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--eval-n", type=int, default=1000, help="samples for the quality check")
    p.add_argument("--eval-steps", type=int, default=50, help="DDIM steps for the quality check")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for digits.safetensors/.json")
    p.add_argument("--schedule", choices=("cosine", "flow"), default="cosine",
                   help="cosine: the bundled ε-prediction model; flow: rectified flow, velocity prediction")
    p.add_argument("--fast", action="store_true", help="tiny smoke run (60 steps, small net)")
    args = p.parse_args(argv)
    if args.fast:
        args.steps, args.width, args.depth, args.eval_n, args.eval_steps = 60, 32, 1, 50, 10
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    k, y = digits("train")
    flow = args.schedule == "flow"
    schedule = FlowSchedule() if flow else CosineSchedule()
    name = "digits_flow" if flow else "digits"
    net = ResidualMLP((1, 8, 8), width=args.width, depth=args.depth, num_classes=10)
    ema = ResidualMLP((1, 8, 8), width=args.width, depth=args.depth, num_classes=10)
    ema.load_state_dict(net.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.0)
    warm = min(200, args.steps // 10 + 1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps))))

    t0, c0 = time.time(), time.process_time()
    n_train = len(k)
    for step in range(args.steps):
        idx = torch.randint(0, n_train, (args.batch,), generator=gen)
        u = torch.rand(args.batch, 1, 8, 8, generator=gen, dtype=torch.float64)
        x0 = digits_to_model(k[idx], u)
        t = schedule.t_min + (schedule.t_max - schedule.t_min) * torch.rand(args.batch, generator=gen, dtype=torch.float64)
        eps = torch.randn(args.batch, 1, 8, 8, generator=gen, dtype=torch.float64)
        a, s = schedule.alpha_sigma(t)
        xt = (a[:, None, None, None] * x0 + s[:, None, None, None] * eps).float()
        lam = schedule.log_snr(t).float()
        cond = torch.where(torch.rand(args.batch, generator=gen) < args.p_uncond, torch.full_like(y[idx], 10), y[idx])
        target = eps - x0 if flow else eps  # velocity dx/dt = α' x0 + σ' ε = ε − x0 on the flow schedule
        loss = (net(xt, lam, cond) - target.float()).pow(2).mean()
        train_step(loss, net, ema, opt, sched, step, args.ema)
        if step % 1000 == 0 or step == args.steps - 1:
            print(f"step {step:6d}  loss {loss.item():.4f}  {time.time() - t0:7.1f}s", flush=True)
    train_time, cpu_time = time.time() - t0, time.process_time() - c0

    command = "python examples/train_digits.py " + " ".join(sys.argv[1:] if argv is None else argv)
    kind = ("velocity-prediction, rectified-flow schedule" if flow else "eps-prediction, cosine VP schedule")
    kwargs = {"t_min": schedule.t_min, "t_max": schedule.t_max} | ({} if flow else {"s": schedule.s})
    meta = {
        "name": name,
        "description": "sklearn 8x8 digits (17 levels dequantized onto [-1,1]), class-conditional "
                       f"with null class 10, {kind}, label = log-SNR",
        "architecture": "ResidualMLP", "config": ema.config,
        "schedule": {"name": args.schedule, "kwargs": kwargs},
        "prediction": "velocity" if flow else "eps", "time_label": "log_snr", "shape": [1, 8, 8],
        "num_classes": 10, "null_class": 10,
        "data": {"dataset": "sklearn.datasets.load_digits", "levels": DIGITS_LEVELS, "range": [-1.0, 1.0],
                 "to_model": "x = -1 + 2 (k + u) / 17, u ~ U[0,1) (uniform dequantization)",
                 "to_pixels": "k = clamp(floor((x + 1) * 17 / 2), 0, 16)",
                 "split": f"train = images[:{DIGITS_TRAIN}], test = images[{DIGITS_TRAIN}:] (297)"},
        "training": {"command": command, "seed": args.seed, "steps": args.steps, "batch": args.batch,
                     "lr": args.lr, "ema": args.ema, "p_uncond": args.p_uncond, "threads": args.threads,
                     "time_s": round(train_time, 1), "cpu_time_s": round(cpu_time, 1), "torch": torch.__version__},
    }
    path, _ = save_model(args.out / name, ema, meta)

    # quality of the saved model, through the public loader
    den = diffsolve.zoo.load(path)
    clf = classifier(k, y)
    n = args.eval_n
    uncond, _ = quality(den, clf, n, args.eval_steps)
    labels = torch.arange(n) % 10
    cond, _ = quality(den, clf, n, args.eval_steps, cond=labels)
    meta["metrics"] = {"classifier": "LogisticRegression(C=0.1) on the 1500 training images",
                       "classifier_test_accuracy": float(clf.score(digits("test")[0].reshape(-1, 64).numpy(),
                                                                   digits("test")[1].numpy())),
                       "unconditional": uncond, "conditional": cond}
    save_model(args.out / name, ema, meta)
    print(f"trained {args.steps} steps in {train_time:.0f}s; saved {path} ({path.stat().st_size / 1e6:.2f} MB)")
    print("unconditional:", uncond)
    print("conditional:", cond)


if __name__ == "__main__":
    main()
