"""Held-out bits/dim of the bundled digits model by the exact probability-flow likelihood.

    python examples/digits_bits_per_dim.py            # all 297 held-out images (slow on 2 CPUs)
    python examples/digits_bits_per_dim.py --n 64     # a subset
    python examples/digits_bits_per_dim.py --fast     # smoke run
    python examples/digits_bits_per_dim.py --compare-estimators --n 32   # probe noise vs exact divergence

Pixel levels k ∈ {0..16} are dequantized uniformly, x = −1 + 2(k + u)/17 (the same map the model
was trained on), and bits/dim = −E_u[log p_Y(k + u)]/(64 ln 2), an upper bound on the discrete
model's bits/dim (docs/math.md §5). Reference points: a uniform code over 17 levels costs log2 17 = 4.09
bits/dim; the same images with their pixels shuffled (same histogram, no digit structure) are
scored too, and the training images for the generalisation gap.
"""
from __future__ import annotations

import argparse
import math
import time

import torch

import diffsolve
from diffsolve import zoo
from diffsolve.zoo.data import DIGITS_LEVELS, digits


def _run(den, k, args, seed0=0, **kw):
    kw = dict(dict(probes=args.probes, divergence=args.divergence, fresh_probes=args.fresh_probes), **kw)
    if args.rtol is not None:
        kw.update(rtol=args.rtol, atol=args.rtol)
    return diffsolve.log_likelihood(den, k, dequantize=dict(levels=DIGITS_LEVELS, range=(-1.0, 1.0)),
                                    seeds=range(seed0, seed0 + len(k)), chunk_size=64, **kw)


def bits_per_dim(den, k, args, seed0=0):
    res = _run(den, k, args, seed0)
    mean, se = res.mean_bits_per_dim()
    return mean, se, float(res.nfe.double().mean())


def compare_estimators(den, k, args):
    """Per-image error of one Hutchinson probe, held fixed or fresh at every call, against the exact
    divergence (the same dequantization noise: the same per-image seeds draw it first)."""
    exact = _run(den, k, args, divergence="exact", fresh_probes=False)
    print(f"exact divergence: {float(exact.bits_per_dim.mean()):.4f} bits/dim, mean NFE "
          f"{float(exact.nfe.double().mean()):.0f}")
    for fresh in (False, True):
        r = _run(den, k, args, divergence="hutchinson", probes=1, fresh_probes=fresh)
        err = (r.log_prob - exact.log_prob) / 64
        print(f"one probe, {'fresh at every call' if fresh else 'held fixed':19s}: RMS error "
              f"{float(err.pow(2).mean().sqrt()):.4f} nats/dim, mean {float(err.mean()):+.4f}, mean NFE "
              f"{float(r.nfe.double().mean()):.0f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=297, help="held-out images (max 297)")
    p.add_argument("--rtol", type=float, default=None, help="ODE tolerance (rtol = atol; default: the library's)")
    p.add_argument("--probes", type=int, default=1, help="Hutchinson probes (with --divergence hutchinson)")
    p.add_argument("--divergence", choices=("exact", "hutchinson"), default="exact")
    fp = p.add_mutually_exclusive_group()
    fp.add_argument("--fresh-probes", dest="fresh_probes", action="store_true", default=None,
                    help="new Hutchinson probes at every network call (the library's default)")
    fp.add_argument("--fixed-probes", dest="fresh_probes", action="store_false",
                    help="hold each Hutchinson probe fixed along the trajectory")
    p.add_argument("--compare-estimators", action="store_true",
                   help="only compare one fixed and one fresh probe with the exact divergence, image by image")
    p.add_argument("--no-shuffled", action="store_true", help="skip the shuffled-pixel reference")
    p.add_argument("--train", type=int, default=0, help="also score this many training images")
    p.add_argument("--fast", action="store_true", help="4 images, loose tolerance")
    args = p.parse_args(argv)
    if args.fast:
        args.n, args.rtol, args.divergence, args.train = 4, 1e-2, "hutchinson", 0
    torch.set_num_threads(1)
    den = zoo.load("digits")
    k, _ = digits("test")
    k = k[: args.n]
    if args.compare_estimators:
        compare_estimators(den, k, args)
        return
    print(f"uniform 17-level code: {math.log2(DIGITS_LEVELS):.3f} bits/dim")
    t0 = time.time()
    mean, se, nfe = bits_per_dim(den, k, args)
    print(f"held-out ({len(k)} images): {mean:.3f} ± {se:.3f} bits/dim  "
          f"[{args.divergence}, rtol {args.rtol or 'default'}, mean NFE {nfe:.0f}, {time.time() - t0:.0f}s]")
    if not args.no_shuffled:
        perm = torch.randperm(64, generator=torch.Generator().manual_seed(0))
        shuffled = k.reshape(len(k), 64)[:, perm].reshape(k.shape)
        m_s, se_s, _ = bits_per_dim(den, shuffled, args)
        print(f"held-out, pixels shuffled: {m_s:.3f} ± {se_s:.3f} bits/dim")
    if args.train:
        k_tr, _ = digits("train")
        m_t, se_t, _ = bits_per_dim(den, k_tr[: args.train], args, seed0=10_000)
        print(f"training ({args.train} images): {m_t:.3f} ± {se_t:.3f} bits/dim")


if __name__ == "__main__":
    main()
