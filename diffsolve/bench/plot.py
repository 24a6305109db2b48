"""Quality against NFE from a results file: one log–log panel per problem, one line per solver.

The quality shown is a feature metric where rows have one (``fid``, then ``kid`` where every row's is
positive, with its bootstrap interval as a band where the rows have one), else the error against the exact ODE solution
(``rms_error``), else the Fréchet distance (exact Gaussian target or held-out data); the metric's
floor (an exact batch of the same size) is drawn as a dashed line. matplotlib is optional (``pip install
diffsolve[plot]``); without it :func:`plot_results` raises ImportError with that hint.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from .results import PLOT_NAME, read_rows

__all__ = ["plot_results", "QUALITY_ORDER"]

QUALITY_ORDER = ("fid", "kid", "rms_error", "frechet", "frechet_heldout", "sliced_w2", "sliced_w2_heldout")


def _quality(rows: list[dict]) -> str | None:
    """The first metric of :data:`QUALITY_ORDER` that every row has, all positive (else the first that some
    have): a panel of ODE and SDE rows, whose error against the exact ODE solution only the ODE rows have,
    is drawn in a metric of both. An estimate at or below zero (the unbiased KID where the samples are as
    close as its noise) ranks nothing and has no place on a log axis, so the panel falls back to the next."""
    for every in (True, False):
        for name in QUALITY_ORDER:
            values = [r["metrics"][name] for r in rows if r["metrics"].get(name) is not None]
            if values and all(v > 0 for v in values) and (len(values) == len(rows) or not every):
                return name
    return None


def plot_results(results, png=None) -> Path:
    """Draw ``quality_vs_nfe.png`` (or ``png``) from a ``results.jsonl``; returns the PNG path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import NullFormatter, NullLocator
    except ImportError:
        raise ImportError("matplotlib is not installed; `pip install matplotlib` (or diffsolve[plot]) "
                          "to get quality_vs_nfe.png — the results file is complete without it") from None

    results = Path(results)
    png = Path(png) if png is not None else results.with_name(PLOT_NAME)
    rows = read_rows(results)
    panels = defaultdict(list)
    for r in rows:
        panels[(r["problem"], r["schedule"])].append(r)
    if not panels:
        raise ValueError(f"{results} has no rows to plot")
    n = len(panels)
    cols = min(n, 2)
    nrows = (n + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(5.5 * cols, 4.2 * nrows), squeeze=False)
    for ax, ((problem, schedule), prow) in zip(axes.flat, sorted(panels.items())):
        metric = _quality(prow)
        lines, banded = defaultdict(list), False
        for r in prow:
            v = r["metrics"].get(metric)
            if v is not None and v > 0:
                label = r["solver"] + (f" (eta={r['eta']:g})" if r["eta"] else "")
                lines[label].append((r["nfe"], v, (r.get("intervals") or {}).get(metric)))
        for label, pts in sorted(lines.items()):
            pts.sort(key=lambda p: p[0])
            line, = ax.loglog([p[0] for p in pts], [p[1] for p in pts], "o-", ms=3, label=label)
            band = [p for p in pts if p[2] is not None and p[2][0] > 0]
            if band:
                banded = True
                ax.fill_between([p[0] for p in band], [p[2][0] for p in band], [p[2][1] for p in band],
                                color=line.get_color(), alpha=0.15, lw=0)
        floors = [r["floors"].get(metric) for r in prow if r["floors"].get(metric)]
        if floors:
            ax.axhline(floors[0], color="gray", ls="--", lw=1, label="floor (the target's own batch)")
        nfes = sorted({r["nfe_budget"] for r in prow})  # the budgets asked for (Heun uses one less)
        if nfes:
            ax.set_xticks(nfes)
            ax.set_xticklabels([str(k) for k in nfes])
            ax.xaxis.set_minor_locator(NullLocator())  # (the y axis keeps its minor ticks: within a decade they
            ax.xaxis.set_minor_formatter(NullFormatter())  # are its only labelled ones)
        ax.set_title(f"{problem} ({schedule})")
        ax.set_xlabel("NFE")
        ax.set_ylabel((metric or "quality") + (" (bands: 95% bootstrap intervals)" if banded else ""))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png
