"""Gradient-boosted trees (LightGBM), one booster per target.

Fixed defaults, chosen for wide CNN features and up to tens of thousands of rows: at most 200 trees
of at most 15 leaves, learning rate 0.08, 70% of the rows per tree, 20% of the columns per split
(wide features are redundant; sampling columns is also what keeps 2,048-d fits fast), L2 penalty 1,
63 histogram bins.

Cost on a shared machine: each fit gives LightGBM the cores that are free when it starts
(`evoked.device.free_cores`), not every core (an OpenMP team on a core another job holds waits for
it at every split), and stops adding trees once `EARLY_STOPPING_ROUNDS` trees in a row did not
improve the squared error on `VALIDATION_FRACTION` of the rows it was given, held out inside the
fit: the rows it is scored on elsewhere (a CV fold's test rows) are never among them. What a fit
cost (boosters, trees, threads, seconds) is logged and kept in ``cost_``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.multioutput import MultiOutputRegressor
from sklearn.utils import check_array

from evoked.device import FIT_FREE_CORES_SAMPLE_S, free_cores

log = logging.getLogger(__name__)

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
#: Trees without improvement on the held-out training rows before a booster stops.
EARLY_STOPPING_ROUNDS = 20
#: Share of a fit's rows held out for early stopping (none below `MIN_ROWS_TO_HOLD_OUT` rows).
VALIDATION_FRACTION = 0.1
MIN_ROWS_TO_HOLD_OUT = 200


class LGBMMultiOutput(MultiOutputRegressor):
    """One LightGBM booster per target. Unlike LightGBM itself, NaN/inf features are an error:
    here a NaN means a failed image, not a missing value to route down a tree branch.

    ``early_stopping_rounds`` (None: every tree) and ``validation_fraction`` as in the module
    docstring; the held-out rows are drawn with the booster's ``random_state``."""

    def __init__(
        self,
        estimator: Any,
        *,
        n_jobs: int | None = None,
        early_stopping_rounds: int | None = EARLY_STOPPING_ROUNDS,
        validation_fraction: float = VALIDATION_FRACTION,
    ):
        super().__init__(estimator, n_jobs=n_jobs)
        self.early_stopping_rounds = early_stopping_rounds
        self.validation_fraction = validation_fraction

    def _held_out(self, n: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(rows to grow trees on, rows to stop on or None), of the n rows given to `fit`."""
        if not self.early_stopping_rounds or n < MIN_ROWS_TO_HOLD_OUT:
            return np.arange(n), None
        rng = np.random.default_rng(self.estimator.get_params().get("random_state") or 0)
        order = rng.permutation(n)
        k = max(1, int(round(n * self.validation_fraction)))
        return np.sort(order[k:]), np.sort(order[:k])

    def fit(self, X: np.ndarray, y: np.ndarray, **fit_params: Any) -> LGBMMultiOutput:
        import lightgbm

        X = check_array(X, ensure_all_finite=True, dtype=[np.float32, np.float64])
        Y = np.asarray(y, dtype=np.float64).reshape(len(X), -1)
        t0 = time.perf_counter()
        threads = self.estimator.get_params().get("n_jobs")
        if threads is None or threads < 1:
            threads = free_cores(FIT_FREE_CORES_SAMPLE_S)
        grow, stop = self._held_out(len(X))
        self.estimators_ = []
        for t in range(Y.shape[1]):
            booster = clone(self.estimator).set_params(n_jobs=threads)
            if stop is None:
                booster.fit(X, Y[:, t], **fit_params)
            else:
                booster.fit(
                    X[grow],
                    Y[grow, t],
                    **_eval_rows(booster, X[stop], Y[stop, t]),
                    callbacks=[lightgbm.early_stopping(self.early_stopping_rounds, verbose=False)],
                    **fit_params,
                )
            self.estimators_.append(booster)
        self.n_features_in_ = X.shape[1]
        trees = [int(b.booster_.num_trees()) for b in self.estimators_]
        self.cost_ = {
            "boosters": len(trees),
            "trees": trees,
            "threads": int(threads),
            "held_out_rows": 0 if stop is None else len(stop),
            "seconds": round(time.perf_counter() - t0, 2),
        }
        log.info(
            "lgbm: %d booster(s), %s trees (early stopping on %d of the %d training rows), %d thread(s), %.1f s",
            len(trees), "/".join(map(str, trees)), self.cost_["held_out_rows"], len(X), threads,
            self.cost_["seconds"],
        )  # fmt: skip
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        check_array(X, ensure_all_finite=True)
        return super().predict(X)


def _eval_rows(booster: Any, X: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """The rows early stopping watches, as this LightGBM takes them (``eval_X``/``eval_y`` from 4.7,
    which deprecates ``eval_set``)."""
    import inspect

    if "eval_X" in inspect.signature(booster.fit).parameters:
        return {"eval_X": (X,), "eval_y": (y,)}
    return {"eval_set": [(X, y)]}


def lgbm(seed: int = 0, n_jobs: int | None = None, **params: Any) -> LGBMMultiOutput:
    """`n_jobs`: LightGBM threads; None (default): the cores free when each fit starts."""
    from lightgbm import LGBMRegressor

    kw = {**LGBM_DEFAULTS, **params}
    booster = LGBMRegressor(verbose=-1, random_state=seed, n_jobs=n_jobs, **kw)
    return LGBMMultiOutput(booster)
