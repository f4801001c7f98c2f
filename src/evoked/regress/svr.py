"""RBF support-vector regression: exact `SVR` on small sets, Nystroem + ridge on large ones.

Exact kernel SVR costs O(n^2) to O(n^3) time, minutes at n = 20,000. Above `exact_max_n` training
rows (5,000 by default) the RBF kernel is approximated by `Nystroem` with `n_components` landmarks
(1,000 by default) and a ridge regression (alpha per target by leave-one-out) is fitted on that
map: a kernel ridge regression with the same RBF kernel, not the epsilon-insensitive loss.
The fitted `method_` ("exact" or "nystroem") records which one was used.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, MultiOutputMixin, RegressorMixin
from sklearn.kernel_approximation import Nystroem
from sklearn.multioutput import MultiOutputRegressor
from sklearn.svm import SVR
from sklearn.utils.validation import check_is_fitted, validate_data

from evoked.regress.linear import RIDGE_ALPHAS, RidgeLOO

EXACT_MAX_N = 5000
NYSTROEM_COMPONENTS = 1000


class RBFSVRRegressor(MultiOutputMixin, RegressorMixin, BaseEstimator):
    """Multi-output RBF regression: one exact SVR per target, or Nystroem + ridge for large n.

    Targets are standardised inside (so `C` and `epsilon` mean the same on any rating scale) and
    ``gamma="scale"`` is ``1 / (n_features * X.var())`` as in scikit-learn.
    """

    def __init__(
        self,
        C: float = 3.0,
        epsilon: float = 0.1,
        gamma: float | str = "scale",
        exact_max_n: int = EXACT_MAX_N,
        n_components: int = NYSTROEM_COMPONENTS,
        random_state: int = 0,
    ):
        self.C = C
        self.epsilon = epsilon
        self.gamma = gamma
        self.exact_max_n = exact_max_n
        self.n_components = n_components
        self.random_state = random_state

    def _gamma(self, X: np.ndarray) -> float:
        if self.gamma == "scale":
            var = float(X.var())
            return 1.0 / (X.shape[1] * var) if var > 0 else 1.0
        return float(self.gamma)

    def fit(self, X: np.ndarray, y: np.ndarray) -> RBFSVRRegressor:
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True, dtype=[np.float64, np.float32])
        self._single_output = y.ndim == 1
        Y = y.reshape(len(y), -1).astype(np.float64)
        self.y_mean_ = Y.mean(axis=0)
        self.y_scale_ = np.where(Y.std(axis=0) > 0, Y.std(axis=0), 1.0)
        Z = (Y - self.y_mean_) / self.y_scale_
        self.gamma_ = self._gamma(X)
        if len(X) <= self.exact_max_n:
            self.method_ = "exact"
            svr = SVR(kernel="rbf", C=self.C, epsilon=self.epsilon, gamma=self.gamma_, cache_size=500)
            self.model_ = MultiOutputRegressor(svr).fit(X, Z)
        else:
            self.method_ = "nystroem"
            self.nystroem_ = Nystroem(
                kernel="rbf",
                gamma=self.gamma_,
                n_components=min(self.n_components, len(X)),
                random_state=self.random_state,
            ).fit(X)
            self.model_ = RidgeLOO(alphas=RIDGE_ALPHAS).fit(self.nystroem_.transform(X), Z)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "model_")
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        if self.method_ == "nystroem":
            X = self.nystroem_.transform(X)
        Z = self.model_.predict(X).reshape(len(X), -1)
        out = Z * self.y_scale_ + self.y_mean_
        return out[:, 0] if self._single_output else out


def svr(seed: int = 0, **params: Any) -> RBFSVRRegressor:
    return RBFSVRRegressor(random_state=seed, **params)
