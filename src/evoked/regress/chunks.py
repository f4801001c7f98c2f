"""Rows served chunk by chunk: fitting the registered families on stores larger than memory.

The runner (`evoked.regress.runner`) fits every model through one of two row sources: the feature
matrix in memory (`MemoryRows`), or the store read a chunk at a time (`ChunkRows`, ``--stream``).
Both fit the same pipeline (``[log of probabilities] -> StandardScaler -> model``) with the same
hyperparameters; a family that can fit from chunks has a ``fit_chunks(view, Y)`` method and is
registered with ``chunks=True`` (ridge, mlp, mlp-kim, knn). In chunks, the scaler is fitted from
streamed means and variances and the model receives standardised chunks of its training rows
(`RowView`): no stage holds more than one chunk of the matrix. What stays in memory is O(d^2)
statistics, one chunk, and the per-row labels (about 330 bytes a row, in bench/scale.py).

`Moments` accumulates count, means, centred scatter and cross products in float64 with the pairwise
update of Chan, Golub and LeVeque, accurate when the means are large next to the spread (the naive
``X'X - n m m'`` is not): a ridge fitted from them equals ``StandardScaler -> Ridge`` to rounding.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from evoked.errors import ConfigError
from evoked.regress.transforms import log_probabilities

#: A chunk of rows is about this many bytes of float32 features (rounded to whole store blocks).
CHUNK_BYTES = 64 * 2**20
#: Rows per float64 block inside a statistics update (bounds the float64 temporaries to ~16 MB:
#: under glibc's 32 MB ceiling for its adaptive mmap threshold, so freed blocks are reused from the
#: heap instead of being mapped afresh and page-faulted in, which on a VM cost more than the products).
STATS_BLOCK_BYTES = 16 * 2**20
#: Chunks of a shuffled epoch are assembled from this many randomly chosen pieces of the store.
PIECES_PER_CHUNK = 16
#: Copies of the feature matrix the in-memory runner holds at once (the float32 matrix, a scaled
#: copy of a fold, temporaries): used to say when it would not fit and chunks are needed.
IN_MEMORY_COPIES = 3.0


def chunk_rows_for(d: int, block: int = 1, max_bytes: int = CHUNK_BYTES) -> int:
    """Rows of a chunk of about `max_bytes` float32 values, a multiple of `block` (store block size)."""
    rows = max(1024, max_bytes // max(4 * d, 1))
    return max(block, rows // block * block)


# ------------------------------------------------------------------------------------- moments


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
        return cls(0, np.zeros(d), np.zeros((d, d) if full else d), np.zeros(t), np.zeros((d, t)) if full else None, np.zeros(t))  # fmt: skip

    @property
    def full(self) -> bool:
        return self.m2.ndim == 2

    def add(self, X: np.ndarray, Y: np.ndarray) -> None:
        """Fold rows X (m, d) with targets Y (m, t) in, in float64 blocks of bounded size."""
        step = max(1, STATS_BLOCK_BYTES // (8 * max(X.shape[1], 1)))
        for a in range(0, len(X), step):
            xb = np.array(X[a : a + step], dtype=np.float64)  # a copy: centred in place below
            yb = np.asarray(Y[a : a + step], dtype=np.float64)
            mx, my = xb.mean(axis=0), yb.mean(axis=0)
            xb -= mx
            yb = yb - my
            m2 = xb.T @ xb if self.full else np.einsum("ij,ij->j", xb, xb)
            self._merge(len(xb), mx, m2, my, xb.T @ yb if self.full else None, (yb * yb).sum(axis=0))

    def _merge(self, nb, mx, m2, my, cxy, cyy) -> None:
        if nb == 0:
            return
        na = self.n
        n = na + nb
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

    def standardised(self, scaler: StandardScaler) -> Moments:
        """These moments as the rows would give them after `scaler` (fitted from them, `scaler`):
        (x - mean) / scale only rescales the centred scatter and cross products, so a model that
        needs X'X and X'y of standardised rows gets them without another pass over the rows."""
        s = np.asarray(scaler.scale_, dtype=np.float64)
        shift = (self.mean_x - scaler.mean_) / s  # zero when `scaler` came from these moments
        return Moments(
            self.n,
            shift,
            self.m2 / np.outer(s, s) if self.full else self.m2 / (s * s),
            self.mean_y.copy(),
            None if self.cxy is None else self.cxy / s[:, None],
            self.cyy.copy(),
        )

    def scaler(self) -> StandardScaler:
        """A fitted `StandardScaler` with these means and variances (constant columns scale 1)."""
        var = (np.diag(self.m2) if self.full else self.m2) / max(self.n, 1)
        eps = np.finfo(np.float64).eps
        constant = var <= self.n * eps * var + (self.n * self.mean_x * eps) ** 2
        sc = StandardScaler()
        sc.mean_, sc.var_ = self.mean_x.copy(), var
        sc.scale_ = np.where(constant | (var <= 0), 1.0, np.sqrt(np.clip(var, 0, None)))
        sc.n_samples_seen_, sc.n_features_in_ = int(self.n), int(self.mean_x.size)
        return sc


# ------------------------------------------------------------------------------------- sources


class ArraySource:
    """An in-memory (n, d) array served as chunks, like a store (tests, and the shuffling logic)."""

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
        """Rows and pieces of each chunk of an epoch: pieces of whole store blocks, in random order."""
        piece = max(self.block, self.chunk_rows // PIECES_PER_CHUNK // self.block * self.block)
        pieces = self.ranges(piece)
        order = rng.permutation(len(pieces))
        per_chunk = max(1, self.chunk_rows // piece)
        for start in range(0, len(order), per_chunk):
            parts = [pieces[i] for i in order[start : start + per_chunk]]
            yield np.concatenate([np.arange(a, b) for a, b in parts]), parts

    def shuffled(self, rng: np.random.Generator) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Chunks of randomly chosen pieces (the trainer shuffles the rows within a chunk)."""
        for rows, parts in self._shuffled_pieces(rng):
            yield rows, np.concatenate([self.read(a, b)[1] for a, b in parts])


class StoreSource(ArraySource):
    """Features of an open `FeatureStore`, read a chunk at a time.

    Rows that are not ``ok`` or hold NaN/inf are dropped from every chunk; probability columns
    (`log_ranges`) become log(p + 1e-4) as in the in-memory pipeline (`LogColumns`).
    """

    def __init__(self, store, features: Sequence[str], *, log_ranges=(), chunk_rows: int | None = None):
        from evoked.features.store import OK

        self.datasets = [store.dataset(f) for f in store.resolve_features(list(features))]
        self.n, self.ok, self.block = len(store), store.status == OK, store.block_size
        self.d = int(sum(ds.shape[1] for ds in self.datasets))
        self.log_ranges = tuple(log_ranges)
        rows = int(chunk_rows or chunk_rows_for(self.d, self.block))
        self.chunk_rows = max(self.block, rows // self.block * self.block)

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
        for rows, parts in self._shuffled_pieces(rng):
            X = np.empty((len(rows), self.d), dtype=np.float32)
            at = 0
            for a, b in parts:
                self.read_raw(a, b, X[at : at + b - a])
                at += b - a
            yield self._finish(rows, X)


class RowView:
    """The chunks of `source` restricted to `rows` (sorted store rows), each passed through
    `transform` (the fitted scaler): what a family's ``fit_chunks`` reads."""

    def __init__(self, source, rows: np.ndarray, transform=None):
        self.source, self.rows, self.transform = source, np.asarray(rows, dtype=np.int64), transform
        self.n, self.d = len(self.rows), source.d
        self._mask = np.zeros(source.n, dtype=bool)
        self._mask[self.rows] = True

    def _restrict(self, chunks):
        for r, x in chunks:
            sel = self._mask[r]
            if sel.all():  # no copy of a chunk that is wholly selected
                yield r, (self.transform(x) if self.transform is not None else x)
            elif sel.any():
                x = x[sel]
                yield r[sel], (self.transform(x) if self.transform is not None else x)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return self._restrict(self.source())

    def shuffled(self, rng: np.random.Generator) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return self._restrict(self.source.shuffled(rng))


# --------------------------------------------------------------------------------- row sources


class MemoryRows:
    """The feature matrix in memory (NaN rows never train: the plan leaves them out)."""

    chunked = False

    def __init__(self, X: np.ndarray):
        self.X = X

    def fit(self, est: Pipeline, rows: np.ndarray, Y: np.ndarray, **fit_params: Any) -> Pipeline:
        return est.fit(self.X[rows], Y[rows], **fit_params)

    def predict(self, est: BaseEstimator, rows: np.ndarray) -> np.ndarray:
        return np.asarray(est.predict(self.X[rows]), dtype=np.float64).reshape(len(rows), -1)


class ChunkRows:
    """A store read a chunk at a time: pipelines are fitted with `fit_pipeline_chunks`."""

    chunked = True

    def __init__(self, source: StoreSource):
        self.source = source

    def fit(self, est: Pipeline, rows: np.ndarray, Y: np.ndarray, **fit_params: Any) -> Pipeline:
        return fit_pipeline_chunks(est, self.source, np.sort(rows), Y)

    def predict(self, est: BaseEstimator, rows: np.ndarray) -> np.ndarray:
        return predict_chunks(est, self.source, rows)


def fit_pipeline_chunks(pipe: Pipeline, source: ArraySource, rows: np.ndarray, Y: np.ndarray) -> Pipeline:
    """Fit ``[log] -> scale -> model`` on `rows` of `source` (which applies the log itself): the
    scaler from one pass of streamed moments, the model by its ``fit_chunks``.

    A model that fits from second moments (``fits_from_moments``: ridge) gets the full moments
    (X'X, X'y, sums) of that same pass, standardised (`Moments.standardised`), and reads the rows
    only once more, for what moments cannot give (ridge: each row's leave-one-out residual)."""
    names = [n for n, _ in pipe.steps]
    if names[-2:] != ["scale", "model"] or set(names[:-2]) - {"log"}:
        raise ConfigError(f"a pipeline of {names} cannot be fitted from chunks (no PCA with --stream)")
    if "log" in names:
        pipe.named_steps["log"].fit(np.zeros((1, source.d), dtype=np.float32))
    model = pipe.named_steps["model"]
    full = bool(getattr(model, "fits_from_moments", False))
    m = Moments.empty(source.d, Y.shape[1], full=full)
    for r, x in RowView(source, rows):
        m.add(x, Y[r])
    scaler = m.scaler()
    pipe.steps[-2] = ("scale", scaler)
    view = RowView(source, rows, scaler.transform)
    if full:
        model.fit_chunks(view, Y, moments=m.standardised(scaler))
    else:
        model.fit_chunks(view, Y)
    return pipe


def predict_chunks(est: BaseEstimator, source: ArraySource, rows: np.ndarray) -> np.ndarray:
    """Predictions (len(rows), t) of `rows`, read chunk by chunk (the log step is the source's)."""
    rows = np.asarray(rows, dtype=np.int64)
    model = est[1:] if isinstance(est, Pipeline) and est.steps[0][0] == "log" else est
    out = None
    pos = np.full(source.n, -1, dtype=np.int64)
    pos[rows] = np.arange(len(rows))
    for r, x in RowView(source, np.sort(rows)):
        p = np.asarray(model.predict(x), dtype=np.float64).reshape(len(r), -1)
        out = np.full((len(rows), p.shape[1]), np.nan) if out is None else out
        out[pos[r]] = p
    return out if out is not None else np.full((len(rows), 2), np.nan)


def features_fit_in_memory(n: int, d: int, max_memory: int) -> bool:
    """Whether the in-memory runner's copies of an (n, d) float32 matrix fit in `max_memory`."""
    return n * d * 4 * IN_MEMORY_COPIES <= max_memory


def streaming_needed(store: str | os.PathLike, features: Sequence[str], max_memory: int | str) -> bool:
    """True when `features` of `store` would not fit in memory as the in-memory runner holds them."""
    from evoked.features.index_build import parse_bytes
    from evoked.features.store import open_store
    from evoked.regress.options import parse_features

    with open_store(store) as st:
        names = st.resolve_features(parse_features(features))
        d = sum(int(st.dataset(f).shape[1]) for f in names)
        return not features_fit_in_memory(len(st), d, parse_bytes(max_memory))
