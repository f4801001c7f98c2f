"""Gradient-boosted trees (LightGBM), one booster per target.

Fixed defaults, chosen for wide CNN features and up to tens of thousands of rows: 200 trees of at
most 15 leaves, learning rate 0.08, 70% of the rows per tree, 20% of the columns per split (wide
features are redundant; sampling columns is also what keeps 2,048-d fits fast), L2 penalty 1,
63 histogram bins.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.multioutput import MultiOutputRegressor
from sklearn.utils import check_array

LGBM_DEFAULTS = dict(
    n_estimators=200,
    learning_rate=0.08,
    num_leaves=15,
    min_child_samples=20,
    subsample=0.7,
    subsample_freq=1,
    feature_fraction_bynode=0.2,
    reg_lambda=1.0,
    max_bin=63,
)


class LGBMMultiOutput(MultiOutputRegressor):
    """One LightGBM booster per target. Unlike LightGBM itself, NaN/inf features are an error:
    here a NaN means a failed image, not a missing value to route down a tree branch."""

    def fit(self, X: np.ndarray, y: np.ndarray, **fit_params: Any) -> LGBMMultiOutput:
        check_array(X, ensure_all_finite=True)
        return super().fit(X, y, **fit_params)

    def predict(self, X: np.ndarray) -> np.ndarray:
        check_array(X, ensure_all_finite=True)
        return super().predict(X)


def lgbm(seed: int = 0, n_jobs: int = -1, **params: Any) -> LGBMMultiOutput:
    from lightgbm import LGBMRegressor

    kw = {**LGBM_DEFAULTS, **params}
    booster = LGBMRegressor(verbose=-1, random_state=seed, n_jobs=n_jobs, **kw)
    return LGBMMultiOutput(booster)
