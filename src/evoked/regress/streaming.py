"""Regressors that stream a feature store chunk by chunk: stores larger than memory.

The in-memory runner (`evoked.regress.runner`) reads the whole feature matrix; here no stage ever
holds more than one chunk of it. What is in memory is O(d^2) statistics, one chunk of rows, and
the per-row labels (ids, split and category strings, ratings, status, fold numbers: about 330 bytes
a row, 0.3 GB per million rows, in bench/scale.py).

Three families, each a scikit-learn estimator that standardises its inputs itself, from
statistics streamed over the training rows (so a saved model is ``[log of probabilities] ->
model``, and `evoked predict` uses it like any other):

- `StreamingRidge`: ridge regression from accumulated normal equations. Per-row chunks are folded
  into float64 sufficient statistics (count, means, centred scatter X'X, X'y and y'y) with the
  pairwise update of Chan, Golub and LeVeque, which stays accurate when the means are large next to
  the spread (the naive ``X'X - n m m'`` does not). The fit is exact at any N: it equals
  ``StandardScaler -> Ridge(alpha)`` on the same rows to rounding.
  **Choosing alpha: k-fold CV on per-fold statistics**, not GCV. Each fold keeps its own d x d
  statistics (K x 8 d^2 bytes: 10 MB for d = 512, 168 MB for d = 2,048 and 5 folds). The statistics
  of "every fold but g" are a sum, and the held-out squared error of fold g is a quadratic form in
  fold g's own statistics, so the CV error is *exact* (the same number as refitting on the rows and
  scoring the held-out rows, scaler included), for every alpha at once from one eigendecomposition
  per fold: O(K d^3) per fit, independent of N (d = 2,048: about 2 s per eigendecomposition on one
  core; `--cv 5` makes 6 fits, each evaluated fold's alpha chosen over the other 4: about 30
  decompositions, a minute at d = 2,048, 3 s at d = 512).
  GCV would need only one decomposition, but it approximates leave-one-out by assuming every row has
  the same leverage, which clustered image features (near-duplicates, rare categories) violate;
  exact CV costs little more at d <= 2,048. ``cv="gcv"`` is there for wider features.
- `StreamingMLPRegressor`: the torch MLP of `evoked.regress.mlp`, trained on mini-batches drawn
  from shuffled chunks (chunk order shuffled every epoch, each chunk assembled from randomly
  chosen store blocks, rows shuffled within it), inputs standardised from streamed means and
  variances, early stopping on a bounded validation sample held in memory.
- `IndexKNNRegressor`: k-nearest-neighbour VA through a FAISS index built by
  `evoked.features.index_build.build_index_streaming` within a memory budget (exact ``flat`` on
  small sets, IVF variants on large ones, recall measured); the prediction is the
  similarity-weighted mean VA of the neighbours, as `FaissKNNRegressor` computes it.

`run_regress_streaming` is `evoked regress --stream`: the same protocols (CV folds identical to the
in-memory runner's, a named split, or fit only) and the same run folder.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted, validate_data

from evoked.errors import ConfigError
from evoked.features.index_build import DEFAULT_BUDGET, build_index_streaming, parse_bytes
from evoked.regress.knn import K_CANDIDATES, LOO_QUERIES
from evoked.regress.linear import RIDGE_ALPHAS, _eigh
from evoked.regress.mlp import TorchMLPRegressor, _build, resolve_device
from evoked.regress.transforms import log_probabilities

log = logging.getLogger(__name__)

#: A chunk of rows is about this many bytes of float32 features (rounded to whole store blocks).
CHUNK_BYTES = 64 * 2**20
#: Rows per float64 block inside a statistics update (bounds the float64 temporaries to ~32 MB).
STATS_BLOCK_BYTES = 32 * 2**20
#: Chunks of a shuffled epoch are assembled from this many randomly chosen pieces of the store.
PIECES_PER_CHUNK = 16
#: Inner folds of alpha selection where the protocol has none (a split, or fit only).
INNER_FOLDS = 5
#: Copies of the feature matrix the in-memory runner holds at once (the float32 matrix, the scaled
#: float64 copy of a fold, temporaries): used to say when it would not fit and streaming is needed.
IN_MEMORY_COPIES = 3.0

ProgressFn = Callable[[int, int, str], None]


# ------------------------------------------------------------------------------------ row hashing


def _splitmix64(x: np.ndarray) -> np.ndarray:
    z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def row_hash(rows: np.ndarray, seed: int) -> np.ndarray:
    """A 64-bit hash of each row number: the same row always lands in the same fold, whatever the
    chunking, so a streamed fit does not depend on how the store is read."""
    mixed = _splitmix64(np.asarray([int(seed) & (2**63 - 1)], dtype=np.uint64))[0]
    return _splitmix64(np.asarray(rows, dtype=np.uint64) ^ mixed)


def hash_folds(rows: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold 0..k-1 of each row, from `row_hash` (about n/k rows each)."""
    return (row_hash(rows, seed) % np.uint64(k)).astype(np.int64)


def hash_unit(rows: np.ndarray, seed: int) -> np.ndarray:
    """A uniform number in [0, 1) per row, from `row_hash`."""
    return (row_hash(rows, seed) >> np.uint64(11)).astype(np.float64) * 2.0**-53


# -------------------------------------------------------------------------------------- sources


def chunk_rows_for(d: int, block: int = 1, max_bytes: int = CHUNK_BYTES) -> int:
    """Rows of a chunk of about `max_bytes` float32 values, a multiple of `block` (store block size)."""
    rows = max(1024, max_bytes // max(4 * d, 1))
    return max(block, rows // block * block)


class ArraySource:
    """An in-memory (n, d) array served as chunks, like a store (for tests and in-memory fits)."""

    def __init__(self, X: np.ndarray, chunk_rows: int | None = None):
        self.X = X
        self.n, self.d = X.shape
        self.chunk_rows = int(chunk_rows or chunk_rows_for(self.d))
        self.block = min(self.chunk_rows, 256)

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        x = self.X[start:stop]
        return np.arange(start, stop), x if x.dtype in (np.float32, np.float64) else x.astype(np.float32)

    def ranges(self, size: int | None = None) -> list[tuple[int, int]]:
        size = size or self.chunk_rows
        return [(a, min(a + size, self.n)) for a in range(0, self.n, size)]

    def __call__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for a, b in self.ranges():
            yield self.read(a, b)

    def _shuffled_pieces(self, rng: np.random.Generator):
        """(rows, pieces) of each chunk of an epoch: pieces of whole store blocks, in random order."""
        piece = max(self.block, self.chunk_rows // PIECES_PER_CHUNK // self.block * self.block)
        pieces = self.ranges(piece)
        order = rng.permutation(len(pieces))
        per_chunk = max(1, self.chunk_rows // piece)
        for start in range(0, len(order), per_chunk):
            parts = [pieces[i] for i in order[start : start + per_chunk]]
            yield np.concatenate([np.arange(a, b) for a, b in parts]), parts

    def shuffled(self, rng: np.random.Generator) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Chunks of randomly chosen pieces (chunk order random; the batch sampler shuffles the rows
        within a chunk)."""
        for rows, _ in self._shuffled_pieces(rng):
            yield self.read_rows(rows)

    def read_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return rows, np.asarray(self.X[rows])


class StoreSource(ArraySource):
    """Features of an open `FeatureStore`, read a chunk at a time.

    Rows that are not ``ok`` or hold NaN/inf are dropped from every chunk; probability columns
    (`log_ranges`) become log(p + 1e-4) as in the in-memory pipeline (`LogColumns`).
    """

    def __init__(self, store, features: Sequence[str], *, log_ranges=(), chunk_rows: int | None = None):
        from evoked.features.store import OK

        self.names = store.resolve_features(list(features))
        self.datasets = [store.dataset(f) for f in self.names]
        self.n = len(store)
        self.d = int(sum(ds.shape[1] for ds in self.datasets))
        self.ok = store.status == OK
        self.block = store.block_size
        self.log_ranges = tuple(log_ranges)
        self.chunk_rows = int(chunk_rows or chunk_rows_for(self.d, self.block))
        if chunk_rows:
            self.chunk_rows = max(self.block, self.chunk_rows // self.block * self.block)

    def read_raw(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows [start, stop) of the features, straight into `out` (float32) when given."""
        X = np.empty((stop - start, self.d), dtype=np.float32) if out is None else out
        col = 0
        for ds in self.datasets:
            w = ds.shape[1]
            if ds.dtype == np.float32 and len(self.datasets) == 1 and X.flags.c_contiguous:
                ds.read_direct(X, np.s_[start:stop])  # no temporary copy
            else:
                X[:, col : col + w] = ds[start:stop]
            col += w
        return X

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        return self._finish(np.arange(start, stop), self.read_raw(start, stop))

    def _finish(self, rows: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        keep = self.ok[rows] & np.isfinite(X).all(axis=1)
        if not keep.all():
            rows, X = rows[keep], X[keep]
        for a, b in self.log_ranges:
            X[:, a:b] = log_probabilities(X[:, a:b])
        return rows, X

    def shuffled(self, rng: np.random.Generator) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Chunks of randomly chosen pieces of the store, read straight into one buffer (chunk order
        random; the rows of a chunk are in piece order: the batch sampler shuffles them)."""
        for rows, parts in self._shuffled_pieces(rng):
            X = np.empty((len(rows), self.d), dtype=np.float32)
            at = 0
            for a, b in parts:
                self.read_raw(a, b, X[at : at + b - a])
                at += b - a
            yield self._finish(rows, X)


# ------------------------------------------------------------------------------ streamed moments


@dataclass
class Moments:
    """Sufficient statistics of a set of rows: count, means, centred scatter of X (d x d, or its
    diagonal), centred X'y and the centred sum of squares of each target; all float64."""

    n: int
    mean_x: np.ndarray
    m2: np.ndarray
    mean_y: np.ndarray
    cxy: np.ndarray | None
    cyy: np.ndarray

    @classmethod
    def empty(cls, d: int, t: int, full: bool = True) -> Moments:
        return cls(
            0,
            np.zeros(d),
            np.zeros((d, d) if full else d),
            np.zeros(t),
            np.zeros((d, t)) if full else None,
            np.zeros(t),
        )

    @property
    def full(self) -> bool:
        return self.m2.ndim == 2

    def add(self, X: np.ndarray, Y: np.ndarray) -> None:
        """Fold rows X (m, d) with targets Y (m, t) in, in float64 blocks of bounded size."""
        step = max(1, STATS_BLOCK_BYTES // (8 * max(X.shape[1], 1)))
        for a in range(0, len(X), step):
            xb = np.asarray(X[a : a + step], dtype=np.float64)
            yb = np.asarray(Y[a : a + step], dtype=np.float64)
            mx, my = xb.mean(axis=0), yb.mean(axis=0)
            xb -= mx
            yb = yb - my
            m2 = xb.T @ xb if self.full else np.einsum("ij,ij->j", xb, xb)
            cxy = xb.T @ yb if self.full else None
            self._merge(len(xb), mx, m2, my, cxy, (yb * yb).sum(axis=0))

    def _merge(self, nb, mx, m2, my, cxy, cyy) -> None:
        na = self.n
        n = na + nb
        if nb == 0:
            return
        dx, dy = mx - self.mean_x, my - self.mean_y
        f = na * nb / n
        self.m2 += m2 + (np.outer(dx, dx) if self.full else dx * dx) * f
        if self.full:
            self.cxy += cxy + np.outer(dx, dy) * f
        self.cyy += cyy + dy * dy * f
        self.mean_x += dx * (nb / n)
        self.mean_y += dy * (nb / n)
        self.n = n

    def __add__(self, other: Moments) -> Moments:
        out = copy.deepcopy(self)
        out._merge(other.n, other.mean_x, other.m2, other.mean_y, other.cxy, other.cyy)
        return out

    @staticmethod
    def total(parts: Sequence[Moments]) -> Moments:
        out = copy.deepcopy(parts[0])
        for p in parts[1:]:
            out._merge(p.n, p.mean_x, p.m2, p.mean_y, p.cxy, p.cyy)
        return out

    def scale(self) -> np.ndarray:
        """Standard deviations as `StandardScaler` computes them (1 for constant columns)."""
        var = (np.diag(self.m2) if self.full else self.m2) / max(self.n, 1)
        eps = np.finfo(np.float64).eps
        constant = var <= self.n * eps * var + (self.n * self.mean_x * eps) ** 2
        return np.where(constant | (var <= 0), 1.0, np.sqrt(np.clip(var, 0, None)))


def accumulate(source, Y: np.ndarray, cell: np.ndarray, n_cells: int, *, full: bool = True) -> list[Moments]:
    """One pass over `source`: the `Moments` of the rows of each cell 0..n_cells-1 (cell -1: none)."""
    t = Y.shape[1]
    out = [Moments.empty(source.d, t, full) for _ in range(n_cells)]
    for rows, X in source():
        c = cell[rows]
        for k in np.unique(c[c >= 0]):
            sel = c == k
            out[int(k)].add(X[sel], Y[rows[sel]])
    return out


# ------------------------------------------------------------------------------------------ ridge


class _RidgePath:
    """Ridge solutions of one training set for every alpha, from one eigendecomposition of the
    standardised scatter matrix: C = S^-1 M2 S^-1 = V diag(l) V'."""

    def __init__(self, T: Moments):
        self.T = T
        self.s = T.scale()
        C = T.m2 / np.outer(self.s, self.s)
        self.lam, self.V = _eigh(C)
        self.Bv = self.V.T @ (T.cxy / self.s[:, None])  # (d, t)

    def coef_std(self, alphas: np.ndarray) -> np.ndarray:
        """Eigen-basis coefficients (d, A, t) of every alpha."""
        return self.Bv[:, None, :] / (self.lam[:, None, None] + alphas[None, :, None])

    def heldout_sse(self, H: Moments, alphas: np.ndarray) -> np.ndarray:
        """Squared error (A, t) of the models on held-out rows H, scaled and centred by the training
        set: an exact quadratic form in H's statistics."""
        T = self.T
        dx, dy = H.mean_x - T.mean_x, H.mean_y - T.mean_y
        szz = (H.m2 + H.n * np.outer(dx, dx)) / np.outer(self.s, self.s)
        sze = (H.cxy + H.n * np.outer(dx, dy)) / self.s[:, None]
        see = H.cyy + H.n * dy * dy
        G = self.V.T @ szz @ self.V
        g = self.V.T @ sze  # (d, t)
        c = self.coef_std(alphas)  # (d, A, t)
        d, A, t = c.shape
        Gc = (G @ c.reshape(d, A * t)).reshape(d, A, t)
        quad = np.einsum("dat,dat->at", c, Gc)
        lin = np.einsum("dat,dt->at", c, g)
        return np.clip(see[None, :] - 2 * lin + quad, 0, None)

    def gcv(self, alphas: np.ndarray) -> np.ndarray:
        """Generalised cross-validation (A, t): n RSS / (n - df)^2, df counting the intercept."""
        T = self.T
        c = self.coef_std(alphas)
        lam = self.lam[:, None, None]
        rss = T.cyy[None, :] - np.einsum("dat,dat->at", c, self.Bv[:, None, :] * 2 - lam * c)
        df = 1 + (self.lam[:, None] / (self.lam[:, None] + alphas[None, :])).sum(axis=0)  # (A,)
        return T.n * np.clip(rss, 0, None) / np.maximum(T.n - df[:, None], 1e-12) ** 2

    def solve(self, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw-feature (coef (t, d), intercept (t,)) for one alpha per target."""
        w = np.stack([self.V @ (self.Bv[:, j] / (self.lam + a)) for j, a in enumerate(alpha)], axis=1)
        coef = w / self.s[:, None]
        return coef.T, self.T.mean_y - self.T.mean_x @ coef


class StreamingRidge(RegressorMixin, BaseEstimator):
    """Ridge regression on standardised features from streamed sufficient statistics.

    Equals ``StandardScaler -> Ridge(alpha)`` on the same rows. `alpha` is chosen from `alphas` per
    target (``alpha_per_target``) by exact `cv`-fold cross-validation computed from per-fold
    statistics (rows go to folds by a hash of their position and `random_state`), or by GCV with
    ``cv="gcv"``. ``fit(X, y)`` works on arrays; `fit_moments` on statistics streamed from a store.
    Fitted: ``coef_`` (in raw-feature units), ``intercept_``, ``alpha_``, ``cv_mse_`` (n_alphas,
    n_targets), ``x_mean_``, ``x_scale_``, ``n_rows_``.
    """

    def __init__(self, alphas=RIDGE_ALPHAS, cv: int | str = 5, alpha_per_target: bool = True, random_state=0):
        self.alphas = alphas
        self.cv = cv
        self.alpha_per_target = alpha_per_target
        self.random_state = random_state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def _check(self) -> np.ndarray:
        alphas = np.atleast_1d(np.asarray(self.alphas, dtype=np.float64))
        if alphas.size == 0 or (alphas <= 0).any() or not np.isfinite(alphas).all():
            raise ValueError(f"alphas must be positive and finite, got {self.alphas!r}")
        if self.cv != "gcv" and (not isinstance(self.cv, (int, np.integer)) or self.cv < 2):
            raise ValueError(f"cv={self.cv!r}: use a number of folds >= 2, or 'gcv'")
        return alphas

    def fit(self, X, y):
        alphas = self._check()
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True, dtype=[np.float64, np.float32])
        single = y.ndim == 1
        Y = y.reshape(len(y), -1).astype(np.float64)
        n = len(X)
        k = 1 if self.cv == "gcv" else int(min(self.cv, n))
        cell = hash_folds(np.arange(n), k, self.random_state) if k > 1 else np.zeros(n, dtype=np.int64)
        cells = accumulate(ArraySource(X), Y, cell, k)
        self._fit_cells(cells, list(range(k)), list(range(k)) if k > 1 else [], alphas)
        self._single_output = single
        if single:
            self.coef_, self.intercept_ = self.coef_[0], float(self.intercept_[0])
            self.alpha_ = float(self.alpha_[0])
        return self

    def fit_moments(self, cells: Sequence[Moments], train: Sequence[int], folds: Sequence[int]):
        """Fit on the union of `cells[train]`, choosing alpha by CV over `folds` (a subset of `train`:
        each is held out in turn) or by GCV (``cv="gcv"``, or fewer than two non-empty folds)."""
        alphas = self._check()
        self._fit_cells(cells, list(train), list(folds), alphas)
        self.n_features_in_ = int(cells[0].mean_x.size)
        self._single_output = False
        return self

    def _fit_cells(self, cells, train, folds, alphas) -> None:
        train = [c for c in train if cells[c].n > 0]
        folds = [g for g in folds if g in train]
        if not train:
            raise ValueError("no training rows: every fold is empty")
        T = Moments.total([cells[c] for c in train])
        t = T.mean_y.size
        if T.n < 2:  # nothing to validate on: the mean predictor, as RidgeLOO does
            self.alpha_ = np.full(t, alphas[len(alphas) // 2])
            self.cv_mse_ = np.full((len(alphas), t), np.nan)
            self.coef_, self.intercept_ = np.zeros((t, T.mean_x.size)), T.mean_y.copy()
        else:
            path = _RidgePath(T)
            if self.cv == "gcv" or len(folds) < 2:
                self.cv_mse_ = path.gcv(alphas)
                self.criterion_ = "gcv"
            else:
                sse, count = np.zeros((len(alphas), t)), 0
                for g in folds:
                    rest = [c for c in train if c != g]
                    inner = Moments.total([cells[c] for c in rest])
                    if inner.n < 2:
                        continue
                    sse += _RidgePath(inner).heldout_sse(cells[g], alphas)
                    count += cells[g].n
                self.cv_mse_ = sse / max(count, 1)
                self.criterion_ = f"{len(folds)}-fold"
            err = self.cv_mse_
            if not self.alpha_per_target:
                err = np.repeat(err.mean(axis=1, keepdims=True), t, axis=1)
            # ties: the larger alpha (the simpler model), as RidgeLOO
            self.alpha_ = np.array([alphas[np.flatnonzero(e <= e.min() * (1 + 1e-12))[-1]] for e in err.T])
            self.coef_, self.intercept_ = path.solve(self.alpha_)
        self.x_mean_, self.x_scale_, self.n_rows_ = T.mean_x, T.scale(), int(T.n)

    def predict(self, X):
        check_is_fitted(self, "coef_")
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return np.asarray(X, dtype=np.float64) @ np.asarray(self.coef_).T + self.intercept_

    def fit_info(self) -> dict:
        return {"alpha": np.atleast_1d(self.alpha_).tolist(), "alpha_by": getattr(self, "criterion_", None)}


# -------------------------------------------------------------------------------------------- mlp


@dataclass
class _Net:
    """One network being trained: its rows (cells), scaling, module, optimiser and early stopping."""

    member: np.ndarray  # bool per cell id: the cells this network trains on
    x_mean: np.ndarray
    x_scale: np.ndarray
    y_mean: np.ndarray
    y_scale: np.ndarray
    module: object
    opt: object
    best: dict | None = None
    best_loss: float = float("inf")
    best_epoch: int = 0
    bad: int = 0
    done: bool = False
    curve: list = field(default_factory=list)
    val_curve: list = field(default_factory=list)


def _train_mlps(
    est: StreamingMLPRegressor,
    source,
    Y: np.ndarray,
    cell: np.ndarray,
    n_cells: int,
    fits: Sequence[Sequence[int]],
) -> list[dict]:
    """Train one network per entry of `fits` (the cells it trains on) in the same passes over the
    data: each chunk read feeds every network its rows. Returns their weights and statistics."""
    import torch

    est._check_params()
    device = torch.device(resolve_device(est.device))
    seed = int(est.random_state)
    trainable = cell >= 0
    n_trainable = int(trainable.sum())
    frac = min(est.validation_fraction, est.max_validation_rows / max(n_trainable, 1))
    val = np.zeros(len(cell), dtype=bool)
    val[trainable] = hash_unit(np.flatnonzero(trainable), seed + 7919) < frac
    if n_trainable - val.sum() < 2:
        val[:] = False
    # pass 1: per-cell means and variances (all training rows), and the validation rows themselves
    t = Y.shape[1]
    moments = [Moments.empty(source.d, t, full=False) for _ in range(n_cells)]
    val_rows = np.flatnonzero(val)
    val_X = np.empty((len(val_rows), source.d), dtype=np.float32)
    for rows, X in source():
        c = cell[rows]
        for k in np.unique(c[c >= 0]):
            sel = c == k
            moments[int(k)].add(X[sel], Y[rows[sel]])
        v = val[rows]
        if v.any():
            val_X[np.searchsorted(val_rows, rows[v])] = X[v]
    val_cell = cell[val_rows]
    hidden = tuple(int(h) for h in est.hidden_layer_sizes)
    nets = []
    for i, cells in enumerate(fits):
        member = np.zeros(n_cells, dtype=bool)
        member[list(cells)] = True
        T = Moments.total([moments[c] for c in cells if moments[c].n > 0])
        ys = np.sqrt(T.cyy / max(T.n, 1))
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed + i)
            module = _build(source.d, hidden, t, est.dropout).to(device)
        opt = torch.optim.AdamW(module.parameters(), lr=est.lr, weight_decay=est.weight_decay)
        nets.append(
            _Net(member, T.mean_x, T.scale(), T.mean_y.copy(), np.where(ys > 0, ys, 1.0), module, opt)
        )

    def prep(net: _Net, x: np.ndarray, rows: np.ndarray):
        """Standardised float32 tensors; `x` is a copy made by the caller, scaled in place."""
        x -= net.x_mean.astype(np.float32)
        x /= net.x_scale.astype(np.float32)
        z = ((Y[rows] - net.y_mean) / net.y_scale).astype(np.float32)
        return torch.from_numpy(x).to(device), torch.from_numpy(z).to(device)

    gen = torch.Generator().manual_seed(seed)
    for epoch in range(est.epochs):
        active = [n for n in nets if not n.done]
        if not active:
            break
        totals = {id(n): [0.0, 0] for n in active}
        for net in active:
            net.module.train()
        for rows, X in source.shuffled(np.random.default_rng([seed, epoch])):
            c, keep = cell[rows], ~val[rows]
            for net in active:
                sel = keep & (c >= 0)
                sel[sel] = net.member[c[sel]]
                if not sel.any():
                    continue
                xt, zt = prep(net, np.asarray(X[sel], dtype=np.float32), rows[sel])
                order = torch.randperm(len(xt), generator=gen).to(device)
                for a in range(0, len(xt), est.batch_size):
                    idx = order[a : a + est.batch_size]
                    loss = torch.nn.functional.mse_loss(net.module(xt[idx]), zt[idx])
                    net.opt.zero_grad(set_to_none=True)
                    loss.backward()
                    net.opt.step()
                    totals[id(net)][0] += float(loss.detach()) * len(idx)
                    totals[id(net)][1] += len(idx)
        for net in active:
            s, m = totals[id(net)]
            net.curve.append(s / max(m, 1))
            mine = net.member[val_cell] if len(val_rows) else np.zeros(0, dtype=bool)
            if not mine.any():
                net.best = {k: v.detach().cpu().clone() for k, v in net.module.state_dict().items()}
                net.best_epoch = epoch + 1
                continue
            net.module.eval()
            xv, zv = prep(net, val_X[mine], val_rows[mine])  # a copy: boolean index
            with torch.no_grad():
                vloss = float(torch.nn.functional.mse_loss(net.module(xv), zv))
            net.val_curve.append(vloss)
            if vloss < net.best_loss - 1e-6:
                net.best_loss, net.bad, net.best_epoch = vloss, 0, epoch + 1
                net.best = {k: v.detach().cpu().clone() for k, v in net.module.state_dict().items()}
            else:
                net.bad += 1
                net.done = net.bad >= est.patience
    out = []
    for net in nets:
        best = net.best or {k: v.detach().cpu().clone() for k, v in net.module.state_dict().items()}
        out.append(
            {
                "state": {k: v.numpy() for k, v in best.items()},
                "x_mean": net.x_mean,
                "x_scale": net.x_scale,
                "y_mean": net.y_mean,
                "y_scale": net.y_scale,
                "epochs": len(net.curve),
                "best_epoch": net.best_epoch or len(net.curve),
                "curve": net.curve,
                "val_curve": net.val_curve,
                "device": str(device),
            }
        )
    return out


class StreamingMLPRegressor(TorchMLPRegressor):
    """The MLP of `TorchMLPRegressor`, trained by streaming mini-batches from chunks.

    Inputs are standardised inside the model (``x_mean_``, ``x_scale_`` from streamed statistics of
    the training rows), targets too. Early stopping watches a validation sample of at most
    `max_validation_rows` rows (a `validation_fraction` of the training rows, chosen by a hash of
    the row number), held in memory. Defaults differ from ``mlp`` where millions of rows call for
    it: batches of 256, learning rate 1e-3, at most 20 epochs, patience 3.
    """

    def __init__(
        self,
        hidden_layer_sizes: tuple[int, ...] = (256, 128),
        dropout: float = 0.3,
        lr: float = 1e-3,
        weight_decay: float = 1e-3,
        epochs: int = 20,
        batch_size: int = 256,
        validation_fraction: float = 0.1,
        max_validation_rows: int = 20_000,
        patience: int = 3,
        random_state: int = 0,
        device: str = "auto",
    ):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.dropout = dropout
        self.lr = lr
        self.weight_decay = weight_decay
        self.epochs = epochs
        self.batch_size = batch_size
        self.validation_fraction = validation_fraction
        self.max_validation_rows = max_validation_rows
        self.patience = patience
        self.random_state = random_state
        self.device = device

    def _check_params(self) -> None:
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout={self.dropout}: must be in [0, 1)")
        if not 0 <= self.validation_fraction < 1:
            raise ValueError(f"validation_fraction={self.validation_fraction}: must be in [0, 1)")
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1 or self.max_validation_rows < 0:
            raise ValueError(
                f"epochs={self.epochs}, batch_size={self.batch_size}, patience={self.patience}: must be >= 1"
            )

    def fit(self, X, y):
        self._check_params()
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True, dtype=[np.float32, np.float64])
        Y = y.reshape(len(y), -1).astype(np.float64)
        cell = np.zeros(len(X), dtype=np.int64)
        (trained,) = _train_mlps(self, ArraySource(X), Y, cell, 1, [[0]])
        self._set_trained(trained, X.shape[1])
        self._single_output = y.ndim == 1
        return self

    def _set_trained(self, trained: dict, d: int) -> StreamingMLPRegressor:
        self.state_dicts_ = [trained["state"]]
        self.x_mean_, self.x_scale_ = trained["x_mean"], trained["x_scale"]
        self.y_mean_, self.y_scale_ = trained["y_mean"], trained["y_scale"]
        self.n_iter_, self.best_epoch_ = [trained["epochs"]], [trained["best_epoch"]]
        self.loss_curve_, self.validation_loss_curve_ = trained["curve"], trained["val_curve"]
        self.device_, self.n_aux_, self.n_features_in_ = trained["device"], 0, int(d)
        self._single_output = False
        return self

    def predict(self, X):
        import torch

        check_is_fitted(self, "state_dicts_")
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        x = torch.from_numpy((np.asarray(X, dtype=np.float64) - self.x_mean_) / self.x_scale_)
        with torch.no_grad():
            Z = self._predict_module(self.state_dicts_[0])(x).numpy()
        out = Z * self.y_scale_ + self.y_mean_
        return out[:, 0] if self._single_output else out

    def fit_info(self) -> dict:
        return {"epochs_run": self.n_iter_, "best_epoch": self.best_epoch_, "device": self.device_}


# -------------------------------------------------------------------------------------------- knn


def _search_params(index, kind: str, params: dict, sel=None):
    import faiss

    if kind == "hnsw":
        return faiss.SearchParametersHNSW(sel=sel, efSearch=int(params.get("efSearch", 64)))
    if kind.startswith("ivf"):
        return faiss.SearchParametersIVF(sel=sel, nprobe=int(params.get("nprobe", 1)))
    return faiss.SearchParameters(sel=sel)


class IndexKNNRegressor(RegressorMixin, BaseEstimator):
    """k-NN VA regression through a FAISS index built within a memory budget.

    Features are standardised (streamed statistics), then compared by cosine similarity, as the
    in-memory ``knn`` pipeline does (``StandardScaler -> FaissKNNRegressor``); the index kind
    follows `evoked.features.index_build.plan_index` (`kind`, `memory_budget`, `target_recall`).
    A prediction is the similarity-weighted (``weights="distance"``: 1 / (1 - cos)) or plain mean
    VA of the `n_neighbors` found; ``"auto"`` picks k from `K_CANDIDATES` by leave-one-out on at
    most `LOO_QUERIES` training rows. The index is pickled with the model (faiss serialisation).
    """

    def __init__(
        self,
        n_neighbors: int | str = "auto",
        weights: str = "distance",
        kind: str = "auto",
        memory_budget: int | str = DEFAULT_BUDGET,
        target_recall: float = 0.95,
        random_state: int = 0,
    ):
        self.n_neighbors = n_neighbors
        self.weights = weights
        self.kind = kind
        self.memory_budget = memory_budget
        self.target_recall = target_recall
        self.random_state = random_state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def _check(self) -> None:
        if self.weights not in ("distance", "uniform"):
            raise ValueError(f"weights={self.weights!r}: use 'distance' or 'uniform'")
        if self.n_neighbors != "auto" and (
            not isinstance(self.n_neighbors, (int, np.integer)) or self.n_neighbors < 1
        ):
            raise ValueError(f"n_neighbors={self.n_neighbors!r}: use a positive integer or 'auto'")

    def fit(self, X, y):
        self._check()
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True, dtype=[np.float32, np.float64])
        Y = y.reshape(len(y), -1).astype(np.float64)
        self._fit_source(ArraySource(X), Y, np.ones(len(X), dtype=bool))
        self._single_output = y.ndim == 1
        return self

    def _fit_source(self, source, Y: np.ndarray, trainable: np.ndarray) -> IndexKNNRegressor:
        """Build the index over the `trainable` rows of `source` (ids = row numbers)."""
        from evoked.features.index import normalize

        self._check()
        rows_all = np.flatnonzero(trainable)
        if not len(rows_all):
            raise ValueError("no training rows for the k-NN index")
        t = Y.shape[1]
        m = Moments.empty(source.d, t, full=False)
        for rows, X in source():
            sel = trainable[rows]
            if sel.any():
                m.add(X[sel], Y[rows[sel]])
        self.x_mean_, self.x_scale_ = m.mean_x.copy(), m.scale()
        rng = np.random.default_rng(self.random_state)
        self._queries = np.sort(rng.choice(rows_all, size=min(len(rows_all), LOO_QUERIES), replace=False))
        query_x = np.empty((len(self._queries), source.d), dtype=np.float32)
        first = [True]

        def chunks():
            collect = first[0]
            first[0] = False
            for rows, X in source():
                sel = trainable[rows]
                if not sel.any():
                    continue
                r, x = rows[sel], ((X[sel] - self.x_mean_) / self.x_scale_).astype(np.float32)
                if collect:
                    hit = np.isin(r, self._queries)
                    if hit.any():
                        query_x[np.searchsorted(self._queries, r[hit])] = x[hit]
                yield r, x

        index, info = build_index_streaming(
            chunks,
            len(rows_all),
            source.d,
            self.kind,
            memory_budget=parse_bytes(self.memory_budget),
            target_recall=self.target_recall,
            seed=int(self.random_state),
        )
        self.index_ = index
        self.index_kind_ = info.kind
        self.index_params_ = dict(info.params)
        self.index_recall_ = info.recall_at_10
        self.targets_ = np.full((source.n, t), np.nan)
        self.targets_[rows_all] = Y[rows_all]
        self.trainable_ = np.asarray(trainable, dtype=bool).copy()
        self.allowed_ = None
        self._query_x = normalize(query_x)
        self.n_features_in_ = int(source.d)
        self._single_output = False
        self._choose_k()
        return self

    def restricted(self, allowed: np.ndarray) -> IndexKNNRegressor:
        """A model on the same index whose neighbours are only the rows where `allowed` (used for
        the folds of a CV: the held-out rows never answer). k is chosen again on these rows."""
        out = self.__class__.__new__(self.__class__)  # not copy.copy: that would serialise the index
        out.__dict__.update(self.__dict__)
        out.allowed_ = np.asarray(allowed, dtype=bool) & self.trainable_
        out._selector = out._bitmap = None
        out._choose_k()
        return out

    def _selector_for(self):
        import faiss

        if self.allowed_ is None:
            return None
        if getattr(self, "_selector", None) is None:
            self._bitmap = np.packbits(self.allowed_, bitorder="little")
            self._selector = faiss.IDSelectorBitmap(len(self.allowed_), faiss.swig_ptr(self._bitmap))
        return self._selector

    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        params = _search_params(self.index_, self.index_kind_, self.index_params_, self._selector_for())
        sims, ids = self.index_.search(np.ascontiguousarray(q, dtype=np.float32), int(k), params=params)
        return ids, sims.astype(np.float64)

    def _combine(self, ids: np.ndarray, sims: np.ndarray) -> np.ndarray:
        w = np.ones_like(sims) if self.weights == "uniform" else 1.0 / np.maximum(1.0 - sims, 1e-6)
        w[ids < 0] = 0.0
        targets = self.targets_[np.where(ids < 0, 0, ids)]
        total = w.sum(axis=1, keepdims=True)
        out = np.einsum("qk,qkt->qt", w, np.nan_to_num(targets)) / np.where(total > 0, total, 1.0)
        empty = total[:, 0] == 0
        if empty.any():
            out[empty] = np.nanmean(self.targets_[self._pool()], axis=0)
        return out

    def _pool(self) -> np.ndarray:
        return self.trainable_ if self.allowed_ is None else self.allowed_

    def _choose_k(self) -> None:
        pool = self._pool()
        n = int(pool.sum())
        if self.n_neighbors != "auto":
            self.n_neighbors_ = int(self.n_neighbors)
            self.loo_errors_ = {}
            return
        cands = sorted({min(k, n - 1) for k in K_CANDIDATES if n > 1})
        if getattr(self, "_queries", None) is None:  # a loaded model keeps no queries: keep its k
            return
        keep = pool[self._queries]
        queries, qx = self._queries[keep], self._query_x[keep]
        if n < 3 or not cands or not len(queries):
            self.n_neighbors_, self.loo_errors_ = min(K_CANDIDATES[0], max(n, 1)), {}
            return
        ids, sims = self._search(qx, max(cands) + 1)
        own = ids == queries[:, None]
        drop = np.where(own.any(axis=1), own.argmax(axis=1), ids.shape[1] - 1)
        mask = np.ones_like(own)
        mask[np.arange(len(queries)), drop] = False
        ids = ids[mask].reshape(len(queries), -1)
        sims = sims[mask].reshape(len(queries), -1)
        truth = self.targets_[queries]
        scale = np.nanstd(self.targets_[pool], axis=0)
        scale[~(scale > 0)] = 1.0
        errors = {}
        for k in cands:
            pred = self._combine(ids[:, :k], sims[:, :k])
            errors[int(k)] = float((((pred - truth) / scale) ** 2).mean())
        self.n_neighbors_ = min(errors, key=lambda k: (errors[k], k))
        self.loo_errors_ = errors

    def predict(self, X):
        from evoked.features.index import normalize

        check_is_fitted(self, "index_")
        X = validate_data(self, X, reset=False, dtype=[np.float32, np.float64])
        t = self.targets_.shape[1]
        if len(X) == 0:
            out = np.zeros((0, t))
        else:
            q = normalize((np.asarray(X, dtype=np.float64) - self.x_mean_) / self.x_scale_)
            out = self._combine(*self._search(q, self.n_neighbors_))
        return out[:, 0] if self._single_output else out

    def fit_info(self) -> dict:
        return {
            "n_neighbors": int(self.n_neighbors_),
            "index": self.index_kind_,
            "index_params": self.index_params_,
            "recall_at_10": self.index_recall_,
        }

    # the faiss index is serialised with the model; selectors are rebuilt on first use
    def __getstate__(self):
        import faiss

        state = self.__dict__.copy()
        for key in ("_selector", "_bitmap", "_query_x", "_queries"):
            state.pop(key, None)
        if "index_" in state:
            state["index_"] = faiss.serialize_index(state["index_"])
        return state

    def __setstate__(self, state):
        import faiss

        if isinstance(state.get("index_"), np.ndarray):
            state["index_"] = faiss.deserialize_index(state["index_"])
        self.__dict__.update(state)


# ------------------------------------------------------------------------------ families, plans


def _ridge(seed: int = 0, **params) -> StreamingRidge:
    return StreamingRidge(random_state=seed, **params)


def _mlp(seed: int = 0, **params) -> StreamingMLPRegressor:
    return StreamingMLPRegressor(random_state=seed, **params)


def _mlp_kim(seed: int = 0, **params) -> StreamingMLPRegressor:
    params.setdefault("hidden_layer_sizes", (512, 256, 128))
    return StreamingMLPRegressor(random_state=seed, **params)


def _knn(seed: int = 0, **params) -> IndexKNNRegressor:
    return IndexKNNRegressor(random_state=seed, **params)


#: The families that stream (``evoked regress --stream --model ...``).
STREAMING_MODELS: dict[str, Callable[..., BaseEstimator]] = {
    "ridge": _ridge,
    "mlp": _mlp,
    "mlp-kim": _mlp_kim,
    "knn": _knn,
}


def make_streaming(name: str, seed: int = 0, **params) -> BaseEstimator:
    if name not in STREAMING_MODELS:
        raise ConfigError(
            f"--model {name!r} does not stream; with --stream use {', '.join(STREAMING_MODELS)} (svr and "
            "lgbm need the features in memory: drop --stream, or see docs/scale.md for LightGBM on Dask)"
        )
    try:
        return STREAMING_MODELS[name](seed=seed, **params)
    except TypeError as e:
        raise ConfigError(f"bad parameter for model {name!r}: {e}") from e


@dataclass
class StreamPlan:
    """Which rows train where, as small per-row arrays (no dict per row).

    ``cell[r]``: -1 = never trains; 0..n_folds-1 = a fold of the CV (or an inner fold of alpha
    selection); n_folds = trains in every fit, never held out. ``fits`` lists, per fit, the cells it
    trains on, the cells its alpha selection holds out in turn, and the fold it is evaluated on
    (-1: none, the saved model; ``None``: the split's evaluated rows).
    """

    cell: np.ndarray
    n_cells: int
    fits: list[tuple[list[int], list[int], int | None]]
    eval_rows: np.ndarray
    eval_fold: np.ndarray  # aligned with eval_rows (-1 under a split)
    eval_split: str
    protocol: dict
    counts: dict
    saved_fit: int  # which fit is saved


def plan_streaming(
    *,
    cv: int | None,
    split: str | None,
    labels: dict,
    ok: np.ndarray,
    finite: np.ndarray,
    has_target: np.ndarray,
    has_va: np.ndarray,
    seed: int,
) -> StreamPlan:
    """The protocols of `evoked.regress.protocol` (same CV folds, same counts) as per-row arrays."""
    from evoked.data.splits import assign_folds
    from evoked.regress.protocol import _counts

    feat = ok & finite
    trainable = feat & has_target
    evaluable = feat & has_va
    counts = _counts(ok, finite, has_target, has_va)
    n = len(ok)
    cell = np.full(n, -1, dtype=np.int16)
    if split is not None:
        if split not in ("test", "val"):
            raise ConfigError(
                f"--split {split!r}: evaluate on 'test' (train on train+val) or 'val' (train on train)"
            )
        names = np.asarray(labels["split"], dtype=object).astype(str)
        if not any(names):
            raise ConfigError(
                "--split: this store has no train/val/test split. Run `evoked data split DATASET --out M.csv`, "
                "extract from that manifest, or use --cv K"
            )
        train_splits = ["train", "val"] if split == "test" else ["train"]
        train = trainable & np.isin(names, train_splits)
        eval_rows = np.flatnonzero(evaluable & (names == split))
        if not len(eval_rows):
            raise ConfigError(f"--split {split}: no {split} item has features and VA ratings to evaluate")
        if not train.any():
            raise ConfigError(
                f"--split {split}: no {'/'.join(train_splits)} item has features and a training label"
            )
        unassigned = feat & (names == "")
        if unassigned.any():
            counts["outside the splits"] = int(unassigned.sum())
        rows = np.flatnonzero(train)
        cell[rows] = hash_folds(rows, INNER_FOLDS, seed)
        folds = list(range(INNER_FOLDS))
        counts["evaluated"] = int(len(eval_rows))
        protocol = {"kind": "split", "train": train_splits, "eval": split}
        return StreamPlan(
            cell, INNER_FOLDS, [(folds, folds, None)], eval_rows, np.full(len(eval_rows), -1), split,
            protocol, counts, 0,
        )  # fmt: skip
    if cv == 0:
        rows = np.flatnonzero(trainable)
        if not len(rows):
            raise ConfigError("no item has both features and a training label; check --target and the store")
        cell[rows] = hash_folds(rows, INNER_FOLDS, seed)
        folds = list(range(INNER_FOLDS))
        counts["evaluated"] = 0
        return StreamPlan(
            cell, INNER_FOLDS, [(folds, folds, -1)], np.zeros(0, np.int64), np.zeros(0, np.int64), "",
            {"kind": "fit-only"}, counts, 0,
        )  # fmt: skip
    k = int(cv)
    store_fold = np.asarray(labels["fold"])
    present = sorted(set(store_fold[store_fold >= 0].tolist()))
    if present == list(range(k)):
        folds_arr = store_fold.astype(np.int64)
        outside = evaluable & (folds_arr < 0)
        if outside.any():
            counts["outside the store's folds"] = int(outside.sum())
        evaluable = evaluable & (folds_arr >= 0)
        source = "store"
    else:
        if present:
            log.warning(
                "the store has %d folds, not %d: assigning %d new folds (seed %d)", len(present), k, k, seed
            )
        rows = np.flatnonzero(evaluable)
        if len(rows) < k:
            raise ConfigError(
                f"--cv {k}: only {len(rows)} items have features and VA ratings; use fewer folds or more data"
            )
        cats = np.asarray(labels["category"], dtype=object)[rows].astype(str)
        folds_arr = np.full(n, -1, dtype=np.int64)
        folds_arr[rows] = assign_folds(cats if all(cats) else None, k, seed, len(rows))
        source = "assigned"
    extra = trainable & ~has_va
    both = evaluable & trainable
    cell[both] = folds_arr[both]
    cell[extra] = k
    eval_rows = np.flatnonzero(evaluable)
    fits = [([g for g in range(k + 1) if g != f], [g for g in range(k) if g != f], f) for f in range(k)]
    fits.append((list(range(k + 1)), list(range(k)), -1))
    if extra.any():
        counts["training only (no VA rating)"] = int(extra.sum())
    counts["evaluated"] = int(len(eval_rows))
    protocol = {"kind": "cv", "folds": k, "seed": int(seed), "folds_source": source}
    return StreamPlan(cell, k + 1, fits, eval_rows, folds_arr[eval_rows], "", protocol, counts, k)


def _fit_family(name: str, proto: BaseEstimator, source, Y, plan: StreamPlan, step) -> list:
    """One fitted estimator per fit of the plan, in as few passes over the store as the family
    allows: ridge one pass, mlp one pass per epoch for all fits together, knn one index."""
    if isinstance(proto, StreamingRidge):
        cells = accumulate(source, Y, plan.cell, plan.n_cells, full=True)
        out = []
        for train, folds, _ in plan.fits:
            out.append(clone_params(proto).fit_moments(cells, train, folds))
            step()
        return out
    if isinstance(proto, StreamingMLPRegressor):
        trained = _train_mlps(proto, source, Y, plan.cell, plan.n_cells, [f[0] for f in plan.fits])
        out = []
        for tr in trained:
            out.append(clone_params(proto)._set_trained(tr, source.d))
            step()
        return out
    if isinstance(proto, IndexKNNRegressor):
        base = clone_params(proto)._fit_source(source, Y, plan.cell >= 0)
        out = []
        for train, _, _ in plan.fits:
            member = np.zeros(plan.n_cells, dtype=bool)
            member[train] = True
            allowed = (plan.cell >= 0) & member[np.clip(plan.cell, 0, None)]
            out.append(base if allowed.sum() == base.trainable_.sum() else base.restricted(allowed))
            step()
        return out
    raise ConfigError(f"{name} does not stream")


def clone_params(est: BaseEstimator) -> BaseEstimator:
    from sklearn.base import clone

    return clone(est)


def features_fit_in_memory(n: int, d: int, max_memory: int) -> bool:
    """Whether the in-memory runner's copies of an (n, d) float32 matrix fit in `max_memory`."""
    return n * d * 4 * IN_MEMORY_COPIES <= max_memory


def streaming_needed(store: str | os.PathLike, features: Sequence[str], max_memory: int | str) -> bool:
    """True when `features` of `store` would not fit in memory as the in-memory runner holds them."""
    from evoked.features.store import open_store
    from evoked.regress.runner import parse_features

    with open_store(store) as st:
        names = st.resolve_features(parse_features(features))
        d = sum(int(st.dataset(f).shape[1]) for f in names)
        return not features_fit_in_memory(len(st), d, parse_bytes(max_memory))


# --------------------------------------------------------------------------------------- the run


def run_regress_streaming(
    store: str | os.PathLike,
    *,
    features: Sequence[str],
    out: str | os.PathLike,
    models: Sequence[str] | str = ("ridge",),
    target: str = "va",
    lexicon: str | None = None,
    soft: bool = False,
    category_map: Sequence[str] | dict | None = None,
    cv: int | None = None,
    split: str | None = None,
    params: Sequence[str] | dict | None = None,
    seed: int = 0,
    log_probs: bool = True,
    max_memory: int | str = DEFAULT_BUDGET,
    chunk_rows: int | None = None,
    overwrite: bool = False,
    name: str | None = None,
    on_progress: ProgressFn | None = None,
):
    """`run_regress` for stores larger than memory: the features are read chunk by chunk.

    Same protocols and run folder as `evoked.regress.runner.run_regress` (``cv=K``, default 5, with
    the same folds; ``split="test"``; ``cv=0``); models from `STREAMING_MODELS`. `max_memory` is
    the k-NN index's memory budget and caps the chunk size. Not available here: PCA, two-stage,
    the low-resource curve and auxiliary targets (they need the matrix in memory).
    """
    from evoked.evaluate.metrics import va_metrics
    from evoked.features.store import open_store
    from evoked.regress import rundir
    from evoked.regress.describe import describe_fitted
    from evoked.regress.runner import (
        ModelResult,
        RegressResult,
        _Progress,
        describe_store,
        parse_features,
        parse_models,
        parse_params,
        run_record,
        write_outputs,
    )
    from evoked.regress.targets import make_targets, va_ratings
    from evoked.regress.transforms import (
        LogColumns,
        check_probabilities,
        probability_features,
        probability_ranges,
    )

    t_start = time.perf_counter()
    feature_names = parse_features(features)
    model_names = parse_models(models)
    model_params = parse_params(params, model_names)
    budget = parse_bytes(max_memory)
    protos = {m: make_streaming(m, seed=seed, **model_params.get(m, {})) for m in model_names}
    for m, est in protos.items():
        if isinstance(est, IndexKNNRegressor):
            est.set_params(memory_budget=model_params.get(m, {}).get("memory_budget", budget))
    if split is not None and cv is not None:
        raise ConfigError("--split and --cv are alternatives; give one of them")
    if split is None:
        cv = 5 if cv is None else int(cv)
        if cv < 0 or cv == 1:
            raise ConfigError(f"--cv {cv}: use K >= 2 folds, or 0 to fit without evaluation")
    out_path = rundir.prepare_out(out, overwrite)

    with open_store(store) as st:
        resolved = st.resolve_features(feature_names)
        labels = st.labels()
        targets = make_targets(labels, target, lexicon=lexicon, soft=soft, category_map=category_map)
        dims = {f: int(st.dataset(f).shape[1]) for f in resolved}
        log_ranges = probability_ranges(resolved, dims) if log_probs else ()
        log_features = probability_features(resolved) if log_probs else []
        d = sum(dims.values())
        rows_cap = max(st.block_size, budget // (16 * 4 * max(d, 1)))
        source = StoreSource(
            st,
            resolved,
            log_ranges=log_ranges,
            chunk_rows=min(chunk_rows or chunk_rows_for(d, st.block_size), rows_cap),
        )
        # pass 0: which ok rows are finite (the plan needs it) and whether "probabilities" are ones
        finite = np.zeros(source.n, dtype=bool)
        sample = None
        for a, b in source.ranges():
            X = source.read_raw(a, b)
            fin = np.isfinite(X).all(axis=1)
            finite[a:b] = fin
            good = X[fin & source.ok[a:b]]
            check_probabilities(good, log_ranges, log_features)
            if sample is None and len(good):
                sample = good[:256]
        ok = source.ok
        va = va_ratings(labels)
        has_va = ~np.isnan(va).any(axis=1)
        plan = plan_streaming(
            cv=cv,
            split=split,
            labels=labels,
            ok=ok,
            finite=finite,
            has_target=targets.mask,
            has_va=has_va,
            seed=seed,
        )
        ids = st.ids.astype(str)
        store_info = describe_store(st, store, resolved)
        log.info(
            "%s: %d features (%d dims), %s, %d evaluated items, streamed in chunks of %d rows",
            Path(store).name, len(resolved), d, plan.protocol, len(plan.eval_rows), source.chunk_rows,
        )  # fmt: skip
        Y = np.nan_to_num(targets.y)
        eval_rows = plan.eval_rows
        eval_pos = np.full(source.n, -1, dtype=np.int64)
        eval_pos[eval_rows] = np.arange(len(eval_rows))
        row_fold = np.full(source.n, -2, dtype=np.int64)  # the fit that predicts each evaluated row
        fit_of_fold = {f[2]: i for i, f in enumerate(plan.fits) if f[2] is not None and f[2] >= 0}
        if plan.protocol["kind"] == "split":
            row_fold[eval_rows] = 0
        else:
            row_fold[eval_rows] = [fit_of_fold[int(f)] for f in plan.eval_fold] if len(eval_rows) else []
        progress = _Progress(len(model_names) * (len(plan.fits) + (1 if len(eval_rows) else 0)), on_progress)
        rundir.start_run_dir(out_path)
        models_dir = out_path / "models"
        log_step = LogColumns(tuple(tuple(map(int, r)) for r in log_ranges)).fit(
            sample if sample is not None else np.zeros((1, d), np.float32)
        )
        results, predictions = [], {}
        final_what = {
            "cv": "every usable item (the CV folds only measure it)",
            "split": f"the {'+'.join(plan.protocol.get('train', []))} items",
            "fit-only": "every usable item",
        }[plan.protocol["kind"]]
        n_train = [int(np.isin(plan.cell, f[0]).sum()) for f in plan.fits]
        for m in model_names:
            t0 = time.perf_counter()
            fitted = _fit_family(m, protos[m], source, Y, plan, lambda m=m: progress.step(f"{m} fit"))
            seconds = time.perf_counter() - t0
            pred = np.full((len(eval_rows), 2), np.nan)
            if len(eval_rows):
                for rows, X in source():
                    fit_ids = row_fold[rows]
                    for i in np.unique(fit_ids[fit_ids >= 0]):
                        sel = fit_ids == i
                        pred[eval_pos[rows[sel]]] = np.asarray(fitted[i].predict(X[sel])).reshape(-1, 2)
                progress.step(f"{m} predict")
            final = fitted[plan.saved_fit]
            steps = ([("log", log_step)] if log_ranges else []) + [("model", final)]
            pipe = Pipeline(steps)
            info = {**describe_fitted(pipe), **final.fit_info()}
            meta = {
                "family": m,
                "params": model_params.get(m, {}),
                "seed": seed,
                "features": resolved,
                "target": targets.description,
                "protocol": plan.protocol,
                "pca": None,
                "log_probs": log_features,
                "aux": None,
                "streaming": True,
                **store_info,
                "fitted_on": {"items": n_train[plan.saved_fit], "what": final_what},
                "info": info,
                "versions": rundir.versions(),
                "created": rundir.now(),
            }
            rundir.save_model(models_dir, m, pipe, meta)
            predictions[m] = pred
            evaluated_fits = [i for i, f in enumerate(plan.fits) if f[2] != -1]
            sizes = [n_train[i] for i in evaluated_fits] or [n_train[plan.saved_fit]]
            metrics = va_metrics(va[eval_rows], pred) if len(eval_rows) else {}
            results.append(ModelResult(m, metrics, seconds, float(np.mean(sizes)), len(eval_rows), info))
            log.info("%s: %.1f s", m, seconds)

    eval_ids = ids[eval_rows]
    eval_folds = plan.eval_fold.tolist()
    split_col = [plan.eval_split] * len(eval_rows)
    default_model = write_outputs(
        out_path, results, predictions, va, eval_rows, eval_ids, eval_folds, split_col, labels["category"]
    )
    run = run_record(
        name or out_path.name,
        store_info,
        resolved,
        targets,
        plan.protocol,
        rundir.items_fingerprint(eval_ids, eval_folds, split_col),
        results,
        default_model,
        model_params,
        seed,
        plan.counts,
        pca=None,
        log_probs=log_features,
        aux=None,
    )
    run["streaming"] = {"chunk_rows": int(source.chunk_rows), "max_memory": int(budget)}
    rundir.write_json(out_path / "run.json", run)
    return RegressResult(out_path, run, results, plan.counts, [], time.perf_counter() - t_start)
