"""`evoked serve` under hostile input, second round: huge numbers, Host tricks, links out of the
dataset, a root of `/`, big point sets, webdataset shards, and upload decoding bombs."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from conftest import make_image
from evoked.errors import ConfigError
from evoked.extract import extract
from evoked.features.store import open_store
from evoked.serve.app import ServeConfig, create_app
from storeutil import make_store

HUGE = "9" * 400


def client(store: Path, feature: str = "f/x", **cfg) -> TestClient:
    return TestClient(create_app(ServeConfig(str(store), feature, **cfg)), base_url="http://127.0.0.1")


@pytest.fixture
def store(tmp_path) -> Path:
    for k in range(3):
        make_image(tmp_path / "data" / f"{k}.jpg", seed=k)
    ids = [f"{k}.jpg" for k in range(3)]
    return make_store(tmp_path / "data" / "s.h5", {"f/x": np.eye(3, 4)}, ids=ids, valence=[1, 5, 9],
                      arousal=[2, 5, 8])  # fmt: skip


# 7: numbers far past any row, offset or count are a 400, never a 500 --------------------------
@pytest.mark.parametrize(
    "url",
    [
        f"/api/browse?offset={HUGE}",
        f"/api/browse?limit={HUGE}",
        f"/api/browse?offset=-{HUGE}",
        f"/api/item/0?k={HUGE}",
        f"/api/item/{HUGE}",
        f"/api/image/{HUGE}",
        f"/api/thumb/{HUGE}",
        f"/api/search/va?v=5&a=5&k={HUGE}",
        f"/api/browse?offset={'9' * 5000}",
    ],
)
def test_7_huge_numbers_are_400(store, url):
    r = client(store).get(url)
    assert r.status_code == 400, (url, r.status_code, r.text[:200])
    error = r.json()["error"]
    assert len(error) < 300 and any(w in error for w in ("characters", "range", "between", "at least")), error


def test_7_a_far_offset_within_range_is_an_empty_page(store):
    r = client(store).get("/api/browse", params={"offset": 2**40})
    assert r.status_code == 200 and r.json()["items"] == []


# 8: the Host header parsed strictly --------------------------------------------------------
@pytest.mark.parametrize(
    "host",
    [
        "localhost:evil",
        "127.0.0.1:8781@attacker.example",
        "127.0.0.1@attacker.example",
        "user@127.0.0.1",
        "localhost:80:80",
        "localhost:123456",
        "127.0.0.1 attacker.example",
        "[::1]evil",
        "::1",
        "localhost/evil",
    ],
)
def test_8_malformed_host_headers_are_refused(store, host):
    r = client(store).get("/api/info", headers={"host": host})
    assert r.status_code == 421 and "not served here" in r.json()["error"], host


def test_8_well_formed_hosts_still_answer(store):
    c = client(store)
    for host in ("127.0.0.1:8781", "LOCALHOST:8000", "localhost.", "[::1]:8000", "[::1]"):
        assert c.get("/api/info", headers={"host": host}).status_code == 200, host


# 9: a dataset file that is a link out of the dataset ---------------------------------------
def test_9_extract_refuses_a_symlink_out_of_the_root_and_serve_never_echoes_it(tmp_path):
    secret = tmp_path / "passwd"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    images = tmp_path / "imgs"
    make_image(images / "a" / "0.jpg")
    make_image(images / "a" / "1.jpg", seed=1)
    (images / "a" / "2.jpg").symlink_to(secret)
    out = tmp_path / "s.h5"
    extract(f"folder:{images}", out, ["color"], device="cpu", workers=0)
    with open_store(out) as s:
        errors = s.errors()
        assert (s.status == 1).sum() == 2  # the two real images are done
    (reason,) = errors.values()
    assert "outside the dataset root" in reason and "root:x" not in reason
    c = client(out, "color/hsv_hist")
    (item,) = c.get("/api/browse?status=failed").json()["items"]
    row = item["row"]
    assert c.get(f"/api/image/{row}").status_code == 404
    for url in (f"/api/item/{row}", "/api/browse?status=failed", f"/api/image/{row}"):
        body = c.get(url).content
        assert b"root:x" not in body and b"72 6f 6f 74" not in body, url


def test_9_a_file_that_is_not_an_image_is_never_echoed(tmp_path):
    from evoked.data.decode import decode_rgb
    from evoked.errors import DecodeError

    with pytest.raises(DecodeError) as e:
        decode_rgb(b"root:x:0:0:root:/root:/bin/bash\n", "passwd.jpg")
    assert "root" not in e.value.reason and "72 6f" not in e.value.reason
    assert "not a recognised image format" in e.value.reason


# 10: a store rooted at / -----------------------------------------------------------------------
def test_10_a_store_rooted_at_the_disk_root_is_refused(store):
    with h5py.File(store, "r+") as f:
        f.attrs["dataset_root"] = "/"
    with pytest.raises(ConfigError, match=r"dataset_root is '/'.*any file"):
        create_app(ServeConfig(str(store), "f/x"))


# 11: /api/points encoded once, off the loop, compact ----------------------------------------
def test_11_points_are_encoded_once_and_gzipped(store, monkeypatch):
    import evoked.serve.api as api

    app = create_app(ServeConfig(str(store), "f/x"))
    calls = []
    real = api.encode_points
    monkeypatch.setattr(api, "encode_points", lambda state: calls.append(1) or real(state))
    c = TestClient(app, base_url="http://127.0.0.1")
    plain = c.get("/api/points", headers={"accept-encoding": "identity"})
    packed = c.get("/api/points", headers={"accept-encoding": "gzip"})
    assert plain.status_code == packed.status_code == 200 and calls == [1]
    assert packed.headers["content-encoding"] == "gzip" and packed.json() == plain.json()
    assert b" " not in plain.content  # compact separators
    assert plain.json()["valence"] == [1.0, 5.0, 9.0] and plain.json()["row"] == [0, 1, 2]
    assert gzip.decompress(app.state.evoked.points_bytes()[1]) == plain.content


# 12: webdataset stores: images from their tar members, never from disk -------------------------
def _member(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def test_12_webdataset_images_come_from_the_shard(tmp_path):
    root = tmp_path / "wds"
    root.mkdir()
    photo = make_image(tmp_path / "p.png", color=(10, 200, 10)).read_bytes()
    make_image(root / "outside.jpg", color=(250, 0, 0))  # what the `..` member must never reach
    with tarfile.open(root / "00000.tar", "w") as tf:
        _member(tf, "000000000.png", photo)
        _member(tf, "000000000.json", json.dumps({"valence": 5, "arousal": 5}).encode())
        _member(tf, "../outside.jpg", b"not the file on disk")
    paths = ["00000.tar/000000000.png", "00000.tar/../outside.jpg", "00000.tar/000000009.png"]
    store = make_store(root / "s.h5", {"f/x": np.eye(3, 4)}, ids=["00000/a", "00000/b", "00000/c"])
    with h5py.File(store, "r+") as f:
        f.attrs["dataset_kind"] = "webdataset"
        del f["items/path"]
        f["items/path"] = np.array(paths, dtype=h5py.string_dtype())
    c = client(store)
    r = c.get("/api/image/0")
    assert r.status_code == 200 and r.content == photo and r.headers["content-type"] == "image/png"
    thumb = c.get("/api/thumb/0")
    assert thumb.status_code == 200 and Image.open(io.BytesIO(thumb.content)).format == "JPEG"
    disk = (root / "outside.jpg").read_bytes()
    for url in ("/api/image/1", "/api/thumb/1"):
        r = c.get(url)
        assert r.content != disk and r.status_code in (404, 422), (url, r.status_code)
    r = c.get("/api/image/2")
    assert r.status_code == 404 and "holds no image member" in r.json()["error"]


# 13: uploads are decoded small, or refused before decoding --------------------------------------
def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (w, h), 128).save(buf, "PNG", optimize=False)
    return buf.getvalue()


def test_13_a_huge_png_upload_is_refused_from_its_header(store, monkeypatch):
    import evoked.serve.api as api

    decoded = []
    monkeypatch.setattr(api, "decode_rgb", lambda *a: decoded.append(1))
    data = _png(5000, 5000)  # 25 Mpx, a few KB: small enough for the test, above the test's limit
    r = client(store, max_upload_pixels=10_000_000).post(
        "/api/search/image", files={"file": ("big.png", data, "image/png")}
    )
    assert r.status_code == 413 and not decoded
    error = r.json()["error"]
    assert "5000x5000 = 25,000,000 pixels" in error and "10,000,000" in error and "JPEG" in error


def _grey_png(w: int, h: int) -> bytes:
    """A w x h grey PNG written row by row (a few hundred KB for 13000 x 13000, never in memory whole)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    z, row, idat = zlib.compressobj(9), b"\0" * (w + 1), []
    idat += [z.compress(row) for _ in range(h)]
    idat.append(z.flush())
    ihdr = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(idat)) + chunk(b"IEND", b"")


def test_13_a_13000_square_png_upload_is_refused_by_default(store):
    data = _grey_png(13000, 13000)
    assert len(data) < 1_000_000
    r = client(store).post("/api/search/image", files={"file": ("big.png", data, "image/png")})
    assert r.status_code == 413 and "13000x13000 = 169,000,000 pixels" in r.json()["error"]
