"""Bootstrap CIs and the paired test: exact against the plain metrics, calibrated, deterministic, fast."""

import time

import numpy as np
import pytest

from evoked.evaluate import bootstrap as bs
from evoked.evaluate.metrics import regression_metrics


def _noisy(rng, t, sd):
    return t + rng.normal(0, sd, t.shape)


def test_moment_sums_reproduce_the_plain_metrics():
    rng = np.random.default_rng(0)
    t = rng.uniform(1, 9, 200)
    p = _noisy(rng, 0.7 * t + 1.5, 1.0)
    t[:7] = np.nan  # unknown truths get zero weight
    point = bs.va_from_sums(bs.va_columns(t, p).sum(axis=0))
    ref = regression_metrics(t[7:], p[7:])
    for k in bs.VA_STATS:
        assert point[k] == pytest.approx(ref[k], rel=1e-9), k
    # one resample = a weighted data set: repeat items by their counts and compare
    counts = bs.resample_counts(200, 1, np.random.default_rng(1))[0].astype(int)
    rep = np.repeat(np.arange(200), counts)
    keep = rep[~np.isnan(t[rep])]
    weighted = bs.va_from_sums(counts @ bs.va_columns(t, p))
    direct = regression_metrics(t[keep], p[keep])
    for k in bs.VA_STATS:
        assert weighted[k] == pytest.approx(direct[k], rel=1e-9), k


def test_resamples_depend_only_on_n_and_seed():
    x = np.random.default_rng(0).normal(size=(50, 3))
    a = bs.resampled_sums(x, 300, seed=4)
    b = bs.resampled_sums(x[:, :1], 300, seed=4)  # other columns, same items: same resamples
    np.testing.assert_allclose(a[:, 0], b[:, 0])
    assert not np.allclose(a, bs.resampled_sums(x, 300, seed=5))
    counts = bs.resample_counts(50, 300, np.random.default_rng(4))
    assert (counts.sum(axis=1) == 50).all()
    # small blocks give the same resamples as one block
    old = bs._BLOCK_CELLS
    try:
        bs._BLOCK_CELLS = 50 * 7
        np.testing.assert_allclose(bs.resampled_sums(x, 300, seed=4), a)
    finally:
        bs._BLOCK_CELLS = old


def test_ci_coverage_is_near_nominal():
    """95% percentile intervals of MAE and Pearson r cover the true value in about 95% of data sets."""
    rng = np.random.default_rng(2024)
    sims, n, sd_t, sd_e = 200, 120, 1.5, 1.0
    true_mae = sd_e * np.sqrt(2 / np.pi)
    true_r = sd_t / np.hypot(sd_t, sd_e)
    hits = {"mae": 0, "r": 0}
    for s in range(sims):
        t = rng.normal(5, sd_t, n)
        p = _noisy(rng, t, sd_e)
        sums = bs.resampled_sums(bs.va_columns(t, p), 500, seed=s)
        stats = bs.va_from_sums(sums)
        for k, truth in (("mae", true_mae), ("r", true_r)):
            lo, hi = bs.percentile_ci(stats[k])
            hits[k] += lo <= truth <= hi
    for k, h in hits.items():
        assert 0.9 <= h / sims <= 0.99, (k, h / sims)


def _paired_p(seed, sd_a, sd_b, n=300, shared=0.5):
    rng = np.random.default_rng(seed)
    t = rng.uniform(1, 9, n)
    common = rng.normal(0, shared, n)  # errors the two systems share, as real systems do
    a = t + common + rng.normal(0, sd_a, n)
    b = t + common + rng.normal(0, sd_b, n)
    sums = bs.resampled_sums(np.hstack([bs.va_columns(t, a), bs.va_columns(t, b)]), 1000, seed=seed)
    ra, rb = bs.va_from_sums(sums[:, :8])["r"], bs.va_from_sums(sums[:, 8:])["r"]
    pa = regression_metrics(t, a)["r"]
    pb = regression_metrics(t, b)["r"]
    return bs.paired_difference(ra, rb, pa, pb)


def test_paired_test_detects_a_known_difference():
    for seed in range(5):
        out = _paired_p(seed, sd_a=0.8, sd_b=1.6)
        assert out["p"] < 0.05 and out["diff"] > 0 and out["ci"][0] > 0


def test_paired_test_does_not_detect_no_difference():
    ps = np.array([_paired_p(100 + seed, sd_a=1.0, sd_b=1.0)["p"] for seed in range(20)])
    assert (ps < 0.05).sum() <= 2 and np.median(ps) > 0.2
    # a system against itself: every bootstrap difference is 0
    same = bs.paired_difference(np.ones(100) * 0.5, np.ones(100) * 0.5, 0.5, 0.5)
    assert same["p"] == 1.0 and same["diff"] == 0.0 and same["ci"] == [0.0, 0.0]


def test_p_value_resolution_and_ci_agree():
    d = np.linspace(0.01, 1, 999)  # every bootstrap difference is positive
    out = bs.paired_difference(d, np.zeros_like(d), 0.5, 0.0)
    assert out["p"] == pytest.approx(2 / 1000) and out["ci"][0] > 0
    assert np.isnan(bs.percentile_ci([np.nan, np.nan])[0])


def test_bootstrap_of_ten_systems_on_2000_items_is_fast():
    rng = np.random.default_rng(0)
    t = rng.uniform(1, 9, (2000, 2))
    cols = [bs.va_columns(t[:, k], _noisy(rng, t[:, k], 1.0)) for _ in range(10) for k in range(2)]
    start = time.perf_counter()
    sums = bs.resampled_sums(np.hstack(cols), 1000, seed=0)
    r = [bs.va_from_sums(sums[:, 8 * j : 8 * j + 8])["r"] for j in range(20)]
    elapsed = time.perf_counter() - start
    assert all(np.isfinite(x).all() for x in r)
    assert elapsed < 3.0, elapsed  # about 0.1 s here; generous for a busy machine
