"""Streaming regressors: exact against the in-memory ones, and `evoked regress --stream` end to end."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from evoked.errors import ConfigError
from evoked.features.store import open_store
from evoked.regress.knn import FaissKNNRegressor
from evoked.regress.linear import RidgeLOO
from evoked.regress.rundir import load_run_model
from evoked.regress.streaming import (
    ArraySource,
    IndexKNNRegressor,
    StoreSource,
    StreamingMLPRegressor,
    StreamingRidge,
    accumulate,
    hash_folds,
    run_regress_streaming,
)
from storeutil import make_store


def linear_data(n=1500, d=30, seed=0, offset=True):
    """Features with large, uneven means and scales (hard for naive X'X - n m m'); VA linear + noise."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)) * rng.uniform(0.1, 10, d)
    if offset:
        X += rng.uniform(-100, 100, d)
    w = rng.standard_normal((d, 2)) / rng.uniform(0.1, 10, d)[:, None]
    y = 5 + (X - X.mean(0)) @ w * 0.3 + 0.5 * rng.standard_normal((n, 2))
    return X, y


@parametrize_with_checks([StreamingRidge(), IndexKNNRegressor(n_neighbors=3)])
def test_sklearn_estimator_rules(estimator, check):
    check(estimator)


@pytest.mark.parametrize("alpha", [0.01, 3.0, 1000.0])
def test_streamed_ridge_equals_scaler_plus_ridge(alpha):
    X, y = linear_data()
    ref = make_pipeline(StandardScaler(), Ridge(alpha=alpha)).fit(X, y)
    est = StreamingRidge(alphas=[alpha]).fit(X, y)
    np.testing.assert_allclose(est.predict(X), ref.predict(X), rtol=0, atol=1e-9)
    # the same statistics accumulated over many small chunks
    cells = accumulate(ArraySource(X, chunk_rows=97), y, np.zeros(len(X), dtype=np.int64), 1)
    chunked = StreamingRidge(alphas=[alpha]).fit_moments(cells, [0], [])
    np.testing.assert_allclose(chunked.predict(X), ref.predict(X), rtol=0, atol=1e-9)


def test_ridge_cv_error_is_exact_k_fold_cv_of_the_pipeline():
    X, y = linear_data(n=800, d=12, seed=1)
    est = StreamingRidge(cv=4, random_state=3).fit(X, y)
    folds = hash_folds(np.arange(len(X)), 4, 3)
    sse = np.zeros((len(est.alphas), 2))
    for g in range(4):
        tr, te = folds != g, folds == g
        for i, a in enumerate(est.alphas):
            p = make_pipeline(StandardScaler(), Ridge(alpha=a)).fit(X[tr], y[tr])
            sse[i] += ((p.predict(X[te]) - y[te]) ** 2).sum(axis=0)
    np.testing.assert_allclose(est.cv_mse_, sse / len(X), rtol=1e-8)
    best = np.asarray(est.alphas)[np.argmin(sse, axis=0)]
    np.testing.assert_array_equal(est.alpha_, best)


def test_streamed_ridge_agrees_with_ridge_loo_and_gcv():
    X, y = linear_data(n=2000, d=40, seed=2)
    loo = make_pipeline(StandardScaler(), RidgeLOO()).fit(X, y)
    for cv in (5, "gcv"):
        est = StreamingRidge(cv=cv).fit(X, y)
        # the criteria may pick neighbouring alphas; the models must agree closely anyway
        assert np.all(np.abs(np.log10(est.alpha_) - np.log10(loo[-1].alpha_)) <= 1.0)
        for t in range(2):
            assert np.corrcoef(est.predict(X)[:, t], loo.predict(X)[:, t])[0, 1] > 0.999


def test_ridge_from_a_store_matches_in_memory(tmp_path: Path):
    X, y = linear_data(n=700, d=16, seed=4)
    path = make_store(tmp_path / "s.h5", {"g/x": X.astype(np.float32)}, valence=y[:, 0], arousal=y[:, 1])
    with open_store(path) as st:
        source = StoreSource(st, ["g/x"], chunk_rows=256)
        assert source.chunk_rows == 256 and len(source.ranges()) == 3
        cells = accumulate(source, y, np.zeros(len(X), dtype=np.int64), 1)
        Xs = st.read("g/x")
    est = StreamingRidge(alphas=[10.0]).fit_moments(cells, [0], [])
    ref = make_pipeline(StandardScaler(), Ridge(alpha=10.0)).fit(Xs.astype(np.float64), y)
    np.testing.assert_allclose(est.predict(Xs), ref.predict(Xs.astype(np.float64)), atol=1e-8)


def test_streamed_mlp_learns_a_linear_signal():
    rng = np.random.default_rng(0)
    X = (rng.standard_normal((2500, 16)) * 4 + 10).astype(np.float32)
    w = rng.standard_normal((16, 2))
    y = 5 + (X - 10) @ w * 0.2 + 0.2 * rng.standard_normal((2500, 2))
    est = StreamingMLPRegressor(epochs=25, hidden_layer_sizes=(64, 32), dropout=0.0, device="cpu")
    est.fit(X[:2000], y[:2000])
    pred = est.predict(X[2000:])
    for t in range(2):
        assert np.corrcoef(pred[:, t], y[2000:, t])[0, 1] > 0.9
    assert est.n_iter_[0] <= 25 and est.best_epoch_[0] >= 1
    again = pickle.loads(pickle.dumps(est))
    np.testing.assert_allclose(again.predict(X[2000:]), pred)


def test_shuffled_chunks_cover_every_row_once_in_a_new_order():
    source = ArraySource(np.arange(5000, dtype=np.float32)[:, None], chunk_rows=1024)
    rows = [r for r, _ in source.shuffled(np.random.default_rng(0))]
    flat = np.concatenate(rows)
    assert sorted(flat.tolist()) == list(range(5000))
    assert not (np.diff(flat) > 0).all()  # not in store order
    # a chunk mixes pieces from across the store, not one contiguous range
    assert np.ptp(rows[0]) > 2 * len(rows[0])


def test_knn_through_the_index_matches_exact_knn():
    rng = np.random.default_rng(1)
    X = (rng.standard_normal((1200, 20)) * 3 + 2).astype(np.float32)
    y = 5 + X[:, :2] * 0.5 + 0.1 * rng.standard_normal((1200, 2))
    train, test = slice(0, 1000), slice(1000, None)
    exact = make_pipeline(StandardScaler(), FaissKNNRegressor(n_neighbors=10)).fit(X[train], y[train])
    est = IndexKNNRegressor(n_neighbors=10).fit(X[train], y[train])
    assert est.index_kind_ == "flat"
    np.testing.assert_allclose(est.predict(X[test]), exact.predict(X[test]), atol=1e-5)
    auto = IndexKNNRegressor().fit(X[train], y[train])
    ref = make_pipeline(StandardScaler(), FaissKNNRegressor()).fit(X[train], y[train])
    assert auto.n_neighbors_ == ref[-1].n_neighbors_
    # an approximate index (IVF, nprobe tuned to recall 0.95) stays close to exact
    ivf = IndexKNNRegressor(n_neighbors=10, kind="ivf").fit(X[train], y[train])
    assert ivf.index_kind_ == "ivf" and ivf.index_recall_ >= 0.95
    assert np.abs(ivf.predict(X[test]) - exact.predict(X[test])).mean() < 0.05
    again = pickle.loads(pickle.dumps(ivf))
    np.testing.assert_allclose(again.predict(X[test]), ivf.predict(X[test]))


def test_restricted_knn_never_answers_with_excluded_rows():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((600, 8)).astype(np.float32)
    y = rng.standard_normal((600, 2))
    est = IndexKNNRegressor(n_neighbors=5).fit(X, y)
    allowed = np.arange(600) % 3 != 0
    sub = est.restricted(allowed)
    q = (X - est.x_mean_) / est.x_scale_
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    ids, _ = sub._search(q, 5)
    assert allowed[ids].all()
    scaler = StandardScaler().fit(X)  # as the index: scaled with every row's statistics, no labels
    held_in = FaissKNNRegressor(n_neighbors=5).fit(scaler.transform(X[allowed]), y[allowed])
    np.testing.assert_allclose(sub.predict(X[:50]), held_in.predict(scaler.transform(X[:50])), atol=1e-5)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    n = 900
    X = rng.standard_normal((n, 12)).astype(np.float32)
    probs = rng.dirichlet(np.ones(6), n).astype(np.float32)
    va = np.stack([5 + X[:, 0] + 0.3 * X[:, 1], 4 + 0.8 * X[:, 2]], 1) + 0.2 * rng.standard_normal((n, 2))
    va[:20, 1] = np.nan  # no rating: never evaluated, never trained on (target va)
    cats = np.array(["joy", "fear", "anger"])[rng.integers(0, 3, n)]
    split = np.array(["train", "val", "test"])[rng.integers(0, 3, n)]
    path = tmp_path_factory.mktemp("stream") / "s.h5"
    return make_store(
        path,
        {"m/pool": X, "m/probs": probs},
        valence=va[:, 0],
        arousal=va[:, 1],
        category=cats,
        split=split,
        failed={5: "truncated"},
    )


def test_run_regress_streaming_matches_the_in_memory_run(store: Path, tmp_path: Path):
    from evoked.regress.runner import run_regress

    kw = dict(features=["m/pool,m/probs"], cv=5, seed=0)
    streamed = run_regress_streaming(
        store, out=tmp_path / "s", models="ridge,knn,mlp", params=["mlp.epochs=8"], **kw
    )
    memory = run_regress(store, out=tmp_path / "m", models="ridge,knn", **kw)
    assert streamed.counts == memory.counts
    s_pred = _read_csv(tmp_path / "s" / "predictions.csv")
    m_pred = _read_csv(tmp_path / "m" / "predictions.csv")
    assert s_pred["ridge"]["folds"] == m_pred["ridge"]["folds"]  # the same CV folds
    for model in ("ridge", "knn"):
        s, m = streamed.metrics()[model], memory.metrics()[model]
        for dim in ("valence", "arousal"):
            assert abs(s[dim]["r"] - m[dim]["r"]) < 0.02
    assert streamed.metrics()["mlp"]["valence"]["r"] > 0.8
    run = json.loads((tmp_path / "s" / "run.json").read_text())
    assert run["streaming"]["chunk_rows"] > 0 and run["log_probs"] == ["m/probs"]
    # the saved models are pipelines that `evoked predict` loads like any other
    with open_store(store) as st:
        X = st.read(["m/pool", "m/probs"], rows=np.arange(10, 60))
    for model in ("ridge", "knn", "mlp"):
        est, meta = load_run_model(tmp_path / "s", model)
        assert meta["streaming"] is True and est.predict(X).shape == (50, 2)
        assert np.isfinite(est.predict(X)).all()


def test_split_and_fit_only_protocols(store: Path, tmp_path: Path):
    split = run_regress_streaming(store, features=["m/pool"], out=tmp_path / "a", split="test")
    assert split.run["protocol"]["kind"] == "split" and split.metrics()["ridge"]["valence"]["r"] > 0.9
    fit = run_regress_streaming(store, features=["m/pool"], out=tmp_path / "b", cv=0, models="ridge,knn")
    assert fit.counts["evaluated"] == 0
    assert (
        load_run_model(tmp_path / "b", "knn")[1]["fitted_on"]["items"] == 900 - 20
    )  # row 5 (failed) has no rating either


def test_options_that_need_memory_are_refused(store: Path, tmp_path: Path, capsys):
    with pytest.raises(ConfigError, match="does not stream.*Dask"):
        run_regress_streaming(store, features=["m/pool"], out=tmp_path / "x", models="svr")
    with pytest.raises(ConfigError, match="bad parameter for model 'ridge'"):
        run_regress_streaming(store, features=["m/pool"], out=tmp_path / "x", params=["ridge.nope=1"])
    from evoked.cli import main

    argv = [
        "regress",
        str(store),
        "--feature",
        "m/pool",
        "--stream",
        "--pca",
        "4",
        "--out",
        str(tmp_path / "y"),
    ]
    assert main(argv) == 2
    assert "--pca needs the features in memory" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()


def test_max_memory_chooses_the_streaming_path(store: Path, tmp_path: Path):
    from evoked.cli import main

    out = tmp_path / "tiny"
    code = main(
        ["regress", str(store), "--feature", "m/pool", "--max-memory", "10KB", "--out", str(out), "-q"]
    )
    assert code == 0 and "streaming" in json.loads((out / "run.json").read_text())
    out = tmp_path / "roomy"
    main(["regress", str(store), "--feature", "m/pool", "--max-memory", "1GB", "--out", str(out), "-q"])
    assert "streaming" not in json.loads((out / "run.json").read_text())


def _read_csv(path: Path) -> dict:
    import csv

    out: dict = {}
    with path.open() as f:
        for row in csv.DictReader(f):
            m = out.setdefault(row["model"], {"folds": {}})
            m["folds"][row["id"]] = row["fold"]
    return out
