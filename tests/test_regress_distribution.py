"""Label distribution learning: the six LDL measures, the distribution models, `--target
distribution` end to end (run folder, evaluate, eval stores, two-stage stage 1) and its bad inputs."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from evoked.errors import ConfigError, LabelError
from evoked.evaluate import evaluate
from evoked.evaluate.distribution import DISTRIBUTION_METRICS, distribution_values
from evoked.regress.distribution import (
    DistributionKNN,
    MeanDistribution,
    MLPDistribution,
    SoftmaxDistribution,
)
from evoked.regress.rundir import load_run_model
from evoked.regress.runner import run_regress
from storeutil import make_store

CATS = ("joy", "fear", "sadness", "anger")  # words the nrc lexicon knows (any names work without --lexicon)


def test_six_measures_match_hand_computed_values():
    t, p = np.array([[0.5, 0.3, 0.2]]), np.array([[0.4, 0.4, 0.2]])
    values = {k: float(v[0]) for k, v in distribution_values(t, p).items()}
    assert list(values) == list(DISTRIBUTION_METRICS)
    assert values["chebyshev"] == pytest.approx(0.1)
    assert values["clark"] == pytest.approx(math.sqrt((0.1 / 0.9) ** 2 + (0.1 / 0.7) ** 2))  # 0.180981
    assert values["clark"] == pytest.approx(0.180981, abs=1e-6)
    assert values["canberra"] == pytest.approx(0.1 / 0.9 + 0.1 / 0.7)  # 0.253968
    assert values["canberra"] == pytest.approx(0.253968, abs=1e-6)
    assert values["kl"] == pytest.approx(0.5 * math.log(0.5 / 0.4) + 0.3 * math.log(0.3 / 0.4), abs=1e-7)
    assert values["kl"] == pytest.approx(0.025267, abs=1e-6)
    assert values["cosine"] == pytest.approx(0.36 / (math.sqrt(0.38) * math.sqrt(0.36)))  # 0.973329
    assert values["intersection"] == pytest.approx(0.9)
    same = distribution_values(t, t)
    assert all(same[k][0] == pytest.approx(0.0, abs=1e-9) for k in ("chebyshev", "clark", "canberra", "kl"))
    assert same["cosine"][0] == pytest.approx(1.0) and same["intersection"][0] == pytest.approx(1.0)


def _ldl_data(n: int = 160, k: int = len(CATS), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Features with a signal, and distributions that follow it (softmax of a linear map, + noise)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 12))
    logits = X @ np.random.default_rng(99).standard_normal((12, k)) * 0.6
    P = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    P = 0.8 * P + 0.2 * rng.dirichlet(np.ones(k), n)
    return X, P / P.sum(1, keepdims=True)


def test_aa_knn_equals_a_brute_force_neighbour_average():
    X, P = _ldl_data()
    train, query = X[:120], X[120:]
    for k in (1, 5, 12):
        pred = DistributionKNN(n_neighbors=k).fit(train, P[:120]).predict(query)
        a = train / np.linalg.norm(train, axis=1, keepdims=True)
        q = query / np.linalg.norm(query, axis=1, keepdims=True)
        nearest = np.argsort(-(q @ a.T), axis=1, kind="stable")[:, :k]
        np.testing.assert_allclose(pred, P[:120][nearest].mean(axis=1), atol=1e-6)
        np.testing.assert_allclose(pred.sum(axis=1), 1.0)
    auto = DistributionKNN().fit(train, P[:120])
    assert auto.n_neighbors_ == min(auto.loo_errors_, key=lambda j: (auto.loo_errors_[j], j))  # by LOO KL


def test_distribution_models_beat_the_mean_and_output_distributions():
    X, P = _ldl_data(n=300)
    train, test = slice(0, 200), slice(200, 300)
    ref = distribution_values(P[test], MeanDistribution().fit(X[train], P[train]).predict(X[test]))["kl"].mean()
    for model in (SoftmaxDistribution(), DistributionKNN(), MLPDistribution(epochs=25, random_state=0)):
        pred = model.fit(X[train], P[train]).predict(X[test])
        assert pred.shape == (100, len(CATS)) and (pred >= 0).all()
        np.testing.assert_allclose(pred.sum(axis=1), 1.0, atol=1e-6)
        assert distribution_values(P[test], pred)["kl"].mean() < ref, type(model).__name__
    soft = SoftmaxDistribution().fit(X[train], P[train])
    assert soft.alpha_ == min(soft.cv_kl_, key=lambda a: (soft.cv_kl_[a], -a))  # chosen on training rows


def _store(path: Path, seed: int = 0, categories=CATS, n: int = 160, **over) -> Path:
    X, P = _ldl_data(n=n, k=len(categories), seed=seed)
    valence = 5 + 2 * (P[:, 0] - P[:, 2]) + 0.1 * np.random.default_rng(seed).standard_normal(n)
    kw = dict(valence=valence, arousal=4 + P[:, 1], category=np.array([categories[i] for i in P.argmax(1)], dtype=object),
              distribution=P, categories=list(categories))  # fmt: skip
    kw.update(over)
    return make_store(path, {"net/pool": X.astype(np.float32)}, **kw)


def _predictions(run: Path) -> list[dict]:
    with (run / "predictions.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_target_distribution_end_to_end_then_evaluate(tmp_path: Path):
    store = _store(tmp_path / "s.h5")
    run = tmp_path / "runs" / "dist"
    res = run_regress(store, features=["net/pool"], target="distribution", lexicon="nrc", cv=3,
                      params=["mlp.epochs=30"], out=run)  # fmt: skip
    assert [m.name for m in res.models] == ["softmax", "knn", "mlp", "mean"]  # the reference is added
    rows = _predictions(run)
    assert {f"pred_p_{c}" for c in CATS} | {f"true_p_{c}" for c in CATS} <= set(rows[0])
    for r in rows:
        assert sum(float(r[f"pred_p_{c}"]) for c in CATS) == pytest.approx(1.0, abs=1e-6)
        assert math.isfinite(float(r["valence_pred"]))  # the expected VA through the lexicon
    metrics = json.loads((run / "metrics.json").read_text())
    for name in ("softmax", "knn", "mlp", "mean"):
        assert set(DISTRIBUTION_METRICS) <= set(metrics[name]["distribution"])
        assert metrics[name]["distribution"]["n"] == 160 and "valence" in metrics[name]
    assert metrics["softmax"]["distribution"]["kl"] < metrics["mean"]["distribution"]["kl"]
    info = json.loads((run / "run.json").read_text())
    assert info["target"]["kind"] == "distribution" and info["target"]["categories"] == list(CATS)
    assert info["selection"]["default_model"]["metric"].startswith("mean KL")
    # `evoked predict` / `serve` read a saved distribution model as VA through the recorded lexicon
    est, meta = load_run_model(run, "softmax")
    X = _ldl_data()[0][:5]
    p = est.model_.predict(X)
    np.testing.assert_allclose(est.predict(X), p @ np.array(meta["target"]["va_table"]), atol=1e-9)
    # direct VA on the same items, compared with "distribution then VA" in one report
    run_regress(store, features=["net/pool"], cv=3, out=tmp_path / "runs" / "va")
    report = evaluate([tmp_path / "runs" / "va", run], out=tmp_path / "report", bootstrap=50, plots=False)
    by = {s["system"]: s for s in report["systems"]}
    assert {"va/ridge", "dist/softmax", "dist/mean"} <= set(by)
    dd = by["dist/softmax"]["distribution"]
    assert set(DISTRIBUTION_METRICS) <= set(dd) and set(DISTRIBUTION_METRICS) <= set(dd["ci"])
    assert by["va/ridge"]["distribution"] is None and math.isfinite(by["dist/softmax"]["valence"]["r"])
    text = (tmp_path / "report" / "report.md").read_text()
    assert "Clark" in text and "Canberra" in text


def test_distribution_with_split_eval_store_and_any_category_names(tmp_path: Path):
    cats = ("calm", "awe", "disgust")  # no lexicon: any names, any number; VA is left empty
    split = np.array(["train"] * 100 + ["test"] * 60, dtype=object)
    store = _store(tmp_path / "a.h5", categories=cats, split=split)
    other = _store(tmp_path / "b.h5", seed=1, categories=cats[::-1], n=40,  # same names, another order
                   ids=[f"other{i}.jpg" for i in range(40)])
    run = tmp_path / "run"
    res = run_regress(store, features=["net/pool"], target="distribution", models="softmax,knn", split="test",
                      evals=[str(other)], out=run)  # fmt: skip
    assert [m.name for m in res.models] == ["softmax", "knn", "mean"]
    rows = _predictions(run)
    assert {r["kind"] for r in rows} == {"held-out", "transfer"}
    assert all(r["valence_pred"] in ("", "nan") for r in rows)  # no lexicon: no VA
    transfer = [r for r in rows if r["kind"] == "transfer" and r["model"] == "knn"]
    assert len(transfer) == 40 and all(r["true_p_calm"] != "" for r in transfer)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["_evals"]["b"]["softmax"]["distribution"]["n"] == 40
    assert metrics["softmax"]["distribution"]["n"] == 60
    with pytest.raises(ConfigError, match="has no lexicon, so it gives no VA"):
        load_run_model(run, "softmax")


def test_stage1_learns_distributions_then_adapts_on_va(tmp_path: Path):
    store = _store(tmp_path / "s.h5")
    res = run_regress(store, features=["net/pool"], models="softmax,knn", stage1="same",
                      stage1_target="distribution", lexicon="nrc", cv=3, out=tmp_path / "run")  # fmt: skip
    assert [m.name for m in res.models] == ["two_stage:softmax", "knn", "two_stage:knn"]
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["two_stage"]["stage1"]["target"]["kind"] == "distribution"
    assert all(math.isfinite(m.metrics["valence"]["r"]) for m in res.models)
    with pytest.raises(ConfigError, match="add --lexicon"):
        run_regress(store, features=["net/pool"], models="softmax", stage1="same", stage1_target="distribution",
                    out=tmp_path / "r2")  # fmt: skip


def test_bad_distribution_inputs_are_clear_errors(tmp_path: Path):
    plain = make_store(tmp_path / "plain.h5", {"net/pool": np.ones((10, 3), dtype=np.float32)},
                       valence=np.full(10, 5.0), arousal=np.full(10, 5.0))  # fmt: skip
    with pytest.raises(ConfigError, match="needs label distributions, and this store has none"):
        run_regress(plain, features=["net/pool"], target="distribution", out=tmp_path / "r1")
    X, P = _ldl_data(n=30)
    P[7] *= 0.8  # sums to 0.8
    bad = make_store(tmp_path / "bad.h5", {"net/pool": X.astype(np.float32)}, distribution=P, categories=list(CATS))
    with pytest.raises(LabelError, match=r"item00007\.jpg sums to 0\.8, not 1"):
        run_regress(bad, features=["net/pool"], target="distribution", out=tmp_path / "r2")
    good = _store(tmp_path / "good.h5")
    with pytest.raises(ConfigError, match="--aux cannot be used with --target distribution"):
        run_regress(good, features=["net/pool"], target="distribution", models="mlp", aux="distribution",
                    out=tmp_path / "r3")  # fmt: skip
    with pytest.raises(ConfigError, match="ridge"):
        run_regress(good, features=["net/pool"], target="distribution", models="ridge", out=tmp_path / "r4")
    other = _store(tmp_path / "o.h5", categories=("calm", "awe", "disgust"))
    with pytest.raises(LabelError, match="--lexicon warriner"):
        run_regress(other, features=["net/pool"], target="distribution", lexicon="warriner", out=tmp_path / "r5")
    assert not (tmp_path / "r2").exists() and not (tmp_path / "r5").exists()  # nothing written
