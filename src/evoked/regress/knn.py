"""k-nearest-neighbour VA regression with FAISS: cosine neighbours, similarity-weighted mean VA.

Vectors are L2-normalised (`evoked.features.index.normalize`) and searched exactly with an
``IndexFlatIP``. FAISS finds the neighbours; their similarities are then recomputed in float64 so
that a prediction does not depend on how queries were batched. The index is not pickled: it is
rebuilt from the stored training vectors on first use after loading.

Fitted from chunks (``fit_chunks``, stores larger than memory) the training vectors are not kept:
the index is built by `evoked.features.index_build.build_index_streaming` within `memory_budget`
(exact ``flat`` on small sets, an IVF kind on large ones, its recall measured), the neighbours'
similarities are the index's own, and the index is pickled with the model. k is chosen by the
same leave-one-out on the same queries.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, MultiOutputMixin, RegressorMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from evoked.regress.chunks import RowView

#: Neighbour counts tried by leave-one-out when ``n_neighbors="auto"``.
K_CANDIDATES = (5, 10, 20, 40, 80)
#: Leave-one-out uses at most this many training items as queries (bounded cost on large sets).
LOO_QUERIES = 2000
_EPS = 1e-6
_BATCH = 4096


class FaissKNNRegressor(MultiOutputMixin, RegressorMixin, BaseEstimator):
    """Predict the weighted mean VA of the `n_neighbors` most cosine-similar training items.

    weights ``"distance"`` weighs a neighbour by 1 / (1 - cosine similarity) (an identical vector
    dominates), ``"uniform"`` weighs them equally. ``n_neighbors="auto"`` picks k from
    `K_CANDIDATES` by leave-one-out error on (at most `LOO_QUERIES`) training items: training data
    only, never the evaluation fold.
    """

    def __init__(
        self,
        n_neighbors: int | str = "auto",
        weights: str = "distance",
        memory_budget: int | str = "2GB",
        random_state: int = 0,
    ):
        self.n_neighbors = n_neighbors
        self.weights = weights
        self.memory_budget = memory_budget  # the index's budget when fitted from chunks
        self.random_state = random_state

    train_vectors_: np.ndarray | None  # None when fitted from chunks: the index is kept instead

    # -- fitting -------------------------------------------------------------------------------
    def _check(self) -> None:
        if self.weights not in ("distance", "uniform"):
            raise ValueError(f"weights={self.weights!r}: use 'distance' or 'uniform'")
        if self.n_neighbors != "auto" and (
            not isinstance(self.n_neighbors, (int, np.integer)) or self.n_neighbors < 1
        ):
            raise ValueError(f"n_neighbors={self.n_neighbors!r}: use a positive integer or 'auto'")

    def fit(self, X: np.ndarray, y: np.ndarray) -> FaissKNNRegressor:
        from evoked.features.index import normalize

        self._check()
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True)
        self._single_output = y.ndim == 1
        self.train_vectors_ = normalize(X)
        self.train_targets_ = y.reshape(len(y), -1).astype(np.float64)
        self._index: Any = None  # a faiss index, built on first use
        self._set_k(lambda q: self.train_vectors_[q])
        return self

    def fit_chunks(self, view: RowView, Y: np.ndarray) -> FaissKNNRegressor:
        """Build the index from chunks of standardised rows (`evoked.regress.chunks.RowView`)."""
        from evoked.features.index import normalize
        from evoked.features.index_build import build_index_streaming, parse_bytes

        self._check()
        if not view.n:
            raise ValueError("no training rows for the k-NN index")
        self.train_vectors_, self._single_output, self.n_features_in_ = None, False, view.d
        self.train_targets_ = Y[view.rows].astype(np.float64)
        queries = self._queries(view.n)
        query_x = np.empty((len(queries), view.d), dtype=np.float32)

        def chunks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for r, x in view:
                pos = np.searchsorted(view.rows, r)
                hit = np.isin(pos, queries)
                query_x[np.searchsorted(queries, pos[hit])] = x[hit]
                yield pos, normalize(x)

        self._index, info = build_index_streaming(
            chunks, view.n, view.d, memory_budget=parse_bytes(self.memory_budget), seed=int(self.random_state)
        )
        self.index_kind_, self.index_params_ = info.kind, dict(info.params)
        self.index_recall_ = info.recall_at_10
        query_x = normalize(query_x)
        self._set_k(lambda q: query_x[np.searchsorted(queries, q)])
        return self

    def _queries(self, n: int) -> np.ndarray:
        """The training rows whose leave-one-out error chooses k."""
        rng = np.random.default_rng(self.random_state)
        return np.sort(rng.choice(n, size=min(n, LOO_QUERIES), replace=False))

    def _set_k(self, vectors_of) -> None:
        if self.n_neighbors == "auto":
            self.n_neighbors_, self.loo_errors_ = self._choose_k(vectors_of)
        else:
            self.n_neighbors_ = int(self.n_neighbors)

    def _choose_k(self, vectors_of) -> tuple[int, dict[int, float]]:
        n = len(self.train_targets_)
        cands = sorted({min(k, n - 1) for k in K_CANDIDATES if n > 1})
        if n < 3 or not cands:
            return min(K_CANDIDATES[0], n), {}
        queries = self._queries(n)
        ids, sims = self._neighbours(vectors_of(queries), max(cands) + 1)
        # Leave the query out: drop its own row, or the last hit if duplicates pushed it out.
        own = ids == queries[:, None]
        drop = np.where(own.any(axis=1), own.argmax(axis=1), ids.shape[1] - 1)
        keep = np.ones_like(own)
        keep[np.arange(len(queries)), drop] = False
        ids = ids[keep].reshape(len(queries), -1)
        sims = sims[keep].reshape(len(queries), -1)
        truth = self.train_targets_[queries]
        errors = {}
        for k in cands:
            errors[int(k)] = self._loo_error(self._combine(ids[:, :k], sims[:, :k]), truth)
        best = min(errors, key=lambda k: (errors[k], k))
        return best, errors

    def _loo_error(self, pred: np.ndarray, truth: np.ndarray) -> float:
        """What the leave-one-out choice of k minimises: the mean squared error of standardised
        targets (a subclass for other targets, e.g. label distributions, scores them its own way)."""
        scale = self.train_targets_.std(axis=0)
        scale[scale == 0] = 1.0
        return float((((pred - truth) / scale) ** 2).mean())

    # -- searching -----------------------------------------------------------------------------
    def _get_index(self):
        if getattr(self, "_index", None) is None:
            import faiss

            index = faiss.IndexFlatIP(self.train_vectors_.shape[1])
            index.add(self.train_vectors_)
            self._index = index
        return self._index

    def _neighbours(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Ids (q, k) of the k most similar training rows, with float64 similarities."""
        k = min(k, len(self.train_targets_))
        index = self._get_index()
        if self.train_vectors_ is None:  # fitted from chunks: the index's own similarities
            for name, v in getattr(self, "index_params_", {}).items():
                if name in ("nprobe", "efSearch"):
                    faiss_params(index, name, v)
            sims, ids = index.search(np.ascontiguousarray(q, dtype=np.float32), k)
            sims = sims.astype(np.float64)
            order = np.lexsort((ids, -sims), axis=1)
            return np.take_along_axis(ids, order, 1), np.take_along_axis(sims, order, 1)
        ids = np.empty((len(q), k), dtype=np.int64)
        sims = np.empty((len(q), k), dtype=np.float64)
        # Bounded memory: the gathered neighbour vectors of one batch stay under ~128 MB.
        batch = max(1, min(_BATCH, (1 << 24) // max(1, k * q.shape[1])))
        for start in range(0, len(q), batch):
            qb = q[start : start + batch]
            _, found = index.search(qb, k)
            gathered = self.train_vectors_[found].astype(np.float64)
            ids[start : start + len(qb)] = found
            sims[start : start + len(qb)] = np.einsum("qd,qkd->qk", qb.astype(np.float64), gathered)
        # Order by the exact similarity, ties by row, so batching can never reorder neighbours.
        order = np.lexsort((ids, -sims), axis=1)
        return np.take_along_axis(ids, order, 1), np.take_along_axis(sims, order, 1)

    def _combine(self, ids: np.ndarray, sims: np.ndarray) -> np.ndarray:
        if self.weights == "uniform":
            w = np.ones_like(sims)
        else:
            w = 1.0 / np.maximum(1.0 - sims, _EPS)
        w /= w.sum(axis=1, keepdims=True)
        return np.einsum("qk,qkt->qt", w, self.train_targets_[ids])

    def predict(self, X: np.ndarray) -> np.ndarray:
        from evoked.features.index import normalize

        check_is_fitted(self, "train_vectors_")
        X = validate_data(self, X, reset=False)
        if len(X) == 0:
            out = np.zeros((0, self.train_targets_.shape[1]))
        else:
            ids, sims = self._neighbours(normalize(X), self.n_neighbors_)
            out = self._combine(ids, sims)
        return out[:, 0] if self._single_output else out

    # -- pickling ------------------------------------------------------------------------------
    def __getstate__(self):
        import faiss

        state = self.__dict__.copy()
        # a faiss index does not pickle: rebuilt from train_vectors_, or serialised when there are none
        index = state.get("_index")
        state["_index"] = (
            faiss.serialize_index(index) if state.get("train_vectors_") is None and index else None
        )
        return state

    def __setstate__(self, state):
        import faiss

        if isinstance(state.get("_index"), np.ndarray):
            state["_index"] = faiss.deserialize_index(state["_index"])
        self.__dict__.update(state)


def faiss_params(index: Any, name: str, value: float) -> None:
    """Set the tuned search parameter (nprobe of an IVF index, efSearch of HNSW)."""
    import faiss

    if name == "nprobe":
        faiss.extract_index_ivf(index).nprobe = int(value)
    elif hasattr(index, "hnsw"):
        index.hnsw.efSearch = int(value)


def knn(seed: int = 0, **params: Any) -> FaissKNNRegressor:
    return FaissKNNRegressor(random_state=seed, **params)
