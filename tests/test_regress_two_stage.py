"""Two-stage regression: stage 1 on category-derived VA, stage 2 on a few VA ratings."""

from __future__ import annotations

import numpy as np
import pytest

from evoked.regress import TwoStageRegressor, build_pipeline
from evoked.regress.two_stage import fit_affine


def world(n: int, seed: int):
    """Features of 8 latent factors; true VA is linear in them; categories are coarse VA bins.

    Category-derived VA (the bin centre, stretched as word norms are) is informative but biased, so
    stage 1 learns the right direction and stage 2 has to fix the scale.
    """
    fixed = np.random.default_rng(42)  # the same "backbone" and the same emotions for every set
    proj, w = fixed.standard_normal((8, 100)), fixed.standard_normal((8, 2)) / np.sqrt(8)
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 8))
    X = z @ proj + 1.0 * rng.standard_normal((n, 100))
    va = np.array([5.0, 4.5]) + z @ w * np.array([1.5, 1.0])
    rated = va + 0.3 * rng.standard_normal((n, 2))
    category_va = 5 + 1.8 * (np.round((va - 5) / 1.2) * 1.2)  # binned and exaggerated
    return X, rated, category_va


@pytest.fixture(scope="module")
def sets():
    Xc, _, yc = world(2000, 0)  # the categorical set
    X, y, _ = world(700, 1)  # VA-rated items: small training samples and a test set
    return Xc, yc, X[:200], y[:200], X[200:], y[200:]


def _mse(p, t):
    return float(((p - t) ** 2).mean())


def test_two_stage_beats_stage2_only_with_few_ratings(sets):
    Xc, yc, X, y, Xt, yt = sets
    rng = np.random.default_rng(0)
    ratios = []
    for _ in range(5):
        idx = rng.choice(len(X), 15, replace=False)
        alone = build_pipeline("ridge").fit(X[idx], y[idx])
        both = TwoStageRegressor(build_pipeline("ridge")).fit(X[idx], y[idx], X_stage1=Xc, y_stage1=yc)
        ratios.append(_mse(both.predict(Xt), yt) / _mse(alone.predict(Xt), yt))
    assert max(ratios) < 0.9 and np.mean(ratios) < 0.65, ratios


def test_with_no_ratings_two_stage_is_stage1(sets):
    Xc, yc, X, _, Xt, _ = sets
    stage1 = build_pipeline("ridge").fit(Xc, yc)
    est = TwoStageRegressor(build_pipeline("ridge")).fit(X[:0], np.zeros((0, 2)), X_stage1=Xc, y_stage1=yc)
    np.testing.assert_allclose(est.predict(Xt), stage1.predict(Xt))
    prefit = TwoStageRegressor(stage1, prefit=True).fit(None, None)
    np.testing.assert_allclose(prefit.predict(Xt), stage1.predict(Xt))
    assert prefit.stage1_ is stage1 and prefit.n_rated_ == 0


def test_recalibrate_is_an_affine_map_of_stage1(sets):
    Xc, yc, X, y, Xt, _ = sets
    stage1 = build_pipeline("ridge").fit(Xc, yc)
    est = TwoStageRegressor(stage1, method="recalibrate", prefit=True).fit(X[:50], y[:50])
    s1 = stage1.predict(Xt)
    np.testing.assert_allclose(est.predict(Xt), s1 * est.slope_ + est.offset_)
    # category VA is exaggerated 1.8x, so the fitted slope shrinks it back
    assert (est.slope_ < 0.8).all() and est.residual_ is None
    res = TwoStageRegressor(stage1, method="residual", prefit=True).fit(X[:50], y[:50])
    assert res.residual_ is not None


def test_fit_affine_least_squares_and_small_n():
    s = np.array([[1.0], [2.0], [3.0], [4.0]])
    a, b = fit_affine(s, 2 * s + 1)
    np.testing.assert_allclose([a[0], b[0]], [2, 1])
    a, b = fit_affine(s[:2], s[:2] + 3)  # two items: offset only
    np.testing.assert_allclose([a[0], b[0]], [1, 3])


def test_bad_method_is_an_error(sets):
    Xc, yc, X, y, _, _ = sets
    with pytest.raises(ValueError, match="method='affine'"):
        TwoStageRegressor(method="affine").fit(X, y)
