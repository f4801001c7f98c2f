"""`evoked regress --feature NAME/layers [--per-layer]`: layers weighed alike, the per-layer table,
and best-layer / best-span systems chosen on training rows only."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from evoked.cli import main
from evoked.errors import ConfigError
from evoked.regress.layers import LayerWeights
from evoked.regress.rundir import load_run_model
from evoked.regress.runner import run_regress
from storeutil import make_store

DIMS = (3, 6, 6, 12)  # four layers; the third (index 2) carries the signal


def layered(n: int = 120, seed: int = 0, split: bool = False) -> dict:
    fixed = np.random.default_rng(7)
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 2))
    feats, attrs = {}, {}
    for i, d in enumerate(DIMS):
        strength = 1.0 if i == 2 else 0.05
        x = strength * z @ fixed.standard_normal((2, d)) + rng.standard_normal((n, d))
        key = f"net/layers.block{i}"
        feats[key] = x
        attrs[key] = {"layer": f"block{i}", "depth": (i + 1) / len(DIMS), "dim": d}
    feats["net/pool"] = rng.standard_normal((n, 5))
    va = {"valence": 5 + z[:, 0], "arousal": 4 + 0.7 * z[:, 1]}
    out = {"features": feats, "output_attrs": attrs, **va}
    if split:
        out["split"] = np.array(["train"] * (n - 40) + ["test"] * 40, dtype=object)
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("l") / "layers.h5", **layered())


def _table(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_per_layer_cv_writes_the_table_the_plot_and_best_layer_systems(store: Path, tmp_path: Path, capsys):
    out = tmp_path / "run"
    assert main(["regress", str(store), "--feature", "net/layers", "--per-layer", "--cv", "3",
                 "--model", "ridge", "--out", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "best-span:ridge (saved model) uses" in printed
    run = json.loads((out / "run.json").read_text())
    assert run["features"] == [f"net/layers.block{i}" for i in range(4)]  # by depth
    assert run["models"] == ["ridge", "best-layer:ridge", "best-span:ridge"]
    chosen = run["layers"]["chosen"]
    assert chosen["best-layer:ridge"]["saved model"] == ["block2"]
    assert "block2" in chosen["best-span:ridge"]["saved model"]
    assert set(chosen["best-layer:ridge"]) == {"saved model", "fold 0", "fold 1", "fold 2"}
    rows = _table(out / "layers.csv")
    assert [(r["layer"], float(r["depth"]), int(r["dim"])) for r in rows] == [
        (f"block{i}", (i + 1) / 4, d) for i, d in enumerate(DIMS)
    ]
    best = max(rows, key=lambda r: float(r["valence_r"]))
    assert best["layer"] == "block2" and float(best["valence_r"]) > 0.5 and int(best["n"]) == 120
    assert (out / "layers.png").stat().st_size > 1000
    est, meta = load_run_model(out, "best-layer:ridge")
    with __import__("h5py").File(store, "r") as f:
        X = np.concatenate([f[f"features/{n}"][:] for n in run["features"]], axis=1)
    assert est.predict(X).shape == (120, 2)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["best-layer:ridge"]["valence"]["r"] > metrics["ridge"]["valence"]["r"] - 0.1


def test_choices_ignore_the_test_rows_ratings_and_transfer_gets_a_curve(tmp_path: Path):
    d = layered(split=True)
    a = make_store(tmp_path / "a.h5", **d)
    rng = np.random.default_rng(3)
    test = np.flatnonzero(d["split"] == "test")
    shuffled = dict(d)
    for k in ("valence", "arousal"):
        shuffled[k] = d[k].copy()
        shuffled[k][test] = rng.permutation(d[k][test])
    b = make_store(tmp_path / "b.h5", **shuffled)
    other = make_store(tmp_path / "other.h5", **layered(n=50, seed=5))
    runs = []
    for name, st in (("a", a), ("b", b)):
        res = run_regress(st, features=["net/layers"], per_layer=True, split="test", models="ridge",
                          evals=[str(other)], out=tmp_path / name)  # fmt: skip
        runs.append(res.run)
    assert runs[0]["layers"]["chosen"] == runs[1]["layers"]["chosen"]
    assert runs[0]["default_model"] == runs[1]["default_model"]
    rows = _table(tmp_path / "a" / "layers.csv")
    assert {(r["model"], r["eval"]) for r in rows} == {("ridge", ""), ("ridge", "other")}
    assert len(rows) == 4 * 2
    transfer = [r for r in rows if r["eval"] == "other" and r["model"] == "ridge"]
    assert max(transfer, key=lambda r: float(r["valence_r"]))["layer"] == "block2"


def test_concatenated_layers_each_weigh_the_same():
    X = np.random.default_rng(0).standard_normal((50, 3 + 12))
    w = LayerWeights(((0, 3), (3, 15))).fit(X)
    Z = w.transform(X)
    assert np.isclose((Z[:, :3] ** 2).sum() / (X[:, :3] ** 2).sum(), 1 / 3)
    assert np.isclose((Z[:, 3:] ** 2).sum() / (X[:, 3:] ** 2).sum(), 1 / 12)


def test_layers_run_without_per_layer_weighs_layers(store: Path, tmp_path: Path):
    res = run_regress(store, features=["net/layers"], cv=3, out=tmp_path / "r")
    est, _ = load_run_model(tmp_path / "r", "ridge")
    assert [n for n, _ in est.steps] == ["scale", "layers", "model"]
    assert res.run["models"] == ["ridge"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"features": ["net/pool"], "per_layer": True}, r"--per-layer: the features net/pool are not layers.*net/layers"),
        ({"features": ["net/layers", "net/pool"], "per_layer": True}, "--per-layer"),
        ({"features": ["net/layers"], "stream": True}, "drop --stream"),
        ({"features": ["net/layers"], "per_layer": True, "stage1": "same"}, "--stage1"),
    ],
)
def test_bad_layer_requests_are_clear_errors(store: Path, tmp_path: Path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        run_regress(store, out=tmp_path / "bad", **kwargs)
    assert not (tmp_path / "bad" / "run.json").exists()


def test_a_store_without_layers_says_how_to_extract_them(tmp_path: Path):
    st = make_store(tmp_path / "plain.h5", {"net/pool": np.zeros((10, 3))}, valence=np.ones(10), arousal=np.ones(10))
    with pytest.raises(ConfigError, match="no layers of net.*@layers"):
        run_regress(st, features=["net/layers"], out=tmp_path / "r")
