"""Bootstrap confidence intervals and paired tests, vectorised over resamples.

A resample of n items is a row of counts (how often each item was drawn); every metric used in a
report is a function of a few weighted sums over items (sum w, sum w*t, sum w*t*p, ...), so one
matrix product ``counts @ columns`` gives the sums of every system and metric for all resamples at
once. The same seed gives the same resamples, so the CIs of all systems in one report come from the
same resampled item sets, and the difference of two systems is paired resample by resample.

Intervals are percentile intervals (2.5th and 97.5th percentiles for 95%). The two-sided p-value of a
paired difference is ``2 * min(#(d* <= 0) + 1, #(d* >= 0) + 1) / (B + 1)`` (capped at 1) over the
bootstrap differences d*: the smallest level at which the percentile interval still excludes 0.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike

from evoked.errors import ConfigError

#: Columns of `va_columns`, in order.
VA_COLUMNS = ("n", "t", "p", "tt", "pp", "tp", "se", "ae")

#: Metrics that `va_from_sums` returns.
VA_STATS = ("mse", "rmse", "mae", "r", "ccc", "r2")

#: The most resamples a report may ask for: every system keeps a few sums per resample and metric,
#: and beyond this the intervals change less than their printed digits.
MAX_RESAMPLES = 100_000

# Cells of one counts block (rows x items); bounds memory (32 MB of float64) for large sets.
_BLOCK_CELLS = 4_000_000


def check_resamples(value: object) -> int:
    """`value` as a number of bootstrap resamples (0..`MAX_RESAMPLES`), else a `ConfigError` naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ConfigError(
            f"--bootstrap {value!r} must be a whole number >= 0 (1000 is usual; 0 turns CIs off)"
        )
    if value > MAX_RESAMPLES:
        raise ConfigError(
            f"--bootstrap {value:,} is more resamples than evoked takes (at most {MAX_RESAMPLES:,}: each one "
            "keeps sums for every system and metric in memory); 1000 is usual, 10000 for p-values near 0.001"
        )
    return int(value)


def resample_counts(n: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(resamples, n) float64 counts: row b says how often each item is drawn in resample b."""
    idx = rng.integers(0, n, size=(resamples, n))
    idx += np.arange(resamples)[:, None] * n
    return np.bincount(idx.ravel(), minlength=resamples * n).reshape(resamples, n).astype(np.float64)


def resampled_sums(
    columns: np.ndarray,
    resamples: int = 1000,
    seed: int = 0,
    on_progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """(resamples, k) weighted column sums, one row per bootstrap resample of the n rows of `columns`.

    The resamples depend only on n, `resamples` and `seed`: the same call on other columns of the same
    items uses the same resamples. `on_progress(done)` is called after each block of resamples.
    """
    x = np.asarray(columns, dtype=np.float64)
    n = x.shape[0]
    out = np.empty((resamples, x.shape[1]))
    if n == 0:
        out[:] = 0.0
        return out
    rng = np.random.default_rng(seed)
    block = max(1, _BLOCK_CELLS // n)
    for start in range(0, resamples, block):
        stop = min(resamples, start + block)
        out[start:stop] = resample_counts(n, stop - start, rng) @ x
        if on_progress is not None:
            on_progress(stop)
    return out


def va_columns(y_true: ArrayLike, y_pred: ArrayLike) -> np.ndarray:
    """(n, 8) columns whose sums give MSE, MAE, Pearson r, CCC and R^2 of one dimension.

    Rows where either side is NaN get zero weight. Both sides are shifted by the mean truth first
    (every metric here is unchanged by a common shift) to keep the moment sums well conditioned.
    """
    t = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(y_pred, dtype=np.float64).ravel()
    m = ~(np.isnan(t) | np.isnan(p))
    shift = t[m].mean() if m.any() else 0.0
    t = np.where(m, t - shift, 0.0)
    p = np.where(m, p - shift, 0.0)
    w = m.astype(np.float64)
    return np.stack([w, t, p, t * t, p * p, t * p, (t - p) ** 2, np.abs(t - p)], axis=1)


def va_from_sums(sums: np.ndarray) -> dict[str, np.ndarray]:
    """MSE, RMSE, MAE, Pearson r, CCC and R^2 (population moments) from `va_columns` sums (..., 8)."""
    s = np.asarray(sums, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        n = s[..., 0]
        mt, mp = s[..., 1] / n, s[..., 2] / n
        vt = np.maximum(s[..., 3] / n - mt * mt, 0.0)
        vp = np.maximum(s[..., 4] / n - mp * mp, 0.0)
        cov = s[..., 5] / n - mt * mp
        mse = s[..., 6] / n
        denom = vt * vp
        r = np.where(denom > 1e-24, cov / np.sqrt(denom), np.nan)
        ccc_den = vt + vp + (mt - mp) ** 2
        ccc = np.where(ccc_den > 0, 2 * cov / ccc_den, np.nan)
        r2 = np.where(vt > 0, 1 - mse / vt, np.nan)
        return {
            "mse": mse,
            "rmse": np.sqrt(mse),
            "mae": s[..., 7] / n,
            "r": np.clip(r, -1.0, 1.0),
            "ccc": ccc,
            "r2": r2,
        }


def mean_columns(values: ArrayLike, mask: ArrayLike | None = None) -> np.ndarray:
    """(n, 2) columns [weight, weight * value] whose sums give the mean of `values` over `mask`."""
    v = np.asarray(values, dtype=np.float64).ravel()
    m = ~np.isnan(v) if mask is None else (np.asarray(mask, dtype=bool).ravel() & ~np.isnan(v))
    w = m.astype(np.float64)
    return np.stack([w, np.where(m, v, 0.0)], axis=1)


def mean_from_sums(sums: np.ndarray) -> np.ndarray:
    s = np.asarray(sums, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return s[..., 1] / s[..., 0]


def percentile_ci(samples: ArrayLike, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap samples, ignoring NaN resamples (NaN when none is finite)."""
    x = np.asarray(samples, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return float("nan"), float("nan")
    a = (1 - level) / 2 * 100
    lo, hi = np.percentile(x, [a, 100 - a])
    return float(lo), float(hi)


def paired_difference(
    samples_a: ArrayLike, samples_b: ArrayLike, point_a: float, point_b: float, level: float = 0.95
) -> dict[str, float | list[float]]:
    """Paired bootstrap comparison of one metric of systems A and B on the same resamples.

    Returns the observed difference A - B, its percentile interval, and the two-sided p-value of
    "no difference" (see the module docstring); ``p`` is 1 when A and B agree on every resample.
    """
    d = np.asarray(samples_a, dtype=np.float64) - np.asarray(samples_b, dtype=np.float64)
    d = d[np.isfinite(d)]
    lo, hi = percentile_ci(d, level)
    if d.size == 0:
        p = float("nan")
    else:
        tail = min(int((d <= 0).sum()), int((d >= 0).sum())) + 1
        p = min(1.0, 2 * tail / (d.size + 1))
    return {"diff": float(point_a - point_b), "ci": [lo, hi], "p": p, "resamples": int(d.size)}
