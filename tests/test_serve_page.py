"""`evoked serve`: prediction kinds, residual ranges, selection export, the embedding map and the
uploaded query's predicted VA, through the API and on the page in headless Chromium."""

import csv
import io
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from conftest import make_image
from evoked.serve.app import ServeConfig, create_app
from evoked.serve.embedmap import MapCache, compute_map, map_path_for
from storeutil import make_store
from test_serve import FEATURE, Client, _browser_or_skip, _free_port, _load, store  # noqa: F401 (fixture)

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


def _app(path: Path, kinds=True, **kw):
    rated = np.stack([np.arange(8) + 1.0, np.full(8, 5.0)], 1)
    pred = rated + np.stack([0.5 * np.arange(8), np.zeros(8)], 1)  # residual 0.5 k
    pred[7] = np.nan  # row 7: no prediction
    return create_app(ServeConfig(str(path), "f/x", predictions=pred, prediction_kind=KIND if kinds else None,
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
    path = make_store(tmp_path / "m.h5", {"f/x": x}, failed={5: "bad"})
    m = compute_map(path, "f/x", embed_max=30)
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
    path = tmp_path / "s.h5"
    extract(f"csv:{tmp_path / 'm.csv'}", path, ["color"], device="cpu", workers=0)
    run_regress(path, features=["color"], out=tmp_path / "run", models=("ridge",), cv=0)
    c = Client(create_app(ServeConfig(str(path), "color/hsv_hist", query_model=QueryModel(tmp_path / "run"))))
    query = tmp_path / "img" / "3.jpg"
    r = c.post("/api/search/image", params={"k": 2}, files={"file": ("q.jpg", query.read_bytes(), "image/jpeg")})
    q = r.json()["query"]
    want = predict_images([query], tmp_path / "run").va[0]
    assert q["pred_kind"] == "unseen" and [q["pred_valence"], q["pred_arousal"]] == pytest.approx(want, abs=1e-5)


# -- the page in headless Chromium ---------------------------------------------------------------
class FixedModel:
    """Stands in for QueryModel: every query is predicted at (3, 4)."""

    def predict(self, image):
        return 3.0, 4.0


@contextmanager
def _served(app):
    """(browser, url) of `app` served from a thread to headless Chromium."""
    import uvicorn

    browser = _browser_or_skip()
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    try:
        yield browser, f"http://127.0.0.1:{port}/"
    finally:
        browser.quit()
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def page(kind_store):
    with _served(_app(kind_store)) as served:
        yield served


def _card_ids(browser) -> list[str]:
    """The grid's ids, read in one script (a grid re-rendered between two reads is never half read)."""
    return browser.execute_script(
        "return [...document.querySelectorAll('#grid [data-testid=card]')].map(c => c.dataset.id);"
    )


def _text(browser, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.ID, element_id).text


def test_page_kind_filter_and_kind_on_every_card(page):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser, base = page
    wait = _load(browser, base)
    kinds = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#grid [data-testid=card-kind]")]
    assert kinds == [k for k in KIND.tolist() if k]  # row 7 has no prediction, so no kind
    Select(browser.find_element(By.ID, "f-kind")).select_by_value("fitted")
    wait.until(lambda b: "kind=fitted" in b.current_url and _card_ids(b) == ["i2.jpg", "i3.jpg"])
    assert "2 of 8 items pass" in _text(browser, "plane-count")
    # a residual view without a chosen kind leaves the fitted (in-sample) predictions out, and says so
    _load(browser, base + "?sort=residual")
    assert _card_ids(browser) == ["i6.jpg", "i5.jpg", "i4.jpg", "i1.jpg", "i0.jpg"]
    assert "predictions: oof, held-out, transfer, unseen" in _text(browser, "plane-count")
    _load(browser, base + "?sort=residual&kind=all")
    assert _card_ids(browser)[:3] == ["i6.jpg", "i5.jpg", "i4.jpg"] and len(_card_ids(browser)) == 8


def _slide(browser, key: str, end: str, value: float) -> None:
    browser.execute_script(
        "const el = document.getElementById(arguments[0]); el.value = arguments[1];"
        "el.dispatchEvent(new Event('input')); el.dispatchEvent(new Event('change'));",
        f"range-{key}-{end}", str(value),
    )


def test_page_range_sliders_filter_grid_and_plane(page):
    browser, base = page
    wait = _load(browser, base + "?kind=all")
    assert browser.find_element("id", "hist-residual").size["height"] > 20
    _slide(browser, "residual", "min", 1.0)
    _slide(browser, "residual", "max", 2.6)
    wait.until(lambda b: "resmax=2.6" in b.current_url and sorted(_card_ids(b)) == [f"i{k}.jpg" for k in (2, 3, 4, 5)])
    assert "res=1" in browser.current_url and "4 of 8 items pass" in _text(browser, "plane-count")
    _load(browser, base)
    _slide(browser, "valence", "min", 3.5)
    _slide(browser, "valence", "max", 6.5)
    wait.until(lambda b: "box=" in b.current_url and _card_ids(b) == ["i3.jpg", "i4.jpg", "i5.jpg"])
    assert "3.50 – 6.50" in _text(browser, "range-valence-vals")


def test_page_exports_the_selection(page):
    from selenium.webdriver.support.ui import Select

    browser, base = page
    wait = _load(browser, base)
    Select(browser.find_element("id", "f-category")).select_by_value("b")
    wait.until(lambda b: "(4 items, CSV)" in _text(b, "export"))
    href = browser.find_element("id", "export").get_attribute("href")
    assert "/api/export.csv?" in href and "category=b" in href and "offset" not in href
    text = browser.execute_async_script(
        "fetch(arguments[0]).then(r => r.text()).then(arguments[arguments.length - 1]);", href
    )
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["id"] for r in rows] == ["i1.jpg", "i3.jpg", "i5.jpg", "i7.jpg"]
    assert rows[1]["pred_kind"] == "fitted" and rows[1]["residual"] == "1.5"


def test_page_embedding_map_linked_both_ways(page):
    from selenium.webdriver.common.action_chains import ActionChains

    browser, base = page
    wait = _load(browser, base + "?map=1&kind=all")
    wait.until(lambda b: b.find_element("tag name", "body").get_attribute("data-map-ready") == "1")
    assert "PCA" in _text(browser, "map-count")
    mp = browser.find_element("id", "map")
    browser.execute_script("arguments[0].scrollIntoView()", mp)
    # the map follows the grid: hovering a card marks its dot on both canvases
    card = browser.find_elements("css selector", "#grid [data-testid=card]")[5]
    ActionChains(browser).move_to_element(card).perform()
    wait.until(lambda b: b.execute_script("return hovered") == 5)
    # and the grid and the plane follow the map: a box around the first feature cluster keeps rows 0-3
    x0, x1, y0, y1 = browser.execute_script(
        "const r = [0, 1, 2, 3]; const xs = r.map(i => msx[i]), ys = r.map(i => msy[i]);"
        "return [Math.min(...xs) - 6, Math.max(...xs) + 6, Math.min(...ys) - 6, Math.max(...ys) + 6];"
    )
    browser.execute_script("arguments[0].scrollIntoView()", mp)
    w, h = mp.size["width"], mp.size["height"]
    ActionChains(browser).move_to_element_with_offset(mp, int(x0 - w / 2), int(y0 - h / 2)).click_and_hold().move_by_offset(
        int(x1 - x0) // 2, int(y1 - y0) // 2).move_by_offset(int(x1 - x0) - int(x1 - x0) // 2, int(y1 - y0) - int(y1 - y0) // 2
    ).release().perform()  # fmt: skip
    wait.until(lambda b: "mbox=" in b.current_url and _card_ids(b) == [f"i{k}.jpg" for k in range(4)])
    assert "4 of 8 items pass" in _text(browser, "plane-count")
    # a click on a dot of the map opens the item
    x, y = browser.execute_script("return [msx[2], msy[2]];")
    ActionChains(browser).move_to_element_with_offset(mp, int(x - w / 2), int(y - h / 2)).click().perform()
    wait.until(lambda b: b.find_element("id", "detail").is_displayed() and _text(b, "d-title") == "i2.jpg")


def test_page_shows_the_uploaded_query_and_neighbours_va(store):  # noqa: F811 (the fixture of test_serve)
    from evoked.features.store import open_store

    with open_store(store) as s:
        lab = s.labels()
    pred = np.stack([lab["valence"], lab["arousal"]], 1) + 0.5
    app = create_app(ServeConfig(str(store), FEATURE, predictions=pred, prediction_kind=np.array(["oof"] * 24, dtype=object),
                                 run_name="r/ridge", query_model=FixedModel()))  # fmt: skip
    with _served(app) as (browser, base):
        _query_and_neighbours(browser, base, store.parent / "img" / "warm03.jpg")


def _query_and_neighbours(browser, base, query: Path) -> None:
    wait = _load(browser, base)
    browser.find_element("css selector", "[data-testid=image-file]").send_keys(str(query))
    browser.find_element("css selector", "[data-testid=image-search]").click()
    wait.until(lambda b: "nearest to image" in _text(b, "status"))
    assert browser.find_element("id", "query-img").is_displayed()
    assert "predicted valence 3.00, arousal 4.00 (unseen" in _text(browser, "query-pred")
    assert browser.execute_script("return queryPred") == [3, 4]
    assert "(2 items" not in _text(browser, "export") and "Export results" in _text(browser, "export")
    browser.find_elements("css selector", "#grid [data-testid=card]")[0].click()
    wait.until(lambda b: b.find_elements("css selector", "[data-testid=neighbour]"))
    first = browser.find_elements("css selector", "[data-testid=neighbour]")[0].text
    assert "V " in first and "A " in first and "cosine" in first
