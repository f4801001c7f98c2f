"""IVFPQ code sizes that CPU and GPU faiss both accept, and the GPU cloner options they need."""

import faiss
import pytest

from evoked.features import index_build as fb


@pytest.mark.parametrize("d", [32, 64, 512, 768, 1280, 2048])
def test_pq_codes_fit_the_gpu_where_the_dimension_allows(d):
    for budget in (64, 100, 1000):
        m = fb._pq_m(d, budget)
        assert m <= budget and d % m == 0 and fb.pq_on_gpu(d, m), (d, budget, m)
    assert fb._pq_m(512, 63) == 32  # not 63 or 38: the GPU takes neither


def test_dimensions_without_a_gpu_code_use_the_budget_on_the_cpu():
    assert not any(fb.pq_on_gpu(524, m) for m in range(1, 525))
    assert fb._pq_m(524, 40) == 4 and fb._pq_m(524, 200) == 131  # no longer 4 bytes whatever the budget


def test_float16_lookup_tables_for_large_codes():
    q = faiss.IndexFlatIP(512)
    big = faiss.IndexIVFPQ(q, 512, 4, 64, 8, faiss.METRIC_INNER_PRODUCT)
    small = faiss.IndexIVFPQ(faiss.IndexFlatIP(512), 512, 4, 32, 8, faiss.METRIC_INNER_PRODUCT)
    flat = faiss.IndexIVFFlat(faiss.IndexFlatIP(512), 512, 4, faiss.METRIC_INNER_PRODUCT)
    assert fb._cloner_options(big).useFloat16 and fb._cloner_options(big, several=True).useFloat16
    assert not fb._cloner_options(small).useFloat16 and not fb._cloner_options(flat).useFloat16
