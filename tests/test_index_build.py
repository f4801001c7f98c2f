"""Index building in bounded memory: kinds by size and budget, chunked adds, streamed exact search."""

import tracemalloc

import numpy as np
import pytest

from evoked.errors import ConfigError
from evoked.features import index as fi
from evoked.features import index_build as fb


def _chunks(n: int, d: int, rows: int, seed: int = 0, centers: int = 20):
    """Clustered vectors generated chunk by chunk: the whole matrix never exists in memory."""
    c = np.random.default_rng(seed).normal(size=(centers, d)).astype(np.float32)

    def gen():
        for start in range(0, n, rows):
            stop = min(start + rows, n)
            rng = np.random.default_rng([seed, start])
            x = c[rng.integers(0, centers, stop - start)] + 0.35 * rng.normal(size=(stop - start, d)).astype(
                np.float32
            )
            yield np.arange(start, stop), x

    return gen


def test_plan_by_size_and_budget():
    assert fb.plan_index(1000, 64)["kind"] == "flat"
    assert fb.plan_index(500_000, 64)["kind"] == "ivf"
    assert fb.plan_index(1_000_000, 512, memory_budget=2 * 2**30)["kind"] == "ivffp16"
    assert fb.plan_index(1_000_000, 512, memory_budget=1 * 2**30)["kind"] == "ivfsq8"
    tight = fb.plan_index(1_000_000, 512, memory_budget=200 * 2**20)
    assert tight["kind"] == "ivfpq" and 512 % tight["pq_m"] == 0 and tight["index_bytes"] <= 200 * 2**20
    assert fb.plan_index(300_000, 64, "hnsw")["kind"] == "hnsw"
    with pytest.raises(ConfigError, match="choose one of"):
        fb.plan_index(10, 4, "lsh")
    assert fb.parse_bytes("2GB") == 2 * 2**30 and fb.parse_bytes("512MiB") == 512 * 2**20
    with pytest.raises(ConfigError, match="2GB"):
        fb.parse_bytes("lots")


def test_streamed_exact_search_equals_in_memory():
    gen = _chunks(3000, 16, 700)
    x = np.concatenate([v for _, v in gen()])
    q = x[[5, 999, 2500]]
    s1, i1 = fb.exact_search_streaming(gen, q, 7)
    s2, i2 = fi.exact_search(fi.normalize(x), fi.normalize(q), 7)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(s1, s2, rtol=1e-5)


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivffp16", "hnsw"])
def test_streamed_build_reaches_recall(kind):
    gen = _chunks(6000, 32, 1000)
    index, info = fb.build_index_streaming(gen, 6000, 32, kind, use_gpu="never")
    assert info.kind == kind and index.ntotal == 6000
    if kind != "flat":
        assert info.recall_at_10 >= 0.95 and info.params["recall_queries"] == 1000
    x = np.concatenate([v for _, v in gen()])
    _, truth = fi.exact_search(fi.normalize(x), fi.normalize(x[:50]), 10)
    _, found = fi.search(index, x[:50], 10, info)
    assert fi.recall_at_k(found, truth, 10) >= (1.0 if kind == "flat" else 0.9)


@pytest.mark.parametrize("kind", ["ivfsq8", "ivfpq"])
def test_quantised_kinds_report_what_they_reached(kind):
    gen = _chunks(6000, 32, 1000)
    index, info = fb.build_index_streaming(gen, 6000, 32, kind, use_gpu="never", target_recall=0.5)
    assert info.kind == kind and index.ntotal == 6000 and 0.5 <= info.recall_at_10 <= 1
    if kind == "ivfpq":
        assert info.params["pq_m"] in (1, 2, 4, 8, 16, 32)


def _peak(n: int, d: int) -> int:
    tracemalloc.start()
    try:
        fb.build_index_streaming(
            _chunks(n, d, 2000), n, d, "ivfsq8", use_gpu="never", memory_budget=8 * 2**20, target_recall=0.5
        )
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_stays_bounded_as_n_grows():
    """Python-side peak memory (numpy buffers) does not grow with the number of vectors."""
    small, large = _peak(20_000, 32), _peak(80_000, 32)
    assert large < 1.5 * small, (small, large)


def test_announced_size_must_match():
    with pytest.raises(ConfigError, match="held 100 vectors but 150"):
        fb.build_index_streaming(_chunks(100, 8, 30), 150, 8, "ivf", use_gpu="never")


@pytest.mark.parametrize("factory", ["IVF16,Flat", "IVF16,SQfp16", "IVF16,SQ8"])
def test_presized_lists_hold_what_add_would(factory):
    """Filling IVF lists allocated at their final size gives the index `add_with_ids` gives."""
    import faiss

    gen = _chunks(3000, 16, 700)
    x = fi.normalize(np.concatenate([v for _, v in gen()]))
    ivf = faiss.index_factory(16, factory, faiss.METRIC_INNER_PRODUCT)
    ivf.train(x)
    appended, presized = faiss.clone_index(ivf), faiss.clone_index(ivf)
    for ids, v in gen():
        appended.add_with_ids(fi.normalize(v), ids.astype(np.int64))
    fb._add_presized(presized, gen, 3000, None)
    assert presized.ntotal == appended.ntotal == 3000
    for lst in range(ivf.nlist):
        assert presized.invlists.list_size(lst) == appended.invlists.list_size(lst)
    for nprobe in (2, 16):
        appended.nprobe = presized.nprobe = nprobe
        s1, i1 = appended.search(x[:200], 10)
        s2, i2 = presized.search(x[:200], 10)
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_array_equal(s1, s2)


def test_tuning_queries_leave_themselves_out():
    ids = np.array([[7, 3, 5], [1, 2, 9], [4, 4, 4]])
    scores = np.array([[1.0, 0.9, 0.8], [0.7, 0.6, 0.5], [0.3, 0.2, 0.1]])
    s, i = fb._without_self(scores, ids, np.array([7, 9, 8]), 2)
    np.testing.assert_array_equal(i, [[3, 5], [1, 2], [4, 4]])  # own id dropped, else the last
    np.testing.assert_array_equal(s, [[0.9, 0.8], [0.7, 0.6], [0.3, 0.2]])
