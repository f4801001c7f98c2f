"""LightGBM per target: threads from the free cores, early stopping on rows held out of the fit."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from sklearn.base import clone

from evoked.regress import boosting
from evoked.regress.boosting import lgbm


def data(n=600, d=8, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(np.float32)
    y = np.stack([X[:, 0] + 0.1 * rng.standard_normal(n), X[:, 1] ** 2], axis=1)
    return X, y


def test_threads_are_the_free_cores_and_the_cost_is_logged(monkeypatch, caplog):
    monkeypatch.setattr(boosting, "free_cores", lambda sample_s: 1)
    X, y = data()
    with caplog.at_level(logging.INFO, logger="evoked.regress.boosting"):
        est = lgbm(n_estimators=30).fit(X, y)
    assert [b.get_params()["n_jobs"] for b in est.estimators_] == [1, 1]
    assert est.cost_["boosters"] == 2 and est.cost_["threads"] == 1 and est.cost_["held_out_rows"] == 60
    assert "lgbm: 2 booster(s)" in caplog.text and "1 thread(s)" in caplog.text
    assert lgbm(n_jobs=3).fit(X, y).cost_["threads"] == 3  # asked for by name


def test_early_stopping_holds_out_only_rows_of_the_fit_and_stops_early():
    X, y = data(n=1000)
    est = lgbm(n_estimators=2000, learning_rate=0.3).fit(X, y)
    assert all(t < 2000 for t in est.cost_["trees"])  # stopped before the cap
    grow, stop = est._held_out(len(X))
    assert len(np.intersect1d(grow, stop)) == 0 and len(grow) + len(stop) == len(X)
    r = np.corrcoef(est.predict(X)[:, 0], y[:, 0])[0, 1]
    assert r > 0.9


def test_small_fits_and_none_grow_every_tree():
    X, y = data(n=150)
    assert lgbm(n_estimators=25).fit(X, y).cost_["trees"] == [25, 25]  # too few rows to hold out
    X, y = data()
    est = lgbm(n_estimators=25)
    est.set_params(early_stopping_rounds=None)
    assert est.fit(X, y).cost_ == {**est.cost_, "trees": [25, 25], "held_out_rows": 0}
    assert clone(est).get_params()["early_stopping_rounds"] is None  # a proper sklearn parameter


def test_nan_features_are_an_error():
    X, y = data()
    X[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        lgbm(n_estimators=5).fit(X, y)


def test_bench_regress_compares_streamed_and_in_memory_ridge():
    import json
    import subprocess
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "bench" / "regress.py"
    cmd = [sys.executable, str(bench), "--n", "300", "--dim", "16", "--models", "ridge,lgbm"]
    cmd += ["--stream-rows", "2500", "--stream-dim", "12", "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert set(out["models"]) == {"ridge", "lgbm"} and out["stream"]["rows"] == 2500
    assert out["stream"]["max_prediction_difference"] < 1e-4  # the same ridge, streamed or not
