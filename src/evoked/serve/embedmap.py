"""A 2-D map of one feature of a store, for the page: PCA, then t-SNE on a bounded subset.

Bounded in memory and time whatever the store's size:

1. PCA to `PCA_DIMS` dimensions, fitted on at most `PCA_SAMPLE` random ok rows and applied to
   every ok row in chunks (the features are never all in memory at once; the result is N x 50
   float32, 20 MB for 100,000 items);
2. t-SNE (sklearn; UMAP when the ``umap`` package is installed) of at most `EMBED_MAX` random rows
   of that;
3. every other row placed at the distance-weighted mean of its `NEIGHBOURS` nearest embedded rows
   in PCA space.

The map is computed once and cached beside the store (``STORE.maps/FEATURE.npz``), keyed by the
store's uuid and row count, so a restarted server reads it back; a folder that cannot be written
keeps the map in memory only, with a warning.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evoked.device import free_cores
from evoked.features.store import OK, open_store

log = logging.getLogger(__name__)

PCA_DIMS = 50
PCA_SAMPLE = 10_000
EMBED_MAX = 5_000
NEIGHBOURS = 3
CHUNK_ROWS = 8192
CACHE_VERSION = 1


@dataclass
class EmbeddingMap:
    x: np.ndarray  # (N,) float32 per store row, NaN where the row has no features
    y: np.ndarray
    method: str  # what made it, in words (shown on the page)
    seconds: float  # compute time (0 when read from the cache)


def map_path_for(store: str | os.PathLike, feature: str) -> Path:
    """``STORE.maps/FEATURE.npz`` (``/`` in the feature name becomes ``__``)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", feature.replace("/", "__"))
    return Path(store).with_suffix(".maps") / f"{safe}.npz"


def _pca(store: str | os.PathLike, feature: str, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(len(rows), <= PCA_DIMS) float32: PCA fitted on a sample, applied chunk by chunk."""
    from sklearn.decomposition import PCA

    with open_store(store) as s:
        sample = np.sort(rng.choice(rows, size=min(PCA_SAMPLE, rows.size), replace=False))
        fit = s.read(feature, rows=sample).astype(np.float32)
        dims = max(1, min(PCA_DIMS, fit.shape[1], fit.shape[0] - 1))
        pca = PCA(n_components=dims, svd_solver="randomized" if dims < min(fit.shape) // 2 else "full",
                  random_state=0).fit(fit)  # fmt: skip
        del fit
        out = np.empty((rows.size, dims), np.float32)
        for start in range(0, rows.size, CHUNK_ROWS):
            chunk = rows[start : start + CHUNK_ROWS]
            out[start : start + chunk.size] = pca.transform(s.read(feature, rows=chunk).astype(np.float32))
    return out


def _embed(z: np.ndarray) -> tuple[np.ndarray, str]:
    """2-D coordinates of the rows of `z` (at most EMBED_MAX of them) and the method's name."""
    n = z.shape[0]
    if n < 5 or z.shape[1] < 2:  # too few for a neighbour embedding: the first two components
        out = np.zeros((n, 2), np.float32)
        out[:, : min(2, z.shape[1])] = z[:, :2]
        return out, "PCA"
    try:
        import umap

        return umap.UMAP(n_components=2, random_state=0).fit_transform(z).astype(np.float32), "UMAP"
    except ImportError:
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, (n - 1) / 3))
        tsne = TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=0)
        return tsne.fit_transform(z).astype(np.float32), "t-SNE"


def _place(z: np.ndarray, anchors: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Coordinates for the rows of `z`: the 1/distance-weighted mean of their nearest anchors'."""
    from sklearn.neighbors import NearestNeighbors

    k = min(NEIGHBOURS, anchors.shape[0])
    nn = NearestNeighbors(n_neighbors=k).fit(anchors)
    out = np.empty((z.shape[0], 2), np.float32)
    for start in range(0, z.shape[0], CHUNK_ROWS):
        d, idx = nn.kneighbors(z[start : start + CHUNK_ROWS])
        w = 1.0 / np.maximum(d, 1e-6)
        out[start : start + d.shape[0]] = (xy[idx] * w[..., None]).sum(1) / w.sum(1, keepdims=True)
    return out


def compute_map(store: str | os.PathLike, feature: str, embed_max: int = EMBED_MAX, seed: int = 0) -> EmbeddingMap:
    """The map of `feature` for every row of `store` (NaN for rows that are not ok).

    sklearn's OpenMP threads are limited to the cores other processes leave free: t-SNE's threads
    spinning on taken cores made 120 items take 35 s instead of 0.7 s.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(free_cores(), user_api="openmp"):
        return _compute_map(store, feature, embed_max, seed)


def _compute_map(store: str | os.PathLike, feature: str, embed_max: int, seed: int) -> EmbeddingMap:
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    with open_store(store) as s:
        n = len(s)
        rows = np.flatnonzero(s.status == OK)
    xy = np.full((n, 2), np.nan, np.float32)
    method = "none (no item has features)"
    if rows.size:
        z = _pca(store, feature, rows, rng)
        pick = np.zeros(rows.size, bool)
        pick[rng.choice(rows.size, size=min(embed_max, rows.size), replace=False)] = True
        core, method = _embed(z[pick])
        xy[rows[pick]] = core
        if (~pick).any():
            xy[rows[~pick]] = _place(z[~pick], z[pick], core)
        method = f"PCA to {z.shape[1]} dims, then {method}"
        if (~pick).any():
            method += (f" of {int(pick.sum()):,} random items; the other {int((~pick).sum()):,} placed "
                       f"by their {NEIGHBOURS} nearest in PCA space")  # fmt: skip
    return EmbeddingMap(xy[:, 0].copy(), xy[:, 1].copy(), method, time.perf_counter() - t0)


class MapCache:
    """The map of one feature of a store: read from beside the store, else computed once (thread-safe)."""

    def __init__(self, store: str | os.PathLike, feature: str, embed_max: int = EMBED_MAX):
        self.store, self.feature, self.embed_max = store, feature, embed_max
        self.path = map_path_for(store, feature)
        self._map: EmbeddingMap | None = None
        self._lock = threading.Lock()
        with open_store(store) as s:
            self._key = (str(s.attrs.get("store_uuid", "")), len(s))

    @property
    def ready(self) -> bool:
        return self._map is not None

    def get(self) -> EmbeddingMap:
        """The map, its coordinates as float64 rounded to 3 decimals: exactly what the page receives,
        so that a box filters the same items on the page and in the API."""
        with self._lock:
            if self._map is None:
                m = self._read() or self._compute()
                m.x, m.y = (np.round(np.asarray(a, dtype=np.float64), 3) for a in (m.x, m.y))
                self._map = m
            return self._map

    def _read(self) -> EmbeddingMap | None:
        if not self.path.is_file():
            return None
        try:
            with np.load(self.path, allow_pickle=False) as f:
                key = (str(f["store_uuid"]), int(f["n"]))
                if key != self._key or int(f["version"]) != CACHE_VERSION or str(f["feature"]) != self.feature:
                    log.info("%s is stale (the store changed): computing the map again", self.path)
                    return None
                return EmbeddingMap(f["x"], f["y"], str(f["method"]), 0.0)
        except (OSError, ValueError, KeyError) as e:
            log.warning("cannot read the map cache %s (%s): computing the map again", self.path, e)
            return None

    def _compute(self) -> EmbeddingMap:
        log.info("computing the 2-D map of %s ...", self.feature)
        m = compute_map(self.store, self.feature, self.embed_max)
        log.info("map of %s: %s in %.1f s", self.feature, m.method, m.seconds)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                np.savez(f, x=m.x, y=m.y, method=m.method, feature=self.feature, n=self._key[1],
                         store_uuid=self._key[0], version=CACHE_VERSION)  # fmt: skip
            os.replace(tmp, self.path)
        except OSError as e:
            log.warning("cannot write the map cache beside the store (%s): keeping the map in memory only", e)
        return m
