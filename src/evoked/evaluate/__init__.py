"""Metrics, confidence intervals and comparison reports.

``evaluate(run_dirs, out=...)`` is the API behind ``evoked evaluate``; the metric functions work on
plain arrays.
"""

from __future__ import annotations

from evoked.evaluate.bootstrap import paired_difference, percentile_ci, resampled_sums
from evoked.evaluate.category import category_accuracy
from evoked.evaluate.distribution import (
    chebyshev,
    cosine_similarity,
    distribution_metrics,
    intersection,
    kl_divergence,
)
from evoked.evaluate.metrics import ccc, mae, mse, pearson, r2, regression_metrics, spearman, va_metrics
from evoked.evaluate.report import evaluate
from evoked.runfolder import items_fingerprint, read_run, write_run

__all__ = [
    "category_accuracy",
    "ccc",
    "chebyshev",
    "cosine_similarity",
    "distribution_metrics",
    "evaluate",
    "intersection",
    "items_fingerprint",
    "kl_divergence",
    "mae",
    "mse",
    "paired_difference",
    "pearson",
    "percentile_ci",
    "r2",
    "read_run",
    "regression_metrics",
    "resampled_sums",
    "spearman",
    "va_metrics",
    "write_run",
]
