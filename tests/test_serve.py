"""`evoked serve`: the JSON API, its safety rules, and the page in headless Chromium."""

import os
import shutil
import socket
import threading
import time
from pathlib import Path

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


def test_page_in_headless_chromium(store, tmp_path):
    import uvicorn
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser = _browser_or_skip()
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(ServeConfig(str(store), FEATURE), warm=True),
            host="127.0.0.1",
            port=port,
            log_level="warning",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 20
        while not server.started and time.time() < deadline:
            time.sleep(0.05)
        browser.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(browser, 20)
        wait.until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
        assert "24 of 24 images" in browser.find_element(By.ID, "meta").text
        # an image search: the uploaded item finds itself first
        query = store.parent / "img" / "cold04.jpg"
        browser.find_element(By.CSS_SELECTOR, "[data-testid=image-file]").send_keys(str(query))
        browser.find_element(By.CSS_SELECTOR, "[data-testid=image-search]").click()
        wait.until(lambda b: "nearest to image" in b.find_element(By.ID, "status").text)
        cards = browser.find_elements(By.CSS_SELECTOR, "[data-testid=result]")
        assert len(cards) == 12 and cards[0].get_attribute("data-id") == "img/cold04.jpg"
        assert all(c.get_attribute("data-id").startswith("img/cold") for c in cards[:6])
        # a click on the VA plane at high valence and arousal lists the warm images
        plane = browser.find_element(By.CSS_SELECTOR, "[data-testid=va-plane]")
        w, h = plane.size["width"], plane.size["height"]
        pad = 36 * w / 436
        x = pad + (7.5 - 1) / 8 * (w - 2 * pad)
        y = h - pad - (5.5 - 1) / 8 * (h - 2 * pad)
        ActionChains(browser).move_to_element_with_offset(
            plane, int(x - w / 2), int(y - h / 2)
        ).click().perform()
        wait.until(lambda b: "nearest to valence" in b.find_element(By.ID, "status").text)
        ids = [
            c.get_attribute("data-id") for c in browser.find_elements(By.CSS_SELECTOR, "[data-testid=result]")
        ]
        assert len(ids) == 12 and all(i.startswith("img/warm") for i in ids)
        status = browser.find_element(By.ID, "status").text
        assert "valence 7.4" in status or "valence 7.5" in status or "valence 7.6" in status
        shot = Path(os.environ.get("EVOKED_SCREENSHOT_DIR", tmp_path)) / "serve-test.png"
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
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
