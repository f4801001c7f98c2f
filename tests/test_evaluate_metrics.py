"""Every metric checked against scipy / scikit-learn / a direct formula."""

import numpy as np
import pytest
from scipy import stats
from scipy.spatial import distance
from sklearn.metrics import accuracy_score, mean_absolute_error, mean_squared_error, r2_score

from evoked.data import load_lexicon
from evoked.evaluate import (
    category_accuracy,
    ccc,
    chebyshev,
    cosine_similarity,
    distribution_metrics,
    intersection,
    kl_divergence,
    regression_metrics,
    va_metrics,
)
from evoked.evaluate.category import category_correct


@pytest.fixture
def va_pair():
    rng = np.random.default_rng(3)
    t = rng.uniform(1, 9, 300)
    p = 0.6 * t + 2 + rng.normal(0, 1.2, 300)
    return t, p


def test_regression_metrics_match_scipy_and_sklearn(va_pair):
    t, p = va_pair
    m = regression_metrics(t, p)
    assert m["n"] == 300
    assert m["mse"] == pytest.approx(mean_squared_error(t, p))
    assert m["rmse"] == pytest.approx(np.sqrt(mean_squared_error(t, p)))
    assert m["mae"] == pytest.approx(mean_absolute_error(t, p))
    r, pv = stats.pearsonr(t, p)
    assert m["r"] == pytest.approx(r) and m["r_p"] == pytest.approx(pv)
    assert m["spearman"] == pytest.approx(stats.spearmanr(t, p).statistic)
    assert m["r2"] == pytest.approx(r2_score(t, p))


def test_ccc_is_lins_formula(va_pair):
    t, p = va_pair
    cov = np.cov(t, p, bias=True)[0, 1]
    expected = 2 * cov / (t.var() + p.var() + (t.mean() - p.mean()) ** 2)
    assert ccc(t, p) == pytest.approx(expected)
    assert ccc(t, t) == pytest.approx(1.0)
    # a shift keeps r at 1 but CCC penalises it
    assert regression_metrics(t, t + 1)["r"] == pytest.approx(1.0)
    assert ccc(t, t + 1) == pytest.approx(2 * t.var() / (2 * t.var() + 1)) and ccc(t, t + 1) < 1


def test_va_metrics_drop_unknown_truths_per_dimension(va_pair):
    t, p = va_pair
    y_true = np.stack([t, t[::-1]], axis=1)
    y_pred = np.stack([p, p[::-1]], axis=1)
    y_true[:10, 0] = np.nan
    out = va_metrics(y_true, y_pred)
    assert out["valence"]["n"] == 290 and out["arousal"]["n"] == 300
    assert out["valence"]["mse"] == pytest.approx(mean_squared_error(t[10:], p[10:]))


def test_constant_prediction_gives_nan_correlation():
    m = regression_metrics([1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0])
    assert np.isnan(m["r"]) and np.isnan(m["spearman"]) and m["ccc"] == pytest.approx(0.0)


@pytest.fixture
def distributions():
    rng = np.random.default_rng(5)
    t = rng.dirichlet(np.ones(7), 50)
    p = rng.dirichlet(np.ones(7) * 2, 50)
    return t, p


def test_distribution_metrics_match_scipy(distributions):
    t, p = distributions
    np.testing.assert_allclose(kl_divergence(t, p), [stats.entropy(a, b) for a, b in zip(t, p)], rtol=1e-6)
    np.testing.assert_allclose(chebyshev(t, p), [distance.chebyshev(a, b) for a, b in zip(t, p)], rtol=1e-6)
    np.testing.assert_allclose(
        cosine_similarity(t, p), [1 - distance.cosine(a, b) for a, b in zip(t, p)], rtol=1e-6
    )
    # for distributions, intersection = 1 - total variation = 1 - L1 / 2
    np.testing.assert_allclose(intersection(t, p), [1 - distance.cityblock(a, b) / 2 for a, b in zip(t, p)])
    means = distribution_metrics(t, p)
    assert means["n"] == 50 and means["kl"] == pytest.approx(kl_divergence(t, p).mean())


def test_distribution_metrics_identity_zeros_and_nan(distributions):
    t, _ = distributions
    assert np.allclose(kl_divergence(t, t), 0) and np.allclose(chebyshev(t, t), 0)
    assert np.allclose(cosine_similarity(t, t), 1) and np.allclose(intersection(t, t), 1)
    # a predicted zero where the truth has mass: clipped, so large but finite
    kl = kl_divergence([[1.0, 0.0]], [[0.0, 1.0]])
    assert np.isfinite(kl).all() and kl[0] > 10
    assert intersection([[1.0, 0.0]], [[0.0, 1.0]])[0] == pytest.approx(0.0, abs=1e-6)
    # counts are renormalised
    np.testing.assert_allclose(kl_divergence(t * 10, t), 0, atol=1e-12)
    t2 = t.copy()
    t2[0, 0] = np.nan
    assert distribution_metrics(t2, t)["n"] == 49


def test_category_accuracy_matches_sklearn_and_manual_nearest():
    lex = load_lexicon("nrc")
    cats = ["anger", "fear", "joy", "sadness"]
    m = lex.matrix(cats)
    rng = np.random.default_rng(1)
    truth = rng.choice(cats, 80)
    va = rng.uniform(1, 9, (80, 2))
    out = category_accuracy(truth, va, lex, cats, "euclidean")
    manual = np.array(cats)[np.argmin(((va[:, None] - m[None]) ** 2).sum(-1), axis=1)]
    assert out["n"] == 80
    assert out["accuracy"] == pytest.approx(accuracy_score(truth, manual))
    # cosine compares directions of the 1..9 vectors
    cos = (va / np.linalg.norm(va, axis=1, keepdims=True)) @ (m / np.linalg.norm(m, axis=1, keepdims=True)).T
    manual_cos = np.array(cats)[np.argmax(cos, axis=1)]
    assert category_accuracy(truth, va, lex, cats, "cosine")["accuracy"] == pytest.approx(
        accuracy_score(truth, manual_cos)
    )
    assert sum(sum(row.values()) for row in out["confusion"].values()) == 80


def test_category_accuracy_of_the_anchors_themselves_and_unknowns():
    lex = load_lexicon("nrc")
    cats = ["anger", "joy", "sadness"]
    va = lex.matrix(cats)
    correct, predicted = category_correct(["Anger", "joy", "sadness"], va, lex, cats, "euclidean")
    assert correct.all() and list(predicted) == cats  # labels match case-insensitively
    out = category_accuracy(["anger", "", "sadness", "fear"], np.vstack([va, [[np.nan, 5]]]), lex, cats)
    assert out["n"] == 2  # no label, a label outside `cats`, and a NaN prediction are left out
