"""Building FAISS indexes: the kind chosen by size and a memory budget, IVF trained on a sample,
vectors added chunk by chunk, and the search parameter tuned against an exact search.

`build_index_streaming` takes its vectors through `chunks`, a function that returns a fresh
iterable of ``(ids, vectors)`` each time it is called (for a feature store,
`FeatureStore.iter_chunks`): peak memory is the index itself, the training sample and one chunk,
never the whole matrix, so stores larger than memory can be indexed. `build_index` is the same for
an array already in memory.

Kinds, cheapest in memory last (bytes per vector for dimension d):

- ``flat``: exact, ``4d``;
- ``ivf``: IVF with full vectors, ``4d``; exact within the probed lists;
- ``hnsw``: HNSW graph with full vectors, ``4d + 8M``; fastest queries, slow to build on few cores;
- ``ivffp16``: IVF with vectors stored as float16, ``2d``; recall as ``ivf`` in practice;
- ``ivfsq8``: IVF with 8-bit scalar-quantised vectors, ``d``; quantisation costs some recall;
- ``ivfpq``: IVF with product quantisation, ``m`` bytes; the most compact, lowest recall.

``auto`` takes ``flat`` up to `exact_threshold` vectors when it fits, else the first of
``ivf``, ``ivffp16``, ``ivfsq8``, ``ivfpq`` whose index fits in 60% of `memory_budget`. The recall
reached is always measured and reported, never assumed.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import faiss
import numpy as np

from evoked.clock import utc_now
from evoked.errors import ConfigError
from evoked.features.index import IndexInfo, merge_topk, normalize
from evoked.features.index_kinds import INDEX_KINDS

log = logging.getLogger(__name__)

DEFAULT_BUDGET = 2 * 2**30
ADD_CHUNK = 65_536  # rows per add() call of an in-memory array; also the granularity of on_progress
RECALL_K = 10
TUNE_QUERIES = 1000
NPROBE_CANDIDATES = tuple(2**i for i in range(16))  # 1 .. 32768; capped at nlist
EF_SEARCH_CANDIDATES = (16, 32, 64, 128, 256, 512)
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
MIN_PER_LIST = 39  # faiss k-means warns below this many training points per centroid
TRAIN_PER_LIST = 64  # k-means points per list: enough for good lists, cheap on few cores
INDEX_SHARE, TRAIN_SHARE = 0.6, 0.2  # of the memory budget
# Two similarities closer than this count as a tie when measuring recall (float32 dot products of
# the same pair computed by numpy and by faiss differ by ~1e-7).
TIE_TOLERANCE = 1e-5

Chunks = Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]
ProgressFn = Callable[[int], None]


def parse_bytes(text: str | int) -> int:
    """``"2GB"``, ``"512M"``, ``1073741824`` -> bytes (powers of 1024)."""
    if isinstance(text, int):
        return text
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    try:
        return int(float(t[:-1]) * scale[t[-1]]) if t and t[-1] in scale else int(float(t))
    except (ValueError, IndexError):
        raise ConfigError(f"{text!r} is not a size such as 2GB or 512MB") from None


def bytes_per_vector(kind: str, d: int, pq_m: int = 0) -> int:
    return {
        "flat": 4 * d,
        "ivf": 4 * d + 8,
        "hnsw": 4 * d + 8 * HNSW_M + 8,
        "ivffp16": 2 * d + 8,
        "ivfsq8": d + 8,
        "ivfpq": pq_m + 8,
    }[kind]


#: Code sizes (bytes = sub-quantisers at 8 bits) that faiss's GPU IVFPQ accepts; 56 and above only
#: with float16 lookup tables (`_cloner_options` asks for them).
GPU_PQ_BYTES = (1, 2, 3, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 96)
#: Dimensions per sub-quantiser that the GPU IVFPQ scan accepts (without precomputed tables).
GPU_PQ_SUBDIMS = (1, 2, 3, 4, 6, 8, 10, 12, 16, 20, 24, 28, 32)
GPU_PQ_FP16_FROM = 56


def pq_on_gpu(d: int, m: int) -> bool:
    """Whether an IVFPQ with `m` sub-quantisers over `d` dimensions can be cloned to a GPU."""
    return m in GPU_PQ_BYTES and d % m == 0 and d // m in GPU_PQ_SUBDIMS


def _pq_m(d: int, max_bytes: int) -> int:
    """Sub-quantisers for PQ, at most `max_bytes`: the largest that both CPU and GPU faiss accept;
    where `d` has none (d = 524, 1000: no divisor with 1-32 dimensions each), the largest divisor
    of d (the CPU's only rule), and the index is trained on the CPU."""
    budget = max(1, max_bytes)
    both = [m for m in GPU_PQ_BYTES if m <= budget and pq_on_gpu(d, m)]
    if both:
        return max(both)
    return max(m for m in range(1, min(d, budget) + 1) if d % m == 0)


def _cloner_options(index: faiss.Index, *, several: bool = False):
    """GPU cloner options: float16 lookup tables for IVFPQ codes of 56 bytes and more (their fp32
    tables do not fit in a block's shared memory); other kinds keep fp32 (float16 would store them so)."""
    co = faiss.GpuMultipleClonerOptions() if several else faiss.GpuClonerOptions()
    pq = faiss.downcast_index(index)
    if isinstance(pq, faiss.IndexIVFPQ) and pq.pq.M >= GPU_PQ_FP16_FROM:
        co.useFloat16 = True
    return co


def plan_index(
    n: int, d: int, kind: str = "auto", *, memory_budget: int = DEFAULT_BUDGET, exact_threshold: int = 200_000
) -> dict[str, Any]:
    """The kind, list count and size estimate for `n` vectors of dimension `d`."""
    INDEX_KINDS.get(kind)
    if exact_threshold < 0:
        raise ConfigError(f"exact_threshold={exact_threshold} must be >= 0")
    room = INDEX_SHARE * memory_budget
    pq_m = _pq_m(d, int(room / max(n, 1)) - 8)
    if kind == "auto":
        order = (["flat"] if n <= exact_threshold else []) + ["ivf", "ivffp16", "ivfsq8", "ivfpq"]
        kind = next((k for k in order if n * bytes_per_vector(k, d, pq_m) <= room), "ivfpq")
    nlist = 0
    if kind.startswith("ivf"):
        # 4 sqrt(n) lists, each with enough points to train, and a training sample within budget
        nlist = max(1, min(round(4 * math.sqrt(n)), 16384, n // MIN_PER_LIST or 1))
        max_train = int(TRAIN_SHARE * memory_budget / (4 * d))
        nlist = max(1, min(nlist, max_train // MIN_PER_LIST or 1))
    need = n * bytes_per_vector(kind, d, pq_m)
    if need > memory_budget:
        log.warning(
            "a %s index of %d x %d needs about %.1f GiB, above the %.1f GiB budget",
            kind,
            n,
            d,
            need / 2**30,
            memory_budget / 2**30,
        )
    return {"kind": kind, "nlist": nlist, "pq_m": pq_m if kind == "ivfpq" else 0, "index_bytes": need}


def _sample_rows(chunks: Chunks, n: int, rows: np.ndarray, with_ids: bool = False):
    """Normalised vectors at the given positions (in iteration order), in one pass, written into
    one preallocated array (no list of parts to concatenate); with `with_ids`, also their ids."""
    want = np.sort(rows)
    vectors, out_ids = None, np.zeros(len(want), dtype=np.int64)
    at, pos = 0, 0
    for ids, x in chunks():
        if vectors is None:
            vectors = np.empty((len(want), x.shape[1]), dtype=np.float32)
        stop = at + len(x)
        hi = int(np.searchsorted(want, stop))
        if hi > pos:
            vectors[pos:hi] = normalize(x[want[pos:hi] - at])
            out_ids[pos:hi] = np.asarray(ids)[want[pos:hi] - at]
            pos = hi
        at = stop
        del x  # not held while the next chunk is read
    if at != n:
        raise ConfigError(f"the chunks held {at} vectors but {n} were announced")
    if vectors is None:
        vectors = np.zeros((0, 0), np.float32)
    return (vectors, out_ids) if with_ids else vectors


def exact_search_streaming(chunks: Chunks, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product over all chunks: (scores, ids), in bounded memory."""
    q = normalize(queries)
    best_s = np.empty((len(q), 0), dtype=np.float32)
    best_i = np.empty((len(q), 0), dtype=np.int64)
    for ids, x in chunks():
        x, ids = normalize(x), np.asarray(ids)
        for start in range(0, len(x), 4096):  # bounds the (queries x rows) score block
            s = q @ x[start : start + 4096].T
            kk = min(k, s.shape[1])
            part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
            found = ids[start : start + 4096][part]
            best_s, best_i = merge_topk(best_s, best_i, np.take_along_axis(s, part, 1), found, k)
        del x  # not held while the next chunk is read
    return best_s, best_i


def _new_index(kind: str, d: int, nlist: int, pq_m: int) -> faiss.Index:
    ip = faiss.METRIC_INNER_PRODUCT
    if kind == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(d))
    if kind == "hnsw":
        h = faiss.IndexHNSWFlat(d, HNSW_M, ip)
        h.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        return faiss.IndexIDMap2(h)
    quantizer = faiss.IndexFlatIP(d)
    if kind == "ivf":
        return faiss.IndexIVFFlat(quantizer, d, nlist, ip)
    if kind in ("ivffp16", "ivfsq8"):
        qtype = faiss.ScalarQuantizer.QT_fp16 if kind == "ivffp16" else faiss.ScalarQuantizer.QT_8bit
        return faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, qtype, ip)
    return faiss.IndexIVFPQ(quantizer, d, nlist, pq_m, 8, ip)


def _train_on_gpu(index: faiss.Index, train: np.ndarray) -> faiss.Index:
    """Train an IVF index on GPU 0 and return the trained CPU index."""
    res = faiss.StandardGpuResources()
    gpu = faiss.index_cpu_to_gpu(res, 0, index, _cloner_options(index))
    gpu.train(train)
    trained = faiss.index_gpu_to_cpu(gpu)
    del gpu, res
    return trained


def _gpus_for_adding(trained: faiss.Index):
    """The trained index on every GPU faiss sees: one copy on one GPU, else sharded (each GPU
    holds part of the vectors; the shared, already-trained quantizer keeps the lists compatible).
    Returns (gpu_index, resources to keep alive while it is used)."""
    n_gpu = faiss.get_num_gpus()
    if n_gpu <= 1:
        res = faiss.StandardGpuResources()
        return faiss.index_cpu_to_gpu(res, 0, trained, _cloner_options(trained)), [res]
    options = _cloner_options(trained, several=True)
    options.shard = True
    options.common_ivf_quantizer = True
    return faiss.index_cpu_to_all_gpus(trained, co=options, ngpu=n_gpu), []


def build_index_streaming(
    chunks: Chunks,
    n: int,
    d: int,
    kind: str = "auto",
    *,
    memory_budget: int = DEFAULT_BUDGET,
    exact_threshold: int = 200_000,
    target_recall: float = 0.95,
    use_gpu: bool | str = "auto",
    seed: int = 0,
    on_progress: Callable[[int], None] | None = None,
) -> tuple[faiss.Index, IndexInfo]:
    """Build a cosine index over `n` vectors delivered by `chunks`, in bounded memory.

    IVF kinds are trained on a random sample (about 50 vectors per list, within 20% of the
    budget), filled chunk by chunk (on the GPU when faiss sees one: sharded over several), and
    their nprobe (efSearch for HNSW) is the smallest whose recall@10 on 1000 sampled rows, each
    searched with itself left out (as a new image would be), against an exact search that streams
    over all vectors, reaches `target_recall`. CPU IVF lists are allocated at their final size
    (`_add_presized`), so the index holds no over-allocated list capacity.
    """
    if n < 1 or d < 1:
        raise ConfigError(f"vectors must have at least one row and one column, got {n} x {d}")
    if not 0.0 < target_recall <= 1.0:
        raise ConfigError(f"target_recall={target_recall} must be in (0, 1]")
    plan = plan_index(n, d, kind, memory_budget=memory_budget, exact_threshold=exact_threshold)
    kind, nlist, pq_m = plan["kind"], plan["nlist"], plan["pq_m"]
    on_gpu = _resolve_gpu(use_gpu) and kind.startswith("ivf")
    if on_gpu and kind == "ivfpq" and not pq_on_gpu(d, pq_m):
        msg = "ivfpq: %d sub-quantisers over %d dimensions (%d each) have no GPU form; using the CPU"
        log.warning(msg, pq_m, d, d // pq_m)
        on_gpu = False
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)  # one generator: the training sample, then the tuning queries
    index, train_rows = _new_index(kind, d, nlist, pq_m), None
    if kind.startswith("ivf"):
        faiss.extract_index_ivf(index).cp.seed = seed
        n_train = min(
            n, TRAIN_PER_LIST * nlist, max(MIN_PER_LIST * nlist, int(TRAIN_SHARE * memory_budget / (4 * d)))
        )
        train_rows = rng.choice(n, size=n_train, replace=False)
    index = _fill(index, chunks, n, train_rows, on_gpu, on_progress)
    params: dict[str, Any] = {"nlist": nlist} if nlist else {}
    if pq_m:
        params["pq_m"] = pq_m
    recall = _tune(index, kind, nlist, chunks, n, rng, target_recall, params) if kind != "flat" else None
    info = IndexInfo(
        kind=kind, n=n, dim=d, params=params, recall_at_10=recall, faiss_version=faiss.__version__,
        built_at=utc_now(), build_seconds=round(time.perf_counter() - t0, 3), on_gpu=on_gpu,
        extra={"memory_budget": memory_budget, "index_bytes_estimate": plan["index_bytes"]},
    )  # fmt: skip
    msg = "built %s index of %d x %d (%s), recall@10 %s in %.1f s"
    log.info(msg, kind, n, d, params, recall, info.build_seconds)
    return index, info


def _fill(
    index: faiss.Index,
    chunks: Chunks,
    n: int,
    train_rows: np.ndarray | None,
    on_gpu: bool,
    on_progress: ProgressFn | None,
) -> faiss.Index:
    """Train an IVF index on the rows `train_rows`, then add every vector; a GPU index comes back as
    one CPU index (sharded lists merged)."""
    keep: list = []  # GPU resources, alive while the GPU index is used
    if train_rows is not None:
        train = _sample_rows(chunks, n, train_rows)
        if on_gpu:
            index, keep = _gpus_for_adding(_train_on_gpu(index, train))
        else:
            index.train(train)
            del train
            _add_presized(faiss.extract_index_ivf(index), chunks, n, on_progress)
            return index
        del train
    for ids, x in chunks():
        index.add_with_ids(normalize(x), np.asarray(ids, dtype=np.int64))
        if on_progress:
            on_progress(len(x))
        del x  # not held while the next chunk is read
    return faiss.index_gpu_to_cpu(index) if on_gpu else index


def _tune(
    index: faiss.Index,
    kind: str,
    nlist: int,
    chunks: Chunks,
    n: int,
    rng: np.random.Generator,
    target_recall: float,
    params: dict[str, Any],
) -> float:
    """Set the smallest nprobe/efSearch reaching `target_recall`; record it in `params`; the recall.

    Tuning queries are rows of the data, each searched with itself left out: they stand for new
    images from the same distribution (searching a row that is in the index finds itself, which
    made recall look better than it is for new queries).
    """
    rows = rng.choice(n, size=min(TUNE_QUERIES, n), replace=False)
    queries, query_ids = _sample_rows(chunks, n, rows, with_ids=True)
    k = min(RECALL_K, n - 1) if n > 1 else 1
    truth_scores, truth_ids = exact_search_streaming(chunks, queries, k + 1)
    truth_scores = _without_self(truth_scores, truth_ids, query_ids, k)[0]
    name, candidates, setter = _tuning_knob(index, kind, nlist)
    for value in candidates:
        setter(value)
        scores, found = index.search(queries, k + 1)
        scores, found = _without_self(scores, found, query_ids, k)
        recall = _tie_aware_recall(scores, found, truth_scores[:, -1])
        if recall >= target_recall:
            break
    else:
        fallback = "nlist: exhaustive" if name == "nprobe" else "the largest tried"
        msg = "recall@%d never reached %.3f; using %s=%d (%s), which reaches %.4f"
        log.warning(msg, k, target_recall, name, value, fallback, recall)
    if kind == "hnsw":
        params.update({"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION})
    params[name] = value
    params.update({"target_recall": float(target_recall), "recall_queries": len(rows)})
    return recall


def _add_presized(index: faiss.IndexIVF, chunks: Chunks, n: int, on_progress: ProgressFn | None) -> None:
    """Fill a trained CPU IVF index with every list allocated at its final size.

    ``add_with_ids`` appends to each inverted list, and a growing list doubles its capacity, so a
    filled index holds on average about 40% more memory than its vectors (measured: 1.5 GB for a
    1.04 GB index of 1,000,000 x 512 float16). Here a first pass assigns every vector to its list
    (8 bytes a vector), each list is then allocated once at its exact size, and a second pass
    encodes the vectors and writes them in place. Same lists, same order, same search results.
    """
    lists = np.empty(n, dtype=np.int64)
    at = 0
    for _, x in chunks():
        _, assigned = index.quantizer.search(normalize(x), 1)
        lists[at : at + len(x)] = assigned[:, 0]
        at += len(x)
        del x
    if at != n:
        raise ConfigError(f"the chunks held {at} vectors but {n} were announced")
    assert index.invlists is not None  # a trained IVF index has its lists
    invlists = faiss.downcast_InvertedLists(index.invlists)
    counts = np.bincount(lists, minlength=index.nlist)
    for list_no in np.flatnonzero(counts):
        invlists.resize(int(list_no), int(counts[list_no]))
    filled = np.zeros(index.nlist, dtype=np.int64)
    at = 0
    for ids, x in chunks():
        m = len(x)
        xn, assigned = normalize(x), lists[at : at + m]
        at += m
        del x
        codes = np.empty((m, index.code_size), dtype=np.uint8)
        index.encode_vectors(m, faiss.swig_ptr(xn), faiss.swig_ptr(assigned), faiss.swig_ptr(codes))
        order = np.argsort(assigned, kind="stable")
        lst_sorted = assigned[order]
        ids_sorted = np.ascontiguousarray(np.asarray(ids, dtype=np.int64)[order])
        codes_sorted = np.ascontiguousarray(codes[order])
        del codes, xn
        cuts = np.flatnonzero(np.diff(lst_sorted)) + 1
        for a, b in zip(np.r_[0, cuts], np.r_[cuts, m]):
            lst = int(lst_sorted[a])
            invlists.update_entries(lst, int(filled[lst]), int(b - a), faiss.swig_ptr(ids_sorted[a:b]),
                                    faiss.swig_ptr(codes_sorted[a:b]))  # fmt: skip
            filled[lst] += b - a
        index.ntotal += m
        if on_progress:
            on_progress(m)


def _tuning_knob(index: faiss.Index, kind: str, nlist: int):
    if kind == "hnsw":
        inner = faiss.downcast_index(index.index)  # type: ignore[attr-defined]  # IndexIDMap2 of an HNSW

        def set_ef(v: int) -> None:
            inner.hnsw.efSearch = v  # type: ignore[attr-defined]  # the stubs' downcast_index gives Index

        return "efSearch", EF_SEARCH_CANDIDATES, set_ef

    def set_nprobe(v: int) -> None:
        faiss.extract_index_ivf(index).nprobe = v

    return "nprobe", [v for v in NPROBE_CANDIDATES if v < nlist] + [nlist], set_nprobe


def _without_self(scores: np.ndarray, ids: np.ndarray, own: np.ndarray, k: int):
    """The first k results of each row without the query's own id (or without the last result
    when the own id is not among them): k + 1 results in, k out."""
    if scores.shape[1] <= k:
        return scores, ids
    is_own = ids == np.asarray(own)[:, None]
    drop = np.where(is_own.any(axis=1), is_own.argmax(axis=1), ids.shape[1] - 1)
    keep = np.ones(ids.shape, dtype=bool)
    keep[np.arange(len(ids)), drop] = False
    shape = (len(ids), ids.shape[1] - 1)
    return scores[keep].reshape(shape)[:, :k], ids[keep].reshape(shape)[:, :k]


def _tie_aware_recall(scores: np.ndarray, found: np.ndarray, kth_truth: np.ndarray) -> float:
    """Recall@k that counts a result as a hit when it scores at least the exact k-th best.

    This equals id-based recall except on ties: with duplicate images in a store, an exact search
    may return any of the duplicates, so id-based recall would punish correct answers.
    """
    hits = (found >= 0) & (scores >= kth_truth[:, None] - TIE_TOLERANCE)
    return float(hits.sum(axis=1).mean() / found.shape[1])


def _resolve_gpu(use_gpu: bool | str) -> bool:
    # Compare bools by identity: 0/1 would otherwise pass as False/True.
    if use_gpu is False or use_gpu == "never":
        return False
    if not (use_gpu is True or use_gpu in ("auto", "always")):
        raise ConfigError(f"use_gpu={use_gpu!r} is not one of 'auto', 'never', 'always', True, False")
    ngpu = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if use_gpu == "auto":
        return ngpu > 0
    if ngpu == 0:
        raise ConfigError(f"use_gpu={use_gpu!r} but faiss sees no GPU; pass use_gpu='auto' or 'never'")
    return True


def _check_ids(ids: np.ndarray | Sequence[int] | None, n: int) -> np.ndarray:
    if ids is None:
        return np.arange(n, dtype=np.int64)
    arr = np.asarray(ids)
    if arr.ndim != 1 or len(arr) != n:
        raise ConfigError(f"ids must be a 1-D array with one id per vector ({n}), got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ConfigError(f"ids must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise ConfigError(f"ids must be >= 0 (faiss uses -1 for 'no result'), got {int(arr.min())}")
    uniq, counts = np.unique(arr, return_counts=True)
    if len(uniq) != n:
        dups = uniq[counts > 1]
        raise ConfigError(f"ids must be unique: {len(dups)} ids repeat (e.g. {dups[:5].tolist()})")
    return arr


def build_index(
    vectors: np.ndarray,
    ids: np.ndarray | Sequence[int] | None = None,
    kind: str = "auto",
    *,
    exact_threshold: int = 200_000,
    target_recall: float = 0.95,
    use_gpu: bool | str = "auto",
    seed: int = 0,
    memory_budget: int = DEFAULT_BUDGET,
    on_progress: ProgressFn | None = None,
) -> tuple[faiss.Index, IndexInfo]:
    """Build a cosine-similarity index over an in-memory array `vectors` (N, D) returning `ids`
    (default 0..N-1); see `build_index_streaming` for the kinds and how they are tuned."""
    x = np.asarray(vectors)
    if x.ndim != 2:
        raise ConfigError(f"vectors must be a 2-D array (N, D), got shape {x.shape}")
    n, d = x.shape
    if n < 1 or d < 1:
        raise ConfigError(f"vectors must have at least one row and one column, got shape {x.shape}")
    id_arr = _check_ids(ids, n)
    x = normalize(x)  # also fails early, naming the rows, on NaN or inf

    def chunks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, n, ADD_CHUNK):
            yield id_arr[start : start + ADD_CHUNK], x[start : start + ADD_CHUNK]

    return build_index_streaming(
        chunks, n, d, kind, memory_budget=memory_budget, exact_threshold=exact_threshold,
        target_recall=target_recall, use_gpu=use_gpu, seed=seed, on_progress=on_progress,
    )  # fmt: skip
