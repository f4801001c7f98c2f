"""Two-stage learning for classical regressors: categorical data first, a few VA ratings second.

Stage 1 fits any regressor on *category-derived VA* of a large categorical set (keyword labels
through a word-norm lexicon). Those targets are coarse (one VA point per category) but plentiful.
Stage 2 adapts it with the n items that have real VA ratings:

- ``recalibrate``: per dimension, an affine map of the stage-1 prediction, y ~ a * s1(x) + b, by
  least squares (n >= 3; below that only the offset b is fitted, with a = 1). Category-derived VA
  is more extreme than ratings (joy is 8.8 in NRC; Emotion6's joy photos are rated 7.1 on
  average) and its mean differs: two numbers per dimension fix most of that and barely overfit.
- ``residual`` (default): ``recalibrate``, then a ridge regression on the features (alpha per
  target by leave-one-out, which shrinks it strongly when n is small) fitted to what the
  recalibration leaves: the part of the ratings that the categories cannot express.

With n = 0 the stage-1 predictions are used as they are. The stage-2 ridge sees the features
through stage 1's own preprocessing (standardised with the statistics of the large stage-1 set,
not of the n items).
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, MultiOutputMixin, RegressorMixin, clone
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import _num_samples, check_is_fitted, validate_data

from evoked.regress.linear import RIDGE_ALPHAS, RidgeLOO

METHODS = ("residual", "recalibrate")
MIN_AFFINE_N = 3
OptArray = np.ndarray | None


def default_stage1() -> Pipeline:
    return Pipeline([("scale", StandardScaler()), ("model", RidgeLOO(alphas=RIDGE_ALPHAS))])


def fit_affine(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column slope a and offset b of y ~ a * s + b (least squares; offset only below 3 rows)."""
    s, y = np.atleast_2d(s.T).T, np.atleast_2d(y.T).T
    a = np.ones(s.shape[1])
    if len(s) >= MIN_AFFINE_N:
        sc = s - s.mean(axis=0)
        var = (sc**2).sum(axis=0)
        ok = var > 1e-12 * len(s)
        a[ok] = (sc[:, ok] * (y[:, ok] - y[:, ok].mean(axis=0))).sum(axis=0) / var[ok]
    b = y.mean(axis=0) - a * s.mean(axis=0) if len(s) else np.zeros(s.shape[1])
    return a, b


class TwoStageRegressor(MultiOutputMixin, RegressorMixin, BaseEstimator):
    """Stage 1 on category-derived VA, stage 2 on n VA-rated items (see the module docstring).

    ``fit(X, y, X_stage1=..., y_stage1=...)``: (X, y) are the n VA-rated items (n may be 0),
    (X_stage1, y_stage1) the categorical set. Without stage-1 data, stage 1 is fitted on (X, y)
    itself. With ``prefit=True``, `stage1` is an already fitted estimator used as is (the
    low-resource curve fits stage 1 once and adapts it for many n and seeds).
    `stage1` should standardise its own input (a `build_pipeline` pipeline does); None means
    ``StandardScaler -> RidgeLOO``.
    """

    def __init__(self, stage1=None, method: str = "residual", alphas=RIDGE_ALPHAS, prefit: bool = False):
        self.stage1 = stage1
        self.method = method
        self.alphas = alphas
        self.prefit = prefit

    def fit(
        self, X: OptArray, y: OptArray, X_stage1: OptArray = None, y_stage1: OptArray = None
    ) -> TwoStageRegressor:
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r}: use one of {', '.join(METHODS)}")
        n_rated = 0 if X is None else _num_samples(X)
        if n_rated:
            X, y = validate_data(self, X, y, multi_output=True, y_numeric=True)
        if X_stage1 is not None:
            X_stage1, y_stage1 = validate_data(
                self, X_stage1, y_stage1, multi_output=True, y_numeric=True, reset=not n_rated
            )
        if self.prefit:
            check_is_fitted(self.stage1)
            self.stage1_ = self.stage1
        else:
            if X_stage1 is None:
                if not n_rated:
                    raise ValueError("TwoStageRegressor.fit: no stage-1 data and no rated items")
                X_stage1, y_stage1 = X, y
            self.stage1_ = clone(self.stage1 if self.stage1 is not None else default_stage1())
            self.stage1_.fit(X_stage1, y_stage1)
        if not n_rated and X_stage1 is None:  # prefit, nothing given: take stage 1's input width
            if not hasattr(self.stage1_, "n_features_in_"):
                raise ValueError("TwoStageRegressor.fit: cannot tell the number of features; pass X_stage1")
            self.n_features_in_ = self.stage1_.n_features_in_
        shape_from = y if n_rated else y_stage1
        self._single_output = shape_from is not None and np.asarray(shape_from).ndim == 1
        self.n_rated_ = n_rated
        self.residual_ = None
        if not n_rated:
            self.slope_, self.offset_ = np.ones(1), np.zeros(1)  # stage 1 as it is
            return self
        Y = np.asarray(y, dtype=np.float64).reshape(n_rated, -1)
        s1 = np.asarray(self.stage1_.predict(X), dtype=np.float64).reshape(n_rated, -1)
        self.slope_, self.offset_ = fit_affine(s1, Y)
        if self.method == "residual" and n_rated >= 2:
            self.transform_ = self._stage1_transform(X_stage1, X)
            resid = Y - (s1 * self.slope_ + self.offset_)
            ridge = RidgeLOO(alphas=tuple(self.alphas))
            self.residual_ = ridge.fit(self.transform_.transform(X), resid)
        return self

    def _stage1_transform(self, X_stage1, X):
        """Feature preprocessing fitted on the (large) stage-1 set: stage 1's own pipeline steps
        before its model (log, scaler, PCA) when it has them, else a scaler fitted here."""
        if isinstance(self.stage1_, Pipeline) and len(self.stage1_.steps) > 1:
            return self.stage1_[:-1]
        return StandardScaler().fit(X_stage1 if X_stage1 is not None else X)

    def predict(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "slope_")
        X = validate_data(self, X, reset=False)
        s1 = np.asarray(self.stage1_.predict(X), dtype=np.float64).reshape(len(X), -1)
        out = s1 * self.slope_ + self.offset_
        if self.residual_ is not None:
            out = out + self.residual_.predict(self.transform_.transform(X)).reshape(len(X), -1)
        return out[:, 0] if self._single_output else out
