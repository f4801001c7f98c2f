"""Regression metrics per VA dimension.

All functions take 1-D arrays of true and predicted values; `regression_metrics` computes the full
set used in tables and reports.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

DIMENSIONS = ("valence", "arousal")


def _pair(y_true: ArrayLike, y_pred: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(y_pred, dtype=np.float64).ravel()
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} values, y_pred {p.size}")
    return t, p


def mse(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    t, p = _pair(y_true, y_pred)
    return float(np.mean((t - p) ** 2))


def mae(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    t, p = _pair(y_true, y_pred)
    return float(np.mean(np.abs(t - p)))


def pearson(y_true: ArrayLike, y_pred: ArrayLike) -> tuple[float, float]:
    """Pearson r and its two-sided p-value; r is NaN when either side is constant."""
    t, p = _pair(y_true, y_pred)
    if t.size < 3 or np.ptp(t) == 0 or np.ptp(p) == 0:
        return float("nan"), float("nan")
    r, pv = stats.pearsonr(t, p)
    return float(r), float(pv)


def spearman(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    t, p = _pair(y_true, y_pred)
    if t.size < 3 or np.ptp(t) == 0 or np.ptp(p) == 0:
        return float("nan")
    return float(stats.spearmanr(t, p).statistic)


def ccc(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Lin's concordance correlation coefficient (population moments)."""
    t, p = _pair(y_true, y_pred)
    mt, mp = t.mean(), p.mean()
    vt, vp = t.var(), p.var()
    cov = ((t - mt) * (p - mp)).mean()
    denom = vt + vp + (mt - mp) ** 2
    return float(2 * cov / denom) if denom > 0 else float("nan")


def r2(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    t, p = _pair(y_true, y_pred)
    ss_tot = ((t - t.mean()) ** 2).sum()
    return float(1 - ((t - p) ** 2).sum() / ss_tot) if ss_tot > 0 else float("nan")


def regression_metrics(y_true: ArrayLike, y_pred: ArrayLike) -> dict[str, float]:
    """MSE, RMSE, MAE, Pearson r (and p), Spearman rho, CCC and R^2 of one dimension (NaN when empty)."""
    if np.asarray(y_true).size == 0:
        return {
            "n": 0,
            **dict.fromkeys(("mse", "rmse", "mae", "r", "r_p", "spearman", "ccc", "r2"), float("nan")),
        }
    r, p = pearson(y_true, y_pred)
    m = mse(y_true, y_pred)
    return {
        "n": int(np.asarray(y_true).size),
        "mse": m,
        "rmse": float(np.sqrt(m)),
        "mae": mae(y_true, y_pred),
        "r": r,
        "r_p": p,
        "spearman": spearman(y_true, y_pred),
        "ccc": ccc(y_true, y_pred),
        "r2": r2(y_true, y_pred),
    }


def va_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, dict[str, float]]:
    """`regression_metrics` for each of valence and arousal; rows with a NaN truth are left out."""
    y_true, y_pred = np.asarray(y_true, dtype=float), np.asarray(y_pred, dtype=float)
    out = {}
    for k, dim in enumerate(DIMENSIONS):
        keep = ~np.isnan(y_true[:, k]) & ~np.isnan(y_pred[:, k])
        out[dim] = regression_metrics(y_true[keep, k], y_pred[keep, k])
    return out
