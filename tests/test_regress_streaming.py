"""Fitting from chunks: exact against the in-memory fits, and `evoked regress --stream` end to end."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import Ridge, RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from evoked.errors import ConfigError
from evoked.features.store import open_store
from evoked.regress import build_pipeline
from evoked.regress.chunks import ArraySource, StoreSource, fit_pipeline_chunks, predict_chunks
from evoked.regress.knn import FaissKNNRegressor
from evoked.regress.linear import RIDGE_ALPHAS, RidgeLOO
from evoked.regress.mlp import TorchMLPRegressor
from evoked.regress.rundir import load_run_model
from evoked.regress.runner import run_regress
from storeutil import make_store


def run_regress_streaming(store, **kw):
    return run_regress(store, stream=True, **kw)


def chunked(name, X, y, chunk_rows=97, **params):
    """The registered pipeline of `name` fitted from chunks of X (as a store would serve them)."""
    source = ArraySource(np.asarray(X), chunk_rows=chunk_rows)
    pipe = build_pipeline(name, params=params)
    return fit_pipeline_chunks(pipe, source, np.arange(len(X)), np.asarray(y, dtype=np.float64))


def linear_data(n=1500, d=30, seed=0, offset=True):
    """Features with large, uneven means and scales (hard for naive X'X - n m m'); VA linear + noise."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)) * rng.uniform(0.1, 10, d)
    if offset:
        X += rng.uniform(-100, 100, d)
    w = rng.standard_normal((d, 2)) / rng.uniform(0.1, 10, d)[:, None]
    y = 5 + (X - X.mean(0)) @ w * 0.3 + 0.5 * rng.standard_normal((n, 2))
    return X, y


@pytest.mark.parametrize("alpha", [0.01, 3.0, 1000.0])
def test_ridge_from_chunks_equals_scaler_plus_ridge(alpha):
    X, y = linear_data()
    ref = make_pipeline(StandardScaler(), Ridge(alpha=alpha)).fit(X, y)
    est = chunked("ridge", X, y, alphas=[alpha])  # many small chunks, large uneven means
    np.testing.assert_allclose(est.predict(X), ref.predict(X), rtol=0, atol=1e-9)


def test_ridge_from_chunks_chooses_alpha_by_the_same_leave_one_out():
    X, y = linear_data(n=800, d=12, seed=1)
    X = X.astype(np.float32)
    memory = make_pipeline(StandardScaler(), RidgeLOO()).fit(X, y)
    est = chunked("ridge", X, y, chunk_rows=61)
    np.testing.assert_allclose(est[-1].loo_mse_, memory[-1].loo_mse_, rtol=1e-5)
    np.testing.assert_array_equal(est[-1].alpha_, memory[-1].alpha_)
    # float32 rows: in memory the moments come from the float32 standardised rows, in chunks from the
    # float32 rows themselves (one pass), so they agree to float32 rounding, not beyond
    np.testing.assert_allclose(est.predict(X), memory.predict(X), rtol=0, atol=1e-5)
    for t in range(2):  # and scikit-learn's RidgeCV (leave-one-out over the same alphas) agrees
        cv = make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS)).fit(X.astype(np.float64), y[:, t])
        assert cv[-1].alpha_ == est[-1].alpha_[t]


def test_ridge_from_a_store_matches_in_memory(tmp_path: Path):
    X, y = linear_data(n=700, d=16, seed=4)
    path = make_store(tmp_path / "s.h5", {"g/x": X.astype(np.float32)}, valence=y[:, 0], arousal=y[:, 1])
    with open_store(path) as st:
        source = StoreSource(st, ["g/x"], chunk_rows=256)
        assert source.chunk_rows == 256 and len(source.ranges()) == 3
        Xs = st.read("g/x")
        est = fit_pipeline_chunks(build_pipeline("ridge"), source, np.arange(len(X)), y)
        streamed = predict_chunks(est, source, np.arange(100, 200))
    ref = build_pipeline("ridge").fit(Xs, y)
    np.testing.assert_allclose(streamed, ref.predict(Xs[100:200]), atol=1e-5)  # float32 rows: see above


def test_mlp_from_chunks_learns_a_linear_signal():
    rng = np.random.default_rng(0)
    X = (rng.standard_normal((2500, 16)) * 4 + 10).astype(np.float32)
    w = rng.standard_normal((16, 2))
    y = 5 + (X - 10) @ w * 0.2 + 0.2 * rng.standard_normal((2500, 2))
    est = chunked(
        "mlp",
        X[:2000],
        y[:2000],
        chunk_rows=512,
        epochs=25,
        hidden_layer_sizes=(64, 32),
        dropout=0.0,
        device="cpu",
    )
    assert isinstance(est[-1], TorchMLPRegressor) and est[-1].get_params()["lr"] == 3e-4  # the same defaults
    pred = est.predict(X[2000:])
    for t in range(2):
        assert np.corrcoef(pred[:, t], y[2000:, t])[0, 1] > 0.9
    assert est[-1].n_iter_[0] <= 25 and est[-1].best_epoch_[0] >= 1
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
    est = chunked("knn", X[train], y[train], n_neighbors=10)
    assert est[-1].index_kind_ == "flat"
    np.testing.assert_allclose(est.predict(X[test]), exact.predict(X[test]), atol=1e-5)
    auto = chunked("knn", X[train], y[train])
    ref = make_pipeline(StandardScaler(), FaissKNNRegressor()).fit(X[train], y[train])
    assert auto[-1].n_neighbors_ == ref[-1].n_neighbors_
    again = pickle.loads(pickle.dumps(auto))
    np.testing.assert_allclose(again.predict(X[test]), auto.predict(X[test]))


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


def test_streamed_and_in_memory_runs_of_one_model_agree(store: Path, tmp_path: Path):
    kw = dict(features=["m/pool,m/probs"], cv=5, seed=0, models="ridge,knn,mlp", params=["mlp.device=cpu"])
    streamed = run_regress_streaming(store, out=tmp_path / "s", chunk_rows=256, **kw)
    memory = run_regress(store, out=tmp_path / "m", **kw)
    assert streamed.counts == memory.counts
    s_pred, m_pred = (
        _read_csv(tmp_path / "s" / "predictions.csv"),
        _read_csv(tmp_path / "m" / "predictions.csv"),
    )
    assert s_pred["ridge"]["folds"] == m_pred["ridge"]["folds"]  # the same CV folds
    ids = sorted(m_pred["ridge"]["pred"])
    for model, atol in (("ridge", 1e-6), ("knn", 1e-4)):
        a = np.array([s_pred[model]["pred"][i] for i in ids])
        b = np.array([m_pred[model]["pred"][i] for i in ids])
        np.testing.assert_allclose(a, b, rtol=0, atol=atol)
    s_run, m_run = (json.loads((tmp_path / x / "run.json").read_text()) for x in "sm")
    assert s_run["estimators"] == m_run["estimators"]  # the same estimators ran
    assert s_run["estimators"]["mlp"] == "evoked.regress.mlp.TorchMLPRegressor"
    assert s_run["model_info"]["ridge"]["alpha"] == m_run["model_info"]["ridge"]["alpha"]
    for dim in ("valence", "arousal"):  # the MLP: same hyperparameters and seed, other batches
        assert abs(streamed.metrics()["mlp"][dim]["r"] - memory.metrics()["mlp"][dim]["r"]) < 0.01
    assert s_run["streaming"]["chunk_rows"] == 256 and s_run["log_probs"] == ["m/probs"]
    # the saved models are pipelines that `evoked predict` loads like any other
    with open_store(store) as st:
        X = st.read(["m/pool", "m/probs"], rows=np.arange(10, 60))
    for model in ("ridge", "knn", "mlp"):
        est, meta = load_run_model(tmp_path / "s", model)
        assert meta["streaming"] is True and est.predict(X).shape == (50, 2)
        np.testing.assert_allclose(
            est.predict(X), load_run_model(tmp_path / "m", model)[0].predict(X), atol=0.5
        )


def test_split_and_fit_only_protocols(store: Path, tmp_path: Path):
    split = run_regress_streaming(store, features=["m/pool"], out=tmp_path / "a", split="test")
    assert split.run["protocol"]["kind"] == "split" and split.metrics()["ridge"]["valence"]["r"] > 0.9
    fit = run_regress_streaming(store, features=["m/pool"], out=tmp_path / "b", cv=0, models="ridge,knn")
    assert fit.counts["evaluated"] == 0
    assert (
        load_run_model(tmp_path / "b", "knn")[1]["fitted_on"]["items"] == 900 - 20
    )  # row 5 (failed) has no rating either


def test_options_that_need_memory_are_refused(store: Path, tmp_path: Path, capsys):
    with pytest.raises(ConfigError, match="does not fit from chunks.*Dask"):
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
            m = out.setdefault(row["model"], {"folds": {}, "pred": {}})
            m["folds"][row["id"]] = row["fold"]
            m["pred"][row["id"]] = (float(row["valence_pred"]), float(row["arousal_pred"]))
    return out


class CountingSource(ArraySource):
    """An `ArraySource` that counts how many times its rows are read in full."""

    def __init__(self, X, chunk_rows):
        super().__init__(X, chunk_rows=chunk_rows)
        self.passes = 0

    def __call__(self):
        self.passes += 1
        return super().__call__()


def test_streamed_ridge_reads_the_rows_twice_moments_then_leave_one_out():
    X, y = linear_data(n=300, d=8, seed=5)
    source = CountingSource(X.astype(np.float32), chunk_rows=64)
    fit_pipeline_chunks(build_pipeline("ridge"), source, np.arange(len(X)), y)
    assert source.passes == 2  # X'X, X'y, sums and the scaler in one; the exact LOO residuals in the other


def brute_force_loo_mse(Xs: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """Leave each row out, refit scikit-learn's Ridge on the rest (same standardised features)."""
    err = np.zeros(y.shape[1])
    for i in range(len(Xs)):
        keep = np.arange(len(Xs)) != i
        fit = Ridge(alpha=alpha).fit(Xs[keep], y[keep])
        err += (y[i] - fit.predict(Xs[i : i + 1])[0]) ** 2
    return err / len(Xs)


@pytest.mark.parametrize("n, d", [(40, 6), (12, 20)])  # the d x d and the n x n paths
def test_leave_one_out_from_the_moments_equals_refitting_without_each_row(n, d):
    X, y = linear_data(n=n, d=d, seed=6)
    alphas = [0.3, 10.0, 300.0]
    scaler = StandardScaler().fit(X)
    Xs = scaler.transform(X)
    memory = RidgeLOO(alphas=alphas).fit(Xs, y)
    streamed = chunked("ridge", X, y, chunk_rows=7, alphas=alphas)[-1]
    for k, a in enumerate(alphas):
        want = brute_force_loo_mse(Xs, y, a)
        # the alpha search projects the rows in float32 (linear.py), so agreement is to float32 rounding
        np.testing.assert_allclose(memory.loo_mse_[k], want, rtol=1e-5)
        np.testing.assert_allclose(streamed.loo_mse_[k], want, rtol=1e-5)
