"""Tests for evoked.features.index on seeded synthetic features (clustered gaussians)."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest

from evoked.errors import ConfigError
from evoked.features import index as fi
from evoked.features import index_build as fb

N, D = 5000, 32


def clustered(n: int = N, d: int = D, centers: int = 50, seed: int = 0) -> np.ndarray:
    """Gaussian blobs around random centres: structure like real features, so IVF/HNSW tune sanely."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, d)).astype(np.float32)
    return (c[rng.integers(0, centers, n)] + 0.35 * rng.standard_normal((n, d))).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return clustered()


@pytest.fixture(scope="module")
def queries(data) -> np.ndarray:
    # New points near the data (not rows of it), so the nearest neighbour is not trivially itself.
    rng = np.random.default_rng(123)
    return (data[rng.integers(0, N, 300)] + 0.2 * rng.standard_normal((300, D))).astype(np.float32)


@pytest.fixture(scope="module")
def built(data):
    """One index of each kind, built once for the module."""
    return {kind: fb.build_index(data, kind=kind, use_gpu="never") for kind in ("flat", "ivf", "hnsw")}


def exact_ids(data: np.ndarray, queries: np.ndarray, k: int, ids: np.ndarray | None = None):
    scores, pos = fi.exact_search(fi.normalize(data), fi.normalize(queries), k)
    return scores, (pos if ids is None else ids[pos])


# ------------------------------------------------------------------------------------------- normalize


def test_normalize_unit_rows_zero_row_and_no_mutation():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [1e30, 1e30]], dtype=np.float64)
    before = x.copy()
    y = fi.normalize(x)
    assert y.dtype == np.float32 and y.flags.c_contiguous
    np.testing.assert_allclose(y[0], [0.6, 0.8], rtol=1e-6)
    assert np.all(y[1] == 0)  # zero stays zero, no NaN
    np.testing.assert_allclose(y[2], [2**-0.5, 2**-0.5], rtol=1e-6)  # no overflow to inf/0
    np.testing.assert_array_equal(x, before)


def test_normalize_rejects_nan_and_inf_naming_the_count():
    x = np.ones((5, 3), dtype=np.float32)
    x[1, 0] = np.nan
    x[3, 2] = np.inf
    x[3, 1] = np.nan  # same row twice: still one row
    with pytest.raises(ConfigError, match=r"2 of 5 rows.*first: row 1"):
        fi.normalize(x)


def test_normalize_counts_bad_rows_across_chunks(monkeypatch):
    monkeypatch.setattr(fi, "_NORMALIZE_CHUNK_ELEMENTS", 6)  # 2 rows of width 3 per chunk
    x = np.ones((7, 3), dtype=np.float32)
    x[[2, 5, 6], 0] = np.nan
    with pytest.raises(ConfigError, match=r"3 of 7 rows.*first: row 2"):
        fi.normalize(x)


# ---------------------------------------------------------------------------------- exact, recall


def test_exact_search_matches_full_sort_and_breaks_ties_by_lower_position():
    rng = np.random.default_rng(1)
    v = fi.normalize(rng.standard_normal((40, 4)))
    v[[5, 17, 33]] = v[25]  # exact duplicates spread over several blocks
    v[[8, 30]] = v[2]
    q = np.concatenate([v[[25, 2]], fi.normalize(rng.standard_normal((10, 4)))])
    scores, pos = fi.exact_search(v, q, 6, block_rows=7)

    full = q @ v.T
    for r in range(len(q)):
        order = np.lexsort((np.arange(40), -full[r]))[:6]
        np.testing.assert_array_equal(pos[r], order)
        np.testing.assert_allclose(scores[r], full[r, order], atol=1e-6)
    assert pos[0, :4].tolist() == [5, 17, 25, 33]
    assert pos[1, :3].tolist() == [2, 8, 30]


def test_exact_search_clips_k_to_n():
    v = fi.normalize(np.eye(3))
    scores, pos = fi.exact_search(v, v, 10)
    assert scores.shape == pos.shape == (3, 3)
    assert pos[:, 0].tolist() == [0, 1, 2]


def test_recall_at_k_hand_made():
    found = np.array([[1, 2, 3, 9], [4, 5, -1, -1], [7, 8, 9, 10]])
    truth = np.array([[3, 2, 1, 0], [4, 6, 7, 5], [0, 1, 2, 3]])
    # k=3: row0 {1,2,3}&{3,2,1}=3, row1 {4,5,-1}&{4,6,7}=1, row2 0 -> (3+1+0)/9
    assert fi.recall_at_k(found, truth, 3) == pytest.approx(4 / 9)
    # k=2: row0 {1,2}&{3,2}=1, row1 {4,5}&{4,6}=1, row2 0 -> 2/6
    assert fi.recall_at_k(found, truth, 2) == pytest.approx(1 / 3)
    with pytest.raises(ConfigError):
        fi.recall_at_k(found, truth, 5)


# ------------------------------------------------------------------------------------------- build


def test_flat_returns_exact_cosine_neighbours_with_custom_ids(data, queries):
    ids = 10 * np.arange(N, dtype=np.int64) + 3
    index, info = fb.build_index(data, ids=ids, kind="flat", use_gpu="never")
    assert (info.kind, info.n, info.dim, info.metric, info.recall_at_10, info.on_gpu) == (
        "flat",
        N,
        D,
        "cosine",
        None,
        False,
    )
    scores, found = fi.search(index, queries, 10)
    want_scores, want_ids = exact_ids(data, queries, 10, ids)
    assert scores.dtype == np.float32 and found.dtype == np.int64
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    assert set(np.unique(found)) <= set(ids.tolist())
    # Ids must match exactly, except where two neighbours tie to float precision (then order is free).
    xn, qn = fi.normalize(data), fi.normalize(queries)
    rows, cols = np.nonzero(found != want_ids)
    assert len(rows) <= 0.01 * found.size
    for r, c in zip(rows, cols):
        true_score = float(qn[r] @ xn[(found[r, c] - 3) // 10])
        assert abs(true_score - want_scores[r, c]) < 1e-5


def test_ivf_reaches_target_recall_and_reports_it(built, data, queries):
    index, info = built["ivf"]
    assert info.kind == "ivf" and isinstance(index, faiss.IndexIVFFlat)
    nlist, nprobe = info.params["nlist"], info.params["nprobe"]
    assert nlist == min(round(4 * np.sqrt(N)), N // 39) == 128  # 283 lists would have < 39 points each
    assert nprobe in fb.NPROBE_CANDIDATES and nprobe < nlist
    assert info.recall_at_10 is not None and info.recall_at_10 >= 0.95
    _, found = fi.search(index, queries, 10, info)
    _, truth = exact_ids(data, queries, 10)
    assert fi.recall_at_k(found, truth, 10) >= 0.95
    # nprobe=1 is far worse on this data, so the tuning had something to do.
    _, found1 = fi.search(index, queries, 10, fi.IndexInfo("ivf", N, D, params={"nprobe": 1}))
    assert fi.recall_at_k(found1, truth, 10) < fi.recall_at_k(found, truth, 10)


def test_hnsw_reaches_target_recall_and_reports_it(built, data, queries):
    index, info = built["hnsw"]
    assert info.kind == "hnsw" and not info.on_gpu
    assert info.params["efSearch"] in fb.EF_SEARCH_CANDIDATES
    assert (info.params["M"], info.params["efConstruction"]) == (32, 80)
    assert info.recall_at_10 is not None and info.recall_at_10 >= 0.95
    _, found = fi.search(index, queries, 10, info)
    _, truth = exact_ids(data, queries, 10)
    assert fi.recall_at_k(found, truth, 10) >= 0.95


def test_higher_target_never_picks_a_smaller_nprobe(data):
    sub = data[:2000]
    _, low = fb.build_index(sub, kind="ivf", target_recall=0.3, use_gpu="never")
    _, high = fb.build_index(sub, kind="ivf", target_recall=0.999, use_gpu="never")
    assert low.params["nprobe"] < high.params["nprobe"]
    assert low.recall_at_10 >= 0.3 and high.recall_at_10 >= 0.999


def test_unreachable_target_falls_back_to_exhaustive_ivf_with_warning(data, caplog, monkeypatch):
    # Any recall counts as too low: the build must end on nprobe = nlist and warn.
    monkeypatch.setattr(fb, "_tie_aware_recall", lambda *a: 0.0)
    with caplog.at_level("WARNING", logger="evoked.features.index_build"):
        _, info = fb.build_index(data[:2000], kind="ivf", use_gpu="never")
    assert info.params["nprobe"] == info.params["nlist"]
    assert "never reached" in caplog.text and "exhaustive" in caplog.text


def test_auto_picks_flat_up_to_threshold_then_ivf(data):
    sub = data[:2000]
    _, info = fb.build_index(sub, exact_threshold=2000, use_gpu="never")
    assert info.kind == "flat"
    _, info = fb.build_index(sub, exact_threshold=1999, use_gpu="never")
    assert info.kind == "ivf" and "nprobe" in info.params


def test_ivf_returns_custom_ids(data):
    sub = data[:2000]
    ids = np.arange(2000, dtype=np.int64)[::-1] * 7 + 1000
    index, info = fb.build_index(sub, ids=ids, kind="ivf", use_gpu="never")
    _, found = fi.search(index, sub[:50], 1, info)
    np.testing.assert_array_equal(found[:, 0], ids[:50])  # each row's nearest neighbour is itself


def test_duplicate_rows_do_not_count_as_misses(data):
    # Each vector three times: exact search may return any copy, so id-based recall would stay low
    # however many lists are probed; the tie-aware recall in info must still see a good index.
    dup = np.repeat(data[:1000], 3, axis=0)
    _, info = fb.build_index(dup, kind="ivf", use_gpu="never")
    assert info.recall_at_10 >= 0.95
    assert info.params["nprobe"] < info.params["nlist"]


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_tiny_inputs_still_build(kind):
    x = clustered(n=20, d=8, centers=3)
    index, info = fb.build_index(x, ids=np.arange(20) + 100, kind=kind, use_gpu="never")
    assert info.n == 20 and info.recall_at_10 >= 0.95
    _, found = fi.search(index, x, 20, info)
    assert sorted(found[0].tolist()) == list(range(100, 120))


def test_gpu_branch_with_a_stand_in_gpu(data, monkeypatch):
    """No GPU here: stand-ins for the faiss GPU calls check the control flow and the on_gpu flag."""
    moved: list[str] = []
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "StandardGpuResources", object)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", lambda res, dev, ix, options=None: moved.append("to") or ix)
    monkeypatch.setattr(faiss, "index_gpu_to_cpu", lambda ix: moved.append("back") or ix)
    sub = data[:2000]
    index, info = fb.build_index(sub, kind="ivf", use_gpu="always")
    # trained on the GPU and brought back, then filled on the GPU and brought back
    assert info.on_gpu and moved == ["to", "back", "to", "back"] and index.ntotal == 2000
    assert info.recall_at_10 >= 0.95
    for kind in ("flat", "hnsw"):  # no GPU step for these
        _, info = fb.build_index(sub, kind=kind, use_gpu=True)
        assert not info.on_gpu
    assert moved == ["to", "back", "to", "back"]


def test_progress_reports_every_row_in_chunks(data, monkeypatch):
    monkeypatch.setattr(fb, "ADD_CHUNK", 700)
    calls: list[int] = []
    for kind in ("flat", "hnsw"):
        calls.clear()
        fb.build_index(data[:2000], kind=kind, use_gpu="never", on_progress=calls.append)
        assert calls == [700, 700, 600]


def test_search_clips_k_and_accepts_one_vector(data):
    index, info = fb.build_index(data[:5], kind="flat", use_gpu="never")
    scores, found = fi.search(index, data[0], 10, info)
    assert scores.shape == found.shape == (1, 5)
    assert found[0, 0] == 0 and sorted(found[0].tolist()) == [0, 1, 2, 3, 4]
    with pytest.raises(ConfigError, match="match the index"):
        fi.search(index, data[:2, :5], 3)


# ------------------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"vectors": np.ones(8, dtype=np.float32)}, "2-D"),
        ({"vectors": np.ones((0, 4), dtype=np.float32)}, "at least one row"),
        ({"kind": "annoy"}, r"annoy.*auto, flat, ivf, hnsw, ivffp16, ivfsq8, ivfpq"),
        ({"ids": np.array([0, 1, 1, 2])}, "unique"),
        ({"ids": np.array([0, 1, 2])}, "one id per vector"),
        ({"ids": np.array([0, 1, -1, 2])}, ">= 0"),
        ({"ids": np.array([0.0, 1.0, 2.0, 3.0])}, "integers"),
        ({"use_gpu": "sometimes"}, "use_gpu"),
        ({"target_recall": 1.5}, "target_recall"),
    ],
)
def test_bad_inputs_raise_config_error(kwargs, match):
    args = {"vectors": np.eye(4, dtype=np.float32), **kwargs}
    with pytest.raises(ConfigError, match=match):
        fb.build_index(**args)


@pytest.mark.skipif(faiss.get_num_gpus() > 0, reason="a GPU is present")
@pytest.mark.parametrize("use_gpu", [True, "always"])
def test_requiring_a_gpu_without_one_fails(use_gpu):
    with pytest.raises(ConfigError, match="no GPU"):
        fb.build_index(np.eye(4, dtype=np.float32), use_gpu=use_gpu)


def test_nan_vectors_fail_before_building():
    x = np.eye(4, dtype=np.float32)
    x[2, 1] = np.nan
    with pytest.raises(ConfigError, match="1 of 4 rows"):
        fb.build_index(x)


# -------------------------------------------------------------------------------------- save, load


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_save_load_round_trip(built, queries, tmp_path, kind):
    index, info = built[kind]
    info.extra = {"feature": "resnet50/pool"}
    path = tmp_path / f"e6.{kind}.faiss"
    fi.save_index(index, info, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name, path.name + ".json"]  # no temp left

    loaded, info2 = fi.load_index(str(path))
    assert info2 == info
    s1, i1 = fi.search(index, queries, 10, info)
    s2, i2 = fi.search(loaded, queries, 10, info2)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(s1, s2)
    # Without passing info, the loaded index already searches with the tuned parameters.
    s3, i3 = fi.search(loaded, queries, 10)
    np.testing.assert_array_equal(i1, i3)


def test_load_restores_search_parameters_from_info(built, tmp_path):
    index, info = built["ivf"]
    path = tmp_path / "x.faiss"
    index.nprobe = 1  # what faiss writes into the file
    try:
        fi.save_index(index, info, path)
    finally:
        index.nprobe = info.params["nprobe"]
    loaded, _ = fi.load_index(path)
    assert loaded.nprobe == info.params["nprobe"] > 1

    hnsw, hinfo = built["hnsw"]
    fi.save_index(hnsw, hinfo, tmp_path / "h.faiss")
    loaded, _ = fi.load_index(tmp_path / "h.faiss")
    assert faiss.downcast_index(loaded.index).hnsw.efSearch == hinfo.params["efSearch"]


def test_load_missing_or_broken_files_explain_the_fix(built, tmp_path):
    with pytest.raises(ConfigError, match="evoked index"):
        fi.load_index(tmp_path / "nope.faiss")

    index, info = built["flat"]
    path = tmp_path / "a.faiss"
    fi.save_index(index, info, path)
    Path(str(path) + ".json").unlink()
    with pytest.raises(ConfigError, match=r"a\.faiss\.json.*evoked index"):
        fi.load_index(path)

    fi.save_index(index, info, path)
    path.write_bytes(b"not a faiss index")
    with pytest.raises(ConfigError, match="cannot read faiss index.*evoked index"):
        fi.load_index(path)

    fi.save_index(index, info, path)
    Path(str(path) + ".json").write_text("{broken", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid JSON"):
        fi.load_index(path)

    fi.save_index(index, info, path)
    Path(str(path) + ".json").write_text(json.dumps({**json.loads(info.to_json()), "n": 3}), encoding="utf-8")
    with pytest.raises(ConfigError, match="says 3 x"):
        fi.load_index(path)


def test_index_info_json_round_trip_ignores_unknown_keys():
    info = fi.IndexInfo(
        "hnsw", 10, 4, params={"efSearch": 64}, recall_at_10=0.97, on_gpu=False, extra={"store": "e6.h5"}
    )
    data = json.loads(info.to_json())
    data["added_in_a_later_version"] = 1
    assert fi.IndexInfo.from_json(json.dumps(data)) == info
    with pytest.raises(ConfigError, match="lacks dim"):
        fi.IndexInfo.from_json('{"kind": "flat", "n": 1}')


# ------------------------------------------------------------------------------------------- paths


def test_index_path_for():
    assert fi.index_path_for("features/e6.h5", "resnet50/pool") == Path("features/e6.resnet50-pool.faiss")
    assert fi.index_path_for(Path("/x/y/store.h5"), "clip") == Path("/x/y/store.clip.faiss")
    with pytest.raises(ConfigError):
        fi.index_path_for("e6.h5", "/")
