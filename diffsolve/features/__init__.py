r"""Feature-space sample-quality metrics as the papers compute them (docs/math.md §24).

- :mod:`.stats`: streaming :class:`FeatureStats` (the ``mu``/``sigma`` ``.npz`` of EDM and ADM), FID,
  KID, precision / recall, density / coverage and the percentile bootstrap;
- :mod:`.extract`: :func:`features_from`, a batch → features callable (``"pixels"``,
  ``"inception[:path]"``, ``"package.module:factory"``, ``"file.py:factory"``);
- :mod:`.reference`: :class:`FeatureReference`, the features of a reference dataset (or published
  statistics), computed once and cached.
"""
from .extract import INCEPTION_WEIGHTS, features_from
from .reference import FeatureReference
from .stats import (KID, DensityCoverage, FeatureStats, Interval, PrecisionRecall, ball_hits, bootstrap_interval,
                    density_coverage, frechet_distance, frechet_distance_rows, kid, knn_radii, precision_recall,
                    sqrtm_psd)

__all__ = ["FeatureStats", "sqrtm_psd", "frechet_distance", "frechet_distance_rows", "KID", "kid", "PrecisionRecall", "knn_radii",
           "precision_recall", "DensityCoverage", "density_coverage", "ball_hits", "features_from", "Interval",
           "bootstrap_interval", "INCEPTION_WEIGHTS", "FeatureReference"]
