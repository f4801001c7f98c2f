"""FAISS nearest-neighbour indexes over cached features: vectors, exact search, save, load, search.

Similarity is cosine: every vector (stored and query) is L2-normalised and compared by inner product.
Row ``i`` of a feature store is FAISS id ``i`` unless the caller passes other ids; the index always
returns the caller's ids, never internal positions. Building lives in `evoked.features.index_build`.

Each saved index ``x.faiss`` has a sidecar ``x.faiss.json`` (:class:`IndexInfo`) recording how it was
built, the recall it reached and the search parameters to use. This module knows nothing about HDF5.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from evoked.errors import ConfigError

log = logging.getLogger(__name__)

_NORMALIZE_CHUNK_ELEMENTS = 1 << 22  # bounds the float64 temporaries of normalize()
_QUERY_BLOCK = 1024  # exact_search: 1024 x 16384 float32 scores = 64 MiB per block


# --------------------------------------------------------------------------------------------- info


@dataclass
class IndexInfo:
    """How an index was built; saved next to it as ``<index>.json``.

    ``params`` holds the index's own parameters (``nlist``/``nprobe`` for ivf, ``M``/
    ``efConstruction``/``efSearch`` for hnsw) plus the tuning inputs (``target_recall``,
    ``recall_queries``). ``recall_at_10`` is measured against exact search at build time (None for
    flat, which is exact). ``extra`` is for the caller's own keys (store path, feature name, ...).
    """

    kind: str
    n: int
    dim: int
    metric: str = "cosine"
    params: dict[str, Any] = field(default_factory=dict)
    recall_at_10: float | None = None
    faiss_version: str = ""
    built_at: str = ""
    build_seconds: float = 0.0
    on_gpu: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> IndexInfo:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"index info is not valid JSON ({e}); rebuild the index") from None
        if not isinstance(data, dict):
            raise ConfigError(
                f"index info must be a JSON object, got {type(data).__name__}; rebuild the index"
            )
        missing = [k for k in ("kind", "n", "dim") if k not in data]
        if missing:
            raise ConfigError(f"index info lacks {', '.join(missing)}; rebuild the index")
        known = {f.name for f in fields(cls)}
        # Unknown keys come from a newer evoked; dropping them keeps old readers working.
        return cls(**{k: v for k, v in data.items() if k in known})


# ------------------------------------------------------------------------------------------ vectors


def normalize(x: np.ndarray) -> np.ndarray:
    """Return a new float32, C-contiguous copy of ``x`` (N, D) with every row scaled to unit L2 norm.

    Zero rows stay zero. Norms are computed in float64 (chunk by chunk, so temporaries stay small)
    so large float32 values do not overflow. Raises ConfigError if any value is NaN or infinite.
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise ConfigError(f"expected a 2-D array of vectors (N, D), got shape {x.shape}; reshape the input")
    n, d = x.shape
    out = np.empty((n, d), dtype=np.float32)
    step = max(1, _NORMALIZE_CHUNK_ELEMENTS // max(d, 1))
    bad_rows = 0
    first_bad = -1
    for start in range(0, n, step):
        chunk = np.asarray(x[start : start + step], dtype=np.float64)
        finite = np.isfinite(chunk).all(axis=1)
        if not finite.all():
            if first_bad < 0:
                first_bad = start + int(np.argmin(finite))
            bad_rows += int((~finite).sum())
            continue  # keep counting; the output is discarded anyway
        norms = np.sqrt(np.einsum("ij,ij->i", chunk, chunk))
        norms[norms == 0] = 1.0  # zero rows stay zero instead of becoming NaN
        out[start : start + step] = chunk / norms[:, None]
    if bad_rows:
        raise ConfigError(
            f"{bad_rows} of {n} rows contain NaN or inf (first: row {first_bad}); "
            "re-extract those rows or leave them out before indexing"
        )
    return out


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean over queries of ``|found[:k] ∩ truth[:k]| / k``; -1 (no result) never counts as a hit."""
    found = np.asarray(found)
    truth = np.asarray(truth)
    if found.ndim != 2 or truth.ndim != 2 or found.shape[0] != truth.shape[0]:
        raise ConfigError(
            f"found and truth must be (q, >=k) arrays with the same q, got {found.shape} and {truth.shape}"
        )
    if not 1 <= k <= min(found.shape[1], truth.shape[1]):
        raise ConfigError(f"k={k} must be between 1 and the number of columns ({found.shape}, {truth.shape})")
    if found.shape[0] == 0:
        return 0.0
    hits = [len((set(f[:k].tolist()) & set(t[:k].tolist())) - {-1}) for f, t in zip(found, truth)]
    return float(np.mean(hits) / k)


def exact_search(
    vectors_normalized: np.ndarray, queries_normalized: np.ndarray, k: int, *, block_rows: int = 16_384
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-k by inner product: ``(scores float32 (q, k), positions int64 (q, k))``.

    Inputs must already be normalised (see :func:`normalize`). Rows are ordered by score, ties by
    lower position. ``k`` is clipped to the number of vectors. Memory is bounded: scores are computed
    for 1024 queries x ``block_rows`` vectors at a time and merged into a running top-k.
    """
    vecs = np.ascontiguousarray(vectors_normalized, dtype=np.float32)
    qs = np.ascontiguousarray(queries_normalized, dtype=np.float32)
    if vecs.ndim != 2 or qs.ndim != 2 or vecs.shape[1] != qs.shape[1]:
        raise ConfigError(f"vectors {vecs.shape} and queries {qs.shape} must be 2-D with the same width")
    if k < 1:
        raise ConfigError(f"k={k} must be at least 1")
    if block_rows < 1:
        raise ConfigError(f"block_rows={block_rows} must be at least 1")
    n, nq = vecs.shape[0], qs.shape[0]
    k = min(k, n)
    scores = np.empty((nq, k), dtype=np.float32)
    positions = np.empty((nq, k), dtype=np.int64)
    for q0 in range(0, nq, _QUERY_BLOCK):
        q = qs[q0 : q0 + _QUERY_BLOCK]
        best_s = np.empty((len(q), 0), dtype=np.float32)
        best_p = np.empty((len(q), 0), dtype=np.int64)
        for v0 in range(0, n, block_rows):
            s, p = _block_topk(q @ vecs[v0 : v0 + block_rows].T, k)
            best_s, best_p = merge_topk(best_s, best_p, s, p + v0, k)
        scores[q0 : q0 + len(q)] = best_s
        positions[q0 : q0 + len(q)] = best_p
    return scores, positions


def _block_topk(s: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k columns per row of a score block, ties broken by lower column (exactly, not by luck)."""
    rows, cols = s.shape
    if cols <= k:
        p = np.broadcast_to(np.arange(cols, dtype=np.int64), (rows, cols))
        return _sort_rows(s, p)
    p = np.argpartition(-s, k - 1, axis=1)[:, :k].astype(np.int64)
    top = np.take_along_axis(s, p, axis=1)
    kth = top.min(axis=1)
    # argpartition picks arbitrarily among values equal to the k-th; redo those (rare) rows exactly.
    for r in np.flatnonzero((s >= kth[:, None]).sum(axis=1) > k):
        cand = np.flatnonzero(s[r] >= kth[r])
        keep = cand[np.lexsort((cand, -s[r, cand]))[:k]]
        p[r] = keep
        top[r] = s[r, keep]
    return _sort_rows(top, p)


def merge_topk(
    s1: np.ndarray, p1: np.ndarray, s2: np.ndarray, p2: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The best `k` of two top-k lists (scores, positions), row by row."""
    s, p = _sort_rows(np.concatenate([s1, s2], axis=1), np.concatenate([p1, p2], axis=1))
    return s[:, :k], p[:, :k]


def _sort_rows(s: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row by score descending, then position ascending."""
    order = np.lexsort((p, -s), axis=1)
    return np.take_along_axis(s, order, axis=1), np.take_along_axis(p, order, axis=1)


# --------------------------------------------------------------------------------------- save, load


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Delete ``NAME.tmp-PID-xxxx`` files (of the index and its .json) left by processes that died."""
    removed = []
    for target in (Path(path), _json_path(Path(path))):
        for tmp in target.parent.glob(target.name + ".tmp-*-*"):
            pid = tmp.name[len(target.name) + len(".tmp-") :].split("-", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
    if removed:
        log.info(
            "removed %d temporaries of killed index builds: %s", len(removed), ", ".join(map(str, removed))
        )
    return removed


def save_index(index: faiss.Index, info: IndexInfo, path: str | Path) -> None:
    """Write ``path`` (the faiss index) and ``path.json`` (``info``), each via a temp file + rename.

    Temporaries that a killed earlier run left beside `path` are removed first.
    """
    path = Path(path)
    json_path = _json_path(path)
    remove_stale_temporaries(path)
    tag = f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp_index, tmp_json = path.with_name(path.name + tag), json_path.with_name(json_path.name + tag)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        faiss.write_index(index, str(tmp_index))
        tmp_json.write_text(info.to_json() + "\n", encoding="utf-8")
        os.replace(tmp_index, path)
        os.replace(tmp_json, json_path)
    finally:
        for tmp in (tmp_index, tmp_json):
            tmp.unlink(missing_ok=True)
    log.info("saved %s index (%d vectors) to %s", info.kind, info.n, path)


def load_index(path: str | Path) -> tuple[faiss.Index, IndexInfo]:
    """Read an index saved by :func:`save_index`, with its search parameters restored from the info."""
    path = Path(path)
    json_path = _json_path(path)
    for p in (path, json_path):
        if not p.is_file():
            raise ConfigError(f"no index at {p}; run `evoked index ...` first to build it")
    try:
        info = IndexInfo.from_json(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {json_path}: {e}; rebuild it with `evoked index ...`") from None
    except ConfigError as e:
        raise ConfigError(f"{json_path}: {e}") from None
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as e:
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"cannot read faiss index {path} ({msg}); rebuild it with `evoked index ...`"
        ) from None
    if index.ntotal != info.n or index.d != info.dim:
        raise ConfigError(
            f"{path} holds {index.ntotal} x {index.d} vectors but {json_path} says {info.n} x {info.dim}; "
            "rebuild it with `evoked index ...`"
        )
    _apply_params(index, info)
    return index, info


def _json_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _inner(index: faiss.Index) -> faiss.Index:
    """The index an IndexIDMap/IndexIDMap2 wraps, downcast so its own attributes are reachable."""
    if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        return faiss.downcast_index(index.index)
    return index


def _apply_params(index: faiss.Index, info: IndexInfo) -> None:
    inner = _inner(index)
    if info.kind.startswith("ivf") and "nprobe" in info.params and hasattr(inner, "nprobe"):
        inner.nprobe = int(info.params["nprobe"])
    elif info.kind == "hnsw" and "efSearch" in info.params and hasattr(inner, "hnsw"):
        inner.hnsw.efSearch = int(info.params["efSearch"])


# ------------------------------------------------------------------------------------------- search


def search(
    index: faiss.Index, queries: np.ndarray, k: int, info: IndexInfo | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k cosine neighbours: ``(scores float32 (q, k), ids int64 (q, k))``, best first.

    ``queries`` is (q, D) or a single (D,) vector; it is normalised here. ``k`` is clipped to the
    index size. With ``info``, its nprobe/efSearch are used for this call only (the index is not
    changed). The shape is always full: an id of -1 with score -inf means "no result", which
    approximate indexes can return when too few candidates were visited.
    """
    if k < 1:
        raise ConfigError(f"k={k} must be at least 1")
    q = np.asarray(queries)
    if q.ndim == 1:
        q = q[None, :]
    if q.ndim != 2 or q.shape[1] != index.d:
        raise ConfigError(f"queries must be (q, {index.d}) to match the index, got shape {np.shape(queries)}")
    q = normalize(q)
    k = min(k, index.ntotal)
    if k == 0:
        return np.empty((len(q), 0), dtype=np.float32), np.empty((len(q), 0), dtype=np.int64)
    params = _search_params(info)
    if params is None:
        scores, ids = index.search(q, k)
    else:
        scores, ids = index.search(q, k, params=params)
    scores = scores.astype(np.float32, copy=False)
    scores[ids < 0] = -np.inf  # faiss fills with -FLT_MAX, which looks like a real score
    return scores, ids.astype(np.int64, copy=False)


def _search_params(info: IndexInfo | None) -> faiss.SearchParameters | None:
    # the ignores: faiss's bundled stubs lack SearchParametersHNSW and the SWIG keyword constructors
    if info is None:
        return None
    if info.kind.startswith("ivf") and "nprobe" in info.params:
        return faiss.SearchParametersIVF(nprobe=int(info.params["nprobe"]))  # type: ignore[call-arg]
    if info.kind == "hnsw" and "efSearch" in info.params:
        return faiss.SearchParametersHNSW(efSearch=int(info.params["efSearch"]))  # type: ignore[attr-defined]
    return None


# -------------------------------------------------------------------------------------------- paths


def index_path_for(store_path: str | os.PathLike, feature: str) -> Path:
    """Where the index of ``feature`` in a store lives: ``d/e6.h5`` + ``resnet50/pool`` -> ``d/e6.resnet50-pool.faiss``."""
    name = feature.strip("/").replace("/", "-")
    if not name:
        raise ConfigError(f"feature name {feature!r} is empty; pass e.g. 'resnet50/pool'")
    store = Path(store_path)
    return store.with_name(f"{store.stem}.{name}.faiss")
