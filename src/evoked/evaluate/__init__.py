"""Metrics, confidence intervals and comparison reports.

``evaluate(run_dirs, out=...)`` is the API behind ``evoked evaluate``; the metric functions work on
plain arrays.
"""

from evoked import lazy_exports

# scipy and matplotlib load when a name is first used, not with the package.
__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "evoked.evaluate.bootstrap": ("paired_difference", "percentile_ci", "resampled_sums"),
        "evoked.evaluate.category": ("category_accuracy",),
        "evoked.evaluate.distribution": (
            "canberra",
            "chebyshev",
            "clark",
            "cosine_similarity",
            "distribution_metrics",
            "intersection",
            "kl_divergence",
        ),
        "evoked.evaluate.metrics": (
            "ccc",
            "mae",
            "mse",
            "pearson",
            "r2",
            "regression_metrics",
            "spearman",
            "va_metrics",
        ),
        "evoked.evaluate.report": ("evaluate",),
        "evoked.runfolder": ("items_fingerprint", "read_run", "write_run"),
    },
)
