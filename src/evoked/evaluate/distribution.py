"""Metrics between true and predicted label distributions (LDL), over (n, K) arrays.

The six measures of label distribution learning as Geng (2016, "Label Distribution Learning", IEEE
TKDE) and the PyLDL library define them: four distances (Chebyshev, Clark, Canberra, KL; lower is
better) and two similarities (cosine, intersection; higher is better). With t the true and p the
predicted distribution of an item:

- Chebyshev ``max_k |t_k - p_k|``; Clark ``sqrt(sum_k (t_k - p_k)^2 / (t_k + p_k)^2)``;
- Canberra ``sum_k |t_k - p_k| / (t_k + p_k)``; KL ``sum_k t_k ln(t_k / p_k)``;
- cosine ``sum_k t_k p_k / (|t| |p|)``; intersection ``sum_k min(t_k, p_k)``.

Every function returns one value per row (item); `distribution_metrics` averages them. Inputs are
clipped to ``[eps, inf)`` and each row is renormalised to sum to 1 first, so that a zero probability
gives a finite KL divergence and unnormalised counts are accepted. A row with any NaN gives NaN.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

#: Clipping floor for probabilities. With 1e-8 a predicted zero where the truth has mass p costs
#: p * log(p / 1e-8), about 18.4 * p nats: large, but finite.
EPS = 1e-8

#: Names of the per-item distribution metrics (Geng's order), and whether higher is better.
DISTRIBUTION_METRICS = {
    "chebyshev": False,
    "clark": False,
    "canberra": False,
    "kl": False,
    "cosine": True,
    "intersection": True,
}
#: How reports name them.
DISTRIBUTION_LABELS = {
    "chebyshev": "Chebyshev",
    "clark": "Clark",
    "canberra": "Canberra",
    "kl": "KL",
    "cosine": "cosine",
    "intersection": "intersection",
}


def _prepare(p: np.ndarray, eps: float) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=np.float64), eps, None)
    return q / q.sum(axis=1, keepdims=True)


def _pair(p_true: ArrayLike, p_pred: ArrayLike, eps: float = EPS) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(p_true, dtype=np.float64)
    p = np.asarray(p_pred, dtype=np.float64)
    if t.ndim != 2 or t.shape != p.shape:
        raise ValueError(f"p_true has shape {t.shape}, p_pred {p.shape}; both must be (n, K)")
    return _prepare(t, eps), _prepare(p, eps)


def kl_divergence(p_true: ArrayLike, p_pred: ArrayLike, eps: float = EPS) -> np.ndarray:
    """KL(p_true || p_pred) in nats per row, after clipping to `eps` and renormalising."""
    t, p = _pair(p_true, p_pred, eps)
    return (t * np.log(t / p)).sum(axis=1)


def chebyshev(p_true: ArrayLike, p_pred: ArrayLike, eps: float = EPS) -> np.ndarray:
    """Largest absolute difference between the two distributions, per row."""
    t, p = _pair(p_true, p_pred, eps)
    return np.abs(t - p).max(axis=1)


def clark(p_true: ArrayLike, p_pred: ArrayLike, eps: float = EPS) -> np.ndarray:
    """Clark distance, sqrt(sum_k (t_k - p_k)^2 / (t_k + p_k)^2), per row (0 = identical)."""
    t, p = _pair(p_true, p_pred, eps)
    return np.sqrt((((t - p) / (t + p)) ** 2).sum(axis=1))


def canberra(p_true: ArrayLike, p_pred: ArrayLike, eps: float = EPS) -> np.ndarray:
    """Canberra distance, sum_k |t_k - p_k| / (t_k + p_k), per row (0 = identical)."""
    t, p = _pair(p_true, p_pred, eps)
    return (np.abs(t - p) / (t + p)).sum(axis=1)


def cosine_similarity(p_true: ArrayLike, p_pred: ArrayLike, eps: float = EPS) -> np.ndarray:
    """Cosine of the angle between the two probability vectors, per row (1 = same shape)."""
    t, p = _pair(p_true, p_pred, eps)
    return (t * p).sum(axis=1) / (np.linalg.norm(t, axis=1) * np.linalg.norm(p, axis=1))


def intersection(p_true: ArrayLike, p_pred: ArrayLike, eps: float = EPS) -> np.ndarray:
    """Histogram intersection, sum_k min(t_k, p_k), per row (1 = identical, 0 = disjoint)."""
    t, p = _pair(p_true, p_pred, eps)
    return np.minimum(t, p).sum(axis=1)


PER_ITEM = {
    "chebyshev": chebyshev,
    "clark": clark,
    "canberra": canberra,
    "kl": kl_divergence,
    "cosine": cosine_similarity,
    "intersection": intersection,
}


def distribution_values(p_true: ArrayLike, p_pred: ArrayLike, eps: float = EPS) -> dict[str, np.ndarray]:
    """Every per-item distribution metric: name -> (n,) values."""
    return {name: fn(p_true, p_pred, eps) for name, fn in PER_ITEM.items()}


def distribution_metrics(p_true: ArrayLike, p_pred: ArrayLike, eps: float = EPS) -> dict[str, float]:
    """The mean of each of the six measures over the rows without NaN, and n."""
    t = np.asarray(p_true, dtype=np.float64)
    p = np.asarray(p_pred, dtype=np.float64)
    keep = ~(np.isnan(t).any(axis=1) | np.isnan(p).any(axis=1))
    values = distribution_values(t[keep], p[keep], eps)
    out: dict[str, float] = {"n": int(keep.sum())}
    out.update({k: float(v.mean()) if v.size else float("nan") for k, v in values.items()})
    return out
