"""Label distribution learning (LDL) on cached features: models that predict a distribution over
the dataset's categories (``evoked regress --target distribution``).

Every model takes Y of shape (n, K) (rows sum to 1) and predicts (n, K) distributions:

- ``softmax``: a multinomial logistic (softmax) model trained on the soft labels, minimising the
  mean KL(true || predicted) (cross-entropy with soft targets) plus an L2 penalty; the penalty is
  chosen from `SOFTMAX_ALPHAS` by 3-fold KL on the fit's own training rows;
- ``knn``: AA-kNN (Geng 2016), the uniform average of the k nearest neighbours' distributions,
  with the project's FAISS cosine k-NN (`evoked.regress.knn`) and k by leave-one-out KL;
- ``mlp`` / ``mlp-kim``: the torch MLP of `evoked.regress.mlp` with a softmax head and a KL loss
  (early stopping on the validation KL);
- ``mean``: the training rows' mean distribution for every item, the reference system.

`DistributionVA` turns a fitted distribution model into a VA regressor through a lexicon (the
expected VA of the predicted distribution): stage 1 of two-stage with ``--stage1-target
distribution``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, MultiOutputMixin, RegressorMixin, clone
from sklearn.model_selection import KFold
from sklearn.utils.validation import check_is_fitted, validate_data

from evoked.evaluate.distribution import EPS, kl_divergence
from evoked.regress.knn import FaissKNNRegressor
from evoked.regress.mlp import KIM_HIDDEN, TorchMLPRegressor

log = logging.getLogger(__name__)

#: L2 penalties (per item, on standardised features) tried by the softmax model.
#: (Weaker penalties than 1e-2 cost many L-BFGS iterations and lost on Emotion6 photos' features.)
SOFTMAX_ALPHAS = (1e-2, 1e-1, 1.0, 10.0, 100.0)
#: Folds of the training rows on which the softmax model chooses its penalty.
SOFTMAX_CV = 3


def _as_distributions(Y: np.ndarray) -> np.ndarray:
    Y = np.clip(np.asarray(Y, dtype=np.float64), 0.0, None)
    return Y / np.maximum(Y.sum(axis=1, keepdims=True), 1e-12)


def softmax(Z: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large logits."""
    Z = Z - Z.max(axis=1, keepdims=True)
    E = np.exp(Z)
    return E / E.sum(axis=1, keepdims=True)


def mean_kl(Y: np.ndarray, P: np.ndarray) -> float:
    """Mean KL(Y || P) over rows (the loss every choice here minimises)."""
    return float(kl_divergence(Y, P).mean())


class SoftmaxDistribution(MultiOutputMixin, RegressorMixin, BaseEstimator):
    """Multinomial (softmax) regression on soft labels: p(x) = softmax(x W + b).

    Minimises mean_i KL(y_i || p(x_i)) + alpha / 2 * |W|^2 with L-BFGS. With several `alphas`,
    alpha is chosen by `cv`-fold mean KL on the training rows of the fit (never the rows it is
    scored on), then the model is refitted on all of them.
    """

    def __init__(
        self,
        alphas: Sequence[float] = SOFTMAX_ALPHAS,
        cv: int = SOFTMAX_CV,
        max_iter: int = 300,
        tol: float = 1e-5,
        random_state: int = 0,
    ):
        self.alphas = alphas
        self.cv = cv
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state

    def _fit_one(self, X: np.ndarray, Y: np.ndarray, alpha: float, start: np.ndarray | None) -> np.ndarray:
        from scipy.optimize import minimize

        n, d = X.shape
        K = Y.shape[1]
        # The two products with X dominate and are memory-bound: float32 halves them; the loss,
        # the weights and the optimiser stay in float64.
        Xb = np.hstack([X, np.ones((n, 1))]).astype(np.float32)
        entropy = float((Y * np.log(np.clip(Y, EPS, None))).sum() / n)

        def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
            W = w.reshape(d + 1, K)
            Z = (Xb @ W.astype(np.float32)).astype(np.float64)
            Z -= Z.max(axis=1, keepdims=True)
            logp = Z - np.log(np.exp(Z).sum(axis=1, keepdims=True))
            penalty = 0.5 * alpha * float((W[:-1] ** 2).sum())
            value = entropy - float((Y * logp).sum() / n) + penalty  # mean KL + penalty
            grad = (Xb.T @ (np.exp(logp) - Y).astype(np.float32)).astype(np.float64) / n
            grad[:-1] += alpha * W[:-1]
            return value, grad.ravel()

        w0 = np.zeros((d + 1) * K) if start is None else start
        res = minimize(loss, w0, jac=True, method="L-BFGS-B",
                       options={"maxiter": int(self.max_iter), "gtol": float(self.tol)})  # fmt: skip
        return res.x

    def _choose_alpha(self, X: np.ndarray, Y: np.ndarray) -> tuple[float, dict[float, float]]:
        alphas = sorted(float(a) for a in self.alphas)
        if len(alphas) == 1 or len(X) < 2 * max(2, int(self.cv)):
            return alphas[-1], {}
        scores = dict.fromkeys(alphas, 0.0)
        folds = KFold(int(self.cv), shuffle=True, random_state=self.random_state).split(X)
        for train, held in folds:
            start = None
            for a in reversed(alphas):  # strongest penalty first; each fit warm-starts the next
                start = self._fit_one(X[train], Y[train], a, start)
                W = start.reshape(X.shape[1] + 1, Y.shape[1])
                scores[a] += mean_kl(Y[held], softmax(X[held] @ W[:-1] + W[-1])) / int(self.cv)
        best = min(alphas, key=lambda a: (scores[a], -a))
        return best, scores

    def fit(self, X: np.ndarray, Y: np.ndarray) -> SoftmaxDistribution:
        X, Y = validate_data(self, X, Y, multi_output=True, y_numeric=True)
        Y = _as_distributions(Y.reshape(len(Y), -1))
        self.alpha_, self.cv_kl_ = self._choose_alpha(X, Y)
        W = self._fit_one(X, Y, self.alpha_, None).reshape(X.shape[1] + 1, Y.shape[1])
        self.coef_, self.intercept_ = W[:-1], W[-1]
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "coef_")
        X = validate_data(self, X, reset=False)
        return softmax(X @ self.coef_ + self.intercept_)


class DistributionKNN(FaissKNNRegressor):
    """AA-kNN: the average of the k nearest (cosine) training items' distributions.

    The FAISS k-NN of `evoked.regress.knn` with uniform weights by default (Geng's AA-kNN); k is
    chosen by leave-one-out mean KL on the training rows when ``n_neighbors="auto"``.
    """

    def __init__(
        self,
        n_neighbors: int | str = "auto",
        weights: str = "uniform",
        memory_budget: int | str = "2GB",
        random_state: int = 0,
    ):
        super().__init__(n_neighbors, weights, memory_budget, random_state)

    def _loo_error(self, pred: np.ndarray, truth: np.ndarray) -> float:
        return mean_kl(truth, pred)


class MLPDistribution(TorchMLPRegressor):
    """The torch MLP of `evoked.regress.mlp` with a softmax head, trained on the mean KL (soft
    cross-entropy); early stopping watches the validation KL. Predicts (n, K) distributions."""

    def _target_scaling(self, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros(Y.shape[1]), np.ones(Y.shape[1])  # distributions are learnt as they are

    def _loss(self, pred, target, weight):
        import torch

        return -(target * torch.log_softmax(pred, dim=1)).sum(dim=1).mean()

    def _validation_loss(self, pred, target) -> float:
        return float(self._loss(pred, target, None))

    def _output(self, Z: np.ndarray) -> np.ndarray:
        return softmax(Z)


class MeanDistribution(MultiOutputMixin, RegressorMixin, BaseEstimator):
    """The reference system: the mean distribution of the training rows, for every item."""

    def fit(self, X: np.ndarray, Y: np.ndarray) -> MeanDistribution:
        X, Y = validate_data(self, X, Y, multi_output=True, y_numeric=True)
        self.mean_ = _as_distributions(Y.reshape(len(Y), -1)).mean(axis=0)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "mean_")
        X = validate_data(self, X, reset=False)
        return np.tile(self.mean_, (len(X), 1))


class DistributionVA(MultiOutputMixin, RegressorMixin, BaseEstimator):
    """A distribution model read as a VA regressor: the expected VA, sum_k p_k VA_k, of its
    predicted distribution. `va_table` (K, 2) is the lexicon's VA of each category."""

    def __init__(self, model: Any = None, va_table: Any = None):
        self.model = model
        self.va_table = va_table

    def fit(self, X: np.ndarray, Y: np.ndarray) -> DistributionVA:
        self.model_ = clone(self.model).fit(X, Y)
        self.n_features_in_ = getattr(self.model_, "n_features_in_", np.asarray(X).shape[1])
        return self

    def predict_distribution(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "model_")
        return self.model_.predict(X)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return _as_distributions(self.predict_distribution(X)) @ np.asarray(self.va_table, dtype=np.float64)


def as_va_model(estimator: Any, target: dict, what: str) -> DistributionVA:
    """A saved distribution model (run.json ``target``) as a VA regressor, through the lexicon the
    run recorded (`evoked predict`, `evoked serve`)."""
    from evoked.errors import ConfigError

    if target.get("va_table") is None:
        raise ConfigError(
            f"{what} predicts label distributions and its run has no lexicon, so it gives no VA; rerun "
            "`evoked regress --target distribution` with --lexicon (e.g. --lexicon nrc)"
        )
    out = DistributionVA(estimator, np.asarray(target["va_table"], dtype=np.float64))
    out.model_ = estimator  # already fitted
    out.n_features_in_ = getattr(estimator, "n_features_in_", None)
    return out


# --------------------------------------------------------------------------------- the factories


def softmax_model(seed: int = 0, **params: Any) -> SoftmaxDistribution:
    return SoftmaxDistribution(random_state=seed, **params)


def knn(seed: int = 0, **params: Any) -> DistributionKNN:
    return DistributionKNN(random_state=seed, **params)


def mlp(seed: int = 0, **params: Any) -> MLPDistribution:
    return MLPDistribution(random_state=seed, **params)


def mlp_kim(seed: int = 0, **params: Any) -> MLPDistribution:
    params.setdefault("hidden_layer_sizes", KIM_HIDDEN)
    return MLPDistribution(random_state=seed, **params)


def mean(seed: int = 0, **params: Any) -> MeanDistribution:
    return MeanDistribution(**params)
