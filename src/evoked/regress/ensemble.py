"""The mean of several registered regressors: different model families err differently.

``ensemble`` averages ridge (linear), svr (RBF kernel), knn (local) and mlp-kim (neural network)
fitted on the same standardised features. The members are fixed, not chosen per data set, and each
keeps its own inner model selection on the training data only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, MultiOutputMixin, RegressorMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from evoked.regress.registry import make_regressor

ENSEMBLE_MEMBERS = ("ridge", "svr", "knn", "mlp-kim")


class MeanRegressor(MultiOutputMixin, RegressorMixin, BaseEstimator):
    """Fit each registered model in `members` and predict the mean of their predictions.

    `member_params` overrides a member's defaults, e.g. ``{"mlp-kim": {"n_ensemble": 5}}``.
    """

    def __init__(
        self,
        members: tuple[str, ...] = ENSEMBLE_MEMBERS,
        member_params: dict[str, dict] | None = None,
        random_state: int = 0,
    ):
        self.members = members
        self.member_params = member_params
        self.random_state = random_state

    def fit(self, X: np.ndarray, y: np.ndarray, aux: np.ndarray | None = None) -> MeanRegressor:
        """`aux` (auxiliary targets, see `TorchMLPRegressor`) goes to the members that learn them."""
        from evoked.regress.describe import accepts_aux

        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True, dtype=[np.float32, np.float64])
        if not self.members:
            raise ValueError("members is empty; name at least one registered regressor")
        unknown = set(self.member_params or {}) - set(self.members)
        if unknown:
            raise ValueError(f"member_params for {sorted(unknown)}, which are not members {self.members}")
        self.estimators_ = []
        for m in self.members:
            est = make_regressor(m, seed=self.random_state, **(self.member_params or {}).get(m, {}))
            kw = {"aux": aux} if aux is not None and accepts_aux(est) else {}
            self.estimators_.append(est.fit(X, y, **kw))
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "estimators_")
        X = validate_data(self, X, reset=False, dtype=[np.float32, np.float64])
        return np.mean([np.asarray(e.predict(X), dtype=np.float64) for e in self.estimators_], axis=0)


def ensemble(seed: int = 0, **params: Any) -> MeanRegressor:
    return MeanRegressor(random_state=seed, **params)
