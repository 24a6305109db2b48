"""What each of the README's first five lines costs (README, "The first five lines"): seconds and network
evaluations, on this machine as it is (say how busy it was when you quote a figure).

    python benchmarks/first_lines.py            # ~1 minute on two idle cores
"""
from __future__ import annotations

import time

t0 = time.perf_counter()
import diffsolve as ds  # noqa: E402  (the import is one of the timed lines)

t_import = time.perf_counter() - t0


def timed(f):
    t0 = time.perf_counter()
    out = f()
    return out, time.perf_counter() - t0


def main():
    model, t_load = timed(lambda: ds.zoo.load("digits"))
    out, t_sample = timed(lambda: ds.sample(model, seeds="0-63", nfe=10))
    exact, t_exact = timed(lambda: ds.log_likelihood(model, out.x, divergence="exact"))
    hutch, t_hutch = timed(lambda: ds.log_likelihood(model, out.x))
    grid, t_tune = timed(lambda: ds.tune_steps(model, nfe=6, progress=False))
    print(f"import diffsolve            {t_import:6.1f} s")
    print(f"zoo.load('digits')          {t_load:6.1f} s")
    print(f"sample(nfe=10), 64 seeds    {t_sample:6.1f} s   nfe {out.nfe}")
    print(f"log_likelihood, exact       {t_exact:6.1f} s   mean evaluations per sample "
          f"{float(exact.nfe.float().mean()):.0f}")
    print(f"log_likelihood, default     {t_hutch:6.1f} s   mean evaluations per sample "
          f"{float(hutch.nfe.float().mean()):.0f}")
    print(f"tune_steps(nfe=6)           {t_tune:6.1f} s   {len(grid.pilot_seeds)} pilots from {grid.screened} "
          f"candidates")


if __name__ == "__main__":
    main()
