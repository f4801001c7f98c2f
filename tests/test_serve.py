"""`evoked serve`: the JSON API, its safety rules, and the page in headless Chromium."""

import os
import shutil
import socket
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
from starlette.testclient import TestClient

from conftest import make_image
from evoked.extract import extract
from evoked.retrieve import build_store_index
from evoked.serve.app import ServeConfig, create_app
from storeutil import make_store

FEATURE = "color/hsv_hist"


def Client(app, **kw) -> TestClient:
    """A test client whose requests carry a loopback Host, as a browser on this machine sends."""
    return TestClient(app, base_url="http://127.0.0.1", **kw)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """24 colour-coded images with known VA, extracted with the colour backbone, and an index."""
    root = tmp_path_factory.mktemp("serve")
    rows = ["path,category,valence,arousal"]
    for k in range(12):
        make_image(root / "img" / f"warm{k:02d}.jpg", size=(48, 40), color=(230, 140, 30), seed=k)
        make_image(root / "img" / f"cold{k:02d}.jpg", size=(48, 40), color=(30, 70, 210), seed=50 + k)
        rows += [
            f"img/warm{k:02d}.jpg,amusement,{7 + k / 12:.3f},{5 + k / 12:.3f}",
            f"img/cold{k:02d}.jpg,sadness,{2 + k / 12:.3f},{3 + k / 12:.3f}",
        ]
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    out = root / "s.h5"
    extract(f"csv:{root / 'm.csv'}", out, ["color"], device="cpu", workers=0)
    build_store_index(out, FEATURE)
    return out


@pytest.fixture(scope="module")
def client(store) -> TestClient:
    return Client(create_app(ServeConfig(str(store), FEATURE, max_upload_bytes=200_000)))


def test_info_and_points(client):
    info = client.get("/api/info").json()
    assert info["items"] == info["ok"] == 24 and info["index"] == "flat" and info["text_search"] is False
    pts = client.get("/api/points").json()
    assert len(pts["row"]) == 24 and set(pts["category"]) == {"amusement", "sadness"}
    assert "pred_valence" not in pts


def test_search_by_item_is_exact(client, store):
    from evoked.features.store import open_store

    with open_store(store) as s:
        x = s.read(FEATURE)
        ids = list(s.ids)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = xn @ xn[5]
    sims[5] = -np.inf
    body = client.get("/api/search/item", params={"id": ids[5], "k": 4}).json()
    assert [h["id"] for h in body["hits"]] == [ids[i] for i in np.argsort(-sims, kind="stable")[:4]]
    assert body["hits"][0]["thumb"] == f"/api/thumb/{body['hits'][0]['row']}"
    assert client.get("/api/search/item", params={"id": "nope.jpg"}).status_code == 404


def test_search_by_va_point(client):
    hits = client.get("/api/search/va", params={"v": 2.0, "a": 3.0, "k": 3}).json()["hits"]
    assert [h["id"] for h in hits] == ["img/cold00.jpg", "img/cold01.jpg", "img/cold02.jpg"]
    assert client.get("/api/search/va", params={"v": 5, "a": 5, "source": "predictions"}).status_code == 400


def test_search_by_uploaded_image(client, store):
    data = (store.parent / "img" / "warm03.jpg").read_bytes()
    r = client.post("/api/search/image", params={"k": 2}, files={"file": ("q.jpg", data, "image/jpeg")})
    assert r.status_code == 200
    top = r.json()["hits"][0]
    assert top["id"] == "img/warm03.jpg" and top["score"] > 0.9999


@pytest.mark.parametrize(
    "files, status, message",
    [
        ({"file": ("q.txt", b"just text", "text/plain")}, 415, "not a usable image"),
        ({"file": ("e.jpg", b"", "image/jpeg")}, 415, "empty file"),
        ({"other": ("q.jpg", b"x", "image/jpeg")}, 400, "field named 'file'"),
        ({"file": ("big.jpg", b"\xff" * 300_000, "image/jpeg")}, 413, "larger than"),
    ],
)
def test_bad_uploads_get_4xx(client, files, status, message):
    r = client.post("/api/search/image", files=files)
    assert r.status_code == status and message in r.json()["error"]


def test_bad_parameters_get_4xx(client):
    for url, params in [
        ("/api/search/va", {"v": "x", "a": 1}),
        ("/api/search/va", {"a": 1}),
        ("/api/search/item", {"id": "img/warm00.jpg", "k": 0}),
        ("/api/search/item", {"id": "img/warm00.jpg", "k": "many"}),
        ("/api/search/text", {"q": "sunset"}),
        ("/api/search/item", {}),
    ]:
        r = client.get(url, params=params)
        assert r.status_code == 400 and r.json()["error"], (url, params)
    assert client.get("/api/image/abc").status_code == 400
    assert client.get("/api/image/9999").status_code == 404


def test_images_and_cached_thumbnails(client):
    r = client.get("/api/image/0")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    state = client.app.state.evoked
    misses = state.thumbs.misses
    a, b = client.get("/api/thumb/1"), client.get("/api/thumb/1")
    assert a.status_code == b.status_code == 200 and a.content == b.content
    assert state.thumbs.misses == misses + 1 and state.thumbs.hits >= 1


def test_no_file_outside_the_dataset_root(tmp_path):
    secret = tmp_path / "secret.jpg"
    make_image(secret)
    (tmp_path / "data").mkdir()
    make_image(tmp_path / "data" / "inside.jpg")
    store = make_store(tmp_path / "data" / "s.h5", {"f/x": np.eye(2, 4)}, ids=["inside.jpg", "../secret.jpg"])
    c = Client(create_app(ServeConfig(str(store), "f/x")))
    assert c.get("/api/image/0").status_code == 200
    for url in ("/api/image/1", "/api/thumb/1"):
        r = c.get(url)
        assert r.status_code == 403 and "outside the dataset root" in r.json()["error"]
    assert c.get("/api/image/..%2F..%2Fsecret.jpg").status_code in (400, 404)


def test_unexpected_errors_are_500_without_traceback(store, monkeypatch):
    c = Client(create_app(ServeConfig(str(store), FEATURE)), raise_server_exceptions=False)
    monkeypatch.setattr(c.app.state.evoked.retriever, "by_id", lambda *a, **k: 1 / 0)
    r = c.get("/api/search/item", params={"id": "img/warm00.jpg"})
    assert r.status_code == 500 and r.json() == {
        "error": "internal error (see the server log)",
        "status": 500,
    }
    assert "Traceback" not in r.text and "ZeroDivision" not in r.text


def test_text_search_with_clip(tmp_path):
    from evoked.extract.backbones.clip import write_model_config

    cfg = write_model_config(tmp_path / "tiny.json")
    for k in range(4):
        make_image(tmp_path / "imgs" / "a" / f"{k}.jpg", seed=k)
    extract(
        f"folder:{tmp_path / 'imgs'}",
        tmp_path / "c.h5",
        [f"clip:{cfg}"],
        weights=["random"],
        device="cpu",
        workers=0,
    )
    c = Client(create_app(ServeConfig(str(tmp_path / "c.h5"), "clip-tiny/embed")))
    assert c.get("/api/info").json()["text_search"] is True
    r = c.get("/api/search/text", params={"q": "a calm lake", "k": 3})
    assert r.status_code == 200 and len(r.json()["hits"]) == 3


# -- browsing the collection -------------------------------------------------------------------
@pytest.fixture(scope="module")
def browse_store(tmp_path_factory) -> Path:
    """8 rows: valence k+1, arousal 8-k, categories a/b, splits train x4 / test x3 / none, row 7 failed."""
    root = tmp_path_factory.mktemp("browse")
    ids = [f"i{k}.jpg" for k in range(8)]
    for k, item in enumerate(ids):
        make_image(root / item, seed=k)
    x = np.random.default_rng(0).normal(size=(8, 6)).astype(np.float32)
    dist = np.stack([np.linspace(0, 1, 8), 1 - np.linspace(0, 1, 8)], 1)
    return make_store(
        root / "s.h5",
        {"f/x": x},
        ids=ids,
        valence=np.arange(8) + 1.0,
        arousal=8.0 - np.arange(8),
        category=["a", "b"] * 4,
        split=["train"] * 4 + ["test"] * 3 + [""],
        distribution=dist,
        categories=("a", "b"),
        failed={7: "cannot decode i7.jpg"},
    )


def _browse_app(store: Path, with_predictions: bool = True, **kw) -> TestClient:
    rated = np.stack([np.arange(8) + 1.0, 8.0 - np.arange(8)], 1)
    pred = (
        rated + np.stack([0.5 * np.arange(8), np.zeros(8)], 1) if with_predictions else None
    )  # residual 0.5 k
    return Client(
        create_app(
            ServeConfig(
                str(store), "f/x", predictions=pred, run_name="r/ridge" if pred is not None else None, **kw
            )
        )
    )


def _rows(c: TestClient, **params) -> list[int]:
    r = c.get("/api/browse", params=params)
    assert r.status_code == 200, r.text
    return [i["row"] for i in r.json()["items"]]


def test_browse_filters_sorts_and_pages(browse_store):
    c = _browse_app(browse_store)
    body = c.get("/api/browse").json()
    assert body["total"] == 8 and [i["row"] for i in body["items"]] == list(range(8))
    failed = body["items"][7]
    assert (
        failed["status"] == "failed"
        and failed["thumb"] is None
        and body["items"][0]["thumb"] == "/api/thumb/0"
    )
    assert body["items"][3]["residual"] == 1.5 and body["items"][3]["split"] == "train"
    assert _rows(c, category="a") == [0, 2, 4, 6]
    assert _rows(c, split="test") == [4, 5, 6] and _rows(c, split="none") == [7]
    assert _rows(c, status="failed") == [7] and len(_rows(c, status="ok")) == 7
    assert _rows(c, box="2.5,6.5,0,9") == [2, 3, 4, 5]
    assert _rows(c, box="2.5,6.5,0,9", source="predictions") == [1, 2, 3]  # predicted valence 1.5 k + 1
    assert _rows(c, residual_min=2) == [4, 5, 6, 7]
    assert _rows(c, sort="valence", order="desc") == [7, 6, 5, 4, 3, 2, 1, 0]
    assert _rows(c, sort="arousal") == [7, 6, 5, 4, 3, 2, 1, 0]
    assert _rows(c, sort="residual", category="b") == [7, 5, 3, 1]
    assert (
        _rows(c, offset=3, limit=2) == [3, 4]
        and c.get("/api/browse", params={"offset": 3, "limit": 2}).json()["total"] == 8
    )
    sim = c.get("/api/browse", params={"sort": "similarity", "like": "i0.jpg"}).json()
    assert sim["total"] == 7 and sim["items"][0]["id"] == "i0.jpg" and sim["items"][0]["score"] > 0.9999
    scores = [i["score"] for i in sim["items"]]
    assert scores == sorted(scores, reverse=True) and 7 not in [i["row"] for i in sim["items"]]
    assert 0 not in _rows(c, sort="similarity", like="i0.jpg", category="b")


@pytest.mark.parametrize(
    "params, status, message",
    [
        ({"category": "zzz"}, 400, "category='zzz' is not one of the store's values: a, b"),
        ({"split": "dev"}, 400, "split='dev'"),
        ({"status": "done"}, 400, "status='done'"),
        ({"sort": "beauty"}, 400, "sort='beauty'"),
        ({"order": "up"}, 400, "order='up'"),
        ({"box": "1,2,3"}, 400, "v_min,v_max,a_min,a_max"),
        ({"box": "5,1,0,9"}, 400, "min <= max"),
        ({"limit": 0}, 400, "limit=0"),
        ({"offset": -1}, 400, "offset=-1"),
        ({"residual_min": "x"}, 400, "residual_min='x'"),
        ({"sort": "similarity"}, 400, "like=ITEM_ID"),
        ({"sort": "similarity", "like": "nope.jpg"}, 404, "nope.jpg"),
    ],
)
def test_browse_refuses_bad_parameters(browse_store, params, status, message):
    r = _browse_app(browse_store).get("/api/browse", params=params)
    assert r.status_code == status and message in r.json()["error"]


def test_browse_without_predictions_says_what_is_missing(browse_store):
    c = _browse_app(browse_store, with_predictions=False)
    for params in ({"residual_min": 1}, {"sort": "residual"}, {"source": "predictions"}):
        r = c.get("/api/browse", params=params)
        assert r.status_code == 400 and "--run" in r.json()["error"], params
    assert "pred_valence" not in c.get("/api/plane").json()


def test_plane_item_detail_and_provenance(browse_store):
    c = _browse_app(browse_store)
    plane = c.get("/api/plane").json()
    assert plane["n"] == 8 and plane["categories"] == ["a", "b"] and plane["category"][:3] == [0, 1, 0]
    assert plane["splits"] == ["test", "train"] and plane["split"][0] == 1 and plane["split"][7] == -1
    assert plane["statuses"][plane["status"][7]] == "failed" and plane["pred_valence"][2] == 4.0
    assert c.get("/api/plane/ids").json() == {"id": [f"i{k}.jpg" for k in range(8)]}
    d = c.get("/api/item/2", params={"k": 3}).json()
    assert d["id"] == "i2.jpg" and d["residual"] == 1.0 and d["pred_valence"] == 4.0 and d["split"] == "train"
    assert d["distribution"] == {"a": pytest.approx(2 / 7, abs=1e-4), "b": pytest.approx(5 / 7, abs=1e-4)}
    assert len(d["neighbours"]) == 3 and "i2.jpg" not in [n["id"] for n in d["neighbours"]]
    bad = c.get("/api/item/7").json()
    assert bad["status"] == "failed" and "cannot decode" in bad["error"] and bad["neighbours"] == []
    assert c.get("/api/item/8").status_code == 404 and c.get("/api/item/x").status_code == 400
    assert c.get("/api/item/0", params={"k": -1}).status_code == 400
    prov = c.get("/api/provenance").json()
    assert (
        prov["weights"] == "random"
        and "RANDOM weights" in prov["warning"]
        and prov["index"] == "exact (in memory)"
    )
    assert prov["feature"] == "f/x" and prov["run"] == "r/ridge"


def test_thumbnails_only_for_ok_rows_and_cached_on_disk(browse_store, tmp_path):
    c = _browse_app(browse_store, thumb_dir=str(tmp_path / "thumbs"))
    assert c.get("/api/thumb/7").status_code == 404  # failed row: no thumbnail
    first = c.get("/api/thumb/1")
    assert first.status_code == 200 and first.headers["content-type"] == "image/jpeg"
    assert len(list((tmp_path / "thumbs").rglob("*.jpg"))) == 1
    again = _browse_app(browse_store, thumb_dir=str(tmp_path / "thumbs"))  # a restarted server
    assert again.get("/api/thumb/1").content == first.content
    thumbs = again.app.state.evoked.thumbs
    assert thumbs.disk_hits == 1 and thumbs.misses == 0


def test_thumbnails_default_beside_the_store(browse_store):
    from evoked.serve.thumbs import thumb_dir_for

    c = _browse_app(browse_store)
    assert c.get("/api/thumb/2").status_code == 200
    assert thumb_dir_for(browse_store, 256) == browse_store.with_suffix(".thumbs") / "256px"
    assert list(thumb_dir_for(browse_store, 256).rglob("*.jpg"))


# -- the page in a real browser ------------------------------------------------------------------
def _browser_or_skip(extra_flags: tuple[str, ...] = ()):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip(
            "headless Chromium or chromedriver is not installed (Debian: apt-get install chromium "
            "chromium-driver; .ci/run installs them)"
        )
    try:
        from selenium import webdriver
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[dev]')")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,900",
        *extra_flags,
    ):
        opts.add_argument(flag)
    service = webdriver.ChromeService(executable_path=driver)
    return webdriver.Chrome(options=opts, service=service)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def page(store):
    """The page with predictions (rated VA + a known offset) in headless Chromium, served from a thread."""
    import uvicorn

    browser = _browser_or_skip()
    from evoked.features.store import open_store

    with open_store(store) as s:
        lab = s.labels()
    rated = np.stack([lab["valence"], lab["arousal"]], 1)
    pred = rated + np.where(np.arange(24) % 4 == 0, 2.0, 0.1)[:, None] * [1, 0]  # every 4th row is off by 2
    port = _free_port()
    app = create_app(ServeConfig(str(store), FEATURE, predictions=pred, run_name="run/ridge"), warm=True)
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


def test_page_in_headless_chromium_refuses_failed_rows_and_foreign_hosts(tmp_path):
    """Hardening cases 2 and 8 in a real browser: a failed HTML row never runs, the CSP keeps
    the page's own scripts working and blocks injected ones, and a rebinding name gets no page."""
    import uvicorn
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    make_image(tmp_path / "good.jpg")
    (tmp_path / "evil.jpg").write_bytes(b"<html><script>document.title='pwned'</script></html>")
    store = make_store(
        tmp_path / "s.h5", {"f/x": np.eye(2, 4)}, ids=["good.jpg", "evil.jpg"], failed={1: "not an image"}
    )
    browser = _browser_or_skip(("--host-resolver-rules=MAP rebind.test 127.0.0.1",))
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(ServeConfig(str(store), "f/x")), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 20
        while not server.started and time.time() < deadline:
            time.sleep(0.05)
        browser.get(f"http://127.0.0.1:{port}/api/image/1")
        assert browser.title != "pwned" and "status failed" in browser.find_element(By.TAG_NAME, "body").text
        browser.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(browser, 20)
        wait.until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
        browser.execute_script(
            "const s = document.createElement('script'); s.textContent = 'window.__injected = 1';"
            "document.body.appendChild(s);"
        )
        assert browser.execute_script("return window.__injected === undefined")
        browser.get(f"http://rebind.test:{port}/")
        body = browser.find_element(By.TAG_NAME, "body")
        assert "not served here" in body.text and body.get_attribute("data-ready") != "1"
    finally:
        browser.quit()
        server.should_exit = True
        thread.join(timeout=10)

def _load(browser, url):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    WebDriverWait(browser, 20).until(
        lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1"
    )
    return WebDriverWait(browser, 20)


def _card_ids(browser) -> list[str]:
    from selenium.webdriver.common.by import By

    return [
        c.get_attribute("data-id") for c in browser.find_elements(By.CSS_SELECTOR, "#grid [data-testid=card]")
    ]


def test_page_loads_the_collection_pages_and_keeps_the_view_in_the_url(page, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser, base = page
    wait = _load(browser, base + "?size=24")
    assert "24 of 24 images" in browser.find_element(By.ID, "meta").text
    assert "index flat" in browser.find_element(By.ID, "provenance").text
    assert browser.find_element(By.ID, "weights-warning").get_attribute("hidden") is not None
    assert (
        len(_card_ids(browser)) == 24
        and "24 of 24 items pass" in browser.find_element(By.ID, "plane-count").text
    )
    # paging: 5 per page, the second page is rows 5..9, and the URL says so
    wait = _load(browser, base + "?size=5")
    first = _card_ids(browser)
    browser.find_element(By.CSS_SELECTOR, "[data-testid=next]").click()
    wait.until(lambda b: "6–10 of 24" in b.find_element(By.ID, "status").text)
    second = _card_ids(browser)
    assert len(first) == len(second) == 5 and not set(first) & set(second)
    assert "page=2" in browser.current_url and "page 2 of 5" in browser.find_element(By.ID, "page-label").text
    # a filtered, sorted view survives a reload from its URL
    Select(browser.find_element(By.ID, "f-category")).select_by_value("sadness")
    Select(browser.find_element(By.ID, "sort")).select_by_value("valence")
    Select(browser.find_element(By.ID, "order")).select_by_value("desc")
    wait.until(
        lambda b: "order=desc" in b.current_url and "1–5 of 12" in b.find_element(By.ID, "status").text
    )
    url = browser.current_url
    assert "cat=sadness" in url and "sort=valence" in url and "page=" not in url
    _load(browser, url)
    ids = _card_ids(browser)
    assert ids == [f"img/cold{k:02d}.jpg" for k in (11, 10, 9, 8, 7)]
    assert (
        Select(browser.find_element(By.ID, "f-category")).first_selected_option.get_attribute("value")
        == "sadness"
    )
    assert "12 of 24 items pass" in browser.find_element(By.ID, "plane-count").text
    shot = Path(os.environ.get("EVOKED_SCREENSHOT_DIR", tmp_path)) / "serve-test.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000


def test_page_filters_hovers_and_opens_an_item(page):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser, base = page
    wait = _load(browser, base + "?res=1")
    # residual filter: every 4th row is off by 2, the others by 0.1
    assert sorted(_card_ids(browser)) == sorted(
        f"img/{kind}{k:02d}.jpg"
        for kind in ("warm", "cold")
        for k in range(12)
        if (2 * k + (kind == "cold")) % 4 == 0
    )
    # hover the dot of a listed item: its thumbnail shows; a click opens it in full
    row = int(browser.find_elements(By.CSS_SELECTOR, "#grid [data-testid=card]")[0].get_attribute("data-row"))
    x, y = browser.execute_script("return [sx[arguments[0]], sy[arguments[0]]];", row)
    plane = browser.find_element(By.CSS_SELECTOR, "[data-testid=va-plane]")
    w, h = plane.size["width"], plane.size["height"]
    ActionChains(browser).move_to_element_with_offset(plane, int(x - w / 2), int(y - h / 2)).perform()
    tip = browser.find_element(By.ID, "tooltip")
    wait.until(lambda b: tip.is_displayed())
    assert tip.get_attribute("data-row") == str(row)
    assert browser.find_element(By.ID, "tooltip-img").get_attribute("src").endswith(f"/api/thumb/{row}")
    ActionChains(browser).click().perform()
    detail = browser.find_element(By.CSS_SELECTOR, "[data-testid=detail]")
    wait.until(
        lambda b: detail.is_displayed() and b.find_elements(By.CSS_SELECTOR, "[data-testid=neighbour]")
    )
    table = browser.find_element(By.ID, "d-table").text
    assert "predicted" in table and "|predicted − rated|" in table and "2.00" in table
    assert len(browser.find_elements(By.CSS_SELECTOR, "[data-testid=neighbour]")) == 12
    assert f"open={row}" in browser.current_url
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
    wait.until(lambda b: not detail.is_displayed() and "open=" not in b.current_url)
    # keyboard: arrows move through the grid, Enter opens the card in focus
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_RIGHT, Keys.ARROW_RIGHT, Keys.ENTER)
    second = _card_ids(browser)[1]
    wait.until(lambda b: detail.is_displayed() and b.find_element(By.ID, "d-title").text == second)
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
    # a box drawn on the plane filters the grid to the warm items (high valence)
    wait = _load(browser, base)
    x0, y0 = browser.execute_script("return [toX(6.5), toY(ext[3] - 0.05)];")
    x1, y1 = browser.execute_script("return [toX(ext[1] - 0.05), toY(4.2)];")
    plane = browser.find_element(By.CSS_SELECTOR, "[data-testid=va-plane]")
    ActionChains(browser).move_to_element_with_offset(
        plane, int(x0 - w / 2), int(y0 - h / 2)
    ).click_and_hold().move_by_offset(int(x1 - x0) // 2, int(y1 - y0) // 2).move_by_offset(
        int(x1 - x0) - int(x1 - x0) // 2, int(y1 - y0) - int(y1 - y0) // 2
    ).release().perform()
    wait.until(lambda b: "box=" in b.current_url and "of 12" in b.find_element(By.ID, "status").text)
    assert all(i.startswith("img/warm") for i in _card_ids(browser))


def test_page_searches_by_image_and_by_a_point(page, store):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    browser, base = page
    wait = _load(browser, base + "?scale=fixed")
    query = store.parent / "img" / "cold04.jpg"
    browser.find_element(By.CSS_SELECTOR, "[data-testid=image-file]").send_keys(str(query))
    browser.find_element(By.CSS_SELECTOR, "[data-testid=image-search]").click()
    wait.until(lambda b: "nearest to image" in b.find_element(By.ID, "status").text)
    ids = _card_ids(browser)
    assert len(ids) == 12 and ids[0] == "img/cold04.jpg" and all(i.startswith("img/cold") for i in ids[:6])
    # a click on empty space of the fixed 1-9 plane lists the items nearest that point
    x, y = browser.execute_script("return [toX(7.5), toY(1.5)];")
    plane = browser.find_element(By.CSS_SELECTOR, "[data-testid=va-plane]")
    w, h = plane.size["width"], plane.size["height"]
    ActionChains(browser).move_to_element_with_offset(plane, int(x - w / 2), int(y - h / 2)).click().perform()
    wait.until(lambda b: "nearest to valence 7." in b.find_element(By.ID, "status").text)
    near = parse_qs(urlparse(browser.current_url).query)["near"][0]
    assert np.allclose([float(t) for t in near.split(",")], [7.5, 1.5], atol=0.05)
    assert len(_card_ids(browser)) == 12
    # an error clears the old results instead of leaving them under the message
    browser.find_element(By.ID, "item-id").send_keys("no/such.jpg\n")
    wait.until(lambda b: "not an item" in b.find_element(By.ID, "status").text)
    assert _card_ids(browser) == [] and "near=" not in browser.current_url


def test_predictions_from_a_regression_run(store, tmp_path):
    from evoked.regress.runner import run_regress
    from evoked.serve.predictions import run_predictions

    run_regress(store, features=["color"], out=tmp_path / "run", models=("ridge",), cv=0)
    pred, label = run_predictions(tmp_path / "run", store)
    assert pred.shape == (24, 2) and np.isfinite(pred).all() and label == "run/ridge"
    c = Client(create_app(ServeConfig(str(store), FEATURE, predictions=pred, run_name=label)))
    assert c.get("/api/info").json()["predictions"] is True
    pts = c.get("/api/points").json()
    assert len(pts["pred_valence"]) == 24
    hits = c.get("/api/search/va", params={"v": 8, "a": 6, "k": 3, "source": "predictions"}).json()["hits"]
    assert all(h["id"].startswith("img/warm") and "pred_valence" in h for h in hits)
    order = np.argsort(np.hypot(pred[:, 0] - 8, pred[:, 1] - 6), kind="stable")[:3]
    assert [h["row"] for h in hits] == order.tolist()
