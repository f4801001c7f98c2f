"""How `evoked serve` reads requests: one VA point check shared with `evoked search --va`, uploads
limited through Starlette's public API, and the handlers kept at module level."""

from __future__ import annotations

import ast
import asyncio
import inspect
from pathlib import Path

import httpx
import numpy as np
import pytest
from starlette.testclient import TestClient

from conftest import jpeg_bytes
from evoked.cli import main
from evoked.serve import app as app_module
from evoked.serve.app import ServeConfig, create_app
from storeutil import make_store

SERVE_SRC = Path(app_module.__file__).parent


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("va")
    rng = np.random.default_rng(0)
    va = rng.uniform(1, 9, size=(6, 2))
    return make_store(root / "s.h5", {"f/x": rng.normal(size=(6, 4))}, valence=va[:, 0], arousal=va[:, 1])


@pytest.fixture(scope="module")
def client(store) -> TestClient:
    return TestClient(
        create_app(ServeConfig(str(store), "f/x", max_upload_bytes=200_000)), "http://127.0.0.1"
    )


# failure 5 of issue 21: `evoked search --va 12,3` answered with hits where the API said 400
@pytest.mark.parametrize(
    "v, a, ok",
    [
        ("7", "3", True),
        ("1", "9", True),
        ("12", "3", False),
        ("5", "0.5", False),
        ("nan", "5", False),
        ("inf", "5", False),
        ("x", "5", False),
        ("-1e400", "5", False),
    ],
)
def test_the_cli_and_the_api_accept_the_same_va_points(store, client, capsys, v, a, ok):
    api = client.get("/api/search/va", params={"v": v, "a": a, "k": 2})
    try:
        cli = main(["search", str(store), "--feature", "f/x", f"--va={v},{a}", "-k", "2"])
    except SystemExit as e:  # argparse refuses the value, naming the flag
        cli = e.code
    err = capsys.readouterr().err
    assert (api.status_code == 200) is ok and (cli == 0) is ok, (api.json(), err)
    if not ok:
        assert "--va" in err and api.json()["error"], err


def test_a_va_point_that_is_not_two_numbers_is_refused_by_the_cli(store, capsys):
    with pytest.raises(SystemExit) as e:
        main(["search", str(store), "--feature", "f/x", "--va", "5,5,5"])
    assert e.value.code == 2
    assert "VALENCE,AROUSAL" in capsys.readouterr().err


def test_an_upload_just_past_the_limit_is_413(client):
    # the body (file + multipart envelope) fits the read limit; the file itself does not
    data = jpeg_bytes() + b"\0" * 205_000
    r = client.post("/api/search/image", files={"file": ("q.jpg", data, "image/jpeg")})
    assert r.status_code == 413 and "larger than" in r.json()["error"]


def test_a_chunked_upload_under_the_limit_is_searched(store, monkeypatch):
    app = create_app(ServeConfig(str(store), "f/x", max_upload_bytes=200_000))
    monkeypatch.setattr(app.state.evoked.retriever, "embed_image", lambda image: np.ones((1, 4), np.float32))
    data = jpeg_bytes()

    async def body():
        yield b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n'
        yield data
        yield b"\r\n--xyz--\r\n"

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            headers = {"content-type": "multipart/form-data; boundary=xyz"}
            return await c.post("/api/search/image", content=body(), headers=headers)

    r = asyncio.run(go())
    assert r.status_code == 200 and r.json()["query"]["image"] == "a.jpg"


def test_a_malformed_multipart_body_is_400(client):
    headers = {"content-type": "multipart/form-data"}  # no boundary
    r = client.post("/api/search/image", content=b"--x\r\n", headers=headers)
    assert r.status_code == 400 and r.json()["error"]


def test_no_private_starlette_state_is_written_and_create_app_is_short():
    for path in SERVE_SRC.glob("*.py"):
        assert "._body" not in path.read_text(), path
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno - node.lineno < 120, (path.name, node.name)
    assert len(inspect.getsource(create_app).splitlines()) < 60
