"""Linear families: ordinary least squares, and ridge with alpha chosen by efficient leave-one-out.

`RidgeLOO` computes the exact leave-one-out error of ridge regression for every alpha of a grid
from one eigendecomposition, like scikit-learn's `RidgeCV` (same formula, same choice: tested to
agree), but organised so that each extra alpha costs O(n d) instead of O(n d^2):

- n > d: eigendecompose the d x d matrix Xc'Xc = V diag(l) V' and form P = Xc V. For alpha,
  the hat diagonal is h = 1/n + (P*P) @ (1/(l + alpha)), the fit is P @ (V'Xc'y / (l + alpha)),
  and the leave-one-out residual is (y - fit) / (1 - h). In memory and from a store alike this
  runs on blocks of rows (`fit_chunks`): Xc'Xc accumulated block by block, P formed per block,
  so no n x d temporary is made (a float64 copy of 20,000 x 2,048 rows cost 3 s of page faults
  on a VM, more than the products).
- n <= d: the same with the n x n matrix Xc Xc' = U diag(l) U'.

RidgeCV (scikit-learn 1.9) rebuilds an O(n d^2) product for every alpha: 60 s for 16,000 x 2,048
and 17 alphas on a 2-core machine, against about 4 s here.
The eigensolver of a large matrix runs on the cores other processes leave free
(`evoked.device.free_cores`, as LightGBM's fits): on a quiet 2-core machine two threads took a
2048 x 2048 matrix from 1.67 s to 0.89 s, but with another job holding a core two threads ran 7-13x
slower than one. A small matrix runs on one thread (watching the CPUs would cost more than it saves).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.base import BaseEstimator, MultiOutputMixin, RegressorMixin
from sklearn.linear_model import LinearRegression
from sklearn.utils.validation import check_is_fitted, validate_data

from evoked.device import FIT_FREE_CORES_SAMPLE_S, free_cores
from evoked.regress.chunks import STATS_BLOCK_BYTES, ArraySource, Moments, RowView, chunk_rows_for

#: Ridge penalties tried by leave-one-out (features are standardised, so one grid fits most sets).
RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-2, 6, 17))
#: From this size on, the eigensolver counts the free cores (0.1 s) and uses them.
EIGH_THREADED_FROM = 1024


def _eigh(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from threadpoolctl import threadpool_limits

    threads = free_cores(FIT_FREE_CORES_SAMPLE_S) if len(a) >= EIGH_THREADED_FROM else 1
    with threadpool_limits(threads, user_api="blas"):
        lam, vec = np.linalg.eigh(a)
    return np.clip(lam, 0.0, None), vec


class RidgeLOO(MultiOutputMixin, RegressorMixin, BaseEstimator):
    """Ridge regression with alpha chosen from `alphas` by exact leave-one-out squared error.

    With ``alpha_per_target`` each target (valence, arousal) gets its own alpha. Fitted attributes
    follow `RidgeCV`: ``coef_``, ``intercept_``, ``alpha_``, ``best_score_`` (negative LOO MSE),
    plus ``loo_mse_`` (n_alphas, n_targets).
    """

    #: `evoked.regress.chunks.fit_pipeline_chunks` hands ``fit_chunks`` the moments of its scaler pass
    fits_from_moments = True

    def __init__(self, alphas=RIDGE_ALPHAS, alpha_per_target: bool = True):
        self.alphas = alphas
        self.alpha_per_target = alpha_per_target

    def _alphas(self) -> np.ndarray:
        alphas = np.atleast_1d(np.asarray(self.alphas, dtype=np.float64))
        if alphas.size == 0 or (alphas <= 0).any() or not np.isfinite(alphas).all():
            raise ValueError(f"alphas must be positive and finite, got {self.alphas!r}")
        return alphas

    def fit(self, X: np.ndarray, y: np.ndarray) -> RidgeLOO:
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True, dtype=[np.float64, np.float32])
        alphas = self._alphas()
        self._single_output = y.ndim == 1
        Y = y.reshape(len(y), -1).astype(np.float64)
        n, d = X.shape
        if n > d:  # the d x d path is the chunked one, on blocks of rows: no n x d temporaries
            rows = RowView(ArraySource(X, chunk_rows_for(d, max_bytes=STATS_BLOCK_BYTES)), np.arange(n))
            return self._fit_rows(alphas, rows, Y)
        x_mean = X.mean(axis=0, dtype=np.float64)
        y_mean = Y.mean(axis=0)
        Yc = Y - y_mean
        Xc = X.astype(np.float64)
        Xc -= x_mean
        if n < 2:  # nothing to leave out: the mean predictor
            return self._finish(alphas, None, np.zeros((d, Y.shape[1])), x_mean, y_mean)
        lam, U = _eigh(Xc @ Xc.T)
        B = U.T @ Yc  # (n, t)
        self.loo_mse_ = self._loo(alphas, lam, U, B, Yc, n, shrink=True)
        best = self._best(alphas)
        coef = np.stack([Xc.T @ (U @ (B[:, t] / (lam + a))) for t, a in enumerate(best)], axis=1)
        return self._finish(alphas, self.loo_mse_, coef, x_mean, y_mean)

    def fit_chunks(self, view: RowView, Y: np.ndarray, moments: Moments | None = None) -> RidgeLOO:
        """The same fit from chunks of (standardised) rows (`evoked.regress.chunks.RowView`): the
        centred scatter and cross products of those rows (`moments`, else one pass accumulates
        them) give the coefficients of every alpha; one pass over the rows computes the exact
        leave-one-out error of every alpha chunk by chunk (the d x d path of `fit`), since each
        row's leverage and residual are not functions of the moments."""
        self._single_output = False
        return self._fit_rows(self._alphas(), view, Y, moments)

    def _fit_rows(
        self, alphas: np.ndarray, view: RowView, Y: np.ndarray, moments: Moments | None = None
    ) -> RidgeLOO:
        T = moments
        if T is None:
            T = Moments.empty(view.d, Y.shape[1])
            for r, x in view:
                T.add(x, Y[r])
        self.n_features_in_ = view.d
        if T.n < 2:
            return self._finish(alphas, None, np.zeros((view.d, Y.shape[1])), T.mean_x, T.mean_y)
        lam, V = _eigh(T.m2)
        B = V.T @ T.cxy
        V32, shift = V.astype(np.float32), (T.mean_x.astype(np.float32) @ V.astype(np.float32))[None, :]
        sse = np.zeros((len(alphas), Y.shape[1]))
        for r, x in view:
            # P only serves the alpha search, so float32 is enough; P = Xc V = X V - mean V
            P = np.asarray(x, dtype=np.float32) @ V32 - shift
            sse += self._loo(alphas, lam, P, B, Y[r] - T.mean_y, T.n, shrink=False) * len(r)
        self.loo_mse_ = sse / T.n
        best = self._best(alphas)
        coef = np.stack([V @ (B[:, t] / (lam + a)) for t, a in enumerate(best)], axis=1)
        return self._finish(alphas, self.loo_mse_, coef, T.mean_x, T.mean_y)

    def _finish(self, alphas, loo_mse, coef, x_mean, y_mean):
        t = coef.shape[1]
        if loo_mse is None:
            self.alpha_ = np.full(t, alphas[len(alphas) // 2])
            self.loo_mse_ = np.full((len(alphas), t), np.nan)
        self.coef_ = coef.T  # (t, d) like scikit-learn
        self.intercept_ = y_mean - x_mean @ coef
        if self._single_output:
            self.coef_, self.intercept_ = self.coef_[0], float(self.intercept_[0])
        self.alpha_ = self.alpha_[0] if (self._single_output or not self.alpha_per_target) else self.alpha_
        idx = [int(np.flatnonzero(alphas == a)[0]) for a in np.atleast_1d(self.alpha_)]
        scores = (
            -self.loo_mse_[idx, np.arange(len(idx))] if loo_mse is not None else np.full(len(idx), np.nan)
        )
        per_target = self.alpha_per_target and not self._single_output
        self.best_score_ = scores if per_target else float(np.mean(scores))
        return self

    @staticmethod
    def _loo(alphas, lam, basis, B, Yc, n, shrink: bool) -> np.ndarray:
        """LOO MSE per (alpha, target). `shrink`: basis is U (gram case) rather than P = X V.

        All alphas at once: two matrix products over the basis instead of two per alpha (the
        basis is the largest array here, so reading it once is what matters).
        """
        dtype = basis.dtype  # float32 for P (n > d), float64 for U (n <= d, where alphas may interpolate)
        a = np.asarray(alphas)[None, :]
        W = (lam[:, None] / (lam[:, None] + a)) if shrink else 1.0 / (lam[:, None] + a)  # (k, A)
        H = (basis * basis) @ W.astype(dtype) + 1.0 / n  # (n, A)
        t = Yc.shape[1]
        WB = (W[:, :, None] * B[:, None, :]).reshape(len(lam), -1)  # (k, A*t)
        fits = (basis @ WB.astype(dtype)).reshape(len(basis), len(alphas), t)  # n: all rows (a chunk is part)
        looe = (Yc[:, None, :] - fits) / np.maximum(1.0 - H, 1e-12)[:, :, None]
        return (looe.astype(np.float64) ** 2).mean(axis=0)

    def _best(self, alphas: np.ndarray) -> np.ndarray:
        """Chosen alpha per target (ties: the larger alpha, the simpler model)."""
        err = self.loo_mse_
        if not self.alpha_per_target:
            err = np.repeat(err.mean(axis=1, keepdims=True), err.shape[1], axis=1)
        best = []
        for t in range(err.shape[1]):
            e = err[:, t]
            best.append(alphas[np.flatnonzero(e <= e.min() * (1 + 1e-12))[-1]])
        self.alpha_ = np.asarray(best)
        return self.alpha_

    def predict(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "coef_")
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return np.asarray(X, dtype=np.float64) @ np.asarray(self.coef_).T + self.intercept_


def linear(seed: int = 0) -> LinearRegression:
    return LinearRegression()


def ridge(alphas: Sequence[float] = RIDGE_ALPHAS, seed: int = 0) -> RidgeLOO:
    return RidgeLOO(alphas=alphas)
