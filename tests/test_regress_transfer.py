"""Cross-store runs (``--eval``, ``--stage1 OTHER``) and a protocol that never peeks at scored rows."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import h5py
import numpy as np
import pytest
from sklearn.linear_model import RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from evoked.cli import main
from evoked.errors import ConfigError, LabelError
from evoked.evaluate.metrics import va_metrics
from evoked.regress.linear import RIDGE_ALPHAS
from evoked.regress.runner import run_regress
from storeutil import make_store

N = 240


def population(n: int = 2 * N, seed: int = 0) -> dict:
    """One "dataset": features with a VA signal, categories, and a train/val/test split."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 3))
    pool = np.maximum(z @ rng.standard_normal((3, 12)) + 0.3 * rng.standard_normal((n, 12)), 0)
    valence = np.clip(5 + 1.2 * z[:, 0] + 0.3 * rng.standard_normal(n), 1, 9)
    arousal = np.clip(4.5 + 0.9 * z[:, 1] + 0.3 * rng.standard_normal(n), 1, 9)
    category = np.where(valence > 5.5, "joy", np.where(arousal > 4.5, "fear", "sadness")).astype(object)
    split = np.array(["train", "val", "test"], dtype=object)[rng.integers(0, 3, n)]
    ids = np.array([f"img{i:04d}.jpg" for i in range(n)], dtype=object)
    return {"pool": pool.astype(np.float32), "valence": valence, "arousal": arousal, "category": category,
            "split": split, "ids": ids}  # fmt: skip


def half(path: Path, pop: dict, rows, *, valence=None, weights="random", **extra) -> Path:
    kw = dict(valence=pop["valence"][rows] if valence is None else valence, arousal=pop["arousal"][rows],
              category=pop["category"][rows], split=pop["split"][rows], ids=list(pop["ids"][rows]))  # fmt: skip
    kw.update(extra)
    path = make_store(path, {"net/pool": pop["pool"][rows]}, **kw)
    if weights != "random":  # another extraction of the same backbone
        with h5py.File(path, "r+") as f:
            cfg = json.loads(f["features/net"].attrs["config"])
            cfg["weights"] = {"tag": weights, "sha256": "ab" * 32}
            f["features/net"].attrs["config"] = json.dumps(cfg)
    return path


@pytest.fixture(scope="module")
def halves(tmp_path_factory) -> tuple[Path, Path, dict]:
    pop = population()
    root = tmp_path_factory.mktemp("halves")
    return half(root / "A.h5", pop, slice(0, N)), half(root / "B.h5", pop, slice(N, 2 * N)), pop


def read(run: Path) -> list[dict]:
    with (run / "predictions.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_ridge_on_b_equals_scaler_plus_ridgecv_on_plain_arrays(halves, tmp_path: Path):
    a, b, _ = halves
    result = run_regress(a, features=["net/pool"], out=tmp_path / "x", models="ridge,svr", evals=[str(b)])
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        Xa, Xb = fa["features/net/pool"][:].astype(np.float64), fb["features/net/pool"][:].astype(np.float64)
        ya = np.stack([fa["labels/valence"][:], fa["labels/arousal"][:]], 1)
        yb = np.stack([fb["labels/valence"][:], fb["labels/arousal"][:]], 1)
        ids_b = fb["items/id"].asstr()[:] if "items/id" in fb else None
        side = fa["labels/split"].asstr()[:] != "test"  # A's test split is left out of the run's CV and fit
    ref = make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS, alpha_per_target=True))
    ref.fit(Xa[side], ya[side])
    expected = ref.predict(Xb)
    rows = [r for r in read(tmp_path / "x") if r["model"] == "ridge" and r["eval"] == "B"]
    assert (
        len(rows) == N and {r["kind"] for r in rows} == {"transfer"} and {r["fold"] for r in rows} == {"-1"}
    )
    if ids_b is not None:
        assert [r["id"] for r in rows] == list(ids_b)
    got = np.array([[float(r["valence_pred"]), float(r["arousal_pred"])] for r in rows])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    mine, theirs = result.models[0].eval_metrics["B"], va_metrics(yb, expected)
    for dim in ("valence", "arousal"):
        for key in ("r", "mse", "ccc"):
            assert abs(mine[dim][key] - theirs[dim][key]) < 1e-6, (dim, key)
    run = json.loads((tmp_path / "x" / "run.json").read_text())
    (ev,) = run["evals"]
    assert ev["name"] == "B" and ev["n_items"] == N and ev["has_ratings"] and ev["split"] is None
    assert ev["store"] == str(b.resolve()) and len(ev["items_sha256"]) == 64 and ev["store_uuid"]
    assert run["estimators"]["ridge"] == "evoked.regress.linear.RidgeLOO"
    metrics = json.loads((tmp_path / "x" / "metrics.json").read_text())
    assert metrics["_evals"]["B"]["svr"]["valence"]["r"] > 0.5


def _shuffled_test_ratings(pop: dict, rows: slice, seed: int = 5) -> np.ndarray:
    v = pop["valence"][rows].copy()
    test = np.flatnonzero(pop["split"][rows] == "test")
    v[test] = np.random.default_rng(seed).permutation(v[test])[::-1] + 0.5
    return np.clip(v, 1, 9)


@pytest.mark.parametrize("protocol", [{"cv": 3}, {"split": "test"}])
def test_test_labels_change_nothing_but_the_test_scores(halves, tmp_path: Path, protocol):
    a, b, pop = halves
    shuffled = half(tmp_path / "A2.h5", pop, slice(0, N), valence=_shuffled_test_ratings(pop, slice(0, N)))
    kw = dict(features=["net/pool"], models="ridge,knn,svr", evals=[str(b)], **protocol)
    one = run_regress(a, out=tmp_path / "one", **kw)
    two = run_regress(shuffled, out=tmp_path / "two", **kw)
    p1, p2 = read(tmp_path / "one"), read(tmp_path / "two")
    key = lambda r: (r["model"], r["eval"], r["id"])  # noqa: E731
    assert [key(r) for r in p1] == [key(r) for r in p2]
    for r1, r2 in zip(p1, p2):
        assert (r1["valence_pred"], r1["arousal_pred"]) == (r2["valence_pred"], r2["arousal_pred"])
    for name in ("run.json",):
        r1, r2 = (json.loads((tmp_path / x / name).read_text()) for x in ("one", "two"))
        assert r1["default_model"] == r2["default_model"]
        assert r1["selection"] == r2["selection"]
        assert r1["model_info"] == r2["model_info"]  # alphas, k, SVR method
    if "cv" in protocol:  # the test rows are neither trained on nor scored: every number is the same
        assert {r["split"] for r in p1 if r["eval"] == ""} == {""}
        assert one.metrics() == two.metrics()
        assert one.counts["test split (left out of the CV)"] == int((pop["split"][:N] == "test").sum())
        assert one.run["selection"]["cv"] == {
            "folds": 3,
            "includes_test": False,
            "left_out_test": one.counts["test split (left out of the CV)"],
        }
    else:  # scored on test: the scores move, the choices do not
        assert one.metrics()["ridge"] != two.metrics()["ridge"]
        assert one.run["selection"]["default_model"]["rows"].startswith("the val rows")


def test_cv_include_test_folds_the_test_rows_in(halves, tmp_path: Path):
    a, _, _ = halves
    result = run_regress(a, features=["net/pool"], out=tmp_path / "r", cv=3, cv_include_test=True)
    assert result.counts["evaluated"] == N and result.run["protocol"]["includes_test"] is True
    with pytest.raises(ConfigError, match="--cv-include-test goes with --cv"):
        run_regress(a, features=["net/pool"], out=tmp_path / "s", split="test", cv_include_test=True)


def test_eval_split_names_and_predict_only_stores(halves, tmp_path: Path, caplog):
    a, b, pop = halves
    unrated = half(
        tmp_path / "B.h5", pop, slice(N, 2 * N), valence=np.full(N, np.nan), arousal=np.full(N, np.nan)
    )
    with caplog.at_level(logging.WARNING):
        result = run_regress(
            a, features=["net/pool"], out=tmp_path / "r", cv=3, evals=[f"{b}:test", str(b), str(unrated)]
        )
    assert "no VA ratings: its items are predicted only" in caplog.text
    names = [e["name"] for e in result.run["evals"]]
    assert names == ["B:test", "B", "B-2"]
    first, _, second = result.run["evals"]
    assert first["split"] == "test" and first["n_items"] == int((pop["split"][N:] == "test").sum())
    assert second["has_ratings"] is False and result.models[0].eval_metrics["B-2"] == {}
    rows = [r for r in read(tmp_path / "r") if r["eval"] == "B-2"]
    assert len(rows) == N and all(r["valence_true"] == "nan" for r in rows)
    assert {r["split"] for r in read(tmp_path / "r") if r["eval"] == "B:test"} == {"test"}


def test_bad_eval_stores_are_refused_naming_the_value(halves, tmp_path: Path, caplog):
    a, b, pop = halves
    kw = dict(features=["net/pool"], cv=3)
    with pytest.raises(ConfigError, match="no such feature store 'nope.h5'"):
        run_regress(a, out=tmp_path / "r", evals=["nope.h5"], **kw)
    other = make_store(tmp_path / "C.h5", {"other/x": pop["pool"][N:]}, ids=list(pop["ids"][N:]))
    with pytest.raises(ConfigError, match="--eval .*C.h5.*unknown feature 'net/pool'"):
        run_regress(a, out=tmp_path / "r", evals=[str(other)], **kw)
    moved = half(tmp_path / "D.h5", pop, slice(N, 2 * N), weights="imagenet")
    with pytest.raises(ConfigError, match="extracted differently.*weights.*imagenet"):
        run_regress(a, out=tmp_path / "r", evals=[str(moved)], **kw)
    no_test = half(tmp_path / "E.h5", pop, slice(N, 2 * N), split=np.array(["train"] * N, dtype=object))
    with pytest.raises(ConfigError, match="has no 'test' items \\(its splits: train\\)"):
        run_regress(a, out=tmp_path / "r", evals=[f"{no_test}:test"], **kw)
    with pytest.raises(ConfigError, match="is the training store itself"):
        run_regress(a, out=tmp_path / "r", evals=[str(a)], **kw)
    assert not (tmp_path / "r").exists()  # nothing written by a refused run
    overlap = half(tmp_path / "F.h5", pop, slice(N - 30, 2 * N - 30))
    with caplog.at_level(logging.WARNING):
        run_regress(a, out=tmp_path / "ok", evals=[str(overlap)], **kw)
    assert "30 of its 240 items have ids that are also in the training store" in caplog.text


def test_ratings_outside_the_scale_are_refused(halves, tmp_path: Path):
    a, b, pop = halves
    v = pop["valence"][:N].copy()
    v[7] = 12.0
    bad = half(tmp_path / "bad.h5", pop, slice(0, N), valence=v)
    with pytest.raises(LabelError, match="'img0007.jpg' valence=12.*--va-range"):
        run_regress(bad, features=["net/pool"], out=tmp_path / "r", cv=3)
    with pytest.raises(LabelError, match="'img0007.jpg' valence=12"):
        run_regress(a, features=["net/pool"], out=tmp_path / "r", cv=3, evals=[str(bad)])
    assert not (tmp_path / "r").exists()
    ok = run_regress(bad, features=["net/pool"], out=tmp_path / "r", cv=3, va_range="0,20")
    assert ok.run["va_range"] == [0.0, 20.0]


def test_stage1_from_another_store_then_eval(halves, tmp_path: Path):
    a, b, pop = halves
    cats = half(tmp_path / "cats.h5", pop, slice(N, 2 * N), valence=np.full(N, np.nan), arousal=np.full(N, np.nan),
                ids=[f"cat{i}" for i in range(N)], name="categorical")  # fmt: skip
    result = run_regress(a, features=["net/pool"], out=tmp_path / "r", split="test", stage1=str(cats),
                         lexicon="nrc", evals=[str(b)])  # fmt: skip
    assert result.run["models"] == ["ridge", "two_stage:ridge"]
    assert result.run["two_stage"]["stage1"]["items"] == N
    assert result.models[1].eval_metrics["B"]["valence"]["r"] > 0.5


def test_cli_prints_the_transfer_scores(halves, tmp_path: Path, capsys):
    a, b, _ = halves
    out = tmp_path / "x"
    argv = [
        "regress",
        str(a),
        "--feature",
        "net/pool",
        "--model",
        "ridge,svr",
        "--eval",
        str(b),
        "--out",
        str(out),
        "-q",
    ]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert f"eval B: {N} items, transfer" in text and "chosen on the CV rows" in text
    assert main(["evaluate", str(out), "--out", str(tmp_path / "report"), "-q"]) == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    (scored,) = report["eval_sets"]  # B's items, scored apart from the training side
    assert scored["eval_set"] == "B" and [s["system"] for s in scored["systems"]] == ["x/ridge", "x/svr"]


def test_streamed_eval_predictions_equal_the_in_memory_ones(halves, tmp_path: Path):
    a, b, _ = halves
    kw = dict(features=["net/pool"], models="ridge,knn", cv=3, evals=[str(b)])
    streamed = run_regress(a, out=tmp_path / "s", stream=True, chunk_rows=64, **kw)
    memory = run_regress(a, out=tmp_path / "m", **kw)
    assert streamed.run["estimators"] == memory.run["estimators"] and "streaming" in streamed.run
    s, m = read(tmp_path / "s"), read(tmp_path / "m")
    assert [(r["model"], r["eval"], r["id"]) for r in s] == [(r["model"], r["eval"], r["id"]) for r in m]
    for rs, rm in zip(s, m):
        tol = 1e-6 if rs["model"] == "ridge" else 1e-4
        assert abs(float(rs["valence_pred"]) - float(rm["valence_pred"])) < tol
        assert abs(float(rs["arousal_pred"]) - float(rm["arousal_pred"])) < tol
