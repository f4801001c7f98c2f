"""The regressors of evoked.regress on synthetic data with a known signal, and scikit-learn's checks."""

from __future__ import annotations

import pickle
import warnings

import joblib
import numpy as np
import pytest
from sklearn.linear_model import RidgeCV
from sklearn.utils.estimator_checks import parametrize_with_checks

from evoked.device import FIT_FREE_CORES_SAMPLE_S
from evoked.errors import ConfigError
from evoked.regress import (
    FaissKNNRegressor,
    RBFSVRRegressor,
    TorchMLPRegressor,
    TwoStageRegressor,
    build_pipeline,
    list_regressors,
    make_regressor,
)
from evoked.regress.ensemble import MeanRegressor
from evoked.regress.linear import RIDGE_ALPHAS, RidgeLOO
from evoked.regress.transforms import LogColumns, probability_ranges

FAST = {"mlp": {"epochs": 40}, "mlp-kim": {"epochs": 40}, "ensemble": {"members": ("ridge", "knn", "mlp")}}


def signal_data(n: int = 600, d: int = 12, seed: int = 0):
    """Features driven by 3 latent factors; VA a smooth function of them (learnable by every family)."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 3))
    X = z @ rng.standard_normal((3, d)) + 0.3 * rng.standard_normal((n, d))
    valence = 5 + 1.5 * np.tanh(z[:, 0]) + 0.5 * z[:, 1]
    arousal = 4 + 1.0 * z[:, 2] - 0.3 * z[:, 0]
    y = np.stack([valence, arousal], 1) + 0.2 * rng.standard_normal((n, 2))
    return X.astype(np.float32), y


@pytest.fixture(scope="module")
def data():
    X, y = signal_data()
    return X[:400], y[:400], X[400:], y[400:]


def test_registry_lists_the_families_and_rejects_unknown_names():
    names = list_regressors()
    for expected in ("linear", "ridge", "svr", "lgbm", "mlp", "mlp-kim", "knn", "ensemble"):
        assert expected in names
    with pytest.raises(ConfigError, match="unknown model 'ridgee'.*Did you mean ridge.*Known models"):
        make_regressor("ridgee")
    with pytest.raises(ConfigError, match="bad parameter for model 'svr'"):
        make_regressor("svr", no_such_param=1)


@pytest.mark.parametrize("name", ["linear", "ridge", "svr", "lgbm", "mlp", "mlp-kim", "knn", "ensemble"])
def test_every_family_beats_the_mean_predictor_on_held_out_data(name, data):
    X, y, Xt, yt = data
    est = build_pipeline(name, params=FAST.get(name))
    pred = est.fit(X, y).predict(Xt)
    assert pred.shape == yt.shape
    mse = ((pred - yt) ** 2).mean(axis=0)
    mean_mse = ((y.mean(axis=0) - yt) ** 2).mean(axis=0)
    # every family must explain at least half of the variance of each dimension
    assert (mse < 0.5 * mean_mse).all(), (name, mse, mean_mse)


def test_ridge_loo_chooses_the_same_alpha_and_fit_as_sklearn_ridgecv():
    rng = np.random.default_rng(1)
    for n, d in ((300, 40), (40, 300)):
        X = rng.standard_normal((n, d))
        y = X @ rng.standard_normal((d, 2)) * 0.3 + 3 * rng.standard_normal((n, 2)) + 5
        ours = RidgeLOO().fit(X, y)
        ref = RidgeCV(alphas=RIDGE_ALPHAS, alpha_per_target=True).fit(X, y)
        np.testing.assert_array_equal(ours.alpha_, ref.alpha_)
        np.testing.assert_allclose(ours.predict(X), ref.predict(X), atol=1e-8)
        np.testing.assert_allclose(ours.best_score_, ref.best_score_, rtol=1e-5)


def test_ridge_loo_picks_a_large_alpha_for_noise_and_a_small_one_for_signal():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((200, 10))
    noise = RidgeLOO().fit(X, rng.standard_normal(200))
    clean = RidgeLOO().fit(X, X @ np.arange(1, 11) + 0.01 * rng.standard_normal(200))
    assert noise.alpha_ >= 100 and clean.alpha_ <= 1


def test_svr_is_exact_below_the_threshold_and_nystroem_above(data):
    X, y, Xt, yt = data
    exact = RBFSVRRegressor().fit(X, y)
    approx = RBFSVRRegressor(exact_max_n=100, n_components=200).fit(X, y)
    assert exact.method_ == "exact" and approx.method_ == "nystroem"
    assert approx.nystroem_.n_components == 200
    for est in (exact, approx):
        assert ((est.predict(Xt) - yt) ** 2).mean() < 0.5 * ((y.mean(0) - yt) ** 2).mean()


def test_knn_matches_a_brute_force_weighted_mean_and_chooses_k_by_loo(data):
    X, y, Xt, _ = data
    knn = FaissKNNRegressor(n_neighbors=7).fit(X, y)
    xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    qn = Xt / np.linalg.norm(Xt, axis=1, keepdims=True)
    sims = qn.astype(np.float64) @ xn.T.astype(np.float64)
    top = np.argsort(-sims, axis=1)[:, :7]
    w = 1 / (1 - np.take_along_axis(sims, top, 1))
    expected = (w[:, :, None] * y[top]).sum(1) / w.sum(1, keepdims=True)
    np.testing.assert_allclose(knn.predict(Xt), expected, rtol=1e-5)
    auto = FaissKNNRegressor().fit(X, y)
    assert auto.n_neighbors_ in auto.loo_errors_ and auto.loo_errors_[auto.n_neighbors_] == min(
        auto.loo_errors_.values()
    )
    uniform = FaissKNNRegressor(n_neighbors=7, weights="uniform").fit(X, y)
    np.testing.assert_allclose(uniform.predict(Xt), y[top].mean(1), rtol=1e-5)


def test_knn_pickles_without_its_index_and_rebuilds_it(data):
    X, y, Xt, _ = data
    knn = FaissKNNRegressor(n_neighbors=5).fit(X, y)
    before = knn.predict(Xt)
    assert knn._index is not None
    clone = pickle.loads(pickle.dumps(knn))
    assert clone._index is None
    np.testing.assert_array_equal(clone.predict(Xt), before)


def test_mlp_is_deterministic_for_a_seed_and_pickles_weights_only(data, tmp_path):
    X, y, Xt, _ = data
    a = TorchMLPRegressor(epochs=15, random_state=3, device="cpu").fit(X, y)
    b = TorchMLPRegressor(epochs=15, random_state=3, device="cpu").fit(X, y)
    c = TorchMLPRegressor(epochs=15, random_state=4, device="cpu").fit(X, y)
    np.testing.assert_array_equal(a.predict(Xt), b.predict(Xt))
    assert not np.array_equal(a.predict(Xt), c.predict(Xt))
    assert all(isinstance(v, np.ndarray) for v in a.state_dicts_[0].values())
    joblib.dump(a, tmp_path / "mlp.joblib")
    np.testing.assert_array_equal(joblib.load(tmp_path / "mlp.joblib").predict(Xt), a.predict(Xt))
    assert a.device_ == "cpu" and 1 <= a.best_epoch_[0] <= a.n_iter_[0] <= 15


def test_mlp_ensemble_averages_its_members_and_learns_auxiliary_targets(data):
    X, y, Xt, _ = data
    members = [TorchMLPRegressor(epochs=8, random_state=s, device="cpu").fit(X, y) for s in (5, 6)]
    both = TorchMLPRegressor(epochs=8, random_state=5, n_ensemble=2, device="cpu").fit(X, y)
    np.testing.assert_allclose(
        both.predict(Xt), np.mean([m.predict(Xt) for m in members], axis=0), rtol=1e-10
    )
    aux = np.stack([np.tanh(X[:, 0]), X[:, 1] > 0], 1).astype(float)
    aux[::5] = np.nan  # unknown auxiliary labels are left out of the loss
    multi = TorchMLPRegressor(epochs=8, random_state=5, device="cpu").fit(X, y, aux=aux)
    assert multi.n_aux_ == 2 and multi.predict(Xt).shape == (len(Xt), 2)
    assert np.isfinite(multi.predict(Xt)).all()
    assert not np.allclose(multi.predict(Xt), members[0].predict(Xt))  # the shared layers changed


def test_mlp_kim_has_three_hidden_layers():
    kim = make_regressor("mlp-kim")
    assert len(kim.hidden_layer_sizes) == 3
    X, y = signal_data(60)
    kim.set_params(epochs=2).fit(X, y)
    linear_layers = [k for k in kim.state_dicts_[0] if k.endswith("weight")]
    assert len(linear_layers) == 4  # three hidden layers and the output layer


def test_ensemble_is_the_mean_of_its_members(data):
    X, y, Xt, _ = data
    ens = MeanRegressor(members=("ridge", "knn"), member_params={"knn": {"n_neighbors": 3}}).fit(X, y)
    ridge, knn = make_regressor("ridge").fit(X, y), make_regressor("knn", n_neighbors=3).fit(X, y)
    np.testing.assert_allclose(ens.predict(Xt), (ridge.predict(Xt) + knn.predict(Xt)) / 2)
    with pytest.raises(ValueError, match="not members"):
        MeanRegressor(members=("ridge",), member_params={"svr": {}}).fit(X, y)


def test_log_columns_only_touch_probability_columns():
    features = ["net/pool", "net/probs", "color/stats"]
    ranges = probability_ranges(features, {"net/pool": 3, "net/probs": 4, "color/stats": 2})
    assert ranges == ((3, 7),)
    X = np.abs(np.random.default_rng(0).standard_normal((5, 9)))
    out = LogColumns(ranges).fit_transform(X)
    np.testing.assert_array_equal(out[:, :3], X[:, :3])
    np.testing.assert_allclose(out[:, 3:7], np.log(X[:, 3:7] + 1e-4))
    with pytest.raises(ValueError, match="not probabilities"):
        LogColumns(ranges).fit(-X)


@pytest.mark.parametrize("name", ["ridge", "svr", "knn", "mlp", "lgbm"])
def test_nan_features_are_a_clear_error(name, data):
    X, y, _, _ = data
    X = X.copy()
    X[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        build_pipeline(name, params=FAST.get(name)).fit(X, y)


with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    CHECKED = [
        RidgeLOO(),
        RBFSVRRegressor(),
        FaissKNNRegressor(),
        TorchMLPRegressor(epochs=30, device="cpu"),
        TwoStageRegressor(),
        MeanRegressor(members=("ridge", "knn")),
        LogColumns(),
    ]


@parametrize_with_checks(CHECKED)  # every check passes: no expected failures
def test_sklearn_compatible(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check(estimator)


def test_the_eigensolver_of_a_large_matrix_counts_free_cores_and_agrees(monkeypatch):
    from evoked.regress import linear

    asked = []
    monkeypatch.setattr(linear, "free_cores", lambda s: asked.append(s) or 2)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((linear.EIGH_THREADED_FROM, 40))
    m = a @ a.T
    lam, vec = linear._eigh(m)
    assert asked == [FIT_FREE_CORES_SAMPLE_S]
    np.testing.assert_allclose((vec * lam) @ vec.T, m, atol=1e-8)
    linear._eigh(m[:10, :10])
    assert len(asked) == 1  # a small matrix runs on one thread without watching the CPUs
