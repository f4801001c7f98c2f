"""webdataset shards (img2dataset layout) and parquet manifests as datasets; extraction from tars."""

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import REPO, make_image
from evoked.cli import main
from evoked.data import load_dataset
from evoked.data.inspection import inspect_dataset
from evoked.data.webdataset import image_refs
from evoked.errors import DatasetError
from evoked.extract import extract
from evoked.extract.sources import TarMembers
from evoked.features.store import OK, PENDING, open_store

PLUGIN = str(REPO / "tests" / "plugins" / "slow_color.py")
SMALL = "resize=40,crop=32"


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def _photos(root: Path, n: int) -> list[Path]:
    return [
        make_image(root / f"p{k:02d}.jpg", size=(40 + k % 3, 30), color=(40 * k % 255, 120, 200), seed=k)
        for k in range(n)
    ]


def write_shards(folder: Path, photos: list[Path], per_shard: int) -> list[Path]:
    """img2dataset's layout: shard s holds KEY.jpg, KEY.json, KEY.txt with KEY = s * 10000 + k."""
    folder.mkdir(parents=True, exist_ok=True)
    shards = []
    for s in range(-(-len(photos) // per_shard)):
        path = folder / f"{s:05d}.tar"
        with tarfile.open(path, "w") as tf:
            for k, photo in enumerate(photos[s * per_shard : (s + 1) * per_shard]):
                key = f"{s:05d}{k:04d}"
                _add(tf, f"{key}.jpg", photo.read_bytes())
                meta = {"key": key, "status": "success", "category": "warm" if k % 2 else "cold"}
                meta.update({"valence": 1.0 + k, "arousal": 9.0 - k, "caption": "a photo"})
                _add(tf, f"{key}.json", json.dumps(meta).encode())
                _add(tf, f"{key}.txt", b"a photo")
        shards.append(path)
    return shards


@pytest.fixture
def messy_shards(tmp_path: Path) -> Path:
    """Two good shards, one with bad samples, and one truncated tar."""
    photos = _photos(tmp_path / "photos", 10)
    folder = tmp_path / "shards"
    write_shards(folder, photos[:6], per_shard=3)  # 00000.tar, 00001.tar
    with tarfile.open(folder / "00002.tar", "w") as tf:
        _add(tf, "000200000.jpg", b"not a jpeg at all")  # a corrupt member
        _add(tf, "000200000.json", b'{"category": "cold"}')
        _add(tf, "000200001.jpg", photos[6].read_bytes())
        _add(tf, "000200001.cls", b"warm\n")  # label from .cls
        _add(tf, "000200002.json", b'{"valence": 5}')  # no image
        _add(tf, "000200003.jpg", photos[7].read_bytes())  # two images
        _add(tf, "000200003.png", photos[7].read_bytes())
    full = folder / "00003.tar"
    with tarfile.open(full, "w") as tf:
        _add(tf, "000300000.jpg", photos[8].read_bytes())
        _add(tf, "000300001.jpg", photos[9].read_bytes())
    data = full.read_bytes()
    cut = 512 + len(photos[8].read_bytes()) + 512 + 700  # inside the second image
    full.write_bytes(data[:cut])
    return folder


def test_ids_labels_and_failures_from_messy_shards(messy_shards: Path, tmp_path: Path):
    m = load_dataset(f"webdataset:{messy_shards}/{{00000..00003}}.tar")
    assert m.kind == "webdataset" and len(m) == 12
    assert m.ids[:4].tolist() == ["00000/000000000", "00000/000000001", "00000/000000002", "00001/000010000"]
    assert m.paths[0] == "00000.tar/000000000.jpg"
    assert m.category[:3].tolist() == ["cold", "warm", "cold"]
    assert m.valence[:3].tolist() == [1.0, 2.0, 3.0] and m.arousal[1] == 8.0
    assert m.category[7] == "warm"  # from 000200001.cls
    assert any("00003.tar is truncated" in n and "000300001.jpg" in n for n in m.notes)

    out = tmp_path / "wds.h5"
    s = extract(m, out, ["color"], device="cpu", batch_size=4, workers=0)
    assert s.ok == 8 and s.failed == 4
    with open_store(out) as store:
        errors = store.errors()
        assert store.ids.tolist() == m.ids.tolist()
        assert (store.status == OK).sum() == 8
        assert any("00003.tar is truncated" in n for n in store.attrs["dataset_notes"])  # kept in the store
    assert "not a recognised image format" in errors["00002/000200000"]
    assert "no image member (has .json)" in errors["00002/000200002"]
    assert "two images in one sample: 000200003.jpg, 000200003.png" in errors["00002/000200003"]
    assert "truncated tar" in errors["00003/000300001"] and "cut short" in errors["00003/000300001"]
    assert "00003/000300000" not in errors  # the member before the cut is whole
    report = inspect_dataset(m, workers=1)  # `evoked data inspect` reads the members too
    assert {f["id"]: f["reason"] for f in report["failures"]} == errors


def test_same_photos_from_tars_and_files_give_identical_features(tmp_path: Path):
    photos = _photos(tmp_path / "photos", 10)
    write_shards(tmp_path / "shards", photos, per_shard=4)
    csv = tmp_path / "photos.csv"
    csv.write_text("path\n" + "".join(f"photos/{p.name}\n" for p in photos))
    kw = dict(weights=["random"], preprocess=[SMALL], device="cpu", batch_size=4, workers=0)
    a = extract(f"webdataset:{tmp_path}/shards/*.tar", tmp_path / "tars.h5", ["resnet18", "color"], **kw)
    b = extract(f"csv:{csv}", tmp_path / "files.h5", ["resnet18", "color"], **kw)
    assert a.ok == b.ok == 10
    with h5py.File(tmp_path / "tars.h5") as fa, h5py.File(tmp_path / "files.h5") as fb:
        for name in ("resnet18/pool", "color/stats", "color/lbp"):
            assert np.array_equal(fa["features"][name][:], fb["features"][name][:]), name


def _cmd(spec: str, out: Path, workers: int, *extra: str) -> list[str]:
    return [
        "extract",
        spec,
        "--out",
        str(out),
        "--plugin",
        PLUGIN,
        "--backbone",
        "slow-color",
        "--device",
        "cpu",
        "--batch-size",
        "3",
        "--workers",
        str(workers),
        "-q",
        *extra,
    ]


def test_kill_9_then_resume_equals_uninterrupted_and_skips_finished_shards(tmp_path: Path, monkeypatch):
    photos = _photos(tmp_path / "photos", 15)
    write_shards(tmp_path / "shards", photos, per_shard=3)
    spec = f"webdataset:{tmp_path}/shards/{{00000..00004}}.tar"
    ref = tmp_path / "ref.h5"
    assert main(_cmd(spec, ref, 0)) == 0
    out = tmp_path / "killed.h5"
    env = {**os.environ, "SLOW_SECONDS": "0.4"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "evoked", *_cmd(spec, out, 1)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if out.exists():
                with h5py.File(out, "r", locking=False) as f:
                    if (f["items/status"][:] == OK).sum() >= 6:
                        break
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()}"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    with h5py.File(out, "r") as f:
        status = f["items/status"][:]
    assert (status == OK).sum() >= 6 and (status == PENDING).sum() > 0
    pending_shards = {f"{r // 3:05d}.tar" for r in np.flatnonzero(status != OK)}

    read: set[str] = set()
    original = TarMembers._read_spans

    def spy(self, rows):
        read.update(Path(self.refs[r].shard).name for r in rows)
        return original(self, rows)

    monkeypatch.setattr(TarMembers, "_read_spans", spy)
    assert main(_cmd(spec, out, 0, "--resume")) == 0
    assert read and read <= pending_shards and "00000.tar" not in read  # finished shards are not read
    with h5py.File(ref) as fa, h5py.File(out) as fb:
        assert np.array_equal(fa["items/status"][:], fb["items/status"][:])
        for name in ("slow-color/stats", "slow-color/hsv_hist"):
            assert np.array_equal(fa["features"][name][:], fb["features"][name][:]), name


def test_bad_shards_have_clear_messages(tmp_path: Path):
    with pytest.raises(DatasetError, match=r"matches no file.*brace pattern"):
        load_dataset(f"webdataset:{tmp_path}/nothing-*.tar")
    photos = _photos(tmp_path / "photos", 4)
    write_shards(tmp_path / "s", photos, per_shard=2)
    with pytest.raises(DatasetError, match=r"1 of its 3 shards do not exist: .*00002.tar"):
        load_dataset(f"webdataset:{tmp_path}/s/{{00000..00002}}.tar")
    (tmp_path / "s" / "00009.tar").write_text("this is a text file\n" * 40)
    with pytest.raises(DatasetError, match=r"00009.tar is not a tar file"):
        load_dataset(f"webdataset:{tmp_path}/s/*.tar")
    (tmp_path / "s" / "00009.tar").unlink()
    copy = tmp_path / "s" / "copy.tar"
    copy.write_bytes((tmp_path / "s" / "00000.tar").read_bytes())
    with pytest.raises(DatasetError, match=r"key '000000000' is in both .*00000.tar and .*copy.tar"):
        load_dataset(f"webdataset:{tmp_path}/s/*.tar")
    copy.unlink()
    with tarfile.open(tmp_path / "s" / "00005.tar", "w") as tf:
        _add(tf, "a.jpg", photos[0].read_bytes())
        _add(tf, "b.jpg", photos[1].read_bytes())
        _add(tf, "a.json", b"{}")
    with pytest.raises(DatasetError, match=r"members of sample 'a' are not side by side"):
        load_dataset(f"webdataset:{tmp_path}/s/00005.tar")


def test_parquet_manifest_reads_like_the_csv_one(tmp_path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    photos = _photos(tmp_path / "photos", 3)
    cols = {
        "path": [f"photos/{p.name}" for p in photos],
        "category": ["Joy", "fear", None],
        "valence": [7.5, 2.0, None],
        "arousal": [5.0, None, 3.0],
        "split": ["train", "test", ""],
        "p_joy": [0.8, 0.1, None],
        "p_fear": [0.2, 0.9, None],
    }
    pq.write_table(pa.table(cols), tmp_path / "m.parquet")
    (tmp_path / "m.csv").write_text(
        "path,category,valence,arousal,split,p_joy,p_fear\n"
        + "".join(
            ",".join("" if cols[c][i] is None else str(cols[c][i]) for c in cols) + "\n" for i in range(3)
        )
    )
    a, b = load_dataset(f"parquet:{tmp_path}/m.parquet"), load_dataset(f"csv:{tmp_path}/m.csv")
    assert a.kind == "parquet" and load_dataset(tmp_path / "m.parquet").kind == "parquet"  # detected
    for col in ("ids", "paths", "category", "split"):
        assert getattr(a, col).tolist() == getattr(b, col).tolist(), col
    for col in ("valence", "arousal", "distribution"):
        np.testing.assert_array_equal(getattr(a, col), getattr(b, col))
    assert a.categories == ("joy", "fear")
    (tmp_path / "bad.parquet").write_text("no")
    with pytest.raises(DatasetError, match=r"bad.parquet is not a readable parquet file"):
        load_dataset(f"parquet:{tmp_path}/bad.parquet")


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_listing_reads_every_tar_format_as_tarfile_does(tmp_path: Path, fmt: int):
    photo = _photos(tmp_path / "photos", 1)[0].read_bytes()
    long_key = "d/" + "k" * 120 if fmt != tarfile.USTAR_FORMAT else "d/" + "k" * 90
    keys = ["000000000", "smörgås", long_key]
    with tarfile.open(tmp_path / "00000.tar", "w", format=fmt) as tf:
        for key in keys:
            _add(tf, f"{key}.jpg", photo)
            _add(tf, f"{key}.cls", b"joy")
    m = load_dataset(f"webdataset:{tmp_path}/00000.tar")
    assert m.ids.tolist() == [f"00000/{k}" for k in keys] and set(m.category) == {"joy"}
    assert not m.notes
    with tarfile.open(tmp_path / "00000.tar") as tf:  # offsets as the standard library sees them
        want = {i.name: (i.offset_data, i.size) for i in tf.getmembers()}
    for key, ref in zip(keys, image_refs(m)):
        assert (ref.offset, ref.size) == want[f"{key}.jpg"] and ref.error is None
