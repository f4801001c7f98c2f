"""`evoked serve` under hostile input: each test is one numbered case of the hardening issue."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import socket
import threading
import time
import urllib.request
from importlib import resources
from pathlib import Path

import httpx
import numpy as np
import pytest
from starlette.testclient import TestClient

from conftest import make_image
from evoked.data.tabular import read_table
from evoked.errors import DatasetError
from evoked.serve.app import ServeConfig, create_app, serve
from storeutil import make_store

HTML = b"<html><body><script>document.title='pwned'</script></body></html>"
SVG = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'


def client(store: Path, feature: str = "f/x", **cfg) -> TestClient:
    return TestClient(create_app(ServeConfig(str(store), feature, **cfg)), base_url="http://127.0.0.1")


@pytest.fixture
def mixed(tmp_path) -> Path:
    """Rows: 0 a JPEG, 1 HTML named .jpg (failed), 2 SVG (failed), 3 a PNG named .jpg, 4 a TIFF."""
    root = tmp_path / "data"
    make_image(root / "good.jpg")
    (root / "evil.jpg").write_bytes(HTML)
    (root / "evil.svg").write_bytes(SVG)
    make_image(root / "png.jpg", fmt="PNG")
    make_image(root / "scan.tif")
    ids = ["good.jpg", "evil.jpg", "evil.svg", "png.jpg", "scan.tif"]
    rng = np.random.default_rng(0)
    return make_store(
        root / "s.h5",
        {"f/x": rng.normal(size=(5, 4))},
        ids=ids,
        valence=[5.0, 5.1, 5.2, 8.0, 2.0],
        arousal=[5.0, 5.1, 5.2, 8.0, 2.0],
        failed={1: "not a recognised image format", 2: "not a recognised image format"},
    )


# 1 ---------------------------------------------------------------------------------------------
def test_1_rows_escaping_the_manifest_folder_are_refused(tmp_path):
    (tmp_path / "m").mkdir()
    make_image(tmp_path / "m" / "a.jpg")
    csv = tmp_path / "m" / "list.csv"
    csv.write_text("path\na.jpg\n../../../etc/passwd\n")
    with pytest.raises(DatasetError, match=r"list\.csv:3: path '\.\./\.\./\.\./etc/passwd' leads outside"):
        read_table(csv)
    # an explicit root (or absolute paths) is how a user says they mean files elsewhere
    make_image(tmp_path / "imgs" / "b.jpg")
    csv.write_text("path\n../imgs/b.jpg\n")
    m = read_table(csv, root=tmp_path)
    assert m.root == tmp_path and list(m.paths) == ["imgs/b.jpg"]
    csv.write_text(f"path\n{tmp_path / 'imgs' / 'b.jpg'}\n")
    assert read_table(csv).root == tmp_path / "imgs"
    csv.write_text("path\n/etc/passwd\n/usr/bin/env\n")
    with pytest.raises(DatasetError, match="share no folder below /"):
        read_table(csv)


def test_1_no_file_outside_the_root_through_symlinks(tmp_path):
    secret = make_image(tmp_path / "secret.jpg")
    root = tmp_path / "data"
    make_image(root / "inside.jpg")
    (root / "link.jpg").symlink_to(secret)
    store = make_store(root / "s.h5", {"f/x": np.eye(2, 4)}, ids=["inside.jpg", "link.jpg"])
    c = client(store)
    assert c.get("/api/image/0").status_code == 200
    for url in ("/api/image/1", "/api/thumb/1"):
        r = c.get(url)
        assert r.status_code == 403 and "outside the dataset root" in r.json()["error"]


# 2 ---------------------------------------------------------------------------------------------
def test_2_only_ok_rows_with_the_decoded_type(mixed):
    c = client(mixed)
    r = c.get("/api/image/0")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    for row in (1, 2):  # failed rows: never sent, whatever their name says
        for url in (f"/api/image/{row}", f"/api/thumb/{row}"):
            r = c.get(url)
            assert r.status_code == 404 and "status failed" in r.json()["error"]
            assert r.headers["content-type"] == "application/json" and b"<script" not in r.content
    png = c.get("/api/image/3")  # the format the decoder reads, not the extension
    assert png.headers["content-type"] == "image/png" and png.content.startswith(b"\x89PNG")
    tif = c.get("/api/image/4")  # not a browser format: re-encoded
    assert tif.headers["content-type"] == "image/png" and tif.content.startswith(b"\x89PNG")
    (mixed.parent / "good.jpg").write_bytes(HTML)  # an ok row whose file was replaced since
    r = c.get("/api/image/0")
    assert r.status_code == 422 and r.headers["content-type"] == "application/json"


def test_2_security_headers_and_script_hashes(mixed):
    c = client(mixed)
    html = resources.files("evoked.serve").joinpath("static/index.html").read_text("utf-8")
    scripts = re.findall(r"<script>(.*?)</script>", html, re.DOTALL)
    assert scripts
    for url in ("/", "/api/info", "/api/image/0", "/api/image/1", "/api/nothing-here"):
        h = c.get(url).headers
        assert h["x-content-type-options"] == "nosniff", url
        csp = dict(p.strip().split(" ", 1) for p in h["content-security-policy"].split(";"))
        assert csp["default-src"] == "'self'" and csp["object-src"] == "'none'"
        assert csp["frame-ancestors"] == "'none'" and csp["base-uri"] == "'none'"
        assert "unsafe-inline" not in csp["script-src"]
        for body in scripts:
            digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
            assert f"'sha256-{digest}'" in csp["script-src"]


# 3 ---------------------------------------------------------------------------------------------
def test_3_va_search_never_returns_failed_rows(mixed):
    hits = client(mixed).get("/api/search/va", params={"v": 5.1, "a": 5.1, "k": 5}).json()["hits"]
    assert [h["row"] for h in hits] == [0, 3, 4]


# 4 ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "params",
    [
        {"v": "inf", "a": 5},
        {"v": "nan", "a": 5},
        {"v": "1e308", "a": 5},
        {"v": 5, "a": "-1e308"},
        {"v": 100, "a": 5},
        {"v": 0.5, "a": 5},
        {"v": 5, "a": 5, "k": "1e400"},
        {"v": 5, "a": 5, "k": -1},
    ],
)
def test_4_non_finite_or_out_of_scale_values_are_400(mixed, params):
    r = client(mixed).get("/api/search/va", params=params)
    assert r.status_code == 400 and r.json()["error"]


# 5 ---------------------------------------------------------------------------------------------
def test_5_a_chunked_upload_is_refused_at_the_limit(mixed):
    app = create_app(ServeConfig(str(mixed), "f/x", max_upload_bytes=100_000))
    sent = []

    async def body():
        boundary = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n'
        yield boundary
        for _ in range(6400):  # 400 MB if it were all read
            sent.append(1)
            yield b"\xff" * 65536

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            return await c.post(
                "/api/search/image",
                content=body(),
                headers={"content-type": "multipart/form-data; boundary=xyz"},
            )

    r = asyncio.run(go())
    assert "content-length" not in r.request.headers  # chunked: the server cannot know the size first
    assert r.status_code == 413 and "larger than" in r.json()["error"]
    assert len(sent) < 10  # reading stopped at the limit (100 kB), not after 400 MB


# 6 ---------------------------------------------------------------------------------------------
def test_6_thin_uploads_are_4xx(mixed, tmp_path):
    thin = make_image(tmp_path / "thin.png", size=(4000, 1))
    r = client(mixed).post("/api/search/image", files={"file": ("thin.png", thin.read_bytes(), "image/png")})
    assert r.status_code == 415 and "aspect ratio" in r.json()["error"]


# 7 ---------------------------------------------------------------------------------------------
def test_7_an_upload_does_not_stall_other_requests(mixed, tmp_path, monkeypatch):
    app = create_app(ServeConfig(str(mixed), "f/x", workers=1))
    retriever = app.state.evoked.retriever

    def slow_embed(image):
        time.sleep(0.6)
        return np.ones((1, 4), np.float32)

    monkeypatch.setattr(retriever, "embed_image", slow_embed)
    data = (mixed.parent / "good.jpg").read_bytes()

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            t0 = time.perf_counter()

            async def upload():
                r = await c.post("/api/search/image", files={"file": ("q.jpg", data, "image/jpeg")})
                return r.status_code, time.perf_counter() - t0

            async def info():
                await asyncio.sleep(0.1)  # the uploads are in their model call by now
                r = await c.get("/api/info")
                return r.status_code, time.perf_counter() - t0

            return await asyncio.gather(upload(), upload(), info())

    (s1, t1), (s2, t2), (si, ti) = asyncio.run(go())
    assert s1 == s2 == si == 200
    assert ti < 0.5  # answered while the uploads ran
    assert max(t1, t2) >= 1.2  # one model call at a time with workers=1: the second waited


# 8 ---------------------------------------------------------------------------------------------
def test_8_only_the_bound_host_and_loopback_names(mixed):
    app = create_app(ServeConfig(str(mixed), "f/x", allow_hosts=("photos.lan",)))
    c = TestClient(app, base_url="http://127.0.0.1")
    for host in ("127.0.0.1:8000", "localhost:8000", "[::1]:8000", "localhost", "photos.lan:8000"):
        assert c.get("/api/info", headers={"host": host}).status_code == 200, host
    for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example", ""):
        r = c.get("/api/info", headers={"host": host})
        assert r.status_code == 421 and "not served here" in r.json()["error"], host
        assert r.headers["x-content-type-options"] == "nosniff"
    bound = TestClient(
        create_app(ServeConfig(str(mixed), "f/x", host="10.1.2.3")), base_url="http://10.1.2.3"
    )
    assert bound.get("/api/info").status_code == 200
    assert bound.get("/api/info", headers={"host": "evil.example"}).status_code == 421


# 9 ---------------------------------------------------------------------------------------------
def test_9_ready_is_announced_when_the_port_answers(mixed, monkeypatch):
    import evoked.serve.app as app_module

    real = app_module.create_app

    def slow_create_app(cfg, warm=False):  # a model that takes a while to load
        time.sleep(0.5)
        return real(cfg, warm=False)

    monkeypatch.setattr(app_module, "create_app", slow_create_app)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    answers, box = [], []

    def ready(url):
        with urllib.request.urlopen(url + "api/info", timeout=5) as r:
            answers.append((url, r.status, json.loads(r.read())["items"]))
        box[0].should_exit = True

    thread = threading.Thread(
        target=serve, args=(ServeConfig(str(mixed), "f/x"), "127.0.0.1", port, ready, box), daemon=True
    )
    thread.start()
    thread.join(timeout=30)
    assert answers == [(f"http://127.0.0.1:{port}/", 200, 5)]
