r"""Feature-space metrics of benchmark rows (``diffsolve bench --metric fid,kid,prdc``; docs/math.md §24).

Each row's samples (all of them, gathered from every process) are put on the reference's levels
(:meth:`~diffsolve.features.FeatureReference.quantize`, or the problem's own ``quantize``), mapped
to features (:func:`diffsolve.features.features_from`: ``pixels``, ``inception[:path]`` or a
``package.module:factory``) and compared with the reference's features:

- ``fid``: Fréchet distance of the Gaussian fits (docs/math.md (24.2));
- ``kid``: unbiased MMD² with the cubic kernel over 100 subsets of min(1000, N) rows, and its
  standard deviation over the subsets ``kid_std`` (torch-fidelity's convention);
- ``prdc``: improved precision and recall (k = 3) and density and coverage (k = 5).

**The reference**: ``--reference PATH`` (a dataset, or published ``mu``/``sigma`` statistics, which
give ``fid`` only); by default a model's held-out data (the digits' test set) or, for an analytic
problem, exact samples as many as the row draws (then the metric of a second exact batch is the
row's floor).

**Intervals** (95 %): a bootstrap (docs/math.md (24.5)) over the generated rows, the reference held
fixed, with ``bootstrap`` resamples (seed 0): for ``fid`` the basic interval (one covariance of the
resampled features per resample), an interval for the Fréchet distance of the sampler's distribution
rather than of N of its samples: the estimate at N samples is biased upwards, and the interval may
lie below it (docs/math.md (24.5)); for ``precision`` and ``density`` the percentile interval
(means of per-row ball counts, computed once).
``recall`` and ``coverage`` depend on which distinct rows a resample holds (a duplicated row
shrinks the generated k-NN balls), and ``kid`` carries its own spread over subsets; they get none.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..features import FeatureReference, ball_hits, bootstrap_interval, features_from, frechet_distance_rows, kid
from ..images import DATA_RANGE, check_data_range
from .problems import EXACT_SEED_FLOOR, EXACT_SEED_TARGET, Problem

__all__ = ["FEATURE_METRICS", "FeatureSettings", "FeatureMetrics", "parse_metrics"]

FEATURE_METRICS = ("fid", "kid", "prdc")
_ROW_METRICS = {"fid": ("fid",), "kid": ("kid",), "prdc": ("precision", "recall", "density", "coverage")}
_K_PRECISION, _K_DENSITY = 3, 5
PRDC_MIN_SAMPLES = _K_DENSITY + 1  # a k-NN radius needs k other points in its set


def parse_metrics(names) -> tuple[str, ...]:
    """The feature metrics asked for, in canonical order (an unknown name is a clear error)."""
    names = [n.strip().lower() for n in (names.split(",") if isinstance(names, str) else names)]
    unknown = [n for n in names if n not in FEATURE_METRICS]
    if unknown or not names:
        raise ValueError(f"unknown metric{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                         f"valid metrics: {', '.join(FEATURE_METRICS)}")
    return tuple(m for m in FEATURE_METRICS if m in names)


@dataclass(frozen=True)
class FeatureSettings:
    """What ``--metric``, ``--features``, ``--reference``, ``--data-range`` and ``--bootstrap`` ask for."""

    metrics: tuple[str, ...]
    features: str = "pixels"
    reference: str | None = None
    data_range: tuple = DATA_RANGE
    bootstrap: int = 50
    batch_size: int = 256

    def __post_init__(self):
        object.__setattr__(self, "metrics", parse_metrics(self.metrics))
        object.__setattr__(self, "data_range", check_data_range(self.data_range))
        b = self.bootstrap
        if isinstance(b, bool) or not isinstance(b, int) or b < 0:
            raise ValueError(f"bootstrap must be an integer >= 0 (0: no intervals), got {b!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"the feature batch size must be a positive integer, got {self.batch_size!r}")
        if not isinstance(self.features, str) or not self.features:
            raise ValueError(f"features must be 'pixels', 'inception[:path]' or 'package.module:factory', "
                             f"got {self.features!r}")

    @property
    def row_metrics(self) -> tuple[str, ...]:
        """The names under which the rows hold these metrics (``kid_std`` beside ``kid`` too)."""
        return tuple(name for m in self.metrics for name in _ROW_METRICS[m])

    def run_settings(self) -> dict:
        """What every row of one results file must share (a resumed run is refused otherwise)."""
        from ..features.reference import files_identity

        return {"metrics": list(self.metrics), "features": self.features, "reference": self.reference,
                "reference_files": files_identity(self.reference) if self.reference is not None else None,
                "data_range": list(self.data_range), "bootstrap": self.bootstrap}


class FeatureMetrics:
    """The feature metrics of one problem: its extractor and reference (built on first use), and
    :meth:`__call__` giving a row's (metrics, intervals, floors)."""

    def __init__(self, settings: FeatureSettings, problem: Problem, device, progress=None):
        self.settings, self.problem, self.progress = settings, problem, progress
        self.extract = features_from(settings.features, device=device, data_range=settings.data_range)
        self._ref: FeatureReference | None = None
        self._floor: dict | None = None
        self._floor_n: int | None = None
        if settings.reference is None and not problem.exact and problem.data is None:
            raise ValueError(f"{problem.name} has no held-out data to compare with; give --reference PATH (a "
                             f"folder of images, .npz/.npy/.pt samples, or mu/sigma statistics)")
        if settings.reference is not None:  # a missing, unreadable or mismatched reference stops the run now
            self.reference(0).check_against(problem.shape, self.extract, problem.name)
            if self._ref.features is None:
                for m in set(settings.metrics) - {"fid"}:
                    self._ref.require_rows(m)

    def _say(self, msg: str):
        if self.progress is not None:
            self.progress(msg, force=True)

    def reference(self, n: int) -> FeatureReference:
        """The reference (the exact batch of an analytic problem has the row's size ``n``)."""
        s, p = self.settings, self.problem
        if self._ref is None or (s.reference is None and p.exact and self._ref.n != n):
            if s.reference is not None:
                self._ref = FeatureReference.from_path(s.reference, self.extract, s.features,
                                                       data_range=s.data_range, batch_size=s.batch_size,
                                                       progress=self._say)
            elif p.exact:
                self._ref = FeatureReference.from_samples(p.exact_samples(n, EXACT_SEED_TARGET), self.extract,
                                                          batch_size=s.batch_size,
                                                          description=f"{n} exact samples of {p.name}")
            else:
                self._ref = FeatureReference.from_samples(p.data(), self.extract, batch_size=s.batch_size,
                                                          description=f"held-out data of {p.name}")
        return self._ref

    def _quantize(self, x: Tensor) -> Tensor:
        if self.settings.reference is not None:
            return self.reference(x.shape[0]).quantize(x)
        return self.problem.quantize(x) if self.problem.quantize is not None else x

    def features(self, x: Tensor) -> Tensor:
        """Features (N, D) of samples x (N, ...) in sample space, a batch at a time."""
        b = self.settings.batch_size
        x = self._quantize(x)
        return torch.cat([self.extract(x[i:i + b]).detach().to(torch.float64).cpu() for i in range(0, len(x), b)])

    def __call__(self, x: Tensor) -> tuple[dict, dict, dict]:
        """(metrics, intervals {name: [low, high]}, floors) of the row's samples x (float64, CPU)."""
        ref = self.reference(x.shape[0])
        feats = self.features(x)
        metrics, intervals = _measure(self.settings, ref, feats)
        return metrics, intervals, self._floors(x.shape[0])

    def _floors(self, n: int) -> dict:
        """The metrics of a second exact batch of n samples (analytic problems; none for models)."""
        if not self.problem.exact or self.settings.reference is not None:
            return {}
        if self._floor is None or self._floor_n != n:
            exact = self.problem.exact_samples(n, EXACT_SEED_FLOOR)
            self._floor = _measure(self.settings, self.reference(n), self.features(exact), bootstrap=False)[0]
            self._floor_n = n
        return dict(self._floor)


def _measure(s: FeatureSettings, ref: FeatureReference, feats: Tensor, bootstrap: bool = True) -> tuple[dict, dict]:
    metrics: dict = {}
    intervals: dict = {}
    boot = s.bootstrap if bootstrap else 0

    def interval(name, statistic, *samples, method="percentile"):
        if boot and feats.shape[0] > 1:
            iv = bootstrap_interval(statistic, *samples, n_resamples=boot, seed=0, method=method)
            # the value is ≥ 0: a basic interval below 0 (an estimate within its own sample-size bias of 0) is cut
            # there at both ends, so that low ≤ high (it was [0, −0.004] for FID 0 against a sample of its own law)
            intervals[name] = [max(iv.low, 0.0), max(iv.high, 0.0)]

    if "fid" in s.metrics:
        def fid(f):  # the reference's square root computed once for the metric and every resample
            return frechet_distance_rows(f, ref.stats)
        metrics["fid"] = fid(feats)
        interval("fid", fid, feats, method="basic")
    if "kid" in s.metrics:
        ref.require_rows("kid")
        k = kid(ref.features, feats)
        metrics["kid"], metrics["kid_std"] = k.mean, k.std if math.isfinite(k.std) else None  # (one subset: none)
    if "prdc" in s.metrics:
        ref.require_rows("prdc")
        inside = (ball_hits(ref.features, feats, k=_K_PRECISION)[0] > 0).double().cpu().numpy()
        counts, covered = ball_hits(ref.features, feats, k=_K_DENSITY)
        counts = counts.double().cpu().numpy()
        # recall: the reference rows inside the generated rows' balls (the roles of ball_hits swapped)
        recall = float((ball_hits(feats, ref.features, k=_K_PRECISION)[0] > 0).double().mean())
        metrics.update(precision=float(inside.mean()), recall=recall, density=float(counts.mean()) / _K_DENSITY,
                       coverage=float(covered.double().mean()))
        interval("precision", np.mean, inside)
        interval("density", lambda c: float(c.mean()) / _K_DENSITY, counts)
    return metrics, intervals


def kid_notes(rows: list[dict]) -> list[str]:
    """One line per problem whose rows have a KID at or below zero: the unbiased estimate is then inside its own
    noise, so it does not rank those rows (the plot falls back to the next metric)."""
    by_problem: dict = {}
    for r in rows:
        v = r["metrics"].get("kid")
        if v is not None:
            by_problem.setdefault(r["problem"], []).append(v)
    return [f"kid: {sum(v <= 0 for v in vs)} of {len(vs)} rows of {p} are at or below 0: the distance is within the "
            f"unbiased estimate's noise there, so KID does not rank them; compare them by another metric, or with "
            f"more samples or a feature space that separates them" for p, vs in by_problem.items() if min(vs) <= 0]
