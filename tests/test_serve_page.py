"""`evoked serve`: prediction kinds, residual ranges, selection export, the embedding map and the
uploaded query's predicted VA, through the API and on the page in headless Chromium."""

import csv
import io
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import make_image
from evoked.serve.app import ServeConfig, create_app
from evoked.serve.embedmap import MapCache, compute_map, map_path_for
from storeutil import make_store
from test_serve import Client, _browser_or_skip, _card_ids, _free_port, _load

KIND = np.array(["oof", "oof", "fitted", "fitted", "held-out", "transfer", "unseen", ""], dtype=object)


@pytest.fixture(scope="module")
def kind_store(tmp_path_factory) -> Path:
    """8 ok rows in two clusters of features; valence k+1, arousal 5; categories a/b."""
    root = tmp_path_factory.mktemp("kinds")
    ids = [f"i{k}.jpg" for k in range(8)]
    for k, item in enumerate(ids):
        make_image(root / item, seed=k)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 6)).astype(np.float32) + np.where(np.arange(8) < 4, 5.0, -5.0)[:, None]
    return make_store(root / "s.h5", {"f/x": x}, ids=ids, valence=np.arange(8) + 1.0, arousal=np.full(8, 5.0),
                      category=["a", "b"] * 4, split=["train"] * 8)  # fmt: skip


def _app(store: Path, kinds=True, **kw):
    rated = np.stack([np.arange(8) + 1.0, np.full(8, 5.0)], 1)
    pred = rated + np.stack([0.5 * np.arange(8), np.zeros(8)], 1)  # residual 0.5 k
    pred[7] = np.nan  # row 7: no prediction
    return create_app(ServeConfig(str(store), "f/x", predictions=pred, prediction_kind=KIND if kinds else None,
                                  run_name="r/ridge", **kw))  # fmt: skip


def _rows(c, **params) -> list[int]:
    r = c.get("/api/browse", params=params)
    assert r.status_code == 200, r.text
    return [i["row"] for i in r.json()["items"]]


def test_kind_filter_and_residuals_default_to_held_out(kind_store):
    c = Client(_app(kind_store))
    plane = c.get("/api/plane").json()
    assert plane["kinds"] == ["oof", "held-out", "transfer", "fitted", "unseen"]
    assert [plane["kinds"][k] if k >= 0 else "" for k in plane["kind"]] == KIND.tolist()
    assert _rows(c, kind="fitted") == [2, 3] and _rows(c, kind="oof,held-out") == [0, 1, 4]
    assert _rows(c) == list(range(8))  # no residual in the view: every kind
    # a residual sort or range reads held-out predictions only, and says so
    body = c.get("/api/browse", params={"sort": "residual"}).json()
    assert [i["row"] for i in body["items"]] == [6, 5, 4, 1, 0] and "never saw" in body["note"]
    assert body["kind"] == ["oof", "held-out", "transfer", "unseen"]
    assert _rows(c, residual_min=1, residual_max=2.6) == [4, 5]
    assert _rows(c, residual_min=1, kind="all") == [2, 3, 4, 5, 6]
    assert _rows(c, sort="residual", kind="fitted") == [3, 2]
    assert c.get("/api/item/2").json()["pred_kind"] == "fitted"
    r = c.get("/api/browse", params={"kind": "guessed"})
    assert r.status_code == 400 and "kind='guessed'" in r.json()["error"]


def test_kind_filter_needs_kinds(kind_store):
    c = Client(_app(kind_store, kinds=False))
    assert "kinds" not in c.get("/api/plane").json()
    assert _rows(c, sort="residual")[:2] == [6, 5]  # no kinds recorded: nothing to tell apart
    r = c.get("/api/browse", params={"kind": "oof"})
    assert r.status_code == 400 and "--run" in r.json()["error"]


def test_export_csv_of_the_selection(kind_store):
    c = Client(_app(kind_store))
    r = c.get("/api/export.csv", params={"category": "a", "sort": "valence", "order": "desc"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [x["id"] for x in rows] == ["i6.jpg", "i4.jpg", "i2.jpg", "i0.jpg"]
    six = rows[0]
    assert (six["valence"], six["pred_valence"], six["pred_kind"], six["residual"]) == ("7.0", "10.0", "unseen", "3.0")
    assert six["map_x"] == ""  # the map is not computed until asked for
    empty = c.get("/api/export.csv", params={"residual_min": 100}).text.splitlines()
    assert empty == [",".join(__import__("evoked.serve.browse", fromlist=["x"]).EXPORT_COLUMNS)]


def test_embedding_map_is_cached_beside_the_store_and_filters(kind_store, tmp_path):
    c = Client(_app(kind_store))
    body = c.get("/api/map").json()
    assert body["n"] == 8 and len(body["x"]) == 8 and "PCA" in body["method"] and body["feature"] == "f/x"
    xy = np.array([body["x"], body["y"]]).T
    assert np.isfinite(xy).all() and map_path_for(kind_store, "f/x").is_file()
    # the two feature clusters stay apart on the map: a box around the first cluster keeps rows 0-3
    first = xy[:4]
    box = f"{first[:, 0].min() - 1e-3},{first[:, 0].max() + 1e-3},{first[:, 1].min() - 1e-3},{first[:, 1].max() + 1e-3}"
    assert _rows(c, map_box=box) == [0, 1, 2, 3]
    exported = list(csv.DictReader(io.StringIO(c.get("/api/export.csv", params={"map_box": box}).text)))
    assert [float(x["map_x"]) for x in exported] == pytest.approx(first[:, 0], abs=1e-3)
    # a restarted server reads the map back instead of computing it again
    again = MapCache(kind_store, "f/x")
    assert again.get().seconds == 0.0 and np.allclose(again.get().x, xy[:, 0], atol=1e-3)
    r = c.get("/api/browse", params={"map_box": "1,0,0,1"})
    assert r.status_code == 400 and "x_min,x_max,y_min,y_max" in r.json()["error"]


def test_embedding_map_bounds_the_embedded_subset(tmp_path):
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(3, 16)) * 10
    x = (np.repeat(centres, 40, 0) + rng.normal(size=(120, 16))).astype(np.float32)
    store = make_store(tmp_path / "m.h5", {"f/x": x}, failed={5: "bad"})
    m = compute_map(store, "f/x", embed_max=30)
    assert np.isnan(m.x[5]) and np.isfinite(np.delete(m.x, 5)).all()
    assert "t-SNE of 30 random items" in m.method and "other 89 placed" in m.method
    # items placed by neighbour land with their cluster: each cluster's centre is nearer its own items
    xy = np.stack([m.x, m.y], 1)
    label = np.repeat(np.arange(3), 40)
    ok = np.isfinite(xy[:, 0])
    means = np.array([xy[ok & (label == k)].mean(0) for k in range(3)])
    nearest = np.argmin(((xy[ok, None, :] - means[None]) ** 2).sum(-1), 1)
    assert (nearest == label[ok]).mean() > 0.95


def test_uploaded_query_gets_its_predicted_va(tmp_path):
    from evoked.extract import extract
    from evoked.regress.predict import predict_images
    from evoked.regress.runner import run_regress
    from evoked.serve.predictions import QueryModel

    rows = ["path,category,valence,arousal"]
    for k in range(8):
        make_image(tmp_path / "img" / f"{k}.jpg", size=(40, 32), color=(30 * k, 90, 200 - 20 * k), seed=k)
        rows.append(f"img/{k}.jpg,c{k % 2},{1 + k},{9 - k}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    store = tmp_path / "s.h5"
    extract(f"csv:{tmp_path / 'm.csv'}", store, ["color"], device="cpu", workers=0)
    run_regress(store, features=["color"], out=tmp_path / "run", models=("ridge",), cv=0)
    c = Client(create_app(ServeConfig(str(store), "color/hsv_hist", query_model=QueryModel(tmp_path / "run"))))
    query = tmp_path / "img" / "3.jpg"
    r = c.post("/api/search/image", params={"k": 2}, files={"file": ("q.jpg", query.read_bytes(), "image/jpeg")})
    q = r.json()["query"]
    want = predict_images([query], tmp_path / "run").va[0]
    assert q["pred_kind"] == "unseen" and [q["pred_valence"], q["pred_arousal"]] == pytest.approx(want, abs=1e-5)
