"""Feature transforms that run inside the saved pipeline, before standardisation.

Class probabilities (``resnet50/probs``, CLIP ``scene``) are heavy-tailed: most classes are ~0 and
a few are large, so after standardisation a rare class becomes a 40-sigma outlier and a linear
model extrapolates wildly (on Emotion6 with MobileNetV2, ridge on ``probs`` gave valence r 0.38;
on ``log(p + 1e-4)`` 0.69). `LogColumns` takes that log on the probability columns only.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from evoked.errors import ConfigError

#: Output names that hold probabilities (log-transformed by default by the runner).
PROBABILITY_OUTPUTS = ("probs", "scene")
#: log(p + LOG_EPS): keeps p = 0 finite.
LOG_EPS = 1e-4


def log_probabilities(p: np.ndarray, eps: float = LOG_EPS) -> np.ndarray:
    return np.log(np.clip(p, 0, None) + eps)


def probability_features(features: list[str]) -> list[str]:
    """The features among `features` that are probability outputs."""
    return [f for f in features if f.split("/")[-1] in PROBABILITY_OUTPUTS]


def check_probabilities(X: np.ndarray, ranges: tuple[tuple[int, int], ...], features: list[str]) -> None:
    """A clear error when the columns to be log-transformed hold negative (finite) values."""
    for start, stop in ranges:
        block = X[:, start:stop]
        if (block[np.isfinite(block)] < 0).any():
            raise ConfigError(
                f"{', '.join(features)}: negative values, so not probabilities; pass --no-log-probs"
            )


def probability_ranges(features: list[str], dims: dict[str, int]) -> tuple[tuple[int, int], ...]:
    """Column ranges [start, stop) of the probability outputs in the concatenated feature vector."""
    out, start = [], 0
    for f in features:
        stop = start + int(dims[f])
        if f.split("/")[-1] in PROBABILITY_OUTPUTS:
            out.append((start, stop))
        start = stop
    return tuple(out)


class LogColumns(TransformerMixin, BaseEstimator):
    """``log(x + eps)`` on the columns in `ranges` ((start, stop) pairs); other columns unchanged."""

    def __init__(self, ranges: tuple[tuple[int, int], ...] = (), eps: float = LOG_EPS):
        self.ranges = ranges
        self.eps = eps

    def _mask(self, d: int) -> np.ndarray:
        mask = np.zeros(d, dtype=bool)
        for start, stop in self.ranges:
            if not 0 <= start < stop <= d:
                raise ValueError(f"column range ({start}, {stop}) is outside the {d} features")
            mask[start:stop] = True
        return mask

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> LogColumns:
        X = validate_data(self, X, dtype=[np.float64, np.float32])
        self.mask_ = self._mask(X.shape[1])
        if self.mask_.any() and (X[:, self.mask_] < 0).any():
            raise ValueError(
                "log-transformed columns have negative values, so they are not probabilities; "
                "turn the transform off (--no-log-probs)"
            )
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "mask_")
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        out = np.array(X, copy=True)
        cols = out[:, self.mask_]
        out[:, self.mask_] = log_probabilities(cols, self.eps)
        return out
