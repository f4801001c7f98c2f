"""`run_regress` and `evoked regress` on small synthetic feature stores: protocols, run folder, errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from evoked.cli import main
from evoked.errors import ConfigError
from evoked.evaluate.metrics import va_metrics
from evoked.evaluate.runs import items_fingerprint
from evoked.regress import build_pipeline
from evoked.regress.protocol import plan_cv
from evoked.regress.rundir import CURVE_COLUMNS, PREDICTION_COLUMNS, load_run_model
from evoked.regress.runner import _Fitter, run_regress
from storeutil import make_store

N = 150
RUN_KEYS = (
    "kind",
    "name",
    "created",
    "evoked_version",
    "dataset",
    "store",
    "store_uuid",
    "features",
    "target",
    "protocol",
    "items_sha256",
    "models",
    "versions",
)


def synthetic(n: int = N, seed: int = 0) -> dict:
    """Features with a VA signal; categories that follow valence (joy / sadness / fear)."""
    fixed = np.random.default_rng(99)  # the same feature "backbone" for every store
    proj, wv, wa = fixed.standard_normal((3, 16)), fixed.standard_normal(3), fixed.standard_normal(3)
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 3))
    pool = np.maximum(z @ proj + 0.3 * rng.standard_normal((n, 16)), 0)
    logits = z @ fixed.standard_normal((3, 10))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    valence = 5 + 1.5 * np.tanh(z @ wv / 1.5) + 0.2 * rng.standard_normal(n)
    arousal = 4.5 + 0.8 * (z @ wa) / 1.5 + 0.2 * rng.standard_normal(n)
    category = np.where(valence > 5.5, "joy", np.where(arousal > 4.5, "fear", "sadness")).astype(object)
    return {
        "features": {"net/pool": pool, "net/probs": probs, "color/stats": rng.random((n, 4))},
        "valence": valence,
        "arousal": arousal,
        "category": category,
    }


@pytest.fixture
def store(tmp_path: Path) -> Path:
    d = synthetic()
    return make_store(
        tmp_path / "s.h5", d["features"], valence=d["valence"], arousal=d["arousal"], category=d["category"]
    )


def read_predictions(run: Path) -> list[dict]:
    with (run / "predictions.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == PREDICTION_COLUMNS
        return list(reader)


def test_cv_run_folder_follows_docs_runs_md(store: Path, tmp_path: Path):
    out = tmp_path / "runs" / "cv"
    result = run_regress(store, features=["net/pool", "net/probs"], out=out, models="ridge,knn", cv=3)
    assert {p.name for p in out.iterdir()} == {"run.json", "predictions.csv", "metrics.json", "models"}
    run = json.loads((out / "run.json").read_text())
    for key in RUN_KEYS:
        assert key in run, key
    assert run["kind"] == "regress" and run["name"] == "cv" and run["models"] == ["ridge", "knn"]
    assert run["protocol"] == {
        "kind": "cv",
        "folds": 3,
        "seed": 0,
        "folds_source": "assigned",
        "includes_test": True,
    }
    assert run["features"] == ["net/pool", "net/probs"] and run["target"] == {"kind": "va"}
    assert run["log_probs"] == ["net/probs"] and run["feature_dims"] == {"net/pool": 16, "net/probs": 10}
    rows = read_predictions(out)
    for model in ("ridge", "knn"):
        mine = [r for r in rows if r["model"] == model]
        assert sorted(r["id"] for r in mine) == sorted(f"item{i:05d}.jpg" for i in range(N))  # each once
        assert {r["fold"] for r in mine} == {"0", "1", "2"} and {r["split"] for r in mine} == {""}
        truth = np.array([[float(r["valence_true"]), float(r["arousal_true"])] for r in mine])
        pred = np.array([[float(r["valence_pred"]), float(r["arousal_pred"])] for r in mine])
        metrics = json.loads((out / "metrics.json").read_text())[model]
        for dim in ("valence", "arousal"):
            assert metrics[dim]["r"] == pytest.approx(va_metrics(truth, pred)[dim]["r"], abs=1e-5)
        assert {r["category_true"] for r in mine} == {"joy", "fear", "sadness"}
    ridge = json.loads((out / "metrics.json").read_text())["ridge"]
    assert ridge["valence"]["r"] > 0.8 and ridge["arousal"]["r"] > 0.6
    ids = [r["id"] for r in rows if r["model"] == "ridge"]
    folds = [int(r["fold"]) for r in rows if r["model"] == "ridge"]
    assert run["items_sha256"] == items_fingerprint(ids, folds, [""] * len(ids))  # what `evaluate` checks
    assert (out / "models" / "ridge.joblib").is_file() and (out / "models" / "knn.json").is_file()
    meta = json.loads((out / "models" / "ridge.json").read_text())
    assert meta["features"] == run["features"] and meta["fitted_on"]["items"] == N
    assert "scikit-learn" in meta["versions"] and meta["target"] == {"kind": "va"}
    assert result.counts["evaluated"] == N and result.metrics()["ridge"] == ridge


def test_cv_uses_the_store_folds_when_it_has_them(tmp_path: Path):
    d = synthetic()
    fold = np.arange(N) % 4
    fold[:6] = -1  # e.g. held-out test items of `evoked data split`: never evaluated under CV
    store = make_store(
        tmp_path / "f.h5", d["features"], valence=d["valence"], arousal=d["arousal"], fold=fold
    )
    result = run_regress(store, features=["net/pool"], out=tmp_path / "r", cv=4)
    assert result.run["protocol"]["folds_source"] == "store"
    rows = read_predictions(tmp_path / "r")
    assert {r["id"]: int(r["fold"]) for r in rows} == {f"item{i:05d}.jpg": int(fold[i]) for i in range(6, N)}
    assert result.counts["outside the store's folds"] == 6
    # another K: folds are assigned (deterministically) instead
    other = run_regress(store, features=["net/pool"], out=tmp_path / "r3", cv=3)
    assert other.run["protocol"]["folds_source"] == "assigned"


def test_failed_rows_and_missing_labels_are_excluded_and_counted(tmp_path: Path):
    d = synthetic()
    valence = d["valence"].copy()
    valence[10:15] = np.nan
    store = make_store(
        tmp_path / "m.h5",
        d["features"],
        valence=valence,
        arousal=d["arousal"],
        failed={0: "broken", 1: "cut"},
    )
    result = run_regress(store, features=["net/pool"], out=tmp_path / "r", cv=3)
    assert result.counts["failed features"] == 2
    assert result.counts["no training label"] == 5 and result.counts["not evaluable (no VA rating)"] == 5
    assert result.counts["evaluated"] == N - 7
    ids = {r["id"] for r in read_predictions(tmp_path / "r")}
    assert "item00000.jpg" not in ids and "item00012.jpg" not in ids and len(ids) == N - 7
    assert json.loads((tmp_path / "r" / "run.json").read_text())["counts"]["failed features"] == 2


def test_split_protocol_trains_on_train_and_val_and_evaluates_test(tmp_path: Path):
    d = synthetic()
    split = np.array(["train"] * 90 + ["val"] * 20 + ["test"] * 40, dtype=object)
    store = make_store(
        tmp_path / "s.h5", d["features"], valence=d["valence"], arousal=d["arousal"], split=split
    )
    result = run_regress(store, features=["net"], out=tmp_path / "r", split="test")
    assert result.run["protocol"] == {"kind": "split", "train": ["train", "val"], "eval": "test"}
    rows = read_predictions(tmp_path / "r")
    assert len(rows) == 40 and {r["split"] for r in rows} == {"test"} and {r["fold"] for r in rows} == {"-1"}
    assert result.models[0].n_train == 110
    assert result.run["features"] == ["net/pool", "net/probs"]  # a group name means all its outputs
    val = run_regress(store, features=["net/pool"], out=tmp_path / "v", split="val")
    assert val.models[0].n_train == 90 and val.counts["evaluated"] == 20


def test_category_va_trains_on_keywords_and_evaluates_against_ratings(store: Path, tmp_path: Path):
    result = run_regress(
        store, features=["net/pool"], out=tmp_path / "r", target="category-va", lexicon="nrc", cv=3
    )
    assert result.run["target"]["kind"] == "category-va" and result.run["target"]["lexicon"]["name"] == "nrc"
    rows = read_predictions(tmp_path / "r")
    d = synthetic()
    truth = {f"item{i:05d}.jpg": d["valence"][i] for i in range(N)}
    assert all(float(r["valence_true"]) == pytest.approx(truth[r["id"]], abs=1e-4) for r in rows)
    assert result.models[0].metrics["valence"]["r"] > 0.6  # keywords alone carry the valence signal


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"features": ["net/nope"]}, "unknown feature 'net/nope'.*available: .*net/pool"),
        ({"features": ["nope"]}, "unknown extractor 'nope'"),
        ({"models": "ridge,forest"}, "unknown model 'forest'"),
        ({"split": "test"}, "no train/val/test split.*evoked data split"),
        ({"split": "test", "cv": 3}, "alternatives"),
        ({"cv": 1}, "--cv 1"),
        ({"params": ["svr.C=3"]}, "not in --model"),
        ({"params": ["ridge.nope=3"]}, "bad parameter for model 'ridge'"),
        ({"pca": "abc"}, "--pca 'abc'"),
        ({"stage1": "same", "target": "category-va"}, "use --target va with --stage1"),
        ({"n_labels": "10,x"}, "--n-labels 'x'"),
        ({"stage1": "same", "n_labels": "0,500"}, "a fold has only"),
    ],
)
def test_bad_inputs_are_clear_errors_before_any_fitting(store: Path, tmp_path: Path, kwargs, message):
    args = {"features": ["net/pool"], "out": tmp_path / "r", "models": "ridge", **kwargs}
    with pytest.raises(ConfigError, match=message):
        run_regress(store, **args)
    assert not (tmp_path / "r").exists()


def test_existing_out_needs_overwrite(store: Path, tmp_path: Path):
    run_regress(store, features=["net/pool"], out=tmp_path / "r", cv=3)
    with pytest.raises(ConfigError, match="already exists.*--overwrite"):
        run_regress(store, features=["net/pool"], out=tmp_path / "r", cv=3)
    run_regress(store, features=["net/pool"], out=tmp_path / "r", cv=3, overwrite=True, models="knn")
    assert json.loads((tmp_path / "r" / "run.json").read_text())["models"] == ["knn"]
    assert not (tmp_path / "r" / "models" / "ridge.joblib").exists()  # nothing stale is left


def test_overwrite_removes_what_a_run_wrote_and_nothing_else(store: Path, tmp_path: Path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("the user's own file")
    run_regress(store, features=["net/pool"], out=out, cv=3, overwrite=True)  # used to delete the folder
    assert (out / "notes.txt").read_text() == "the user's own file" and (out / "run.json").is_file()


def test_saved_models_load_back_and_predict_identically(store: Path, tmp_path: Path):
    params = {"mlp": {"epochs": 5}, "lgbm": {"n_estimators": 20}}
    run_regress(
        store,
        features=["net/pool", "net/probs"],
        out=tmp_path / "r",
        models="ridge,svr,knn,mlp,lgbm",
        cv=0,
        params=params,
    )
    from evoked.features.store import open_store
    from evoked.regress.transforms import probability_ranges

    with open_store(store) as s:
        X = s.read(["net/pool", "net/probs"])
        y = np.stack([s.labels()["valence"], s.labels()["arousal"]], 1)
    ranges = probability_ranges(["net/pool", "net/probs"], {"net/pool": 16, "net/probs": 10})
    for model in ("ridge", "svr", "knn", "mlp", "lgbm"):
        est, meta = load_run_model(tmp_path / "r", model)
        fresh = build_pipeline(model, params=params.get(model), log_ranges=ranges).fit(X, y)
        np.testing.assert_array_equal(est.predict(X), fresh.predict(X))
        assert meta["name"] == model and meta["fitted_on"]["items"] == N
    with pytest.raises(ConfigError, match="'forest' is not in"):
        load_run_model(tmp_path / "r", "forest")


def test_aux_targets_reach_the_mlp_only(tmp_path: Path):
    d = synthetic()
    dist = np.stack([d["category"] == c for c in ("joy", "fear", "sadness")], 1).astype(float)
    store = make_store(
        tmp_path / "d.h5",
        d["features"],
        valence=d["valence"],
        arousal=d["arousal"],
        category=d["category"],
        distribution=dist,
        categories=["joy", "fear", "sadness"],
    )
    params = {"mlp": {"epochs": 5}}
    result = run_regress(
        store,
        features=["net/pool"],
        out=tmp_path / "r",
        models="ridge,mlp",
        cv=3,
        aux="distribution",
        params=params,
    )
    assert result.run["aux"] == "distribution"
    assert result.run["model_info"]["mlp"]["n_aux"] == 3 and "n_aux" not in result.run["model_info"]["ridge"]
    one_hot = run_regress(
        store, features=["net/pool"], out=tmp_path / "c", models="mlp", cv=0, aux="category", params=params
    )
    assert one_hot.run["model_info"]["mlp"]["n_aux"] == 3
    with pytest.raises(ConfigError, match="none of ridge learns auxiliary targets"):
        run_regress(store, features=["net/pool"], out=tmp_path / "x", models="ridge", aux="distribution")


def test_stage1_same_never_uses_an_evaluated_item():
    rng = np.random.default_rng(0)
    n = 60
    ok = np.ones(n, dtype=bool)
    has_va = rng.random(n) > 0.2
    has_cat = rng.random(n) > 0.1
    plan = plan_cv(
        3,
        ok=ok,
        finite=ok,
        has_target=has_va,
        has_va=has_va,
        store_fold=np.full(n, -1),
        category=np.array([""] * n, dtype=object),
    )
    from types import SimpleNamespace as NS

    va = np.where(has_va[:, None], 5.0, np.nan) * np.ones((n, 2))
    tr = NS(ids=np.arange(n), ok=ok, finite=ok, has_va=has_va, labels={}, va=va)
    fitter = _Fitter(NS(aux=None), tr, plan, NS(targets=NS(mask=has_cat)))
    for fold in plan.folds:
        rows = fitter.stage1_rows(fold.train)
        assert not set(rows) & set(fold.eval)
        assert set(np.flatnonzero(has_cat & ~has_va)) <= set(rows)  # unrated items always help


def test_two_stage_and_low_resource_curve(store: Path, tmp_path: Path):
    out = tmp_path / "curve"
    result = run_regress(
        store,
        features=["net/pool"],
        out=out,
        cv=3,
        stage1="same",
        lexicon="nrc",
        n_labels="0,10,all",
        seeds=2,
    )
    assert result.run["models"] == ["ridge", "two_stage:ridge"]
    assert (out / "models" / "two_stage__ridge.joblib").is_file()
    meta = json.loads((out / "models" / "two_stage__ridge.json").read_text())
    assert (
        meta["two_stage"]["method"] == "residual"
        and meta["two_stage"]["stage1"]["target"]["kind"] == "category-va"
    )
    with (out / "curve.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == CURVE_COLUMNS
        rows = list(reader)
    per_seed = {
        ("two_stage", "0"),
        ("stage2_only", "10"),
        ("two_stage", "10"),
        ("stage2_only", "100"),
        ("two_stage", "100"),
    }
    assert len(rows) == 2 * len(per_seed)  # n=0 has no stage-2-only model; "all" = 100 items per fold
    assert {(r["setting"], r["n_labels"]) for r in rows} == per_seed
    summary = json.loads((out / "metrics.json").read_text())["_curve"]
    ten = {s["setting"]: s for s in summary if s["n_labels"] == 10}
    zero = [s for s in summary if s["n_labels"] == 0]
    assert (
        ten["two_stage"]["seeds"] == 2 and ten["stage2_only"]["r_valence_std"] > 0
    )  # seeds draw other items
    assert len(zero) == 1 and zero[0]["r_valence_std"] == 0 and zero[0]["r_valence"] > 0.5  # stage 1 alone
    full = {s["setting"]: s for s in summary if s["n_labels"] == 100}
    ts = result.metrics()["two_stage:ridge"]["valence"]["r"]
    assert full["two_stage"]["r_valence"] == pytest.approx(ts, abs=1e-9)  # "all" is the main evaluation


def test_stage1_from_another_store_checks_the_extractor(store: Path, tmp_path: Path):
    d = synthetic(300, seed=5)
    other = make_store(tmp_path / "fi.h5", d["features"], category=d["category"], name="categorical")
    result = run_regress(store, features=["net/pool"], out=tmp_path / "r", cv=3, stage1=str(other))
    stage1 = result.run["two_stage"]["stage1"]
    # item00000..item00149 are also in the evaluated store: left out of stage 1, and counted
    assert stage1["items"] == 150 and stage1["excluded"]["also evaluated (same id)"] == 150
    assert stage1["dataset"] == "categorical" and stage1["target"]["lexicon"]["name"] == "nrc"
    assert result.metrics()["two_stage:ridge"]["valence"]["r"] > 0.7
    with h5py.File(other, "r+") as f:
        cfg = json.loads(f["features/net"].attrs["config"])
        cfg["preprocess"] = {"resize": 999}
        f["features/net"].attrs["config"] = json.dumps(cfg)
    with pytest.raises(ConfigError, match="extracted differently.*preprocess"):
        run_regress(store, features=["net/pool"], out=tmp_path / "r2", cv=3, stage1=str(other))


def test_cli_regress_prints_a_table_and_errors_exit_2(store: Path, tmp_path: Path, capsys):
    out = tmp_path / "r"
    argv = [
        "regress",
        str(store),
        "--feature",
        "net/pool",
        "--feature",
        "color/stats",
        "--model",
        "ridge,knn",
    ]
    assert main([*argv, "--cv", "3", "--out", str(out), "-q"]) == 0
    text = capsys.readouterr().out
    assert "3-fold CV" in text and "r_val" in text and "ridge" in text and "knn" in text
    assert "left out: none" in text
    assert main([*argv, "--cv", "3", "--out", str(out), "--overwrite", "--json", "-q"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed["metrics"]) == {"ridge", "knn"}
    assert (
        main(
            ["regress", str(store), "--feature", "net/pool", "--model", "nope", "--out", str(tmp_path / "x")]
        )
        == 2
    )
    assert "evoked: error: unknown model 'nope'" in capsys.readouterr().err
